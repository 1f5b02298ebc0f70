//! The programs of `main.rs`, built with plain bounded loops instead of `bpf_loop` (Linux
//! 5.17), for kernels without that helper (Ubuntu 22.04's 5.15, RHEL 9's 5.14): the verifier
//! walks each loop to its bound, so the loops' bounds are kept tight.
#![no_std]
#![no_main]
// Inline assembly for BPF_CMPXCHG (see http::compare_exchange); nightly builds this crate.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[path = "loops/bounded.rs"]
mod loops;

mod client;
mod files;
mod fork;
mod handoff;
mod http;
mod maps;
mod programs;
mod sched;
mod server;
mod syscalls;
mod tls;
