//! procfs files the kernel reads out of a process's own memory: `cmdline` and `environ`. Such a
//! read waits for the process's memory-map lock, which a process stuck in the kernel (on a hung
//! NFS or FUSE mount, say) can hold for as long as it is stuck: the agent's refresh, and every
//! scrape waiting for it, would hang with it. These reads run on a reader thread instead, and
//! are waited for `READ_TIMEOUT` at most. A reader that does not answer is left to its read and
//! another started, up to `MAX_STUCK` at once; past that such reads fail at once until one
//! comes back. A process whose read failed is named without its command line or environment,
//! and its name asked for again later (`ProcessIdentity::incomplete`).
//! (The exec namer, which nothing waits for, has readers of its own that wait longer:
//! `read_at_exec`.)

use std::{
    io,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

/// Far longer than such a read takes (microseconds; a process loading from a cold disk can
/// hold its memory map for a second or more, though), short enough that a refresh stuck on
/// one is a few missed ticks, not an outage.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Reader threads left waiting on stuck processes at most.
const MAX_STUCK: usize = 4;
/// The exec namer's wait: nothing waits for it, and a process that has just exec'd can still
/// be loading from a cold disk; but one stuck for good must not stop the naming of every
/// process after it (its name is then left to the refresh).
const READ_AT_EXEC_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads `path` (a `/proc/<pid>/cmdline` or `environ`) on the agent's reader thread, waiting
/// at most `READ_TIMEOUT`.
pub fn read(path: impl Into<PathBuf>) -> io::Result<Vec<u8>> {
    static READER: OnceLock<Reader> = OnceLock::new();
    READER
        .get_or_init(|| procfs_reader(READ_TIMEOUT))
        .read(path.into())
}

/// `read`, for the exec namer: on readers of its own, waiting at most `READ_AT_EXEC_TIMEOUT`.
pub fn read_at_exec(path: impl Into<PathBuf>) -> io::Result<Vec<u8>> {
    static READER: OnceLock<Reader> = OnceLock::new();
    READER
        .get_or_init(|| procfs_reader(READ_AT_EXEC_TIMEOUT))
        .read(path.into())
}

fn procfs_reader(timeout: Duration) -> Reader {
    Reader::new(
        Arc::new(|path: &Path| std::fs::read(path)),
        // A reader thread reads procfs only: it keeps what the agent keeps to do so.
        || {
            let _ = crate::privileges::drop_in_this_thread(&[]);
        },
        timeout,
        MAX_STUCK,
    )
}

/// Reads that did not answer in time, since the agent started.
pub fn timed_out_total() -> u64 {
    TIMED_OUT.load(Ordering::Relaxed)
}

static TIMED_OUT: AtomicU64 = AtomicU64::new(0);

type ReadFn = Arc<dyn Fn(&Path) -> io::Result<Vec<u8>> + Send + Sync>;
type Job = (PathBuf, mpsc::SyncSender<io::Result<Vec<u8>>>);

struct Reader {
    read: ReadFn,
    on_start: fn(),
    timeout: Duration,
    max_stuck: usize,
    current: Mutex<Option<Worker>>,
    /// Readers given up on whose read has not returned yet.
    stuck: Arc<AtomicUsize>,
}

/// The reader thread taking jobs now.
struct Worker {
    jobs: mpsc::Sender<Job>,
    abandoned: Arc<AtomicBool>,
}

impl Reader {
    fn new(read: ReadFn, on_start: fn(), timeout: Duration, max_stuck: usize) -> Self {
        Self {
            read,
            on_start,
            timeout,
            max_stuck,
            current: Mutex::new(None),
            stuck: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn read(&self, path: PathBuf) -> io::Result<Vec<u8>> {
        let path_text = path.display().to_string();
        let (reply, answer) = mpsc::sync_channel(1);
        let abandoned = {
            let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            if current.is_none() {
                *current = Some(self.start_worker()?);
            }
            let worker = current.as_ref().expect("a worker was just set");
            if worker.jobs.send((path, reply)).is_err() {
                *current = None;
                return Err(io::Error::other("the procfs reader stopped"));
            }
            worker.abandoned.clone()
        };
        match answer.recv_timeout(self.timeout) {
            Ok(result) => result,
            Err(_) => {
                log::warn!(
                    "{} did not answer within {:?}: the process is named without it",
                    path_text,
                    self.timeout
                );
                self.give_up(&abandoned);
                TIMED_OUT.fetch_add(1, Ordering::Relaxed);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "a procfs read of a process's memory did not answer",
                ))
            }
        }
    }

    /// Leaves the current reader to the read it is stuck on: the next read starts another.
    fn give_up(&self, abandoned: &Arc<AtomicBool>) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let is_current = current
            .as_ref()
            .is_some_and(|worker| Arc::ptr_eq(&worker.abandoned, abandoned));
        if is_current {
            // Counted and flagged before its queue closes (below): the reader uncounts itself
            // once, when its read returns or it finds the queue closed.
            self.stuck.fetch_add(1, Ordering::SeqCst);
            abandoned.store(true, Ordering::SeqCst);
            *current = None;
        }
    }

    fn start_worker(&self) -> io::Result<Worker> {
        if self.stuck.load(Ordering::SeqCst) >= self.max_stuck {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "every procfs reader is stuck on a process",
            ));
        }
        let (jobs, queue) = mpsc::channel::<Job>();
        let abandoned = Arc::new(AtomicBool::new(false));
        let (read, on_start, stuck, flag) = (
            self.read.clone(),
            self.on_start,
            self.stuck.clone(),
            abandoned.clone(),
        );
        std::thread::Builder::new()
            .name("procfs-reader".into())
            .spawn(move || {
                on_start();
                while let Ok((path, reply)) = queue.recv() {
                    let _ = reply.send(read(&path));
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                }
                if flag.load(Ordering::SeqCst) {
                    stuck.fetch_sub(1, Ordering::SeqCst);
                }
            })?;
        Ok(Worker { jobs, abandoned })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads that block while their path is `stuck` until `release` is sent.
    fn blocking_reader(release: Arc<Mutex<mpsc::Receiver<()>>>, max_stuck: usize) -> Reader {
        Reader::new(
            Arc::new(move |path: &Path| {
                if path == Path::new("stuck") {
                    let _ = release.lock().unwrap().recv();
                }
                Ok(path.as_os_str().as_encoded_bytes().to_vec())
            }),
            || {},
            Duration::from_millis(100),
            max_stuck,
        )
    }

    #[test]
    fn a_stuck_read_times_out_and_later_reads_still_answer() {
        let (release, released) = mpsc::channel();
        let reader = blocking_reader(Arc::new(Mutex::new(released)), 2);
        assert_eq!(reader.read("a".into()).unwrap(), b"a");
        let error = reader.read("stuck".into()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        // Another reader took over.
        assert_eq!(reader.read("b".into()).unwrap(), b"b");
        assert_eq!(reader.stuck.load(Ordering::SeqCst), 1);
        // The stuck one comes back and counts itself out.
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while reader.stuck.load(Ordering::SeqCst) != 0 {
            assert!(std::time::Instant::now() < deadline, "never came back");
            std::thread::yield_now();
        }
    }

    #[test]
    fn past_the_stuck_readers_allowed_reads_fail_at_once() {
        let (release, released) = mpsc::channel();
        let reader = blocking_reader(Arc::new(Mutex::new(released)), 2);
        for _ in 0..2 {
            let error = reader.read("stuck".into()).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        }
        let started = std::time::Instant::now();
        let error = reader.read("a".into()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        assert!(started.elapsed() < Duration::from_millis(100));
        // One comes back: reads answer again.
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match reader.read("a".into()) {
                Ok(bytes) => break assert_eq!(bytes, b"a"),
                Err(error) => assert_eq!(error.kind(), io::ErrorKind::WouldBlock),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "reads never answered again"
            );
            std::thread::yield_now();
        }
        release.send(()).unwrap();
    }
}
