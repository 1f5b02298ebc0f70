//! HTTP/1.x, client side: a process connects, writes a request and reads the response. The
//! duration runs from the write of the request's first bytes to the read of the response's
//! last bytes, found from the response's framing (Content-Length, chunked, or the close).
//! Requests that get no complete response are errors of their own kind; connect failures are
//! counted per process. How heads are read (the Host, the response's framing) is in `heads`.

use core::mem::MaybeUninit;

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use monitor_common::{
    head::{bodiless, ends_with_empty_line, framing},
    http::{
        ClientErrorKey, Connection, OVERFLOW_ROUTE_HASH, ProcessRoute, client_error, conn_flags,
        connection_key, counter, event_kind, head_prefix, is_interim, is_status_prefix, method,
        parse_request_start, parse_status_line, phase, role,
    },
};

use crate::{
    http::{
        ECONNRESET, EventBytes, announce, bytes_print, capture, capture_after, claim_response,
        config, current_tgid, finish_response, head, list_for_sweep, mark_measured, measured,
        now_ns, read_user,
    },
    maps::{CLIENT_ERRORS, CONNECT_ERRORS, CONNECTIONS, HOST_COUNT, HOSTS_SEEN, count},
    syscalls::Buffer,
};

mod heads;

pub use heads::final_response_after_interim;
use heads::{ends_chunked_body, response_framing, scan_host};

const EINPROGRESS: i64 = -115;
/// What a failed TCP connect returns: refused, timed out, host or network unreachable, no
/// local port left (EADDRNOTAVAIL: the ephemeral range is used up, a client near capacity),
/// refused by the host's firewall (EPERM). (EALREADY, EISCONN and EAGAIN are programs
/// asking again, not failures.)
const CONNECT_FAILURES: [i64; 6] = [-111, -110, -113, -101, -99, -1];
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOL_SOCKET: u64 = 1;
const SO_ERROR: u64 = 4;

/// connect(2) returned: a connection to follow, or a failure to count.
#[inline(always)]
pub fn on_connect(fd: u32, address: u64, ret: i64) {
    let Some(config) = config() else {
        return;
    };
    let tgid = current_tgid();
    if !measured(config, tgid) {
        return;
    }
    if ret != 0 && ret != EINPROGRESS {
        // A TCP failure carries no HTTP yet: counted per process. (A Unix socket's failure,
        // such as glibc looking for nscd, is not a TCP connect error.)
        let family = read_user::<u16>(address);
        if CONNECT_FAILURES.contains(&ret) && matches!(family, Some(AF_INET | AF_INET6)) {
            count_connect_error(tgid);
        }
        return;
    }
    mark_measured(tgid);
    let key = connection_key(tgid, fd);
    let mut slot = MaybeUninit::uninit();
    if CONNECTIONS
        .insert(
            key,
            Connection::init(&mut slot, role::CLIENT),
            BPF_ANY as u64,
        )
        .is_ok()
    {
        count(counter::CLIENT_CONNECTIONS);
    }
}

/// getsockopt(SO_ERROR) after a non-blocking connect: how curl, Node and most event loops
/// learn that a connection failed.
#[inline(always)]
pub fn on_getsockopt(fd: u32, level: u64, name: u64, value: u64, ret: i64) {
    if ret != 0 || level != SOL_SOCKET || name != SO_ERROR {
        return;
    }
    let Some(error) = read_user::<i32>(value) else {
        return;
    };
    if error == 0 {
        return;
    }
    let tgid = current_tgid();
    let key = connection_key(tgid, fd);
    let Some(conn) = CONNECTIONS.get_ptr(key) else {
        return;
    };
    // SAFETY: a map value, valid for this program run.
    let conn = unsafe { &*conn };
    if conn.role == role::CLIENT && conn.phase == phase::IDLE && conn.cached_route == 0 {
        count_connect_error(tgid);
        let _ = CONNECTIONS.remove(key);
    }
}

