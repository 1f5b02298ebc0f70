//! On-CPU time and run-queue latency per process, from the scheduler tracepoints.
//!
//! Time and delays are attributed when a task is switched *out* (or by the periodic tick). Two
//! ways: where the agent found the offsets of the kernel's own per-task accounting in BTF
//! (`TASK_ACCOUNTING`), the switch reads what the kernel counted (`on_accounted_switch`);
//! elsewhere the programs time runs and wake-ups themselves and take the process from
//! `bpf_get_current_pid_tgid` (`on_switch`), reading no `task_struct` field.
//!
//! Cost matters: these run on every context switch of the host. The common path touches only
//! per-CPU and array slots; a hash lookup happens when the CPU changes process.

use core::mem::MaybeUninit;

use aya_ebpf::{
    Global,
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated as raw},
};
use monitor_common::sched::{
    COMM_LEN, CpuSlot, ExecEvent, ProcessMeta, RunnableSince, RunqHistogram, TICK_PERIOD_NS,
    TaskAccountingOffsets, errors, nul_padded_comm, runnable_slot, runq_bucket, test_fault,
};

use monitor_common::words::zero_words;

use crate::maps::{
    CPU_SLOT, CPU_TIME, EXECS, PROCESS_META, RUNNABLE_SINCE, RUNQ_LATENCY, count_error,
};

/// What a hash map's update returns when the map is full (a missing entry could not be added).
const E2BIG: i32 = 7;
/// What an allocation failure returns.
const ENOMEM: i32 = 12;

/// Set by the agent before loading (a read-only global, so the verifier sees constants and
/// accepts loads at these offsets of a BTF `task_struct` pointer); all zero where not found.
#[unsafe(no_mangle)]
static TASK_ACCOUNTING: Global<TaskAccountingOffsets> = Global::new(TaskAccountingOffsets {
    sum_exec_runtime: 0,
    run_delay: 0,
    pcount: 0,
    pid: 0,
    tgid: 0,
    prev_sum_exec_runtime: 0,
    policy: 0,
});

/// `test_fault::*` bits, set by the agent for tests only (constant to the verifier).
#[unsafe(no_mangle)]
static SCHED_TEST_FAULTS: Global<u32> = Global::new(0);

/// The offsets of the kernel's per-task accounting, if the agent found them.
#[inline(always)]
pub fn task_accounting() -> Option<TaskAccountingOffsets> {
    let offsets = TASK_ACCOUNTING.load();
    offsets.is_complete().then_some(offsets)
}

/// A `task_struct` from a BTF tracepoint or helper, read at the offsets the agent found.
#[derive(Clone, Copy)]
pub struct Task {
    pointer: *const u8,
}

impl Task {
    /// # Safety
    /// `pointer` is a trusted BTF `task_struct` pointer (a tracepoint argument or
    /// `bpf_get_current_task_btf`), so the verifier checks each read against the kernel's BTF.
    pub unsafe fn new(pointer: *const u8) -> Self {
        Self { pointer }
    }

    #[inline(always)]
    fn u64_at(self, offset: u32) -> u64 {
        // SAFETY: see `new`; the offset is a constant to the verifier, which rejects the
        // program if it is not an 8-byte field.
        unsafe { core::ptr::read_volatile(self.pointer.add(offset as usize).cast::<u64>()) }
    }

    #[inline(always)]
    fn u32_at(self, offset: u32) -> u32 {
        // SAFETY: as above, for a 4-byte field.
        unsafe { core::ptr::read_volatile(self.pointer.add(offset as usize).cast::<u32>()) }
    }

    /// The thread id, plus one, so that 0 can mean "no task" (the idle tasks are thread 0).
    #[inline(always)]
    pub fn key(self, offsets: &TaskAccountingOffsets) -> u64 {
        u64::from(self.u32_at(offsets.pid)) + 1
    }

    #[inline(always)]
    pub fn runtime_ns(self, offsets: &TaskAccountingOffsets) -> u64 {
        self.u64_at(offsets.sum_exec_runtime)
    }

