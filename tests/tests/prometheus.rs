//! End to end: the agent scraped every second by a real Prometheus (Debian's `prometheus`) that
//! loads deploy/prometheus/rules.yml, while a client drives a real server at a known rate, 5xx
//! share and latency. What Prometheus answers, from the agent's series and from the recording
//! rules, must be what the client did.

use std::{
    fs::{self, File},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use monitor_tests::{
    MonitorAgent,
    agent::{free_port, signal},
    http::{client, get},
    poll::try_poll,
    poll_until,
    servers::Server,
};
use serde_json::Value;
use tempfile::TempDir;

/// Requests per second the client sends, spread over `WORKERS` keep-alive connections.
const RATE: f64 = 50.0;
const WORKERS: usize = 8;
const LOAD: Duration = Duration::from_secs(20);
/// Of every 20 requests: 2 answered 503 (10 % 5xx), 1 that sleeps 300 ms (5 %, slower than the
/// 0.25 s SLO threshold and the one bucket above the p99: (0.25, 0.5]), 17 fast 200s.
const ERROR_SHARE: f64 = 0.10;
const SLOW_SHARE: f64 = 0.05;
const SLOW_BUCKET: (f64, f64) = (0.25, 0.5);

fn request(k: usize) -> (&'static str, u16) {
    match k % 20 {
        0 | 10 => ("/status/503", 503),
        5 => ("/sleep/300", 200),
        _ => ("/", 200),
    }
}

/// The rate window of the direct queries: inside the load, clear of its start and its end.
const WINDOW: f64 = 12.0;
const END_MARGIN: f64 = 2.0;

const WAIT: Duration = Duration::from_secs(20);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

struct Prometheus {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Prometheus {
    /// Prometheus scraping the agent on `target_port` every second, with the project's rules,
    /// storing in a temporary directory; returns once it is ready.
    fn start(target_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/rules.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{}']\n\
             scrape_configs:\n  - job_name: monitor\n    static_configs:\n      \
             - targets: ['127.0.0.1:{target_port}']\n",
            rules.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus (Debian package `prometheus`)");
        let mut prometheus = Self {
            child: Some(child),
            port,
            dir,
        };
        poll_until("Prometheus to be ready", WAIT, || {
            if let Some(status) = prometheus.child.as_mut()?.try_wait().unwrap() {
                panic!("prometheus exited: {status}\n{}", prometheus.log());
            }
            TcpStream::connect(("127.0.0.1", port)).ok()?;
            let response = ureq::get(&format!("http://127.0.0.1:{port}/-/ready"))
                .config()
                .http_status_as_error(false)
                .build()
                .call()
                .ok()?;
            (response.status() == 200).then_some(())
        });
        prometheus
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The series of an instant query at `time`: (labels, value).
    fn query(&self, expr: &str, time: f64) -> Vec<(Value, f64)> {
        let response = ureq::get(&format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query("query", expr)
            .query("time", format!("{time:.3}"))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap_or_else(|e| panic!("querying {expr}: {e}"));
        let body: Value = serde_json::from_str(&response.into_body().read_to_string().unwrap())
            .expect("Prometheus answers JSON");
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .expect("a vector result")
            .iter()
            .map(|series| {
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{expr}: no value in {series}"));
                (series["metric"].clone(), value)
            })
            .collect()
    }

    /// The value of a query that gives at most one series.
    fn value(&self, expr: &str, time: f64) -> Option<f64> {
        let result = self.query(expr, time);
        assert!(result.len() <= 1, "{expr} gave several series: {result:?}");
        result.first().map(|(_, value)| *value)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            if try_poll(Duration::from_secs(10), || child.try_wait().ok().flatten()).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// What the client did.
struct Load {
    /// Unix times at which each response was complete.
    completions: Vec<f64>,
    finished_unix: f64,
}

impl Load {
    fn rate_in(&self, from: f64, to: f64) -> f64 {
        let inside = self
            .completions
            .iter()
            .filter(|&&t| t > from && t <= to)
            .count();
        inside as f64 / (to - from)
    }
}

/// `RATE` requests per second for `LOAD`, request `k` sent at `k / RATE` seconds by worker
/// `k % WORKERS` on its own keep-alive connection; every status is checked.
fn run_load(server: &Server) -> Load {
    let total = (RATE * LOAD.as_secs_f64()) as usize;
    let start = Instant::now();
    let start_unix = unix_now();
    let mut completions: Vec<f64> = thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                scope.spawn(move || {
                    let client = client();
                    let mut done = Vec::new();
                    for k in (worker..total).step_by(WORKERS) {
                        // Pacing, not synchronisation: each request leaves at its slot.
                        let due = start + Duration::from_secs_f64(k as f64 / RATE);
                        if let Some(early) = due.checked_duration_since(Instant::now()) {
                            thread::sleep(early);
                        }
                        let (path, status) = request(k);
                        assert_eq!(get(&client, &server.url(path)), status, "{path}");
                        done.push(start_unix + start.elapsed().as_secs_f64());
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a load worker failed"))
            .collect()
    });
    completions.sort_by(f64::total_cmp);
    let finished_unix = *completions.last().unwrap();
    let elapsed = finished_unix - start_unix;
    eprintln!(
        "load: {total} requests in {elapsed:.2} s ({:.2}/s)",
        total as f64 / elapsed
    );
    Load {
        completions,
        finished_unix,
    }
}

#[test]
fn prometheus_with_the_rules_sees_the_rate_errors_and_latency_the_client_caused() {
    let started = Instant::now();
    let agent = MonitorAgent::start(&[]);
    let server = Server::python();
    let prometheus = Prometheus::start(agent.port);
    poll_until("Prometheus to scrape the agent", WAIT, || {
        (prometheus.value("up{job=\"monitor\"}", unix_now()) == Some(1.0)).then_some(())
    });

    let load = run_load(&server);
    let total = load.completions.len() as f64;

    let service = format!("service_name=\"{}\"", server.service);
    let count = format!("sum(http_server_request_duration_seconds_count{{{service}}})");
    let all_scraped = try_poll(WAIT, || {
        let now = unix_now();
        (prometheus.value(&count, now) == Some(total)).then_some(now)
    })
    .unwrap_or_else(|| {
        panic!(
            "Prometheus never saw {total} requests of {}: it has {:?}; the agent has:\n{}\n{}",
            server.service,
            prometheus.value(&count, unix_now()),
            monitor_tests::http::describe_http(&agent.metrics_text()),
            prometheus.log()
        )
    });

    // The agent's series, over a window inside the load.
    let at = load.finished_unix - END_MARGIN;
    let window = format!("{WINDOW}s");
    let rate = prometheus
        .value(
            &format!(
                "sum(rate(http_server_request_duration_seconds_count{{{service}}}[{window}]))"
            ),
            at,
        )
        .expect("a request rate");
    let client_rate = load.rate_in(at - WINDOW, at);
    assert!(
        (rate - client_rate).abs() <= 0.05 * client_rate,
        "Prometheus' rate {rate:.2}/s, the client's {client_rate:.2}/s"
    );
    let errors = prometheus
        .value(
            &format!(
                "sum(rate(http_server_request_duration_seconds_count{{{service},\
                 http_response_status_code=~\"5..\"}}[{window}])) / \
                 sum(rate(http_server_request_duration_seconds_count{{{service}}}[{window}]))"
            ),
            at,
        )
        .expect("an error ratio");
    assert!(
        (errors - ERROR_SHARE).abs() <= 0.01,
        "5xx ratio {errors:.4}, injected {ERROR_SHARE}"
    );
    let p99 = prometheus
        .value(
            &format!(
                "histogram_quantile(0.99, sum by (le) \
                 (rate(http_server_request_duration_seconds_bucket{{{service}}}[{window}])))"
            ),
            at,
        )
        .expect("a p99");
    assert!(
        p99 > SLOW_BUCKET.0 && p99 <= SLOW_BUCKET.1,
        "p99 {p99} outside {SLOW_BUCKET:?}, the bucket of the 300 ms requests"
    );

    // The recording rules, once they have been evaluated on every request. Their 5m windows
    // hold the whole load: ratios and quantiles are the load's, the rate is its count / 300 s.
    let errors_rule = format!("service_name:http_server_errors:ratio_rate5m{{{service}}}");
    poll_until("the rules to be evaluated on every request", WAIT, || {
        let stamp = prometheus.value(&format!("timestamp({errors_rule})"), unix_now())?;
        (stamp >= all_scraped).then_some(())
    });
    let now = unix_now();
    let rule = |name: &str| {
        prometheus
            .value(name, now)
            .unwrap_or_else(|| panic!("no {name}; Prometheus log:\n{}", prometheus.log()))
    };
    let errors = rule(&errors_rule);
    assert!(
        (errors - ERROR_SHARE).abs() <= 0.015,
        "{errors_rule} = {errors:.4}, injected {ERROR_SHARE}"
    );
    let slow_rule = format!("service_name:http_server_slow_requests:ratio_rate5m{{{service}}}");
    let slow = rule(&slow_rule);
    assert!(
        (slow - SLOW_SHARE).abs() <= 0.015,
        "{slow_rule} = {slow:.4}, injected {SLOW_SHARE} over 0.25 s"
    );
    let p99_rule = format!(
        "service_name_quantile:http_server_request_duration_seconds:histogram_quantile_rate5m\
         {{{service},quantile=\"0.99\"}}"
    );
    let p99 = rule(&p99_rule);
    assert!(
        p99 > SLOW_BUCKET.0 && p99 <= SLOW_BUCKET.1,
        "{p99_rule} = {p99}, outside {SLOW_BUCKET:?}"
    );
    let rate_rule = format!("service_name:http_server_requests:rate5m{{{service}}}");
    let requests = rule(&rate_rule) * 300.0;
    assert!(
        (requests - total).abs() <= 0.1 * total,
        "{rate_rule} × 300 s = {requests:.0}, the client sent {total}"
    );
    eprintln!(
        "rate {rate:.2}/s (client {client_rate:.2}/s), 5xx {errors:.4}, slow {slow:.4}, p99 \
         {p99:.3} s; {:?} in all",
        started.elapsed()
    );
}
