//! Heads larger than the kernel captures and than servers accept, and overlong paths.

use monitor_tests::{
    http::{SERVER_DURATION, connect, read_responses, send, server_count},
    servers::Server,
};

use super::{NGINX_LOCATIONS, Scene};

#[test]
fn heads_larger_than_the_capture_and_than_servers_accept_are_counted_with_their_status() {
    let mut scene = Scene::new(vec![Server::python(), Server::nginx(NGINX_LOCATIONS)]);
    let (python, nginx) = (scene.servers[0].port, scene.servers[1].port);
    scene.well_formed(3);
    let headers = |count: usize, size: usize| -> String {
        (0..count)
            .map(|i| format!("X-Filler-{i}: {}\r\n", "v".repeat(size)))
            .collect()
    };
    // Headers past the 256 bytes the kernel captures: the route is in the first bytes.
    let beyond = format!(
        "GET /past/capture HTTP/1.1\r\nHost: t\r\n{}\r\n",
        headers(8, 100)
    );
    // A 64 KiB head: Python takes it, nginx refuses it (400: larger than its buffers).
    let big = format!(
        "GET /big/head HTTP/1.1\r\nHost: t\r\n{}\r\n",
        headers(64, 1000)
    );
    // One header line longer than Python's 64 KiB line limit: 431.
    let long_line = format!(
        "GET /long/line HTTP/1.1\r\nHost: t\r\nX-Long: {}\r\n\r\n",
        "v".repeat(70_000)
    );
    // A 1 KiB path, longer than the capture and the templated prefix: cut to `/{*}`.
    let long_path = format!(
        "GET /long/{} HTTP/1.1\r\nHost: t\r\n\r\n",
        "segment/".repeat(128)
    );
    for (port, request, status) in [
        (python, &beyond, 200),
        (python, &big, 200),
        (python, &long_line, 431),
        (python, &long_path, 200),
        (nginx, &big, 400),
    ] {
        let mut stream = connect(port);
        send(&mut stream, request.as_bytes());
        assert_eq!(read_responses(&mut stream, 1), [status]);
    }
    scene.well_formed(3);
    let scrape = scene.settle(3 + 3 + 4, &[]);
    let service = scene.service().to_owned();
    for (status, route) in [
        (200, "/past/capture"),
        (200, "/big/head"),
        (431, "/long/line"),
    ] {
        assert_eq!(server_count(&scrape, &service, status, route), Some(1));
    }
    let cut = scrape.label_values(SERVER_DURATION, &[("service_name", &service)], "http_route");
    assert!(
        cut.iter()
            .any(|route| route.starts_with("/long/segment/") && route.ends_with("/{*}")),
        "{cut:?}"
    );
    assert_eq!(server_count(&scrape, "nginx", 400, "/big/head"), Some(1));
}
