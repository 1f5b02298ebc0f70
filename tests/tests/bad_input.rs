//! Bad input on a watched HTTP server: noise, slow clients, huge heads, other protocols, TLS,
//! half-closed and reset connections, HTTP/0.9 and invalid methods. Each arrives beside
//! well-formed requests from a normal client on the same server, whose counts must stay exact;
//! the odd input is counted under a reason in the agent's own metrics and nowhere else; the
//! agent keeps running, and no garbage reaches a label.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{Shutdown, TcpStream},
    process::Command,
    thread,
    time::Duration,
};

use monitor_common::http::{method, phase};
use monitor_tests::{
    MonitorAgent, Scrape,
    http::{
        SERVER_DURATION, client, connect, describe_http, get, read_responses, read_to_close, reset,
        send, server_count, service_total,
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

/// Bytes from a fixed xorshift sequence: noise, the same on every run.
struct Noise(u64);

impl Noise {
    fn byte(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// `n` bytes that Python's request-line parser does not split on (no white space, in
    /// its Latin-1 reading either), so the line stays one request with this as its path.
    fn path_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let b = self.byte();
            if b > b' ' && !matches!(b, 0x85 | 0xa0) {
                out.push(b);
            }
        }
        out
    }

    /// An upper-case token of 3 to 12 letters that is no known method.
    fn method(&mut self) -> String {
        loop {
            let len = 3 + usize::from(self.byte()) % 10;
            let token: String = (0..len)
                .map(|_| char::from(b'A' + self.byte() % 26))
                .collect();
            if !method::NAMES.contains(&token.as_str()) {
                return token;
            }
        }
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

/// A real TLS ClientHello, from Python's ssl module (the handshake stops when it waits for
/// the server).
fn client_hello() -> Vec<u8> {
    let script = "import ssl, sys\n\
        a, b = ssl.MemoryBIO(), ssl.MemoryBIO()\n\
        tls = ssl.create_default_context().wrap_bio(a, b, server_hostname='example.com')\n\
        try:\n    tls.do_handshake()\n\
        except ssl.SSLWantReadError:\n    pass\n\
        sys.stdout.buffer.write(b.read())\n";
    let output = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("running python3");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(&output.stdout[..2], [0x16, 0x03], "a TLS handshake record");
    output.stdout
}

#[test]
fn random_bytes_are_counted_as_not_http_and_never_reach_a_label() {
    let mut scene = Scene::new(vec![Server::python()]);
    let port = scene.server().port;
    let mut noise = Noise(0x2545_f491_4f6c_dd1d);
    scene.well_formed(5);
    // Noise from the first byte: 16 connections of 1 KiB each.
    for _ in 0..16 {
        one_shot(port, &noise.bytes(1024));
    }
    // Noise as a request's path: requests of the server's (all 200), whose routes must still
    // be clean labels.
    for _ in 0..16 {
        let mut request = b"GET /".to_vec();
        request.extend(noise.path_bytes(40));
        request.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let answer = one_shot(port, &request);
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    }
    // Noise as a method: the server answers 501, counted under `_OTHER`.
    for _ in 0..8 {
        let request = format!("{} /odd/method HTTP/1.1\r\nHost: t\r\n\r\n", noise.method());
        let answer = one_shot(port, request.as_bytes());
        assert!(answer.starts_with(b"HTTP/1.1 501"), "{answer:?}");
    }
    scene.well_formed(5);
    let scrape = scene.settle(10 + 16 + 8, &[("not_http/binary", 16)]);
    let other = [
        ("service_name", scene.service()),
        ("http_request_method", "_OTHER"),
        ("http_response_status_code", "501"),
    ];
    assert_eq!(scrape.histogram_count(SERVER_DURATION, &other), Some(8));
}

#[test]
fn noise_after_a_request_on_a_keep_alive_connection_is_no_pipelined_request() {
    // nginx answers noise with `400 Bad Request`: a status line on a connection whose last
    // request was well-formed, which must not count as another request for that route.
    let mut scene = Scene::new(vec![Server::nginx(NGINX_LOCATIONS)]);
    let port = scene.server().port;
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let hello = client_hello();
    scene.well_formed(3);
    let inputs: [(&str, Vec<u8>); 4] = [
        ("binary", noise.bytes(512)),
        ("tls", hello.clone()),
        (
            "invalid_method",
            b"get / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        ),
        ("http2", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
    ];
    // Right after the response, while the kernel still waits for its end.
    for (kind, bytes) in &inputs {
        let mut stream = scene.well_formed_on(port);
        send(&mut stream, bytes);
        let answer = read_to_close(&mut stream);
        assert!(answer.starts_with(b"HTTP/1.1 400"), "{kind}: {answer:?}");
    }
    // And once the idle sweep has ended the response.
    let mut stream = scene.well_formed_on(port);
    let idle_before = single(
        &scene.agent.scrape(),
        "monitor_http_responses_ended_idle_total",
    );
    poll_until("the idle sweep to end the response", WAIT, || {
        let ended = single(
            &scene.agent.scrape(),
            "monitor_http_responses_ended_idle_total",
        );
        (ended > idle_before).then_some(())
    });
    send(&mut stream, &hello);
    assert!(read_to_close(&mut stream).starts_with(b"HTTP/1.1 400"));
    scene.well_formed(3);
    scene.settle(
        scene.good,
        &[
            ("not_http/binary", 1),
            ("not_http/tls", 2),
            ("not_http/invalid_method", 1),
            ("not_http/http2", 1),
            ("unmatched/not_http_read", 5),
        ],
    );
}

#[test]
fn a_slowloris_client_holds_one_entry_until_it_goes_and_counts_nothing_else() {
    let mut scene = Scene::new(vec![Server::python()]);
    let port = scene.server().port;
    scene.well_formed(3);
    // The request line, then the headers a byte at a time: the kernel holds the request.
    let mut slow = connect(port);
    send(&mut slow, b"GET /slow/loris HTTP/1.1\r\nHost: t\r\n");
    poll_until("the slow request to be held", WAIT, || {
        (scene.server_connections(phase::REQUEST) == 1).then_some(())
    });
    // A client that sends even its request line a byte at a time: a first byte that can begin
    // a method (`G`) is held, and once the bytes cannot be a request (`GX`) they are counted
    // and the connection dropped.
    let mut slower = connect(port);
    send(&mut slower, b"G");
    for b in b"X-S" {
        // One byte a second from both (the pace is the behaviour under test), while the
        // normal client goes on.
        thread::sleep(Duration::from_secs(1));
        send(&mut slow, &[*b]);
        send(&mut slower, &[*b]);
        scene.well_formed(2);
    }
    assert_eq!(scene.server_connections(phase::REQUEST), 1, "still held");
    // The slow client gives up with a reset: its request is unanswered, its entry goes.
    reset(slow);
    drop(slower);
    scene.wait_for_odd("unanswered/closed", 1);
    assert_eq!(scene.server_connections(phase::REQUEST), 0);
    scene.settle(
        scene.good,
        &[("not_http/text", 1), ("unanswered/closed", 1)],
    );
    // The normal client leaves: no entry of the server's is left.
    scene.client = client();
    poll_until("the server's connections to be gone", WAIT, || {
        scene
            .agent
            .connections_of(scene.server().pid())
            .is_empty()
            .then_some(())
    });
}

#[test]
fn heads_larger_than_the_capture_and_than_servers_accept_are_counted_with_their_status() {
    let mut scene = Scene::new(vec![Server::python(), Server::nginx(NGINX_LOCATIONS)]);
    let (python, nginx) = (scene.servers[0].port, scene.servers[1].port);
    scene.well_formed(3);
    let headers = |count: usize, size: usize| -> String {
        (0..count)
            .map(|i| format!("X-Filler-{i}: {}\r\n", "v".repeat(size)))
            .collect()
    };
    // Headers past the 256 bytes the kernel captures: the route is in the first bytes.
    let beyond = format!(
        "GET /past/capture HTTP/1.1\r\nHost: t\r\n{}\r\n",
        headers(8, 100)
    );
    // A 64 KiB head: Python takes it, nginx refuses it (400: larger than its buffers).
    let big = format!(
        "GET /big/head HTTP/1.1\r\nHost: t\r\n{}\r\n",
        headers(64, 1000)
    );
    // One header line longer than Python's 64 KiB line limit: 431.
    let long_line = format!(
        "GET /long/line HTTP/1.1\r\nHost: t\r\nX-Long: {}\r\n\r\n",
        "v".repeat(70_000)
    );
    // A 1 KiB path, longer than the capture and the templated prefix: cut to `/{*}`.
    let long_path = format!(
        "GET /long/{} HTTP/1.1\r\nHost: t\r\n\r\n",
        "segment/".repeat(128)
    );
    for (port, request, status) in [
        (python, &beyond, 200),
        (python, &big, 200),
        (python, &long_line, 431),
        (python, &long_path, 200),
        (nginx, &big, 400),
    ] {
        let mut stream = connect(port);
        send(&mut stream, request.as_bytes());
        assert_eq!(read_responses(&mut stream, 1), [status]);
    }
    scene.well_formed(3);
    let scrape = scene.settle(3 + 3 + 4, &[]);
    let service = scene.service().to_owned();
    for (status, route) in [
        (200, "/past/capture"),
        (200, "/big/head"),
        (431, "/long/line"),
    ] {
        assert_eq!(server_count(&scrape, &service, status, route), Some(1));
    }
    let cut = scrape.label_values(SERVER_DURATION, &[("service_name", &service)], "http_route");
    assert!(
        cut.iter()
            .any(|route| route.starts_with("/long/segment/") && route.ends_with("/{*}")),
        "{cut:?}"
    );
    assert_eq!(server_count(&scrape, "nginx", 400, "/big/head"), Some(1));
}

#[test]
fn binary_and_text_protocols_on_port_80_are_counted_by_kind() {
    // A server on port 80, where a port-based guess would take anything for HTTP.
    assert!(
        std::net::TcpListener::bind("127.0.0.1:80").is_ok(),
        "port 80 is taken: this test needs it"
    );
    let mut scene = Scene::new(vec![Server::python_on(80)]);
    scene.well_formed(3);
    let startup = {
        // PostgreSQL's StartupMessage: length, protocol 3.0, `user\0postgres\0\0`.
        let body = b"\x00\x03\x00\x00user\x00postgres\x00\x00";
        let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        message.extend_from_slice(body);
        message
    };
    let inputs: [&[u8]; 6] = [
        b"*1\r\n$4\r\nPING\r\n",             // Redis (RESP)
        b"PING\r\n",                         // Redis, inline
        b"stats\r\n",                        // memcached
        &startup,                            // PostgreSQL
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f", // PostgreSQL's SSLRequest
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", // HTTP/2 with prior knowledge
    ];
    for bytes in inputs {
        one_shot(80, bytes);
    }
    scene.well_formed(3);
    scene.settle(
        6,
        &[
            ("not_http/text", 3),
            ("not_http/binary", 2),
            ("not_http/http2", 1),
        ],
    );
}

#[test]
fn tls_clients_on_a_clear_text_port_are_counted_as_tls() {
    let mut scene = Scene::new(vec![Server::nginx(NGINX_LOCATIONS)]);
    scene.well_formed(3);
    // curl's own ClientHello: the handshake fails, as it does for a misconfigured client.
    for _ in 0..3 {
        let status = Command::new("curl")
            .args(["-sk", "--max-time", "10", "-o", "/dev/null"])
            .arg(format!("https://127.0.0.1:{}/", scene.server().port))
            .status()
            .expect("running curl");
        assert!(
            !status.success(),
            "TLS to a clear-text server cannot succeed"
        );
    }
    scene.well_formed(3);
    scene.settle(6, &[("not_http/tls", 3)]);
}

#[test]
fn half_closed_and_reset_connections_mid_request_and_mid_response() {
    let mut scene = Scene::new(vec![Server::python()]);
    let port = scene.server().port;
    scene.well_formed(3);

    // Half-closed mid-request: Python takes the end of input for the end of the head and
    // answers, so this is one request of its.
    let answer = one_shot(port, b"GET /half/request HTTP/1.1\r\nHost: t\r\n");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");

    // Half-closed mid-response: the server finishes and closes.
    let mut stream = connect(port);
    send(
        &mut stream,
        b"GET /bytes/2000000 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let mut first = [0u8; 4096];
    std::io::Read::read_exact(&mut stream, &mut first).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_close(&mut stream).len() + first.len() > 2_000_000);

    // Reset mid-request, once the server has read the start of the request.
    let mut stream = connect(port);
    send(&mut stream, b"GET /reset/request HTTP/1.1\r\nHo");
    poll_until("the cut request to be held", WAIT, || {
        (scene.server_connections(phase::REQUEST) == 1).then_some(())
    });
    reset(stream);
    scene.wait_for_odd("unanswered/closed", 1);

    // Reset mid-response: the server's next write fails.
    let mut stream = connect(port);
    send(
        &mut stream,
        b"GET /bytes/50000000 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    std::io::Read::read_exact(&mut stream, &mut first).unwrap();
    reset(stream);

    scene.well_formed(3);
    let scrape = scene.settle(6 + 3, &[("unanswered/closed", 1), ("aborted", 1)]);
    let service = scene.service().to_owned();
    assert_eq!(
        server_count(&scrape, &service, 200, "/half/request"),
        Some(1)
    );
    assert_eq!(server_count(&scrape, &service, 200, "/bytes/{id}"), Some(2));
}

#[test]
fn http_0_9_and_invalid_methods_are_counted_by_what_they_are() {
    let mut scene = Scene::new(vec![Server::python()]);
    let port = scene.server().port;
    scene.well_formed(3);
    // HTTP/0.9: a request line without a version, answered with the body alone.
    for request in [&b"GET /\r\n"[..], b"GET /zero/nine\r\n\r\n"] {
        assert_eq!(one_shot(port, request), b"ok\n");
    }
    // A method outside the known set: a request, counted under `_OTHER`.
    for request in [
        &b"FOO /foo HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"PROPFIND /dav HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        assert!(one_shot(port, request).starts_with(b"HTTP/1.1 501"));
    }
    // Methods that are not upper-case tokens: not requests at all.
    for request in [
        &b"get /lower HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"Get /mixed HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        assert!(one_shot(port, request).starts_with(b"HTTP/1.1 501"));
    }
    // The same after a well-formed request on a keep-alive connection: the server's 501 is
    // the answer to those bytes, not a second request for the well-formed route.
    let mut stream = scene.well_formed_on(port);
    send(&mut stream, b"get / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(read_to_close(&mut stream).starts_with(b"HTTP/1.1 501"));
    scene.well_formed(3);
    let scrape = scene.settle(
        scene.good + 2,
        &[
            ("unanswered/no_status_line", 2),
            ("not_http/invalid_method", 3),
            ("unmatched/not_http_read", 1),
        ],
    );
    let service = scene.service().to_owned();
    let methods = scrape.label_values(
        SERVER_DURATION,
        &[("service_name", &service)],
        "http_request_method",
    );
    assert_eq!(methods, ["GET", "_OTHER"]);
    let other = [
        ("service_name", service.as_str()),
        ("http_request_method", "_OTHER"),
    ];
    let routes = scrape.label_values(SERVER_DURATION, &other, "http_route");
    assert_eq!(routes, ["/dav", "/foo"]);
}
