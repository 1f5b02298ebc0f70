//! Responses as clients read them: a first byte read alone, a response read before its
//! request's write returned, interim responses, a protocol switch, and chunked bodies that end
//! at their last chunk only, or with their trailers.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    process::Command,
    thread,
    time::Duration,
};

use monitor_tests::{
    MonitorAgent,
    http::{describe_http, server_count},
    servers::{Server, fixture, renamed_copy},
    workload::unique_name,
};

use super::{CLIENT_DURATION, assert_no_client_errors, client_count, printed_statuses, wait_until};

/// A client that reads a response's first byte alone, then a few more, then the rest (Java's
/// HttpClient reads into what is left of its buffer): the bytes are held until a read
/// completes the status line. Before, those reads were taken for something else; the next
/// request, written while the first still waited for its answer, was taken for its body and
/// went uncounted.
#[test]
fn a_response_whose_first_byte_is_read_alone_is_counted() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let script = "import socket, sys\n\
         s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
         for status in (201, 404, 201):\n    \
         s.sendall(b'GET /status/%d HTTP/1.1\\r\\nHost: reader\\r\\n\\r\\n' % status)\n    \
         data = s.recv(1)\n    \
         data += s.recv(9)\n    \
         while b'ok\\n' not in data:\n        data += s.recv(4096)\n    \
         print(data.split(b' ')[1].decode())\n";
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("onebyte");
    let python = renamed_copy(dir.path(), "/usr/bin/python3", &name);
    let output = Command::new(python)
        .args(["-c", script, &server.port.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "201\n404\n201\n");
    wait_until(&agent, "every response counted once", |scrape| {
        client_count(scrape, &name, "reader", 201) == Some(2)
            && client_count(scrape, &name, "reader", 404) == Some(1)
    });
}

/// A client that reads on another thread than it writes, answered while its write is still
/// in the kernel (an upload refused before the server reads it): the response is read before
/// the write returns. Both requests on the connection count, each with its own status. Before,
/// the early response was taken for stray bytes, the upload waited for an answer that had
/// passed, the next request was taken for its body, and its answer for the upload's: one
/// request lost. Java's client does the same when its writer is preempted in the write: one of
/// 240,000 requests, by hand with both CPUs busy; the loss that made
/// `java_http_client_counts_equal_its_requests` fail once in CI.
#[test]
fn a_response_read_before_its_request_write_returned_is_counted() {
    let agent = MonitorAgent::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("early");
    let python = renamed_copy(dir.path(), "/usr/bin/python3", &name);
    let statuses = printed_statuses(Command::new(python).arg(fixture("answered_while_writing.py")));
    assert_eq!(statuses, [413, 200]);
    let scrape = wait_until(&agent, "both requests counted once", |scrape| {
        client_count(scrape, &name, "refusing", 413) == Some(1)
            && client_count(scrape, &name, "refusing", 200) == Some(1)
    });
    assert_no_client_errors(&agent, &scrape, &name);
    assert_eq!(
        scrape.value("monitor_http_client_responses_before_request_total", &[]),
        Some(1.0)
    );
}

/// A server that sends `103 Early Hints` and its answer in one write, read by the client in
/// one read: both ends count the final status. Before, the interim status hid the final one
/// in the same bytes: the server's request went unanswered and the client's success was
/// counted as a request that got no response. The same with a 103 of eight `Link` lines,
/// longer than the kernel's 256-byte capture: before, its end was not looked for, the
/// connection waited for a final response that had passed, and took the next requests for
/// the first one's body.
#[test]
fn an_interim_response_sent_with_the_final_one_counts_as_the_final_one() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("curl");
    let curl = renamed_copy(dir.path(), "/usr/bin/curl", &name);
    let address = format!("127.0.0.1:{}", server.port);
    for (path, requests) in [("/early-hints", 3), ("/early-hints/long", 6)] {
        let url = server.url(path);
        // Three requests on one keep-alive connection.
        let output = Command::new(&curl)
            .args(["-s", "-w", "%{http_code}\\n"])
            .args(["-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null"])
            .args([&url, &url, &url])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), "200\n200\n200\n");
        let scrape = wait_until(&agent, "3 server and the client observations", |scrape| {
            server_count(scrape, &server.service, 200, path) == Some(3)
                && client_count(scrape, &name, &address, 200) == Some(requests)
        });
        assert_no_client_errors(&agent, &scrape, &name);
        assert_eq!(
            scrape.histogram(CLIENT_DURATION, &[("http_response_status_code", "103")]),
            None
        );
    }
}

