//! The client's reading of heads: the Host of a request it writes, and the framing of the
//! response it reads (Content-Length or chunked, past interim responses, over several
//! 256-byte windows for a long head), and the end of a chunked body.

use aya_ebpf::helpers::bpf_probe_read_user;
use monitor_common::{
    head::{HEAD_WINDOWS, ends_with_last_chunk, framing, head_kind},
    http::{CAPTURE_LEN, Connection, is_interim, parse_status_line},
    words::zero_words,
};

use crate::{
    http::{bytes_print, capture, capture_words, feed_value, first_bytes, head, read_value},
    loops,
    maps::{CAPTURE, Capture},
    syscalls::Buffer,
};

// --- Scanning heads: the line walk, then the one value that matters (`monitor_common::head`).
// The steps run in `bpf_loop` callbacks, several per call; the state lives in
// the per-CPU capture. ---

loops::loop_step! {
    /// One callback of the line walk: up to `LINE_STEPS_PER_CALL` steps.
    fn line_step(_index) -> i64 {
        let Some(capture) = CAPTURE.get_ptr_mut(0) else {
            return 1;
        };
        // SAFETY: a per-CPU map value, only used by this program run.
        let capture = unsafe { &mut *capture };
        let mut step = 0;
        while step < LINE_STEPS_PER_CALL {
            if !capture
                .lines
                .step(&capture.bytes, capture_words(&capture.bytes))
            {
                return 1;
            }
            step += 1;
        }
        0
    }
}

/// Steps of the line walk per callback (each loads up to four words or looks at a line).
/// Every BPF call and return costs, more so where the return-stack mitigation of AMD CPUs
/// (SRSO "safe RET") makes each `ret` a detour: with one step or byte per callback, the
/// calls and returns were most of the cost. The walks are global functions, which the
/// verifier checks once: eight steps would add about 0.1 s to its pass at start-up (metrics
/// must resume within 2 s of a restart), four cover the heads of most requests.
const LINE_STEPS_PER_CALL: u32 = 4;
/// Bytes of a `Host` or `Content-Length` value per callback, for the same reason.
const VALUE_BYTES_PER_CALL: u64 = 8;

loops::loop_step! {
    fn host_step(index) -> i64 {
        feed_value::<VALUE_BYTES_PER_CALL>(index, |capture, b| capture.host.feed(b))
    }
}

loops::loop_step! {
    fn length_step(index) -> i64 {
        feed_value::<VALUE_BYTES_PER_CALL>(index, |capture, b| capture.lines.length_byte(b))
    }
}

/// Walks the header lines of the `len` captured bytes.
#[inline(always)]
fn walk_lines(capture: &mut Capture, kind: u32, len: usize) {
    zero_words(&mut capture.lines);
    capture.lines.begin(kind, len);
    // Each step loads a word or looks at a line: at most one per captured byte.
    loops::repeat_steps(CAPTURE_LEN as u32, line_step);
}

/// The normalised `Host` of the request in the capture, as a hash (0 if none). A global
/// function: the verifier checks it, and its byte loops, once on their own instead of once
/// for every way the program can reach them, which keeps the start-up pass short.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn scan_host(len: u64) -> u64 {
    let len = len as usize;
    let Some(capture) = CAPTURE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a per-CPU map value, only used by this program run.
    let capture = unsafe { &mut *capture };
    walk_lines(capture, head_kind::REQUEST, len);
    capture.host.clear();
    let from = capture.lines.host_at;
    if from != 0 {
        read_value::<VALUE_BYTES_PER_CALL>(host_step, from, len as u32);
    }
    capture.host.hash()
}

/// (framing, head length, content length) of the response whose first read is in the
/// capture (`len` bytes of it), and whether the head ran past the capture. Such a head is read
/// on in later windows of the read's first buffer (`LongHead`), up to `HEAD_WINDOWS`.
#[inline(always)]
fn scan_response_head(buffer: Buffer, ret: i64, len: usize) -> (u16, u64, u64, bool) {
    const UNKNOWN: (u16, u64, u64, bool) = (framing::UNKNOWN, 0, 0, false);
    if walk_response_head(len as u64) != 0 {
        return UNKNOWN;
    }
    let Some(capture) = CAPTURE.get_ptr(0) else {
        return UNKNOWN;
    };
    // SAFETY: a per-CPU map value, only used by this program run.
    let lines = unsafe { &(*capture).lines };
    if lines.head_len != 0 || len < CAPTURE_LEN {
        return (
            lines.framing(),
            lines.head_len as u64,
            lines.content_length,
            false,
        );
    }
    let Some((source, available)) = first_bytes(buffer, ret) else {
        return UNKNOWN;
    };
    if read_long_head(source, available.min(ret as u64)) != 0 {
        return UNKNOWN;
    }
    // SAFETY: as above; `read_long_head` left its result there.
    let long = unsafe { &(*capture).long_head };
    (
        long.framing(),
        long.head_len as u64,
        long.content_length,
        true,
    )
}

