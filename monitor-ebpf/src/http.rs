//! HTTP/1.x, server side: recognise requests and responses from their first bytes, pair them
//! per connection, and add each request's duration to a per-CPU histogram. Nothing per request
//! leaves the kernel; only a route seen for the first time is announced to the agent.
//!
//! A request starts with the read that brings its first bytes and ends with the last write of
//! its response, known when the next request arrives on the connection, the connection
//! closes, or the next response starts (pipelining).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_for_each_map_elem, bpf_loop, bpf_probe_read_kernel, bpf_probe_read_user},
    },
};
use monitor_common::http::{
    CAPTURE_LEN, Connection, DurationHistogram, DurationKey, Fed, HttpConfig, HttpEvent,
    MAX_DURATION_BOUNDS, MAX_EXCLUDED_COMMS, MAX_PATH_LEN, OVERFLOW_ROUTE_HASH, ProcessRoute,
    RouteTemplater, connection_key, counter, duration_bucket, event_kind, listener,
    parse_request_start, parse_status_line, phase, role, template_allowance,
};

use crate::{
    maps::{
        CAPTURE, CONNECTIONS, Capture, HTTP_CONFIG, HTTP_DURATION, HTTP_EVENTS, LISTENERS,
        PARTIAL_PATHS, ROUTE_COUNT, ROUTES_SEEN, ZERO_DURATION, ZERO_PARTIAL, count,
    },
    syscalls::Buffer,
};

#[inline(always)]
fn config() -> Option<&'static HttpConfig> {
    HTTP_CONFIG.get(0)
}

/// `value`, as a number the verifier knows nothing about. Code that branches into a handful of
/// exactly-known values (a method's length, a bucket index) would otherwise have everything
/// after it verified once per value; passed through map memory, the paths merge again.
#[inline(always)]
fn opaque(value: u64) -> u64 {
    let Some(capture) = CAPTURE.get_ptr_mut(0) else {
        return value;
    };
    // SAFETY: a per-CPU map value; volatile keeps the round trip through memory.
    unsafe {
        let scratch = core::ptr::addr_of_mut!((*capture).scratch);
        core::ptr::write_volatile(scratch, value);
        core::ptr::read_volatile(scratch)
    }
}

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

// --- Syscall events ---

#[inline(always)]
pub fn on_accept(listening_fd: u32, ret: i64) {
    if ret < 0 {
        return;
    }
    let Some(config) = config() else {
        return;
    };
    let tgid = current_tgid();
    if tgid == config.agent_tgid || comm_excluded(config) {
        return;
    }
    if config.port_filter != 0 && !listener_allowed(tgid, listening_fd) {
        return;
    }
    let connection = Connection {
        phase: phase::IDLE,
        request_start_ns: 0,
        last_write_ns: 0,
        route: 0,
        cached_template: 0,
        cached_route: 0,
        templater: RouteTemplater::new(),
        status: 0,
        method: 0,
        role: role::SERVER,
        _reserved: [0; 4],
    };
    // BPF_ANY: a stale entry for a reused fd number is replaced.
    let key = connection_key(tgid, ret as u32);
    if CONNECTIONS.insert(key, connection, BPF_ANY as u64).is_ok() {
        count(counter::CONNECTIONS_ACCEPTED);
    } else {
        count(counter::CONNECTIONS_FULL);
    }
}

#[inline(always)]
pub fn on_data_in(fd: u32, buffer: Buffer, ret: i64) {
    if ret <= 0 {
        return;
    }
    let tgid = current_tgid();
    let key = connection_key(tgid, fd);
    let Some(conn) = CONNECTIONS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value, valid for this program run.
    let conn = unsafe { &mut *conn };
    let now = now_ns();
    let Some((capture, len)) = capture(buffer, ret, CAPTURE_LEN) else {
        return;
    };
    match conn.phase {
        phase::REQUEST_LINE => continue_request_line(conn, key, tgid, capture, 0, len, true),
        phase::IDLE | phase::RESPONSE => {
            let Some((method, target)) = parse_request_start(&head(capture)) else {
                if conn.phase == phase::IDLE {
                    count(counter::NOT_HTTP);
                    if conn.cached_route == 0 {
                        // Never spoke HTTP: stop looking at it.
                        let _ = CONNECTIONS.remove(key);
                    }
                }
                return;
            };
            if conn.phase == phase::RESPONSE {
                let _ = finish_response(conn, tgid, conn.last_write_ns);
            }
            count(counter::REQUESTS);
            conn.method = method;
            conn.request_start_ns = now;
            conn.status = 0;
            conn.templater = RouteTemplater::new();
            let target = (opaque(target as u64) & 15) as usize;
            continue_request_line(conn, key, tgid, capture, target, len, false);
        }
        // Request body, or a pipelined request that is paired when its response starts.
        _ => {}
    }
}

