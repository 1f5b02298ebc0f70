//! Help for the BPF verifiers of older kernels, which prove less than the compiler does.

/// `value`, as a number the compiler knows nothing about, so that the bounds checks that
/// follow stay in the code. Where the compiler can prove a bound already (from a `min`, or
/// from `a < b` with `b` bounded), it drops a check, and a verifier before Linux 6.7 or so
/// cannot follow its proof: it learns nothing from comparing two unknown registers, and
/// before 6.3 or so it forgets a scalar spilled to the stack while still unbounded. Debian
/// 12's 6.1 refused `sys_exit` so. On the host, the value itself.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn hide(mut value: u64) -> u64 {
    // SAFETY: a move of the register onto itself. (Not an empty sequence: its line-info
    // entry would share an instruction offset with the next one, which 6.1 refuses.)
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) value) };
    value
}

#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub fn hide(value: u64) -> u64 {
    value
}
