//! HTTP client RED metrics: curl, Python and Node clients against real servers, and the
//! failures a client meets (cut-off responses, no response, refused connections).
//!
//! The tests are grouped by topic in the modules below; this file holds what they share:
//! counting a client's observations, waiting for a scrape, and running a client fixture.

mod clients;
mod errors;
mod responses;

use std::process::Command;

use monitor_tests::{
    MonitorAgent, Scrape,
    http::{describe_http, wait_until},
    servers::fixture,
    workload::unique_name,
};

const CLIENT_DURATION: &str = "http_client_request_duration_seconds";

fn client_count(scrape: &Scrape, service: &str, address: &str, status: u16) -> Option<u64> {
    let status = status.to_string();
    let labels = [
        ("service_name", service),
        ("server_address", address),
        ("http_response_status_code", status.as_str()),
    ];
    scrape.histogram_count(CLIENT_DURATION, &labels)
}

/// No client error series for `service` in `scrape`; else shows the agent's HTTP series.
fn assert_no_client_errors(agent: &MonitorAgent, scrape: &Scrape, service: &str) {
    let errors = scrape
        .matching(
            "http_client_request_errors_total",
            &[("service_name", service)],
        )
        .count();
    assert_eq!(errors, 0, "{}", describe_http(&agent.metrics_text()));
}

/// Runs a client fixture under a unique script name (its service name): `interpreter` is
/// python3 or node.
fn run_client(interpreter: &str, fixture_name: &str, urls: &[String]) -> (String, Vec<u16>) {
    let dir = tempfile::tempdir().unwrap();
    let extension = fixture_name.rsplit('.').next().unwrap();
    let name = unique_name("cli");
    let script = dir.path().join(format!("{name}.{extension}"));
    std::fs::copy(fixture(fixture_name), &script).unwrap();
    let statuses = printed_statuses(Command::new(interpreter).arg(&script).args(urls));
    (name, statuses)
}

/// Runs a client that prints the status of each response, one per line; returns them.
fn printed_statuses(client: &mut Command) -> Vec<u16> {
    let output = client.output().expect("running the client");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.trim().parse().unwrap())
        .collect()
}