#[inline(always)]
pub fn on_data_out(fd: u32, buffer: Buffer, ret: i64) {
    if ret <= 0 {
        return;
    }
    let tgid = current_tgid();
    let Some(conn) = CONNECTIONS.get_ptr_mut(connection_key(tgid, fd)) else {
        return;
    };
    // SAFETY: a map value, valid for this program run.
    let conn = unsafe { &mut *conn };
    let now = now_ns();
    match conn.phase {
        phase::REQUEST => {
            let Some(status) = status_of(buffer, ret) else {
                return;
            };
            if status < 200 && status != 101 {
                return; // interim (100 Continue, 103 Early Hints): the final one follows
            }
            conn.status = status;
            conn.last_write_ns = now;
            conn.phase = phase::RESPONSE;
            if status == 101 {
                // Switching protocols: what follows is not HTTP/1.x.
                let _ = finish_response(conn, tgid, now);
                let _ = CONNECTIONS.remove(connection_key(tgid, fd));
            }
        }
        phase::RESPONSE => {
            if let Some(status) = status_of(buffer, ret) {
                // The next pipelined request's response: the previous one ended before it.
                // That request came in the same read; its line was not parsed, so it shares
                // the first one's method and route.
                let _ = finish_response(conn, tgid, conn.last_write_ns);
                count(counter::REQUESTS);
                conn.status = status;
                conn.last_write_ns = now;
                conn.phase = phase::RESPONSE;
            } else {
                conn.last_write_ns = now;
            }
        }
        phase::IDLE if status_of(buffer, ret).is_some() => {
            count(counter::UNMATCHED_RESPONSES);
        }
        _ => {}
    }
}

/// With `--http-ports`: whether connections from this listener are measured. A listener
/// the agent has not checked yet is announced once and its connections skipped until then.
#[inline(always)]
fn listener_allowed(tgid: u32, listening_fd: u32) -> bool {
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
                    &PathBytes::None,
                );
            }
            count(counter::LISTENER_UNCHECKED);
            false
        }
    }
}

#[inline(always)]
pub fn on_close(fd: u32) {
    let tgid = current_tgid();
    let key = connection_key(tgid, fd);
    // A closed listener's fd may come back as another listener: forget its verdict.
    if config().is_some_and(|config| config.port_filter != 0) {
        let _ = LISTENERS.remove(key);
    }
    let Some(conn) = CONNECTIONS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value, valid for this program run.
    let conn = unsafe { &mut *conn };
    match conn.phase {
        phase::RESPONSE => {
            let _ = finish_response(conn, tgid, conn.last_write_ns);
        }
        phase::REQUEST => count(counter::UNANSWERED),
        phase::REQUEST_LINE => {
            count(counter::UNANSWERED);
            let _ = PARTIAL_PATHS.remove(key);
        }
        _ => {}
    }
    let _ = CONNECTIONS.remove(key);
}

