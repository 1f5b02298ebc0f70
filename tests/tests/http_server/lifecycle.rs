//! Connections and processes that end, or began before the agent: the idle sweep, a
//! keep-alive connection older than the agent, killed, exiting and zombie servers, and the
//! listeners of exited servers.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
    thread,
};

use monitor_tests::{
    MonitorAgent, Scrape,
    http::{client, connect, get, read_responses, send, service_total},
    poll_until,
    servers::{Server, renamed_copy},
    workload::unique_name,
};

use super::{WAIT, wait_for_count};

#[test]
fn a_keep_alive_connection_opened_before_the_agent_is_measured() {
    let server = Server::python();
    let mut stream = connect(server.port);
    send(&mut stream, b"GET /before HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_responses(&mut stream, 1), [200]);
    let agent = MonitorAgent::start(&[]);
    send(&mut stream, b"GET /after/start HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_responses(&mut stream, 1), [200]);
    drop(stream);
    wait_for_count(&agent, &server.service, 200, "/after/start", 1);
}

#[test]
fn the_idle_sweep_ends_waiting_responses_without_walking_the_whole_table() {
    // The last response of a keep-alive connection is ended by the idle sweep, which looks at
    // the connections whose responses started in the last timeout, not at all 65,536 slots.
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let value = |name: &str| agent.scrape().value(name, &[]);
    const FULL: &str = "monitor_http_idle_sweeps_full_total";
    const ENDED: &str = "monitor_http_responses_ended_idle_total";
    // The first sweeps walk the table: the rings start empty.
    let mut stream = connect(server.port);
    send(&mut stream, b"GET /warm-up HTTP/1.1\r\nHost: t\r\n\r\n");
    read_responses(&mut stream, 1);
    poll_until("the warm-up response to end idle", WAIT, || {
        value(ENDED).filter(|&n| n >= 1.0)
    });
    let full_before = value(FULL).expect("the full-sweep counter");
    for round in 1..=3 {
        send(&mut stream, b"GET /waits HTTP/1.1\r\nHost: t\r\n\r\n");
        read_responses(&mut stream, 1);
        poll_until("the response to end idle", WAIT, || {
            value(ENDED).filter(|&n| n >= 1.0 + f64::from(round))
        });
    }
    assert_eq!(value(FULL), Some(full_before), "a sweep walked the table");
    drop(stream);
    wait_for_count(&agent, &server.service, 200, "/waits", 3);
}

/// The last response of a keep-alive connection left open is ended by the idle sweep, which
/// runs from the clock tick: in interrupt context, creating a histogram for a new route can
/// fail while the map has room. Several such responses ending in one tick lost all but the
/// first (counted as `histogram_full`); they are now tried again at the next sweep.
#[test]
fn idle_responses_with_new_routes_ending_in_one_sweep_are_all_recorded() {
    const ROUTES: [&str; 4] = ["/idle/alpha", "/idle/beta", "/idle/gamma", "/idle/delta"];
    let agent = MonitorAgent::start(&[]);
    let server = Server::nginx("location /idle/ { return 200 \"ok\\n\"; }");
    // Open, each with one answered request, until the responses are recorded.
    let _open: Vec<_> = ROUTES
        .iter()
        .map(|route| {
            let mut stream = connect(server.port);
            send(
                &mut stream,
                format!("GET {route} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
            );
            assert_eq!(read_responses(&mut stream, 1), [200]);
            stream
        })
        .collect();
    for route in ROUTES {
        wait_for_count(&agent, "nginx", 200, route, 1);
    }
    let full = agent.scrape().value(
        "monitor_http_events_dropped_total",
        &[("reason", "histogram_full")],
    );
    assert_eq!(full, Some(0.0));
}

#[test]
fn a_killed_server_leaves_no_connection_state_behind() {
    let agent = MonitorAgent::start(&[]);
    let mut server = Server::python();
    let port = server.port;
    let entries =
        |scrape: &Scrape| scrape.value("monitor_bpf_map_entries", &[("map", "CONNECTIONS")]);
    // The map is the host's: connections of other processes count too (none on CI).
    let baseline = poll_until("a first sweep", WAIT, || entries(&agent.scrape()));
    // Requests in flight: the handler sleeps longer than the test lasts.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut stream = connect(port);
                send(&mut stream, b"GET /sleep/30000 HTTP/1.1\r\nHost: t\r\n\r\n");
                let _ = stream.read(&mut [0u8; 64]);
            })
        })
        .collect();
    poll_until("the connections to be tracked", WAIT, || {
        entries(&agent.scrape()).filter(|&n| n >= baseline + 4.0)
    });
    // Processes with tracked connections, this one (the clients) and the server among them.
    let marked =
        |scrape: &Scrape| scrape.value("monitor_bpf_map_entries", &[("map", "MEASURED_PROCESSES")]);
    let marked_with_server = marked(&agent.scrape()).expect("MEASURED_PROCESSES entries");
    server.kill();
    for client in clients {
        client.join().unwrap();
    }
    poll_until("the dead server's connections to be swept", WAIT, || {
        (entries(&agent.scrape())? <= baseline).then_some(())
    });
    poll_until("the dead server's process bit to be cleared", WAIT, || {
        (marked(&agent.scrape())? <= marked_with_server - 1.0).then_some(())
    });
    // And the agent keeps measuring.
    let other = Server::python();
    assert_eq!(get(&client(), &other.url("/after")), 200);
    wait_for_count(&agent, &other.service, 200, "/after", 1);
}

