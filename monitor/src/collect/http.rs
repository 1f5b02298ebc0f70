//! Reads the HTTP maps: duration histograms, the kernel's counters and route announcements;
//! frees the entries of processes that are gone.
//!
//! This file holds the maps and their reads; the ring buffer's records are decoded in
//! `decode`, what a read returns is in `snapshot`, and the freeing of entries (and what an
//! exited process's open connection is worth) is in `cleanup`.

mod cleanup;
mod decode;
mod snapshot;

pub use cleanup::{DeadConnection, InFlightAtExit, Sweep, dead_connection, idle_sweep_deadline_ns};
pub use decode::{Event, RouteAnnouncement, decode_event};
pub use snapshot::{DurationCounts, HttpSnapshot};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap, IterableMap as _, MapData, PerCpuArray, PerCpuHashMap},
};
use monitor_common::http::{
    ClientErrorKey, Connection, DurationHistogram, DurationKey, ProcessRoute, connection_key,
    counter, listener, role,
};

use super::{
    MapUsage, capacity,
    http_events::{CarriedObservations, HttpEvents},
    measured_processes::MeasuredProcesses,
    take, usage,
};

/// Announcements kept at most while reads fail.
const MAX_PENDING: usize = 50_000;

pub struct HttpMaps {
    durations: PerCpuHashMap<MapData, DurationKey, DurationHistogram>,
    counters: PerCpuArray<MapData, u64>,
    events: HttpEvents,
    carried: CarriedObservations,
    /// Drained from `events`, not yet handed over in a snapshot.
    announcements: Vec<RouteAnnouncement>,
    unchecked_listeners: Vec<(u32, u32)>,
    connections: HashMap<MapData, u64, Connection>,
    routes_seen: HashMap<MapData, ProcessRoute, u8>,
    route_count: HashMap<MapData, u32, u32>,
    listeners: HashMap<MapData, u64, u8>,
    hosts_seen: HashMap<MapData, ProcessRoute, u8>,
    host_count: HashMap<MapData, u32, u32>,
    client_errors: PerCpuHashMap<MapData, ClientErrorKey, u64>,
    connect_errors: PerCpuHashMap<MapData, u32, u64>,
    measured: MeasuredProcesses,
    serving: MeasuredProcesses,
}

