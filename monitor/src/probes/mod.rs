//! Loads the embedded BPF object, probes what this kernel offers and attaches each hook with
//! the cheapest kind that works, falling back where it must.

pub mod allocation;
pub mod http;
pub mod loops;
pub mod refusal;
mod sched;
#[cfg(test)]
mod stack_budget;
pub mod task_offsets;
pub mod tls;
pub mod tls_executables;
pub mod tls_libraries;
pub mod tracefs;
mod uprobe_multi;

use std::fmt;

use anyhow::Result;
use aya::{Btf, Ebpf, EbpfLoader};
use monitor_common::{http::FileTableOffsets, sched::TaskAccountingOffsets};

use self::loops::Loops;

pub use sched::{CLOCK_TICK_HOOK, attach_empty, attach_sched};

/// The embedded kernel programs, built by build.rs from `monitor-ebpf`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));
/// The same programs with bounded loops instead of `bpf_loop`, for kernels before 5.17.
static BPF_OBJECT_BOUNDED_LOOPS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor-bounded-loops"));

/// The size of `HTTP_DURATION` in `monitor-ebpf/src/maps.rs`.
const HTTP_DURATION_ENTRIES: u32 = 16384;

/// The object built for `loops`.
fn object_for(loops: Loops) -> &'static [u8] {
    match loops {
        Loops::Helper => BPF_OBJECT,
        Loops::Bounded => BPF_OBJECT_BOUNDED_LOOPS,
    }
}

/// How a program is attached; exported as the `hook` label of `monitor_bpf_program_attached`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookKind {
    TpBtf,
    Tracepoint,
    RawTracepoint,
    PerfEvent,
    Uprobe,
    Uretprobe,
    UprobeMulti,
    UretprobeMulti,
}

impl HookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::TpBtf => "tp_btf",
            HookKind::Tracepoint => "tracepoint",
            HookKind::RawTracepoint => "raw_tracepoint",
            HookKind::PerfEvent => "perf_event",
            HookKind::Uprobe => "uprobe",
            HookKind::Uretprobe => "uretprobe",
            HookKind::UprobeMulti => "uprobe_multi",
            HookKind::UretprobeMulti => "uretprobe_multi",
        }
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One program that is attached and running.
#[derive(Clone, Debug)]
pub struct AttachedProgram {
    /// The hook, e.g. `sched_switch`.
    pub hook: &'static str,
    pub kind: HookKind,
    /// The program's symbol in the object, to find it again (run-time statistics).
    pub program: &'static str,
}

/// The kernel's BTF, parsed once, or why there is none.
pub type KernelBtf = Result<Btf, aya::BtfError>;

/// Map sizes the user may change.
pub struct MapSizes {
    pub max_processes: u32,
}

/// How the maps the programs add entries to are allocated (see `allocation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapAllocation {
    /// Entries allocated as processes, routes and keys appear (Linux 6.1+).
    OnDemand,
    /// Every entry allocated when the map is made, and run-queue and duration histograms
    /// capped.
    Preallocated,
}

/// Loads the object: creates the maps; programs are loaded by the attach functions. (aya's
/// loader parses the kernel's BTF for its relocations on its own, and keeps it to itself.)
/// `loops` picks the build of the programs (`loops::choose`); `allocation` says how the maps
/// the programs add entries to are allocated.
/// With `task_accounting`, the BTF scheduler programs read the kernel's per-task accounting
/// at these offsets instead of timing switches and wake-ups.
/// `sched_test_faults` (`monitor_common::sched::test_fault`) are for tests only.
/// With `file_table`, the `sys_exit` program follows server connections that a process passes
/// to another (`monitor-ebpf/src/handoff.rs`).
pub fn load(
    sizes: &MapSizes,
    loops: Loops,
    allocation: MapAllocation,
    sched_test_faults: u32,
    task_accounting: Option<TaskAccountingOffsets>,
    file_table: Option<FileTableOffsets>,
) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    let built = object_for(loops);
    loader
        .verifier_log_level(refusal::verifier_log_level())
        .map_max_entries("CPU_TIME", sizes.max_processes)
        .map_max_entries("RUNQ_LATENCY", sizes.max_processes)
        .map_max_entries("PROCESS_META", sizes.max_processes);
    let object = match allocation {
        MapAllocation::OnDemand => None,
        MapAllocation::Preallocated => {
            let cpus = aya::util::nr_cpus()
                .map_err(|(what, error)| anyhow::anyhow!("counting the CPUs ({what}): {error}"))?;
            loader
                .map_max_entries(
                    "RUNQ_LATENCY",
                    sizes
                        .max_processes
                        .min(allocation::PREALLOCATED_RUNQ_ENTRIES),
                )
                .map_max_entries(
                    "HTTP_DURATION",
                    allocation::preallocated_duration_entries(HTTP_DURATION_ENTRIES, cpus),
                );
            Some(allocation::preallocated(
                built,
                allocation::RUN_TIME_ALLOCATED_MAPS,
            )?)
        }
    };
    if let Some(offsets) = &task_accounting {
        loader.override_global("TASK_ACCOUNTING", offsets, true);
    }
    if let Some(offsets) = &file_table {
        loader.override_global("FILE_TABLE", offsets, true);
    }
    if sched_test_faults != 0 {
        loader.override_global("SCHED_TEST_FAULTS", &sched_test_faults, true);
    }
    let object = object.as_ref().map_or(built, |object| object.bytes());
    loader.load(object).map_err(|error| {
        let denied = error.to_string().contains("Operation not permitted")
            || format!("{error:?}").contains("PermissionDenied");
        let hint = if denied {
            ": the capabilities are there but bpf(2) was refused; a seccomp profile (container \
             runtimes' defaults often deny bpf and perf_event_open) or a security module may \
             block it: see deploy/container/seccomp.json"
        } else {
            ""
        };
        anyhow::anyhow!("loading the BPF object (creating its maps) failed: {error:#}{hint}")
    })
}

/// The object's program `name`; an error if the object has none by that name.
fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow::anyhow!("program {name} missing from the BPF object"))
}

/// The online CPUs, in order.
fn online_cpus() -> Result<Vec<u32>> {
    aya::util::online_cpus().map_err(|(what, error)| anyhow::anyhow!("{what}: {error}"))
}

/// Attaches `program` (named `name`) to a software clock event on each of `cpus`, which fires
/// every `period_ns` of that CPU's time.
fn attach_cpu_clock(
    program: &mut aya::programs::PerfEvent,
    name: &str,
    cpus: &[u32],
    period_ns: u64,
) -> Result<()> {
    use anyhow::Context as _;
    use aya::programs::perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent};
    for &cpu in cpus {
        program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Period(period_ns),
                false,
            )
            .with_context(|| format!("attaching {name} on CPU {cpu}"))?;
    }
    Ok(())
}

/// Run time and run count of the attached programs (zero unless `kernel.bpf_stats_enabled`).
pub struct ProgramStats {
    pub program: &'static str,
    pub run_time_ns: u64,
    pub run_count: u64,
}

pub fn program_stats(ebpf: &Ebpf, attached: &[AttachedProgram]) -> Vec<ProgramStats> {
    attached
        .iter()
        .filter_map(|attached| {
            let program = ebpf.program(attached.program)?;
            let info = program.info().ok()?;
            Some(ProgramStats {
                program: attached.program,
                run_time_ns: info.run_time().as_nanos() as u64,
                run_count: info.run_count(),
            })
        })
        .collect()
}
