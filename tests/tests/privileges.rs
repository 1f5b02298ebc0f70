//! Least privilege: the agent works with the four capabilities the DaemonSet grants, gives up
//! those it needed only to start, and says which one is missing when it cannot start.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    process::{Child, Command, Stdio},
};

use monitor_tests::{
    MonitorAgent,
    agent::free_port,
    capabilities::{
        CAP_BPF, CAP_DAC_READ_SEARCH, CAP_PERFMON, CAP_SYS_PTRACE, DAEMONSET, TlsScan,
        assert_threads_hold_the_run_time_set, capsh_args, capsh_keeping, perf_event_uprobes,
        tls_scan_thread,
    },
    http::{client, get, server_count, wait_until},
    servers::{Server, ab_with, fixture},
    workload::unique_name,
};

/// An unprivileged user other than the agent's (nobody).
const OTHER_UID: &str = "65534";

/// Every thread of the agent holds exactly the run-time set, the one that probes TLS
/// libraries mapped later too: the DaemonSet grants no CAP_SYS_ADMIN, which that thread would
/// keep for perf-event uprobes, and uprobe_multi links need none (without them, on kernels
/// before 6.6, the thread does not run).
fn assert_holds_only_the_run_time_set(agent: &MonitorAgent) {
    let tls_scan = if perf_event_uprobes() {
        TlsScan::Off
    } else {
        TlsScan::RunTimeSet
    };
    assert_threads_hold_the_run_time_set(agent.pid(), tls_scan);
}

/// A process of another user, started now, named by the full name of its executable: longer
/// than the kernel's 15-byte comm, so the name comes from /proc/<pid>/exe.
struct OtherUsersBurner {
    child: Child,
    name: String,
    _dir: tempfile::TempDir,
}

impl OtherUsersBurner {
    fn spin() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let name = format!("{}-long-name", unique_name("cap"));
        let path = dir.path().join(&name);
        fs::copy(env!("CARGO_BIN_EXE_cpu-burner"), &path).unwrap();
        let child = Command::new("setpriv")
            .args([
                &format!("--reuid={OTHER_UID}"),
                &format!("--regid={OTHER_UID}"),
                "--clear-groups",
            ])
            .arg(&path)
            .args(["spin", "1"])
            .stdin(Stdio::null())
            .spawn()
            .expect("running setpriv (util-linux)");
        Self {
            child,
            name,
            _dir: dir,
        }
    }
}

impl Drop for OtherUsersBurner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// With the agent's capabilities already dropped: a server and a busy process of another user,
/// both started now, are measured and named as with full privileges (their executable from
/// /proc/<pid>/exe, the service from /proc/<pid>/environ: both need CAP_SYS_PTRACE).
fn assert_measures_processes_of_another_user(agent: &MonitorAgent) {
    let service = unique_name("nobody");
    let port = free_port();
    let mut command = Command::new("setpriv");
    command
        .args([
            &format!("--reuid={OTHER_UID}"),
            &format!("--regid={OTHER_UID}"),
            "--clear-groups",
            "/usr/bin/python3",
        ])
        .arg(fixture("http_server.py"))
        .env("OTEL_SERVICE_NAME", &service);
    let server = Server::started_by(command, port, &service);
    let burner = OtherUsersBurner::spin();
    let http = client();
    for _ in 0..5 {
        assert_eq!(get(&http, &server.url("/orders")), 200);
    }
    assert_eq!(get(&http, &server.url("/status/503")), 503);

    let server_pid = server.pid().to_string();
    let burner_pid = burner.child.id().to_string();
    let scrape = wait_until(
        agent,
        "the other user's server and busy process, named",
        |scrape| {
            server_count(scrape, &service, 200, "/orders") == Some(5)
                && server_count(scrape, &service, 503, "/status/{id}") == Some(1)
                && scrape
                    .value(
                        "process_cpu_time_seconds_total",
                        // setpriv's series ends where it execs the server.
                        &[
                            ("process_pid", &server_pid),
                            ("process_executable_name", "python3"),
                            ("service_name", &service),
                        ],
                    )
                    .is_some()
                && scrape
                    .value(
                        "process_cpu_time_seconds_total",
                        &[
                            ("process_pid", &burner_pid),
                            ("process_executable_name", &burner.name),
                        ],
                    )
                    .is_some_and(|seconds| seconds > 0.0)
        },
    );
    assert_eq!(
        scrape.value("monitor_refresh_errors_total", &[]),
        Some(0.0),
        "reading the maps failed after the drop"
    );
}

