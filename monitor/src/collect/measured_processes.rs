//! `MEASURED_PROCESSES`: one bit per process that has had a tracked connection, which lets the
//! kernel skip the connection look-up for every other process's reads and writes; and
//! `SERVING_PROCESSES`, the same shape: processes that have served a connection, whose forked
//! children are followed. The agent
//! sets the bits of processes whose connections it adopts and clears those of processes that
//! have gone. The map is mapped into the agent's memory and changed with atomic operations:
//! a read-modify-write through the map syscalls could undo a bit the kernel set meanwhile.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Result, bail};
use aya::maps::{Map, MapData};
use monitor_common::http::{MEASURED_PROCESS_WORDS, measured_process_bit};

pub struct MeasuredProcesses {
    words: NonNull<AtomicU64>,
    len: usize,
    // Keeps the map (and so the mapping's object) open.
    _map: MapData,
}

// SAFETY: the mapping is shared memory changed only through atomics.
unsafe impl Send for MeasuredProcesses {}
unsafe impl Sync for MeasuredProcesses {}

impl MeasuredProcesses {
    /// Maps the bit array `map`, called `name` in errors.
    pub fn new(map: Map, name: &str) -> Result<Self> {
        let Map::Array(map) = map else {
            bail!("{name} is not an array map");
        };
        let len = MEASURED_PROCESS_WORDS as usize;
        let bytes = len * std::mem::size_of::<u64>();
        // SAFETY: a fresh shared mapping of the array's values (BPF_F_MMAPABLE), as long as
        // the array; nothing else in this process maps it.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            bail!(
                "cannot map {name} into memory: {}",
                std::io::Error::last_os_error()
            );
        }
        let Some(words) = NonNull::new(address.cast::<AtomicU64>()) else {
            bail!("mmap gave {name} a null address");
        };
        Ok(Self {
            words,
            len,
            _map: map,
        })
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: `len` words mapped in `new`, aligned (page-aligned start), alive with self.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr(), self.len) }
    }

    /// Sets the bit of `tgid`, before its connections are put in the connection table.
    pub fn mark(&self, tgid: u32) {
        let (word, bit) = measured_process_bit(tgid);
        if let Some(word) = self.words().get(word as usize) {
            word.fetch_or(bit, Ordering::SeqCst);
        }
    }

    pub fn is_marked(&self, tgid: u32) -> bool {
        let (word, bit) = measured_process_bit(tgid);
        self.words()
            .get(word as usize)
            .is_some_and(|word| word.load(Ordering::SeqCst) & bit != 0)
    }

    /// Clears the bits of processes that `alive` says are gone; returns how many stay set. A
    /// process that took a freed id in the meantime gets its bit back (it may have
    /// connections), so at worst its reads and writes of a few microseconds go unseen: that
    /// second look asks procfs again (`alive` may remember what it was told before).
    pub fn clear_gone(&self, alive: impl Fn(u32) -> bool) -> usize {
        clear_gone(self.words(), alive, super::process::is_alive)
    }
}

/// `MeasuredProcesses::clear_gone` on `words`, with `alive_now` for the second look.
fn clear_gone(
    words: &[AtomicU64],
    alive: impl Fn(u32) -> bool,
    alive_now: impl Fn(u32) -> bool,
) -> usize {
    let mut marked = 0;
    for (index, word) in words.iter().enumerate() {
        let mut bits = word.load(Ordering::Relaxed);
        while bits != 0 {
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            let tgid = index as u32 * 64 + bit;
            if alive(tgid) {
                marked += 1;
                continue;
            }
            word.fetch_and(!(1 << bit), Ordering::SeqCst);
            if alive_now(tgid) {
                word.fetch_or(1 << bit, Ordering::SeqCst);
                marked += 1;
            }
        }
    }
    marked
}

impl Drop for MeasuredProcesses {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unused from here on.
        unsafe {
            libc::munmap(
                self.words.as_ptr().cast(),
                self.len * std::mem::size_of::<u64>(),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_processes_lose_their_bit_unless_their_id_was_taken_meanwhile() {
        let words: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
        // 3 lives; 5 and 70 were found gone; 70's id was taken again since.
        for tgid in [3u32, 5, 70] {
            words[tgid as usize / 64].fetch_or(1 << (tgid % 64), Ordering::SeqCst);
        }
        let marked = clear_gone(&words, |tgid| tgid == 3, |tgid| tgid == 70);
        assert_eq!(marked, 2);
        assert_eq!(words[0].load(Ordering::SeqCst), 1 << 3);
        assert_eq!(words[1].load(Ordering::SeqCst), 1 << 6);
    }
}
