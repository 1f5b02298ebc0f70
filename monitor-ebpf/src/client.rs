//! HTTP/1.x, client side: a process connects, writes a request and reads the response. The
//! duration runs from the write of the request's first bytes to the read of the response's
//! last bytes, found from the response's framing (Content-Length, chunked, or the close).
//! Requests that get no complete response are errors of their own kind; connect failures are
//! counted per process.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_probe_read_user,
};
use monitor_common::{
    head::{HEAD_WINDOWS, bodiless, framing, head_kind},
    http::{
        CAPTURE_LEN, ClientErrorKey, Connection, OVERFLOW_ROUTE_HASH, ProcessRoute, client_error,
        conn_flags, connection_key, counter, event_kind, head_prefix, is_interim, is_status_prefix,
        method, parse_request_start, parse_status_line, phase, role,
    },
};

use crate::{
    http::{
        ECONNRESET, EventBytes, announce, bytes_print, capture, capture_after, capture_words,
        claim_response, config, current_tgid, feed_value, finish_response, first_bytes, head,
        list_for_sweep, mark_measured, measured, now_ns, read_user, read_value,
    },
    loops,
    maps::{
        CAPTURE, CLIENT_ERRORS, CONNECT_ERRORS, CONNECTIONS, Capture, HOST_COUNT, HOSTS_SEEN, count,
    },
    syscalls::Buffer,
};
use monitor_common::words::zero_words;

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
            if conn.status == 101 {
                let _ = CONNECTIONS.remove(key); // switched protocols (`start_response`)
            }
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
        framing::CHUNKED if ends_chunked_body(conn, buffer, ret) => {
            end_response(conn, tgid, now);
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
        if status == 101 && !early {
            // Switching protocols: what follows is not HTTP/1.x, nor this client's requests.
            let _ = CONNECTIONS.remove(key);
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
            if ends_chunked_body(conn, buffer, ret) {
                end_response(conn, tgid, now);
            }
        }
        // Close-delimited, or a head too long to read: the end comes later.
        _ => {}
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
/// the close, cut off if it declared more.
#[inline(always)]
fn end_of_stream(conn: &mut Connection, tgid: u32, reset: bool) {
    let delimited_by_close = conn.framing == framing::CLOSE || conn.framing == framing::UNKNOWN;
    if delimited_by_close && !reset {
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

// --- Scanning heads: the line walk, then the one value that matters (`monitor_common::head`).
// The steps run in `bpf_loop` callbacks, several per call; the state lives in
// the per-CPU capture. ---

loops::loop_step! {
    /// One callback of the line walk: up to `LINE_STEPS_PER_CALL` steps.
    fn line_step(_index) -> i64 {
        let Some(capture) = CAPTURE.get_ptr_mut(0) else {
            return 1;
        };
        // SAFETY: a per-CPU map value, only used by this program run.
        let capture = unsafe { &mut *capture };
        let mut step = 0;
        while step < LINE_STEPS_PER_CALL {
            if !capture
                .lines
                .step(&capture.bytes, capture_words(&capture.bytes))
            {
                return 1;
            }
            step += 1;
        }
        0
    }
}

/// Steps of the line walk per callback (each loads up to four words or looks at a line).
/// Every BPF call and return costs, more so where the return-stack mitigation of AMD CPUs
/// (SRSO "safe RET") makes each `ret` a detour: with one step or byte per callback, the
/// calls and returns were most of the cost. The walks are global functions, which the
/// verifier checks once: eight steps would add about 0.1 s to its pass at start-up (metrics
/// must resume within 2 s of a restart), four cover the heads of most requests.
const LINE_STEPS_PER_CALL: u32 = 4;
/// Bytes of a `Host` or `Content-Length` value per callback, for the same reason.
const VALUE_BYTES_PER_CALL: u64 = 8;

loops::loop_step! {
    fn host_step(index) -> i64 {
        feed_value::<VALUE_BYTES_PER_CALL>(index, |capture, b| capture.host.feed(b))
    }
}

loops::loop_step! {
    fn length_step(index) -> i64 {
        feed_value::<VALUE_BYTES_PER_CALL>(index, |capture, b| capture.lines.length_byte(b))
    }
}

/// Walks the header lines of the `len` captured bytes.
#[inline(always)]
fn walk_lines(capture: &mut Capture, kind: u32, len: usize) {
    zero_words(&mut capture.lines);
    capture.lines.begin(kind, len);
    // Each step loads a word or looks at a line: at most one per captured byte.
    loops::repeat_steps(CAPTURE_LEN as u32, line_step);
}

/// The normalised `Host` of the request in the capture, as a hash (0 if none). A global
/// function: the verifier checks it, and its byte loops, once on their own instead of once
/// for every way the program can reach them, which keeps the start-up pass short.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn scan_host(len: u64) -> u64 {
    let len = len as usize;
    let Some(capture) = CAPTURE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a per-CPU map value, only used by this program run.
    let capture = unsafe { &mut *capture };
    walk_lines(capture, head_kind::REQUEST, len);
    capture.host.clear();
    let from = capture.lines.host_at;
    if from != 0 {
        read_value::<VALUE_BYTES_PER_CALL>(host_step, from, len as u32);
    }
    capture.host.hash()
}

/// (framing, head length, content length) of the response whose first read is in the
/// capture (`len` bytes of it), and whether the head ran past the capture. Such a head is read
/// on in later windows of the read's first buffer (`LongHead`), up to `HEAD_WINDOWS`.
#[inline(always)]
fn scan_response_head(buffer: Buffer, ret: i64, len: usize) -> (u16, u64, u64, bool) {
    const UNKNOWN: (u16, u64, u64, bool) = (framing::UNKNOWN, 0, 0, false);
    if walk_response_head(len as u64) != 0 {
        return UNKNOWN;
    }
    let Some(capture) = CAPTURE.get_ptr(0) else {
        return UNKNOWN;
    };
    // SAFETY: a per-CPU map value, only used by this program run.
    let lines = unsafe { &(*capture).lines };
    if lines.head_len != 0 || len < CAPTURE_LEN {
        return (
            lines.framing(),
            lines.head_len as u64,
            lines.content_length,
            false,
        );
    }
    let Some((source, available)) = first_bytes(buffer, ret) else {
        return UNKNOWN;
    };
    if read_long_head(source, available.min(ret as u64)) != 0 {
        return UNKNOWN;
    }
    // SAFETY: as above; `read_long_head` left its result there.
    let long = unsafe { &(*capture).long_head };
    (
        long.framing(),
        long.head_len as u64,
        long.content_length,
        true,
    )
}

/// Walks the response head in the capture, leaving what it found in `CAPTURE.lines` (the
/// `Content-Length` value read, even when the head goes on past the capture); 0 when it did.
/// A global function, like `scan_host`.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn walk_response_head(len: u64) -> u64 {
    let Some(capture) = CAPTURE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: a per-CPU map value, only used by this program run.
    let capture = unsafe { &mut *capture };
    walk_lines(capture, head_kind::RESPONSE, len as usize);
    let (from, head_len) = (capture.lines.length_at, capture.lines.head_len);
    if from != 0 {
        let end = if head_len != 0 { head_len } else { len as u32 };
        read_value::<VALUE_BYTES_PER_CALL>(length_step, from, end);
    }
    0
}

/// Reads on a response head that the capture of the read at `source` (`available` bytes in
/// its first buffer) did not hold whole, a window at a time, into `CAPTURE.long_head`; 0 when
/// it did. The first window is the capture already walked. A global function, like
/// `scan_host`: the windows cost only responses with long heads.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn read_long_head(source: u64, available: u64) -> u64 {
    let Some(scratch) = CAPTURE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: a per-CPU map value, only used by this program run; each borrow ends before
    // the capture and the walk write it again.
    let mut next = unsafe {
        zero_words(&mut (*scratch).long_head);
        (*scratch).long_head.absorb(&(*scratch).lines, CAPTURE_LEN)
    };
    let mut window = 1;
    while window < HEAD_WINDOWS {
        let Some(at) = next.map(u64::from).filter(|&at| at < available) else {
            break;
        };
        let Some((_, len)) = capture(Buffer::Plain(source + at), (available - at) as i64) else {
            break;
        };
        if walk_response_head(len as u64) != 0 {
            break;
        }
        // SAFETY: as above.
        next = unsafe { (*scratch).long_head.absorb(&(*scratch).lines, len) };
        window += 1;
    }
    0
}

