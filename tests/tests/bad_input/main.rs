//! Bad input on a watched HTTP server: noise, slow clients, huge heads, other protocols, TLS,
//! half-closed and reset connections, HTTP/0.9 and invalid methods. Each arrives beside
//! well-formed requests from a normal client on the same server, whose counts must stay exact;
//! the odd input is counted under a reason in the agent's own metrics and nowhere else; the
//! agent keeps running, and no garbage reaches a label.
//!
//! The tests are grouped by the input they send in the modules below; this file holds what
//! they share: the scene of servers, agent and normal client, the agent's counters of odd
//! input, and one-shot connections.

mod connections;
mod heads;
mod noise;
mod protocols;

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{Shutdown, TcpStream},
    time::Duration,
};

use monitor_common::http::method;
use monitor_tests::{
    MonitorAgent, Scrape,
    http::{
        SERVER_DURATION, client, connect, describe_http, get, read_responses, read_to_close, send,
        server_count, service_total,
    },
    poll::try_poll,
    poll_until,
    servers::Server,
};

const WAIT: Duration = Duration::from_secs(20);
/// The normal client's route.
const GOOD: &str = "/well/formed";

/// nginx answering the normal client, the routes of this file and anything else.
const NGINX_LOCATIONS: &str = r#"
    location / { return 200 "ok\n"; }
"#;

/// The agent's counters of odd input, by the short names the tests use.
const ODD_COUNTERS: &[(&str, &str, &str)] = &[
    ("not_http/tls", "monitor_http_reads_not_http_total", "tls"),
    (
        "not_http/http2",
        "monitor_http_reads_not_http_total",
        "http2",
    ),
    (
        "not_http/binary",
        "monitor_http_reads_not_http_total",
        "binary",
    ),
    (
        "not_http/invalid_method",
        "monitor_http_reads_not_http_total",
        "invalid_method",
    ),
    ("not_http/text", "monitor_http_reads_not_http_total", "text"),
    (
        "unanswered/closed",
        "monitor_http_requests_unanswered_total",
        "closed",
    ),
    (
        "unanswered/no_status_line",
        "monitor_http_requests_unanswered_total",
        "no_status_line",
    ),
    (
        "unmatched/request_not_seen",
        "monitor_http_responses_unmatched_total",
        "request_not_seen",
    ),
    (
        "unmatched/not_http_read",
        "monitor_http_responses_unmatched_total",
        "not_http_read",
    ),
    ("aborted", "monitor_http_responses_aborted_total", ""),
];

/// Servers, an agent that measures only their ports (so its counters are this test's alone,
/// whatever else runs on the host), and a normal keep-alive client of the first server.
struct Scene {
    agent: MonitorAgent,
    servers: Vec<Server>,
    client: ureq::Agent,
    /// Well-formed requests sent so far.
    good: u64,
}

impl Scene {
    fn new(servers: Vec<Server>) -> Self {
        let ports: Vec<String> = servers.iter().map(|s| s.port.to_string()).collect();
        let agent = MonitorAgent::start(&["--http-ports", &ports.join(",")]);
        Self {
            agent,
            servers,
            client: client(),
            good: 0,
        }
    }

    fn server(&self) -> &Server {
        &self.servers[0]
    }

    fn service(&self) -> &str {
        &self.server().service
    }

    /// `n` well-formed requests from the normal client, on its keep-alive connection.
    fn well_formed(&mut self, n: u64) {
        for _ in 0..n {
            assert_eq!(get(&self.client, &self.server().url(GOOD)), 200);
        }
        self.good += n;
    }

