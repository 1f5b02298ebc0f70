//! Request lines: the target templated into a route as its bytes arrive (in one read or
//! several), the route admitted under the process's budget and announced the first time.

use super::*;

/// Templates the request target in `capture[from..len]`. When the line ends here (or is cut
/// by the capture), admits the route and waits for the response; otherwise keeps the path
/// bytes and waits for the next read. (Inlined: BPF functions take at most five arguments.)
#[inline(always)]
pub(super) fn continue_request_line(
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
pub(super) fn classify(head: &[u8; 16], len: usize) -> u8 {
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