// --- Requests ---

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
            PathBytes::Partial(key)
        } else {
            PathBytes::Capture { from, len }
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

#[repr(C)]
struct TemplateLoop {
    templater: RouteTemplater,
    from: u64,
    end: u64,
}

/// One byte per `bpf_loop` iteration, so the verifier checks this body once instead of once per
/// byte. The position comes from the loop index, which the verifier treats as unknown: a
/// position kept in `ctx` and incremented would be tracked exactly, iteration by iteration,
/// and the body verified 192 times over.
#[inline(never)]
extern "C" fn template_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `TemplateLoop` that `template` passes to bpf_loop.
    let ctx = unsafe { &mut *(ctx as *mut TemplateLoop) };
    let position = ctx.from + index;
    if position >= ctx.end {
        return 1;
    }
    let Some(capture) = CAPTURE.get_ptr(0) else {
        return 1;
    };
    // SAFETY: a per-CPU map value; the index is masked into it.
    let b = unsafe { (*capture).bytes[(position as usize) & (CAPTURE_LEN - 1)] };
    match ctx.templater.feed(b, &mut ()) {
        Fed::More => 0,
        Fed::End => 1,
    }
}

/// Feeds `capture[from..to]` to the templater; true when the request target ended.
fn template(templater: &mut RouteTemplater, from: usize, to: usize) -> bool {
    let mut ctx = TemplateLoop {
        templater: *templater,
        from: from as u64,
        end: to as u64,
    };
    // SAFETY: the callback and its context match what bpf_loop expects.
    unsafe {
        bpf_loop(
            CAPTURE_LEN as u32,
            template_step as *mut c_void,
            (&mut ctx as *mut TemplateLoop).cast(),
            0,
        )
    };
    *templater = ctx.templater;
    ctx.templater.ended != 0
}

enum PathBytes {
    Capture { from: usize, len: usize },
    Partial(u64),
    None,
}

