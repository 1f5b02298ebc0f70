//! The running agent: kernel programs attached, maps read on demand, the model kept current.
//!
//! This file holds the settings, the agent's state and what it shows; `start` loads and
//! attaches the programs, with what the kernel offers them found in `kernel`, and `refresh`
//! reads the maps into the model.

mod kernel;
mod refresh;
mod start;
mod tls;

pub use tls::follow_libraries as follow_tls_libraries;

use std::{
    os::fd::OwnedFd,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::Ebpf;

use crate::{
    cli::{HookChoice, SchedAccounting, SyscallHook},
    collect::{
        MapUsage,
        execs::{EarlyNames, ExecNamer},
        http::{HttpMaps, InFlightAtExit},
        process::Identifier,
        sched::{SchedMaps, SchedSnapshot},
    },
    export::metrics::{self, Exposition},
    model::{http::HttpLedger, processes::ProcessLedger, timing::Timings},
    probes::{self, AttachedProgram, http::HttpSettings, tls::TlsLibraries},
};

/// The agent, shared by the scrapes, the refresh and the TLS library scan; `None` once it
/// stopped.
pub type SharedAgent = Arc<Mutex<Option<Agent>>>;

/// Runs `f` on the shared agent, unless it stopped.
pub fn with_agent<T>(agent: &SharedAgent, f: impl FnOnce(&mut Agent) -> T) -> Option<T> {
    agent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_mut()
        .map(f)
}

pub struct Settings {
    pub exited_process_grace: Duration,
    pub exited_process_budget: usize,
    pub max_processes: u32,
    pub bpf_stats: bool,
    pub sched_hooks: HookChoice,
    pub empty_programs: bool,
    /// `--syscall-hook`: where the HTTP programs see the socket syscalls.
    pub syscall_hook: SyscallHook,
    /// `--no-http`: no HTTP programs.
    pub no_http: bool,
    /// `--no-tls`: no uprobes on TLS libraries.
    pub no_tls: bool,
    /// `--perf-event-uprobes`: TLS uprobes as perf events even where uprobe_multi links work.
    pub perf_event_uprobes: bool,
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
    /// TLS library files tried and probed; `None` when the programs are not loaded.
    tls: Option<TlsLibraries>,
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

impl Agent {
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

    /// Hooks whose programs the kernel refused (`monitor_hook_unavailable`).
    pub fn unavailable(&self) -> &[&'static str] {
        &self.unavailable
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
            tls_libraries: self.tls.as_ref().map_or(0, TlsLibraries::probed),
        })
    }
}
