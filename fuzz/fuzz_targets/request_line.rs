//! A server's request line, read by the kernel and named by the agent.
//!
//! Input: a seed byte (how the bytes are cut into reads), then the bytes a server reads.
//! Checks: the method parser agrees with the plain rule; the route is the same however the
//! line is cut into reads (the templater's state is kept in the connection between them);
//! the agent, from the path bytes the kernel announces, learns exactly the route and the
//! collapsed route the kernel counted; the route text keeps every template invariant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::{collect::http::RouteAnnouncement, model::routes::RouteRegistry};
use monitor_common::http::{CAPTURE_LEN, event_kind, parse_request_start, template_route};
use monitor_fuzz::{
    reads::{head16, split},
    reference, route, server,
};

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let reads = split(bytes, seed, CAPTURE_LEN);
    let Some(first) = reads.first() else {
        return;
    };
    let head = head16(first);
    let start = parse_request_start(&head);
    assert_eq!(start, reference::request_start(&head), "{head:?}");
    let Some((_, target)) = start else {
        return;
    };
    assert!(target < first.len(), "the target starts past the read");
    let Some(counted) = server::request_line(&reads, target) else {
        return; // the line is still open
    };

    // Cut anywhere, the same route as in one piece.
    let whole = template_route(&bytes[target..]);
    assert_eq!(counted.hash, whole.hash, "cut into {} reads", reads.len());
    assert_eq!(counted.collapsed_hash, whole.collapsed_hash);
    route::check(&whole);

    // The agent rebuilds both forms from the announced bytes alone.
    for (kind, hash, text) in [
        (event_kind::TEMPLATE, whole.hash, &whole.text),
        (
            event_kind::COLLAPSED,
            whole.collapsed_hash,
            &whole.collapsed_text,
        ),
    ] {
        let mut registry = RouteRegistry::default();
        registry.learn(&RouteAnnouncement {
            tgid: 1,
            route: hash,
            kind,
            path: counted.announced.clone(),
        });
        assert_eq!(
            registry.text(hash),
            Some(text.as_str()),
            "announced {:?}",
            String::from_utf8_lossy(&counted.announced)
        );
    }
});
