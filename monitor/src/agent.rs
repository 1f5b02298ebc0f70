//! The running agent: kernel programs attached, maps read on demand, the model kept current.

use std::{
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::Ebpf;

use crate::{
    cli::HookChoice,
    collect::{
        process,
        sched::{ProcessSample, SchedMaps, SchedSnapshot},
    },
    export::metrics::{self, Exposition},
    model::processes::{ProcessFacts, ProcessLedger},
    probes::{self, AttachedProgram, MapSizes},
};

pub struct Settings {
    pub exited_process_grace: Duration,
    pub max_processes: u32,
    pub bpf_stats: bool,
    pub sched_hooks: HookChoice,
    pub empty_programs: bool,
}

pub struct Agent {
    // Field order is drop order: maps and programs go before the stats switch.
    maps: SchedMaps,
    ebpf: Ebpf,
    attached: Vec<AttachedProgram>,
    ledger: ProcessLedger,
    snapshot: SchedSnapshot,
    refresh_errors: u64,
    _bpf_stats: Option<OwnedFd>,
}

/// procfs, as the model sees it.
struct Procfs;

impl ProcessFacts for Procfs {
    fn is_alive(&self, tgid: u32) -> bool {
        process::is_alive(tgid)
    }
    fn identify(&self, tgid: u32, sample: &ProcessSample) -> process::ProcessIdentity {
        process::identify(tgid, sample.meta.as_ref())
    }
}

impl Agent {
    /// Loads and attaches the kernel programs.
    pub fn start(settings: &Settings) -> Result<Self> {
        let mut ebpf = probes::load(&MapSizes {
            max_processes: settings.max_processes,
        })?;
        let attached = if settings.empty_programs {
            probes::attach_empty(&mut ebpf)?
        } else {
            probes::attach_sched(&mut ebpf, settings.sched_hooks)?
        };
        let maps = SchedMaps::new(&mut ebpf)?;
        let bpf_stats = if settings.bpf_stats {
            Some(
                aya::sys::enable_stats(aya::sys::Stats::RunTime)
                    .context("enabling BPF run-time statistics (--bpf-stats)")?,
            )
        } else {
            None
        };
        Ok(Self {
            maps,
            ebpf,
            attached,
            ledger: ProcessLedger::new(settings.exited_process_grace),
            snapshot: SchedSnapshot::default(),
            refresh_errors: 0,
            _bpf_stats: bpf_stats,
        })
    }

    pub fn attached(&self) -> &[AttachedProgram] {
        &self.attached
    }

    /// Reads the maps into the model and frees the entries of processes that have exited.
    pub fn refresh(&mut self) {
        let snapshot = match self.maps.read() {
            Ok(snapshot) => snapshot,
            Err(error) => {
                self.refresh_errors += 1;
                log::warn!("reading the kernel maps failed: {error:#}");
                return;
            }
        };
        let retired = self
            .ledger
            .apply(&snapshot, &Procfs, Instant::now(), monotonic_ns());
        for tgid in retired {
            self.maps.forget(tgid);
        }
        self.snapshot = snapshot;
    }

    pub fn render(&mut self) -> String {
        self.refresh();
        let program_stats = probes::program_stats(&self.ebpf, &self.attached);
        metrics::render(&Exposition {
            ledger: &self.ledger,
            snapshot: &self.snapshot,
            attached: &self.attached,
            program_stats: &program_stats,
            refresh_errors_total: self.refresh_errors,
        })
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
