//! Routes: each request on a connection gets its own, a long path is cut, random ids and
//! fanned-out words collapse within the budget, and no announcement is lost or repeated.

use monitor_tests::{
    MonitorAgent, Scrape,
    churn::{distinct_paths, word},
    http::{
        SERVER_DURATION, client, connect, get, read_responses, send, server_count, service_total,
    },
    poll_until,
    servers::{Server, ab},
};

use super::{NGINX_LOCATIONS, WAIT, counter, wait_for_count};

#[test]
fn requests_on_one_connection_each_get_their_own_route() {
    // The kernel reuses the route of the last request line when the next one on the
    // connection has the same bytes: every change of path must still be seen.
    let agent = MonitorAgent::start(&[]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let paths = [
        "/ok",
        "/ok",
        "/docs/alpha",
        "/ok",
        "/docs/alpha",
        "/docs/alpha",
        "/docs/beta",
        "/ok?page=2",
        "/missing",
        "/ok",
    ];
    let mut stream = connect(nginx.port);
    for path in paths {
        send(
            &mut stream,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
        read_responses(&mut stream, 1);
    }
    drop(stream);
    wait_for_count(&agent, "nginx", 200, "/ok", 5);
    wait_for_count(&agent, "nginx", 200, "/docs/alpha", 3);
    wait_for_count(&agent, "nginx", 200, "/docs/beta", 1);
    wait_for_count(&agent, "nginx", 404, "/missing", 1);
}

#[test]
fn a_path_longer_than_the_kernel_keeps_is_counted_under_its_cut_route() {
    // 255 path bytes; the kernel templates 192 (`/docs`, 37 × `/page`, `/p`), sees that the
    // path goes on, drops the unfinished `p` for `/{*}` and announces the 192: the agent must
    // rebuild that cut route from them.
    let agent = MonitorAgent::start(&[]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let path = format!("/docs{}", "/page".repeat(50));
    assert_eq!(get(&client(), &nginx.url(&path)), 200);
    let route = format!("/docs{}/{{*}}", "/page".repeat(37));
    wait_for_count(&agent, "nginx", 200, &route, 1);
}

#[test]
fn ten_thousand_random_ids_make_one_route() {
    let agent = MonitorAgent::start(&[]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let client = client();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..10_000u64 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let id = match i % 3 {
            0 => format!("{}", state % 10_000_000),
            1 => format!("{:016x}", state),
            _ => format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                state as u32,
                (state >> 32) as u16,
                (state >> 48) as u16,
                state as u16,
                state & 0xffff_ffff_ffff
            ),
        };
        assert_eq!(get(&client, &nginx.url(&format!("/users/{id}"))), 200);
    }
    let scrape = wait_for_count(&agent, "nginx", 200, "/users/{id}", 10_000);
    let routes = scrape.label_values(SERVER_DURATION, &[("service_name", "nginx")], "http_route");
    assert_eq!(routes, ["/users/{id}"]);
}

#[test]
fn a_thousand_word_paths_stay_within_the_route_budget() {
    let budget = 40;
    let agent = MonitorAgent::start(&["--route-budget", &budget.to_string()]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let client = client();
    for n in 0..1000 {
        assert_eq!(get(&client, &nginx.url(&format!("/docs/{}", word(n)))), 200);
    }
    let scrape = poll_until("all 1000 requests counted", WAIT, || {
        let scrape = agent.scrape();
        (service_total(&scrape, "nginx") == 1000).then_some(scrape)
    });
    let routes = scrape.label_values(SERVER_DURATION, &[("service_name", "nginx")], "http_route");
    assert!(
        routes.len() <= budget,
        "{} routes for a budget of {budget}",
        routes.len()
    );
    // The fanned-out segment collapses into one template rather than overflowing.
    assert!(routes.contains(&"/docs/{*}".to_owned()), "{routes:?}");
    let collapsed = server_count(&scrape, "nginx", 200, "/docs/{*}").unwrap();
    assert_eq!(collapsed as usize, 1000 - (routes.len() - 1));
    let limited = scrape.value(
        "monitor_http_routes_limited_total",
        &[("outcome", "collapsed")],
    );
    assert_eq!(limited, Some(collapsed as f64));
}

/// More new routes between two refreshes than the announcement ring holds (1 MiB, some 4,800):
/// the kernel wakes the agent's reader when the ring is half full, so none is lost. The
/// agent refreshes only when scraped here, once the burst is over.
#[test]
fn a_burst_of_new_routes_larger_than_the_ring_loses_no_announcement() {
    let routes = 7_000;
    let agent = MonitorAgent::start(&[
        "--refresh-interval",
        "1h",
        // A quarter of a budget is kept for collapsed forms: all of these fit as templates.
        "--route-budget",
        &(routes * 2).to_string(),
        // One bucket: the series stay few lines each.
        "--duration-buckets",
        "1",
    ]);
    // One worker: each route is announced once.
    let nginx = Server::nginx_with_workers(1, NGINX_LOCATIONS);
    assert_eq!(
        distinct_paths(nginx.port, "docs", 0, routes, 4, 200),
        routes
    );
    let lost = |scrape: &Scrape| {
        scrape
            .value(
                "monitor_http_events_dropped_total",
                &[("reason", "route_event_lost")],
            )
            .unwrap()
    };
    // A lost announcement would hold its route's counts back in the kernel for a while.
    let scrape = poll_until(
        "every request counted, or an announcement lost",
        WAIT,
        || {
            let scrape = agent.scrape();
            (service_total(&scrape, "nginx") == routes as u64 || lost(&scrape) > 0.0)
                .then_some(scrape)
        },
    );
    assert_eq!(lost(&scrape), 0.0);
    let templates =
        scrape.label_values(SERVER_DURATION, &[("service_name", "nginx")], "http_route");
    assert_eq!(templates.len(), routes, "{:?}", &templates[..10]);
    assert!(templates.contains(&format!("/docs/{}", word(routes - 1))));
}

#[test]
fn steady_traffic_on_known_routes_adds_no_ring_buffer_records() {
    // ab runs as a new process each time, and a client process announces its server address
    // once: leave the client side out, this is about the server's routes.
    let agent = MonitorAgent::start(&["--exclude-comm", "ab"]);
    // One worker: routes are announced once per process, and a second worker's first request
    // would be a (legitimate) new announcement.
    let nginx = Server::nginx_with_workers(1, NGINX_LOCATIONS);
    ab(&nginx.url("/ok"), 100, 4);
    let warm = wait_for_count(&agent, "nginx", 200, "/ok", 100);
    let events = counter(&warm, "monitor_http_route_events_total");
    assert_eq!(ab(&nginx.url("/ok"), 10_000, 16), 10_000);
    let after = wait_for_count(&agent, "nginx", 200, "/ok", 10_100);
    assert_eq!(counter(&after, "monitor_http_route_events_total"), events);
}
