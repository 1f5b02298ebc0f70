//! Fingerprints of captured bytes. What the kernel learns from a request line or a head (the
//! route template, the server address, the response's framing) is a function of those bytes
//! alone, so a connection that sends the same bytes again can reuse what it learnt last time
//! instead of running the byte loops again: most keep-alive traffic repeats itself. Equal
//! fingerprints stand for equal bytes; the agent seeds them with a random number at start-up,
//! so that nobody outside can choose two byte strings that share one.

use crate::{
    head::{CAPTURE_WORDS, WORD, equal_bytes},
    http::CAPTURE_LEN,
};

/// Words of a request line looked at for the end of its target: paths of up to about 60
/// bytes get a fingerprint; longer ones are templated every time.
pub const TARGET_WORDS: usize = 8;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// 0x80 in each byte of `word` below `bound` (at most 0x80), exactly: the low seven bits plus
/// `0x80 - bound` reach bit 7 only from `bound` up, and never carry into the next byte.
#[inline(always)]
fn bytes_below(word: u64, bound: u8) -> u64 {
    let x = (word & LOW7).wrapping_add(ONES * (0x80 - bound as u64));
    !(x | word) & HIGH
}

/// 0x80 in each byte that ends a request target, as `RouteTemplater::feed` decides: a
/// control byte or space, `?`, `#` or DEL.
#[inline(always)]
fn target_end_bytes(word: u64) -> u64 {
    bytes_below(word, b' ' + 1)
        | equal_bytes(word, b'?')
        | equal_bytes(word, b'#')
        | equal_bytes(word, 0x7f)
}

/// The low `count` bytes of a word set, for `count` in 0..=8.
#[inline(always)]
fn low_bytes(count: usize) -> u64 {
    if count >= WORD {
        u64::MAX
    } else {
        (1u64 << (count * 8)) - 1
    }
}