/// Runs `program` (a copy of `one-shot-server`) in `mode`, sends it one request and returns
/// its pid and what came back before it exited (nothing, or a status).
fn one_shot(program: &std::path::Path, mode: &str, path: &str) -> (u32, Vec<u16>) {
    let mut child = Command::new(program)
        .arg(mode)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting one-shot-server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("reading the port");
    let mut stream = connect(line.trim().parse().expect("a port"));
    send(
        &mut stream,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    );
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert!(child.wait().unwrap().success());
    let reply = String::from_utf8_lossy(&reply);
    let status = reply
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3)?.parse().ok());
    (child.id(), status.into_iter().collect())
}

/// A server that exits without closing its connection (killed, or ending with `exit`) leaves
/// the kernel no close to end its last response by; only the idle timeout ends it. The
/// agent's sweep of dead processes' connections must leave it that long instead of freeing
/// it unrecorded, and count what truly cannot end: a request the server never answered.
/// The agent sweeps every 10 refreshes: at 100 ms, every second, well inside the 3 s idle
/// timeout, so without the wait the answered request would be freed before it was recorded.
#[test]
fn a_server_that_exits_without_closing_has_its_last_response_recorded() {
    let agent = MonitorAgent::start(&["--refresh-interval", "100ms", "--http-idle-timeout", "3s"]);
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("exits");
    let program = renamed_copy(dir.path(), env!("CARGO_BIN_EXE_one-shot-server"), &name);
    let in_flight = |scrape: &Scrape| {
        scrape.value(
            "monitor_http_requests_in_flight_at_exit_total",
            &[("role", "server")],
        )
    };
    let before = poll_until("a first scrape", WAIT, || in_flight(&agent.scrape()));

    assert_eq!(
        one_shot(&program, "exit-after-answer", "/answered").1,
        [200]
    );
    wait_for_count(&agent, &name, 200, "/answered", 1);

    let (_, statuses) = one_shot(&program, "exit-unanswered", "/unanswered");
    assert!(statuses.is_empty(), "answered: {statuses:?}");
    poll_until("the unanswered request counted", WAIT, || {
        (in_flight(&agent.scrape())? >= before + 1.0).then_some(())
    });
    let scrape = agent.scrape();
    assert_eq!(
        service_total(&scrape, &name),
        1,
        "only the answered request is recorded"
    );
}

/// A process that has exited but whose parent has not waited for it (a zombie: common in
/// containers whose first process does not reap) keeps its /proc entry. It is gone all the
/// same: its connections are closed, and a request it never answered can no longer end.
#[test]
fn a_zombie_is_taken_for_the_exited_process_it_is() {
    let agent = MonitorAgent::start(&["--refresh-interval", "100ms"]);
    let in_flight = |scrape: &Scrape| {
        scrape.value(
            "monitor_http_requests_in_flight_at_exit_total",
            &[("role", "server")],
        )
    };
    let before = poll_until("a first scrape", WAIT, || in_flight(&agent.scrape()));
    let mut parent = KillOnDrop(
        Command::new("/usr/bin/python3")
            .arg(monitor_tests::servers::fixture("zombie_server.py"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(parent.0.stdout.take().unwrap()).lines();
    let port: u16 = lines.next().unwrap().unwrap().parse().unwrap();
    let mut stream = connect(port);
    send(&mut stream, b"GET /zombie HTTP/1.1\r\nHost: t\r\n\r\n");
    let child: u32 = lines.next().unwrap().unwrap().parse().unwrap();
    poll_until("the child to become a zombie", WAIT, || {
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        (stat.rsplit_once(") ")?.1.starts_with('Z')).then_some(())
    });
    poll_until("the zombie's unanswered request counted", WAIT, || {
        (in_flight(&agent.scrape())? >= before + 1.0).then_some(())
    });
    poll_until("the zombie's connection freed", WAIT, || {
        (!agent.map_key_tgids("CONNECTIONS", 4).contains(&child)).then_some(())
    });
}

/// Kills and reaps the child when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With `--http-ports` where the kernel cannot read a listener's port (its BTF does not show
/// the way, forced here), the kernel remembers each listening socket's verdict by (process,
/// fd) until the socket is closed; a server that exits never closes it. The agent's sweep
/// frees those of processes that are gone, or the table would fill and new servers go
/// unchecked.
#[test]
fn listening_sockets_of_exited_servers_are_forgotten() {
    const SERVERS: usize = 20;
    // Port 1 only: no server here is measured, yet each one's listener gets a verdict.
    let agent = MonitorAgent::start(&[
        "--refresh-interval",
        "100ms",
        "--http-ports",
        "1",
        "--ports-checked-by-agent",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let program = renamed_copy(
        dir.path(),
        env!("CARGO_BIN_EXE_one-shot-server"),
        &unique_name("listen"),
    );
    let servers: Vec<u32> = (0..SERVERS)
        .map(|_| {
            let (pid, statuses) = one_shot(&program, "exit-after-answer", "/");
            assert_eq!(statuses, [200]);
            pid
        })
        .collect();
    // Each server's one connection arrives before the agent has checked its listener: the
    // kernel noted the listener, unchecked.
    let skipped = |scrape: &Scrape| {
        scrape.value(
            "monitor_http_connections_skipped_total",
            &[("reason", "listener_unchecked")],
        )
    };
    poll_until("the servers' connections skipped", WAIT, || {
        (skipped(&agent.scrape())? >= SERVERS as f64).then_some(())
    });
    poll_until("the exited servers' listeners freed", WAIT, || {
        let held = agent.map_key_tgids("LISTENERS", 4);
        (!held.iter().any(|tgid| servers.contains(tgid))).then_some(())
    });
    // The table's use is reported as it is.
    poll_until("LISTENERS' entries reported", WAIT, || {
        let held = agent.map_keys("LISTENERS").len() as f64;
        let reported = agent
            .scrape()
            .value("monitor_bpf_map_entries", &[("map", "LISTENERS")])?;
        (reported == held).then_some(())
    });
}
