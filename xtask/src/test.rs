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
    run(&mut integration)
}
