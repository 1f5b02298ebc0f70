//! Which files are TLS libraries to probe: those in the usual directories of the host, and
//! those the running processes map (a container's own copy, a library deleted since it was
//! mapped), each with the file it is (`FileId`), for `tls` to attach to once per file.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::tls_executables::ExecutableVerdicts;

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

/// Which file a library is: its device (major, minor) and inode, as `/proc/<pid>/maps` shows
/// them. Under overlayfs that is the layer's real file, which the kernel places uprobes on:
/// containers of one image share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub major: u32,
    pub minor: u32,
    pub inode: u64,
}

impl FileId {
    pub fn of(meta: &fs::Metadata) -> Self {
        // Linux's encoding of a device number (glibc's `major`/`minor`).
        let dev = meta.dev();
        Self {
            major: (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32,
            minor: (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32,
            inode: meta.ino(),
        }
    }
}

/// Whether `path` still leads to `file`, a regular file: the process whose root led to it may
/// have ended, and its pid gone to another, since its maps were read.
pub fn still_leads_to(path: &Path, file: FileId) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && FileId::of(&meta) == file)
}

/// The host's libraries in the usual directories, each with the file it is.
pub(super) fn libraries_in_host_dirs() -> Vec<(PathBuf, FileId)> {
    let mut found = Vec::new();
    // The host's root: the agent's own in a host install, the host's from a container that
    // shares the host's PID namespace (whose own root has no libraries).
    let host_root = if fs::read_dir("/proc/1/root/").is_ok() {
        "/proc/1/root"
    } else {
        ""
    };
    for dir in LIBRARY_DIRS {
        let Ok(entries) = fs::read_dir(format!("{host_root}{dir}")) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_tls_library)
            })
            .collect();
        paths.sort();
        for path in paths {
            if let Ok(meta) = fs::metadata(&path) {
                found.push((path, FileId::of(&meta)));
            }
        }
    }
    found
}

/// The TLS libraries the running processes map, and the executables that carry OpenSSL
/// themselves, each with the file it is, as a path that reaches it from the agent (a
/// container has its own root; a file deleted since it was mapped, through the process's
/// `map_files`).
pub fn libraries_processes_map() -> Vec<(PathBuf, FileId)> {
    libraries_mapped_by(|_| true, &mut ExecutableVerdicts::default()).into_candidates()
}

/// A TLS library a process maps, or its executable when that carries OpenSSL itself
/// (`tls_executables`), as a path from the agent.
#[derive(Debug)]
pub struct Found {
    pub path: PathBuf,
    pub file: FileId,
}

/// What a scan of the processes' maps found.
#[derive(Debug, Default)]
pub struct Scan {
    pub found: Vec<Found>,
    /// /proc was listed: only then does a library missing from `found` tell that no process
    /// maps it. (A process whose maps were refused is not known to map anything: a library
    /// is released only once deleted too, which such a process rarely still maps.)
    pub complete: bool,
}

impl Scan {
    /// Every library file found, deleted or not.
    pub fn mapped_files(&self) -> HashSet<FileId> {
        self.found.iter().map(|found| found.file).collect()
    }

    /// The libraries found, with their file.
    pub fn into_candidates(self) -> Vec<(PathBuf, FileId)> {
        self.found
            .into_iter()
            .map(|found| (found.path, found.file))
            .collect()
    }
}

/// The TLS libraries the processes `look_at` picks by pid (each is asked once) map, and their
/// executables that carry OpenSSL themselves (judged once per file, in `executables`).
pub fn libraries_mapped_by(
    mut look_at: impl FnMut(u32) -> bool,
    executables: &mut ExecutableVerdicts,
) -> Scan {
    let mut scan = Scan::default();
    let Ok(processes) = fs::read_dir("/proc") else {
        return scan;
    };
    scan.complete = true;
    let found = &mut scan.found;
    let mut maps = String::new();
    for entry in processes.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if !pid.parse().is_ok_and(&mut look_at) {
            continue;
        }
        // A process that is gone, or a kernel thread, maps nothing. One buffer for all: a
        // scan reads many processes' maps.
        maps.clear();
        let read = fs::File::open(format!("/proc/{pid}/maps"))
            .and_then(|mut file| std::io::Read::read_to_string(&mut file, &mut maps));
        if let Err(error) = read {
            // Gone meanwhile, or refused (some hosts' init, even to CAP_SYS_PTRACE).
            log::trace!("TLS library scan: the maps of process {pid} unread: {error}");
            continue;
        }
        found.extend(executables.tls_carrier(pid));
        if !maps.contains("libssl.so.") {
            continue;
        }
        for library in tls_libraries_in_maps(&maps) {
            // A library deleted since it was mapped (an upgraded package, while the process
            // runs on) is no longer at its path, which may name its successor: the process's
            // mapping of it still leads to it (opened with CAP_SYS_ADMIN, which attaching
            // takes anyway).
            let path = if library.deleted {
                format!("/proc/{pid}/map_files/{}", library.range)
            } else {
                format!("/proc/{pid}/root{}", library.path)
            };
            found.push(Found {
                path: PathBuf::from(path),
                file: library.file,
            });
        }
    }
    scan
}

