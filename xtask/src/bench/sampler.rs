//! What `churn` and `soak` watch while they run: the agent's resident memory, its BPF map
//! entries and how many series it exports, sampled at a fixed interval on a thread of its own.

use std::{
    collections::BTreeMap,
    fs,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use monitor_tests::{MonitorAgent, Scrape};

/// One look at the agent.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Duration,
    pub rss_bytes: u64,
    /// `monitor_bpf_map_entries` by map.
    pub map_entries: BTreeMap<String, f64>,
    /// Series in /metrics (sample lines), and those of `process_cpu_time_seconds_total`.
    pub series: usize,
    pub process_series: usize,
    /// Time the scrape took.
    pub scrape: Duration,
}

/// Resident memory of process `pid` now (VmRSS), bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

/// Peak resident memory of process `pid` (VmHWM), bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Sets the flag when dropped: the sampler stops even when the load panics, so the scope that
/// runs both can end.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Samples `agent` every `every` until `stop` is set; the samples so far are in `samples`.
pub fn sample_until(
    agent: &MonitorAgent,
    every: Duration,
    stop: &AtomicBool,
    samples: &Mutex<Vec<Sample>>,
) {
    let started = Instant::now();
    let mut next = started;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            let sample = take(agent, started.elapsed());
            samples.lock().unwrap().push(sample);
            next += every;
        }
        // Short naps so that a stop is seen at once; the interval is kept by `next`.
        std::thread::sleep(Duration::from_millis(50).min(every));
    }
}

/// One sample, at `at` since the start.
pub fn take(agent: &MonitorAgent, at: Duration) -> Sample {
    let started = Instant::now();
    let text = agent.metrics_text();
    let scrape = started.elapsed();
    let parsed = Scrape::parse(&text);
    let map_entries = parsed
        .matching("monitor_bpf_map_entries", &[])
        .filter_map(|sample| Some((sample.labels.get("map")?.clone(), sample.value)))
        .collect();
    let is_series = |line: &&str| !line.starts_with('#') && !line.trim().is_empty();
    Sample {
        at,
        rss_bytes: rss_bytes(agent.pid()).unwrap_or(0),
        map_entries,
        series: text.lines().filter(is_series).count(),
        process_series: text
            .lines()
            .filter(|line| line.starts_with("process_cpu_time_seconds_total{"))
            .count(),
        scrape,
    }
}

/// The largest value each map reached over `samples`.
pub fn peak_entries(samples: &[Sample]) -> BTreeMap<String, f64> {
    let mut peaks = BTreeMap::new();
    for sample in samples {
        for (map, &entries) in &sample.map_entries {
            let peak = peaks.entry(map.clone()).or_insert(0.0f64);
            *peak = peak.max(entries);
        }
    }
    peaks
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
