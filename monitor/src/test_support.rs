//! For unit tests: a file whose reading waits for good, and a bounded wait for a call that
//! may not return.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

/// A FIFO named `name` in `dir` that nobody writes: opening it for reading waits for a writer,
/// as a read of a stuck process's memory waits. Opening it for writing lets such a reader go.
pub fn fifo_without_writer(dir: &Path, name: &str) -> PathBuf {
    let fifo = dir.join(name);
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    fifo
}

/// What `call` returns, run on a thread of its own; `None` when it has not within `limit`
/// (the thread is left to it).
pub fn within<T: Send + 'static>(
    limit: Duration,
    call: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (done, answer) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(call());
    });
    answer.recv_timeout(limit).ok()
}
