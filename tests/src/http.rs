//! HTTP clients for the tests, and look-ups of the agent's HTTP series.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use crate::{MonitorAgent, Scrape, poll::try_poll};

pub const SERVER_DURATION: &str = "http_server_request_duration_seconds";
pub const CLIENT_DURATION: &str = "http_client_request_duration_seconds";

/// A keep-alive client: requests on one pooled connection, like a real one.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

/// GETs `url` and returns the status, reading the whole body.
pub fn get(client: &ureq::Agent, url: &str) -> u16 {
    let response = client
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let _ = response.into_body().read_to_vec();
    status
}

/// The labels of one server series.
pub fn server_labels<'a>(
    service: &'a str,
    status: &'a str,
    route: &'a str,
) -> [(&'a str, &'a str); 3] {
    [
        ("service_name", service),
        ("http_response_status_code", status),
        ("http_route", route),
    ]
}

/// Observations of the server series of `service` with `status` and `route`.
pub fn server_count(scrape: &Scrape, service: &str, status: u16, route: &str) -> Option<u64> {
    let status = status.to_string();
    scrape.histogram_count(SERVER_DURATION, &server_labels(service, &status, route))
}

/// All observations of `service`, over every method, status and route.
pub fn service_total(scrape: &Scrape, service: &str) -> u64 {
    scrape
        .histograms(SERVER_DURATION, &[("service_name", service)])
        .map(|buckets| buckets.last().map_or(0, |(_, count)| *count))
        .sum()
}

/// Reads HTTP/1.1 responses from `stream` until `expected` have arrived (bodies framed by
/// Content-Length; statuses returned in order).
pub fn read_responses(stream: &mut TcpStream, expected: usize) -> Vec<u16> {
    let mut buffer = Vec::new();
    let mut statuses = Vec::new();
    let mut chunk = [0u8; 65536];
    let mut start = 0;
    while statuses.len() < expected {
        match parse_response(&buffer[start..]) {
            Some((status, length)) => {
                statuses.push(status);
                start += length;
            }
            None => {
                let n = stream.read(&mut chunk).expect("reading responses");
                assert!(
                    n > 0,
                    "connection closed after {} responses",
                    statuses.len()
                );
                buffer.extend_from_slice(&chunk[..n]);
            }
        }
    }
    statuses
}

/// (status, total length) of the complete response at the start of `bytes`, if it is there.
fn parse_response(bytes: &[u8]) -> Option<(u16, usize)> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
    let status = head.get(9..12)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (bytes.len() >= head_end + length).then_some((status, head_end + length))
}

/// Opens a connection to `port` with Nagle off, so each write leaves as written.
pub fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

pub fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).expect("writing a request");
}

/// How long a test waits for the agent's series to show what its traffic did.
pub const SERIES_WAIT: Duration = Duration::from_secs(20);

/// Polls `agent`'s scrapes until `check` holds on one (within `SERIES_WAIT`) and returns it;
/// on a timeout, fails showing the agent's HTTP series.
pub fn wait_until(agent: &MonitorAgent, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    try_poll(SERIES_WAIT, || {
        let scrape = agent.scrape();
        check(&scrape).then_some(scrape)
    })
    .unwrap_or_else(|| {
        panic!(
            "timed out waiting for {what}; the agent has:\n{}",
            describe_http(&agent.metrics_text())
        )
    })
}

/// The HTTP lines of a scrape (counts and the agent's HTTP counters), for failure messages.
pub fn describe_http(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|line| {
            !line.starts_with('#')
                && (line.contains("_count{") && line.starts_with("http_")
                    || line.starts_with("monitor_http_")
                    || line.starts_with("tcp_client_connect_errors_total")
                    || line.contains("bash")
                    || line.contains("ports")
                    || line.contains("CONNECTIONS"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Closes `stream` with a reset (SO_LINGER 0): the peer's next read or write fails with
/// ECONNRESET instead of seeing an orderly end.
pub fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a `linger` of the size given.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(result, 0, "setting SO_LINGER");
    drop(stream);
}

/// Reads until the server closes the connection (or resets it); returns what came.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The client observations of `service` with `status`, summed over server addresses.
pub fn client_total(scrape: &Scrape, service: &str, status: u16) -> u64 {
    let status = status.to_string();
    scrape
        .histograms(
            CLIENT_DURATION,
            &[
                ("service_name", service),
                ("http_response_status_code", &status),
            ],
        )
        .map(|buckets| buckets.last().map_or(0, |&(_, count)| count))
        .sum()
}
