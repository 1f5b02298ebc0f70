//! HTTP/1.x, both sides: what servers and clients share. Connections are tracked per
//! (process, fd); `server` handles accepted ones, `client` connected ones. A request's
//! duration lands in a per-CPU histogram; nothing per request leaves the kernel, only the
//! first sight of a route, a server address or a listener is announced to the agent.
//!
//! Verifier notes, which shape this code: functions that return nothing are inlined (a BPF
//! function returning nothing may leave a stack pointer in r0, which the verifier rejects);
//! byte loops run in `bpf_loop` callbacks whose state lives in map memory (stack state that
//! changes every iteration, such as a counter used as an index, would be tracked exactly and
//! the body verified once per value); exact small values that later index memory are passed
//! through `opaque`.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_for_each_map_elem, bpf_probe_read_kernel, bpf_probe_read_user},
    },
    maps::Array,
};
use monitor_common::head::{CAPTURE_WORDS, framing};
use monitor_common::http::{
    CAPTURE_LEN, Connection, DurationHistogram, DurationKey, HttpConfig, HttpEvent,
    IDLE_CANDIDATE_SLOTS, MAX_DURATION_BOUNDS, MAX_EXCLUDED_COMMS, MAX_PATH_LEN, ObservationEvent,
    conn_flags, connection_key, counter, duration_bucket, event_kind, head_prefix, head_words,
    idle_ring, measured_process_bit, parse_status_line, phase, role, test_fault,
};
use monitor_common::{fingerprint, verifier::hide};

use crate::{
    client, fork, loops,
    maps::{
        CAPTURE, CONNECTIONS, Capture, HTTP_CONFIG, HTTP_DURATION, HTTP_EVENTS,
        HTTP_EVENTS_WAKE_AT, IDLE_CANDIDATES, IDLE_RINGS, LAST_IDLE_SWEEP, LISTENERS,
        MEASURED_PROCESSES, NEW_CONNECTION, PARTIAL_PATHS, SERVING_PROCESSES, SWEEP_CONTEXT,
        SweepContext, ValueRange, ZERO_DURATION, count,
    },
    sched::current_comm,
    server,
    syscalls::Buffer,
};

/// `-ECONNRESET`: a read or write on a connection the peer reset.
pub const ECONNRESET: i64 = -104;
/// `-EPIPE`: a write on a connection the peer closed (or reset).
pub const EPIPE: i64 = -32;

#[inline(always)]
pub fn config() -> Option<&'static HttpConfig> {
    HTTP_CONFIG.get(0)
}

