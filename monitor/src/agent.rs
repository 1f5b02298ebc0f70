//! The running agent: kernel programs attached, maps read on demand, the model kept current.

use std::{
    cell::RefCell,
    collections::HashMap,
    os::fd::OwnedFd,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{Btf, Ebpf};
use monitor_common::{http::FileTableOffsets, sched::TaskAccountingOffsets};

use crate::{
    cli::{HookChoice, SchedAccounting},
    collect::{
        self, MapUsage,
        execs::{EarlyNames, ExecNamer},
        http::{HttpMaps, HttpSnapshot, InFlightAtExit, idle_sweep_deadline_ns},
        process::{self, Identifier, MemoryReads, ProcessIdentity},
        sched::{ProcessSample, SchedMaps, SchedSnapshot},
        sockets,
    },
    export::metrics::{self, Exposition},
    model::{
        http::{HttpFacts, HttpLedger},
        processes::{ProcessFacts, ProcessLedger},
        timing::{REFRESH_BOUNDS, Timings},
    },
    preflight,
    probes::{
        self, AttachedProgram, MapAllocation, MapSizes,
        http::{HttpSettings, http_config},
        loops::Loops,
        refusal, task_offsets,
    },
};

/// Refreshes between sweeps of the connection and route maps for processes that are gone.
const SWEEP_EVERY: u64 = 10;

pub struct Settings {
    pub exited_process_grace: Duration,
    pub exited_process_budget: usize,
    pub max_processes: u32,
    pub bpf_stats: bool,
    pub sched_hooks: HookChoice,
    pub empty_programs: bool,
    /// `--no-http`: no HTTP programs.
    pub no_http: bool,
    /// Where CPU time and waits should come from (the kernel's accounting needs BTF hooks).
    pub sched_accounting: SchedAccounting,
    /// Offsets to use instead of the kernel's BTF (tests of a refused switch program).
    pub task_offsets: Option<Vec<u32>>,
    /// Listeners' ports checked by the agent even where the kernel could read them (tests).
    pub ports_checked_by_agent: bool,
    /// Tests only: the programs built for kernels without `bpf_loop`, whatever this one has.
    pub bounded_loops: bool,
    /// Tests only: the maps preallocated as before 6.1, whatever this kernel has.
    pub preallocated_maps: bool,
    /// `monitor_common::sched::test_fault` bits (tests).
    pub sched_test_faults: u32,
    pub http: HttpSettings,
    /// The kubelet's pod log directory (`/var/log/pods`).
    pub pod_logs: std::path::PathBuf,
}

pub struct Agent {
    // Field order is drop order: the namer thread stops first, maps and programs go before
    // the stats switch.
    _namer: ExecNamer,
    early_names: Arc<EarlyNames>,
    maps: SchedMaps,
    http_maps: HttpMaps,
    ebpf: Ebpf,
    attached: Vec<AttachedProgram>,
    /// Hooks whose programs the kernel refused.
    unavailable: Vec<&'static str>,
    sched_accounting: SchedAccounting,
    ledger: ProcessLedger,
    http: HttpLedger,
    duration_bounds: Vec<f64>,
    snapshot: SchedSnapshot,
    http_map_usage: Vec<MapUsage>,
    refreshes: u64,
    refresh_errors: u64,
    refresh_durations: Timings,
    adopted_connections: usize,
    /// The kernel's idle timeout for responses (0: off), which the sweep of dead processes'
    /// connections waits for.
    http_idle_timeout_ns: u64,
    in_flight_at_exit: InFlightAtExit,
    ports: PortFilter,
    identifier: Identifier,
    _bpf_stats: Option<OwnedFd>,
}

/// `--http-ports`: the local ports whose servers are measured; all when empty.
struct PortFilter(Vec<u16>);

impl PortFilter {
    fn new(ports: &[u16]) -> Self {
        Self(ports.to_vec())
    }

    fn active(&self) -> bool {
        !self.0.is_empty()
    }

    fn allows(&self, port: u16) -> bool {
        !self.active() || self.0.contains(&port)
    }
}

/// How processes get their names: read at exec if the namer thread was quick enough (it
/// was there while the process lived), else from procfs and the kernel's record now.
struct Naming<'a> {
    identifier: &'a Identifier,
    early: &'a EarlyNames,
}

