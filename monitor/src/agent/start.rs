//! Starting the agent: the kernel programs loaded and attached (the optional ones said when
//! refused), the maps taken, the connections open before the agent adopted; each step timed.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{Btf, Ebpf};

use super::{
    Agent, PortFilter, Settings,
    kernel::{file_table, http_kernel_hint, map_allocation, program_loops, task_accounting},
};
use crate::{
    cli::{HookChoice, SchedAccounting},
    collect::{
        self,
        execs::{EarlyNames, ExecNamer},
        http::{HttpMaps, InFlightAtExit, idle_sweep_deadline_ns},
        process::{Identifier, MemoryReads},
        sched::{SchedMaps, SchedSnapshot},
        sockets,
    },
    model::{
        http::HttpLedger,
        processes::ProcessLedger,
        timing::{REFRESH_BOUNDS, Timings},
    },
    preflight,
    probes::{self, AttachedProgram, MapSizes, http::http_config, refusal, tls::LinkKind},
};

/// The programs at close(2)'s and sendmsg(2)'s entries and at fork, which improve on what
/// `sys_exit` sees: without them it falls back to the syscalls' exits, or does not follow
/// forked children (logged, and listed in `unavailable`).
fn attach_syscall_entries(
    ebpf: &mut Ebpf,
    syscall_program: &str,
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
            if let Err(error) = probes::http::attach_close_exit(ebpf, syscall_program) {
                log::warn!(
                    "close(2) is not seen ({}): a closed connection's state stays until its \
                     process exits or it idles out",
                    refusal::brief(&error)
                );
            }
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
        let mut unavailable = Vec::new();
        let mut tls = None;
        let mut http_attached = false;
        if !attached
            .iter()
            .any(|program| program.hook == probes::CLOCK_TICK_HOOK)
        {
            // Logged where it failed: CPU time then moves only at context switches.
            unavailable.push(probes::CLOCK_TICK_HOOK);
        }
        // HTTP is half of what the agent measures: a kernel that refuses its programs leaves
        // the other half running, and says so (`monitor_hook_unavailable`).
        if !settings.no_http {
            match probes::http::attach_syscalls(
                &mut ebpf,
                settings.empty_programs,
                &btf,
                settings.syscall_hook,
            ) {
                Ok(programs) => {
                    let syscall_program = programs[0].program;
                    attached.extend(programs);
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
                        syscall_program,
                        settings.empty_programs,
                        file_table.is_some(),
                        &mut attached,
                        &mut unavailable,
                    );
                    http_attached = true;
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
        // HTTPS is read by the HTTP programs: without them, nothing to attach.
        if http_attached && !settings.no_tls && !settings.empty_programs {
            tls = super::tls::attach_at_start_up(
                &mut ebpf,
                &mut attached,
                &mut unavailable,
                if settings.perf_event_uprobes {
                    LinkKind::PerfEvents
                } else {
                    LinkKind::UprobeMulti
                },
            );
            step.done("TLS programs loaded and attached");
        }
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
            tls,
            _bpf_stats: bpf_stats,
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
