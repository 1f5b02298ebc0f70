//! HTTPS through libraries that read and write through memory BIOs: the caller moves the
//! ciphertext over the socket itself, so no syscall inside `SSL_read`/`SSL_write` tells the
//! agent which socket a call is for. Python's asyncio (libssl) and Node (whose executable
//! carries OpenSSL, no libssl mapped), as servers and as clients, with keep-alive and with a
//! connection per request (whose first request is all there is). Certificates are made with
//! rcgen.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use monitor_tests::{
    MonitorAgent, Scrape,
    agent::require_root,
    http::{client_total, describe_http, server_count, wait_until},
    https,
    servers::{Server, ab_program, fixture, renamed_copy},
    workload::unique_name,
};

const SERVER_DURATION: &str = "http_server_request_duration_seconds";
const CLIENT_DURATION: &str = "http_client_request_duration_seconds";

/// Runs a client `program` with `args` to the end and checks that it got `count` answers of
/// `status`.
fn run_client(program: &Path, args: &[&str], count: usize, status: u16) {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let statuses = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        statuses
            .lines()
            .filter(|line| *line == status.to_string())
            .count(),
        count,
        "{statuses}"
    );
}

/// The (0.1, 0.25] bucket's share of a histogram: the count at 0.1 and at 0.25.
fn at_100_and_250_ms(buckets: &[(f64, u64)]) -> (u64, u64) {
    let at = |bound: f64| buckets.iter().find(|&&(le, _)| le == bound).unwrap().1;
    (at(0.1), at(0.25))
}

/// Plain text the kernel skipped for want of its socket.
fn skipped(scrape: &Scrape) -> Option<f64> {
    scrape.value("monitor_http_tls_calls_skipped_total", &[])
}

/// ApacheBench (a copy in `dir`) against `url`: `requests` over 8 connections, with keep-alive
/// or a new connection (and handshake) per request. Returns the requests completed.
fn ab(dir: &Path, url: &str, requests: usize, keep_alive: bool) -> usize {
    let program = dir.join("ab");
    if !program.exists() {
        renamed_copy(dir, "/usr/bin/ab", "ab");
    }
    let extra: &[&str] = if keep_alive { &["-k"] } else { &[] };
    ab_program(&program, extra, url, requests, 8)
}

/// `count` requests for `path` on one keep-alive HTTPS connection (Python's http.client).
fn keep_alive_requests(dir: &Path, server: &Server, path: &str, count: usize) {
    let host = format!("memory.test:{}", server.port);
    https::keep_alive_https_requests(dir, "pyk", server.port, (&host, path), count);
}

#[test]
fn asyncio_https_servers_and_clients_are_counted_exactly_from_each_connections_first_request() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let pem = https::certificate(dir.path());
    let agent = MonitorAgent::start(&[]);
    let server = https::asyncio_https_server(dir.path(), &pem, "pyaio");
    let name = server.service.clone();
    let base = format!("https://127.0.0.1:{}", server.port);

    // ApacheBench (OpenSSL on the socket) over keep-alive connections, then a connection (and
    // a library object) per request, whose first request is all there is.
    const KEPT_ALIVE: usize = 3000;
    const ONE_EACH: usize = 200;
    assert_eq!(
        ab(dir.path(), &format!("{base}/status/200"), KEPT_ALIVE, true),
        KEPT_ALIVE
    );
    assert_eq!(
        ab(dir.path(), &format!("{base}/status/503"), ONE_EACH, false),
        ONE_EACH
    );
    // asyncio's client, both ways, and 100 ms handlers.
    let client = unique_name("pyaioc");
    let python = renamed_copy(dir.path(), "/usr/bin/python3", &client);
    let script = fixture("asyncio_https_client.py");
    let script = script.to_str().unwrap();
    let port = server.port.to_string();
    const CLIENT_EACH: usize = 100;
    let each = CLIENT_EACH.to_string();
    run_client(
        &python,
        &[script, &port, "/status/201", &each],
        CLIENT_EACH,
        201,
    );
    run_client(
        &python,
        &[script, &port, "/status/404", &each, "fresh"],
        CLIENT_EACH,
        404,
    );
    run_client(&python, &[script, &port, "/sleep/100", "3"], 3, 200);

    let scrape = wait_until(&agent, "every request to and from asyncio", |s| {
        server_count(s, &name, 200, "/status/{id}") == Some(KEPT_ALIVE as u64)
            && server_count(s, &name, 503, "/status/{id}") == Some(ONE_EACH as u64)
            && server_count(s, &name, 201, "/status/{id}") == Some(CLIENT_EACH as u64)
            && server_count(s, &name, 404, "/status/{id}") == Some(CLIENT_EACH as u64)
            && server_count(s, &name, 200, "/sleep/{id}") == Some(3)
            && client_total(s, &client, 201) == CLIENT_EACH as u64
            && client_total(s, &client, 404) == CLIENT_EACH as u64
            && client_total(s, &client, 200) == 3
    });
    assert_eq!(
        skipped(&scrape),
        Some(0.0),
        "{}",
        describe_http(&agent.metrics_text())
    );
    // Timed from plain text to plain text: the 100 ms handlers land in (0.1, 0.25] at both
    // ends.
    let server_sleeps = scrape
        .histogram(
            SERVER_DURATION,
            &[("service_name", &name), ("http_route", "/sleep/{id}")],
        )
        .unwrap();
    assert_eq!(
        at_100_and_250_ms(&server_sleeps),
        (0, 3),
        "{server_sleeps:?}"
    );
    let client_sleeps = scrape
        .histogram(
            CLIENT_DURATION,
            &[
                ("service_name", &client),
                ("http_response_status_code", "200"),
            ],
        )
        .unwrap();
    assert_eq!(
        at_100_and_250_ms(&client_sleeps),
        (0, 3),
        "{client_sleeps:?}"
    );
}

