//! Workloads made of many short-lived things, for the churn test, `cargo xtask churn` and
//! `cargo xtask soak`: processes that serve one request and exit, and requests to ever new
//! paths. Short connections come from ApacheBench without keep-alive (`servers::ab_with`).

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
};

use crate::http::{connect, read_responses, send};

/// What a run of one-shot servers did.
#[derive(Debug, Default)]
pub struct OneShotRun {
    /// Requests answered with 200.
    pub answered: usize,
    /// The servers' process ids (all exited by the time the run returns).
    pub pids: Vec<u32>,
}

/// Starts `count` one-shot servers from `program` (a copy of `one-shot-server`, named as the
/// service should be), `concurrency` at a time; each gets one `GET /once` and exits.
pub fn one_shot_servers(program: &Path, count: usize, concurrency: usize) -> OneShotRun {
    let next = AtomicUsize::new(0);
    let runs: Vec<OneShotRun> = thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut run = OneShotRun::default();
                    while next.fetch_add(1, Ordering::Relaxed) < count {
                        let (pid, status) = serve_one(program);
                        run.pids.push(pid);
                        run.answered += usize::from(status == 200);
                    }
                    run
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    runs.into_iter()
        .fold(OneShotRun::default(), |mut all, run| {
            all.answered += run.answered;
            all.pids.extend(run.pids);
            all
        })
}

/// One server's life: start, one request, exit. Returns its pid and the status it sent.
fn serve_one(program: &Path) -> (u32, u16) {
    let mut child = Command::new(program)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("reading the one-shot server's port");
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("one-shot server printed {line:?}, not a port"));
    let mut stream = connect(port);
    send(&mut stream, b"GET /once HTTP/1.1\r\nHost: churn\r\n\r\n");
    let status = read_responses(&mut stream, 1)[0];
    let exit = child.wait().expect("waiting for the one-shot server");
    assert!(exit.success(), "one-shot server failed: {exit}");
    (child.id(), status)
}

/// A path segment of letters only (so the route templater never takes it for an id): distinct
/// for every `n` below 26^5.
pub fn word(mut n: usize) -> String {
    let mut word = String::from("w");
    for _ in 0..5 {
        word.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
    }
    word
}

/// GETs `/{prefix}/{word(n)}` for every n in `first..first + count` on `port`, over
/// `connections` keep-alive connections. Returns how many were answered with `status`.
pub fn distinct_paths(
    port: u16,
    prefix: &str,
    first: usize,
    count: usize,
    connections: usize,
    status: u16,
) -> usize {
    let next = AtomicUsize::new(first);
    let end = first + count;
    thread::scope(|scope| {
        let workers: Vec<_> = (0..connections.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut stream = connect(port);
                    let mut matched = 0;
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= end {
                            return matched;
                        }
                        let request =
                            format!("GET /{prefix}/{} HTTP/1.1\r\nHost: churn\r\n\r\n", word(n));
                        send(&mut stream, request.as_bytes());
                        matched += usize::from(read_responses(&mut stream, 1)[0] == status);
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    })
}

#[cfg(test)]
mod tests {
    use super::word;

    #[test]
    fn words_are_distinct_letters() {
        let words: std::collections::HashSet<String> = (0..100_000).map(word).collect();
        assert_eq!(words.len(), 100_000);
        assert!(
            words
                .iter()
                .all(|w| w.bytes().all(|b| b.is_ascii_lowercase()))
        );
    }
}
