//! Every map of the kernel side, named after what it holds. Sizes are defaults: the agent may
//! override `max_entries` at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use monitor_common::sched::{
    CpuSlot, ProcessMeta, RUNNABLE_SLOTS, RunnableSince, RunqHistogram, SchedTracepointLayout,
    errors,
};
use monitor_common::{
    head::{HeadLines, HostValue, LongHead},
    http::{
        ALLOWED_PORT_WORDS, CAPTURE_LEN, ClientErrorKey, Connection, DurationHistogram,
        DurationKey, HttpConfig, IDLE_CANDIDATE_SLOTS, MEASURED_PROCESS_WORDS, NotRequestScanner,
        ProcessRoute, RouteTemplater, counter, idle_ring,
    },
};

/// Entries are allocated on insert, not up front: per-CPU values times max_entries times CPUs
/// would reserve tens of MiB on a large host for processes that may never exist.
const NO_PREALLOC: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;

/// On-CPU nanoseconds per process (tgid), per CPU.
#[map]
pub static CPU_TIME: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(16384, NO_PREALLOC);

/// Run-queue latency histogram per process (tgid), per CPU; sized by the agent
/// (`--max-processes`), like CPU_TIME.
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

/// The tgid of every process that calls exec, so that the agent reads its identity (script,
/// environment, cgroup) from procfs while it lives: a short-lived client may be gone by the
/// next refresh. 128 KiB holds 4096 events (20 bytes and an 8-byte header each, 8-aligned);
/// a full buffer is counted (`EXEC_EVENTS_LOST`).
#[map]
pub static EXECS: RingBuf = RingBuf::with_byte_size(128 * 1024, 0);

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

// --- HTTP ---

/// Where `fd` is in a `syscalls:sys_enter_close` record, written by the agent once that program
/// is attached; 0 while close(2) is handled at its exit.
#[map]
pub static CLOSE_FD_OFFSET: Array<u32> = Array::with_max_entries(1, 0);

/// The last idle-timeout epoch swept for responses left idle, plus one (0: none yet).
#[map]
pub static LAST_IDLE_SWEEP: Array<u64> = Array::with_max_entries(1, 0);

/// What the idle sweep running now sweeps (one CPU sweeps).
#[map]
pub static SWEEP_CONTEXT: Array<SweepContext> = Array::with_max_entries(1, 0);

#[repr(C)]
pub struct SweepContext {
    pub now: u64,
    /// The epoch being swept in (the current one) and its length, the idle timeout.
    pub epoch: u64,
    pub length: u64,
    /// The ring read (the previous epoch's).
    pub ring: u32,
    pub _reserved: u32,
    /// How many of its slots were claimed.
    pub claimed: u64,
}

/// Two rings of connection keys, one per epoch parity: the connections whose response started
/// in that epoch, for the idle sweep to look at instead of the whole table.
#[map]
pub static IDLE_CANDIDATES: Array<u64> = Array::with_max_entries(2 * IDLE_CANDIDATE_SLOTS, 0);

/// The rings' state (`monitor_common::http::idle_ring`).
#[map]
pub static IDLE_RINGS: Array<u64> = Array::with_max_entries(idle_ring::COUNT, 0);

/// Tracked connections by (tgid, fd): accepted by a process, or open before the agent started
/// (seeded by the agent). LRU: a process killed without closing its sockets cannot fill it.
#[map]
pub static CONNECTIONS: LruHashMap<u64, Connection> = LruHashMap::with_max_entries(65536, 0);

/// One bit per process that has had a tracked connection (`measured_process_bit`): the reads
/// and writes of every other process on the host end after one array load instead of a hash
/// look-up. Set here when a connection is tracked and by the agent when it adopts one; the
/// agent clears the bits of processes that have gone. Mappable, so that the agent sets and
/// clears bits with atomic operations that never undo the kernel's.
#[map]
pub static MEASURED_PROCESSES: Array<u64> =
    Array::with_max_entries(MEASURED_PROCESS_WORDS, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// The ports `--http-ports` names, a bit each (`allowed_port_bit`), written by the agent
/// before the programs are attached.
#[map]
pub static ALLOWED_PORTS: Array<u64> = Array::with_max_entries(ALLOWED_PORT_WORDS, 0);

/// One bit per process that has served a connection (accepted, received or inherited one),
/// as in `MEASURED_PROCESSES`: only such a process's forked children are looked at for
/// connections they inherited (`fork`); the children of a process that was only a client
/// (a shell, a supervisor, a load generator) do not pay for it on every read and write.
/// Cleared by the agent for processes that have gone.
#[map]
pub static SERVING_PROCESSES: Array<u64> =
    Array::with_max_entries(MEASURED_PROCESS_WORDS, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// One bit per process that has called into a TLS library the programs watch (`tls`): only
/// such a process's socket reads and writes look for a library call in progress. Never
/// cleared: a stale bit costs a reused process id one look-up per socket syscall.
#[map]
pub static TLS_PROCESSES: Array<u64> = Array::with_max_entries(MEASURED_PROCESS_WORDS, 0);

/// A TLS library call in progress on a thread: its arguments, the socket its syscalls used
/// (`tls::NO_SOCKET` until one did), and the one its object used before (`tls::NO_SOCKET`
/// if none is known).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    /// The library's connection object (`SSL *`).
    pub ssl: u64,
    /// The caller's plain-text buffer.
    pub buffer: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the library writes the bytes moved; 0 for the
    /// calls that return them.
    pub moved_at: u64,
    pub socket: u32,
    /// `TLS_SOCKETS` of the object when the call began.
    pub known: u32,
    /// 1 in `SSL_write` and `SSL_write_ex`.
    pub writing: u32,
    pub _pad: u32,
}

/// TLS library calls in progress, by thread (`bpf_get_current_pid_tgid`). LRU: a thread
/// killed inside a call never returns from it.
#[map]
pub static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// A library connection object of a process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsObject {
    pub ssl: u64,
    pub tgid: u32,
    pub _pad: u32,
}

