//! Older kernels to test on, booted with qemu by the `older_kernel` tests: Debian 12's own,
//! 6.1, whose verifier proves less than the one these machines run (it refused the HTTP
//! program until commit "ebpf: load on Debian 12's kernel 6.1"), and Debian 11's, 5.10, older
//! than the HTTP programs allow, where the agent measures CPU alone and must preallocate the
//! scheduler's maps. `cargo xtask setup` fetches each kernel's package from the Debian archive
//! and builds an initramfs around `tests/fixtures/guest/init`, which mounts the host's root
//! over 9p (read only, under a tmpfs overlay) and runs the program named on the kernel command
//! line.
//!
//! Each goes to `target/<dir>/`: `vmlinuz`, `initramfs.gz` and `release` (the kernel's
//! release, written last, so that its presence says the rest is there).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{output, run, workspace_root};

/// The package that names a Debian release's current kernel (it depends on the versioned one).
const META_PACKAGE: &str = "linux-image-amd64";

/// The modules the guest's init needs: virtio PCI, the 9p file system over virtio, and
/// overlayfs (Debian builds them as modules). What they depend on comes too, loaded first
/// (`load_order`).
const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// A kernel the older-kernel tests boot.
pub struct GuestKernel {
    /// Its directory under `target/` (`tests/src/guest.rs` names the same ones).
    pub dir: &'static str,
    /// The Debian release whose kernel it is, when not this machine's own (Debian 12): its
    /// package lists are fetched apart from the system's, from `ARCHIVE`.
    pub suite: Option<&'static str>,
}

/// Where another Debian release's packages come from; its signing keys are in the
/// `debian-archive-keyring` every Debian has.
const ARCHIVE: &str = "http://deb.debian.org/debian";

pub const KERNELS: [GuestKernel; 2] = [
    GuestKernel {
        dir: "guest-kernel",
        suite: None,
    },
    GuestKernel {
        dir: "guest-kernel-debian-11",
        suite: Some("bullseye"),
    },
];

/// Fetches every kernel and builds its initramfs, unless a previous run did (seconds then).
pub fn prepare() -> Result<()> {
    KERNELS.iter().try_for_each(GuestKernel::prepare)
}

impl GuestKernel {
    fn directory(&self) -> PathBuf {
        workspace_root().join("target").join(self.dir)
    }

    fn prepare(&self) -> Result<()> {
        let dir = self.directory();
        let init = workspace_root().join("tests/fixtures/guest/init");
        let built = dir.join("release");
        if built.exists() && modified(&built)? >= modified(&init)? {
            return Ok(());
        }
        let work = dir.join("work");
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let apt = self.apt_options(&work)?;
        if !apt.is_empty() {
            run(Command::new("apt-get").args(&apt).args(["update", "-qq"]))?;
        }
        let download = || -> Result<String> {
            let package = current_package(&apt)?;
            eprintln!("xtask: fetching {package} for the older-kernel tests");
            // As root, apt downloads unsandboxed into a directory its own user cannot write.
            run(Command::new("apt-get")
                .args(&apt)
                .args(["download", "-q", &package])
                .current_dir(&work))?;
            Ok(package)
        };
        // A machine whose package lists are gone or stale (images often drop them) gets them
        // again once.
        let package = match download() {
            Ok(package) => package,
            Err(_) => {
                run(Command::new("apt-get").args(&apt).args(["update", "-qq"]))?;
                download()?
            }
        };
        build(&dir, &work, &package, &init)
    }

    /// apt's options for this kernel's release: none for this machine's own; else a source
    /// list, package lists and cache of its own under `work`, the system's left alone.
    fn apt_options(&self, work: &Path) -> Result<Vec<String>> {
        let Some(suite) = self.suite else {
            return Ok(Vec::new());
        };
        let apt = work.join("apt");
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            fs::create_dir_all(apt.join(sub))?;
        }
        let sources = apt.join("sources.list");
        fs::write(&sources, format!("deb {ARCHIVE} {suite} main\n"))?;
        let option = |name: &str, value: &Path| format!("{name}={}", value.display());
        Ok([
            option("Dir::Etc::SourceList", &sources),
            option("Dir::Etc::SourceParts", &apt.join("sources.list.d")),
            option("Dir::State::Lists", &apt.join("lists")),
            option("Dir::Cache", &apt.join("cache")),
        ]
        .into_iter()
        .flat_map(|value| ["-o".to_owned(), value])
        .collect())
    }
}

/// Unpacks the kernel package `work` holds and builds the initramfs, into `dir`.
fn build(dir: &Path, work: &Path, package: &str, init: &Path) -> Result<()> {
    let deb = fs::read_dir(work)?
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
    fs::copy(init, root.join("init")).with_context(|| format!("copying {}", init.display()))?;
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
    fs::remove_dir_all(work)?;
    fs::write(dir.join("release"), release)?;
    Ok(())
}

/// `linux-image-<release>`, the package `linux-image-amd64` depends on now (in the lists
/// that the `apt` options name).
fn current_package(apt: &[String]) -> Result<String> {
    let depends = output(
        Command::new("apt-cache")
            .args(apt)
            .args(["depends", META_PACKAGE]),
    )
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
