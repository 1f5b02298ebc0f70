//! Scheduler hooks: BPF time per context switch of the agent's scheduler programs against
//! empty programs on the same hooks, under a pipe ping-pong between two threads.

use std::{collections::BTreeMap, fs, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result};
use monitor_tests::MonitorAgent;
use serde_json::{Value, json};

use super::{
    agent::{ProgramTotal, program_deltas, program_totals},
    progress::Progress,
    stats::median,
};
use crate::cmd::output;

pub struct Plan {
    pub rounds: usize,
    pub run: Duration,
}

impl Plan {
    pub fn estimate(&self) -> Duration {
        // Agent start-up (BPF verification) and the run, per variant and round.
        (Duration::from_secs(3) + self.run) * (self.rounds * VARIANTS.len()) as u32
    }
}

/// A way of running the agent, and the suffix of its scheduler programs' names.
struct Variant {
    name: &'static str,
    args: &'static [&'static str],
    programs: &'static str,
}

/// The agent as deployed (its switch program reads the kernel's per-task accounting); the
/// agent made to time switches and wake-ups itself (as where that accounting is missing);
/// and empty programs on the deployed agent's hooks (the floor).
const VARIANTS: [Variant; 3] = [
    Variant {
        name: "monitor",
        args: &["--bpf-stats"],
        programs: "btf",
    },
    Variant {
        name: "monitor, timing switches itself",
        args: &["--bpf-stats", "--sched-accounting", "programs"],
        programs: "btf",
    },
    Variant {
        name: "empty programs",
        args: &["--bpf-stats", "--empty-programs"],
        programs: "empty",
    },
];

struct Round {
    switches: u64,
    ns_per_switch: f64,
    per_run: BTreeMap<String, f64>,
}

pub struct Sched {
    plan_rounds: usize,
    run: Duration,
    results: Vec<Vec<Round>>,
}

pub fn measure(plan: &Plan, helper: &Path, progress: &mut Progress) -> Result<Sched> {
    let mut results: Vec<Vec<Round>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for round in 1..=plan.rounds {
        // Interleaved, so that drift on the machine hits both variants alike.
        for (variant, Variant { name, args, .. }) in VARIANTS.iter().enumerate() {
            progress.step(
                "scheduler hooks",
                &format!("round {round}/{}, {name}", plan.rounds),
                Duration::from_secs(3) + plan.run,
            );
            let agent = MonitorAgent::start(args);
            results[variant].push(measure_round(&agent, helper, plan.run)?);
        }
    }
    Ok(Sched {
        plan_rounds: plan.rounds,
        run: plan.run,
        results,
    })
}

fn context_switches() -> Result<u64> {
    let stat = fs::read_to_string("/proc/stat")?;
    stat.lines()
        .find_map(|line| line.strip_prefix("ctxt "))
        .and_then(|n| n.trim().parse().ok())
        .context("no ctxt line in /proc/stat")
}

fn measure_round(agent: &MonitorAgent, helper: &Path, run: Duration) -> Result<Round> {
    let before = program_totals(&agent.scrape());
    let switches_before = context_switches()?;
    output(Command::new(helper).args(["pingpong", &run.as_millis().to_string()]))
        .context("running the ping-pong workload")?;
    let switches = context_switches()? - switches_before;
    let deltas = program_deltas(&before, &program_totals(&agent.scrape()));
    // The pipe's reads and writes also run `sys_exit`: a syscall's cost, shown on its own.
    let total_ns: f64 = deltas
        .iter()
        .filter(|(program, _)| !program.starts_with("sys_exit"))
        .map(|(_, d)| d.time_ns)
        .sum();
    let per_run = deltas
        .iter()
        .filter(|(_, d)| d.runs > 0.0)
        .map(|(program, ProgramTotal { time_ns, runs })| (program.clone(), time_ns / runs))
        .collect();
    Ok(Round {
        switches,
        ns_per_switch: total_ns / switches.max(1) as f64,
        per_run,
    })
}

impl Sched {
    fn figure(&self, variant: usize, f: impl Fn(&Round) -> Option<f64>) -> f64 {
        median(self.results[variant].iter().filter_map(f).collect())
    }

