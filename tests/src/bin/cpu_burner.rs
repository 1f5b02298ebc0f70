//! A workload for the CPU tests, run under a unique name so its `service_name` is its own.
//!
//! - `cpu-burner burn <ms>`: spin until this process has used <ms> of CPU, print the CPU
//!   nanoseconds it used (CLOCK_PROCESS_CPUTIME_ID), exit.
//! - `cpu-burner spin <threads>`: spin that many threads until killed.
//! - `cpu-burner idle`: print `ready`, then block until stdin closes, never running meanwhile.
//! - `cpu-burner pingpong <ms>`: two threads pass a byte back and forth over pipes for <ms>
//!   of wall time (a context switch per pass, for the scheduler benchmark); prints the passes.
//! - `cpu-burner getppid <ms>`: calls getppid(2) in a loop for <ms> of wall time (a syscall
//!   that no hook of the agent cares about, for the benchmark); prints the calls.
use std::{
    fs::File,
    hint::black_box,
    io::{Read as _, Write as _},
    os::fd::FromRawFd as _,
    thread,
    time::{Duration, Instant},
};

fn process_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn spin_forever() -> ! {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: a valid two-element array; on success both fds are ours to own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe failed");
    // SAFETY: fresh fds from pipe(2), owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// Bounces one byte between two threads until `duration` has passed; returns the passes.
fn pingpong(duration: Duration) -> u64 {
    let (mut ping_rx, mut ping_tx) = pipe();
    let (mut pong_rx, mut pong_tx) = pipe();
    let echo = thread::spawn(move || {
        let mut byte = [0u8];
        while ping_rx.read_exact(&mut byte).is_ok() && byte[0] != 0 {
            pong_tx.write_all(&byte).unwrap();
        }
    });
    let deadline = Instant::now() + duration;
    let mut passes = 0;
    let mut byte = [1u8];
    while Instant::now() < deadline {
        ping_tx.write_all(&[1]).unwrap();
        pong_rx.read_exact(&mut byte).unwrap();
        passes += 2;
    }
    ping_tx.write_all(&[0]).unwrap();
    echo.join().unwrap();
    passes
}

/// Calls getppid(2) until `duration` has passed; returns the calls. The raw syscall, so no
/// libc may answer from a cache.
fn getppid_loop(duration: Duration) -> u64 {
    let deadline = Instant::now() + duration;
    let mut calls = 0;
    while Instant::now() < deadline {
        for _ in 0..1000 {
            // SAFETY: getppid takes no arguments and cannot fail.
            black_box(unsafe { libc::syscall(libc::SYS_getppid) });
        }
        calls += 1000;
    }
    calls
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = |i: usize| -> u64 {
        args.get(i)
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| {
                panic!("usage: cpu-burner burn <ms> | spin <threads> | idle | pingpong <ms> | getppid <ms>")
            })
    };
    match args.get(1).map(String::as_str) {
        Some("burn") => {
            let target = number(2) * 1_000_000;
            let mut x = 0u64;
            while process_cpu_ns() < target {
                for _ in 0..10_000 {
                    x = black_box(x.wrapping_add(1));
                }
            }
            println!("{}", process_cpu_ns());
        }
        Some("spin") => {
            for _ in 1..number(2) {
                thread::spawn(|| spin_forever());
            }
            spin_forever();
        }
        Some("pingpong") => println!("{}", pingpong(Duration::from_millis(number(2)))),
        Some("getppid") => println!("{}", getppid_loop(Duration::from_millis(number(2)))),
        Some("idle") => {
            // Start-up is over once this is out; from here on the process only waits.
            println!("ready");
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        }
        _ => {
            eprintln!(
                "usage: cpu-burner burn <ms> | spin <threads> | idle | pingpong <ms> | getppid <ms>"
            );
            std::process::exit(2);
        }
    }
}
