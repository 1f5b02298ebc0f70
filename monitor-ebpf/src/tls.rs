//! HTTP inside TLS. OpenSSL's `SSL_read` and `SSL_write` (and their `_ex` forms) move plain
//! text in and out of the caller's buffer: a uprobe at their entry keeps the arguments, the
//! socket syscalls made inside the call tell which socket it is (and are skipped: their bytes
//! are ciphertext), and at the return the plain text goes through the same server and client
//! paths as clear-text HTTP, under the socket's TLS key (`tls_connection_key`), so that close(2)
//! and the idle sweep end it like any other connection. The socket is remembered for the
//! library's connection object (`SSL *`), whose creation (`SSL_new`) forgets what an object
//! freed at the same address used: a later call served from the library's buffer makes no
//! syscall. So is a first `SSL_read` that a server's handshake left in the buffer (the request
//! came with the handshake's last message): its socket is the thread's last read, the
//! handshake's, as for memory BIOs below.
//!
//! A library that reads and writes through memory BIOs (Node's TLS, Python's asyncio) makes
//! no syscall inside the calls: its caller reads the ciphertext from the socket and hands it
//! over, on the same thread, just before the `SSL_read` that returns its plain text. A
//! connection object's socket is then the one of the thread's last socket read before its
//! first `SSL_read` that returned plain text (`TLS_LAST_READS`), remembered for its later
//! calls, its writes included. A client writes its first request before any read: the plain
//! text waits (`TLS_PENDING_WRITES`) for the thread's next socket write, which sends its
//! ciphertext and so tells the socket.
//!
//! The handshake is not watched: its syscalls are seen as what they are, bytes that are not
//! HTTP (`counter::NOT_HTTP_TLS` for a server, `CLIENT_NOT_HTTP` for a client).

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_get_current_pid_tgid,
};
use monitor_common::http::{
    Connection, counter, is_http2_preface, parse_request_start, role, tls_connection_key,
};

use crate::{
    client,
    files::{fd_known_not_internet_socket, port_allowed, socket_local_port},
    http::{
        config, current_tgid, first_16, mark_measured, mark_tls, measured, now_ns, read_user,
        track_server_connection, uses_tls,
    },
    maps::{
        CONNECTIONS, PendingWrite, SocketRead, TLS_CALLS, TLS_LAST_READS, TLS_PENDING_WRITES,
        TLS_SOCKETS, TlsCall, TlsObject, count,
    },
    server,
    syscalls::Buffer,
};

/// `TlsCall::socket` before a syscall inside the call has told it.
pub const NO_SOCKET: u32 = u32::MAX;

/// A library call starts: `SSL_read`/`SSL_write` (`moved_at` 0), or their `_ex` forms, which
/// write the bytes moved at `moved_at`; `writing` in the write calls.
#[inline(always)]
pub fn on_call(ssl: u64, buffer: u64, moved_at: u64, writing: bool) {
    let Some(config) = config() else {
        return;
    };
    let tgid = current_tgid();
    if !measured(config, tgid) {
        return;
    }
    mark_measured(tgid);
    mark_tls(tgid);
    let object = TlsObject::new(ssl, tgid);
    // SAFETY: a map value, copied at once.
    let known = TLS_SOCKETS
        .get_ptr(object)
        .map_or(NO_SOCKET, |socket| unsafe { *socket });
    let call = TlsCall {
        ssl,
        buffer,
        moved_at,
        socket: NO_SOCKET,
        known,
        writing: u32::from(writing),
        _pad: 0,
    };
    let _ = TLS_CALLS.insert(bpf_get_current_pid_tgid(), call, BPF_ANY as u64);
}

/// `SSL_new` returned `ssl`, a new library connection object: the process is one whose socket
/// reads a memory-BIO library may be handed (`read_in_library_call`) from now on, before the first
/// call on it; and whatever socket a freed object at the same address used is forgotten.
#[inline(always)]
pub fn on_new(ssl: u64) {
    let tgid = current_tgid();
    if ssl == 0 || config().is_none_or(|config| !measured(config, tgid)) {
        return;
    }
    mark_measured(tgid);
    mark_tls(tgid);
    let _ = TLS_SOCKETS.remove(TlsObject::new(ssl, tgid));
}

