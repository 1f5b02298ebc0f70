//! `cargo xtask churn`: 200,000 short connections, 100,000 distinct paths and 5,000 processes
//! that start, serve one request and exit, one after the other, against one agent run as
//! deployed. Every request must be counted once; the agent's memory, its map entries and its
//! series are sampled every second and their peaks go to BENCHMARKS.md (section `churn`).

use std::{
    fmt::Write as _,
    path::Path,
    sync::{Mutex, atomic::AtomicBool},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use monitor_tests::{
    Scrape,
    churn::{distinct_paths, one_shot_servers},
    http::{server_count, service_total},
    servers::{Server, ab_with, renamed_copy},
};
use serde_json::{Value, json};

use super::{
    agent::{counter_sum, start_as_deployed},
    sampler::{self, Sample, StopOnDrop, mib, peak_entries},
};

pub struct Plan {
    pub connections: usize,
    pub paths: usize,
    pub processes: usize,
}

impl Plan {
    pub fn full() -> Self {
        Self {
            connections: 200_000,
            paths: 100_000,
            processes: 5_000,
        }
    }

    pub fn quick() -> Self {
        Self {
            connections: 5_000,
            paths: 2_000,
            processes: 100,
        }
    }
}

/// nginx's locations for the churn and the soak.
pub const NGINX_LOCATIONS: &str = r#"
    location = /ok { return 200 "ok\n"; }
    location = /missing { return 404; }
    location /p/ { return 200 "p\n"; }
"#;

/// The service name of the one-shot servers.
pub const ONE_SHOT: &str = "oneshot";

struct Phase {
    name: &'static str,
    count: usize,
    took: Duration,
}

pub struct Churn {
    phases: Vec<Phase>,
    /// (what, expected, counted by the agent).
    counts: Vec<(&'static str, u64, u64)>,
    /// Counters that say something was lost or unpaired, at the end.
    losses: Vec<(String, f64)>,
    samples: Vec<Sample>,
    capacities: Vec<(String, f64)>,
    peak_rss: u64,
    route_series: usize,
}

pub fn measure(plan: &Plan, one_shot_server: &Path) -> Result<Churn> {
    let dir = tempfile::tempdir()?;
    let program = renamed_copy(dir.path(), &one_shot_server.to_string_lossy(), ONE_SHOT);
    let agent = start_as_deployed(&[]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let stop = AtomicBool::new(false);
    let samples = Mutex::new(Vec::new());
    let phases = thread::scope(|scope| {
        scope.spawn(|| sampler::sample_until(&agent, Duration::from_secs(1), &stop, &samples));
        let _stop = StopOnDrop(&stop);
        run_phases(plan, &nginx, &program)
    })?;

    let expected_nginx = (plan.connections + plan.paths) as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let scrape = loop {
        let scrape = agent.scrape();
        let done = service_total(&scrape, "nginx") >= expected_nginx
            && service_total(&scrape, ONE_SHOT) >= plan.processes as u64;
        if done || Instant::now() > deadline {
            break scrape;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let mut samples = samples.into_inner().unwrap();
    samples.push(sampler::take(
        &agent,
        samples.last().map_or(Duration::ZERO, |s| s.at),
    ));
    let counts = vec![
        (
            "nginx /ok (short connections)",
            plan.connections as u64,
            server_count(&scrape, "nginx", 200, "/ok").unwrap_or(0),
        ),
        (
            "nginx /p/… (distinct paths)",
            plan.paths as u64,
            service_total(&scrape, "nginx")
                - server_count(&scrape, "nginx", 200, "/ok").unwrap_or(0),
        ),
        (
            "one-shot servers",
            plan.processes as u64,
            service_total(&scrape, ONE_SHOT),
        ),
    ];
    let final_scrape = agent.scrape();
    if counts
        .iter()
        .any(|(_, expected, counted)| expected != counted)
    {
        eprintln!(
            "xtask churn: the agent's counts differ; it has:\n{}",
            monitor_tests::http::describe_http(&agent.metrics_text())
        );
    }
    Ok(Churn {
        phases,
        counts,
        losses: losses(&final_scrape),
        capacities: final_scrape
            .matching("monitor_bpf_map_capacity_entries", &[])
            .filter_map(|s| Some((s.labels.get("map")?.clone(), s.value)))
            .collect(),
        peak_rss: sampler::peak_rss_bytes(agent.pid()).unwrap_or(0),
        route_series: final_scrape
            .label_values(
                monitor_tests::http::SERVER_DURATION,
                &[("service_name", "nginx")],
                "http_route",
            )
            .len(),
        samples,
    })
}

fn run_phases(plan: &Plan, nginx: &Server, program: &Path) -> Result<Vec<Phase>> {
    let mut phases = Vec::new();
    let started = Instant::now();
    let done = ab_with(&[], &nginx.url("/ok"), plan.connections, 32);
    phases.push(Phase {
        name: "short connections (ab, no keep-alive, 32 at once)",
        count: done,
        took: started.elapsed(),
    });
    let started = Instant::now();
    let done = distinct_paths(nginx.port, "p", 0, plan.paths, 16, 200);
    phases.push(Phase {
        name: "distinct paths (16 keep-alive connections)",
        count: done,
        took: started.elapsed(),
    });
    let started = Instant::now();
    let run = one_shot_servers(program, plan.processes, 8);
    phases.push(Phase {
        name: "processes that serve one request and exit (8 at once)",
        count: run.answered,
        took: started.elapsed(),
    });
    let short: Vec<_> = [plan.connections, plan.paths, plan.processes]
        .into_iter()
        .zip(&phases)
        .filter(|(wanted, phase)| phase.count != *wanted)
        .map(|(wanted, phase)| format!("{}: {} of {wanted}", phase.name, phase.count))
        .collect();
    if !short.is_empty() {
        bail!("the load did not complete: {}", short.join("; "));
    }
    Ok(phases)
}

/// Counters that say a request, an event or a name was lost, by name and reason, and those
/// that say one was saved from it (folded, carried).
pub fn losses(scrape: &Scrape) -> Vec<(String, f64)> {
    let mut losses = Vec::new();
    for name in [
        "monitor_http_requests_unanswered_total",
        "monitor_http_responses_unmatched_total",
        "monitor_http_events_dropped_total",
        "monitor_bpf_events_dropped_total",
    ] {
        for sample in scrape.matching(name, &[]) {
            let reason = sample.labels.get("reason").cloned().unwrap_or_default();
            losses.push((format!("{name}{{reason=\"{reason}\"}}"), sample.value));
        }
    }
    for name in [
        "monitor_process_series_folded_total",
        // Not lost: requests whose histogram could not be allocated at once, counted all the
        // same; shown for how often that happens.
        "monitor_http_observations_carried_total",
    ] {
        losses.push((name.into(), counter_sum(scrape, name)));
    }
    losses
}

/// The loss counters that are not zero, for a report: "all zero" when none.
pub fn nonzero_losses(losses: &[(String, f64)]) -> String {
    let nonzero: Vec<String> = losses
        .iter()
        .filter(|(_, value)| *value != 0.0)
        .map(|(name, value)| format!("`{name}` {value}"))
        .collect();
    if nonzero.is_empty() {
        "all zero".to_owned()
    } else {
        nonzero.join(", ")
    }
}

impl Churn {
    pub fn exact(&self) -> bool {
        self.counts
            .iter()
            .all(|(_, expected, counted)| expected == counted)
    }

    pub fn json(&self) -> Value {
        json!({
            "phases": self.phases.iter().map(|p| json!({
                "name": p.name, "count": p.count, "seconds": p.took.as_secs_f64(),
            })).collect::<Vec<_>>(),
            "counts": self.counts.iter().map(|(what, expected, counted)| json!({
                "what": what, "expected": expected, "counted": counted,
            })).collect::<Vec<_>>(),
            "exact": self.exact(),
            "peak_rss_bytes": self.peak_rss,
            "peak_map_entries": peak_entries(&self.samples),
            "peak_series": self.samples.iter().map(|s| s.series).max(),
            "peak_process_series": self.samples.iter().map(|s| s.process_series).max(),
            "nginx_routes": self.route_series,
            "losses": self.losses.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        })
    }

    pub fn markdown(&self, machine: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "`cargo xtask churn`: one agent as deployed (1 s refresh, default budgets), nginx \
             (2 workers) and a copy of `one-shot-server` named `{ONE_SHOT}`; {machine}.\n"
        );
        let _ = writeln!(out, "| Phase | Done | Took | Rate |\n|---|---:|---:|---:|");
        for phase in &self.phases {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} s | {:.0}/s |",
                phase.name,
                phase.count,
                phase.took.as_secs_f64(),
                phase.count as f64 / phase.took.as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "\n| Counted by the agent | Expected | Counted |\n|---|---:|---:|"
        );
        for (what, expected, counted) in &self.counts {
            let _ = writeln!(out, "| {what} | {expected} | {counted} |");
        }
        let peaks = peak_entries(&self.samples);
        let _ = writeln!(
            out,
            "\n| BPF map | Peak entries (1 s samples) | Capacity |\n|---|---:|---:|"
        );
        for (map, capacity) in &self.capacities {
            let peak = peaks.get(map).copied().unwrap_or(0.0);
            let _ = writeln!(out, "| {map} | {peak} | {capacity} |");
        }
        let peak_series = self.samples.iter().map(|s| s.series).max().unwrap_or(0);
        let peak_process = self
            .samples
            .iter()
            .map(|s| s.process_series)
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "\nAgent peak RSS (VmHWM) {:.1} MiB; at most {peak_series} sample lines in \
             /metrics, {peak_process} of them `process_cpu_time_seconds_total` (exited \
             processes beyond `--exited-process-budget` 1000 folded); {} nginx routes (budget \
             200).\n",
            mib(self.peak_rss),
            self.route_series
        );
        let _ = writeln!(
            out,
            "Loss, overflow and recovery counters at the end: {}.\n",
            nonzero_losses(&self.losses)
        );
        out
    }
}