/// The route this request is counted under: its template while the process's budget lasts,
/// then `/<first segment>/{*}` for a while, then `__overflow__`. A route granted for the
/// first time is announced to the agent with the path it came from.
fn admit_route(tgid: u32, template: u64, collapsed: u64, path: PathBytes) -> u64 {
    let seen = ProcessRoute {
        route: template,
        tgid,
        _reserved: 0,
    };
    if ROUTES_SEEN.get_ptr(seen).is_some() {
        return template;
    }
    let Some(granted) = route_count(tgid) else {
        count(counter::ROUTES_OVERFLOWED);
        return OVERFLOW_ROUTE_HASH;
    };
    let budget = config().map_or(0, |config| config.route_budget);
    if *granted < template_allowance(budget)
        && ROUTES_SEEN.insert(seen, 1, BPF_NOEXIST as u64).is_ok()
    {
        *granted += 1;
        announce(tgid, template, event_kind::TEMPLATE, &path);
        return template;
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
    if *granted < budget
        && ROUTES_SEEN
            .insert(collapsed_seen, 1, BPF_NOEXIST as u64)
            .is_ok()
    {
        *granted += 1;
        announce(tgid, collapsed, event_kind::COLLAPSED, &path);
        count(counter::ROUTES_COLLAPSED);
        return collapsed;
    }
    count(counter::ROUTES_OVERFLOWED);
    OVERFLOW_ROUTE_HASH
}

fn route_count(tgid: u32) -> Option<&'static mut u32> {
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

#[inline(always)]
fn announce(tgid: u32, route: u64, kind: u8, path: &PathBytes) {
    let Some(mut entry) = HTTP_EVENTS.reserve::<HttpEvent>(0) else {
        count(counter::EVENTS_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, writable HttpEvent; every field is written
    // before submit (the path by the helper, up to `len`, the rest is never read).
    unsafe {
        (*event).route = route;
        (*event).tgid = tgid;
        (*event).kind = kind;
        (*event)._reserved = 0;
        let (source, len) = match *path {
            PathBytes::Capture { from, len } => match CAPTURE.get_ptr(0) {
                Some(capture) => (
                    (*capture).bytes.as_ptr().add(from & (CAPTURE_LEN - 1)),
                    len.saturating_sub(from),
                ),
                None => (core::ptr::null(), 0),
            },
            PathBytes::Partial(key) => match PARTIAL_PATHS.get_ptr(key) {
                Some(partial) => ((*partial).bytes.as_ptr(), (*partial).len as usize),
                None => (core::ptr::null(), 0),
            },
            PathBytes::None => (core::ptr::null(), 0),
        };
        let len = if len > MAX_PATH_LEN {
            MAX_PATH_LEN
        } else {
            len
        };
        (*event).path_len = len as u16;
        if len > 0 {
            bpf_probe_read_kernel((*event).path.as_mut_ptr().cast(), len as u32, source.cast());
        }
    }
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    count(counter::EVENTS_SUBMITTED);
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
            (add & 0xff) as u32,
            capture.bytes.as_ptr().add(from & (CAPTURE_LEN - 1)).cast(),
        );
        (*partial).len = (have + add) as u32;
    }
}

// --- Responses ---

/// Records the request that `conn` holds, ended at `end_ns`; 1 when this call recorded it.
///
/// Not inlined: four places end requests. It returns a value because a BPF function that
/// returns nothing may leave a stack pointer in r0, which the verifier rejects.
#[inline(never)]
fn finish_response(conn: &mut Connection, tgid: u32, end_ns: u64) -> u64 {
    // Read before the claim: once it is claimed, the syscall path may start the next request
    // in these fields.
    let duration = end_ns.saturating_sub(conn.request_start_ns);
    let key = DurationKey {
        tgid,
        status: conn.status,
        method: conn.method,
        _reserved: 0,
        route: conn.route,
    };
    if !claim_response(conn) {
        return 0; // the sweep (or a syscall on another CPU) ended it already
    }
    let mut histogram = HTTP_DURATION.get_ptr_mut(key);
    if histogram.is_none() {
        if let Some(zero) = ZERO_DURATION.get(0) {
            // NOEXIST: another CPU may have created it meanwhile; then it is just used.
            let _ = HTTP_DURATION.insert(key, zero, BPF_NOEXIST as u64);
        }
        histogram = HTTP_DURATION.get_ptr_mut(key);
    }
    let Some(histogram) = histogram else {
        count(counter::HISTOGRAM_FULL);
        return 0;
    };
    let Some(config) = config() else {
        return 0;
    };
    let bucket = duration_bucket(
        &config.duration_bounds_ns,
        config.duration_bound_count as usize,
        duration,
    );
    let bucket = (opaque(bucket as u64) & (MAX_DURATION_BOUNDS as u64 * 2 - 1)) as usize;
    // SAFETY: this CPU's copy of a per-CPU value.
    let histogram: &mut DurationHistogram = unsafe { &mut *histogram };
    if let Some(slot) = histogram.buckets.get_mut(bucket) {
        *slot += 1;
    }
    histogram.sum_ns += duration;
    count(counter::RESPONSES);
    1
}

/// Moves the connection from RESPONSE to IDLE; true for the one caller that did it.
#[inline(always)]
fn claim_response(conn: &mut Connection) -> bool {
    compare_exchange(
        core::ptr::addr_of_mut!(conn.phase),
        phase::RESPONSE,
        phase::IDLE,
    ) == phase::RESPONSE
}

/// Atomically replaces `*word` with `new` if it holds `expected`; returns what it held.
/// BPF_CMPXCHG (kernel 5.12+) has no Rust intrinsic on the BPF target, so it is written out.
#[cfg(target_arch = "bpf")]
#[inline(always)]
fn compare_exchange(word: *mut u64, expected: u64, new: u64) -> u64 {
    let mut previous = expected;
    // SAFETY: `word` is an aligned u64 in a map value.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({word} + 0, r0, {new})",
            word = in(reg) word,
            new = in(reg) new,
            inout("r0") previous,
        );
    }
    previous
}

/// Host builds (clippy, `cargo check`) only: the programs run on the BPF target.
#[cfg(not(target_arch = "bpf"))]
fn compare_exchange(word: *mut u64, expected: u64, new: u64) -> u64 {
    // SAFETY: as above; never run concurrently on the host.
    unsafe {
        let previous = *word;
        if previous == expected {
            *word = new;
        }
        previous
    }
}

// --- The idle sweep ---

#[repr(C)]
struct SweepContext {
    now: u64,
    idle_timeout: u64,
}

