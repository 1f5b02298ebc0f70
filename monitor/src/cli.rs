//! Command line and environment: everything a user can set.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, builder::BoolishValueParser};

/// eBPF host monitor: RED metrics (rate, errors, duration) of every HTTP/1.x server and client
/// on the host, CPU time per process and run-queue latency per service, measured in the
/// kernel and served for Prometheus to scrape. Applications are never touched.
///
/// Needs root, or CAP_BPF + CAP_PERFMON (+ CAP_SYS_ADMIN to mount tracefs where BTF is
/// missing) and CAP_SYS_PTRACE + CAP_DAC_READ_SEARCH, and a Linux kernel with BPF tracepoints
/// (5.12+ for HTTP, 5.8+ for CPU alone; BTF tracepoints are used where the kernel has BTF,
/// classic tracepoints otherwise).
/// Once attached it keeps only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH.
#[derive(Debug, Parser)]
#[command(
    version,
    // A later option overrides an earlier one (e.g. a wrapper's defaults, then the user's).
    args_override_self = true,
    after_help = "Endpoints: GET /metrics (Prometheus text format), GET /healthz.\n\
                  Options that show an environment variable can also be set by it."
)]
pub struct Cli {
    /// Address to serve /metrics and /healthz on.
    #[arg(long, env = "MONITOR_LISTEN", default_value = "0.0.0.0:9464")]
    pub listen: SocketAddr,

    /// TLS (server certificate, optional client certificates) and Basic authentication for
    /// the endpoint, in the Prometheus exporter-toolkit web config format (`tls_server_config`,
    /// `basic_auth_users`). /healthz stays open to probes; /metrics needs the password.
    /// Changes to the file or to the certificates it names apply within 10 s, without a
    /// restart (turning TLS on or off, or authentication off, needs one).
    #[arg(long, env = "MONITOR_WEB_CONFIG_FILE")]
    pub web_config_file: Option<std::path::PathBuf>,

    /// Log level: error, warn, info, debug or trace (or an env_logger filter such as
    /// `monitor=debug`).
    #[arg(long, env = "MONITOR_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// How long the series of an exited process stay in /metrics (e.g. 5m, 30s, 1h).
    #[arg(long, env = "MONITOR_EXITED_PROCESS_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub exited_process_grace: Duration,

    /// Series of exited processes kept at once (each for --exited-process-grace). Beyond, the
    /// oldest are folded into one series per service and executable, labelled
    /// process_pid="__overflow__", so that sums by service stay whole.
    #[arg(long, env = "MONITOR_EXITED_PROCESS_BUDGET", default_value_t = 1000)]
    pub exited_process_budget: usize,

    /// How often the kernel maps are read between scrapes, so processes that exit are named and
    /// their map entries freed even when nobody scrapes.
    #[arg(long, env = "MONITOR_REFRESH_INTERVAL", default_value = "1s", value_parser = nonzero_duration)]
    pub refresh_interval: Duration,

    /// Most processes tracked at once in the kernel (sizes the CPU-time, run-queue and name
    /// maps). Entries are made as processes run: a process whose threads waited for a CPU
    /// takes about 200 bytes of kernel memory per CPU for its run-queue histogram. Before
    /// Linux 6.1 the maps are preallocated, and run-queue histograms capped at 2,048.
    #[arg(long, env = "MONITOR_MAX_PROCESSES", default_value_t = 16384)]
    pub max_processes: u32,

    /// Count the run time of the agent's BPF programs (turns on kernel.bpf_stats_enabled while
    /// the agent runs; costs some tens of nanoseconds per program run). Shown in
    /// monitor_bpf_program_run_time_seconds_total. Needs CAP_SYS_ADMIN: without it the agent
    /// stops at start.
    #[arg(long, env = "MONITOR_BPF_STATS", value_parser = BoolishValueParser::new())]
    pub bpf_stats: bool,

    /// Which kind of scheduler hooks to attach: `auto` tries BTF tracepoints (cheapest) and falls
    /// back to classic tracepoints; the others insist on one kind.
    #[arg(long, env = "MONITOR_SCHED_HOOKS", value_enum, default_value_t = HookChoice::Auto)]
    pub sched_hooks: HookChoice,

