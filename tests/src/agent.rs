//! The agent under test: the real `monitor` binary, started as a child process.

use std::{
    fs,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use serde_json::Value;
use tempfile::NamedTempFile;

use crate::{metrics::Scrape, poll_until};

pub struct MonitorAgent {
    child: Option<Child>,
    pub port: u16,
    /// Where its stderr goes: read by tests, checked for panics when it stops.
    log: NamedTempFile,
}

/// The binary under test: `MONITOR_BIN` (relative to the workspace root), else the workspace's
/// release build.
pub fn monitor_bin() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Some(path) = std::env::var_os("MONITOR_BIN") {
        return workspace.join(path);
    }
    let path = workspace.join("target/release/monitor");
    assert!(
        path.exists(),
        "{} not found: build it with `cargo xtask build` (or run `cargo xtask test`)",
        path.display()
    );
    path
}

/// Arguments every agent of the run gets besides its own: `MONITOR_TEST_AGENT_ARGS`,
/// split at blanks (`cargo xtask test` runs the HTTP tests again with `--bounded-loops
/// --preallocated-maps`).
fn extra_args() -> Vec<String> {
    std::env::var("MONITOR_TEST_AGENT_ARGS")
        .map(|args| args.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests load BPF programs: run them as root (`cargo xtask test`)"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("no free local port")
}

impl MonitorAgent {
    /// Starts the agent with `args` on a free local port and waits until it serves. Its log
    /// (stderr) is kept for [`log`](Self::log); a panic in it fails the test when the agent
    /// is stopped (`Drop`).
    pub fn start(args: &[&str]) -> Self {
        Self::start_until(args, serves_health)
    }

    /// Starts the agent with `args` on a free local port and waits until `ready` says it
    /// serves (for agents that `get` cannot reach, such as one serving TLS).
    pub fn start_until(args: &[&str], ready: impl FnMut(&Self) -> bool) -> Self {
        Self::launch(Command::new(monitor_bin()), args, ready)
    }

    /// Starts the agent through `launcher`, a command that execs the agent with the arguments
    /// appended to it (e.g. `capsh --shell=<monitor> --`), so its pid is the agent's.
    pub fn start_with(launcher: Command, args: &[&str]) -> Self {
        Self::launch(launcher, args, serves_health)
    }

    fn launch(mut launcher: Command, args: &[&str], mut ready: impl FnMut(&Self) -> bool) -> Self {
        require_root();
        let port = free_port();
        launcher
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--refresh-interval", "200ms", "--log-level", "warn"])
            .args(args)
            .args(extra_args())
            .stdin(Stdio::null());
        let log = NamedTempFile::new().expect("a temp file for the log");
        launcher.stderr(log.reopen().expect("opening the log"));
        let child = launcher.spawn().expect("starting monitor");
        let mut agent = Self {
            child: Some(child),
            port,
            log,
        };
        poll_until(
            "the agent to serve /healthz",
            Duration::from_secs(30),
            || {
                if let Some(status) = agent.child_mut().try_wait().expect("waiting on monitor") {
                    panic!("monitor exited during start-up: {status}\n{}", agent.log());
                }
                ready(&agent).then_some(())
            },
        );
        agent
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log.path()).expect("reading the agent's log")
    }

    /// The agent still runs, answers /healthz, and never panicked.
    pub fn assert_healthy(&mut self) {
        if let Some(status) = self.child_mut().try_wait().expect("waiting on monitor") {
            panic!("monitor exited: {status}");
        }
        let health = self.get("/healthz").expect("asking /healthz");
        assert_eq!((health.0, health.1.trim()), (200, "ok"), "/healthz");
        self.assert_no_panic();
    }

    /// The agent's log shows no panic: one in a thread of its would not stop it, and could
    /// leave it answering while part of it is gone.
    fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
    }

    /// Entries of the agent's `CONNECTIONS` map that belong to process `tgid`, with their
    /// phase (`monitor_common::http::phase`), read with bpftool.
    pub fn connections_of(&self, tgid: u32) -> Vec<ConnectionEntry> {
        let map = self.map_id("CONNECTIONS");
        let dump = bpftool(&["map", "dump", "id", &map.to_string()]);
        dump.as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let key = le_u64(&entry["key"])?;
                let phase = le_u64(&entry["value"])?;
                ((key >> 32) as u32 == tgid).then_some(ConnectionEntry {
                    fd: key as u32,
                    phase,
                })
            })
            .collect()
    }

    /// The keys of the agent's map `name`, as bytes, read with bpftool in one dump.
    pub fn map_keys(&self, name: &str) -> Vec<Vec<u8>> {
        let map = self.map_id(name);
        let dump = bpftool(&["map", "dump", "id", &map.to_string()]);
        dump.as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| hex_bytes(&entry["key"]))
            .collect()
    }

    /// The process ids found at byte `offset` of the keys of map `name` (e.g. 0 for
    /// `CPU_TIME`, 4 for `CONNECTIONS`, 8 for `ROUTES_SEEN`).
    pub fn map_key_tgids(&self, name: &str, offset: usize) -> Vec<u32> {
        self.map_keys(name)
            .iter()
            .filter_map(|key| {
                Some(u32::from_le_bytes(
                    key.get(offset..offset + 4)?.try_into().ok()?,
                ))
            })
            .collect()
    }

    /// The id of the agent's map named `name` (among the maps its fds hold).
    fn map_id(&self, name: &str) -> u64 {
        let held: Vec<u64> = fs::read_dir(format!("/proc/{}/fdinfo", self.pid()))
            .expect("reading the agent's fdinfo")
            .flatten()
            .filter_map(|entry| fs::read_to_string(entry.path()).ok())
            .filter_map(|info| {
                info.lines()
                    .find_map(|line| line.strip_prefix("map_id:"))
                    .and_then(|id| id.trim().parse().ok())
            })
            .collect();
        bpftool(&["map", "show"])
            .as_array()
            .into_iter()
            .flatten()
            .filter(|map| map["name"] == name)
            .filter_map(|map| map["id"].as_u64())
            .find(|id| held.contains(id))
            .unwrap_or_else(|| panic!("the agent holds no map named {name}"))
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("agent already stopped")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent already stopped").id()
    }

    /// GET `path` on the agent: (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String), ureq::Error> {
        let response = ureq::get(&format!("http://127.0.0.1:{}{path}", self.port))
            .config()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .call()?;
        let status = response.status().as_u16();
        let body = response.into_body().read_to_string()?;
        Ok((status, body))
    }

    pub fn metrics_text(&self) -> String {
        let (status, body) = self.get("/metrics").expect("scraping /metrics");
        assert_eq!(status, 200, "/metrics answered {status}: {body}");
        body
    }

    pub fn scrape(&self) -> Scrape {
        Scrape::parse(&self.metrics_text())
    }

    /// Stops the agent's userspace with SIGSTOP; its programs in the kernel run on. Whatever
    /// happens until `resume` happens out of its sight, as on a busy host.
    pub fn pause(&self) {
        signal(
            self.child.as_ref().expect("agent already stopped"),
            libc::SIGSTOP,
        );
    }

    /// Lets a paused agent go on (SIGCONT).
    pub fn resume(&self) {
        signal(
            self.child.as_ref().expect("agent already stopped"),
            libc::SIGCONT,
        );
    }

    /// Kills the agent with SIGKILL (nothing of its own runs) and waits for it.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("agent already stopped");
        signal(&child, libc::SIGKILL);
        let _ = child.wait();
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit.
    pub fn terminate(mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("agent already stopped");
        signal(&child, libc::SIGTERM);
        poll_until("the agent to exit after SIGTERM", timeout, || {
            child.try_wait().expect("waiting on monitor")
        })
    }
}

