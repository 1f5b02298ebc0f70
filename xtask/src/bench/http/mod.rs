//! A µs-scale HTTP server (nginx answering a small body over keep-alive) under load, with no
//! agent, with the agent, and with empty programs on the agent's hooks, interleaved:
//!
//! - at saturation (wrk): throughput, nginx's CPU time per request (what the programs in its
//!   syscalls cost it, apart from what the agent takes from the load generator's CPU), the
//!   agent's CPU and memory, requests it did not record;
//! - at a fixed rate (oha, an exact number of requests): latency, BPF time per request, and
//!   the agent's counts and percentiles against the load generator's.
//!
//! The load generator is on the same host, so the agent measures both ends: nginx as a server
//! and the load generator as a client.
//!
//! This file holds the plan, the results and the order of the runs; `runs` holds each run
//! (saturation, fixed rate, pilot, profile), `scrape` what the agent's scrapes say about one,
//! and `nginx` what nginx says of itself.

mod nginx;

pub(super) use nginx::{nginx_workers, parse_stub_status};
mod runs;
mod scrape;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Result, bail};
use monitor_tests::{Scrape, servers::Server};

use super::{
    agent::{ProgramTotal, Variant, hooks, order},
    loadgen::{OhaReport, WrkReport},
    profile::Profile,
    progress::Progress,
    stats::{Buckets, median},
    target_dir,
};

pub const ROUTE: &str = "/hello";
const BODY: &str = "hello, world\n";
const STATUS_ROUTE: &str = "/nginx_status";
pub const SERVER_DURATION: &str = "http_server_request_duration_seconds";
pub const CLIENT_DURATION: &str = "http_client_request_duration_seconds";
/// Most bounds the agent takes (`MAX_DURATION_BOUNDS`): the finest resolution it has.
pub const BOUNDS: usize = 32;
/// How long the agent may take to record the last responses (a keep-alive response ends at
/// the close, or after the 1 s idle timeout).
const SETTLE: Duration = Duration::from_secs(5);
/// Agent start-up, BPF verification included, as estimated for progress.
const START: Duration = Duration::from_secs(3);

pub struct Plan {
    pub rounds: usize,
    /// wrk at saturation: connections, warm-up and measured run per round.
    pub connections: usize,
    pub warm_up: Duration,
    pub saturation: Duration,
    /// oha at a fixed rate: at most `rate` requests per second (half the saturation
    /// throughput without the agent where that is lower), for `fixed_run`, over
    /// `rate_connections`; the pilot run that places the agent's buckets lasts `pilot_run`.
    pub rate: u64,
    pub fixed_run: Duration,
    pub rate_connections: usize,
    pub pilot_run: Duration,
    /// CPUs of the load generator (taskset list) and nginx's worker (`worker_cpu_affinity`
    /// mask), when the host has two CPUs or more.
    pub load_cpus: &'static str,
    pub server_affinity: Option<&'static str>,
}

impl Plan {
    fn saturation_step(&self) -> Duration {
        START + self.warm_up + self.saturation + Duration::from_secs(1)
    }

    fn fixed_step(&self) -> Duration {
        START + self.fixed_run + Duration::from_secs(2)
    }

    pub fn estimate(&self) -> Duration {
        START
            + self.pilot_run
            + self.fixed_step()
            + (self.saturation_step() + self.fixed_step())
                * (self.rounds * Variant::ALL.len()) as u32
    }
}

/// What the agent's process cost during a run, and its refreshes.
#[derive(Clone, Debug)]
pub struct AgentCost {
    pub cpu_seconds: f64,
    pub peak_rss_bytes: Option<u64>,
    /// Refreshes (map reads folded into the model) and their total time.
    pub refreshes: f64,
    pub refresh_seconds: f64,
}

/// What the agent counted during a run (the real agent only).
#[derive(Clone, Debug)]
pub struct Counts {
    /// Requests to ROUTE recorded for nginx.
    pub server: u64,
    /// Requests recorded for the load generator as a client.
    pub client: u64,
    /// Kernel drops (HTTP and scheduler maps), by reason.
    pub drops: BTreeMap<String, f64>,
    pub unanswered: f64,
    pub unmatched: f64,
    pub server_buckets: Option<Buckets>,
    pub client_buckets: Option<Buckets>,
}

pub struct SaturationRound {
    /// The round (from 0): variants of one round ran next to each other.
    pub round: usize,
    pub variant: Variant,
    pub wrk: WrkReport,
    /// Requests nginx served in the run (its own stub_status count).
    pub served: u64,
    /// CPU time of nginx's worker in the run (its process CPU-time clock), seconds.
    pub server_cpu_seconds: Option<f64>,
    pub cost: Option<AgentCost>,
    pub counts: Option<Counts>,
}

pub struct FixedRound {
    pub round: usize,
    pub variant: Variant,
    pub oha: OhaReport,
    /// As in `SaturationRound`; with BPF statistics on, which add to the programs' time.
    pub server_cpu_seconds: Option<f64>,
    pub cost: Option<AgentCost>,
    pub counts: Option<Counts>,
    /// BPF run time and runs of each program in the run (`--bpf-stats`).
    pub programs: BTreeMap<String, ProgramTotal>,
}

pub struct Http {
    pub rounds: usize,
    pub connections: usize,
    pub saturation: Duration,
    /// The fixed rate the runs had (req/s), and the requests of each run.
    pub rate: u64,
    pub requests: u64,
    /// Whether the rate had to be lowered below the plan's: the host could not serve it.
    pub rate_lowered: bool,
    pub rate_connections: usize,
    pub load_cpus: &'static str,
    pub server_pinned: bool,
    /// The agent's duration buckets (seconds) in every run.
    pub bounds: Vec<f64>,
    pub saturation_rounds: Vec<SaturationRound>,
    pub fixed_rounds: Vec<FixedRound>,
    /// The hooks the real agent and the empty programs attached (the same set, checked).
    pub hooks: BTreeSet<(String, String)>,
    /// perf samples of nginx's worker and oha during one more run with each recording
    /// variant of the agent, or why there are none.
    pub profiles: Vec<(Variant, Result<Profile, String>)>,
}

