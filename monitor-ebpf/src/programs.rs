//! The programs of both objects (`main.rs`, `bounded_loops.rs`), each a few lines calling
//! into a module. Each object's crate root declares the modules, with its own `loops`.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_task_pt_regs},
    },
    macros::{btf_tracepoint, perf_event, raw_tracepoint, tracepoint, uprobe, uretprobe},
    programs::{
        BtfTracePointContext, PerfEventContext, ProbeContext, RawTracePointContext,
        RetProbeContext, TracePointContext,
    },
};

use crate::{
    fork, handoff, http, maps, maps::SCHED_TP_LAYOUT, sched, sched::Switch, syscalls,
    syscalls::SyscallExit, tls,
};

// Every entry point is `#[inline(always)]`: the macros wrap it in the real program and drop
// its return value, so as a separate BPF function it could return garbage in r0, which the
// verifier rejects when that garbage is a stack pointer.

// --- Syscalls: the exit of every syscall, filtered on the id first. ---

/// `sys_exit(struct pt_regs *regs, long ret)`: the registers are read directly (BTF-typed).
#[btf_tracepoint(function = "sys_exit")]
#[inline(always)]
pub fn sys_exit_btf(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: a trusted pointer from the tracepoint.
    unsafe { on_exit_with_regs(ctx.arg(0), syscalls::is_watched, || ctx.arg(1)) };
    0
}

/// The exit of a syscall whose saved user registers are at `regs`, checked on its id first
/// (`watched`: the syscalls this hook handles); `ret` gives its result.
///
/// # Safety
/// `regs` is a trusted BTF `pt_regs` pointer, whose field loads the verifier checks.
#[inline(always)]
unsafe fn on_exit_with_regs(
    regs: *const pt_regs,
    watched: impl FnOnce(u64) -> bool,
    ret: impl FnOnce() -> i64,
) {
    // SAFETY: see above.
    let id = unsafe { (*regs).orig_rax };
    if watched(id) {
        // SAFETY: see above.
        let args = unsafe { [(*regs).rdi, (*regs).rsi, (*regs).rdx, (*regs).r10] };
        syscalls::on_exit(&SyscallExit {
            id,
            ret: ret(),
            args,
        });
    }
}

/// The same without BTF: the registers are an untyped pointer, read with a helper.
#[raw_tracepoint(tracepoint = "sys_exit")]
#[inline(always)]
pub fn sys_exit_raw(ctx: RawTracePointContext) -> i32 {
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: the helper checks the kernel address; a failed read skips the event.
    let Ok(id) = (unsafe { bpf_probe_read_kernel(&(*regs).orig_rax) }) else {
        return 0;
    };
    if syscalls::is_watched(id) {
        // SAFETY: as above.
        let read = |field: *const u64| unsafe { bpf_probe_read_kernel(field).unwrap_or(0) };
        // SAFETY: field addresses inside the pt_regs the tracepoint passed.
        let args = unsafe {
            [
                read(&(*regs).rdi),
                read(&(*regs).rsi),
                read(&(*regs).rdx),
                read(&(*regs).r10),
            ]
        };
        syscalls::on_exit(&SyscallExit {
            id,
            ret: ctx.arg(1),
            args,
        });
    }
    0
}

/// `syscalls:sys_exit_<name>` of the watched syscalls alone: one program attached to each of
/// their exits, so that no other syscall runs a program. The record holds no arguments; the
/// registers are the task's own (BTF-typed, read directly), where the return value is in `rax`.
#[tracepoint(category = "syscalls", name = "sys_exit_read")]
#[inline(always)]
pub fn sys_exit_each(_ctx: TracePointContext) -> u32 {
    // SAFETY: tracing helpers; the result is the current task's saved user registers, a
    // trusted BTF pointer.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    // SAFETY: as above.
    unsafe { on_exit_with_regs(regs, syscalls::is_watched, || (*regs).rax as i64) };
    0
}

