//! The metric contract: names, labels and help texts of everything `/metrics` serves.

use monitor_common::{
    http::{counter, method},
    sched::{RUNQ_BUCKETS, RUNQ_FIRST_BOUND_LOG2, errors},
};
use prometheus::{Encoder as _, TextEncoder, proto::MetricFamily};

use super::families::{self, BucketCounts};
use crate::{
    collect::{MapUsage, sched::SchedSnapshot},
    model::{http::HttpLedger, processes::ProcessLedger},
    probes::{AttachedProgram, ProgramStats},
};

/// Everything one scrape shows.
pub struct Exposition<'a> {
    pub ledger: &'a ProcessLedger,
    pub snapshot: &'a SchedSnapshot,
    pub http: &'a HttpLedger,
    /// Upper bounds of the HTTP duration buckets, seconds.
    pub duration_bounds: &'a [f64],
    pub http_map_usage: &'a [MapUsage],
    pub attached: &'a [AttachedProgram],
    pub program_stats: &'a [ProgramStats],
    pub refresh_errors_total: u64,
}

const NS_PER_SECOND: f64 = 1e9;

/// Upper bounds of the run-queue buckets in seconds (powers of two nanoseconds).
pub fn runq_bounds_seconds() -> [f64; RUNQ_BUCKETS - 1] {
    std::array::from_fn(|i| (1u64 << (RUNQ_FIRST_BOUND_LOG2 + i as u32)) as f64 / NS_PER_SECOND)
}

