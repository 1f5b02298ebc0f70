//! HTTP series, server and client, built from successive kernel snapshots.
//!
//! As for CPU time, the kernel holds running totals per process and key, and the ledger adds
//! each increase to the series of the process's service, so series stay monotonic when
//! processes exit (their entries are then freed) and when several processes serve one
//! service.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::Hash,
    time::{Duration, Instant},
};

use monitor_common::http::{ClientErrorKey, DurationKey, OVERFLOW_ROUTE, counter, role};

use super::routes::{Admitted, HostBudget, RouteRegistry, ServiceRouteBudget};
use crate::collect::{
    http::{DurationCounts, HttpSnapshot},
    process::{ProcessIdentity, Service},
};

/// Label of a route or server address whose text was never learnt before its process exited.
pub const UNKNOWN_ROUTE: &str = "__unknown__";
/// `server_address` of a client request without a `Host` header.
pub const NO_HOST: &str = "unknown";

/// Duration series (server and client) kept at most: twice the kernel's `HTTP_DURATION`
/// table, so the series of a full table (16,384, live, never dropped) fit with as many again
/// of processes gone within the grace. A busy host's 200 routes per service, a few statuses
/// and methods each, for tens of services, stay below it; a service name is the user's to
/// choose (`OTEL_SERVICE_NAME`, a container per CI job), so one per short-lived process
/// would otherwise be kept for the grace period. Beyond, the least recently updated go
/// first (see `super::evict_least_recent`).
pub const DURATION_SERIES_MAX: usize = 32_768;
/// Client error series kept at most: four times the kernel's `CLIENT_ERRORS` table (live
/// keys), for a handful of failing addresses per service; the rest as above.
pub const CLIENT_ERROR_SERIES_MAX: usize = 16_384;
/// Connect error series (one per service) kept at most: as many as run-queue histograms
/// (`processes::RUNQ_SERVICES_MAX`) and the kernel's `CONNECT_ERRORS` table.
pub const CONNECT_ERROR_SERIES_MAX: usize = 4096;

/// Series dropped before their grace period ended by the bounds above, by family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub server: u64,
    pub client: u64,
    pub client_errors: u64,
    pub connect_errors: u64,
}

/// Labels of one duration series.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    /// `role::SERVER` or `role::CLIENT`.
    pub role: u8,
    pub service: Service,
    pub method: u8,
    pub status: u16,
    /// `http_route` (server) or `server_address` (client).
    pub target: String,
}

/// Labels of one client error series.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientErrorSeries {
    pub service: Service,
    pub server_address: String,
    pub method: u8,
    /// `client_error::*`.
    pub kind: u8,
}

struct Series<T> {
    value: T,
    updated: Instant,
}

/// What the ledger needs to know about processes.
pub trait HttpFacts {
    fn is_alive(&self, tgid: u32) -> bool;
    fn identity(&self, tgid: u32) -> ProcessIdentity;
}

/// What the caller should do to the kernel maps after `apply`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Entries of exited processes, read for the last time.
    pub forget: Vec<DurationKey>,
    pub forget_client_errors: Vec<ClientErrorKey>,
    pub forget_connect_errors: Vec<u32>,
    /// Routes or server addresses whose text is still unknown after a while: their
    /// announcement was lost.
    pub reannounce: Vec<(u32, u64, u8)>,
}

