//! The failures a client meets: responses cut off or missing (from a misbehaving server in the
//! test), a long response head that must still tell a cut-off body from a whole one, and
//! connects that fail (no local port left, refused).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    process::{Command, Stdio},
    thread,
};

use monitor_tests::{
    MonitorAgent, Scrape,
    agent::free_port,
    servers::{fixture, renamed_copy},
    workload::unique_name,
};

use super::{CLIENT_DURATION, client_count, wait_until};

/// A one-connection server in this test that answers each request with `reply`, then
/// closes (or resets, with `reset`).
fn misbehaving_server(reply: &'static [u8], reset: bool, connections: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(reply);
            if reset {
                // SO_LINGER 0: close sends a reset.
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                use std::os::fd::AsRawFd as _;
                // SAFETY: a valid socket and option.
                unsafe {
                    libc::setsockopt(
                        stream.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        size_of::<libc::linger>() as u32,
                    )
                };
            }
        }
    });
    port
}

#[test]
fn cut_off_responses_and_missing_ones_are_errors_of_their_own() {
    let agent = MonitorAgent::start(&[]);
    // Declares 1000 bytes, sends 10, closes; then the same with a reset; then no answer.
    let closes = misbehaving_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789",
        false,
        2,
    );
    let resets = misbehaving_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789",
        true,
        1,
    );
    let silent = misbehaving_server(b"", false, 1);
    let urls: Vec<String> = [closes, closes, resets, silent]
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}/x"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("curl");
    let curl = renamed_copy(dir.path(), "/usr/bin/curl", &name);
    for url in &urls {
        let status = Command::new(&curl)
            .args(["-s", "-o", "/dev/null", url])
            .status()
            .unwrap();
        assert!(!status.success(), "curl should fail on {url}");
    }
    let errors = |scrape: &Scrape, port: u16, kind: &str| {
        let address = format!("127.0.0.1:{port}");
        let labels = [
            ("service_name", name.as_str()),
            ("server_address", address.as_str()),
            ("error_type", kind),
        ];
        scrape.value("http_client_request_errors_total", &labels)
    };
    let scrape = wait_until(&agent, "the client errors", |scrape| {
        errors(scrape, closes, "response_cut_off") == Some(2.0)
            && errors(scrape, resets, "response_cut_off") == Some(1.0)
            && errors(scrape, silent, "no_response") == Some(1.0)
    });
    // Not mistaken for successes.
    assert_eq!(
        scrape.histogram(CLIENT_DURATION, &[("service_name", name.as_str())]),
        None
    );
}

/// Response heads with many or long headers (cookies, security policies, CORS) run past the
/// 256 bytes the kernel captures of a read. The head is read on in later windows of the same
/// read, so that its Content-Length still tells a cut-off body from a whole one: before, the
/// framing stayed unknown and a cut-off response was counted as a success ended by the close.
#[test]
fn a_long_response_head_still_tells_a_cut_off_body_from_a_whole_one() {
    let agent = MonitorAgent::start(&[]);
    let head = |length: usize| {
        format!(
            "HTTP/1.1 200 OK\r\nServer: test\r\nSet-Cookie: session={}; Path=/; HttpOnly\r\n\
             Content-Security-Policy: default-src 'self'; script-src {}\r\n\
             Access-Control-Allow-Origin: *\r\nContent-Length: {length}\r\n\r\n",
            "c".repeat(300),
            "https://cdn.example ".repeat(20),
        )
    };
    let mut cut = head(1000).into_bytes();
    assert!(cut.len() > 3 * 256, "the head must span several captures");
    cut.extend_from_slice(b"0123456789");
    let mut whole = head(10).into_bytes();
    whole.extend_from_slice(b"0123456789");
    let cut_server = misbehaving_server(cut.leak(), false, 1);
    let whole_server = misbehaving_server(whole.leak(), false, 1);
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("curl");
    let curl = renamed_copy(dir.path(), "/usr/bin/curl", &name);
    for (port, succeeds) in [(cut_server, false), (whole_server, true)] {
        let status = Command::new(&curl)
            .args([
                "-s",
                "-o",
                "/dev/null",
                &format!("http://127.0.0.1:{port}/x"),
            ])
            .status()
            .unwrap();
        assert_eq!(status.success(), succeeds, "curl on port {port}");
    }
    let cut_address = format!("127.0.0.1:{cut_server}");
    let whole_address = format!("127.0.0.1:{whole_server}");
    let scrape = wait_until(&agent, "the cut-off and the whole response", |scrape| {
        let cut_off = scrape.value(
            "http_client_request_errors_total",
            &[
                ("service_name", name.as_str()),
                ("server_address", cut_address.as_str()),
                ("error_type", "response_cut_off"),
            ],
        );
        cut_off == Some(1.0) && client_count(scrape, &name, &whole_address, 200) == Some(1)
    });
    // The cut-off one is not also a success.
    assert_eq!(client_count(&scrape, &name, &cut_address, 200), None);
}

/// A client that has used up its ephemeral ports gets EADDRNOTAVAIL from connect at once:
/// the first sign of a client near capacity, counted with the other connect errors.
#[test]
fn connects_with_no_local_port_left_are_connect_errors() {
    let agent = MonitorAgent::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("ports");
    let script = dir.path().join(format!("{name}.py"));
    std::fs::copy(fixture("port_exhaustion.py"), &script).unwrap();
    // The interpreter itself: a `python3` on PATH may be a shim (pyenv's is a bash script).
    let mut client = Command::new("/usr/bin/python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // It prints once the connect has failed, and lives on until its stdin closes.
    let mut line = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.trim().parse::<u32>().is_ok(), "{line:?}");
    wait_until(&agent, "one connect error", |scrape| {
        scrape.value(
            "tcp_client_connect_errors_total",
            &[("service_name", name.as_str())],
        ) == Some(1.0)
    });
    drop(client.stdin.take());
    assert!(client.wait().unwrap().success());
}

#[test]
fn refused_connections_are_counted_per_service() {
    let agent = MonitorAgent::start(&[]);
    let closed_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("curl");
    let curl = renamed_copy(dir.path(), "/usr/bin/curl", &name);
    for _ in 0..2 {
        let status = Command::new(&curl)
            .args(["-s", &format!("http://127.0.0.1:{closed_port}/")])
            .status()
            .unwrap();
        assert!(!status.success());
    }
    wait_until(&agent, "two connect errors", |scrape| {
        scrape.value(
            "tcp_client_connect_errors_total",
            &[("service_name", name.as_str())],
        ) == Some(2.0)
    });
}
