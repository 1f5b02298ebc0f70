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

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use monitor_tests::{MonitorAgent, Scrape, poll::try_poll, servers::Server};

use super::{
    agent::{
        ProgramTotal, Variant, counter_sum, cpu_seconds, hooks, order, peak_rss_bytes,
        process_cpu_seconds, program_deltas, program_totals, start_as_deployed,
    },
    loadgen::{Oha, OhaReport, WrkReport, wrk},
    profile::{self, Profile},
    progress::Progress,
    stats::{Buckets, difference, geometric_bounds, histogram_quantile, median},
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
fn same_hooks(
    seen: &BTreeMap<&str, BTreeSet<(String, String)>>,
) -> Result<BTreeSet<(String, String)>> {
    let real = seen
        .get(Variant::Monitor.name())
        .cloned()
        .unwrap_or_default();
    let empty = seen.get(Variant::EmptyPrograms.name());
    if empty != Some(&real) {
        bail!("--empty-programs attached other hooks than the agent: {empty:?} against {real:?}");
    }
    Ok(real)
}

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

impl Bench<'_> {
    /// nginx's count of the requests it has handled (`stub_status`), this one included.
    fn nginx_requests(&self) -> Result<u64> {
        let url = self.server.url(STATUS_ROUTE);
        let body = ureq::get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?
            .into_body()
            .read_to_string()?;
        parse_stub_status(&body).with_context(|| format!("unexpected stub_status: {body}"))
    }

    fn oha(&self) -> Oha<'_> {
        Oha {
            path: &self.oha,
            url: &self.url,
            rate: self.rate,
            connections: self.plan.rate_connections,
            cpus: self.plan.load_cpus,
        }
    }

    /// One more fixed-rate run with `variant`'s agent (no BPF statistics), with nginx's
    /// worker and oha sampled by perf; not one of the measured rounds, which perf would slow
    /// down.
    fn profile(&self, variant: Variant, requests: u64, buckets: &str) -> Result<Profile> {
        if !profile::available() {
            bail!("perf is not available (`perf stat -e cpu-clock true` failed)");
        }
        let workers = nginx_workers(self.server.pid());
        let _agent = variant.start(&["--duration-buckets", buckets]);
        let run = self.oha().start(requests)?;
        let mut pids = workers;
        pids.push(run.pid());
        let data = super::target_dir().join("bench/perf.data");
        let duration = Duration::from_secs_f64(requests as f64 / self.rate as f64 * 0.9);
        let mut perf = profile::record(&pids, duration, &data)?;
        run.wait()?;
        let status = perf.wait().context("waiting for perf record")?;
        if !status.success() {
            bail!("perf record failed ({status})");
        }
        // oha's threads are `oha` and its tokio workers; nginx's worker is `nginx`.
        profile::summarise(&data, |comm| {
            if comm == "nginx" { "nginx" } else { "oha" }.to_owned()
        })
    }

    /// A short fixed-rate run with wide buckets (1 µs to 1 s); the fine buckets then span
    /// from the server's 1st percentile to the client's 99.9th, each with a margin of 1.5x.
    fn pilot(&self) -> Result<Vec<f64>> {
        let wide = geometric_bounds(1e-6, 1.0, BOUNDS)
            .iter()
            .map(|bound| format!("{bound:.9}"))
            .collect::<Vec<_>>()
            .join(",");
        let agent = start_as_deployed(&["--duration-buckets", &wide]);
        let before = agent.scrape();
        let requests = (self.rate as f64 * self.plan.pilot_run.as_secs_f64()) as u64;
        self.oha().run(requests)?;
        let client = oha_client_service(&self.oha);
        let after = self.settle(&agent, &before, requests, Some((&client, requests)));
        let server =
            server_buckets(&after).map(|b| difference(&b, server_buckets(&before).as_ref()));
        let client = client_buckets(&after, &client)
            .map(|b| difference(&b, client_buckets(&before, &client).as_ref()));
        let low = server
            .as_ref()
            .map(|b| histogram_quantile(0.01, b))
            .filter(|q| q.is_finite())
            .context("the pilot run recorded no server request: is the agent counting nginx?")?;
        let high = client
            .as_ref()
            .or(server.as_ref())
            .map(|b| histogram_quantile(0.999, b))
            .filter(|q| q.is_finite())
            .unwrap_or(low * 100.0);
        Ok(geometric_bounds((low / 1.5).max(1e-6), high * 1.5, BOUNDS))
    }

    /// CPU time of nginx's workers so far, seconds (none without workers).
    fn server_cpu_seconds(&self) -> Option<f64> {
        let workers = nginx_workers(self.server.pid());
        (!workers.is_empty()).then(|| workers.into_iter().map(process_cpu_seconds).sum())
    }

    fn before(agent: Option<&MonitorAgent>) -> Option<Before> {
        agent.map(|agent| Before {
            scrape: agent.scrape(),
            cpu_seconds: cpu_seconds(agent),
        })
    }

    fn saturation_round(
        &self,
        round: usize,
        variant: Variant,
        agent: Option<&MonitorAgent>,
    ) -> Result<SaturationRound> {
        let plan = self.plan;
        wrk(&self.url, plan.connections, plan.warm_up, plan.load_cpus)?;
        if let Some(agent) = agent.filter(|_| variant.records()) {
            // The warm-up's last responses are recorded when nginx sees its connections
            // close: they belong before the run's first scrape.
            quiesce(agent);
        }
        let before = Self::before(agent);
        let served_before = self.nginx_requests()?;
        let server_cpu_before = self.server_cpu_seconds();
        let report = wrk(&self.url, plan.connections, plan.saturation, plan.load_cpus)?;
        let server_cpu_seconds = cpu_delta(server_cpu_before, self.server_cpu_seconds());
        let cpu_after = agent.map(cpu_seconds);
        // The second status request counts itself.
        let served = self.nginx_requests()? - served_before - 1;
        let (cost, counts) = match (agent, before) {
            (Some(agent), Some(before)) => {
                // wrk's requests in flight at its deadline may never complete: wait on nginx's.
                let after = self.after(variant, agent, &before.scrape, served, None);
                let cost = cost(agent, &before, cpu_after, &after);
                (Some(cost), counted(variant, &before.scrape, &after, "wrk"))
            }
            _ => (None, None),
        };
        Ok(SaturationRound {
            round,
            variant,
            wrk: report,
            served,
            server_cpu_seconds,
            cost,
            counts,
        })
    }

    fn fixed_round(
        &self,
        round: usize,
        variant: Variant,
        agent: Option<&MonitorAgent>,
        requests: u64,
    ) -> Result<FixedRound> {
        let before = Self::before(agent);
        let server_cpu_before = self.server_cpu_seconds();
        let report = self.oha().run(requests)?;
        let server_cpu_seconds = cpu_delta(server_cpu_before, self.server_cpu_seconds());
        let cpu_after = agent.map(cpu_seconds);
        let client = oha_client_service(&self.oha);
        let (cost, counts, programs) = match (agent, before) {
            (Some(agent), Some(before)) => {
                let expected = report.responses;
                let after = self.after(
                    variant,
                    agent,
                    &before.scrape,
                    expected,
                    Some((&client, expected)),
                );
                let programs =
                    program_deltas(&program_totals(&before.scrape), &program_totals(&after));
                (
                    Some(cost(agent, &before, cpu_after, &after)),
                    counted(variant, &before.scrape, &after, &client),
                    programs,
                )
            }
            _ => (None, None, BTreeMap::new()),
        };
        Ok(FixedRound {
            round,
            variant,
            oha: report,
            server_cpu_seconds,
            cost,
            counts,
            programs,
        })
    }

    /// Scrapes until the agent has recorded `expected` more server requests than in
    /// `before` (and the client requests of `client`: its service and count), or SETTLE has
    /// passed; the last scrape either way (a shortfall is a result, reported, not an error).
    fn settle(
        &self,
        agent: &MonitorAgent,
        before: &Scrape,
        expected: u64,
        client: Option<(&str, u64)>,
    ) -> Scrape {
        let server_before = server_count(before);
        try_poll(SETTLE, || {
            let scrape = agent.scrape();
            let server_done = server_count(&scrape) - server_before >= expected;
            let client_done = client.is_none_or(|(service, requests)| {
                client_count(&scrape, service) - client_count(before, service) >= requests
            });
            (server_done && client_done).then_some(scrape)
        })
        .unwrap_or_else(|| agent.scrape())
    }

    /// The scrape after a run: settled for the real agent, at once for the others (which
    /// record nothing).
    fn after(
        &self,
        variant: Variant,
        agent: &MonitorAgent,
        before: &Scrape,
        expected: u64,
        client: Option<(&str, u64)>,
    ) -> Scrape {
        match variant {
            Variant::Monitor => self.settle(agent, before, expected, client),
            // The load generator is not measured: no client requests to wait for.
            Variant::ServerOnly => self.settle(agent, before, expected, None),
            _ => agent.scrape(),
        }
    }
}

