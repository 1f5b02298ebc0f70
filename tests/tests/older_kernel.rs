//! The agent on an older kernel than these machines run: Debian 12's own, 6.1, booted with
//! qemu (see `monitor_tests::guest`). Its verifier proves less than a current one: it refused
//! the HTTP program until that was written for it, and the agent then ran with CPU metrics
//! alone. Here the real programs load there, with the scheduler programs on their BTF
//! tracepoints and on their fallbacks, and count exactly.

use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use monitor_tests::{
    Scrape,
    agent::monitor_bin,
    guest::{GuestKernel, section},
    servers::fixture,
};

const OK: u64 = 150;
const NOT_FOUND: u64 = 30;
const UNAVAILABLE: u64 = 20;

#[test]
fn http_and_cpu_are_measured_exactly_on_debian_12s_kernel() {
    let guest = GuestKernel::prepared();
    // A program of paths the guest sees as they are here (it shares the host's root).
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("run.sh");
    std::fs::write(
        &program,
        format!(
            "exec /bin/sh {} {} {} {OK} {NOT_FOUND} {UNAVAILABLE}\n",
            fixture("guest/agent_smoke.sh").display(),
            monitor_bin().canonicalize().unwrap().display(),
            fixture("").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();

    let console = guest.run(&program, Duration::from_secs(900));
    assert_eq!(
        section(&console, "release"),
        vec![guest.release.as_str()],
        "not the guest kernel; console:\n{console}"
    );
    // The agent as deployed, then one with the scheduler programs on their fallbacks.
    for (agent, sched_hook_kind, wakeups) in
        [("", "tp_btf", false), ("fallback ", "tracepoint", true)]
    {
        let log = section(&console, &format!("{agent}agent log")).join("\n");
        assert!(
            !log.contains("refused") && !log.contains("unavailable"),
            "a program was refused:\n{log}"
        );
        let scrape = Scrape::parse(&section(&console, &format!("{agent}metrics")).join("\n"));
        let attached = |hook: &str, kind: &str| {
            scrape.value(
                "monitor_bpf_program_info",
                &[("hook", hook), ("hook_kind", kind)],
            ) == Some(1.0)
        };
        assert!(attached("sys_exit", "tp_btf"), "no HTTP program:\n{log}");
        assert!(attached("sched_switch", sched_hook_kind), "{log}");
        assert_eq!(attached("sched_wakeup", sched_hook_kind), wakeups, "{log}");
        assert_counted_exactly(&scrape, &log);
        let services =
            scrape.label_values("http_server_request_duration_seconds", &[], "service_name");
        assert!(
            services.iter().any(|service| service == "http_server")
                && !services.iter().any(|service| service == "pyexcluded"),
            "--exclude-comm pyexcluded, and the agent has {services:?}"
        );
    }
}

/// Every request counted once per status, on both ends, and the burner's CPU time.
fn assert_counted_exactly(scrape: &Scrape, log: &str) {
    for (status, expected) in [("200", OK), ("404", NOT_FOUND), ("503", UNAVAILABLE)] {
        let route = if status == "200" {
            "/hello"
        } else {
            "/status/{id}"
        };
        let server = [
            ("service_name", "http_server"),
            ("http_response_status_code", status),
            ("http_route", route),
        ];
        let client = [
            ("service_name", "keep_alive_client"),
            ("http_response_status_code", status),
            ("server_address", "shop.test"),
        ];
        assert_eq!(
            scrape.histogram_count("http_server_request_duration_seconds", &server),
            Some(expected),
            "server, status {status}; agent log:\n{log}"
        );
        assert_eq!(
            scrape.histogram_count("http_client_request_duration_seconds", &client),
            Some(expected),
            "client, status {status}"
        );
    }
    let burned = scrape
        .value(
            "process_cpu_time_seconds_total",
            &[("process_executable_name", "guestburn")],
        )
        .unwrap_or(0.0);
    assert!(
        (0.45..1.0).contains(&burned),
        "CPU of a process that burnt 0.5 s: {burned} s"
    );
}
