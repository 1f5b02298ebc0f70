//! Counts under load equal the load generator's: nginx per status, Apache, lighttpd and Go,
//! and new connections per request that reuse the server's fds.

use monitor_tests::{
    MonitorAgent,
    http::service_total,
    servers::{STATIC_FILES, Server, ab, ab_with},
};

use super::{NGINX_LOCATIONS, wait_for_count};

#[test]
fn counts_under_load_equal_the_load_generator_per_status() {
    let agent = MonitorAgent::start(&[]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let ok = ab(&nginx.url("/ok"), 20_000, 16);
    let missing = ab(&nginx.url("/missing"), 2_000, 16);
    assert_eq!((ok, missing), (20_000, 2_000));
    wait_for_count(&agent, "nginx", 200, "/ok", 20_000);
    let scrape = wait_for_count(&agent, "nginx", 404, "/missing", 2_000);
    assert_eq!(
        service_total(&scrape, "nginx"),
        22_000,
        "nothing else, nothing twice"
    );
    for reason in ["histogram_full", "connections_full", "route_event_lost"] {
        let labels = [("reason", reason)];
        assert_eq!(
            scrape.value("monitor_http_events_dropped_total", &labels),
            Some(0.0)
        );
    }
}

/// A static server's small files, missing ones and large ones (sent with sendfile) under
/// load: counted exactly, each under its own route and status, nothing else.
fn static_server_counts_equal_the_load_generator(server: &Server) {
    let agent = MonitorAgent::start(&[]);
    let [(small, _), (large, _)] = STATIC_FILES;
    let done = (
        ab(&server.url(small), 10_000, 16),
        ab_with(&[], &server.url("/missing"), 1_000, 8),
        ab(&server.url(large), 200, 4),
    );
    assert_eq!(done, (10_000, 1_000, 200));
    wait_for_count(&agent, &server.service, 200, small, 10_000);
    wait_for_count(&agent, &server.service, 404, "/missing", 1_000);
    let scrape = wait_for_count(&agent, &server.service, 200, large, 200);
    assert_eq!(
        service_total(&scrape, &server.service),
        11_200,
        "nothing else, nothing twice"
    );
}

#[test]
fn apache_event_mpm_counts_equal_the_load_generator() {
    static_server_counts_equal_the_load_generator(&Server::apache());
}

#[test]
fn lighttpd_counts_equal_the_load_generator() {
    static_server_counts_equal_the_load_generator(&Server::lighttpd());
}

#[test]
fn go_server_counts_under_load_equal_the_load_generator() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::go();
    assert_eq!(ab(&server.url("/status/200"), 20_000, 16), 20_000);
    let scrape = wait_for_count(&agent, &server.service, 200, "/status/{id}", 20_000);
    assert_eq!(
        service_total(&scrape, &server.service),
        20_000,
        "nothing else, nothing twice"
    );
}

#[test]
fn new_connections_per_request_reuse_fds_and_stay_exact() {
    let agent = MonitorAgent::start(&[]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    // No keep-alive: every request a new connection, the server's fd numbers reused.
    assert_eq!(ab_with(&[], &nginx.url("/ok"), 3_000, 8), 3_000);
    let scrape = wait_for_count(&agent, "nginx", 200, "/ok", 3_000);
    let unanswered: f64 = scrape
        .matching("monitor_http_requests_unanswered_total", &[])
        .map(|sample| sample.value)
        .sum();
    assert_eq!(unanswered, 0.0, "whatever the reason");
}
