//! `http_server_request_duration_seconds` series, built from successive kernel snapshots.
//!
//! As for CPU time, the kernel holds running totals per (process, method, status, route) and
//! the ledger adds each increase to the series of the process's service, so series stay
//! monotonic when processes exit (their entries are then freed) and when several processes
//! serve one service.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use monitor_common::http::{DurationKey, OVERFLOW_ROUTE, counter};

use super::routes::{Admitted, RouteRegistry, ServiceRouteBudget};
use crate::collect::{
    http::{DurationCounts, HttpSnapshot},
    process::ProcessIdentity,
};

/// Label of a route whose text was never learnt before its process exited.
pub const UNKNOWN_ROUTE: &str = "__unknown__";

/// Labels of one series.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub service: String,
    pub method: u8,
    pub status: u16,
    pub route: String,
}

struct Series {
    counts: DurationCounts,
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
    /// Routes whose text is still unknown after a while: their announcement was lost.
    pub reannounce: Vec<(u32, u64)>,
}

pub struct HttpLedger {
    grace: Duration,
    routes: RouteRegistry,
    budget: ServiceRouteBudget,
    last: HashMap<DurationKey, DurationCounts>,
    /// Since when each key's route has been waiting for its text.
    waiting: HashMap<DurationKey, u32>,
    series: BTreeMap<SeriesKey, Series>,
    pub kernel_counters: [u64; counter::COUNT as usize],
    /// Observations moved to `__overflow__` by the per-service budget.
    pub overflowed: u64,
    /// Observations moved to a collapsed route by the per-service budget.
    pub collapsed: u64,
}

/// Refreshes a key may wait for its route's text before the route is announced again.
const REANNOUNCE_AFTER: u32 = 5;

impl HttpLedger {
    pub fn new(grace: Duration, route_budget: usize) -> Self {
        Self {
            grace,
            routes: RouteRegistry::default(),
            budget: ServiceRouteBudget::new(route_budget),
            last: HashMap::new(),
            waiting: HashMap::new(),
            series: BTreeMap::new(),
            kernel_counters: [0; counter::COUNT as usize],
            overflowed: 0,
            collapsed: 0,
        }
    }

    pub fn apply(
        &mut self,
        snapshot: &HttpSnapshot,
        facts: &dyn HttpFacts,
        now: Instant,
    ) -> Cleanup {
        for announcement in &snapshot.announcements {
            self.routes.learn(announcement);
        }
        self.kernel_counters = snapshot.counters;
        let mut cleanup = Cleanup::default();
        let mut identities: HashMap<u32, (ProcessIdentity, bool)> = HashMap::new();
        for (key, counts) in &snapshot.durations {
            let (identity, alive) = identities
                .entry(key.tgid)
                .or_insert_with(|| (facts.identity(key.tgid), facts.is_alive(key.tgid)));
            let route = match self.routes.text(key.route) {
                Some(text) => text.to_owned(),
                None if *alive => {
                    // Not consumed: the counts wait in the kernel until the text is known.
                    let waited = self.waiting.entry(*key).or_insert(0);
                    *waited += 1;
                    if *waited == REANNOUNCE_AFTER {
                        cleanup.reannounce.push((key.tgid, key.route));
                    }
                    continue;
                }
                None => UNKNOWN_ROUTE.to_owned(),
            };
            self.waiting.remove(key);
            let admitted = self.budget.admit(&identity.service, &route);
            let increase = increase(counts, self.last.get(key));
            match &admitted {
                Admitted::Collapsed(_) => self.collapsed += increase.count(),
                Admitted::Overflow if route != OVERFLOW_ROUTE => {
                    self.overflowed += increase.count()
                }
                _ => {}
            }
            let series_key = SeriesKey {
                service: identity.service.clone(),
                method: key.method,
                status: key.status,
                route: admitted.label().to_owned(),
            };
            let series = self.series.entry(series_key).or_insert_with(|| Series {
                counts: DurationCounts::default(),
                updated: now,
            });
            for (total, added) in series.counts.buckets.iter_mut().zip(increase.buckets) {
                *total += added;
            }
            series.counts.sum_ns += increase.sum_ns;
            series.updated = now;
            if *alive {
                self.last.insert(*key, *counts);
            } else {
                self.last.remove(key);
                cleanup.forget.push(*key);
            }
        }
        let grace = self.grace;
        self.series
            .retain(|_, series| now.saturating_duration_since(series.updated) < grace);
        let series = &self.series;
        self.budget
            .retain(|service| series.keys().any(|key| key.service == service));
        cleanup
    }

    pub fn series(&self) -> impl Iterator<Item = (&SeriesKey, &DurationCounts)> {
        self.series
            .iter()
            .map(|(key, series)| (key, &series.counts))
    }

    pub fn route_text_mismatches(&self) -> u64 {
        self.routes.mismatches
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