/// `sock:sock_recv_length(struct sock *sk, int ret, int flags)`, which the kernel runs as
/// a socket receive returns, inside the syscall that made it: the task's saved user registers
/// say which syscall that is and hold its arguments, and `ret` is its result. Only the reads
/// and writes go this way (`syscalls::is_socket_data`); the rest of the socket syscalls are
/// seen at their exits (`sys_exit_each`).
#[btf_tracepoint(function = "sock_recv_length")]
#[inline(always)]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    let ret = socket_result(&ctx);
    // What `http::on_data_in` ignores, dropped before the registers are fetched: an event
    // loop's reads end in EAGAIN.
    if ret >= 0 || ret == http::ECONNRESET {
        on_socket_data(ret);
    }
    0
}

/// `sock:sock_send_length(struct sock *sk, int ret, int flags)`: as `sock_recv_length`.
#[btf_tracepoint(function = "sock_send_length")]
#[inline(always)]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    let ret = socket_result(&ctx);
    // What `http::on_data_out` ignores, as above.
    if ret > 0 || ret == http::EPIPE || ret == http::ECONNRESET {
        on_socket_data(ret);
    }
    0
}

/// The socket tracepoints' `ret`, an int, which the kernel passes zero-extended: -EAGAIN
/// arrives as 4294967285.
#[inline(always)]
fn socket_result(ctx: &BtfTracePointContext) -> i64 {
    i64::from(ctx.arg::<u64>(1) as i32)
}

#[inline(always)]
fn on_socket_data(ret: i64) {
    // A process without connections reads and writes nothing the programs follow, unless it
    // is receiving one (`handoff`): dropped before the two helper calls for the registers.
    if !http::may_have_connections(http::current_tgid()) && !handoff::handed_over_lately() {
        return;
    }
    // SAFETY: tracing helpers; the result is the current task's saved user registers, a
    // trusted BTF pointer.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    // SAFETY: as above.
    unsafe { on_exit_with_regs(regs, syscalls::is_socket_data, || ret) };
}

#[btf_tracepoint(function = "sock_recv_length")]
#[inline(always)]
pub fn sock_recv_length_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sock_send_length")]
#[inline(always)]
pub fn sock_send_length_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_read")]
#[inline(always)]
pub fn sys_exit_each_empty(_ctx: TracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "sys_exit")]
#[inline(always)]
pub fn sys_exit_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

// --- close(2) at its entry. ---

/// `syscalls:sys_enter_close`, which runs for close(2) alone. At close's exit the fd number is
/// already free: another thread of the process may have accepted a connection on it in that
/// instant, and the exit would drop the new connection's state. At the entry the fd is still
/// the old connection's.
#[tracepoint(category = "syscalls", name = "sys_enter_close")]
#[inline(always)]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let offset = syscalls::close_fd_offset();
    if offset != 0 {
        // SAFETY: the agent read this offset of the 8-byte `fd` field from the tracepoint's
        // format; the helper checks the read.
        if let Ok(fd) = unsafe { ctx.read_at::<u64>(offset as usize) } {
            http::on_close(fd as u32);
        }
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_close")]
#[inline(always)]
pub fn sys_enter_close_empty(_ctx: TracePointContext) -> u32 {
    0
}

// --- TLS libraries: plain text at OpenSSL's reads and writes (`tls`). ---

/// The entry of `SSL_read(ssl, buf, num)`.
#[uprobe]
#[inline(always)]
pub fn tls_read(ctx: ProbeContext) -> u32 {
    tls::on_call(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0), 0, false);
    0
}

/// The entry of `SSL_write(ssl, buf, num)`.
#[uprobe]
#[inline(always)]
pub fn tls_write(ctx: ProbeContext) -> u32 {
    tls::on_call(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0), 0, true);
    0
}

/// The entry of `SSL_read_ex(ssl, buf, num, &read)`.
#[uprobe]
#[inline(always)]
pub fn tls_read_ex(ctx: ProbeContext) -> u32 {
    on_call_ex(&ctx, false);
    0
}

/// The entry of `SSL_write_ex(ssl, buf, num, &written)`.
#[uprobe]
#[inline(always)]
pub fn tls_write_ex(ctx: ProbeContext) -> u32 {
    on_call_ex(&ctx, true);
    0
}

#[inline(always)]
fn on_call_ex(ctx: &ProbeContext, writing: bool) {
    let moved_at = ctx.arg(3).unwrap_or(0);
    if moved_at != 0 {
        tls::on_call(
            ctx.arg(0).unwrap_or(0),
            ctx.arg(1).unwrap_or(0),
            moved_at,
            writing,
        );
    }
}

