use std::collections::HashSet;

use monitor_common::http::{FNV_OFFSET, event_kind, fnv_bytes, method, role, template_route};

use super::*;
use crate::collect::http::RouteAnnouncement;
use crate::collect::process::Service;

struct Facts {
    alive: HashSet<u32>,
}

impl HttpFacts for Facts {
    fn is_alive(&self, tgid: u32) -> bool {
        self.alive.contains(&tgid)
    }
    fn identity(&self, tgid: u32) -> ProcessIdentity {
        // Processes 1 and 2 are two workers of one service.
        let service = if tgid <= 2 { "nginx" } else { "other" };
        ProcessIdentity {
            executable: service.to_owned(),
            service: Service::named(service),
            incomplete: false,
        }
    }
}

fn alive(pids: &[u32]) -> Facts {
    Facts {
        alive: pids.iter().copied().collect(),
    }
}

fn key(tgid: u32, path: &str, status: u16) -> DurationKey {
    DurationKey {
        tgid,
        status,
        method: method::GET,
        role: role::SERVER,
        route: template_route(path.as_bytes()).hash,
    }
}

fn counts(n: u64) -> DurationCounts {
    let mut counts = DurationCounts::default();
    counts.buckets[2] = n;
    counts.sum_ns = n * 1000;
    counts
}

fn announce(tgid: u32, path: &str) -> RouteAnnouncement {
    RouteAnnouncement {
        tgid,
        route: template_route(path.as_bytes()).hash,
        kind: event_kind::TEMPLATE,
        path: path.as_bytes().to_vec(),
    }
}

/// Process `tgid`'s `n` requests to `path` answered `status`, the route's text announced.
fn one_route(tgid: u32, path: &str, status: u16, n: u64) -> HttpSnapshot {
    HttpSnapshot {
        durations: vec![(key(tgid, path, status), counts(n))],
        announcements: vec![announce(tgid, path)],
        ..HttpSnapshot::default()
    }
}

fn count_of(ledger: &HttpLedger, service: &str, route: &str, status: u16) -> Option<u64> {
    ledger
        .series()
        .find(|(k, _)| k.service.name == service && k.target == route && k.status == status)
        .map(|(_, c)| c.count())
}

#[test]
fn workers_of_one_service_add_up_per_route_and_status() {
    let mut ledger = HttpLedger::new(Duration::from_secs(300), 200, 100);
    let snapshot = HttpSnapshot {
        durations: vec![
            (key(1, "/users/1", 200), counts(3)),
            (key(2, "/users/2", 200), counts(4)),
            (key(2, "/users/3", 404), counts(1)),
        ],
        announcements: vec![announce(1, "/users/1")],
        ..HttpSnapshot::default()
    };
    ledger.apply(&snapshot, &alive(&[1, 2]), Instant::now());
    assert_eq!(count_of(&ledger, "nginx", "/users/{id}", 200), Some(7));
    assert_eq!(count_of(&ledger, "nginx", "/users/{id}", 404), Some(1));
}

#[test]
fn counts_wait_in_the_kernel_until_the_route_is_known() {
    let mut ledger = HttpLedger::new(Duration::from_secs(300), 200, 100);
    let t0 = Instant::now();
    let first = HttpSnapshot {
        durations: vec![(key(1, "/a", 200), counts(5))],
        ..HttpSnapshot::default()
    };
    ledger.apply(&first, &alive(&[1]), t0);
    assert_eq!(ledger.series().count(), 0);
    let second = HttpSnapshot {
        durations: vec![(key(1, "/a", 200), counts(6))],
        announcements: vec![announce(1, "/a")],
        ..HttpSnapshot::default()
    };
    ledger.apply(&second, &alive(&[1]), t0);
    assert_eq!(count_of(&ledger, "nginx", "/a", 200), Some(6));
}

