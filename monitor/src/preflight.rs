//! Checks made before touching the kernel, so that a person gets one line saying what to fix.

use std::path::Path;

use anyhow::{Result, bail};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The agent loads tracing programs: that takes CAP_BPF and CAP_PERFMON (kernel >= 5.8), or
/// CAP_SYS_ADMIN alone.
pub fn check_privileges() -> Result<()> {
    let effective = procfs::process::Process::myself()
        .and_then(|me| me.status())
        .map(|status| status.capeff)
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect();
    bail!(
        "missing capabilities {} (or CAP_SYS_ADMIN): run monitor as root or grant them \
         (with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to name other users' processes), e.g. \
         `setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search+ep monitor`; in a \
         container, add them to its capabilities",
        missing.join(", ")
    )
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

pub fn btf_available() -> bool {
    Path::new("/sys/kernel/btf/vmlinux").exists()
}