/// Ends responses whose connection has waited, with no write, for the idle timeout: the last
/// request of a keep-alive connection would otherwise be counted only when the next request
/// comes or the connection closes. Runs on one CPU from the periodic tick.
pub fn sweep_idle_responses(now: u64) {
    let Some(config) = config() else {
        return;
    };
    if config.idle_timeout_ns == 0 {
        return;
    }
    let mut ctx = SweepContext {
        now,
        idle_timeout: config.idle_timeout_ns,
    };
    // SAFETY: the callback and its context match what the helper expects.
    unsafe {
        bpf_for_each_map_elem(
            core::ptr::addr_of!(CONNECTIONS).cast_mut().cast(),
            sweep_one as *mut c_void,
            (&mut ctx as *mut SweepContext).cast(),
            0,
        );
    }
}

#[inline(never)]
extern "C" fn sweep_one(
    _map: *mut c_void,
    key: *const u64,
    conn: *mut Connection,
    ctx: *mut SweepContext,
) -> i64 {
    // SAFETY: the helper passes a valid key, value and our context.
    let (key, conn, ctx) = unsafe { (*key, &mut *conn, &*ctx) };
    if conn.phase == phase::RESPONSE
        && ctx.now.saturating_sub(conn.last_write_ns) >= ctx.idle_timeout
        && finish_response(conn, (key >> 32) as u32, conn.last_write_ns) != 0
    {
        count(counter::ENDED_IDLE);
    }
    0
}

/// The status code if this write starts a response.
fn status_of(buffer: Buffer, ret: i64) -> Option<u16> {
    let (capture, len) = capture(buffer, ret, 16)?;
    if len < 12 {
        return None;
    }
    parse_status_line(&head(capture))
}

// --- Capturing bytes ---

#[inline(always)]
fn head(capture: &Capture) -> [u8; 16] {
    let mut head = [0u8; 16];
    head.copy_from_slice(&capture.bytes[..16]);
    head
}

#[inline(always)]
/// Copies up to `max` of the first bytes the syscall moved into the per-CPU capture; the rest
/// of the capture is zeroed up to 16 bytes so short reads parse as what they are.
fn capture(buffer: Buffer, ret: i64, max: usize) -> Option<(&'static Capture, usize)> {
    let (source, available) = match buffer {
        Buffer::Plain(pointer) => (pointer, ret as u64),
        Buffer::Iovec(iov) => first_iovec(iov)?,
        Buffer::Msghdr(msg) => first_iovec(read_user::<u64>(msg + MSGHDR_IOV)?)?,
        Buffer::None => return None,
    };
    let mut len = ret as u64;
    if available < len {
        len = available;
    }
    if len > max as u64 {
        len = max as u64;
    }
    let len = len & (2 * CAPTURE_LEN as u64 - 1);
    let len = if len > CAPTURE_LEN as u64 {
        CAPTURE_LEN as u64
    } else {
        len
    };
    // SAFETY: a per-CPU map value, only used by this program run on this CPU.
    let capture = unsafe { &mut *CAPTURE.get_ptr_mut(0)? };
    capture.bytes[..16].fill(0);
    // SAFETY: the destination holds CAPTURE_LEN bytes and `len` is at most that; the helper
    // checks the user address.
    let failed = unsafe {
        bpf_probe_read_user(
            capture.bytes.as_mut_ptr().cast(),
            len as u32,
            source as *const c_void,
        )
    } != 0;
    if failed {
        return None;
    }
    Some((capture, len as usize))
}

/// Offset of `msg_iov` in the user ABI's `struct msghdr` (x86_64).
const MSGHDR_IOV: u64 = 16;

/// Base and length of the first `struct iovec` at `iov`.
fn first_iovec(iov: u64) -> Option<(u64, u64)> {
    Some((read_user::<u64>(iov)?, read_user::<u64>(iov + 8)?))
}

fn read_user<T: Copy>(address: u64) -> Option<T> {
    // SAFETY: the helper checks the user address; failure is an error value.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(address as *const T).ok() }
}

fn comm_excluded(config: &HttpConfig) -> bool {
    let Ok(comm) = bpf_get_current_comm() else {
        return false;
    };
    let mut i = 0;
    while i < MAX_EXCLUDED_COMMS {
        let excluded = &config.excluded_comms[i];
        if excluded[0] != 0 && *excluded == comm {
            return true;
        }
        i += 1;
    }
    false
}
