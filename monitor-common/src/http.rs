//! HTTP/1.x: the map ABI of the HTTP programs, and the byte-level logic both sides share
//! (method recognition, status lines, route templating), so that the kernel and the agent
//! agree by construction and the logic is unit-tested on the host.

use crate::words::zero_words;

/// Request methods, as `http_request_method` values (OpenTelemetry: unknown ones are `_OTHER`).
pub mod method {
    pub const OTHER: u8 = 0;
    pub const GET: u8 = 1;
    pub const HEAD: u8 = 2;
    pub const POST: u8 = 3;
    pub const PUT: u8 = 4;
    pub const DELETE: u8 = 5;
    pub const CONNECT: u8 = 6;
    pub const OPTIONS: u8 = 7;
    pub const TRACE: u8 = 8;
    pub const PATCH: u8 = 9;
    pub const NAMES: [&str; 10] = [
        "_OTHER", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
}

/// Bytes of a request or response captured per syscall. A power of two (masks keep the
/// verifier sure of the bounds).
pub const CAPTURE_LEN: usize = 256;
/// Most path bytes templated; a longer path ends in `/{*}`.
pub const MAX_PATH_LEN: usize = 192;
/// Most duration bucket bounds (`--duration-buckets`).
pub const MAX_DURATION_BOUNDS: usize = 32;

/// Recognises the start of a request line: `METHOD SP` followed by a request target (`/`,
/// `*`, or an absolute URI). Returns the method and the offset of the target.
///
/// Unknown methods are accepted when they are a token of 3 to 12 upper-case letters, so
/// WebDAV and custom methods are counted as `_OTHER` rather than lost.
///
/// `CONNECT` is not a request here: it opens a tunnel through a proxy, whose bytes then last
/// as long as the tunnel. Its authority-form target (`host:443`) was accepted only when the
/// host began with `h`, and such a "response" then lasted the tunnel's whole life.
#[inline(always)]
pub fn parse_request_start(head: &[u8; 16]) -> Option<(u8, usize)> {
    if is_http2_preface(head) {
        return None; // `PRI *`: HTTP/2, not a request of an unknown method
    }
    let (method, len) = known_method(head);
    if method == method::CONNECT && head[7] == b' ' {
        return None;
    }
    if method != method::OTHER && target_start(head, len) {
        return Some((method, len + 1));
    }
    // A token of upper-case letters, then one space.
    let mut len = 0;
    while len < 13 {
        let b = head[len];
        if b == b' ' {
            break;
        }
        if !b.is_ascii_uppercase() {
            return None;
        }
        len += 1;
    }
    if !(3..=12).contains(&len) || !target_start(head, len) {
        return None;
    }
    Some((method::OTHER, len + 1))
}

#[inline(always)]
fn target_start(head: &[u8; 16], method_len: usize) -> bool {
    if method_len + 1 >= head.len() || head[method_len] != b' ' {
        return false;
    }
    matches!(head[method_len + 1], b'/' | b'*' | b'h' | b'H')
}

#[inline(always)]
fn known_method(head: &[u8; 16]) -> (u8, usize) {
    let [word, _] = head_words(head);
    let prefix = |n: u32| word & (u64::MAX >> (64 - 8 * n));
    let le = le_word;
    if prefix(3) == le(b"GET") {
        (method::GET, 3)
    } else if prefix(4) == le(b"POST") {
        (method::POST, 4)
    } else if prefix(3) == le(b"PUT") {
        (method::PUT, 3)
    } else if prefix(4) == le(b"HEAD") {
        (method::HEAD, 4)
    } else if prefix(6) == le(b"DELETE") {
        (method::DELETE, 6)
    } else if prefix(5) == le(b"PATCH") {
        (method::PATCH, 5)
    } else if prefix(7) == le(b"OPTIONS") {
        (method::OPTIONS, 7)
    } else if prefix(7) == le(b"CONNECT") {
        (method::CONNECT, 7)
    } else if prefix(5) == le(b"TRACE") {
        (method::TRACE, 5)
    } else {
        (method::OTHER, 0)
    }
}

/// The first bytes of a request (server) or a response (client) read before the rest of its
/// first line, held on the connection (`Connection::head_prefix`) until the next read
/// completes them. Go's net/http server reads one byte ahead while a handler runs (to notice
/// a client that goes away), so the next request's first byte often arrives alone; Java's
/// HttpClient at times reads a response's first byte alone; a slow client sends a few bytes
/// at a time.
pub mod head_prefix {
    /// The longest prefix held: a status line but its last digit (`HTTP/1.1 20`).
    pub const MAX_LEN: usize = 11;
    const BYTES: u64 = (1 << 56) - 1;

