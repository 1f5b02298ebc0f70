//! The agent's life: what it serves, and that it leaves nothing in the kernel when it stops.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use monitor_tests::{
    MonitorAgent,
    agent::monitor_bin,
    bpf,
    http::{client, get, wait_until},
    https::libssl_copy,
    metrics::documented_sample_names,
    poll_until,
    servers::Server,
    workload::KillOnDrop,
};

#[test]
fn sigterm_exits_zero_within_two_seconds_leaving_no_program() {
    let agent = MonitorAgent::start(&[]);
    let ids = bpf::held_by(agent.pid()).programs;
    let listed = bpf::listed("prog");
    assert!(
        ids.len() >= 5,
        "expected the scheduler programs, found {ids:?}"
    );
    assert!(
        ids.iter().all(|id| listed.contains(id)),
        "bpftool does not list {ids:?}"
    );
    // An open keep-alive scrape must not hold the shutdown up.
    let _scrape = agent.metrics_text();

    terminate_within_two_seconds_leaving_no_program(agent, &ids);
}

/// SIGTERM: the agent exits 0 within 2 s, and the kernel then frees `programs`, its programs
/// (a moment later: freeing a program is deferred in the kernel).
fn terminate_within_two_seconds_leaving_no_program(agent: MonitorAgent, programs: &[u64]) {
    let status = agent.terminate(Duration::from_secs(2));
    assert!(status.success(), "monitor exited with {status}");
    poll_until(
        "the kernel to free the agent's programs",
        Duration::from_secs(2),
        || {
            let listed = bpf::listed("prog");
            programs.iter().all(|id| !listed.contains(id)).then_some(())
        },
    );
}

/// Every TLS library file (a container image's own libssl) carries the TLS programs. Taken
/// off as perf-event uprobes, one after another after a kernel grace period each, they cost
/// the exit 0.8 s per library; as uprobe_multi links, closed together, about one grace period
/// for all.
#[test]
fn sigterm_exits_within_two_seconds_with_six_tls_libraries_probed() {
    let dir = tempfile::tempdir().unwrap();
    let copies: Vec<PathBuf> = (0..5)
        .map(|i| {
            let image = dir.path().join(format!("image{i}"));
            fs::create_dir(&image).unwrap();
            libssl_copy(&image).join("libssl.so.3")
        })
        .collect();
    // One process maps the five copies, as processes of five container images would.
    let script = "import ctypes, sys\n\
                  for path in sys.argv[1:]: ctypes.CDLL(path)\n\
                  print('loaded', flush=True)\n\
                  sys.stdin.read()\n";
    let mut loader = KillOnDrop(
        Command::new("python3")
            .args(["-c", script])
            .args(&copies)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting python3"),
    );
    let mut loaded = String::new();
    BufReader::new(loader.0.stdout.as_mut().unwrap())
        .read_line(&mut loaded)
        .unwrap();
    assert_eq!(loaded.trim(), "loaded");

    let agent = MonitorAgent::start(&[]);
    // The host's libssl and the five copies.
    wait_until(&agent, "six TLS libraries probed", |s| {
        s.value("monitor_tls_libraries_probed", &[]) == Some(6.0)
    });
    let ids = bpf::held_by(agent.pid()).programs;
    terminate_within_two_seconds_leaving_no_program(agent, &ids);
}

#[test]
fn serves_metrics_and_health_and_nothing_else() {
    let agent = MonitorAgent::start(&[]);
    assert_eq!(agent.get("/healthz").unwrap().0, 200);
    assert_eq!(agent.get("/nope").unwrap().0, 404);
    assert_eq!(agent.get("/metrics/extra").unwrap().0, 404);
    let scrape = agent.scrape();
    for name in [
        "process_cpu_time_seconds_total",
        "monitor_bpf_program_info",
        "monitor_bpf_map_entries",
    ] {
        assert!(
            scrape.names().any(|n| n == name),
            "{name} missing from /metrics"
        );
    }
    let sched_switch = [("hook", "sched_switch")];
    assert_eq!(
        scrape.value("monitor_bpf_program_info", &sched_switch),
        Some(1.0)
    );
}

