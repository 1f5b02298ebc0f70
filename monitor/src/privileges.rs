//! After start-up the agent gives up every capability it only needed to load and attach its
//! programs (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, ...). What it keeps is what reading procfs
//! needs: the maps are read through file descriptors it already holds.
//!
//! Capabilities belong to threads: this runs before the agent starts any other thread, so
//! every thread it starts later inherits the reduced sets.

use anyhow::{Context as _, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// What procfs needs once the programs run: `/proc/<pid>/exe`, `environ` and `fd` of other
/// users' processes (CAP_SYS_PTRACE), and listing `/proc/<pid>/fd` and the kubelet's log
/// directories (CAP_DAC_READ_SEARCH).
const RUN_TIME: [Capability; 2] = [Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH];

/// Drops every capability but [`RUN_TIME`] from the effective, permitted, inheritable and
/// ambient sets (and from the bounding set when allowed to). `maps_readable` reads a map
/// through a held descriptor: kernels before 6.5 check CAP_BPF on every bpf(2) call, so where
/// that read fails without it CAP_BPF is kept (CAP_SYS_ADMIN where that alone loaded the
/// programs). Returns the capabilities kept.
pub fn drop_start_up_capabilities(maps_readable: impl Fn() -> bool) -> Result<Vec<Capability>> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    let mut keep: CapsHashSet = RUN_TIME
        .into_iter()
        .filter(|cap| permitted.contains(cap))
        .collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        // The bounding set only matters at execve, which the agent never calls: dropped anyway,
        // so that nothing it could run would get them back.
        for cap in caps::all().difference(&keep) {
            let _ = caps::drop(None, CapSet::Bounding, *cap);
        }
    }
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
            caps::set(None, CapSet::Effective, &keep).context("raising it again")?;
        }
    }
    caps::set(None, CapSet::Permitted, &keep).context("dropping permitted capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clearing inheritable capabilities")?;
    caps::clear(None, CapSet::Ambient).context("clearing ambient capabilities")?;
    let mut kept: Vec<Capability> = keep.into_iter().collect();
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
