//! HTTPS through OpenSSL: nginx (one worker, TLS, keep-alive) under wrk (OpenSSL too, so
//! both ends call the library), with no agent, with the agent reading no HTTPS (`--no-tls`:
//! only its syscall programs, which skip nothing of TLS traffic) and with the agent as
//! deployed (uprobes at SSL_read/SSL_write). BPF statistics are on in both agents, so the
//! programs' run time per request is known; they add a little to every program run.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use monitor_tests::{MonitorAgent, Scrape, servers::Server};
use serde_json::{Value, json};

use super::{
    agent::{Run, Variant, process_cpu_seconds, program_deltas, program_totals},
    http::{nginx_workers, parse_stub_status},
    loadgen::wrk,
    progress::Progress,
    stats::{median, ratio},
};

const ROUTE: &str = "/hello";
const STATUS_ROUTE: &str = "/nginx_status";
/// The programs that run at the TLS library's calls.
const TLS_PROGRAMS: [&str; 7] = [
    "tls_read",
    "tls_write",
    "tls_read_ex",
    "tls_write_ex",
    "tls_read_return",
    "tls_write_return",
    "tls_new_return",
];

pub struct Plan {
    pub rounds: usize,
    pub run: Duration,
    pub connections: usize,
    /// CPUs of the load generator (taskset list) and nginx's worker (`worker_cpu_affinity`
    /// mask), when the host has two.
    pub load_cpus: &'static str,
    pub server_affinity: Option<&'static str>,
}

impl Plan {
    pub fn estimate(&self) -> Duration {
        (Duration::from_secs(3) + self.run) * (self.rounds * RUNS.len()) as u32
    }
}

const RUNS: [Run; 3] = [
    Run {
        variant: Variant::NoAgent,
        args: &[],
        name: "no agent",
    },
    Run {
        variant: Variant::Monitor,
        args: &["--bpf-stats", "--no-tls"],
        name: "monitor, --no-tls",
    },
    Run {
        variant: Variant::Monitor,
        args: &["--bpf-stats"],
        name: "monitor",
    },
];
const NO_AGENT: usize = 0;

/// One run of one variant.
#[derive(Clone, Debug, Default)]
struct Round {
    requests_per_second: f64,
    /// nginx's worker CPU time per request it served, µs.
    nginx_us_per_request: f64,
    /// Requests nginx served (its stub_status count, the status requests left out).
    served: u64,
    /// What the agent recorded of them: nginx's side, wrk's side.
    server_recorded: Option<u64>,
    client_recorded: Option<u64>,
    /// BPF run time per request served: all the agent's programs, the TLS ones.
    bpf_ns_per_request: Option<f64>,
    tls_ns_per_request: Option<f64>,
    /// Runs of the TLS programs per request served.
    tls_runs_per_request: Option<f64>,
}

pub struct Https {
    plan_rounds: usize,
    run: Duration,
    connections: usize,
    rounds: [Vec<Round>; RUNS.len()],
}

pub fn measure(plan: &Plan, progress: &mut Progress) -> Result<Https> {
    let dir = tempfile::tempdir()?;
    let pem = dir.path().join("localhost.pem");
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&pem)
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .output()
        .context("running openssl to make a certificate")?;
    if !output.status.success() {
        bail!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut both = std::fs::read_to_string(dir.path().join("cert.pem"))?;
    both.push_str(&std::fs::read_to_string(&pem)?);
    std::fs::write(&pem, both)?;
    let main = plan
        .server_affinity
        .map(|mask| format!("worker_cpu_affinity {mask};"))
        .unwrap_or_default();
    let locations = format!(
        "    location = {ROUTE} {{ default_type text/plain; return 200 \"hello, world\\n\"; }}\n    \
         location = {STATUS_ROUTE} {{ stub_status; }}"
    );
    let server = Server::nginx_https_with(&main, "", &pem, &locations);
    let url = format!("https://127.0.0.1:{}{ROUTE}", server.port);
    let status_url = format!("https://127.0.0.1:{}{STATUS_ROUTE}", server.port);
    let worker = *nginx_workers(server.pid())
        .first()
        .context("nginx has no worker")?;
    let mut rounds: [Vec<Round>; RUNS.len()] = Default::default();
    for round in 0..plan.rounds {
        let mut order: [usize; RUNS.len()] = std::array::from_fn(|index| index);
        order.rotate_left(round % RUNS.len());
        for index in order {
            let run = RUNS[index];
            progress.step(
                "HTTPS at saturation (wrk)",
                &format!("round {}/{}, {}", round + 1, plan.rounds, run.name),
                Duration::from_secs(3) + plan.run,
            );
            let agent = run.start();
            rounds[index].push(one_round(plan, agent.as_ref(), &url, &status_url, worker)?);
        }
    }
    Ok(Https {
        plan_rounds: plan.rounds,
        run: plan.run,
        connections: plan.connections,
        rounds,
    })
}