/// procfs and the process ledger, as the HTTP model sees them.
struct HttpProcesses<'a> {
    ledger: &'a ProcessLedger,
    /// The kernel's names, for a process that came and went between two refreshes.
    sched: &'a SchedSnapshot,
    naming: Naming<'a>,
}

impl HttpFacts for HttpProcesses<'_> {
    fn is_alive(&self, tgid: u32) -> bool {
        process::is_alive(tgid)
    }
    fn identity(&self, tgid: u32) -> ProcessIdentity {
        // Peek: the process ledger takes the early name when it first meets the process.
        self.ledger
            .identity(tgid)
            .or_else(|| self.naming.early.peek(tgid))
            .unwrap_or_else(|| {
                let meta = self
                    .sched
                    .processes
                    .get(&tgid)
                    .and_then(|s| s.meta.as_ref());
                self.naming.identifier.identify(tgid, meta)
            })
    }
}

impl ProcessFacts for Naming<'_> {
    fn is_alive(&self, tgid: u32) -> bool {
        process::is_alive(tgid)
    }
    fn identify(&self, tgid: u32, sample: &ProcessSample) -> ProcessIdentity {
        self.early
            .take(tgid)
            .unwrap_or_else(|| self.identifier.identify(tgid, sample.meta.as_ref()))
    }
    fn exec_since_named(&self, tgid: u32) -> bool {
        self.early.peek(tgid).is_some()
    }
}

/// Where the BTF switch program can read the kernel's per-task accounting, if it may.
fn task_accounting(settings: &Settings) -> Option<TaskAccountingOffsets> {
    if settings.sched_hooks == HookChoice::Tracepoint
        || settings.sched_accounting == SchedAccounting::Programs
    {
        return None;
    }
    if let Some(&[sum_exec_runtime, run_delay, pcount, pid, tgid]) =
        settings.task_offsets.as_deref()
    {
        return Some(TaskAccountingOffsets {
            sum_exec_runtime,
            run_delay,
            pcount,
            pid,
            tgid,
            prev_sum_exec_runtime: 0,
            policy: 0,
        });
    }
    let found = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("reading /proc/thread-self/schedstat (no CONFIG_SCHED_INFO?)")
        .and_then(|schedstat| task_offsets::check_statistics_kept(&schedstat))
        .and_then(|()| task_offsets::task_accounting_offsets(Path::new(task_offsets::KERNEL_BTF)));
    match found {
        Ok(offsets) => {
            log::debug!("kernel per-task accounting in task_struct: {offsets:?}");
            Some(offsets)
        }
        Err(error) => {
            log::info!(
                "the scheduler programs time switches and wake-ups themselves: the kernel's \
                 per-task accounting was not found ({error:#})"
            );
            None
        }
    }
}

/// Where a process's open files are, for following connections passed between processes;
/// none where the kernel's BTF does not say.
fn file_table() -> Option<FileTableOffsets> {
    match task_offsets::file_table_offsets(Path::new(task_offsets::KERNEL_BTF)) {
        Ok(offsets) => {
            log::debug!("open files in task_struct: {offsets:?}");
            Some(offsets)
        }
        Err(error) => {
            log::info!(
                "server connections passed to another process (Node's cluster module, pm2) are \
                 not followed: the kernel's file table was not found ({error:#})"
            );
            None
        }
    }
}

/// Preallocated maps where the kernel cannot allocate safely in tracing programs (see
/// `probes::allocation`), said once.
fn map_allocation(release: &str, forced: bool) -> MapAllocation {
    let why = if forced {
        "--preallocated-maps".to_owned()
    } else if probes::allocation::safe_in_tracing(Path::new(task_offsets::KERNEL_BTF), release) {
        return MapAllocation::OnDemand;
    } else {
        format!("kernel {release} predates safe allocation in BPF programs (Linux 6.1)")
    };
    log::info!(
        "{why}: the maps the programs add entries to are preallocated; run-queue waits are \
         kept for at most {} processes, and duration histograms for as many keys as 32 MiB \
         hold on this host's CPUs",
        probes::allocation::PREALLOCATED_RUNQ_ENTRIES,
    );
    MapAllocation::Preallocated
}

/// The build of the programs for this kernel (see `probes::loops`), said once when it is the
/// one with bounded loops.
fn program_loops(release: &str, forced: bool) -> Loops {
    let why = if forced {
        "--bounded-loops".to_owned()
    } else if probes::loops::choose(Path::new(task_offsets::KERNEL_BTF), release) == Loops::Helper {
        return Loops::Helper;
    } else {
        format!("kernel {release} has no bpf_loop (Linux 5.17)")
    };
    log::info!("{why}: the programs built with bounded loops are loaded");
    Loops::Bounded
}

