//! A server's request line, read by the kernel and named by the agent.
//!
//! Input: a seed byte (how the bytes are cut into reads), then the bytes a server reads.
//! Checks: the method parser agrees with the plain rule, and so does the check of a read too
//! short to tell (held for the next); the route is the same however the
//! line is cut into reads (the templater's state is kept in the connection between them);
//! the agent, from the path bytes the kernel announces, learns exactly the route and the
//! collapsed route the kernel counted; the route text keeps every template invariant; the
//! first read's fingerprint exists exactly when the templater ends early in that read, and
//! a read changed in one byte keeps its fingerprint only if it keeps its route.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::{collect::http::RouteAnnouncement, model::routes::RouteRegistry};
use monitor_common::{
    fingerprint::{self, TARGET_WORDS},
    http::{
        CAPTURE_LEN, Fed, RouteTemplater, event_kind, is_request_prefix, parse_request_start,
        template_route,
    },
};
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
        // Held for the next read only when it can still become a request line.
        assert_eq!(
            is_request_prefix(&head, first.len()),
            reference::request_prefix(first),
            "{head:?}"
        );
        return;
    };
    assert!(target < first.len(), "the target starts past the read");
    check_fingerprint(first, target, seed);
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
        let now = std::time::Instant::now();
        registry.learn(
            &RouteAnnouncement {
                tgid: 1,
                route: hash,
                kind,
                path: counted.announced.clone(),
            },
            now,
        );
        assert_eq!(
            registry.text(hash, now),
            Some(text.as_str()),
            "announced {:?}",
            String::from_utf8_lossy(&counted.announced)
        );
    }
});

/// The kernel's capture of `read`: its bytes, then what an earlier read left there.
fn capture_of(read: &[u8]) -> [u8; CAPTURE_LEN] {
    let mut capture = [0xa5; CAPTURE_LEN];
    capture[..read.len()].copy_from_slice(read);
    capture
}

fn print_of(capture: &[u8; CAPTURE_LEN], target: usize, len: usize) -> u64 {
    let word = |i: usize| u64::from_le_bytes(capture[i * 8..i * 8 + 8].try_into().unwrap());
    fingerprint::request_target(word, target, len, 0x5eed)
}

/// The route template of the target at `target`, if it ends in `read`.
fn template_in(read: &[u8], target: usize) -> Option<(u64, usize)> {
    let mut templater = RouteTemplater::new();
    for (at, &b) in read.iter().enumerate().skip(target) {
        if templater.feed(b, &mut ()) == Fed::End {
            return Some((templater.finish(&mut ()), at));
        }
    }
    None
}

fn check_fingerprint(read: &[u8], target: usize, seed: u8) {
    let capture = capture_of(read);
    let print = print_of(&capture, target, read.len());
    let template = template_in(read, target);
    let early = template.is_some_and(|(_, end)| end < TARGET_WORDS * 8);
    assert_eq!(
        print != 0,
        early,
        "target at {target}, ends at {template:?}"
    );
    if print == 0 {
        return;
    }
    // One byte changed (where the seed says): the same print must mean the same route.
    let mut changed = read.to_vec();
    let at = usize::from(seed) % changed.len();
    changed[at] = changed[at].wrapping_add(1 + (seed >> 4));
    let changed_print = print_of(&capture_of(&changed), target, changed.len());
    if changed_print == print {
        assert_eq!(
            template_in(&changed, target).map(|(hash, _)| hash),
            template.map(|(hash, _)| hash),
            "byte {at} changed, print kept"
        );
    }
}