/// The return of `SSL_read` and `SSL_read_ex`. Both return a C `int`, which the caller finds
/// in the low half of `rax` (the upper half is not sign-extended: -1 is 0xffffffff there).
#[uretprobe]
#[inline(always)]
pub fn tls_read_return(ctx: RetProbeContext) -> u32 {
    tls::on_return::<false>(ctx.ret::<i32>());
    0
}

/// The return of `SSL_write` and `SSL_write_ex`.
#[uretprobe]
#[inline(always)]
pub fn tls_write_return(ctx: RetProbeContext) -> u32 {
    tls::on_return::<true>(ctx.ret::<i32>());
    0
}

/// The return of `SSL_new`: a new library connection object.
#[uretprobe]
#[inline(always)]
pub fn tls_new_return(ctx: RetProbeContext) -> u32 {
    tls::on_new(ctx.ret::<u64>());
    0
}

// --- fork: server connections a child inherits. ---

/// `sched:sched_process_fork`, in the parent: notes the child of a process with connections
/// (see `fork`).
#[tracepoint(category = "sched", name = "sched_process_fork")]
#[inline(always)]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let offset = maps::FORK_CHILD_PID_OFFSET.get(0).copied().unwrap_or(0);
    if offset != 0 {
        // SAFETY: the agent read this offset of the 4-byte `child_pid` field from the
        // tracepoint's format; the helper checks the read.
        if let Ok(child) = unsafe { ctx.read_at::<u32>(offset as usize) } {
            fork::on_fork(child);
        }
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
#[inline(always)]
pub fn sched_process_fork_empty(_ctx: TracePointContext) -> u32 {
    0
}

// --- sendmsg(2) at its entry: connections passed to another process. ---

/// `syscalls:sys_enter_sendmsg`, which runs for sendmsg(2) alone: a connection passed to
/// another process is noted before the receiver, maybe on another CPU, can take it.
#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
#[inline(always)]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    let offset = syscalls::sendmsg_msg_offset();
    if offset != 0 {
        // SAFETY: the agent read this offset of the 8-byte `msg` field from the tracepoint's
        // format; the helper checks the read.
        if let Ok(msg) = unsafe { ctx.read_at::<u64>(offset as usize) } {
            handoff::note_passed_connections(msg);
        }
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
#[inline(always)]
pub fn sys_enter_sendmsg_empty(_ctx: TracePointContext) -> u32 {
    0
}

// --- BTF tracepoints: arguments are the tracepoint prototype's, one u64 slot each. ---

/// `sched_switch(bool preempt, task_struct *prev, task_struct *next, unsigned int prev_state)`.
/// Where the agent found the kernel's per-task accounting, the switch reads it; else it
/// times the switch itself, with the wake-up programs noting when tasks became runnable.
#[btf_tracepoint(function = "sched_switch")]
#[inline(always)]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    if let Some(offsets) = sched::task_accounting() {
        // SAFETY: trusted task pointers from the tracepoint.
        let (prev, next) = unsafe { (sched::Task::new(ctx.arg(1)), sched::Task::new(ctx.arg(2))) };
        sched::on_accounted_switch(prev, next, &offsets);
        return 0;
    }
    let preempt: u64 = ctx.arg(0);
    let prev_state: u64 = ctx.arg(3);
    sched::on_switch(&Switch {
        prev_task: sched::task_key(ctx.arg(1)),
        next_task: sched::task_key(ctx.arg(2)),
        prev_runnable: preempt & 1 != 0 || prev_state == 0,
    });
    0
}