pub struct HttpLedger {
    grace: Duration,
    texts: RouteRegistry,
    routes: ServiceRouteBudget,
    hosts: HostBudget,
    last: HashMap<DurationKey, DurationCounts>,
    last_errors: HashMap<ClientErrorKey, u64>,
    last_connect_errors: HashMap<u32, u64>,
    /// Refreshes each key has been waiting for its target's text.
    waiting: HashMap<DurationKey, u32>,
    /// Processes found gone, and when they were first: their entries are read again until
    /// `final_read_after` has passed, then freed (see `apply`).
    gone: HashMap<u32, Instant>,
    /// How long after a process is found gone the kernel may still record for it.
    final_read_after: Duration,
    series: BTreeMap<SeriesKey, Series<DurationCounts>>,
    client_errors: BTreeMap<ClientErrorSeries, Series<u64>>,
    connect_errors: BTreeMap<Service, Series<u64>>,
    pub kernel_counters: [u64; counter::COUNT as usize],
    /// Observations moved to `__overflow__` by a per-service budget.
    pub overflowed: u64,
    /// Observations moved to a collapsed route by the per-service budget.
    pub collapsed: u64,
    pub evicted: Evicted,
}

/// Refreshes a key may wait for its target's text before it is announced again.
const REANNOUNCE_AFTER: u32 = 5;

impl HttpLedger {
    pub fn new(grace: Duration, route_budget: usize, host_budget: usize) -> Self {
        Self {
            grace,
            texts: RouteRegistry::default(),
            routes: ServiceRouteBudget::new(route_budget),
            hosts: HostBudget::new(host_budget),
            last: HashMap::new(),
            last_errors: HashMap::new(),
            last_connect_errors: HashMap::new(),
            waiting: HashMap::new(),
            gone: HashMap::new(),
            final_read_after: Duration::ZERO,
            series: BTreeMap::new(),
            client_errors: BTreeMap::new(),
            connect_errors: BTreeMap::new(),
            kernel_counters: [0; counter::COUNT as usize],
            overflowed: 0,
            collapsed: 0,
            evicted: Evicted::default(),
        }
    }

    /// Keeps reading the entries of a process found gone for `after` before freeing them:
    /// the kernel's idle sweep ends the response an exited process left waiting (its
    /// sockets close without a syscall) up to about twice the idle timeout later, and an
    /// entry freed between that recording and its read would lose it.
    pub fn with_final_read_after(mut self, after: Duration) -> Self {
        self.final_read_after = after;
        self
    }