#[test]
fn with_the_daemonsets_four_capabilities_it_measures_and_keeps_only_two() {
    let agent = MonitorAgent::start_with(capsh_keeping(&DAEMONSET), &[]);
    assert_holds_only_the_run_time_set(&agent);
    // HTTPS too, where uprobe_multi links attach the TLS programs without CAP_SYS_ADMIN.
    if !perf_event_uprobes() {
        let scrape = agent.scrape();
        assert!(
            scrape
                .value("monitor_tls_libraries_probed", &[])
                .is_some_and(|probed| probed >= 1.0),
            "no TLS library probed:\n{}",
            agent.log()
        );
        assert_eq!(
            scrape.value("monitor_hook_unavailable", &[("hook", "libssl")]),
            None
        );
    }
    assert_measures_processes_of_another_user(&agent);
    // Threads started for the scrapes above inherited the reduced sets too.
    assert_holds_only_the_run_time_set(&agent);
}

#[test]
fn started_as_root_it_keeps_only_its_run_time_capabilities() {
    let agent = MonitorAgent::start(&[]);
    // The thread that probes TLS libraries mapped later keeps CAP_SYS_ADMIN only for
    // perf-event uprobes.
    assert_threads_hold_the_run_time_set(agent.pid(), tls_scan_thread());
    assert_measures_processes_of_another_user(&agent);
    assert_threads_hold_the_run_time_set(agent.pid(), tls_scan_thread());
}

/// Perf-event uprobes (kernels before 6.6) are attached for CAP_SYS_ADMIN holders alone: the
/// thread that probes TLS libraries mapped later keeps it, and no other.
#[test]
fn with_perf_event_uprobes_the_tls_scan_thread_alone_keeps_cap_sys_admin() {
    let agent = MonitorAgent::start(&["--perf-event-uprobes", "--log-level", "info"]);
    assert_threads_hold_the_run_time_set(agent.pid(), TlsScan::KeepingSysAdmin);
    assert!(
        agent
            .log()
            .contains("(and cap_sys_admin in the thread that probes TLS libraries mapped later)"),
        "{}",
        agent.log()
    );
}

#[test]
fn started_as_root_without_tls_scans_no_thread_keeps_cap_sys_admin() {
    for args in [&["--tls-scan-interval", "0s"][..], &["--no-tls"]] {
        let args = [args, &["--log-level", "info"]].concat();
        let args = &args[..];
        let agent = MonitorAgent::start(args);
        assert_threads_hold_the_run_time_set(agent.pid(), TlsScan::Off);
        let log = agent.log();
        assert!(
            log.contains("capabilities kept: ") && !log.contains("cap_sys_admin"),
            "{args:?}: {log}"
        );
    }
}

