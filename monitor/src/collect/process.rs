//! Process facts from procfs: names, containers and liveness.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use monitor_common::sched::{COMM_LEN, ProcessMeta};

use super::{
    identity::{self, Pod},
    process_memory,
};

/// `PF_KTHREAD` in `/proc/<pid>/stat` flags.
const PF_KTHREAD: u32 = 0x0020_0000;

/// The `service_name` of every kernel thread: they are the kernel's work, not a service's.
pub const KERNEL_SERVICE: &str = "kernel";

/// How a process is named in the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// `process_executable_name`.
    pub executable: String,
    pub service: Service,
    /// A read it was made from failed in a way that may pass (see [`may_succeed_later`]):
    /// asked again later, the process may be named by its environment, container or command
    /// line. Not for a process gone or a file absent: asking again would tell nothing more.
    pub incomplete: bool,
}

/// The labels that say which service a process is, and where it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Service {
    /// `service_name`, first match wins: `OTEL_SERVICE_NAME` (or `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`); the Kubernetes container's name; the container id; the
    /// systemd service it runs in (`identity::service_unit`); the script an interpreter runs;
    /// the executable's name. `kernel` for kernel threads.
    pub name: String,
    pub container_id: Option<String>,
    pub k8s_namespace_name: Option<String>,
    pub k8s_pod_name: Option<String>,
    pub k8s_container_name: Option<String>,
}

impl Service {
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Label pairs, `service_name` first; absent ones are left out, never empty.
    pub fn labels(&self) -> Vec<(&'static str, &str)> {
        let mut labels = vec![("service_name", self.name.as_str())];
        let optional = [
            ("container_id", &self.container_id),
            ("k8s_namespace_name", &self.k8s_namespace_name),
            ("k8s_pod_name", &self.k8s_pod_name),
            ("k8s_container_name", &self.k8s_container_name),
        ];
        labels.extend(
            optional
                .into_iter()
                .filter_map(|(name, value)| Some((name, value.as_deref()?))),
        );
        labels
    }
}

/// How an [`Identifier`] reads a process's command line and environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryReads {
    /// Waited for longer (`process_memory::read_at_exec`): on a thread that nothing else waits
    /// for (the exec namer), where a process that has just exec'd and is still loading from a
    /// cold disk can hold its memory map for a second or more.
    AtExec,
    /// At most `process_memory`'s timeout: under the lock that scrapes wait for.
    Bounded,
}

impl MemoryReads {
    fn read(self, path: String) -> std::io::Result<Vec<u8>> {
        match self {
            Self::AtExec => process_memory::read_at_exec(path),
            Self::Bounded => process_memory::read(path),
        }
    }
}

/// Names processes, remembering the node's pods between calls.
pub struct Identifier {
    pod_logs: PathBuf,
    containers: PathBuf,
    memory_reads: MemoryReads,
    pods: RefCell<(HashMap<String, Pod>, Option<Instant>)>,
}

/// Shortest time between two scans of the pod log directory for an unknown pod.
const POD_RESCAN: Duration = Duration::from_secs(1);

impl Identifier {
    /// `pod_logs` is the kubelet's `/var/log/pods`; its sibling `containers` holds the
    /// per-container symlinks.
    pub fn new(pod_logs: &Path, memory_reads: MemoryReads) -> Self {
        let containers = pod_logs.parent().map_or_else(
            || PathBuf::from("/var/log/containers"),
            |p| p.join("containers"),
        );
        Self {
            pod_logs: pod_logs.to_path_buf(),
            containers,
            memory_reads,
            pods: RefCell::new((HashMap::new(), None)),
        }
    }

    /// Names a process from what the kernel recorded (`meta`) and what procfs still shows
    /// (see [`Service::name`] for the order).
    pub fn identify(&self, tgid: u32, meta: Option<&ProcessMeta>) -> ProcessIdentity {
        // A server's child forked to serve a connection runs the server's program: it is the
        // server's service, also when it exited before it could be read here.
        if let Some(parent) = meta.and_then(ProcessMeta::forked_by) {
            let server = self.identify(parent, None);
            if server.executable != UNKNOWN_EXECUTABLE {
                return server;
            }
        }
        let base = identify(tgid, meta);
        if base.service.name == KERNEL_SERVICE {
            return base;
        }
        let incomplete = Cell::new(false);
        let cgroup = noted(
            fs::read_to_string(format!("/proc/{tgid}/cgroup")),
            &incomplete,
        )
        .unwrap_or_default();
        let container = identity::container_of(&cgroup);
        let mut service = Service::named(base.service.name.clone());
        if let Some(container) = &container {
            service.container_id = Some(container.id.clone());
            if let Some(pod) = container.pod_uid.as_deref().and_then(|uid| self.pod(uid)) {
                service.k8s_container_name =
                    identity::container_name(&pod, &container.id, &self.containers);
                service.k8s_namespace_name = Some(pod.namespace);
                service.k8s_pod_name = Some(pod.name);
            }
        }
        let from_env = noted(
            self.memory_reads.read(format!("/proc/{tgid}/environ")),
            &incomplete,
        )
        .and_then(|environ| identity::otel_service_name(&environ));
        let from_container = service
            .k8s_container_name
            .clone()
            .or_else(|| container.as_ref().map(|c| c.id[..12].to_owned()));
        // A container's processes are in its unit too (`docker-<id>.scope` and the like).
        let from_unit = || {
            container
                .is_none()
                .then(|| identity::service_unit(&cgroup))
                .flatten()
        };
        let from_script =
            || command_line_name(self.memory_reads, tgid, &base.executable, true, &incomplete);
        service.name = from_env
            .or(from_container)
            .or_else(from_unit)
            .or_else(from_script)
            .unwrap_or(base.service.name);
        ProcessIdentity {
            executable: base.executable,
            service,
            incomplete: incomplete.get(),
        }
    }

