//! A client's request, as the kernel scans it for the server address (`Host`), and the
//! agent learning that address from the announcement.
//!
//! Input: a seed byte (unused, kept so the corpus stays valid), then the request's first
//! write. Checks: the scanner finds the value the plain rule finds, normalised the same way;
//! the hash is that of the bytes announced; the agent learns the address under the hash the
//! kernel counted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::{collect::http::RouteAnnouncement, model::routes::RouteRegistry};
use monitor_common::{
    head::{MAX_HOST_LEN, head_kind, scan_head},
    http::{CAPTURE_LEN, FNV_OFFSET, event_kind, fnv_bytes},
};
use monitor_fuzz::reference;

fuzz_target!(|data: &[u8]| {
    let Some((_, bytes)) = data.split_first() else {
        return;
    };
    let capture = &bytes[..bytes.len().min(CAPTURE_LEN)];
    let (_, scanner) = scan_head(head_kind::REQUEST, capture);
    let kept = &scanner.host[..usize::from(scanner.len).min(MAX_HOST_LEN)];
    let normalised = &scanner.host[..scanner.normalised_len()];
    match reference::host(capture) {
        Some(value) => {
            assert_eq!(kept, value.as_slice(), "the Host value");
            assert_eq!(normalised, reference::normalised_host(&value));
        }
        None => assert!(kept.is_empty(), "a Host found where there is none"),
    }
    let hash = scanner.hash();
    if normalised.is_empty() {
        assert_eq!(hash, 0);
    } else {
        assert_eq!(hash, fnv_bytes(FNV_OFFSET, normalised));
    }

    if hash != 0 {
        let mut registry = RouteRegistry::default();
        let now = std::time::Instant::now();
        registry.learn(
            &RouteAnnouncement {
                tgid: 1,
                route: hash,
                kind: event_kind::HOST,
                path: normalised.to_vec(),
            },
            now,
        );
        let learnt = registry
            .text(hash, now)
            .expect("the announced host is learnt");
        assert_eq!(learnt, String::from_utf8_lossy(normalised));
    }
});
