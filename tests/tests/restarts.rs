//! Restarts and neighbours: an agent killed under load leaves nothing in the kernel, the next
//! one counts only what follows its start, and two agents on one host both count exactly.

use std::{
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use monitor_tests::{
    MonitorAgent, Scrape, bpf,
    http::{client, connect, describe_http, get, read_responses, send, server_count},
    poll::try_poll,
    poll_until,
    servers::Server,
};

const WAIT: Duration = Duration::from_secs(20);

/// Polls until the agent's count of `service`'s 200s on `route` reaches `expected`, then
/// asserts it is exactly that.
fn assert_count(agent: &MonitorAgent, service: &str, route: &str, expected: u64) {
    let count = try_poll(WAIT, || {
        let count = server_count(&agent.scrape(), service, 200, route)?;
        (count >= expected).then_some(count)
    });
    assert_eq!(
        count,
        Some(expected),
        "{service} {route}; the agent has:\n{}",
        describe_http(&agent.metrics_text())
    );
}

/// GETs `path` on a connection the test keeps open, and reads the response.
fn request(stream: &mut TcpStream, path: &str) {
    send(
        stream,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    );
    assert_eq!(read_responses(stream, 1), vec![200]);
}

/// A client GETting one URL in a loop on a keep-alive connection until stopped.
struct ClientLoop {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl ClientLoop {
    fn start(url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let thread = thread::spawn({
            let (stop, answered) = (stop.clone(), answered.clone());
            move || {
                let http = client();
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(get(&http, &url), 200);
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                // The client and its connection close here: the last response is complete.
            }
        });
        Self {
            stop,
            answered,
            thread: Some(thread),
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stops the loop, closing its connection; returns the responses it got in all.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the client loop failed");
        }
        self.answered()
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn still_listed(held: &bpf::HeldObjects) -> Vec<String> {
    let mut left = Vec::new();
    for (kind, ids) in [
        ("prog", &held.programs),
        ("map", &held.maps),
        ("link", &held.links),
    ] {
        let listed = bpf::listed(kind);
        left.extend(
            ids.iter()
                .filter(|id| listed.contains(id))
                .map(|id| format!("{kind} {id}")),
        );
    }
    left
}

fn load_total(scrape: &Scrape, service: &str) -> u64 {
    server_count(scrape, service, 200, "/load").unwrap_or(0)
}

#[test]
fn killed_under_load_it_leaves_nothing_and_the_next_agent_counts_only_what_follows() {
    let exact = Server::python();
    let busy = Server::python();
    let first = MonitorAgent::start(&[]);
    let held = bpf::held_by(first.pid());
    // Every program it reports attached, each with at least one link.
    let attached = first
        .scrape()
        .matching("monitor_bpf_program_info", &[])
        .count();
    assert!(
        attached >= 6
            && held.programs.len() == attached
            && held.maps.len() >= 10
            && held.links.len() >= attached,
        "the agent should hold its {attached} programs, its maps and links: {held:?}"
    );
    // A keep-alive connection that the first agent tracks and that outlives it.
    let mut kept = connect(exact.port);
    for _ in 0..3 {
        request(&mut kept, "/before");
    }
    assert_count(&first, &exact.service, "/before", 3);
    let load = ClientLoop::start(busy.url("/load"));
    poll_until("the first agent to see the load", WAIT, || {
        (load_total(&first.scrape(), &busy.service) > 0).then_some(())
    });

    first.kill();
    // Nothing is pinned: every program, map and link goes with the killed process's files.
    let left = try_poll(Duration::from_secs(5), || {
        let left = still_listed(&held);
        left.is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "left behind in the kernel: {:?}",
        still_listed(&held)
    );

    let answered_before_start = load.answered();
    let started = Instant::now();
    let second = MonitorAgent::start(&[]);
    eprintln!("second agent ready after {:?}", started.elapsed());
    let first_scrape = second.scrape();
    assert!(
        first_scrape
            .matching("process_cpu_time_seconds_total", &[])
            .next()
            .is_some(),
        "no CPU series in the first scrape"
    );
    // Exact counts for requests made once the new agent is ready: on the adopted connection
    // and on new ones. Nothing from before its start.
    for _ in 0..4 {
        request(&mut kept, "/after");
    }
    let http = client();
    for _ in 0..3 {
        assert_eq!(get(&http, &exact.url("/after")), 200);
    }
    assert_count(&second, &exact.service, "/after", 7);
    assert_eq!(
        server_count(&second.scrape(), &exact.service, 200, "/before"),
        None,
        "the new agent counted requests made before it started"
    );

    // Under the load, it counts no more than was answered after it was started, and some.
    poll_until("the new agent to count the load", WAIT, || {
        (load_total(&second.scrape(), &busy.service) > 0).then_some(())
    });
    let answered_since_start = load.stop() - answered_before_start;
    let counted = load_total(&second.scrape(), &busy.service);
    assert!(
        counted <= answered_since_start,
        "counted {counted} requests, only {answered_since_start} were made after the start"
    );
}

#[test]
fn two_agents_count_the_same_requests_and_one_stopping_leaves_the_other_exact() {
    let server = Server::python();
    let one = MonitorAgent::start(&[]);
    let other = MonitorAgent::start(&[]);
    let http = client();
    for _ in 0..5 {
        assert_eq!(get(&http, &server.url("/both")), 200);
    }
    assert_count(&one, &server.service, "/both", 5);
    assert_count(&other, &server.service, "/both", 5);

    let status = one.terminate(Duration::from_secs(2));
    assert!(status.success(), "the first agent exited with {status}");
    for _ in 0..4 {
        assert_eq!(get(&http, &server.url("/both")), 200);
    }
    let mut fresh = connect(server.port);
    request(&mut fresh, "/both");
    assert_count(&other, &server.service, "/both", 10);
    let held = bpf::held_by(other.pid());
    let listed = bpf::listed("prog");
    assert!(
        held.programs.iter().all(|id| listed.contains(id)),
        "the remaining agent lost programs: {held:?}"
    );
    let pid = server.pid().to_string();
    let cpu = |scrape: &Scrape| {
        scrape.value(
            "process_cpu_time_seconds_total",
            &[("process_pid", pid.as_str())],
        )
    };
    // And its CPU time still grows with the server's work.
    let before = cpu(&other.scrape()).expect("a CPU series for the server");
    for _ in 0..100 {
        assert_eq!(get(&http, &server.url("/cpu")), 200);
    }
    poll_until("the server's CPU time to grow", WAIT, || {
        (cpu(&other.scrape())? > before).then_some(())
    });
}
