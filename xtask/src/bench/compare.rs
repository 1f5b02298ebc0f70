//! `cargo xtask compare --baseline <binary>`: the quick HTTP benchmark, run alternately with
//! another build of the agent and with this tree's, several times. The VMs this runs on drift
//! by 20-40 % within hours, so a change is only judged against runs of the other build taken
//! in between, never against figures of another day.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{stats::median, target_dir};
use crate::{
    build::{build_release, monitor_binary},
    cmd::{is_root, run},
};

/// The figures compared, as (label, path in bench.json's `http` object).
const FIGURES: [(&str, &[&str]); 5] = [
    (
        "BPF ns per request, both ends traced",
        &["bpf_ns_per_request", "monitor"],
    ),
    (
        "BPF ns per request, nginx only",
        &["bpf_ns_per_request", "monitor_server_only"],
    ),
    (
        "BPF ns per request, empty programs",
        &["bpf_ns_per_request", "empty_programs"],
    ),
    (
        "throughput, of no agent's (both ends)",
        &["throughput_vs_no_agent_same_round", "monitor", "median"],
    ),
    (
        "throughput, of no agent's (nginx only)",
        &[
            "throughput_vs_no_agent_same_round",
            "monitor_server_only",
            "median",
        ],
    ),
];

pub fn compare(baseline: &Path, runs: usize) -> Result<()> {
    if !is_root() {
        bail!("the benchmark loads BPF programs: run `cargo xtask compare` as root");
    }
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let baseline = fs::canonicalize(baseline)
        .with_context(|| format!("the baseline agent {} is not there", baseline.display()))?;
    build_release()?;
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // A copy, so that a build during the runs does not change what is measured.
    let candidate = dir.join("monitor-this-tree");
    fs::copy(monitor_binary(), &candidate)
        .with_context(|| format!("copying the agent to {}", candidate.display()))?;
    let builds: [(&str, PathBuf); 2] = [("baseline", baseline), ("this tree", candidate)];
    let xtask = std::env::current_exe().context("finding the xtask binary")?;
    let mut results: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
    for round in 0..runs {
        // Each build goes first in every other round.
        for turn in 0..2 {
            let which = (round + turn) % 2;
            let (name, binary) = &builds[which];
            eprintln!("xtask compare: round {}/{runs}, {name}", round + 1);
            // Each run's tables go nowhere (the figures are read from bench.json), so that
            // stdout holds only the comparison; progress stays on stderr.
            run(Command::new(&xtask)
                .args(["bench", "--quick", "--only", "http"])
                .env("MONITOR_BIN", binary)
                .stdout(Stdio::null()))?;
            let path = dir.join("bench.json");
            let report: Value = serde_json::from_str(
                &fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            )?;
            results[which].push(report["http"].clone());
        }
    }
    let text = table(&builds, &results, runs);
    println!("{text}");
    let summary = json!({
        "runs": runs,
        "baseline": builds[0].1,
        "this_tree_commit": crate::cmd::output(Command::new("git").args(["rev-parse", "HEAD"]))
            .map(|commit| commit.trim().to_string()),
        "figures": FIGURES.iter().map(|(label, path)| json!({
            "figure": label,
            "baseline": values(&results[0], path),
            "this_tree": values(&results[1], path),
        })).collect::<Vec<_>>(),
    });
    let path = dir.join("compare.json");
    fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask compare: figures in {}", path.display());
    Ok(())
}

/// One figure from every run of a build.
fn values(runs: &[Value], path: &[&str]) -> Vec<f64> {
    runs.iter()
        .filter_map(|http| {
            path.iter()
                .try_fold(http, |value, key| value.get(key))
                .and_then(Value::as_f64)
        })
        .collect()
}

fn table(builds: &[(&str, PathBuf); 2], results: &[Vec<Value>; 2], runs: usize) -> String {
    let mut text = format!(
        "`cargo xtask compare --baseline {} --runs {runs}`: `cargo xtask bench --quick --only \
         http` run {runs} times with each build, alternating; medians (lowest-highest).\n\n\
         | figure | baseline | this tree | change |\n|---|---|---|---|\n",
        builds[0].1.display()
    );
    for (label, path) in FIGURES {
        let [before, after] = [0, 1].map(|i| values(&results[i], path));
        let is_share = path[0].starts_with("throughput");
        let cell = |values: &[f64]| {
            let spread = |f: fn(f64, f64) -> f64| values.iter().copied().fold(values[0], f);
            match values.len() {
                0 => "-".to_string(),
                _ if is_share => format!(
                    "{:.1} % ({:.1}-{:.1} %)",
                    100.0 * median(values.to_vec()),
                    100.0 * spread(f64::min),
                    100.0 * spread(f64::max)
                ),
                _ => format!(
                    "{:.0} ({:.0}-{:.0})",
                    median(values.to_vec()),
                    spread(f64::min),
                    spread(f64::max)
                ),
            }
        };
        let (old, new) = (median(before.clone()), median(after.clone()));
        let change = if is_share {
            format!("{:+.1} points", 100.0 * (new - old))
        } else {
            format!("{:+.1} %", 100.0 * (new / old - 1.0))
        };
        text.push_str(&format!(
            "| {label} | {} | {} | {change} |\n",
            cell(&before),
            cell(&after)
        ));
    }
    text
}