impl HttpMaps {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            durations: take(ebpf, "HTTP_DURATION")?.try_into()?,
            counters: take(ebpf, "HTTP_COUNTERS")?.try_into()?,
            events: HttpEvents::spawn(take(ebpf, "HTTP_EVENTS")?.try_into()?)?,
            carried: CarriedObservations::default(),
            announcements: Vec::new(),
            unchecked_listeners: Vec::new(),
            connections: take(ebpf, "CONNECTIONS")?.try_into()?,
            routes_seen: take(ebpf, "ROUTES_SEEN")?.try_into()?,
            route_count: take(ebpf, "ROUTE_COUNT")?.try_into()?,
            listeners: take(ebpf, "LISTENERS")?.try_into()?,
            hosts_seen: take(ebpf, "HOSTS_SEEN")?.try_into()?,
            host_count: take(ebpf, "HOST_COUNT")?.try_into()?,
            client_errors: take(ebpf, "CLIENT_ERRORS")?.try_into()?,
            connect_errors: take(ebpf, "CONNECT_ERRORS")?.try_into()?,
            measured: MeasuredProcesses::new(
                take(ebpf, "MEASURED_PROCESSES")?,
                "MEASURED_PROCESSES",
            )?,
            serving: MeasuredProcesses::new(take(ebpf, "SERVING_PROCESSES")?, "SERVING_PROCESSES")?,
        })
    }

    /// Drains the announcements first, so that every route in the histograms read after has
    /// its text (the kernel announces a route before it counts a request under it).
    /// Requests the kernel carried on the ring buffer (`carried`) are added to the counts of
    /// their key.
    pub fn read(&mut self) -> Result<HttpSnapshot> {
        self.drain_events();
        let mut snapshot = HttpSnapshot::default();
        for entry in self.durations.iter() {
            let (key, per_cpu) = entry.context("reading HTTP_DURATION")?;
            let mut counts = DurationCounts::default();
            per_cpu
                .iter()
                .for_each(|histogram| counts.add_histogram(histogram));
            snapshot.durations.push((key, counts));
        }
        self.carried.add_to(&mut snapshot.durations);
        for entry in self.client_errors.iter() {
            let (key, per_cpu) = entry.context("reading CLIENT_ERRORS")?;
            snapshot.client_errors.push((key, per_cpu.iter().sum()));
        }
        for entry in self.connect_errors.iter() {
            let (tgid, per_cpu) = entry.context("reading CONNECT_ERRORS")?;
            snapshot.connect_errors.push((tgid, per_cpu.iter().sum()));
        }
        for (index, total) in snapshot.counters.iter_mut().enumerate() {
            let per_cpu = self
                .counters
                .get(&(index as u32), 0)
                .context("reading HTTP_COUNTERS")?;
            *total = per_cpu.iter().sum();
        }
        snapshot.counters[counter::OBSERVATIONS_LOST as usize] += self.carried.lost();
        // Handed over only now: a failed read keeps them for the next.
        snapshot.announcements = std::mem::take(&mut self.announcements);
        snapshot.unchecked_listeners = std::mem::take(&mut self.unchecked_listeners);
        Ok(snapshot)
    }

    /// Takes back the announcements of a snapshot that could not be applied, for the next
    /// read: a route's text or a listener's check is announced once.
    pub fn keep_events(&mut self, snapshot: HttpSnapshot) {
        let mut announcements = snapshot.announcements;
        announcements.append(&mut self.announcements);
        self.announcements = announcements;
        let mut listeners = snapshot.unchecked_listeners;
        listeners.append(&mut self.unchecked_listeners);
        self.unchecked_listeners = listeners;
    }

    /// Past `MAX_PENDING` (reads failing again and again), announcements are dropped: a
    /// route's counts then wait until it is announced again (`Cleanup::reannounce`).
    fn drain_events(&mut self) {
        for event in self.events.take() {
            match event {
                Event::Listener { tgid, fd } if self.unchecked_listeners.len() < MAX_PENDING => {
                    self.unchecked_listeners.push((tgid, fd))
                }
                Event::Route(announcement) if self.announcements.len() < MAX_PENDING => {
                    self.announcements.push(announcement)
                }
                Event::Observation(observation) => self.carried.add(&observation),
                _ => {}
            }
        }
    }

    /// Reads one counter: whether this process may read the maps it holds.
    pub fn readable(&self) -> bool {
        self.counters.get(&0, 0).is_ok()
    }

    /// Records the agent's verdict on a listening socket's port (`--http-ports`).
    pub fn set_listener(&mut self, tgid: u32, fd: u32, allowed: bool) {
        let verdict = if allowed {
            listener::ALLOWED
        } else {
            listener::DENIED
        };
        let _ = self.listeners.insert(connection_key(tgid, fd), verdict, 0);
    }

    pub fn duration_usage(&self, entries: usize) -> MapUsage {
        usage("HTTP_DURATION", entries, capacity(self.durations.map()))
    }

    /// Starts tracking server connections that were open before the agent started, idle
    /// until their next request. Existing entries (the kernel's own) are left alone.
    pub fn adopt_connections(&mut self, sockets: impl IntoIterator<Item = (u32, u32)>) -> usize {
        let mut adopted = 0;
        for (tgid, fd) in sockets {
            self.measured.mark(tgid);
            self.serving.mark(tgid);
            let connection = Connection::new(role::SERVER);
            const BPF_NOEXIST: u64 = 1;
            if self
                .connections
                .insert(connection_key(tgid, fd), connection, BPF_NOEXIST)
                .is_ok()
            {
                adopted += 1;
            }
        }
        adopted
    }
}

#[cfg(test)]
mod tests;
