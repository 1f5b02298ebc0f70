//! HTTP server RED metrics, from real servers (nginx, Python, Node) and real clients.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use monitor_tests::{
    MonitorAgent, Scrape,
    churn::{distinct_paths, word},
    http::{
        SERVER_DURATION, client, connect, describe_http, get, read_responses, send, server_count,
        service_total,
    },
    poll::try_poll,
    poll_until,
    servers::{STATIC_FILES, Server, ab, ab_with, renamed_copy},
    workload::unique_name,
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

#[test]
fn counts_under_load_equal_the_load_generator_per_status() {
    let agent = MonitorAgent::start(&[]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let ok = ab(&nginx.url("/ok"), 20_000, 16);
    let missing = ab(&nginx.url("/missing"), 2_000, 16);
    assert_eq!((ok, missing), (20_000, 2_000));
    wait_for_count(&agent, "nginx", 200, "/ok", 20_000);
    let scrape = wait_for_count(&agent, "nginx", 404, "/missing", 2_000);
    assert_eq!(
        service_total(&scrape, "nginx"),
        22_000,
        "nothing else, nothing twice"
    );
    for reason in ["histogram_full", "connections_full", "route_event_lost"] {
        let labels = [("reason", reason)];
        assert_eq!(
            scrape.value("monitor_http_events_dropped_total", &labels),
            Some(0.0)
        );
    }
}

/// A static server's small files, missing ones and large ones (sent with sendfile) under
/// load: counted exactly, each under its own route and status, nothing else.
fn static_server_counts_equal_the_load_generator(server: &Server) {
    let agent = MonitorAgent::start(&[]);
    let [(small, _), (large, _)] = STATIC_FILES;
    let done = (
        ab(&server.url(small), 10_000, 16),
        ab_with(&[], &server.url("/missing"), 1_000, 8),
        ab(&server.url(large), 200, 4),
    );
    assert_eq!(done, (10_000, 1_000, 200));
    wait_for_count(&agent, &server.service, 200, small, 10_000);
    wait_for_count(&agent, &server.service, 404, "/missing", 1_000);
    let scrape = wait_for_count(&agent, &server.service, 200, large, 200);
    assert_eq!(
        service_total(&scrape, &server.service),
        11_200,
        "nothing else, nothing twice"
    );
}

#[test]
fn apache_event_mpm_counts_equal_the_load_generator() {
    static_server_counts_equal_the_load_generator(&Server::apache());
}

#[test]
fn lighttpd_counts_equal_the_load_generator() {
    static_server_counts_equal_the_load_generator(&Server::lighttpd());
}

/// 200×7, 201×3, 204×2, 301×4, 404×5, 500×6, 503×1 on one keep-alive connection.
fn status_mix(server: &Server, agent: &MonitorAgent) {
    let mix = [
        (200u16, 7u64),
        (201, 3),
        (204, 2),
        (301, 4),
        (404, 5),
        (500, 6),
        (503, 1),
    ];
    let client = client();
    for (status, times) in mix {
        for _ in 0..times {
            assert_eq!(
                get(&client, &server.url(&format!("/status/{status}"))),
                status
            );
        }
    }
    let expected: BTreeMap<u16, u64> = mix.into_iter().collect();
    poll_until("every status counted exactly", WAIT, || {
        let scrape = agent.scrape();
        let counted: BTreeMap<u16, u64> = expected
            .keys()
            .filter_map(|&s| {
                Some((
                    s,
                    server_count(&scrape, &server.service, s, "/status/{id}")?,
                ))
            })
            .collect();
        (counted == expected).then_some(())
    });
}

#[test]
fn status_codes_are_counted_exactly_python() {
    let agent = MonitorAgent::start(&[]);
    status_mix(&Server::python(), &agent);
}

/// When the kernel cannot allocate a request's histogram at once (a burst of new keys can
/// empty its free list before it is refilled), the request is carried to the agent on the
/// ring buffer. Here every request is, as if no allocation ever succeeded: the counts per
/// status stay exact, durations land in their bucket, and under load nothing is lost.
#[test]
fn requests_whose_histogram_cannot_be_allocated_are_carried_and_counted_exactly() {
    let agent = MonitorAgent::start(&["--no-histogram-allocation", "--exclude-comm", "ab"]);
    let server = Server::python();
    status_mix(&server, &agent);
    let client = client();
    for _ in 0..3 {
        assert_eq!(get(&client, &server.url("/sleep/100")), 200);
    }
    let scrape = wait_for_count(&agent, &server.service, 200, "/sleep/{id}", 3);
    let labels = [
        ("service_name", server.service.as_str()),
        ("http_route", "/sleep/{id}"),
    ];
    let buckets = scrape.histogram(SERVER_DURATION, &labels).unwrap();
    let at = |bound: f64| buckets.iter().find(|(le, _)| *le == bound).unwrap().1;
    assert_eq!((at(0.1), at(0.25)), (0, 3), "buckets: {buckets:?}");
    let nginx = Server::nginx(NGINX_LOCATIONS);
    assert_eq!(ab(&nginx.url("/ok"), 20_000, 16), 20_000);
    let scrape = wait_for_count(&agent, "nginx", 200, "/ok", 20_000);
    let python_requests = 28 + 3;
    assert_eq!(service_total(&scrape, "nginx"), 20_000);
    assert_eq!(service_total(&scrape, &server.service), python_requests);
    // Every request recorded was carried, server side and client side (this test's own
    // requests, its scrapes included).
    let recorded = counter(&scrape, "monitor_http_requests_recorded_total");
    assert_eq!(recorded, (20_000 + python_requests) as f64);
    let client_recorded = counter(&scrape, "monitor_http_client_requests_recorded_total");
    assert!(client_recorded >= python_requests as f64);
    assert_eq!(
        counter(&scrape, "monitor_http_observations_carried_total"),
        recorded + client_recorded
    );
    let lost = [("reason", "observation_lost")];
    assert_eq!(
        scrape.value("monitor_http_events_dropped_total", &lost),
        Some(0.0)
    );
}

/// A forking server accepts each connection in the parent, forks, and serves it in the
/// child; the parent closes its copy, usually before the child reads. The child never
/// accepted, yet the request is its to count. Without following the fork, none was.
#[test]
fn a_forking_server_whose_children_serve_the_connections_is_measured() {
    const REQUESTS: usize = 100;
    let agent = MonitorAgent::start(&[]);
    // A new connection, and so a new child, per request.
    let scrape = forked_requests_counted(&agent, &Server::python_forking(), REQUESTS);
    let inherited = scrape
        .value("monitor_http_connections_inherited_total", &[])
        .unwrap();
    assert!(
        inherited >= REQUESTS as f64,
        "{inherited} connections inherited"
    );
}

/// A forked child that reads a file holding a request line before its connection: only a
/// socket is taken up. Before, the file was, and the connection (one per child) was not.
#[test]
fn a_forked_child_reading_a_file_that_holds_a_request_still_has_its_connection_measured() {
    const REQUESTS: usize = 20;
    let agent = MonitorAgent::start(&[]);
    let saved = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        saved.path(),
        b"GET /saved/request HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let server = Server::python_forking_reading(Some(saved.path()));
    let scrape = forked_requests_counted(&agent, &server, REQUESTS);
    assert_eq!(service_total(&scrape, &server.service), REQUESTS as u64);
}

/// `requests` to the forking server, a new connection (and so a new child) each, all counted.
fn forked_requests_counted(agent: &MonitorAgent, server: &Server, requests: usize) -> Scrape {
    assert_eq!(
        ab_with(&[], &server.url("/forked/7"), requests, 4),
        requests
    );
    wait_for_count(agent, &server.service, 200, "/forked/{id}", requests as u64)
}

/// Only a process that has served connections has its forked children looked at for the ones
/// they inherit. The children of a process that was only a client (a shell or supervisor that
/// made an HTTP call) are not: before, all their reads and writes paid for the connection
/// look-up (a pipe ping-pong's `sys_exit` cost 333 ns per run against 95).
#[test]
fn the_children_of_a_process_that_was_only_a_client_are_not_followed() {
    const CHILDREN: usize = 5;
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let script = format!(
        "import os, sys, time, urllib.request\n\
         urllib.request.urlopen(sys.argv[1]).read()\n\
         children = []\n\
         for _ in range({CHILDREN}):\n    pid = os.fork()\n    if pid == 0:\n        \
         time.sleep(30)\n        os._exit(0)\n    children.append(pid)\n\
         print(' '.join(map(str, children)), flush=True)\n\
         sys.stdin.read()\n\
         for pid in children:\n    os.kill(pid, 9)\n"
    );
    let mut client = Command::new("/usr/bin/python3")
        .args(["-c", &script, &server.url("/")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let children: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(children.len(), CHILDREN);
    let followed = agent.map_key_tgids("FORKED_CHILDREN", 0);
    drop(client.stdin.take());
    let _ = client.wait();
    let noted: Vec<u32> = children
        .iter()
        .copied()
        .filter(|child| followed.contains(child))
        .collect();
    assert!(
        noted.is_empty(),
        "children of a client noted at fork: {noted:?}"
    );
    // While a server's children are: a forking server's child, held by an open connection.
    let forking = Server::python_forking();
    let _held = std::net::TcpStream::connect(("127.0.0.1", forking.port)).unwrap();
    try_poll(WAIT, || {
        let children =
            fs::read_to_string(format!("/proc/{0}/task/{0}/children", forking.pid())).ok()?;
        let followed = agent.map_key_tgids("FORKED_CHILDREN", 0);
        children
            .split_whitespace()
            .filter_map(|pid| pid.parse::<u32>().ok())
            .any(|child| followed.contains(&child))
            .then_some(())
    })
    .expect("a forking server's child noted at fork");
}

#[test]
fn status_codes_are_counted_exactly_node() {
    let agent = MonitorAgent::start(&[]);
    status_mix(&Server::node(), &agent);
}

/// Go's net/http makes its syscalls itself (no libc) from whichever thread runs the
/// goroutine, and accepts and reads through its own poller.
#[test]
fn status_codes_are_counted_exactly_go() {
    let agent = MonitorAgent::start(&[]);
    status_mix(&Server::go(), &agent);
}

#[test]
fn go_server_counts_under_load_equal_the_load_generator() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::go();
    assert_eq!(ab(&server.url("/status/200"), 20_000, 16), 20_000);
    let scrape = wait_for_count(&agent, &server.service, 200, "/status/{id}", 20_000);
    assert_eq!(
        service_total(&scrape, &server.service),
        20_000,
        "nothing else, nothing twice"
    );
}

/// Node's cluster module accepts every connection in the primary and passes it to a worker
/// over a Unix socket: the workers never accept, yet their requests are theirs to count.
/// Without following the hand-over, none was (the connections were tracked in the primary,
/// which never reads them).
#[test]
fn a_node_cluster_whose_primary_passes_connections_to_workers_is_measured() {
    const REQUESTS: usize = 400;
    let agent = MonitorAgent::start(&[]);
    let server = Server::node_cluster(2);
    // A new connection per request: every one is handed over.
    let completed = ab_with(&[], &server.url("/status/201"), REQUESTS, 8);
    assert_eq!(completed, REQUESTS);
    // And keep-alive connections, handed over once, each with many requests.
    assert_eq!(ab(&server.url("/status/503"), REQUESTS, 8), REQUESTS);
    wait_for_count(
        &agent,
        &server.service,
        201,
        "/status/{id}",
        REQUESTS as u64,
    );
    let scrape = wait_for_count(
        &agent,
        &server.service,
        503,
        "/status/{id}",
        REQUESTS as u64,
    );
    let received = scrape
        .value("monitor_http_connections_received_total", &[])
        .unwrap();
    assert!(
        received >= (REQUESTS + 8) as f64,
        "{received} connections received"
    );
}

/// Load balancers (AWS NLB, HAProxy's `send-proxy`, ingress-nginx with
/// `use-proxy-protocol`) put a PROXY protocol header before a connection's first request. It
/// is skipped unread: the requests after it are counted, and the client address it carries
/// appears nowhere. Before, the header was taken for a read that was not HTTP and the whole
/// connection was dropped.
#[test]
fn requests_after_a_proxy_protocol_header_are_measured() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::nginx_proxy_protocol("location /pp/ { return 200 \"ok\\n\"; }");
    // Version 1, a text line, in one write with the first request; a second request follows.
    let mut stream = connect(server.port);
    send(
        &mut stream,
        b"PROXY TCP4 203.0.113.77 127.0.0.1 40000 80\r\nGET /pp/one HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(read_responses(&mut stream, 1), [200]);
    send(&mut stream, b"GET /pp/two HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_responses(&mut stream, 1), [200]);
    // Version 2, binary: TCP over IPv4, 12 bytes of addresses and ports.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[203, 0, 113, 78, 127, 0, 0, 1, 0x9c, 0x40, 0, 80]);
    v2.extend_from_slice(b"GET /pp/three HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut binary = connect(server.port);
    send(&mut binary, &v2);
    assert_eq!(read_responses(&mut binary, 1), [200]);
    for route in ["/pp/one", "/pp/two", "/pp/three"] {
        wait_for_count(&agent, "nginx", 200, route, 1);
    }
    let metrics = agent.metrics_text();
    assert!(
        !metrics.contains("203.0.113"),
        "a client address in /metrics"
    );
    let not_http = |reason: &str| {
        agent
            .scrape()
            .value("monitor_http_reads_not_http_total", &[("reason", reason)])
    };
    assert_eq!(not_http("text"), Some(0.0));
    assert_eq!(not_http("binary"), Some(0.0));
}

/// The last response of a keep-alive connection left open is ended by the idle sweep, which
/// runs from the clock tick: in interrupt context, creating a histogram for a new route can
/// fail while the map has room. Several such responses ending in one tick lost all but the
/// first (counted as `histogram_full`); they are now tried again at the next sweep.
#[test]
fn idle_responses_with_new_routes_ending_in_one_sweep_are_all_recorded() {
    const ROUTES: [&str; 4] = ["/idle/alpha", "/idle/beta", "/idle/gamma", "/idle/delta"];
    let agent = MonitorAgent::start(&[]);
    let server = Server::nginx("location /idle/ { return 200 \"ok\\n\"; }");
    // Open, each with one answered request, until the responses are recorded.
    let _open: Vec<_> = ROUTES
        .iter()
        .map(|route| {
            let mut stream = connect(server.port);
            send(
                &mut stream,
                format!("GET {route} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
            );
            assert_eq!(read_responses(&mut stream, 1), [200]);
            stream
        })
        .collect();
    for route in ROUTES {
        wait_for_count(&agent, "nginx", 200, route, 1);
    }
    let full = agent.scrape().value(
        "monitor_http_events_dropped_total",
        &[("reason", "histogram_full")],
    );
    assert_eq!(full, Some(0.0));
}

#[test]
fn a_100ms_handler_lands_in_the_100_to_250ms_bucket() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let client = client();
    for _ in 0..5 {
        assert_eq!(get(&client, &server.url("/sleep/100")), 200);
    }
    let scrape = wait_for_count(&agent, &server.service, 200, "/sleep/{id}", 5);
    let status = "200";
    let labels = [
        ("service_name", server.service.as_str()),
        ("http_response_status_code", status),
    ];
    let buckets = scrape.histogram(SERVER_DURATION, &labels).unwrap();
    let at = |bound: f64| buckets.iter().find(|(le, _)| *le == bound).unwrap().1;
    assert_eq!((at(0.1), at(0.25)), (0, 5), "buckets: {buckets:?}");
}

#[test]
fn millisecond_buckets_place_a_2ms_handler_median_between_2_and_4ms() {
    let bounds: Vec<String> = (1..=32)
        .map(|ms| format!("{}", ms as f64 / 1000.0))
        .collect();
    let agent = MonitorAgent::start(&["--duration-buckets", &bounds.join(",")]);
    let server = Server::node();
    let client = client();
    for _ in 0..50 {
        assert_eq!(get(&client, &server.url("/sleep/2")), 200);
    }
    let scrape = wait_for_count(&agent, &server.service, 200, "/sleep/{id}", 50);
    let labels = [("service_name", server.service.as_str())];
    let buckets = scrape.histogram(SERVER_DURATION, &labels).unwrap();
    // The bucket that holds the median, as histogram_quantile would find it.
    let (index, _) = buckets
        .iter()
        .enumerate()
        .find(|(_, (_, c))| *c >= 25)
        .unwrap();
    let upper = buckets[index].0;
    let lower = if index == 0 {
        0.0
    } else {
        buckets[index - 1].0
    };
    assert!(
        lower >= 0.002 && upper <= 0.004,
        "median in ({lower}, {upper}]: {buckets:?}"
    );
}

#[test]
fn a_large_body_to_a_slow_reader_counts_the_transfer() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let mut stream = connect(server.port);
    send(
        &mut stream,
        b"GET /bytes/20000000 HTTP/1.1\r\nHost: test\r\n\r\n",
    );
    // The reader takes 20 MB at about 8 MB/s (the pauses are the slow reader, not waiting
    // for anything): the server's last write returns only when most of it is read.
    let mut received = 0usize;
    let mut chunk = vec![0u8; 256 * 1024];
    while received < 20_000_000 {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed early");
        received += n;
        thread::sleep(Duration::from_millis(n as u64 * 1000 / 8_000_000));
    }
    drop(stream);
    let scrape = wait_for_count(&agent, &server.service, 200, "/bytes/{id}", 1);
    let labels = [("service_name", server.service.as_str())];
    let buckets = scrape.histogram(SERVER_DURATION, &labels).unwrap();
    let at = |bound: f64| buckets.iter().find(|(le, _)| *le == bound).unwrap().1;
    assert_eq!(
        at(1.0),
        0,
        "the transfer takes more than a second: {buckets:?}"
    );
    assert_eq!(at(5.0), 1, "and less than five: {buckets:?}");
}

#[test]
fn ten_pipelined_requests_in_one_write_are_ten_observations() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let statuses = [200u16, 404, 200, 500, 201, 200, 404, 503, 200, 200];
    let mut batch = Vec::new();
    for status in statuses {
        batch.extend_from_slice(
            format!("GET /status/{status} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
    }
    let mut stream = connect(server.port);
    send(&mut stream, &batch);
    assert_eq!(read_responses(&mut stream, statuses.len()), statuses);
    drop(stream);
    for (status, times) in [(200, 5), (404, 2), (500, 1), (201, 1), (503, 1)] {
        wait_for_count(&agent, &server.service, status, "/status/{id}", times);
    }
}

#[test]
fn requests_on_one_connection_each_get_their_own_route() {
    // The kernel reuses the route of the last request line when the next one on the
    // connection has the same bytes: every change of path must still be seen.
    let agent = MonitorAgent::start(&[]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let paths = [
        "/ok",
        "/ok",
        "/docs/alpha",
        "/ok",
        "/docs/alpha",
        "/docs/alpha",
        "/docs/beta",
        "/ok?page=2",
        "/missing",
        "/ok",
    ];
    let mut stream = connect(nginx.port);
    for path in paths {
        send(
            &mut stream,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
        read_responses(&mut stream, 1);
    }
    drop(stream);
    wait_for_count(&agent, "nginx", 200, "/ok", 5);
    wait_for_count(&agent, "nginx", 200, "/docs/alpha", 3);
    wait_for_count(&agent, "nginx", 200, "/docs/beta", 1);
    wait_for_count(&agent, "nginx", 404, "/missing", 1);
}

#[test]
fn the_idle_sweep_ends_waiting_responses_without_walking_the_whole_table() {
    // The last response of a keep-alive connection is ended by the idle sweep, which looks at
    // the connections whose responses started in the last timeout, not at all 65,536 slots.
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let value = |name: &str| agent.scrape().value(name, &[]);
    const FULL: &str = "monitor_http_idle_sweeps_full_total";
    const ENDED: &str = "monitor_http_responses_ended_idle_total";
    // The first sweeps walk the table: the rings start empty.
    let mut stream = connect(server.port);
    send(&mut stream, b"GET /warm-up HTTP/1.1\r\nHost: t\r\n\r\n");
    read_responses(&mut stream, 1);
    poll_until("the warm-up response to end idle", WAIT, || {
        value(ENDED).filter(|&n| n >= 1.0)
    });
    let full_before = value(FULL).expect("the full-sweep counter");
    for round in 1..=3 {
        send(&mut stream, b"GET /waits HTTP/1.1\r\nHost: t\r\n\r\n");
        read_responses(&mut stream, 1);
        poll_until("the response to end idle", WAIT, || {
            value(ENDED).filter(|&n| n >= 1.0 + f64::from(round))
        });
    }
    assert_eq!(value(FULL), Some(full_before), "a sweep walked the table");
    drop(stream);
    wait_for_count(&agent, &server.service, 200, "/waits", 3);
}

#[test]
fn a_request_line_cut_across_reads_gets_its_route() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let mut stream = connect(server.port);
    send(&mut stream, b"GET /accounts/12");
    // A slow client: the rest comes later, in a second segment (the pause is the behaviour
    // under test, not a wait for something).
    thread::sleep(Duration::from_millis(300));
    send(&mut stream, b"345/settings HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_responses(&mut stream, 1), [200]);
    drop(stream);
    wait_for_count(&agent, &server.service, 200, "/accounts/{id}/settings", 1);
}

/// Go's net/http reads one byte ahead while a handler runs, on another thread: under load that
/// byte, the next request's first, can come back before the handler's write of the response
/// has left the kernel. The next request is still measured, under its own route. Before, the
/// byte was taken for the request's body and the rest of the request for a read that is not
/// HTTP: the request was lost (seen on Debian 12's kernel under emulation, with Go's server
/// counting 19,998 of 20,000).
#[test]
fn a_request_whose_first_byte_is_read_before_the_previous_response_is_measured() {
    let agent = MonitorAgent::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("readahead");
    let program = renamed_copy(dir.path(), env!("CARGO_BIN_EXE_one-shot-server"), &name);
    let mut child = Command::new(&program)
        .arg("read-ahead")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting one-shot-server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut line = || {
        lines
            .next()
            .expect("a line")
            .expect("reading the server's output")
    };
    let port = line().trim().parse().expect("a port");
    let mut stream = connect(port);
    send(&mut stream, b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n");
    // The server has the first request alone; this byte is its read ahead.
    assert_eq!(line(), "read");
    send(&mut stream, b"G");
    assert_eq!(read_responses(&mut stream, 1), [200]);
    send(&mut stream, b"ET /second HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_responses(&mut stream, 1), [200]);
    assert!(child.wait().unwrap().success());
    wait_for_count(&agent, &name, 200, "/first", 1);
    wait_for_count(&agent, &name, 200, "/second", 1);
}

/// A request whose first bytes come alone, too few to tell a method (Go's net/http reads one
/// byte ahead of each request; slow clients send a few at a time): held until the rest comes,
/// and timed from the first. Before, the first read was counted as text and the request lost.
#[test]
fn a_request_whose_method_comes_in_pieces_is_measured_from_its_first_byte() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let mut stream = connect(server.port);
    // The pauses are the behaviour under test (separate reads), not waits for something.
    for piece in [&b"P"[..], b"OS"] {
        send(&mut stream, piece);
        thread::sleep(Duration::from_millis(300));
    }
    send(
        &mut stream,
        b"T /orders/77 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(read_responses(&mut stream, 1), [201]);
    drop(stream);
    let scrape = wait_for_count(&agent, &server.service, 201, "/orders/{id}", 1);
    let labels = [
        ("service_name", server.service.as_str()),
        ("http_request_method", "POST"),
        ("http_route", "/orders/{id}"),
    ];
    let buckets = scrape.histogram(SERVER_DURATION, &labels).expect("a POST");
    let at = |bound: f64| buckets.iter().find(|(le, _)| *le == bound).unwrap().1;
    assert_eq!(
        (at(0.5), at(2.5)),
        (0, 1),
        "from the first byte: {buckets:?}"
    );
}

/// A server that peeks at each connection's first byte (`recv` with MSG_PEEK, as servers that
/// tell TLS from clear text on one port do) reads the same bytes again: the peek is not a read.
/// Before, the peeked `G` was held as a request's beginning and joined with the real read:
/// `GGET /...`, a request of an unknown method (`_OTHER`).
#[test]
fn a_peek_at_the_first_byte_is_not_taken_for_a_read() {
    const REQUESTS: usize = 200;
    let agent = MonitorAgent::start(&[]);
    let name = unique_name("pypeek");
    let dir = tempfile::tempdir().unwrap();
    let python = renamed_copy(dir.path(), "/usr/bin/python3", &name);
    let mut command = Command::new(python);
    command
        .arg(monitor_tests::servers::fixture("http_server.py"))
        .env("PEEK_FIRST_BYTE", "1");
    let server = Server::python_with(command, monitor_tests::agent::free_port(), &name);
    // A new connection, and so a peek, per request.
    assert_eq!(ab_with(&[], &server.url("/peeked"), REQUESTS, 4), REQUESTS);
    let scrape = wait_for_count(&agent, &name, 200, "/peeked", REQUESTS as u64);
    assert_eq!(service_total(&scrape, &name), REQUESTS as u64);
    let gets = scrape.histogram_count(
        SERVER_DURATION,
        &[
            ("service_name", name.as_str()),
            ("http_request_method", "GET"),
        ],
    );
    assert_eq!(
        gets,
        Some(REQUESTS as u64),
        "{}",
        describe_http(&agent.metrics_text())
    );
}

#[test]
fn a_path_longer_than_the_kernel_keeps_is_counted_under_its_cut_route() {
    // 255 path bytes; the kernel templates 192 (`/docs`, 37 × `/page`, `/p`), sees that the
    // path goes on, drops the unfinished `p` for `/{*}` and announces the 192: the agent must
    // rebuild that cut route from them.
    let agent = MonitorAgent::start(&[]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let path = format!("/docs{}", "/page".repeat(50));
    assert_eq!(get(&client(), &nginx.url(&path)), 200);
    let route = format!("/docs{}/{{*}}", "/page".repeat(37));
    wait_for_count(&agent, "nginx", 200, &route, 1);
}

#[test]
fn ten_thousand_random_ids_make_one_route() {
    let agent = MonitorAgent::start(&[]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let client = client();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..10_000u64 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let id = match i % 3 {
            0 => format!("{}", state % 10_000_000),
            1 => format!("{:016x}", state),
            _ => format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                state as u32,
                (state >> 32) as u16,
                (state >> 48) as u16,
                state as u16,
                state & 0xffff_ffff_ffff
            ),
        };
        assert_eq!(get(&client, &nginx.url(&format!("/users/{id}"))), 200);
    }
    let scrape = wait_for_count(&agent, "nginx", 200, "/users/{id}", 10_000);
    let routes = scrape.label_values(SERVER_DURATION, &[("service_name", "nginx")], "http_route");
    assert_eq!(routes, ["/users/{id}"]);
}

#[test]
fn a_thousand_word_paths_stay_within_the_route_budget() {
    let budget = 40;
    let agent = MonitorAgent::start(&["--route-budget", &budget.to_string()]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let client = client();
    for n in 0..1000 {
        assert_eq!(get(&client, &nginx.url(&format!("/docs/{}", word(n)))), 200);
    }
    let scrape = poll_until("all 1000 requests counted", WAIT, || {
        let scrape = agent.scrape();
        (service_total(&scrape, "nginx") == 1000).then_some(scrape)
    });
    let routes = scrape.label_values(SERVER_DURATION, &[("service_name", "nginx")], "http_route");
    assert!(
        routes.len() <= budget,
        "{} routes for a budget of {budget}",
        routes.len()
    );
    // The fanned-out segment collapses into one template rather than overflowing.
    assert!(routes.contains(&"/docs/{*}".to_owned()), "{routes:?}");
    let collapsed = server_count(&scrape, "nginx", 200, "/docs/{*}").unwrap();
    assert_eq!(collapsed as usize, 1000 - (routes.len() - 1));
    let limited = scrape.value(
        "monitor_http_routes_limited_total",
        &[("outcome", "collapsed")],
    );
    assert_eq!(limited, Some(collapsed as f64));
}

/// More new routes between two refreshes than the announcement ring holds (1 MiB, some 4,800):
/// the kernel wakes the agent's reader when the ring is half full, so none is lost. The
/// agent refreshes only when scraped here, once the burst is over.
#[test]
fn a_burst_of_new_routes_larger_than_the_ring_loses_no_announcement() {
    let routes = 7_000;
    let agent = MonitorAgent::start(&[
        "--refresh-interval",
        "1h",
        // A quarter of a budget is kept for collapsed forms: all of these fit as templates.
        "--route-budget",
        &(routes * 2).to_string(),
        // One bucket: the series stay few lines each.
        "--duration-buckets",
        "1",
    ]);
    // One worker: each route is announced once.
    let nginx = Server::nginx_with_workers(1, NGINX_LOCATIONS);
    assert_eq!(
        distinct_paths(nginx.port, "docs", 0, routes, 4, 200),
        routes
    );
    let lost = |scrape: &Scrape| {
        scrape
            .value(
                "monitor_http_events_dropped_total",
                &[("reason", "route_event_lost")],
            )
            .unwrap()
    };
    // A lost announcement would hold its route's counts back in the kernel for a while.
    let scrape = poll_until(
        "every request counted, or an announcement lost",
        WAIT,
        || {
            let scrape = agent.scrape();
            (service_total(&scrape, "nginx") == routes as u64 || lost(&scrape) > 0.0)
                .then_some(scrape)
        },
    );
    assert_eq!(lost(&scrape), 0.0);
    let templates =
        scrape.label_values(SERVER_DURATION, &[("service_name", "nginx")], "http_route");
    assert_eq!(templates.len(), routes, "{:?}", &templates[..10]);
    assert!(templates.contains(&format!("/docs/{}", word(routes - 1))));
}

#[test]
fn a_killed_server_leaves_no_connection_state_behind() {
    let agent = MonitorAgent::start(&[]);
    let mut server = Server::python();
    let port = server.port;
    let entries =
        |scrape: &Scrape| scrape.value("monitor_bpf_map_entries", &[("map", "CONNECTIONS")]);
    // The map is the host's: connections of other processes count too (none on CI).
    let baseline = poll_until("a first sweep", WAIT, || entries(&agent.scrape()));
    // Requests in flight: the handler sleeps longer than the test lasts.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut stream = connect(port);
                send(&mut stream, b"GET /sleep/30000 HTTP/1.1\r\nHost: t\r\n\r\n");
                let _ = stream.read(&mut [0u8; 64]);
            })
        })
        .collect();
    poll_until("the connections to be tracked", WAIT, || {
        entries(&agent.scrape()).filter(|&n| n >= baseline + 4.0)
    });
    // Processes with tracked connections, this one (the clients) and the server among them.
    let marked =
        |scrape: &Scrape| scrape.value("monitor_bpf_map_entries", &[("map", "MEASURED_PROCESSES")]);
    let marked_with_server = marked(&agent.scrape()).expect("MEASURED_PROCESSES entries");
    server.kill();
    for client in clients {
        client.join().unwrap();
    }
    poll_until("the dead server's connections to be swept", WAIT, || {
        (entries(&agent.scrape())? <= baseline).then_some(())
    });
    poll_until("the dead server's process bit to be cleared", WAIT, || {
        (marked(&agent.scrape())? <= marked_with_server - 1.0).then_some(())
    });
    // And the agent keeps measuring.
    let other = Server::python();
    assert_eq!(get(&client(), &other.url("/after")), 200);
    wait_for_count(&agent, &other.service, 200, "/after", 1);
}

/// Runs `program` (a copy of `one-shot-server`) in `mode`, sends it one request and returns
/// its pid and what came back before it exited (nothing, or a status).
fn one_shot(program: &std::path::Path, mode: &str, path: &str) -> (u32, Vec<u16>) {
    let mut child = Command::new(program)
        .arg(mode)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting one-shot-server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("reading the port");
    let mut stream = connect(line.trim().parse().expect("a port"));
    send(
        &mut stream,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    );
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert!(child.wait().unwrap().success());
    let reply = String::from_utf8_lossy(&reply);
    let status = reply
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3)?.parse().ok());
    (child.id(), status.into_iter().collect())
}

/// A server that exits without closing its connection (killed, or ending with `exit`) leaves
/// the kernel no close to end its last response by; only the idle timeout ends it. The
/// agent's sweep of dead processes' connections must leave it that long instead of freeing
/// it unrecorded, and count what truly cannot end: a request the server never answered.
/// The agent sweeps every 10 refreshes: at 100 ms, every second, well inside the 3 s idle
/// timeout, so without the wait the answered request would be freed before it was recorded.
#[test]
fn a_server_that_exits_without_closing_has_its_last_response_recorded() {
    let agent = MonitorAgent::start(&["--refresh-interval", "100ms", "--http-idle-timeout", "3s"]);
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("exits");
    let program = renamed_copy(dir.path(), env!("CARGO_BIN_EXE_one-shot-server"), &name);
    let in_flight = |scrape: &Scrape| {
        scrape.value(
            "monitor_http_requests_in_flight_at_exit_total",
            &[("role", "server")],
        )
    };
    let before = poll_until("a first scrape", WAIT, || in_flight(&agent.scrape()));

    assert_eq!(
        one_shot(&program, "exit-after-answer", "/answered").1,
        [200]
    );
    wait_for_count(&agent, &name, 200, "/answered", 1);

    let (_, statuses) = one_shot(&program, "exit-unanswered", "/unanswered");
    assert!(statuses.is_empty(), "answered: {statuses:?}");
    poll_until("the unanswered request counted", WAIT, || {
        (in_flight(&agent.scrape())? >= before + 1.0).then_some(())
    });
    let scrape = agent.scrape();
    assert_eq!(
        service_total(&scrape, &name),
        1,
        "only the answered request is recorded"
    );
}

/// A process that has exited but whose parent has not waited for it (a zombie: common in
/// containers whose first process does not reap) keeps its /proc entry. It is gone all the
/// same: its connections are closed, and a request it never answered can no longer end.
#[test]
fn a_zombie_is_taken_for_the_exited_process_it_is() {
    let agent = MonitorAgent::start(&["--refresh-interval", "100ms"]);
    let in_flight = |scrape: &Scrape| {
        scrape.value(
            "monitor_http_requests_in_flight_at_exit_total",
            &[("role", "server")],
        )
    };
    let before = poll_until("a first scrape", WAIT, || in_flight(&agent.scrape()));
    let mut parent = KillOnDrop(
        Command::new("/usr/bin/python3")
            .arg(monitor_tests::servers::fixture("zombie_server.py"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(parent.0.stdout.take().unwrap()).lines();
    let port: u16 = lines.next().unwrap().unwrap().parse().unwrap();
    let mut stream = connect(port);
    send(&mut stream, b"GET /zombie HTTP/1.1\r\nHost: t\r\n\r\n");
    let child: u32 = lines.next().unwrap().unwrap().parse().unwrap();
    poll_until("the child to become a zombie", WAIT, || {
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        (stat.rsplit_once(") ")?.1.starts_with('Z')).then_some(())
    });
    poll_until("the zombie's unanswered request counted", WAIT, || {
        (in_flight(&agent.scrape())? >= before + 1.0).then_some(())
    });
    poll_until("the zombie's connection freed", WAIT, || {
        (!agent.map_key_tgids("CONNECTIONS", 4).contains(&child)).then_some(())
    });
}

/// Kills and reaps the child when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With `--http-ports` where the kernel cannot read a listener's port (its BTF does not show
/// the way, forced here), the kernel remembers each listening socket's verdict by (process,
/// fd) until the socket is closed; a server that exits never closes it. The agent's sweep
/// frees those of processes that are gone, or the table would fill and new servers go
/// unchecked.
#[test]
fn listening_sockets_of_exited_servers_are_forgotten() {
    const SERVERS: usize = 20;
    // Port 1 only: no server here is measured, yet each one's listener gets a verdict.
    let agent = MonitorAgent::start(&[
        "--refresh-interval",
        "100ms",
        "--http-ports",
        "1",
        "--ports-checked-by-agent",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let program = renamed_copy(
        dir.path(),
        env!("CARGO_BIN_EXE_one-shot-server"),
        &unique_name("listen"),
    );
    let servers: Vec<u32> = (0..SERVERS)
        .map(|_| {
            let (pid, statuses) = one_shot(&program, "exit-after-answer", "/");
            assert_eq!(statuses, [200]);
            pid
        })
        .collect();
    // Each server's one connection arrives before the agent has checked its listener: the
    // kernel noted the listener, unchecked.
    let skipped = |scrape: &Scrape| {
        scrape.value(
            "monitor_http_connections_skipped_total",
            &[("reason", "listener_unchecked")],
        )
    };
    poll_until("the servers' connections skipped", WAIT, || {
        (skipped(&agent.scrape())? >= SERVERS as f64).then_some(())
    });
    poll_until("the exited servers' listeners freed", WAIT, || {
        let held = agent.map_key_tgids("LISTENERS", 4);
        (!held.iter().any(|tgid| servers.contains(tgid))).then_some(())
    });
    // The table's use is reported as it is.
    poll_until("LISTENERS' entries reported", WAIT, || {
        let held = agent.map_keys("LISTENERS").len() as f64;
        let reported = agent
            .scrape()
            .value("monitor_bpf_map_entries", &[("map", "LISTENERS")])?;
        (reported == held).then_some(())
    });
}

#[test]
fn a_keep_alive_connection_opened_before_the_agent_is_measured() {
    let server = Server::python();
    let mut stream = connect(server.port);
    send(&mut stream, b"GET /before HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_responses(&mut stream, 1), [200]);
    let agent = MonitorAgent::start(&[]);
    send(&mut stream, b"GET /after/start HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_responses(&mut stream, 1), [200]);
    drop(stream);
    wait_for_count(&agent, &server.service, 200, "/after/start", 1);
}

#[test]
fn steady_traffic_on_known_routes_adds_no_ring_buffer_records() {
    // ab runs as a new process each time, and a client process announces its server address
    // once: leave the client side out, this is about the server's routes.
    let agent = MonitorAgent::start(&["--exclude-comm", "ab"]);
    // One worker: routes are announced once per process, and a second worker's first request
    // would be a (legitimate) new announcement.
    let nginx = Server::nginx_with_workers(1, NGINX_LOCATIONS);
    ab(&nginx.url("/ok"), 100, 4);
    let warm = wait_for_count(&agent, "nginx", 200, "/ok", 100);
    let events = counter(&warm, "monitor_http_route_events_total");
    assert_eq!(ab(&nginx.url("/ok"), 10_000, 16), 10_000);
    let after = wait_for_count(&agent, "nginx", 200, "/ok", 10_100);
    assert_eq!(counter(&after, "monitor_http_route_events_total"), events);
}

#[test]
fn excluded_and_own_traffic_is_not_measured() {
    let server = Server::python();
    let agent = MonitorAgent::start(&["--exclude-comm", &server.service]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let client = client();
    get(&client, &server.url("/excluded"));
    get(&client, &nginx.url("/ok"));
    for _ in 0..3 {
        agent.metrics_text();
    }
    let scrape = wait_for_count(&agent, "nginx", 200, "/ok", 1);
    assert_eq!(service_total(&scrape, &server.service), 0, "--exclude-comm");
    assert_eq!(
        service_total(&scrape, "monitor"),
        0,
        "the agent's own /metrics"
    );
}

#[test]
fn new_connections_per_request_reuse_fds_and_stay_exact() {
    let agent = MonitorAgent::start(&[]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    // No keep-alive: every request a new connection, the server's fd numbers reused.
    assert_eq!(ab_with(&[], &nginx.url("/ok"), 3_000, 8), 3_000);
    let scrape = wait_for_count(&agent, "nginx", 200, "/ok", 3_000);
    let unanswered: f64 = scrape
        .matching("monitor_http_requests_unanswered_total", &[])
        .map(|sample| sample.value)
        .sum();
    assert_eq!(unanswered, 0.0, "whatever the reason");
}

#[test]
fn a_large_file_sent_with_sendfile_counts_the_transfer() {
    let agent = MonitorAgent::start(&[]);
    let nginx = Server::nginx("    sendfile on;\n    location /files/ { }");
    std::fs::create_dir(nginx.dir().join("files")).unwrap();
    std::fs::write(nginx.dir().join("files/big.bin"), vec![b'x'; 20_000_000]).unwrap();
    let mut stream = connect(nginx.port);
    send(
        &mut stream,
        b"GET /files/big.bin HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    // A slow reader again (about 8 MB/s), now against nginx's sendfile.
    let mut received = 0usize;
    let mut chunk = vec![0u8; 256 * 1024];
    while received < 20_000_000 {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed early");
        received += n;
        thread::sleep(Duration::from_millis(n as u64 * 1000 / 8_000_000));
    }
    drop(stream);
    let scrape = wait_for_count(&agent, "nginx", 200, "/files/big.bin", 1);
    let buckets = scrape
        .histogram(SERVER_DURATION, &[("service_name", "nginx")])
        .unwrap();
    let at = |bound: f64| buckets.iter().find(|(le, _)| *le == bound).unwrap().1;
    assert_eq!(
        (at(1.0), at(5.0)),
        (0, 1),
        "the transfer took 1 to 5 s: {buckets:?}"
    );
}

#[test]
fn head_interim_100_continue_and_connection_close_are_handled() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let mut stream = connect(server.port);
    send(&mut stream, b"HEAD /status/200 HTTP/1.1\r\nHost: t\r\n\r\n");
    // HEAD: headers only, so read the head and nothing more.
    let mut head = [0u8; 512];
    let n = stream.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.0 200") || head[..n].starts_with(b"HTTP/1.1 200"));
    // A POST that waits for 100 Continue before sending its body.
    send(
        &mut stream,
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    let n = stream.read(&mut head).unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    send(&mut stream, b"hello");
    assert_eq!(read_responses(&mut stream, 1), [201]);
    // Connection: close ends the response with the connection.
    send(&mut stream, b"GET /close HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_responses(&mut stream, 1), [200]);
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();

    wait_for_count(&agent, &server.service, 201, "/upload", 1);
    let scrape = wait_for_count(&agent, &server.service, 200, "/close", 1);
    let head_labels = [
        ("service_name", server.service.as_str()),
        ("http_request_method", "HEAD"),
    ];
    assert_eq!(
        scrape.histogram_count(SERVER_DURATION, &head_labels),
        Some(1)
    );
    let post = [("http_request_method", "POST"), ("http_route", "/upload")];
    assert_eq!(
        scrape.histogram_count(SERVER_DURATION, &post),
        Some(1),
        "one, not two for 100 + 201"
    );
}

/// The usual way to run a Python (or Ruby) application: nginx in front, proxying to the
/// application server on a Unix socket. The application is measured as a server there, and
/// nginx as its client, each request once.
#[test]
fn an_application_behind_nginx_on_a_unix_socket_is_measured_at_both_ends() {
    let agent = MonitorAgent::start(&[]);
    let app = Server::python_unix();
    let nginx = Server::nginx(&format!(
        "    location / {{ proxy_pass http://unix:{}:; }}",
        app.unix_socket().display()
    ));
    let requests = 500;
    assert_eq!(ab(&nginx.url("/unix-ok"), requests, 4), requests);
    let requests = requests as u64;
    let scrape = wait_for_count(&agent, &app.service, 200, "/unix-ok", requests);
    assert_eq!(
        server_count(&scrape, "nginx", 200, "/unix-ok"),
        Some(requests)
    );
    let nginx_as_client = [
        ("service_name", "nginx"),
        ("http_response_status_code", "200"),
    ];
    assert_eq!(
        scrape.histogram_count("http_client_request_duration_seconds", &nginx_as_client),
        Some(requests),
        "{}",
        describe_http(&agent.metrics_text())
    );
}

#[test]
fn only_the_chosen_ports_are_measured() {
    let chosen = Server::python();
    let other = Server::nginx(NGINX_LOCATIONS);
    let agent = MonitorAgent::start(&["--http-ports", &chosen.port.to_string()]);
    let client = client();
    for _ in 0..3 {
        get(&client, &chosen.url("/in"));
        get(&client, &other.url("/ok"));
    }
    drop(client);
    let scrape = wait_for_count(&agent, &chosen.service, 200, "/in", 3);
    assert_eq!(service_total(&scrape, "nginx"), 0);
    let skipped = scrape.value(
        "monitor_http_connections_skipped_total",
        &[("reason", "port_filtered")],
    );
    assert!(skipped.is_some_and(|n| n >= 1.0), "{skipped:?}");
}

/// With `--http-ports`, servers started after the agent have their connections measured or
/// skipped from the first: the kernel reads the listener's port itself (the way to it from
/// the kernel's BTF). Before, the first connections of a new listener were skipped until the
/// agent had checked its port, and a client with one keep-alive connection went unmeasured.
#[test]
fn a_server_started_after_the_agent_has_its_first_connection_measured() {
    let port = monitor_tests::agent::free_port();
    let agent = MonitorAgent::start(&["--http-ports", &port.to_string()]);
    let chosen = Server::python_on(port);
    let other = Server::python();
    for server in [&chosen, &other] {
        let mut stream = connect(server.port);
        for _ in 0..3 {
            send(&mut stream, b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n");
            assert_eq!(read_responses(&mut stream, 1), [200]);
        }
    }
    let scrape = wait_for_count(&agent, &chosen.service, 200, "/first", 3);
    assert_eq!(service_total(&scrape, &other.service), 0);
    let filtered = scrape.value(
        "monitor_http_connections_skipped_total",
        &[("reason", "port_filtered")],
    );
    // The other server's start-up probe and the connection above.
    assert!(filtered.is_some_and(|n| n >= 2.0), "{filtered:?}");
}

/// Where the kernel cannot read a listener's port (its BTF does not show the way; forced
/// here), a server started after the agent is measured once the agent has checked its port.
#[test]
fn a_server_started_after_the_agent_is_measured_once_the_agent_checked_its_port() {
    let port = monitor_tests::agent::free_port();
    let agent = MonitorAgent::start(&[
        "--http-ports",
        &port.to_string(),
        "--ports-checked-by-agent",
    ]);
    let server = Server::python_on(port);
    // The first connection arrives before the agent has checked the new listener's port;
    // later ones are measured. A new connection per request, until one is counted.
    poll_until("a request on the new server to be counted", WAIT, || {
        let mut stream = connect(port);
        send(
            &mut stream,
            b"GET /late HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        let scrape = agent.scrape();
        server_count(&scrape, &server.service, 200, "/late").filter(|&n| n >= 1)
    });
    let scrape = agent.scrape();
    let unchecked = scrape.value(
        "monitor_http_connections_skipped_total",
        &[("reason", "listener_unchecked")],
    );
    assert!(unchecked.is_some_and(|n| n >= 1.0), "{unchecked:?}");
}
