//! HTTP/1.x, server side. A request starts with the read that brings its first bytes and ends
//! with the last write of its response, known when the next request arrives on the
//! connection, the connection closes, the next response starts (pipelining), or the idle
//! sweep finds it waiting.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::generated::bpf_probe_read_kernel,
};
use monitor_common::{
    http::{
        CAPTURE_LEN, Connection, Fed, MAX_PATH_LEN, NotRequestScanner, OVERFLOW_ROUTE_HASH,
        ProcessRoute, RouteTemplater, cannot_be_status_line, conn_flags, connection_key, counter,
        event_kind, head_prefix, is_interim, is_request_prefix, listener, not_http,
        parse_request_start, parse_status_line, phase, role, template_allowance,
    },
    proxy,
    verifier::hide,
};

use crate::{
    client::final_response_after_interim,
    files::{port_allowed, socket_local_port},
    http::{
        EventBytes, announce, capture_after, config, current_tgid, feed_value, finish_response,
        first_16, head, list_for_sweep, mark_measured, mark_serving, measured, now_ns, opaque,
        proxy_header_len, read_value, recapture_after, status_of, target_print,
    },
    loops,
    maps::{
        CAPTURE, CONNECTIONS, Capture, LISTENERS, PARTIAL_PATHS, ROUTE_COUNT, ROUTES_SEEN,
        ZERO_PARTIAL, count,
    },
    syscalls::Buffer,
};

#[inline(always)]
pub fn on_accept(listening_fd: u32, ret: i64) {
    if ret < 0 {
        return;
    }
    let Some(config) = config() else {
        return;
    };
    let tgid = current_tgid();
    if !measured(config, tgid) {
        return;
    }
    if config.port_filter != 0 && !listener_allowed(tgid, listening_fd) {
        return;
    }
    mark_measured(tgid);
    // BPF_ANY: a stale entry for a reused fd number is replaced.
    let key = connection_key(tgid, ret as u32);
    let mut slot = MaybeUninit::uninit();
    if CONNECTIONS
        .insert(
            key,
            Connection::init(&mut slot, role::SERVER),
            BPF_ANY as u64,
        )
        .is_ok()
    {
        count(counter::CONNECTIONS_ACCEPTED);
        mark_serving(tgid);
    } else {
        count(counter::CONNECTIONS_FULL);
    }
}

/// With `--http-ports`: whether connections from this listener are measured. Its port is read
/// here where the kernel's BTF gave the way to it; otherwise a listener the agent has not
/// checked yet is announced once and its connections skipped until then.
#[inline(always)]
fn listener_allowed(tgid: u32, listening_fd: u32) -> bool {
    let port = socket_local_port(listening_fd as u64);
    if port != 0 {
        if port_allowed(port as u16) {
            return true;
        }
        count(counter::PORT_FILTERED);
        return false;
    }
    let key = connection_key(tgid, listening_fd);
    match LISTENERS.get_ptr(key) {
        // SAFETY: a map value, valid for this program run.
        Some(verdict) => match unsafe { *verdict } {
            listener::ALLOWED => true,
            listener::DENIED => {
                count(counter::PORT_FILTERED);
                false
            }
            _ => {
                count(counter::LISTENER_UNCHECKED);
                false
            }
        },
        None => {
            if LISTENERS
                .insert(key, listener::UNCHECKED, BPF_NOEXIST as u64)
                .is_ok()
            {
                announce(
                    tgid,
                    listening_fd as u64,
                    event_kind::LISTENER,
                    &EventBytes::None,
                );
            }
            count(counter::LISTENER_UNCHECKED);
            false
        }
    }
}

