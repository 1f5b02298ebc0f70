//! What the agent's scrapes say about a run: its cost, its counts and drops, and the
//! histograms of nginx's requests and of the load generator's.

use std::{collections::BTreeMap, path::Path};

use monitor_tests::{MonitorAgent, Scrape};

use super::{AgentCost, Before, CLIENT_DURATION, Counts, ROUTE, SERVER_DURATION};
use crate::bench::{
    agent::{Variant, counter_sum, peak_rss_bytes},
    stats::{Buckets, difference},
};

/// The load generator's service name: its executable's name.
pub(super) fn oha_client_service(path: &Path) -> String {
    path.file_name()
        .map_or("oha".to_owned(), |name| name.to_string_lossy().into_owned())
}

pub(super) fn cost(
    agent: &MonitorAgent,
    before: &Before,
    cpu_after: Option<f64>,
    after: &Scrape,
) -> AgentCost {
    let delta = |name: &str| {
        after.value(name, &[]).unwrap_or(0.0) - before.scrape.value(name, &[]).unwrap_or(0.0)
    };
    AgentCost {
        cpu_seconds: cpu_after.unwrap_or(before.cpu_seconds) - before.cpu_seconds,
        peak_rss_bytes: peak_rss_bytes(agent),
        refreshes: delta("monitor_refresh_duration_seconds_count"),
        refresh_seconds: delta("monitor_refresh_duration_seconds_sum"),
    }
}

pub(super) fn counted(
    variant: Variant,
    before: &Scrape,
    after: &Scrape,
    client: &str,
) -> Option<Counts> {
    if !variant.records() {
        return None;
    }
    let delta = |name: &str| counter_sum(after, name) - counter_sum(before, name);
    Some(Counts {
        server: server_count(after) - server_count(before),
        client: client_count(after, client) - client_count(before, client),
        drops: drops(after, before),
        unanswered: delta("monitor_http_requests_unanswered_total"),
        unmatched: delta("monitor_http_responses_unmatched_total"),
        server_buckets: server_buckets(after)
            .map(|b| difference(&b, server_buckets(before).as_ref())),
        client_buckets: client_buckets(after, client)
            .map(|b| difference(&b, client_buckets(before, client).as_ref())),
    })
}

/// What each drop counter gained, by reason; the reasons that gained nothing left out.
fn drops(after: &Scrape, before: &Scrape) -> BTreeMap<String, f64> {
    let mut drops = BTreeMap::new();
    for name in [
        "monitor_http_events_dropped_total",
        "monitor_bpf_events_dropped_total",
    ] {
        for sample in after.matching(name, &[]) {
            let reason = sample.labels.get("reason").cloned().unwrap_or_default();
            let earlier = before.value(name, &[("reason", &reason)]).unwrap_or(0.0);
            if sample.value > earlier {
                *drops.entry(reason).or_default() += sample.value - earlier;
            }
        }
    }
    drops
}

const NGINX: [(&str, &str); 3] = [
    ("service_name", "nginx"),
    ("http_route", ROUTE),
    ("http_response_status_code", "200"),
];

pub(super) fn server_buckets(scrape: &Scrape) -> Option<Buckets> {
    scrape.histogram(SERVER_DURATION, &NGINX)
}

pub(super) fn server_count(scrape: &Scrape) -> u64 {
    scrape.histogram_count(SERVER_DURATION, &NGINX).unwrap_or(0)
}

/// The load generator's client requests: one series (one server address, status 200).
pub(super) fn client_buckets(scrape: &Scrape, service: &str) -> Option<Buckets> {
    scrape.histogram(CLIENT_DURATION, &[("service_name", service)])
}

pub(super) fn client_count(scrape: &Scrape, service: &str) -> u64 {
    scrape
        .histograms(CLIENT_DURATION, &[("service_name", service)])
        .map(|buckets| buckets.last().map_or(0, |&(_, count)| count))
        .sum()
}
