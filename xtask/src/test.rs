//! `cargo xtask test`: what CI runs. Set-up, lint, unit tests, then the integration tests that
//! load the real BPF programs (root).

use std::process::Command;

use anyhow::{Result, bail};

use crate::{
    build::{build_release, monitor_binary},
    cmd::{cargo, is_root, run},
    lint, setup,
};

pub fn test(filter: Option<&str>) -> Result<()> {
    if !is_root() {
        bail!("the integration tests load BPF programs: run `cargo xtask test` as root");
    }
    setup::setup()?;
    lint::lint()?;
    run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "monitor-ebpf",
        "--exclude",
        "monitor-tests",
    ]))?;
    build_release()?;
    run(&mut integration_tests(filter, &[], None))?;
    // The HTTP tests again as kernels before 5.17 have them: the programs built without
    // `bpf_loop`, which share every step with the others but loop their own way, and every
    // map preallocated (the duration histograms capped); the TLS programs attached as before
    // 6.6, one perf event per function.
    run(&mut integration_tests(
        filter,
        BOUNDED_LOOP_SUITES,
        Some(
            "--bounded-loops --preallocated-maps --syscall-hook socket-exits \
             --perf-event-uprobes",
        ),
    ))
}

/// The integration tests run a second time with `--bounded-loops --preallocated-maps`, the
/// HTTP program at the socket syscalls' exits alone (`--syscall-hook socket-exits`) and the
/// TLS programs on perf events (`--perf-event-uprobes`).
const BOUNDED_LOOP_SUITES: &[&str] = &["http_server", "http_client", "https", "https_memory_bio"];

/// `cargo test` of the integration tests: `suites` (all when empty), those whose name has
/// `filter`, every agent started with `agent_args` besides its own. One test at a time: the
/// tests measure CPU time and scheduling, which neighbours disturb.
fn integration_tests(filter: Option<&str>, suites: &[&str], agent_args: Option<&str>) -> Command {
    let mut tests = cargo();
    tests
        .args(["test", "--package", "monitor-tests"])
        .args(suites.iter().flat_map(|suite| ["--test", suite]))
        .env("MONITOR_BIN", monitor_binary());
    if let Some(args) = agent_args {
        tests.env("MONITOR_TEST_AGENT_ARGS", args);
    }
    if let Some(filter) = filter {
        tests.arg(filter);
    }
    tests.args(["--", "--test-threads=1"]);
    tests
}
