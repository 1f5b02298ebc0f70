//! Map entries made inside the scheduler's hooks. The maps of per-process CPU time and
//! run-queue waits get an entry for each new process, made in `sched_switch` and
//! `sched_wakeup`, where the kernel holds a run queue's lock. Before Linux 6.1 a hash map made
//! that entry with the general allocators, which may wake a worker, and so take a run queue's
//! lock again: the kernel warns that "trace type programs with run-time allocated hash maps
//! are unsafe", and Debian 11's 5.10 deadlocked under the agent (both CPUs spinning on a
//! lock). 6.1's allocator for BPF (`bpf_mem_alloc`) made it safe. On older kernels those
//! maps are preallocated instead: a copy of the object, whose map definitions lose
//! `BPF_F_NO_PREALLOC`, is loaded, and their sizes are capped (`PREALLOCATED_RUNQ_ENTRIES`),
//! since preallocated per-CPU entries take their memory for every CPU up front.

use std::path::Path;

use anyhow::{Result, bail};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use super::task_offsets::open_btf;
use crate::preflight::release_older_than;

/// The maps the scheduler's programs add entries to (`monitor-ebpf/src/maps.rs`).
pub const SCHEDULER_MAPS: &[&str] = &["CPU_TIME", "RUNQ_LATENCY", "PROCESS_META"];

/// Run-queue histograms (200 bytes per CPU each) kept when they are preallocated: 400 KiB per
/// CPU. Processes past it have their waits counted as dropped (`runq_full`).
pub const PREALLOCATED_RUNQ_ENTRIES: u32 = 2048;

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
        for name in SCHEDULER_MAPS.iter().chain(&["HTTP_DURATION"]) {
            assert_eq!(flags(object, name) & NO_PREALLOC, NO_PREALLOC, "{name}");
        }
        let copy = preallocated(object, SCHEDULER_MAPS).unwrap();
        assert_eq!(copy.bytes().len(), object.len());
        for name in SCHEDULER_MAPS {
            assert_eq!(flags(copy.bytes(), name) & NO_PREALLOC, 0, "{name}");
        }
        assert_eq!(
            flags(copy.bytes(), "HTTP_DURATION") & NO_PREALLOC,
            NO_PREALLOC
        );
        // Nothing else moved: the two differ in those bits alone.
        let changed = object
            .iter()
            .zip(copy.bytes())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, SCHEDULER_MAPS.len());
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