pub fn measure(plan: &Plan, oha_path: &Path, progress: &mut Progress) -> Result<Http> {
    let locations = format!(
        "    location = {ROUTE} {{ default_type text/plain; return 200 \"{}\"; }}\n    \
         location = {STATUS_ROUTE} {{ stub_status; }}",
        BODY.escape_default()
    );
    let main = plan
        .server_affinity
        .map(|mask| format!("worker_cpu_affinity {mask};"))
        .unwrap_or_default();
    let server = Server::nginx_with(1, &main, &locations);
    let mut bench = Bench {
        plan,
        server: &server,
        url: server.url(ROUTE),
        oha: oha_path.to_path_buf(),
        rate: plan.rate,
    };

    let mut hooks_seen: BTreeMap<&str, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut saturation_rounds = Vec::new();
    for round in 0..plan.rounds {
        for variant in order(round, Variant::ALL) {
            progress.step(
                "HTTP at saturation (wrk)",
                &format!("round {}/{}, {}", round + 1, plan.rounds, variant.name()),
                plan.saturation_step(),
            );
            let agent = variant.start(&[]);
            if let Some(agent) = &agent {
                hooks_seen.insert(variant.name(), hooks(&agent.scrape()));
            }
            saturation_rounds.push(bench.saturation_round(round, variant, agent.as_ref())?);
        }
    }
    let hooks = same_hooks(&hooks_seen)?;

    // A fixed rate is only a latency test below saturation.
    let capacity = median(
        saturation_rounds
            .iter()
            .filter(|r| r.variant == Variant::NoAgent)
            .map(|r| r.wrk.requests_per_second)
            .collect(),
    );
    bench.rate = plan
        .rate
        .min(((capacity / 2.0 / 100.0) as u64 * 100).max(100));
    let requests = (bench.rate as f64 * plan.fixed_run.as_secs_f64()) as u64;

    progress.step(
        "HTTP",
        &format!(
            "pilot run at {} req/s, to place the agent's buckets",
            bench.rate
        ),
        START + plan.pilot_run,
    );
    let bounds = bench.pilot()?;
    let buckets = bounds
        .iter()
        .map(|bound| format!("{bound:.9}"))
        .collect::<Vec<_>>()
        .join(",");

    let mut fixed_rounds = Vec::new();
    for round in 0..plan.rounds {
        for variant in order(round, Variant::ALL) {
            progress.step(
                &format!("HTTP at {} req/s (oha)", bench.rate),
                &format!("round {}/{}, {}", round + 1, plan.rounds, variant.name()),
                plan.fixed_step(),
            );
            let agent = variant.start(&["--bpf-stats", "--duration-buckets", &buckets]);
            fixed_rounds.push(bench.fixed_round(round, variant, agent.as_ref(), requests)?);
        }
    }
    let mut profiles = Vec::new();
    for variant in [Variant::Monitor, Variant::ServerOnly] {
        progress.step(
            "HTTP",
            &format!(
                "perf profile of nginx and oha at {} req/s, {}",
                bench.rate,
                variant.name()
            ),
            plan.fixed_step(),
        );
        let profile = bench
            .profile(variant, requests, &buckets)
            .map_err(|error| format!("{error:#}"));
        profiles.push((variant, profile));
    }
    Ok(Http {
        rounds: plan.rounds,
        connections: plan.connections,
        saturation: plan.saturation,
        rate: bench.rate,
        requests,
        rate_lowered: bench.rate < plan.rate,
        rate_connections: plan.rate_connections,
        load_cpus: plan.load_cpus,
        server_pinned: plan.server_affinity.is_some(),
        bounds,
        saturation_rounds,
        fixed_rounds,
        hooks,
        profiles,
    })
}

/// The floor is only a floor if the empty programs sit on exactly the real agent's hooks.
/// Those on TLS libraries aside: the empty programs attach none, and this nginx makes no TLS
/// call, so they never run here (the `https` bench measures them). Whether the agent has
/// attached them by its first scrape depends on how soon its start-up scan ends.
fn same_hooks(
    seen: &BTreeMap<&str, BTreeSet<(String, String)>>,
) -> Result<BTreeSet<(String, String)>> {
    let mut real = seen
        .get(Variant::Monitor.name())
        .cloned()
        .unwrap_or_default();
    real.retain(|(hook, _)| hook != TLS_HOOK);
    let empty = seen.get(Variant::EmptyPrograms.name());
    if empty != Some(&real) {
        bail!("--empty-programs attached other hooks than the agent: {empty:?} against {real:?}");
    }
    Ok(real)
}

/// The hook of the TLS programs, as `monitor_bpf_program_info` names it.
const TLS_HOOK: &str = "libssl";

struct Bench<'a> {
    plan: &'a Plan,
    server: &'a Server,
    url: String,
    oha: PathBuf,
    /// The fixed rate, req/s.
    rate: u64,
}

/// A scrape and the agent's CPU time, taken together before a run.
struct Before {
    scrape: Scrape,
    cpu_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::nginx::parse_stub_status;

    #[test]
    fn stub_status_gives_the_request_count() {
        let body = "Active connections: 3 \nserver accepts handled requests\n 12 12 4567 \n\
                    Reading: 0 Writing: 1 Waiting: 2 \n";
        assert_eq!(parse_stub_status(body), Some(4567));
        assert_eq!(parse_stub_status("nope"), None);
    }
}