/// Why a kernel older than 5.12 refuses the HTTP programs, for the error that says so.
fn http_kernel_hint(release: &str) -> &'static str {
    if preflight::release_older_than(release, (5, 12)) {
        " (the HTTP programs use BPF atomic operations, Linux 5.12 or newer)"
    } else {
        ""
    }
}

/// The programs at close(2)'s and sendmsg(2)'s entries and at fork, which improve on what
/// `sys_exit` sees: without them it falls back to the syscalls' exits, or does not follow
/// forked children (logged, and listed in `unavailable`).
fn attach_syscall_entries(
    ebpf: &mut Ebpf,
    empty: bool,
    file_table: bool,
    attached: &mut Vec<AttachedProgram>,
    unavailable: &mut Vec<&'static str>,
) {
    match probes::http::attach_close(ebpf, empty) {
        Ok(program) => attached.push(program),
        Err(error) => {
            log::warn!(
                "close(2) is seen at its exit only ({}): a connection that another thread \
                 accepts on the same fd in that instant may go unmeasured",
                refusal::brief(&error)
            );
            unavailable.push("sys_enter_close");
        }
    }
    match probes::http::attach_fork(ebpf, empty) {
        Ok(program) => attached.push(program),
        Err(error) => {
            log::warn!(
                "connections a forking server's children serve are not followed ({})",
                refusal::brief(&error)
            );
            unavailable.push("sched_process_fork");
        }
    }
    if file_table {
        match probes::http::attach_sendmsg(ebpf, empty) {
            Ok(program) => attached.push(program),
            Err(error) => {
                log::warn!(
                    "connections passed to another process are noted at sendmsg's exit only \
                     ({}): a worker that takes one at once may go unmeasured",
                    refusal::brief(&error)
                );
                unavailable.push("sys_enter_sendmsg");
            }
        }
    }
}

