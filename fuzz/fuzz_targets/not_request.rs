//! A read where a server's request should start that is not one, as the kernel tells what it
//! is (`monitor_http_reads_not_http_total{reason}`).
//!
//! Input: the read. Checks: a read the method parser refuses, and that is not held as the
//! beginning of one, is classified as the plain rule says (TLS, HTTP/2, binary, a bad method,
//! text) by the byte-at-a-time scanner the kernel feeds from `bpf_loop` callbacks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_common::http::{
    CAPTURE_LEN, classify_not_request, is_request_prefix, not_http, parse_request_start,
};
use monitor_fuzz::{reads::head16, reference};

fuzz_target!(|data: &[u8]| {
    let read = &data[..data.len().min(CAPTURE_LEN)];
    let head = head16(read);
    if parse_request_start(&head).is_some() || is_request_prefix(&head, read.len()) {
        return; // a request, or held for the read that completes it
    }
    let kind = classify_not_request(&head, read.len());
    assert!(usize::from(kind) < not_http::NAMES.len(), "kind {kind}");
    assert_eq!(kind, reference::not_request_kind(read), "{read:?}");
});