/// `--no-http`: CPU time and run-queue waits only. No program of the agent's runs at
/// syscalls, and a server's requests are not counted while its CPU time is. Set as a unit
/// file's environment would (`MONITOR_NO_HTTP=1`: a switch takes 1, yes and on, not only
/// true).
#[test]
fn with_no_http_only_the_scheduler_programs_run() {
    let mut launcher = Command::new(monitor_bin());
    launcher.env("MONITOR_NO_HTTP", "1");
    let agent = MonitorAgent::start_with(launcher, &["--refresh-interval", "100ms"]);
    let server = Server::python();
    let http = client();
    assert_eq!(get(&http, &server.url("/status/200")), 200);
    let pid = server.pid().to_string();
    // The refresh that shows the server's CPU time would show its request too.
    let scrape = poll_until("the server's CPU time", Duration::from_secs(20), || {
        let scrape = agent.scrape();
        scrape
            .value("process_cpu_time_seconds_total", &[("process_pid", &pid)])
            .map(|_| scrape)
    });
    let refreshes = |scrape: &monitor_tests::Scrape| {
        scrape.histogram_count("monitor_refresh_duration_seconds", &[])
    };
    let seen = refreshes(&scrape);
    let scrape = poll_until("a refresh after that", Duration::from_secs(20), || {
        let next = agent.scrape();
        (refreshes(&next) > seen).then_some(next)
    });
    assert_eq!(
        scrape.value("monitor_http_requests_seen_total", &[]),
        Some(0.0)
    );
    assert!(
        !scrape
            .names()
            .any(|name| name == "http_server_request_duration_seconds"),
        "an HTTP series without the HTTP programs"
    );
    assert_eq!(
        scrape.value("monitor_bpf_program_info", &[("hook", "sched_switch")]),
        Some(1.0)
    );
    for hook in [
        "sys_exit",
        "sys_enter_close",
        "sys_enter_sendmsg",
        "sched_process_fork",
    ] {
        assert_eq!(
            scrape.value("monitor_bpf_program_info", &[("hook", hook)]),
            None,
            "{hook} attached"
        );
    }
    // Turned off, not refused by the kernel.
    assert!(
        !scrape
            .names()
            .any(|name| name == "monitor_hook_unavailable")
    );
    let names = bpf::program_names(&bpf::held_by(agent.pid()).programs);
    assert!(
        names
            .iter()
            .all(|name| !name.starts_with("sys_") && !name.starts_with("sched_process_f")),
        "syscall programs loaded: {names:?}"
    );
}

#[test]
fn each_refresh_of_the_maps_is_timed() {
    let agent = MonitorAgent::start(&[]);
    let refreshes = |scrape: &monitor_tests::Scrape| {
        scrape
            .histogram_count("monitor_refresh_duration_seconds", &[])
            .expect("monitor_refresh_duration_seconds in /metrics")
    };
    let first = refreshes(&agent.scrape());
    // Each scrape reads the maps first, so the next one has at least one more refresh.
    let second = refreshes(&agent.scrape());
    assert!(first >= 1, "the scrape's own refresh is counted");
    assert!(second > first, "{second} refreshes after {first}");
    let sum = agent
        .scrape()
        .value("monitor_refresh_duration_seconds_sum", &[])
        .unwrap();
    assert!(sum > 0.0, "refreshes take time: {sum}");
}

#[test]
fn promtool_finds_no_problem_in_a_scrape() {
    let agent = MonitorAgent::start(&[]);
    // Wait for run-queue histograms, so every family is in the scrape that is checked.
    let text = poll_until("a scrape with histograms", Duration::from_secs(10), || {
        let text = agent.metrics_text();
        text.contains("process_run_queue_latency_seconds_bucket")
            .then_some(text)
    });
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running promtool (installed by `cargo xtask setup`)");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

/// README's Metrics table is the contract that the rules and the dashboard are checked
/// against (tests/tests/deploy/): a metric the agent exports under a name it does not list
/// (a rename, a new one left undocumented) fails here.
#[test]
fn every_exported_metric_is_documented() {
    let agent = MonitorAgent::start(&["--bpf-stats"]);
    // Server and client histograms, and run-queue waits, in the scrape that is checked.
    let server = Server::python();
    assert_eq!(get(&client(), &server.url("/documented")), 200);
    let families = [
        "http_server_request_duration_seconds_count",
        "http_client_request_duration_seconds_count",
        "process_run_queue_latency_seconds_count",
    ];
    let scrape = poll_until(
        "a scrape with every histogram",
        Duration::from_secs(20),
        || {
            let scrape = agent.scrape();
            let names: Vec<&str> = scrape.sample_names().collect();
            families
                .iter()
                .all(|family| names.contains(family))
                .then_some(scrape)
        },
    );
    let documented = documented_sample_names();
    let undocumented: std::collections::BTreeSet<&str> = scrape
        .sample_names()
        .filter(|name| !documented.contains(*name))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in README's Metrics table: {undocumented:?}"
    );
}

