//! Bounded polling: the only way these tests wait for anything.

use std::{
    thread,
    time::{Duration, Instant},
};

const INTERVAL: Duration = Duration::from_millis(50);

/// Calls `check` until it returns `Some`, or panics after `timeout` naming `what` and the last
/// state `check` reported through `last`.
pub fn poll_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(INTERVAL);
    }
}