/// A socket syscall on `fd` returned inside the thread's library call `call`: notes the
/// socket for it and says which call it is (`Some(true)` a write), since the bytes are that
/// library's ciphertext. A call's BIO uses one socket: only the first one seen is the call's,
/// and a syscall on another socket (a call whose return was never seen, a callback doing I/O
/// of its own) is left alone (`None`). So is one on a descriptor that is no TCP socket: a
/// file the library reads (its configuration, the first time), an event loop woken from a
/// callback run inside the call (Node's `eventfd`).
#[inline(always)]
fn claim(call: &mut TlsCall, fd: u32) -> Option<bool> {
    if call.socket == NO_SOCKET {
        // The socket the object used before needs no look at what the descriptor is.
        if fd != call.known && not_socket(fd) {
            return None;
        }
        call.socket = fd;
    }
    (call.socket == fd).then_some(call.writing != 0)
}

/// A write on `fd` returned `ret` in process `tgid`: whether it was a library call's (see
/// `claim`); a failed one inside `SSL_write` cuts the response short. Any other write, in a
/// TLS process, may send the ciphertext of a library write that waits for its socket
/// (`on_socket_write`). One look at the process's TLS bit for both.
#[inline(always)]
pub fn write_in_library_call(tgid: u32, fd: u32, ret: i64) -> bool {
    if !uses_tls(tgid) {
        return false;
    }
    let thread = bpf_get_current_pid_tgid();
    if let Some(call) = TLS_CALLS.get_ptr_mut(thread) {
        // SAFETY: a map value, valid for this program run.
        if let Some(writing) = claim(unsafe { &mut *call }, fd) {
            // The library's write of a response's ciphertext failed: the client has gone.
            if writing && ret < 0 {
                on_socket_write_failed(tgid, fd);
            }
            return true;
        }
    }
    if ret > 0 {
        on_socket_write(thread, tgid, fd);
    }
    false
}

/// A read on `fd` returned `ret` (> 0: bytes) in process `tgid`: whether it was a library
/// call's (see `claim`). A read outside any call, in a TLS process, is kept as the thread's
/// last (`TLS_LAST_READS`), for a memory-BIO library's `SSL_read` to come (what it read from
/// is looked at only then: most are never used).
#[inline(always)]
pub fn read_in_library_call(tgid: u32, fd: u32, ret: i64) -> bool {
    if !uses_tls(tgid) {
        return false;
    }
    let thread = bpf_get_current_pid_tgid();
    if let Some(call) = TLS_CALLS.get_ptr_mut(thread) {
        // SAFETY: a map value, valid for this program run.
        return claim(unsafe { &mut *call }, fd).is_some();
    }
    if ret > 0 {
        let read = SocketRead {
            fd,
            _pad: 0,
            at: now_ns(),
        };
        let _ = TLS_LAST_READS.insert(thread, read, BPF_ANY as u64);
    }
    false
}

/// A socket write inside `SSL_write` failed for a reset or closed connection: a response the
/// server was sending over it is cut short, as a failed clear-text write says. (A write the
/// library makes inside `SSL_read`, an alert or a key update, says nothing of a response.)
#[inline(always)]
fn on_socket_write_failed(tgid: u32, fd: u32) {
    let Some(conn) = CONNECTIONS.get_ptr_mut(tls_connection_key(tgid, fd)) else {
        return;
    };
    // SAFETY: a map value, valid for this program run.
    let conn = unsafe { &mut *conn };
    if conn.role != role::CLIENT {
        server::on_write_failed(conn);
    }
}

/// A library call returned `ret`: its plain text, if any, read (`WRITE` false) or written,
/// goes to the connection's HTTP path.
#[inline(always)]
pub fn on_return<const WRITE: bool>(ret: i32) {
    let thread = bpf_get_current_pid_tgid();
    let Some(call) = TLS_CALLS.get_ptr(thread) else {
        return;
    };
    // SAFETY: a map value, copied before it is removed.
    let call = unsafe { *call };
    let _ = TLS_CALLS.remove(thread);
    let moved = if call.moved_at == 0 {
        i64::from(ret)
    } else if ret == 1 {
        read_user::<u64>(call.moved_at).map_or(0, |moved| moved as i64)
    } else {
        0
    };
    // Nothing moved (an error, or the library waiting for the socket): nothing to follow.
    // The end of a connection comes with close(2).
    if moved <= 0 {
        return;
    }
    let tgid = (thread >> 32) as u32;
    let (key, socket) = match socket_of(&call, thread, WRITE) {
        Some(socket) => (tls_connection_key(tgid, socket), socket),
        None if WRITE => (hold_until_sent(thread, call.ssl), 0),
        None => {
            count(counter::TLS_SOCKET_UNKNOWN);
            return;
        }
    };
    plain_text::<WRITE>(tgid, key, socket, Buffer::Plain(call.buffer), moved);
}

