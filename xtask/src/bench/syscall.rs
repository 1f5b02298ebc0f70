//! An unrelated, syscall-heavy process with the agent attached: a getppid(2) loop. As
//! deployed, every syscall exit runs the agent's `sys_exit` program, which rejects getppid by
//! its id in its first instructions; with `--syscall-hook socket-exits` no program runs for
//! getppid. This measures what each costs a process the agent does not watch.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{
    agent::{Run, Variant},
    progress::Progress,
    stats::{median, ratio},
};
use crate::cmd::output;

pub struct Plan {
    pub rounds: usize,
    pub run: Duration,
    /// CPUs the loop runs on (taskset list).
    pub cpus: &'static str,
}

impl Plan {
    pub fn estimate(&self) -> Duration {
        (Duration::from_secs(2) + self.run) * (self.rounds * RUNS.len()) as u32
    }
}

/// The basic variants, and the agent with its HTTP programs at the socket syscalls' exits
/// alone or at the socket tracepoints, neither of which getppid runs.
const RUNS: [Run; 5] = [
    Run {
        variant: Variant::NoAgent,
        args: &[],
        name: "no agent",
    },
    Run {
        variant: Variant::Monitor,
        args: &[],
        name: "monitor",
    },
    Run {
        variant: Variant::Monitor,
        args: &["--syscall-hook", "socket-exits"],
        name: "monitor, --syscall-hook socket-exits",
    },
    Run {
        variant: Variant::Monitor,
        args: &["--syscall-hook", "socket-tracepoints"],
        name: "monitor, --syscall-hook socket-tracepoints",
    },
    Run {
        variant: Variant::EmptyPrograms,
        args: &[],
        name: "empty programs",
    },
];
const NO_AGENT: usize = 0;

pub struct Syscalls {
    rounds: usize,
    run: Duration,
    /// Calls per second, per run of `RUNS`, per round.
    rates: [Vec<f64>; RUNS.len()],
}

pub fn measure(plan: &Plan, helper: &Path, progress: &mut Progress) -> Result<Syscalls> {
    let mut rates: [Vec<f64>; RUNS.len()] = Default::default();
    for round in 0..plan.rounds {
        let mut order: [usize; RUNS.len()] = std::array::from_fn(|index| index);
        order.rotate_left(round % RUNS.len());
        for index in order {
            let run = RUNS[index];
            progress.step(
                "getppid loop",
                &format!("round {}/{}, {}", round + 1, plan.rounds, run.name),
                Duration::from_secs(2) + plan.run,
            );
            let _agent = run.start();
            let calls: f64 = output(
                Command::new("taskset")
                    .args(["-c", plan.cpus])
                    .arg(helper)
                    .args(["getppid", &plan.run.as_millis().to_string()]),
            )
            .and_then(|text| text.trim().parse().ok())
            .context("running cpu-burner getppid")?;
            rates[index].push(calls / plan.run.as_secs_f64());
        }
    }
    Ok(Syscalls {
        rounds: plan.rounds,
        run: plan.run,
        rates,
    })
}

impl Syscalls {
    fn rate(&self, run: usize) -> f64 {
        median(self.rates[run].clone())
    }

    fn ns_per_call(&self, run: usize) -> f64 {
        1e9 / self.rate(run)
    }

    fn run_slowdown(&self, run: usize) -> f64 {
        ratio(self.rate(NO_AGENT), self.rate(run)) - 1.0
    }

    /// How much slower the loop runs with `variant` (as deployed) than with no agent (0.02 =
    /// 2 %).
    pub fn slowdown(&self, variant: Variant) -> f64 {
        let run = RUNS
            .iter()
            .position(|run| run.variant == variant && run.args.is_empty())
            .expect("every basic variant runs as deployed");
        self.run_slowdown(run)
    }

    pub fn json(&self) -> Value {
        let run = |run: usize| {
            json!({
                "calls_per_second": self.rate(run),
                "ns_per_call": self.ns_per_call(run),
                "slowdown": self.run_slowdown(run),
            })
        };
        json!({
            "rounds": self.rounds,
            "run_ms": self.run.as_millis() as u64,
            "no_agent": run(0),
            "monitor": run(1),
            "monitor_socket_exits": run(2),
            "monitor_socket_tracepoints": run(3),
            "empty_programs": run(4),
        })
    }

    pub fn markdown(&self, machine: &str) -> String {
        let rows: String = (0..RUNS.len())
            .map(|run| {
                format!(
                    "| {} | {:.0} | {:.1} | {} |\n",
                    RUNS[run].name,
                    self.rate(run),
                    self.ns_per_call(run),
                    if run == NO_AGENT {
                        "".to_owned()
                    } else {
                        format!("{:+.1} %", self.run_slowdown(run) * 100.0)
                    }
                )
            })
            .collect();
        format!(
            "### An unrelated syscall-heavy process\n\n\
             `cargo xtask bench` ({} interleaved rounds of {} ms per variant; {machine}; \
             medians). One thread calling getppid(2) in a loop, pinned to CPU 0. As deployed \
             (\"monitor\"), every syscall exit runs the agent's `sys_exit` program, which \
             drops getppid on its syscall id: the difference per call from \"empty programs\" \
             is that check, the rest is the hook itself. With `--syscall-hook socket-exits` \
             the program sits at the socket syscalls' exits alone and getppid runs none: what \
             is left is the kernel's syscall tracing path, which any syscall tracepoint \
             turns on. So with `--syscall-hook socket-tracepoints`, whose programs run where \
             sockets move bytes and at the exits of accept, connect, sendfile and \
             getsockopt.\n\n\
             | variant | calls per second | ns per call | slowdown |\n|---|---|---|---|\n{rows}",
            self.rounds,
            self.run.as_millis(),
        )
    }
}