#[inline(always)]
pub fn on_read(conn: &mut Connection, key: u64, tgid: u32, buffer: Buffer, ret: i64) {
    let now = now_ns();
    // The rest of a request whose first bytes came alone (`hold_request_prefix`), if any.
    let prefix = conn.head_prefix;
    let continued = head_prefix::len(&prefix) != 0;
    let read_ahead = conn.flags & conn_flags::READ_AHEAD != 0;
    if continued {
        conn.head_prefix = [0; 2];
        conn.flags &= !conn_flags::READ_AHEAD;
    }
    let Some((capture, len)) = capture_after(&prefix, buffer, ret) else {
        return;
    };
    match conn.phase {
        phase::REQUEST_LINE => continue_request_line(conn, key, tgid, capture, 0, len, true),
        phase::IDLE | phase::RESPONSE => {
            let mut len = len;
            if !continued && conn.phase == phase::IDLE && proxy::starts_header(&head(capture)) {
                // A load balancer's PROXY header before the first request: skipped unread.
                // The bytes after it replace it in the same per-CPU capture.
                let skip = proxy_header_len(len as u64);
                if skip != 0 {
                    let Some(rest) = recapture_after(buffer, ret, skip) else {
                        return; // the header alone (or cut): the request comes next
                    };
                    len = rest;
                }
            }
            let head = head(capture);
            let Some((method, target)) = parse_request_start(&head) else {
                if is_request_prefix(&head, len) {
                    hold_request_prefix(conn, tgid, &head, len, now, !continued);
                } else {
                    not_a_request(conn, key, &head, len);
                }
                return;
            };
            if conn.phase == phase::RESPONSE {
                let _ = finish_response(conn, tgid, conn.last_io_ns);
            }
            count(counter::REQUESTS);
            conn.flags = 0;
            conn.method = method;
            if !continued || read_ahead {
                // Else the request started with the read that brought its prefix.
                conn.request_start_ns = now;
            }
            conn.status = 0;
            let target = (opaque(target as u64) & 15) as usize;
            let print = target_print(target as u64, len as u64);
            if print != 0 && print == conn.request_print && conn.cached_route != 0 {
                // The same request line as the last one: the same route, not templated again.
                conn.route = conn.cached_route;
                conn.phase = phase::REQUEST;
                return;
            }
            // A target that ends in this read is templated and admitted below, which sets
            // `cached_route` for it.
            conn.request_print = print;
            conn.templater.reset();
            continue_request_line(conn, key, tgid, capture, target, len, false);
        }
        phase::REQUEST if !continued && len == 1 => hold_read_ahead(conn, capture),
        // Request body, or a pipelined request that is paired when its response starts.
        _ => {}
    }
}

/// One byte read while a request waits for its response. Go's net/http reads one byte ahead
/// while a handler runs, on another thread: when the client sends its next request at once,
/// that byte can come back before the handler's write of the response has left the kernel.
/// A byte that can begin a request is held (`head_prefix`) for the read that brings the
/// rest, after the response; the request is timed from that read, since `request_start_ns`
/// still times the one being answered. (A body read one byte at a time would be held too,
/// and a request that followed it taken for what is not one: so only single bytes are.)
#[inline(always)]
fn hold_read_ahead(conn: &mut Connection, capture: &Capture) {
    let head = head(capture);
    if is_request_prefix(&head, 1) {
        conn.head_prefix = head_prefix::of(&head, 1);
        conn.flags |= conn_flags::READ_AHEAD;
    }
}

/// A read too short to tell a request, whose bytes may begin one: held for the next read to
/// complete (`head_prefix`). The request starts here, so the response before it ends.
#[inline(always)]
fn hold_request_prefix(
    conn: &mut Connection,
    tgid: u32,
    head: &[u8; 16],
    len: usize,
    now: u64,
    first: bool,
) {
    if conn.phase == phase::RESPONSE {
        let _ = finish_response(conn, tgid, conn.last_io_ns);
    }
    if first {
        conn.request_start_ns = now;
    }
    conn.head_prefix = head_prefix::of(head, len);
}