    /// Where on-CPU time and run-queue waits come from. `kernel`: the switch program reads the
    /// run time and wait the kernel keeps for every task (found in its BTF), about a third of the
    /// cost per context switch and no program at wake-ups; waits are then those of the
    /// kernel's scheduler statistics (`/proc/<pid>/schedstat`), which count a task that
    /// preempts at once as not waiting. `programs`: the programs read the clock at every
    /// switch and wake-up, measuring each wake-up-to-run delay to the nanosecond. Classic
    /// tracepoints, and kernels without that accounting, always use `programs`.
    #[arg(
        long,
        env = "MONITOR_SCHED_ACCOUNTING",
        value_enum,
        default_value_t = SchedAccounting::Kernel
    )]
    pub sched_accounting: SchedAccounting,

    /// Where the HTTP programs see the socket syscalls. `every-exit`: one BTF (else raw)
    /// tracepoint at the exit of every syscall, whose program drops the others by their
    /// number, so a syscall-heavy process that does no socket I/O still runs a program on each
    /// of its syscalls. `socket-exits`: a classic tracepoint at the exit of each socket
    /// syscall (read, write, recvmsg, sendfile, accept, connect and the like: 13), so that no
    /// other syscall runs a program; needs tracefs and Linux 5.15, else falls back to
    /// `every-exit` and logs why. It halves what the agent costs a getppid(2) loop, and costs
    /// a busy HTTP server 3 to 4 points of throughput more than `every-exit`
    /// (BENCHMARKS.md), hence not the default. `socket-tracepoints`: the kernel's socket
    /// tracepoints (`sock:sock_recv_length`, `sock:sock_send_length`; BTF and Linux 6.3) for
    /// reads and writes, and classic tracepoints at the exits of accept, connect, sendfile and
    /// getsockopt: no program for other syscalls either, and on a par with `every-exit` for a
    /// busy HTTP server; else falls back to `every-exit` and logs why.
    #[arg(
        long,
        env = "MONITOR_SYSCALL_HOOK",
        value_enum,
        default_value_t = SyscallHook::EveryExit
    )]
    pub syscall_hook: SyscallHook,

    /// Upper bounds of the http_server_request_duration_seconds and
    /// http_client_request_duration_seconds buckets, in seconds, ascending (at most 32).
    #[arg(
        long,
        env = "MONITOR_DURATION_BUCKETS",
        value_delimiter = ',',
        default_value = "0.005,0.01,0.025,0.05,0.075,0.1,0.25,0.5,0.75,1,2.5,5,7.5,10"
    )]
    pub duration_buckets: Vec<f64>,

    /// Distinct routes per service (and per process in the kernel) before further routes are
    /// collapsed to `/<first segment>/{*}`, then counted as `__overflow__`.
    #[arg(long, env = "MONITOR_ROUTE_BUDGET", default_value_t = 200)]
    pub route_budget: u32,

    /// A response counts as finished once its connection has had no write for this long
    /// (a keep-alive connection waiting for its next request); the next request, the next
    /// pipelined response or the close end it sooner. Responses that pause longer than this
    /// mid-body are measured up to the pause.
    #[arg(long, env = "MONITOR_HTTP_IDLE_TIMEOUT", default_value = "1s", value_parser = at_most_a_day)]
    pub http_idle_timeout: Duration,

    /// Distinct server_address values per service (and per process in the kernel) before
    /// further ones are counted as `__overflow__`.
    #[arg(long, env = "MONITOR_SERVER_ADDRESS_BUDGET", default_value_t = 100)]
    pub server_address_budget: u32,

    /// The kubelet's pod log directory, read (only) to name pods and containers; its sibling
    /// `containers` directory names a pod's containers by id.
    #[arg(long, env = "MONITOR_POD_LOGS", default_value = "/var/log/pods")]
    pub pod_logs: std::path::PathBuf,

    /// Measure HTTP servers only on these local TCP ports (comma-separated); all ports when
    /// not given. The kernel reads each listener's port where its BTF shows the way; elsewhere
    /// a server that starts listening after the agent has its first connections skipped while
    /// the agent checks its port.
    #[arg(long, env = "MONITOR_HTTP_PORTS", value_delimiter = ',')]
    pub http_ports: Vec<u16>,

    /// Thread names (`comm`, as in `ps -L -o comm`: an executable's name, unless a thread
    /// renamed itself, as tokio's `tokio-rt-worker` do) whose HTTP connections are never
    /// measured; the agent's own are never measured anyway. Repeat or separate with commas
    /// (at most 8).
    #[arg(long, env = "MONITOR_EXCLUDE_COMM", value_delimiter = ',')]
    pub exclude_comm: Vec<String>,

    /// Measure CPU time and run-queue waits only: load no HTTP programs, so that nothing of
    /// the agent's runs at syscalls. The HTTP metrics stay at zero.
    #[arg(long, env = "MONITOR_NO_HTTP", value_parser = BoolishValueParser::new())]
    pub no_http: bool,

    /// Do not read HTTPS: attach no uprobes to the TLS library that processes use (OpenSSL's
    /// libssl, or the OpenSSL built into an executable that exports it, as Node's). With them,
    /// the plain text of HTTPS that goes through OpenSSL is measured like clear-text HTTP.
    /// Each SSL_read/SSL_write call then traps into the kernel, about 10 µs on a KVM guest
    /// (less on bare metal), paid by every process that calls the library (see README,
    /// HTTPS). Processes that never call it pay nothing.
    #[arg(long, env = "MONITOR_NO_TLS", value_parser = BoolishValueParser::new())]
    pub no_tls: bool,

    /// How often to look through the processes' memory maps for a TLS library (libssl, or an
    /// executable carrying OpenSSL, as Node's) that no probe sits on yet: one a container
    /// started since start-up brought, an upgraded package, a Node process. A scan reads the
    /// maps of processes started lately; every sixth, those of all.
    /// Before Linux 6.6 attaching a uprobe takes CAP_SYS_ADMIN: when the agent was granted it,
    /// one thread of the agent keeps it for that alone (from 6.6 the uprobes are uprobe_multi
    /// links, which take no more than the agent keeps). At least 1s; `0s`: only at start-up,
    /// and every thread gives CAP_SYS_ADMIN up.
    #[arg(long, env = "MONITOR_TLS_SCAN_INTERVAL", default_value = "10s", value_parser = zero_or_a_second_at_least)]
    pub tls_scan_interval: Duration,

    /// Check what this host allows, then exit without serving.
    ///
    /// Loads and attaches every program as a run would (with the other options given),
    /// prints each hook attached and each one the kernel refused with what a run would miss,
    /// and detaches. `--listen` is not bound. Exit status 0: every hook attached; 3: the agent
    /// would run without some; 1: it cannot run here (the error says why); 2: the command
    /// line could not be parsed. For install scripts and first runs on a new kernel.
    #[arg(long)]
    pub check: bool,

    /// Benchmarks only: attach empty programs at the same hooks and measure nothing, to show
    /// what the hooks alone cost (the TLS library's uprobes are left off: the HTTP benchmark's
    /// nginx speaks clear text).
    #[arg(long, hide = true)]
    pub empty_programs: bool,

    /// Tests only: with `--http-ports`, listeners' ports are checked by the agent, as on
    /// kernels whose BTF does not show the way from a file to its socket's port.
    #[arg(long, hide = true)]
    pub ports_checked_by_agent: bool,

    /// Tests only: load the programs built with bounded loops, which kernels without
    /// `bpf_loop` (before 5.17) get, whatever this kernel has.
    #[arg(long, hide = true)]
    pub bounded_loops: bool,

    /// Tests only: attach the TLS programs with one perf event per function, as on kernels
    /// before 6.6 (no uprobe_multi links), whatever this kernel has.
    #[arg(long, hide = true)]
    pub perf_event_uprobes: bool,

    /// Tests only: preallocate the maps the programs add entries to, as on kernels before
    /// 6.1, whatever this kernel has.
    #[arg(long, hide = true)]
    pub preallocated_maps: bool,

    /// Tests only: the programs act as if no duration histogram could be allocated, so that
    /// every request is carried to the agent on the ring buffer, as one is when the kernel's
    /// allocator has no entry ready.
    #[arg(long, hide = true)]
    pub no_histogram_allocation: bool,

    /// Tests only: each process's first on-CPU-time entry cannot be allocated, as happens
    /// when the kernel's allocator has no entry ready, so that its first slice is deferred.
    #[arg(long, hide = true)]
    pub fail_first_cpu_time_allocation: bool,

    /// Tests only: the byte offsets in `task_struct` of `se.sum_exec_runtime`,
    /// `sched_info.run_delay`, `sched_info.pcount`, `pid` and `tgid` (comma-separated), used
    /// instead of those found in the kernel's BTF, to show what happens when the verifier
    /// refuses the switch program that reads them.
    #[arg(long, hide = true, value_delimiter = ',')]
    pub task_offsets: Option<Vec<u32>>,

    /// Tests only: how long a connection to the endpoint may take to send a request head,
    /// from its accept or its previous response (so also how long an idle one stays open).
    // 40 s: a scraper at the usual 15 s or 30 s interval keeps its connection (its next
    // request comes one interval after the last one started), with margin; at 1 min it
    // reconnects for each scrape, which costs a handshake a minute (and Prometheus retries a
    // request on a connection closed under it). Longer would only let a dead peer, or one
    // that sends nothing, hold a connection longer.
    #[arg(long, hide = true, default_value = "40s", value_parser = nonzero_duration)]
    pub web_header_read_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SchedAccounting {
    Kernel,
    Programs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    Auto,
    TpBtf,
    Tracepoint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SyscallHook {
    EveryExit,
    SocketExits,
    SocketTracepoints,
}

/// A duration such as `500ms` or `2s`, more than zero (a period of zero would never end).
fn nonzero_duration(text: &str) -> Result<Duration, String> {
    match at_most_a_day(text)? {
        duration if duration.is_zero() => Err("must be more than zero".to_owned()),
        duration => Ok(duration),
    }
}

/// A period of a second to a day, or zero for none: a scan of every process's maps more
/// often than each second would cost more than it finds.
fn zero_or_a_second_at_least(text: &str) -> Result<Duration, String> {
    match at_most_a_day(text)? {
        duration if !duration.is_zero() && duration < Duration::from_secs(1) => {
            Err("must be 0s (none) or at least 1s".to_owned())
        }
        duration => Ok(duration),
    }
}

/// A duration of a day at most: beyond, timers and nanosecond counts would overflow, and no
/// refresh or idle timeout needs more.
fn at_most_a_day(text: &str) -> Result<Duration, String> {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    match humantime::parse_duration(text) {
        Ok(duration) if duration > DAY => Err("must be a day (24h) or less".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        let cli = Cli::try_parse_from(["monitor", "--exited-process-grace", "30s"]).unwrap();
        assert_eq!(cli.exited_process_grace, Duration::from_secs(30));
        let defaults = Cli::try_parse_from(["monitor"]).unwrap();
        assert_eq!(defaults.exited_process_grace, Duration::from_secs(300));
        assert!(Cli::try_parse_from(["monitor", "--refresh-interval", "soon"]).is_err());
    }

    #[test]
    fn tls_libraries_are_looked_for_every_ten_seconds_unless_told_otherwise() {
        let defaults = Cli::try_parse_from(["monitor"]).unwrap();
        assert_eq!(defaults.tls_scan_interval, Duration::from_secs(10));
        // Zero: at start-up only.
        let cli = Cli::try_parse_from(["monitor", "--tls-scan-interval", "0s"]).unwrap();
        assert!(cli.tls_scan_interval.is_zero());
        assert!(Cli::try_parse_from(["monitor", "--tls-scan-interval", "2d"]).is_err());
        let error = Cli::try_parse_from(["monitor", "--tls-scan-interval", "1ms"]).unwrap_err();
        assert!(error.to_string().contains("at least 1s"), "{error}");
    }

    #[test]
    fn a_refresh_interval_of_zero_is_refused_with_a_reason() {
        let error = Cli::try_parse_from(["monitor", "--refresh-interval", "0s"]).unwrap_err();
        assert!(error.to_string().contains("more than zero"), "{error}");
        let cli = Cli::try_parse_from(["monitor", "--refresh-interval", "250ms"]).unwrap();
        assert_eq!(cli.refresh_interval, Duration::from_millis(250));
    }

    #[test]
    fn timers_longer_than_a_day_are_refused_with_a_reason() {
        for option in ["--refresh-interval", "--http-idle-timeout"] {
            let error = Cli::try_parse_from(["monitor", option, "400000000000y"]).unwrap_err();
            assert!(error.to_string().contains("a day (24h) or less"), "{error}");
            let cli = Cli::try_parse_from(["monitor", option, "24h"]);
            assert!(cli.is_ok(), "{option} 24h");
        }
    }

    #[test]
    fn bucket_lists_parse_from_commas() {
        let cli =
            Cli::try_parse_from(["monitor", "--duration-buckets", "0.001,0.002,0.5"]).unwrap();
        assert_eq!(cli.duration_buckets, vec![0.001, 0.002, 0.5]);
        assert_eq!(
            Cli::try_parse_from(["monitor"])
                .unwrap()
                .duration_buckets
                .len(),
            14
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
