//! Kernel programs of `monitor`: entry points only, each a few lines calling into a module
//! (`programs.rs`).
//!
//! Every scheduler hook exists twice: as a BTF tracepoint (cheap, typed arguments) and as a
//! classic tracepoint (the fallback where BTF is missing). The agent loads one set.
//!
//! The same programs are built twice: here with their byte loops in `bpf_loop` callbacks
//! (Linux 5.17+), and in `bounded_loops.rs` as plain loops the verifier walks, for older
//! kernels. The agent loads one object.
#![no_std]
#![no_main]
// Inline assembly for BPF_CMPXCHG (see http::compare_exchange); nightly builds this crate.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[path = "loops/bpf_loop.rs"]
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
