//! uprobes on the TLS library that processes use (OpenSSL's `libssl`): at the entry and return
//! of `SSL_read`, `SSL_write` and their `_ex` forms, where the plain text of HTTPS passes, and
//! at the return of `SSL_new`, which tells a new connection object before its handshake (`tls`
//! in the BPF crate). A uprobe sits on a file (its inode), so one attach covers every process
//! that maps that file, those started later included. Where the kernel has them (6.6+), each
//! program sits on a library through one uprobe_multi link (`uprobe_multi`), else through one
//! perf event per function, each of which costs the agent's exit a kernel grace period
//! (`ReleasedLinks`).
//!
//! Which files: at start-up, the libraries in the usual directories of the host (through
//! `/proc/1/root`, the host's root seen from a container with the host's PID namespace), and
//! every `libssl` that a running process maps (a container's own copy, through
//! `/proc/<pid>/root`); later, every `libssl` that a process maps and no probe sits on yet (a
//! container image started since, an upgraded package), found by `agent::tls`, which also
//! releases those no process maps any more.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeLink, UProbeLinkId, UProbeScope},
    },
};

use super::{
    AttachedProgram, HookKind, program_mut,
    tls_executables::{ExecutableVerdicts, dynamic_symbol_offsets, probe_offset},
    uprobe_multi,
};

/// The programs, with the library functions each is attached to: the return programs come
/// first, so that no call is entered without its return being watched.
const PROBES: [(&str, &[&str]); 7] = [
    ("tls_read_return", &["SSL_read", "SSL_read_ex"]),
    ("tls_write_return", &["SSL_write", "SSL_write_ex"]),
    ("tls_new_return", &["SSL_new"]),
    ("tls_read", &["SSL_read"]),
    ("tls_write", &["SSL_write"]),
    ("tls_read_ex", &["SSL_read_ex"]),
    ("tls_write_ex", &["SSL_write_ex"]),
];

/// The hook of the TLS programs, as `monitor_bpf_program_info` and `--check` name it.
pub const TLS_HOOK: &str = "libssl";

/// Functions every probed library has; the `_ex` forms came with OpenSSL 1.1.1.
pub const REQUIRED: [&str; 2] = ["SSL_read", "SSL_write"];

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

/// How the programs are attached to a library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// One uprobe_multi link per program (Linux 6.6+), on all its functions in the library.
    UprobeMulti,
    /// One perf-event uprobe per program and function.
    PerfEvents,
}

