//! Unit tests: decoding ring-buffer records, the observations the kernel carried, and what
//! an exited process's open connection is worth.

use monitor_common::{
    head::framing,
    http::{
        EVENT_KIND_OFFSET, HttpEvent, MAX_DURATION_BOUNDS, MAX_PATH_LEN, ObservationEvent,
        conn_flags, event_kind, phase,
    },
};

use super::*;
use crate::collect::http_events::{CarriedObservations, MAX_CARRIED_KEYS};

fn record(kind: u8, route: u64, path: &[u8], path_len: u16) -> Vec<u8> {
    let mut event = HttpEvent {
        route,
        tgid: 7,
        path_len,
        kind,
        _reserved: 0,
        path: [0; MAX_PATH_LEN],
    };
    event.path[..path.len()].copy_from_slice(path);
    // SAFETY: HttpEvent is plain integers without padding.
    let bytes = unsafe {
        std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<HttpEvent>())
    };
    bytes.to_vec()
}

#[test]
fn records_decode_to_routes_and_listeners() {
    assert_eq!(
        decode_event(&record(event_kind::TEMPLATE, 42, b"/a", 2)),
        Some(Event::Route(RouteAnnouncement {
            tgid: 7,
            route: 42,
            kind: event_kind::TEMPLATE,
            path: b"/a".to_vec(),
        }))
    );
    assert_eq!(
        decode_event(&record(event_kind::LISTENER, 5, b"", 0)),
        Some(Event::Listener { tgid: 7, fd: 5 })
    );
}

fn observation(route: u64, bucket: u8, duration_ns: u64) -> ObservationEvent {
    ObservationEvent {
        route,
        tgid: 7,
        status: 200,
        kind: event_kind::OBSERVATION,
        method: 1,
        role: role::SERVER,
        bucket,
        _reserved: [0; 6],
        duration_ns,
    }
}

#[test]
fn observation_records_decode_by_their_kind() {
    let event = observation(42, 3, 1_500);
    // SAFETY: ObservationEvent is plain integers without padding.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&raw const event).cast::<u8>(),
            size_of::<ObservationEvent>(),
        )
    };
    assert_eq!(decode_event(bytes), Some(Event::Observation(event)));
    assert_eq!(decode_event(&bytes[..bytes.len() - 1]), None);
    assert_eq!(decode_event(&bytes[..EVENT_KIND_OFFSET]), None);
}

#[test]
fn carried_observations_add_to_the_kernels_counts_of_their_key() {
    let mut carried = CarriedObservations::default();
    carried.add(&observation(1, 0, 10));
    carried.add(&observation(1, 2, 30));
    carried.add(&observation(2, 1, 20));
    // Out of range: the last (+Inf) bucket.
    carried.add(&observation(2, u8::MAX, 40));
    let key = |route| observation(route, 0, 0).key();
    let mut in_kernel = DurationCounts::default();
    in_kernel.buckets[0] = 5;
    in_kernel.sum_ns = 100;
    let mut durations = vec![(key(1), in_kernel)];
    carried.add_to(&mut durations);
    assert_eq!(durations.len(), 2);
    let (first, counts) = durations[0];
    assert_eq!(first, key(1));
    assert_eq!(
        (counts.buckets[0], counts.buckets[2], counts.sum_ns),
        (6, 1, 140)
    );
    let (second, counts) = durations[1];
    assert_eq!(second, key(2));
    assert_eq!(counts.buckets[1], 1);
    assert_eq!(counts.buckets[MAX_DURATION_BOUNDS], 1);
    assert_eq!((counts.count(), counts.sum_ns), (2, 60));
    // Running totals: read again, the same.
    let mut again = vec![(key(1), in_kernel)];
    carried.add_to(&mut again);
    assert_eq!(again, durations);
    carried.forget(&key(2));
    let mut after = Vec::new();
    carried.add_to(&mut after);
    assert_eq!(after.len(), 1);
    assert_eq!(carried.lost(), 0);
}

