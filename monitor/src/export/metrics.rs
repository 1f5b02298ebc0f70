//! The metric contract: names, labels and help texts of everything `/metrics` serves.

use monitor_common::{
    http::OVERFLOW_ROUTE as OVERFLOW,
    sched::{RUNQ_BUCKETS, RUNQ_FIRST_BOUND_LOG2, errors},
};
use prometheus::{Encoder as _, TextEncoder, proto::MetricFamily};

use super::families::{self, BucketCounts};
use crate::{
    collect::{MapUsage, http::InFlightAtExit, sched::SchedSnapshot},
    model::{http::HttpLedger, processes::ProcessLedger, timing::Timings},
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
    /// Requests whose process exited before the kernel could see their end.
    pub in_flight_at_exit: InFlightAtExit,
    pub attached: &'a [AttachedProgram],
    /// Hooks whose programs could not be attached (see `hook_unavailable`).
    pub unavailable: &'a [&'static str],
    pub program_stats: &'a [ProgramStats],
    pub refresh_errors_total: u64,
    /// Processes named from procfs right after their exec.
    pub processes_named_at_exec_total: u64,
    pub refresh_durations: &'a Timings,
    /// TLS library files with uprobes attached.
    pub tls_libraries: usize,
}

const NS_PER_SECOND: f64 = 1e9;

/// Upper bounds of the run-queue buckets in seconds (powers of two nanoseconds).
pub fn runq_bounds_seconds() -> [f64; RUNQ_BUCKETS - 1] {
    std::array::from_fn(|i| (1u64 << (RUNQ_FIRST_BOUND_LOG2 + i as u32)) as f64 / NS_PER_SECOND)
}

pub fn render(view: &Exposition<'_>) -> String {
    let mut families: Vec<Option<MetricFamily>> =
        super::http::families(view.http, view.duration_bounds);
    families.extend([
        process_cpu_time(view.ledger),
        run_queue_latency(view.ledger),
        program_info(view.attached),
        hook_unavailable(view.unavailable),
        families::gauge(
            "monitor_tls_libraries_probed",
            "TLS library files (OpenSSL's libssl, and executables that carry OpenSSL themselves, \
             as Node's does) whose SSL_read and SSL_write calls the agent reads HTTPS from: found \
             on the host and in the running processes at start-up, and in processes since \
             (--tls-scan-interval); a deleted one no process maps is released.",
        )
        .value(&[], view.tls_libraries as f64)
        .build(),
        program_run_time(view.program_stats),
        program_runs(view.program_stats),
        super::http::in_flight_at_exit(view.in_flight_at_exit),
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
            "monitor_process_series_folded_total",
            "Series of exited processes folded into their service's process_pid=\"__overflow__\" \
             series because more than --exited-process-budget were kept.",
        )
        .value(&[], view.ledger.folded_total() as f64)
        .build(),
        series_evicted(view.ledger, view.http),
        families::counter(
            "monitor_refresh_errors_total",
            "Times reading the kernel maps failed; the previous values were kept.",
        )
        .value(&[], view.refresh_errors_total as f64)
        .build(),
        families::counter(
            "monitor_processes_named_at_exec_total",
            "Processes whose service name was read from procfs right after their exec, so \
             that short-lived ones are named after their script, environment or container.",
        )
        .value(&[], view.processes_named_at_exec_total as f64)
        .build(),
        families::counter(
            "monitor_procfs_reads_timed_out_total",
            "Reads of a process's command line or environment (/proc/<pid>/cmdline, environ) \
             that did not answer within 2 s: the process is stuck in the kernel holding its \
             memory map (a hung NFS or FUSE mount). It is named without them meanwhile.",
        )
        .value(
            &[],
            crate::collect::process_memory::timed_out_total() as f64,
        )
        .build(),
        refresh_duration(view.refresh_durations),
        families::gauge("monitor_build_info", "Version of the running agent.")
            .value(&[("version", env!("CARGO_PKG_VERSION"))], 1.0)
            .build(),
    ]);
    encode(families)
}