/// A read where a request should have started. Between requests it is counted by kind, and
/// a connection that never spoke HTTP is dropped. While a response is being written, text may
/// be the rest of a pipelined request or a late request body, so only what cannot be (binary,
/// TLS, a bad method) is counted, once; either way a status line that follows is taken for
/// the answer to these bytes, not for a pipelined request.
#[inline(always)]
fn not_a_request(conn: &mut Connection, key: u64, head: &[u8; 16], len: usize) {
    let kind = classify(head, len);
    if conn.phase == phase::IDLE {
        count(counter::not_http_counter(kind));
        if conn.cached_route == 0 {
            // Never spoke HTTP: stop looking at it.
            let _ = CONNECTIONS.remove(key);
        } else {
            conn.flags |= conn_flags::STRAY_READ;
        }
    } else if kind != not_http::TEXT && conn.flags & conn_flags::STRAY_READ == 0 {
        count(counter::not_http_counter(kind));
        conn.flags |= conn_flags::STRAY_READ;
    }
}

#[inline(always)]
pub fn on_write(conn: &mut Connection, key: u64, tgid: u32, buffer: Buffer, ret: i64) {
    let now = now_ns();
    match conn.phase {
        phase::REQUEST => {
            let Some((head, len)) = first_16(buffer, ret) else {
                return;
            };
            let status = if len >= 12 {
                parse_status_line(&head)
            } else {
                None
            };
            let Some(mut status) = status else {
                if cannot_be_status_line(&head, len) {
                    // Answered without a status line (HTTP/0.9): nothing to record.
                    count(counter::NO_STATUS_LINE);
                    conn.phase = phase::IDLE;
                }
                return;
            };
            if is_interim(status) {
                // Interim (100 Continue, 103 Early Hints): the final one follows, in this
                // write or a later one.
                match final_response_after_interim(buffer, ret) {
                    Some(after) => status = after.status,
                    None => return,
                }
            }
            conn.status = status;
            conn.last_io_ns = now;
            conn.phase = phase::RESPONSE;
            list_for_sweep(conn, key, now);
            if status == 101 {
                // Switching protocols: what follows is not HTTP/1.x.
                let _ = finish_response(conn, tgid, now);
                let _ = CONNECTIONS.remove(key);
            }
        }
        phase::RESPONSE => {
            if let Some(status) = status_of(buffer, ret) {
                // The next response: the previous one ended before it.
                let _ = finish_response(conn, tgid, conn.last_io_ns);
                if conn.flags & conn_flags::STRAY_READ != 0 {
                    // The answer to bytes that were not a request (a 400 to noise).
                    count(counter::UNMATCHED_NOT_HTTP);
                    return;
                }
                // A pipelined request's. It came in the same read as the previous one; its
                // line was not parsed, so it shares that one's method and route.
                count(counter::REQUESTS);
                conn.flags &= !conn_flags::WRITE_FAILED;
                conn.status = status;
                conn.last_io_ns = now;
                conn.phase = phase::RESPONSE;
                list_for_sweep(conn, key, now);
            } else {
                conn.last_io_ns = now;
            }
        }
        phase::IDLE if status_of(buffer, ret).is_some() => {
            count(if conn.flags & conn_flags::STRAY_READ != 0 {
                counter::UNMATCHED_NOT_HTTP
            } else {
                counter::UNMATCHED_RESPONSES
            });
        }
        _ => {}
    }
}

/// A write failed because the client reset or closed the connection: the response is cut
/// short (it is still recorded, up to its last write). Counted once per response.
#[inline(always)]
pub fn on_write_failed(conn: &mut Connection) {
    if conn.phase == phase::RESPONSE && conn.flags & conn_flags::WRITE_FAILED == 0 {
        conn.flags |= conn_flags::WRITE_FAILED;
        count(counter::RESPONSES_ABORTED);
    }
}

#[inline(always)]
pub fn on_close(conn: &mut Connection, tgid: u32) {
    match conn.phase {
        phase::RESPONSE => {
            let _ = finish_response(conn, tgid, conn.last_io_ns);
        }
        phase::REQUEST | phase::REQUEST_LINE => count(counter::UNANSWERED),
        _ => {}
    }
}

// --- Request lines ---

