//! Older kernels, booted with qemu for the older-kernel tests: Debian 12's (6.1) and Debian
//! 11's (5.10), each a kernel and an initramfs that `cargo xtask setup` prepares in
//! `target/<dir>/` (see xtask/src/guest_kernel.rs). The guest sees the host's root read-only,
//! under a tmpfs overlay, and runs one program; its console is the result.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::poll::try_poll;

pub struct GuestKernel {
    dir: PathBuf,
    /// The kernel's release (`6.1.0-57-amd64`).
    pub release: String,
}

impl GuestKernel {
    /// Debian 12's kernel, 6.1.
    pub fn debian_12() -> Self {
        Self::prepared("guest-kernel")
    }

    /// Debian 11's kernel, 5.10.
    pub fn debian_11() -> Self {
        Self::prepared("guest-kernel-debian-11")
    }

    /// The kernel prepared in `target/<dir>`; panics with what to run when it is missing.
    fn prepared(dir: &str) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(dir);
        let release = std::fs::read_to_string(dir.join("release")).unwrap_or_else(|_| {
            panic!(
                "no guest kernel in {}: run `cargo xtask setup` (it fetches the kernel and \
                 builds the initramfs)",
                dir.display()
            )
        });
        Self {
            dir,
            release: release.trim().to_owned(),
        }
    }

    /// Boots the kernel, runs `program` (a shell script on the host's file system) in it and
    /// returns the console's text once the guest has powered off. Emulated (TCG): these VMs'
    /// nested KVM fails in the guest kernel's early boot.
    pub fn run(&self, program: &Path, timeout: Duration) -> String {
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg,thread=multi",
                "-cpu",
                "max",
                "-smp",
                "2",
                "-m",
                "2048",
            ])
            .args(["-nographic", "-no-reboot", "-kernel"])
            .arg(self.dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(self.dir.join("initramfs.gz"))
            .arg("-append")
            .arg(format!(
                "console=ttyS0 quiet panic=-1 guest_cmd={}",
                program.display()
            ))
            .args([
                "-virtfs",
                "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting qemu-system-x86_64 (package qemu-system-x86: `cargo xtask setup`)");
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stdout.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        });
        let exited = try_poll(timeout, || child.try_wait().ok().flatten());
        if exited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let console = reader.join().unwrap_or_default();
        let mut stderr = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
        assert!(
            exited.is_some(),
            "the guest did not power off within {timeout:?}; its console:\n{console}"
        );
        assert!(
            console.contains("GUEST_EXIT=0"),
            "the guest program failed; qemu: {stderr}\nconsole:\n{console}"
        );
        console
    }
}

/// The lines of `console` between `=== <name>` and the next `=== ` line. (A heading may
/// follow the firmware's escape sequences on its line.)
pub fn section<'a>(console: &'a str, name: &str) -> Vec<&'a str> {
    let heading = format!("=== {name}");
    console
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .skip_while(|line| !line.ends_with(&heading))
        .skip(1)
        .take_while(|line| !line.starts_with("=== "))
        .collect()
}
