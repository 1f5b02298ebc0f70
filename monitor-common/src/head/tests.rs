use super::*;

fn host_of(head: &[u8]) -> (alloc::string::String, u64) {
    let (_, host) = scan_head(head_kind::REQUEST, head);
    let len = host.normalised_len();
    let text = alloc::string::String::from_utf8_lossy(&host.host[..len]).into_owned();
    (text, host.hash())
}

fn head_of(response: &[u8]) -> HeadLines {
    scan_head(head_kind::RESPONSE, response).0
}

#[test]
fn newlines_are_marked_exactly() {
    let word = u64::from_le_bytes(*b"a\n\nb\n\x0b\x8a\n");
    assert_eq!(newline_bytes(word), 0x8000_0080_0080_8000);
    assert_eq!(lowest_marked_byte(newline_bytes(word)), 1);
    assert_eq!(lowest_marked_byte(0x8000_0000_0000_0000), 7);
    assert_eq!(lowest_marked_byte(0x80), 0);
    // Every byte value next to a `\n`, in every position: only the `\n` is marked.
    for b in 0..=255u8 {
        for at in 0..WORD {
            let mut bytes = [b; WORD];
            bytes[at] = b'\n';
            let marks = newline_bytes(u64::from_le_bytes(bytes));
            let expected = bytes
                .iter()
                .enumerate()
                .filter(|&(_, &x)| x == b'\n')
                .fold(0u64, |m, (i, _)| m | 0x80 << (8 * i));
            assert_eq!(marks, expected, "byte {b:#x} with a newline at {at}");
            assert_eq!(
                lowest_marked_byte(marks) as usize,
                bytes.iter().position(|&x| x == b'\n').unwrap()
            );
        }
    }
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
fn host_lines_are_found_in_any_word_position() {
    // The Host line moved one byte at a time across word boundaries.
    for pad in 0..2 * WORD {
        let mut head = b"GET /".to_vec();
        head.extend(core::iter::repeat_n(b'a', pad));
        head.extend_from_slice(b" HTTP/1.1\r\nAccept: */*\r\nHost: web:8080\r\n\r\n");
        assert_eq!(host_of(&head).0, "web:8080", "path padded by {pad}");
    }
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
    // Nor a line cut by the capture before its name is complete.
    assert_eq!(host_of(b"GET / HTTP/1.1\r\nHos").1, 0);
}

#[test]
fn content_length_and_head_length_are_read() {
    let response =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length:  1234\r\n\r\nbody";
    let scanner = head_of(response);
    assert_eq!(scanner.framing(), framing::LENGTH);
    assert_eq!(scanner.content_length, 1234);
    assert_eq!(scanner.head_len as usize, response.len() - 4);
}

#[test]
fn the_last_content_length_line_counts() {
    let head = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n");
    assert_eq!((head.framing(), head.content_length), (framing::LENGTH, 7));
    let empty = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: x\r\n\r\n");
    assert_eq!(empty.framing(), framing::CLOSE);
}

#[test]
fn chunked_and_close_delimited_are_told_apart() {
    let chunked = head_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n");
    assert_eq!(chunked.framing(), framing::CHUNKED);
    let close = head_of(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n");
    assert_eq!(close.framing(), framing::CLOSE);
    let cut = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n");
    assert_eq!(cut.framing(), framing::UNKNOWN);
    assert_eq!(cut.head_len, 0);
    let bare = head_of(b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!((bare.framing(), bare.head_len), (framing::CLOSE, 19));
}

#[test]
fn a_header_value_mentioning_content_length_is_not_one() {
    let scanner = head_of(b"HTTP/1.1 200 OK\r\nX-Note: Content-Length: 9\r\n\r\n");
    assert_eq!(scanner.framing(), framing::CLOSE);
}

#[test]
fn bytes_past_the_capture_are_not_read() {
    // A stale `\n` after the captured bytes must not start a line.
    let mut bytes = [b'x'; CAPTURE_LEN];
    let response = b"HTTP/1.1 200 OK\r\nServer: x";
    bytes[..response.len()].copy_from_slice(response);
    bytes[response.len()..response.len() + 4].copy_from_slice(b"\r\n\r\n");
    let mut lines = HeadLines::new(head_kind::RESPONSE, response.len());
    let word = |i: usize| u64::from_le_bytes(bytes[i * WORD..(i + 1) * WORD].try_into().unwrap());
    while lines.step(&bytes, word) {}
    assert_eq!(lines.framing(), framing::UNKNOWN);
}

/// A head of `headers` (each a whole line without its `\r\n`) and `Content-Length: 42`
/// after them, then the body.
fn long_response(headers: &[alloc::string::String]) -> alloc::vec::Vec<u8> {
    let mut read = b"HTTP/1.1 200 OK\r\n".to_vec();
    for header in headers {
        read.extend_from_slice(header.as_bytes());
        read.extend_from_slice(b"\r\n");
    }
    read.extend_from_slice(b"Content-Length: 42\r\n\r\n");
    read.extend_from_slice(&[b'b'; 42]);
    read
}

#[test]
fn a_head_longer_than_one_capture_is_read_in_windows() {
    use alloc::format;
    // Line lengths that put the Content-Length line, the blank line, and the `\r\n`
    // pairs across window edges in every position.
    for filler in 0..80 {
        for lines in 1..12 {
            let headers: alloc::vec::Vec<_> = (0..lines)
                .map(|i| format!("X-Header-{i}: {}", "v".repeat(filler + i)))
                .collect();
            let read = long_response(&headers);
            let head_len = read.len() - 42;
            let (long, windows) = scan_long_head(&read);
            if head_len > CAPTURE_LEN * 6 {
                continue; // more than the windows can reach whatever the lines
            }
            assert_eq!(
                (long.framing(), long.head_len as usize, long.content_length),
                (framing::LENGTH, head_len, 42),
                "filler {filler}, lines {lines}, windows {windows}"
            );
        }
    }
}

#[test]
fn a_header_line_longer_than_a_window_is_stepped_over() {
    use alloc::format;
    for long_line in [300, 600, 1000] {
        for before in [0, 100, 250] {
            let headers = [
                format!("X-Before: {}", "a".repeat(before)),
                format!("Content-Security-Policy: {}", "p".repeat(long_line)),
                alloc::string::String::from("Transfer-Encoding: chunked"),
            ];
            let read = long_response(&headers);
            let (long, _) = scan_long_head(&read);
            assert_eq!(
                long.head_len as usize,
                read.len() - 42,
                "{long_line} {before}"
            );
            assert_eq!(long.framing(), framing::CHUNKED);
        }
    }
}

#[test]
fn a_head_that_goes_on_past_the_read_or_the_windows_stays_unknown() {
    use alloc::format;
    let read = long_response(&[format!("X-Big: {}", "z".repeat(400))]);
    let cut = &read[..read.len() - 60];
    assert_eq!(scan_long_head(cut).0.framing(), framing::UNKNOWN);
    let huge = long_response(&[format!("X-Huge: {}", "z".repeat(3000))]);
    let (long, windows) = scan_long_head(&huge);
    assert_eq!((long.framing(), windows), (framing::UNKNOWN, HEAD_WINDOWS));
    // A head within the first capture is read in one window, as before.
    let short = long_response(&[]);
    let (long, windows) = scan_long_head(&short);
    assert_eq!((long.framing(), windows), (framing::LENGTH, 1));
}

#[test]
fn bodiless_statuses() {
    assert!(bodiless(204, false) && bodiless(304, false) && bodiless(101, false));
    assert!(bodiless(200, true));
    assert!(!bodiless(200, false));
}

#[test]
fn the_zero_size_chunk_after_a_line_break_ends_a_body() {
    let last = |bytes: &[u8; 8]| u64::from_be_bytes(*bytes);
    assert!(ends_with_last_chunk(last(b"x\r\n0\r\n\r\n")));
    assert!(ends_with_last_chunk(last(b"\n\r\n0\r\n\r\n")));
    // A header value or a chunk's data that ends in 0 is not the last chunk.
    assert!(!ends_with_last_chunk(last(b"age=0\r\n\r")));
    assert!(!ends_with_last_chunk(last(b"xa,0\r\n\r\n")));
    // Trailer fields after the last chunk put their own empty line last.
    assert!(!ends_with_last_chunk(last(b"c123\r\n\r\n")));
}

#[test]
fn a_trailer_sections_empty_line_is_seen_in_the_last_bytes() {
    let last = |bytes: &[u8; 8]| u64::from_be_bytes(*bytes);
    assert!(ends_with_empty_line(last(b"c123\r\n\r\n")));
    assert!(ends_with_empty_line(last(b"x\r\n0\r\n\r\n")));
    assert!(!ends_with_empty_line(last(b"abc123\r\n")));
    assert!(!ends_with_empty_line(last(b"3\r\n\r\n0\r\n")));
}
