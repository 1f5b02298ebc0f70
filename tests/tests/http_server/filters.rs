//! What is measured and what is not: excluded commands and the agent's own traffic, ports not
//! chosen with `--http-ports`, and servers started after the agent, measured from their first
//! connection or once the agent has checked their port.

use std::io::Read as _;

use monitor_tests::{
    MonitorAgent,
    http::{client, connect, get, read_responses, send, server_count, service_total},
    poll_until,
    servers::Server,
};

use super::{NGINX_LOCATIONS, WAIT, wait_for_count};

#[test]
fn excluded_and_own_traffic_is_not_measured() {
    let server = Server::python();
    let agent = MonitorAgent::start(&["--exclude-comm", &server.service]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let client = client();
    get(&client, &server.url("/excluded"));
    get(&client, &nginx.url("/ok"));
    for _ in 0..3 {
        agent.metrics_text();
    }
    let scrape = wait_for_count(&agent, "nginx", 200, "/ok", 1);
    assert_eq!(service_total(&scrape, &server.service), 0, "--exclude-comm");
    assert_eq!(
        service_total(&scrape, "monitor"),
        0,
        "the agent's own /metrics"
    );
}

#[test]
fn only_the_chosen_ports_are_measured() {
    let chosen = Server::python();
    let other = Server::nginx(NGINX_LOCATIONS);
    let agent = MonitorAgent::start(&["--http-ports", &chosen.port.to_string()]);
    let client = client();
    for _ in 0..3 {
        get(&client, &chosen.url("/in"));
        get(&client, &other.url("/ok"));
    }
    drop(client);
    let scrape = wait_for_count(&agent, &chosen.service, 200, "/in", 3);
    assert_eq!(service_total(&scrape, "nginx"), 0);
    let skipped = scrape.value(
        "monitor_http_connections_skipped_total",
        &[("reason", "port_filtered")],
    );
    assert!(skipped.is_some_and(|n| n >= 1.0), "{skipped:?}");
}

/// With `--http-ports`, servers started after the agent have their connections measured or
/// skipped from the first: the kernel reads the listener's port itself (the way to it from
/// the kernel's BTF). Before, the first connections of a new listener were skipped until the
/// agent had checked its port, and a client with one keep-alive connection went unmeasured.
#[test]
fn a_server_started_after_the_agent_has_its_first_connection_measured() {
    let port = monitor_tests::agent::free_port();
    let agent = MonitorAgent::start(&["--http-ports", &port.to_string()]);
    let chosen = Server::python_on(port);
    let other = Server::python();
    for server in [&chosen, &other] {
        let mut stream = connect(server.port);
        for _ in 0..3 {
            send(&mut stream, b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n");
            assert_eq!(read_responses(&mut stream, 1), [200]);
        }
    }
    let scrape = wait_for_count(&agent, &chosen.service, 200, "/first", 3);
    assert_eq!(service_total(&scrape, &other.service), 0);
    let filtered = scrape.value(
        "monitor_http_connections_skipped_total",
        &[("reason", "port_filtered")],
    );
    // The other server's start-up probe and the connection above.
    assert!(filtered.is_some_and(|n| n >= 2.0), "{filtered:?}");
}

/// Where the kernel cannot read a listener's port (its BTF does not show the way; forced
/// here), a server started after the agent is measured once the agent has checked its port.
#[test]
fn a_server_started_after_the_agent_is_measured_once_the_agent_checked_its_port() {
    let port = monitor_tests::agent::free_port();
    let agent = MonitorAgent::start(&[
        "--http-ports",
        &port.to_string(),
        "--ports-checked-by-agent",
    ]);
    let server = Server::python_on(port);
    // The first connection arrives before the agent has checked the new listener's port;
    // later ones are measured. A new connection per request, until one is counted.
    poll_until("a request on the new server to be counted", WAIT, || {
        let mut stream = connect(port);
        send(
            &mut stream,
            b"GET /late HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        let scrape = agent.scrape();
        server_count(&scrape, &server.service, 200, "/late").filter(|&n| n >= 1)
    });
    let scrape = agent.scrape();
    let unchecked = scrape.value(
        "monitor_http_connections_skipped_total",
        &[("reason", "listener_unchecked")],
    );
    assert!(unchecked.is_some_and(|n| n >= 1.0), "{unchecked:?}");
}