/// Templates the request target in `capture[from..len]`. When the line ends here (or is cut
/// by the capture), admits the route and waits for the response; otherwise keeps the path
/// bytes and waits for the next read. (Inlined: BPF functions take at most five arguments.)
#[inline(always)]
fn continue_request_line(
    conn: &mut Connection,
    key: u64,
    tgid: u32,
    capture: &Capture,
    from: usize,
    len: usize,
    continued: bool,
) {
    let ended = template(&mut conn.templater, from, len);
    // A full capture always ends the line: the longest path templated fits in it.
    if !ended && len < CAPTURE_LEN {
        save_partial_path(key, capture, from, len, continued);
        conn.phase = phase::REQUEST_LINE;
        return;
    }
    let template = conn.templater.finish(&mut ());
    conn.route = if template == conn.cached_template && conn.cached_route != 0 {
        conn.cached_route
    } else {
        let path = if continued {
            append_partial_path(key, capture, from, len);
            EventBytes::Partial(key)
        } else {
            EventBytes::Capture { from, len }
        };
        let route = admit_route(tgid, template, conn.templater.collapsed_hash(), path);
        conn.cached_template = template;
        conn.cached_route = route;
        route
    };
    if continued {
        let _ = PARTIAL_PATHS.remove(key);
    }
    conn.phase = phase::REQUEST;
}

/// The `not_http::*` kind of the captured read, whose first 16 bytes are `head`.
#[inline(always)]
fn classify(head: &[u8; 16], len: usize) -> u8 {
    scan_not_request(len as u64);
    match CAPTURE.get_ptr(0) {
        // SAFETY: a per-CPU map value, only used by this program run.
        Some(capture) => unsafe { (*capture).not_request.kind(head) },
        None => not_http::TEXT,
    }
}

/// Feeds the capture's first bytes to `CAPTURE.not_request`. A global function (see
/// `client::heads::scan_host`).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn scan_not_request(len: u64) -> u64 {
    let Some(capture) = CAPTURE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: a per-CPU map value, only used by this program run.
    let capture = unsafe { &mut *capture };
    capture.not_request = NotRequestScanner::default();
    let bytes = if len < 16 { len } else { 16 };
    loops::repeat_steps(bytes as u32, classify_step);
    0
}

loops::loop_step! {
    /// One byte of the capture per `bpf_loop` iteration, into the scanner in map memory.
    fn classify_step(index) -> i64 {
        let Some(capture) = CAPTURE.get_ptr_mut(0) else {
            return 1;
        };
        // SAFETY: a per-CPU map value, only used by this program run; the index is masked.
        let capture = unsafe { &mut *capture };
        let b = capture.bytes[(index as usize) & 15];
        capture.not_request.feed(b);
        0
    }
}

/// Path bytes templated per callback, to save calls (see `client::heads::LINE_STEPS_PER_CALL`).
/// Checked once, in the global `template_capture`, eight cost the verifier's start-up pass
/// about 0.05 s; before that function was global, two made it 0.3-0.4 s longer.
const TEMPLATE_BYTES_PER_CALL: u64 = 8;

loops::loop_step! {
    /// Feeds bytes of the capture to the templater (`template`). The templater itself is in
    /// map memory (`Capture::templater`): on the stack, the verifier would follow each of its
    /// fields exactly through the loop and check the body once per combination of values.
    fn template_step(index) -> i64 {
        feed_value::<TEMPLATE_BYTES_PER_CALL>(index, |capture, b| {
            capture.templater.feed(b, &mut ()) == Fed::More
        })
    }
}

/// Feeds `capture[from..to]` to the templater; true when the request target ended.
#[inline(always)]
fn template(templater: &mut RouteTemplater, from: usize, to: usize) -> bool {
    let Some(capture) = CAPTURE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a per-CPU map value, only used by this program run.
    unsafe { (*capture).templater = *templater };
    template_capture(from as u64, to as u64);
    // SAFETY: as above.
    *templater = unsafe { (*capture).templater };
    templater.ended != 0
}

/// Feeds `capture[from..to]` to `CAPTURE.templater`. A global function (see
/// `client::heads::scan_host`).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn template_capture(from: u64, to: u64) -> u64 {
    read_value::<TEMPLATE_BYTES_PER_CALL>(template_step, from as u32, to as u32);
    0
}

