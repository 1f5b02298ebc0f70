use super::*;

fn head(text: &[u8]) -> [u8; 16] {
    let mut head = [0u8; 16];
    let n = text.len().min(16);
    head[..n].copy_from_slice(&text[..n]);
    head
}

fn route(target: &str) -> alloc::string::String {
    let template = template_route(target.as_bytes());
    // The text the agent shows and the hash the kernel keys by must describe the same route.
    assert_eq!(
        template.hash,
        fnv_bytes(FNV_OFFSET, template.text.as_bytes()),
        "hash of {target}"
    );
    template.text
}

#[test]
fn known_methods_are_recognised() {
    assert_eq!(
        parse_request_start(&head(b"GET / HTTP/1.1")),
        Some((method::GET, 4))
    );
    assert_eq!(
        parse_request_start(&head(b"POST /a HTTP/1.1")),
        Some((method::POST, 5))
    );
    assert_eq!(
        parse_request_start(&head(b"DELETE /x HTTP/1.1")),
        Some((method::DELETE, 7))
    );
    assert_eq!(
        parse_request_start(&head(b"OPTIONS * HTTP/1.1")),
        Some((method::OPTIONS, 8))
    );
    assert_eq!(
        parse_request_start(&head(b"PATCH /p HTTP/1.1")),
        Some((method::PATCH, 6))
    );
    assert_eq!(
        parse_request_start(&head(b"HEAD / HTTP/1.0")),
        Some((method::HEAD, 5))
    );
}

#[test]
fn unknown_methods_are_other_and_garbage_is_rejected() {
    assert_eq!(
        parse_request_start(&head(b"PROPFIND /d HTTP/1.1")),
        Some((method::OTHER, 9))
    );
    assert_eq!(
        parse_request_start(&head(b"GETX / HTTP/1.1")),
        Some((method::OTHER, 5))
    );
    assert_eq!(parse_request_start(&head(b"get / HTTP/1.1")), None);
    assert_eq!(parse_request_start(&head(b"GET")), None);
    assert_eq!(parse_request_start(&head(b"\x16\x03\x01\x02\x00")), None);
    assert_eq!(parse_request_start(&head(b"HTTP/1.1 200 OK")), None);
    assert_eq!(parse_request_start(&head(b"AB / HTTP/1.1")), None);
}

#[test]
fn connect_opens_a_tunnel_not_a_request() {
    for line in [
        &b"CONNECT httpbin.org:443 HTTP/1.1"[..],
        b"CONNECT api.example:443 HTTP/1.1",
        b"CONNECT /x HTTP/1.1",
    ] {
        assert_eq!(parse_request_start(&head(line)), None, "{line:?}");
    }
    // A longer token that starts with it is another method.
    assert_eq!(
        parse_request_start(&head(b"CONNECTX /x HTTP/1.1")),
        Some((method::OTHER, 9))
    );
}

#[test]
fn status_lines_are_read() {
    assert_eq!(parse_status_line(&head(b"HTTP/1.1 200 OK\r\n")), Some(200));
    assert_eq!(parse_status_line(&head(b"HTTP/1.0 503 Service")), Some(503));
    assert_eq!(
        parse_status_line(&head(b"HTTP/1.1 100 Continue")),
        Some(100)
    );
    assert_eq!(parse_status_line(&head(b"HTTP/2 200")), None);
    assert_eq!(parse_status_line(&head(b"HTTP/1.1 2x0 OK")), None);
    assert_eq!(parse_status_line(&head(b"HTTP/1.1 999 Odd")), None);
}

#[test]
fn identifiers_become_placeholders() {
    assert_eq!(route("/users/12345"), "/users/{id}");
    assert_eq!(route("/users/7/orders"), "/users/{id}/orders");
    assert_eq!(
        route("/items/123e4567-e89b-12d3-a456-426614174000"),
        "/items/{id}"
    );
    assert_eq!(route("/objects/507f1f77bcf86cd799439011"), "/objects/{id}");
    assert_eq!(route("/orders/order-12345/lines"), "/orders/{id}/lines");
    assert_eq!(route("/reports/2024-01-31"), "/reports/{id}");
}

