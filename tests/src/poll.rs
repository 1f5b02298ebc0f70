//! Bounded polling: the only way these tests wait for anything.

use std::{
    thread,
    time::{Duration, Instant},
};

const INTERVAL: Duration = Duration::from_millis(50);

/// Calls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn poll_until<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    try_poll(timeout, check)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Calls `check` until it returns `Some`; `None` once `timeout` has passed.
pub fn try_poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(INTERVAL);
    }
}
