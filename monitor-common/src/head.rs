//! HTTP/1.x heads as the kernel reads them from a capture: the `Host` of a request and the
//! framing of a response.
//!
//! Only the first bytes of a header line say whether it matters, so the head is not read byte
//! by byte: `HeadLines` finds the line breaks a word (8 bytes) at a time and looks at the start
//! of each line; then only the one value that matters is read byte by byte (`HostValue`,
//! `HeadLines::length_byte`). The kernel runs each step in a `bpf_loop` callback with the
//! state in map memory; the host tests run the same steps in a plain loop (`scan_head`).

use crate::http::{CAPTURE_LEN, FNV_OFFSET, fnv};

/// Most bytes of a `Host` value kept.
pub const MAX_HOST_LEN: usize = 64;
/// Bytes per word of the capture.
pub const WORD: usize = 8;
/// Words in a capture.
pub const CAPTURE_WORDS: usize = CAPTURE_LEN / WORD;
/// Most words one step of `HeadLines` loads while they hold no line break (each step is a
/// callback in the kernel: fewer steps, less call overhead).
const WORDS_PER_STEP: usize = 4;

/// What a head is read for.
pub mod head_kind {
    /// A request: where its first `Host` value starts.
    pub const REQUEST: u32 = 0;
    /// A response: its length and framing headers, and where the head ends.
    pub const RESPONSE: u32 = 1;
}

/// How a response's body is delimited.
pub mod framing {
    /// Not known (yet): the head was longer than what was scanned.
    pub const UNKNOWN: u16 = 0;
    /// `Content-Length` bytes.
    pub const LENGTH: u16 = 1;
    /// `Transfer-Encoding: chunked`: ends with a zero-size chunk.
    pub const CHUNKED: u16 = 2;
    /// Until the connection closes.
    pub const CLOSE: u16 = 3;
}

/// 0x80 in each byte of `word` equal to `value`, 0 in the others. Exact: unlike the shorter
/// "has zero byte" trick, no borrow marks a byte after a real match.
#[inline(always)]
pub fn equal_bytes(word: u64, value: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // Bytes that were `value` are zero here; a zero byte is the only one whose low seven
    // bits plus 0x7f do not carry into bit 7 and whose own bit 7 is clear.
    let x = word ^ (0x0101_0101_0101_0101 * value as u64);
    !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
}

/// 0x80 in each byte of `word` that is `\n`, 0 in the others.
#[inline(always)]
pub fn newline_bytes(word: u64) -> u64 {
    equal_bytes(word, b'\n')
}

