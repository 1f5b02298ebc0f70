//! A response's first read, as the kernel scans it (client side: status and framing).
//!
//! Input: a seed byte (unused, kept so the corpus stays valid), then the response's first
//! read. Checks: the status line, the check of a read too short for one, and the head
//! scanner agree with the plain rules over the captured bytes; a head length is within the capture; a head read on in windows past the
//! capture (`scan_long_head`), when it found the head's end, agrees with the plain rules over
//! the whole read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_common::{
    head::{framing, head_kind, scan_head, scan_long_head},
    http::{CAPTURE_LEN, is_status_prefix, parse_status_line},
};
use monitor_fuzz::{reads::head16, reference};

fuzz_target!(|data: &[u8]| {
    let Some((_, bytes)) = data.split_first() else {
        return;
    };
    let capture = &bytes[..bytes.len().min(CAPTURE_LEN)];
    let head = head16(capture);
    assert_eq!(
        parse_status_line(&head),
        reference::status_line(&head),
        "{head:?}"
    );
    // A read too short for a status line is held for the next only when it begins one.
    assert_eq!(
        is_status_prefix(&head, capture.len()),
        reference::status_prefix(capture),
        "{head:?}"
    );

    let (lines, _) = scan_head(head_kind::RESPONSE, capture);
    let (expected_framing, expected_len, expected_length) = reference::response_head(capture);
    assert_eq!(lines.framing(), expected_framing);
    assert_eq!(lines.head_len, expected_len);
    assert!(lines.head_len as usize <= capture.len());
    if expected_framing == framing::LENGTH {
        assert_eq!(lines.content_length, expected_length);
    }

    let (long, _) = scan_long_head(bytes);
    if long.framing() != framing::UNKNOWN {
        let (whole_framing, head_len, length) = reference::response_head(bytes);
        assert_eq!((long.framing(), long.head_len), (whole_framing, head_len));
        if whole_framing == framing::LENGTH {
            assert_eq!(long.content_length, length);
        }
    }
});
