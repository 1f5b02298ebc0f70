//! Reads the HTTP maps: duration histograms, the kernel's counters and route announcements;
//! frees the entries of processes that are gone.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap, IterableMap as _, MapData, PerCpuArray, PerCpuHashMap},
};
use monitor_common::{
    head::framing,
    http::{
        ClientErrorKey, Connection, DurationHistogram, DurationKey, EVENT_KIND_OFFSET, HttpEvent,
        MAX_DURATION_BOUNDS, MEASURED_PROCESS_WORDS, ObservationEvent, ProcessRoute, conn_flags,
        connection_key, counter, event_kind, listener, phase, role,
    },
};

use super::{
    MapUsage, capacity,
    http_events::{CarriedObservations, HttpEvents},
    measured_processes::MeasuredProcesses,
    take, usage,
};
use crate::model::http::Cleanup;

/// A histogram of one key summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationCounts {
    pub buckets: [u64; MAX_DURATION_BOUNDS + 1],
    pub sum_ns: u64,
}

impl Default for DurationCounts {
    fn default() -> Self {
        Self {
            buckets: [0; MAX_DURATION_BOUNDS + 1],
            sum_ns: 0,
        }
    }
}

impl DurationCounts {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    fn add_histogram(&mut self, histogram: &DurationHistogram) {
        for (total, count) in self.buckets.iter_mut().zip(histogram.buckets) {
            *total += count;
        }
        self.sum_ns += histogram.sum_ns;
    }

    pub fn add(&mut self, other: &DurationCounts) {
        for (total, count) in self.buckets.iter_mut().zip(other.buckets) {
            *total += count;
        }
        self.sum_ns += other.sum_ns;
    }
}

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

#[derive(Clone, Debug, Default)]
pub struct HttpSnapshot {
    pub durations: Vec<(DurationKey, DurationCounts)>,
    /// `monitor_common::http::counter`, summed over CPUs.
    pub counters: [u64; counter::COUNT as usize],
    pub announcements: Vec<RouteAnnouncement>,
    /// Listening sockets (tgid, fd) whose port the kernel asks the agent to check.
    pub unchecked_listeners: Vec<(u32, u32)>,
    /// Client requests without a complete response, summed over CPUs.
    pub client_errors: Vec<(ClientErrorKey, u64)>,
    /// Failed connects per process, summed over CPUs.
    pub connect_errors: Vec<(u32, u64)>,
}

/// What a sweep of the maps found.
pub struct Sweep {
    pub usage: Vec<MapUsage>,
    pub in_flight: InFlightAtExit,
}

/// Requests in progress when their process exited, which the kernel can no longer end: a
/// server's request not answered yet, a client's request without its whole response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlightAtExit {
    pub server: u64,
    pub client: u64,
}

impl InFlightAtExit {
    fn count(&mut self, connection_role: u8) {
        if connection_role == role::CLIENT {
            self.client += 1;
        } else {
            self.server += 1;
        }
    }

    pub fn add(&mut self, other: InFlightAtExit) {
        self.server += other.server;
        self.client += other.client;
    }
}

/// What the sweep does with the connection of a process that is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadConnection {
    /// Nothing in progress: freed.
    Free,
    /// A response whose end only the kernel's idle sweep can find (a server's, or a client's
    /// without a known length): it was written or read before the exit and the idle sweep
    /// records it, so the entry stays until that sweep has had its time.
    Wait,
    /// A request whose end can no longer be seen: freed and counted.
    FreeInFlight,
}

/// How long after a response's last write or read the kernel's idle sweep has surely
/// ended it: the timeout, the epoch it is listed in, and a margin for the tick.
pub fn idle_sweep_deadline_ns(idle_timeout_ns: u64) -> u64 {
    const MARGIN_NS: u64 = 2_000_000_000;
    idle_timeout_ns.saturating_mul(2).saturating_add(MARGIN_NS)
}