#[test]
fn secrets_and_tokens_become_placeholders() {
    assert_eq!(route("/reset/aZ3kLq9PwX2mNb7VtR5s"), "/reset/{id}");
    assert_eq!(
        route("/invite/QWxhZGRpbjpPcGVuU2VzYW1lQUJD"),
        "/invite/{id}"
    );
    assert_eq!(route("/users/jane.doe@example.com"), "/users/{id}");
    assert_eq!(route("/files/a%20b"), "/files/{id}");
    assert_eq!(route(&alloc::format!("/x/{}", "a".repeat(70))), "/x/{id}");
}

#[test]
fn words_stay_literal() {
    assert_eq!(route("/api/v2/products"), "/api/v2/products");
    assert_eq!(route("/docs/getting-started"), "/docs/getting-started");
    assert_eq!(route("/updateUserPreferences"), "/updateUserPreferences");
    assert_eq!(route("/cafe"), "/cafe");
    assert_eq!(route("/deadbeef"), "/deadbeef");
}

#[test]
fn query_fragment_and_empty_segments_are_dropped() {
    assert_eq!(route("/search?q=secret&token=abc"), "/search");
    assert_eq!(route("/page#top"), "/page");
    assert_eq!(route("/a//b/"), "/a/b");
    assert_eq!(route("/"), "/");
    assert_eq!(route("/?x=1"), "/");
    assert_eq!(route("/static/app.js HTTP/1.1\r\n"), "/static/app.js");
}

#[test]
fn long_paths_end_in_a_rest_placeholder() {
    let long = alloc::format!("/{}", "segment/".repeat(40));
    let text = route(&long);
    assert!(text.ends_with("/{*}"), "{text}");
    assert!(text.len() < long.len());
}

#[test]
fn collapsed_route_keeps_the_first_segment() {
    let template = template_route(b"/docs/some-page/section");
    assert_eq!(template.collapsed_text, "/docs/{*}");
    assert_eq!(
        template.collapsed_hash,
        fnv_bytes(FNV_OFFSET, template.collapsed_text.as_bytes())
    );
    let root = template_route(b"/");
    assert_eq!(root.collapsed_text, "/{*}");
    assert_eq!(root.collapsed_hash, fnv_bytes(FNV_OFFSET, b"/{*}"));
}

#[test]
fn streaming_over_split_reads_gives_the_same_route() {
    // The kernel keeps the templater in the connection when a request line is cut.
    let whole = template_route(b"/users/42/orders HTTP/1.1").hash;
    let mut templater = RouteTemplater::new();
    for &b in b"/users/4" {
        assert_eq!(templater.feed(b, &mut ()), Fed::More);
    }
    // Stored in the map between the two reads: a plain copy of the state.
    let mut resumed = RouteTemplater::new();
    resumed.clone_from(&templater);
    for &b in b"2/orders HTTP/1.1" {
        if resumed.feed(b, &mut ()) == Fed::End {
            break;
        }
    }
    assert_eq!(resumed.finish(&mut ()), whole);
}

#[test]
fn duration_buckets_are_found_by_bisection() {
    let mut bounds = [u64::MAX; MAX_DURATION_BOUNDS];
    let defaults = [
        5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000,
    ];
    for (slot, ms) in bounds.iter_mut().zip(defaults) {
        *slot = ms * 1_000_000;
    }
    let n = defaults.len();
    assert_eq!(duration_bucket(&bounds, n, 0), 0);
    assert_eq!(duration_bucket(&bounds, n, 5_000_000), 0);
    assert_eq!(duration_bucket(&bounds, n, 5_000_001), 1);
    assert_eq!(duration_bucket(&bounds, n, 100_000_000), 5);
    assert_eq!(duration_bucket(&bounds, n, 100_000_001), 6);
    assert_eq!(duration_bucket(&bounds, n, 10_000_000_000), 13);
    assert_eq!(duration_bucket(&bounds, n, 10_000_000_001), n);
    // Every count up to the maximum, every position: agrees with a linear scan.
    for count in 0..=MAX_DURATION_BOUNDS {
        let bounds: [u64; MAX_DURATION_BOUNDS] = core::array::from_fn(|i| (i as u64 + 1) * 10);
        for ns in 0..(count as u64 + 2) * 10 {
            let linear = bounds[..count]
                .iter()
                .position(|&b| ns <= b)
                .unwrap_or(count);
            assert_eq!(
                duration_bucket(&bounds, count, ns),
                linear,
                "count {count} ns {ns}"
            );
        }
    }
}

