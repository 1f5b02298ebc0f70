//! Scheduler accounting: on-CPU time and run-queue latency per process (thread group).

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`), NUL included.
pub const COMM_LEN: usize = 16;

/// A `comm` as two little-endian words, with every byte after its first NUL zeroed. Before
/// Linux 6.9 or so `bpf_get_current_comm` copies the name and its NUL only (`strscpy`, not
/// `strscpy_pad`) and leaves the rest of the buffer as it was: a name compared whole
/// (`--exclude-comm`) never matched on Debian 12's 6.1. Register arithmetic only, no stack.
#[inline(always)]
pub fn nul_padded_comm([low, high]: [u64; 2]) -> [u64; 2] {
    match first_nul_mask(low) {
        Some(keep) => [low & keep, 0],
        None => [low, first_nul_mask(high).map_or(high, |keep| high & keep)],
    }
}

/// The mask of the bytes up to and including the word's first zero byte (little-endian);
/// none without one.
#[inline(always)]
fn first_nul_mask(word: u64) -> Option<u64> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The high bit of each zero byte, and maybe of bytes above the first zero one (a borrow
    // runs upwards from it): the lowest bit set is the first zero byte's.
    let zeros = word.wrapping_sub(ONES) & !word & HIGHS;
    if zeros == 0 {
        return None;
    }
    let first = zeros & zeros.wrapping_neg();
    Some(first.wrapping_shl(1).wrapping_sub(1))
}

/// Number of run-queue latency buckets. Bucket `i < RUNQ_BUCKETS - 1` counts delays `d` with
/// `2^(RUNQ_FIRST_BOUND_LOG2 + i - 1) < d <= 2^(RUNQ_FIRST_BOUND_LOG2 + i)` nanoseconds (bucket 0
/// takes everything up to its bound); the last bucket takes everything above.
pub const RUNQ_BUCKETS: usize = 24;
/// log2 of the first bucket's upper bound in nanoseconds: 2^10 ns = 1.024 µs.
pub const RUNQ_FIRST_BOUND_LOG2: u32 = 10;

/// Maps the delay `ns` to its run-queue bucket. Shared by the kernel (which counts) and the agent
/// (whose tests check the bounds), so both agree on the bucket edges by construction.
#[inline(always)]
pub fn runq_bucket(ns: u64) -> usize {
    if ns <= 1 {
        return 0;
    }
    // ceil(log2(ns)) = bits needed for ns - 1.
    let ceil_log2 = 64 - (ns - 1).leading_zeros();
    let index = ceil_log2.saturating_sub(RUNQ_FIRST_BOUND_LOG2) as usize;
    if index >= RUNQ_BUCKETS - 1 {
        RUNQ_BUCKETS - 1
    } else {
        index
    }
}

/// Per-CPU scratch state of the scheduler programs (a one-entry per-CPU array).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuSlot {
    /// When the task now on this CPU started running (or was last flushed): `bpf_ktime_get_ns()`,
    /// or its `se.sum_exec_runtime` where the programs read the kernel's accounting.
    pub since_ns: u64,
    /// Run-queue delay of the task now on this CPU, not yet attributed (0: none). The task's
    /// process is only known once it is `current`, so the delay waits here until then.
    pub pending_runq_ns: u64,
    /// On-CPU time of process `unflushed_tgid` not yet added to `CPU_TIME`. Consecutive
    /// slices of one process (its threads taking turns, or it and the idle task) add up here
    /// without a hash lookup; the sum moves to the map when another process runs, and on
    /// every clock tick, so the agent reads at most one tick late.
    pub unflushed_ns: u64,
    /// The `comm` of `unflushed_tgid`, taken while it ran: when its time is flushed, another
    /// process is current, and a name taken then would be that one's.
    pub unflushed_comm: [u8; COMM_LEN],
    pub unflushed_tgid: u32,
    /// 1 when `unflushed_runq` holds delays not yet added to `RUNQ_LATENCY`.
    pub runq_dirty: u32,
    /// Run-queue delays of process `unflushed_tgid` not yet added to `RUNQ_LATENCY`, for the
    /// same reason as `unflushed_ns`.
    pub unflushed_runq: RunqHistogram,
    /// The thread id of the task whose `se.sum_exec_runtime` is in `since_ns`, plus one (0:
    /// none yet; kernel accounting only).
    pub running_task: u64,
    /// Scratch word: a `task_struct` pointer written here and read back is a plain number to
    /// the verifier, which forbids arithmetic on the pointer itself (hashing it to a slot).
    pub task_scratch: u64,
    /// On-CPU time of process `deferred_tgid` whose `CPU_TIME` entry could not be allocated
    /// when it was flushed (the kernel's BPF memory cache was empty, as happens in bursts of
    /// process creation): added at this CPU's next flush, when the cache has been refilled.
    pub deferred_ns: u64,
    pub deferred_tgid: u32,
    pub _reserved: u32,
}

/// Number of slots in the table of runnable-since times (a power of two).
pub const RUNNABLE_SLOTS: u32 = 1 << 16;

/// When a task became runnable, in the slot its key hashes to. The key is stored too, so a
/// task whose slot was taken by another is recognised and skipped, never mis-measured.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunnableSince {
    pub task: u64,
    /// Where the programs time wake-ups: `bpf_ktime_get_ns()` when the task became runnable
    /// (0: not waiting). Where they read the kernel's accounting: the task's
    /// `sched_info.run_delay` when it last left a CPU.
    pub since_ns: u64,
    /// The task's `sched_info.pcount` when it last left a CPU (kernel accounting only): one
    /// more at the next switch-out means exactly one wait in between.
    pub runs: u64,
}

/// The slot of a task key (a `task_struct` address or a thread id) in the runnable table.
#[inline(always)]
pub fn runnable_slot(task: u64) -> u32 {
    // Fibonacci hashing: addresses share their low bits, so mix before taking the top bits.
    (task.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - RUNNABLE_SLOTS.trailing_zeros())) as u32
}

/// Run-queue latency histogram of one process, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunqHistogram {
    pub buckets: [u64; RUNQ_BUCKETS],
    pub sum_ns: u64,
}

impl RunqHistogram {
    pub const ZERO: Self = Self {
        buckets: [0; RUNQ_BUCKETS],
        sum_ns: 0,
    };
}

/// One record of the `EXECS` ring buffer: a process that exec'd, and its new name (the
/// process may be gone by the time the agent reads procfs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub tgid: u32,
    /// `comm` right after the exec, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

impl ExecEvent {
    /// Reads a record as the ring buffer hands it over; `None` if it is too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let tgid = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
        let comm = bytes.get(4..4 + COMM_LEN)?.try_into().ok()?;
        Some(Self { tgid, comm })
    }
}

/// What the kernel knows about a process: its name and whether it has exited.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessMeta {
    /// `comm` at exec (or when first seen), NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// `bpf_ktime_get_ns()` when the thread-group leader exited; 0 while it lives.
    pub exit_ns: u64,
    /// 1 when `comm` was taken at exec (the executable's name), 0 when taken from whichever
    /// thread happened to run first (which may have renamed itself).
    pub from_exec: u32,
    /// The parent's thread-group id when the process was forked (not exec'd) by a server and
    /// took up a connection it inherited: it runs the parent's program. 0 otherwise.
    pub forked_from: u32,
}

impl ProcessMeta {
    /// The server that forked this process, if it runs that server's program (no exec since).
    pub fn forked_by(&self) -> Option<u32> {
        (self.from_exec == 0 && self.forked_from != 0).then_some(self.forked_from)
    }
}

/// How often the running task's time is flushed into the maps on each CPU (the clock-tick
/// program's period).
pub const TICK_PERIOD_NS: u64 = 250_000_000;

/// Where the kernel keeps its own accounting of each task in `task_struct`, found in the
/// kernel's BTF at start-up and handed to the programs as a read-only global. With these, the
/// switch program reads how long a task ran and waited instead of timing it: no clock read per
/// switch and no program at wake-ups. All zero when the kernel lacks them (no BTF, or
/// `CONFIG_SCHED_INFO` off); the programs then time switches and wake-ups themselves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskAccountingOffsets {
    /// `se.sum_exec_runtime`: nanoseconds the task has run, updated at every switch.
    pub sum_exec_runtime: u32,
    /// `sched_info.run_delay`: nanoseconds the task has waited runnable on a run queue.
    pub run_delay: u32,
    /// `sched_info.pcount`: times the task has arrived on a CPU after such a wait.
    pub pcount: u32,
    /// `pid` (4 bytes): the thread id, which names the incoming task in the per-CPU slot.
    pub pid: u32,
    /// `tgid` (4 bytes): the process the outgoing task's time is charged to.
    pub tgid: u32,
    /// `se.prev_sum_exec_runtime`: `sum_exec_runtime` when the fair class last picked the task
    /// to run, so the run now ending for a task whose arrival the slot did not note (some
    /// kernels switch to a few tasks without reporting it). 0 when not found.
    pub prev_sum_exec_runtime: u32,
    /// `policy` (4 bytes): only a fair-class task (`SCHED_NORMAL`, `SCHED_BATCH`,
    /// `SCHED_IDLE`) keeps `prev_sum_exec_runtime`. 0 when not found.
    pub policy: u32,
}

impl TaskAccountingOffsets {
    /// Whether every field was found (offsets inside `task_struct` are never 0 for these).
    pub fn is_complete(&self) -> bool {
        self.sum_exec_runtime != 0
            && self.run_delay != 0
            && self.pcount != 0
            && self.pid != 0
            && self.tgid != 0
    }
}

/// Offsets into the classic `sched:*` tracepoint records, read from tracefs `format` files at
/// start-up. Only used when BTF tracepoints are unavailable.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedTracepointLayout {
    pub switch_prev_pid: u32,
    pub switch_prev_state: u32,
    pub switch_next_pid: u32,
    pub wakeup_pid: u32,
    /// The `prev_state` bit that marks a preempted (still runnable) task; 0 if unknown.
    pub preempt_marker: u64,
}

/// Faults the scheduler programs act out for tests (`SCHED_TEST_FAULTS`, a read-only global).
pub mod test_fault {
    /// A process's first `CPU_TIME` insert fails as an allocation failure does, so that its
    /// first slice is deferred (`CpuSlot::deferred_ns`).
    pub const FIRST_CPU_TIME_ALLOCATION: u32 = 1;
}

/// Indexes into the per-CPU `SCHED_ERRORS` counter array.
pub mod errors {
    /// `CPU_TIME` was full: a process's on-CPU time was not recorded.
    pub const CPU_TIME_FULL: u32 = 0;
    /// `RUNQ_LATENCY` was full: a run-queue delay was not recorded.
    pub const RUNQ_FULL: u32 = 1;
    /// A runnable task's slot was taken by another task before it ran: its delay was not
    /// measured (the table is sized so that this stays rare).
    pub const RUNNABLE_SLOT_TAKEN: u32 = 2;
    /// `PROCESS_META` was full: a process could not be named by the kernel.
    pub const PROCESS_META_FULL: u32 = 3;
    /// The exec ring buffer was full: the agent could not name a process while it lived and
    /// falls back to what the kernel recorded (the interpreter's name, not its script's).
    pub const EXEC_EVENTS_LOST: u32 = 4;
    /// The kernel could not allocate a `CPU_TIME` entry for a new process at that moment
    /// (its BPF memory cache was empty, or the bucket was busy) and the CPU's one deferred
    /// slice (`CpuSlot::deferred_ns`) held another process's: one slice of its on-CPU time
    /// was not recorded.
    pub const CPU_TIME_ALLOC_FAILED: u32 = 5;
    /// The same for a `RUNQ_LATENCY` entry: some run-queue delays of a new process were not
    /// recorded.
    pub const RUNQ_ALLOC_FAILED: u32 = 6;
    pub const COUNT: u32 = 7;
    /// Label values, in index order.
    pub const NAMES: [&str; COUNT as usize] = [
        "cpu_time_full",
        "runq_full",
        "runnable_slot_taken",
        "process_meta_full",
        "exec_events_lost",
        "cpu_time_alloc_failed",
        "runq_alloc_failed",
    ];
}

const _: () =
    assert!(core::mem::size_of::<CpuSlot>() == 80 + core::mem::size_of::<RunqHistogram>());
const _: () = assert!(core::mem::size_of::<RunnableSince>() == 24);
const _: () = assert!(core::mem::size_of::<RunqHistogram>() == 8 * (RUNQ_BUCKETS + 1));
const _: () = assert!(core::mem::size_of::<ProcessMeta>() == 32);
const _: () = assert!(core::mem::size_of::<SchedTracepointLayout>() == 24);
const _: () = assert!(core::mem::size_of::<TaskAccountingOffsets>() == 28);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), made of integers, without padding (asserted above).
    unsafe impl aya::Pod for super::CpuSlot {}
    unsafe impl aya::Pod for super::RunnableSince {}
    unsafe impl aya::Pod for super::RunqHistogram {}
    unsafe impl aya::Pod for super::ProcessMeta {}
    unsafe impl aya::Pod for super::SchedTracepointLayout {}
    unsafe impl aya::Pod for super::TaskAccountingOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_edges_are_inclusive_upper_bounds() {
        assert_eq!(runq_bucket(0), 0);
        assert_eq!(runq_bucket(1024), 0);
        assert_eq!(runq_bucket(1025), 1);
        assert_eq!(runq_bucket(2048), 1);
        assert_eq!(runq_bucket(2049), 2);
        let last_bound = 1u64 << (RUNQ_FIRST_BOUND_LOG2 + RUNQ_BUCKETS as u32 - 2);
        assert_eq!(runq_bucket(last_bound), RUNQ_BUCKETS - 2);
        assert_eq!(runq_bucket(last_bound + 1), RUNQ_BUCKETS - 1);
        assert_eq!(runq_bucket(u64::MAX), RUNQ_BUCKETS - 1);
    }

    #[test]
    fn runnable_slots_spread_aligned_addresses() {
        // task_struct addresses are a few KiB apart: they must not pile into a few slots.
        let mut used = [false; RUNNABLE_SLOTS as usize];
        let base = 0xffff_8880_0000_0000u64;
        for i in 0..1000u64 {
            used[runnable_slot(base + i * 0x2c00) as usize] = true;
        }
        assert!(used.iter().filter(|&&u| u).count() > 990);
        assert!(runnable_slot(u64::MAX) < RUNNABLE_SLOTS);
    }

    /// A comm as `bpf_get_current_comm` leaves it before 6.9: the name, its NUL, then
    /// whatever the buffer held.
    fn as_left_by_the_helper(name: &[u8], garbage: u8) -> [u64; 2] {
        let mut bytes = [garbage; COMM_LEN];
        bytes[..name.len()].copy_from_slice(name);
        bytes[name.len()] = 0;
        [
            u64::from_le_bytes(bytes[..8].try_into().unwrap()),
            u64::from_le_bytes(bytes[8..].try_into().unwrap()),
        ]
    }

    fn padded(name: &[u8]) -> [u64; 2] {
        as_left_by_the_helper(name, 0)
    }

    #[test]
    fn what_follows_a_comms_nul_is_zeroed() {
        for name in [
            &b""[..],
            b"a",
            b"pyexcl",
            b"seven77",
            b"eightchr",
            b"nine_char",
            b"fifteen_chars_x",
            "caf\u{e9}\u{80}".as_bytes(),
        ] {
            for garbage in [0x00, 0x01, 0x7f, 0x80, 0xff, b'x'] {
                assert_eq!(
                    nul_padded_comm(as_left_by_the_helper(name, garbage)),
                    padded(name),
                    "{name:?} followed by {garbage:#x}"
                );
            }
        }
    }
}
