//! A process's open files, found in the kernel through the offsets the agent read from its
//! BTF (`FileTableOffsets`): the open file behind a descriptor (what a connection passed
//! between processes is recognised by, `handoff`), a socket's local port (what
//! `--http-ports` filters on), whether a descriptor is a socket at all (`fork`), and whether
//! it is a TCP or UDP one (`tls`).

use aya_ebpf::{
    Global,
    helpers::{bpf_probe_read_kernel, generated::bpf_get_current_task},
};
use monitor_common::http::{ALLOWED_PORT_WORDS, FileTableOffsets, allowed_port_bit};

use crate::maps::ALLOWED_PORTS;

/// Set by the agent before loading; `found` is 0 where the kernel's BTF did not give them.
#[unsafe(no_mangle)]
static FILE_TABLE: Global<FileTableOffsets> = Global::new(FileTableOffsets {
    found: 0,
    task_files: 0,
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    socket_found: 0,
    file_private_data: 0,
    socket_sk: 0,
    sock_num: 0,
    sock_family: 0,
    file_inode: 0,
    inode_mode: 0,
});

#[inline(always)]
pub fn offsets() -> Option<FileTableOffsets> {
    let offsets = FILE_TABLE.load();
    (offsets.found != 0).then_some(offsets)
}

/// The address of the open file behind `fd` in the current process: what a passed descriptor
/// is recognised by in both processes.
#[inline(always)]
pub fn open_file(fd: u32, offsets: &FileTableOffsets) -> Option<u64> {
    // SAFETY: no preconditions; the result is only read through the helper, which checks it.
    let task = unsafe { bpf_get_current_task() };
    let files = read_kernel::<u64>(task + u64::from(offsets.task_files))?;
    let table = read_kernel::<u64>(files + u64::from(offsets.files_fdt))?;
    let max_fds = read_kernel::<u32>(table + u64::from(offsets.fdtable_max_fds))?;
    if fd >= max_fds {
        return None;
    }
    let array = read_kernel::<u64>(table + u64::from(offsets.fdtable_fd))?;
    let file = read_kernel::<u64>(array + 8 * u64::from(fd))?;
    (file != 0).then_some(file)
}

/// The local port of the socket behind `fd` in the current process, which must be a socket
/// (one that `accept` just took a connection from); 0 where the kernel's BTF did not give the
/// way, or for a socket without one (a Unix socket). A global function: the verifier checks it
/// once, and only `accept` with `--http-ports` calls it.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn socket_local_port(fd: u64) -> u64 {
    let Some(offsets) = offsets().filter(|offsets| offsets.socket_found != 0) else {
        return 0;
    };
    let Some(sock) = open_file(fd as u32, &offsets).and_then(|file| sock_of(file, &offsets)) else {
        return 0;
    };
    read_kernel::<u16>(sock + u64::from(offsets.sock_num)).map_or(0, u64::from)
}

/// The `struct sock` of the socket open as `file` (`file.private_data`, then `socket.sk`);
/// the caller checked `socket_found`.
#[inline(always)]
fn sock_of(file: u64, offsets: &FileTableOffsets) -> Option<u64> {
    let socket = read_kernel::<u64>(file + u64::from(offsets.file_private_data))?;
    read_kernel::<u64>(socket + u64::from(offsets.socket_sk))
}

/// `S_IFMT` and `S_IFSOCK` of `inode.i_mode`.
const FILE_KIND: u16 = 0o170000;
const SOCKET_KIND: u16 = 0o140000;

/// Whether `fd` in the current process is known to be something other than a socket (a file,
/// a pipe); false where the kernel's BTF did not give the way to its kind.
#[inline(always)]
pub fn known_not_socket(fd: u32) -> bool {
    offsets()
        .and_then(|offsets| file_and_mode(fd, &offsets))
        .is_some_and(|(_, mode)| mode & FILE_KIND != SOCKET_KIND)
}

/// The open file behind `fd` and its inode's mode, where the kernel's BTF gave the way.
#[inline(always)]
fn file_and_mode(fd: u32, offsets: &FileTableOffsets) -> Option<(u64, u16)> {
    if offsets.file_inode == 0 {
        return None;
    }
    let file = open_file(fd, offsets)?;
    let inode = read_kernel::<u64>(file + u64::from(offsets.file_inode))?;
    let mode = read_kernel::<u16>(inode + u64::from(offsets.inode_mode))?;
    Some((file, mode))
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Whether `fd` in the current process is known to be something other than a TCP or UDP
/// socket: a file, a pipe, an `eventfd`, a Unix socket (journald's standard output, Python's
/// asyncio waking its loop); false where the kernel's BTF did not give the way to tell. A
/// global function: the verifier checks it once for the TLS paths that ask it.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn fd_known_not_internet_socket(fd: u64) -> u64 {
    let Some(offsets) = offsets() else {
        return 0;
    };
    let Some((file, mode)) = file_and_mode(fd as u32, &offsets) else {
        return 0;
    };
    if mode & FILE_KIND != SOCKET_KIND {
        return 1;
    }
    if offsets.socket_found == 0 {
        return 0;
    }
    let Some(sock) = sock_of(file, &offsets) else {
        return 0;
    };
    read_kernel::<u16>(sock + u64::from(offsets.sock_family)).map_or(0, |family| {
        u64::from(family != AF_INET && family != AF_INET6)
    })
}

/// Whether `--http-ports` named `port` (`ALLOWED_PORTS`, written by the agent).
#[inline(always)]
pub fn port_allowed(port: u16) -> bool {
    let (word, bit) = allowed_port_bit(port);
    word < ALLOWED_PORT_WORDS && ALLOWED_PORTS.get(word).is_some_and(|bits| bits & bit != 0)
}

#[inline(always)]
fn read_kernel<T: Copy>(address: u64) -> Option<T> {
    // SAFETY: the helper checks the kernel address; failure is an error value.
    unsafe { bpf_probe_read_kernel(address as *const T).ok() }
}
