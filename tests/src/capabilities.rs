//! Capabilities: the agent started with only some of them (`capsh`), and what each of its
//! threads holds afterwards.

use std::{fs, process::Command};

use crate::agent::monitor_bin;

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// deploy/kubernetes/daemonset.yaml's `capabilities.add`.
pub const DAEMONSET: [u32; 4] = [CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH];

/// The same with deploy/kubernetes/https's SYS_ADMIN.
pub const DAEMONSET_HTTPS: [u32; 5] = [
    CAP_BPF,
    CAP_PERFMON,
    CAP_SYS_PTRACE,
    CAP_DAC_READ_SEARCH,
    CAP_SYS_ADMIN,
];

pub fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |mask, cap| mask | 1 << cap)
}

/// `capsh` execing the agent with only `keep` in its bounding set: as root, that is all it
/// gets at exec (as in a container that drops ALL and adds these), nothing inheritable or
/// ambient.
pub fn capsh_keeping(keep: &[u32]) -> Command {
    let mut capsh = Command::new("capsh");
    capsh.args(capsh_args(keep));
    capsh
}

/// capsh's arguments for `capsh_keeping`, up to the agent's own.
pub fn capsh_args(keep: &[u32]) -> Vec<String> {
    let last: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let drop: Vec<String> = (0..=last)
        .filter(|cap| !keep.contains(cap))
        .map(|cap| cap.to_string())
        .collect();
    vec![
        format!("--drop={}", drop.join(",")),
        "--inh=".to_owned(),
        "--noamb".to_owned(),
        format!("--shell={}", monitor_bin().display()),
        "--".to_owned(),
    ]
}

/// One capability set of one thread.
#[derive(Debug)]
pub struct ThreadSet {
    /// The thread's id.
    pub thread: String,
    /// Its name (`comm`).
    pub name: String,
    /// `CapInh`, `CapPrm`, `CapEff` or `CapAmb`.
    pub set: String,
    pub mask: u64,
}

/// The capability sets of every thread of `pid` (the bounding set left out).
pub fn capability_sets(pid: u32) -> Vec<ThreadSet> {
    let mut sets = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let name = status
            .lines()
            .find_map(|line| line.strip_prefix("Name:\t"))
            .unwrap_or_default()
            .to_owned();
        for line in status.lines() {
            if let Some((set, hex)) = line.split_once(":\t")
                && set.starts_with("Cap")
                && set != "CapBnd"
            {
                sets.push(ThreadSet {
                    thread: task.file_name().to_string_lossy().into_owned(),
                    name: name.clone(),
                    set: set.to_owned(),
                    mask: u64::from_str_radix(hex.trim(), 16).unwrap(),
                });
            }
        }
    }
    sets
}

/// What the agent keeps once its programs are attached. Kernels before 6.5 check CAP_BPF on
/// every bpf(2) call, map reads included, so there the agent keeps it too.
pub fn run_time_set() -> u64 {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let mut caps = vec![CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH];
    if version < (6, 5) {
        caps.push(CAP_BPF);
    }
    mask(&caps)
}

/// The thread that probes TLS libraries mapped after start-up.
pub const TLS_SCAN_THREAD: &str = "tls-libraries";

/// The thread that probes TLS libraries mapped after start-up, as a test expects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsScan {
    /// None runs.
    Off,
    /// It runs with the run-time set, as every thread (uprobe_multi links need no privilege).
    RunTimeSet,
    /// It keeps CAP_SYS_ADMIN beside (perf-event uprobes, `--perf-event-uprobes`).
    KeepingSysAdmin,
}

/// Whether the tests' agents attach the TLS programs as perf events: the second pass of
/// `cargo xtask test` passes `--perf-event-uprobes` to every agent.
pub fn perf_event_uprobes() -> bool {
    std::env::var("MONITOR_TEST_AGENT_ARGS").is_ok_and(|args| {
        args.split_whitespace()
            .any(|arg| arg == "--perf-event-uprobes")
    })
}

/// The scan thread of an agent that may follow TLS libraries: keeping CAP_SYS_ADMIN where
/// perf events need it.
pub fn tls_scan_thread() -> TlsScan {
    if perf_event_uprobes() {
        TlsScan::KeepingSysAdmin
    } else {
        TlsScan::RunTimeSet
    }
}

/// Every thread of `pid` holds exactly the run-time set, effective and permitted, and nothing
/// inheritable or ambient, but the TLS scan thread as `tls_scan` says.
pub fn assert_threads_hold_the_run_time_set(pid: u32, tls_scan: TlsScan) {
    let run_time = run_time_set();
    let sets = capability_sets(pid);
    assert!(sets.len() >= 4 * 3, "too few threads or sets: {sets:?}");
    for ThreadSet {
        thread,
        name,
        set,
        mask: value,
    } in &sets
    {
        let extra = if tls_scan == TlsScan::KeepingSysAdmin && name == TLS_SCAN_THREAD {
            mask(&[CAP_SYS_ADMIN])
        } else {
            0
        };
        let want = match set.as_str() {
            "CapEff" | "CapPrm" => run_time | extra,
            _ => 0,
        };
        assert_eq!(
            *value, want,
            "thread {thread} ({name}): {set} is {value:#x}, expected {want:#x}"
        );
    }
    let scanners = sets
        .iter()
        .filter(|set| set.name == TLS_SCAN_THREAD && set.set == "CapEff")
        .count();
    assert_eq!(scanners, usize::from(tls_scan != TlsScan::Off), "{sets:?}");
}