/// The probes on one library file.
#[derive(Debug)]
enum Links {
    UprobeMulti(Vec<OwnedFd>),
    PerfEvents(Vec<(&'static str, UProbeLinkId)>),
    /// None: the library was refused.
    Refused,
}

impl Links {
    fn is_empty(&self) -> bool {
        match self {
            Links::UprobeMulti(links) => links.is_empty(),
            Links::PerfEvents(links) => links.is_empty(),
            Links::Refused => true,
        }
    }
}

/// The TLS library files tried so far, and the probes on those that carry them.
#[derive(Debug)]
pub struct TlsLibraries {
    /// Every file tried, probed or refused: none is tried twice while processes map it.
    tried: HashMap<FileId, Tried>,
    /// How the programs were loaded to be attached.
    kind: LinkKind,
}

/// A library file tried.
#[derive(Debug)]
struct Tried {
    /// Its probes: none when it was refused.
    links: Links,
    /// The file, held open to tell when it is deleted (`None` where it could not be opened).
    opened: Option<fs::File>,
    /// Found in the host's library directories: probed for as long as the agent runs.
    host: bool,
    /// Full scans in a row that found no process mapping it.
    unmapped_scans: u8,
}

impl Tried {
    /// Whether the file was deleted (its container image removed), or cannot be told.
    fn deleted(&self) -> bool {
        self.opened
            .as_ref()
            .is_none_or(|file| file.metadata().is_ok_and(|meta| meta.nlink() == 0))
    }
}

/// Full scans in a row that must find no process mapping a deleted library before its probes
/// go.
pub const RELEASE_AFTER_UNMAPPED_SCANS: u8 = 2;

/// The probes of released libraries, to be dropped (which detaches them, and waits for the
/// kernel) once the agent's lock is released. The kernel takes a perf-event uprobe off after
/// an RCU grace period, under a lock of its own: one after another whichever thread drops
/// them, about 90 ms each here, 0.8 s for a library's nine. uprobe_multi links are closed
/// together, their grace periods overlapping (`uprobe_multi::close_concurrently`).
#[derive(Default)]
pub struct ReleasedLinks {
    uprobe_multi: Vec<OwnedFd>,
    perf_events: Vec<UProbeLink>,
}

impl ReleasedLinks {
    pub fn is_empty(&self) -> bool {
        self.uprobe_multi.is_empty() && self.perf_events.is_empty()
    }

    fn add(&mut self, ebpf: &mut Ebpf, links: Links) {
        match links {
            Links::UprobeMulti(links) => self.uprobe_multi.extend(links),
            Links::PerfEvents(links) => self.perf_events.extend(take_links(ebpf, links)),
            Links::Refused => {}
        }
    }
}

impl Drop for ReleasedLinks {
    fn drop(&mut self) {
        uprobe_multi::close_concurrently(std::mem::take(&mut self.uprobe_multi));
    }
}

/// What one attempt on a set of library files did.
#[derive(Debug, Default)]
pub struct Attempt {
    /// Paths of the library files probed, one per file.
    pub probed: Vec<PathBuf>,
    /// Library files the kernel or the symbol look-up refused, with why.
    pub refused: Vec<(PathBuf, String)>,
    /// Set when the kernel refused the uprobes for want of a capability (then no library is
    /// tried after the first): what to grant.
    pub missing_capability: Option<&'static str>,
}

impl Attempt {
    /// Whether libraries were found and every one refused: HTTPS is then not measured for
    /// want of the kernel's support or a capability, not for want of a library.
    pub fn all_refused(&self) -> bool {
        self.probed.is_empty() && (!self.refused.is_empty() || self.missing_capability.is_some())
    }
}

impl TlsLibraries {
    fn new(kind: LinkKind) -> Self {
        Self {
            tried: HashMap::new(),
            kind,
        }
    }

    /// How the programs are attached.
    pub fn kind(&self) -> LinkKind {
        self.kind
    }

    /// Library files that carry the probes.
    pub fn probed(&self) -> usize {
        self.tried
            .values()
            .filter(|tried| !tried.links.is_empty())
            .count()
    }

    /// Whether `file` was tried (and is not to be again while processes map it).
    pub fn tried(&self, file: FileId) -> bool {
        self.tried.contains_key(&file)
    }

    /// Attaches the programs to each library of `candidates` not tried before (`host`: found
    /// in the host's library directories). A library that cannot be probed is listed in the
    /// attempt's `refused`, not an error: the rest of the agent does not depend on it.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        candidates: Vec<(PathBuf, FileId)>,
        host: bool,
    ) -> Attempt {
        let mut attempt = Attempt::default();
        for (path, file) in candidates {
            // One probe per file, whichever path led to it.
            if self.tried.contains_key(&file) {
                continue;
            }
            let attached = match self.kind {
                LinkKind::UprobeMulti => attach_uprobe_multi(ebpf, &path).map(Links::UprobeMulti),
                LinkKind::PerfEvents => attach_perf_events(ebpf, &path).map(Links::PerfEvents),
            };
            let links = match attached {
                Ok(links) => {
                    attempt.probed.push(path.clone());
                    links
                }
                Err(error)
                    if self.kind == LinkKind::PerfEvents && denied(&error) && !has_sys_admin() =>
                {
                    // The perf uprobe PMU admits CAP_SYS_ADMIN alone on many kernels (this one
                    // too; CAP_PERFMON is not enough): every other library would be refused
                    // alike, and is left to be tried again by an agent that holds it.
                    attempt.missing_capability = Some("CAP_SYS_ADMIN");
                    break;
                }
                // The process that led to it is gone: another that maps it will lead to it
                // again.
                Err(_) if !path.exists() => continue,
                Err(error) => {
                    attempt.refused.push((path.clone(), format!("{error:#}")));
                    Links::Refused
                }
            };
            // Held like the probe holds it.
            let opened = open_without_blocking(&path).ok();
            self.tried.insert(
                file,
                Tried {
                    links,
                    opened,
                    host,
                    unmapped_scans: 0,
                },
            );
        }
        attempt
    }

    /// After a complete scan of every process's maps, which found `mapped`: a library found
    /// in processes that none has mapped for [`RELEASE_AFTER_UNMAPPED_SCANS`] scans and whose
    /// file was deleted since (its container image removed) loses its probes and is
    /// forgotten, so that what the agent holds (perf events, links, the file and the
    /// container file system it was found through) stays bounded by what the host keeps. A
    /// library still on disk keeps its probes: a short-lived process of that image, started
    /// between two scans, is measured. Returns the links taken, to drop outside the lock.
    pub fn release_unmapped(&mut self, ebpf: &mut Ebpf, mapped: &HashSet<FileId>) -> ReleasedLinks {
        let mut released = Vec::new();
        for (file, tried) in &mut self.tried {
            if tried.host || mapped.contains(file) {
                tried.unmapped_scans = 0;
                continue;
            }
            tried.unmapped_scans = tried.unmapped_scans.saturating_add(1);
            if tried.unmapped_scans >= RELEASE_AFTER_UNMAPPED_SCANS && tried.deleted() {
                released.push(*file);
            }
        }
        let mut links = ReleasedLinks::default();
        for file in &released {
            if let Some(tried) = self.tried.remove(file) {
                links.add(ebpf, tried.links);
            }
        }
        links
    }
}

impl Drop for TlsLibraries {
    /// Detaches the uprobe_multi links together (`ReleasedLinks`); perf-event uprobes go with
    /// their programs.
    fn drop(&mut self) {
        let mut released = ReleasedLinks::default();
        for (_, tried) in self.tried.drain() {
            if let Links::UprobeMulti(links) = tried.links {
                released.uprobe_multi.extend(links);
            }
        }
    }
}

/// The links, entries first (so that no entry is left without its return), taken from their
/// programs.
fn take_links(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) -> Vec<UProbeLink> {
    links
        .into_iter()
        .rev()
        .filter_map(|(name, link)| uprobe(ebpf, name).ok()?.take_link(link).ok())
        .collect()
}

/// Lists the programs among those attached (`monitor_bpf_program_info`) while a library
/// carries them, and not otherwise.
pub fn list_programs(attached: &mut Vec<AttachedProgram>, libraries: &TlsLibraries) {
    attached.retain(|program| program.hook != TLS_HOOK);
    if libraries.probed() == 0 {
        return;
    }
    attached.extend(PROBES.iter().map(|&(program, _)| AttachedProgram {
        hook: TLS_HOOK,
        kind: match (libraries.kind, is_return(program)) {
            (LinkKind::UprobeMulti, true) => HookKind::UretprobeMulti,
            (LinkKind::UprobeMulti, false) => HookKind::UprobeMulti,
            (LinkKind::PerfEvents, true) => HookKind::Uretprobe,
            (LinkKind::PerfEvents, false) => HookKind::Uprobe,
        },
        program,
    }));
}

/// Whether the program runs at its functions' returns.
fn is_return(program: &str) -> bool {
    program.ends_with("_return")
}

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

/// Loads the programs, for uprobe_multi links unless `kind` says perf events or the kernel
/// refuses, then attaches them to every TLS library found on the host and in the running
/// processes.
pub fn attach_tls(ebpf: &mut Ebpf, kind: LinkKind) -> Result<(TlsLibraries, Attempt)> {
    let kind = if kind == LinkKind::UprobeMulti && load_for_uprobe_multi(ebpf) {
        LinkKind::UprobeMulti
    } else {
        load_programs(ebpf, LinkKind::PerfEvents)?;
        LinkKind::PerfEvents
    };
    let mut libraries = TlsLibraries::new(kind);
    let mut attempt = libraries.attach(ebpf, libraries_in_host_dirs(), true);
    if attempt.missing_capability.is_none() {
        let in_processes = libraries.attach(ebpf, libraries_processes_map(), false);
        attempt.probed.extend(in_processes.probed);
        attempt.refused.extend(in_processes.refused);
        attempt.missing_capability = in_processes.missing_capability;
    }
    Ok((libraries, attempt))
}

/// Whether the kernel refused an attach for want of privilege (EACCES or EPERM).
fn denied(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| code == libc::EACCES || code == libc::EPERM)
    })
}