/// nginx's count of the requests it has handled, this one included (curl over TLS: the
/// agent counts it too, under its own route).
fn nginx_requests(status_url: &str) -> Result<u64> {
    let output = Command::new("curl")
        .args(["-sk", status_url])
        .output()
        .context("running curl")?;
    let body = String::from_utf8_lossy(&output.stdout);
    parse_stub_status(&body).with_context(|| format!("unexpected stub_status: {body}"))
}

fn one_round(
    plan: &Plan,
    agent: Option<&MonitorAgent>,
    url: &str,
    status_url: &str,
    worker: u32,
) -> Result<Round> {
    let before = agent.map(MonitorAgent::scrape);
    let served_before = nginx_requests(status_url)?;
    let cpu_before = process_cpu_seconds(worker);
    let report = wrk(url, plan.connections, plan.run, plan.load_cpus)?;
    let cpu = process_cpu_seconds(worker) - cpu_before;
    // The status request after the run counts itself.
    let served = nginx_requests(status_url)? - served_before - 1;
    if report.errors != 0 {
        bail!("wrk saw {} errors", report.errors);
    }
    let mut round = Round {
        requests_per_second: report.requests_per_second,
        nginx_us_per_request: cpu / served as f64 * 1e6,
        served,
        ..Round::default()
    };
    if let (Some(agent), Some(before)) = (agent, before) {
        // The agent's counts settle within a refresh or two of the last request.
        let after = if plan_reads_tls(agent) {
            settled(agent, &before, served)
        } else {
            agent.scrape()
        };
        round.server_recorded = Some(count(&after, SERVER) - count(&before, SERVER));
        round.client_recorded = Some(count(&after, CLIENT) - count(&before, CLIENT));
        let deltas = program_deltas(&program_totals(&before), &program_totals(&after));
        let per_request = |time: f64| time / served as f64;
        round.bpf_ns_per_request = Some(per_request(deltas.values().map(|t| t.time_ns).sum()));
        let tls = deltas
            .iter()
            .filter(|(program, _)| TLS_PROGRAMS.contains(&program.as_str()));
        let (time, runs) = tls.fold((0.0, 0.0), |(time, runs), (_, t)| {
            (time + t.time_ns, runs + t.runs)
        });
        round.tls_ns_per_request = Some(per_request(time));
        round.tls_runs_per_request = Some(per_request(runs));
    }
    Ok(round)
}

/// Whether the agent reads HTTPS (a TLS library probed).
fn plan_reads_tls(agent: &MonitorAgent) -> bool {
    agent
        .scrape()
        .value("monitor_tls_libraries_probed", &[])
        .is_some_and(|libraries| libraries > 0.0)
}

const SERVER: &str = "http_server_request_duration_seconds_count";
const CLIENT: &str = "http_client_request_duration_seconds_count";

/// Observations of `ROUTE`'s server side (nginx), or of every client (wrk), in a scrape.
fn count(scrape: &Scrape, name: &str) -> u64 {
    let samples = if name == SERVER {
        scrape
            .matching(name, &[("http_route", ROUTE)])
            .collect::<Vec<_>>()
    } else {
        scrape
            .matching(name, &[("service_name", "wrk")])
            .collect::<Vec<_>>()
    };
    samples.iter().map(|sample| sample.value as u64).sum()
}

