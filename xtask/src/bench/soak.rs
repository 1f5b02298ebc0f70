//! `cargo xtask soak`: ten minutes (`--minutes`) of mixed load against one agent run as
//! deployed: keep-alive requests to ever new paths, short connections with 200s and 404s, and
//! processes that serve one request and exit. The agent's RSS, its BPF map entries and its
//! series are sampled every 10 s; after the warm-up (the first half) they must stay within
//! 10%, and every request must be counted once. Figures go to BENCHMARKS.md (section `soak`).

use std::{
    fmt::Write as _,
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use monitor_tests::{
    churn::{distinct_paths, one_shot_servers},
    http::{SERVER_DURATION, service_total},
    servers::{Server, ab_with, renamed_copy},
};
use serde_json::{Value, json};

use super::{
    agent::start_as_deployed,
    churn::{NGINX_LOCATIONS, ONE_SHOT, losses, nonzero_losses},
    sampler::{self, Sample, StopOnDrop, mib},
};

const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// `--exited-process-grace` of the soak's agent, well inside the warm-up.
const GRACE: &str = "1m";
/// Distinct paths the keep-alive load cycles through: far beyond the route budget.
const PATH_POOL: usize = 50_000;
/// How far a figure may move after the warm-up.
pub const FLAT_WITHIN: f64 = 0.10;

/// Requests sent and answered, by kind.
#[derive(Default)]
struct Sent {
    ok: AtomicU64,
    missing: AtomicU64,
    paths: AtomicU64,
    one_shot: AtomicU64,
}

pub struct Soak {
    duration: Duration,
    samples: Vec<Sample>,
    /// (what, sent, counted by the agent).
    counts: Vec<(&'static str, u64, u64)>,
    losses: Vec<(String, f64)>,
    peak_rss: u64,
}

pub fn measure(duration: Duration, one_shot_server: &Path) -> Result<Soak> {
    let dir = tempfile::tempdir()?;
    let program = renamed_copy(dir.path(), &one_shot_server.to_string_lossy(), ONE_SHOT);
    // Series of exited processes and idle routes stay for the grace period: with the default
    // (5 min) the agent reaches its equilibrium only after the first half of a 10-minute run.
    let agent = start_as_deployed(&["--exited-process-grace", GRACE]);
    let nginx = Server::nginx(NGINX_LOCATIONS);
    let sent = Sent::default();
    let stop = AtomicBool::new(false);
    let samples = Mutex::new(Vec::new());
    let deadline = Instant::now() + duration;
    let expected = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let scrape = thread::scope(|scope| {
        scope.spawn(|| sampler::sample_until(&agent, SAMPLE_EVERY, &stop, &samples));
        // The sampler goes on until every request is counted, and stops however this ends.
        let _stop = StopOnDrop(&stop);
        // Each driver does one batch a second, paced by the clock (load shaping, not
        // synchronisation): 200 new-path requests, 50 + 10 short connections, 5 processes.
        let paths = scope.spawn(|| {
            let mut cursor = 0;
            every_second(deadline, || {
                let answered = distinct_paths(nginx.port, "p", cursor, 200, 2, 200);
                sent.paths.fetch_add(answered as u64, Ordering::Relaxed);
                cursor = (cursor + 200) % PATH_POOL;
            })
        });
        let short = scope.spawn(|| {
            every_second(deadline, || {
                let ok = ab_with(&[], &nginx.url("/ok"), 50, 4);
                sent.ok.fetch_add(ok as u64, Ordering::Relaxed);
                let missing = ab_with(&[], &nginx.url("/missing"), 10, 2);
                sent.missing.fetch_add(missing as u64, Ordering::Relaxed);
            })
        });
        let processes = scope.spawn(|| {
            every_second(deadline, || {
                let run = one_shot_servers(&program, 5, 1);
                sent.one_shot
                    .fetch_add(run.answered as u64, Ordering::Relaxed);
            })
        });
        for driver in [paths, short, processes] {
            driver.join().expect("a load driver failed");
        }
        let wait = Instant::now() + Duration::from_secs(60);
        loop {
            let scrape = agent.scrape();
            let nginx_total = expected(&sent.ok) + expected(&sent.missing) + expected(&sent.paths);
            let done = service_total(&scrape, "nginx") >= nginx_total
                && service_total(&scrape, ONE_SHOT) >= expected(&sent.one_shot);
            if done || Instant::now() > wait {
                break scrape;
            }
            thread::sleep(Duration::from_millis(200));
        }
    });
    // By status, over all routes: new paths and /ok share one route budget, so which route
    // label a request gets depends on which came first; its status does not.
    let status_total = |status: &str| -> u64 {
        scrape
            .histograms(
                SERVER_DURATION,
                &[
                    ("service_name", "nginx"),
                    ("http_response_status_code", status),
                ],
            )
            .map(|buckets| buckets.last().map_or(0, |(_, count)| *count))
            .sum()
    };
    let counts = vec![
        (
            "nginx 200: /ok (short connections) and new paths (keep-alive)",
            expected(&sent.ok) + expected(&sent.paths),
            status_total("200"),
        ),
        (
            "nginx 404: /missing (short connections)",
            expected(&sent.missing),
            status_total("404"),
        ),
        (
            "one-shot servers",
            expected(&sent.one_shot),
            service_total(&scrape, ONE_SHOT),
        ),
    ];
    Ok(Soak {
        duration,
        samples: samples.into_inner().unwrap(),
        counts,
        losses: losses(&agent.scrape()),
        peak_rss: sampler::peak_rss_bytes(agent.pid()).unwrap_or(0),
    })
}

/// Calls `batch` once a second until `deadline`.
fn every_second(deadline: Instant, mut batch: impl FnMut()) {
    let mut next = Instant::now();
    while next < deadline {
        batch();
        next += Duration::from_secs(1);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
}

/// (max − min) / min over `values`: how far they moved.
fn spread(values: &[f64]) -> f64 {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.is_empty() || min <= 0.0 {
        return if max <= 0.0 { 0.0 } else { f64::INFINITY };
    }
    (max - min) / min
}

impl Soak {
    /// The samples after the warm-up (the first half of the run).
    fn settled(&self) -> &[Sample] {
        let half = self.duration / 2;
        let first = self
            .samples
            .iter()
            .position(|s| s.at >= half)
            .unwrap_or(self.samples.len());
        &self.samples[first..]
    }

    /// How far each figure moved after the warm-up: RSS, all map entries, series.
    fn spreads(&self) -> Vec<(&'static str, f64)> {
        let settled = self.settled();
        let of = |f: &dyn Fn(&Sample) -> f64| spread(&settled.iter().map(f).collect::<Vec<_>>());
        vec![
            ("RSS", of(&|s| s.rss_bytes as f64)),
            (
                "BPF map entries (all maps)",
                of(&|s| s.map_entries.values().sum()),
            ),
            ("series in /metrics", of(&|s| s.series as f64)),
        ]
    }

    pub fn flat(&self) -> bool {
        self.spreads()
            .iter()
            .all(|(_, spread)| *spread <= FLAT_WITHIN)
    }

    pub fn exact(&self) -> bool {
        self.counts.iter().all(|(_, sent, counted)| sent == counted)
    }

    pub fn json(&self) -> Value {
        json!({
            "seconds": self.duration.as_secs(),
            "flat": self.flat(),
            "exact": self.exact(),
            "spreads_after_warm_up": self.spreads().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "peak_rss_bytes": self.peak_rss,
            "counts": self.counts.iter().map(|(what, sent, counted)| json!({
                "what": what, "sent": sent, "counted": counted,
            })).collect::<Vec<_>>(),
            "samples": self.samples.iter().map(|s| json!({
                "at_s": s.at.as_secs(), "rss_bytes": s.rss_bytes, "maps": s.map_entries,
                "series": s.series, "process_series": s.process_series,
                "scrape_ms": s.scrape.as_secs_f64() * 1e3,
            })).collect::<Vec<_>>(),
            "losses": self.losses.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        })
    }

    pub fn markdown(&self, machine: &str) -> String {
        let mut out = String::new();
        let minutes = self.duration.as_secs() / 60;
        let _ = writeln!(
            out,
            "`cargo xtask soak` ({minutes} min): one agent as deployed (1 s refresh, default \
             budgets) but with `--exited-process-grace {GRACE}`, so that series of exited \
             processes and idle routes reach their equilibrium within the warm-up; nginx (2 \
             workers); every second 200 keep-alive requests to new \
             paths (cycling through {PATH_POOL}), 50 short connections to /ok and 10 to \
             /missing, 5 processes that serve one request and exit. Sampled every {} s; \
             {machine}.\n",
            SAMPLE_EVERY.as_secs()
        );
        let verdict = |ok: bool| if ok { "yes" } else { "**no**" };
        let _ = writeln!(
            out,
            "Flat within {:.0}% after the warm-up (the first half): {}. Every request counted \
             once: {}. Agent peak RSS (VmHWM) {:.1} MiB.\n",
            FLAT_WITHIN * 100.0,
            verdict(self.flat()),
            verdict(self.exact()),
            mib(self.peak_rss)
        );
        let _ = writeln!(
            out,
            "| After the warm-up | Moved (max − min) / min |\n|---|---:|"
        );
        for (what, spread) in self.spreads() {
            let _ = writeln!(out, "| {what} | {:.1}% |", spread * 100.0);
        }
        let _ = writeln!(out, "\n| Requests | Sent | Counted |\n|---|---:|---:|");
        for (what, sent, counted) in &self.counts {
            let _ = writeln!(out, "| {what} | {sent} | {counted} |");
        }
        let maps: Vec<&String> = self
            .samples
            .first()
            .map(|s| s.map_entries.keys().collect())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\nThe samples (RSS in MiB, map entries, sample lines in /metrics, of which \
             `process_cpu_time_seconds_total`, scrape time):\n"
        );
        let header: Vec<String> = maps.iter().map(|m| m.to_string()).collect();
        let _ = writeln!(
            out,
            "| s | RSS | {} | series | process | scrape ms |\n|---:|---:|{}---:|---:|---:|",
            header.join(" | "),
            "---:|".repeat(maps.len())
        );
        for sample in &self.samples {
            let entries: Vec<String> = maps
                .iter()
                .map(|m| format!("{}", sample.map_entries.get(*m).copied().unwrap_or(0.0)))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {:.1} | {} | {} | {} | {:.1} |",
                sample.at.as_secs(),
                mib(sample.rss_bytes),
                entries.join(" | "),
                sample.series,
                sample.process_series,
                sample.scrape.as_secs_f64() * 1e3
            );
        }
        let _ = writeln!(
            out,
            "\nLoss, overflow and recovery counters at the end: {}.\n",
            nonzero_losses(&self.losses)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn spread_is_the_range_over_the_minimum() {
        assert_eq!(spread(&[100.0, 105.0, 110.0]), 0.1);
        assert_eq!(spread(&[0.0, 0.0]), 0.0);
        assert!(spread(&[0.0, 3.0]).is_infinite());
    }
}