/// Index (0..8, little-endian) of the lowest byte marked in non-zero `newline_bytes` output.
#[inline(always)]
pub fn lowest_marked_byte(marks: u64) -> u32 {
    // The lowest mark alone is 1 << (8k + 7); shifted down, 1 << 8k. Multiplying by a
    // constant whose byte 7 - k is k brings k to the top byte.
    let lowest = marks & marks.wrapping_neg();
    ((lowest >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as u32
}

/// Whether the header line at `start` has `name` (lower case, with its `:`), in any case.
#[inline(always)]
fn has_name(bytes: &[u8; CAPTURE_LEN], len: usize, start: usize, name: &[u8]) -> bool {
    if start + name.len() > len {
        return false;
    }
    let mut i = 0;
    while i < name.len() {
        if bytes[(start + i) & (CAPTURE_LEN - 1)].to_ascii_lowercase() != name[i] {
            return false;
        }
        i += 1;
    }
    true
}

const HOST: &[u8] = b"host:";
const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";

/// Walks the header lines of a captured head, one step at a time: a step either loads the
/// next word and marks its line breaks, or looks at the start of one line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeadLines {
    /// Bytes captured (at most `CAPTURE_LEN`); bytes past them are stale.
    len: u32,
    /// `head_kind::*`.
    kind: u32,
    /// The next word to load.
    next_word: u32,
    /// Offset of the word loaded last.
    word_at: u32,
    /// Line breaks of that word not looked at yet (`newline_bytes`).
    pending: u64,
    /// Where the head ends (after its blank line), once found; else 0.
    pub head_len: u32,
    /// Request: where the value of the first `Host` line starts; 0 without one.
    pub host_at: u32,
    /// Response: where the value of the last `Content-Length` line starts; 0 without one.
    pub length_at: u32,
    /// Response: a `Transfer-Encoding` line was seen (any coding but `identity` ends with
    /// `chunked` in HTTP/1.1).
    pub chunked: u32,
    /// Response: the value at `length_at`, as `length_byte` reads it.
    pub content_length: u64,
    /// 1 once a digit of that value was read.
    has_length: u32,
    /// Where the last line looked at starts (the status line: 0): a head that goes on past
    /// the capture is read on from there (`LongHead`).
    last_line_at: u32,
}

impl HeadLines {
    pub fn new(kind: u32, len: usize) -> Self {
        let mut lines = Self::default();
        lines.begin(kind, len);
        lines
    }

    /// A walk over `len` captured bytes, from a zeroed value (the kernel clears the map value
    /// a word at a time instead of building one on its small stack).
    pub fn begin(&mut self, kind: u32, len: usize) {
        self.kind = kind;
        self.len = len.min(CAPTURE_LEN) as u32;
    }

    /// One step; false once there is nothing more to learn. `word(i)` is the capture's
    /// `i`-th 8-byte word, little-endian (the kernel loads it in one instruction).
    #[inline(always)]
    pub fn step(&mut self, bytes: &[u8; CAPTURE_LEN], word: impl Fn(usize) -> u64) -> bool {
        let len = self.len as usize;
        if self.pending == 0 {
            // Up to WORDS_PER_STEP words until one has a line break: most have none.
            let mut i = 0;
            while i < WORDS_PER_STEP && self.pending == 0 {
                let at = self.next_word as usize * WORD;
                if at >= len {
                    return false; // no blank line in the capture
                }
                // A stale `\n` past the capture starts a line at or past `len`, which ends
                // the walk.
                self.pending = newline_bytes(word(self.next_word as usize & (CAPTURE_WORDS - 1)));
                self.word_at = at as u32;
                self.next_word += 1;
                i += 1;
            }
            return true;
        }
        let start = self.word_at as usize + lowest_marked_byte(self.pending) as usize + 1;
        self.pending &= self.pending - 1;
        self.line(bytes, start)
    }

    /// A line starts at `start`; false once there is nothing more to learn.
    #[inline(always)]
    fn line(&mut self, bytes: &[u8; CAPTURE_LEN], start: usize) -> bool {
        let len = self.len as usize;
        if start >= len {
            return false; // the capture ends with a line break: the head goes on past it
        }
        self.last_line_at = start as u32;
        let at = |i: usize| bytes[i & (CAPTURE_LEN - 1)];
        if at(start) == b'\r' {
            // `\r\n\r\n`: the previous line ended with `\r\n` and this one is empty.
            if start + 1 < len && at(start + 1) == b'\n' && start >= 2 && at(start - 2) == b'\r' {
                self.head_len = (start + 2) as u32;
                return false;
            }
            return true;
        }
        if self.kind == head_kind::REQUEST {
            if has_name(bytes, len, start, HOST) {
                self.host_at = (start + HOST.len()) as u32;
                return false; // the first Host counts
            }
        } else if has_name(bytes, len, start, CONTENT_LENGTH) {
            self.length_at = (start + CONTENT_LENGTH.len()) as u32;
        } else if has_name(bytes, len, start, TRANSFER_ENCODING) {
            self.chunked = 1;
        }
        true
    }

    /// Takes the next byte of the `Content-Length` value; false at its end. Blanks are
    /// skipped; anything else ends it.
    #[inline(always)]
    pub fn length_byte(&mut self, b: u8) -> bool {
        if b.is_ascii_digit() {
            // Capped instead of saturating_mul, which needs 128-bit arithmetic the BPF target
            // lacks; no body is a petabyte.
            if self.content_length < 100_000_000_000_000 {
                self.content_length = self.content_length * 10 + (b - b'0') as u64;
            }
            self.has_length = 1;
            true
        } else {
            b == b' ' || b == b'\t'
        }
    }

    /// How the body is delimited, once the head has ended and the length value was read.
    pub fn framing(&self) -> u16 {
        framing_of(self.head_len, self.chunked, self.has_length)
    }
}

/// How a body is delimited, from what its head said: nothing until the head has ended
/// (`head_len` 0), then chunked over a length over the close.
#[inline(always)]
fn framing_of(head_len: u32, chunked: u32, has_length: u32) -> u16 {
    if head_len == 0 {
        framing::UNKNOWN
    } else if chunked != 0 {
        framing::CHUNKED
    } else if has_length != 0 {
        framing::LENGTH
    } else {
        framing::CLOSE
    }
}

/// Captures of a response's first read its head is looked for in: heads with many or long
/// headers (cookies, security policies, CORS) run past the first.
pub const HEAD_WINDOWS: u32 = 8;

/// A response head read over several captures ("windows") of one read. Each window after the
/// first starts two bytes before the last line the previous one looked at, so that every
/// header line is whole in some window (the line's `\r\n` before it, for the blank-line
/// test) unless it is longer than a window; past such a line, the next window starts four
/// bytes before the previous one's end. Offsets here are from the start of the read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LongHead {
    /// Where the window being read starts.
    pub window_at: u32,
    /// Where the head ends, once found; else 0.
    pub head_len: u32,
    pub chunked: u32,
    /// 1 once a `Content-Length` value with a digit was read.
    pub has_length: u32,
    pub content_length: u64,
}

