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

use anyhow::{Result, anyhow};
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
pub fn wait_readable(fd: std::os::fd::RawFd, timeout: std::time::Duration) {
    let mut fd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call. An error (EINTR) just returns.
    unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) };
}