#[inline(always)]
pub fn on_write(conn: &mut Connection, key: u64, tgid: u32, buffer: Buffer, ret: i64) {
    // The response to this request may have been read already, while this write was still
    // in the kernel (`conn_flags::ANSWERED_EARLY`).
    let answered_early = conn.flags & conn_flags::ANSWERED_EARLY != 0;
    if conn.phase != phase::IDLE && conn.phase != phase::RESPONSE && !answered_early {
        return; // a request body
    }
    let now = now_ns();
    let Some((capture, len)) = capture(buffer, ret) else {
        return;
    };
    let Some((method, _)) = parse_request_start(&head(capture)) else {
        if conn.phase == phase::IDLE && conn.cached_route == 0 {
            // Never spoke HTTP (DNS over a connected UDP socket, TLS, ...): stop looking.
            count(counter::CLIENT_NOT_HTTP);
            let _ = CONNECTIONS.remove(key);
        } else if !answered_early {
            conn.flags |= conn_flags::UNTRACKED_WRITE;
        }
        return;
    };
    if conn.phase == phase::RESPONSE && !answered_early {
        // The previous response ended with its last read, before this request.
        let _ = finish_response(conn, tgid, conn.last_io_ns);
    }
    count(counter::CLIENT_REQUESTS);
    conn.method = method;
    conn.request_start_ns = now;
    let print = bytes_print(len as u64);
    conn.route = if print == conn.request_print && conn.cached_route != 0 {
        // The same bytes as the last request: the same Host, not scanned again.
        conn.cached_route
    } else {
        conn.request_print = print;
        let host = scan_host(len as u64);
        if host == conn.cached_template && conn.cached_route != 0 {
            conn.cached_route
        } else {
            let admitted = admit_host(tgid, host);
            conn.cached_template = host;
            conn.cached_route = admitted;
            admitted
        }
    };
    if answered_early {
        conn.flags = (conn.flags & !conn_flags::ANSWERED_EARLY) | conn_flags::LAST_ANSWERED_EARLY;
        if conn.phase == phase::ANSWERED {
            // Read whole before this write returned: no time from the write's return to the
            // response's end, the interval every request is measured by.
            conn.phase = phase::RESPONSE;
            let _ = finish_response(conn, tgid, now);
            forget_if_switched(conn, key);
        } else {
            // The rest of the response comes with later reads.
            list_for_sweep(conn, key, now);
        }
        return;
    }
    conn.flags &= !(conn_flags::LAST_ANSWERED_EARLY | conn_flags::UNTRACKED_WRITE);
    conn.head_prefix = [0; 2];
    conn.status = 0;
    conn.framing = framing::UNKNOWN;
    conn.phase = phase::REQUEST;
}

#[inline(always)]
pub fn on_read(conn: &mut Connection, key: u64, tgid: u32, buffer: Buffer, ret: i64) {
    if ret <= 0 {
        // End of stream (0) or reset.
        match conn.phase {
            phase::REQUEST => no_response(conn, tgid),
            phase::RESPONSE => end_of_stream(conn, tgid, ret == ECONNRESET),
            _ => {}
        }
        return;
    }
    let now = now_ns();
    let early = match conn.phase {
        phase::REQUEST => false,
        // A status line between requests: the answer to a request whose write has not
        // returned yet, read on another thread (Java's and Go's clients read on one thread
        // and write on another; an upload refused before the server reads it).
        phase::IDLE
            if conn.flags & (conn_flags::LAST_ANSWERED_EARLY | conn_flags::UNTRACKED_WRITE)
                == 0 =>
        {
            true
        }
        phase::RESPONSE => {
            read_body(conn, tgid, buffer, ret, now);
            return;
        }
        _ => return,
    };
    // One call, inlined once: the verifier walks it once.
    start_response(conn, key, tgid, buffer, ret, now, early);
}

/// A read of the response's body: the response ends with it when its framing shows its end.
#[inline(always)]
fn read_body(conn: &mut Connection, tgid: u32, buffer: Buffer, ret: i64, now: u64) {
    conn.last_io_ns = now;
    // A copy: the chunked guard below takes the connection mutably.
    let body_framing = conn.framing;
    match body_framing {
        framing::LENGTH => {
            if ret as u64 >= conn.body_state {
                end_response(conn, tgid, now);
            } else {
                conn.body_state -= ret as u64;
            }
        }
        framing::CHUNKED => {
            conn.flags |= conn_flags::CHUNKED_BODY;
            if ends_chunked_body(conn, buffer, ret) {
                end_response(conn, tgid, now);
            }
        }
        _ => {}
    }
}