/// The agent in a mount namespace of its own without tracefs (the host's stays as it is),
/// with the DaemonSet's capabilities, so that it may not mount it again.
fn without_tracefs() -> Command {
    let script = format!(
        "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; \
         exec capsh {} \"$@\"",
        capsh_args(&DAEMONSET)
            .iter()
            .map(|arg| format!("'{arg}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut launcher = Command::new("unshare");
    launcher.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ]);
    launcher
}

/// Where tracefs is not mounted and the agent may not mount it (the DaemonSet's capabilities
/// hold no CAP_SYS_ADMIN; a node without `/sys/kernel/tracing` in the pod), the classic
/// tracepoints at close's and sendmsg's entries and at fork cannot be attached: the agent
/// says so in `monitor_hook_unavailable`, falls back to close's exit (and from the socket
/// syscalls' exits, or the socket tracepoints, to every syscall's exit), and still counts
/// connections that come and go exactly.
#[test]
fn without_tracefs_it_falls_back_says_so_and_still_counts_exactly() {
    const REQUESTS: usize = 2000;
    // The socket syscalls' exits are classic tracepoints, and so are those the socket
    // tracepoints need beside them: the HTTP program falls back to every syscall's exit.
    for syscall_hook in ["socket-exits", "socket-tracepoints"] {
        let agent = MonitorAgent::start_with(without_tracefs(), &["--syscall-hook", syscall_hook]);
        let hooks = ["sys_enter_close", "sched_process_fork", "sys_enter_sendmsg"];
        let scrape = wait_until(&agent, "the unavailable hooks listed", |scrape| {
            hooks.iter().all(|hook| {
                scrape.value("monitor_hook_unavailable", &[("hook", hook)]) == Some(1.0)
            })
        });
        assert!(
            scrape
                .value(
                    "monitor_bpf_program_info",
                    &[("hook", "sys_exit"), ("hook_kind", "tp_btf")]
                )
                .is_some(),
            "{syscall_hook}: sys_exit needs no tracefs"
        );
        // Attached with every syscall's exit, they would count each request twice.
        for hook in ["sock_recv_length", "sock_send_length"] {
            assert_eq!(
                scrape.value("monitor_bpf_program_info", &[("hook", hook)]),
                None,
                "{syscall_hook}: {hook} left attached"
            );
        }
        // A new connection per request: every close is seen at its exit instead.
        let nginx = Server::nginx(r#"location = /ok { return 200 "ok\n"; }"#);
        assert_eq!(ab_with(&[], &nginx.url("/ok"), REQUESTS, 8), REQUESTS);
        wait_until(&agent, "every request counted once", |scrape| {
            server_count(scrape, "nginx", 200, "/ok") == Some(REQUESTS as u64)
        });
    }
}

/// Runs the agent under capsh keeping `keep`, on a port that is already taken so that it
/// stops right after the checks; returns its exit status and stderr.
fn start_and_stop_keeping(keep: &[u32]) -> (std::process::ExitStatus, String) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let output = capsh_keeping(keep)
        .args(["--listen", &taken.local_addr().unwrap().to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("running capsh (libcap2-bin, installed by `cargo xtask setup`)");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn without_cap_bpf_one_line_names_it_and_the_agent_exits() {
    let (status, stderr) =
        start_and_stop_keeping(&[CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH]);
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "expected one line: {stderr}");
    assert!(
        stderr.contains("ERROR") && stderr.contains("missing capabilities CAP_BPF "),
        "the line does not name CAP_BPF (alone): {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn without_cap_sys_ptrace_a_warning_names_it() {
    let (status, stderr) = start_and_stop_keeping(&[CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH]);
    let warning = stderr
        .lines()
        .find(|line| line.contains("WARN"))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(
        warning.contains("missing capabilities CAP_SYS_PTRACE:"),
        "the warning does not name CAP_SYS_PTRACE (alone): {warning}"
    );
    // Then the taken port stopped it, as it would have anyway.
    assert!(!status.success() && stderr.contains("in use"), "{stderr}");
}

/// `--check` where tracefs cannot be mounted: a run would go on without the classic
/// tracepoints, and the check names each one and what a run would miss, with exit status 3.
#[test]
fn check_without_tracefs_names_the_hooks_a_run_would_miss() {
    let output = without_tracefs()
        .arg("--check")
        .output()
        .expect("running monitor --check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for hook in ["sys_enter_close", "sched_process_fork", "sys_enter_sendmsg"] {
        assert!(
            stdout.contains(&format!("\n  {hook}: ")),
            "{hook} not named: {stdout}"
        );
    }
    assert!(stdout.contains("  sys_exit (tp_btf)\n"), "{stdout}");
    // uprobe_multi links need no CAP_SYS_ADMIN, which the DaemonSet does not grant.
    assert!(stdout.contains("  libssl (uprobe_multi)\n"), "{stdout}");
    assert!(
        stdout.contains("result: degraded, 3 hook(s) unavailable"),
        "{stdout}"
    );
}

/// `--check` where the TLS programs would be perf-event uprobes (kernels before 6.6), which
/// the kernel attaches for CAP_SYS_ADMIN holders alone: without it, HTTPS is named among what
/// a run would miss, and the log says what to grant.
#[test]
fn check_with_perf_event_uprobes_and_without_cap_sys_admin_names_https_as_missing() {
    let output = capsh_keeping(&DAEMONSET)
        .args(["--check", "--perf-event-uprobes"])
        .output()
        .expect("running monitor --check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("\n  libssl: "),
        "libssl not named: {stdout}"
    );
    assert!(
        stdout.contains("result: degraded, 1 hook(s) unavailable"),
        "{stdout}"
    );
    assert!(
        stderr.contains("only with CAP_SYS_ADMIN, which the agent lacks"),
        "{stderr}"
    );
}
