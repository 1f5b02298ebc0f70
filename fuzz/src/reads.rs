//! Cutting an input into the reads (or writes) a socket could deliver it in.

/// Splits `bytes` into reads of at most `max` bytes. The seed picks how long reads may be
/// (1, 7, 16 or `max` bytes) and seeds their lengths, so the fuzzer explores cuts too.
pub fn split(bytes: &[u8], seed: u8, max: usize) -> Vec<&[u8]> {
    let longest = [1, 7, 16, max][usize::from(seed & 3)].clamp(1, max.max(1));
    let mut state = (u32::from(seed) + 1).wrapping_mul(0x9E37_79B9);
    let mut reads = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        // xorshift32
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = 1 + state as usize % longest;
        let (read, tail) = rest.split_at(len.min(rest.len()));
        reads.push(read);
        rest = tail;
    }
    reads
}

/// The first 16 bytes of a read as the kernel's capture holds them: zero-padded.
pub fn head16(read: &[u8]) -> [u8; 16] {
    let mut head = [0u8; 16];
    let n = read.len().min(16);
    head[..n].copy_from_slice(&read[..n]);
    head
}
