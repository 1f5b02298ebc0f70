//! Formatting and clippy. The BPF crate is linted on its own: it is `no_std` for another target,
//! and linting it with the host crates would unify features it must not see.

use std::process::Command;

use anyhow::Result;

use crate::{
    cmd::{cargo, run, workspace_root},
    setup::NIGHTLY,
};

pub fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    // The fuzz crate (its own workspace) is formatted and type-checked here, not built for
    // fuzzing (`cargo xtask fuzz` does that): a change to an API its targets use shows now
    // rather than at the next fuzzing run. The check costs about a minute (its own BPF build:
    // its dependency features differ).
    run(cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"]))?;
    run(Command::new("rustup").current_dir(workspace_root()).args([
        "run",
        NIGHTLY,
        "cargo",
        "check",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--bins",
    ]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "monitor-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The nightly's cargo, through rustup: `-Z` flags are nightly-only.
    run(Command::new("rustup")
        .current_dir(workspace_root())
        .args([
            "run",
            NIGHTLY,
            "cargo",
            "clippy",
            "--package",
            "monitor-ebpf",
        ])
        .args(["--all-targets", "--", "-D", "warnings"])
        .args(["-C", "panic=abort", "-Zpanic_abort_tests"]))
}
