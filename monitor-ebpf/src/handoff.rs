//! Server connections handed to another process. Node's cluster module (round-robin, its
//! default on Linux) and pm2 accept every connection in the primary and pass it to a worker
//! over a Unix socket (`SCM_RIGHTS`); the worker, which never accepted it, would find no state
//! for its reads and writes. Both ends share the connection's open file (`struct file`): the
//! sender's `sendmsg` notes the file of each tracked server connection it passes, and the
//! receiver's `recvmsg` tracks the descriptors whose file was noted.
//!
//! Both run as global functions, which the verifier checks once on their own. The receiver's
//! side reads a `msghdr` only for a second after a hand-over, so that the `recvmsg` of other
//! programs on the host costs one array load.

use aya_ebpf::bindings::BPF_ANY;
use monitor_common::http::{connection_key, counter, role};

use crate::{
    files::{offsets, open_file},
    http::{
        config, current_tgid, mark_measured, may_have_connections, measured, now_ns, read_user,
        track_server_connection,
    },
    maps::{CONNECTIONS, HANDED_OVER, LAST_HAND_OVER},
};

/// How long after a hand-over receivers look at their control messages: a worker receives
/// its connection within milliseconds.
const RECEIVE_WINDOW_NS: u64 = 1_000_000_000;

/// `struct msghdr` (x86_64 user ABI): `msg_control` and `msg_controllen`, adjacent.
const MSGHDR_CONTROL: u64 = 32;
/// `struct cmsghdr`: `cmsg_len` (8 bytes), `cmsg_level`, `cmsg_type`; the data follows.
const CMSG_HEADER: u64 = 16;
const SOL_SOCKET: u64 = 1;
const SCM_RIGHTS: u64 = 1;
/// Descriptors looked at per message: Node passes one.
const MAX_PASSED: u64 = 4;

/// After a `sendmsg` of the current process (`msg` its `struct msghdr`): notes the open file of
/// each tracked server connection the message passed.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn note_passed_connections(msg: u64) -> u64 {
    let Some(offsets) = offsets() else {
        return 0;
    };
    let tgid = current_tgid();
    if !may_have_connections(tgid) {
        return 0; // only a process with connections has any to pass
    }
    let Some((fds, passed)) = passed_descriptors(msg) else {
        return 0;
    };
    let mut noted = 0;
    let mut i = 0;
    while i < MAX_PASSED as usize {
        if i < passed {
            let fd = fds[i];
            let tracked = CONNECTIONS.get_ptr(connection_key(tgid, fd));
            // SAFETY: a map value, valid for this program run.
            if tracked.is_some_and(|conn| unsafe { (*conn).role } == role::SERVER)
                && let Some(file) = open_file(fd, &offsets)
                && HANDED_OVER.insert(file, 1, BPF_ANY as u64).is_ok()
            {
                noted += 1;
            }
        }
        i += 1;
    }
    if noted != 0
        && let Some(last) = LAST_HAND_OVER.get_ptr_mut(0)
    {
        // SAFETY: a map value; a racing writer stores a time as recent.
        unsafe { *last = now_ns() };
    }
    noted
}

/// Whether a connection was handed over in the last `RECEIVE_WINDOW_NS`: only then does a
/// `recvmsg` call `track_received_connections` (a call costs, and most hosts never hand over).
#[inline(always)]
pub fn handed_over_lately() -> bool {
    LAST_HAND_OVER
        .get(0)
        .is_some_and(|&last| last != 0 && now_ns().saturating_sub(last) < RECEIVE_WINDOW_NS)
}

/// After a `recvmsg` of the current process: tracks the descriptors it received whose open
/// file a sender noted, as server connections between requests.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn track_received_connections(msg: u64) -> u64 {
    let Some(offsets) = offsets() else {
        return 0;
    };
    let Some(config) = config() else {
        return 0;
    };
    let tgid = current_tgid();
    if !measured(config, tgid) {
        return 0;
    }
    let Some((fds, passed)) = passed_descriptors(msg) else {
        return 0;
    };
    let mut tracked = 0;
    let mut i = 0;
    while i < MAX_PASSED as usize {
        if i < passed
            && let Some(file) = open_file(fds[i], &offsets)
            && HANDED_OVER.remove(file).is_ok()
        {
            mark_measured(tgid);
            let key = connection_key(tgid, fds[i]);
            if track_server_connection(key, counter::CONNECTIONS_RECEIVED) {
                tracked += 1;
            }
        }
        i += 1;
    }
    tracked
}

/// The descriptors an `SCM_RIGHTS` message carries in its first control message (numbers in
/// the current process's table: the receiver's are written back by the kernel), at most
/// `MAX_PASSED`, and how many.
#[inline(always)]
fn passed_descriptors(msg: u64) -> Option<([u32; MAX_PASSED as usize], usize)> {
    let [control, control_len] = read_user::<[u64; 2]>(msg + MSGHDR_CONTROL)?;
    if control == 0 || control_len < CMSG_HEADER + 4 {
        return None;
    }
    let [cmsg_len, level_and_type] = read_user::<[u64; 2]>(control)?;
    // Little-endian: the level is the low half, the type the high half.
    if level_and_type & 0xffff_ffff != SOL_SOCKET || level_and_type >> 32 != SCM_RIGHTS {
        return None;
    }
    let count = (cmsg_len.min(control_len).saturating_sub(CMSG_HEADER) / 4).min(MAX_PASSED);
    let mut fds = [0u32; MAX_PASSED as usize];
    let mut i = 0;
    while i < MAX_PASSED as usize {
        if (i as u64) < count {
            fds[i] = read_user::<u32>(control + CMSG_HEADER + 4 * i as u64)?;
        }
        i += 1;
    }
    Some((fds, count as usize))
}
