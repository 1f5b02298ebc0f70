//! A ring-buffer record, decoded by the agent and learnt as a route or server address.
//!
//! Input: the record's bytes (an `HttpEvent` is 208 bytes; shorter ones are skipped).
//! Checks: decoding never reads past the record or the path; a route is learnt exactly when
//! its path gives the announced hash, and then under the text that hash is of.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::{
    collect::http::{Event, decode_event},
    model::routes::RouteRegistry,
};
use monitor_common::http::{
    FNV_OFFSET, HttpEvent, MAX_PATH_LEN, OVERFLOW_ROUTE_HASH, event_kind, fnv_bytes, template_route,
};

fuzz_target!(|data: &[u8]| {
    let Some(event) = decode_event(data) else {
        assert!(data.len() < size_of::<HttpEvent>());
        return;
    };
    let Event::Route(announcement) = event else {
        return;
    };
    assert!(announcement.path.len() <= MAX_PATH_LEN);
    let expected = match announcement.kind {
        event_kind::HOST => fnv_bytes(FNV_OFFSET, &announcement.path),
        event_kind::COLLAPSED => template_route(&announcement.path).collapsed_hash,
        _ => template_route(&announcement.path).hash,
    };
    let mut registry = RouteRegistry::default();
    registry.learn(&announcement);
    let matches = expected == announcement.route;
    assert_eq!(registry.mismatches, u64::from(!matches));
    match registry.text(announcement.route) {
        Some(text) if announcement.kind != event_kind::HOST => {
            assert_eq!(fnv_bytes(FNV_OFFSET, text.as_bytes()), announcement.route)
        }
        Some(_) => {}
        None => assert!(!matches && announcement.route != OVERFLOW_ROUTE_HASH),
    }
});
