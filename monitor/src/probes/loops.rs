//! Which build of the programs this kernel takes. Their byte loops (HTTP heads, routes, the
//! idle sweep) run in `bpf_loop` callbacks, which Linux 5.17 added; older kernels (Ubuntu
//! 22.04's 5.15, RHEL 9's 5.14) get the same programs built with plain bounded loops, which
//! the verifier walks to their bounds (`monitor-ebpf/src/bounded_loops.rs`).

use std::path::Path;

use super::task_offsets::open_btf;
use crate::preflight::release_older_than;

/// How the programs loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loops {
    /// `bpf_loop` callbacks: checked once by the verifier, whatever the count.
    Helper,
    /// Bounded loops, for kernels without `bpf_loop`.
    Bounded,
}

/// `Helper` where the kernel has `bpf_loop`: its BTF has the helper's function (Linux 5.17,
/// or a backport); without BTF, its release says.
pub fn choose(btf: &Path, release: &str) -> Loops {
    let has_helper = match open_btf(btf) {
        Ok(btf) => btf
            .resolve_ids_by_name("bpf_loop")
            .is_ok_and(|ids| !ids.is_empty()),
        Err(_) => !release_older_than(release, (5, 17)),
    };
    if has_helper {
        Loops::Helper
    } else {
        Loops::Bounded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_without_btf_is_judged_by_its_release() {
        let missing = Path::new("/nonexistent/btf");
        assert_eq!(choose(missing, "5.15.0-91-generic"), Loops::Bounded);
        assert_eq!(choose(missing, "5.17.0"), Loops::Helper);
        assert_eq!(choose(missing, "6.1.0-57-amd64"), Loops::Helper);
    }

    #[test]
    fn the_btf_outranks_the_release() {
        // The build and test machines run 6.18 with BTF: its helper is found whatever release
        // is claimed (a distribution's backport keeps its old release).
        let btf = Path::new(super::super::task_offsets::KERNEL_BTF);
        assert_eq!(choose(btf, "5.14.0-427.el9.x86_64"), Loops::Helper);
    }
}
