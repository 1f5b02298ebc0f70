//! Connections held or cut: a slowloris client, and connections half-closed or reset in the
//! middle of a request or of a response.

use std::{net::Shutdown, thread, time::Duration};

use monitor_common::http::phase;
use monitor_tests::{
    http::{client, connect, read_to_close, reset, send, server_count},
    poll_until,
    servers::Server,
};

use super::{Scene, WAIT, one_shot};

#[test]
fn a_slowloris_client_holds_one_entry_until_it_goes_and_counts_nothing_else() {
    let mut scene = Scene::new(vec![Server::python()]);
    let port = scene.server().port;
    scene.well_formed(3);
    // The request line, then the headers a byte at a time: the kernel holds the request.
    let mut slow = connect(port);
    send(&mut slow, b"GET /slow/loris HTTP/1.1\r\nHost: t\r\n");
    poll_until("the slow request to be held", WAIT, || {
        (scene.server_connections(phase::REQUEST) == 1).then_some(())
    });
    // A client that sends even its request line a byte at a time: a first byte that can begin
    // a method (`G`) is held, and once the bytes cannot be a request (`GX`) they are counted
    // and the connection dropped.
    let mut slower = connect(port);
    send(&mut slower, b"G");
    for b in b"X-S" {
        // One byte a second from both (the pace is the behaviour under test), while the
        // normal client goes on.
        thread::sleep(Duration::from_secs(1));
        send(&mut slow, &[*b]);
        send(&mut slower, &[*b]);
        scene.well_formed(2);
    }
    assert_eq!(scene.server_connections(phase::REQUEST), 1, "still held");
    // The slow client gives up with a reset: its request is unanswered, its entry goes.
    reset(slow);
    drop(slower);
    scene.wait_for_odd("unanswered/closed", 1);
    assert_eq!(scene.server_connections(phase::REQUEST), 0);
    scene.settle(
        scene.good,
        &[("not_http/text", 1), ("unanswered/closed", 1)],
    );
    // The normal client leaves: no entry of the server's is left.
    scene.client = client();
    poll_until("the server's connections to be gone", WAIT, || {
        scene
            .agent
            .connections_of(scene.server().pid())
            .is_empty()
            .then_some(())
    });
}

#[test]
fn half_closed_and_reset_connections_mid_request_and_mid_response() {
    let mut scene = Scene::new(vec![Server::python()]);
    let port = scene.server().port;
    scene.well_formed(3);

    // Half-closed mid-request: Python takes the end of input for the end of the head and
    // answers, so this is one request of its.
    let answer = one_shot(port, b"GET /half/request HTTP/1.1\r\nHost: t\r\n");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");

    // Half-closed mid-response: the server finishes and closes.
    let mut stream = connect(port);
    send(
        &mut stream,
        b"GET /bytes/2000000 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let mut first = [0u8; 4096];
    std::io::Read::read_exact(&mut stream, &mut first).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_close(&mut stream).len() + first.len() > 2_000_000);

    // Reset mid-request, once the server has read the start of the request.
    let mut stream = connect(port);
    send(&mut stream, b"GET /reset/request HTTP/1.1\r\nHo");
    poll_until("the cut request to be held", WAIT, || {
        (scene.server_connections(phase::REQUEST) == 1).then_some(())
    });
    reset(stream);
    scene.wait_for_odd("unanswered/closed", 1);

    // Reset mid-response: the server's next write fails.
    let mut stream = connect(port);
    send(
        &mut stream,
        b"GET /bytes/50000000 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    std::io::Read::read_exact(&mut stream, &mut first).unwrap();
    reset(stream);

    scene.well_formed(3);
    let scrape = scene.settle(6 + 3, &[("unanswered/closed", 1), ("aborted", 1)]);
    let service = scene.service().to_owned();
    assert_eq!(
        server_count(&scrape, &service, 200, "/half/request"),
        Some(1)
    );
    assert_eq!(server_count(&scrape, &service, 200, "/bytes/{id}"), Some(2));
}
