//! Secrets in URLs: tokens, keys, e-mails and identifiers in paths, query strings, matrix
//! parameters and fragments, sent to real servers, must not reach /metrics, whole or in pieces.

use std::{collections::BTreeSet, time::Duration};

use monitor_tests::{
    MonitorAgent,
    http::{
        SERVER_DURATION, client, connect, describe_http, get, read_responses, send, server_count,
        service_total,
    },
    poll::try_poll,
    servers::Server,
};

const WAIT: Duration = Duration::from_secs(20);

/// Random characters from a fixed xorshift sequence: the same secrets on every run.
struct Random(u64);

const LOWER36: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const BASE62: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const UPPER36: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn from(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| char::from(alphabet[(self.next() >> 11) as usize % alphabet.len()]))
            .collect()
    }

    fn hex(&mut self, n: usize) -> String {
        self.from(b"0123456789abcdef", n)
    }

    fn uuid(&mut self) -> String {
        let hex = self.hex(32);
        format!(
            "{}-{}-4{}-a{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[13..16],
            &hex[17..20],
            &hex[20..]
        )
    }
}

/// Secrets of the shapes services put in URLs.
fn secrets() -> Vec<String> {
    let mut r = Random(0x5eed_1e55_c0ff_ee00);
    let jwt = format!(
        "eyJhbGciOiJIUzI1NiJ9.{}.{}",
        r.from(BASE64URL, 48),
        r.from(BASE64URL, 43)
    );
    vec![
        r.hex(32),               // an MD5, a session id
        r.hex(40),               // a SHA-1, a git token
        r.hex(64),               // a SHA-256
        r.from(BASE64URL, 22),   // 16 random bytes, base64url
        r.from(BASE64URL, 43),   // 32 random bytes, base64url
        jwt,                     // a JWT
        r.uuid(),                // a UUID
        r.uuid().to_uppercase(), // an upper-case UUID
        format!(
            "{}.{}@example.org",
            r.from(b"abcdefghij", 6),
            r.from(b"klmnop", 5)
        ),
        r.from(b"0123456789", 16),                  // a card number
        format!("+1{}", r.from(b"0123456789", 10)), // a phone number
        format!("sk_live_{}", r.from(BASE62, 24)),  // payment API key
        format!("AKIA{}", r.from(UPPER36, 16)),     // cloud access key id
        format!("ghp_{}", r.from(BASE62, 36)),      // source forge token
        format!(
            "xoxb-{}-{}-{}",
            r.from(b"0123456789", 11),
            r.from(b"0123456789", 13),
            r.from(BASE62, 24)
        ),
        // Session ids and invite codes, lower-case or mixed, some as short as 12 characters.
        r.from(LOWER36, 20),
        r.from(LOWER36, 16),
        r.from(LOWER36, 12),
        r.from(LOWER36, 12),
        r.from(LOWER36, 12),
        r.from(BASE62, 16),
        r.from(BASE62, 12),
        r.from(BASE62, 12),
        r.from(BASE62, 12),
    ]
}

/// `%XX` for every byte but unreserved ones.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The paths a secret is sent in, and the route each must become. The last one is cut by
/// the kernel's path limit (192 bytes) a few bytes into the secret.
fn requests(secret: &str) -> Vec<(String, String)> {
    let padding = "/abcdefgh".repeat(20);
    vec![
        (format!("/reset/{secret}"), "/reset/{id}".into()),
        (
            format!("/api/v2/keys/{secret}/rotate"),
            "/api/v2/keys/{id}/rotate".into(),
        ),
        (format!("/{secret}"), "/{id}".into()),
        (format!("/files/{secret}.pdf"), "/files/{id}".into()),
        (
            format!("/search?q={secret}&api_key={secret}&password=hunter2"),
            "/search".into(),
        ),
        (format!("/login;jsessionid={secret}"), "/{id}".into()),
        (format!("/page#{secret}"), "/page".into()),
        (
            format!(
                "/redirect/{}",
                percent_encoded(&format!("/next?token={secret}"))
            ),
            "/redirect/{id}".into(),
        ),
        (
            format!("/cut{padding}/{secret}/more"),
            format!("/cut{padding}/{{*}}"),
        ),
    ]
}