/// See [`DeadConnection`]; `idle_timeout_ns` 0 means the kernel's idle sweep is off.
pub fn dead_connection(
    connection: &Connection,
    now_ns: u64,
    idle_timeout_ns: u64,
) -> DeadConnection {
    match connection.phase {
        phase::IDLE => DeadConnection::Free,
        // (A client response read before its request's write returned waits for that write,
        // which a dead process cannot make: in flight.)
        phase::RESPONSE
            if connection.framing == framing::UNKNOWN
                && connection.flags & conn_flags::ANSWERED_EARLY == 0
                && idle_timeout_ns != 0
                && now_ns.saturating_sub(connection.last_io_ns)
                    < idle_sweep_deadline_ns(idle_timeout_ns) =>
        {
            DeadConnection::Wait
        }
        _ => DeadConnection::FreeInFlight,
    }
}

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

    /// Frees the entries whose final values the model has taken.
    pub fn forget(&mut self, cleanup: &Cleanup) {
        for key in &cleanup.forget {
            let _ = self.durations.remove(key);
            self.carried.forget(key);
        }
        for key in &cleanup.forget_client_errors {
            let _ = self.client_errors.remove(key);
        }
        for tgid in &cleanup.forget_connect_errors {
            let _ = self.connect_errors.remove(tgid);
        }
        for &(tgid, hash, role) in &cleanup.reannounce {
            self.reannounce(tgid, hash, role);
        }
    }

    /// Asks the kernel to announce a route or server address again (the announcement was
    /// lost): it is taken out of the process's granted set.
    fn reannounce(&mut self, tgid: u32, hash: u64, role: u8) {
        let key = ProcessRoute {
            route: hash,
            tgid,
            _reserved: 0,
        };
        let (seen, count) = if role == role::CLIENT {
            (&mut self.hosts_seen, &mut self.host_count)
        } else {
            (&mut self.routes_seen, &mut self.route_count)
        };
        if seen.remove(&key).is_ok()
            && let Ok(granted) = count.get(&tgid, 0)
        {
            let _ = count.insert(tgid, granted.saturating_sub(1), 0);
        }
    }

    /// Removes connection, listener and budget entries of processes that no longer exist (a
    /// killed process never closes its sockets). A response such a process wrote is left to
    /// the kernel's idle sweep, which records it, for as long as that sweep needs (see
    /// [`dead_connection`]); requests whose end can no longer be seen are counted in the
    /// result. `now_ns` is CLOCK_MONOTONIC, the kernel programs' clock.
    pub fn sweep(
        &mut self,
        alive: impl Fn(u32) -> bool,
        now_ns: u64,
        idle_timeout_ns: u64,
    ) -> Sweep {
        let mut in_flight = InFlightAtExit::default();
        let connections: Vec<u64> = self.connections.keys().flatten().collect();
        let mut freed = 0;
        for key in &connections {
            if alive((key >> 32) as u32) {
                continue;
            }
            // Gone since the listing (the kernel ended it): nothing to decide.
            let Ok(connection) = self.connections.get(key, 0) else {
                continue;
            };
            match dead_connection(&connection, now_ns, idle_timeout_ns) {
                DeadConnection::Wait => continue,
                DeadConnection::Free => {}
                DeadConnection::FreeInFlight => in_flight.count(connection.role),
            }
            let _ = self.connections.remove(key);
            freed += 1;
        }
        let listeners: Vec<u64> = self.listeners.keys().flatten().collect();
        let mut dead_listeners = 0;
        for key in listeners.iter().filter(|key| !alive((*key >> 32) as u32)) {
            let _ = self.listeners.remove(key);
            dead_listeners += 1;
        }
        let seen: Vec<ProcessRoute> = self.routes_seen.keys().flatten().collect();
        let mut dead_routes = 0;
        for key in &seen {
            if !alive(key.tgid) {
                let _ = self.routes_seen.remove(key);
                dead_routes += 1;
            }
        }
        let counted: Vec<u32> = self.route_count.keys().flatten().collect();
        let mut dead_counts = 0;
        for tgid in &counted {
            if !alive(*tgid) {
                let _ = self.route_count.remove(tgid);
                dead_counts += 1;
            }
        }
        let hosts: Vec<ProcessRoute> = self.hosts_seen.keys().flatten().collect();
        let mut dead_hosts = 0;
        for key in hosts.iter().filter(|key| !alive(key.tgid)) {
            let _ = self.hosts_seen.remove(key);
            dead_hosts += 1;
        }
        let host_counts: Vec<u32> = self.host_count.keys().flatten().collect();
        let mut dead_host_counts = 0;
        for tgid in host_counts.iter().filter(|tgid| !alive(**tgid)) {
            let _ = self.host_count.remove(tgid);
            dead_host_counts += 1;
        }
        let measured = self.measured.clear_gone(&alive);
        let serving = self.serving.clear_gone(&alive);
        let usage = vec![
            usage("MEASURED_PROCESSES", measured, MEASURED_PROCESS_WORDS * 64),
            usage("SERVING_PROCESSES", serving, MEASURED_PROCESS_WORDS * 64),
            usage(
                "CONNECTIONS",
                connections.len() - freed,
                capacity(self.connections.map()),
            ),
            usage(
                "LISTENERS",
                listeners.len() - dead_listeners,
                capacity(self.listeners.map()),
            ),
            usage(
                "ROUTES_SEEN",
                seen.len() - dead_routes,
                capacity(self.routes_seen.map()),
            ),
            usage(
                "ROUTE_COUNT",
                counted.len() - dead_counts,
                capacity(self.route_count.map()),
            ),
            usage(
                "HOSTS_SEEN",
                hosts.len() - dead_hosts,
                capacity(self.hosts_seen.map()),
            ),
            usage(
                "HOST_COUNT",
                host_counts.len() - dead_host_counts,
                capacity(self.host_count.map()),
            ),
        ];
        Sweep { usage, in_flight }
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
mod tests {
    use monitor_common::http::MAX_PATH_LEN;

    use super::*;
    use crate::collect::http_events::{CarriedObservations, MAX_CARRIED_KEYS};

    fn record(kind: u8, route: u64, path: &[u8], path_len: u16) -> Vec<u8> {
        let mut event = HttpEvent {
            route,
            tgid: 7,
            path_len,
            kind,
            _reserved: 0,
            path: [0; MAX_PATH_LEN],
        };
        event.path[..path.len()].copy_from_slice(path);
        // SAFETY: HttpEvent is plain integers without padding.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<HttpEvent>())
        };
        bytes.to_vec()
    }

    #[test]
    fn records_decode_to_routes_and_listeners() {
        assert_eq!(
            decode_event(&record(event_kind::TEMPLATE, 42, b"/a", 2)),
            Some(Event::Route(RouteAnnouncement {
                tgid: 7,
                route: 42,
                kind: event_kind::TEMPLATE,
                path: b"/a".to_vec(),
            }))
        );
        assert_eq!(
            decode_event(&record(event_kind::LISTENER, 5, b"", 0)),
            Some(Event::Listener { tgid: 7, fd: 5 })
        );
    }

    fn observation(route: u64, bucket: u8, duration_ns: u64) -> ObservationEvent {
        ObservationEvent {
            route,
            tgid: 7,
            status: 200,
            kind: event_kind::OBSERVATION,
            method: 1,
            role: role::SERVER,
            bucket,
            _reserved: [0; 6],
            duration_ns,
        }
    }

    #[test]
    fn observation_records_decode_by_their_kind() {
        let event = observation(42, 3, 1_500);
        // SAFETY: ObservationEvent is plain integers without padding.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw const event).cast::<u8>(),
                size_of::<ObservationEvent>(),
            )
        };
        assert_eq!(decode_event(bytes), Some(Event::Observation(event)));
        assert_eq!(decode_event(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_event(&bytes[..EVENT_KIND_OFFSET]), None);
    }

    #[test]
    fn carried_observations_add_to_the_kernels_counts_of_their_key() {
        let mut carried = CarriedObservations::default();
        carried.add(&observation(1, 0, 10));
        carried.add(&observation(1, 2, 30));
        carried.add(&observation(2, 1, 20));
        // Out of range: the last (+Inf) bucket.
        carried.add(&observation(2, u8::MAX, 40));
        let key = |route| observation(route, 0, 0).key();
        let mut in_kernel = DurationCounts::default();
        in_kernel.buckets[0] = 5;
        in_kernel.sum_ns = 100;
        let mut durations = vec![(key(1), in_kernel)];
        carried.add_to(&mut durations);
        assert_eq!(durations.len(), 2);
        let (first, counts) = durations[0];
        assert_eq!(first, key(1));
        assert_eq!(
            (counts.buckets[0], counts.buckets[2], counts.sum_ns),
            (6, 1, 140)
        );
        let (second, counts) = durations[1];
        assert_eq!(second, key(2));
        assert_eq!(counts.buckets[1], 1);
        assert_eq!(counts.buckets[MAX_DURATION_BOUNDS], 1);
        assert_eq!((counts.count(), counts.sum_ns), (2, 60));
        // Running totals: read again, the same.
        let mut again = vec![(key(1), in_kernel)];
        carried.add_to(&mut again);
        assert_eq!(again, durations);
        carried.forget(&key(2));
        let mut after = Vec::new();
        carried.add_to(&mut after);
        assert_eq!(after.len(), 1);
        assert_eq!(carried.lost(), 0);
    }

    #[test]
    fn carried_keys_are_bounded() {
        let mut carried = CarriedObservations::default();
        for route in 0..MAX_CARRIED_KEYS as u64 + 3 {
            carried.add(&observation(route, 0, 1));
        }
        // A key already held still counts.
        carried.add(&observation(0, 0, 1));
        assert_eq!(carried.lost(), 3);
        let mut durations = Vec::new();
        carried.add_to(&mut durations);
        assert_eq!(durations.len(), MAX_CARRIED_KEYS);
        assert_eq!(durations[0].1.count(), 2);
    }

    #[test]
    fn short_records_and_overlong_lengths_are_harmless() {
        let whole = record(event_kind::HOST, 1, b"x", u16::MAX);
        assert_eq!(decode_event(&whole[..whole.len() - 1]), None);
        let Some(Event::Route(announcement)) = decode_event(&whole) else {
            panic!("not a route");
        };
        assert_eq!(announcement.path.len(), MAX_PATH_LEN);
    }

    fn connection(role_: u8, phase_: u64, framing_: u16, last_io_ns: u64) -> Connection {
        Connection {
            phase: phase_,
            framing: framing_,
            last_io_ns,
            ..Connection::new(role_)
        }
    }

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_dead_process_s_idle_connection_is_freed_without_loss() {
        let idle = connection(role::SERVER, phase::IDLE, 0, 0);
        assert_eq!(
            dead_connection(&idle, 100 * SECOND, SECOND),
            DeadConnection::Free
        );
    }

    #[test]
    fn a_written_response_waits_for_the_idle_sweep_then_counts_if_it_never_ended() {
        let written = connection(role::SERVER, phase::RESPONSE, framing::UNKNOWN, 10 * SECOND);
        // 1 s timeout: the kernel's sweep ends it within two epochs; the margin is 2 s.
        for now in [10 * SECOND, 13 * SECOND, 14 * SECOND - 1] {
            assert_eq!(
                dead_connection(&written, now, SECOND),
                DeadConnection::Wait,
                "{now}"
            );
        }
        assert_eq!(
            dead_connection(&written, 14 * SECOND, SECOND),
            DeadConnection::FreeInFlight
        );
        // With the kernel's sweep off, nothing would ever end it.
        assert_eq!(
            dead_connection(&written, 10 * SECOND, 0),
            DeadConnection::FreeInFlight
        );
    }

    #[test]
    fn requests_without_an_end_the_kernel_could_still_see_are_in_flight() {
        let now = 10 * SECOND;
        for (role_, phase_, framing_) in [
            (role::SERVER, phase::REQUEST, framing::UNKNOWN),
            (role::SERVER, phase::REQUEST_LINE, framing::UNKNOWN),
            (role::CLIENT, phase::REQUEST, framing::UNKNOWN),
            // A client reading a response of known length: only its bytes could end it.
            (role::CLIENT, phase::RESPONSE, framing::LENGTH),
            (role::CLIENT, phase::RESPONSE, framing::CHUNKED),
            // A response read whole before its request's write returned.
            (role::CLIENT, phase::ANSWERED, framing::LENGTH),
        ] {
            let open = connection(role_, phase_, framing_, now);
            assert_eq!(
                dead_connection(&open, now, SECOND),
                DeadConnection::FreeInFlight,
                "{role_} {phase_} {framing_}"
            );
        }
    }

    #[test]
    fn a_client_response_read_before_its_request_was_written_is_in_flight() {
        let now = 10 * SECOND;
        let mut early = connection(role::CLIENT, phase::RESPONSE, framing::UNKNOWN, now);
        early.flags = conn_flags::ANSWERED_EARLY;
        assert_eq!(
            dead_connection(&early, now, SECOND),
            DeadConnection::FreeInFlight
        );
    }

    #[test]
    fn in_flight_counts_go_to_their_role() {
        let mut counts = InFlightAtExit::default();
        counts.count(role::SERVER);
        counts.count(role::CLIENT);
        counts.count(role::CLIENT);
        let mut total = InFlightAtExit {
            server: 1,
            client: 0,
        };
        total.add(counts);
        assert_eq!(
            total,
            InFlightAtExit {
                server: 2,
                client: 2
            }
        );
    }
}
