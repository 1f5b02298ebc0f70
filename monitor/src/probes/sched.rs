//! Scheduler hooks: BTF tracepoints where the kernel has BTF and allows them, else classic
//! tracepoints (with field offsets read from tracefs); plus a per-CPU clock tick.
//!
//! All scheduler hooks use one kind: the switch and wake-up programs must agree on how they
//! name a task (a `task_struct` address on the BTF path, a thread id on the classic path).

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf, Ebpf,
    maps::Array,
    programs::{BtfTracePoint, PerfEvent, TracePoint},
};
use monitor_common::sched::{SchedTracepointLayout, TICK_PERIOD_NS};

use super::{
    AttachedProgram, HookKind, KernelBtf, attach_cpu_clock, online_cpus, program_mut, refusal,
    tracefs,
};
use crate::cli::HookChoice;

/// A scheduler hook and the programs that can serve it.
struct SchedHook {
    hook: &'static str,
    /// Only needed where the programs time wake-ups themselves; where the switch reads the
    /// kernel's accounting, the hook is left alone.
    timing_only: bool,
    btf: &'static str,
    classic: &'static str,
    /// An empty BTF program on the same hook: the cost floor for benchmarks.
    empty: &'static str,
}

macro_rules! sched_hook {
    ($hook:literal) => {
        sched_hook!($hook, false)
    };
    ($hook:literal, $timing_only:literal) => {
        SchedHook {
            hook: $hook,
            timing_only: $timing_only,
            btf: concat!($hook, "_btf"),
            classic: concat!($hook, "_tp"),
            empty: concat!($hook, "_empty"),
        }
    };
}

const SCHED_HOOKS: [SchedHook; 5] = [
    sched_hook!("sched_switch"),
    sched_hook!("sched_wakeup", true),
    sched_hook!("sched_wakeup_new", true),
    sched_hook!("sched_process_exec"),
    sched_hook!("sched_process_exit"),
];

/// Attaches empty programs at the scheduler hooks instead of the real ones: what merely being
/// called there costs, for `cargo xtask bench` to compare with. `accounted` as for
/// `attach_sched`: the empty programs take exactly the hooks the real ones would.
pub fn attach_empty(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    accounted: bool,
) -> Result<Vec<AttachedProgram>> {
    let btf = btf
        .as_ref()
        .map_err(|error| anyhow!("empty programs are BTF tracepoints; no kernel BTF: {error}"))?;
    let mut attached = attach_btf(ebpf, btf, accounted, |hook| hook.empty)?;
    attached.push(attach_tick(ebpf, "cpu_clock_tick_empty")?);
    Ok(attached)
}

/// Attaches the scheduler programs, trying each allowed kind in turn; returns what is attached.
/// `accounted`: the object was loaded with the offsets of the kernel's per-task accounting, so
/// the BTF switch program reads it and needs no wake-up programs (the classic tracepoints,
/// without task pointers, always time switches and wake-ups themselves).
pub fn attach_sched(
    ebpf: &mut Ebpf,
    choice: HookChoice,
    btf: &KernelBtf,
    accounted: bool,
) -> Result<Vec<AttachedProgram>> {
    if choice == HookChoice::Tracepoint {
        return attach_classic(ebpf).and_then(|attached| finish(ebpf, attached, "cpu_clock_tick"));
    }
    let btf_error = match btf {
        Ok(btf) => match attach_btf(ebpf, btf, accounted, |hook| hook.btf) {
            Ok(attached) => {
                let tick = if accounted {
                    // Its helper (bpf_get_current_task_btf) is Linux 5.11+, the switch
                    // program's hooks 5.8+: refused, the caller reloads without the offsets,
                    // where the plain tick loads. A tick that loads but cannot attach is
                    // `finish`'s warning in either mode.
                    load_tick(ebpf, "cpu_clock_tick_accounted").context(
                        "the clock tick that reads the kernel's per-task accounting was refused",
                    )?;
                    "cpu_clock_tick_accounted"
                } else {
                    "cpu_clock_tick"
                };
                return finish(ebpf, attached, tick);
            }
            Err(error) => {
                unload_btf(ebpf);
                refusal::brief(&error)
            }
        },
        Err(error) => format!("no kernel BTF (/sys/kernel/btf/vmlinux): {error}"),
    };
    if choice == HookChoice::TpBtf {
        return Err(anyhow!(
            "cannot attach the scheduler hooks as tp_btf: {btf_error}"
        ));
    }
    log::warn!("BTF tracepoints unavailable ({btf_error}); falling back to classic tracepoints");
    match attach_classic(ebpf) {
        Ok(attached) => finish(ebpf, attached, "cpu_clock_tick"),
        Err(classic_error) => Err(anyhow!(
            "cannot attach the scheduler hooks: tp_btf: {btf_error}; tracepoint: {}",
            refusal::brief(&classic_error)
        )),
    }
}

