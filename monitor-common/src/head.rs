//! Streaming scanners for HTTP/1.x heads, byte by byte (the kernel feeds them from a
//! `bpf_loop` callback): the `Host` of a request, and the framing of a response.

use crate::http::{FNV_OFFSET, fnv};

/// Most bytes of a `Host` value kept.
pub const MAX_HOST_LEN: usize = 64;

/// Matches a header name at the start of a line, case-insensitively, one byte at a time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct NameMatch {
    /// Bytes matched so far; `u16::MAX` once the line cannot be this header.
    matched: u16,
}

impl NameMatch {
    /// Feeds a byte of the line; true once `name` (ending in `:`) is complete.
    #[inline(always)]
    fn feed(&mut self, name: &[u8], b: u8) -> bool {
        let i = self.matched as usize;
        if i >= name.len() {
            self.matched = u16::MAX;
            return false;
        }
        if b.to_ascii_lowercase() == name[i] {
            self.matched += 1;
            self.matched as usize == name.len()
        } else {
            self.matched = u16::MAX;
            false
        }
    }
}

/// Line-level state shared by both scanners: where lines start and where the head ends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Lines {
    /// Bytes of the head seen.
    seen: u32,
    /// 1 at the start of a line (after `\n`); the first line is the request/status line.
    at_line_start: u16,
    /// Progress through `\r\n\r\n` (0..=4); 4 when the head has ended.
    blank_line: u16,
}

impl Lines {
    /// Takes a byte; returns true when a new header line starts with the next byte.
    #[inline(always)]
    fn feed(&mut self, b: u8) -> bool {
        self.seen += 1;
        self.blank_line = match (self.blank_line, b) {
            (0 | 2, b'\r') => self.blank_line + 1,
            (1 | 3, b'\n') => self.blank_line + 1,
            (_, b'\r') => 1,
            _ => 0,
        };
        b == b'\n'
    }

    fn ended(&self) -> bool {
        self.blank_line == 4
    }
}

/// Finds the `Host` header of a request head and normalises its value: lower case, no blanks
/// around it, and the port dropped when it is 80 or 443 (`Example.com:80` -> `example.com`). The hash is of the
/// normalised text, which `host` holds (up to `MAX_HOST_LEN` bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostScanner {
    lines: Lines,
    name: NameMatch,
    /// 1 while reading the value, 2 once it has been read.
    state: u16,
    /// Position of the last `:` in the value (a port follows), 0 if none; `[...]` excepted.
    colon: u16,
    in_brackets: u16,
    /// Bytes of `host` kept.
    pub len: u16,
    /// `len` without trailing blanks.
    end: u16,
    pub host: [u8; MAX_HOST_LEN],
}

impl Default for HostScanner {
    fn default() -> Self {
        Self::new()
    }
}

const HOST: &[u8] = b"host:";

impl HostScanner {
    pub const fn new() -> Self {
        Self {
            lines: Lines {
                seen: 0,
                at_line_start: 0,
                blank_line: 0,
            },
            name: NameMatch { matched: 0 },
            state: 0,
            colon: 0,
            in_brackets: 0,
            len: 0,
            end: 0,
            host: [0; MAX_HOST_LEN],
        }
    }

    /// Takes the next byte of the head; false once there is nothing more to learn.
    #[inline(always)]
    pub fn feed(&mut self, b: u8) -> bool {
        if self.state == 2 || self.lines.ended() {
            return false;
        }
        if self.state == 1 {
            match b {
                b'\r' | b'\n' => {
                    self.state = 2;
                    return false;
                }
                b' ' | b'\t' if self.len == 0 => {}
                _ => self.push(b),
            }
            return true;
        }
        let at_start = self.lines.at_line_start != 0;
        let new_line = self.lines.feed(b);
        if at_start && self.name.feed(HOST, b) {
            self.state = 1;
        }
        if new_line {
            self.lines.at_line_start = 1;
            self.name = NameMatch::default();
        } else if !at_start || self.name.matched == u16::MAX {
            self.lines.at_line_start = 0;
        }
        true
    }