/// A server whose first connection switches protocols at the first request (Docker's
/// `Upgrade: tcp`) and then answers one tunnelled request; every later connection is
/// answered plainly, once.
fn switching_server() -> u16 {
    const SWITCHED: &[u8] =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n";
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for (index, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let replies: &'static [&[u8]] = if index == 0 {
                &[SWITCHED, ANSWER]
            } else {
                &[ANSWER]
            };
            thread::spawn(move || {
                for reply in replies {
                    let mut request = [0u8; 1024];
                    let _ = stream.read(&mut request);
                    let _ = stream.write_all(reply);
                }
                let _ = stream.read(&mut [0u8; 1]); // until the client closes
            });
        }
    });
    port
}

/// After `101 Switching Protocols` (WebSocket, Docker's `Upgrade: tcp`) a connection carries
/// another protocol: the switch counts, and what follows is not taken for requests of the
/// client's, even what looks like one (a tunnel). Before, the client side went on reading
/// the connection's every write and read, and counted the tunnelled request under the server
/// it named.
#[test]
fn what_a_client_sends_after_a_protocol_switch_is_not_its_request() {
    let agent = MonitorAgent::start(&[]);
    let port = switching_server();
    let script = "import socket, sys\n\
         def exchange(s, request):\n    \
         s.sendall(request)\n    \
         data = b''\n    \
         while not data.endswith(b'\\r\\n\\r\\n'):\n        data += s.recv(4096)\n    \
         print(data.split(b' ')[1].decode())\n\
         address = ('127.0.0.1', int(sys.argv[1]))\n\
         tunnel = socket.create_connection(address)\n\
         exchange(tunnel, b'POST /attach HTTP/1.1\\r\\nHost: docker\\r\\nConnection: Upgrade\\r\\nUpgrade: tcp\\r\\n\\r\\n')\n\
         exchange(tunnel, b'GET /inner HTTP/1.1\\r\\nHost: tunnelled\\r\\n\\r\\n')\n\
         exchange(socket.create_connection(address), b'GET /after HTTP/1.1\\r\\nHost: after\\r\\n\\r\\n')\n";
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("switch");
    let python = renamed_copy(dir.path(), "/usr/bin/python3", &name);
    let statuses = printed_statuses(Command::new(python).args(["-c", script, &port.to_string()]));
    assert_eq!(statuses, [101, 200, 200]);
    // The request after the tunnel's is counted: the tunnelled one would be by now.
    let scrape = wait_until(&agent, "the switch and the request after it", |scrape| {
        client_count(scrape, &name, "docker", 101) == Some(1)
            && client_count(scrape, &name, "after", 200) == Some(1)
    });
    let tunnelled = scrape.histogram(CLIENT_DURATION, &[("server_address", "tunnelled")]);
    assert_eq!(tunnelled, None, "{}", describe_http(&agent.metrics_text()));
}