/// Interim heads (100 Continue, 103 Early Hints) skipped before a final response that comes
/// in the same read or write; more are not sent in practice.
const MAX_INTERIM_HEADS: u32 = 2;

/// A final response that came in the same read or write as the interim ones before it.
pub struct AfterInterim {
    pub status: u16,
    /// Where the syscall's bytes are (all in its first buffer).
    pub source: u64,
    /// Where the final response starts in them.
    pub start: u64,
    /// How many of its bytes the per-CPU capture now holds.
    pub captured: usize,
}

/// The final response after the interim one that starts these bytes, when the syscall moved
/// it too: a server that writes `103 Early Hints` and its answer at once, or a client that
/// reads both at once. Only when all the bytes are in the first buffer.
#[inline(always)]
pub fn final_response_after_interim(buffer: Buffer, ret: i64) -> Option<AfterInterim> {
    let (source, available) = first_bytes(buffer, ret)?;
    if ret <= 0 || (available as i64) < ret {
        return None;
    }
    let total = ret as u64;
    let mut found = final_after_interim(source, total, 0);
    if found & LONG_INTERIM != 0 {
        // An interim head longer than the capture (a 103 with many `Link` lines), at `at`:
        // read on in windows, as a final response's head is. Called from here rather than
        // from `final_after_interim`, whose frame would put the walk past the stack's limit.
        let at = found >> 32;
        if read_long_head(source + at, total - at) != 0 {
            return None;
        }
        let scratch = CAPTURE.get_ptr(0)?;
        // SAFETY: a per-CPU map value, only used by this program run; `read_long_head` left
        // its result there.
        let head_len = unsafe { (*scratch).long_head.head_len } as u64;
        if head_len == 0 {
            return None;
        }
        found = final_after_interim(source + at, total - at, head_len);
        if found & LONG_INTERIM != 0 {
            return None;
        }
        found += at << 32;
    }
    (found as u16 != 0).then_some(AfterInterim {
        status: found as u16,
        source,
        start: found >> 32,
        captured: (found >> 16) as u16 as usize,
    })
}

