//! Start-up order, the serving loop and a clean shutdown on SIGINT/SIGTERM.

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context as _, Result};
use monitor_common::{http::test_fault, sched::test_fault as sched_fault};
use tokio::signal::unix::SignalKind;

use crate::{
    agent::{self, Agent, Settings, SharedAgent, with_agent},
    check,
    cli::{Cli, SchedAccounting},
    collect::ReaderThread,
    export::server::{self, RenderFn},
    open_files, preflight, privileges,
    probes::http::HttpSettings,
};

/// How long open scrape connections may take to finish once a signal arrived.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1000);

/// Everything that needs privileges happens first, on the only thread there is: capabilities
/// belong to threads, and the runtime's threads, started after the drop, inherit what is left.
pub fn run(cli: Cli) -> Result<ExitCode> {
    open_files::raise_to_hard_limit();
    let protection = server::Protection::load(cli.web_config_file.as_deref())?;
    if cli
        .task_offsets
        .as_ref()
        .is_some_and(|offsets| offsets.len() != 5)
    {
        anyhow::bail!("--task-offsets takes five offsets, comma-separated");
    }
    preflight::check_privileges()?;
    if cli.check {
        return check_host(&cli);
    }
    // Bind before loading anything, so a taken port fails fast and leaves nothing behind.
    let listener = bind(cli.listen)?;
    let started = start_agent(&cli, Mode::Run)?;
    log_summary(&started, &cli, &protection);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(cli, listener, started, protection))?;
    Ok(ExitCode::SUCCESS)
}

/// Whether the agent starts to serve or for `--check`.
#[derive(PartialEq)]
enum Mode {
    Run,
    Check,
}

/// The agent started, with what it kept of its privileges.
struct Started {
    agent: SharedAgent,
    /// The capabilities every thread kept.
    kept: Vec<caps::Capability>,
    /// Whether a thread keeps CAP_SYS_ADMIN to probe TLS libraries mapped later with perf
    /// events (started in a run only).
    tls_scan_keeps_sys_admin: bool,
    tls_scan: Option<ReaderThread>,
}

impl Started {
    /// The capabilities kept, as the summary and the check say them.
    fn capabilities_kept(&self) -> String {
        let mut text = privileges::describe(&self.kept);
        if self.tls_scan_keeps_sys_admin {
            text.push_str(
                " (and cap_sys_admin in the thread that probes TLS libraries mapped later)",
            );
        }
        text
    }
}

/// Loads and attaches the programs, then gives up the capabilities only start-up needs: what
/// a run and `--check` both do, so that the check sees what a run would.
fn start_agent(cli: &Cli, mode: Mode) -> Result<Started> {
    let agent = Agent::start(&settings(cli))?;
    let mut follows_tls_libraries =
        !cli.tls_scan_interval.is_zero() && agent.may_follow_tls_libraries();
    let keep_sys_admin = agent.tls_attach_needs_sys_admin();
    let agent: SharedAgent = Arc::new(Mutex::new(Some(agent)));
    // Started before the drop, with CAP_SYS_ADMIN to keep where perf events need it.
    let tls_scan = if follows_tls_libraries && mode == Mode::Run {
        agent::follow_tls_libraries(&agent, cli.tls_scan_interval, keep_sys_admin)
            .inspect_err(|error| {
                follows_tls_libraries = false;
                log::warn!(
                    "TLS libraries are probed at start-up only: {error:#} (HTTPS through a \
                     libssl first mapped later is not measured)"
                );
            })
            .ok()
    } else {
        None
    };
    let kept = {
        let guard = agent.lock().unwrap_or_else(PoisonError::into_inner);
        let agent = guard.as_ref().expect("just started");
        privileges::drop_start_up_capabilities(|| agent.maps_readable())?
    };
    Ok(Started {
        agent,
        kept,
        tls_scan_keeps_sys_admin: follows_tls_libraries && keep_sys_admin,
        tls_scan,
    })
}

/// The agent's settings from the command line.
fn settings(cli: &Cli) -> Settings {
    Settings {
        exited_process_grace: cli.exited_process_grace,
        exited_process_budget: cli.exited_process_budget,
        max_processes: cli.max_processes,
        bpf_stats: cli.bpf_stats,
        sched_hooks: cli.sched_hooks,
        empty_programs: cli.empty_programs,
        syscall_hook: cli.syscall_hook,
        no_http: cli.no_http,
        no_tls: cli.no_tls,
        perf_event_uprobes: cli.perf_event_uprobes,
        sched_accounting: cli.sched_accounting,
        task_offsets: cli.task_offsets.clone(),
        ports_checked_by_agent: cli.ports_checked_by_agent,
        bounded_loops: cli.bounded_loops,
        preallocated_maps: cli.preallocated_maps,
        sched_test_faults: if cli.fail_first_cpu_time_allocation {
            sched_fault::FIRST_CPU_TIME_ALLOCATION
        } else {
            0
        },
        http: HttpSettings {
            duration_buckets: cli.duration_buckets.clone(),
            route_budget: cli.route_budget,
            exclude_comm: cli.exclude_comm.clone(),
            idle_timeout: cli.http_idle_timeout,
            ports: cli.http_ports.clone(),
            host_budget: cli.server_address_budget,
            test_faults: if cli.no_histogram_allocation {
                test_fault::NO_HISTOGRAM
            } else {
                0
            },
        },
        pod_logs: cli.pod_logs.clone(),
    }
}

