//! Loops as `bpf_loop` callbacks (Linux 5.17+): the verifier checks each body once, whatever
//! the count.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;

/// Defines a loop body for `repeat_steps`: a `bpf_loop` callback (a static function) that
/// gets the iteration's index and returns non-zero to stop. Its state lives in map memory.
macro_rules! loop_step {
    ($(#[$attr:meta])* fn $name:ident($index:ident) -> i64 $body:block) => {
        $(#[$attr])*
        #[inline(never)]
        extern "C" fn $name($index: u64, _context: *mut core::ffi::c_void) -> i64 $body
    };
}
pub(crate) use loop_step;

/// A body defined with `loop_step!`.
pub type Step = extern "C" fn(u64, *mut c_void) -> i64;

/// Runs `step` for index 0, 1, ... up to `count` times, until it returns non-zero.
#[inline(always)]
pub fn repeat_steps(count: u32, step: Step) {
    // SAFETY: `step` has the signature bpf_loop calls; it takes no context.
    unsafe { bpf_loop(count, step as *mut c_void, core::ptr::null_mut(), 0) };
}
