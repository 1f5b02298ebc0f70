//! The install on a host: install.sh, and the systemd unit it installs, verified by
//! systemd-analyze.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use super::{CAPABILITIES, deploy, read, run_ok, text};

const SYSTEMD: &str = "the Debian package systemd";

/// Installs into a temporary root. `systemd-analyze verify` needs the unit's ExecStart to exist
/// (install.sh puts a stub there) and, under --root, the targets a service depends on by
/// default, copied from this host.
#[test]
fn systemd_unit_verifies_once_installed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let stub = dir.path().join("monitor");
    fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
    install(&root, &stub);
    let units = root.join("usr/lib/systemd/system");
    fs::create_dir_all(&units).unwrap();
    for target in [
        "sysinit.target",
        "basic.target",
        "shutdown.target",
        "network.target",
        "multi-user.target",
    ] {
        fs::copy(
            Path::new("/usr/lib/systemd/system").join(target),
            units.join(target),
        )
        .unwrap_or_else(|e| panic!("{target} from {SYSTEMD}: {e}"));
    }
    let mut analyze = Command::new("systemd-analyze");
    let out = run_ok(
        analyze
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg("monitor.service"),
        SYSTEMD,
    );
    // verify exits 0 on settings it ignores: any message is a failure.
    assert_eq!(out.trim(), "", "systemd-analyze verify complained");
    // The hardening keeps systemd's exposure score at 3.0 ("OK") or below.
    let mut security = Command::new("systemd-analyze");
    security.args(["security", "--offline=true", "--threshold=30"]);
    run_ok(
        security
            .arg(format!("--root={}", root.display()))
            .arg("monitor.service"),
        SYSTEMD,
    );
    let unit = read(&root.join("etc/systemd/system/monitor.service"));
    let caps = CAPABILITIES
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        unit.contains(&format!("\nCapabilityBoundingSet={caps}\n")),
        "{unit}"
    );
    assert!(
        unit.contains(&format!("\nAmbientCapabilities={caps}\n")),
        "{unit}"
    );
    assert!(unit.contains("\nExecStart=/usr/local/bin/monitor\n"));
}

fn install_sh(args: &[&str]) -> Output {
    Command::new(deploy("install.sh"))
        .args(args)
        .output()
        .expect("running install.sh")
}

fn install(root: &Path, binary: &Path) {
    let output = install_sh(&[
        "--root",
        root.to_str().unwrap(),
        "--binary",
        binary.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "install.sh: {}", text(&output));
}

#[test]
fn install_sh_installs_binary_and_unit_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let binary = dir.path().join("some-file");
    fs::write(&binary, "not really an ELF").unwrap();
    for _ in 0..2 {
        install(&root, &binary);
        let installed = root.join("usr/local/bin/monitor");
        assert_eq!(fs::read(&installed).unwrap(), fs::read(&binary).unwrap());
        assert_eq!(
            fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let unit = root.join("etc/systemd/system/monitor.service");
        assert_eq!(read(&unit), read(&deploy("systemd/monitor.service")));
        assert_eq!(
            fs::metadata(&unit).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let mut left: Vec<_> = walk(&root);
        left.sort();
        assert_eq!(
            left,
            [root.join("etc/systemd/system/monitor.service"), installed]
        );
    }
    // Usage errors: exit 2 and the usage; bad paths: exit 1 and why.
    let root_arg = root.to_str().unwrap();
    let binary_arg = binary.to_str().unwrap();
    for (args, code, says) in [
        (&[][..], 2, "--binary is required"),
        (&["--binary"][..], 2, "--binary needs a value"),
        (
            &["--binary", binary_arg, "--frobnicate"][..],
            2,
            "unknown argument: --frobnicate",
        ),
        (
            &["--binary", "/nonexistent/monitor", "--root", root_arg][..],
            1,
            "not a file",
        ),
        (
            &["--binary", binary_arg, "--root", "/nonexistent/root"][..],
            1,
            "not a directory",
        ),
    ] {
        let output = install_sh(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(
            code == 2,
            stderr.contains("usage: deploy/install.sh"),
            "{args:?}: {stderr}"
        );
    }
    let help = install_sh(&["--help"]);
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--root DIR"));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}