/// Whether this thread holds CAP_SYS_ADMIN, which attaching uprobes takes here (see
/// [`TlsLibraries::attach`]).
pub fn has_sys_admin() -> bool {
    caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_ADMIN,
    )
    .unwrap_or(false)
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    program_mut(ebpf, name)?
        .try_into()
        .with_context(|| format!("{name} is not a uprobe"))
}

/// Loads the programs for uprobe_multi links, if this kernel has them: whether it did.
fn load_for_uprobe_multi(ebpf: &mut Ebpf) -> bool {
    let loaded = load_programs(ebpf, LinkKind::UprobeMulti).and_then(|()| {
        let (name, _) = PROBES[0];
        Ok(uprobe_multi::supported(uprobe(ebpf, name)?.fd()?.as_fd()))
    });
    match loaded {
        Ok(true) => true,
        Ok(false) => {
            log::debug!("no uprobe_multi links on this kernel: TLS libraries get perf events");
            false
        }
        Err(error) => {
            log::debug!(
                "TLS programs not loaded for uprobe_multi links ({}): perf events instead",
                super::refusal::brief(&error)
            );
            false
        }
    }
}

/// Loads (or loads again) every program, for links of `kind`.
fn load_programs(ebpf: &mut Ebpf, kind: LinkKind) -> Result<()> {
    for (name, _) in PROBES {
        let program = uprobe(ebpf, name)?;
        // Loaded before for the other kind: the kernel fixes the kind at load.
        if program.fd().is_ok() {
            program.unload()?;
        }
        match kind {
            LinkKind::UprobeMulti => program.load_for_uprobe_multi(),
            LinkKind::PerfEvents => program.load(),
        }
        .with_context(|| format!("loading {name}"))?;
    }
    Ok(())
}

