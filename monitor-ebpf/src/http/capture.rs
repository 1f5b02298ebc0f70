//! Capturing a read's or write's first bytes from user memory, and the byte loops over them.

use super::*;

/// Feeds the value loop's bytes for step `index` (`CAPTURE.value`) to `feed`; 1 (stop) past
/// the value's end or when `feed` says so.
#[inline(always)]
pub fn feed_value<const PER_CALL: u64>(
    index: u64,
    mut feed: impl FnMut(&mut Capture, u8) -> bool,
) -> i64 {
    let Some(capture) = CAPTURE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: a per-CPU map value, only used by this program run.
    let capture = unsafe { &mut *capture };
    let (from, end) = (capture.value.from as u64, capture.value.end as u64);
    let mut k = 0;
    while k < PER_CALL {
        let position = from + index * PER_CALL + k;
        if position >= end {
            return 1;
        }
        let b = capture.bytes[(position as usize) & (CAPTURE_LEN - 1)];
        if !feed(capture, b) {
            return 1;
        }
        k += 1;
    }
    0
}

/// Reads the capture's bytes `from..end` with `step`, `PER_CALL` per step.
#[inline(always)]
pub fn read_value<const PER_CALL: u64>(step: loops::Step, from: u32, end: u32) {
    let Some(capture) = CAPTURE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU map value, only used by this program run.
    unsafe {
        (*capture).value = ValueRange { from, end };
    }
    loops::repeat_steps((CAPTURE_LEN as u64 / PER_CALL) as u32, step);
}

// --- Capturing bytes ---

/// The status code if these bytes start a response.
#[inline(always)]
pub fn status_of(buffer: Buffer, ret: i64) -> Option<u16> {
    let (head, len) = first_16(buffer, ret)?;
    if len < 12 {
        return None;
    }
    parse_status_line(&head)
}

/// The first (up to) 16 bytes the syscall moved, zero-padded, and how many there were. Read
/// onto the stack: the kernel's usercopy hardening checks a stack destination in a few
/// instructions, map memory with several calls.
#[inline(always)]
pub fn first_16(buffer: Buffer, ret: i64) -> Option<([u8; 16], usize)> {
    let (source, len) = first_bytes_up_to(buffer, ret, 16)?;
    // Bounded again where the compiler cannot drop it (`verifier::hide`): 6.1 also follows a
    // path where `ret` is negative, whose `min` it cannot bound.
    let len = hide(len) & 31;
    let len = if len > 16 { 16 } else { len };
    let mut head = [0u8; 16];
    // The destination holds 16 bytes and `len` is at most that.
    if !read_user_bytes(head.as_mut_ptr(), len, source) {
        return None;
    }
    Some((head, len as usize))
}

/// Where the syscall's first bytes are in user memory, and how many of them to copy: the
/// bytes moved, at most `max`, all in the first buffer.
#[inline(always)]
fn first_bytes_up_to(buffer: Buffer, ret: i64, max: u64) -> Option<(u64, u64)> {
    let (source, available) = first_bytes(buffer, ret)?;
    Some((source, (ret as u64).min(available).min(max)))
}

/// Copies `len` bytes of user memory at `source` to `dest`, which must hold them; false when
/// the helper could not read them.
#[inline(always)]
fn read_user_bytes(dest: *mut u8, len: u64, source: u64) -> bool {
    // SAFETY: the caller sizes `dest`; the helper checks the user address.
    unsafe { bpf_probe_read_user(dest.cast(), len as u32, source as *const c_void) == 0 }
}

/// The capture's words, for the word-at-a-time scans (`fingerprint`, `head`).
#[inline(always)]
pub fn capture_words(bytes: &[u8; CAPTURE_LEN]) -> impl Fn(usize) -> u64 + '_ {
    let words = bytes.as_ptr() as *const u64;
    // SAFETY: `bytes` starts the 8-aligned map value and holds CAPTURE_WORDS words; the
    // index is masked into them.
    move |i| unsafe { *words.add(i & (CAPTURE_WORDS - 1)) }
}

/// `fingerprint::request_target` of the capture. A global function: the verifier checks it
/// once, on its own, instead of once for every way the program can reach it.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn target_print(target: u64, len: u64) -> u64 {
    let Some(capture) = CAPTURE.get_ptr(0) else {
        return 0;
    };
    // SAFETY: a per-CPU map value, only used by this program run.
    let capture = unsafe { &*capture };
    fingerprint::request_target(
        capture_words(&capture.bytes),
        target as usize,
        len as usize,
        seed(),
    )
}

/// `fingerprint::bytes` of the capture; a global function for the same reason.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn bytes_print(len: u64) -> u64 {
    let Some(capture) = CAPTURE.get_ptr(0) else {
        return 0;
    };
    // SAFETY: as above.
    let capture = unsafe { &*capture };
    fingerprint::bytes(capture_words(&capture.bytes), len as usize, seed())
}

