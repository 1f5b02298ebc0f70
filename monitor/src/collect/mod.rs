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

/// A thread of the agent that reads shared memory and procfs only. Started while the agent
/// still holds what it needs to load programs, it gives the rest up first; then it runs
/// `step` until asked to stop, and is stopped and joined on drop.
pub struct ReaderThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ReaderThread {
    /// `step` runs again and again; it should wait for work a short while at most (the stop
    /// flag is looked at between two steps). `what` names the thread in errors.
    pub fn spawn(name: &str, what: &str, mut step: impl FnMut() + Send + 'static) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let (dropped_tx, dropped_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let dropped = crate::privileges::drop_in_this_thread();
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
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ReaderThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
