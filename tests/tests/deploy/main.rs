//! The deployment material under deploy/, checked by the tools that consume it: promtool
//! (rules, rule unit tests, scrape config), kubernetes-validate and kustomize
//! (manifests), systemd-analyze (unit) and install.sh, plus the dashboard's queries against the
//! metric names the agent exports and the rules record. Needs neither root nor the agent.
//!
//! The tests are grouped by what they check in the modules below; this file holds what they
//! share: the paths and files under deploy/, running the tools, and the capabilities granted.

mod dashboard;
mod install;
mod kubernetes;
mod prometheus;
mod promql;

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_yaml::Value;

/// The capabilities the agent needs, in Kubernetes' and in systemd's spelling.
const CAPABILITIES: &[&str] = &["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"];

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `command`; `None` when its program is not installed.
fn try_run(command: &mut Command) -> Option<Output> {
    match command.output() {
        Ok(output) => Some(output),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => panic!("running {command:?}: {e}"),
    }
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// Runs a tool the tests need; panics naming the package that brings it if it is missing, and
/// with its output if it fails.
fn run_ok(command: &mut Command, package: &str) -> String {
    let output = try_run(command)
        .unwrap_or_else(|| panic!("{command:?}: not installed; it comes with {package}"));
    let out = text(&output);
    assert!(output.status.success(), "{command:?} failed:\n{out}");
    out
}

const PROMTOOL: &str = "the Debian package prometheus";

fn manifest(name: &str) -> Value {
    yaml(&deploy("kubernetes").join(name))
}
