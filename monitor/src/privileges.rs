//! After start-up the agent gives up every capability it only needed to load and attach its
//! programs (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, ...). What it keeps is what reading procfs
//! needs: the maps are read through file descriptors it already holds.
//!
//! Capabilities belong to threads: the main thread drops them before the runtime's threads
//! exist, so those inherit the reduced sets; a thread started during start-up (the exec namer)
//! drops its own. One thread may keep CAP_SYS_ADMIN: the one that attaches uprobes to TLS
//! libraries that processes map after start-up (`agent::tls`), when the agent was granted it
//! and `--tls-scan-interval` is not zero.

use anyhow::{Context as _, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// What procfs needs once the programs run: `/proc/<pid>/exe`, `environ` and `fd` of other
/// users' processes (CAP_SYS_PTRACE), and listing `/proc/<pid>/fd` and the kubelet's log
/// directories (CAP_DAC_READ_SEARCH).
const RUN_TIME: [Capability; 2] = [Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH];

/// Drops every capability but [`RUN_TIME`] from this thread's effective, permitted,
/// inheritable and ambient sets (and from the bounding set when allowed to). `maps_readable`
/// reads a map through a held descriptor: kernels before 6.5 check CAP_BPF on every bpf(2)
/// call, so where that read fails without it CAP_BPF is kept (CAP_SYS_ADMIN where that alone
/// loaded the programs). Returns the capabilities kept.
pub fn drop_start_up_capabilities(maps_readable: impl Fn() -> bool) -> Result<Vec<Capability>> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    let mut keep = run_time(&permitted);
    drop_bounding(&keep);
    // Effective first: it must stay a subset of permitted, which still holds everything.
    caps::set(None, CapSet::Effective, &keep).context("dropping effective capabilities")?;
    if !maps_readable() {
        // CAP_SYS_ADMIN where the programs were loaded with it alone.
        let needed = [Capability::CAP_BPF, Capability::CAP_SYS_ADMIN]
            .into_iter()
            .find(|cap| permitted.contains(cap));
        if let Some(cap) = needed {
            log::debug!("this kernel wants {cap} to read maps through held descriptors: kept");
            keep.insert(cap);
        }
    }
    lower_to(&keep)
}

/// The same for a thread started during start-up that reads no map through bpf(2) (a ring
/// buffer is read from shared memory): it keeps [`RUN_TIME`] and those of `also` it holds
/// (the thread that probes TLS libraries found later keeps CAP_SYS_ADMIN).
pub fn drop_in_this_thread(also: &[Capability]) -> Result<Vec<Capability>> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    let mut keep = run_time(&permitted);
    keep.extend(also.iter().filter(|cap| permitted.contains(cap)));
    drop_bounding(&keep);
    lower_to(&keep)
}

fn run_time(permitted: &CapsHashSet) -> CapsHashSet {
    RUN_TIME
        .into_iter()
        .filter(|cap| permitted.contains(cap))
        .collect()
}

/// The bounding set only matters at execve, which the agent never calls: dropped anyway (where
/// CAP_SETPCAP allows it), so that nothing it could run would get the rest back.
fn drop_bounding(keep: &CapsHashSet) {
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all().difference(keep) {
            let _ = caps::drop(None, CapSet::Bounding, *cap);
        }
    }
}

/// Sets this thread's effective and permitted sets to `keep` (a subset of permitted), and
/// clears the inheritable and ambient ones.
fn lower_to(keep: &CapsHashSet) -> Result<Vec<Capability>> {
    // Effective first: it must stay a subset of permitted.
    caps::set(None, CapSet::Effective, keep).context("dropping effective capabilities")?;
    caps::set(None, CapSet::Permitted, keep).context("dropping permitted capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clearing inheritable capabilities")?;
    caps::clear(None, CapSet::Ambient).context("clearing ambient capabilities")?;
    let mut kept: Vec<Capability> = keep.iter().copied().collect();
    kept.sort_by_key(|cap| cap.index());
    Ok(kept)
}

/// `cap_a, cap_b`, as capsh spells them; `none` when empty.
pub fn describe(capabilities: &[Capability]) -> String {
    if capabilities.is_empty() {
        return "none".to_owned();
    }
    capabilities
        .iter()
        .map(|cap| cap.to_string().to_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_named_as_capsh_names_them() {
        assert_eq!(describe(&RUN_TIME), "cap_sys_ptrace, cap_dac_read_search");
        assert_eq!(describe(&[]), "none");
    }
}