/// `--check` attaches what a run would, reports it and leaves: exit status 0 with every hook
/// attached, `--listen` not bound (a listener holds that address already, as a running agent
/// would), and none of its programs left in the kernel (it pins nothing).
#[test]
fn check_reports_every_hook_attached_and_leaves_nothing_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let before = bpf::listed("prog");
    let output = Command::new(monitor_bin())
        .args([
            "--check",
            "--listen",
            &taken.local_addr().unwrap().to_string(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for hook in [
        "sched_switch (tp_btf)",
        "sys_exit (tp_btf)",
        "sys_enter_close (tracepoint)",
        "cpu_clock (perf_event)",
        "cpu_clock_one_cpu (perf_event)",
    ] {
        assert!(
            stdout.contains(&format!("  {hook}\n")),
            "{hook} not in: {stdout}"
        );
    }
    assert!(
        stdout.ends_with("result: ok, every hook attached\n"),
        "{stdout}"
    );
    // Freeing a program is deferred a moment in the kernel.
    poll_until(
        "the kernel to free the check's programs",
        Duration::from_secs(2),
        || {
            let new: Vec<u64> = bpf::listed("prog")
                .into_iter()
                .filter(|id| !before.contains(id))
                .collect();
            let agents: Vec<String> = bpf::program_names(&new)
                .into_iter()
                .filter(|name| {
                    ["sys_", "sched_", "cpu_clock", "http_"]
                        .iter()
                        .any(|prefix| name.starts_with(prefix))
                })
                .collect();
            agents.is_empty().then_some(())
        },
    );
}

#[test]
fn taken_port_is_reported_by_address() {
    let agent = MonitorAgent::start(&[]);
    let output = Command::new(monitor_tests::agent::monitor_bin())
        .args(["--listen", &format!("127.0.0.1:{}", agent.port)])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", agent.port)) && stderr.contains("in use"),
        "unclear error: {stderr}"
    );
}

/// Started with a low soft limit on open files (a unit without `LimitNOFILE`: 1024), the
/// agent raises it to the hard limit, so that connections, `/proc` reads and BPF objects do
/// not run out of descriptors.
#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    let mut launcher = Command::new("prlimit");
    launcher.arg("--nofile=256:4096").arg(monitor_bin());
    let agent = MonitorAgent::start_with(launcher, &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", agent.pid())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .expect("Max open files in /proc/<pid>/limits")
        .split_whitespace()
        .collect();
    assert_eq!(open_files[..2], ["4096", "4096"], "soft and hard: {limits}");
}

/// Runs of the HTTP programs' syscall hook (`--bpf-stats`) while a process calls getppid(2),
/// a syscall no program cares about: (calls, runs).
fn syscall_program_runs_during_getppid_loop(hook: &str, program: &str) -> (u64, u64) {
    let agent = MonitorAgent::start(&["--bpf-stats", "--syscall-hook", hook]);
    let runs = || {
        agent
            .scrape()
            .value("monitor_bpf_program_runs_total", &[("program", program)])
            .unwrap_or_else(|| panic!("no runs of {program} counted"))
    };
    let before = runs();
    let output = Command::new(env!("CARGO_BIN_EXE_cpu-burner"))
        .args(["getppid", "300"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let calls: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    (calls, (runs() - before) as u64)
}

/// At the socket syscalls' exits (`--syscall-hook socket-exits`), a syscall-heavy process that does no
/// socket I/O runs no program of the agent's; at every syscall's exit, it runs one per call.
#[test]
fn only_the_socket_syscalls_run_the_http_program_at_their_exits() {
    let (calls, runs) = syscall_program_runs_during_getppid_loop("socket-exits", "sys_exit_each");
    assert!(calls > 100_000, "{calls} getppid calls");
    // The host's own socket I/O meanwhile (the scrapes, among others) runs it a little.
    assert!(runs < calls / 100, "{runs} runs for {calls} getppid calls");
    let (calls, runs) = syscall_program_runs_during_getppid_loop("every-exit", "sys_exit_btf");
    assert!(runs >= calls, "{runs} runs for {calls} getppid calls");
}

/// At the socket tracepoints (`--syscall-hook socket-tracepoints`), neither the programs
/// there nor the one at the exits of the other socket syscalls run for a process that does
/// no socket I/O.
#[test]
fn only_socket_io_runs_the_http_programs_at_the_socket_tracepoints() {
    for program in ["sock_recv_length", "sock_send_length", "sys_exit_each"] {
        let (calls, runs) = syscall_program_runs_during_getppid_loop("socket-tracepoints", program);
        assert!(calls > 100_000, "{calls} getppid calls");
        assert!(
            runs < calls / 100,
            "{program}: {runs} runs for {calls} getppid calls"
        );
    }
}
