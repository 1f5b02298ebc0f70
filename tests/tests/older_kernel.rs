//! The agent on older kernels than these machines run, booted with qemu (see
//! `monitor_tests::guest`). Debian 12's own, 6.1: its verifier proves less than a current one,
//! and refused the HTTP program until that was written for it; here the real programs load,
//! with the scheduler programs on their BTF tracepoints and on their fallbacks, and count
//! exactly. Debian 11's, 5.10: older than the HTTP programs allow; the agent measures CPU
//! alone, and must not allocate map entries where that kernel cannot do it safely.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use monitor_tests::{
    Scrape,
    agent::monitor_bin,
    guest::{GuestKernel, section},
    servers::fixture,
};

const OK: u64 = 150;
const NOT_FOUND: u64 = 30;
const UNAVAILABLE: u64 = 20;

/// A program for the guest, in `dir`, that runs `script` with `args`: paths the guest sees
/// as they are here (it shares the host's root).
fn guest_program(dir: &Path, script: &str, args: &[String]) -> PathBuf {
    let program = dir.join("run.sh");
    std::fs::write(
        &program,
        format!(
            "exec /bin/sh {} {}\n",
            fixture(script).display(),
            args.join(" ")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    program
}

/// The console of `guest` running `program`, checked to be that kernel's.
fn boot(guest: &GuestKernel, program: &Path) -> String {
    let console = guest.run(program, Duration::from_secs(900));
    assert_eq!(
        section(&console, "release"),
        vec![guest.release.as_str()],
        "not the guest kernel; console:\n{console}"
    );
    console
}

fn monitor_path() -> String {
    monitor_bin().canonicalize().unwrap().display().to_string()
}

/// 6.1 has `bpf_loop` (the programs built with it load) and allocates map entries safely in
/// tracing programs (no map is preallocated, and the kernel warns of nothing); it has no
/// uprobe_multi links (6.6).
#[test]
fn http_and_cpu_are_measured_exactly_on_debian_12s_kernel() {
    let guest = GuestKernel::debian_12();
    let dir = tempfile::tempdir().unwrap();
    let program = guest_program(
        dir.path(),
        "guest/agent_smoke.sh",
        &[
            monitor_path(),
            fixture("").display().to_string(),
            OK.to_string(),
            NOT_FOUND.to_string(),
            UNAVAILABLE.to_string(),
        ],
    );

    let console = boot(&guest, &program);
    assert_eq!(
        section(&console, "kernel warnings"),
        Vec::<&str>::new(),
        "the kernel warned of run-time allocation; console:\n{console}"
    );
    // The agent as deployed, then one with the scheduler programs on their fallbacks and the
    // HTTP program at the socket syscalls' exits (`bpf_task_pt_regs`, 5.15).
    for (agent, sched_hook_kind, wakeups, syscall_hook_kind) in [
        ("", "tp_btf", false, "tp_btf"),
        ("fallback ", "tracepoint", true, "tracepoint"),
    ] {
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
        assert!(
            attached("sys_exit", syscall_hook_kind),
            "no HTTP program:\n{log}"
        );
        assert!(attached("sched_switch", sched_hook_kind), "{log}");
        // No uprobe_multi links before 6.6: the agent asks the kernel, and attaches the TLS
        // programs (to the host's libssl, which the guest sees) as perf events.
        let tls_kinds = scrape.label_values(
            "monitor_bpf_program_info",
            &[("hook", "libssl")],
            "hook_kind",
        );
        assert!(
            tls_kinds.iter().any(|kind| kind == "uprobe")
                && tls_kinds.iter().any(|kind| kind == "uretprobe")
                && !tls_kinds.iter().any(|kind| kind.ends_with("_multi")),
            "TLS programs not on perf events: {tls_kinds:?}\n{log}"
        );
        assert_eq!(attached("sched_wakeup", sched_hook_kind), wakeups, "{log}");
        assert_counted_exactly(&scrape, &log);
        assert_burner_counted(&scrape, &console);
        let services =
            scrape.label_values("http_server_request_duration_seconds", &[], "service_name");
        assert!(
            services.iter().any(|service| service == "http_server")
                && !services.iter().any(|service| service == "pyexcluded"),
            "--exclude-comm pyexcluded, and the agent has {services:?}"
        );
        assert!(
            !log.contains("bounded loops") && !log.contains("preallocated"),
            "{log}"
        );
    }
    // Asked for the socket tracepoints, which came with Linux 6.3, the agent says why it
    // cannot have them and reads every syscall's exit instead, exactly.
    let log = section(&console, "socket tracepoints agent log").join("\n");
    assert!(
        log.contains("the socket tracepoints cannot be used"),
        "no word of the fallback:\n{log}"
    );
    let scrape = Scrape::parse(&section(&console, "socket tracepoints metrics").join("\n"));
    let hook_kinds = |hook: &str| {
        scrape.label_values("monitor_bpf_program_info", &[("hook", hook)], "hook_kind")
    };
    assert_eq!(hook_kinds("sys_exit"), ["tp_btf"], "{log}");
    assert!(hook_kinds("sock_recv_length").is_empty(), "{log}");
    assert_counted_exactly(&scrape, &log);
}

/// On 5.10 the kernel refuses the HTTP programs (built with bounded loops there: their atomic
/// compare-and-swap and fetch-and-add came in 5.12) and the agent says so in one line; it
/// measures CPU time, with the scheduler's maps preallocated: before 6.1 the kernel
/// allocated a new map entry with allocators that can take the run queue's lock the switch
/// program runs under, and warned of it. Before, the agent's maps allocated at run time there
/// (the kernel's warning in its log), and the guest deadlocked under the agent within seconds
/// to minutes of starts and stops: both CPUs spun in `native_queued_spin_lock_slowpath`
/// (qemu's monitor, sampled eight times); preallocated, twelve starts and stops ran through.
#[test]
fn cpu_is_measured_with_preallocated_maps_on_debian_11s_kernel() {
    let guest = GuestKernel::debian_11();
    let dir = tempfile::tempdir().unwrap();
    let program = guest_program(dir.path(), "guest/agent_cpu_only.sh", &[monitor_path()]);

    let console = boot(&guest, &program);
    let log = section(&console, "agent log").join("\n");
    assert_eq!(
        section(&console, "kernel warnings"),
        Vec::<&str>::new(),
        "the kernel warned of run-time allocation; agent log:\n{log}"
    );
    assert!(
        log.contains("are preallocated"),
        "the agent did not say it preallocates:\n{log}"
    );
    // Refused, in one line that says why, without the verifier's log, which is at debug level.
    let (verifier_logs, records) = debug_records(&log);
    assert!(
        records.contains("no HTTP metrics")
            && records.contains("atomic operations, Linux 5.12 or newer"),
        "{log}"
    );
    assert!(!records.contains("insns (limit"), "a verifier log:\n{log}");
    // The kernel wrote its reason and statistics, not the walk of every instruction, which
    // made aya load a refused program up to five more times into ever larger logs.
    assert!(
        verifier_logs.contains("BPF_STX uses reserved fields")
            && verifier_logs.contains("insns (limit"),
        "no reason or statistics in the verifier's log:\n{log}"
    );
    let walked: Vec<&str> = verifier_logs
        .lines()
        .filter(|line| is_instruction_line(line))
        .collect();
    assert!(
        walked.is_empty(),
        "the verifier's log walks the instructions: {walked:?}"
    );
    let scrape = Scrape::parse(&section(&console, "metrics").join("\n"));
    assert_eq!(
        scrape.value("monitor_hook_unavailable", &[("hook", "sys_exit")]),
        Some(1.0),
        "{log}"
    );
    assert_eq!(
        scrape.value(
            "monitor_bpf_program_info",
            &[("hook", "sched_switch"), ("hook_kind", "tracepoint")]
        ),
        Some(1.0),
        "{log}"
    );
    assert_burner_counted(&scrape, &console);
}

/// The agent's CPU time for the guest's burner against the burner's own figure, in ticks of
/// 10 ms: within a tick and 10 % of it.
fn assert_burner_counted(scrape: &Scrape, console: &str) {
    let ticks: f64 = section(console, "burner")
        .first()
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("no burner figure; console:\n{console}"));
    let burned = burner_cpu(scrape);
    assert!(
        ticks >= 0.45 && (burned - ticks).abs() <= 0.01 + 0.1 * ticks,
        "CPU of the burner: {burned} s, its own utime + stime {ticks} s"
    );
}

/// The agent's log split into its debug records and the rest (a record is a line that begins
/// with `[` and the lines after it that do not).
fn debug_records(log: &str) -> (String, String) {
    let (mut debug, mut rest) = (String::new(), String::new());
    let mut in_debug = false;
    for line in log.lines() {
        if line.starts_with('[') {
            in_debug = line.contains(" DEBUG]");
        }
        let into = if in_debug { &mut debug } else { &mut rest };
        into.push_str(line);
        into.push('\n');
    }
    (debug, rest)
}

/// A line of the verifier's walk: an instruction as it prints one, `28: (79) r8 = ...` (the
/// agent's log indents it).
fn is_instruction_line(line: &str) -> bool {
    let line = line.trim_start();
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && line[digits..].starts_with(": (")
}

/// Every request counted once per status, on both ends.
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
}

/// The CPU time the agent has for the guest's burner (`guestburn`), 0 when none.
fn burner_cpu(scrape: &Scrape) -> f64 {
    scrape
        .value(
            "process_cpu_time_seconds_total",
            &[("process_executable_name", "guestburn")],
        )
        .unwrap_or(0.0)
}
