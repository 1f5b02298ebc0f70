//! A ring-buffer record, decoded by the agent and learnt as a route or server address.
//!
//! Input: the record's bytes (an `HttpEvent` is 208 bytes, an `ObservationEvent` 32; shorter
//! ones are skipped). Checks: decoding never reads past the record or the path; a carried
//! observation adds one request to its key, whatever its bucket; a route is learnt exactly when
//! its path (whole, or cut when it is as long as an announcement can be) gives the announced
//! hash, and then under the text that hash is of.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::{
    collect::{
        http::{Event, decode_event},
        http_events::CarriedObservations,
    },
    model::routes::RouteRegistry,
};
use monitor_common::http::{
    FNV_OFFSET, HttpEvent, MAX_PATH_LEN, OVERFLOW_ROUTE_HASH, Template, event_kind, fnv_bytes,
    template_cut_route, template_route,
};

fuzz_target!(|data: &[u8]| {
    let Some(event) = decode_event(data) else {
        assert!(data.len() < size_of::<HttpEvent>());
        return;
    };
    if let Event::Observation(observation) = &event {
        let mut carried = CarriedObservations::default();
        carried.add(observation);
        let mut durations = Vec::new();
        carried.add_to(&mut durations);
        assert_eq!(durations.len(), 1);
        assert_eq!(durations[0].0, observation.key());
        assert_eq!(durations[0].1.count(), 1);
        return;
    }
    let Event::Route(announcement) = event else {
        return;
    };
    assert!(announcement.path.len() <= MAX_PATH_LEN);
    let path = &announcement.path;
    let hash_of = |template: Template| match announcement.kind {
        event_kind::COLLAPSED => template.collapsed_hash,
        _ => template.hash,
    };
    // A path of the most bytes announced may have gone on: then the kernel counted it cut.
    let matches = match announcement.kind {
        event_kind::HOST => fnv_bytes(FNV_OFFSET, path) == announcement.route,
        _ => {
            hash_of(template_route(path)) == announcement.route
                || (path.len() >= MAX_PATH_LEN
                    && hash_of(template_cut_route(path)) == announcement.route)
        }
    };
    let mut registry = RouteRegistry::default();
    let now = std::time::Instant::now();
    registry.learn(&announcement, now);
    assert_eq!(registry.mismatches, u64::from(!matches));
    match registry.text(announcement.route, now) {
        Some(text) if announcement.kind != event_kind::HOST => {
            assert_eq!(fnv_bytes(FNV_OFFSET, text.as_bytes()), announcement.route)
        }
        Some(_) => {}
        None => assert!(!matches && announcement.route != OVERFLOW_ROUTE_HASH),
    }
});