#[test]
fn carried_keys_are_bounded() {
    let mut carried = CarriedObservations::default();
    for route in 0..MAX_CARRIED_KEYS as u64 + 3 {
        carried.add(&observation(route, 0, 1));
    }
    // A key already held still counts.
    carried.add(&observation(0, 0, 1));
    assert_eq!(carried.lost(), 3);
    let mut durations = Vec::new();
    carried.add_to(&mut durations);
    assert_eq!(durations.len(), MAX_CARRIED_KEYS);
    assert_eq!(durations[0].1.count(), 2);
}

#[test]
fn short_records_and_overlong_lengths_are_harmless() {
    let whole = record(event_kind::HOST, 1, b"x", u16::MAX);
    assert_eq!(decode_event(&whole[..whole.len() - 1]), None);
    let Some(Event::Route(announcement)) = decode_event(&whole) else {
        panic!("not a route");
    };
    assert_eq!(announcement.path.len(), MAX_PATH_LEN);
}

fn connection(role_: u8, phase_: u64, framing_: u16, last_io_ns: u64) -> Connection {
    Connection {
        phase: phase_,
        framing: framing_,
        last_io_ns,
        ..Connection::new(role_)
    }
}

const SECOND: u64 = 1_000_000_000;

#[test]
fn a_dead_process_s_idle_connection_is_freed_without_loss() {
    let idle = connection(role::SERVER, phase::IDLE, 0, 0);
    assert_eq!(
        dead_connection(&idle, 100 * SECOND, SECOND),
        DeadConnection::Free
    );
}

#[test]
fn a_written_response_waits_for_the_idle_sweep_then_counts_if_it_never_ended() {
    let written = connection(role::SERVER, phase::RESPONSE, framing::UNKNOWN, 10 * SECOND);
    // 1 s timeout: the kernel's sweep ends it within two epochs; the margin is 2 s.
    for now in [10 * SECOND, 13 * SECOND, 14 * SECOND - 1] {
        assert_eq!(
            dead_connection(&written, now, SECOND),
            DeadConnection::Wait,
            "{now}"
        );
    }
    assert_eq!(
        dead_connection(&written, 14 * SECOND, SECOND),
        DeadConnection::FreeInFlight
    );
    // With the kernel's sweep off, nothing would ever end it.
    assert_eq!(
        dead_connection(&written, 10 * SECOND, 0),
        DeadConnection::FreeInFlight
    );
}

#[test]
fn requests_without_an_end_the_kernel_could_still_see_are_in_flight() {
    let now = 10 * SECOND;
    for (role_, phase_, framing_) in [
        (role::SERVER, phase::REQUEST, framing::UNKNOWN),
        (role::SERVER, phase::REQUEST_LINE, framing::UNKNOWN),
        (role::CLIENT, phase::REQUEST, framing::UNKNOWN),
        // A client reading a response of known length: only its bytes could end it.
        (role::CLIENT, phase::RESPONSE, framing::LENGTH),
        (role::CLIENT, phase::RESPONSE, framing::CHUNKED),
        // A response read whole before its request's write returned.
        (role::CLIENT, phase::ANSWERED, framing::LENGTH),
    ] {
        let open = connection(role_, phase_, framing_, now);
        assert_eq!(
            dead_connection(&open, now, SECOND),
            DeadConnection::FreeInFlight,
            "{role_} {phase_} {framing_}"
        );
    }
}

#[test]
fn a_client_response_read_before_its_request_was_written_is_in_flight() {
    let now = 10 * SECOND;
    let mut early = connection(role::CLIENT, phase::RESPONSE, framing::UNKNOWN, now);
    early.flags = conn_flags::ANSWERED_EARLY;
    assert_eq!(
        dead_connection(&early, now, SECOND),
        DeadConnection::FreeInFlight
    );
}

#[test]
fn in_flight_counts_go_to_their_role() {
    let mut counts = InFlightAtExit::default();
    counts.count(role::SERVER);
    counts.count(role::CLIENT);
    counts.count(role::CLIENT);
    let mut total = InFlightAtExit {
        server: 1,
        client: 0,
    };
    total.add(counts);
    assert_eq!(
        total,
        InFlightAtExit {
            server: 2,
            client: 2
        }
    );
}
