//! Per-connection state and the tables and bitmaps that lead to it.

use super::*;
use crate::words::zero_words;

/// Roles of a tracked connection.
pub mod role {
    pub const SERVER: u8 = 1;
    pub const CLIENT: u8 = 2;
}

/// Where a connection is in its request/response cycle (for a client, the request is
/// written and the response read).
pub mod phase {
    /// Between requests.
    pub const IDLE: u64 = 0;
    /// The request line arrived cut: the templater waits for the rest.
    pub const REQUEST_LINE: u64 = 1;
    /// A request arrived; no final response yet.
    pub const REQUEST: u64 = 2;
    /// The response is being written. It ends with its last write, known when the next
    /// request arrives, the next pipelined response starts, the connection closes, or no
    /// write has come for the idle timeout (keep-alive connections that wait).
    pub const RESPONSE: u64 = 3;
    /// Client: a response read whole before the write of its request returned (a client that
    /// reads on another thread than it writes); recorded when that write returns.
    pub const ANSWERED: u64 = 4;
}

/// Per-connection state, keyed by (tgid, fd).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// `phase::*`. A whole word: leaving `RESPONSE` is a compare-and-swap, because the
    /// syscall path and the idle sweep may both try to end the same response.
    pub phase: u64,
    /// Server: when the read that brought the request's first bytes returned. Client: when
    /// the write of the request's first bytes returned.
    pub request_start_ns: u64,
    /// When the last piece of the response moved: the last write (server), read (client).
    pub last_io_ns: u64,
    /// The admitted route (server) or server address (client) of the current request.
    pub route: u64,
    /// The last templated route and what it was admitted as: consecutive requests for one
    /// route skip the budget look-up.
    pub cached_template: u64,
    pub cached_route: u64,
    /// Client: for a body of declared length (Content-Length), the bytes still to come; for a
    /// chunked body, its last bytes read so far (up to 8, the newest in the low byte), where
    /// its end shows.
    pub body_state: u64,
    pub templater: RouteTemplater,
    /// `fingerprint::*` of the bytes that decided `cached_route` (server: the request line up
    /// to the end of its target; client: the request head), 0 for none: the same bytes again
    /// take the cached route without templating or scanning.
    pub request_print: u64,
    /// Client: `fingerprint::bytes` of the last response's first read, and what its head
    /// scan found (content length, head length, `head::framing::*`).
    pub response_print: u64,
    pub response_length: u64,
    /// The end of the idle-timeout epoch in which the connection was last listed for the
    /// idle sweep (`IDLE_CANDIDATES`), 0 for never.
    pub listed_until_ns: u64,
    /// The first bytes of the next request (server) or response (client) when a read brought
    /// too few of them to tell (`head_prefix::of`), zeroes for none. Server: `request_start_ns`
    /// is then that read's.
    pub head_prefix: [u64; 2],
    pub response_head_len: u32,
    pub response_framing: u16,
    pub _reserved: u16,
    pub status: u16,
    pub method: u8,
    pub role: u8,
    /// Client: `head::framing::*` of the current response.
    pub framing: u16,
    /// `conn_flags::*`.
    pub flags: u16,
}

/// Marks on a connection. A server's are cleared when the next request starts.
pub mod conn_flags {
    /// Server: a read since the last request was not one: a status line that follows
    /// answers it.
    pub const STRAY_READ: u16 = 1;
    /// Server: a write of the current response failed (the client reset or closed): counted
    /// once.
    pub const WRITE_FAILED: u16 = 2;
    /// Server: the held `head_prefix` was read before the current response was seen
    /// (`server`'s `hold_read_ahead`): the request it begins starts with the read that
    /// completes it.
    pub const READ_AHEAD: u16 = 4;
    /// Client: the response being read (or, in `phase::ANSWERED`, read whole) came before
    /// the write of its request returned: the request's method and server address come
    /// with that write.
    pub const ANSWERED_EARLY: u16 = 8;
    /// Client: the last request was paired with a response read before it. A status line
    /// read between requests is not taken for an early answer again until a request has
    /// been answered in order: bytes mistaken for one once cannot shift every pairing after.
    pub const LAST_ANSWERED_EARLY: u16 = 16;
    /// Client: a write since the last request was not one the programs follow (a method
    /// they do not know): its answer is not taken for an early one.
    pub const UNTRACKED_WRITE: u16 = 32;
    /// Client: bytes of the current chunked response's body have been read, so an empty line
    /// its reads end with is a trailer section's end, not the head's
    /// (`head::ends_with_empty_line`).
    pub const CHUNKED_BODY: u16 = 64;
}

