//! The limit on open files, raised at start: the agent holds BPF maps, programs, links and
//! perf events, reads /proc, and serves connections, and a unit or shell soft limit of 1024
//! is not much for all of them. Raising the soft limit up to the hard one needs no privilege.

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; failing that, runs on with what
/// there is.
pub fn raise_to_hard_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives through the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        log::debug!(
            "reading the open files limit: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        log::debug!("open files limit: {} (the hard limit)", limit.rlim_cur);
        return;
    }
    let soft = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads the struct it is given, which lives through the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        log::debug!("open files limit raised from {soft} to {}", limit.rlim_max);
    } else {
        log::debug!(
            "raising the open files limit from {soft} to {}: {}",
            limit.rlim_max,
            std::io::Error::last_os_error()
        );
    }
}
