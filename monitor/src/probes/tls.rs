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
//! releases those no process maps any more. Finding them is `tls_libraries`' job.

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
    tls_executables::{dynamic_symbol_offsets, probe_offset},
    uprobe_multi,
};

pub use super::tls_libraries::{FileId, libraries_mapped_by, still_leads_to};
use super::tls_libraries::{libraries_in_host_dirs, libraries_processes_map};

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