#[test]
fn a_lost_announcement_is_asked_for_again() {
    let mut ledger = HttpLedger::new(Duration::from_secs(300), 200, 100);
    let snapshot = HttpSnapshot {
        durations: vec![(key(1, "/lost", 200), counts(1))],
        ..HttpSnapshot::default()
    };
    let mut asked = Vec::new();
    for _ in 0..REANNOUNCE_AFTER {
        asked.extend(
            ledger
                .apply(&snapshot, &alive(&[1]), Instant::now())
                .reannounce,
        );
    }
    let lost = (1, key(1, "/lost", 200).route, role::SERVER);
    assert_eq!(asked, vec![lost]);
    // The re-announcement may be lost as well: asked for again, as long as the text is
    // missing.
    for _ in 0..REANNOUNCE_AFTER {
        asked.extend(
            ledger
                .apply(&snapshot, &alive(&[1]), Instant::now())
                .reannounce,
        );
    }
    assert_eq!(asked, vec![lost, lost]);
}

#[test]
fn exited_process_entries_are_read_once_more_then_freed() {
    let mut ledger = HttpLedger::new(Duration::from_secs(300), 200, 100);
    let t0 = Instant::now();
    let k = key(3, "/x", 500);
    let with = |n| one_route(3, "/x", 500, n);
    ledger.apply(&with(2), &alive(&[3]), t0);
    // Found gone after the read of 5: it may have recorded more before it exited (here 2),
    // so its entry is read once more before it is freed.
    let cleanup = ledger.apply(&with(5), &alive(&[]), t0);
    assert_eq!(cleanup.forget, vec![]);
    assert_eq!(count_of(&ledger, "other", "/x", 500), Some(5));
    let cleanup = ledger.apply(&with(7), &alive(&[]), t0);
    assert_eq!(cleanup.forget, vec![k]);
    assert_eq!(count_of(&ledger, "other", "/x", 500), Some(7));
    // A new process reusing the key starts from zero in the kernel: no double count.
    ledger.apply(&with(1), &alive(&[3]), t0);
    assert_eq!(count_of(&ledger, "other", "/x", 500), Some(8));
}

/// The kernel's idle sweep ends the response an exited process left waiting up to about
/// twice the idle timeout after the exit: its entries are read until then, not freed at the
/// first read after the exit was seen, where that late recording could fall between the read
/// and the free and be lost.
#[test]
fn exited_process_entries_are_read_until_the_kernel_can_record_no_more() {
    let after = Duration::from_secs(4);
    let mut ledger =
        HttpLedger::new(Duration::from_secs(300), 200, 100).with_final_read_after(after);
    let t0 = Instant::now();
    let k = key(3, "/x", 500);
    let with = |n| one_route(3, "/x", 500, n);
    ledger.apply(&with(2), &alive(&[3]), t0);
    let mut freed_at = None;
    // Refreshes once a second; the sweep records one more request 3 s after the exit.
    for second in 1..=6u64 {
        let n = if second >= 4 { 6 } else { 5 };
        let cleanup = ledger.apply(&with(n), &alive(&[]), t0 + Duration::from_secs(second));
        if !cleanup.forget.is_empty() {
            assert_eq!(cleanup.forget, vec![k]);
            freed_at = Some(second);
            break;
        }
    }
    // First found gone at second 1: freed at the first read at least 4 s after that.
    assert_eq!(freed_at, Some(5));
    assert_eq!(count_of(&ledger, "other", "/x", 500), Some(6));
    // A process that comes back (a pid reused) is alive again: nothing is freed.
    let mut ledger =
        HttpLedger::new(Duration::from_secs(300), 200, 100).with_final_read_after(after);
    ledger.apply(&with(2), &alive(&[]), t0);
    ledger.apply(&with(2), &alive(&[3]), t0 + Duration::from_secs(3));
    let cleanup = ledger.apply(&with(2), &alive(&[]), t0 + Duration::from_secs(5));
    assert!(
        cleanup.forget.is_empty(),
        "gone again since 5 s, not since 0 s"
    );
}

