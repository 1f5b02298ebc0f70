//! Clearing memory a word at a time, for the kernel programs. The BPF target has no `memset`
//! of its own: LLVM calls one compiled from compiler-builtins, which stores one byte per loop
//! iteration (five instructions a byte), so a struct cleared on a hot path cost hundreds of
//! instructions. Harmless on the host.

/// Zeroes `value` with 8-byte stores. Volatile, so LLVM cannot merge them back into a
/// `memset` call.
#[inline(always)]
pub fn zero_words<T>(value: &mut T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8) };
    let words = (value as *mut T).cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: `i` words in, inside `value`, which is 8-aligned.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
}
