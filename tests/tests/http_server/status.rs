//! Every status counted exactly, with Python's, Node's and Go's servers, also when the kernel
//! cannot allocate a request's histogram and carries the request to the agent instead.

use std::collections::BTreeMap;

use monitor_tests::{
    MonitorAgent,
    http::{SERVER_DURATION, client, get, server_count, service_total},
    poll_until,
    servers::{Server, ab},
};

use super::{NGINX_LOCATIONS, WAIT, counter, wait_for_count};

/// 200×7, 201×3, 204×2, 301×4, 404×5, 500×6, 503×1 on one keep-alive connection.
fn status_mix(server: &Server, agent: &MonitorAgent) {
    let mix = [
        (200u16, 7u64),
        (201, 3),
        (204, 2),
        (301, 4),
        (404, 5),
        (500, 6),
        (503, 1),
    ];
    let client = client();
    for (status, times) in mix {
        for _ in 0..times {
            assert_eq!(
                get(&client, &server.url(&format!("/status/{status}"))),
                status
            );
        }
    }
    let expected: BTreeMap<u16, u64> = mix.into_iter().collect();
    poll_until("every status counted exactly", WAIT, || {
        let scrape = agent.scrape();
        let counted: BTreeMap<u16, u64> = expected
            .keys()
            .filter_map(|&s| {
                Some((
                    s,
                    server_count(&scrape, &server.service, s, "/status/{id}")?,
                ))
            })
            .collect();
        (counted == expected).then_some(())
    });
}

#[test]
fn status_codes_are_counted_exactly_python() {
    let agent = MonitorAgent::start(&[]);
    status_mix(&Server::python(), &agent);
}

/// When the kernel cannot allocate a request's histogram at once (a burst of new keys can
/// empty its free list before it is refilled), the request is carried to the agent on the
/// ring buffer. Here every request is, as if no allocation ever succeeded: the counts per
/// status stay exact, durations land in their bucket, and under load nothing is lost.
#[test]
fn requests_whose_histogram_cannot_be_allocated_are_carried_and_counted_exactly() {
    let agent = MonitorAgent::start(&["--no-histogram-allocation", "--exclude-comm", "ab"]);
    let server = Server::python();
    status_mix(&server, &agent);
    let client = client();
    for _ in 0..3 {
        assert_eq!(get(&client, &server.url("/sleep/100")), 200);
    }
    let scrape = wait_for_count(&agent, &server.service, 200, "/sleep/{id}", 3);
    let labels = [
        ("service_name", server.service.as_str()),
        ("http_route", "/sleep/{id}"),
    ];
    let buckets = scrape.histogram(SERVER_DURATION, &labels).unwrap();
    let at = |bound: f64| buckets.iter().find(|(le, _)| *le == bound).unwrap().1;
    assert_eq!((at(0.1), at(0.25)), (0, 3), "buckets: {buckets:?}");
    let nginx = Server::nginx(NGINX_LOCATIONS);
    assert_eq!(ab(&nginx.url("/ok"), 20_000, 16), 20_000);
    let scrape = wait_for_count(&agent, "nginx", 200, "/ok", 20_000);
    let python_requests = 28 + 3;
    assert_eq!(service_total(&scrape, "nginx"), 20_000);
    assert_eq!(service_total(&scrape, &server.service), python_requests);
    // Every request recorded was carried, server side and client side (this test's own
    // requests, its scrapes included).
    let recorded = counter(&scrape, "monitor_http_requests_recorded_total");
    assert_eq!(recorded, (20_000 + python_requests) as f64);
    let client_recorded = counter(&scrape, "monitor_http_client_requests_recorded_total");
    assert!(client_recorded >= python_requests as f64);
    assert_eq!(
        counter(&scrape, "monitor_http_observations_carried_total"),
        recorded + client_recorded
    );
    let lost = [("reason", "observation_lost")];
    assert_eq!(
        scrape.value("monitor_http_events_dropped_total", &lost),
        Some(0.0)
    );
}

#[test]
fn status_codes_are_counted_exactly_node() {
    let agent = MonitorAgent::start(&[]);
    status_mix(&Server::node(), &agent);
}

/// Go's net/http makes its syscalls itself (no libc) from whichever thread runs the
/// goroutine, and accepts and reads through its own poller.
#[test]
fn status_codes_are_counted_exactly_go() {
    let agent = MonitorAgent::start(&[]);
    status_mix(&Server::go(), &agent);
}