/// A server in this test that answers every request on its connections with a chunked
/// response written in `parts`, `pause` apart.
fn chunked_server(parts: &'static [&'static [u8]], pause: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                stream.set_nodelay(true).unwrap();
                let mut request = [0u8; 4096];
                while matches!(stream.read(&mut request), Ok(n) if n > 0) {
                    for (i, part) in parts.iter().enumerate() {
                        if i > 0 {
                            thread::sleep(pause);
                        }
                        if stream.write_all(part).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// A chunked response ends at its zero-size chunk, not at bytes that look like it: here the
/// head comes alone and its last header's value ends in 0 (nginx puts `add_header` lines
/// such as HSTS last), a chunk's data ends in `0` and a line break (a CSV row), and the
/// terminator comes in two writes, 150 ms apart. Before, the response ended at the head's
/// read, a success of a few microseconds where curl waited 450 ms, and a terminator split
/// across reads was never seen: the response was counted as cut off at the close.
#[test]
fn a_chunked_response_ends_at_its_last_chunk_only() {
    const PARTS: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
          Strict-Transport-Security: max-age=31536000\r\n\r\n",
        b"6\r\na,b,0\n\r\n",
        b"7\r\nc,d,0\r\n\r\n0\r\n",
        b"\r\n",
    ];
    let port = chunked_server(PARTS, Duration::from_millis(150));
    let agent = MonitorAgent::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("curl");
    let curl = renamed_copy(dir.path(), "/usr/bin/curl", &name);
    let url = format!("http://127.0.0.1:{port}/rows");
    // Two requests on one keep-alive connection: the second is counted only if the first
    // response ended where it did.
    let output = Command::new(&curl)
        .args(["-s", "-w", "%{http_code} %{time_total}\\n"])
        .args(["-o", "/dev/null", "-o", "/dev/null", &url, &url])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let address = format!("127.0.0.1:{port}");
    let scrape = wait_until(&agent, "2 client observations", |scrape| {
        client_count(scrape, &name, &address, 200) == Some(2)
    });
    let buckets = scrape
        .histogram(CLIENT_DURATION, &[("service_name", name.as_str())])
        .unwrap();
    let at = |bound: f64| buckets.iter().find(|(le, _)| *le == bound).unwrap().1;
    assert_eq!(
        (at(0.25), at(1.0)),
        (0, 2),
        "curl: {}; the agent: {buckets:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    let errors = scrape
        .matching(
            "http_client_request_errors_total",
            &[("service_name", name.as_str())],
        )
        .count();
    assert_eq!(errors, 0, "{}", describe_http(&agent.metrics_text()));
}

/// A chunked response with trailer fields after its last chunk (Node's `addTrailers`,
/// gRPC-web) ends with the trailers' empty line, where the zero-size chunk's terminator is not
/// last: taken to its end by the close, it is whole. Before, every such response that a close
/// ended (curl's one request per run, the last of a keep-alive connection) was counted as cut
/// off, and not recorded. A response cut right after its head is still cut off: the head's
/// own empty line is not a trailer section's.
#[test]
fn a_chunked_response_with_trailers_ended_by_the_close_is_whole() {
    const WITH_TRAILERS: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n",
        b"6\r\nhello \r\n",
        b"6\r\nworld\n\r\n0\r\nX-Checksum: abc123\r\n\r\n",
    ];
    const CUT_AFTER_HEAD: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"];
    let whole = chunked_server(WITH_TRAILERS, Duration::from_millis(20));
    let cut = cut_server(CUT_AFTER_HEAD[0]);
    let agent = MonitorAgent::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("curl");
    let curl = renamed_copy(dir.path(), "/usr/bin/curl", &name);
    const RUNS: usize = 3;
    for _ in 0..RUNS {
        let output = Command::new(&curl)
            .args([
                "-s",
                "-o",
                "/dev/null",
                &format!("http://127.0.0.1:{whole}/t"),
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    let _ = Command::new(&curl)
        .args([
            "-s",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{cut}/t"),
        ])
        .output()
        .unwrap();
    let whole_address = format!("127.0.0.1:{whole}");
    let cut_address = format!("127.0.0.1:{cut}");
    let scrape = wait_until(&agent, "the cut-off response counted", |scrape| {
        scrape
            .value(
                "http_client_request_errors_total",
                &[
                    ("service_name", name.as_str()),
                    ("server_address", cut_address.as_str()),
                    ("error_type", "response_cut_off"),
                ],
            )
            .is_some()
    });
    assert_eq!(
        client_count(&scrape, &name, &whole_address, 200),
        Some(RUNS as u64),
        "{}",
        describe_http(&agent.metrics_text())
    );
    let whole_errors = scrape
        .matching(
            "http_client_request_errors_total",
            &[
                ("service_name", name.as_str()),
                ("server_address", whole_address.as_str()),
            ],
        )
        .count();
    assert_eq!(whole_errors, 0, "{}", describe_http(&agent.metrics_text()));
}

/// A server in this test that answers each connection's first request with `head` and closes.
fn cut_server(head: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 4096];
            if matches!(stream.read(&mut request), Ok(n) if n > 0) {
                let _ = stream.write_all(head);
            }
        }
    });
    port
}
