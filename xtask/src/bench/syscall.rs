//! An unrelated, syscall-heavy process with the agent attached: a getppid(2) loop. Every
//! syscall exit runs the agent's `sys_exit` program, which rejects getppid by its id in its
//! first instructions; this measures what that costs a process the agent does not watch.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{
    agent::{Variant, order},
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
        (Duration::from_secs(2) + self.run) * (self.rounds * Variant::BASIC.len()) as u32
    }
}

pub struct Syscalls {
    rounds: usize,
    run: Duration,
    /// Calls per second, per variant, per round.
    rates: [Vec<f64>; 4],
}

pub fn measure(plan: &Plan, helper: &Path, progress: &mut Progress) -> Result<Syscalls> {
    let mut rates: [Vec<f64>; 4] = Default::default();
    for round in 0..plan.rounds {
        for variant in order(round, Variant::BASIC) {
            progress.step(
                "getppid loop",
                &format!("round {}/{}, {}", round + 1, plan.rounds, variant.name()),
                Duration::from_secs(2) + plan.run,
            );
            let _agent = variant.start(&[]);
            let calls: f64 = output(
                Command::new("taskset")
                    .args(["-c", plan.cpus])
                    .arg(helper)
                    .args(["getppid", &plan.run.as_millis().to_string()]),
            )
            .and_then(|text| text.trim().parse().ok())
            .context("running cpu-burner getppid")?;
            rates[variant.index()].push(calls / plan.run.as_secs_f64());
        }
    }
    Ok(Syscalls {
        rounds: plan.rounds,
        run: plan.run,
        rates,
    })
}

impl Syscalls {
    fn rate(&self, variant: Variant) -> f64 {
        median(self.rates[variant.index()].clone())
    }

    fn ns_per_call(&self, variant: Variant) -> f64 {
        1e9 / self.rate(variant)
    }

    /// How much slower the loop runs with `variant` than with no agent (0.02 = 2 %).
    pub fn slowdown(&self, variant: Variant) -> f64 {
        ratio(self.rate(Variant::NoAgent), self.rate(variant)) - 1.0
    }

    pub fn json(&self) -> Value {
        let variant = |v: Variant| {
            json!({
                "calls_per_second": self.rate(v),
                "ns_per_call": self.ns_per_call(v),
                "slowdown": self.slowdown(v),
            })
        };
        json!({
            "rounds": self.rounds,
            "run_ms": self.run.as_millis() as u64,
            "no_agent": variant(Variant::NoAgent),
            "monitor": variant(Variant::Monitor),
            "empty_programs": variant(Variant::EmptyPrograms),
        })
    }

    pub fn markdown(&self, machine: &str) -> String {
        let row = |v: Variant| {
            format!(
                "| {} | {:.0} | {:.1} | {} |\n",
                v.name(),
                self.rate(v),
                self.ns_per_call(v),
                if v == Variant::NoAgent {
                    "".to_owned()
                } else {
                    format!("{:+.1} %", self.slowdown(v) * 100.0)
                }
            )
        };
        format!(
            "### An unrelated syscall-heavy process\n\n\
             `cargo xtask bench` ({} interleaved rounds of {} ms per variant; {machine}; \
             medians). One thread calling getppid(2) in a loop, pinned to CPU 0: every syscall \
             exit runs the agent's `sys_exit` program, which drops getppid on its syscall id. \
             The difference per call between \"monitor\" and \"empty programs\" is that check; \
             the rest is the hook itself.\n\n\
             | variant | calls per second | ns per call | slowdown |\n|---|---|---|---|\n{}{}{}",
            self.rounds,
            self.run.as_millis(),
            row(Variant::NoAgent),
            row(Variant::Monitor),
            row(Variant::EmptyPrograms),
        )
    }
}
