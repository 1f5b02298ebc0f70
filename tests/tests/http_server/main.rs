//! HTTP server RED metrics, from real servers (nginx, Python, Node) and real clients.
//!
//! The tests are grouped by topic in the modules below; this file holds what they share: the
//! wait for a series' count, reading a counter, and the nginx locations most tests serve.

mod durations;
mod filters;
mod forking;
mod lifecycle;
mod load;
mod pipelining_and_splits;
mod proxies;
mod routes;
mod status;

use std::time::Duration;

use monitor_tests::{
    MonitorAgent, Scrape,
    http::{describe_http, server_count},
    poll::try_poll,
};

const WAIT: Duration = Duration::from_secs(20);

/// Polls until the series reaches `expected` observations, then returns the scrape; on a
/// timeout, the failure shows what the agent had.
fn wait_for_count(
    agent: &MonitorAgent,
    service: &str,
    status: u16,
    route: &str,
    expected: u64,
) -> Scrape {
    try_poll(WAIT, || {
        let scrape = agent.scrape();
        (server_count(&scrape, service, status, route) == Some(expected)).then_some(scrape)
    })
    .unwrap_or_else(|| {
        panic!(
            "timed out waiting for {expected} observations of {service} {status} {route}; the \
             agent has:\n{}",
            describe_http(&agent.metrics_text())
        )
    })
}

fn counter(scrape: &Scrape, name: &str) -> f64 {
    scrape
        .value(name, &[])
        .unwrap_or_else(|| panic!("{name} missing"))
}

const NGINX_LOCATIONS: &str = r#"
    location = /ok { return 200 "ok\n"; }
    location = /missing { return 404; }
    location /users/ { return 200 "user\n"; }
    location /docs/ { return 200 "doc\n"; }
"#;