/// Whether a file name is a shared OpenSSL `libssl` (`libssl.so.3`, `libssl.so.1.1`), not
/// the development link or a static archive.
pub fn is_tls_library(file_name: &str) -> bool {
    file_name.strip_prefix("libssl.so.").is_some_and(|version| {
        !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    })
}

/// A TLS library a process maps.
#[derive(Debug, PartialEq, Eq)]
pub struct MappedLibrary<'a> {
    pub path: &'a str,
    pub file: FileId,
    /// The addresses of one of its mappings (`start-end`, as `map_files` names it).
    pub range: &'a str,
    /// Deleted since it was mapped (an upgraded package): its path names another file now.
    pub deleted: bool,
}

/// The TLS libraries in a `/proc/<pid>/maps` text, once each: the absolute paths of mapped
/// files whose name `is_tls_library`, with the device and inode the line gives, and whether
/// the file was deleted since.
pub fn tls_libraries_in_maps(maps: &str) -> Vec<MappedLibrary<'_>> {
    let mut libraries: Vec<MappedLibrary<'_>> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path: the path is the sixth field, and may hold
        // spaces.
        let mut fields = line.splitn(6, char::is_whitespace);
        let (Some(range), Some(device), Some(inode), Some(path)) =
            (fields.next(), fields.nth(2), fields.next(), fields.next())
        else {
            continue;
        };
        let path = path.trim_start();
        let (path, deleted) = match path.strip_suffix(" (deleted)") {
            Some(path) => (path, true),
            None => (path, false),
        };
        let Some(file_name) = path.rsplit('/').next() else {
            continue;
        };
        if !path.starts_with('/') || !is_tls_library(file_name) {
            continue;
        }
        let Some((major, minor)) = device.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor), Ok(inode)) = (
            u32::from_str_radix(major, 16),
            u32::from_str_radix(minor, 16),
            inode.parse(),
        ) else {
            continue;
        };
        let file = FileId {
            major,
            minor,
            inode,
        };
        if !libraries.iter().any(|known| known.file == file) {
            libraries.push(MappedLibrary {
                path,
                file,
                range,
                deleted,
            });
        }
    }
    libraries
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
    fn the_libraries_a_process_maps_are_found_once_each_with_their_file_deleted_or_not() {
        let maps = "\
55d0c0a00000-55d0c0a28000 r--p 00000000 08:01 1835  /usr/sbin/nginx
7f11a0000000-7f11a0021000 rw-p 00000000 00:00 0 
7f11a2000000-7f11a201c000 r--p 00000000 08:01 2101  /usr/lib/x86_64-linux-gnu/libssl.so.3
7f11a201c000-7f11a2077000 r-xp 0001c000 08:01 2101  /usr/lib/x86_64-linux-gnu/libssl.so.3
7f11a2100000-7f11a2300000 r-xp 00000000 08:01 2099  /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f11a2400000-7f11a2410000 r-xp 00000000 fd:1a 3001  /opt/my app/lib/libssl.so.1.1
7f11a2500000-7f11a2510000 r-xp 00000000 08:01 3002  /usr/lib/libssl.so.3 (deleted)
7ffd5a000000-7ffd5a021000 rw-p 00000000 00:00 0     [stack]
";
        let found = tls_libraries_in_maps(maps);
        assert_eq!(
            found,
            [
                MappedLibrary {
                    path: "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                    file: FileId {
                        major: 8,
                        minor: 1,
                        inode: 2101
                    },
                    range: "7f11a2000000-7f11a201c000",
                    deleted: false,
                },
                MappedLibrary {
                    path: "/opt/my app/lib/libssl.so.1.1",
                    file: FileId {
                        major: 0xfd,
                        minor: 0x1a,
                        inode: 3001
                    },
                    range: "7f11a2400000-7f11a2410000",
                    deleted: false,
                },
                // Still mapped, under the name it had.
                MappedLibrary {
                    path: "/usr/lib/libssl.so.3",
                    file: FileId {
                        major: 8,
                        minor: 1,
                        inode: 3002
                    },
                    range: "7f11a2500000-7f11a2510000",
                    deleted: true,
                },
            ]
        );
    }

    #[test]
    fn a_file_is_the_same_whether_found_in_a_directory_or_in_a_processs_maps() {
        // This test's own executable, as the kernel lists it in this process's maps.
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        let exe = fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_str().unwrap();
        let line = maps.lines().find(|line| line.ends_with(exe)).unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (major, minor) = fields[3].split_once(':').unwrap();
        let listed = FileId {
            major: u32::from_str_radix(major, 16).unwrap(),
            minor: u32::from_str_radix(minor, 16).unwrap(),
            inode: fields[4].parse().unwrap(),
        };
        assert_eq!(FileId::of(&fs::metadata(exe).unwrap()), listed);
    }
}