    /// What the task has run (of `runtime`) since the fair class last picked it, where the
    /// kernel keeps that; else 0. A real-time task's `prev_sum_exec_runtime` is stale, and so
    /// is that of a fair task the kernel runs otherwise for a while (priority inheritance,
    /// sched_ext): at most two clock-tick periods are taken, as a run the slot did not note
    /// began after the CPU's last tick (which notes the running task).
    #[inline(always)]
    fn ran_since_picked(self, offsets: &TaskAccountingOffsets, runtime: u64) -> u64 {
        if offsets.prev_sum_exec_runtime == 0 || offsets.policy == 0 {
            return 0;
        }
        // SCHED_NORMAL, SCHED_BATCH, SCHED_IDLE.
        if !matches!(self.u32_at(offsets.policy), 0 | 3 | 5) {
            return 0;
        }
        runtime
            .saturating_sub(self.u64_at(offsets.prev_sum_exec_runtime))
            .min(2 * TICK_PERIOD_NS)
    }
}

/// A context switch where the kernel's accounting is read. The incoming task's wait is only
/// added to its totals after the tracepoint, so waits are read when tasks leave.
#[inline(always)]
pub fn on_accounted_switch(prev: Task, next: Task, offsets: &TaskAccountingOffsets) {
    let Some(slot) = cpu_slot() else {
        return;
    };
    let prev_key = prev.key(offsets);
    let ran = ran_since_noted(slot, prev, prev.runtime_ns(offsets), offsets);
    let tgid = prev.u32_at(offsets.tgid);
    let delay = if tgid == 0 {
        0 // an idle task: its "waits" mean nothing, and all CPUs' idle tasks share thread id 0
    } else {
        wait_before_last_run(
            prev_key,
            prev.u64_at(offsets.run_delay),
            prev.u64_at(offsets.pcount),
        )
    };
    slot.running_task = next.key(offsets);
    slot.since_ns = next.runtime_ns(offsets);
    charge(slot, tgid, ran, delay, false);
}

/// What `task` ran since the slot noted its runtime. When the slot noted another task (the
/// first switch or tick on a CPU since the agent started, or an arrival the kernel did not
/// report: this VM's kernel switches to some threads of its init without a `sched_switch`),
/// what it ran since the kernel last picked it, so that its run is not lost.
/// (Before the slot has noted any task, the first event on a CPU since the agent started,
/// nothing is charged: the run began before the agent.)
#[inline(always)]
fn ran_since_noted(
    slot: &CpuSlot,
    task: Task,
    runtime: u64,
    offsets: &TaskAccountingOffsets,
) -> u64 {
    if slot.running_task == task.key(offsets) {
        runtime.saturating_sub(slot.since_ns)
    } else if slot.running_task == 0 {
        0
    } else {
        task.ran_since_picked(offsets, runtime)
    }
}

/// The run-queue wait that preceded the run now ending: how much the task's `run_delay`
/// grew since it last left a CPU (`runs` is its count of arrivals), at least 1 ns so that a
/// wait the kernel saw as none still counts; 0 when unknown.
#[inline(always)]
fn wait_before_last_run(task: u64, run_delay: u64, runs: u64) -> u64 {
    let Some(entry) = RUNNABLE_SINCE.get_ptr_mut(runnable_slot(task)) else {
        return 0;
    };
    // SAFETY: a valid array element; a racing writer can only make the key check fail.
    let entry = unsafe { &mut *entry };
    let delay = if runs == 1 {
        run_delay.max(1) // a task's first run: all its waiting so far was for it
    } else if entry.task == task && runs == entry.runs + 1 {
        run_delay.saturating_sub(entry.since_ns).max(1)
    } else {
        if entry.task != task && entry.task != 0 {
            // Another task holds the slot: this wait is not measured.
            count_error(errors::RUNNABLE_SLOT_TAKEN);
        }
        0
    };
    *entry = RunnableSince {
        task,
        since_ns: run_delay,
        runs,
    };
    delay
}