impl Connection {
    /// A connection between requests, as tracked from accept (server) or connect (client).
    pub const fn new(role: u8) -> Self {
        Self {
            phase: phase::IDLE,
            request_start_ns: 0,
            last_io_ns: 0,
            route: 0,
            cached_template: 0,
            cached_route: 0,
            body_state: 0,
            templater: RouteTemplater::new(),
            request_print: 0,
            response_print: 0,
            response_length: 0,
            listed_until_ns: 0,
            head_prefix: [0; 2],
            response_head_len: 0,
            response_framing: 0,
            _reserved: 0,
            status: 0,
            method: 0,
            role,
            framing: 0,
            flags: 0,
        }
    }

    /// `new(role)`, built over uninitialised memory a word at a time: built field by field,
    /// the mostly-zero value would become a `memset` call in the kernel (see `words`).
    #[inline(always)]
    pub fn init(slot: &mut core::mem::MaybeUninit<Self>, role: u8) -> &mut Self {
        zero_words(slot);
        // SAFETY: every field is an integer, so all zeroes is a valid value.
        let conn = unsafe { slot.assume_init_mut() };
        conn.phase = phase::IDLE;
        conn.role = role;
        conn.templater.reset();
        conn
    }
}

/// Connections the idle sweep looks at per epoch (one idle timeout): those whose response
/// started in it. More in one epoch make the sweep walk the whole connection table instead.
pub const IDLE_CANDIDATE_SLOTS: u32 = 4096;

/// Slots of `IDLE_RINGS`: per ring (the parity of an epoch), the epoch it collects and the
/// slots claimed in it; and whether the next sweep must walk the whole table.
pub mod idle_ring {
    pub const fn epoch(ring: u32) -> u32 {
        ring
    }
    pub const fn claimed(ring: u32) -> u32 {
        2 + ring
    }
    pub const FULL_PASS: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// Words of `MEASURED_PROCESSES`, one bit per process id: 64-bit Linux never gives out ids
/// above PID_MAX_LIMIT (4,194,304), so 512 KiB hold them all.
pub const MEASURED_PROCESS_WORDS: u32 = 4_194_304 / 64;

/// The word of `MEASURED_PROCESSES` that holds `tgid`'s bit, and the bit.
#[inline(always)]
pub const fn measured_process_bit(tgid: u32) -> (u32, u64) {
    (tgid / 64, 1 << (tgid % 64))
}

/// Key of `CONNECTIONS`: the process and the file descriptor.
#[inline(always)]
pub const fn connection_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// Set in the fd half of a `CONNECTIONS` key for the plain text a TLS library reads and
/// writes on that socket: the syscalls on the same fd carry ciphertext, tracked (or dropped)
/// under the key without it. No fd reaches this bit (the kernel caps them below 2^31).
pub const TLS_FD: u32 = 1 << 31;

/// Key of `CONNECTIONS` for the plain text of the TLS connection on `fd`.
#[inline(always)]
pub const fn tls_connection_key(tgid: u32, fd: u32) -> u64 {
    connection_key(tgid, fd | TLS_FD)
}

/// Where the kernel keeps a process's open files (`current->files->fdt->fd[fd]`), found in its
/// BTF by the agent: the programs follow a passed descriptor to its `struct file`, which the
/// sender and the receiver share. Node's cluster module (and pm2) accept in the primary and
/// pass each connection to a worker; without this the worker's requests are never seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileTableOffsets {
    /// 1 when every offset was found; 0 turns the hand-over programs off.
    pub found: u32,
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.max_fds` (4 bytes).
    pub fdtable_max_fds: u32,
    /// `fdtable.fd`: the array of `struct file *`.
    pub fdtable_fd: u32,
    /// 1 when the way from a socket's file to its local port was found too (below): with
    /// `--http-ports`, the programs read a listener's port themselves.
    pub socket_found: u32,
    /// `file.private_data`: a socket's `struct socket *`.
    pub file_private_data: u32,
    /// `socket.sk`: its `struct sock *`.
    pub socket_sk: u32,
    /// `sock.__sk_common.skc_num` (2 bytes): the local port, in host order.
    pub sock_num: u32,
    /// `sock.__sk_common.skc_family` (2 bytes): what tells a TCP or UDP socket from a Unix one.
    pub sock_family: u32,
    /// `file.f_inode`, 0 where not found: with `inode.i_mode` (2 bytes), what tells a
    /// socket from a file or pipe.
    pub file_inode: u32,
    pub inode_mode: u32,
}

/// Words of `ALLOWED_PORTS`: a bit per TCP port.
pub const ALLOWED_PORT_WORDS: u32 = 65536 / 64;

/// The word and bit of `port` in `ALLOWED_PORTS`.
#[inline(always)]
pub fn allowed_port_bit(port: u16) -> (u32, u64) {
    (u32::from(port) / 64, 1 << (port % 64))
}

/// Key of `ROUTES_SEEN`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProcessRoute {
    pub route: u64,
    pub tgid: u32,
    pub _reserved: u32,
}