impl TlsObject {
    /// The object at address `ssl` in process `tgid`.
    #[inline(always)]
    pub fn new(ssl: u64, tgid: u32) -> Self {
        Self { ssl, tgid, _pad: 0 }
    }
}

/// The socket each library connection object was last seen to use: a call served from the
/// library's buffer makes no syscall to tell it. Forgotten when `SSL_new` returns an object
/// at the same address (`tls::on_new`); LRU besides.
#[map]
pub static TLS_SOCKETS: LruHashMap<TlsObject, u32> = LruHashMap::with_max_entries(16384, 0);

/// The last socket read a thread of a TLS process made outside a library call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SocketRead {
    pub fd: u32,
    pub _pad: u32,
    /// When it returned (`bpf_ktime_get_ns`).
    pub at: u64,
}

/// The socket read each thread of a TLS process made last outside a library call, by thread:
/// a library that reads through memory BIOs (Node, Python's asyncio) is handed the ciphertext
/// its caller read from the socket just before, on the same thread (`tls::socket_of`). LRU:
/// threads end without a word.
#[map]
pub static TLS_LAST_READS: LruHashMap<u64, SocketRead> = LruHashMap::with_max_entries(16384, 0);

/// A library write whose plain text moved before anything told its socket: a memory-BIO
/// client's first request, written into the library before the connection's first read. Its
/// connection waits under the thread's placeholder key (`tls::placeholder_key`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingWrite {
    /// The library's connection object (`SSL *`).
    pub ssl: u64,
    /// When the call returned (`bpf_ktime_get_ns`).
    pub at: u64,
}

/// Library writes waiting for the socket write that sends their ciphertext, by thread: the
/// caller sends it right after the call, on the same thread (`tls::on_socket_write`). LRU:
/// threads end without a word.
#[map]
pub static TLS_PENDING_WRITES: LruHashMap<u64, PendingWrite> =
    LruHashMap::with_max_entries(4096, 0);

/// Request durations per (process, method, status, route), per CPU.
#[map]
pub static HTTP_DURATION: PerCpuHashMap<DurationKey, DurationHistogram> =
    PerCpuHashMap::with_max_entries(16384, NO_PREALLOC);

/// Routes each process has been granted under its budget.
#[map]
pub static ROUTES_SEEN: HashMap<ProcessRoute, u8> = HashMap::with_max_entries(65536, NO_PREALLOC);

/// Distinct routes granted per process (tgid), for the budget.
#[map]
pub static ROUTE_COUNT: HashMap<u32, u32> = HashMap::with_max_entries(16384, NO_PREALLOC);

/// Open files (`struct file` addresses) of server connections a process passed to another
/// over a Unix socket, until the receiver takes them (`handoff`). LRU: a connection passed to
/// a process that never receives it ages out.
#[map]
pub static HANDED_OVER: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

/// Where `msg` is in a `syscalls:sys_enter_sendmsg` record, written by the agent once that
/// program is attached; 0 while passed connections are noted at sendmsg's exit.
#[map]
pub static SENDMSG_MSG_OFFSET: Array<u32> = Array::with_max_entries(1, 0);

/// A child forked by a process with connections: when, and by which process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ForkedChild {
    pub forked_at_ns: u64,
    pub parent_tgid: u32,
    pub _pad: u32,
}

/// Processes forked by a process with connections (`fork`): their reads on descriptors
/// nobody tracks are looked at for a request line for a while. LRU: children that never read
/// again age out.
#[map]
pub static FORKED_CHILDREN: LruHashMap<u32, ForkedChild> = LruHashMap::with_max_entries(4096, 0);

/// Where `child_pid` is in a `sched:sched_process_fork` record, written by the agent once
/// that program is attached; 0 until then.
#[map]
pub static FORK_CHILD_PID_OFFSET: Array<u32> = Array::with_max_entries(1, 0);