/// The clock tick where the kernel's accounting is read: charges what `current` ran since
/// the switch or the last tick (the kernel brings its total up to date at every tick too).
#[inline(always)]
pub fn on_accounted_tick(current: Task, offsets: &TaskAccountingOffsets) {
    let Some(slot) = cpu_slot() else {
        return;
    };
    // Read once: another CPU may bring the total up to date meanwhile.
    let runtime = current.runtime_ns(offsets);
    let ran = ran_since_noted(slot, current, runtime, offsets);
    slot.running_task = current.key(offsets);
    slot.since_ns = runtime;
    charge(slot, current.u32_at(offsets.tgid), ran, 0, true);
}

/// A context switch, with tasks identified by a key that is stable while they live.
pub struct Switch {
    pub prev_task: u64,
    pub next_task: u64,
    /// The outgoing task stays on the run queue (preempted, or yielded while runnable).
    pub prev_runnable: bool,
}

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// The current task's `comm`, NUL-padded (`nul_padded_comm`). The raw helper into
/// uninitialised memory: aya's wrapper first zeroes its buffer, with the BPF target's
/// byte-at-a-time `memset` (see `monitor_common::words`).
#[inline(always)]
pub fn current_comm() -> Option<[u8; COMM_LEN]> {
    let mut comm = MaybeUninit::<[u64; COMM_LEN / 8]>::uninit();
    // SAFETY: the helper writes the name and its NUL (COMM_LEN bytes at most) or fails.
    if unsafe { raw::bpf_get_current_comm(comm.as_mut_ptr().cast(), COMM_LEN as u32) } != 0 {
        return None;
    }
    // SAFETY: what follows the NUL may be what the stack held: any value is a valid word,
    // and `nul_padded_comm` zeroes it.
    let words = nul_padded_comm(unsafe { comm.assume_init() });
    // SAFETY: two words are sixteen bytes.
    Some(unsafe { core::mem::transmute::<[u64; COMM_LEN / 8], [u8; COMM_LEN]>(words) })
}

#[inline(always)]
fn cpu_slot() -> Option<&'static mut CpuSlot> {
    // SAFETY: this CPU's entry; the scheduler programs and the tick never nest on one CPU
    // (interrupts are off during a context switch), so nothing else touches it meanwhile.
    CPU_SLOT.get_ptr_mut(0).map(|slot| unsafe { &mut *slot })
}

/// A task pointer from a BTF tracepoint as a plain number (see `CpuSlot::task_scratch`).
/// Storing a kernel pointer in a map is allowed to the privileged programs this agent loads.
#[inline(always)]
pub fn task_key(task: u64) -> u64 {
    let Some(slot) = cpu_slot() else {
        return 0;
    };
    // Volatile, so the compiler keeps the round trip through memory that the verifier needs.
    unsafe {
        core::ptr::write_volatile(&mut slot.task_scratch, task);
        core::ptr::read_volatile(&slot.task_scratch)
    }
}

/// Inlined into both entry points: as a BPF function of its own, every context switch paid
/// one more call and return.
#[inline(always)]
pub fn on_switch(switch: &Switch) {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(slot) = cpu_slot() else {
        return;
    };
    account_current(slot, now, false);
    if switch.prev_runnable {
        mark_runnable(switch.prev_task, now);
    }
    if let Some(entry) = RUNNABLE_SINCE.get_ptr_mut(runnable_slot(switch.next_task)) {
        // SAFETY: a valid array element; a racing writer can only make the key check fail.
        let entry = unsafe { &mut *entry };
        if entry.task == switch.next_task && entry.since_ns != 0 {
            slot.pending_runq_ns = now.saturating_sub(entry.since_ns).max(1);
            entry.since_ns = 0;
        }
    }
}

/// A task became runnable.
pub fn on_wakeup(task: u64) {
    mark_runnable(task, unsafe { bpf_ktime_get_ns() });
}

#[inline(always)]
fn mark_runnable(task: u64, now: u64) {
    if let Some(entry) = RUNNABLE_SINCE.get_ptr_mut(runnable_slot(task)) {
        // SAFETY: a valid array element.
        let entry = unsafe { &mut *entry };
        if entry.since_ns != 0 && entry.task != task {
            // Another runnable task holds the slot; it loses its measurement.
            count_error(errors::RUNNABLE_SLOT_TAKEN);
        }
        *entry = RunnableSince {
            task,
            since_ns: now,
            runs: 0,
        };
    }
}