/// Tokens of the shapes services put in URLs (keys, hashes, sessions, invites, e-mails); each
/// must become `{id}` wherever it sits in a path.
const SECRETS: &[&str] = &[
    // Hashes and hex tokens, including hex without a digit.
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "5d41402abc4b2a76b9719d911017c592",
    "DEADBEEFCAFEBABE0123",
    "deadbeefcafebabefeedface",
    // Base64 and base64url, a JWT.
    "QWxhZGRpbjpPcGVuU2VzYW1l",
    "dGhpc2lzYXNlY3JldA",
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    // UUIDs.
    "123e4567-e89b-12d3-a456-426614174000",
    "550E8400-E29B-41D4-A716-446655440000",
    // E-mail addresses.
    "jane.doe@example.com",
    "a+b@x.io",
    // Digit runs: a card number, a phone number, a timestamp.
    "4111111111111111",
    "+14155552671",
    "1700000000",
    // API keys of well-known shapes.
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy",
    "key-3ax6xnjp29jd6fds4gc373sgvjxteol0",
    // Lower-case base-36 sessions and invite codes, with few digits.
    "h7skmqvxbzrt",
    "qx3vbnmzkwtplrd",
    "kq2mzpvtrw",
    "pvtrwnbhdjkq9",
];

#[test]
fn secret_shaped_segments_become_placeholders_anywhere_in_a_path() {
    for secret in SECRETS {
        for (path, expected) in [
            (alloc::format!("/reset/{secret}"), "/reset/{id}"),
            (alloc::format!("/{secret}"), "/{id}"),
            (
                alloc::format!("/api/{secret}/items?key={secret}"),
                "/api/{id}/items",
            ),
        ] {
            assert_eq!(route(&path), expected, "{secret}");
        }
    }
}

#[test]
fn no_piece_of_a_secret_survives_a_cut_path() {
    // Paths cut at MAX_PATH_LEN at every offset inside the secret: the unfinished segment
    // goes, whatever its prefix looks like.
    for secret in SECRETS {
        for pad in 0..MAX_PATH_LEN {
            let path = alloc::format!("/{}/{secret}/tail", "p".repeat(pad.max(1)));
            let template = template_route(path.as_bytes());
            assert_no_piece_of(secret, &template.text);
            assert_no_piece_of(secret, &template.collapsed_text);
            assert_eq!(
                template.collapsed_hash,
                fnv_bytes(FNV_OFFSET, template.collapsed_text.as_bytes())
            );
            route(&path);
        }
    }
}

/// No 4-byte piece of `secret` in `text` (shorter pieces are letters any route has).
fn assert_no_piece_of(secret: &str, text: &str) {
    for piece in secret.as_bytes().windows(4) {
        let piece = core::str::from_utf8(piece).unwrap();
        if piece.chars().all(|c| c.is_ascii_alphabetic()) {
            continue; // letters only: `/reset` holds `rese`
        }
        assert!(!text.contains(piece), "`{piece}` of {secret} in {text}");
    }
}

#[test]
fn a_cut_path_ends_in_the_rest_placeholder_not_a_piece_of_segment() {
    let path = alloc::format!("/files/{}/x7kq2mzp9qwerty", "a".repeat(180));
    assert_eq!(route(&path), "/files/{id}/{*}");
    // One segment longer than the path budget: nothing but the placeholder.
    let long = alloc::format!("/{}", "b".repeat(300));
    let template = template_route(long.as_bytes());
    assert_eq!(template.text, "/{*}");
    assert_eq!(template.collapsed_text, "/{*}");
    assert_eq!(
        template.collapsed_hash,
        fnv_bytes(FNV_OFFSET, b"/{*}"),
        "the kernel's collapsed hash"
    );
}

#[test]
fn versions_words_and_short_codes_stay_literal() {
    for word in [
        "v1",
        "v2",
        "v1beta1",
        "v2beta1",
        "v1alpha1",
        "oauth2",
        "h264",
        "ipv6",
        "base64",
        "x86",
        "i18n",
        "k8s",
        "e2e",
        "html5",
        "page2",
        "healthz",
        "graphql",
        "findByUserId",
        "getHTTPResponse",
        "toJSONString",
        "favicon.ico",
        "bundle.min.js",
        "wp-login.php",
        "openid-configuration",
        "customresourcedefinitions",
        "horizontalpodautoscalers",
    ] {
        let path = alloc::format!("/{word}");
        assert_eq!(route(&path), path);
    }
}

