//! Every map of the kernel side, named after what it holds. Sizes are defaults: the agent may
//! override `max_entries` at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
};
use monitor_common::sched::{
    CpuSlot, ProcessMeta, RUNNABLE_SLOTS, RunnableSince, RunqHistogram, SchedTracepointLayout,
    errors,
};

/// Entries are allocated on insert, not up front: per-CPU values times max_entries times CPUs
/// would reserve tens of MiB on a large host for processes that may never exist.
const NO_PREALLOC: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;

/// On-CPU nanoseconds per process (tgid), per CPU.
#[map]
pub static CPU_TIME: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(16384, NO_PREALLOC);

/// Run-queue latency histogram per process (tgid), per CPU.
#[map]
pub static RUNQ_LATENCY: PerCpuHashMap<u32, RunqHistogram> =
    PerCpuHashMap::with_max_entries(4096, NO_PREALLOC);

/// When a task became runnable (woken or preempted), in the slot of its key: the `task_struct`
/// address on the BTF path, the thread id on the classic tracepoint path. An array, not a hash:
/// this is written on every wake-up and read on every switch, and an array access is a few
/// instructions where a hash update takes a lock.
#[map]
pub static RUNNABLE_SINCE: Array<RunnableSince> = Array::with_max_entries(RUNNABLE_SLOTS, 0);

/// Name and exit time per process (tgid); the agent removes entries once it has read them.
#[map]
pub static PROCESS_META: HashMap<u32, ProcessMeta> = HashMap::with_max_entries(16384, NO_PREALLOC);

/// Per-CPU scratch: when the current task started running, its pending run-queue delay.
#[map]
pub static CPU_SLOT: PerCpuArray<CpuSlot> = PerCpuArray::with_max_entries(1, 0);

/// Field offsets of the classic sched tracepoints, written by the agent before it attaches them.
#[map]
pub static SCHED_TP_LAYOUT: Array<SchedTracepointLayout> = Array::with_max_entries(1, 0);

/// Events the programs could not record, by reason (`monitor_common::sched::errors`).
#[map]
pub static SCHED_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(errors::COUNT, 0);

#[inline(always)]
pub fn count_error(reason: u32) {
    if let Some(counter) = SCHED_ERRORS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot, only touched by programs on this CPU, which do not nest.
        unsafe { *counter += 1 };
    }
}