#[test]
fn routes_beyond_the_service_budget_overflow_the_busiest_kept_first() {
    let mut ledger = HttpLedger::new(Duration::from_secs(300), 1, 100);
    let snapshot = HttpSnapshot {
        durations: vec![
            (key(1, "/a", 200), counts(1)),
            (key(1, "/b", 200), counts(2)),
        ],
        announcements: vec![announce(1, "/a"), announce(1, "/b")],
        ..HttpSnapshot::default()
    };
    ledger.apply(&snapshot, &alive(&[1]), Instant::now());
    // Both new in one refresh: /b has more requests, so /b keeps its series.
    assert_eq!(count_of(&ledger, "nginx", "/b", 200), Some(2));
    assert_eq!(count_of(&ledger, "nginx", OVERFLOW_ROUTE, 200), Some(1));
    assert_eq!(ledger.overflowed, 1);
    // Once admitted, a route keeps its series even when others become busier.
    let later = HttpSnapshot {
        durations: vec![
            (key(1, "/a", 200), counts(50)),
            (key(1, "/b", 200), counts(3)),
        ],
        announcements: vec![],
        ..HttpSnapshot::default()
    };
    ledger.apply(&later, &alive(&[1]), Instant::now());
    assert_eq!(count_of(&ledger, "nginx", "/b", 200), Some(3));
    assert_eq!(count_of(&ledger, "nginx", OVERFLOW_ROUTE, 200), Some(50));
}

#[test]
fn series_without_updates_expire_after_the_grace_period() {
    let mut ledger = HttpLedger::new(Duration::from_secs(60), 200, 100);
    let t0 = Instant::now();
    let snapshot = HttpSnapshot {
        durations: vec![(key(3, "/x", 200), counts(1))],
        announcements: vec![announce(3, "/x")],
        ..HttpSnapshot::default()
    };
    ledger.apply(&snapshot, &alive(&[]), t0);
    let empty = HttpSnapshot::default();
    ledger.apply(&empty, &alive(&[]), t0 + Duration::from_secs(59));
    assert_eq!(ledger.series().count(), 1);
    ledger.apply(&empty, &alive(&[]), t0 + Duration::from_secs(61));
    assert_eq!(ledger.series().count(), 0);
}

#[test]
fn a_grace_of_zero_keeps_the_series_of_a_live_process() {
    let mut ledger = HttpLedger::new(Duration::ZERO, 200, 100);
    let t0 = Instant::now();
    let snapshot = |n| HttpSnapshot {
        durations: vec![(key(1, "/x", 200), counts(n))],
        announcements: vec![announce(1, "/x")],
        ..HttpSnapshot::default()
    };
    ledger.apply(&snapshot(2), &alive(&[1]), t0);
    assert_eq!(count_of(&ledger, "nginx", "/x", 200), Some(2));
    // The counter keeps rising, never starts again.
    ledger.apply(&snapshot(5), &alive(&[1]), t0 + Duration::from_secs(1));
    assert_eq!(count_of(&ledger, "nginx", "/x", 200), Some(5));
}

fn client_key(tgid: u32, host: &str, status: u16) -> DurationKey {
    DurationKey {
        tgid,
        status,
        method: method::GET,
        role: role::CLIENT,
        route: if host.is_empty() {
            0
        } else {
            fnv_bytes(FNV_OFFSET, host.as_bytes())
        },
    }
}

fn announce_host(tgid: u32, host: &str) -> RouteAnnouncement {
    RouteAnnouncement {
        tgid,
        route: fnv_bytes(FNV_OFFSET, host.as_bytes()),
        kind: event_kind::HOST,
        path: host.as_bytes().to_vec(),
    }
}

fn client_count(ledger: &HttpLedger, service: &str, host: &str, status: u16) -> Option<u64> {
    ledger
        .series()
        .find(|(k, _)| {
            k.role == role::CLIENT
                && k.service.name == service
                && k.target == host
                && k.status == status
        })
        .map(|(_, c)| c.count())
}

#[test]
fn client_series_are_by_server_address_under_a_budget() {
    let mut ledger = HttpLedger::new(Duration::from_secs(300), 200, 1);
    let snapshot = HttpSnapshot {
        durations: vec![
            (client_key(3, "api.shop", 200), counts(4)),
            (client_key(3, "other.shop", 200), counts(2)),
            (client_key(3, "", 200), counts(1)),
        ],
        announcements: vec![announce_host(3, "api.shop"), announce_host(3, "other.shop")],
        ..HttpSnapshot::default()
    };
    ledger.apply(&snapshot, &alive(&[3]), Instant::now());
    assert_eq!(client_count(&ledger, "other", "api.shop", 200), Some(4));
    // The second address, and `unknown` (no Host header), are past the budget of one.
    assert_eq!(client_count(&ledger, "other", OVERFLOW_ROUTE, 200), Some(3));
}

