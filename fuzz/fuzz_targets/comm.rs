//! A task's `comm` as the kernel records it (16 bytes, NUL-padded or not at all), and the
//! kind of a kernel thread named by it.
//!
//! Input: up to 16 bytes of comm.
//! Checks: the text stops at the first NUL and holds none; a kernel thread's kind is a
//! non-empty prefix without `/` or `-`, or `unknown`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::collect::process::{comm_str, kernel_thread_kind};
use monitor_common::sched::COMM_LEN;

fuzz_target!(|data: &[u8]| {
    let mut comm = [0u8; COMM_LEN];
    let n = data.len().min(COMM_LEN);
    comm[..n].copy_from_slice(&data[..n]);
    let text = comm_str(&comm);
    assert!(!text.contains('\0'));
    let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    assert_eq!(text, String::from_utf8_lossy(&comm[..end]));
    let kind = kernel_thread_kind(&text);
    assert!(!kind.is_empty() && !kind.contains(['/', '-']), "{kind:?}");
    assert!(
        text.starts_with(kind) || kind == "unknown",
        "{kind:?} of {text:?}"
    );
});