/// Periodic tick on every CPU: moves the running process's time into the map, so a process
/// that runs for seconds without a context switch is still counted as it goes.
pub fn on_tick() {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(slot) = cpu_slot() {
        account_current(slot, now, true);
    }
}

/// Charges the time since `slot.since_ns` (and any pending run-queue delay) to `current`.
#[inline(always)]
fn account_current(slot: &mut CpuSlot, now: u64, flush: bool) {
    let ran = if slot.since_ns == 0 {
        0
    } else {
        now.saturating_sub(slot.since_ns)
    };
    let pending = slot.pending_runq_ns;
    slot.since_ns = now;
    slot.pending_runq_ns = 0;
    charge(slot, current_tgid(), ran, pending, flush);
}

/// Charges `ran` nanoseconds on CPU and a run-queue wait of `pending` (0: none) to process
/// `tgid`, the current one (whose name is taken if the process is new to this CPU).
#[inline(always)]
fn charge(slot: &mut CpuSlot, tgid: u32, ran: u64, pending: u64, flush: bool) {
    if tgid != 0 {
        if tgid != slot.unflushed_tgid {
            flush_slot(slot);
            slot.unflushed_tgid = tgid;
            if let Some(comm) = current_comm() {
                slot.unflushed_comm = comm;
            }
        }
        slot.unflushed_ns += ran;
        if pending != 0 {
            if let Some(count) = slot.unflushed_runq.buckets.get_mut(runq_bucket(pending)) {
                *count += 1;
            }
            slot.unflushed_runq.sum_ns += pending;
            slot.runq_dirty = 1;
        }
    }
    if flush {
        flush_slot(slot);
    }
}

/// Moves the slot's unflushed time and delays into the per-process maps.
#[inline(always)]
fn flush_slot(slot: &mut CpuSlot) {
    let tgid = slot.unflushed_tgid;
    if tgid == 0 {
        return;
    }
    let ns = slot.unflushed_ns;
    slot.unflushed_ns = 0;
    if slot.deferred_ns != 0 && add_cpu_time(slot.deferred_tgid, slot.deferred_ns, false) {
        slot.deferred_ns = 0;
    }
    if let Some(total) = CPU_TIME.get_ptr_mut(tgid) {
        // SAFETY: this CPU's copy of a per-CPU value.
        unsafe { *total += ns };
    } else {
        let first_fails = SCHED_TEST_FAULTS.load() & test_fault::FIRST_CPU_TIME_ALLOCATION != 0;
        if !add_cpu_time(tgid, ns, first_fails) {
            if slot.deferred_ns == 0 || slot.deferred_tgid == tgid {
                slot.deferred_tgid = tgid;
                slot.deferred_ns += ns;
            } else {
                count_error(errors::CPU_TIME_ALLOC_FAILED);
            }
        }
        // A process the map has not seen: make sure the agent can name it even if it exits
        // before the agent looks. NOEXIST keeps a name taken at exec.
        remember_process(tgid, slot.unflushed_comm, false);
    }
    if slot.runq_dirty != 0 {
        flush_runq(tgid, &mut slot.unflushed_runq);
        slot.runq_dirty = 0;
    }
}

/// Adds `ns` to the process's on-CPU time, creating its entry if needed; false only when the
/// entry could not be allocated now (to try again later). A full map loses the time, counted.
/// With `fail_insert` (tests), the insert fails as an allocation failure does.
#[inline(always)]
fn add_cpu_time(tgid: u32, ns: u64, fail_insert: bool) -> bool {
    if let Some(total) = CPU_TIME.get_ptr_mut(tgid) {
        // SAFETY: this CPU's copy of a per-CPU value.
        unsafe { *total += ns };
        return true;
    }
    let inserted = if fail_insert {
        Err(-ENOMEM)
    } else {
        CPU_TIME.insert(tgid, ns, BPF_NOEXIST as u64)
    };
    let Err(error) = inserted else {
        return true;
    };
    // Another CPU may have created the entry in the meantime (two threads of a new process
    // switched out at once): add to it.
    match CPU_TIME.get_ptr_mut(tgid) {
        Some(total) => {
            // SAFETY: as above.
            unsafe { *total += ns };
            true
        }
        None if error == -E2BIG => {
            count_error(errors::CPU_TIME_FULL);
            true
        }
        None => false,
    }
}

