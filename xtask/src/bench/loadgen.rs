//! The load generators: wrk to saturate the server (C, one epoll loop: the lightest client),
//! and oha for a fixed request rate with an exact number of requests and percentiles in JSON
//! (wrk stops on a deadline and leaves requests in flight uncounted).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    cmd::{describe, output, run},
    setup::cargo_home,
};

/// The oha the figures were measured with; `cargo install` keeps it in CARGO_HOME.
const OHA_VERSION: &str = "1.16.0";

/// oha, installed with cargo if it is missing or another version. Only the bench needs it, so
/// `cargo xtask setup` (and CI) do not build it.
pub fn ensure_oha() -> Result<PathBuf> {
    let path = cargo_home().join("bin").join("oha");
    let installed = output(Command::new(&path).arg("--version"))
        .is_some_and(|version| version.split_whitespace().any(|word| word == OHA_VERSION));
    if !installed {
        eprintln!("xtask: installing oha {OHA_VERSION} (the fixed-rate load generator; minutes)");
        run(
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
                "install",
                "oha",
                "--locked",
                "--version",
                OHA_VERSION,
            ]),
        )
        .context("installing oha (needs access to crates.io)")?;
    }
    Ok(path)
}

/// `program args` on the CPUs `cpus` (taskset).
fn pinned(cpus: &str, program: &str, args: &[String]) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", cpus, program]).args(args);
    command
}

/// Waits for a load generator, returning its stdout; fails with its stderr.
fn finish(child: Child, text: &str) -> Result<String> {
    let result = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{text}`"))?;
    if !result.status.success() {
        bail!(
            "`{text}` failed ({}): {}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&result.stdout).into_owned())
}

/// Starts `command` with its output captured.
fn spawn(mut command: Command) -> Result<(Child, String)> {
    let text = describe(&command);
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{text}`"))?;
    Ok((child, text))
}

#[derive(Clone, Debug, PartialEq)]
pub struct WrkReport {
    /// Responses received before the deadline.
    pub requests: u64,
    pub requests_per_second: f64,
    /// Socket errors and responses that were not 2xx or 3xx.
    pub errors: u64,
}

/// wrk with one thread and `connections` keep-alive connections for `duration`.
pub fn wrk(url: &str, connections: usize, duration: Duration, cpus: &str) -> Result<WrkReport> {
    let args = [
        "-t1".to_owned(),
        format!("-c{connections}"),
        format!("-d{}s", duration.as_secs().max(1)),
        url.to_owned(),
    ];
    let (child, command) = spawn(pinned(cpus, "wrk", &args))?;
    let text = finish(child, &command)?;
    parse_wrk(&text).with_context(|| format!("unexpected wrk report:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<WrkReport> {
    let number_after = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.trim_end_matches(',').parse().ok())
    };
    let requests = text
        .lines()
        .find(|line| line.contains(" requests in "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let mut errors = number_after("Non-2xx or 3xx responses:").unwrap_or(0.0) as u64;
    if let Some(line) = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
    {
        // "connect 0, read 0, write 0, timeout 0"
        errors += line
            .split(',')
            .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(WrkReport {
        requests,
        requests_per_second: number_after("Requests/sec:")?,
        errors,
    })
}

#[derive(Clone, Debug, PartialEq)]
pub struct OhaReport {
    /// Requests answered, by any status.
    pub responses: u64,
    /// Responses with status 200.
    pub ok: u64,
    /// Requests that failed without a response (connection errors, timeouts).
    pub errors: u64,
    pub requests_per_second: f64,
    /// Latency percentiles, seconds: from sending a request to its whole response.
    pub p50: f64,
    pub p99: f64,
}

/// The oha settings of a run.
pub struct Oha<'a> {
    pub path: &'a Path,
    pub url: &'a str,
    pub rate: u64,
    pub connections: usize,
    pub cpus: &'a str,
}

/// A running oha.
pub struct OhaRun {
    child: Child,
    command: String,
}

impl OhaRun {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait(self) -> Result<OhaReport> {
        let text = finish(self.child, &self.command)?;
        parse_oha(&text).with_context(|| format!("unexpected oha report:\n{text}"))
    }
}

impl Oha<'_> {
    /// Starts exactly `requests` requests at the rate over keep-alive connections. Latencies
    /// are measured from each request's actual start (no coordinated-omission correction):
    /// the interval the agent's client histogram measures too.
    pub fn start(&self, requests: u64) -> Result<OhaRun> {
        let args = [
            "--no-tui".to_owned(),
            "--output-format".to_owned(),
            "json".to_owned(),
            "-n".to_owned(),
            requests.to_string(),
            "-c".to_owned(),
            self.connections.to_string(),
            "-q".to_owned(),
            self.rate.to_string(),
            self.url.to_owned(),
        ];
        let (child, command) = spawn(pinned(self.cpus, &self.path.to_string_lossy(), &args))?;
        Ok(OhaRun { child, command })
    }

    pub fn run(&self, requests: u64) -> Result<OhaReport> {
        self.start(requests)?.wait()
    }
}

fn parse_oha(text: &str) -> Result<OhaReport> {
    let json: Value = serde_json::from_str(text).context("oha's output is not JSON")?;
    let total = |field: &str| -> u64 {
        json[field]
            .as_object()
            .map_or(0, |map| map.values().filter_map(Value::as_u64).sum())
    };
    let percentile = |key: &str| {
        json["latencyPercentiles"][key]
            .as_f64()
            .with_context(|| format!("no latencyPercentiles.{key}"))
    };
    Ok(OhaReport {
        responses: total("statusCodeDistribution"),
        ok: json["statusCodeDistribution"]["200"].as_u64().unwrap_or(0),
        errors: total("errorDistribution"),
        requests_per_second: json["summary"]["requestsPerSec"]
            .as_f64()
            .context("no summary.requestsPerSec")?,
        p50: percentile("p50")?,
        p99: percentile("p99")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 8s test @ http://127.0.0.1:41234/hello
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   612.31us  101.20us   4.02ms   91.12%
    Req/Sec    52.11k     1.20k   54.00k    80.00%
  414836 requests in 8.00s, 64.12MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  51854.40
Transfer/sec:      8.01MB
";

    #[test]
    fn wrk_reports_are_read() {
        assert_eq!(
            parse_wrk(WRK),
            Some(WrkReport {
                requests: 414_836,
                requests_per_second: 51_854.40,
                errors: 7,
            })
        );
        assert_eq!(parse_wrk("garbage"), None);
    }

    #[test]
    fn oha_reports_are_read() {
        let json = r#"{"summary": {"successRate": 1.0, "requestsPerSec": 9999.5},
            "latencyPercentiles": {"p10": 0.00001, "p50": 0.0001, "p99": 0.0009},
            "statusCodeDistribution": {"200": 19998, "404": 2},
            "errorDistribution": {"connection closed": 1}}"#;
        assert_eq!(
            parse_oha(json).unwrap(),
            OhaReport {
                responses: 20_000,
                ok: 19_998,
                errors: 1,
                requests_per_second: 9999.5,
                p50: 0.0001,
                p99: 0.0009,
            }
        );
        assert!(parse_oha("{}").is_err());
    }
}