/// The read that may bring a response's status line (after the bytes of it an earlier read
/// held): the response starts, and ends here too when its framing shows its end. `early`:
/// read between requests, before the write of its request returned (`conn_flags::
/// ANSWERED_EARLY`); bytes that do not start a status line there are left alone.
#[inline(always)]
fn start_response(
    conn: &mut Connection,
    key: u64,
    tgid: u32,
    buffer: Buffer,
    ret: i64,
    now: u64,
    early: bool,
) {
    // Bytes of the status line an earlier read brought alone, before this read's.
    let prefix = conn.head_prefix;
    let mut held = head_prefix::len(&prefix) as u64;
    if held != 0 {
        conn.head_prefix = [0; 2];
    }
    let Some((capture, mut len)) = capture_after(&prefix, buffer, ret) else {
        return;
    };
    let head = head(capture);
    let Some(mut status) = parse_status_line(&head) else {
        if !early && is_status_prefix(&head, len) {
            // Java's HttpClient reads into what is left of its buffer, at times a byte or a
            // few.
            conn.head_prefix = head_prefix::of(&head, len);
        }
        return;
    };
    // The final response's part of this read: after the interim ones it came with.
    let (mut buffer, mut ret) = (buffer, ret);
    if is_interim(status) {
        let Some(after) = final_response_after_interim(buffer, ret) else {
            return; // interim: the final response follows in a later read
        };
        status = after.status;
        buffer = Buffer::Plain(after.source + after.start);
        ret -= after.start as i64;
        len = after.captured;
        held = 0;
    }
    if early {
        conn.flags |= conn_flags::ANSWERED_EARLY;
        count(counter::CLIENT_ANSWERED_EARLY);
    }
    conn.status = status;
    conn.last_io_ns = now;
    conn.phase = phase::RESPONSE;
    list_for_sweep(conn, key, now);
    // An early answer's request is not known yet: HEAD is not assumed.
    if bodiless(status, !early && conn.method == method::HEAD) {
        end_response(conn, tgid, now);
        if !early {
            forget_if_switched(conn, key); // else once its request's write has recorded it
        }
        return;
    }
    let (framing, head_len, length) = response_framing(conn, buffer, ret, len, held);
    conn.framing = framing;
    match framing {
        framing::LENGTH => {
            let body_here = (ret as u64 + held).saturating_sub(head_len);
            if body_here >= length {
                end_response(conn, tgid, now);
            } else {
                conn.body_state = length - body_here;
            }
        }
        framing::CHUNKED => {
            conn.body_state = 0;
            if ret as u64 + held > head_len {
                conn.flags |= conn_flags::CHUNKED_BODY;
            } else {
                conn.flags &= !conn_flags::CHUNKED_BODY;
            }
            if ends_chunked_body(conn, buffer, ret) {
                end_response(conn, tgid, now);
            }
        }
        // Close-delimited, or a head too long to read: the end comes later.
        _ => {}
    }
}

/// After a recorded `101 Switching Protocols` the connection carries another protocol: what
/// follows is not HTTP/1.x, nor this client's requests. It is no longer followed.
#[inline(always)]
fn forget_if_switched(conn: &Connection, key: u64) {
    if conn.status == 101 {
        let _ = CONNECTIONS.remove(key);
    }
}

/// The response being read ended at `end_ns`: recorded with its request, or, read before
/// the write of that request returned, kept for the write (`phase::ANSWERED`).
#[inline(always)]
fn end_response(conn: &mut Connection, tgid: u32, end_ns: u64) {
    if conn.flags & conn_flags::ANSWERED_EARLY != 0 {
        conn.last_io_ns = end_ns;
        conn.phase = phase::ANSWERED;
    } else {
        let _ = finish_response(conn, tgid, end_ns);
    }
}