/// `--check`: starts the agent as a run would, prints what it attached and missed, stops it.
fn check_host(cli: &Cli) -> Result<ExitCode> {
    let started = start_agent(cli, Mode::Check)?;
    let capabilities_kept = started.capabilities_kept();
    let agent = started
        .agent
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .expect("just started");
    let kernel = preflight::kernel_release();
    let (report, status) = check::report(&check::Findings {
        kernel: &kernel,
        btf: preflight::btf_available(),
        attached: agent.attached(),
        unavailable: agent.unavailable(),
        sched_accounting: accounting_source(&agent),
        capabilities_kept: &capabilities_kept,
        http: !cli.no_http,
    });
    // Detaches every program before the report is out: a script that reads it and goes on
    // finds nothing of the check left in the kernel (tracefs stays mounted, as after a run).
    drop(agent);
    // Not `print!`, which panics when the reader went away (`monitor --check | head -1`).
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), report.as_bytes());
    Ok(ExitCode::from(status))
}

fn bind(address: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address).map_err(|error| {
        let hint = if error.kind() == std::io::ErrorKind::AddrInUse {
            " (another monitor or exporter already listens there; choose another with --listen)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot listen on {address}: {error}{hint}")
    })?;
    listener
        .set_nonblocking(true)
        .context("setting the listener non-blocking")?;
    Ok(listener)
}

async fn serve(
    cli: Cli,
    listener: std::net::TcpListener,
    started: Started,
    protection: server::Protection,
) -> Result<()> {
    let Started {
        agent, tls_scan, ..
    } = started;
    let refresher = tokio::spawn(refresh_periodically(agent.clone(), cli.refresh_interval));
    let render: RenderFn = {
        let agent = agent.clone();
        Arc::new(move || with_agent(&agent, Agent::render))
    };

    let settings = server::Settings {
        header_read_timeout: cli.web_header_read_timeout,
        limits: Default::default(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(
        listener,
        render,
        protection,
        settings,
        async {
            let _ = stop_rx.await;
        },
    ));
    let signal = wait_for_signal().await?;
    log::info!("received {signal}, shutting down");
    if let Some(scan) = &tls_scan {
        scan.stop_soon();
    }
    let _ = stop_tx.send(());
    refresher.abort();
    // Keep-alive scrapers may hold the server open; they do not get to delay the exit.
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Err(error))) => log::warn!("HTTP server: {error:#}"),
        Ok(_) => {}
        Err(_) => log::debug!("open connections closed by the shutdown deadline"),
    }
    // Dropping the agent detaches every program and frees every map: nothing stays behind.
    // The TLS library scan finds it gone, if it still runs.
    drop(agent.lock().unwrap_or_else(PoisonError::into_inner).take());
    drop(tls_scan);
    log::info!("stopped; all BPF programs detached");
    Ok(())
}

async fn refresh_periodically(agent: SharedAgent, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let agent = agent.clone();
        let _ = tokio::task::spawn_blocking(move || with_agent(&agent, Agent::refresh)).await;
    }
}

async fn wait_for_signal() -> Result<&'static str> {
    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}

fn log_summary(started: &Started, cli: &Cli, protection: &server::Protection) {
    let guard = started.agent.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(agent) = guard.as_ref() else {
        return;
    };
    let mut hooks: Vec<String> = Vec::new();
    for program in agent.attached() {
        // Several programs on one hook of one kind (libssl's uprobes) are named once.
        let hook = format!("{}={}", program.hook, program.kind);
        if !hooks.contains(&hook) {
            hooks.push(hook);
        }
    }
    log::info!(
        "monitor {} | kernel {} | BTF {} | hooks: {}{} | CPU time and waits from the {} | \
         {} open server connections adopted | capabilities kept: {} | listening on \
         {}://{}/metrics{}",
        env!("CARGO_PKG_VERSION"),
        preflight::kernel_release(),
        if preflight::btf_available() {
            "yes"
        } else {
            "no"
        },
        hooks.join(" "),
        if cli.no_http {
            " (HTTP off: --no-http)"
        } else {
            ""
        },
        accounting_source(agent),
        agent.adopted_connections(),
        started.capabilities_kept(),
        protection.scheme(),
        cli.listen,
        if protection.requires_password() {
            " (Basic authentication)"
        } else {
            ""
        },
    );
}

/// Where CPU time and run-queue waits come from, as the summary and the check say it.
fn accounting_source(agent: &Agent) -> &'static str {
    match agent.sched_accounting() {
        SchedAccounting::Kernel => "kernel's per-task accounting",
        SchedAccounting::Programs => "programs' own clock reads",
    }
}