/// Node's executable carries OpenSSL and exports its functions: found by the scan of the
/// processes started since start-up (a copy of node under another name, so by its symbols, not
/// its name), and its HTTPS, served and asked for, counted exactly from then on.
#[test]
fn node_https_servers_and_clients_started_after_the_agent_are_probed_and_counted_exactly() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let pem = https::certificate(dir.path());
    let agent = MonitorAgent::start(&["--tls-scan-interval", "1s", "--log-level", "info"]);
    let probed = |s: &Scrape| s.value("monitor_tls_libraries_probed", &[]).unwrap_or(0.0);
    let at_start = probed(&agent.scrape());
    let server = https::node_https_server(dir.path(), &pem, "nodetls");
    let name = server.service.clone();
    wait_until(&agent, "the node executable probed", |s| {
        probed(s) == at_start + 1.0
    });
    assert!(
        agent
            .log()
            .contains(&format!("{name} is measured from now on")),
        "{}",
        agent.log()
    );

    const ONE_EACH: usize = 500;
    const KEPT_ALIVE: usize = 300;
    let url = format!("https://127.0.0.1:{}/status/201", server.port);
    assert_eq!(ab(dir.path(), &url, ONE_EACH, false), ONE_EACH);
    keep_alive_requests(dir.path(), &server, "/status/404", KEPT_ALIVE);
    // Node as a client too: another name for the same executable file, so probed already.
    let client = unique_name("nodecli");
    let node = node_link(dir.path(), &name, &client);
    let script = fixture("https_client.js");
    let script = script.to_str().unwrap();
    const CLIENT_EACH: usize = 100;
    let each = CLIENT_EACH.to_string();
    let url = format!("https://127.0.0.1:{}/status/202", server.port);
    run_client(&node, &[script, &url, &each], CLIENT_EACH, 202);
    let url = format!("https://127.0.0.1:{}/status/500", server.port);
    run_client(&node, &[script, &url, &each, "fresh"], CLIENT_EACH, 500);

    let scrape = wait_until(&agent, "every request to and from Node", |s| {
        server_count(s, &name, 201, "/status/{id}") == Some(ONE_EACH as u64)
            && server_count(s, &name, 404, "/status/{id}") == Some(KEPT_ALIVE as u64)
            && server_count(s, &name, 202, "/status/{id}") == Some(CLIENT_EACH as u64)
            && server_count(s, &name, 500, "/status/{id}") == Some(CLIENT_EACH as u64)
            && client_total(s, &client, 202) == CLIENT_EACH as u64
            && client_total(s, &client, 500) == CLIENT_EACH as u64
    });
    assert_eq!(
        skipped(&scrape),
        Some(0.0),
        "{}",
        describe_http(&agent.metrics_text())
    );
}

/// A hard link named `link` to the node copy named `copy` in `dir`: the same file (and
/// probes), under another process name.
fn node_link(dir: &Path, copy: &str, link: &str) -> PathBuf {
    let path = dir.join(link);
    fs::hard_link(dir.join(copy), &path).unwrap();
    path
}

/// A memory-BIO client that writes to other descriptors between the library's write of a
/// request and the send of its ciphertext (tests/fixtures/cet_tls/client.c wakes event loops
/// there: through an eventfd, as Node did from a callback in a run that lost a request, and
/// through a Unix socket pair, as Python's asyncio does) is followed on its TCP socket: each
/// response, ended by the server's close, is counted at both ends. Taken for the request's
/// socket, either descriptor would hold every request, which no close of a socket would end.
#[test]
fn a_memory_bio_client_waking_its_event_loop_before_it_sends_is_counted_exactly() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let scrambled = ("STAND_IN_SCRAMBLE", "1");
    let (server, _) =
        https::stand_in_tls_server(dir.path(), "closing", &[scrambled, ("STAND_IN_CLOSE", "1")]);
    let client = https::stand_in_tls_client(dir.path(), "membio");
    let agent = MonitorAgent::start(&[]);

    const REQUESTS: usize = 200;
    let output = Command::new(&client)
        .args([server.port.to_string(), REQUESTS.to_string()])
        .env(scrambled.0, scrambled.1)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let answered = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| *line == "HTTP/1.1 200 OK")
        .count();
    assert_eq!(answered, REQUESTS);
    let name = client.file_name().unwrap().to_str().unwrap();
    wait_until(&agent, "every request of the memory-BIO client", |s| {
        client_total(s, name, 200) == REQUESTS as u64
            && server_count(s, &server.service, 200, "/standin/{id}") == Some(REQUESTS as u64)
    });
}
