//! The ABI between the kernel programs (`monitor-ebpf`) and the agent (`monitor`).
//!
//! Every type here crosses a BPF map: `#[repr(C)]`, no implicit padding (size asserts below),
//! and `aya::Pod` only behind the `user` feature so the BPF side stays free of `std`.
#![no_std]
// Inline assembly for `verifier::hide`; nightly builds the BPF target.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(any(test, feature = "user"))]
extern crate alloc;

pub mod fingerprint;
pub mod head;
pub mod http;
pub mod proxy;
pub mod sched;
pub mod verifier;
pub mod words;
