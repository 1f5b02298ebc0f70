//! The endpoint under a flood: one peer cannot take every connection, and connections that
//! send no (or half a) request are closed after the header-read timeout.

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use monitor_tests::{MonitorAgent, Scrape, poll_until};

/// Connections one peer may hold open (`PER_PEER` in monitor/src/export/connection_limit.rs).
const PER_PEER_CAP: usize = 8;
const REFUSED: &str = "monitor_web_connections_refused_total";
const OPEN: &str = "monitor_web_connections_open";

/// `/metrics` fetched by curl from `source`, another loopback address than the tests' other
/// connections (Linux answers on all of 127.0.0.0/8), so another peer to the agent.
fn scrape_from(source: &str, agent: &MonitorAgent) -> Scrape {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--max-time", "10"])
        .args(["--interface", source])
        .arg(format!("http://127.0.0.1:{}/metrics", agent.port))
        .output()
        .expect("running curl");
    assert!(
        output.status.success(),
        "curl from {source}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Scrape::parse(&String::from_utf8_lossy(&output.stdout))
}

/// Whether the agent closed `stream` (end of file or reset), reading whatever it sent first.
fn closed_by_agent(mut stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("non-blocking socket");
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn connect(agent: &MonitorAgent) -> TcpStream {
    TcpStream::connect(("127.0.0.1", agent.port)).expect("connecting to the agent")
}

#[test]
fn one_peer_cannot_take_every_connection() {
    let agent = MonitorAgent::start(&[]);
    let other = "127.0.0.2";
    // Start with no connection but the scrape's own: those of the start-up's probes close
    // a moment after their answer.
    poll_until(
        "the start-up's connections to close",
        Duration::from_secs(10),
        || (scrape_from(other, &agent).value(OPEN, &[]) == Some(1.0)).then_some(()),
    );

    let extra = 4;
    let idle: Vec<TcpStream> = (0..PER_PEER_CAP + extra).map(|_| connect(&agent)).collect();
    let closed = poll_until(
        "the agent to close the connections beyond the cap",
        Duration::from_secs(10),
        || {
            let closed = idle.iter().filter(|stream| closed_by_agent(stream)).count();
            (closed >= extra).then_some(closed)
        },
    );
    assert_eq!(closed, extra, "only the connections beyond the cap close");

    // Prometheus, elsewhere, still gets its scrape, which shows the refusals.
    let scrape = scrape_from(other, &agent);
    assert_eq!(
        scrape.value(REFUSED, &[("reason", "peer_limit")]),
        Some(extra as f64)
    );
    assert_eq!(
        scrape.value(REFUSED, &[("reason", "total_limit")]),
        Some(0.0)
    );
    assert_eq!(scrape.value(OPEN, &[]), Some((PER_PEER_CAP + 1) as f64));
    let still_open = idle
        .iter()
        .filter(|stream| !closed_by_agent(stream))
        .count();
    assert_eq!(still_open, PER_PEER_CAP);

    // Once the flood ends, the peer is served again.
    drop(idle);
    poll_until(
        "127.0.0.1 to be served again",
        Duration::from_secs(10),
        || {
            agent
                .get("/healthz")
                .is_ok_and(|(code, _)| code == 200)
                .then_some(())
        },
    );
}

#[test]
fn connections_without_a_whole_request_are_closed_after_the_header_read_timeout() {
    let agent = MonitorAgent::start(&["--web-header-read-timeout", "1s"]);
    let silent = connect(&agent);
    let mut half = connect(&agent);
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: monitor\r\nAccept: te")
        .unwrap();
    // A keep-alive connection waiting for its next request: a scraper gone without a FIN.
    let mut answered = connect(&agent);
    answered
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: monitor\r\n\r\n")
        .unwrap();
    answered
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 1024];
    while !response.ends_with(b"\r\n\r\nok\n") {
        let read = answered.read(&mut buffer).expect("reading /healthz");
        assert_ne!(read, 0, "closed before the answer: {response:?}");
        response.extend_from_slice(&buffer[..read]);
    }

    poll_until(
        "the agent to close the idle connections",
        Duration::from_secs(10),
        || {
            [&silent, &half, &answered]
                .into_iter()
                .all(closed_by_agent)
                .then_some(())
        },
    );
    agent.get("/healthz").expect("a new connection is served");
}