    /// The first `len` bytes of `head` (little-endian words; the second's top byte holds
    /// `len`), `[0, 0]` for none. `len` is at most `MAX_LEN`; the bytes after them in
    /// `head` must be zero, as in a capture.
    pub fn of(head: &[u8; 16], len: usize) -> [u64; 2] {
        let [low, high] = super::head_words(head);
        [low, (high & BYTES) | ((len as u64 & 15) << 56)]
    }
    pub const fn len(packed: &[u64; 2]) -> usize {
        (packed[1] >> 56) as usize & 15
    }
    /// The bytes alone, as the first two words of a capture.
    pub const fn bytes(packed: &[u64; 2]) -> [u64; 2] {
        [packed[0], packed[1] & BYTES]
    }
}

/// Whether the first `len` bytes of `head`, too few to parse, can still become a request
/// line: a proper beginning of a known method and its space (`G`, `POS`, `GET `). Methods
/// other than the known ones are not waited for.
#[inline(always)]
pub fn is_request_prefix(head: &[u8; 16], len: usize) -> bool {
    // A method of seven letters (`OPTIONS`) without its space.
    if len == 0 || len > 7 {
        return false;
    }
    let [word, _] = head_words(head);
    let mask = u64::MAX >> (64 - 8 * len as u32);
    const STARTS: [(u64, usize); 8] = [
        (le_word(b"GET "), 4),
        (le_word(b"POST "), 5),
        (le_word(b"PUT "), 4),
        (le_word(b"HEAD "), 5),
        (le_word(b"DELETE "), 7),
        (le_word(b"PATCH "), 6),
        (le_word(b"OPTIONS "), 8),
        (le_word(b"TRACE "), 6),
    ];
    let mut i = 0;
    while i < STARTS.len() {
        let (start, start_len) = STARTS[i];
        if len <= start_len && (word ^ start) & mask == 0 {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether the first `len` bytes of `head`, too few for a status line, begin one: `H` to
/// `HTTP/1.1 20`.
#[inline(always)]
pub fn is_status_prefix(head: &[u8; 16], len: usize) -> bool {
    if len == 0 || len > head_prefix::MAX_LEN {
        return false;
    }
    // Over a constant count, not up to `len`: a verifier before 6.3 or so may have lost the
    // bound on `len` checked above (see `verifier::hide`), and then not the loop's end.
    let mut i = 0;
    while i < head_prefix::MAX_LEN {
        let b = head[i];
        let fits = match i {
            0..=6 => b == b"HTTP/1."[i],
            8 => b == b' ',
            _ => b.is_ascii_digit(),
        };
        if i < len && !fits {
            return false;
        }
        i += 1;
    }
    true
}

/// The 16 bytes of `head` as two little-endian words.
#[inline(always)]
pub fn head_words(head: &[u8; 16]) -> [u64; 2] {
    let mut low = [0u8; 8];
    let mut high = [0u8; 8];
    low.copy_from_slice(&head[..8]);
    high.copy_from_slice(&head[8..]);
    [u64::from_le_bytes(low), u64::from_le_bytes(high)]
}

/// Up to eight bytes as a little-endian word.
const fn le_word(bytes: &[u8]) -> u64 {
    let mut value = 0u64;
    let mut i = bytes.len();
    while i > 0 {
        i -= 1;
        value = (value << 8) | bytes[i] as u64;
    }
    value
}

/// An interim response (`100 Continue`, `103 Early Hints`): the final one follows it.
/// `101 Switching Protocols` is final: what follows is another protocol.
#[inline(always)]
pub const fn is_interim(status: u16) -> bool {
    status < 200 && status != 101
}

/// Reads the status code of a response that starts `HTTP/1.x NNN`.
#[inline(always)]
pub fn parse_status_line(head: &[u8; 16]) -> Option<u16> {
    if &head[..7] != b"HTTP/1." || head[8] != b' ' {
        return None;
    }
    let mut status = 0u16;
    let mut i = 9;
    while i < 12 {
        let b = head[i];
        if !b.is_ascii_digit() {
            return None;
        }
        status = status * 10 + (b - b'0') as u16;
        i += 1;
    }
    (100..=599).contains(&status).then_some(status)
}

/// Whether the first `len` bytes of a write (at most 16 in `head`) cannot begin a status
/// line: a server's answer to a request that is not HTTP/1.x (HTTP/0.9 has none). Bytes
/// that could still become one (`HTTP/1` cut short) are not judged.
#[inline(always)]
pub fn cannot_be_status_line(head: &[u8; 16], len: usize) -> bool {
    if len == 0 {
        return false;
    }
    if len >= 12 {
        return parse_status_line(head).is_none();
    }
    const START: &[u8; 7] = b"HTTP/1.";
    let mut i = 0;
    while i < START.len() && i < len {
        if head[i] != START[i] {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether `head` starts with the HTTP/2 connection preface, `PRI * HTTP/2.0`. A byte loop
/// rather than a slice comparison, which could call out to `memcmp` (BPF cannot).
#[inline(always)]
fn is_http2_preface(head: &[u8; 16]) -> bool {
    const PREFACE: &[u8; 14] = b"PRI * HTTP/2.0";
    let mut i = 0;
    while i < PREFACE.len() {
        if head[i] != PREFACE[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Why a read where a request should start was not one: the `reason` of
/// `monitor_http_reads_not_http_total`.
pub mod not_http {
    /// A TLS record: a TLS client on a clear-text port.
    pub const TLS: u8 = 0;
    /// The HTTP/2 connection preface (h2c with prior knowledge).
    pub const HTTP2: u8 = 1;
    /// Bytes that are not text: another binary protocol, or noise.
    pub const BINARY: u8 = 2;
    /// A request line whose method is not an upper-case token (`get / HTTP/1.1`).
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

/// FNV-1a, 64 bits: small, byte-at-a-time, the same in the kernel and the agent.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline(always)]
pub const fn fnv(hash: u64, byte: u8) -> u64 {
    (hash ^ byte as u64).wrapping_mul(FNV_PRIME)
}

pub const fn fnv_bytes(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash = fnv(hash, bytes[i]);
        i += 1;
    }
    hash
}

/// The placeholder for a path segment that is an identifier.
pub const ID_PLACEHOLDER: &[u8] = b"{id}";
/// The placeholder that ends a route collapsed under the route budget, or a cut-off path.
pub const REST_PLACEHOLDER: &[u8] = b"{*}";
/// The route of requests that fit no budget.
pub const OVERFLOW_ROUTE: &str = "__overflow__";
pub const OVERFLOW_ROUTE_HASH: u64 = fnv_bytes(FNV_OFFSET, OVERFLOW_ROUTE.as_bytes());

/// What a path segment looked like, accumulated byte by byte (no buffer: the kernel cannot
/// afford one per request).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentShape {
    pub len: u16,
    pub digits: u16,
    pub uppers: u16,
    pub lowers: u16,
    pub dashes: u16,
    /// Bytes that are neither hex digits nor `-`.
    pub non_hex: u16,
    /// Bytes outside `[A-Za-z0-9-_.~]`, e.g. `@`, `%`, `=`, `+`.
    pub unusual: u16,
    /// `run::*`: what the last bytes were, to find digits between letters.
    pub run: u16,
    /// Runs of digits with a letter right before and right after (`x7kq2mzp`).
    pub inner_digit_runs: u16,
    pub _reserved: [u16; 3],
}

/// Where [`SegmentShape`] is in the segment's letters and digits.
pub mod run {
    /// At the start, or after a byte that is neither a letter nor a digit.
    pub const NONE: u16 = 0;
    pub const LETTERS: u16 = 1;
    /// Digits that came right after a letter: a letter next makes them inner digits.
    pub const DIGITS_AFTER_LETTER: u16 = 2;
    pub const DIGITS: u16 = 3;
}

impl SegmentShape {
    #[inline(always)]
    pub fn add(&mut self, b: u8) {
        self.len += 1;
        if b.is_ascii_digit() {
            self.digits += 1;
        } else if b.is_ascii_uppercase() {
            self.uppers += 1;
        } else if b.is_ascii_lowercase() {
            self.lowers += 1;
        } else if b == b'-' {
            self.dashes += 1;
        }
        if !(b.is_ascii_hexdigit() || b == b'-') {
            self.non_hex += 1;
        }
        if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')) {
            self.unusual += 1;
        }
        self.run = if b.is_ascii_alphabetic() {
            if self.run == run::DIGITS_AFTER_LETTER {
                self.inner_digit_runs += 1;
            }
            run::LETTERS
        } else if b.is_ascii_digit() {
            match self.run {
                run::LETTERS | run::DIGITS_AFTER_LETTER => run::DIGITS_AFTER_LETTER,
                _ => run::DIGITS,
            }
        } else {
            run::NONE
        };
    }

    /// Whether the segment names a resource instance rather than a kind of resource:
    /// numbers, UUIDs, hex ids and hashes, things with several digits (`order-12345`,
    /// `2024-01-31`), random-looking tokens (long mixes of letters and digits, digits between
    /// letters, mixed case), e-mail addresses and other encoded values, and anything too long
    /// to be a route's name.
    ///
    /// Tokens are secrets as often as ids: a literal segment ends up in a label, so the rules
    /// lean towards `{id}`. What they keep are words, words with a version (`v2`, `oauth2`,
    /// `v1beta1`) and short codes; a random token of letters only reads like a word and stays.
    #[inline(always)]
    pub fn is_identifier(&self) -> bool {
        let len = self.len;
        if len == 0 {
            return false;
        }
        let letters = self.uppers + self.lowers;
        let all_digits = self.digits == len;
        let hex_id = self.non_hex == 0 && self.dashes == 0 && len >= 8 && self.digits > 0;
        // Hex without a digit: short ones are words (`cafe`, `deadbeef`), long ones are not.
        let long_hex = self.non_hex == 0 && self.dashes == 0 && len >= 16;
        let uuid = len == 36 && self.dashes == 4 && self.non_hex == 0;
        let many_digits = self.digits >= 4;
        // Random base-36/62 keys: a long segment mixing letters and digits, or a shorter one
        // with digits inside letters (short versions stay: `oauth2`, `v1beta1`, `h264`).
        let long_mix = len >= 12 && self.digits > 0 && letters > 0;
        let inner_digits = len >= 9 && self.inner_digit_runs > 0;
        // Random tokens mix cases far more than camelCase words do.
        let mixed_case_token = len >= 16 && self.uppers * 4 >= len && self.lowers > 0;
        let encoded = self.unusual > 0;
        all_digits
            || hex_id
            || long_hex
            || uuid
            || many_digits
            || long_mix
            || inner_digits
            || mixed_case_token
            || encoded
            || len > 64
    }
}

/// Where a byte leaves the templater.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fed {
    /// Part of the path: feed the next one.
    More,
    /// The path ended before this byte (space, `?`, `#`, or a control byte).
    End,
}

/// Turns a request path into a route template, one byte at a time, hashing the template as
/// it goes: `/users/123/orders?x=1` -> `/users/{id}/orders`. Query and fragment are dropped,
/// empty segments (`//`, a trailing `/`) are ignored.
///
/// The kernel keeps only the hash; the agent rebuilds the text from the same bytes with a
/// [`TemplateSink`] that records it, and checks that the hashes agree.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTemplater {
    /// Hash of the template up to the last finished segment.
    pub hash: u64,
    /// Hash of the template if the current segment stays literal.
    pub literal_hash: u64,
    /// Hash of the template after the first segment (for `/<first>/{*}`), 0 until then.
    pub first_segment_hash: u64,
    pub shape: SegmentShape,
    pub path_len: u16,
    pub segments: u16,
    pub ended: u16,
    pub truncated: u16,
}

/// Receives what the templater decides; the kernel passes `()` and keeps only hashes.
pub trait TemplateSink {
    fn segment_byte(&mut self, _b: u8) {}
    fn segment_end(&mut self, _placeholder: Option<&'static [u8]>) {}
}

impl TemplateSink for () {}

impl Default for RouteTemplater {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteTemplater {
    /// `new()` again, in place: built on the stack and copied, the mostly-zero value would
    /// become a `memset` call in the kernel (see `words`).
    #[inline(always)]
    pub fn reset(&mut self) {
        const NEW: RouteTemplater = RouteTemplater::new();
        zero_words(self);
        self.hash = NEW.hash;
        self.literal_hash = NEW.literal_hash;
    }

    pub const fn new() -> Self {
        Self {
            hash: FNV_OFFSET,
            literal_hash: fnv(FNV_OFFSET, b'/'),
            first_segment_hash: 0,
            shape: SegmentShape {
                len: 0,
                digits: 0,
                uppers: 0,
                lowers: 0,
                dashes: 0,
                non_hex: 0,
                unusual: 0,
                run: run::NONE,
                inner_digit_runs: 0,
                _reserved: [0; 3],
            },
            path_len: 0,
            segments: 0,
            ended: 0,
            truncated: 0,
        }
    }

    /// Takes the next byte of the request target.
    #[inline(always)]
    pub fn feed<S: TemplateSink>(&mut self, b: u8, sink: &mut S) -> Fed {
        if self.ended != 0 {
            return Fed::End;
        }
        if b <= b' ' || b == b'?' || b == b'#' || b == 0x7f {
            self.ended = 1;
            return Fed::End;
        }
        if self.path_len as usize >= MAX_PATH_LEN {
            self.truncated = 1;
            self.ended = 1;
            return Fed::End;
        }
        self.path_len += 1;
        if b == b'/' {
            self.end_segment(sink);
        } else {
            self.shape.add(b);
            self.literal_hash = fnv(self.literal_hash, b);
            sink.segment_byte(b);
        }
        Fed::More
    }

    #[inline(always)]
    fn end_segment<S: TemplateSink>(&mut self, sink: &mut S) {
        if self.shape.len == 0 {
            return; // empty segment: `//` or the leading `/`
        }
        if self.shape.is_identifier() {
            self.hash = fnv_bytes(fnv(self.hash, b'/'), ID_PLACEHOLDER);
            sink.segment_end(Some(ID_PLACEHOLDER));
        } else {
            self.hash = self.literal_hash;
            sink.segment_end(None);
        }
        if self.segments == 0 {
            self.first_segment_hash = self.hash;
        }
        self.segments += 1;
        zero_words(&mut self.shape);
        self.literal_hash = fnv(self.hash, b'/');
    }

    /// Closes the last segment; returns the hash of the template. A path cut at
    /// `MAX_PATH_LEN` ends in `/{*}` instead of its last, unfinished segment: a prefix of a
    /// token would be too short to look like one.
    #[inline(always)]
    pub fn finish<S: TemplateSink>(&mut self, sink: &mut S) -> u64 {
        if self.truncated != 0 {
            self.hash = fnv_bytes(fnv(self.hash, b'/'), REST_PLACEHOLDER);
            sink.segment_end(Some(REST_PLACEHOLDER));
        } else {
            self.end_segment(sink);
        }
        if self.segments == 0 && self.truncated == 0 {
            self.hash = fnv(FNV_OFFSET, b'/'); // the root
        }
        self.ended = 1;
        self.hash
    }

    /// The route `/<first segment>/{*}` that stands for this one when the budget is spent.
    #[inline(always)]
    pub fn collapsed_hash(&self) -> u64 {
        let base = if self.first_segment_hash == 0 {
            FNV_OFFSET
        } else {
            self.first_segment_hash
        };
        fnv_bytes(fnv(base, b'/'), REST_PLACEHOLDER)
    }
}

/// How many of a budget's routes may be templates; the rest is kept for collapsed forms
/// (`/<first segment>/{*}`), so that one fanned-out segment ends in one collapsed route
/// rather than in `__overflow__`. A budget allows at most `budget` routes plus
/// `__overflow__`.
#[inline(always)]
pub const fn template_allowance(budget: u32) -> u32 {
    let templates = budget - budget / 4;
    if templates == 0 { 1 } else { templates }
}

/// What an [`HttpEvent`] announces.
pub mod event_kind {
    /// A route granted under the budget as its own template.
    pub const TEMPLATE: u8 = 0;
    /// A route granted once the templates were spent: `/<first segment>/{*}`.
    pub const COLLAPSED: u8 = 1;
    /// Not a route: a listening socket (fd in `route`) whose port the agent must check
    /// against `--http-ports`.
    pub const LISTENER: u8 = 2;
    /// A server address a client process used for the first time; `path` holds its text.
    pub const HOST: u8 = 3;
    /// Not an announcement: an [`ObservationEvent`](super::ObservationEvent).
    pub const OBSERVATION: u8 = 4;
}

/// A request whose histogram the kernel could not allocate when it ended (a map without
/// preallocation refills its free elements asynchronously, and a burst of new keys can find
/// none ready): carried to the agent, which adds it to that key's counts. Shares the ring
/// buffer with [`HttpEvent`], and `kind` sits where `HttpEvent::kind` does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObservationEvent {
    pub route: u64,
    pub tgid: u32,
    pub status: u16,
    /// `event_kind::OBSERVATION`.
    pub kind: u8,
    pub method: u8,
    pub role: u8,
    /// The histogram bucket the duration falls in (`duration_bucket`).
    pub bucket: u8,
    pub _reserved: [u8; 6],
    pub duration_ns: u64,
}

/// Where every event on the HTTP ring buffer has its `kind`.
pub const EVENT_KIND_OFFSET: usize = core::mem::offset_of!(HttpEvent, kind);
const _: () = assert!(core::mem::offset_of!(ObservationEvent, kind) == EVENT_KIND_OFFSET);

impl ObservationEvent {
    pub fn key(&self) -> DurationKey {
        DurationKey {
            tgid: self.tgid,
            status: self.status,
            method: self.method,
            role: self.role,
            route: self.route,
        }
    }
}

/// What the agent must hear about, rarely: a route the kernel has not seen for this process
/// (the agent rebuilds its text from `path`, never exported as is, and checks it against
/// `route`), or a listening socket to check.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpEvent {
    pub route: u64,
    pub tgid: u32,
    pub path_len: u16,
    pub kind: u8,
    pub _reserved: u8,
    pub path: [u8; MAX_PATH_LEN],
}

/// Key of the duration histograms: one per process, role, method, status and target (the
/// route of a server request, the server address of a client request).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DurationKey {
    pub tgid: u32,
    pub status: u16,
    pub method: u8,
    /// `role::SERVER` or `role::CLIENT`.
    pub role: u8,
    /// A route hash (server) or a server-address hash (client).
    pub route: u64,
}

/// Key of `CLIENT_ERRORS`: client requests that got no complete response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientErrorKey {
    /// Server-address hash.
    pub host: u64,
    pub tgid: u32,
    /// `client_error::*`.
    pub kind: u8,
    pub method: u8,
    pub _reserved: u16,
}

/// Why a client request has no duration.
pub mod client_error {
    /// The connection closed (or was reset) before any response.
    pub const NO_RESPONSE: u8 = 1;
    /// The response stopped before its declared length or final chunk.
    pub const CUT_OFF: u8 = 2;
    pub const NAMES: [&str; 3] = ["", "no_response", "response_cut_off"];
}

/// Bucket counts of one key on one CPU; bucket `i` counts durations `<= bounds[i]` (and above
/// `bounds[i-1]`), the bucket after the last bound everything above.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationHistogram {
    pub buckets: [u64; MAX_DURATION_BOUNDS + 1],
    pub sum_ns: u64,
}

impl DurationHistogram {
    pub const ZERO: Self = Self {
        buckets: [0; MAX_DURATION_BOUNDS + 1],
        sum_ns: 0,
    };
}

/// Bucket index of `ns` among the first `count` of `bounds` (ascending): a binary search, so
/// the kernel spends five comparisons whatever the number of buckets.
#[inline(always)]
pub fn duration_bucket(bounds: &[u64; MAX_DURATION_BOUNDS], count: usize, ns: u64) -> usize {
    let count = if count > MAX_DURATION_BOUNDS {
        MAX_DURATION_BOUNDS
    } else {
        count
    };
    // Smallest i with ns <= bounds[i]; `count` when above them all.
    let (mut low, mut high) = (0usize, count);
    let mut step = 0;
    while step < 6 && low < high {
        let mid = (low + high) / 2;
        if ns <= bounds[mid & (MAX_DURATION_BOUNDS - 1)] {
            high = mid;
        } else {
            low = mid + 1;
        }
        step += 1;
    }
    low
}

/// What the agent tells the HTTP programs, written once before they are attached. (A map
/// rather than globals: arrays in globals are constant-folded by the compiler unless every
/// read is volatile, and one look-up here is as cheap.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Upper bounds of the duration buckets, ascending, in nanoseconds.
    pub duration_bounds_ns: [u64; MAX_DURATION_BOUNDS],
    pub duration_bound_count: u32,
    /// Distinct routes per process before routes collapse to `/<first segment>/{*}`.
    pub route_budget: u32,
    /// The agent's own process: never measured.
    pub agent_tgid: u32,
    /// 1 with `--http-ports`: only connections accepted on listeners the agent allowed.
    pub port_filter: u32,
    /// Distinct server addresses per client process before `__overflow__`.
    pub host_budget: u32,
    /// Tests only: `test_fault::*` bits.
    pub test_faults: u32,
    /// A response with no write for this long, on a connection left open, is finished.
    pub idle_timeout_ns: u64,
    /// Random, per agent start: the seed of every `fingerprint::*`.
    pub fingerprint_seed: u64,
    /// Executables (`comm`, NUL-padded) whose connections are never tracked.
    pub excluded_comms: [[u8; 16]; MAX_EXCLUDED_COMMS],
}

pub const MAX_EXCLUDED_COMMS: usize = 8;

/// Faults the tests make the programs act out (`HttpConfig::test_faults`).
pub mod test_fault {
    /// No histogram can be allocated: every request is carried to the agent
    /// (`ObservationEvent`).
    pub const NO_HISTOGRAM: u32 = 1;
}

/// Verdicts on listening sockets in `LISTENERS` (with `--http-ports`).
pub mod listener {
    pub const UNCHECKED: u8 = 0;
    pub const ALLOWED: u8 = 1;
    pub const DENIED: u8 = 2;
}

/// Roles of a tracked connection.
pub mod role {
    pub const SERVER: u8 = 1;
    pub const CLIENT: u8 = 2;
}

/// Where a connection is in its request/response cycle (for a client, the request is
/// written and the response read).
pub mod phase {
    /// Between requests.
    pub const IDLE: u64 = 0;
    /// The request line arrived cut: the templater waits for the rest.
    pub const REQUEST_LINE: u64 = 1;
    /// A request arrived; no final response yet.
    pub const REQUEST: u64 = 2;
    /// The response is being written. It ends with its last write, known when the next
    /// request arrives, the next pipelined response starts, the connection closes, or no
    /// write has come for the idle timeout (keep-alive connections that wait).
    pub const RESPONSE: u64 = 3;
    /// Client: a response read whole before the write of its request returned (a client that
    /// reads on another thread than it writes); recorded when that write returns.
    pub const ANSWERED: u64 = 4;
}

/// Per-connection state, keyed by (tgid, fd).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// `phase::*`. A whole word: leaving `RESPONSE` is a compare-and-swap, because the
    /// syscall path and the idle sweep may both try to end the same response.
    pub phase: u64,
    /// Server: when the read that brought the request's first bytes returned. Client: when
    /// the write of the request's first bytes returned.
    pub request_start_ns: u64,
    /// When the last piece of the response moved: the last write (server), read (client).
    pub last_io_ns: u64,
    /// The admitted route (server) or server address (client) of the current request.
    pub route: u64,
    /// The last templated route and what it was admitted as: consecutive requests for one
    /// route skip the budget look-up.
    pub cached_template: u64,
    pub cached_route: u64,
    /// Client: for a body of declared length (Content-Length), the bytes still to come; for a
    /// chunked body, its last bytes read so far (up to 8, the newest in the low byte), where
    /// its end shows.
    pub body_state: u64,
    pub templater: RouteTemplater,
    /// `fingerprint::*` of the bytes that decided `cached_route` (server: the request line up
    /// to the end of its target; client: the request head), 0 for none: the same bytes again
    /// take the cached route without templating or scanning.
    pub request_print: u64,
    /// Client: `fingerprint::bytes` of the last response's first read, and what its head
    /// scan found (content length, head length, `head::framing::*`).
    pub response_print: u64,
    pub response_length: u64,
    /// The end of the idle-timeout epoch in which the connection was last listed for the
    /// idle sweep (`IDLE_CANDIDATES`), 0 for never.
    pub listed_until_ns: u64,
    /// The first bytes of the next request (server) or response (client) when a read brought
    /// too few of them to tell (`head_prefix::of`), zeroes for none. Server: `request_start_ns`
    /// is then that read's.
    pub head_prefix: [u64; 2],
    pub response_head_len: u32,
    pub response_framing: u16,
    pub _reserved: u16,
    pub status: u16,
    pub method: u8,
    pub role: u8,
    /// Client: `head::framing::*` of the current response.
    pub framing: u16,
    /// `conn_flags::*`.
    pub flags: u16,
}

/// Marks on a connection. A server's are cleared when the next request starts.
pub mod conn_flags {
    /// Server: a read since the last request was not one: a status line that follows
    /// answers it.
    pub const STRAY_READ: u16 = 1;
    /// Server: a write of the current response failed (the client reset or closed): counted
    /// once.
    pub const WRITE_FAILED: u16 = 2;
    /// Server: the held `head_prefix` was read before the current response was seen
    /// (`server`'s `hold_read_ahead`): the request it begins starts with the read that
    /// completes it.
    pub const READ_AHEAD: u16 = 4;
    /// Client: the response being read (or, in `phase::ANSWERED`, read whole) came before
    /// the write of its request returned: the request's method and server address come
    /// with that write.
    pub const ANSWERED_EARLY: u16 = 8;
    /// Client: the last request was paired with a response read before it. A status line
    /// read between requests is not taken for an early answer again until a request has
    /// been answered in order: bytes mistaken for one once cannot shift every pairing after.
    pub const LAST_ANSWERED_EARLY: u16 = 16;
    /// Client: a write since the last request was not one the programs follow (a method
    /// they do not know): its answer is not taken for an early one.
    pub const UNTRACKED_WRITE: u16 = 32;
}

impl Connection {
    /// A connection between requests, as tracked from accept (server) or connect (client).
    pub const fn new(role: u8) -> Self {
        Self {
            phase: phase::IDLE,
            request_start_ns: 0,
            last_io_ns: 0,
            route: 0,
            cached_template: 0,
            cached_route: 0,
            body_state: 0,
            templater: RouteTemplater::new(),
            request_print: 0,
            response_print: 0,
            response_length: 0,
            listed_until_ns: 0,
            head_prefix: [0; 2],
            response_head_len: 0,
            response_framing: 0,
            _reserved: 0,
            status: 0,
            method: 0,
            role,
            framing: 0,
            flags: 0,
        }
    }