/// The route this request is counted under: its template while the process's budget lasts,
/// then `/<first segment>/{*}` for a while, then `__overflow__`. A route granted for the
/// first time is announced to the agent with the path it came from.
fn admit_route(tgid: u32, template: u64, collapsed: u64, path: EventBytes) -> u64 {
    let seen = ProcessRoute {
        route: template,
        tgid,
        _reserved: 0,
    };
    if ROUTES_SEEN.get_ptr(seen).is_some() {
        return template;
    }
    let Some(granted) = grant_count(tgid) else {
        count(counter::ROUTES_OVERFLOWED);
        return OVERFLOW_ROUTE_HASH;
    };
    let budget = config().map_or(0, |config| config.route_budget);
    if *granted < template_allowance(budget) {
        if ROUTES_SEEN.insert(seen, 1, BPF_NOEXIST as u64).is_ok() {
            *granted += 1;
            announce(tgid, template, event_kind::TEMPLATE, &path);
            return template;
        }
        // Another CPU admitted it since the look-up above: a route's first requests, read by
        // several threads at once.
        if ROUTES_SEEN.get_ptr(seen).is_some() {
            return template;
        }
    }
    let collapsed_seen = ProcessRoute {
        route: collapsed,
        ..seen
    };
    if ROUTES_SEEN.get_ptr(collapsed_seen).is_some() {
        count(counter::ROUTES_COLLAPSED);
        return collapsed;
    }
    // The rest of the budget goes to collapsed forms (`template_allowance`).
    if *granted < budget {
        let admitted = ROUTES_SEEN
            .insert(collapsed_seen, 1, BPF_NOEXIST as u64)
            .is_ok();
        if admitted {
            *granted += 1;
            announce(tgid, collapsed, event_kind::COLLAPSED, &path);
        }
        // Not admitted here but there now: another CPU was first, as above.
        if admitted || ROUTES_SEEN.get_ptr(collapsed_seen).is_some() {
            count(counter::ROUTES_COLLAPSED);
            return collapsed;
        }
    }
    count(counter::ROUTES_OVERFLOWED);
    OVERFLOW_ROUTE_HASH
}

fn grant_count(tgid: u32) -> Option<&'static mut u32> {
    if let Some(granted) = ROUTE_COUNT.get_ptr_mut(tgid) {
        // SAFETY: a map value, valid for this program run.
        return Some(unsafe { &mut *granted });
    }
    let _ = ROUTE_COUNT.insert(tgid, 0, BPF_NOEXIST as u64);
    // SAFETY: as above.
    ROUTE_COUNT
        .get_ptr_mut(tgid)
        .map(|granted| unsafe { &mut *granted })
}

/// Keeps the path bytes of a cut request line for the route announcement.
#[inline(always)]
fn save_partial_path(key: u64, capture: &Capture, from: usize, len: usize, continued: bool) {
    if !continued && let Some(empty) = ZERO_PARTIAL.get(0) {
        let _ = PARTIAL_PATHS.insert(key, empty, BPF_ANY as u64);
    }
    append_partial_path(key, capture, from, len);
}

#[inline(always)]
fn append_partial_path(key: u64, capture: &Capture, from: usize, len: usize) {
    let Some(partial) = PARTIAL_PATHS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value; the offset is masked below 256 and the size below 256 in a
    // 512-byte buffer, so the write stays inside whatever the arithmetic gives.
    unsafe {
        let have = (*partial).len as usize;
        if have >= MAX_PATH_LEN {
            return;
        }
        let room = MAX_PATH_LEN - have;
        let add = len.saturating_sub(from);
        let add = if add > room { room } else { add };
        if add == 0 {
            return;
        }
        bpf_probe_read_kernel(
            (*partial).bytes.as_mut_ptr().add(have & 0xff).cast(),
            // Masked after `hide`: the compiler would drop a mask it can prove needless,
            // and older verifiers cannot follow its proof (`verifier::hide`).
            (hide(add as u64) & 0xff) as u32,
            capture.bytes.as_ptr().add(from & (CAPTURE_LEN - 1)).cast(),
        );
        (*partial).len = (have + add) as u32;
    }
}