#[test]
fn client_errors_and_connect_errors_add_up_per_service() {
    let mut ledger = HttpLedger::new(Duration::from_secs(300), 200, 100);
    let error = ClientErrorKey {
        host: fnv_bytes(FNV_OFFSET, b"api.shop"),
        tgid: 1,
        kind: monitor_common::http::client_error::CUT_OFF,
        method: method::GET,
        _reserved: 0,
    };
    let with = |errors: u64, connects: u64| HttpSnapshot {
        client_errors: vec![(error, errors)],
        connect_errors: vec![(1, connects), (2, 1)],
        announcements: vec![announce_host(1, "api.shop")],
        ..HttpSnapshot::default()
    };
    ledger.apply(&with(2, 3), &alive(&[1, 2]), Instant::now());
    let first = ledger.apply(&with(5, 4), &alive(&[2]), Instant::now());
    assert!(first.forget_client_errors.is_empty() && first.forget_connect_errors.is_empty());
    // Read once more after process 1 was found gone, then freed.
    let cleanup = ledger.apply(&with(5, 4), &alive(&[2]), Instant::now());
    let errors: Vec<_> = ledger
        .client_errors()
        .map(|(k, n)| (k.server_address.clone(), n))
        .collect();
    assert_eq!(errors, vec![("api.shop".to_owned(), 5)]);
    // Processes 1 and 2 are both `nginx`: their connect errors add up.
    let connects: Vec<_> = ledger
        .connect_errors()
        .map(|(s, n)| (s.name.clone(), n))
        .collect();
    assert_eq!(connects, vec![("nginx".to_owned(), 5)]);
    assert_eq!(cleanup.forget_client_errors, vec![error]);
    assert_eq!(cleanup.forget_connect_errors, vec![1]);
}

/// A service whose requests all fail has client error series only: its server-address
/// budget holds across refreshes all the same.
#[test]
fn the_address_budget_of_a_service_with_only_errors_holds_across_refreshes() {
    let mut ledger = HttpLedger::new(Duration::from_secs(300), 200, 1);
    let error = |host: &str| ClientErrorKey {
        host: fnv_bytes(FNV_OFFSET, host.as_bytes()),
        tgid: 3,
        kind: monitor_common::http::client_error::NO_RESPONSE,
        method: method::GET,
        _reserved: 0,
    };
    let hosts = ["first.shop", "second.shop", "third.shop"];
    let mut announcements: Vec<_> = hosts.iter().map(|h| announce_host(3, h)).collect();
    for (refresh, host) in hosts.iter().enumerate() {
        let snapshot = HttpSnapshot {
            client_errors: hosts[..=refresh].iter().map(|h| (error(h), 1)).collect(),
            announcements: if refresh == 0 {
                std::mem::take(&mut announcements)
            } else {
                Vec::new()
            },
            ..HttpSnapshot::default()
        };
        ledger.apply(&snapshot, &alive(&[3]), Instant::now());
        let addresses: HashSet<String> = ledger
            .client_errors()
            .map(|(k, _)| k.server_address.clone())
            .collect();
        // The first address keeps the budget of one; later ones overflow.
        let expected: HashSet<String> = if refresh == 0 {
            ["first.shop".to_owned()].into()
        } else {
            ["first.shop".to_owned(), OVERFLOW_ROUTE.to_owned()].into()
        };
        assert_eq!(addresses, expected, "after {host}");
    }
}

