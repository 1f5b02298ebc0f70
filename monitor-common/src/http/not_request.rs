//! Reads where a request should start that are not one, and why (`not_http::*`).

use super::*;

/// Why a read where a request should start was not one: the `reason` of
/// `monitor_http_reads_not_http_total`.
pub mod not_http {
    /// A TLS record: a TLS client on a clear-text port.
    pub const TLS: u8 = 0;
    /// The HTTP/2 connection preface (h2c with prior knowledge).
    pub const HTTP2: u8 = 1;
    /// Bytes that are not text: another binary protocol, or noise.
    pub const BINARY: u8 = 2;
    /// A request line whose method is not 3 to 12 upper-case letters (`get / HTTP/1.1`).
    pub const INVALID_METHOD: u8 = 3;
    /// Other text: a text protocol, or the rest of a request that began earlier.
    pub const TEXT: u8 = 4;
    pub const NAMES: [&str; 5] = ["tls", "http2", "binary", "invalid_method", "text"];
}

/// What a read that is not a request start is (`not_http::*`), from its first `len` bytes (at
/// most 16 in `head`).
pub fn classify_not_request(head: &[u8; 16], len: usize) -> u8 {
    let mut scanner = NotRequestScanner::default();
    for &b in head.iter().take(len) {
        scanner.feed(b);
    }
    scanner.kind(head)
}

/// Classifies a read that is not a request start, a byte at a time (the kernel feeds it from
/// a `bpf_loop` callback, its state in map memory): the byte loop, unrolled with its state on
/// the stack, would be verified once per combination of that state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotRequestScanner {
    /// Bytes fed.
    seen: u16,
    /// 1 once a byte was neither text nor white space.
    binary: u16,
    /// `line::*`: how far the bytes look like `token SP target`.
    line: u16,
    _reserved: u16,
}

/// Progress of [`NotRequestScanner`] through a request line with a bad method.
mod line {
    /// Letters so far (none yet at the start).
    pub const LETTERS: u16 = 0;
    /// Letters, then one space.
    pub const SPACE: u16 = 1;
    /// Letters, a space and the start of a request target.
    pub const REQUEST_LINE: u16 = 2;
    /// Something else.
    pub const NONE: u16 = 3;
}

impl NotRequestScanner {
    #[inline(always)]
    pub fn feed(&mut self, b: u8) {
        if (b < b' ' && !matches!(b, b'\t' | b'\r' | b'\n')) || b >= 0x7f {
            self.binary = 1;
        }
        self.line = match self.line {
            line::LETTERS if b.is_ascii_alphabetic() => line::LETTERS,
            line::LETTERS if b == b' ' && self.seen > 0 => line::SPACE,
            line::SPACE if matches!(b, b'/' | b'*' | b'h' | b'H') => line::REQUEST_LINE,
            line::REQUEST_LINE => line::REQUEST_LINE,
            _ => line::NONE,
        };
        self.seen += 1;
    }

    /// The `not_http::*` kind of the bytes fed, whose first 16 are `head`.
    #[inline(always)]
    pub fn kind(&self, head: &[u8; 16]) -> u8 {
        if head[0] == 0x16 && head[1] == 0x03 {
            not_http::TLS
        } else if is_http2_preface(head) {
            not_http::HTTP2
        } else if self.binary != 0 {
            not_http::BINARY
        } else if self.line == line::REQUEST_LINE {
            not_http::INVALID_METHOD
        } else {
            not_http::TEXT
        }
    }
}
