//! The HTTP ring buffer's records: announcements (`HttpEvent`) and carried observations.

use super::*;

/// What an [`HttpEvent`] announces.
pub mod event_kind {
    /// A route granted under the budget as its own template.
    pub const TEMPLATE: u8 = 0;
    /// A route granted once the templates were spent: `/<first segment>/{*}`.
    pub const COLLAPSED: u8 = 1;
    /// Not a route: a listening socket (fd in `route`) whose port the agent must check
    /// against `--http-ports`.
    pub const LISTENER: u8 = 2;
    /// A server address a client process used for the first time; `path` holds its text.
    pub const HOST: u8 = 3;
    /// Not an announcement: an [`ObservationEvent`](super::ObservationEvent).
    pub const OBSERVATION: u8 = 4;
}

/// A request whose histogram the kernel could not allocate when it ended (a map without
/// preallocation refills its free elements asynchronously, and a burst of new keys can find
/// none ready): carried to the agent, which adds it to that key's counts. Shares the ring
/// buffer with [`HttpEvent`], and `kind` sits where `HttpEvent::kind` does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObservationEvent {
    pub route: u64,
    pub tgid: u32,
    pub status: u16,
    /// `event_kind::OBSERVATION`.
    pub kind: u8,
    pub method: u8,
    pub role: u8,
    /// The histogram bucket the duration falls in (`duration_bucket`).
    pub bucket: u8,
    pub _reserved: [u8; 6],
    pub duration_ns: u64,
}

/// Where every event on the HTTP ring buffer has its `kind`.
pub const EVENT_KIND_OFFSET: usize = core::mem::offset_of!(HttpEvent, kind);
const _: () = assert!(core::mem::offset_of!(ObservationEvent, kind) == EVENT_KIND_OFFSET);

impl ObservationEvent {
    pub fn key(&self) -> DurationKey {
        DurationKey {
            tgid: self.tgid,
            status: self.status,
            method: self.method,
            role: self.role,
            route: self.route,
        }
    }
}

/// What the agent must hear about, rarely: a route the kernel has not seen for this process
/// (the agent rebuilds its text from `path`, never exported as is, and checks it against
/// `route`), or a listening socket to check.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpEvent {
    pub route: u64,
    pub tgid: u32,
    pub path_len: u16,
    pub kind: u8,
    pub _reserved: u8,
    pub path: [u8; MAX_PATH_LEN],
}
