//! `cargo xtask test`: what CI runs. Set-up, lint, unit tests, then the integration tests that
//! load the real BPF programs (root).

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
    // One test at a time: the tests measure CPU time and scheduling, which neighbours disturb.
    let mut integration = cargo();
    integration
        .args(["test", "--package", "monitor-tests"])
        .env("MONITOR_BIN", monitor_binary());
    if let Some(filter) = filter {
        integration.arg(filter);
    }
    integration.args(["--", "--test-threads=1"]);
    run(&mut integration)?;
    // The HTTP tests again as kernels before 5.17 have them: the programs built without
    // `bpf_loop`, which share every step with the others but loop their own way, and every
    // map preallocated (the duration histograms capped).
    let mut bounded = cargo();
    bounded
        .args(["test", "--package", "monitor-tests"])
        .args(
            BOUNDED_LOOP_SUITES
                .iter()
                .flat_map(|suite| ["--test", suite]),
        )
        .env("MONITOR_BIN", monitor_binary())
        .env(
            "MONITOR_TEST_AGENT_ARGS",
            "--bounded-loops --preallocated-maps",
        );
    if let Some(filter) = filter {
        bounded.arg(filter);
    }
    bounded.args(["--", "--test-threads=1"]);
    run(&mut bounded)
}

/// The integration tests run a second time with `--bounded-loops --preallocated-maps`.
const BOUNDED_LOOP_SUITES: &[&str] = &["http_server", "http_client"];
