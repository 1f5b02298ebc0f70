//! Process facts from procfs: names and liveness.

use std::{fs, path::Path};

use monitor_common::sched::{COMM_LEN, ProcessMeta};

/// `PF_KTHREAD` in `/proc/<pid>/stat` flags.
const PF_KTHREAD: u32 = 0x0020_0000;

/// The `service_name` of every kernel thread: they are the kernel's work, not a service's.
pub const KERNEL_SERVICE: &str = "kernel";

/// How a process is named in the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// `process_executable_name`.
    pub executable: String,
    /// `service_name`: the executable's name for now; `kernel` for kernel threads.
    pub service: String,
}

/// Whether the process (thread group) still exists.
pub fn is_alive(tgid: u32) -> bool {
    Path::new(&format!("/proc/{tgid}")).exists()
}

/// Names a process from what the kernel recorded (`meta`) and what procfs still shows.
///
/// The kernel's `comm` taken at exec is the executable's name, cut to 15 bytes; when it is cut,
/// the full name comes from `/proc/<pid>/exe` if that starts with it. A process already running
/// when the agent started is named from `/proc/<pid>/comm` (its main thread), since the kernel
/// only saw whichever thread ran first. Kernel threads are named by their kind (`kworker`, not
/// `kworker/u8:0-events`), which keeps the label values few. A process gone before anything was
/// learnt is `unknown`.
pub fn identify(tgid: u32, meta: Option<&ProcessMeta>) -> ProcessIdentity {
    let kernel_comm = meta
        .map(|meta| comm_str(&meta.comm))
        .filter(|comm| !comm.is_empty());
    let from_exec = meta.is_some_and(|meta| meta.from_exec != 0);
    if !from_exec && is_kernel_thread(tgid) {
        let comm = kernel_comm.or_else(|| read_comm(tgid)).unwrap_or_default();
        return ProcessIdentity {
            executable: kernel_thread_kind(&comm).to_owned(),
            service: KERNEL_SERVICE.to_owned(),
        };
    }
    let comm = match kernel_comm {
        Some(comm) if from_exec => Some(comm),
        _ => read_comm(tgid).or(kernel_comm),
    };
    let executable = match comm {
        Some(comm) if comm.len() == COMM_LEN - 1 => full_exe_name(tgid, &comm).unwrap_or(comm),
        Some(comm) => comm,
        None => "unknown".to_owned(),
    };
    ProcessIdentity {
        service: executable.clone(),
        executable,
    }
}

/// `kworker/u8:0-events` -> `kworker`, `ksoftirqd/1` -> `ksoftirqd`, `kswapd0` -> `kswapd0`.
pub fn kernel_thread_kind(comm: &str) -> &str {
    let kind = comm.split(['/', '-']).next().unwrap_or(comm);
    if kind.is_empty() { "unknown" } else { kind }
}

/// The NUL-terminated `comm` as text (lossy: a comm is bytes).
pub fn comm_str(comm: &[u8; COMM_LEN]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn is_kernel_thread(tgid: u32) -> bool {
    i32::try_from(tgid)
        .ok()
        .and_then(|pid| procfs::process::Process::new(pid).ok())
        .and_then(|process| process.stat().ok())
        .is_some_and(|stat| stat.flags & PF_KTHREAD != 0)
}

fn read_comm(tgid: u32) -> Option<String> {
    let comm = fs::read_to_string(format!("/proc/{tgid}/comm")).ok()?;
    let comm = comm.trim_end_matches('\n');
    (!comm.is_empty()).then(|| comm.to_owned())
}

fn full_exe_name(tgid: u32, truncated: &str) -> Option<String> {
    let exe = fs::read_link(format!("/proc/{tgid}/exe")).ok()?;
    let name = exe.file_name()?.to_string_lossy();
    let name = name.strip_suffix(" (deleted)").unwrap_or(&name);
    name.starts_with(truncated).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(comm: &str, from_exec: bool) -> ProcessMeta {
        let mut bytes = [0u8; COMM_LEN];
        bytes[..comm.len()].copy_from_slice(comm.as_bytes());
        ProcessMeta {
            comm: bytes,
            exit_ns: 0,
            from_exec: from_exec as u32,
            _reserved: 0,
        }
    }

    fn executable(tgid: u32, meta: Option<&ProcessMeta>) -> String {
        identify(tgid, meta).executable
    }

    #[test]
    fn comm_stops_at_nul() {
        assert_eq!(comm_str(&meta("nginx", true).comm), "nginx");
        assert_eq!(comm_str(&[b'a'; COMM_LEN]), "a".repeat(COMM_LEN));
    }

    #[test]
    fn exec_name_wins_over_procfs() {
        // The test process itself is alive, so procfs has a different comm for it.
        let me = std::process::id();
        assert_eq!(executable(me, Some(&meta("worker", true))), "worker");
    }

    #[test]
    fn running_process_is_named_from_procfs() {
        let me = std::process::id();
        let procfs_comm = read_comm(me).unwrap();
        let identity = identify(me, Some(&meta("some-thread", false)));
        // The test binary's name is longer than a comm: the full name comes from its exe.
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            identity.executable,
            exe.file_name().unwrap().to_str().unwrap()
        );
        assert!(identity.executable.starts_with(&procfs_comm));
        assert_eq!(identity.service, identity.executable);
    }

    #[test]
    fn dead_process_keeps_the_kernel_name() {
        // pid_max is below 2^22 on Linux, so this pid cannot exist.
        let gone = u32::MAX - 1;
        assert_eq!(
            executable(gone, Some(&meta("short-lived", false))),
            "short-lived"
        );
        assert_eq!(executable(gone, None), "unknown");
    }

    #[test]
    fn kernel_threads_are_named_by_kind() {
        assert_eq!(kernel_thread_kind("kworker/u8:0-events_unbound"), "kworker");
        assert_eq!(kernel_thread_kind("ksoftirqd/1"), "ksoftirqd");
        assert_eq!(kernel_thread_kind("rcu_preempt"), "rcu_preempt");
        assert_eq!(kernel_thread_kind("/"), "unknown");
        // kthreadd (pid 2) is a kernel thread on every Linux system.
        let kthreadd = identify(2, None);
        assert_eq!(kthreadd.service, KERNEL_SERVICE);
        assert_eq!(kthreadd.executable, "kthreadd");
    }
}