#[test]
fn random_bytes_give_printable_routes_and_known_methods() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let bytes: alloc::vec::Vec<u8> = (0..64).map(|_| next() as u8).collect();
        let mut head = [0u8; 16];
        head.copy_from_slice(&bytes[..16]);
        if let Some((method, _)) = parse_request_start(&head) {
            assert!((method as usize) < method::NAMES.len());
        }
        // As the target of a request line: whatever the bytes, the route is printable
        // ASCII made of placeholders and URL-safe literal segments.
        let mut target = alloc::vec![b'/'];
        target.extend_from_slice(&bytes);
        // As text too: the bytes folded into printable ASCII, so `route` sees them all.
        let printable: alloc::string::String =
            target.iter().map(|&b| char::from(b % 95 + 32)).collect();
        let text = route(&printable);
        let template = template_route(&target);
        for text in [&text, &template.text, &template.collapsed_text] {
            assert!(
                text.bytes().all(|b| b.is_ascii_graphic()),
                "{text:?} from {bytes:?}"
            );
        }
        assert_eq!(
            template.hash,
            fnv_bytes(FNV_OFFSET, template.text.as_bytes())
        );
    }
}

#[test]
fn reads_that_are_not_requests_are_told_apart() {
    let kind = |bytes: &[u8]| classify_not_request(&head(bytes), bytes.len());
    let client_hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    assert_eq!(kind(&client_hello), not_http::TLS);
    assert_eq!(kind(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), not_http::HTTP2);
    // PostgreSQL's startup message and SSL request, and noise.
    assert_eq!(kind(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f]), not_http::BINARY);
    assert_eq!(
        kind(&[0, 0, 0, 0x29, 0, 3, 0, 0, b'u', b's', b'e', b'r']),
        not_http::BINARY
    );
    assert_eq!(kind(b"GET\xff\xfe / HTTP/1.1"), not_http::BINARY);
    assert_eq!(kind(b"get / HTTP/1.1\r\n"), not_http::INVALID_METHOD);
    assert_eq!(kind(b"Get /x HTTP/1.1\r\n"), not_http::INVALID_METHOD);
    assert_eq!(kind(b"AB / HTTP/1.1\r\n"), not_http::INVALID_METHOD);
    // Redis's protocol, an SSH banner, the rest of a request: text.
    assert_eq!(kind(b"*1\r\n$4\r\nPING\r\n"), not_http::TEXT);
    assert_eq!(kind(b"SSH-2.0-OpenSSH_9.2\r\n"), not_http::TEXT);
    assert_eq!(kind(b"st: example.com\r\n\r\n"), not_http::TEXT);
    assert_eq!(kind(b"G"), not_http::TEXT);
    // What the capture did not bring does not count.
    assert_eq!(kind(b"get "), not_http::TEXT);
}

#[test]
fn the_http2_preface_is_not_a_request_of_an_unknown_method() {
    assert_eq!(parse_request_start(&head(b"PRI * HTTP/2.0\r\n")), None);
    assert_eq!(
        parse_request_start(&head(b"PRI /x HTTP/1.1")),
        Some((method::OTHER, 4))
    );
}

#[test]
fn writes_that_cannot_start_a_status_line() {
    let cannot = |bytes: &[u8]| cannot_be_status_line(&head(bytes), bytes.len());
    // HTTP/0.9 answers with the body alone.
    assert!(cannot(b"ok\n"));
    assert!(cannot(b"<html><body>hello</body></html>"));
    assert!(cannot(b"HTTP/2 200\r\n\r\n"));
    assert!(cannot(b"HTTP/1.1 999 Odd\r\n"));
    // A status line, or the start of one cut short, is not judged.
    assert!(!cannot(b"HTTP/1.1 200 OK\r\n"));
    assert!(!cannot(b"HTTP/1"));
    assert!(!cannot(b"HTTP/1.1 2"));
    assert!(!cannot(b""));
}

