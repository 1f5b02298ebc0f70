//! The scanners' rules written the plain way, over a whole slice: what the step-by-step
//! scanners (which the kernel runs in `bpf_loop` callbacks) must agree with.

use monitor_common::{
    head::{MAX_HOST_LEN, framing},
    http::{method, not_http},
};

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The head: everything up to and including the first blank line, if there is one.
fn head_end(bytes: &[u8]) -> Option<usize> {
    find(bytes, b"\r\n\r\n").map(|i| i + 4)
}

/// Where header lines start: after each `\n` before the head's end (the first line is the
/// request or status line).
fn line_starts(bytes: &[u8], end: usize) -> impl Iterator<Item = usize> + '_ {
    (0..end)
        .filter(move |&i| bytes[i] == b'\n')
        .map(|i| i + 1)
        .filter(move |&s| s < end)
}

fn starts_with_name(line: &[u8], name: &[u8]) -> bool {
    line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name)
}

/// `METHOD SP target`: a token of 3 to 12 upper-case letters, a space, and `/`, `*` or the
/// `h` of an absolute URI. Known methods by name, others `_OTHER`.
pub fn request_start(head: &[u8; 16]) -> Option<(u8, usize)> {
    let n = head.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if !(3..=12).contains(&n)
        || head[n] != b' '
        || !matches!(head[n + 1], b'/' | b'*' | b'h' | b'H')
    {
        return None;
    }
    let known = method::NAMES
        .iter()
        .position(|name| name.as_bytes() == &head[..n])
        .unwrap_or(method::OTHER as usize);
    // CONNECT opens a tunnel: not a request.
    (known != method::CONNECT as usize).then_some((known as u8, n + 1))
}

/// Too few bytes to tell, yet a beginning of a known method and its space (CONNECT, never
/// measured, aside), at most seven of them.
pub fn request_prefix(bytes: &[u8]) -> bool {
    (1..=7).contains(&bytes.len())
        && method::NAMES
            .iter()
            .filter(|name| !matches!(**name, "_OTHER" | "CONNECT"))
            .any(|name| format!("{name} ").as_bytes().starts_with(bytes))
}

/// Fewer than 12 bytes, all of which fit the start of `HTTP/1.x NNN` (any digits).
pub fn status_prefix(bytes: &[u8]) -> bool {
    (1..=11).contains(&bytes.len())
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            0..=6 => b == b"HTTP/1."[i],
            8 => b == b' ',
            _ => b.is_ascii_digit(),
        })
}

/// `HTTP/1.x NNN` with NNN a status code (100 to 599).
pub fn status_line(head: &[u8; 16]) -> Option<u16> {
    if !head.starts_with(b"HTTP/1.") || head[8] != b' ' {
        return None;
    }
    let digits = &head[9..12];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = digits
        .iter()
        .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    (100..=599).contains(&status).then_some(status)
}

/// The `Host` value: the first header line of the head named `host`, its value up to the
/// line's end with leading blanks skipped, its first `MAX_HOST_LEN` bytes, in lower case.
/// `None` without such a line.
pub fn host(bytes: &[u8]) -> Option<Vec<u8>> {
    let end = head_end(bytes).unwrap_or(bytes.len());
    let start = line_starts(bytes, end).find(|&s| starts_with_name(&bytes[s..], b"host:"))?;
    let value = &bytes[start + 5..];
    let value = &value[..value
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(value.len())];
    let blanks = value
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let value = &value[blanks..];
    Some(value[..value.len().min(MAX_HOST_LEN)].to_ascii_lowercase())
}

/// The host as it is counted: trailing blanks, then `:80` and `:443` dropped (the port
/// follows the last `:` outside `[...]`).
pub fn normalised_host(host: &[u8]) -> &[u8] {
    let blanks = host
        .iter()
        .rev()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let host = &host[..host.len() - blanks];
    let mut colon = None;
    let mut in_brackets = false;
    for (i, &b) in host.iter().enumerate() {
        match b {
            b'[' => in_brackets = true,
            b']' => in_brackets = false,
            b':' if !in_brackets => colon = Some(i),
            _ => {}
        }
    }
    match colon {
        // A leading `:` is no port separator.
        Some(i) if i > 0 && matches!(&host[i + 1..], b"80" | b"443") => &host[..i],
        _ => host,
    }
}

/// A response head's framing: (`framing::*`, head length, Content-Length). The head must
/// end (a blank line) in `bytes` for anything but `UNKNOWN`. The last `Content-Length` line
/// gives the length (digits, blanks between them skipped, capped near 10^15; no digit means
/// no length); any `Transfer-Encoding` means chunked.
pub fn response_head(bytes: &[u8]) -> (u16, u32, u64) {
    let Some(end) = head_end(bytes) else {
        return (framing::UNKNOWN, 0, 0);
    };
    let (mut chunked, mut has_length, mut length) = (false, false, 0u64);
    for s in line_starts(bytes, end) {
        let line = &bytes[s..end];
        if starts_with_name(line, b"content-length:") {
            (length, has_length) = (0, false);
            for &b in &line[b"content-length:".len()..] {
                match b {
                    b'0'..=b'9' => {
                        if length < 100_000_000_000_000 {
                            length = length * 10 + u64::from(b - b'0');
                        }
                        has_length = true;
                    }
                    b' ' | b'\t' => {}
                    _ => break,
                }
            }
        }
        if starts_with_name(line, b"transfer-encoding:") {
            chunked = true;
        }
    }
    let framing = if chunked {
        framing::CHUNKED
    } else if has_length {
        framing::LENGTH
    } else {
        framing::CLOSE
    };
    (framing, end as u32, length)
}

/// What a read that is not a request start is (`not_http::*`), from its first 16 bytes: a TLS
/// record's header, the HTTP/2 preface, anything that is not text, letters and a space before
/// a request target (a method the parser refused: lower case, too short or too long, or
/// `CONNECT` to a host whose name begins with `h`), else text.
pub fn not_request_kind(read: &[u8]) -> u8 {
    let first = &read[..read.len().min(16)];
    if first.starts_with(&[0x16, 0x03]) {
        return not_http::TLS;
    }
    if first.starts_with(b"PRI * HTTP/2.0") {
        return not_http::HTTP2;
    }
    if first
        .iter()
        .any(|&b| (b < b' ' && !matches!(b, b'\t' | b'\r' | b'\n')) || b >= 0x7f)
    {
        return not_http::BINARY;
    }
    let letters = first.iter().take_while(|b| b.is_ascii_alphabetic()).count();
    let request_line = letters > 0
        && first.get(letters) == Some(&b' ')
        && matches!(first.get(letters + 1), Some(b'/' | b'*' | b'h' | b'H'));
    if request_line {
        not_http::INVALID_METHOD
    } else {
        not_http::TEXT
    }
}

/// The length of a PROXY protocol header at the start of `read`: version 2 by its signature,
/// version and declared address length (whatever of it was read); version 1 up to its first
/// line break, which must be in the read and within the protocol's 107 bytes.
pub fn proxy_header_len(read: &[u8]) -> Option<usize> {
    const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    if read.starts_with(V2_SIGNATURE) {
        // Bytes 12 to 15, zero where the read stopped before them (as in the capture).
        let byte = |i: usize| read.get(i).copied().unwrap_or(0);
        return (byte(12) >> 4 == 2)
            .then(|| 16 + usize::from(u16::from_be_bytes([byte(14), byte(15)])));
    }
    if !read.starts_with(b"PROXY ") {
        return None;
    }
    read[..read.len().min(107)]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| i + 1)
}
