//! Decodes the HTTP ring buffer's records: routes granted, listeners to check, and requests
//! the kernel carried there.

use monitor_common::http::{EVENT_KIND_OFFSET, HttpEvent, ObservationEvent, event_kind};

/// A route the kernel granted to a process for the first time, with the path it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteAnnouncement {
    pub tgid: u32,
    pub route: u64,
    pub kind: u8,
    pub path: Vec<u8>,
}

/// What one ring-buffer record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A listening socket whose port the kernel asks the agent to check.
    Listener {
        tgid: u32,
        fd: u32,
    },
    Route(RouteAnnouncement),
    /// A request the kernel could not record in a histogram of its own (`ObservationEvent`).
    Observation(ObservationEvent),
}

/// Decodes a ring-buffer record; `None` for one too short for what its kind says.
pub fn decode_event(item: &[u8]) -> Option<Event> {
    if *item.get(EVENT_KIND_OFFSET)? == event_kind::OBSERVATION {
        return read_record::<ObservationEvent>(item).map(Event::Observation);
    }
    let event: HttpEvent = read_record(item)?;
    if event.kind == event_kind::LISTENER {
        return Some(Event::Listener {
            tgid: event.tgid,
            fd: event.route as u32,
        });
    }
    let len = (event.path_len as usize).min(event.path.len());
    Some(Event::Route(RouteAnnouncement {
        tgid: event.tgid,
        route: event.route,
        kind: event.kind,
        path: event.path[..len].to_vec(),
    }))
}

/// A record's bytes as `T`, a struct of plain integers; `None` when they are too few.
fn read_record<T: Copy>(item: &[u8]) -> Option<T> {
    if item.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: a whole T's bytes (checked length), which any bytes are for the plain-integer
    // structs read here; read unaligned.
    Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) })
}
