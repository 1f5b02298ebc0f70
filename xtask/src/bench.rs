//! `cargo xtask bench`: what the agent's kernel programs cost, measured with the kernel's own
//! BPF statistics (`kernel.bpf_stats_enabled`, switched on by the agent's `--bpf-stats`), and
//! written to BENCHMARKS.md between markers.

use std::{collections::BTreeMap, fs, process::Command};

use anyhow::{Context as _, Result, bail};
use monitor_tests::{MonitorAgent, Scrape};

use crate::{
    build::build_release,
    cmd::{cargo, is_root, output, run, workspace_root},
    setup, startup,
};

const RUN_TIME: &str = "monitor_bpf_program_run_time_seconds_total";
const RUNS: &str = "monitor_bpf_program_runs_total";
const SECTION: &str = "sched";
const STARTUP: &str = "startup";
const BENCHMARKS: [&str; 2] = [SECTION, STARTUP];

/// Runs every benchmark, or only the one named by `--only` (`sched`, `startup`).
pub fn bench(quick: bool, only: Option<&str>) -> Result<()> {
    if !is_root() {
        bail!("the benchmark loads BPF programs: run `cargo xtask bench` as root");
    }
    if let Some(name) = only.filter(|name| !BENCHMARKS.contains(name)) {
        bail!("no benchmark {name}: choose from {BENCHMARKS:?}");
    }
    let wanted = |name: &str| only.is_none_or(|only| only == name);
    setup::setup()?;
    build_release()?;
    if wanted(SECTION) {
        run(cargo().args([
            "build",
            "--release",
            "--package",
            "monitor-tests",
            "--bin",
            "cpu-burner",
        ]))?;
        let (rounds, millis) = if quick { (1, 1000) } else { (7, 3000) };
        let report = sched_cost(rounds, millis)?;
        print!("{report}");
        write_section(SECTION, &report)?;
    }
    if wanted(STARTUP) {
        let report = startup::startup_time(if quick { 2 } else { 9 })?;
        print!("{report}");
        write_section(STARTUP, &report)?;
    }
    eprintln!("xtask: figures written to BENCHMARKS.md");
    Ok(())
}

/// Per-program totals from one scrape: program -> (run time ns, runs).
fn program_totals(scrape: &Scrape) -> BTreeMap<String, (f64, f64)> {
    let mut totals = BTreeMap::new();
    for sample in scrape.matching(RUN_TIME, &[]) {
        if let Some(program) = sample.labels.get("program") {
            let labels = [("program", program.as_str())];
            let time = scrape.value(RUN_TIME, &labels).unwrap_or(0.0) * 1e9;
            let runs = scrape.value(RUNS, &labels).unwrap_or(0.0);
            totals.insert(program.to_owned(), (time, runs));
        }
    }
    totals
}

fn context_switches() -> Result<u64> {
    let stat = fs::read_to_string("/proc/stat")?;
    stat.lines()
        .find_map(|line| line.strip_prefix("ctxt "))
        .and_then(|n| n.trim().parse().ok())
        .context("no ctxt line in /proc/stat")
}

struct Round {
    switches: u64,
    ns_per_switch: f64,
    per_run: BTreeMap<String, f64>,
}

/// The agent's real programs, and empty programs on the same hooks (the floor).
const VARIANTS: [(&str, &[&str]); 2] = [
    ("monitor", &["--bpf-stats"]),
    ("empty programs", &["--bpf-stats", "--empty-programs"]),
];

fn sched_cost(rounds: usize, millis: u64) -> Result<String> {
    let helper = workspace_root().join("target/release/cpu-burner");
    let mut results: Vec<Vec<Round>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        // Interleaved, so that drift on the machine hits both variants alike.
        for (variant, (name, args)) in VARIANTS.iter().enumerate() {
            eprintln!(
                "xtask bench: scheduler hooks, round {round}/{rounds}, {name} (~{} s left)",
                ((rounds - round) * VARIANTS.len() + VARIANTS.len() - variant) as u64
                    * (millis / 1000 + 1)
            );
            let agent = MonitorAgent::start(args);
            results[variant].push(measure_round(&agent, &helper, millis)?);
        }
    }
    Ok(render(&results, rounds, millis))
}

fn measure_round(agent: &MonitorAgent, helper: &std::path::Path, millis: u64) -> Result<Round> {
    let before = program_totals(&agent.scrape());
    let switches_before = context_switches()?;
    output(Command::new(helper).args(["pingpong", &millis.to_string()]))
        .context("running the ping-pong workload")?;
    let switches = context_switches()? - switches_before;
    let after = program_totals(&agent.scrape());
    let mut total_ns = 0.0;
    let mut per_run = BTreeMap::new();
    for (program, (time, runs)) in &after {
        let (time_before, runs_before) = before.get(program).copied().unwrap_or_default();
        total_ns += time - time_before;
        if runs - runs_before > 0.0 {
            per_run.insert(program.clone(), (time - time_before) / (runs - runs_before));
        }
    }
    Ok(Round {
        switches,
        ns_per_switch: total_ns / switches.max(1) as f64,
        per_run,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn render(results: &[Vec<Round>], rounds: usize, millis: u64) -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let figure = |variant: usize, f: &dyn Fn(&Round) -> Option<f64>| {
        median(results[variant].iter().filter_map(f).collect())
    };
    let mut text = format!(
        "### Scheduler hooks: BPF time per context switch\n\n\
         `cargo xtask bench` ({rounds} interleaved rounds of {millis} ms per variant; a pipe \
         ping-pong between two threads; kernel {}, {cpus} CPUs; medians). BPF time of all the \
         agent's scheduler programs (switch, wake-ups, exec/exit, clock tick), from \
         `kernel.bpf_stats_enabled`, divided by the host's context switches (/proc/stat \
         `ctxt`). \"empty programs\" attaches programs that return at once to the same hooks \
         (the agent's hidden `--empty-programs`): the floor of the hook choice, which includes \
         the kernel's own timing of each run.\n\n\
         | figure | monitor | empty programs |\n|---|---|---|\n\
         | context switches per second (host) | {:.0} | {:.0} |\n\
         | **BPF ns per context switch, all programs** (target < 150) | **{:.1}** | {:.1} |\n",
        kernel.trim(),
        figure(0, &|r| Some(r.switches as f64 * 1000.0 / millis as f64)),
        figure(1, &|r| Some(r.switches as f64 * 1000.0 / millis as f64)),
        figure(0, &|r| Some(r.ns_per_switch)),
        figure(1, &|r| Some(r.ns_per_switch)),
    );
    for hook in ["sched_switch", "sched_wakeup"] {
        let real = format!("{hook}_btf");
        let empty = format!("{hook}_empty");
        text.push_str(&format!(
            "| ns per run of `{hook}` | {:.1} | {:.1} |\n",
            figure(0, &|r| r.per_run.get(&real).copied()),
            figure(1, &|r| r.per_run.get(&empty).copied()),
        ));
    }
    text
}
/// Replaces the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in BENCHMARKS.md.
fn write_section(name: &str, body: &str) -> Result<()> {
    let path = workspace_root().join("BENCHMARKS.md");
    let text = fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let start = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let section = format!("{start}\n{body}{end}");
    let updated = match (text.find(&start), text.find(&end)) {
        (Some(s), Some(e)) if s < e => format!("{}{section}{}", &text[..s], &text[e + end.len()..]),
        _ => format!("{}\n{section}\n", text.trim_end()),
    };
    fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))
}
