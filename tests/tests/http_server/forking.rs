//! Servers whose connections are served by another process than the one that accepted them
//! (forked children, Node's cluster workers), and the children of a process that was only a
//! client, which are not followed.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use monitor_tests::{
    MonitorAgent, Scrape,
    agent::free_port,
    http::service_total,
    poll::try_poll,
    servers::{Server, ab, ab_with, fixture},
    workload::unique_name,
};

use super::{WAIT, wait_for_count};

/// A forking server accepts each connection in the parent, forks, and serves it in the
/// child; the parent closes its copy, usually before the child reads. The child never
/// accepted, yet the request is its to count. Without following the fork, none was.
#[test]
fn a_forking_server_whose_children_serve_the_connections_is_measured() {
    const REQUESTS: usize = 100;
    let agent = MonitorAgent::start(&[]);
    // A new connection, and so a new child, per request.
    let scrape = forked_requests_counted(&agent, &Server::python_forking(), REQUESTS);
    let inherited = scrape
        .value("monitor_http_connections_inherited_total", &[])
        .unwrap();
    assert!(
        inherited >= REQUESTS as f64,
        "{inherited} connections inherited"
    );
}

/// Children that served and exited while the agent was not looking (paused here, busy on a
/// real host) are the server's service too: the kernel noted whose children they were. Before,
/// they were named from what was left of them: `python3` for a server named after its script
/// (even the first child here, which lived a few milliseconds between two refreshes), or
/// `unknown` when the kernel had not yet recorded the child's name.
#[test]
fn forked_children_gone_before_the_agent_looked_are_the_servers_service() {
    const REQUESTS: usize = 20;
    let agent = MonitorAgent::start(&[]);
    // Named from its script, which a gone child's `comm` (`python3`) does not tell.
    let name = unique_name("forked");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join(format!("{name}.py"));
    fs::copy(fixture("forking_server.py"), &script).unwrap();
    let mut command = Command::new("/usr/bin/python3");
    command.arg(&script);
    let server = Server::started_by(command, free_port(), &name);
    // The first while the agent looks: the parent is then a server, whose children are noted.
    assert_eq!(ab(&server.url("/forked/7"), 1, 1), 1);
    wait_for_count(&agent, &server.service, 200, "/forked/{id}", 1);
    agent.pause();
    assert_eq!(
        ab_with(&[], &server.url("/forked/7"), REQUESTS, 4),
        REQUESTS
    );
    // The parent reaps its children between two waits for a connection.
    let children = format!("/proc/{0}/task/{0}/children", server.pid());
    let reaped = try_poll(WAIT, || {
        fs::read_to_string(&children)
            .is_ok_and(|pids| pids.trim().is_empty())
            .then_some(())
    });
    agent.resume();
    assert!(reaped.is_some(), "the server's children were never reaped");
    let scrape = wait_for_count(
        &agent,
        &server.service,
        200,
        "/forked/{id}",
        1 + REQUESTS as u64,
    );
    assert_eq!(service_total(&scrape, &server.service), 1 + REQUESTS as u64);
}

/// A forked child that reads a file holding a request line before its connection: only a
/// socket is taken up. Before, the file was, and the connection (one per child) was not.
#[test]
fn a_forked_child_reading_a_file_that_holds_a_request_still_has_its_connection_measured() {
    const REQUESTS: usize = 20;
    let agent = MonitorAgent::start(&[]);
    let saved = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        saved.path(),
        b"GET /saved/request HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let server = Server::python_forking_reading(Some(saved.path()));
    let scrape = forked_requests_counted(&agent, &server, REQUESTS);
    assert_eq!(service_total(&scrape, &server.service), REQUESTS as u64);
}

/// `requests` to the forking server, a new connection (and so a new child) each, all counted.
fn forked_requests_counted(agent: &MonitorAgent, server: &Server, requests: usize) -> Scrape {
    assert_eq!(
        ab_with(&[], &server.url("/forked/7"), requests, 4),
        requests
    );
    wait_for_count(agent, &server.service, 200, "/forked/{id}", requests as u64)
}

/// Only a process that has served connections has its forked children looked at for the ones
/// they inherit. The children of a process that was only a client (a shell or supervisor that
/// made an HTTP call) are not: before, all their reads and writes paid for the connection
/// look-up (a pipe ping-pong's `sys_exit` cost 333 ns per run against 95).
#[test]
fn the_children_of_a_process_that_was_only_a_client_are_not_followed() {
    const CHILDREN: usize = 5;
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let script = format!(
        "import os, sys, time, urllib.request\n\
         urllib.request.urlopen(sys.argv[1]).read()\n\
         children = []\n\
         for _ in range({CHILDREN}):\n    pid = os.fork()\n    if pid == 0:\n        \
         time.sleep(30)\n        os._exit(0)\n    children.append(pid)\n\
         print(' '.join(map(str, children)), flush=True)\n\
         sys.stdin.read()\n\
         for pid in children:\n    os.kill(pid, 9)\n"
    );
    let mut client = Command::new("/usr/bin/python3")
        .args(["-c", &script, &server.url("/")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let children: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(children.len(), CHILDREN);
    let followed = agent.map_key_tgids("FORKED_CHILDREN", 0);
    drop(client.stdin.take());
    let _ = client.wait();
    let noted: Vec<u32> = children
        .iter()
        .copied()
        .filter(|child| followed.contains(child))
        .collect();
    assert!(
        noted.is_empty(),
        "children of a client noted at fork: {noted:?}"
    );
    // While a server's children are: a forking server's child, held by an open connection.
    let forking = Server::python_forking();
    let _held = std::net::TcpStream::connect(("127.0.0.1", forking.port)).unwrap();
    try_poll(WAIT, || {
        let children =
            fs::read_to_string(format!("/proc/{0}/task/{0}/children", forking.pid())).ok()?;
        let followed = agent.map_key_tgids("FORKED_CHILDREN", 0);
        children
            .split_whitespace()
            .filter_map(|pid| pid.parse::<u32>().ok())
            .any(|child| followed.contains(&child))
            .then_some(())
    })
    .expect("a forking server's child noted at fork");
}

/// Node's cluster module accepts every connection in the primary and passes it to a worker
/// over a Unix socket: the workers never accept, yet their requests are theirs to count.
/// Without following the hand-over, none was (the connections were tracked in the primary,
/// which never reads them).
#[test]
fn a_node_cluster_whose_primary_passes_connections_to_workers_is_measured() {
    const REQUESTS: usize = 400;
    let agent = MonitorAgent::start(&[]);
    let server = Server::node_cluster(2);
    // A new connection per request: every one is handed over.
    let completed = ab_with(&[], &server.url("/status/201"), REQUESTS, 8);
    assert_eq!(completed, REQUESTS);
    // And keep-alive connections, handed over once, each with many requests.
    assert_eq!(ab(&server.url("/status/503"), REQUESTS, 8), REQUESTS);
    wait_for_count(
        &agent,
        &server.service,
        201,
        "/status/{id}",
        REQUESTS as u64,
    );
    let scrape = wait_for_count(
        &agent,
        &server.service,
        503,
        "/status/{id}",
        REQUESTS as u64,
    );
    let received = scrape
        .value("monitor_http_connections_received_total", &[])
        .unwrap();
    assert!(
        received >= (REQUESTS + 8) as f64,
        "{received} connections received"
    );
}