/// Waits until the agent's count of nginx's requests stops moving (for a quarter of a
/// second), at most SETTLE.
fn quiesce(agent: &MonitorAgent) {
    let mut last: Option<(u64, Instant)> = None;
    try_poll(SETTLE, || {
        let count = server_count(&agent.scrape());
        match last {
            Some((seen, since)) if seen == count => {
                (since.elapsed() >= Duration::from_millis(250)).then_some(())
            }
            _ => {
                last = Some((count, Instant::now()));
                None
            }
        }
    });
}

/// The load generator's service name: its executable's name.
fn oha_client_service(path: &Path) -> String {
    path.file_name()
        .map_or("oha".to_owned(), |name| name.to_string_lossy().into_owned())
}

fn cost(
    agent: &MonitorAgent,
    before: &Before,
    cpu_after: Option<f64>,
    after: &Scrape,
) -> AgentCost {
    let delta = |name: &str| {
        after.value(name, &[]).unwrap_or(0.0) - before.scrape.value(name, &[]).unwrap_or(0.0)
    };
    AgentCost {
        cpu_seconds: cpu_after.unwrap_or(before.cpu_seconds) - before.cpu_seconds,
        peak_rss_bytes: peak_rss_bytes(agent),
        refreshes: delta("monitor_refresh_duration_seconds_count"),
        refresh_seconds: delta("monitor_refresh_duration_seconds_sum"),
    }
}