#[inline(always)]
fn mix(hash: u64, word: u64) -> u64 {
    let hash = (hash ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    hash ^ (hash >> 29)
}

/// Never 0, which marks "no fingerprint" in a connection.
#[inline(always)]
fn nonzero(hash: u64) -> u64 {
    if hash == 0 { 1 } else { hash }
}

/// The fingerprint of a request line from its start to the end of its target, which starts
/// at `target`, when that end is among the `len` bytes read and in the first `TARGET_WORDS`
/// words. `word(i)` is the i-th little-endian word of the capture. The rest of the word the
/// target ends in counts too: it only makes a few equal targets look different.
#[inline(always)]
pub fn request_target(word: impl Fn(usize) -> u64, target: usize, len: usize, seed: u64) -> u64 {
    let mut hash = seed;
    let mut i = 0;
    while i < TARGET_WORDS {
        let start = i * WORD;
        if start >= len {
            return 0;
        }
        let w = word(i);
        hash = mix(hash, w);
        // Only bytes in target..len can end the target.
        let from = target.saturating_sub(start);
        let to = len - start;
        let allowed = low_bytes(to) & !low_bytes(from) & HIGH;
        if target_end_bytes(w) & allowed != 0 {
            return nonzero(mix(hash, i as u64));
        }
        i += 1;
    }
    0
}

/// The fingerprint of the first `len` bytes of the capture (at most `CAPTURE_LEN`).
#[inline(always)]
pub fn bytes(word: impl Fn(usize) -> u64, len: usize, seed: u64) -> u64 {
    let len = if len > CAPTURE_LEN { CAPTURE_LEN } else { len };
    let mut hash = seed;
    let mut i = 0;
    while i < CAPTURE_WORDS {
        let start = i * WORD;
        if start >= len {
            break;
        }
        hash = mix(hash, word(i) & low_bytes(len - start));
        i += 1;
    }
    nonzero(mix(hash, len as u64))
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;
    use crate::http::{Fed, RouteTemplater};

    const SEED: u64 = 0x1234_5678_9abc_def0;

    /// A capture as the kernel has it: `text`, then stale bytes (`fill`) up to CAPTURE_LEN.
    fn capture(text: &[u8], fill: u8) -> [u8; CAPTURE_LEN] {
        let mut bytes = [fill; CAPTURE_LEN];
        bytes[..text.len()].copy_from_slice(text);
        bytes
    }

    fn words(bytes: &[u8; CAPTURE_LEN]) -> impl Fn(usize) -> u64 + '_ {
        move |i| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap())
    }

    fn target_print(text: &[u8], fill: u8) -> u64 {
        let bytes = capture(text, fill);
        let target = text.iter().position(|&b| b == b' ').unwrap() + 1;
        request_target(words(&bytes), target, text.len(), SEED)
    }

    /// Where the templater stops reading a target.
    fn templater_end(text: &[u8], target: usize) -> usize {
        let mut templater = RouteTemplater::new();
        let mut at = target;
        while at < text.len() && templater.feed(text[at], &mut ()) == Fed::More {
            at += 1;
        }
        at
    }

    #[test]
    fn a_target_ends_where_the_templater_stops() {
        for end in [b' ', b'?', b'#', b'\r', b'\n', 0, 0x7f, b'\t'] {
            for path_len in 1..40 {
                let mut text: Vec<u8> = b"GET /".to_vec();
                text.extend((1..path_len).map(|i| b'a' + (i % 26) as u8));
                text.push(end);
                text.extend_from_slice(b"more HTTP/1.1\r\n");
                let bytes = capture(&text, b'x');
                let stop = templater_end(&text, 4);
                assert_eq!(stop, 4 + path_len, "end byte {end:#x}");
                // Cut one byte before the end, the target has not ended; at it, it has.
                let print = |len| request_target(words(&bytes), 4, len, SEED);
                assert_eq!(print(stop), 0, "end byte {end:#x}, path {path_len}");
                assert_ne!(print(stop + 1), 0, "end byte {end:#x}, path {path_len}");
            }
        }
    }

    #[test]
    fn bytes_before_the_target_never_end_it() {
        // The space after the method and the bytes of the method itself come before it.
        let bytes = capture(b"DELETE /items/7", 0);
        assert_eq!(request_target(words(&bytes), 7, 15, SEED), 0);
        assert_ne!(request_target(words(&bytes), 7, 16, SEED), 0); // the stale 0 ends it
    }

    #[test]
    fn no_false_end_after_a_real_one_or_from_high_bytes() {
        // `!` (0x21) right after a space, and bytes >= 0x80, are path bytes.
        let text = b"GET /a!\x80\xff\xa0!b/c HTTP/1.1\r\n";
        assert_eq!(templater_end(text, 4), 14);
        let bytes = capture(text, b'x');
        assert_eq!(request_target(words(&bytes), 4, 14, SEED), 0);
        assert_ne!(request_target(words(&bytes), 4, 15, SEED), 0);
    }

    #[test]
    fn targets_longer_than_the_words_looked_at_get_none() {
        let mut text = b"GET /".to_vec();
        text.extend(core::iter::repeat_n(b'a', TARGET_WORDS * 8));
        text.extend_from_slice(b" HTTP/1.1\r\n");
        assert_eq!(target_print(&text, 0), 0);
    }

    #[test]
    fn equal_targets_share_a_print_whatever_follows_their_word() {
        let a = target_print(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n", 0);
        let b = target_print(
            b"GET /hello HTTP/1.1\r\nHost: b\r\ntraceparent: 1\r\n\r\n",
            7,
        );
        assert_eq!(a, b);
        assert_ne!(a, 0);
    }

    #[test]
    fn different_targets_methods_and_seeds_differ() {
        let prints = [
            target_print(b"GET /hello HTTP/1.1\r\n", 0),
            target_print(b"GET /hellp HTTP/1.1\r\n", 0),
            target_print(b"GET /hello/ HTTP/1.1\r\n", 0),
            target_print(b"GET /hello?x=1 HTTP/1.1\r\n", 0),
            target_print(b"PUT /hello HTTP/1.1\r\n", 0),
            target_print(b"GET /users/1234567 HTTP/1.1\r\n", 0),
            target_print(b"GET /users/1234568 HTTP/1.1\r\n", 0),
        ];
        for (i, a) in prints.iter().enumerate() {
            for b in &prints[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let bytes = capture(b"GET /hello HTTP/1.1\r\n", 0);
        assert_ne!(
            request_target(words(&bytes), 4, 21, SEED),
            request_target(words(&bytes), 4, 21, SEED + 1)
        );
    }

    #[test]
    fn byte_prints_ignore_stale_bytes_and_see_every_read_byte() {
        let text = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nhello, world\n";
        let a = capture(text, 0);
        let b = capture(text, 0xee);
        for len in 0..=text.len() {
            assert_eq!(
                bytes(words(&a), len, SEED),
                bytes(words(&b), len, SEED),
                "{len}"
            );
            if len > 0 {
                assert_ne!(
                    bytes(words(&a), len, SEED),
                    bytes(words(&a), len - 1, SEED),
                    "{len}"
                );
            }
        }
        let mut changed = a;
        for at in 0..text.len() {
            changed[at] ^= 1;
            assert_ne!(
                bytes(words(&a), text.len(), SEED),
                bytes(words(&changed), text.len(), SEED),
                "byte {at}"
            );
            changed[at] ^= 1;
        }
        let full = capture(&[b'a'; CAPTURE_LEN], 0);
        assert_eq!(
            bytes(words(&full), CAPTURE_LEN, SEED),
            bytes(words(&full), CAPTURE_LEN + 100, SEED)
        );
    }
}
