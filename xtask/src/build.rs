//! Building and running the agent.

use std::{os::unix::process::CommandExt as _, path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::{
    cmd::{cargo, is_root, run as run_command, workspace_root},
    setup,
};

pub fn monitor_binary() -> PathBuf {
    workspace_root().join("target/release/monitor")
}

pub fn build_release() -> Result<()> {
    run_command(cargo().args(["build", "--release", "--package", "monitor"]))
}

/// `cargo xtask run [-- args]`: set up, build, and replace this process with the agent.
pub fn run(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the agent loads BPF programs: run `cargo xtask run` as root");
    }
    setup::setup()?;
    build_release()?;
    let binary = monitor_binary();
    eprintln!("+ {} {}", binary.display(), args.join(" "));
    let error = Command::new(&binary).args(args).exec();
    bail!("cannot start {}: {error}", binary.display())
}