/// `proxy::header_len` of the capture (`len` bytes read), 0 when it holds no PROXY header; a
/// global function for the same reason.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn proxy_header_len(len: u64) -> u64 {
    let Some(capture) = CAPTURE.get_ptr(0) else {
        return 0;
    };
    // SAFETY: as above.
    let capture = unsafe { &*capture };
    monitor_common::proxy::header_len(&head(capture), len as usize, capture_words(&capture.bytes))
        .map_or(0, |len| len as u64)
}

/// Captures the bytes of a read that follow its first `skip` bytes into the per-CPU capture,
/// in place of what `capture` put there, and returns how many; none when the first buffer
/// holds no more than `skip`.
#[inline(always)]
pub fn recapture_after(buffer: Buffer, ret: i64, skip: u64) -> Option<usize> {
    let (source, available) = first_bytes(buffer, ret)?;
    let rest = (ret as u64)
        .min(available)
        .checked_sub(skip)
        .filter(|&rest| rest > 0)?;
    capture(Buffer::Plain(source + skip), rest as i64).map(|(_, len)| len)
}

#[inline(always)]
fn seed() -> u64 {
    config().map_or(0, |config| config.fingerprint_seed)
}

#[inline(always)]
pub fn head(capture: &Capture) -> [u8; 16] {
    let mut head = [0u8; 16];
    head.copy_from_slice(&capture.bytes[..16]);
    head
}

/// `len`, at most CAPTURE_LEN, in a form the verifier can bound (a mask, then a cap).
#[inline(always)]
fn within_capture(len: u64) -> u64 {
    let len = hide(len) & (2 * CAPTURE_LEN as u64 - 1);
    if len > CAPTURE_LEN as u64 {
        CAPTURE_LEN as u64
    } else {
        len
    }
}

/// Copies the first bytes the syscall moved, up to CAPTURE_LEN, into the per-CPU capture; the
/// rest of the capture is zeroed up to 16 bytes so short reads parse as what they are.
#[inline(always)]
pub fn capture(buffer: Buffer, ret: i64) -> Option<(&'static Capture, usize)> {
    capture_after(&[0; 2], buffer, ret)
}

/// `capture`, after the bytes a connection holds (`head_prefix::of`; none for `[0, 0]`), as
/// if they had come in one read with this syscall's: prefix and bytes fill the capture at
/// most, as a full read would.
#[inline(always)]
pub fn capture_after(
    prefix: &[u64; 2],
    buffer: Buffer,
    ret: i64,
) -> Option<(&'static Capture, usize)> {
    let held = head_prefix::len(prefix) as u64;
    let (source, len) = first_bytes_up_to(buffer, ret, CAPTURE_LEN as u64 - held)?;
    let len = within_capture(len);
    // SAFETY: a per-CPU map value, only used by this program run on this CPU.
    let capture = unsafe { &mut *CAPTURE.get_ptr_mut(0)? };
    let first_words = capture.bytes.as_mut_ptr().cast::<[u64; 2]>();
    // SAFETY: `bytes` starts the 8-aligned map value. The prefix's bytes (or zeroes) first;
    // the read then overwrites the zeroes after them.
    unsafe { *first_words = head_prefix::bytes(prefix) };
    // `held` + `len` is at most CAPTURE_LEN (the cap above); the verifier, which cannot
    // relate the two, sees a write within the map value, whose other fields follow `bytes`.
    let dest = capture
        .bytes
        .as_mut_ptr()
        .wrapping_add((held & 15) as usize);
    if !read_user_bytes(dest, len, source) {
        return None;
    }
    Some((capture, (held + len) as usize))
}

/// The address of the syscall's first bytes in user memory, and how many are there.
#[inline(always)]
pub fn first_bytes(buffer: Buffer, ret: i64) -> Option<(u64, u64)> {
    match buffer {
        Buffer::Plain(pointer) => Some((pointer, ret as u64)),
        Buffer::Iovec(iov) => first_iovec(iov),
        Buffer::Msghdr(msg) => first_iovec(read_user::<u64>(msg + MSGHDR_IOV)?),
        Buffer::None => None,
    }
}

/// Offset of `msg_iov` in the user ABI's `struct msghdr` (x86_64).
const MSGHDR_IOV: u64 = 16;

/// Base and length of the first `struct iovec` at `iov`, in one read of user memory.
fn first_iovec(iov: u64) -> Option<(u64, u64)> {
    let [base, len] = read_user::<[u64; 2]>(iov)?;
    Some((base, len))
}

pub fn read_user<T: Copy>(address: u64) -> Option<T> {
    // SAFETY: the helper checks the user address; failure is an error value.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(address as *const T).ok() }
}
