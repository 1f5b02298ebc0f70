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

mod request_line;

use request_line::{classify, continue_request_line};

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