/// In `final_after_interim`'s answer: the interim head at `start` is longer than the capture.
const LONG_INTERIM: u64 = 1 << 15;

/// `final_response_after_interim` of `available` bytes at `source`, packed as
/// `status | captured << 16 | start << 32`; 0 when no final response starts in them (it comes
/// in a later read or write); `LONG_INTERIM | start << 32` when the interim head at `start`
/// does not end in the capture. `first_head_len`, when not 0, is the length of the first
/// interim head, already read. Leaves the final response's first bytes in the capture. A
/// global function, like `scan_host`: only interim responses pay for it.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn final_after_interim(source: u64, available: u64, first_head_len: u64) -> u64 {
    // With the first head's length known, its bytes are not walked: no capture of them.
    let mut len = 0;
    if first_head_len == 0 {
        let Some((_, captured)) = capture(Buffer::Plain(source), available as i64) else {
            return 0;
        };
        len = captured;
    }
    let mut start = 0;
    let mut heads = 0;
    let mut known_head_len = first_head_len;
    while heads < MAX_INTERIM_HEADS {
        let head_len = if known_head_len != 0 {
            known_head_len
        } else {
            if walk_response_head(len as u64) != 0 {
                return 0;
            }
            let Some(scratch) = CAPTURE.get_ptr(0) else {
                return 0;
            };
            // SAFETY: a per-CPU map value, only used by this program run.
            let head_len = unsafe { (*scratch).lines.head_len } as u64;
            if head_len == 0 {
                return if len == CAPTURE_LEN {
                    LONG_INTERIM | start << 32
                } else {
                    0
                };
            }
            head_len
        };
        known_head_len = 0;
        start += head_len;
        if start >= available {
            return 0;
        }
        let Some((capture, captured)) =
            capture(Buffer::Plain(source + start), (available - start) as i64)
        else {
            return 0;
        };
        len = captured;
        if len < 12 {
            return 0; // the status line goes on in the next read: not told apart
        }
        match parse_status_line(&head(capture)) {
            Some(status) if !is_interim(status) => {
                return status as u64 | (len as u64) << 16 | start << 32;
            }
            Some(_) => heads += 1,
            None => return 0,
        }
    }
    0
}

