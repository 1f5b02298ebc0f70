//! Churn: processes that live for one request, short connections, ever new paths. Every
//! request is counted once, series stay within their budgets, and the kernel entries of what
//! is gone are freed. (`cargo xtask churn` runs the same at full scale and records the bounds.)

use std::{collections::HashSet, time::Duration};

use monitor_tests::{
    MonitorAgent, Scrape,
    churn::{distinct_paths, one_shot_servers},
    http::{SERVER_DURATION, describe_http, server_count, service_total},
    poll::try_poll,
    poll_until,
    servers::{Server, ab_with, renamed_copy},
    workload::unique_name,
};

const WAIT: Duration = Duration::from_secs(30);
const CPU_SERIES: &str = "process_cpu_time_seconds_total";

fn counter_sum(scrape: &Scrape, name: &str) -> f64 {
    scrape.matching(name, &[]).map(|sample| sample.value).sum()
}

/// Counters that say something was lost, left unpaired or dropped early (summed over their
/// reasons), and the kernel's losses of process names and CPU time for want of room. (A
/// burst of new processes may also find the kernel without memory for their entries at that
/// moment: `cpu_time_alloc_failed`, counted, not a bound the agent sets.)
fn losses(scrape: &Scrape) -> Vec<(&'static str, f64)> {
    let mut losses: Vec<(&str, f64)> = [
        "monitor_http_requests_unanswered_total",
        "monitor_http_responses_unmatched_total",
        "monitor_http_events_dropped_total",
        // Series dropped before their grace ended: the bounds are for services that churn
        // without end, not for these hundreds.
        "monitor_series_evicted_total",
    ]
    .into_iter()
    .map(|name| (name, counter_sum(scrape, name)))
    .collect();
    for reason in [
        "cpu_time_full",
        "runq_full",
        "process_meta_full",
        "exec_events_lost",
    ] {
        let labels = [("reason", reason)];
        let value = scrape.value("monitor_bpf_events_dropped_total", &labels);
        losses.push((reason, value.unwrap_or(0.0)));
    }
    losses
}

fn assert_no_losses(agent: &MonitorAgent) {
    let losses = losses(&agent.scrape());
    assert!(losses.iter().all(|(_, value)| *value == 0.0), "{losses:?}");
}