impl Agent {
    /// Loads and attaches the kernel programs. Each step's time is logged at debug level: the
    /// verifier's pass over the `sys_exit` program is most of the start-up.
    pub fn start(settings: &Settings) -> Result<Self> {
        let own_tgid = std::process::id();
        let config = http_config(&settings.http, own_tgid)?;
        let mut step = Step::new();
        let mut task_accounting = task_accounting(settings);
        let file_table = file_table().map(|mut table| {
            if settings.ports_checked_by_agent {
                table.socket_found = 0;
            }
            table
        });
        if !settings.http.ports.is_empty() && file_table.is_none_or(|table| table.socket_found == 0)
        {
            log::info!(
                "--http-ports: a listener's port is checked by the agent, not in the kernel (its \
                 BTF does not show the way from a file to a socket's port): a server started \
                 after the agent has its first connections skipped until then"
            );
        }
        let release = preflight::kernel_release();
        let map_allocation = map_allocation(&release, settings.preallocated_maps);
        let loops = program_loops(&release, settings.bounded_loops);
        let load = |task_accounting| -> Result<Ebpf> {
            let mut ebpf = probes::load(
                &MapSizes {
                    max_processes: settings.max_processes,
                },
                loops,
                map_allocation,
                settings.sched_test_faults,
                task_accounting,
                file_table.filter(|_| !settings.empty_programs),
            )?;
            probes::http::write_config(&mut ebpf, config)?;
            probes::http::write_allowed_ports(&mut ebpf, &settings.http.ports)?;
            Ok(ebpf)
        };
        let mut ebpf = load(task_accounting)?;
        step.done("BPF object loaded, maps created");
        // Parsed once for every BTF tracepoint (each parse takes tens of milliseconds).
        let btf = Btf::from_sys_fs();
        step.done("kernel BTF parsed");
        let mut attached = if settings.empty_programs {
            probes::attach_empty(&mut ebpf, &btf, task_accounting.is_some())?
        } else if task_accounting.is_some() {
            match probes::attach_sched(&mut ebpf, HookChoice::TpBtf, &btf, true) {
                Ok(attached) => attached,
                Err(error) => {
                    // The offsets are fixed when the object loads: start again without them.
                    log::warn!(
                        "the programs that read the kernel's per-task accounting were refused \
                         ({}); the programs time switches and wake-ups themselves",
                        refusal::brief(&error)
                    );
                    drop(ebpf);
                    task_accounting = None;
                    ebpf = load(None)?;
                    probes::attach_sched(&mut ebpf, settings.sched_hooks, &btf, false)?
                }
            }
        } else {
            probes::attach_sched(&mut ebpf, settings.sched_hooks, &btf, false)?
        };
        step.done("scheduler programs verified and attached");
        // The BTF switch program reads the offsets it was loaded with; the classic one cannot.
        let sched_accounting = if task_accounting.is_some()
            && attached
                .iter()
                .any(|program| program.program == "sched_switch_btf")
        {
            SchedAccounting::Kernel
        } else {
            SchedAccounting::Programs
        };
        // HTTP is half of what the agent measures: a kernel that refuses its programs leaves
        // the other half running, and says so (`monitor_hook_unavailable`).
        let mut unavailable = Vec::new();
        if !settings.no_http {
            match probes::http::attach_syscalls(&mut ebpf, settings.empty_programs, &btf) {
                Ok(program) => {
                    attached.push(program);
                    match probes::http::attach_idle_sweep(&mut ebpf, settings.empty_programs) {
                        Ok(program) => attached.push(program),
                        Err(error) => {
                            log::warn!(
                                "no idle sweep ({}): a keep-alive connection's last response \
                                 is recorded only when the connection closes",
                                refusal::brief(&error)
                            );
                            unavailable.push(probes::http::IDLE_SWEEP_HOOK);
                        }
                    }
                    attach_syscall_entries(
                        &mut ebpf,
                        settings.empty_programs,
                        file_table.is_some(),
                        &mut attached,
                        &mut unavailable,
                    );
                }
                Err(error) => {
                    log::error!(
                        "no HTTP metrics: the kernel refused the sys_exit program ({}){}; CPU \
                         time and run-queue waits are measured",
                        refusal::brief(&error),
                        http_kernel_hint(&release)
                    );
                    unavailable.push("sys_exit");
                }
            }
        }
        step.done("sys_exit program verified and attached");
        let maps = SchedMaps::new(&mut ebpf)?;
        let early_names = Arc::new(EarlyNames::default());
        let namer = ExecNamer::spawn(
            collect::take(&mut ebpf, "EXECS")?.try_into()?,
            settings.pod_logs.clone(),
            early_names.clone(),
        )?;
        let mut http_maps = HttpMaps::new(&mut ebpf)?;
        // After attaching: a connection accepted from now on is the kernel's to track.
        let ports = PortFilter::new(&settings.http.ports);
        let http_on = attached.iter().any(|program| program.hook == "sys_exit");
        // Without the HTTP programs nobody would end the connections adopted.
        let host = if http_on {
            sockets::scan(own_tgid)
        } else {
            sockets::HostSockets::default()
        };
        if ports.active() {
            for listener in &host.listeners {
                http_maps.set_listener(listener.tgid, listener.fd, ports.allows(listener.port));
            }
        }
        let adopted_connections = http_maps.adopt_connections(
            host.server_connections
                .iter()
                .filter(|socket| ports.allows(socket.port))
                .map(|socket| (socket.tgid, socket.fd)),
        );
        step.done("open connections adopted");
        let bpf_stats = if settings.bpf_stats {
            Some(
                aya::sys::enable_stats(aya::sys::Stats::RunTime)
                    .context("enabling BPF run-time statistics (--bpf-stats)")?,
            )
        } else {
            None
        };
        Ok(Self {
            _namer: namer,
            early_names,
            maps,
            http_maps,
            ebpf,
            attached,
            unavailable,
            sched_accounting,
            ledger: ProcessLedger::new(
                settings.exited_process_grace,
                settings.exited_process_budget,
            ),
            http: HttpLedger::new(
                settings.exited_process_grace,
                settings.http.route_budget as usize,
                settings.http.host_budget as usize,
            )
            .with_final_read_after(Duration::from_nanos(idle_sweep_deadline_ns(
                settings.http.idle_timeout.as_nanos() as u64,
            ))),
            duration_bounds: settings.http.duration_buckets.clone(),
            snapshot: SchedSnapshot::default(),
            http_map_usage: Vec::new(),
            refreshes: 0,
            refresh_errors: 0,
            refresh_durations: Timings::new(&REFRESH_BOUNDS),
            adopted_connections,
            http_idle_timeout_ns: settings.http.idle_timeout.as_nanos() as u64,
            in_flight_at_exit: InFlightAtExit::default(),
            ports,
            identifier: Identifier::new(&settings.pod_logs, MemoryReads::Bounded),
            _bpf_stats: bpf_stats,
        })
    }

