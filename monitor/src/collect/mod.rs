//! Reads what the kernel programs wrote (maps) and what procfs says about processes.

pub mod execs;
pub mod http;
pub mod identity;
pub mod measured_processes;
pub mod process;
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