#[test]
fn a_cut_path_of_slashes_collapses_to_the_root() {
    // Found by fuzzing: the rest placeholder was taken for the first segment, so the
    // collapsed text was `/{*}/{*}` under the hash of `/{*}`.
    let template = template_cut_route(&[b'/'; MAX_PATH_LEN + 8]);
    assert_eq!(template.text, "/{*}");
    assert_eq!(template.collapsed_text, "/{*}");
    assert_eq!(template.collapsed_hash, fnv_bytes(FNV_OFFSET, b"/{*}"));
}

#[test]
fn a_reset_templater_is_a_new_one() {
    // The kernel resets the templater in place for every request (`reset`); any state left
    // from the previous path would change the next one's template.
    let mut templater = RouteTemplater::new();
    for &b in b"/users/12345/Orders-x7kq2mzp/abc " {
        if templater.feed(b, &mut ()) == Fed::End {
            break;
        }
    }
    assert_ne!(templater, RouteTemplater::new());
    templater.reset();
    assert_eq!(templater, RouteTemplater::new());
}

#[test]
fn a_connection_built_in_place_is_a_new_one() {
    for role in [role::SERVER, role::CLIENT] {
        let mut slot = core::mem::MaybeUninit::new(Connection {
            phase: phase::RESPONSE,
            route: 7,
            status: 500,
            ..Connection::new(role::CLIENT)
        });
        assert_eq!(*Connection::init(&mut slot, role), Connection::new(role));
    }
}

#[test]
fn beginnings_of_known_methods_are_request_prefixes() {
    for text in [
        &b"G"[..],
        b"GE",
        b"GET",
        b"GET ",
        b"P",
        b"PO",
        b"PU",
        b"PAT",
        b"OPTIONS",
    ] {
        assert!(is_request_prefix(&head(text), text.len()), "{text:?}");
    }
}

#[test]
fn other_short_reads_are_not_request_prefixes() {
    // Not a method's beginning, a method without its space, too long, or nothing.
    for text in [
        &b"X"[..],
        b"GX",
        b"get",
        b"GETX",
        b"POST/",
        b"\x16\x03",
        b"CONNECT",
    ] {
        assert!(!is_request_prefix(&head(text), text.len()), "{text:?}");
    }
    assert!(
        !is_request_prefix(&head(b"OPTIONS "), 8),
        "longer than held"
    );
    assert!(!is_request_prefix(&head(b""), 0));
    // Only the first `len` bytes count: what follows them in the buffer is not looked at.
    assert!(is_request_prefix(&head(b"GXXX"), 1));
}

#[test]
fn a_packed_prefix_keeps_its_bytes_and_length() {
    let packed = head_prefix::of(&head(b"HTTP/1.1 20"), 11);
    assert_eq!(head_prefix::len(&packed), 11);
    let [low, high] = head_prefix::bytes(&packed);
    assert_eq!(low.to_le_bytes(), *b"HTTP/1.1");
    assert_eq!(high.to_le_bytes(), *b" 20\0\0\0\0\0");
    assert_ne!(
        head_prefix::of(&head(b"G"), 1),
        [0, 0],
        "one byte is not none"
    );
}

#[test]
fn interim_responses_are_the_1xx_but_switching_protocols() {
    assert!(is_interim(100) && is_interim(103));
    assert!(!is_interim(101) && !is_interim(200) && !is_interim(404));
}

#[test]
fn beginnings_of_a_status_line_are_status_prefixes() {
    for text in [
        &b"H"[..],
        b"HT",
        b"HTTP",
        b"HTTP/1.",
        b"HTTP/1.1",
        b"HTTP/1.0 ",
        b"HTTP/1.1 20",
    ] {
        assert!(is_status_prefix(&head(text), text.len()), "{text:?}");
    }
    for text in [
        &b"X"[..],
        b"HTTPS",
        b"http",
        b"HTTP/2",
        b"HTTP/1.x",
        b"HTTP/1.1-",
        b"HTTP/1.1 2x",
    ] {
        assert!(!is_status_prefix(&head(text), text.len()), "{text:?}");
    }
    assert!(
        !is_status_prefix(&head(b"HTTP/1.1 200"), 12),
        "a whole status line"
    );
    assert!(!is_status_prefix(&head(b""), 0));
}
