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
    agent::{Agent, Settings},
    check,
    cli::{Cli, SchedAccounting},
    export::server::{self, RenderFn},
    open_files, preflight, privileges,
    probes::http::HttpSettings,
};

/// How long open scrape connections may take to finish once a signal arrived.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1000);

type SharedAgent = Arc<Mutex<Option<Agent>>>;

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
    let (agent, kept) = start_agent(&cli)?;
    log_summary(&agent, &cli, &protection, &kept);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(cli, listener, agent, protection))?;
    Ok(ExitCode::SUCCESS)
}

/// Loads and attaches the programs, then gives up the capabilities only start-up needs: what
/// a run and `--check` both do, so that the check sees what a run would. Returns the agent
/// and the capabilities kept.
fn start_agent(cli: &Cli) -> Result<(Agent, Vec<caps::Capability>)> {
    let agent = Agent::start(&settings(cli))?;
    let kept = privileges::drop_start_up_capabilities(|| agent.maps_readable())?;
    Ok((agent, kept))
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
    let (agent, kept) = start_agent(cli)?;
    let kernel = preflight::kernel_release();
    let capabilities_kept = privileges::describe(&kept);
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
    agent: Agent,
    protection: server::Protection,
) -> Result<()> {
    let agent: SharedAgent = Arc::new(Mutex::new(Some(agent)));
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
    let _ = stop_tx.send(());
    refresher.abort();
    // Keep-alive scrapers may hold the server open; they do not get to delay the exit.
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Err(error))) => log::warn!("HTTP server: {error:#}"),
        Ok(_) => {}
        Err(_) => log::debug!("open connections closed by the shutdown deadline"),
    }
    // Dropping the agent detaches every program and frees every map: nothing stays behind.
    drop(agent.lock().unwrap_or_else(PoisonError::into_inner).take());
    log::info!("stopped; all BPF programs detached");
    Ok(())
}

fn with_agent<T>(agent: &SharedAgent, f: impl FnOnce(&mut Agent) -> T) -> Option<T> {
    agent
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
        .map(f)
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

fn log_summary(
    agent: &Agent,
    cli: &Cli,
    protection: &server::Protection,
    kept: &[caps::Capability],
) {
    let hooks: Vec<String> = agent
        .attached()
        .iter()
        .map(|program| format!("{}={}", program.hook, program.kind))
        .collect();
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
        privileges::describe(kept),
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
