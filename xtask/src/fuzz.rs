//! `cargo xtask fuzz [--seconds N] [filter]`: every cargo-fuzz target in `fuzz/` for a bounded
//! time (each its own run, one after another), built with the nightly the BPF programs use,
//! optimised and with debug assertions and overflow checks. New inputs go to a work corpus in
//! `fuzz/target/corpus/`, so the committed seeds in `fuzz/corpus/` stay as they are; a crash
//! leaves its input in `fuzz/artifacts/<target>/`. Not part of `cargo xtask test`.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{cargo, describe, output, run, workspace_root},
    setup::{self, NIGHTLY},
};

/// Longest time one input may take before libFuzzer calls it a hang.
const INPUT_TIMEOUT_SECONDS: u64 = 5;

/// Debian packages the fuzz build needs: libFuzzer is C++.
const APT_PACKAGES: &[&str] = &["g++"];

pub fn fuzz(seconds: u64, filter: Option<&str>) -> Result<()> {
    setup::setup()?;
    setup::apt_install(APT_PACKAGES)?;
    install_cargo_fuzz()?;
    let fuzz_dir = workspace_root().join("fuzz");
    let listed =
        output(fuzz_command(&fuzz_dir).arg("list")).context("`cargo fuzz list` failed in fuzz/")?;
    let targets: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|target| !target.is_empty())
        .filter(|target| filter.is_none_or(|filter| target.contains(filter)))
        .collect();
    if targets.is_empty() {
        bail!("no fuzz target matches {filter:?}; targets:\n{listed}");
    }
    let mut results = Vec::new();
    for target in &targets {
        results.push((*target, run_target(&fuzz_dir, target, seconds)?));
    }
    eprintln!("\nxtask: fuzzing summary ({seconds} s per target)");
    let mut crashed = Vec::new();
    for (target, result) in &results {
        let outcome = if result.passed { "ok" } else { "CRASH" };
        let runs = result
            .runs
            .map_or_else(|| "?".to_owned(), |runs| runs.to_string());
        eprintln!("  {target:<16} {outcome:<6} {runs:>12} inputs run");
        if !result.passed {
            crashed.push(*target);
        }
    }
    if !crashed.is_empty() {
        bail!("fuzz targets failed: {crashed:?}; their inputs are in fuzz/artifacts/");
    }
    Ok(())
}

/// `cargo fuzz ...` with the nightly, in `fuzz/`.
fn fuzz_command(fuzz_dir: &Path) -> Command {
    let mut command = Command::new("rustup");
    command
        .current_dir(fuzz_dir)
        .args(["run", NIGHTLY, "cargo", "fuzz"]);
    command
}

fn install_cargo_fuzz() -> Result<()> {
    if output(cargo().args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    run(cargo().args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz (needs network access to crates.io)")
}

struct Outcome {
    passed: bool,
    /// Inputs run, from libFuzzer's final statistics.
    runs: Option<u64>,
}

fn run_target(fuzz_dir: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let work = fuzz_dir.join("target/corpus").join(target);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut command = fuzz_command(fuzz_dir);
    command
        .args(["run", target])
        .arg(&work)
        .arg(Path::new("corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1")
        .stderr(Stdio::piped());
    eprintln!("+ {}", describe(&command));
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start `{}`", describe(&command)))?;
    // libFuzzer reports on stderr: passed through, its count of inputs run picked out.
    let mut runs = None;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            if let Some(count) = line.strip_prefix("stat::number_of_executed_units:") {
                runs = count.trim().parse().ok();
            }
            eprintln!("{line}");
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    Ok(Outcome {
        passed: status.success(),
        runs,
    })
}