/// Walks the response head in the capture, leaving what it found in `CAPTURE.lines` (the
/// `Content-Length` value read, even when the head goes on past the capture); 0 when it did.
/// A global function, like `scan_host`.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn walk_response_head(len: u64) -> u64 {
    let Some(capture) = CAPTURE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: a per-CPU map value, only used by this program run.
    let capture = unsafe { &mut *capture };
    walk_lines(capture, head_kind::RESPONSE, len as usize);
    let (from, head_len) = (capture.lines.length_at, capture.lines.head_len);
    if from != 0 {
        let end = if head_len != 0 { head_len } else { len as u32 };
        read_value::<VALUE_BYTES_PER_CALL>(length_step, from, end);
    }
    0
}

/// Reads on a response head that the capture of the read at `source` (`available` bytes in
/// its first buffer) did not hold whole, a window at a time, into `CAPTURE.long_head`; 0 when
/// it did. The first window is the capture already walked. A global function, like
/// `scan_host`: the windows cost only responses with long heads.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn read_long_head(source: u64, available: u64) -> u64 {
    let Some(scratch) = CAPTURE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: a per-CPU map value, only used by this program run; each borrow ends before
    // the capture and the walk write it again.
    let mut next = unsafe {
        zero_words(&mut (*scratch).long_head);
        (*scratch).long_head.absorb(&(*scratch).lines, CAPTURE_LEN)
    };
    let mut window = 1;
    while window < HEAD_WINDOWS {
        let Some(at) = next.map(u64::from).filter(|&at| at < available) else {
            break;
        };
        let Some((_, len)) = capture(Buffer::Plain(source + at), (available - at) as i64) else {
            break;
        };
        if walk_response_head(len as u64) != 0 {
            break;
        }
        // SAFETY: as above.
        next = unsafe { (*scratch).long_head.absorb(&(*scratch).lines, len) };
        window += 1;
    }
    0
}

/// Interim heads (100 Continue, 103 Early Hints) skipped before a final response that comes
/// in the same read or write; more are not sent in practice.
const MAX_INTERIM_HEADS: u32 = 2;

/// A final response that came in the same read or write as the interim ones before it.
pub struct AfterInterim {
    pub status: u16,
    /// Where the syscall's bytes are (all in its first buffer).
    pub source: u64,
    /// Where the final response starts in them.
    pub start: u64,
    /// How many of its bytes the per-CPU capture now holds.
    pub captured: usize,
}

/// The final response after the interim one that starts these bytes, when the syscall moved
/// it too: a server that writes `103 Early Hints` and its answer at once, or a client that
/// reads both at once. Only when all the bytes are in the first buffer.
#[inline(always)]
pub fn final_response_after_interim(buffer: Buffer, ret: i64) -> Option<AfterInterim> {
    let (source, available) = first_bytes(buffer, ret)?;
    if ret <= 0 || (available as i64) < ret {
        return None;
    }
    let total = ret as u64;
    let mut found = final_after_interim(source, total, 0);
    if found & LONG_INTERIM != 0 {
        // An interim head longer than the capture (a 103 with many `Link` lines), at `at`:
        // read on in windows, as a final response's head is. Called from here rather than
        // from `final_after_interim`, whose frame would put the walk past the stack's limit.
        let at = found >> 32;
        if read_long_head(source + at, total - at) != 0 {
            return None;
        }
        let scratch = CAPTURE.get_ptr(0)?;
        // SAFETY: a per-CPU map value, only used by this program run; `read_long_head` left
        // its result there.
        let head_len = unsafe { (*scratch).long_head.head_len } as u64;
        if head_len == 0 {
            return None;
        }
        found = final_after_interim(source + at, total - at, head_len);
        if found & LONG_INTERIM != 0 {
            return None;
        }
        found += at << 32;
    }
    (found as u16 != 0).then_some(AfterInterim {
        status: found as u16,
        source,
        start: found >> 32,
        captured: (found >> 16) as u16 as usize,
    })
}

/// In `final_after_interim`'s answer: the interim head at `start` is longer than the capture.
const LONG_INTERIM: u64 = 1 << 15;

