//! HTTP/1.x, both sides: what servers and clients share. Connections are tracked per
//! (process, fd); `server` handles accepted ones, `client` connected ones. A request's
//! duration lands in a per-CPU histogram; nothing per request leaves the kernel, only the
//! first sight of a route, a server address or a listener is announced to the agent.
//!
//! Verifier notes, which shape this code: functions that return nothing are inlined (a BPF
//! function returning nothing may leave a stack pointer in r0, which the verifier rejects);
//! byte loops run in `bpf_loop` callbacks whose state lives in map memory (stack state that
//! changes every iteration, such as a counter used as an index, would be tracked exactly and
//! the body verified once per value); exact small values that later index memory are passed
//! through `opaque`.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_for_each_map_elem, bpf_probe_read_kernel, bpf_probe_read_user},
    },
    maps::Array,
};
use monitor_common::head::{CAPTURE_WORDS, framing};
use monitor_common::http::{
    CAPTURE_LEN, Connection, DurationHistogram, DurationKey, HttpConfig, HttpEvent,
    IDLE_CANDIDATE_SLOTS, MAX_DURATION_BOUNDS, MAX_EXCLUDED_COMMS, MAX_PATH_LEN, ObservationEvent,
    conn_flags, connection_key, counter, duration_bucket, event_kind, head_prefix, head_words,
    idle_ring, measured_process_bit, parse_status_line, phase, role, test_fault,
    tls_connection_key,
};
use monitor_common::{fingerprint, verifier::hide};

use crate::{
    client, fork, loops,
    maps::{
        CAPTURE, CONNECTIONS, Capture, HTTP_CONFIG, HTTP_DURATION, HTTP_EVENTS,
        HTTP_EVENTS_WAKE_AT, IDLE_CANDIDATES, IDLE_RINGS, LAST_IDLE_SWEEP, LISTENERS,
        MEASURED_PROCESSES, NEW_CONNECTION, PARTIAL_PATHS, SERVING_PROCESSES, SWEEP_CONTEXT,
        SweepContext, TLS_PROCESSES, ValueRange, ZERO_DURATION, count,
    },
    sched::current_comm,
    server,
    syscalls::Buffer,
    tls,
};

mod announce;
mod capture;
mod processes;
mod record;
mod sweep;

pub use announce::*;
pub use capture::*;
pub use processes::*;
pub use record::*;
pub use sweep::*;

/// `-ECONNRESET`: a read or write on a connection the peer reset.
pub const ECONNRESET: i64 = -104;
/// `-EPIPE`: a write on a connection the peer closed (or reset).
pub const EPIPE: i64 = -32;

#[inline(always)]
pub fn config() -> Option<&'static HttpConfig> {
    HTTP_CONFIG.get(0)
}

/// `value`, as a number the verifier knows nothing about. Code that branches into a handful of
/// exactly-known values (a method's length, a bucket index) would otherwise have everything
/// after it verified once per value; passed through map memory, the paths merge again.
#[inline(always)]
pub fn opaque(value: u64) -> u64 {
    let Some(capture) = CAPTURE.get_ptr_mut(0) else {
        return value;
    };
    // SAFETY: a per-CPU map value; volatile keeps the round trip through memory.
    unsafe {
        let scratch = core::ptr::addr_of_mut!((*capture).scratch);
        core::ptr::write_volatile(scratch, value);
        core::ptr::read_volatile(scratch)
    }
}

#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// Whether the current process is one whose traffic is measured at all.
#[inline(always)]
pub fn measured(config: &HttpConfig, tgid: u32) -> bool {
    tgid != config.agent_tgid && !comm_excluded(config)
}

/// Inlined: as a function of its own it costs the program's deepest call chain a frame, and
/// older kernels count every frame as at least 32 bytes (`probes::stack_budget`).
#[inline(always)]
fn comm_excluded(config: &HttpConfig) -> bool {
    let Some(comm) = current_comm() else {
        return false;
    };
    let mut i = 0;
    while i < MAX_EXCLUDED_COMMS {
        let excluded = &config.excluded_comms[i];
        if excluded[0] != 0 && *excluded == comm {
            return true;
        }
        i += 1;
    }
    false
}

// --- Syscall events, dispatched by the connection's role ---

#[inline(always)]
pub fn on_data_in(fd: u32, buffer: Buffer, ret: i64) {
    // Errors say nothing, but a client learns from an end of stream or a reset.
    if ret < 0 && ret != ECONNRESET {
        return;
    }
    let tgid = current_tgid();
    if !may_have_connections(tgid) || tls::read_in_library_call(tgid, fd, ret) {
        return;
    }
    let key = connection_key(tgid, fd);
    let mut conn = CONNECTIONS.get_ptr_mut(key);
    if conn.is_none() {
        // A forked child's first read on a connection its parent accepted (`fork`).
        if ret <= 0 || !fork::forked_from_server(tgid) || !adopt_inherited(key, buffer, ret) {
            return;
        }
        conn = CONNECTIONS.get_ptr_mut(key);
    }
    let Some(conn) = conn else {
        return;
    };
    // SAFETY: a map value, valid for this program run.
    let conn = unsafe { &mut *conn };
    if conn.role == role::CLIENT {
        client::on_read(conn, key, tgid, buffer, ret);
    } else if ret > 0 {
        server::on_read(conn, key, tgid, buffer, ret);
    }
}

/// `fork::adopt_inherited` on the first bytes of this read.
#[inline(always)]
fn adopt_inherited(key: u64, buffer: Buffer, ret: i64) -> bool {
    let Some((head, len)) = first_16(buffer, ret) else {
        return false;
    };
    let [low, high] = head_words(&head);
    fork::adopt_inherited(key, low, high, len as u64) != 0
}

#[inline(always)]
pub fn on_data_out(fd: u32, buffer: Buffer, ret: i64) {
    // Errors say nothing, but a server learns that its client has gone.
    if ret <= 0 && ret != EPIPE && ret != ECONNRESET {
        return;
    }
    let tgid = current_tgid();
    if !may_have_connections(tgid) {
        return;
    }
    if tls::write_in_library_call(tgid, fd, ret) {
        return;
    }
    let key = connection_key(tgid, fd);
    let Some(conn) = CONNECTIONS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value, valid for this program run.
    let conn = unsafe { &mut *conn };
    if conn.role == role::CLIENT {
        if ret > 0 {
            client::on_write(conn, key, tgid, buffer, ret);
        }
    } else if ret > 0 {
        server::on_write(conn, key, tgid, buffer, ret);
    } else {
        server::on_write_failed(conn);
    }
}

#[inline(always)]
pub fn on_close(fd: u32) {
    let tgid = current_tgid();
    let key = connection_key(tgid, fd);
    // A closed listener's fd may come back as another listener: forget its verdict.
    if config().is_some_and(|config| config.port_filter != 0) {
        let _ = LISTENERS.remove(key);
    }
    if !may_have_connections(tgid) {
        return;
    }
    close_connection(key, tgid);
    if uses_tls(tgid) {
        // The plain text a TLS library moved on this socket, tracked apart (`tls`).
        close_connection(tls_connection_key(tgid, fd), tgid);
    }
}

#[inline(always)]
fn close_connection(key: u64, tgid: u32) {
    let Some(conn) = CONNECTIONS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value, valid for this program run.
    let conn = unsafe { &mut *conn };
    if conn.role == role::CLIENT {
        client::on_close(conn, tgid);
    } else {
        server::on_close(conn, tgid);
        let _ = PARTIAL_PATHS.remove(key);
    }
    let _ = CONNECTIONS.remove(key);
}
