//! The HTTP programs' ring buffer of announcements (new routes, listeners to check), read by
//! a thread of its own as well as at each refresh. The kernel announces without waking
//! anyone, except when an announcement finds the ring half full: a burst of new routes (a
//! crawler, process churn) would otherwise fill it before the next refresh and be lost.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use monitor_common::http::{DurationKey, MAX_DURATION_BOUNDS, ObservationEvent};

use super::{
    ReaderThread,
    http::{DurationCounts, Event, decode_event},
    wait_readable,
};

/// Announcements held between two refreshes at most (a few MiB of paths): past that, they
/// stay in the ring, whose overflow the kernel counts (`route_event_lost`).
const MAX_HELD: usize = 20_000;

/// How often the reader checks whether it should stop, when the kernel does not wake it.
const POLL: Duration = Duration::from_millis(200);

/// The ring and what has been read from it since the last refresh.
struct Held {
    ring: RingBuf<MapData>,
    events: Vec<Event>,
}

impl Held {
    /// Reads the ring until it is empty or `limit` events are held.
    fn read_ring(&mut self, limit: usize) {
        while self.events.len() < limit {
            let Some(item) = self.ring.next() else {
                return;
            };
            if let Some(event) = decode_event(&item) {
                self.events.push(event);
            }
        }
    }
}

/// The reader thread and the events it holds; the thread stops and is joined on drop.
pub struct HttpEvents {
    held: Arc<Mutex<Held>>,
    _thread: ReaderThread,
}

impl HttpEvents {
    pub fn spawn(ring: RingBuf<MapData>) -> Result<Self> {
        let fd = ring.as_raw_fd();
        let held = Arc::new(Mutex::new(Held {
            ring,
            events: Vec::new(),
        }));
        let shared = held.clone();
        let thread = ReaderThread::spawn("http-events", "HTTP events", move || {
            wait_readable(fd, POLL);
            shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .read_ring(MAX_HELD);
        })?;
        Ok(Self {
            held,
            _thread: thread,
        })
    }

    /// Everything announced so far: what the thread read, then the rest of the ring (at most
    /// the ring's capacity).
    pub fn take(&self) -> Vec<Event> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.read_ring(usize::MAX);
        std::mem::take(&mut held.events)
    }
}

/// Requests the kernel could not record in `HTTP_DURATION` at once and carried on the ring
/// buffer instead (`ObservationEvent`): running totals per key, added to the kernel's totals
/// of the same key at each read, and forgotten with them. At most `MAX_CARRIED_KEYS` keys;
/// an observation of a further key is counted lost.
#[derive(Default)]
pub struct CarriedObservations {
    totals: BTreeMap<DurationKey, DurationCounts>,
    lost: u64,
}

/// As many keys as `HTTP_DURATION` holds.
pub const MAX_CARRIED_KEYS: usize = 16_384;

impl CarriedObservations {
    pub fn add(&mut self, observation: &ObservationEvent) {
        let key = observation.key();
        if !self.totals.contains_key(&key) && self.totals.len() >= MAX_CARRIED_KEYS {
            self.lost += 1;
            return;
        }
        let totals = self.totals.entry(key).or_default();
        let bucket = (observation.bucket as usize).min(MAX_DURATION_BOUNDS);
        totals.buckets[bucket] += 1;
        totals.sum_ns += observation.duration_ns;
    }

    /// Adds the carried totals to the kernel's (`durations`), and lists the keys the kernel
    /// has no histogram for.
    pub fn add_to(&self, durations: &mut Vec<(DurationKey, DurationCounts)>) {
        let mut in_kernel = BTreeSet::new();
        for (key, counts) in durations.iter_mut() {
            if let Some(carried) = self.totals.get(key) {
                counts.add(carried);
                in_kernel.insert(*key);
            }
        }
        for (key, carried) in &self.totals {
            if !in_kernel.contains(key) {
                durations.push((*key, *carried));
            }
        }
    }

    pub fn forget(&mut self, key: &DurationKey) {
        self.totals.remove(key);
    }

    /// Observations dropped because `MAX_CARRIED_KEYS` was reached.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}
