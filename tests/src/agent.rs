//! The agent under test: the real `monitor` binary, started as a child process.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use crate::{metrics::Scrape, poll_until};

pub struct MonitorAgent {
    child: Option<Child>,
    pub port: u16,
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
    /// Starts the agent with `args` on a free local port and waits until it serves.
    pub fn start(args: &[&str]) -> Self {
        Self::start_until(args, |agent| {
            agent.get("/healthz").is_ok_and(|(code, _)| code == 200)
        })
    }

    /// Starts the agent with `args` on a free local port and waits until `ready` says it
    /// serves (for agents that `get` cannot reach, such as one serving TLS).
    pub fn start_until(args: &[&str], ready: impl FnMut(&Self) -> bool) -> Self {
        Self::launch(Command::new(monitor_bin()), args, ready)
    }

    /// Starts the agent through `launcher`, a command that execs the agent with the arguments
    /// appended to it (e.g. `capsh --shell=<monitor> --`), so its pid is the agent's.
    pub fn start_with(launcher: Command, args: &[&str]) -> Self {
        Self::launch(launcher, args, |agent| {
            agent.get("/healthz").is_ok_and(|(code, _)| code == 200)
        })
    }

    fn launch(mut launcher: Command, args: &[&str], mut ready: impl FnMut(&Self) -> bool) -> Self {
        require_root();
        let port = free_port();
        let child = launcher
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--refresh-interval", "200ms", "--log-level", "warn"])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting monitor");
        let mut agent = Self {
            child: Some(child),
            port,
        };
        poll_until(
            "the agent to serve /healthz",
            Duration::from_secs(30),
            || {
                if let Some(status) = agent.child_mut().try_wait().expect("waiting on monitor") {
                    panic!("monitor exited during start-up: {status}");
                }
                ready(&agent).then_some(())
            },
        );
        agent
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

pub fn signal(child: &Child, signal: i32) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
}

impl Drop for MonitorAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            let _ = child.wait();
        }
    }
}