/// `final_response_after_interim` of `available` bytes at `source`, packed as
/// `status | captured << 16 | start << 32`; 0 when no final response starts in them (it comes
/// in a later read or write); `LONG_INTERIM | start << 32` when the interim head at `start`
/// does not end in the capture. `first_head_len`, when not 0, is the length of the first
/// interim head, already read. Leaves the final response's first bytes in the capture. A
/// global function, like `scan_host`: only interim responses pay for it.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn final_after_interim(source: u64, available: u64, first_head_len: u64) -> u64 {
    // With the first head's length known, its bytes are not walked: no capture of them.
    let mut len = 0;
    if first_head_len == 0 {
        let Some((_, captured)) = capture(Buffer::Plain(source), available as i64) else {
            return 0;
        };
        len = captured;
    }
    let mut start = 0;
    let mut heads = 0;
    let mut known_head_len = first_head_len;
    while heads < MAX_INTERIM_HEADS {
        let head_len = if known_head_len != 0 {
            known_head_len
        } else {
            if walk_response_head(len as u64) != 0 {
                return 0;
            }
            let Some(scratch) = CAPTURE.get_ptr(0) else {
                return 0;
            };
            // SAFETY: a per-CPU map value, only used by this program run.
            let head_len = unsafe { (*scratch).lines.head_len } as u64;
            if head_len == 0 {
                return if len == CAPTURE_LEN {
                    LONG_INTERIM | start << 32
                } else {
                    0
                };
            }
            head_len
        };
        known_head_len = 0;
        start += head_len;
        if start >= available {
            return 0;
        }
        let Some((capture, captured)) =
            capture(Buffer::Plain(source + start), (available - start) as i64)
        else {
            return 0;
        };
        len = captured;
        if len < 12 {
            return 0; // the status line goes on in the next read: not told apart
        }
        match parse_status_line(&head(capture)) {
            Some(status) if !is_interim(status) => {
                return status as u64 | (len as u64) << 16 | start << 32;
            }
            Some(_) => heads += 1,
            None => return 0,
        }
    }
    0
}

/// (framing, head length, content length) of the response whose first read is in the
/// capture, after `held` bytes of it that an earlier read brought (the head length counts
/// them): what the last response of the connection had if its first read was the same.
#[inline(always)]
pub(super) fn response_framing(
    conn: &mut Connection,
    buffer: Buffer,
    ret: i64,
    len: usize,
    held: u64,
) -> (u16, u64, u64) {
    let print = bytes_print(len as u64);
    if print == conn.response_print {
        return (
            conn.response_framing,
            conn.response_head_len as u64,
            conn.response_length,
        );
    }
    let (framing, head_len, length, long) = scan_response_head(buffer, ret, len);
    // A long head is read on from this read's own bytes, which do not hold the prefix.
    let head_len = if long { head_len + held } else { head_len };
    // A long head's framing may lie past the bytes printed: not kept for the next response.
    conn.response_print = if long { 0 } else { print };
    conn.response_framing = framing;
    conn.response_head_len = head_len as u32;
    conn.response_length = length;
    (framing, head_len, length)
}

/// Whether the body's bytes so far, this read's last, end with the zero-size chunk that closes
/// a chunked body; keeps their last bytes in `body_state` for a read that brings fewer. The
/// line break before the zero tells the chunk apart from a head whose last header's value
/// ends in 0 (`max-age=0`), or a chunk's data that does. Not followed: a trailer after the
/// last chunk, and a read into several buffers; such a response ends at the close, counted
/// as cut off.
#[inline(always)]
pub(super) fn ends_chunked_body(conn: &mut Connection, buffer: Buffer, ret: i64) -> bool {
    let Some((start, available)) = first_bytes(buffer, ret) else {
        return false;
    };
    if ret <= 0 || (available as i64) < ret {
        return false;
    }
    let end = start + ret as u64;
    let last = if ret >= 8 {
        // SAFETY: the helper checks the user address.
        match unsafe { bpf_probe_read_user((end - 8) as *const [u8; 8]) } {
            Ok(bytes) => u64::from_be_bytes(bytes),
            Err(_) => return false,
        }
    } else {
        // A read of a few bytes (the terminator split across reads): shifted in one by one.
        let mut last = conn.body_state;
        for i in 0..7 {
            if i < ret as u64 {
                // SAFETY: as above.
                match unsafe { bpf_probe_read_user((start + i) as *const u8) } {
                    Ok(byte) => last = last << 8 | byte as u64,
                    Err(_) => return false,
                }
            }
        }
        last
    };
    conn.body_state = last;
    ends_with_last_chunk(last)
}
