//! Frees entries of the HTTP maps: those whose final values the model has taken, and those of
//! processes that are gone, with what an exited process's open connection is worth.

use aya::maps::IterableMap as _;
use monitor_common::{
    head::framing,
    http::{Connection, MEASURED_PROCESS_WORDS, ProcessRoute, conn_flags, phase, role},
};

use super::HttpMaps;
use crate::{
    collect::{MapUsage, capacity, usage},
    model::http::Cleanup,
};

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
    pub(super) fn count(&mut self, connection_role: u8) {
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

impl HttpMaps {
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
}
