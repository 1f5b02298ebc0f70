//! `sys_exit` dispatch: the syscall id is checked in the first instructions, and only the
//! socket syscalls go further. The same dispatch serves the other syscall hooks
//! (`--syscall-hook`): the socket syscalls' own exits, and the socket tracepoints, which run
//! inside a read or write and find its syscall in the task's saved registers.
//!
//! One hook, at exit: on x86_64 the saved user registers still hold the syscall's arguments
//! when it returns, so the exit sees the fd, the buffer and the result together and no
//! per-thread state has to carry arguments from entry to exit. close(2) alone is also seen at
//! its entry, where the agent can attach that (see `main::sys_enter_close`).

use crate::{
    client, handoff, http,
    maps::{CLOSE_FD_OFFSET, SENDMSG_MSG_OFFSET},
    server,
};

/// x86_64 syscall numbers (the ABI: they never change).
pub mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const CLOSE: u64 = 3;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const CONNECT: u64 = 42;
    pub const ACCEPT: u64 = 43;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const GETSOCKOPT: u64 = 55;
    pub const ACCEPT4: u64 = 288;
}

/// Syscalls below 64 that matter here, as a bit mask: one test rejects all others.
const WATCHED_LOW: u64 = (1 << nr::READ)
    | (1 << nr::WRITE)
    | (1 << nr::CLOSE)
    | (1 << nr::READV)
    | (1 << nr::WRITEV)
    | (1 << nr::SENDFILE)
    | (1 << nr::CONNECT)
    | (1 << nr::GETSOCKOPT)
    | (1 << nr::ACCEPT)
    | (1 << nr::SENDTO)
    | (1 << nr::RECVFROM)
    | (1 << nr::SENDMSG)
    | (1 << nr::RECVMSG);

#[inline(always)]
pub fn is_watched(id: u64) -> bool {
    if id < 64 {
        WATCHED_LOW & (1 << id) != 0
    } else {
        id == nr::ACCEPT4
    }
}

/// The syscalls that move a socket's bytes through `sock_recvmsg` and `sock_sendmsg`, whose
/// tracepoints (`sock_recv_length`, `sock_send_length`) see them. Not sendfile: it sends
/// through `sendpage` on kernels before 6.5, which no tracepoint sees, and is taken at its
/// exit.
const SOCKET_DATA: u64 = (1 << nr::READ)
    | (1 << nr::WRITE)
    | (1 << nr::READV)
    | (1 << nr::WRITEV)
    | (1 << nr::SENDTO)
    | (1 << nr::RECVFROM)
    | (1 << nr::SENDMSG)
    | (1 << nr::RECVMSG);

#[inline(always)]
pub fn is_socket_data(id: u64) -> bool {
    id < 64 && SOCKET_DATA & (1 << id) != 0
}

/// `MSG_PEEK` in recvfrom's and recvmsg's flags: the bytes stay queued and are read again.
const MSG_PEEK: u64 = 2;

/// A finished syscall: its number, result and first four arguments.
pub struct SyscallExit {
    pub id: u64,
    pub ret: i64,
    pub args: [u64; 4],
}

/// Where the bytes of a read or write are, in the caller's memory.
#[derive(Clone, Copy)]
pub enum Buffer {
    /// `buf` of read/write/recvfrom/sendto.
    Plain(u64),
    /// An iovec array (readv/writev).
    Iovec(u64),
    /// A `struct msghdr` (recvmsg/sendmsg), whose iovecs hold the bytes.
    Msghdr(u64),
    /// sendfile: the bytes come from a file, never seen.
    None,
}

/// Where `sys_enter_close` finds the fd; 0 when that program is not attached.
#[inline(always)]
pub fn close_fd_offset() -> u32 {
    CLOSE_FD_OFFSET.get(0).copied().unwrap_or(0)
}

/// Where `sys_enter_sendmsg` finds the `msghdr`; 0 when that program is not attached.
#[inline(always)]
pub fn sendmsg_msg_offset() -> u32 {
    SENDMSG_MSG_OFFSET.get(0).copied().unwrap_or(0)
}

/// Inlined, like every function here that returns nothing: a BPF function returning nothing
/// may leave a stack pointer in r0, which the verifier rejects.
#[inline(always)]
pub fn on_exit(exit: &SyscallExit) {
    let fd = exit.args[0] as u32;
    let [_, a1, a2, a3] = exit.args;
    match exit.id {
        // A peek (a server telling TLS from clear text by the first byte) is no read: the
        // same bytes come again.
        nr::RECVFROM if a3 & MSG_PEEK != 0 => {}
        nr::RECVMSG if a2 & MSG_PEEK != 0 => {}
        nr::READ | nr::RECVFROM => http::on_data_in(fd, Buffer::Plain(a1), exit.ret),
        nr::READV => http::on_data_in(fd, Buffer::Iovec(a1), exit.ret),
        nr::RECVMSG => {
            if exit.ret >= 0 && handoff::handed_over_lately() {
                handoff::track_received_connections(a1);
            }
            http::on_data_in(fd, Buffer::Msghdr(a1), exit.ret)
        }
        nr::WRITE | nr::SENDTO => http::on_data_out(fd, Buffer::Plain(a1), exit.ret),
        nr::WRITEV => http::on_data_out(fd, Buffer::Iovec(a1), exit.ret),
        nr::SENDMSG => {
            // Unless the program at sendmsg's entry does it (`main::sys_enter_sendmsg`): here,
            // a receiver on another CPU may already have taken the connection.
            if exit.ret >= 0 && sendmsg_msg_offset() == 0 {
                handoff::note_passed_connections(a1);
            }
            http::on_data_out(fd, Buffer::Msghdr(a1), exit.ret)
        }
        nr::SENDFILE => http::on_data_out(fd, Buffer::None, exit.ret),
        // Unless the program at close's entry has it (`main::sys_enter_close`).
        nr::CLOSE if close_fd_offset() == 0 => http::on_close(fd),
        // The listening socket is the first argument.
        nr::ACCEPT | nr::ACCEPT4 => server::on_accept(fd, exit.ret),
        nr::CONNECT => client::on_connect(fd, a1, exit.ret),
        nr::GETSOCKOPT => client::on_getsockopt(fd, a1, a2, a3, exit.ret),
        _ => {}
    }
}