    /// `new(role)`, built over uninitialised memory a word at a time: built field by field,
    /// the mostly-zero value would become a `memset` call in the kernel (see `words`).
    #[inline(always)]
    pub fn init(slot: &mut core::mem::MaybeUninit<Self>, role: u8) -> &mut Self {
        zero_words(slot);
        // SAFETY: every field is an integer, so all zeroes is a valid value.
        let conn = unsafe { slot.assume_init_mut() };
        conn.phase = phase::IDLE;
        conn.role = role;
        conn.templater.reset();
        conn
    }
}

/// Connections the idle sweep looks at per epoch (one idle timeout): those whose response
/// started in it. More in one epoch make the sweep walk the whole connection table instead.
pub const IDLE_CANDIDATE_SLOTS: u32 = 4096;

/// Slots of `IDLE_RINGS`: per ring (the parity of an epoch), the epoch it collects and the
/// slots claimed in it; and whether the next sweep must walk the whole table.
pub mod idle_ring {
    pub const fn epoch(ring: u32) -> u32 {
        ring
    }
    pub const fn claimed(ring: u32) -> u32 {
        2 + ring
    }
    pub const FULL_PASS: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// Words of `MEASURED_PROCESSES`, one bit per process id: 64-bit Linux never gives out ids
/// above PID_MAX_LIMIT (4,194,304), so 512 KiB hold them all.
pub const MEASURED_PROCESS_WORDS: u32 = 4_194_304 / 64;

/// The word of `MEASURED_PROCESSES` that holds `tgid`'s bit, and the bit.
#[inline(always)]
pub const fn measured_process_bit(tgid: u32) -> (u32, u64) {
    (tgid / 64, 1 << (tgid % 64))
}

/// Key of `CONNECTIONS`: the process and the file descriptor.
#[inline(always)]
pub const fn connection_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// Where the kernel keeps a process's open files (`current->files->fdt->fd[fd]`), found in its
/// BTF by the agent: the programs follow a passed descriptor to its `struct file`, which the
/// sender and the receiver share. Node's cluster module (and pm2) accept in the primary and
/// pass each connection to a worker; without this the worker's requests are never seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileTableOffsets {
    /// 1 when every offset was found; 0 turns the hand-over programs off.
    pub found: u32,
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.max_fds` (4 bytes).
    pub fdtable_max_fds: u32,
    /// `fdtable.fd`: the array of `struct file *`.
    pub fdtable_fd: u32,
    /// 1 when the way from a socket's file to its local port was found too (below): with
    /// `--http-ports`, the programs read a listener's port themselves.
    pub socket_found: u32,
    /// `file.private_data`: a socket's `struct socket *`.
    pub file_private_data: u32,
    /// `socket.sk`: its `struct sock *`.
    pub socket_sk: u32,
    /// `sock.__sk_common.skc_num` (2 bytes): the local port, in host order.
    pub sock_num: u32,
    /// `file.f_inode`, 0 where not found: with `inode.i_mode` (2 bytes), what tells a
    /// socket from a file or pipe.
    pub file_inode: u32,
    pub inode_mode: u32,
}

/// Words of `ALLOWED_PORTS`: a bit per TCP port.
pub const ALLOWED_PORT_WORDS: u32 = 65536 / 64;

/// The word and bit of `port` in `ALLOWED_PORTS`.
#[inline(always)]
pub fn allowed_port_bit(port: u16) -> (u32, u64) {
    (u32::from(port) / 64, 1 << (port % 64))
}

/// Key of `ROUTES_SEEN`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProcessRoute {
    pub route: u64,
    pub tgid: u32,
    pub _reserved: u32,
}

/// Indexes into the per-CPU `HTTP_COUNTERS` array, exported as `monitor_http_*`.
pub mod counter {
    /// Requests recognised (request lines parsed).
    pub const REQUESTS: u32 = 0;
    /// Responses paired with their request and recorded in a histogram.
    pub const RESPONSES: u32 = 1;
    /// Responses seen with no request to pair (a connection picked up mid-request).
    pub const UNMATCHED_RESPONSES: u32 = 2;
    /// Reads on a server connection, between requests, that were not an HTTP/1.x request
    /// but text (`not_http::TEXT`); the other kinds have their own counters, see
    /// [`not_http_counter`].
    pub const NOT_HTTP: u32 = 3;
    /// Requests whose connection closed before any response.
    pub const UNANSWERED: u32 = 4;
    /// Observations lost because `HTTP_DURATION` was full.
    pub const HISTOGRAM_FULL: u32 = 5;
    /// Connections not tracked because `CONNECTIONS` was full.
    pub const CONNECTIONS_FULL: u32 = 6;
    /// Route announcements written to the ring buffer.
    pub const EVENTS_SUBMITTED: u32 = 7;
    /// Route announcements lost (ring buffer full); their requests still count.
    pub const EVENTS_LOST: u32 = 8;
    /// Requests whose route was collapsed to `/<first>/{*}` by the budget.
    pub const ROUTES_COLLAPSED: u32 = 9;
    /// Requests counted under `__overflow__`.
    pub const ROUTES_OVERFLOWED: u32 = 10;
    /// Connections accepted and tracked.
    pub const CONNECTIONS_ACCEPTED: u32 = 11;
    /// Responses ended by the idle sweep (their connection stayed open without a request).
    pub const ENDED_IDLE: u32 = 12;
    /// Connections not tracked: accepted on a port outside `--http-ports`.
    pub const PORT_FILTERED: u32 = 13;
    /// Connections not tracked: accepted on a listener whose port the agent had not checked
    /// yet (a server that started listening after the agent, with `--http-ports`).
    pub const LISTENER_UNCHECKED: u32 = 14;
    /// Client connections tracked at connect.
    pub const CLIENT_CONNECTIONS: u32 = 15;
    /// Client connections dropped: their first write was not an HTTP/1.x request.
    pub const CLIENT_NOT_HTTP: u32 = 16;
    /// Client requests written.
    pub const CLIENT_REQUESTS: u32 = 17;
    /// Client requests recorded with their response.
    pub const CLIENT_RECORDED: u32 = 18;
    /// Reads that were not requests, by kind (`not_http::*`, text excepted).
    pub const NOT_HTTP_TLS: u32 = 19;
    pub const NOT_HTTP_HTTP2: u32 = 20;
    pub const NOT_HTTP_BINARY: u32 = 21;
    pub const NOT_HTTP_INVALID_METHOD: u32 = 22;
    /// Requests answered without a status line: HTTP/0.9, or a server that does not speak
    /// HTTP/1.x.
    pub const NO_STATUS_LINE: u32 = 23;
    /// Responses to reads that were not requests (a 400 to noise on a keep-alive
    /// connection): not recorded, and not taken for a pipelined request.
    pub const UNMATCHED_NOT_HTTP: u32 = 24;
    /// Responses whose writes failed because the client had reset or closed the connection
    /// (recorded with their status, up to the last write that succeeded).
    pub const RESPONSES_ABORTED: u32 = 25;
    /// Idle sweeps that walked the whole connection table instead of the epoch's candidates
    /// (a ring overflowed, a candidate could not be listed, or a sweep was missed).
    pub const IDLE_FULL_SWEEPS: u32 = 26;
    /// Server connections a process received from another over a Unix socket (SCM_RIGHTS),
    /// tracked from then on (`FileTableOffsets`).
    pub const CONNECTIONS_RECEIVED: u32 = 27;
    /// Server connections a forked child took over from its parent (`fork` in the kernel
    /// crate): found by a request line read on a descriptor nobody tracked.
    pub const CONNECTIONS_INHERITED: u32 = 28;
    /// Observations whose histogram could not be allocated when their request ended, carried
    /// to the agent on the ring buffer (`ObservationEvent`); counted as recorded too.
    pub const OBSERVATIONS_CARRIED: u32 = 29;
    /// Observations lost: their histogram could not be allocated and the ring buffer was
    /// full.
    pub const OBSERVATIONS_LOST: u32 = 30;
    /// Client responses whose status line was read before the write of their request
    /// returned (`conn_flags::ANSWERED_EARLY`).
    pub const CLIENT_ANSWERED_EARLY: u32 = 31;
    pub const COUNT: u32 = 32;

    /// The counter of a read that was not a request, by its `not_http::*` kind.
    #[inline(always)]
    pub const fn not_http_counter(kind: u8) -> u32 {
        match kind {
            super::not_http::TLS => NOT_HTTP_TLS,
            super::not_http::HTTP2 => NOT_HTTP_HTTP2,
            super::not_http::BINARY => NOT_HTTP_BINARY,
            super::not_http::INVALID_METHOD => NOT_HTTP_INVALID_METHOD,
            _ => NOT_HTTP,
        }
    }
}

const _: () = assert!(core::mem::size_of::<SegmentShape>() == 24);
const _: () = assert!(core::mem::size_of::<NotRequestScanner>() == 8);
const _: () = assert!(core::mem::size_of::<RouteTemplater>() == 56);
const _: () = assert!(core::mem::size_of::<HttpEvent>() == 16 + MAX_PATH_LEN);
const _: () = assert!(core::mem::size_of::<DurationKey>() == 16);
const _: () = assert!(core::mem::size_of::<DurationHistogram>() == 8 * (MAX_DURATION_BOUNDS + 2));
const _: () = assert!(core::mem::size_of::<Connection>() == 56 + 56 + 40 + 24);
const _: () = assert!(core::mem::size_of::<ProcessRoute>() == 16);
const _: () = assert!(core::mem::size_of::<ClientErrorKey>() == 16);
const _: () = assert!(
    core::mem::size_of::<HttpConfig>() == 8 * MAX_DURATION_BOUNDS + 40 + 16 * MAX_EXCLUDED_COMMS
);
const _: () = assert!(CAPTURE_LEN.is_power_of_two() && MAX_DURATION_BOUNDS.is_power_of_two());

/// The agent's side of templating: the route's text and hashes, from the same bytes the kernel
/// templated. (`None` for a target that is not a path.)
#[cfg(any(test, feature = "user"))]
pub fn template_route(target: &[u8]) -> Template {
    template_with(target, false)
}

/// The route of a path that went on past the `MAX_PATH_LEN` bytes of `target`: what the
/// kernel templated when it saw more than it announced. (An announcement of that many bytes
/// is either; the hash tells which.)
#[cfg(any(test, feature = "user"))]
pub fn template_cut_route(target: &[u8]) -> Template {
    template_with(target, true)
}

#[cfg(any(test, feature = "user"))]
fn template_with(target: &[u8], cut: bool) -> Template {
    let mut text = TextSink::default();
    let mut templater = RouteTemplater::new();
    for &b in target {
        if templater.feed(b, &mut text) == Fed::End {
            break;
        }
    }
    if cut && templater.ended == 0 && templater.path_len as usize >= MAX_PATH_LEN {
        templater.truncated = 1;
    }
    let hash = templater.finish(&mut text);
    let first = text.first_segment.clone();
    Template {
        text: if text.out.is_empty() {
            alloc::string::String::from("/")
        } else {
            text.out
        },
        hash,
        collapsed_text: alloc::format!("{first}/{{*}}"),
        collapsed_hash: templater.collapsed_hash(),
    }
}

#[cfg(any(test, feature = "user"))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub text: alloc::string::String,
    pub hash: u64,
    /// `/<first segment>/{*}`, what the route becomes once the budget is spent.
    pub collapsed_text: alloc::string::String,
    pub collapsed_hash: u64,
}

#[cfg(any(test, feature = "user"))]
#[derive(Default)]
struct TextSink {
    out: alloc::string::String,
    segment: alloc::vec::Vec<u8>,
    first_segment: alloc::string::String,
}

#[cfg(any(test, feature = "user"))]
impl TemplateSink for TextSink {
    fn segment_byte(&mut self, b: u8) {
        self.segment.push(b);
    }
    fn segment_end(&mut self, placeholder: Option<&'static [u8]>) {
        let bytes = placeholder.unwrap_or(&self.segment);
        self.out.push('/');
        // Segments are bytes; a route label is text: anything not UTF-8 is replaced.
        self.out
            .push_str(&alloc::string::String::from_utf8_lossy(bytes));
        self.segment.clear();
        // A path cut before its first segment ended has none: it collapses to `/{*}`.
        if self.first_segment.is_empty() && placeholder != Some(REST_PLACEHOLDER) {
            self.first_segment = self.out.clone();
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), made of integers, without padding (asserted above).
    unsafe impl aya::Pod for super::HttpEvent {}
    unsafe impl aya::Pod for super::DurationKey {}
    unsafe impl aya::Pod for super::DurationHistogram {}
    unsafe impl aya::Pod for super::Connection {}
    unsafe impl aya::Pod for super::ProcessRoute {}
    unsafe impl aya::Pod for super::FileTableOffsets {}
    unsafe impl aya::Pod for super::HttpConfig {}
    unsafe impl aya::Pod for super::ClientErrorKey {}
}

#[cfg(test)]
mod tests;