/// (framing, head length, content length) of the response whose first read is in the
/// capture, after `held` bytes of it that an earlier read brought (the head length counts
/// them): what the last response of the connection had if its first read was the same.
#[inline(always)]
fn response_framing(
    conn: &mut Connection,
    buffer: Buffer,
    ret: i64,
    len: usize,
    held: u64,
) -> (u16, u64, u64) {
    let print = bytes_print(len as u64);
    if print == conn.response_print {
        return (
            conn.response_framing,
            conn.response_head_len as u64,
            conn.response_length,
        );
    }
    let (framing, head_len, length, long) = scan_response_head(buffer, ret, len);
    // A long head is read on from this read's own bytes, which do not hold the prefix.
    let head_len = if long { head_len + held } else { head_len };
    // A long head's framing may lie past the bytes printed: not kept for the next response.
    conn.response_print = if long { 0 } else { print };
    conn.response_framing = framing;
    conn.response_head_len = head_len as u32;
    conn.response_length = length;
    (framing, head_len, length)
}

/// The end of a chunked body as the bytes show it: the line break that ends the head or the
/// last chunk's data, the zero-size chunk, and the empty line after it (no trailer).
const CHUNKED_END: u64 = u64::from_be_bytes(*b"\0\r\n0\r\n\r\n");
const CHUNKED_END_MASK: u64 = (1 << 56) - 1;

/// Whether the body's bytes so far, this read's last, end with the zero-size chunk that closes
/// a chunked body; keeps their last bytes in `body_state` for a read that brings fewer. The
/// line break before the zero tells the chunk apart from a head whose last header's value
/// ends in 0 (`max-age=0`), or a chunk's data that does. Not followed: a trailer after the
/// last chunk, and a read into several buffers; such a response ends at the close, counted
/// as cut off.
#[inline(always)]
fn ends_chunked_body(conn: &mut Connection, buffer: Buffer, ret: i64) -> bool {
    let Some((start, available)) = first_bytes(buffer, ret) else {
        return false;
    };
    if ret <= 0 || (available as i64) < ret {
        return false;
    }
    let end = start + ret as u64;
    let last = if ret >= 8 {
        // SAFETY: the helper checks the user address.
        match unsafe { bpf_probe_read_user((end - 8) as *const [u8; 8]) } {
            Ok(bytes) => u64::from_be_bytes(bytes),
            Err(_) => return false,
        }
    } else {
        // A read of a few bytes (the terminator split across reads): shifted in one by one.
        let mut last = conn.body_state;
        for i in 0..7 {
            if i < ret as u64 {
                // SAFETY: as above.
                match unsafe { bpf_probe_read_user((start + i) as *const u8) } {
                    Ok(byte) => last = last << 8 | byte as u64,
                    Err(_) => return false,
                }
            }
        }
        last
    };
    conn.body_state = last;
    last & CHUNKED_END_MASK == CHUNKED_END
}
