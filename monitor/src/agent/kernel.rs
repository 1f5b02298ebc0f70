//! What this kernel offers the programs, found at start-up: the per-task accounting and the
//! file table in its BTF, how maps may be allocated, and which build of the loops it takes.

use std::path::Path;

use anyhow::Context as _;
use monitor_common::{http::FileTableOffsets, sched::TaskAccountingOffsets};

use super::Settings;
use crate::{
    cli::{HookChoice, SchedAccounting},
    preflight,
    probes::{self, MapAllocation, loops::Loops, task_offsets},
};

/// Where the BTF switch program can read the kernel's per-task accounting, if it may.
pub(super) fn task_accounting(settings: &Settings) -> Option<TaskAccountingOffsets> {
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
pub(super) fn file_table() -> Option<FileTableOffsets> {
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
pub(super) fn map_allocation(release: &str, forced: bool) -> MapAllocation {
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
pub(super) fn program_loops(release: &str, forced: bool) -> Loops {
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
pub(super) fn http_kernel_hint(release: &str) -> &'static str {
    if preflight::release_older_than(release, (5, 12)) {
        " (the HTTP programs use BPF atomic operations, Linux 5.12 or newer)"
    } else {
        ""
    }
}