    /// Whether a map can be read through the descriptor the agent holds, with the
    /// capabilities it has now.
    pub fn maps_readable(&self) -> bool {
        self.http_maps.readable()
    }

    /// Server connections that were open before the agent started and are now tracked.
    pub fn adopted_connections(&self) -> usize {
        self.adopted_connections
    }

    pub fn sched_accounting(&self) -> SchedAccounting {
        self.sched_accounting
    }

    pub fn attached(&self) -> &[AttachedProgram] {
        &self.attached
    }

    /// Reads the maps into the model and frees the entries of processes that have exited.
    pub fn refresh(&mut self) {
        let started = Instant::now();
        self.refreshes += 1;
        // HTTP first: a process that served and exited between the two reads is then in the
        // scheduler's snapshot too, and named from it.
        let refreshed = self.http_maps.read().and_then(|http| {
            if let Err(error) = self.refresh_sched() {
                self.http_maps.keep_events(http);
                return Err(error);
            }
            self.refresh_http(http)
        });
        if let Err(error) = refreshed {
            self.refresh_errors += 1;
            log::warn!("reading the kernel maps failed: {error:#}");
        }
        self.refresh_durations.observe(started.elapsed());
    }

    fn refresh_sched(&mut self) -> Result<()> {
        let snapshot = self.maps.read()?;
        let naming = Naming {
            identifier: &self.identifier,
            early: &self.early_names,
        };
        let retired = self
            .ledger
            .apply(&snapshot, &naming, Instant::now(), monotonic_ns());
        for tgid in retired {
            self.maps.forget(tgid);
        }
        self.snapshot = snapshot;
        Ok(())
    }

    fn refresh_http(&mut self, snapshot: HttpSnapshot) -> Result<()> {
        let facts = HttpProcesses {
            ledger: &self.ledger,
            sched: &self.snapshot,
            naming: Naming {
                identifier: &self.identifier,
                early: &self.early_names,
            },
        };
        for &(tgid, fd) in &snapshot.unchecked_listeners {
            // A socket that is gone or not a TCP listener has no port to allow.
            let allowed = sockets::listener_port(tgid, fd).is_some_and(|p| self.ports.allows(p));
            self.http_maps.set_listener(tgid, fd, allowed);
        }
        let cleanup = self.http.apply(&snapshot, &facts, Instant::now());
        self.http_maps.forget(&cleanup);
        if self.refreshes % SWEEP_EVERY == 1 {
            // Asked once per process: a sweep looks at every connection, listener and budget.
            let known = RefCell::new(HashMap::new());
            let alive = |tgid| {
                *known
                    .borrow_mut()
                    .entry(tgid)
                    .or_insert_with(|| process::is_alive(tgid))
            };
            let sweep = self
                .http_maps
                .sweep(alive, monotonic_ns(), self.http_idle_timeout_ns);
            self.in_flight_at_exit.add(sweep.in_flight);
            let mut usage = sweep.usage;
            usage.push(
                self.http_maps
                    .duration_usage(snapshot.durations.len() - cleanup.forget.len()),
            );
            self.http_map_usage = usage;
        }
        Ok(())
    }

    pub fn render(&mut self) -> String {
        self.refresh();
        self.ledger.note_shown();
        let program_stats = probes::program_stats(&self.ebpf, &self.attached);
        metrics::render(&Exposition {
            ledger: &self.ledger,
            snapshot: &self.snapshot,
            http: &self.http,
            duration_bounds: &self.duration_bounds,
            http_map_usage: &self.http_map_usage,
            in_flight_at_exit: self.in_flight_at_exit,
            attached: &self.attached,
            unavailable: &self.unavailable,
            program_stats: &program_stats,
            refresh_errors_total: self.refresh_errors,
            processes_named_at_exec_total: self.early_names.named(),
            refresh_durations: &self.refresh_durations,
        })
    }
}

/// Times the steps of the start-up, for the debug log.
struct Step(Instant);

impl Step {
    fn new() -> Self {
        Self(Instant::now())
    }

    fn done(&mut self, what: &str) {
        log::debug!("start-up: {what} in {:.1?}", self.0.elapsed());
        self.0 = Instant::now();
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