/// Adds `delays` to the process's histogram and leaves them zero.
#[inline(always)]
fn flush_runq(tgid: u32, delays: &mut RunqHistogram) {
    let mut histogram = RUNQ_LATENCY.get_ptr_mut(tgid);
    let mut full = false;
    if histogram.is_none() {
        // By reference: a copy would take 200 bytes of the 512-byte stack.
        let shared: &RunqHistogram = delays;
        match RUNQ_LATENCY.insert(tgid, shared, BPF_NOEXIST as u64) {
            Ok(()) => {
                zero_words(delays);
                return;
            }
            Err(error) => full = error == -E2BIG,
        }
        // Another CPU may have created it meanwhile.
        histogram = RUNQ_LATENCY.get_ptr_mut(tgid);
    }
    let Some(histogram) = histogram else {
        count_error(if full {
            errors::RUNQ_FULL
        } else {
            errors::RUNQ_ALLOC_FAILED
        });
        zero_words(delays);
        return;
    };
    // SAFETY: this CPU's copy of a per-CPU value.
    let histogram = unsafe { &mut *histogram };
    // Added and cleared in one pass: a separate clear would become a `memset` call.
    for (total, count) in histogram.buckets.iter_mut().zip(delays.buckets.iter_mut()) {
        *total += *count;
        *count = 0;
    }
    histogram.sum_ns += delays.sum_ns;
    delays.sum_ns = 0;
}

/// Records the name of a process. `at_exec` overwrites any earlier name.
#[inline(always)]
fn remember_process(tgid: u32, comm: [u8; COMM_LEN], at_exec: bool) {
    let meta = ProcessMeta {
        comm,
        exit_ns: 0,
        from_exec: at_exec as u32,
        forked_from: 0,
    };
    let flags = if at_exec { BPF_ANY } else { BPF_NOEXIST };
    // NOEXIST fails routinely when the name is already there; only a full map is an error.
    if PROCESS_META.insert(tgid, meta, flags as u64).is_err() && at_exec {
        count_error(errors::PROCESS_META_FULL);
    }
}

/// Notes that the current process, forked by `parent`, took up a connection it inherited:
/// it runs the parent's program, and is named after it even if it exits before the agent
/// looks (a forking server's child often lives a few milliseconds). Not after an exec.
#[inline(always)]
pub fn remember_forked_child(tgid: u32, parent: u32) {
    if let Some(meta) = PROCESS_META.get_ptr_mut(tgid) {
        // SAFETY: a valid map value pointer for the duration of this program.
        let meta = unsafe { &mut *meta };
        if meta.from_exec == 0 {
            meta.forked_from = parent;
        }
        return;
    }
    let meta = ProcessMeta {
        comm: current_comm().unwrap_or([0; COMM_LEN]),
        exit_ns: 0,
        from_exec: 0,
        forked_from: parent,
    };
    // A full map: the child is named as any other process that exits early.
    let _ = PROCESS_META.insert(tgid, meta, BPF_NOEXIST as u64);
}

pub fn on_exec() {
    let tgid = current_tgid();
    let comm = current_comm().unwrap_or([0; COMM_LEN]);
    if comm[0] != 0 {
        remember_process(tgid, comm, true);
    }
    // The name goes with the event: a process that lives for a few milliseconds is gone
    // before the agent can read its name from procfs.
    let event = ExecEvent { tgid, comm };
    if EXECS.output::<ExecEvent>(&event, 0).is_err() {
        count_error(errors::EXEC_EVENTS_LOST);
    }
}

pub fn on_exit() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, pid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if tgid != pid {
        return; // a thread; the process lives on
    }
    if let Some(meta) = PROCESS_META.get_ptr_mut(tgid) {
        // SAFETY: a valid map value pointer for the duration of this program.
        unsafe { (*meta).exit_ns = bpf_ktime_get_ns() };
    }
}