    /// A well-formed request on a connection of its own, answered and left open.
    fn well_formed_on(&mut self, port: u16) -> TcpStream {
        let mut stream = connect(port);
        send(
            &mut stream,
            format!("GET {GOOD} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
        assert_eq!(read_responses(&mut stream, 1), [200]);
        self.good += 1;
        stream
    }

    /// Waits for `total` observations of the first server's service in all, then checks that
    /// the well-formed route has exactly its own, that every request seen was either recorded
    /// or counted as unanswered, that the odd input is counted as `odd` says and nowhere
    /// else, and that the agent is healthy. Returns the last scrape.
    fn settle(&mut self, total: u64, odd: &[(&str, u64)]) -> Scrape {
        let expected: BTreeMap<String, u64> =
            odd.iter().map(|(key, n)| ((*key).to_owned(), *n)).collect();
        let scrape = try_poll(WAIT, || {
            let scrape = self.agent.scrape();
            let settled = service_total(&scrape, self.service()) == total
                && odd_counts(&scrape) == expected
                && seen(&scrape) == recorded(&scrape) + unanswered(&scrape);
            settled.then_some(scrape)
        })
        .unwrap_or_else(|| {
            let scrape = self.agent.scrape();
            panic!(
                "expected {total} observations and odd input {expected:?}; the agent has \
                 {} observations, odd input {:?}:\n{}",
                service_total(&scrape, self.service()),
                odd_counts(&scrape),
                describe_http(&self.agent.metrics_text())
            )
        });
        assert_eq!(
            server_count(&scrape, self.service(), 200, GOOD),
            Some(self.good),
            "the well-formed requests, exactly"
        );
        assert_labels_are_clean(&scrape, self.service());
        self.agent.assert_healthy();
        scrape
    }

    /// Polls until the odd-input counter `key` reaches `n`.
    fn wait_for_odd(&self, key: &str, n: u64) {
        poll_until(&format!("{key} to reach {n}"), WAIT, || {
            let counts = odd_counts(&self.agent.scrape());
            (counts.get(key).copied().unwrap_or(0) == n).then_some(())
        });
    }

    /// Connections the kernel holds for the first server, by phase.
    fn server_connections(&self, wanted: u64) -> usize {
        self.agent
            .connections_of(self.server().pid())
            .iter()
            .filter(|entry| entry.phase == wanted)
            .count()
    }
}

fn single(scrape: &Scrape, name: &str) -> u64 {
    scrape
        .value(name, &[])
        .unwrap_or_else(|| panic!("{name} missing")) as u64
}

fn seen(scrape: &Scrape) -> u64 {
    single(scrape, "monitor_http_requests_seen_total")
}

fn recorded(scrape: &Scrape) -> u64 {
    single(scrape, "monitor_http_requests_recorded_total")
}

fn unanswered(scrape: &Scrape) -> u64 {
    scrape
        .matching("monitor_http_requests_unanswered_total", &[])
        .map(|sample| sample.value as u64)
        .sum()
}

/// The odd-input counters that are not zero.
fn odd_counts(scrape: &Scrape) -> BTreeMap<String, u64> {
    ODD_COUNTERS
        .iter()
        .filter_map(|(key, name, reason)| {
            let labels: &[(&str, &str)] = if reason.is_empty() {
                &[]
            } else {
                &[("reason", reason)]
            };
            let value = scrape
                .value(name, labels)
                .unwrap_or_else(|| panic!("{name}{{reason=\"{reason}\"}} missing"))
                as u64;
            (value > 0).then(|| ((*key).to_owned(), value))
        })
        .collect()
}

/// Every series of `service`: a method from the known set (or `_OTHER`), and a route that
/// is printable ASCII, a path or `__overflow__`.
fn assert_labels_are_clean(scrape: &Scrape, service: &str) {
    let count = format!("{SERVER_DURATION}_count");
    for sample in scrape.matching(&count, &[("service_name", service)]) {
        let method_label = &sample.labels["http_request_method"];
        assert!(
            method::NAMES.contains(&method_label.as_str()),
            "method {method_label:?}"
        );
        let route = &sample.labels["http_route"];
        assert!(
            route.bytes().all(|b| b.is_ascii_graphic())
                && (route.starts_with('/') || route == "__overflow__"),
            "route {route:?}"
        );
    }
}

/// Opens a connection, writes `bytes`, closes the writing side, and reads what the server
/// answers until it closes.
fn one_shot(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut stream = connect(port);
    stream.write_all(bytes).expect("writing");
    stream
        .shutdown(Shutdown::Write)
        .expect("shutting down the write side");
    read_to_close(&mut stream)
}
