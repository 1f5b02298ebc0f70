//! A second kernel to test on: Debian 12's own, 6.1, whose verifier proves less than the one
//! these machines run (it refused the HTTP program until commit "ebpf: load on Debian 12's
//! kernel 6.1"). `cargo xtask setup` fetches its package from the Debian archive and builds an
//! initramfs around `tests/fixtures/guest/init`, which mounts the host's root over 9p (read
//! only, under a tmpfs overlay) and runs the program named on the kernel command line. The
//! `older_kernel` test boots it with qemu and runs the agent there.
//!
//! Everything goes to `target/guest-kernel/`: `vmlinuz`, `initramfs.gz` and `release` (the
//! kernel's release, written last, so that its presence says the rest is there).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{output, run, workspace_root};

/// The package that names the current Debian kernel (it depends on the versioned one).
const META_PACKAGE: &str = "linux-image-amd64";

/// The modules the guest's init needs: virtio PCI, the 9p file system over virtio, and
/// overlayfs (Debian builds them as modules). What they depend on comes too, loaded first
/// (`load_order`).
const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

pub fn directory() -> PathBuf {
    workspace_root().join("target/guest-kernel")
}

/// Fetches the kernel and builds the initramfs, unless a previous run did (seconds then).
pub fn prepare() -> Result<()> {
    let dir = directory();
    let init = workspace_root().join("tests/fixtures/guest/init");
    let built = dir.join("release");
    if built.exists() && modified(&built)? >= modified(&init)? {
        return Ok(());
    }
    let work = dir.join("work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let download = || -> Result<String> {
        let package = current_package()?;
        eprintln!("xtask: fetching {package} for the older-kernel test");
        // As root, apt downloads unsandboxed into a directory its own user cannot write.
        run(Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&work))?;
        Ok(package)
    };
    // A machine whose package lists are gone or stale (images often drop them) gets them
    // again once.
    let package = match download() {
        Ok(package) => package,
        Err(_) => {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            download()?
        }
    };
    let deb = fs::read_dir(&work)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .context("apt-get download left no .deb")?;
    let unpacked = work.join("unpacked");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let release = package
        .strip_prefix("linux-image-")
        .context("unexpected kernel package name")?;
    let modules = unpacked.join("lib/modules").join(release).join("kernel");
    let root = work.join("initramfs");
    for dir in [
        "bin", "modules", "proc", "sys", "dev", "lower", "upper", "newroot",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::copy("/usr/bin/busybox", root.join("bin/busybox"))
        .context("copying /usr/bin/busybox (package busybox-static)")?;
    fs::copy(&init, root.join("init")).with_context(|| format!("copying {}", init.display()))?;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;
    let mut order = String::new();
    for (module, file) in load_order(&modules, MODULES)? {
        fs::copy(&file, root.join("modules").join(format!("{module}.ko")))?;
        order.push_str(&module);
        order.push('\n');
    }
    fs::write(root.join("modules/order"), order)?;
    let initramfs = dir.join("initramfs.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg(r#"cd "$1" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$2""#)
        .arg("sh")
        .arg(&root)
        .arg(&initramfs))?;
    fs::copy(
        unpacked.join("boot").join(format!("vmlinuz-{release}")),
        dir.join("vmlinuz"),
    )
    .context("copying the kernel image")?;
    fs::remove_dir_all(&work)?;
    fs::write(&built, release)?;
    Ok(())
}

/// `linux-image-<release>`, the package `linux-image-amd64` depends on now.
fn current_package() -> Result<String> {
    let depends = output(Command::new("apt-cache").args(["depends", META_PACKAGE]))
        .with_context(|| format!("`apt-cache depends {META_PACKAGE}` failed"))?;
    depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|package| package.starts_with("linux-image-") && package.ends_with("-amd64"))
        .map(str::to_owned)
        .with_context(|| format!("{META_PACKAGE} depends on no kernel image here:\n{depends}"))
}

/// `wanted` and the modules they depend on (each module's `depends=` in its `.modinfo`),
/// every module after its dependencies, with its file.
fn load_order(dir: &Path, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    fn visit(dir: &Path, name: &str, order: &mut Vec<(String, PathBuf)>) -> Result<()> {
        if order.iter().any(|(known, _)| known == name) {
            return Ok(());
        }
        let file = find_module(dir, name)?;
        let bytes = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        for dependency in depends(&bytes) {
            visit(dir, &dependency, order)?;
        }
        order.push((name.to_owned(), file));
        Ok(())
    }
    let mut order = Vec::new();
    for name in wanted {
        visit(dir, name, &mut order)?;
    }
    Ok(order)
}

/// The `depends=` list of a module's `.modinfo` (NUL-terminated strings in the file).
fn depends(module: &[u8]) -> Vec<String> {
    module
        .split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `<name>.ko` somewhere under `dir`. Compressed modules would need an insmod that reads
/// them: Debian 12 ships them plain.
fn find_module(dir: &Path, name: &str) -> Result<PathBuf> {
    let wanted = format!("{name}.ko");
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|file| file == wanted.as_str()) {
                return Ok(path);
            }
        }
    }
    bail!("no module {wanted} in {}", dir.display())
}

fn modified(path: &Path) -> Result<std::time::SystemTime> {
    fs::metadata(path)
        .and_then(|metadata| metadata.modified())
        .with_context(|| format!("reading {}", path.display()))
}