/// Whether `fd` is known to be no TCP socket: no connection's (where the kernel's BTF gave the
/// way to tell).
#[inline(always)]
fn not_socket(fd: u32) -> bool {
    fd_known_not_internet_socket(u64::from(fd)) != 0
}

/// The `CONNECTIONS` key under which a thread's write waits for its socket: the process's, with
/// an fd half that no descriptor reaches (2^30 and up; the kernel caps them at `nr_open`, below
/// that) and the thread's id in the rest.
#[inline(always)]
fn placeholder_key(thread: u64) -> u64 {
    tls_connection_key(
        (thread >> 32) as u32,
        (1 << 30) | (thread as u32 & 0x3fff_ffff),
    )
}

/// A write on `ssl` whose socket nothing told yet (a memory-BIO client's first request): its
/// plain text goes to a connection under the thread's placeholder key (returned), which the
/// thread's next socket write moves to its socket (`on_socket_write`). More writes on the
/// same object before then (a request body) follow it there; a write on another object
/// replaces it, and the one that waited in vain (its ciphertext went out on another thread)
/// is counted as skipped.
#[inline(always)]
fn hold_until_sent(thread: u64, ssl: u64) -> u64 {
    let key = placeholder_key(thread);
    // SAFETY: a map value, copied at once.
    let waiting = TLS_PENDING_WRITES
        .get_ptr(thread)
        .map(|pending| unsafe { (*pending).ssl });
    if waiting != Some(ssl) {
        if CONNECTIONS.remove(key).is_ok() {
            count(counter::TLS_SOCKET_UNKNOWN);
        }
        let pending = PendingWrite { ssl, at: now_ns() };
        let _ = TLS_PENDING_WRITES.insert(thread, pending, BPF_ANY as u64);
    }
    key
}

/// A socket write on `fd` returned, outside any library call, in a TLS process: when a library
/// write waits for its socket (`hold_until_sent`), this one sent its ciphertext. Its connection
/// moves from the placeholder to the socket's TLS key, and the socket is remembered for the
/// library object.
#[inline(always)]
fn on_socket_write(thread: u64, tgid: u32, fd: u32) {
    let Some(pending) = TLS_PENDING_WRITES.get_ptr(thread) else {
        return;
    };
    if not_socket(fd) {
        return; // standard output, an event loop's wake-up: the ciphertext is still to go
    }
    // SAFETY: a map value, copied before it is removed.
    let pending = unsafe { *pending };
    let _ = TLS_PENDING_WRITES.remove(thread);
    let placeholder = placeholder_key(thread);
    let Some(conn) = CONNECTIONS.get_ptr(placeholder) else {
        return; // not a request: nothing waits
    };
    if now_ns().saturating_sub(pending.at) <= HANDED_OVER_WITHIN_NS {
        // SAFETY: a map value, valid for this program run; the kernel copies it.
        let conn = unsafe { &*conn };
        // Over whatever the key held: the plain text of an earlier socket of that number
        // whose close went unseen (this object's socket had none, or it would be known).
        let _ = CONNECTIONS.insert(tls_connection_key(tgid, fd), conn, BPF_ANY as u64);
        let object = TlsObject::new(pending.ssl, tgid);
        let _ = TLS_SOCKETS.insert(object, fd, BPF_ANY as u64);
    } else {
        count(counter::TLS_SOCKET_UNKNOWN);
    }
    let _ = CONNECTIONS.remove(placeholder);
}

