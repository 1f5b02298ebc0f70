//! Map entries made inside the programs. The maps of per-process CPU time and run-queue waits
//! get an entry for each new process, made in `sched_switch` and `sched_wakeup`, where the
//! kernel holds a run queue's lock. Before Linux 6.1 a hash map made that entry with the
//! general allocators, which may wake a worker, and so take a run queue's lock again: the
//! kernel warns (a `WARN_ONCE`, with a stack trace in its log, a panic where `panic_on_warn`
//! is set) that "trace type programs with run-time allocated hash maps are unsafe" whenever
//! a tracing program uses such a map, the HTTP programs' too, refuses it to a perf_event
//! program (the idle sweep), and Debian 11's 5.10 deadlocked under the agent (both CPUs
//! spinning on a lock). 6.1's allocator for BPF (`bpf_mem_alloc`) made it safe. On older
//! kernels those maps are preallocated instead: a copy of the object, whose map definitions
//! lose `BPF_F_NO_PREALLOC`, is loaded, and the largest are capped
//! (`PREALLOCATED_RUNQ_ENTRIES`, `preallocated_duration_entries`), since preallocated per-CPU
//! entries take their memory for every CPU up front.

use std::path::Path;

use anyhow::{Result, bail};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use monitor_common::http::DurationHistogram;

use super::task_offsets::open_btf;
use crate::preflight::release_older_than;

/// The maps the programs add entries to (`monitor-ebpf/src/maps.rs`, every one defined with
/// `BPF_F_NO_PREALLOC`): the scheduler's, and the HTTP programs' histograms, routes, hosts and
/// error counts.
pub const RUN_TIME_ALLOCATED_MAPS: &[&str] = &[
    "CPU_TIME",
    "RUNQ_LATENCY",
    "PROCESS_META",
    "HTTP_DURATION",
    "ROUTES_SEEN",
    "ROUTE_COUNT",
    "HOSTS_SEEN",
    "HOST_COUNT",
    "CLIENT_ERRORS",
    "CONNECT_ERRORS",
];

/// Run-queue histograms (200 bytes per CPU each) kept when they are preallocated: 400 KiB per
/// CPU. Processes past it have their waits counted as dropped (`runq_full`).
pub const PREALLOCATED_RUNQ_ENTRIES: u32 = 2048;

/// Memory for the duration histograms when they are preallocated, on all CPUs together.
const PREALLOCATED_DURATION_BYTES: u64 = 32 << 20;

/// Duration histograms kept when they are preallocated: as many as `PREALLOCATED_DURATION_BYTES`
/// hold on `cpus` CPUs (each histogram is per CPU), between 512 and `entries`, the size the
/// map has when it allocates as it goes. Keys past them are counted as dropped
/// (`histogram_full`), as when that map is full.
pub fn preallocated_duration_entries(entries: u32, cpus: usize) -> u32 {
    let per_key = (size_of::<DurationHistogram>() as u64).next_multiple_of(8) * cpus.max(1) as u64;
    let fit = (PREALLOCATED_DURATION_BYTES / per_key).max(512);
    fit.min(u64::from(entries)) as u32
}

/// `BPF_F_NO_PREALLOC`.
const NO_PREALLOC: u32 = 1;

/// Where `map_flags` is in a legacy map definition (`struct bpf_map_def`: type, key size,
/// value size, max entries, flags, ...), which aya-ebpf's maps are.
const FLAGS_OFFSET: usize = 16;

/// Whether this kernel's hash maps may allocate entries inside tracing programs: its BTF has
/// `struct bpf_mem_alloc` (Linux 6.1, or a backport); without BTF, its release says.
pub fn safe_in_tracing(btf: &Path, release: &str) -> bool {
    match open_btf(btf) {
        Ok(btf) => btf
            .resolve_ids_by_name("bpf_mem_alloc")
            .is_ok_and(|ids| !ids.is_empty()),
        Err(_) => !release_older_than(release, (6, 1)),
    }
}

/// A copy of the object, 8-byte aligned as the ELF parser needs it.
pub struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }
}