impl LongHead {
    /// Takes what the walk of the window at `window_at` (`window_len` bytes) found, after its
    /// `Content-Length` value was read (`HeadLines::length_byte`); returns where the next
    /// window starts, `None` once the head has ended or no window can follow (`window_len`
    /// short of a whole capture: the read ended there).
    pub fn absorb(&mut self, lines: &HeadLines, window_len: usize) -> Option<u32> {
        if lines.length_at != 0 {
            // The last line of a window may be cut: the next window reads it again.
            self.has_length = lines.has_length;
            self.content_length = lines.content_length;
        }
        self.chunked |= lines.chunked;
        if lines.head_len != 0 {
            self.head_len = self.window_at + lines.head_len;
            return None;
        }
        if window_len < CAPTURE_LEN {
            return None;
        }
        let advance = if lines.last_line_at > 2 {
            lines.last_line_at - 2
        } else {
            (CAPTURE_LEN - 4) as u32 // inside a line longer than the window
        };
        self.window_at += advance;
        Some(self.window_at)
    }

    /// As `HeadLines::framing`, for the whole head.
    pub fn framing(&self) -> u16 {
        framing_of(self.head_len, self.chunked, self.has_length)
    }
}

/// The value of a `Host` line, normalised: lower case, no blanks around it, and the port
/// dropped when it is 80 or 443 (`Example.com:80` -> `example.com`). The hash is of the
/// normalised text, which `host` holds (up to `MAX_HOST_LEN` bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostValue {
    /// Position of the last `:` in the value (a port follows), 0 if none; `[...]` excepted.
    colon: u16,
    in_brackets: u16,
    /// Bytes of `host` kept.
    pub len: u16,
    /// `len` without trailing blanks.
    end: u16,
    pub host: [u8; MAX_HOST_LEN],
}

impl Default for HostValue {
    fn default() -> Self {
        Self::new()
    }
}

impl HostValue {
    pub const fn new() -> Self {
        Self {
            colon: 0,
            in_brackets: 0,
            len: 0,
            end: 0,
            host: [0; MAX_HOST_LEN],
        }
    }

    /// Empty again, for the next value: bytes past `len` are never read.
    #[inline(always)]
    pub fn clear(&mut self) {
        self.colon = 0;
        self.in_brackets = 0;
        self.len = 0;
        self.end = 0;
    }

    /// Takes the next byte after `Host:`; false at the line's end or once the value is full.
    #[inline(always)]
    pub fn feed(&mut self, b: u8) -> bool {
        let len = self.len as usize;
        match b {
            b'\r' | b'\n' => return false,
            b' ' | b'\t' if len == 0 => return true,
            _ => {}
        }
        if len >= MAX_HOST_LEN {
            return false;
        }
        match b {
            b'[' => self.in_brackets = 1,
            b']' => self.in_brackets = 0,
            b':' if self.in_brackets == 0 => self.colon = len as u16,
            _ => {}
        }
        self.host[len] = b.to_ascii_lowercase();
        self.len += 1;
        if b != b' ' && b != b'\t' {
            self.end = self.len;
        }
        true
    }

