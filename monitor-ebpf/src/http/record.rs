//! Ending a request: its duration into the per-CPU histogram (or carried to the agent when
//! none can be allocated), and the atomics that let one of two racing programs claim it.

use super::*;

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
pub(super) fn fetch_or(word: *mut u64, bits: u64) {
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
pub(super) fn fetch_add(word: *mut u64, value: u64) -> u64 {
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
pub(super) fn fetch_add(word: *mut u64, value: u64) -> u64 {
    // SAFETY: as above; never run concurrently on the host.
    unsafe {
        let previous = *word;
        *word += value;
        previous
    }
}

#[cfg(not(target_arch = "bpf"))]
pub(super) fn fetch_or(word: *mut u64, bits: u64) {
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