/// Plain text a library call moved on `socket` of process `tgid`: it goes to the HTTP path of
/// the connection under `key` (the socket's TLS key, or a placeholder); a connection not
/// followed yet starts with a request.
#[inline(always)]
fn plain_text<const WRITE: bool>(tgid: u32, key: u64, socket: u32, buffer: Buffer, moved: i64) {
    let mut conn = CONNECTIONS.get_ptr_mut(key);
    if conn.is_none() {
        if !track_first_request::<WRITE>(key, socket, buffer, moved) {
            return;
        }
        conn = CONNECTIONS.get_ptr_mut(key);
    }
    let Some(conn) = conn else {
        return;
    };
    // SAFETY: a map value, valid for this program run.
    let conn = unsafe { &mut *conn };
    match (WRITE, conn.role == role::CLIENT) {
        (false, true) => client::on_read(conn, key, tgid, buffer, moved),
        (false, false) => server::on_read(conn, key, tgid, buffer, moved),
        (true, true) => client::on_write(conn, key, tgid, buffer, moved),
        (true, false) => server::on_write(conn, key, tgid, buffer, moved),
    }
}

/// How far apart a memory-BIO library's call and the caller's socket I/O for it may be on
/// one thread: the caller reads right before it feeds the library (`socket_of`) and sends
/// right after the library wrote (`on_socket_write`), but may be preempted between.
const HANDED_OVER_WITHIN_NS: u64 = 1_000_000_000;

/// The socket of the call on `thread`: the one its syscalls used, remembered for the library
/// object; else the one that object used last (the call was served from the library's buffer,
/// or the library reads through memory BIOs); else, for a first read that made no syscall,
/// the thread's last socket read (a memory BIO's, see the module's notes).
#[inline(always)]
fn socket_of(call: &TlsCall, thread: u64, write: bool) -> Option<u32> {
    // Read at the call's entry: nothing else changes an object's socket during its call.
    let known = (call.known != NO_SOCKET).then_some(call.known);
    let socket = if call.socket != NO_SOCKET {
        call.socket
    } else if known.is_some() {
        return known;
    } else if write {
        return None;
    } else {
        // SAFETY: a map value, copied at once.
        let read = unsafe { *TLS_LAST_READS.get_ptr(thread)? };
        // A read of anything but a TCP socket (an event loop's eventfd) fed no library.
        if now_ns().saturating_sub(read.at) > HANDED_OVER_WITHIN_NS || not_socket(read.fd) {
            return None;
        }
        read.fd
    };
    // Written only when it changed: most calls on a connection use the socket they did.
    if known != Some(socket) {
        let object = TlsObject::new(call.ssl, (thread >> 32) as u32);
        let _ = TLS_SOCKETS.insert(object, socket, BPF_ANY as u64);
    }
    Some(socket)
}

/// Plain text on a socket not followed yet: a request read starts a server connection, a
/// request written a client one. Anything else is not HTTP/1.x and stays unfollowed.
#[inline(always)]
fn track_first_request<const WRITE: bool>(
    key: u64,
    socket: u32,
    buffer: Buffer,
    moved: i64,
) -> bool {
    let Some((head, _)) = first_16(buffer, moved) else {
        return false;
    };
    if parse_request_start(&head).is_none() {
        if !WRITE && is_http2_preface(&head) {
            // HTTP/2 over TLS (ALPN h2): counted once, at the preface; not followed.
            count(counter::NOT_HTTP_HTTP2);
        }
        return false;
    }
    if !WRITE {
        return server_port_allowed(socket)
            && track_server_connection(key, counter::TLS_CONNECTIONS);
    }
    let mut slot = MaybeUninit::uninit();
    let tracked = CONNECTIONS
        .insert(
            key,
            Connection::init(&mut slot, role::CLIENT),
            BPF_NOEXIST as u64,
        )
        .is_ok();
    count(if tracked {
        counter::TLS_CONNECTIONS
    } else {
        counter::CONNECTIONS_FULL
    });
    tracked
}

/// With `--http-ports`: whether the local port of this server socket is one of them. Read
/// where the kernel's BTF gave the way to it; where it did not, TLS servers are not followed.
#[inline(always)]
fn server_port_allowed(socket: u32) -> bool {
    if config().is_none_or(|config| config.port_filter == 0) {
        return true;
    }
    let port = socket_local_port(socket as u64);
    if port != 0 && port_allowed(port as u16) {
        return true;
    }
    count(counter::PORT_FILTERED);
    false
}
