//! `cargo xtask image`: the container image, from deploy/container/Containerfile.binary and a
//! statically linked build of the agent, with podman.
//!
//! The binary is built on this machine (glibc's crt-static, for the target only so that build
//! scripts and proc macros stay dynamic) and packed alone into an image `FROM scratch`: no base
//! image to pull, no registry needed, and no Rust built inside a container.
//! `MONITOR_IMAGE` names the image (default `localhost/monitor:latest`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{cargo, output, run, workspace_root},
    setup,
};

/// The target the static binary is built for; naming it keeps RUSTFLAGS off the host's build
/// scripts and proc macros (which cannot be static).
const TARGET: &str = "x86_64-unknown-linux-gnu";
const DEFAULT_IMAGE: &str = "localhost/monitor:latest";

pub fn image() -> Result<()> {
    setup::setup()?;
    if output(Command::new("podman").arg("--version")).is_none() {
        bail!("podman not found: `apt-get install podman runc` (Debian, Ubuntu)");
    }
    let binary = build_static()?;
    let context = workspace_root().join("target/container");
    stage(&binary, &context)?;
    let name = std::env::var("MONITOR_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_owned());
    let containerfile = workspace_root().join("deploy/container/Containerfile.binary");
    run(Command::new("podman")
        .arg("build")
        .arg("--file")
        .arg(&containerfile)
        .args(["--tag", &name])
        .args([
            "--label",
            &format!(
                "org.opencontainers.image.version={}",
                env!("CARGO_PKG_VERSION")
            ),
        ])
        .arg(&context))
    .context("building the image with podman")?;
    eprintln!("xtask: image {name} built (run it as deploy/README.md, \"Container\", shows)");
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `cargo build --release -p monitor` for [`TARGET`], statically linked; returns the binary.
fn build_static() -> Result<PathBuf> {
    let flags_variable = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        TARGET.to_uppercase().replace('-', "_")
    );
    run(cargo()
        .args([
            "build",
            "--release",
            "--package",
            "monitor",
            "--target",
            TARGET,
        ])
        .env(flags_variable, "-C target-feature=+crt-static"))?;
    let binary = target_dir().join(TARGET).join("release/monitor");
    if is_dynamic(&binary)? {
        bail!(
            "{} is dynamically linked: the image has no C library to run it with",
            binary.display()
        );
    }
    Ok(binary)
}

/// Whether the ELF executable at `path` asks for a dynamic loader (has a PT_INTERP header).
fn is_dynamic(path: &Path) -> Result<bool> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("eight bytes")))
    };
    // 64-bit little-endian ELF: e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38.
    if !bytes.starts_with(b"\x7fELF\x02\x01") {
        bail!("{} is not a 64-bit little-endian ELF file", path.display());
    }
    let (Some(offset), Some(entry_size), Some(entries)) =
        (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{}: truncated ELF header", path.display());
    };
    const PT_INTERP: u32 = 3;
    Ok((0..usize::from(entries))
        .any(|index| u32_at(offset as usize + index * usize::from(entry_size)) == Some(PT_INTERP)))
}

/// A build context holding only the binary (podman reads nothing else).
fn stage(binary: &Path, context: &Path) -> Result<()> {
    if context.exists() {
        fs::remove_dir_all(context).with_context(|| format!("clearing {}", context.display()))?;
    }
    fs::create_dir_all(context).with_context(|| format!("creating {}", context.display()))?;
    let staged = context.join("monitor");
    fs::copy(binary, &staged)
        .with_context(|| format!("copying {} to {}", binary.display(), staged.display()))?;
    Ok(())
}
