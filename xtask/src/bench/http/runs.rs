//! The runs of the HTTP benchmark: at saturation, at a fixed rate, the pilot that places the
//! agent's buckets and the perf profile, each with the agent's cost and counts around it.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use monitor_tests::{MonitorAgent, Scrape, poll::try_poll};

use super::{
    BOUNDS, Before, Bench, FixedRound, SETTLE, STATUS_ROUTE, SaturationRound,
    nginx::{nginx_workers, parse_stub_status},
    scrape::{
        client_buckets, client_count, cost, counted, oha_client_service, server_buckets,
        server_count,
    },
};
use crate::bench::{
    agent::{
        Variant, cpu_seconds, process_cpu_seconds, program_deltas, program_totals,
        start_as_deployed,
    },
    loadgen::{Oha, wrk},
    profile::{self, Profile},
    stats::{difference, geometric_bounds, histogram_quantile},
};

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
    pub(super) fn profile(
        &self,
        variant: Variant,
        requests: u64,
        buckets: &str,
    ) -> Result<Profile> {
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
    pub(super) fn pilot(&self) -> Result<Vec<f64>> {
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

    pub(super) fn saturation_round(
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

    pub(super) fn fixed_round(
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

fn cpu_delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}
