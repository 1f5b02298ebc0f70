//! `cargo xtask bench`: what the agent costs and how exactly it counts, measured against no
//! agent and against empty programs on the same hooks, in interleaved rounds:
//!
//! - `http`: nginx under wrk (saturation) and oha (fixed rate), with the agent's counts and
//!   percentiles against the load generator's;
//! - `https`: nginx over TLS under wrk, both OpenSSL programs, with and without the agent's
//!   uprobes on the library;
//! - `syscall`: an unrelated getppid loop;
//! - `sched`: BPF time per context switch;
//! - `startup`: exec to the first scrape with data;
//! - `micro`: criterion benchmarks of the userspace hot paths (section `userspace`).
//!
//! Figures go to target/bench/bench.json and, on full runs, to BENCHMARKS.md between
//! `<!-- bench:NAME -->` markers. `--quick` is a smoke run: one short round of everything,
//! BENCHMARKS.md left alone.

mod agent;
mod churn;
mod compare;
mod http;
mod http_report;
mod https;
mod loadgen;
mod micro;
mod profile;
mod progress;
mod sampler;
mod sched;
mod soak;
mod startup;
mod stats;
mod syscall;

use std::{fs, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

pub use compare::compare;

use crate::{
    build::build_release,
    cmd::{cargo, is_root, run, workspace_root},
    setup,
};

struct Plan {
    http: http::Plan,
    syscall: syscall::Plan,
    sched: sched::Plan,
    startup_rounds: usize,
    micro: micro::Plan,
    https: https::Plan,
}

/// The benchmarks, by the names of their BENCHMARKS.md sections (and of `--only`).
const BENCHMARKS: [&str; 6] = ["http", "https", "syscalls", "sched", "startup", "userspace"];

impl Plan {
    fn new(quick: bool, cpus: usize) -> Self {
        // With two CPUs or more the load generator and nginx get one each; the agent and the
        // rest of the host share them.
        let server_affinity = (cpus >= 2).then_some("10");
        let rounds = if quick { 1 } else { 5 };
        Self {
            http: http::Plan {
                rounds,
                connections: 32,
                warm_up: Duration::from_secs(1),
                saturation: Duration::from_secs(if quick { 2 } else { 8 }),
                rate: 10_000,
                fixed_run: Duration::from_secs(if quick { 2 } else { 10 }),
                rate_connections: 16,
                pilot_run: Duration::from_secs(2),
                load_cpus: "0",
                server_affinity,
            },
            syscall: syscall::Plan {
                rounds,
                run: Duration::from_millis(if quick { 1000 } else { 3000 }),
                cpus: "0",
            },
            sched: sched::Plan {
                rounds: if quick { 1 } else { 7 },
                run: Duration::from_millis(if quick { 1000 } else { 3000 }),
            },
            startup_rounds: if quick { 2 } else { 9 },
            micro: micro::Plan { quick },
            https: https::Plan {
                rounds,
                run: Duration::from_secs(if quick { 2 } else { 8 }),
                connections: 16,
                load_cpus: "0",
                server_affinity,
            },
        }
    }

    fn estimate(&self, wanted: impl Fn(&str) -> bool) -> Duration {
        [
            ("http", self.http.estimate()),
            ("https", self.https.estimate()),
            ("syscalls", self.syscall.estimate()),
            ("sched", self.sched.estimate()),
            (
                "startup",
                startup::ROUND_ESTIMATE * self.startup_rounds as u32,
            ),
            ("userspace", self.micro.estimate()),
        ]
        .into_iter()
        .filter(|(name, _)| wanted(name))
        .map(|(_, estimate)| estimate)
        .sum()
    }
}

/// The 1-minute load average.
fn load_average() -> String {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().next().unwrap_or("?").to_owned()
}

/// Kernel, CPUs and how busy the host was: figures are only comparable within a run.
fn machine(load_at_start: &str, progress: &progress::Progress) -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "kernel {}, {} CPUs, load average {load_at_start} at the start and {} at the end, {}",
        kernel.trim(),
        cpus(),
        load_average(),
        progress.disturbance()
    )
}

