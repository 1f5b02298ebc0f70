//! The PROXY protocol header (HAProxy's, versions 1 and 2) that load balancers put before the
//! first request of a connection to pass on the client's address: AWS NLB, HAProxy
//! `send-proxy`, ingress-nginx with `use-proxy-protocol`. It is skipped, never read: its
//! addresses are a client's, and none ever becomes a label.

/// The v2 header's first 12 bytes.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, `\r\n` included.
pub const V1_MAX_LEN: usize = 107;
/// Words of the capture the v1 scan looks at: enough to hold `V1_MAX_LEN` bytes.
pub const V1_WORDS: usize = V1_MAX_LEN.div_ceil(8);

/// Whether a read that starts with `head` starts with a PROXY header (v1 or v2).
#[inline(always)]
pub fn starts_header(head: &[u8; 16]) -> bool {
    head.starts_with(b"PROXY ") || head[..12] == V2_SIGNATURE
}

/// The length of the PROXY header at the start of a read of `len` bytes, whose first bytes
/// are `head` and whose words (8 bytes each, little-endian, from the start) `word` gives:
/// `Some(n)` when the header ends after `n` bytes (which may be more than were read: a v2
/// header's declared length), `None` when the bytes are not a well-formed header start.
#[inline(always)]
pub fn header_len(head: &[u8; 16], len: usize, word: impl Fn(usize) -> u64) -> Option<usize> {
    if head[..12] == V2_SIGNATURE {
        // Version 2 in the high nibble of byte 12; the address block's length, big-endian.
        if head[12] >> 4 != 2 {
            return None;
        }
        return Some(16 + usize::from(u16::from_be_bytes([head[14], head[15]])));
    }
    if !head.starts_with(b"PROXY ") {
        return None;
    }
    // The line ends at the first `\n`, within V1_MAX_LEN bytes; found a word at a time.
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while i < V1_WORDS {
        let x = word(i) ^ (ONES * u64::from(b'\n'));
        let found = x.wrapping_sub(ONES) & !x & HIGHS;
        if found != 0 {
            let end = 8 * i + (found.trailing_zeros() / 8) as usize + 1;
            return (end <= len && end <= V1_MAX_LEN).then_some(end);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `header_len` of `bytes` as the kernel sees them: a zero-padded capture.
    fn header_of(bytes: &[u8]) -> Option<usize> {
        let mut capture = [0u8; 256];
        capture[..bytes.len()].copy_from_slice(bytes);
        let head: [u8; 16] = capture[..16].try_into().unwrap();
        let word = |i: usize| u64::from_le_bytes(capture[8 * i..8 * i + 8].try_into().unwrap());
        header_len(&head, bytes.len(), word)
    }

    #[test]
    fn a_v1_line_ends_at_its_line_feed() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
        let mut read = line.to_vec();
        read.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(header_of(&read), Some(line.len()));
        assert_eq!(header_of(line), Some(line.len()));
        let unknown = b"PROXY UNKNOWN\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(header_of(unknown), Some(15));
        // The longest the specification allows: UNKNOWN with two IPv6 addresses and ports.
        let longest = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), V1_MAX_LEN);
        assert_eq!(header_of(longest), Some(V1_MAX_LEN));
    }

    #[test]
    fn a_v1_line_without_its_end_is_not_a_header() {
        assert_eq!(header_of(b"PROXY TCP4 192.0.2.1 198.51"), None);
        let endless = [b"PROXY ".as_slice(), &[b'x'; 150]].concat();
        assert_eq!(header_of(&endless), None);
    }

    #[test]
    fn a_v2_header_declares_its_length() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x11, 0, 12]); // v2 PROXY, TCP over IPv4
        header.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 7, 0xdc, 0x04, 0x01, 0xbb]);
        header.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(header_of(&header), Some(28));
        let mut wrong_version = header.clone();
        wrong_version[12] = 0x11;
        assert_eq!(header_of(&wrong_version), None);
    }

    #[test]
    fn requests_and_noise_are_not_headers() {
        for bytes in [
            b"GET / HTTP/1.1\r\n\r\n".as_slice(),
            b"PROXYGET / HTTP/1.1\r\n",
            b"\r\n\r\n\r\n",
            b"",
        ] {
            let mut head = [0u8; 16];
            head[..bytes.len().min(16)].copy_from_slice(&bytes[..bytes.len().min(16)]);
            assert!(!starts_header(&head), "{bytes:?}");
            assert_eq!(header_of(bytes), None, "{bytes:?}");
        }
    }
}
