//! Checks made before touching the kernel, so that a person gets one line saying what to fix.

use std::path::Path;

use anyhow::{Result, bail};
use caps::{CapSet, Capability};

/// The agent loads tracing programs: that takes CAP_BPF and CAP_PERFMON (kernel >= 5.8), or
/// CAP_SYS_ADMIN alone. Without CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH it runs, but cannot name
/// other users' processes fully: a warning says so.
pub fn check_privileges() -> Result<()> {
    let effective = caps::read(None, CapSet::Effective).unwrap_or_default();
    let has = |cap: &Capability| effective.contains(cap);
    let load = [Capability::CAP_BPF, Capability::CAP_PERFMON];
    if !has(&Capability::CAP_SYS_ADMIN) && !load.iter().all(has) {
        bail!(
            "missing capabilities {} (or CAP_SYS_ADMIN): run monitor as root or grant them \
             (with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to name other users' processes), e.g. \
             `setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search+ep monitor`; in a \
             container, add them to its capabilities",
            missing(&load, has)
        );
    }
    let procfs = [Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH];
    if !procfs.iter().all(has) {
        log::warn!(
            "missing capabilities {}: other users' processes keep their 15-byte kernel names, \
             their OTEL_SERVICE_NAME is not read and their open connections are not adopted",
            missing(&procfs, has)
        );
    }
    Ok(())
}

fn missing(wanted: &[Capability], has: impl Fn(&Capability) -> bool) -> String {
    wanted
        .iter()
        .filter(|cap| !has(cap))
        .map(Capability::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Whether the kernel `release` (`5.10.0-32-amd64`) is older than `major.minor`; false when
/// it does not parse.
pub fn release_older_than(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(have_major)), Some(Ok(have_minor))) => (have_major, have_minor) < (major, minor),
        _ => false,
    }
}

pub fn btf_available() -> bool {
    Path::new("/sys/kernel/btf/vmlinux").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_compare_by_major_and_minor() {
        assert!(release_older_than("5.10.0-32-amd64", (5, 17)));
        assert!(release_older_than("4.18.0-553.el8_10.x86_64", (5, 17)));
        assert!(!release_older_than("5.17.0", (5, 17)));
        assert!(!release_older_than("6.1.0-57-amd64", (5, 17)));
        assert!(!release_older_than("6.18.44-fc-v1272", (5, 17)));
        assert!(!release_older_than("unknown", (5, 17)));
    }
}
