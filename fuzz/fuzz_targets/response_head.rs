//! A response's first read, as the kernel scans it (client side: status and framing).
//!
//! Input: a seed byte (how the bytes are cut), then the response's first read.
//! Checks: the status line and the head scanner agree with the plain rules over the captured
//! bytes; the scanner gives the same state however its bytes are cut; a head length is
//! within the capture.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_common::{
    head::{ResponseHeadScanner, framing},
    http::{CAPTURE_LEN, parse_status_line},
};
use monitor_fuzz::{
    reads::{head16, split},
    reference,
};

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let capture = &bytes[..bytes.len().min(CAPTURE_LEN)];
    let head = head16(capture);
    assert_eq!(
        parse_status_line(&head),
        reference::status_line(&head),
        "{head:?}"
    );

    let mut scanner = ResponseHeadScanner::default();
    for &b in capture {
        if !scanner.feed(b) {
            break;
        }
    }
    let (expected_framing, expected_len, expected_length) = reference::response_head(capture);
    assert_eq!(scanner.framing(), expected_framing);
    assert_eq!(scanner.head_len(), expected_len);
    assert!(scanner.head_len() as usize <= capture.len());
    if expected_framing == framing::LENGTH {
        assert_eq!(scanner.content_length, expected_length);
    }

    // The same bytes in pieces, the state copied between them as a map value would be.
    let mut pieces = ResponseHeadScanner::default();
    'reads: for read in split(capture, seed, CAPTURE_LEN) {
        let mut resumed = pieces;
        for &b in read {
            if !resumed.feed(b) {
                pieces = resumed;
                break 'reads;
            }
        }
        pieces = resumed;
    }
    assert_eq!(pieces, scanner);
});
