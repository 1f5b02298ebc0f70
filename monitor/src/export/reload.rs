//! Re-reads `--web-config-file` when it, or a certificate, key or CA file it names, changes:
//! certificates renewed by cert-manager (a Secret volume swaps its files) or by hand take
//! effect without a restart, as they do for exporters built on exporter-toolkit. A change is
//! read once it has held still for one check, so that a file being written is read whole. A
//! file that does not load leaves the previous configuration in force, says why in the log,
//! and shows in `monitor_web_config_last_reload_successful`.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
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

/// A file and its state when looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedFile {
    path: PathBuf,
    state: Option<FileState>,
}

impl WatchedFile {
    /// For the configuration file itself, taken before it is read, so that a change made
    /// while it is read is seen at the next check.
    pub fn of(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            state: FileState::of(path),
        }
    }

    /// This (the configuration) and the states of the files it names, taken before they
    /// are read.
    pub fn with_files(self, files: Vec<PathBuf>) -> Snapshot {
        Snapshot {
            config: self,
            files: files.iter().map(|path| Self::of(path)).collect(),
        }
    }
}

/// The web configuration file and the files it named when it was read, as they were then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    config: WatchedFile,
    files: Vec<WatchedFile>,
}

impl Snapshot {
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// The same files as they are now.
    fn retaken(&self) -> Self {
        WatchedFile::of(self.path())
            .with_files(self.files.iter().map(|file| file.path.clone()).collect())
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

/// What one look at the files found.
enum Step {
    Unchanged,
    /// Changed since the last look: wait one more, so that a file being written is read
    /// whole.
    Settling(Snapshot),
    /// Unchanged since the last look, which had seen it change: read. The snapshot is the
    /// files as read (or as seen, if the configuration itself did not parse).
    Read(Snapshot, Result<Protection>),
}

/// Checks the files every `CHECK_INTERVAL` and applies a change once it has held still for
/// one interval; runs until aborted.
pub async fn watch(mut seen: Snapshot, live: Live, status: Arc<Status>) {
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the files were read just now
    let mut settling: Option<Snapshot> = None;
    loop {
        ticker.tick().await;
        let (previous, candidate) = (seen.clone(), settling.clone());
        // stat, file reads and certificate parsing block: off the async threads.
        let step = tokio::task::spawn_blocking(move || look(&previous, candidate.as_ref())).await;
        let loaded = match step {
            Ok(Step::Unchanged) => {
                settling = None;
                continue;
            }
            Ok(Step::Settling(now)) => {
                settling = Some(now);
                continue;
            }
            Ok(Step::Read(read, loaded)) => {
                // Remembered, failed or not: a broken file is reported once, and read again
                // when it (or a file it names) changes next.
                seen = read;
                loaded
            }
            Err(panicked) => {
                seen = settling.clone().unwrap_or(seen);
                Err(anyhow::anyhow!(
                    "--web-config-file {}: reading it failed: {panicked}",
                    seen.path().display()
                ))
            }
        };
        settling = None;
        // Every error then starts with the file's name, once.
        let applied = loaded.and_then(|protection| {
            apply(protection, &live)
                .with_context(|| format!("--web-config-file {}", seen.path().display()))
        });
        match applied {
            Ok(()) => {
                log::info!(
                    "--web-config-file {} changed: reloaded",
                    seen.path().display()
                );
                status.record(true);
            }
            Err(error) => {
                log::warn!(
                    "a change was not applied, the previous configuration stays in force: \
                     {error:#}"
                );
                status.record(false);
            }
        }
    }
}

fn look(seen: &Snapshot, settling: Option<&Snapshot>) -> Step {
    let now = seen.retaken();
    if now == *seen {
        return Step::Unchanged;
    }
    if settling != Some(&now) {
        return Step::Settling(now);
    }
    let (read, loaded) = Protection::read(now.path());
    Step::Read(read.unwrap_or(now), loaded)
}

/// Puts a loaded configuration in force: the certificate and key for new handshakes, and the
/// users for new requests. Nothing changes when it asks for what needs a restart: turning
/// TLS on or off, or removing every user, which would leave /metrics open (a file caught
/// half-written reads as one without users).
fn apply(protection: Protection, live: &Live) -> Result<()> {
    let (tls, auth) = protection.into_parts();
    let mut users = live.auth.write().unwrap_or_else(PoisonError::into_inner);
    if users.is_some() && auth.is_none() {
        bail!(
            "it has no basic_auth_users: turning authentication off needs a restart of the agent"
        );
    }
    match (&live.tls, tls) {
        (Some(running), Some(tls)) => running.reload_from_config(tls),
        (None, None) => {}
        (Some(_), None) => bail!("it turns TLS off, which needs a restart of the agent"),
        (None, Some(_)) => bail!("it turns TLS on, which needs a restart of the agent"),
    }
    *users = auth;
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
        let seen = WatchedFile::of(&config).with_files(vec![cert.clone()]);
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

    #[test]
    fn a_change_is_read_only_once_it_has_held_still_for_one_look() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("web.yml");
        write(&config, "basic_auth_users: {}\n");
        let seen = WatchedFile::of(&config).with_files(Vec::new());
        assert!(matches!(look(&seen, None), Step::Unchanged));

        write(&config, "basic_auth_users: {}\n# a comment\n");
        let Step::Settling(changed) = look(&seen, None) else {
            panic!("a fresh change is read at once");
        };
        // Written again before the next look: still settling.
        write(&config, "basic_auth_users: {}\n# a longer comment\n");
        let Step::Settling(rewritten) = look(&seen, Some(&changed)) else {
            panic!("a change still being written is read");
        };
        let Step::Read(read, loaded) = look(&seen, Some(&rewritten)) else {
            panic!("a change that held still is not read");
        };
        assert!(loaded.is_ok());
        assert_eq!(read, rewritten);
    }

    #[test]
    fn removing_every_user_is_refused_and_keeps_them() {
        let hash = "$2y$04$E7Dx2wGSDYmJM6X1aM6nEuNg3ZtZ1XJMzHgGdBZ0bq9t2Y0xUf4Ym".to_string();
        let users = [("prometheus".to_string(), hash)].into_iter().collect();
        let live = Live {
            auth: Arc::new(std::sync::RwLock::new(
                super::super::basic_auth::BasicAuth::new(&users),
            )),
            tls: None,
        };
        let error = apply(Protection::default(), &live).unwrap_err();
        assert!(error.to_string().contains("basic_auth_users"), "{error}");
        assert!(
            live.auth.read().unwrap().is_some(),
            "the users were dropped"
        );
    }

    #[test]
    fn files_a_failed_configuration_names_are_watched() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("web.yml");
        write(
            &config,
            "tls_server_config:\n  cert_file: new.pem\n  key_file: new.key\n",
        );
        let (read, loaded) = Protection::read(&config);
        assert!(loaded.is_err(), "new.pem is not there yet");
        let read = read.expect("the configuration itself parsed");
        // Putting the certificate in place is a change, so it is read again then.
        write(&dir.path().join("new.pem"), "not yet a certificate");
        assert_ne!(read.retaken(), read);
    }
}