pub fn render(view: &Exposition<'_>) -> String {
    let mut families: Vec<Option<MetricFamily>> =
        vec![http_server_duration(view.http, view.duration_bounds)];
    families.extend(http_counters(view.http));
    families.extend([
        process_cpu_time(view.ledger),
        run_queue_latency(view.ledger),
        program_info(view.attached),
        program_run_time(view.program_stats),
        program_runs(view.program_stats),
        map_entries(view.snapshot, view.http_map_usage),
        map_capacity(view.snapshot, view.http_map_usage),
        dropped_events(view.snapshot),
        families::counter(
            "monitor_processes_exited_total",
            "Processes the agent saw exit and whose kernel map entries it freed.",
        )
        .value(&[], view.ledger.retired_total() as f64)
        .build(),
        families::counter(
            "monitor_refresh_errors_total",
            "Times reading the kernel maps failed; the previous values were kept.",
        )
        .value(&[], view.refresh_errors_total as f64)
        .build(),
        families::gauge("monitor_build_info", "Version of the running agent.")
            .value(&[("version", env!("CARGO_PKG_VERSION"))], 1.0)
            .build(),
    ]);
    let families: Vec<MetricFamily> = families.into_iter().flatten().collect();
    let mut text = Vec::new();
    // Encoding fails only on malformed families, which the builders do not make.
    if let Err(error) = TextEncoder::new().encode(&families, &mut text) {
        log::error!("encoding metrics failed: {error}");
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn http_server_duration(http: &HttpLedger, bounds: &[f64]) -> Option<MetricFamily> {
    http.series()
        .fold(
            families::histogram(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests, from the read that brought the request's \
                 first bytes to the write that sent the response's last bytes.",
            ),
            |family, (key, counts)| {
                let status = key.status.to_string();
                let method = method::NAMES
                    .get(usize::from(key.method))
                    .copied()
                    .unwrap_or(method::NAMES[0]);
                family.buckets(
                    &[
                        ("service_name", &key.service),
                        ("http_request_method", method),
                        ("http_response_status_code", &status),
                        ("http_route", &key.route),
                    ],
                    BucketCounts {
                        bounds,
                        counts: &counts.buckets[..bounds.len()],
                        above_last: counts.buckets[bounds.len()..].iter().sum(),
                        sum: counts.sum_ns as f64 / NS_PER_SECOND,
                    },
                )
            },
        )
        .build()
}

/// The kernel's HTTP counters and the model's: what was seen, recorded, skipped and why.
fn http_counters(http: &HttpLedger) -> Vec<Option<MetricFamily>> {
    let kernel = |index: u32| http.kernel_counters[index as usize] as f64;
    let single = |name: &str, help: &str, value: f64| {
        families::counter(name, help).value(&[], value).build()
    };
    vec![
        single(
            "monitor_http_requests_seen_total",
            "HTTP/1.x requests recognised on server connections.",
            kernel(counter::REQUESTS),
        ),
        single(
            "monitor_http_requests_recorded_total",
            "Requests paired with their response and recorded in a duration histogram.",
            kernel(counter::RESPONSES),
        ),
        single(
            "monitor_http_responses_ended_idle_total",
            "Responses ended by the idle timeout: their keep-alive connection stayed open \
             without a write or a new request.",
            kernel(counter::ENDED_IDLE),
        ),
        single(
            "monitor_http_requests_unanswered_total",
            "Requests whose connection closed before any response.",
            kernel(counter::UNANSWERED),
        ),
        single(
            "monitor_http_responses_unmatched_total",
            "Responses with no request to pair (connections picked up mid-request).",
            kernel(counter::UNMATCHED_RESPONSES),
        ),
        single(
            "monitor_http_reads_not_http_total",
            "Reads on server connections, between requests, that were not HTTP/1.x requests.",
            kernel(counter::NOT_HTTP),
        ),
        single(
            "monitor_http_connections_tracked_total",
            "Server connections the kernel started tracking at accept.",
            kernel(counter::CONNECTIONS_ACCEPTED),
        ),
        single(
            "monitor_http_route_events_total",
            "Route announcements the kernel submitted to the agent (new routes only).",
            kernel(counter::EVENTS_SUBMITTED),
        ),
        families::counter(
            "monitor_http_events_dropped_total",
            "HTTP observations or announcements the kernel could not record, by reason.",
        )
        .value(
            &[("reason", "histogram_full")],
            kernel(counter::HISTOGRAM_FULL),
        )
        .value(
            &[("reason", "connections_full")],
            kernel(counter::CONNECTIONS_FULL),
        )
        .value(
            &[("reason", "route_event_lost")],
            kernel(counter::EVENTS_LOST),
        )
        .build(),
        families::counter(
            "monitor_http_connections_skipped_total",
            "Accepted connections not tracked with --http-ports: on another port, or on a \
             listener whose port the agent had not checked yet.",
        )
        .value(
            &[("reason", "port_filtered")],
            kernel(counter::PORT_FILTERED),
        )
        .value(
            &[("reason", "listener_unchecked")],
            kernel(counter::LISTENER_UNCHECKED),
        )
        .build(),
        families::counter(
            "monitor_http_routes_limited_total",
            "Requests counted under a collapsed route (/<first>/{*}) or __overflow__ because a \
             route budget was spent (the kernel's per process, or the agent's per service).",
        )
        .value(
            &[("outcome", "collapsed")],
            kernel(counter::ROUTES_COLLAPSED) + http.collapsed as f64,
        )
        .value(
            &[("outcome", "overflow")],
            kernel(counter::ROUTES_OVERFLOWED) + http.overflowed as f64,
        )
        .build(),
        single(
            "monitor_http_route_mismatches_total",
            "Route announcements whose path did not give the announced route (not learnt).",
            http.route_text_mismatches() as f64,
        ),
    ]
}

fn process_cpu_time(ledger: &ProcessLedger) -> Option<MetricFamily> {
    let mut series: Vec<_> = ledger.processes().collect();
    series.sort_by(|a, b| (a.pid, &a.executable).cmp(&(b.pid, &b.executable)));
    series
        .into_iter()
        .fold(
            families::counter(
                "process_cpu_time_seconds_total",
                "CPU time consumed by the process (all its threads), measured in the kernel at \
                 every context switch.",
            ),
            |family, process| {
                let pid = process.pid.to_string();
                family.value(
                    &[
                        ("process_pid", &pid),
                        ("process_executable_name", &process.executable),
                        ("service_name", &process.service),
                    ],
                    process.cpu_ns as f64 / NS_PER_SECOND,
                )
            },
        )
        .build()
}

fn run_queue_latency(ledger: &ProcessLedger) -> Option<MetricFamily> {
    let bounds = runq_bounds_seconds();
    ledger
        .runq_by_service()
        .fold(
            families::histogram(
                "process_run_queue_latency_seconds",
                "Delay between a thread becoming runnable (woken or preempted) and running, by \
                 service.",
            ),
            |family, (service, counts)| {
                family.buckets(
                    &[("service_name", service)],
                    BucketCounts {
                        bounds: &bounds,
                        counts: &counts.buckets[..RUNQ_BUCKETS - 1],
                        above_last: counts.buckets[RUNQ_BUCKETS - 1],
                        sum: counts.sum_ns as f64 / NS_PER_SECOND,
                    },
                )
            },
        )
        .build()
}

fn program_info(attached: &[AttachedProgram]) -> Option<MetricFamily> {
    attached
        .iter()
        .fold(
            families::gauge(
                "monitor_bpf_program_info",
                "BPF programs attached, by hook and by the kind of hook that was chosen.",
            ),
            |family, program| {
                family.value(
                    &[
                        ("hook", program.hook),
                        ("hook_kind", program.kind.as_str()),
                        ("program", program.program),
                    ],
                    1.0,
                )
            },
        )
        .build()
}

fn program_run_time(stats: &[ProgramStats]) -> Option<MetricFamily> {
    stats
        .iter()
        .fold(
            families::counter(
                "monitor_bpf_program_run_time_seconds_total",
                "Time spent in each BPF program (counted only while kernel.bpf_stats_enabled=1).",
            ),
            |family, stat| {
                family.value(
                    &[("program", stat.program)],
                    stat.run_time_ns as f64 / NS_PER_SECOND,
                )
            },
        )
        .build()
}

fn program_runs(stats: &[ProgramStats]) -> Option<MetricFamily> {
    stats
        .iter()
        .fold(
            families::counter(
                "monitor_bpf_program_runs_total",
                "Runs of each BPF program (counted only while kernel.bpf_stats_enabled=1).",
            ),
            |family, stat| family.value(&[("program", stat.program)], stat.run_count as f64),
        )
        .build()
}

fn map_entries(snapshot: &SchedSnapshot, http: &[MapUsage]) -> Option<MetricFamily> {
    snapshot
        .maps
        .iter()
        .chain(http)
        .fold(
            families::gauge("monitor_bpf_map_entries", "Entries in use in each BPF map."),
            |family, usage| family.value(&[("map", usage.map)], usage.entries as f64),
        )
        .build()
}

fn map_capacity(snapshot: &SchedSnapshot, http: &[MapUsage]) -> Option<MetricFamily> {
    snapshot
        .maps
        .iter()
        .chain(http)
        .fold(
            families::gauge(
                "monitor_bpf_map_capacity_entries",
                "Most entries each BPF map can hold (max_entries).",
            ),
            |family, usage| family.value(&[("map", usage.map)], f64::from(usage.capacity)),
        )
        .build()
}

fn dropped_events(snapshot: &SchedSnapshot) -> Option<MetricFamily> {
    errors::NAMES
        .iter()
        .zip(snapshot.dropped)
        .fold(
            families::counter(
                "monitor_bpf_events_dropped_total",
                "Kernel events that could not be recorded, by reason (a full map).",
            ),
            |family, (reason, count)| family.value(&[("reason", reason)], count as f64),
        )
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runq_bounds_are_powers_of_two_nanoseconds() {
        let bounds = runq_bounds_seconds();
        assert_eq!(bounds[0], 1024e-9);
        assert_eq!(bounds[1], 2048e-9);
        assert!(bounds.windows(2).all(|pair| pair[1] == 2.0 * pair[0]));
        assert!(bounds[RUNQ_BUCKETS - 2] > 4.0, "covers delays of seconds");
    }
}