fn serves_health(agent: &MonitorAgent) -> bool {
    agent.get("/healthz").is_ok_and(|(code, _)| code == 200)
}

/// One entry of the kernel's connection map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionEntry {
    pub fd: u32,
    pub phase: u64,
}

fn bpftool(args: &[&str]) -> Value {
    let output = Command::new("bpftool")
        .arg("--json")
        .args(args)
        .output()
        .expect("running bpftool (installed by `cargo xtask setup`)");
    assert!(
        output.status.success(),
        "bpftool {args:?} failed: {output:?}"
    );
    serde_json::from_slice(&output.stdout).expect("bpftool's JSON")
}

/// A bpftool byte array (`["0x01", ...]`) as bytes.
fn hex_bytes(bytes: &Value) -> Option<Vec<u8>> {
    bytes
        .as_array()?
        .iter()
        .map(|byte| u8::from_str_radix(byte.as_str()?.trim_start_matches("0x"), 16).ok())
        .collect()
}

/// The little-endian u64 at the start of a bpftool byte array (shorter arrays are padded).
fn le_u64(bytes: &Value) -> Option<u64> {
    let mut value = [0u8; 8];
    for (out, byte) in value.iter_mut().zip(hex_bytes(bytes)?) {
        *out = byte;
    }
    Some(u64::from_le_bytes(value))
}

pub fn signal(child: &Child, signal: i32) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
}

impl Drop for MonitorAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            // A test that failed while the agent was paused would otherwise wait for good.
            signal(&child, libc::SIGCONT);
            let _ = child.wait();
        }
        if std::thread::panicking() {
            // The test failed: what the agent said may tell why.
            eprintln!("the agent's log:\n{}", self.log());
        } else {
            self.assert_no_panic();
        }
    }
}
