//! Announcements to the agent on the ring buffer: a route, server address or listener seen
//! for the first time.

use super::*;

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
pub(super) fn ring_wakeup() -> u64 {
    let wake = if HTTP_EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= HTTP_EVENTS_WAKE_AT {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    wake as u64
}