/// A scrape once the server side counts `served` more requests than `before`, or after 5 s.
fn settled(agent: &MonitorAgent, before: &Scrape, served: u64) -> Scrape {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let scrape = agent.scrape();
        if count(&scrape, SERVER) - count(before, SERVER) >= served
            || std::time::Instant::now() > deadline
        {
            return scrape;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Https {
    fn median_of(&self, run: usize, figure: impl Fn(&Round) -> Option<f64>) -> Option<f64> {
        let values: Vec<f64> = self.rounds[run].iter().filter_map(figure).collect();
        (!values.is_empty()).then(|| median(values))
    }

    fn throughput_share(&self, run: usize) -> f64 {
        let shares = self.rounds[run]
            .iter()
            .zip(&self.rounds[NO_AGENT])
            .map(|(round, base)| ratio(round.requests_per_second, base.requests_per_second))
            .collect();
        median(shares)
    }

    /// Rounds where the agent recorded every request nginx served, as nginx's. (wrk stops
    /// on a deadline and reads no answer to the requests it leaves in flight: its side
    /// counts those as cut off.)
    fn exact_rounds(&self, run: usize) -> usize {
        self.rounds[run]
            .iter()
            .filter(|round| round.server_recorded == Some(round.served))
            .count()
    }

    pub fn json(&self) -> Value {
        let variant = |run: usize| {
            json!({
                "requests_per_second": self.median_of(run, |r| Some(r.requests_per_second)),
                "throughput_of_no_agent": self.throughput_share(run),
                "nginx_us_per_request": self.median_of(run, |r| Some(r.nginx_us_per_request)),
                "bpf_ns_per_request": self.median_of(run, |r| r.bpf_ns_per_request),
                "tls_programs_ns_per_request": self.median_of(run, |r| r.tls_ns_per_request),
                "tls_program_runs_per_request": self.median_of(run, |r| r.tls_runs_per_request),
                "rounds_counted_exactly": self.exact_rounds(run),
                "served": self.rounds[run].iter().map(|r| r.served).collect::<Vec<_>>(),
                "server_recorded": self.rounds[run].iter().map(|r| r.server_recorded).collect::<Vec<_>>(),
                "client_recorded": self.rounds[run].iter().map(|r| r.client_recorded).collect::<Vec<_>>(),
            })
        };
        json!({
            "rounds": self.plan_rounds,
            "run_s": self.run.as_secs(),
            "connections": self.connections,
            "no_agent": variant(0),
            "monitor_no_tls": variant(1),
            "monitor": variant(2),
        })
    }

    pub fn markdown(&self, machine: &str) -> String {
        let cell = |value: Option<f64>, digits: usize| {
            value.map_or("–".to_owned(), |v| format!("{v:.digits$}"))
        };
        let row = |label: &str, figure: &dyn Fn(usize) -> String| {
            let cells: Vec<String> = (0..RUNS.len()).map(figure).collect();
            format!("| {label} | {} |\n", cells.join(" | "))
        };
        let mut table = format!(
            "| figure | {} |\n|---|---|---|---|\n",
            RUNS.map(|run| run.name).join(" | ")
        );
        table += &row("throughput, req/s", &|run| {
            cell(self.median_of(run, |r| Some(r.requests_per_second)), 0)
        });
        table += &row("throughput, of no agent's in the same round", &|run| {
            if run == NO_AGENT {
                String::new()
            } else {
                format!("{:.1} %", self.throughput_share(run) * 100.0)
            }
        });
        table += &row("nginx CPU per request, µs", &|run| {
            cell(self.median_of(run, |r| Some(r.nginx_us_per_request)), 2)
        });
        table += &row("BPF ns per request, all programs", &|run| {
            cell(self.median_of(run, |r| r.bpf_ns_per_request), 0)
        });
        table += &row("BPF ns per request, the TLS library's programs", &|run| {
            cell(self.median_of(run, |r| r.tls_ns_per_request), 0)
        });
        table += &row("TLS program runs per request", &|run| {
            cell(self.median_of(run, |r| r.tls_runs_per_request), 1)
        });
        table += &row(
            "wrk's requests recorded (client side), of nginx's",
            &|run| {
                let shares: Vec<f64> = self.rounds[run]
                    .iter()
                    .filter_map(|r| Some(r.client_recorded? as f64 / r.served as f64))
                    .collect();
                if shares.is_empty() {
                    "–".to_owned()
                } else {
                    format!("{:.3} %", median(shares) * 100.0)
                }
            },
        );
        table += &row("rounds where nginx's requests were all recorded", &|run| {
            if run == NO_AGENT {
                String::new()
            } else {
                format!("{} of {}", self.exact_rounds(run), self.rounds[run].len())
            }
        });
        format!(
            "### HTTPS through OpenSSL: nginx under wrk\n\n\
             `cargo xtask bench --only https` ({machine}). nginx, one worker, answers `{ROUTE}` \
             over TLS (TLS 1.3, P-256 certificate) on {} keep-alive connections from wrk (one \
             thread, {} s per round, {} interleaved rounds, medians); nginx's worker pinned to \
             CPU 1, wrk to CPU 0. Both are OpenSSL programs, so with the agent reading HTTPS \
             each request runs the TLS programs at both ends (entry and return of `SSL_read` \
             and `SSL_write`). \"monitor, --no-tls\" reads no HTTPS: only its syscall programs \
             run, which see ciphertext. BPF statistics are on in both agents. Exact: the \
             agent's count of nginx's side equal to the requests nginx served (its \
             stub_status); wrk stops on a deadline and reads no answer to the requests it \
             leaves in flight, which its side counts as cut off.\n\n{table}",
            self.connections,
            self.run.as_secs(),
            self.plan_rounds,
        )
    }
}