/// The functions the programs are attached to, once each.
fn probed_functions() -> Vec<&'static str> {
    let mut functions: Vec<&str> = PROBES
        .iter()
        .flat_map(|&(_, functions)| functions.iter().copied())
        .collect();
    functions.sort_unstable();
    functions.dedup();
    functions
}

/// Where the programs' functions are probed in the library at `path`, each found once (the
/// `_ex` forms came with OpenSSL 1.1.1; without `SSL_new`, a memory-BIO server's first request
/// may go unseen): from its dynamic symbols, past a leading `endbr64` where that saves a
/// single step (`probe_offset`). An error when [`REQUIRED`] ones are missing.
fn function_offsets(path: &Path) -> Result<Vec<(&'static str, u64)>> {
    let functions = probed_functions();
    let file =
        open_without_blocking(path).with_context(|| format!("opening {}", path.display()))?;
    let data = object::ReadCache::new(file);
    let offsets = dynamic_symbol_offsets(&data, &functions)
        .with_context(|| format!("reading the dynamic symbols of {}", path.display()))?;
    let found: Vec<(&str, u64)> = functions
        .into_iter()
        .zip(offsets)
        .filter_map(|(function, offset)| Some((function, probe_offset(&data, offset?))))
        .collect();
    if let Some(missing) = REQUIRED
        .iter()
        .find(|&&required| !found.iter().any(|&(function, _)| function == required))
    {
        anyhow::bail!("{missing} is not defined in {}", path.display());
    }
    Ok(found)
}

/// The file at `path`, opened for reading without blocking, whatever the path leads to by now
/// (a FIFO's opening would block).
fn open_without_blocking(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// The offsets of `program`'s functions among `found` ([`function_offsets`]).
fn offsets_of(program_functions: &[&str], found: &[(&str, u64)]) -> Vec<u64> {
    found
        .iter()
        .filter(|(function, _)| program_functions.contains(function))
        .map(|&(_, offset)| offset)
        .collect()
}

/// Attaches every program to the library at `path` with one uprobe_multi link each: all of
/// them, or none (as [`attach_perf_events`]).
fn attach_uprobe_multi(ebpf: &mut Ebpf, path: &Path) -> Result<Vec<OwnedFd>> {
    let found = function_offsets(path)?;
    let mut links = Vec::new();
    for (name, functions) in PROBES {
        let at = offsets_of(functions, &found);
        if at.is_empty() {
            continue;
        }
        let program = uprobe(ebpf, name)?.fd()?.as_fd();
        match uprobe_multi::attach(program, path, &at, is_return(name)) {
            Ok(link) => links.push(link),
            Err(error) => {
                uprobe_multi::close_concurrently(links);
                return Err(error).with_context(|| format!("{name} on {}", path.display()));
            }
        }
    }
    Ok(links)
}

/// Attaches every program to the library at `path`, one perf event per function: all of them,
/// or none (a library refused half-way, or one whose process went away meanwhile, keeps no
/// probe, so that trying it again does not probe it twice). Returns the links made.
fn attach_perf_events(ebpf: &mut Ebpf, path: &Path) -> Result<Vec<(&'static str, UProbeLinkId)>> {
    let found = function_offsets(path)?;
    let mut links = Vec::new();
    for (name, functions) in PROBES {
        for offset in offsets_of(functions, &found) {
            match uprobe(ebpf, name)?.attach(offset, path, UProbeScope::AllProcesses) {
                Ok(link) => links.push((name, link)),
                Err(error) => {
                    drop(take_links(ebpf, links));
                    return Err(error).with_context(|| format!("{name} on {}", path.display()));
                }
            }
        }
    }
    Ok(links)
}

/// Whether `path` still leads to `file`, a regular file: the process whose root led to it may
/// have ended, and its pid gone to another, since its maps were read.
pub fn still_leads_to(path: &Path, file: FileId) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && FileId::of(&meta) == file)
}

/// The host's libraries in the usual directories, each with the file it is.
fn libraries_in_host_dirs() -> Vec<(PathBuf, FileId)> {
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