/// `value`, as a number the verifier knows nothing about. Code that branches into a handful of
/// exactly-known values (a method's length, a bucket index) would otherwise have everything
/// after it verified once per value; passed through map memory, the paths merge again.
#[inline(always)]
pub fn opaque(value: u64) -> u64 {
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
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// Whether the current process is one whose traffic is measured at all.
#[inline(always)]
pub fn measured(config: &HttpConfig, tgid: u32) -> bool {
    tgid != config.agent_tgid && !comm_excluded(config)
}

// --- Syscall events, dispatched by the connection's role ---

#[inline(always)]
pub fn on_data_in(fd: u32, buffer: Buffer, ret: i64) {
    // Errors say nothing, but a client learns from an end of stream or a reset.
    if ret < 0 && ret != ECONNRESET {
        return;
    }
    let tgid = current_tgid();
    if !may_have_connections(tgid) {
        return;
    }
    let key = connection_key(tgid, fd);
    let mut conn = CONNECTIONS.get_ptr_mut(key);
    if conn.is_none() {
        // A forked child's first read on a connection its parent accepted (`fork`).
        if ret <= 0 || !fork::forked_from_server(tgid) || !adopt_inherited(key, buffer, ret) {
            return;
        }
        conn = CONNECTIONS.get_ptr_mut(key);
    }
    let Some(conn) = conn else {
        return;
    };
    // SAFETY: a map value, valid for this program run.
    let conn = unsafe { &mut *conn };
    if conn.role == role::CLIENT {
        client::on_read(conn, key, tgid, buffer, ret);
    } else if ret > 0 {
        server::on_read(conn, key, tgid, buffer, ret);
    }
}

/// `fork::adopt_inherited` on the first bytes of this read.
#[inline(always)]
fn adopt_inherited(key: u64, buffer: Buffer, ret: i64) -> bool {
    let Some((head, len)) = first_16(buffer, ret) else {
        return false;
    };
    let [low, high] = head_words(&head);
    fork::adopt_inherited(key, low, high, len as u64) != 0
}

#[inline(always)]
pub fn on_data_out(fd: u32, buffer: Buffer, ret: i64) {
    // Errors say nothing, but a server learns that its client has gone.
    if ret <= 0 && ret != EPIPE && ret != ECONNRESET {
        return;
    }
    let tgid = current_tgid();
    if !may_have_connections(tgid) {
        return;
    }
    let key = connection_key(tgid, fd);
    let Some(conn) = CONNECTIONS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value, valid for this program run.
    let conn = unsafe { &mut *conn };
    if conn.role == role::CLIENT {
        if ret > 0 {
            client::on_write(conn, key, tgid, buffer, ret);
        }
    } else if ret > 0 {
        server::on_write(conn, key, tgid, buffer, ret);
    } else {
        server::on_write_failed(conn);
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
    if !may_have_connections(tgid) {
        return;
    }
    let Some(conn) = CONNECTIONS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value, valid for this program run.
    let conn = unsafe { &mut *conn };
    if conn.role == role::CLIENT {
        client::on_close(conn, tgid);
    } else {
        server::on_close(conn, tgid);
        let _ = PARTIAL_PATHS.remove(key);
    }
    let _ = CONNECTIONS.remove(key);
}

// --- Which processes have connections ---

/// False when `tgid` has never had a tracked connection (`MEASURED_PROCESSES`).
#[inline(always)]
pub fn may_have_connections(tgid: u32) -> bool {
    process_bit(&MEASURED_PROCESSES, tgid) != Some(false)
}

/// Marks `tgid` as a process with connections, before the first is tracked.
#[inline(always)]
pub fn mark_measured(tgid: u32) {
    set_process_bit(&MEASURED_PROCESSES, tgid);
}

/// Marks `tgid` as a process that serves connections (`SERVING_PROCESSES`).
#[inline(always)]
pub fn mark_serving(tgid: u32) {
    set_process_bit(&SERVING_PROCESSES, tgid);
}

/// Sets the bit of `tgid` in a bitmap of processes (`measured_process_bit`).
#[inline(always)]
fn set_process_bit(bitmap: &Array<u64>, tgid: u32) {
    let (word, bit) = measured_process_bit(tgid);
    if let Some(bits) = bitmap.get_ptr_mut(word) {
        // Most calls find the bit set already: a read is cheaper than a locked write.
        // SAFETY: a map value, valid for this program run.
        if unsafe { *bits } & bit == 0 {
            fetch_or(bits, bit);
        }
    }
}

/// Whether `tgid` has served a connection.
#[inline(always)]
pub fn serves(tgid: u32) -> bool {
    process_bit(&SERVING_PROCESSES, tgid) == Some(true)
}

/// The bit of `tgid` in a bitmap of processes; none if the word cannot be read.
#[inline(always)]
fn process_bit(bitmap: &Array<u64>, tgid: u32) -> Option<bool> {
    let (word, bit) = measured_process_bit(tgid);
    bitmap.get(word).map(|bits| bits & bit != 0)
}

/// Tracks `key` as a server connection between requests, counting `counted`, or
/// `CONNECTIONS_FULL` when the table refused it. The value is built in `NEW_CONNECTION`: the
/// global functions that call this have too little stack for it. BPF_ANY: a stale entry for
/// a reused fd number is replaced.
#[inline(always)]
pub fn track_server_connection(key: u64, counted: u32) -> bool {
    let Some(slot) = NEW_CONNECTION.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU map value, this program's alone while it runs; `init` overwrites it.
    let slot = unsafe { &mut *slot.cast::<MaybeUninit<Connection>>() };
    let tracked = CONNECTIONS
        .insert(key, Connection::init(slot, role::SERVER), BPF_ANY as u64)
        .is_ok();
    if tracked {
        mark_serving((key >> 32) as u32);
    }
    count(if tracked {
        counted
    } else {
        counter::CONNECTIONS_FULL
    });
    tracked
}

// --- Announcements ---

/// Where the bytes of an announcement are.
pub enum EventBytes {
    /// `CAPTURE.bytes[from..len]`.
    Capture {
        from: usize,
        len: usize,
    },
    /// A request path that came in pieces (`PARTIAL_PATHS`).
    Partial(u64),
    /// The server address the client scanner found (`CAPTURE.host`).
    Host,
    None,
}

#[inline(always)]
pub fn announce(tgid: u32, value: u64, kind: u8, bytes: &EventBytes) {
    let Some(mut entry) = HTTP_EVENTS.reserve::<HttpEvent>(0) else {
        count(counter::EVENTS_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, writable HttpEvent; every field is written
    // before submit (the path by the helper, up to `len`; the rest is never read).
    unsafe {
        (*event).route = value;
        (*event).tgid = tgid;
        (*event).kind = kind;
        (*event)._reserved = 0;
        let (source, len) = match *bytes {
            EventBytes::Capture { from, len } => match CAPTURE.get_ptr(0) {
                Some(capture) => (
                    (*capture).bytes.as_ptr().add(from & (CAPTURE_LEN - 1)),
                    len.saturating_sub(from),
                ),
                None => (core::ptr::null(), 0),
            },
            EventBytes::Partial(key) => match PARTIAL_PATHS.get_ptr(key) {
                Some(partial) => ((*partial).bytes.as_ptr(), (*partial).len as usize),
                None => (core::ptr::null(), 0),
            },
            EventBytes::Host => match CAPTURE.get_ptr(0) {
                Some(capture) => (
                    (*capture).host.host.as_ptr(),
                    (*capture).host.normalised_len(),
                ),
                None => (core::ptr::null(), 0),
            },
            EventBytes::None => (core::ptr::null(), 0),
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
    entry.submit(ring_wakeup());
    count(counter::EVENTS_SUBMITTED);
}

/// No wake-up per event (the agent reads them at its refresh), unless the ring is filling
/// faster than that: a burst of new routes would otherwise be lost.
#[inline(always)]
fn ring_wakeup() -> u64 {
    let wake = if HTTP_EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= HTTP_EVENTS_WAKE_AT {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    wake as u64
}

// --- Ending a request ---

/// Records the request that `conn` holds, ended at `end_ns`; 1 when this call recorded it.
#[inline(always)]
pub fn finish_response(conn: &mut Connection, tgid: u32, end_ns: u64) -> u64 {
    record_response(conn, tgid as u64, end_ns, 0)
}

/// What `record_response` returns when `retry` was asked and the histogram could not be made
/// now: the response is left as it was, for the caller to try again.
pub const RECORD_LATER: u64 = 2;

/// `-E2BIG`: a hash map's insert found the map full.
const E2BIG: i32 = -7;

/// `finish_response`, as a global function: many places end requests, and the verifier
/// checks a global function once on its own instead of once for each of them. With `retry`
/// (the idle sweep), a histogram that cannot be created for a reason other than a full map
/// leaves the response unclaimed (`RECORD_LATER`): the sweep runs from the clock tick, in
/// interrupt context, where the allocation of a new map element can fail while the map has
/// room, and several responses with new keys ending in one tick lost all but the first.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn record_response(
    conn: *mut Connection,
    tgid: u64,
    end_ns: u64,
    retry: u64,
) -> u64 {
    // SAFETY: callers pass a map value; the verifier only knows it as maybe-null memory.
    let Some(conn) = (unsafe { conn.as_mut() }) else {
        return 0;
    };
    let tgid = tgid as u32;
    // Read before the claim: once it is claimed, the syscall path may start the next request
    // in these fields.
    let duration = end_ns.saturating_sub(conn.request_start_ns);
    let key = DurationKey {
        tgid,
        status: conn.status,
        method: conn.method,
        role: conn.role,
        route: conn.route,
    };
    // The histogram first: a response is claimed only once it can be recorded (or carried to
    // the agent, `carry_observation`), or lost for good (a full map).
    let Some(config) = config() else {
        return 0;
    };
    // Tests only: as if no histogram could be allocated, to carry every request.
    let no_histogram = config.test_faults & test_fault::NO_HISTOGRAM != 0;
    let mut histogram = None;
    let mut full = false;
    if !no_histogram {
        histogram = HTTP_DURATION.get_ptr_mut(key);
        if histogram.is_none() {
            if let Some(zero) = ZERO_DURATION.get(0) {
                // NOEXIST: another CPU may have created it meanwhile; then it is just used.
                full = HTTP_DURATION.insert(key, zero, BPF_NOEXIST as u64) == Err(E2BIG);
            }
            histogram = HTTP_DURATION.get_ptr_mut(key);
        }
        if histogram.is_none() && retry != 0 && !full {
            return RECORD_LATER;
        }
    }
    if !claim_response(conn) {
        return 0; // the sweep (or a syscall on another CPU) ended it already
    }
    let bucket = duration_bucket(
        &config.duration_bounds_ns,
        config.duration_bound_count as usize,
        duration,
    );
    let bucket = (opaque(bucket as u64) & (MAX_DURATION_BOUNDS as u64 * 2 - 1)) as usize;
    let recorded = if key.role == role::CLIENT {
        counter::CLIENT_RECORDED
    } else {
        counter::RESPONSES
    };
    let Some(histogram) = histogram else {
        if full {
            count(counter::HISTOGRAM_FULL);
        } else if carry_observation(&key, bucket, duration) {
            count(recorded);
        }
        return 0;
    };
    // SAFETY: this CPU's copy of a per-CPU value.
    let histogram: &mut DurationHistogram = unsafe { &mut *histogram };
    if let Some(slot) = histogram.buckets.get_mut(bucket) {
        *slot += 1;
    }
    histogram.sum_ns += duration;
    count(recorded);
    1
}

/// Sends an observation whose histogram could not be allocated to the agent
/// (`ObservationEvent`); false when the ring buffer is full too.
#[inline(always)]
fn carry_observation(key: &DurationKey, bucket: usize, duration: u64) -> bool {
    let Some(mut entry) = HTTP_EVENTS.reserve::<ObservationEvent>(0) else {
        count(counter::OBSERVATIONS_LOST);
        return false;
    };
    entry.write(ObservationEvent {
        route: key.route,
        tgid: key.tgid,
        status: key.status,
        kind: event_kind::OBSERVATION,
        method: key.method,
        role: key.role,
        bucket: bucket as u8,
        _reserved: [0; 6],
        duration_ns: duration,
    });
    entry.submit(ring_wakeup());
    count(counter::OBSERVATIONS_CARRIED);
    true
}

/// Moves the connection from RESPONSE to IDLE; true for the one caller that did it.
#[inline(always)]
pub fn claim_response(conn: &mut Connection) -> bool {
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

/// Atomically sets `bits` in `*word` (BPF_ATOMIC | BPF_OR, kernel 5.12+), written out for
/// the same reason.
#[cfg(target_arch = "bpf")]
#[inline(always)]
fn fetch_or(word: *mut u64, bits: u64) {
    // SAFETY: `word` is an aligned u64 in a map value.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({word} + 0) |= {bits}",
            word = in(reg) word,
            bits = in(reg) bits,
        );
    }
}

/// Atomically adds `value` to `*word`; returns what it held (BPF_ATOMIC | BPF_ADD |
/// BPF_FETCH, kernel 5.12+).
#[cfg(target_arch = "bpf")]
#[inline(always)]
fn fetch_add(word: *mut u64, value: u64) -> u64 {
    let mut previous = value;
    // SAFETY: `word` is an aligned u64 in a map value.
    unsafe {
        core::arch::asm!(
            "{previous} = atomic_fetch_add((u64 *)({word} + 0), {previous})",
            word = in(reg) word,
            previous = inout(reg) previous,
        );
    }
    previous
}

#[cfg(not(target_arch = "bpf"))]
fn fetch_add(word: *mut u64, value: u64) -> u64 {
    // SAFETY: as above; never run concurrently on the host.
    unsafe {
        let previous = *word;
        *word += value;
        previous
    }
}

#[cfg(not(target_arch = "bpf"))]
fn fetch_or(word: *mut u64, bits: u64) {
    // SAFETY: as above; never run concurrently on the host.
    unsafe { *word |= bits };
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
//
// Time is cut into epochs one idle timeout long. A connection whose response starts is listed
// once per epoch in that epoch's ring (`IDLE_CANDIDATES`); in the next epoch the sweep looks at
// the listed connections alone: a response idle for the timeout is ended, one still moving is
// listed again. A walk over the whole table (about a millisecond at 65,536 entries, with the
// CPU held) is left for when a ring overflowed, a candidate could not be listed or a sweep was
// missed: then it finds what the rings may have lost.

/// How long after an epoch starts its predecessor's ring is read: a program that claimed a
/// slot just before the epoch ended has long written it by then.
const RING_GRACE_NS: u64 = 1_000_000;

/// Lists the connection `key` for the idle sweep of the epoch it is in, once per epoch: its
/// response started at `now`.
#[inline(always)]
pub fn list_for_sweep(conn: &mut Connection, key: u64, now: u64) {
    if now < conn.listed_until_ns {
        return; // listed in this epoch already
    }
    if let Some((epoch, length)) = epoch_at(now) {
        list_in_epoch(conn, key, epoch, length);
    }
}

/// The idle-timeout epoch `now` is in, and its length; none when the sweep is off.
#[inline(always)]
fn epoch_at(now: u64) -> Option<(u64, u64)> {
    let length = config()?.idle_timeout_ns;
    if length == 0 {
        return None;
    }
    Some((now / length, length))
}

#[inline(always)]
fn list_in_epoch(conn: &mut Connection, key: u64, epoch: u64, length: u64) {
    conn.listed_until_ns = (epoch + 1) * length;
    let _ = list_candidate(key, epoch);
}

/// Puts `key` in the ring of `epoch`; when that is not possible (the ring is full or still
/// holds an older epoch), asks for a walk over the whole table instead. A global function:
/// the verifier checks it once.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn list_candidate(key: u64, epoch: u64) -> u64 {
    let ring = (epoch & 1) as u32;
    let listed = ring_word(idle_ring::epoch(ring)) == epoch
        && IDLE_RINGS
            .get_ptr_mut(idle_ring::claimed(ring))
            .is_some_and(|claimed| {
                let slot = fetch_add(claimed, 1);
                slot < IDLE_CANDIDATE_SLOTS as u64
                    && IDLE_CANDIDATES
                        .get_ptr_mut(ring * IDLE_CANDIDATE_SLOTS + slot as u32)
                        // SAFETY: an array element, claimed by this call alone.
                        .map(|entry| unsafe { *entry = key })
                        .is_some()
            });
    if !listed {
        set_ring_word(idle_ring::FULL_PASS, 1);
    }
    0
}

#[inline(always)]
fn set_ring_word(index: u32, value: u64) {
    if let Some(word) = IDLE_RINGS.get_ptr_mut(index) {
        // SAFETY: an array element; a racing writer of FULL_PASS writes the same value.
        unsafe { *word = value };
    }
}

#[inline(always)]
fn ring_word(index: u32) -> u64 {
    IDLE_RINGS.get(index).copied().unwrap_or(0)
}

/// Ends responses whose connection has waited, with nothing moving, for the idle timeout: the
/// last request of a keep-alive connection would otherwise be counted only when the next
/// request comes or the connection closes. Runs from a clock event on one CPU
/// (`http_idle_sweep`), once per epoch.
pub fn sweep_idle_responses(now: u64) {
    let Some((epoch, length)) = epoch_at(now) else {
        return;
    };
    let Some(last) = LAST_IDLE_SWEEP.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a map value, valid for this program run; one CPU sweeps.
    let last = unsafe { &mut *last };
    if *last == epoch + 1 || now - epoch * length < RING_GRACE_NS || epoch == 0 {
        return;
    }
    let previous = ((epoch - 1) & 1) as u32;
    let current = (epoch & 1) as u32;
    let claimed = ring_word(idle_ring::claimed(previous));
    let full = *last != epoch
        || ring_word(idle_ring::FULL_PASS) != 0
        || ring_word(idle_ring::epoch(previous)) != epoch - 1
        || claimed > IDLE_CANDIDATE_SLOTS as u64;
    *last = epoch + 1;
    // The current epoch's ring must be collecting before anything is listed in it. If it was
    // not (sweeps were missed), what was started in it so far went unlisted: the next sweep
    // walks the whole table.
    let mut next_full = 0;
    if ring_word(idle_ring::epoch(current)) != epoch {
        set_ring_word(idle_ring::claimed(current), 0);
        set_ring_word(idle_ring::epoch(current), epoch);
        next_full = 1;
    }
    set_ring_word(idle_ring::FULL_PASS, next_full);
    let mut ctx = SweepContext {
        now,
        epoch,
        length,
        ring: previous,
        _reserved: 0,
        claimed,
    };
    if full {
        count(counter::IDLE_FULL_SWEEPS);
        // SAFETY: the callback and its context match what the helper expects.
        unsafe {
            bpf_for_each_map_elem(
                core::ptr::addr_of!(CONNECTIONS).cast_mut().cast(),
                sweep_one as *mut c_void,
                (&mut ctx as *mut SweepContext).cast(),
                0,
            );
        }
    } else {
        // The candidates' step reads the context from its map: a global function (the
        // bounded loops' steps) takes only numbers.
        // Capped and shifted, not divided: a verifier before 6.x loses a number's bounds
        // through a division, and a loop without a known bound is refused where it is a
        // plain loop (the ring holds no more anyway).
        let steps = (claimed.min(IDLE_CANDIDATE_SLOTS as u64) + CANDIDATES_PER_STEP - 1)
            >> CANDIDATES_PER_STEP.trailing_zeros();
        if SWEEP_CONTEXT.set(0, &ctx, 0).is_ok() {
            loops::repeat_steps(steps as u32, sweep_candidates);
        }
    }
    // The previous epoch's ring collects the next epoch from now on.
    set_ring_word(idle_ring::claimed(previous), 0);
    set_ring_word(idle_ring::epoch(previous), epoch + 1);
}

/// Candidates looked at per step: fewer calls, and a bounded loop of at most 256 steps over
/// the 4,096 slots of a ring, which the verifier walks without running out of room.
const CANDIDATES_PER_STEP: u64 = 16;

loops::loop_step! {
    /// Looks at candidates `step * CANDIDATES_PER_STEP..` of the ring being swept.
    fn sweep_candidates(step) -> i64 {
        let Some(ctx) = SWEEP_CONTEXT.get(0) else {
            return 1;
        };
        let mut k = 0;
        while k < CANDIDATES_PER_STEP {
            let index = step * CANDIDATES_PER_STEP + k;
            if index >= ctx.claimed {
                return 1;
            }
            let slot = ctx.ring * IDLE_CANDIDATE_SLOTS
                + (index as u32 & (IDLE_CANDIDATE_SLOTS - 1));
            let Some(&key) = IDLE_CANDIDATES.get(slot) else {
                return 1;
            };
            if let Some(conn) = CONNECTIONS.get_ptr_mut(key) {
                // SAFETY: a map value, valid for this program run.
                let conn = unsafe { &mut *conn };
                // Listed again in a later epoch, or a new connection on the same fd: not this
                // ring's.
                if conn.listed_until_ns == ctx.epoch * ctx.length {
                    sweep_connection(conn, key, ctx);
                }
            } // else closed since
            k += 1;
        }
        0
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
    if conn.listed_until_ns <= ctx.epoch * ctx.length {
        sweep_connection(conn, key, ctx);
    }
    0
}

/// Ends the connection's response if it has been idle for the timeout; lists it in the
/// current epoch if it is still waiting.
#[inline(always)]
fn sweep_connection(conn: &mut Connection, key: u64, ctx: &SweepContext) {
    // A client response with a known framing waits for its bytes or its close, however long.
    if conn.phase != phase::RESPONSE || conn.framing != framing::UNKNOWN {
        return;
    }
    // One read before its request's write returned waits for that write, which names it.
    let waits_for_request = conn.flags & conn_flags::ANSWERED_EARLY != 0;
    if ctx.now.saturating_sub(conn.last_io_ns) >= ctx.length && !waits_for_request {
        match record_response(conn, key >> 32, conn.last_io_ns, 1) {
            0 => {}
            // Listed again: the next epoch's sweep tries again (if no syscall ends it first).
            RECORD_LATER => list_in_epoch(conn, key, ctx.epoch, ctx.length),
            _ => count(counter::ENDED_IDLE),
        }
    } else {
        list_in_epoch(conn, key, ctx.epoch, ctx.length);
    }
}

// --- Byte loops over the capture ---

/// Feeds the value loop's bytes for step `index` (`CAPTURE.value`) to `feed`; 1 (stop) past
/// the value's end or when `feed` says so.
#[inline(always)]
pub fn feed_value<const PER_CALL: u64>(
    index: u64,
    mut feed: impl FnMut(&mut Capture, u8) -> bool,
) -> i64 {
    let Some(capture) = CAPTURE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: a per-CPU map value, only used by this program run.
    let capture = unsafe { &mut *capture };
    let (from, end) = (capture.value.from as u64, capture.value.end as u64);
    let mut k = 0;
    while k < PER_CALL {
        let position = from + index * PER_CALL + k;
        if position >= end {
            return 1;
        }
        let b = capture.bytes[(position as usize) & (CAPTURE_LEN - 1)];
        if !feed(capture, b) {
            return 1;
        }
        k += 1;
    }
    0
}

/// Reads the capture's bytes `from..end` with `step`, `PER_CALL` per step.
#[inline(always)]
pub fn read_value<const PER_CALL: u64>(step: loops::Step, from: u32, end: u32) {
    let Some(capture) = CAPTURE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU map value, only used by this program run.
    unsafe {
        (*capture).value = ValueRange { from, end };
    }
    loops::repeat_steps((CAPTURE_LEN as u64 / PER_CALL) as u32, step);
}

// --- Capturing bytes ---

/// The status code if these bytes start a response.
#[inline(always)]
pub fn status_of(buffer: Buffer, ret: i64) -> Option<u16> {
    let (head, len) = first_16(buffer, ret)?;
    if len < 12 {
        return None;
    }
    parse_status_line(&head)
}

/// The first (up to) 16 bytes the syscall moved, zero-padded, and how many there were. Read
/// onto the stack: the kernel's usercopy hardening checks a stack destination in a few
/// instructions, map memory with several calls.
#[inline(always)]
pub fn first_16(buffer: Buffer, ret: i64) -> Option<([u8; 16], usize)> {
    let (source, len) = first_bytes_up_to(buffer, ret, 16)?;
    // Bounded again where the compiler cannot drop it (`verifier::hide`): 6.1 also follows a
    // path where `ret` is negative, whose `min` it cannot bound.
    let len = hide(len) & 31;
    let len = if len > 16 { 16 } else { len };
    let mut head = [0u8; 16];
    // The destination holds 16 bytes and `len` is at most that.
    if !read_user_bytes(head.as_mut_ptr(), len, source) {
        return None;
    }
    Some((head, len as usize))
}

/// Where the syscall's first bytes are in user memory, and how many of them to copy: the
/// bytes moved, at most `max`, all in the first buffer.
#[inline(always)]
fn first_bytes_up_to(buffer: Buffer, ret: i64, max: u64) -> Option<(u64, u64)> {
    let (source, available) = first_bytes(buffer, ret)?;
    Some((source, (ret as u64).min(available).min(max)))
}

/// Copies `len` bytes of user memory at `source` to `dest`, which must hold them; false when
/// the helper could not read them.
#[inline(always)]
fn read_user_bytes(dest: *mut u8, len: u64, source: u64) -> bool {
    // SAFETY: the caller sizes `dest`; the helper checks the user address.
    unsafe { bpf_probe_read_user(dest.cast(), len as u32, source as *const c_void) == 0 }
}

/// The capture's words, for the word-at-a-time scans (`fingerprint`, `head`).
#[inline(always)]
pub fn capture_words(bytes: &[u8; CAPTURE_LEN]) -> impl Fn(usize) -> u64 + '_ {
    let words = bytes.as_ptr() as *const u64;
    // SAFETY: `bytes` starts the 8-aligned map value and holds CAPTURE_WORDS words; the
    // index is masked into them.
    move |i| unsafe { *words.add(i & (CAPTURE_WORDS - 1)) }
}

/// `fingerprint::request_target` of the capture. A global function: the verifier checks it
/// once, on its own, instead of once for every way the program can reach it.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn target_print(target: u64, len: u64) -> u64 {
    let Some(capture) = CAPTURE.get_ptr(0) else {
        return 0;
    };
    // SAFETY: a per-CPU map value, only used by this program run.
    let capture = unsafe { &*capture };
    fingerprint::request_target(
        capture_words(&capture.bytes),
        target as usize,
        len as usize,
        seed(),
    )
}

/// `fingerprint::bytes` of the capture; a global function for the same reason.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn bytes_print(len: u64) -> u64 {
    let Some(capture) = CAPTURE.get_ptr(0) else {
        return 0;
    };
    // SAFETY: as above.
    let capture = unsafe { &*capture };
    fingerprint::bytes(capture_words(&capture.bytes), len as usize, seed())
}

/// `proxy::header_len` of the capture (`len` bytes read), 0 when it holds no PROXY header; a
/// global function for the same reason.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn proxy_header_len(len: u64) -> u64 {
    let Some(capture) = CAPTURE.get_ptr(0) else {
        return 0;
    };
    // SAFETY: as above.
    let capture = unsafe { &*capture };
    monitor_common::proxy::header_len(&head(capture), len as usize, capture_words(&capture.bytes))
        .map_or(0, |len| len as u64)
}

/// Captures the bytes of a read that follow its first `skip` bytes into the per-CPU capture,
/// in place of what `capture` put there, and returns how many; none when the first buffer
/// holds no more than `skip`.
#[inline(always)]
pub fn recapture_after(buffer: Buffer, ret: i64, skip: u64) -> Option<usize> {
    let (source, available) = first_bytes(buffer, ret)?;
    let rest = (ret as u64)
        .min(available)
        .checked_sub(skip)
        .filter(|&rest| rest > 0)?;
    capture(Buffer::Plain(source + skip), rest as i64).map(|(_, len)| len)
}

#[inline(always)]
fn seed() -> u64 {
    config().map_or(0, |config| config.fingerprint_seed)
}

#[inline(always)]
pub fn head(capture: &Capture) -> [u8; 16] {
    let mut head = [0u8; 16];
    head.copy_from_slice(&capture.bytes[..16]);
    head
}

/// `len`, at most CAPTURE_LEN, in a form the verifier can bound (a mask, then a cap).
#[inline(always)]
fn within_capture(len: u64) -> u64 {
    let len = hide(len) & (2 * CAPTURE_LEN as u64 - 1);
    if len > CAPTURE_LEN as u64 {
        CAPTURE_LEN as u64
    } else {
        len
    }
}

/// Copies the first bytes the syscall moved, up to CAPTURE_LEN, into the per-CPU capture; the
/// rest of the capture is zeroed up to 16 bytes so short reads parse as what they are.
#[inline(always)]
pub fn capture(buffer: Buffer, ret: i64) -> Option<(&'static Capture, usize)> {
    capture_after(&[0; 2], buffer, ret)
}

/// `capture`, after the bytes a connection holds (`head_prefix::of`; none for `[0, 0]`), as
/// if they had come in one read with this syscall's: prefix and bytes fill the capture at
/// most, as a full read would.
#[inline(always)]
pub fn capture_after(
    prefix: &[u64; 2],
    buffer: Buffer,
    ret: i64,
) -> Option<(&'static Capture, usize)> {
    let held = head_prefix::len(prefix) as u64;
    let (source, len) = first_bytes_up_to(buffer, ret, CAPTURE_LEN as u64 - held)?;
    let len = within_capture(len);
    // SAFETY: a per-CPU map value, only used by this program run on this CPU.
    let capture = unsafe { &mut *CAPTURE.get_ptr_mut(0)? };
    let first_words = capture.bytes.as_mut_ptr().cast::<[u64; 2]>();
    // SAFETY: `bytes` starts the 8-aligned map value. The prefix's bytes (or zeroes) first;
    // the read then overwrites the zeroes after them.
    unsafe { *first_words = head_prefix::bytes(prefix) };
    // `held` + `len` is at most CAPTURE_LEN (the cap above); the verifier, which cannot
    // relate the two, sees a write within the map value, whose other fields follow `bytes`.
    let dest = capture
        .bytes
        .as_mut_ptr()
        .wrapping_add((held & 15) as usize);
    if !read_user_bytes(dest, len, source) {
        return None;
    }
    Some((capture, (held + len) as usize))
}

/// The address of the syscall's first bytes in user memory, and how many are there.
#[inline(always)]
pub fn first_bytes(buffer: Buffer, ret: i64) -> Option<(u64, u64)> {
    match buffer {
        Buffer::Plain(pointer) => Some((pointer, ret as u64)),
        Buffer::Iovec(iov) => first_iovec(iov),
        Buffer::Msghdr(msg) => first_iovec(read_user::<u64>(msg + MSGHDR_IOV)?),
        Buffer::None => None,
    }
}

/// Offset of `msg_iov` in the user ABI's `struct msghdr` (x86_64).
const MSGHDR_IOV: u64 = 16;

/// Base and length of the first `struct iovec` at `iov`, in one read of user memory.
fn first_iovec(iov: u64) -> Option<(u64, u64)> {
    let [base, len] = read_user::<[u64; 2]>(iov)?;
    Some((base, len))
}

pub fn read_user<T: Copy>(address: u64) -> Option<T> {
    // SAFETY: the helper checks the user address; failure is an error value.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(address as *const T).ok() }
}

/// Inlined: as a function of its own it costs the program's deepest call chain a frame, and
/// older kernels count every frame as at least 32 bytes (`probes::stack_budget`).
#[inline(always)]
fn comm_excluded(config: &HttpConfig) -> bool {
    let Some(comm) = current_comm() else {
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
