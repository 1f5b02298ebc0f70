//! Servers behind proxies: requests after a PROXY protocol header, and an application behind
//! nginx on a Unix socket, measured at both ends.

use monitor_tests::{
    MonitorAgent,
    http::{connect, describe_http, read_responses, send, server_count},
    servers::{Server, ab},
};

use super::wait_for_count;

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