/// A copy of `object` whose maps named in `maps` are preallocated; an error if one of them is
/// not a map definition of the object.
pub fn preallocated(object: &[u8], maps: &[&str]) -> Result<AlignedObject> {
    let mut positions = Vec::new();
    let file = object::File::parse(object)?;
    for name in maps {
        let Some(symbol) = file.symbols().find(|symbol| symbol.name() == Ok(name)) else {
            bail!("map {name} not found in the BPF object");
        };
        let Some(section) = symbol
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
        else {
            bail!("map {name} has no section");
        };
        let (section_offset, _) = section
            .file_range()
            .ok_or_else(|| anyhow::anyhow!("map {name}'s section has no data"))?;
        let at = (section_offset + symbol.address() - section.address()) as usize + FLAGS_OFFSET;
        if section.name() != Ok("maps") || symbol.size() < FLAGS_OFFSET as u64 + 4 {
            bail!("{name} is not a map definition");
        }
        positions.push(at);
    }
    let mut words = vec![0u64; object.len().div_ceil(8)];
    let len = object.len();
    // SAFETY: `words` holds at least `len` bytes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) };
    bytes.copy_from_slice(object);
    for at in positions {
        let flags = u32::from_le_bytes(bytes[at..at + 4].try_into()?);
        bytes[at..at + 4].copy_from_slice(&(flags & !NO_PREALLOC).to_le_bytes());
    }
    Ok(AlignedObject { words, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags of map `name` in `object`.
    fn flags(object: &[u8], name: &str) -> u32 {
        let file = object::File::parse(object).unwrap();
        let symbol = file.symbols().find(|s| s.name() == Ok(name)).unwrap();
        let section = file
            .section_by_index(symbol.section_index().unwrap())
            .unwrap();
        let data = section.data().unwrap();
        let at = (symbol.address() - section.address()) as usize + FLAGS_OFFSET;
        u32::from_le_bytes(data[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn the_named_maps_alone_lose_no_prealloc() {
        let object = super::super::BPF_OBJECT;
        let named = ["CPU_TIME", "HTTP_DURATION"];
        for name in named {
            assert_eq!(flags(object, name) & NO_PREALLOC, NO_PREALLOC, "{name}");
        }
        let copy = preallocated(object, &named).unwrap();
        assert_eq!(copy.bytes().len(), object.len());
        for name in named {
            assert_eq!(flags(copy.bytes(), name) & NO_PREALLOC, 0, "{name}");
        }
        assert_eq!(
            flags(copy.bytes(), "ROUTES_SEEN") & NO_PREALLOC,
            NO_PREALLOC
        );
        // Nothing else moved: the two differ in those bits alone.
        let changed = object
            .iter()
            .zip(copy.bytes())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, named.len());
    }

    /// The names of the maps defined in `object`'s `maps` section.
    fn map_names(object: &[u8]) -> Vec<String> {
        let file = object::File::parse(object).unwrap();
        file.symbols()
            .filter(|symbol| {
                symbol
                    .section_index()
                    .and_then(|i| file.section_by_index(i).ok())
                    .is_some_and(|section| section.name() == Ok("maps"))
                    && symbol.size() >= FLAGS_OFFSET as u64 + 4
            })
            .filter_map(|symbol| symbol.name().ok().map(str::to_owned))
            .collect()
    }

    #[test]
    fn every_map_that_allocates_at_run_time_is_listed() {
        use crate::probes::{loops::Loops, object_for};
        for loops in [Loops::Helper, Loops::Bounded] {
            let object = object_for(loops);
            let names = map_names(object);
            assert!(names.len() > 20, "{names:?}");
            let copy = preallocated(object, RUN_TIME_ALLOCATED_MAPS).unwrap();
            let left: Vec<_> = names
                .iter()
                .filter(|name| flags(copy.bytes(), name) & NO_PREALLOC != 0)
                .collect();
            assert!(
                left.is_empty(),
                "{loops:?}: still allocated at run time: {left:?}"
            );
        }
    }

    #[test]
    fn the_duration_map_is_as_large_as_the_agent_takes_it_to_be() {
        let file = object::File::parse(super::super::BPF_OBJECT).unwrap();
        let symbol = file
            .symbols()
            .find(|s| s.name() == Ok("HTTP_DURATION"))
            .unwrap();
        let section = file
            .section_by_index(symbol.section_index().unwrap())
            .unwrap();
        // `struct bpf_map_def`: type, key size, value size, then max entries.
        let at = (symbol.address() - section.address()) as usize + 12;
        let max_entries =
            u32::from_le_bytes(section.data().unwrap()[at..at + 4].try_into().unwrap());
        assert_eq!(max_entries, super::super::HTTP_DURATION_ENTRIES);
    }

    #[test]
    fn preallocated_histograms_fit_their_memory_on_every_cpu() {
        // 272 bytes a histogram per CPU: 32 MiB hold the whole map on a few CPUs, fewer
        // keys on many, and never fewer than 512.
        assert_eq!(preallocated_duration_entries(16384, 2), 16384);
        assert_eq!(preallocated_duration_entries(16384, 64), 1927);
        assert_eq!(preallocated_duration_entries(16384, 1024), 512);
        assert_eq!(preallocated_duration_entries(300, 1024), 300);
    }

    #[test]
    fn a_name_that_is_no_map_is_an_error() {
        let object = super::super::BPF_OBJECT;
        assert!(preallocated(object, &["NO_SUCH_MAP"]).is_err());
        // A program is a symbol too, but not a map definition.
        assert!(preallocated(object, &["sys_exit_btf"]).is_err());
    }

    #[test]
    fn this_kernel_is_judged_by_its_btf_or_its_release() {
        let missing = Path::new("/nonexistent/btf");
        assert!(!safe_in_tracing(missing, "5.10.0-32-amd64"));
        assert!(safe_in_tracing(missing, "6.1.0-57-amd64"));
        // This machine's 6.18 has the allocator.
        if Path::new(super::super::task_offsets::KERNEL_BTF).exists() {
            assert!(safe_in_tracing(
                Path::new(super::super::task_offsets::KERNEL_BTF),
                "0.0"
            ));
        }
    }
}
