//! Names processes the moment they exec, from the kernel's `EXECS` ring buffer.
//!
//! A service's name may come from what only procfs shows while the process lives (its script,
//! its environment, its cgroup). A client that runs for 50 ms is gone by the next refresh, and
//! would otherwise be named after its interpreter. A thread of its own waits on the ring buffer
//! and reads procfs right after each exec; the model takes the name when it first meets the
//! process.

use std::{
    collections::{HashMap, VecDeque},
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use monitor_common::sched::{ExecEvent, ProcessMeta};

use super::{
    ReaderThread,
    process::{Identifier, MemoryReads, ProcessIdentity},
    wait_readable,
};

/// Names kept at most; the oldest go first (a process the model never met, or a burst).
const CAPACITY: usize = 16_384;
/// A name not taken by then belongs to a process the model will not meet any more.
const MAX_AGE: Duration = Duration::from_secs(600);
/// How often the thread looks at its stop flag while no exec happens.
const POLL: Duration = Duration::from_millis(100);

/// Identities read at exec, by tgid, waiting for the model.
#[derive(Default)]
pub struct EarlyNames {
    inner: Mutex<Names>,
    named: AtomicU64,
}

#[derive(Default)]
struct Names {
    by_tgid: HashMap<u32, (ProcessIdentity, Instant)>,
    /// Insertion order, for expiry; may hold tgids already taken or renamed.
    order: VecDeque<(u32, Instant)>,
}

impl EarlyNames {
    pub fn insert(&self, tgid: u32, identity: ProcessIdentity, now: Instant) {
        let mut names = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        names.by_tgid.insert(tgid, (identity, now));
        names.order.push_back((tgid, now));
        while let Some(&(oldest, at)) = names.order.front() {
            let expired = now.duration_since(at) > MAX_AGE;
            if !expired && names.by_tgid.len() <= CAPACITY && names.order.len() <= 2 * CAPACITY {
                break;
            }
            names.order.pop_front();
            // Only drop the entry this order slot stands for, not a later rename.
            if names
                .by_tgid
                .get(&oldest)
                .is_some_and(|(_, when)| *when == at)
            {
                names.by_tgid.remove(&oldest);
            }
        }
        self.named.fetch_add(1, Ordering::Relaxed);
    }

    /// The name read at exec, for the model's first sight of the process.
    pub fn take(&self, tgid: u32) -> Option<ProcessIdentity> {
        let mut names = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        names.by_tgid.remove(&tgid).map(|(identity, _)| identity)
    }

    /// The name read at exec, left in place.
    pub fn peek(&self, tgid: u32) -> Option<ProcessIdentity> {
        let names = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        names
            .by_tgid
            .get(&tgid)
            .map(|(identity, _)| identity.clone())
    }

    /// Processes named at exec since the start (`monitor_processes_named_at_exec_total`).
    pub fn named(&self) -> u64 {
        self.named.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        let names = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        names.by_tgid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The thread that names processes at exec; stopped on drop (see [`ReaderThread`]).
pub struct ExecNamer {
    _thread: ReaderThread,
}

impl ExecNamer {
    pub fn spawn(
        mut execs: RingBuf<MapData>,
        pod_logs: PathBuf,
        names: Arc<EarlyNames>,
    ) -> Result<Self> {
        // Its own Identifier, made in the thread: the pod cache is not shared across threads.
        let mut identifier = None;
        let thread = ReaderThread::spawn("exec-namer", "exec naming", move || {
            let identifier =
                identifier.get_or_insert_with(|| Identifier::new(&pod_logs, MemoryReads::AtExec));
            wait_readable(execs.as_raw_fd(), POLL);
            while let Some(item) = execs.next() {
                let Some(event) = ExecEvent::from_bytes(&item) else {
                    continue;
                };
                // The kernel's name at exec, for when the process is already gone.
                let meta = ProcessMeta {
                    comm: event.comm,
                    exit_ns: 0,
                    from_exec: 1,
                    forked_from: 0,
                };
                let identity = identifier.identify(event.tgid, Some(&meta));
                names.insert(event.tgid, identity, Instant::now());
            }
        })?;
        Ok(Self { _thread: thread })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::process::Service;

    fn named(name: &str) -> ProcessIdentity {
        ProcessIdentity {
            executable: "python3".into(),
            service: Service::named(name),
            incomplete: false,
        }
    }

    #[test]
    fn a_name_is_taken_once() {
        let names = EarlyNames::default();
        names.insert(7, named("checkout"), Instant::now());
        assert_eq!(names.peek(7).unwrap().service.name, "checkout");
        assert_eq!(names.take(7).unwrap().service.name, "checkout");
        assert!(names.take(7).is_none());
    }

    #[test]
    fn a_second_exec_renames() {
        let names = EarlyNames::default();
        let start = Instant::now();
        names.insert(7, named("sh"), start);
        names.insert(7, named("app"), start + Duration::from_millis(1));
        assert_eq!(names.take(7).unwrap().service.name, "app");
    }

    #[test]
    fn old_names_expire_and_the_count_is_bounded() {
        let names = EarlyNames::default();
        let start = Instant::now();
        names.insert(1, named("old"), start);
        names.insert(2, named("new"), start + MAX_AGE + Duration::from_secs(1));
        assert!(names.peek(1).is_none());
        assert!(names.peek(2).is_some());
        for tgid in 0..(CAPACITY as u32 + 100) {
            names.insert(
                10 + tgid,
                named("x"),
                start + MAX_AGE + Duration::from_secs(2),
            );
        }
        assert_eq!(names.len(), CAPACITY);
        assert!(names.peek(10).is_none(), "the oldest went first");
    }

    #[test]
    fn a_rename_survives_the_expiry_of_the_first_name() {
        let names = EarlyNames::default();
        let start = Instant::now();
        names.insert(7, named("sh"), start);
        names.insert(7, named("app"), start + MAX_AGE);
        names.insert(8, named("other"), start + MAX_AGE + Duration::from_secs(1));
        assert_eq!(names.peek(7).unwrap().service.name, "app");
    }
}
