//! uprobe_multi links (Linux 6.6+): one link puts a program on several functions of one file,
//! made with bpf(2) directly, which aya 0.14 has no call for (the program is loaded for them by
//! the vendored aya's `UProbe::load_for_uprobe_multi`).
//!
//! Why: the kernel takes a perf-event uprobe off after a grace period, one uprobe at a time
//! under a kernel-wide lock (about 90 ms each here); a uprobe_multi link waits for one grace
//! period for all its functions, and links closed from several threads wait for theirs
//! together ([`close_concurrently`]).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{BorrowedFd, FromRawFd as _, OwnedFd},
        raw::c_int,
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// `BPF_LINK_CREATE`, the bpf(2) command.
const BPF_LINK_CREATE: c_int = 28;
/// `BPF_TRACE_UPROBE_MULTI`, the attach type.
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
/// `BPF_F_UPROBE_MULTI_RETURN`: at the functions' returns.
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

/// Closing threads at most: each waits for a grace period, which they share.
const MAX_CLOSING_THREADS: usize = 64;

/// The part of `union bpf_attr` that `BPF_LINK_CREATE` reads for a uprobe_multi link
/// (include/uapi/linux/bpf.h): the kernel takes a shorter attribute than its own, the rest
/// zero.
#[repr(C)]
struct LinkCreateUprobeMulti {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _padding: u32,
}

/// Attaches `program` (loaded for uprobe_multi) to the functions at `offsets` (file offsets)
/// of the file at `path`, in every process, at their entries or (`returns`) at their returns.
/// The link stays while the returned fd is open.
pub fn attach(
    program: BorrowedFd<'_>,
    path: &Path,
    offsets: &[u64],
    returns: bool,
) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let prog_fd = std::os::fd::AsRawFd::as_raw_fd(&program);
    let attr = LinkCreateUprobeMulti {
        prog_fd: prog_fd as u32,
        target_fd: 0,
        attach_type: BPF_TRACE_UPROBE_MULTI,
        flags: 0,
        path: path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        ref_ctr_offsets: 0,
        cookies: 0,
        cnt: u32::try_from(offsets.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        multi_flags: if returns {
            BPF_F_UPROBE_MULTI_RETURN
        } else {
            0
        },
        pid: 0,
        _padding: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix whose pointers (the path, the offsets) outlive
    // the call; the kernel copies what it reads.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &raw const attr,
            size_of::<LinkCreateUprobeMulti>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as c_int) })
}

/// Whether this kernel makes uprobe_multi links (6.6+, built with them) of `program`, loaded
/// for them: asked for one on `/`, a kernel that has them refuses it for not being a regular
/// file (EBADF), one without them for the attach type (EINVAL). libbpf probes the same way.
pub fn supported(program: BorrowedFd<'_>) -> bool {
    match attach(program, Path::new("/"), &[0], false) {
        Err(error) => error.raw_os_error() == Some(libc::EBADF),
        // Not expected of any kernel: then it is not the link this agent knows.
        Ok(_) => false,
    }
}

/// Closes `links`, which detaches them, from several threads at once, so that the grace
/// periods the kernel waits for before each returns overlap: about one for all of them,
/// rather than one per link.
pub fn close_concurrently(links: Vec<OwnedFd>) {
    if links.len() <= 1 {
        drop(links);
        return;
    }
    let per_thread = links.len().div_ceil(MAX_CLOSING_THREADS);
    let mut links = links;
    std::thread::scope(|scope| {
        while !links.is_empty() {
            let batch: Vec<OwnedFd> = links.drain(..per_thread.min(links.len())).collect();
            let closing = std::thread::Builder::new()
                .name("uprobe-detach".into())
                .spawn_scoped(scope, move || drop(batch));
            // No thread to be had: this one closes them (each closing is then waited for).
            if let Err(error) = closing {
                log::debug!("closing uprobe links on this thread: {error}");
            }
        }
    });
}