/// Pieces of `secret` worth looking for: itself, and every 8 bytes of it that are not all
/// letters (a run of letters could be a word of the exposition format).
fn pieces(secret: &str) -> BTreeSet<&str> {
    let mut pieces: BTreeSet<&str> = secret
        .as_bytes()
        .windows(8)
        .filter(|w| !w.iter().all(u8::is_ascii_alphabetic))
        .map(|w| std::str::from_utf8(w).unwrap())
        .collect();
    pieces.insert(secret);
    pieces
}

#[test]
fn secrets_in_urls_reach_no_label_whole_or_in_pieces() {
    let server = Server::python();
    let agent = MonitorAgent::start(&["--http-ports", &server.port.to_string()]);
    let secrets = secrets();
    let mut expected_routes = BTreeSet::new();
    let mut sent = 0u64;
    // Raw requests on one keep-alive connection: the bytes on the wire are exactly these,
    // fragment and matrix parameters included.
    let mut stream = connect(server.port);
    for secret in &secrets {
        for (path, route) in requests(secret) {
            let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
            send(&mut stream, request.as_bytes());
            assert_eq!(read_responses(&mut stream, 1), [200], "{path}");
            expected_routes.insert(route);
            sent += 1;
        }
    }
    drop(stream);
    let scrape = try_poll(WAIT, || {
        let scrape = agent.scrape();
        (service_total(&scrape, &server.service) == sent).then_some(scrape)
    })
    .unwrap_or_else(|| {
        panic!(
            "expected {sent} requests; the agent has:\n{}",
            describe_http(&agent.metrics_text())
        )
    });
    // Every request under the template it must have, and no other route.
    let routes: BTreeSet<String> = scrape
        .label_values(
            SERVER_DURATION,
            &[("service_name", &server.service)],
            "http_route",
        )
        .into_iter()
        .collect();
    assert_eq!(routes, expected_routes);
    for route in &expected_routes {
        let per_secret = requests(&secrets[0])
            .iter()
            .filter(|(_, r)| r == route)
            .count();
        let count = server_count(&scrape, &server.service, 200, route);
        assert_eq!(count, Some((per_secret * secrets.len()) as u64), "{route}");
    }
    // And nothing of any secret anywhere in the exposition.
    let text = agent.metrics_text();
    for secret in &secrets {
        for piece in pieces(secret) {
            assert!(
                !text.contains(piece),
                "`{piece}` of `{secret}` is in /metrics"
            );
        }
    }
    assert!(!text.contains("hunter2") && !text.contains("api_key"));
}

const NGINX_LOCATIONS: &str = r#"
    location /users/ { return 200 "user\n"; }
"#;

#[test]
fn query_strings_and_raw_ids_appear_in_no_label() {
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let agent = MonitorAgent::start(&["--http-ports", &nginx.port.to_string()]);
    let client = client();
    let urls = [
        "/users/98765?token=S3cr3tQueryValue&email=jane@example.com",
        "/users/jane.doe@example.com/ok",
    ];
    for url in urls {
        assert_eq!(get(&client, &nginx.url(url)), 200, "{url}");
    }
    // Both recorded (the last one's response ends with the idle sweep) before the text is read.
    let scrape = try_poll(WAIT, || {
        let scrape = agent.scrape();
        (service_total(&scrape, "nginx") == urls.len() as u64).then_some(scrape)
    })
    .unwrap_or_else(|| {
        panic!(
            "both requests counted; the agent has:\n{}",
            describe_http(&agent.metrics_text())
        )
    });
    assert_eq!(server_count(&scrape, "nginx", 200, "/users/{id}"), Some(1));
    let text = agent.metrics_text();
    for secret in ["98765", "S3cr3t", "token", "jane", "example.com", "?"] {
        assert!(!text.contains(secret), "`{secret}` leaked into /metrics");
    }
}