    fn pod(&self, uid: &str) -> Option<Pod> {
        let mut pods = self.pods.borrow_mut();
        let (known, scanned) = &mut *pods;
        if let Some(pod) = known.get(uid) {
            return Some(pod.clone());
        }
        if scanned.is_none_or(|at| at.elapsed() >= POD_RESCAN) {
            *known = identity::scan_pod_logs(&self.pod_logs);
            *scanned = Some(Instant::now());
        }
        known.get(uid).cloned()
    }
}

/// The value read, or `None`; a failure that may pass marks the identity `incomplete`.
fn noted<T>(read: io::Result<T>, incomplete: &Cell<bool>) -> Option<T> {
    read.map_err(|error| {
        if may_succeed_later(&error) {
            incomplete.set(true);
        }
    })
    .ok()
}

/// Whether a failed procfs read may succeed if tried again: yes when it timed out or every
/// reader was stuck (`process_memory`), descriptors ran out (EMFILE) or access was refused
/// (EACCES: it can pass, a process making itself dumpable again, or last, an agent without
/// `CAP_SYS_PTRACE`, which is why the ledger asks again a bounded number of times). No when
/// the process is gone (ENOENT, ESRCH) or the file is not text: the same answer would come.
fn may_succeed_later(error: &io::Error) -> bool {
    !matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::InvalidData
    ) && error.raw_os_error() != Some(libc::ESRCH)
}

/// Whether the process (thread group) still runs. A zombie (exited, not yet waited for by its
/// parent) keeps its /proc entry but is gone: its descriptors are closed. Its leader alone
/// may be a zombie while other threads run on: then `Threads` counts them too.
pub fn is_alive(tgid: u32) -> bool {
    // Bytes: `Name:` is the thread's name as set, not always UTF-8.
    match fs::read(format!("/proc/{tgid}/status")) {
        Ok(status) => status_says_alive(&status),
        // Unreadable but there (a race with the exit): as before, by the entry.
        Err(_) => Path::new(&format!("/proc/{tgid}")).exists(),
    }
}

/// `is_alive` from the contents of `/proc/<tgid>/status`.
fn status_says_alive(status: &[u8]) -> bool {
    let field = |name: &[u8]| {
        status
            .split(|&byte| byte == b'\n')
            .find_map(|line| line.strip_prefix(name))
            .map(<[u8]>::trim_ascii)
    };
    let exited = field(b"State:").is_some_and(|state| matches!(state.first(), Some(b'Z' | b'X')));
    let threads = field(b"Threads:")
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse::<u32>().ok());
    !exited || threads.is_some_and(|threads| threads > 1)
}

/// The name a process's command line gives it (`identity::script_name`), or the directory it
/// runs in gives it (`identity::directory_suffix`); a `multiprocessing` child's is its
/// parent's, looked up once (`parent`).
fn command_line_name(
    reads: MemoryReads,
    tgid: u32,
    executable: &str,
    parent: bool,
    incomplete: &Cell<bool>,
) -> Option<String> {
    let cmdline = noted(reads.read(format!("/proc/{tgid}/cmdline")), incomplete)?;
    let args = identity::cmdline_args(&cmdline);
    if parent && identity::is_multiprocessing_child(executable, &args) {
        let ppid = procfs::process::Process::new(tgid as i32)
            .and_then(|process| process.stat())
            .ok()?
            .ppid;
        let ppid = u32::try_from(ppid).ok()?;
        let parent = identify(ppid, None).executable;
        return command_line_name(reads, ppid, &parent, false, incomplete);
    }
    if let Some(suffix) = identity::directory_suffix(executable, &args)
        && let Some(directory) = noted(fs::read_link(format!("/proc/{tgid}/cwd")), incomplete)
        && let Some(app) = identity::app_directory(&directory.to_string_lossy())
    {
        return Some(format!("{app}{suffix}"));
    }
    identity::script_name(executable, &args)
}

/// The executable's name of a process gone before anything was learnt about it.
pub const UNKNOWN_EXECUTABLE: &str = "unknown";

/// The executable's name of a process, from what the kernel recorded (`meta`) and what
/// procfs still shows; its service is that name (see [`Identifier`] for the rest).
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
        // procfs shows a kernel thread's full name (`rcu_tasks_trace_kthread`); the kernel's
        // comm is that name cut to 15 bytes, so prefer procfs when it extends the comm.
        let shown = read_comm(tgid);
        let comm = match kernel_comm {
            Some(comm) if shown.as_ref().is_some_and(|full| full.starts_with(&comm)) => shown,
            Some(comm) => Some(comm),
            None => shown,
        }
        .unwrap_or_default();
        return ProcessIdentity {
            executable: kernel_thread_kind(&comm).to_owned(),
            service: Service::named(KERNEL_SERVICE),
            incomplete: false,
        };
    }
    let comm = match kernel_comm {
        Some(comm) if from_exec => Some(comm),
        _ => read_comm(tgid).or(kernel_comm),
    };
    let executable = match comm {
        Some(comm) if comm.len() == COMM_LEN - 1 => full_exe_name(tgid, &comm).unwrap_or(comm),
        Some(comm) => comm,
        None => UNKNOWN_EXECUTABLE.to_owned(),
    };
    ProcessIdentity {
        service: Service::named(executable.clone()),
        executable,
        incomplete: false,
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
mod tests;