/// When a connection was last handed over (`bpf_ktime_get_ns`), 0 for never.
#[map]
pub static LAST_HAND_OVER: Array<u64> = Array::with_max_entries(1, 0);

/// Listening sockets by (tgid, fd) and the agent's verdict on their port (`--http-ports`).
#[map]
pub static LISTENERS: HashMap<u64, u8> = HashMap::with_max_entries(8192, 0);

/// The path bytes of a request line that arrived cut, until the rest comes.
#[map]
pub static PARTIAL_PATHS: LruHashMap<u64, PartialPath> = LruHashMap::with_max_entries(1024, 0);

/// New routes, for the agent to learn their text. Rare by design: steady traffic on known
/// routes writes nothing here. Read at each refresh (1 s by default), and sooner when an
/// announcement finds it half full (`HTTP_EVENTS_WAKE_AT`): at about 216 bytes an
/// announcement, 1 MiB holds some 4,800, a second of processes that each serve a first route
/// as fast as a 2-CPU host starts them (256 KiB lost a few hundred at 1,600 a second).
#[map]
pub static HTTP_EVENTS: RingBuf = RingBuf::with_byte_size(HTTP_EVENTS_BYTES, 0);

pub const HTTP_EVENTS_BYTES: u32 = 1024 * 1024;
/// Unread bytes in `HTTP_EVENTS` from which an announcement wakes the agent's reader.
pub const HTTP_EVENTS_WAKE_AT: u64 = HTTP_EVENTS_BYTES as u64 / 2;

/// `monitor_common::http::counter`, per CPU.
#[map]
pub static HTTP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The agent's settings for the HTTP programs (one entry).
#[map]
pub static HTTP_CONFIG: Array<HttpConfig> = Array::with_max_entries(1, 0);

/// All zeroes, to insert new entries from: these values are too big for the BPF stack.
#[map]
pub static ZERO_DURATION: Array<DurationHistogram> = Array::with_max_entries(1, 0);
#[map]
pub static ZERO_PARTIAL: Array<PartialPath> = Array::with_max_entries(1, 0);

/// Server addresses each client process has been granted, and how many (the budget).
#[map]
pub static HOSTS_SEEN: HashMap<ProcessRoute, u8> = HashMap::with_max_entries(16384, NO_PREALLOC);
#[map]
pub static HOST_COUNT: HashMap<u32, u32> = HashMap::with_max_entries(16384, NO_PREALLOC);

/// Client requests without a complete response, per (process, server, method, kind).
#[map]
pub static CLIENT_ERRORS: PerCpuHashMap<ClientErrorKey, u64> =
    PerCpuHashMap::with_max_entries(4096, NO_PREALLOC);

/// Failed connects per process (tgid).
#[map]
pub static CONNECT_ERRORS: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::with_max_entries(4096, NO_PREALLOC);

/// Per-CPU scratch for the bytes captured from one syscall.
#[map]
pub static CAPTURE: PerCpuArray<Capture> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch where a global function builds a connection before inserting it: on its
/// own stack the value would take 200 of the 512 bytes that the calling program and the
/// functions it calls share (kernels without private BPF stacks count them together).
#[map]
pub static NEW_CONNECTION: PerCpuArray<Connection> = PerCpuArray::with_max_entries(1, 0);

/// Room for a cut request path: appends at any offset below 256 of up to 255 bytes stay in
/// bounds without the verifier having to follow the arithmetic.
#[repr(C)]
pub struct PartialPath {
    pub len: u32,
    pub _reserved: u32,
    pub bytes: [u8; 512],
}

#[repr(C)]
pub struct Capture {
    pub bytes: [u8; CAPTURE_LEN],
    /// See `http::opaque`.
    pub scratch: u64,
    /// The scanners' state lives here, not on the stack: the verifier does not follow map
    /// memory, so a byte loop over it is checked once (see `http`).
    pub lines: HeadLines,
    /// A response head read on past the capture, window by window.
    pub long_head: LongHead,
    pub host: HostValue,
    pub templater: RouteTemplater,
    pub not_request: NotRequestScanner,
    /// The bytes a value loop reads (`http::read_value`): its steps take nothing but their
    /// index (see `loops::loop_step`).
    pub value: ValueRange,
    /// Never written: room for what a verifier that loses the cap of a read's length
    /// (`http::within_capture`) takes for its largest size, the mask's 511 bytes after a
    /// prefix of up to 15, so that the read into `bytes` passes there too.
    pub _verifier_room: [u8; 48],
}

/// Capture bytes `from..end`. 32-bit: loaded, they stay below 2^32 for the verifier, which
/// keeps the states of the loops that read them few.
#[repr(C)]
pub struct ValueRange {
    pub from: u32,
    pub end: u32,
}

#[inline(always)]
pub fn count(counter: u32) {
    if let Some(value) = HTTP_COUNTERS.get_ptr_mut(counter) {
        // SAFETY: a per-CPU slot; programs on one CPU do not nest here.
        unsafe { *value += 1 };
    }
}