/// Where cargo builds: CARGO_TARGET_DIR, else the workspace's `target`.
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs every benchmark, or only the one named by `--only`.
pub fn bench(quick: bool, only: Option<&str>) -> Result<()> {
    if !is_root() {
        bail!("the benchmark loads BPF programs: run `cargo xtask bench` as root");
    }
    if let Some(name) = only.filter(|name| !BENCHMARKS.contains(name)) {
        bail!("no benchmark {name}: choose from {BENCHMARKS:?}");
    }
    let wanted = |name: &str| only.is_none_or(|only| only == name);
    setup::setup()?;
    let oha = if wanted("http") {
        // The load generators; only the bench uses them.
        setup::apt_install(&["wrk"])?;
        Some(loadgen::ensure_oha()?)
    } else {
        None
    };
    if wanted("https") {
        setup::apt_install(&["wrk", "openssl"])?;
    }
    build_release()?;
    let helper = target_dir().join("release/cpu-burner");
    if wanted("syscalls") || wanted("sched") {
        build_test_binary("cpu-burner")?;
    }
    let load_at_start = load_average();
    let plan = Plan::new(quick, cpus());
    let estimate = plan.estimate(wanted);
    let mut progress = progress::Progress::new(estimate);
    eprintln!(
        "xtask bench: about {} to go (load average {load_at_start})",
        progress::clock(estimate)
    );

    let http = match &oha {
        Some(oha) => Some(http::measure(&plan.http, oha, &mut progress)?),
        None => None,
    };
    let https = if wanted("https") {
        Some(https::measure(&plan.https, &mut progress)?)
    } else {
        None
    };
    let syscalls = if wanted("syscalls") {
        Some(syscall::measure(&plan.syscall, &helper, &mut progress)?)
    } else {
        None
    };
    let sched = if wanted("sched") {
        Some(sched::measure(&plan.sched, &helper, &mut progress)?)
    } else {
        None
    };
    let startup = if wanted("startup") {
        Some(startup::startup_time(plan.startup_rounds, &mut progress)?)
    } else {
        None
    };
    let micro = if wanted("userspace") {
        Some(micro::measure(&plan.micro, &mut progress)?)
    } else {
        None
    };
    let machine = machine(&load_at_start, &progress);

    let mut sections = Vec::new();
    let mut report = serde_json::Map::new();
    report.insert("quick".into(), json!(quick));
    report.insert("machine".into(), json!(machine));
    report.insert("duration_s".into(), json!(progress.elapsed().as_secs()));
    if let Some(http) = &http {
        let summary = http_report::Summary::new(http, syscalls.as_ref());
        sections.push(("http", http_report::markdown(http, &summary, &machine)));
        report.insert("http".into(), summary.json(http));
    }
    if let Some(https) = &https {
        sections.push(("https", https.markdown(&machine)));
        report.insert("https".into(), https.json());
    }
    if let Some(syscalls) = &syscalls {
        sections.push(("syscalls", syscalls.markdown(&machine)));
        report.insert("syscalls".into(), syscalls.json());
    }
    if let Some(sched) = &sched {
        sections.push(("sched", sched.markdown(&machine)));
        report.insert("sched".into(), sched.json());
    }
    if let Some(startup) = &startup {
        sections.push(("startup", startup.markdown(&machine)));
        report.insert("startup".into(), startup.json());
    }
    if let Some(micro) = &micro {
        sections.push(("userspace", micro.markdown(&machine)));
        report.insert("userspace".into(), micro.json());
    }

    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json_path = dir.join("bench.json");
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(report))? + "\n";
    fs::write(&json_path, text).with_context(|| format!("writing {}", json_path.display()))?;
    for (_, body) in &sections {
        println!("{body}");
    }
    if quick {
        eprintln!(
            "xtask: quick run: figures in {} only (BENCHMARKS.md is written by full runs)",
            json_path.display()
        );
    } else {
        for (name, body) in &sections {
            write_section(name, body)?;
        }
        eprintln!(
            "xtask: figures written to BENCHMARKS.md and {} in {}",
            json_path.display(),
            progress::clock(progress.elapsed())
        );
    }
    Ok(())
}

