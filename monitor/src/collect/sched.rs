//! Reads the scheduler maps: on-CPU time, run-queue histograms and names per process, and frees
//! the entries of processes the model has retired.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap, IterableMap as _, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
};
use monitor_common::sched::{ProcessMeta, RUNQ_BUCKETS, RunqHistogram, errors};

use super::{MapUsage, capacity, take, usage};

/// Run-queue delays of one process, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunqCounts {
    pub buckets: [u64; RUNQ_BUCKETS],
    pub sum_ns: u64,
}

impl RunqCounts {
    fn add(&mut self, histogram: &RunqHistogram) {
        for (total, count) in self.buckets.iter_mut().zip(histogram.buckets) {
            *total += count;
        }
        self.sum_ns += histogram.sum_ns;
    }
}

/// What the kernel holds about one process, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessSample {
    pub cpu_ns: u64,
    pub runq: RunqCounts,
    pub meta: Option<ProcessMeta>,
}

#[derive(Clone, Debug, Default)]
pub struct SchedSnapshot {
    pub processes: BTreeMap<u32, ProcessSample>,
    /// Events the kernel could not record, indexed as `monitor_common::sched::errors`.
    pub dropped: [u64; errors::COUNT as usize],
    pub maps: Vec<MapUsage>,
}

pub struct SchedMaps {
    cpu_time: PerCpuHashMap<MapData, u32, u64>,
    runq: PerCpuHashMap<MapData, u32, RunqHistogram>,
    meta: HashMap<MapData, u32, ProcessMeta>,
    errors: PerCpuArray<MapData, u64>,
}

impl SchedMaps {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            cpu_time: take(ebpf, "CPU_TIME")?.try_into()?,
            runq: take(ebpf, "RUNQ_LATENCY")?.try_into()?,
            meta: take(ebpf, "PROCESS_META")?.try_into()?,
            errors: take(ebpf, "SCHED_ERRORS")?.try_into()?,
        })
    }

    pub fn read(&self) -> Result<SchedSnapshot> {
        let mut snapshot = SchedSnapshot::default();
        let mut cpu_entries = 0;
        for entry in self.cpu_time.iter() {
            let (tgid, per_cpu) = entry.context("reading CPU_TIME")?;
            snapshot.processes.entry(tgid).or_default().cpu_ns = sum(&per_cpu);
            cpu_entries += 1;
        }
        let mut runq_entries = 0;
        for entry in self.runq.iter() {
            let (tgid, per_cpu) = entry.context("reading RUNQ_LATENCY")?;
            let runq = &mut snapshot.processes.entry(tgid).or_default().runq;
            per_cpu.iter().for_each(|histogram| runq.add(histogram));
            runq_entries += 1;
        }
        // Names last: the kernel names a process (at exec, or with its first CPU time) before
        // its CPU time can be read, so every process read above is named below; names read
        // first would miss a process that started in between, and one that lived a few
        // milliseconds could not be named from procfs any more.
        let mut meta_entries = 0;
        for entry in self.meta.iter() {
            let (tgid, meta) = entry.context("reading PROCESS_META")?;
            snapshot.processes.entry(tgid).or_default().meta = Some(meta);
            meta_entries += 1;
        }
        for (reason, total) in snapshot.dropped.iter_mut().enumerate() {
            let per_cpu = self
                .errors
                .get(&(reason as u32), 0)
                .context("reading SCHED_ERRORS")?;
            *total = sum(&per_cpu);
        }
        snapshot.maps = vec![
            usage("CPU_TIME", cpu_entries, capacity(self.cpu_time.map())),
            usage("RUNQ_LATENCY", runq_entries, capacity(self.runq.map())),
            usage("PROCESS_META", meta_entries, capacity(self.meta.map())),
        ];
        Ok(snapshot)
    }

    /// Frees the entries of a process whose final values the model has taken.
    pub fn forget(&mut self, tgid: u32) {
        // ENOENT is fine: not every process has an entry in every map.
        let _ = self.cpu_time.remove(&tgid);
        let _ = self.runq.remove(&tgid);
        let _ = self.meta.remove(&tgid);
    }
}

fn sum(per_cpu: &PerCpuValues<u64>) -> u64 {
    per_cpu.iter().sum()
}
