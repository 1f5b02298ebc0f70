//! Server connections a process inherits across `fork`. A forking server (Python's
//! `socketserver.ForkingMixIn`, inetd-style daemons) accepts in the parent and forks a child
//! that serves the connection: the parent's state for it is under the parent, and the parent
//! usually closes its copy before the child reads. So a child of a process with connections is
//! noted at the fork, and its reads on descriptors nobody tracks are looked at: a socket's
//! that starts with a request line is taken as a server connection between requests.
//!
//! The look happens only in those children, on reads that miss the connection table, for
//! `ADOPT_WINDOW_NS` after the fork or until one connection is taken up (a forking server's
//! child serves the one connection it was forked for; other children, such as a Node cluster's
//! new worker reading its IPC channel, stop paying for the look). The parse runs as a global
//! function, which the verifier checks once on its own.

use aya_ebpf::bindings::BPF_ANY;
use monitor_common::http::{counter, parse_request_start};

use crate::{
    files::known_not_socket,
    http::{config, current_tgid, mark_measured, now_ns, serves, track_server_connection},
    maps::{FORKED_CHILDREN, ForkedChild},
    sched::remember_forked_child,
};

/// At `sched:sched_process_fork` in the parent: notes the child (`child_pid`; for a new
/// thread, its thread id, which no process looks up) if the parent has served connections.
/// (Not for one that was only a client: its children's reads and writes would all pay for
/// the connection look-up.)
#[inline(always)]
pub fn on_fork(child_pid: u32) {
    let parent = current_tgid();
    if child_pid == 0 || child_pid == parent || !serves(parent) {
        return;
    }
    // Marked first: the child's reads are looked at only in processes with connections.
    mark_measured(child_pid);
    let child = ForkedChild {
        forked_at_ns: now_ns(),
        parent_tgid: parent,
        _pad: 0,
    };
    let _ = FORKED_CHILDREN.insert(child_pid, child, BPF_ANY as u64);
}

/// How long after its fork a child's untracked reads are looked at.
const ADOPT_WINDOW_NS: u64 = 5_000_000_000;

/// Whether the current process was forked by one with connections in the last
/// `ADOPT_WINDOW_NS` and has not taken up a connection yet.
#[inline(always)]
pub fn forked_from_server(tgid: u32) -> bool {
    let Some(child) = FORKED_CHILDREN.get_ptr(tgid) else {
        return false;
    };
    // SAFETY: a map value, valid for this program run; a racing write stores a time as well.
    let forked_at = unsafe { (*child).forked_at_ns };
    if now_ns().saturating_sub(forked_at) < ADOPT_WINDOW_NS {
        return true;
    }
    let _ = FORKED_CHILDREN.remove(tgid);
    false
}

/// A read of `len` bytes (the first 16 in `head_low`, `head_high`, little-endian) on the
/// untracked connection `key` of a forked child: tracked as a server connection between
/// requests if the bytes start a request; 1 then.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn adopt_inherited(key: u64, head_low: u64, head_high: u64, len: u64) -> u64 {
    if len < 16 {
        return 0; // a request line is longer; a shorter read is not one
    }
    // With --http-ports, the parent's verdict on the listener is not known here.
    if config().is_none_or(|config| config.port_filter != 0) {
        return 0;
    }
    // A file or pipe that happens to hold a request line (a saved request, a log) is not
    // the connection the child was forked for.
    if known_not_socket(key as u32) {
        return 0;
    }
    let mut head = [0u8; 16];
    head[..8].copy_from_slice(&head_low.to_le_bytes());
    head[8..].copy_from_slice(&head_high.to_le_bytes());
    if parse_request_start(&head).is_none() {
        return 0;
    }
    if !track_server_connection(key, counter::CONNECTIONS_INHERITED) {
        return 0;
    }
    let tgid = current_tgid();
    if let Some(child) = FORKED_CHILDREN.get_ptr(tgid) {
        // SAFETY: a map value, valid for this program run.
        remember_forked_child(tgid, unsafe { (*child).parent_tgid });
    }
    let _ = FORKED_CHILDREN.remove(tgid);
    1
}
