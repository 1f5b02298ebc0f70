//! Loops as plain bounded loops, for kernels without `bpf_loop`. The verifier walks every
//! iteration up to the count, so the bodies of the byte loops are global functions, which it
//! checks once on their own and then takes as calls that return a number.

/// Defines a loop body for `repeat_steps`: a global function that gets the iteration's index
/// and returns non-zero to stop. Its state lives in map memory: a global function takes only
/// numbers here (pointers from 5.12 on, and never to the caller's stack before 6.x).
macro_rules! loop_step {
    ($(#[$attr:meta])* fn $name:ident($index:ident) -> i64 $body:block) => {
        $(#[$attr])*
        #[inline(never)]
        #[unsafe(no_mangle)]
        pub extern "C" fn $name($index: u64) -> i64 $body
    };
}
pub(crate) use loop_step;

/// A body defined with `loop_step!`.
pub type Step = extern "C" fn(u64) -> i64;

/// Runs `step` for index 0, 1, ... up to `count` times, until it returns non-zero.
#[inline(always)]
pub fn repeat_steps(count: u32, step: Step) {
    let mut index = 0;
    while index < count {
        if step(index as u64) != 0 {
            break;
        }
        index += 1;
    }
}