#[test]
fn client_errors_wait_for_their_server_address_to_be_announced() {
    let mut ledger = HttpLedger::new(Duration::from_secs(300), 200, 100);
    let error = ClientErrorKey {
        host: fnv_bytes(FNV_OFFSET, b"late.shop"),
        tgid: 1,
        kind: monitor_common::http::client_error::NO_RESPONSE,
        method: method::GET,
        _reserved: 0,
    };
    // Read before the announcement (drained first, so it comes a refresh later).
    let early = HttpSnapshot {
        client_errors: vec![(error, 1)],
        ..HttpSnapshot::default()
    };
    ledger.apply(&early, &alive(&[1]), Instant::now());
    assert_eq!(ledger.client_errors().count(), 0, "not under __unknown__");
    let later = HttpSnapshot {
        client_errors: vec![(error, 2)],
        announcements: vec![announce_host(1, "late.shop")],
        ..HttpSnapshot::default()
    };
    ledger.apply(&later, &alive(&[1]), Instant::now());
    let errors: Vec<_> = ledger
        .client_errors()
        .map(|(k, n)| (k.server_address.clone(), n))
        .collect();
    assert_eq!(errors, vec![("late.shop".to_owned(), 2)]);
}

/// Each process its own service (`OTEL_SERVICE_NAME=s$i`), but process 1, `app`.
struct OwnService {
    alive: HashSet<u32>,
}

impl HttpFacts for OwnService {
    fn is_alive(&self, tgid: u32) -> bool {
        self.alive.contains(&tgid)
    }
    fn identity(&self, tgid: u32) -> ProcessIdentity {
        let service = if tgid == 1 {
            "app".to_owned()
        } else {
            format!("s{tgid}")
        };
        ProcessIdentity {
            executable: "curl".to_owned(),
            service: Service::named(service),
            incomplete: false,
        }
    }
}

/// A loop of short processes, each under a new service name, each with a request, a client
/// error and a connect error: every family is bounded, the least recently updated series
/// dropped first and counted, and the series of a live process kept whole.
#[test]
fn series_of_services_gone_are_bounded_per_family() {
    let mut ledger = HttpLedger::new(Duration::from_secs(3600), 200, 100);
    let t0 = Instant::now();
    let facts = OwnService {
        alive: HashSet::from([1]),
    };
    let error = |tgid: u32| ClientErrorKey {
        host: fnv_bytes(FNV_OFFSET, b"api.shop"),
        tgid,
        kind: monitor_common::http::client_error::CUT_OFF,
        method: method::GET,
        _reserved: 0,
    };
    let processes = DURATION_SERIES_MAX as u32 + 1000;
    let tgids: Vec<u32> = (2..processes + 2).collect();
    // 1000 per refresh, a number the bounds are not multiples of: the cut falls among the
    // series of one refresh.
    for (n, batch) in tgids.chunks(1000).enumerate() {
        let mut snapshot = HttpSnapshot {
            announcements: vec![announce(1, "/x"), announce_host(1, "api.shop")],
            ..HttpSnapshot::default()
        };
        for &tgid in [1].iter().chain(batch) {
            snapshot.durations.push((key(tgid, "/x", 200), counts(1)));
            snapshot.client_errors.push((error(tgid), 1));
            snapshot.connect_errors.push((tgid, 1));
        }
        ledger.apply(&snapshot, &facts, t0 + Duration::from_secs(n as u64));
    }
    let services = processes as usize + 1;
    assert_eq!(ledger.series().count(), DURATION_SERIES_MAX);
    assert_eq!(ledger.client_errors().count(), CLIENT_ERROR_SERIES_MAX);
    assert_eq!(ledger.connect_errors().count(), CONNECT_ERROR_SERIES_MAX);
    let evicted = |max: usize| (services - max) as u64;
    assert_eq!(
        ledger.evicted,
        Evicted {
            server: evicted(DURATION_SERIES_MAX),
            client: 0,
            client_errors: evicted(CLIENT_ERROR_SERIES_MAX),
            connect_errors: evicted(CONNECT_ERROR_SERIES_MAX),
        }
    );
    // The live process's series, and the newest, stay; the oldest went first.
    let newest = format!("s{}", processes + 1);
    for service in ["app", newest.as_str()] {
        assert_eq!(count_of(&ledger, service, "/x", 200), Some(1), "{service}");
        assert!(
            ledger
                .client_errors()
                .any(|(k, n)| k.service.name == service && n == 1)
        );
        assert!(
            ledger
                .connect_errors()
                .any(|(s, n)| s.name == service && n == 1)
        );
    }
    assert_eq!(count_of(&ledger, "s2", "/x", 200), None);
}