fn counted(variant: Variant, before: &Scrape, after: &Scrape, client: &str) -> Option<Counts> {
    if !variant.records() {
        return None;
    }
    let delta = |name: &str| counter_sum(after, name) - counter_sum(before, name);
    Some(Counts {
        server: server_count(after) - server_count(before),
        client: client_count(after, client) - client_count(before, client),
        drops: drops(after, before),
        unanswered: delta("monitor_http_requests_unanswered_total"),
        unmatched: delta("monitor_http_responses_unmatched_total"),
        server_buckets: server_buckets(after)
            .map(|b| difference(&b, server_buckets(before).as_ref())),
        client_buckets: client_buckets(after, client)
            .map(|b| difference(&b, client_buckets(before, client).as_ref())),
    })
}

/// What each drop counter gained, by reason; the reasons that gained nothing left out.
fn drops(after: &Scrape, before: &Scrape) -> BTreeMap<String, f64> {
    let mut drops = BTreeMap::new();
    for name in [
        "monitor_http_events_dropped_total",
        "monitor_bpf_events_dropped_total",
    ] {
        for sample in after.matching(name, &[]) {
            let reason = sample.labels.get("reason").cloned().unwrap_or_default();
            let earlier = before.value(name, &[("reason", &reason)]).unwrap_or(0.0);
            if sample.value > earlier {
                *drops.entry(reason).or_default() += sample.value - earlier;
            }
        }
    }
    drops
}

const NGINX: [(&str, &str); 3] = [
    ("service_name", "nginx"),
    ("http_route", ROUTE),
    ("http_response_status_code", "200"),
];

fn server_buckets(scrape: &Scrape) -> Option<Buckets> {
    scrape.histogram(SERVER_DURATION, &NGINX)
}

fn server_count(scrape: &Scrape) -> u64 {
    scrape.histogram_count(SERVER_DURATION, &NGINX).unwrap_or(0)
}

/// The load generator's client requests: one series (one server address, status 200).
fn client_buckets(scrape: &Scrape, service: &str) -> Option<Buckets> {
    scrape.histogram(CLIENT_DURATION, &[("service_name", service)])
}

fn client_count(scrape: &Scrape, service: &str) -> u64 {
    scrape
        .histograms(CLIENT_DURATION, &[("service_name", service)])
        .map(|buckets| buckets.last().map_or(0, |&(_, count)| count))
        .sum()
}

/// The worker processes of the nginx master `master`.
fn nginx_workers(master: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

fn cpu_delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

/// The `requests` figure of nginx's stub_status page:
/// `Active connections: 1\nserver accepts handled requests\n 5 5 42\n...`.
fn parse_stub_status(body: &str) -> Option<u64> {
    let mut lines = body.lines();
    lines.find(|line| line.contains("accepts handled requests"))?;
    lines.next()?.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_status_gives_the_request_count() {
        let body = "Active connections: 3 \nserver accepts handled requests\n 12 12 4567 \n\
                    Reading: 0 Writing: 1 Waiting: 2 \n";
        assert_eq!(parse_stub_status(body), Some(4567));
        assert_eq!(parse_stub_status("nope"), None);
    }
}