    pub fn apply(
        &mut self,
        snapshot: &HttpSnapshot,
        facts: &dyn HttpFacts,
        now: Instant,
    ) -> Cleanup {
        for announcement in &snapshot.announcements {
            self.texts.learn(announcement, now);
        }
        self.kernel_counters = snapshot.counters;
        let mut cleanup = Cleanup::default();
        // A process is found gone after its entries were read: it may have recorded more
        // between the read and its exit, and the kernel's idle sweep may still end a
        // response it left (`with_final_read_after`). Its entries are freed only at a later
        // refresh, once read again after that time, so that nothing recorded for it is
        // freed unread. `alive` below is whether the entries may still grow; a process gone
        // has its text shown as `__unknown__` when it never learnt it.
        let mut gone_now = HashMap::new();
        let mut processes: HashMap<u32, (ProcessIdentity, bool, bool)> = HashMap::new();
        let gone_before = std::mem::take(&mut self.gone);
        let final_read_after = self.final_read_after;
        let mut process = |tgid: u32| {
            processes
                .entry(tgid)
                .or_insert_with(|| {
                    let running = facts.is_alive(tgid);
                    let mut final_read = false;
                    if !running {
                        let since = gone_before.get(&tgid).copied();
                        gone_now.insert(tgid, since.unwrap_or(now));
                        final_read = since.is_some_and(|since| {
                            now.saturating_duration_since(since) >= final_read_after
                        });
                    }
                    (facts.identity(tgid), !final_read, running)
                })
                .clone()
        };
        // Busiest first: when a budget fills within one refresh (the kernel's table is read
        // once a second), the routes with the most requests keep series of their own.
        let mut busiest_first: Vec<&(DurationKey, DurationCounts)> =
            snapshot.durations.iter().collect();
        busiest_first.sort_by_key(|(_, counts)| std::cmp::Reverse(counts.count()));
        for (key, counts) in busiest_first {
            let (identity, alive, running) = process(key.tgid);
            let Some(text) = self.text_of(key.role, key.route, running, now) else {
                // Not consumed: the counts wait in the kernel until the text is known.
                let waited = self.waiting.entry(*key).or_insert(0);
                *waited += 1;
                // Again every so often: a re-announcement can be lost too.
                if waited.is_multiple_of(REANNOUNCE_AFTER) {
                    cleanup.reannounce.push((key.tgid, key.route, key.role));
                }
                continue;
            };
            self.waiting.remove(key);
            let increase = increase(counts, self.last.get(key));
            let target = self.admit(key.role, &identity.service.name, &text, increase.count());
            let series_key = SeriesKey {
                role: key.role,
                service: identity.service.clone(),
                method: key.method,
                status: key.status,
                target,
            };
            let series = self.series.entry(series_key).or_insert_with(|| Series {
                value: DurationCounts::default(),
                updated: now,
            });
            series.value.add(&increase);
            series.updated = now;
            if alive {
                self.last.insert(*key, *counts);
            } else {
                self.last.remove(key);
                cleanup.forget.push(*key);
            }
        }
        for (key, total) in &snapshot.client_errors {
            let (identity, alive, running) = process(key.tgid);
            // As for durations: the counts wait in the kernel until the address is known.
            let Some(server_address) = self.text_of(role::CLIENT, key.host, running, now) else {
                continue;
            };
            let series = ClientErrorSeries {
                service: identity.service.clone(),
                server_address: self.hosts.admit(&identity.service.name, &server_address),
                method: key.method,
                kind: key.kind,
            };
            add_count(
                &mut self.client_errors,
                series,
                *total,
                self.last_errors.get(key),
                now,
            );
            forget_or_keep(
                &mut self.last_errors,
                *key,
                *total,
                alive,
                &mut cleanup.forget_client_errors,
            );
        }
        for &(tgid, total) in &snapshot.connect_errors {
            let (identity, alive, _) = process(tgid);
            let last = self.last_connect_errors.get(&tgid);
            add_count(
                &mut self.connect_errors,
                identity.service.clone(),
                total,
                last,
                now,
            );
            forget_or_keep(
                &mut self.last_connect_errors,
                tgid,
                total,
                alive,
                &mut cleanup.forget_connect_errors,
            );
        }
        self.gone = gone_now;
        self.expire(now);
        self.texts.forget_unused(now);
        cleanup
    }

    /// The text of a route or server address hash; for a live process, `None` while it is
    /// unknown (the counts wait); for an exited one, `__unknown__`.
    fn text_of(&mut self, role: u8, hash: u64, alive: bool, now: Instant) -> Option<String> {
        if role == role::CLIENT && hash == 0 {
            return Some(NO_HOST.to_owned());
        }
        match self.texts.text(hash, now) {
            Some(text) => Some(text.to_owned()),
            None if alive => None,
            None => Some(UNKNOWN_ROUTE.to_owned()),
        }
    }

    /// The label under the service's budget, counting what the budget moved.
    fn admit(&mut self, role: u8, service: &str, text: &str, observations: u64) -> String {
        if role == role::CLIENT {
            let admitted = self.hosts.admit(service, text);
            if admitted == OVERFLOW_ROUTE && text != OVERFLOW_ROUTE {
                self.overflowed += observations;
            }
            return admitted;
        }
        let admitted = self.routes.admit(service, text);
        match &admitted {
            Admitted::Collapsed(_) => self.collapsed += observations,
            Admitted::Overflow if text != OVERFLOW_ROUTE => self.overflowed += observations,
            _ => {}
        }
        admitted.label().to_owned()
    }