    #[inline(always)]
    fn push(&mut self, b: u8) {
        let len = self.len as usize;
        if len >= MAX_HOST_LEN {
            return;
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
    }

    /// The normalised host's length: without trailing blanks, `:80` or `:443`; 0 when no
    /// `Host` was found.
    #[inline(always)]
    pub fn normalised_len(&self) -> usize {
        let len = self.end as usize;
        let colon = self.colon as usize;
        if colon == 0 || colon >= len || len > MAX_HOST_LEN {
            return len;
        }
        let port = &self.host[colon + 1..len];
        if port == b"80" || port == b"443" {
            colon
        } else {
            len
        }
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

/// Reads the framing of a response head: `Content-Length`, `Transfer-Encoding` and where the
/// head ends. Responses to HEAD, 1xx, 204 and 304 have no body whatever the head says; the
/// caller knows those.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseHeadScanner {
    lines: Lines,
    length_name: NameMatch,
    encoding_name: NameMatch,
    /// 1 while reading digits of Content-Length.
    in_length: u16,
    chunked: u16,
    pub content_length: u64,
    has_length: u16,
    _reserved: [u16; 3],
}

const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";

impl ResponseHeadScanner {
    /// Takes the next byte; false once the head has ended.
    #[inline(always)]
    pub fn feed(&mut self, b: u8) -> bool {
        if self.lines.ended() {
            return false;
        }
        if self.in_length != 0 {
            if b.is_ascii_digit() {
                // Capped instead of saturating_mul, which needs 128-bit arithmetic the BPF
                // target lacks; no body is a petabyte.
                if self.content_length < 100_000_000_000_000 {
                    self.content_length = self.content_length * 10 + (b - b'0') as u64;
                }
                self.has_length = 1;
            } else if b != b' ' && b != b'\t' {
                self.in_length = 0;
            }
        }
        let at_start = self.lines.at_line_start != 0;
        let new_line = self.lines.feed(b);
        if at_start {
            if self.length_name.feed(CONTENT_LENGTH, b) {
                self.in_length = 1;
                self.content_length = 0;
            }
            if self.encoding_name.feed(TRANSFER_ENCODING, b) {
                // Any coding but `identity` ends with `chunked` in HTTP/1.1.
                self.chunked = 1;
            }
        }
        if new_line {
            self.lines.at_line_start = 1;
            self.length_name = NameMatch::default();
            self.encoding_name = NameMatch::default();
        } else if !at_start
            || (self.length_name.matched == u16::MAX && self.encoding_name.matched == u16::MAX)
        {
            self.lines.at_line_start = 0;
        }
        !self.lines.ended()
    }

    /// The head's length once it has ended, else 0.
    pub fn head_len(&self) -> u32 {
        if self.lines.ended() {
            self.lines.seen
        } else {
            0
        }
    }

    /// How the body is delimited, once the head has ended.
    pub fn framing(&self) -> u16 {
        if !self.lines.ended() {
            framing::UNKNOWN
        } else if self.chunked != 0 {
            framing::CHUNKED
        } else if self.has_length != 0 {
            framing::LENGTH
        } else {
            framing::CLOSE
        }
    }
}

/// Whether a response with this status (to a request with this method) has no body.
pub fn bodiless(status: u16, head_request: bool) -> bool {
    head_request || (100..200).contains(&status) || status == 204 || status == 304
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(head: &[u8]) -> (alloc::string::String, u64) {
        let mut scanner = HostScanner::new();
        for &b in head {
            if !scanner.feed(b) {
                break;
            }
        }
        let len = scanner.normalised_len();
        let text = alloc::string::String::from_utf8_lossy(&scanner.host[..len]).into_owned();
        (text, scanner.hash())
    }

    #[test]
    fn host_is_found_lowercased_and_default_ports_dropped() {
        let head = b"GET /x HTTP/1.1\r\nUser-Agent: t\r\nHost: Api.Example.com:443\r\n\r\n";
        let (text, hash) = host_of(head);
        assert_eq!(text, "api.example.com");
        assert_eq!(hash, crate::http::fnv_bytes(FNV_OFFSET, b"api.example.com"));
        assert_eq!(
            host_of(b"GET / HTTP/1.1\r\nhost:svc:8080\r\n\r\n").0,
            "svc:8080"
        );
        assert_eq!(host_of(b"GET / HTTP/1.1\r\nHOST:  web:80\r\n\r\n").0, "web");
        assert_eq!(
            host_of(b"GET / HTTP/1.1\r\nHost: [::1]:9000\r\n\r\n").0,
            "[::1]:9000"
        );
        assert_eq!(host_of(b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n").0, "[::1]");
        assert_eq!(
            host_of(b"GET / HTTP/1.1\r\nHost: 10.0.0.7:80\r\n\r\n").0,
            "10.0.0.7"
        );
    }

    #[test]
    fn trailing_blanks_are_not_part_of_the_host() {
        // Trailing blanks are whitespace around the value (RFC 9110), not host: `web:80 `
        // kept its port and its blank, a second label for the same server.
        assert_eq!(
            host_of(b"GET / HTTP/1.1\r\nHost: web:80 \t\r\n\r\n").0,
            "web"
        );
        assert_eq!(host_of(b"GET / HTTP/1.1\r\nHost: Web \r\n\r\n").0, "web");
        assert_eq!(host_of(b"GET / HTTP/1.1\r\nHost:  \r\n\r\n").1, 0);
    }

    #[test]
    fn no_host_header_means_no_host() {
        assert_eq!(host_of(b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n").1, 0);
        // A header that merely ends in "host:" is not Host.
        assert_eq!(
            host_of(b"GET / HTTP/1.1\r\nX-Forwarded-Host: a\r\n\r\n").1,
            0
        );
        // Nor is one after the head.
        assert_eq!(host_of(b"GET / HTTP/1.1\r\n\r\nHost: body").1, 0);
    }

    fn head_of(response: &[u8]) -> ResponseHeadScanner {
        let mut scanner = ResponseHeadScanner::default();
        for &b in response {
            if !scanner.feed(b) {
                break;
            }
        }
        scanner
    }

    #[test]
    fn content_length_and_head_length_are_read() {
        let response =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length:  1234\r\n\r\nbody";
        let scanner = head_of(response);
        assert_eq!(scanner.framing(), framing::LENGTH);
        assert_eq!(scanner.content_length, 1234);
        assert_eq!(scanner.head_len() as usize, response.len() - 4);
    }

    #[test]
    fn chunked_and_close_delimited_are_told_apart() {
        let chunked = head_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n");
        assert_eq!(chunked.framing(), framing::CHUNKED);
        let close = head_of(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n");
        assert_eq!(close.framing(), framing::CLOSE);
        let cut = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n");
        assert_eq!(cut.framing(), framing::UNKNOWN);
        assert_eq!(cut.head_len(), 0);
    }

    #[test]
    fn a_header_value_mentioning_content_length_is_not_one() {
        let scanner = head_of(b"HTTP/1.1 200 OK\r\nX-Note: Content-Length: 9\r\n\r\n");
        assert_eq!(scanner.framing(), framing::CLOSE);
    }

    #[test]
    fn bodiless_statuses() {
        assert!(bodiless(204, false) && bodiless(304, false) && bodiless(101, false));
        assert!(bodiless(200, true));
        assert!(!bodiless(200, false));
    }
}
