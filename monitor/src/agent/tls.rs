//! HTTPS: the uprobes on TLS libraries attached at start-up, and the thread that attaches them
//! to the libraries processes map later (a container image started since, a package
//! upgraded), which keeps CAP_SYS_ADMIN for that alone where the kernel wants it (perf-event
//! uprobes; uprobe_multi links need none).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Weak,
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::Ebpf;

use super::{Agent, SharedAgent, with_agent};
use crate::{
    collect::ReaderThread,
    probes::{
        AttachedProgram, refusal,
        tls::{self, FileId, LinkKind, ReleasedLinks, TlsLibraries},
        tls_executables::ExecutableVerdicts,
    },
};

/// The longest the scanning thread sleeps at once: its stop flag is looked at in between.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// The uprobes on the TLS libraries found at start-up (`probes::tls`); `None` when the
/// programs could not be loaded. Without them HTTPS goes unmeasured, and the rest of the agent
/// works as before.
pub(super) fn attach_at_start_up(
    ebpf: &mut Ebpf,
    attached: &mut Vec<AttachedProgram>,
    unavailable: &mut Vec<&'static str>,
    kind: LinkKind,
) -> Option<TlsLibraries> {
    match tls::attach_tls(ebpf, kind) {
        Ok((libraries, attempt)) => {
            for (library, why) in &attempt.refused {
                log::warn!("HTTPS through {} is not measured: {why}", library.display());
            }
            if let Some(capability) = attempt.missing_capability {
                log::warn!(
                    "HTTPS is not measured: this kernel attaches uprobes to the TLS library \
                     only with {capability}, which the agent lacks (grant it, or pass --no-tls)"
                );
            }
            if attempt.all_refused() {
                unavailable.push(tls::TLS_HOOK);
            } else if attempt.probed.is_empty() {
                log::info!("no TLS library (libssl) found yet: HTTPS is not measured");
            } else {
                log::debug!(
                    "TLS libraries probed with {:?} links: {:?}",
                    libraries.kind(),
                    attempt.probed
                );
            }
            tls::list_programs(attached, &libraries);
            Some(libraries)
        }
        Err(error) => {
            log::warn!(
                "HTTPS is not measured: the kernel refused the TLS library's uprobes ({})",
                refusal::brief(&error)
            );
            unavailable.push(tls::TLS_HOOK);
            None
        }
    }
}

impl Agent {
    /// Whether libraries that processes map later can be probed: the programs are loaded,
    /// they can be attached (as uprobe_multi links, or as perf events by a holder of
    /// CAP_SYS_ADMIN, which this thread is before the start-up drop), and the kernel did not
    /// refuse every library found at start-up.
    pub fn may_follow_tls_libraries(&self) -> bool {
        self.tls.is_some()
            && (!self.tls_attach_needs_sys_admin() || tls::has_sys_admin())
            && !self.unavailable.contains(&tls::TLS_HOOK)
    }

    /// Whether attaching the TLS programs takes CAP_SYS_ADMIN: the kernel's perf uprobe PMU
    /// admits no one else, where uprobe_multi links need no capability.
    pub fn tls_attach_needs_sys_admin(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|tls| tls.kind() == LinkKind::PerfEvents)
    }

    /// After a complete scan of every process: releases the libraries no process has mapped
    /// for a while and that were deleted (`TlsLibraries::release_unmapped`). Returns their
    /// links, to drop outside the lock.
    fn release_unmapped_tls_libraries(&mut self, mapped: &HashSet<FileId>) -> ReleasedLinks {
        let Some(libraries) = self.tls.as_mut() else {
            return ReleasedLinks::default();
        };
        let links = libraries.release_unmapped(&mut self.ebpf, mapped);
        if !links.is_empty() {
            log::info!("TLS libraries that no process maps any more, and deleted, released");
        }
        tls::list_programs(&mut self.attached, libraries);
        links
    }

    /// The libraries of `found` never tried, once each.
    fn untried_tls_libraries(&self, found: Vec<(PathBuf, FileId)>) -> Vec<(PathBuf, FileId)> {
        let Some(libraries) = self.tls.as_ref() else {
            return Vec::new();
        };
        let mut untried: Vec<(PathBuf, FileId)> = Vec::new();
        for (path, file) in found {
            if !libraries.tried(file) && !untried.iter().any(|&(_, known)| known == file) {
                untried.push((path, file));
            }
        }
        untried
    }

    /// Attaches the programs to the libraries of `found` that were never tried.
    fn probe_tls_libraries(&mut self, found: Vec<(PathBuf, FileId)>) {
        let Some(libraries) = self.tls.as_mut() else {
            return;
        };
        let attempt = libraries.attach(&mut self.ebpf, found, false);
        for (library, why) in &attempt.refused {
            log::warn!("HTTPS through {} is not measured: {why}", library.display());
        }
        if let Some(capability) = attempt.missing_capability {
            log::warn!(
                "a TLS library mapped since start-up is not probed: {capability} is lacking"
            );
        }
        for library in &attempt.probed {
            log::info!(
                "HTTPS through {} is measured from now on (a TLS library mapped since \
                 start-up)",
                library.display()
            );
        }
        tls::list_programs(&mut self.attached, libraries);
    }
}

