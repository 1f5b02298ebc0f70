//! A PROXY protocol header (versions 1 and 2) before a connection's first request, whose
//! length the kernel finds in order to skip it.
//!
//! Input: a seed byte (where the read ends), then the capture's bytes: the read, then what an
//! earlier, longer read left in the capture after it. Checks: the header length the
//! word-at-a-time scan finds is the plain rule's over the read alone, so bytes left from an
//! earlier read never change it; a version 1 header ends at its first line break, within the
//! read and the protocol's 107 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_common::{
    http::CAPTURE_LEN,
    proxy::{header_len, starts_header},
};
use monitor_fuzz::reference;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let bytes = &bytes[..bytes.len().min(CAPTURE_LEN)];
    let len = usize::from(seed).min(bytes.len());
    let read = &bytes[..len];
    // As the kernel's capture holds it: the first 16 bytes zeroed past the read, the rest
    // whatever was there.
    let mut capture = [0u8; CAPTURE_LEN];
    capture[..bytes.len()].copy_from_slice(bytes);
    capture[len.min(16)..16].fill(0);
    let head: [u8; 16] = capture[..16].try_into().unwrap();
    let word = |i: usize| {
        let at = (8 * i) % CAPTURE_LEN;
        u64::from_le_bytes(capture[at..at + 8].try_into().unwrap())
    };
    let found = header_len(&head, len, word);
    assert_eq!(found, reference::proxy_header_len(read), "{read:?}");
    // The kernel asks for a length only after `starts_header` said yes: a header it finds
    // must be one that check lets through.
    assert!(found.is_none() || starts_header(&head), "{read:?}");
    if let (Some(end), b'P') = (found, head[0]) {
        assert!(
            end <= len && end <= 107 && read[end - 1] == b'\n',
            "{read:?}"
        );
    }
});
