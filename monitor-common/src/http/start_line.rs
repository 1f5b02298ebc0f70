//! Start lines: request methods, request and status lines recognised from a read's first
//! bytes, and the prefixes held when a read is too short to tell.

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
pub fn is_http2_preface(head: &[u8; 16]) -> bool {
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