/// The per-CPU clock tick's hook, as `monitor_bpf_program_info` and
/// `monitor_hook_unavailable` name it.
pub const CLOCK_TICK_HOOK: &str = "cpu_clock";

fn finish(
    ebpf: &mut Ebpf,
    mut attached: Vec<AttachedProgram>,
    tick: &'static str,
) -> Result<Vec<AttachedProgram>> {
    match attach_tick(ebpf, tick) {
        Ok(tick) => attached.push(tick),
        // Not fatal: time is still counted at every context switch, only less promptly.
        Err(error) => log::warn!(
            "per-CPU clock tick unavailable ({}); a busy process's CPU time will only update \
             when it is switched out",
            refusal::brief(&error)
        ),
    }
    Ok(attached)
}

fn attach_btf(
    ebpf: &mut Ebpf,
    btf: &Btf,
    accounted: bool,
    pick: impl Fn(&SchedHook) -> &'static str,
) -> Result<Vec<AttachedProgram>> {
    let mut attached = Vec::new();
    for sched_hook in SCHED_HOOKS
        .iter()
        .filter(|hook| !(accounted && hook.timing_only))
    {
        let (hook, program_name) = (sched_hook.hook, pick(sched_hook));
        let program: &mut BtfTracePoint = program_mut(ebpf, program_name)?.try_into()?;
        program
            .load(hook, btf)
            .with_context(|| format!("loading {program_name}"))?;
        program
            .attach()
            .with_context(|| format!("attaching {program_name}"))?;
        attached.push(AttachedProgram {
            hook,
            kind: HookKind::TpBtf,
            program: program_name,
        });
    }
    Ok(attached)
}

fn attach_classic(ebpf: &mut Ebpf) -> Result<Vec<AttachedProgram>> {
    let root = tracefs::ensure_mounted()?;
    let layout = tracefs::sched_layout(&root)?;
    write_layout(ebpf, layout)?;
    let mut attached = Vec::new();
    for SchedHook {
        hook,
        classic: program_name,
        ..
    } in SCHED_HOOKS
    {
        let program: &mut TracePoint = program_mut(ebpf, program_name)?.try_into()?;
        program
            .load()
            .with_context(|| format!("loading {program_name}"))?;
        program
            .attach("sched", hook)
            .with_context(|| format!("attaching {program_name}"))?;
        attached.push(AttachedProgram {
            hook,
            kind: HookKind::Tracepoint,
            program: program_name,
        });
    }
    Ok(attached)
}

fn write_layout(ebpf: &mut Ebpf, layout: SchedTracepointLayout) -> Result<()> {
    let map = ebpf
        .map_mut("SCHED_TP_LAYOUT")
        .ok_or_else(|| anyhow!("map SCHED_TP_LAYOUT missing from the BPF object"))?;
    let mut array: Array<_, SchedTracepointLayout> = Array::try_from(map)?;
    array.set(0, layout, 0)?;
    Ok(())
}

/// Loads the tick program (the verifier's pass), if it is not loaded yet.
fn load_tick(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    let program: &mut PerfEvent = program_mut(ebpf, name)?.try_into()?;
    if program.fd().is_err() {
        program.load()?;
    }
    Ok(())
}

fn attach_tick(ebpf: &mut Ebpf, name: &'static str) -> Result<AttachedProgram> {
    load_tick(ebpf, name)?;
    let program: &mut PerfEvent = program_mut(ebpf, name)?.try_into()?;
    attach_cpu_clock(program, name, &online_cpus()?, TICK_PERIOD_NS)?;
    Ok(AttachedProgram {
        hook: CLOCK_TICK_HOOK,
        kind: HookKind::PerfEvent,
        program: name,
    })
}

/// Unloads (and so detaches) the BTF programs after a partial failure, before the fallback.
fn unload_btf(ebpf: &mut Ebpf) {
    for hook in &SCHED_HOOKS {
        if let Some(Ok(program)) = ebpf
            .program_mut(hook.btf)
            .map(<&mut BtfTracePoint>::try_from)
        {
            // Programs that never loaded answer an error here; there is nothing to undo.
            let _ = program.unload();
        }
    }
}