#[btf_tracepoint(function = "sched_wakeup")]
#[inline(always)]
pub fn sched_wakeup_btf(ctx: BtfTracePointContext) -> i32 {
    sched::on_wakeup(sched::task_key(ctx.arg(0)));
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
#[inline(always)]
pub fn sched_wakeup_new_btf(ctx: BtfTracePointContext) -> i32 {
    sched::on_wakeup(sched::task_key(ctx.arg(0)));
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
#[inline(always)]
pub fn sched_process_exec_btf(_ctx: BtfTracePointContext) -> i32 {
    sched::on_exec();
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
#[inline(always)]
pub fn sched_process_exit_btf(_ctx: BtfTracePointContext) -> i32 {
    sched::on_exit();
    0
}

// --- Classic tracepoints: fields at the offsets the agent read from tracefs. ---

#[tracepoint(category = "sched", name = "sched_switch")]
#[inline(always)]
pub fn sched_switch_tp(ctx: TracePointContext) -> u32 {
    let Some(layout) = SCHED_TP_LAYOUT.get(0) else {
        return 0;
    };
    // SAFETY: offsets come from this kernel's format file for this tracepoint.
    let (prev, next, state) = unsafe {
        (
            ctx.read_at::<i32>(layout.switch_prev_pid as usize),
            ctx.read_at::<i32>(layout.switch_next_pid as usize),
            ctx.read_at::<i64>(layout.switch_prev_state as usize),
        )
    };
    if let (Ok(prev), Ok(next), Ok(state)) = (prev, next, state) {
        let state = state as u64;
        sched::on_switch(&Switch {
            prev_task: prev as u64,
            next_task: next as u64,
            prev_runnable: state == 0 || state & layout.preempt_marker != 0,
        });
    }
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup")]
#[inline(always)]
pub fn sched_wakeup_tp(ctx: TracePointContext) -> u32 {
    wakeup_tp(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup_new")]
#[inline(always)]
pub fn sched_wakeup_new_tp(ctx: TracePointContext) -> u32 {
    wakeup_tp(&ctx);
    0
}

#[inline(always)]
fn wakeup_tp(ctx: &TracePointContext) {
    let Some(layout) = SCHED_TP_LAYOUT.get(0) else {
        return;
    };
    // SAFETY: as above.
    if let Ok(pid) = unsafe { ctx.read_at::<i32>(layout.wakeup_pid as usize) } {
        sched::on_wakeup(pid as u64);
    }
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
#[inline(always)]
pub fn sched_process_exec_tp(_ctx: TracePointContext) -> u32 {
    sched::on_exec();
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
#[inline(always)]
pub fn sched_process_exit_tp(_ctx: TracePointContext) -> u32 {
    sched::on_exit();
    0
}

// --- Empty programs on the same hooks: the cost floor that `cargo xtask bench` compares with
// (the agent's hidden `--empty-programs`). ---

#[btf_tracepoint(function = "sched_switch")]
#[inline(always)]
pub fn sched_switch_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_wakeup")]
#[inline(always)]
pub fn sched_wakeup_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
#[inline(always)]
pub fn sched_wakeup_new_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
#[inline(always)]
pub fn sched_process_exec_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
#[inline(always)]
pub fn sched_process_exit_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[perf_event]
#[inline(always)]
pub fn cpu_clock_tick_empty(_ctx: PerfEventContext) -> u32 {
    0
}

// --- Periodic flush of the running task's time (software cpu-clock event, every CPU). ---

#[perf_event]
#[inline(always)]
pub fn cpu_clock_tick(_ctx: PerfEventContext) -> u32 {
    sched::on_tick();
    0
}

/// The tick beside `sched_switch_btf` when it reads the kernel's accounting.
#[perf_event]
#[inline(always)]
pub fn cpu_clock_tick_accounted(_ctx: PerfEventContext) -> u32 {
    if let Some(offsets) = sched::task_accounting() {
        // SAFETY: the helper returns a trusted pointer to `current`.
        let current = unsafe { sched::Task::new(bpf_get_current_task_btf().cast_const().cast()) };
        sched::on_accounted_tick(current, &offsets);
    }
    0
}

// --- The HTTP idle sweep (a software cpu-clock event on one CPU). ---

/// Ends the responses that keep-alive connections left waiting (`http::sweep_idle_responses`).
/// A program of its own, attached with the HTTP programs: the scheduler's tick stays free of
/// the sweep's loops, which kernels without `bpf_loop` refuse, and measures CPU time there.
#[perf_event]
#[inline(always)]
pub fn http_idle_sweep(_ctx: PerfEventContext) -> u32 {
    // SAFETY: no preconditions.
    http::sweep_idle_responses(unsafe { bpf_ktime_get_ns() });
    0
}

#[perf_event]
#[inline(always)]
pub fn http_idle_sweep_empty(_ctx: PerfEventContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
