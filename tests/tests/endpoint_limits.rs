//! The endpoint under a flood: connections that send no (or half a) request are closed after
//! the header-read timeout.

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::Duration,
};

use monitor_tests::{MonitorAgent, poll_until};

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
