//! `cargo xtask bench --only startup`: how long the agent takes from exec to its first
//! `/metrics` with data, and where that time goes (its own `start-up:` debug lines).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use monitor_tests::agent::{free_port, monitor_bin, signal};
use serde_json::{Value, json};

use super::{progress::Progress, stats::median};

/// Between attempts to scrape an agent that is starting.
const POLL: Duration = Duration::from_millis(5);
const GIVE_UP: Duration = Duration::from_secs(60);

struct Round {
    ready: Duration,
    /// From SIGTERM to the agent's exit.
    exit: Duration,
    /// TLS library files probed (`monitor_tls_libraries_probed` at the first scrape).
    tls_libraries: Option<f64>,
    /// (step, its time), in the agent's order.
    steps: Vec<(String, Duration)>,
}

/// Start-ups measured, one after the other.
pub struct Startup {
    results: Vec<Round>,
}

/// About how long one start-up takes, for the progress estimate.
pub const ROUND_ESTIMATE: Duration = Duration::from_secs(4);

pub fn startup_time(rounds: usize, progress: &mut Progress) -> Result<Startup> {
    let mut results = Vec::new();
    for round in 1..=rounds {
        progress.step(
            "start-up",
            &format!("round {round}/{rounds}"),
            ROUND_ESTIMATE,
        );
        results.push(measure_round()?);
    }
    Ok(Startup { results })
}

fn measure_round() -> Result<Round> {
    let port = free_port();
    let started = Instant::now();
    let mut child = Command::new(monitor_bin())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--log-level", "warn,monitor=debug"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting monitor")?;
    let (ready, body) = loop {
        if started.elapsed() > GIVE_UP {
            let _ = child.kill();
            bail!("the agent served no data within {GIVE_UP:?}");
        }
        if let Some(status) = child.try_wait()? {
            bail!("the agent exited during start-up: {status}");
        }
        if let Some(body) = scrape(port)
            && body.contains("process_cpu_time_seconds_total{")
        {
            break (started.elapsed(), body);
        }
        thread::sleep(POLL);
    };
    let stopping = Instant::now();
    signal(&child, libc::SIGTERM);
    let mut stderr = String::new();
    // Read to its end: the agent's exit closes it.
    child
        .stderr
        .take()
        .context("no stderr")?
        .read_to_string(&mut stderr)?;
    child.wait()?;
    let exit = stopping.elapsed();
    Ok(Round {
        ready,
        exit,
        tls_libraries: body.lines().find_map(|line| {
            line.strip_prefix("monitor_tls_libraries_probed ")?
                .trim()
                .parse()
                .ok()
        }),
        steps: BufReader::new(stderr.as_bytes())
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| parse_step(&line))
            .collect(),
    })
}

/// GET /metrics; `None` until the agent serves. A connection made while it starts waits in
/// the listen backlog and is answered as soon as it serves.
fn scrape(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(GIVE_UP)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

/// `... start-up: <step> in <duration>` (Rust's `{:?}` of a Duration, e.g. `3.4s`, `66.4ms`).
fn parse_step(line: &str) -> Option<(String, Duration)> {
    let rest = &line[line.find("start-up: ")? + "start-up: ".len()..];
    let (step, duration) = rest.rsplit_once(" in ")?;
    Some((step.to_owned(), parse_duration(duration.trim())?))
}

fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_alphabetic() || c == 'µ')?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "ms" => number / 1e3,
        "µs" | "us" => number / 1e6,
        "ns" => number / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

impl Startup {
    pub fn json(&self) -> Value {
        let ready: Vec<f64> = self.results.iter().map(|r| ms(r.ready)).collect();
        let exit: Vec<f64> = self.results.iter().map(|r| ms(r.exit)).collect();
        let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for round in &self.results {
            for (step, duration) in &round.steps {
                steps.entry(step.clone()).or_default().push(ms(*duration));
            }
        }
        let steps: serde_json::Map<String, Value> = steps
            .into_iter()
            .map(|(step, values)| (step, json!(median(values))))
            .collect();
        json!({
            "rounds": self.results.len(),
            "exec_to_first_metrics_ms": median(ready),
            "sigterm_to_exit_ms": median(exit),
            "tls_libraries_probed": self.results.first().and_then(|r| r.tls_libraries),
            "steps_ms": steps,
        })
    }

    pub fn markdown(&self, machine: &str) -> String {
        render(&self.results, machine)
    }
}

fn render(results: &[Round], machine: &str) -> String {
    let ready: Vec<f64> = results.iter().map(|r| ms(r.ready)).collect();
    let mut text = format!(
        "### Start-up: exec to the first /metrics with data\n\n\
         `cargo xtask bench --only startup` ({} starts of the release build, one after the \
         other; {machine}; medians, min-max in brackets). Time from spawning \
         `monitor` to the first answer of `/metrics` that has CPU series (a scrape sent during \
         start-up waits in the listen backlog), and the agent's own timing of each start-up step \
         (`--log-level monitor=debug` prints them).\n\n\
         | step | ms |\n|---|---|\n",
        results.len(),
    );
    let mut order: Vec<String> = Vec::new();
    let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in results {
        for (step, duration) in &round.steps {
            if !order.contains(step) {
                order.push(step.clone());
            }
            steps.entry(step.clone()).or_default().push(ms(*duration));
        }
    }
    let range = |values: &[f64]| {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        format!("{:.0} ({min:.0}-{max:.0})", median(values.to_vec()))
    };
    for step in &order {
        text.push_str(&format!("| {step} | {} |\n", range(&steps[step])));
    }
    text.push_str(&format!(
        "| **exec to first /metrics with data** | **{}** |\n",
        range(&ready)
    ));
    let exit: Vec<f64> = results.iter().map(|r| ms(r.exit)).collect();
    let libraries = results
        .first()
        .and_then(|r| r.tls_libraries)
        .map_or("no".to_owned(), |n| format!("{n:.0}"));
    text.push_str(&format!(
        "| **SIGTERM to exit** ({libraries} TLS library files probed; see the note below) | **{}** |\n",
        range(&exit)
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_read_from_the_debug_log() {
        let line =
            "[2026-11-25T16:03:36Z DEBUG] start-up: sys_exit program verified and attached in 3.4s";
        assert_eq!(
            parse_step(line),
            Some((
                "sys_exit program verified and attached".to_owned(),
                Duration::from_millis(3400)
            ))
        );
        assert_eq!(
            parse_step("x start-up: kernel BTF parsed in 71.5ms").map(|s| s.1),
            Some(Duration::from_micros(71_500))
        );
        assert_eq!(parse_duration("22.5µs"), Some(Duration::from_nanos(22_500)));
        assert_eq!(parse_step("[INFO] monitor 0.1.0 | kernel"), None);
    }
}
