//! Other protocols on an HTTP port: binary and text protocols, TLS clients, HTTP/0.9 and
//! invalid methods.

use std::process::Command;

use monitor_tests::{
    http::{SERVER_DURATION, read_to_close, send},
    servers::Server,
};

use super::{NGINX_LOCATIONS, Scene, one_shot};

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
