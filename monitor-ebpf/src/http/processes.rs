//! Which processes have connections (bitmaps checked before any look-up), and tracking a
//! server connection.

use super::*;

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

/// Marks `tgid` as a process that calls a TLS library the programs watch (`TLS_PROCESSES`).
#[inline(always)]
pub fn mark_tls(tgid: u32) {
    set_process_bit(&TLS_PROCESSES, tgid);
}

/// Whether `tgid` has called a TLS library the programs watch.
#[inline(always)]
pub fn uses_tls(tgid: u32) -> bool {
    process_bit(&TLS_PROCESSES, tgid) == Some(true)
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