#[inline(always)]
pub fn on_close(conn: &mut Connection, tgid: u32) {
    match conn.phase {
        phase::REQUEST => no_response(conn, tgid),
        phase::RESPONSE => end_of_stream(conn, tgid, false),
        _ => {}
    }
}

/// The connection ended while a response was being read: complete if it was delimited by
/// the close, or chunked with trailer fields whose empty line was its last read; cut off if
/// it declared more.
#[inline(always)]
fn end_of_stream(conn: &mut Connection, tgid: u32, reset: bool) {
    let delimited_by_close = conn.framing == framing::CLOSE || conn.framing == framing::UNKNOWN;
    let trailers_ended = conn.framing == framing::CHUNKED
        && conn.flags & conn_flags::CHUNKED_BODY != 0
        && ends_with_empty_line(conn.body_state);
    if (delimited_by_close || trailers_ended) && !reset {
        end_response(conn, tgid, conn.last_io_ns);
    } else if conn.flags & conn_flags::ANSWERED_EARLY != 0 {
        // Cut off before its request's write returned: no server address to count it under
        // (`CLIENT_ANSWERED_EARLY` counted it when it started).
        conn.flags &= !conn_flags::ANSWERED_EARLY;
        conn.phase = phase::IDLE;
    } else if claim_response(conn) {
        count_error(conn, tgid, client_error::CUT_OFF);
    }
}

#[inline(always)]
fn no_response(conn: &mut Connection, tgid: u32) {
    conn.phase = phase::IDLE;
    count_error(conn, tgid, client_error::NO_RESPONSE);
}

#[inline(always)]
fn count_error(conn: &Connection, tgid: u32, kind: u8) {
    let key = ClientErrorKey {
        host: conn.route,
        tgid,
        kind,
        method: conn.method,
        _reserved: 0,
    };
    if let Some(value) = CLIENT_ERRORS.get_ptr_mut(key) {
        // SAFETY: this CPU's copy of a per-CPU value.
        unsafe { *value += 1 };
    } else if CLIENT_ERRORS.insert(key, 1, BPF_NOEXIST as u64).is_err()
        && let Some(value) = CLIENT_ERRORS.get_ptr_mut(key)
    {
        // Another CPU created it meanwhile.
        // SAFETY: as above.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn count_connect_error(tgid: u32) {
    if let Some(errors) = CONNECT_ERRORS.get_ptr_mut(tgid) {
        // SAFETY: this CPU's copy of a per-CPU value.
        unsafe { *errors += 1 };
    } else {
        let _ = CONNECT_ERRORS.insert(tgid, 1, BPF_NOEXIST as u64);
    }
}

/// The server address a process may be counted under: its own while the process's budget
/// lasts, then `__overflow__`; announced to the agent the first time.
fn admit_host(tgid: u32, host: u64) -> u64 {
    if host == 0 {
        return 0; // no Host header: shown as `unknown`
    }
    let seen = ProcessRoute {
        route: host,
        tgid,
        _reserved: 0,
    };
    if HOSTS_SEEN.get_ptr(seen).is_some() {
        return host;
    }
    let budget = config().map_or(0, |config| config.host_budget);
    let granted = match HOST_COUNT.get_ptr_mut(tgid) {
        Some(granted) => granted,
        None => {
            let _ = HOST_COUNT.insert(tgid, 0, BPF_NOEXIST as u64);
            match HOST_COUNT.get_ptr_mut(tgid) {
                Some(granted) => granted,
                None => return OVERFLOW_ROUTE_HASH,
            }
        }
    };
    // SAFETY: a map value, valid for this program run.
    let granted = unsafe { &mut *granted };
    if *granted < budget {
        if HOSTS_SEEN.insert(seen, 1, BPF_NOEXIST as u64).is_ok() {
            *granted += 1;
            announce(tgid, host, event_kind::HOST, &EventBytes::Host);
            return host;
        }
        // Another CPU admitted it since the look-up above: the first requests of several
        // threads to one server, written at once.
        if HOSTS_SEEN.get_ptr(seen).is_some() {
            return host;
        }
    }
    OVERFLOW_ROUTE_HASH
}
