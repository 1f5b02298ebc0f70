//! Workloads run under names of their own, so their series are theirs alone.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use tempfile::TempDir;

/// A copy of the `cpu-burner` helper under a unique name (shorter than a kernel comm).
pub struct Burner {
    _dir: TempDir,
    pub path: PathBuf,
    pub name: String,
}

impl Burner {
    /// Use the [`burner!`](crate::burner) macro, which knows where cargo put the helper.
    pub fn new(helper: &Path, prefix: &str) -> Self {
        let name = unique_name(prefix);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(&name);
        std::fs::copy(helper, &path).expect("copying cpu-burner");
        Self {
            _dir: dir,
            path,
            name,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.path);
        command.args(args);
        command
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting cpu-burner")
    }
}

/// A child killed (SIGKILL) and reaped when dropped, also when the test fails while it runs:
/// for children that never end on their own (`cpu-burner spin`).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `<prefix><5 hex digits>`, unique enough between tests, shorter than a kernel comm.
/// Like [`unique_name`], in letters only: a name that reads as a word, not an id (the agent
/// names no service after a directory whose name looks like an id).
pub fn unique_word(prefix: &str) -> String {
    unique_name(prefix)
        .char_indices()
        .map(|(i, c)| match c.to_digit(16) {
            Some(digit) if i >= prefix.len() => char::from(b'g' + digit as u8),
            _ => c,
        })
        .collect()
}

pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!("{prefix}{:05x}", (nanos ^ std::process::id()) & 0xfffff);
    assert!(name.len() < 16, "{name} would be cut in the kernel's comm");
    name
}

/// A [`Burner`] named `<prefix><5 hex digits>`; the path to the helper is only known to the
/// integration tests (`CARGO_BIN_EXE_*`), hence a macro.
#[macro_export]
macro_rules! burner {
    ($prefix:expr) => {
        $crate::workload::Burner::new(
            ::std::path::Path::new(env!("CARGO_BIN_EXE_cpu-burner")),
            $prefix,
        )
    };
}

/// utime + stime of a process from /proc/<pid>/stat, in seconds.
pub fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading stat");
    // Fields after the parenthesised comm; utime and stime are fields 14 and 15.
    let after_comm = &stat[stat.rfind(')').expect("malformed stat") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}