#[test]
fn processes_that_serve_once_are_each_counted_folded_beyond_the_budget_and_freed() {
    let budget = 50;
    let servers = 400;
    let agent = MonitorAgent::start(&["--exited-process-budget", &budget.to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("once");
    let program = renamed_copy(dir.path(), env!("CARGO_BIN_EXE_one-shot-server"), &name);

    let run = one_shot_servers(&program, servers, 4);
    assert_eq!(run.answered, servers);

    // Each process's one request, counted once under the shared service.
    let scrape = try_poll(WAIT, || {
        let scrape = agent.scrape();
        (server_count(&scrape, &name, 200, "/once") == Some(servers as u64)).then_some(scrape)
    })
    .unwrap_or_else(|| {
        panic!(
            "not every one-shot request counted; the agent has:\n{}\n{}",
            describe_http(&agent.metrics_text()),
            agent
                .metrics_text()
                .lines()
                .filter(|line| line.starts_with("monitor_bpf_events")
                    || line.starts_with("monitor_processes"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert_eq!(service_total(&scrape, &name), servers as u64);

    // Once all have been retired: at most `budget` exited series of their own, the rest folded
    // into one `__overflow__` series of the service.
    let own = [("process_executable_name", name.as_str())];
    let scrape = poll_until("the exited processes folded", WAIT, || {
        let scrape = agent.scrape();
        let pids = scrape.label_values(CPU_SERIES, &own, "process_pid");
        let folded = counter_sum(&scrape, "monitor_process_series_folded_total");
        (pids.contains(&"__overflow__".to_owned())
            && pids.len() <= budget + 1
            && folded >= (servers - budget) as f64)
            .then_some(scrape)
    });
    let pids = scrape.label_values(CPU_SERIES, &own, "process_pid");
    let ours: HashSet<String> = run.pids.iter().map(u32::to_string).collect();
    assert!(
        pids.iter()
            .all(|pid| pid == "__overflow__" || ours.contains(pid)),
        "series of processes that were not the one-shot servers: {pids:?}"
    );
    let overflow = [
        ("process_executable_name", name.as_str()),
        ("process_pid", "__overflow__"),
    ];
    assert!(scrape.value(CPU_SERIES, &overflow).unwrap() > 0.0);

    // The kernel forgets them: no CPU time, name or connection entry of any of them is left.
    let gone: HashSet<u32> = run.pids.iter().copied().collect();
    poll_until("the exited servers' kernel entries freed", WAIT, || {
        let left: Vec<(&str, u32)> = [("CPU_TIME", 0), ("PROCESS_META", 0), ("CONNECTIONS", 4)]
            .into_iter()
            .flat_map(|(map, offset)| {
                agent
                    .map_key_tgids(map, offset)
                    .into_iter()
                    .filter(|tgid| gone.contains(tgid))
                    .map(move |tgid| (map, tgid))
            })
            .collect();
        left.is_empty().then_some(())
    });
    assert_no_losses(&agent);
}

#[test]
fn short_connections_and_ever_new_paths_stay_exact_and_bounded() {
    let budget = 50;
    let agent = MonitorAgent::start(&["--route-budget", &budget.to_string()]);
    let nginx = Server::nginx(
        r#"
    location = /ok { return 200 "ok\n"; }
    location /p/ { return 200 "p\n"; }
"#,
    );
    let connections = 20_000;
    let paths = 10_000;
    // A new connection per request: the server's fds are reused thousands of times.
    assert_eq!(
        ab_with(&[], &nginx.url("/ok"), connections, 16),
        connections
    );
    assert_eq!(distinct_paths(nginx.port, "p", 0, paths, 8, 200), paths);

    let scrape = poll_until("every request counted", WAIT, || {
        let scrape = agent.scrape();
        (service_total(&scrape, "nginx") == (connections + paths) as u64).then_some(scrape)
    });
    assert_eq!(
        server_count(&scrape, "nginx", 200, "/ok"),
        Some(connections as u64)
    );
    let routes = scrape.label_values(SERVER_DURATION, &[("service_name", "nginx")], "http_route");
    assert!(
        routes.len() <= budget,
        "{} routes: {routes:?}",
        routes.len()
    );
    assert!(
        routes.contains(&"/p/{*}".to_owned()),
        "the new paths collapse: {routes:?}"
    );

    // Bounded in the kernel too: each nginx process holds at most `budget` routes, and no
    // connection entry once the clients are gone.
    let workers = nginx_processes(nginx.pid());
    assert_eq!(
        workers.len(),
        3,
        "nginx's master and its 2 workers: {workers:?}"
    );
    let routes_seen = agent.map_key_tgids("ROUTES_SEEN", 8);
    for worker in &workers {
        let held = routes_seen.iter().filter(|tgid| *tgid == worker).count();
        assert!(held <= budget, "nginx {worker} holds {held} routes");
    }
    assert!(
        routes_seen.iter().any(|tgid| workers.contains(tgid)),
        "the routes nginx served are held by its processes"
    );
    poll_until("nginx's connection entries freed", WAIT, || {
        let owners = agent.map_key_tgids("CONNECTIONS", 4);
        (!owners.iter().any(|tgid| workers.contains(tgid))).then_some(())
    });
    assert_no_losses(&agent);
}

#[test]
fn a_threaded_server_closing_and_accepting_at_once_stays_exact() {
    // Python's threaded server closes a connection on one thread while its main thread
    // accepts the next, so an fd number is freed and taken again within microseconds.
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let requests = 10_000;
    assert_eq!(ab_with(&[], &server.url("/ok"), requests, 16), requests);
    let scrape = try_poll(WAIT, || {
        let scrape = agent.scrape();
        (service_total(&scrape, &server.service) == requests as u64).then_some(scrape)
    })
    .unwrap_or_else(|| {
        panic!(
            "not every request counted; the agent has:\n{}",
            describe_http(&agent.metrics_text())
        )
    });
    assert_eq!(
        server_count(&scrape, &server.service, 200, "/ok"),
        Some(requests as u64)
    );
}

/// nginx's master and its workers (the master's children).
fn nginx_processes(master: u32) -> HashSet<u32> {
    let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .expect("reading nginx's children");
    children
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .chain([master])
        .collect()
}