    fn switches_per_second(&self, variant: usize) -> f64 {
        let seconds = self.run.as_secs_f64();
        self.figure(variant, |r| Some(r.switches as f64 / seconds))
    }

    fn ns_per_switch(&self, variant: usize) -> f64 {
        self.figure(variant, |r| Some(r.ns_per_switch))
    }

    fn ns_per_run(&self, variant: usize, program: &str) -> f64 {
        self.figure(variant, |r| r.per_run.get(program).copied())
    }

    /// ns per run of the program of variant `i` at `hook`; NaN where it is not attached.
    fn hook_ns_per_run(&self, i: usize, hook: &str) -> f64 {
        self.ns_per_run(i, &format!("{hook}_{}", VARIANTS[i].programs))
    }

    pub fn json(&self) -> Value {
        let variant = |i: usize| {
            json!({
                "context_switches_per_second": self.switches_per_second(i),
                "bpf_ns_per_context_switch": self.ns_per_switch(i),
                "ns_per_run_sched_switch": self.hook_ns_per_run(i, "sched_switch"),
                "ns_per_run_sched_wakeup": self.hook_ns_per_run(i, "sched_wakeup"),
            })
        };
        json!({
            "rounds": self.plan_rounds,
            "run_ms": self.run.as_millis() as u64,
            "monitor": variant(0),
            "monitor_timing_switches": variant(1),
            "empty_programs": variant(2),
            "target_bpf_ns_per_context_switch": 150,
        })
    }

    pub fn markdown(&self, machine: &str) -> String {
        let mut text = format!(
            "### Scheduler hooks: BPF time per context switch\n\n\
             `cargo xtask bench` ({} interleaved rounds of {} ms per variant; a pipe \
             ping-pong between two threads; {machine}; medians). BPF time of all the \
             agent's scheduler programs (switch, wake-ups where attached, exec/exit, clock \
             tick), from `kernel.bpf_stats_enabled`, divided by the host's context switches \
             (/proc/stat `ctxt`); the `sys_exit` program, which the pipe's reads and writes run \
             too, is shown on its own line (per syscall, not per switch). \"monitor\" is the \
             agent as deployed: its switch program reads the run time and run-queue wait that \
             the kernel keeps per task (`se.sum_exec_runtime`, `sched_info.run_delay`, offsets \
             from the kernel's BTF) and attaches nothing at wake-ups. \"timing switches \
             itself\" is the agent where that accounting is missing (`--sched-accounting programs`): \
             a clock read per switch and per wake-up, and a wake-up program. \"empty \
             programs\" attaches programs that return at once to the deployed agent's hooks \
             (hidden `--empty-programs`): the floor of the hook choice, which includes the \
             kernel's own timing of each run.\n\n\
             | figure | {} | {} | {} |\n|---|---|---|---|\n",
            self.plan_rounds,
            self.run.as_millis(),
            VARIANTS[0].name,
            VARIANTS[1].name,
            VARIANTS[2].name,
        );
        let row = |text: &mut String, label: &str, value: &dyn Fn(usize) -> f64| {
            // Counts without decimals, times to a tenth of a nanosecond.
            let decimals = if label.starts_with("context switches") {
                0
            } else {
                1
            };
            let cells: Vec<String> = (0..VARIANTS.len())
                .map(|i| {
                    let figure = value(i);
                    if figure.is_nan() {
                        "not attached".to_string()
                    } else {
                        format!("{figure:.decimals$}")
                    }
                })
                .collect();
            text.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
        };
        row(&mut text, "context switches per second (host)", &|i| {
            self.switches_per_second(i)
        });
        row(
            &mut text,
            "**BPF ns per context switch, all programs** (target < 150)",
            &|i| self.ns_per_switch(i),
        );
        for hook in ["sched_switch", "sched_wakeup", "sys_exit"] {
            row(&mut text, &format!("ns per run of `{hook}`"), &|i| {
                self.hook_ns_per_run(i, hook)
            });
        }
        text
    }
}
