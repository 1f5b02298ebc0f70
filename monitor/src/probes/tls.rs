//! uprobes on the TLS library that processes use (OpenSSL's `libssl`): at the entry and return
//! of `SSL_read`, `SSL_write` and their `_ex` forms, where the plain text of HTTPS passes
//! (`tls` in the BPF crate). A uprobe sits on a file (its inode), so one attach covers every
//! process that maps that file, those started later included.
//!
//! Which files: the libraries in the usual directories of the host, and every `libssl` that a
//! running process maps (a container's own copy, through `/proc/<pid>/root`), found at
//! start-up. The agent gives up the capabilities to attach programs once started, so a
//! container image with its own copy of the library, started later, is not probed until the
//! agent restarts.

use std::{
    collections::{BTreeSet, HashSet},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{UProbe, uprobe::UProbeScope},
};

use super::{AttachedProgram, HookKind, program_mut};

/// The programs, with the library functions each is attached to: the return programs come
/// first, so that no call is entered without its return being watched.
const PROBES: [(&str, &[&str]); 4] = [
    ("tls_read_return", &["SSL_read", "SSL_read_ex"]),
    ("tls_write_return", &["SSL_write", "SSL_write_ex"]),
    ("tls_call", &["SSL_read", "SSL_write"]),
    ("tls_call_ex", &["SSL_read_ex", "SSL_write_ex"]),
];

/// The hook of the TLS programs, as `monitor_bpf_program_info` and `--check` name it.
pub const TLS_HOOK: &str = "libssl";

/// Functions every probed library has; the `_ex` forms came with OpenSSL 1.1.1.
const REQUIRED: [&str; 2] = ["SSL_read", "SSL_write"];

/// Where distributions put the host's shared libraries (the programs are built for x86_64).
const LIBRARY_DIRS: [&str; 8] = [
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/local/lib64",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
];

/// The TLS libraries probed.
#[derive(Debug, Default)]
pub struct TlsProbes {
    /// Paths of the library files probed, one per file.
    pub libraries: Vec<PathBuf>,
    /// Library files the kernel or the symbol look-up refused, with why.
    pub refused: Vec<(PathBuf, String)>,
}

impl TlsProbes {
    /// The programs, as attached (`monitor_program_attached_info`), once a library is probed.
    pub fn attached(&self) -> Vec<AttachedProgram> {
        if self.libraries.is_empty() {
            return Vec::new();
        }
        PROBES
            .iter()
            .map(|&(program, _)| AttachedProgram {
                hook: TLS_HOOK,
                kind: if program.ends_with("_return") {
                    HookKind::Uretprobe
                } else {
                    HookKind::Uprobe
                },
                program,
            })
            .collect()
    }
}

/// Loads the programs and attaches them to every TLS library found on the host and in the
/// running processes. A library that cannot be probed is listed in `refused`, not an error:
/// the rest of the agent does not depend on it.
pub fn attach_tls(ebpf: &mut Ebpf) -> Result<TlsProbes> {
    for (name, _) in PROBES {
        uprobe(ebpf, name)?
            .load()
            .with_context(|| format!("loading {name}"))?;
    }
    let mut probes = TlsProbes::default();
    let mut seen = HashSet::new();
    for path in candidate_libraries() {
        // One probe per file, whichever path led to it.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        match attach_library(ebpf, &path) {
            Ok(()) => probes.libraries.push(path),
            Err(error) => probes.refused.push((path, format!("{error:#}"))),
        }
    }
    Ok(probes)
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    program_mut(ebpf, name)?
        .try_into()
        .with_context(|| format!("{name} is not a uprobe"))
}

fn attach_library(ebpf: &mut Ebpf, path: &Path) -> Result<()> {
    for (name, functions) in PROBES {
        for &function in functions {
            let attached = uprobe(ebpf, name)?.attach(function, path, UProbeScope::AllProcesses);
            if let Err(error) = attached
                && REQUIRED.contains(&function)
            {
                return Err(error).with_context(|| format!("{function} in {}", path.display()));
            }
        }
    }
    Ok(())
}

/// The host's libraries in the usual directories, then those the running processes map.
fn candidate_libraries() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for dir in LIBRARY_DIRS {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_tls_library)
            })
            .collect();
        found.sort();
        paths.extend(found);
    }
    let Ok(processes) = fs::read_dir("/proc") else {
        return paths;
    };
    for entry in processes.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A process that is gone, or a kernel thread, maps nothing.
        let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        for library in tls_libraries_in_maps(&maps) {
            // The path as the process sees it, from the host (a container has its own root).
            paths.push(PathBuf::from(format!("/proc/{pid}/root{library}")));
        }
    }
    paths
}

/// Whether a file name is a shared OpenSSL `libssl` (`libssl.so.3`, `libssl.so.1.1`), not
/// the development link or a static archive.
pub fn is_tls_library(file_name: &str) -> bool {
    file_name.strip_prefix("libssl.so.").is_some_and(|version| {
        !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    })
}

/// The TLS libraries in a `/proc/<pid>/maps` text: the absolute paths of mapped files whose
/// name `is_tls_library`. A file deleted since it was mapped (an upgraded package) is left
/// out: its path names another file now.
pub fn tls_libraries_in_maps(maps: &str) -> BTreeSet<&str> {
    maps.lines()
        .filter_map(|line| {
            // address perms offset dev inode path: the path is the sixth field, and may
            // hold spaces.
            let path = line.splitn(6, char::is_whitespace).nth(5)?.trim_start();
            let file_name = path.rsplit('/').next()?;
            (path.starts_with('/') && is_tls_library(file_name)).then_some(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libssl_versions_are_tls_libraries_and_the_rest_is_not() {
        assert!(is_tls_library("libssl.so.3"));
        assert!(is_tls_library("libssl.so.1.1"));
        assert!(!is_tls_library("libssl.so"));
        assert!(!is_tls_library("libssl.so."));
        assert!(!is_tls_library("libssl.a"));
        assert!(!is_tls_library("libcrypto.so.3"));
        assert!(!is_tls_library("libssl.so.3 (deleted)"));
    }

    #[test]
    fn the_libraries_a_process_maps_are_found_once_each() {
        let maps = "\
55d0c0a00000-55d0c0a28000 r--p 00000000 08:01 1835  /usr/sbin/nginx
7f11a0000000-7f11a0021000 rw-p 00000000 00:00 0 
7f11a2000000-7f11a201c000 r--p 00000000 08:01 2101  /usr/lib/x86_64-linux-gnu/libssl.so.3
7f11a201c000-7f11a2077000 r-xp 0001c000 08:01 2101  /usr/lib/x86_64-linux-gnu/libssl.so.3
7f11a2100000-7f11a2300000 r-xp 00000000 08:01 2099  /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f11a2400000-7f11a2410000 r-xp 00000000 08:01 3001  /opt/my app/lib/libssl.so.1.1
7f11a2500000-7f11a2510000 r-xp 00000000 08:01 3002  /usr/lib/libssl.so.3 (deleted)
7ffd5a000000-7ffd5a021000 rw-p 00000000 00:00 0     [stack]
";
        let found: Vec<&str> = tls_libraries_in_maps(maps).into_iter().collect();
        assert_eq!(
            found,
            [
                "/opt/my app/lib/libssl.so.1.1",
                "/usr/lib/x86_64-linux-gnu/libssl.so.3"
            ]
        );
    }
}
