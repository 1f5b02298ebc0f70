//! Criterion micro-benchmarks of the agent's userspace hot paths (monitor/benches/userspace.rs):
//! run with `cargo bench`, then read from criterion's estimates and the bench's allocation
//! counts.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{
    progress::{Progress, clock},
    target_dir,
};
use crate::cmd::{cargo, run};

/// The benchmarks, by criterion id, and what each measures.
const BENCHES: [(&str, &str); 7] = [
    (
        "model/http_apply_500_series",
        "fold one refresh's HTTP snapshot (500 histograms) into the model",
    ),
    (
        "model/processes_apply",
        "fold one refresh's scheduler snapshot (all processes) into the model",
    ),
    (
        "render/metrics_10000_series",
        "render `/metrics` with 10,000 samples",
    ),
    ("route_template/root", "template `/`"),
    ("route_template/ids", "template `/users/12345/orders/987`"),
    (
        "route_template/uuid_query",
        "template `/api/v1/items/<uuid>?page=2`",
    ),
    (
        "route_template/long",
        "template an 80-byte path of 7 segments",
    ),
];

pub struct Plan {
    pub quick: bool,
}

impl Plan {
    pub fn estimate(&self) -> Duration {
        // Building the bench, then warm-up and measurement of each benchmark.
        let per_bench = if self.quick { 1 } else { 5 };
        Duration::from_secs(60 + per_bench * BENCHES.len() as u64)
    }

    fn criterion_args(&self) -> &'static [&'static str] {
        if self.quick {
            &["--warm-up-time", "0.2", "--measurement-time", "0.5"]
        } else {
            &["--warm-up-time", "1", "--measurement-time", "4"]
        }
    }
}

/// One benchmark: id, what it measures, median ns per call, allocations and bytes per call.
type Figures = (&'static str, &'static str, f64, Option<(u64, u64)>);

pub struct Micro {
    results: Vec<Figures>,
    host: Value,
    command: String,
}

pub fn measure(plan: &Plan, progress: &mut Progress) -> Result<Micro> {
    progress.step(
        "userspace micro-benchmarks",
        &format!("cargo bench (about {})", clock(plan.estimate())),
        plan.estimate(),
    );
    let criterion_home = target_dir().join("criterion");
    let args = plan.criterion_args();
    run(cargo()
        .args([
            "bench",
            "--package",
            "monitor",
            "--bench",
            "userspace",
            "--",
        ])
        .args(args)
        .env("CRITERION_HOME", &criterion_home))?;
    let allocations_path = target_dir().join("tmp/userspace-allocations.json");
    let allocations: Value = serde_json::from_str(
        &fs::read_to_string(&allocations_path)
            .with_context(|| format!("reading {}", allocations_path.display()))?,
    )?;
    let mut results = Vec::new();
    for (id, what) in BENCHES {
        let median_ns = median_estimate(&criterion_home.join(id))?;
        let counts = allocations[id]["allocations"]
            .as_u64()
            .zip(allocations[id]["bytes"].as_u64());
        results.push((id, what, median_ns, counts));
    }
    Ok(Micro {
        results,
        host: allocations["host"].clone(),
        command: format!(
            "cargo bench -p monitor --bench userspace -- {}",
            args.join(" ")
        ),
    })
}

/// Criterion's median estimate of one benchmark, ns.
fn median_estimate(dir: &Path) -> Result<f64> {
    let path = dir.join("new/estimates.json");
    let estimates: Value = serde_json::from_str(
        &fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    estimates["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("no median in {}", path.display()))
}

/// `1.23 ms`, `456 ns`, ...
pub fn duration_text(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

impl Micro {
    pub fn json(&self) -> Value {
        let benches: serde_json::Map<String, Value> = self
            .results
            .iter()
            .map(|(id, _, ns, counts)| {
                (
                    (*id).to_owned(),
                    json!({
                        "median_ns": ns,
                        "allocations": counts.map(|c| c.0),
                        "allocated_bytes": counts.map(|c| c.1),
                    }),
                )
            })
            .collect();
        json!({ "command": self.command, "host": self.host, "benches": benches })
    }

    pub fn markdown(&self, machine: &str) -> String {
        let mut text = format!(
            "### Userspace hot paths (criterion)\n\n\
             `{}` (run by `cargo xtask bench`; {machine}; criterion's median per call; \
             allocations of one call, counted by a counting global allocator in the bench). \
             The synthetic host: {} HTTP duration histograms (50 services x 10 routes, 14 \
             buckets), {} processes in 10 services; its scrape is {} samples, {} bytes. Reading \
             the real maps is measured on the running agent (`monitor_refresh_duration_seconds`, \
             in the HTTP section).\n\n\
             | benchmark | what | median | allocations | bytes allocated |\n|---|---|---|---|---|\n",
            self.command,
            self.host["http_series"],
            self.host["processes"],
            self.host["samples"],
            self.host["exposition_bytes"],
        );
        for (id, what, ns, counts) in &self.results {
            let (allocations, bytes) = counts.map_or(("?".to_owned(), "?".to_owned()), |(a, b)| {
                (a.to_string(), b.to_string())
            });
            text.push_str(&format!(
                "| `{id}` | {what} | {} | {allocations} | {bytes} |\n",
                duration_text(*ns)
            ));
        }
        text
    }
}