/// Builds the agent and the one-shot server the churn and the soak start by the thousand.
fn prepare_churn() -> Result<std::path::PathBuf> {
    if !is_root() {
        bail!("the agent loads BPF programs: run this as root");
    }
    setup::setup()?;
    build_release()?;
    build_test_binary("one-shot-server")
}

/// Builds a helper binary of the tests crate (release) and returns its path.
fn build_test_binary(name: &str) -> Result<std::path::PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "monitor-tests",
        "--bin",
        name,
    ]))?;
    Ok(target_dir().join("release").join(name))
}

/// Writes `name`'s figures to target/bench/NAME.json and, unless `quick`, to BENCHMARKS.md.
fn record(name: &str, quick: bool, json: serde_json::Value, markdown: &str) -> Result<()> {
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{markdown}");
    if quick {
        eprintln!("xtask: quick run: figures in {} only", path.display());
    } else {
        write_section(name, markdown)?;
        eprintln!(
            "xtask: figures written to BENCHMARKS.md and {}",
            path.display()
        );
    }
    Ok(())
}

/// `cargo xtask churn`: see [`churn`].
pub fn churn(quick: bool) -> Result<()> {
    let one_shot = prepare_churn()?;
    let load_at_start = load_average();
    let plan = if quick {
        churn::Plan::quick()
    } else {
        churn::Plan::full()
    };
    let progress = progress::Progress::new(std::time::Duration::ZERO);
    let result = churn::measure(&plan, &one_shot)?;
    let machine = machine(&load_at_start, &progress);
    record("churn", quick, result.json(), &result.markdown(&machine))?;
    if !result.exact() {
        bail!("the agent's counts differ from the load's (see above)");
    }
    Ok(())
}

/// `cargo xtask soak`: see [`soak`].
pub fn soak(minutes: u64) -> Result<()> {
    let one_shot = prepare_churn()?;
    let load_at_start = load_average();
    let progress = progress::Progress::new(std::time::Duration::ZERO);
    eprintln!("xtask soak: {minutes} min of mixed load");
    let result = soak::measure(std::time::Duration::from_secs(minutes * 60), &one_shot)?;
    let machine = machine(&load_at_start, &progress);
    // A short soak is a smoke run: its figures do not replace the recorded ones.
    record(
        "soak",
        minutes < 10,
        result.json(),
        &result.markdown(&machine),
    )?;
    if !result.exact() || !result.flat() {
        bail!(
            "the soak failed: counts exact: {}, flat: {}",
            result.exact(),
            result.flat()
        );
    }
    Ok(())
}

/// Replaces the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in BENCHMARKS.md
/// (appends the section when the markers are missing).
fn write_section(name: &str, body: &str) -> Result<()> {
    let path = workspace_root().join("BENCHMARKS.md");
    let text = fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    fs::write(&path, replace_section(&text, name, body))
        .with_context(|| format!("writing {}", path.display()))
}

fn replace_section(text: &str, name: &str, body: &str) -> String {
    let start = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let section = format!("{start}\n{body}{end}");
    match (text.find(&start), text.find(&end)) {
        (Some(s), Some(e)) if s < e => format!("{}{section}{}", &text[..s], &text[e + end.len()..]),
        _ => format!("{}\n\n{section}\n", text.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_between_their_markers_or_appended() {
        let text = "# B\n<!-- bench:a -->\nold\n<!-- /bench:a -->\ntail\n";
        assert_eq!(
            replace_section(text, "a", "new\n"),
            "# B\n<!-- bench:a -->\nnew\n<!-- /bench:a -->\ntail\n"
        );
        assert_eq!(
            replace_section("# B\n", "b", "x\n"),
            "# B\n\n<!-- bench:b -->\nx\n<!-- /bench:b -->\n"
        );
    }
}