    /// The normalised host's length: without trailing blanks, `:80` or `:443`; 0 when there
    /// is no value.
    #[inline(always)]
    pub fn normalised_len(&self) -> usize {
        let len = self.end as usize;
        let colon = self.colon as usize;
        if colon == 0 || colon >= len || len > MAX_HOST_LEN {
            return len;
        }
        let port_len = len - colon - 1;
        // Each byte bounded by a check of its own (`verifier::hide`): `colon < len <=
        // MAX_HOST_LEN` is a proof older verifiers cannot follow.
        let hidden = crate::verifier::hide(colon as u64) as usize;
        let port = |i: usize| self.host.get(hidden + 1 + i).copied().unwrap_or(0);
        let default_port = match port_len {
            2 => port(0) == b'8' && port(1) == b'0',
            3 => port(0) == b'4' && port(1) == b'4' && port(2) == b'3',
            _ => false,
        };
        if default_port { colon } else { len }
    }

    /// FNV-1a of the normalised host, 0 when there is none.
    #[inline(always)]
    pub fn hash(&self) -> u64 {
        let len = self.normalised_len();
        if len == 0 {
            return 0;
        }
        let mut hash = FNV_OFFSET;
        let mut i = 0;
        while i < len && i < MAX_HOST_LEN {
            hash = fnv(hash, self.host[i]);
            i += 1;
        }
        hash
    }
}

/// Whether a chunked body's last bytes (`last`: the last eight read, the latest lowest) end
/// it: the line break that ends the head or the last chunk's data, the zero-size chunk, and
/// the empty line after it (no trailer).
#[inline(always)]
pub const fn ends_with_last_chunk(last: u64) -> bool {
    const END: u64 = u64::from_be_bytes(*b"\0\r\n0\r\n\r\n");
    const MASK: u64 = (1 << 56) - 1;
    last & MASK == END
}

/// Whether a chunked body's last bytes (`last`: the last eight read, the latest lowest) end
/// with an empty line: where trailer fields after the last chunk end (the zero-size chunk's
/// terminator, which the kernel looks for, comes before them, so it never matches). A chunk
/// whose data ends in a line break ends so too, so this is taken for the end only at the
/// close, when nothing follows.
#[inline(always)]
pub const fn ends_with_empty_line(last: u64) -> bool {
    last & 0xFFFF_FFFF == u32::from_be_bytes(*b"\r\n\r\n") as u64
}

/// Whether a response with this status (to a request with this method) has no body.
pub fn bodiless(status: u16, head_request: bool) -> bool {
    head_request || (100..200).contains(&status) || status == 204 || status == 304
}

/// A head read the way the kernel reads it, in plain loops: the line walk, then the value
/// that matters. For the host's tests and the fuzz targets.
#[cfg(any(test, feature = "user"))]
pub fn scan_head(kind: u32, capture: &[u8]) -> (HeadLines, HostValue) {
    let mut bytes = [0u8; CAPTURE_LEN];
    let len = capture.len().min(CAPTURE_LEN);
    bytes[..len].copy_from_slice(&capture[..len]);
    let mut lines = HeadLines::new(kind, len);
    let word = |i: usize| u64::from_le_bytes(bytes[i * WORD..(i + 1) * WORD].try_into().unwrap());
    while lines.step(&bytes, word) {}
    let mut host = HostValue::new();
    if lines.host_at != 0 {
        for &b in &bytes[lines.host_at as usize..len] {
            if !host.feed(b) {
                break;
            }
        }
    }
    if lines.length_at != 0 {
        let end = if lines.head_len != 0 {
            lines.head_len as usize
        } else {
            len
        };
        for &b in &bytes[lines.length_at as usize..end] {
            if !lines.length_byte(b) {
                break;
            }
        }
    }
    (lines, host)
}

#[cfg(any(test, feature = "user"))]
/// A response head read in windows as the kernel reads it from a read of `read` bytes:
/// (framing, head length, content length), and the windows read.
pub fn scan_long_head(read: &[u8]) -> (LongHead, u32) {
    let mut long = LongHead::default();
    let mut windows = 0;
    let mut next = Some(0);
    while let Some(at) = next.filter(|&at| (at as usize) < read.len() && windows < HEAD_WINDOWS) {
        let (lines, _) = scan_head(head_kind::RESPONSE, &read[at as usize..]);
        windows += 1;
        next = long.absorb(&lines, (read.len() - at as usize).min(CAPTURE_LEN));
    }
    (long, windows)
}

#[cfg(test)]
mod tests;
