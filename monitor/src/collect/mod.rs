//! Reads what the kernel programs wrote (maps) and what procfs says about processes.

pub mod execs;
pub mod http;
pub mod http_events;
pub mod identity;
pub mod measured_processes;
pub mod process;
pub mod process_memory;
pub mod sched;
pub mod sockets;

use std::{
    os::fd::RawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Map, MapData},
};

/// Occupancy of one map, for `monitor_bpf_map_entries`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapUsage {
    pub map: &'static str,
    pub entries: usize,
    pub capacity: u32,
}

pub fn usage(map: &'static str, entries: usize, capacity: u32) -> MapUsage {
    MapUsage {
        map,
        entries,
        capacity,
    }
}

/// Takes a map out of the loaded object, so the collector owns it.
pub fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
}

pub fn capacity(map: &MapData) -> u32 {
    map.info().map_or(0, |info| info.max_entries())
}

/// Blocks until the ring buffer behind `fd` has data or `timeout` passes.
pub fn wait_readable(fd: RawFd, timeout: Duration) {
    let mut fd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call. An error (EINTR) just returns.
    unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) };
}

/// How long dropping a [`ReaderThread`] waits for it to stop.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// A thread of the agent that reads shared memory and procfs only. Started while the agent
/// still holds what it needs to load programs, it gives the rest up first; then it runs
/// `step` until asked to stop, and is stopped and joined on drop (or left behind, if a step
/// does not return in time).
pub struct ReaderThread {
    what: String,
    stop: Arc<AtomicBool>,
    /// Disconnected when the thread ends.
    finished: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl ReaderThread {
    /// `step` runs again and again; it should wait for work a short while at most (the stop
    /// flag is looked at between two steps). `what` names the thread in errors and warnings.
    pub fn spawn(name: &str, what: &str, step: impl FnMut() + Send + 'static) -> Result<Self> {
        Self::spawn_keeping(name, what, &[], step)
    }

    /// [`Self::spawn`] for a thread that keeps `also`, where held, beside the run-time
    /// capabilities.
    pub fn spawn_keeping(
        name: &str,
        what: &str,
        also: &'static [caps::Capability],
        mut step: impl FnMut() + Send + 'static,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let (dropped_tx, dropped_rx) = mpsc::channel();
        let (finished_tx, finished) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Dropped however the thread ends, a panic included.
                let _finished = finished_tx;
                let dropped = crate::privileges::drop_in_this_thread(also);
                let failed = dropped.is_err();
                let _ = dropped_tx.send(dropped);
                if failed {
                    return;
                }
                while !stopped.load(Ordering::Relaxed) {
                    step();
                }
            })
            .with_context(|| format!("starting the {what} thread"))?;
        dropped_rx
            .recv()
            .with_context(|| format!("the {what} thread stopped at once"))?
            .with_context(|| format!("dropping the {what} thread's capabilities"))?;
        Ok(Self {
            what: what.into(),
            stop,
            finished,
            thread: Some(thread),
        })
    }

    /// Asks the thread to stop after its current step, without waiting for it.
    pub fn stop_soon(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for ReaderThread {
    fn drop(&mut self) {
        self.stop_soon();
        let Some(thread) = self.thread.take() else {
            return;
        };
        // A step can block for good (a procfs read of a process stuck on a hung NFS or FUSE
        // mount): the agent's shutdown does not wait for it, the thread ends with the process.
        match self.finished.recv_timeout(STOP_WAIT) {
            Err(mpsc::RecvTimeoutError::Timeout) => log::warn!(
                "the {} thread did not stop within {STOP_WAIT:?}; left behind",
                self.what
            ),
            _ => {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Runs `drop(reader)` on a thread of its own; whether it returned within `limit`.
    fn dropped_within(reader: ReaderThread, limit: Duration) -> bool {
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            drop(reader);
            let _ = done_tx.send(());
        });
        done_rx.recv_timeout(limit).is_ok()
    }

    #[test]
    fn a_reader_stuck_in_a_step_does_not_hold_up_its_drop() {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let reader = ReaderThread::spawn("stuck-reader", "stuck", move || {
            let _ = entered_tx.send(());
            // Blocks until the test ends (as a read of a hung mount would, for good).
            let _ = release_rx.recv();
        })
        .unwrap();
        entered_rx.recv().unwrap();
        let start = Instant::now();
        assert!(dropped_within(reader, Duration::from_secs(20)));
        assert!(start.elapsed() >= STOP_WAIT, "waited for it first");
        drop(release_tx);
    }

    #[test]
    fn a_reader_that_stops_is_joined() {
        let alive = Arc::new(());
        let held = alive.clone();
        let reader = ReaderThread::spawn("quick-reader", "quick", move || {
            let _held = &held;
            std::thread::yield_now();
        })
        .unwrap();
        assert!(dropped_within(reader, Duration::from_secs(20)));
        // The step (and what it holds) is gone: the thread ended before the drop returned.
        assert_eq!(Arc::strong_count(&alive), 1);
    }
}
