//! The idle sweep: responses on connections left open, ended after the idle timeout.

use super::*;

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
