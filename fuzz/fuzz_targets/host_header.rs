//! A client's request, as the kernel scans it for the server address (`Host`), and the
//! agent learning that address from the announcement.
//!
//! Input: a seed byte (how the bytes are cut), then the request's first write.
//! Checks: the scanner finds the value the plain rule finds, normalised the same way; the
//! hash is that of the bytes announced; the state is the same however the bytes are cut; the
//! agent learns the address under the hash the kernel counted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::{collect::http::RouteAnnouncement, model::routes::RouteRegistry};
use monitor_common::{
    head::{HostScanner, MAX_HOST_LEN},
    http::{CAPTURE_LEN, FNV_OFFSET, event_kind, fnv_bytes},
};
use monitor_fuzz::{reads::split, reference};

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let capture = &bytes[..bytes.len().min(CAPTURE_LEN)];
    let mut scanner = HostScanner::new();
    for &b in capture {
        if !scanner.feed(b) {
            break;
        }
    }
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

    let mut pieces = HostScanner::new();
    'writes: for write in split(capture, seed, CAPTURE_LEN) {
        let mut resumed = pieces;
        for &b in write {
            if !resumed.feed(b) {
                pieces = resumed;
                break 'writes;
            }
        }
        pieces = resumed;
    }
    assert_eq!(pieces, scanner);

    if hash != 0 {
        let mut registry = RouteRegistry::default();
        registry.learn(&RouteAnnouncement {
            tgid: 1,
            route: hash,
            kind: event_kind::HOST,
            path: normalised.to_vec(),
        });
        let learnt = registry.text(hash).expect("the announced host is learnt");
        assert_eq!(learnt, String::from_utf8_lossy(normalised));
    }
});