    fn expire(&mut self, now: Instant) {
        let grace = self.grace;
        // At most: with a grace of zero, series updated by this refresh stay.
        let fresh = |updated: Instant| now.saturating_duration_since(updated) <= grace;
        self.series.retain(|_, series| fresh(series.updated));
        self.client_errors.retain(|_, series| fresh(series.updated));
        self.connect_errors
            .retain(|_, series| fresh(series.updated));
        // Before the budgets below: a service whose series all went loses its budget too.
        // Series a process still has in the kernel were updated at `now` and stay.
        let evicted = &mut self.evicted;
        super::evict_least_recent(
            &mut self.series,
            DURATION_SERIES_MAX,
            now,
            |series| series.updated,
            |key| match key.role {
                role::CLIENT => evicted.client += 1,
                _ => evicted.server += 1,
            },
        );
        super::evict_least_recent(
            &mut self.client_errors,
            CLIENT_ERROR_SERIES_MAX,
            now,
            |series| series.updated,
            |_| evicted.client_errors += 1,
        );
        super::evict_least_recent(
            &mut self.connect_errors,
            CONNECT_ERROR_SERIES_MAX,
            now,
            |series| series.updated,
            |_| evicted.connect_errors += 1,
        );
        // One pass over the series, not one per service: a refresh stays linear in series.
        let mut with_series: HashSet<(u8, &str)> = HashSet::new();
        for key in self.series.keys() {
            with_series.insert((key.role, key.service.name.as_str()));
        }
        // Client errors are labelled under the same server-address budget: a service whose
        // requests all fail keeps its budget too.
        for key in self.client_errors.keys() {
            with_series.insert((role::CLIENT, key.service.name.as_str()));
        }
        self.routes
            .retain(|service| with_series.contains(&(role::SERVER, service)));
        self.hosts
            .retain(|service| with_series.contains(&(role::CLIENT, service)));
    }

    pub fn series(&self) -> impl Iterator<Item = (&SeriesKey, &DurationCounts)> {
        self.series.iter().map(|(key, series)| (key, &series.value))
    }

    pub fn client_errors(&self) -> impl Iterator<Item = (&ClientErrorSeries, u64)> {
        self.client_errors
            .iter()
            .map(|(key, series)| (key, series.value))
    }

    pub fn connect_errors(&self) -> impl Iterator<Item = (&Service, u64)> {
        self.connect_errors
            .iter()
            .map(|(key, series)| (key, series.value))
    }

    pub fn route_text_mismatches(&self) -> u64 {
        self.texts.mismatches
    }
}

/// Adds what a kernel counter gained since `last` to the series `key`.
fn add_count<K: Ord>(
    series: &mut BTreeMap<K, Series<u64>>,
    key: K,
    total: u64,
    last: Option<&u64>,
    now: Instant,
) {
    let gained = match last {
        Some(&last) if total >= last => total - last,
        _ => total,
    };
    let entry = series.entry(key).or_insert(Series {
        value: 0,
        updated: now,
    });
    entry.value += gained;
    entry.updated = now;
}

/// Remembers a live process's total; schedules an exited one's entry to be freed.
fn forget_or_keep<K: Eq + Hash + Copy>(
    last: &mut HashMap<K, u64>,
    key: K,
    total: u64,
    alive: bool,
    forget: &mut Vec<K>,
) {
    if alive {
        last.insert(key, total);
    } else {
        last.remove(&key);
        forget.push(key);
    }
}

/// What was added since `last`; a total below it means the entry was recreated.
fn increase(now: &DurationCounts, last: Option<&DurationCounts>) -> DurationCounts {
    let Some(last) = last else {
        return *now;
    };
    if now.count() < last.count() {
        return *now;
    }
    let mut increase = DurationCounts {
        sum_ns: now.sum_ns.saturating_sub(last.sum_ns),
        ..DurationCounts::default()
    };
    for ((out, now), last) in increase
        .buckets
        .iter_mut()
        .zip(now.buckets)
        .zip(last.buckets)
    {
        *out = now.saturating_sub(last);
    }
    increase
}

#[cfg(test)]
mod tests;
