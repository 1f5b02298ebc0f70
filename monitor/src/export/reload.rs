//! Re-reads `--web-config-file` when it, or a certificate, key or CA file it names, changes:
//! certificates renewed by cert-manager (a Secret volume swaps its files) or by hand take
//! effect without a restart, as they do for exporters built on exporter-toolkit. A file that
//! does not load leaves the previous configuration in force, says why in the log, and shows
//! in `monitor_web_config_last_reload_successful`.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Result, bail};
use axum_server::tls_rustls::RustlsConfig;
use prometheus::proto::MetricFamily;

use super::{basic_auth::SharedAuth, families, server::Protection};

/// How often the files are looked at: a `stat` of three or four files.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What identifies a file's content without reading it; a swapped symlink or a rewrite
/// changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileState {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileState {
    /// `None` for a file that is not there (or not readable), which is a state too.
    fn of(path: &Path) -> Option<Self> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(Self {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        })
    }
}

/// The web configuration file and the files it named when it was read, as they were then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    config: (PathBuf, Option<FileState>),
    files: Vec<(PathBuf, Option<FileState>)>,
}

/// The state of the configuration file itself, taken before it is read, so that a change
/// made while it is read is seen at the next check.
#[derive(Debug, Clone)]
pub struct ConfigState(PathBuf, Option<FileState>);

impl ConfigState {
    pub fn of(path: &Path) -> Self {
        Self(path.to_path_buf(), FileState::of(path))
    }

    /// Adds the states of the files the configuration names, taken before they are read.
    pub fn with_files(self, files: Vec<PathBuf>) -> Snapshot {
        Snapshot {
            config: (self.0, self.1),
            files: files
                .into_iter()
                .map(|path| {
                    let state = FileState::of(&path);
                    (path, state)
                })
                .collect(),
        }
    }
}

impl Snapshot {
    pub fn path(&self) -> &Path {
        &self.config.0
    }

    /// The same files as they are now.
    fn retaken(&self) -> Self {
        ConfigState::of(self.path())
            .with_files(self.files.iter().map(|(path, _)| path.clone()).collect())
    }
}

/// What a reload replaces in the running server.
pub struct Live {
    pub auth: SharedAuth,
    /// `None`: the server speaks plain HTTP, and a reload cannot change that.
    pub tls: Option<RustlsConfig>,
}

/// Outcomes of reloads, for `/metrics`.
#[derive(Default)]
pub struct Status {
    successes: AtomicU64,
    failures: AtomicU64,
    last_failed: AtomicBool,
}

impl Status {
    fn record(&self, succeeded: bool) {
        let counter = if succeeded {
            &self.successes
        } else {
            &self.failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.last_failed.store(!succeeded, Ordering::Relaxed);
    }

    pub fn families(&self) -> Vec<Option<MetricFamily>> {
        let healthy = !self.last_failed.load(Ordering::Relaxed);
        vec![
            families::counter(
                "monitor_web_config_reloads_total",
                "Times --web-config-file or a file it names changed and was read again, by \
                 result (failure: the previous configuration stays in force).",
            )
            .value(
                &[("result", "success")],
                self.successes.load(Ordering::Relaxed) as f64,
            )
            .value(
                &[("result", "failure")],
                self.failures.load(Ordering::Relaxed) as f64,
            )
            .build(),
            families::gauge(
                "monitor_web_config_last_reload_successful",
                "1 if --web-config-file loaded at the last change of it or its files (or none \
                 changed since the start), 0 if the previous configuration is still in force.",
            )
            .value(&[], if healthy { 1.0 } else { 0.0 })
            .build(),
        ]
    }
}

/// Checks the files every `CHECK_INTERVAL` and applies what changed; runs until aborted.
pub async fn watch(mut seen: Snapshot, live: Live, status: Arc<Status>) {
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the files were read just now
    loop {
        ticker.tick().await;
        let previous = seen.clone();
        // stat, file reads and certificate parsing block: off the async threads.
        let Ok(check) = tokio::task::spawn_blocking(move || check(&previous)).await else {
            continue;
        };
        let Some((now, loaded)) = check else {
            continue;
        };
        // Remember the files as they were read, failed or not: a broken file is reported
        // once, and read again when it changes next.
        seen = loaded
            .as_ref()
            .ok()
            .and_then(Protection::snapshot)
            .unwrap_or(now);
        match loaded.and_then(|protection| apply(protection, &live)) {
            Ok(()) => {
                log::info!(
                    "--web-config-file {} changed: reloaded",
                    seen.path().display()
                );
                status.record(true);
            }
            Err(error) => {
                // The error names the file.
                log::warn!(
                    "a change was not applied, the previous configuration stays in force: \
                     {error:#}"
                );
                status.record(false);
            }
        }
    }
}

/// `None` when nothing changed since `seen`; else the files' states now and what loading
/// them gave.
fn check(seen: &Snapshot) -> Option<(Snapshot, Result<Protection>)> {
    let now = seen.retaken();
    if now == *seen {
        return None;
    }
    let loaded = Protection::load(Some(now.path()));
    Some((now, loaded))
}

/// Puts a loaded configuration in force: the certificate and key for new handshakes, and the
/// users for new requests. Nothing changes when it asks for what needs a restart.
fn apply(protection: Protection, live: &Live) -> Result<()> {
    let (tls, auth) = protection.into_parts();
    match (&live.tls, tls) {
        (Some(running), Some(tls)) => running.reload_from_config(tls),
        (None, None) => {}
        (Some(_), None) => bail!("it turns TLS off, which needs a restart of the agent"),
        (None, Some(_)) => bail!("it turns TLS on, which needs a restart of the agent"),
    }
    *live.auth.write().unwrap_or_else(PoisonError::into_inner) = auth;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn write(path: &Path, text: &str) {
        fs::write(path, text).unwrap();
    }

    #[test]
    fn a_rewritten_or_swapped_file_is_a_change_and_an_untouched_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("web.yml");
        let cert = dir.path().join("cert.pem");
        write(&config, "basic_auth_users: {}\n");
        write(&cert, "one");
        let seen = ConfigState::of(&config).with_files(vec![cert.clone()]);
        assert_eq!(seen.retaken(), seen, "nothing touched");

        // Rewritten in place (another size: two writes within one tick of the kernel's
        // coarse file clock can leave the same modification time).
        write(&cert, "second");
        let rewritten = seen.retaken();
        assert_ne!(rewritten, seen);

        // Replaced by a rename, as a Kubernetes Secret volume swaps its `..data` link.
        let fresh = dir.path().join("cert.pem.new");
        write(&fresh, "two");
        fs::rename(&fresh, &cert).unwrap();
        assert_ne!(rewritten.retaken(), rewritten);

        // Gone is a state of its own.
        let before = seen.retaken();
        fs::remove_file(&cert).unwrap();
        assert_ne!(before.retaken(), before);
    }
}
