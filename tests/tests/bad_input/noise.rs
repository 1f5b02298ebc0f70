//! Noise: random bytes from the first byte, as a path and as a method, and noise or TLS after
//! a well-formed request on a keep-alive connection.

use std::process::Command;

use monitor_common::http::method;
use monitor_tests::{
    http::{SERVER_DURATION, read_to_close, send},
    poll_until,
    servers::Server,
};

use super::{NGINX_LOCATIONS, Scene, WAIT, one_shot, single};

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