/// The text format of `families`, leaving out the empty ones.
pub fn encode(families: Vec<Option<MetricFamily>>) -> String {
    let families: Vec<MetricFamily> = families.into_iter().flatten().collect();
    let mut text = Vec::new();
    // Encoding fails only on malformed families, which the builders do not make.
    if let Err(error) = TextEncoder::new().encode(&families, &mut text) {
        log::error!("encoding metrics failed: {error}");
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// Series dropped early by the bounds on their number, by the family they were shown in.
fn series_evicted(ledger: &ProcessLedger, http: &HttpLedger) -> Option<MetricFamily> {
    let evicted = http.evicted;
    [
        (
            "process_run_queue_latency_seconds",
            ledger.runq_evicted_total(),
        ),
        ("http_server_request_duration_seconds", evicted.server),
        ("http_client_request_duration_seconds", evicted.client),
        ("http_client_request_errors_total", evicted.client_errors),
        ("tcp_client_connect_errors_total", evicted.connect_errors),
    ]
    .into_iter()
    .fold(
        families::counter(
            "monitor_series_evicted_total",
            "Series dropped before --exited-process-grace ended because their family held \
             more than its bound (services of processes gone, least recently updated first); \
             a service seen again starts its series from zero.",
        ),
        |family, (name, count)| family.value(&[("family", name)], count as f64),
    )
    .build()
}

fn refresh_duration(timings: &Timings) -> Option<MetricFamily> {
    families::histogram(
        "monitor_refresh_duration_seconds",
        "Time to read the kernel maps into the model (each --refresh-interval and each scrape).",
    )
    .buckets(
        &[],
        BucketCounts {
            bounds: timings.bounds(),
            counts: timings.counts(),
            above_last: timings.above_last(),
            sum: timings.sum_seconds(),
        },
    )
    .build()
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
                let pid = process
                    .pid
                    .map_or_else(|| OVERFLOW.to_owned(), |pid| pid.to_string());
                let mut labels = vec![
                    ("process_pid", pid.as_str()),
                    ("process_executable_name", process.executable.as_str()),
                ];
                labels.extend(process.service.labels());
                family.value(&labels, process.cpu_ns as f64 / NS_PER_SECOND)
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

/// One series per hook whose program could not be attached (refused by the kernel, or a
/// classic tracepoint without tracefs): `sys_exit` (no HTTP metrics at
/// all), `sys_enter_close` or `sys_enter_sendmsg` (their syscalls seen at the exit only),
/// `sched_process_fork` (forking servers' children not followed), `cpu_clock` (a busy
/// process's CPU time updated at context switches only), `cpu_clock_one_cpu` (the
/// HTTP idle sweep: a keep-alive connection's last response recorded at its close), `libssl`
/// (HTTPS not read: the TLS library's uprobes refused).
fn hook_unavailable(hooks: &[&'static str]) -> Option<MetricFamily> {
    hooks
        .iter()
        .fold(
            families::gauge(
                "monitor_hook_unavailable",
                "Hooks whose BPF program could not be attached (1): sys_exit leaves no HTTP \
                 metrics; sys_enter_close and sys_enter_sendmsg leave their syscalls seen at \
                 the exit only; sched_process_fork leaves forking servers' children \
                 unfollowed; cpu_clock leaves a busy process's CPU time to move only when it \
                 is switched out; cpu_clock_one_cpu (the HTTP idle sweep) leaves a keep-alive \
                 connection's last response to be recorded at its close; libssl leaves HTTPS \
                 unread. The agent's log says why.",
            ),
            |family, hook| family.value(&[("hook", hook)], 1.0),
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

    #[test]
    fn refused_hooks_get_a_series_each_and_none_when_all_loaded() {
        assert!(hook_unavailable(&[]).is_none());
        let family = hook_unavailable(&["sys_exit", "sys_enter_close"]).unwrap();
        let hooks: Vec<_> = family
            .get_metric()
            .iter()
            .map(|metric| {
                let label = &metric.get_label()[0];
                (
                    label.name().to_owned(),
                    label.value().to_owned(),
                    metric.get_gauge().get_value(),
                )
            })
            .collect();
        assert_eq!(
            hooks,
            [
                ("hook".to_owned(), "sys_exit".to_owned(), 1.0),
                ("hook".to_owned(), "sys_enter_close".to_owned(), 1.0)
            ]
        );
    }
}