/// Every how many scans every process's maps are read, not only those of processes started
/// since the last scan: a library loaded later (`dlopen`, Python's `import ssl`), or a pid
/// reused between two scans, is found by the next such scan.
const FULL_SCAN_EVERY: u64 = 6;

/// How many scans in a row read a new process's maps: a process may load the library a
/// while after it started (Python's `import ssl`, a `dlopen`).
const SCANS_OF_A_NEW_PROCESS: u32 = 3;

/// Which processes a scan reads the maps of: those first listed by one of the last
/// [`SCANS_OF_A_NEW_PROCESS`] scans (started since: a container's), and every one at each
/// [`FULL_SCAN_EVERY`]th scan. Reading maps is most of a scan's cost (about 50 µs per
/// process with OpenSSL loaded, here).
#[derive(Default)]
struct ScanPlan {
    /// Each process listed by the last scan, with how many scans in a row listed it.
    listed: HashMap<u32, u32>,
    previous: HashMap<u32, u32>,
    full: bool,
    scans: u64,
}

impl ScanPlan {
    fn begin(&mut self) {
        self.full = self.scans.is_multiple_of(FULL_SCAN_EVERY);
        self.scans += 1;
        self.previous = std::mem::take(&mut self.listed);
    }

    /// Whether this scan reads the maps of `pid`, listed now.
    fn reads(&mut self, pid: u32) -> bool {
        let scans = self
            .previous
            .get(&pid)
            .map_or(1, |scans| scans.saturating_add(1));
        self.listed.insert(pid, scans);
        self.full || scans <= SCANS_OF_A_NEW_PROCESS
    }
}

/// Starts the thread that looks through the processes' maps each `interval` for TLS
/// libraries not probed yet, and probes them. Started before the start-up capabilities are
/// dropped: it keeps CAP_SYS_ADMIN (`keep_sys_admin`) where the kernel asks it of whoever
/// attaches a perf-event uprobe.
pub fn follow_libraries(
    agent: &SharedAgent,
    interval: Duration,
    keep_sys_admin: bool,
) -> Result<ReaderThread> {
    let agent: Weak<_> = std::sync::Arc::downgrade(agent);
    let mut next = Instant::now() + interval;
    let mut plan = ScanPlan::default();
    let mut executables = ExecutableVerdicts::default();
    ReaderThread::spawn_keeping(
        "tls-libraries",
        "TLS library scan",
        if keep_sys_admin {
            &[caps::Capability::CAP_SYS_ADMIN]
        } else {
            &[]
        },
        move || {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(STOP_CHECK));
                return;
            }
            next = now + interval;
            // Read outside the lock: scrapes do not wait for procfs.
            plan.begin();
            let scan = tls::libraries_mapped_by(|pid| plan.reads(pid), &mut executables);
            log::trace!("TLS library scan: {:.1?}", now.elapsed());
            let Some(agent) = agent.upgrade() else {
                return;
            };
            if plan.full && scan.complete {
                let mapped = scan.mapped_files();
                let released = with_agent(&agent, |agent| {
                    agent.release_unmapped_tls_libraries(&mapped)
                });
                // Detached here: the kernel waits for its programs' runs to end.
                drop(released);
            }
            let found = scan.into_candidates();
            let untried = with_agent(&agent, |agent| agent.untried_tls_libraries(found));
            let Some(mut untried) = untried.filter(|untried| !untried.is_empty()) else {
                return;
            };
            // Checked outside the lock too: a path that leads to another file by now (the
            // process ended, its pid went to another) or to something else than a file (a
            // FIFO, whose opening would block) is not opened under the lock.
            untried.retain(|(path, file)| tls::still_leads_to(path, *file));
            with_agent(&agent, |agent| agent.probe_tls_libraries(untried));
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pids a scan of `listed` reads.
    fn scan(plan: &mut ScanPlan, listed: &[u32]) -> Vec<u32> {
        plan.begin();
        listed
            .iter()
            .copied()
            .filter(|&pid| plan.reads(pid))
            .collect()
    }

    #[test]
    fn a_scan_reads_the_processes_started_lately_and_now_and_then_all() {
        let mut plan = ScanPlan::default();
        // The first scan is a full one.
        assert_eq!(scan(&mut plan, &[1, 2]), [1, 2]);
        assert_eq!(scan(&mut plan, &[1, 2, 3]), [1, 2, 3]);
        assert_eq!(scan(&mut plan, &[1, 2, 3]), [1, 2, 3]);
        // 1 and 2 were read by three scans in a row; 2 ended, 4 started.
        assert_eq!(scan(&mut plan, &[1, 3, 4]), [3, 4]);
        assert_eq!(scan(&mut plan, &[1, 3, 4]), [4]);
        assert_eq!(scan(&mut plan, &[1, 3, 4]), [4]);
        assert_eq!(FULL_SCAN_EVERY, 6);
        assert_eq!(scan(&mut plan, &[1, 3, 4]), [1, 3, 4]);
        assert_eq!(scan(&mut plan, &[1, 3, 4]), Vec::<u32>::new());
        // A pid that was missing from one scan is a new process.
        assert_eq!(scan(&mut plan, &[1, 4]), Vec::<u32>::new());
        assert_eq!(scan(&mut plan, &[1, 3, 4]), [3]);
    }
}
