use super::*;

/// The exec namer's read of a process stuck holding its memory map (here a FIFO nobody
/// writes, whose open waits the same way) gives up, so naming goes on with the next
/// process. Before, it waited for good, and so did the agent's shutdown.
#[test]
fn a_read_at_exec_that_never_answers_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = crate::test_support::fifo_without_writer(dir.path(), "environ");
    let reading = fifo.display().to_string();
    let answer = crate::test_support::within(std::time::Duration::from_secs(60), move || {
        MemoryReads::AtExec.read(reading)
    })
    .expect("the read at exec never gave up");
    assert_eq!(
        answer.map_err(|error| error.kind()).err(),
        Some(std::io::ErrorKind::TimedOut)
    );
    // Lets the reader left on the FIFO go.
    drop(fs::OpenOptions::new().write(true).open(&fifo));
}

/// A read that timed out, found every reader stuck, ran out of descriptors or was refused
/// leaves the name incomplete, to be asked for again; a process gone does not.
#[test]
fn only_reads_that_may_pass_leave_the_name_incomplete() {
    let may_pass = vec![
        io::Error::from(io::ErrorKind::TimedOut),
        io::Error::from(io::ErrorKind::WouldBlock),
        io::Error::from_raw_os_error(libc::EMFILE),
        io::Error::from_raw_os_error(libc::EACCES),
    ];
    let final_ = vec![
        io::Error::from_raw_os_error(libc::ENOENT),
        io::Error::from_raw_os_error(libc::ESRCH),
        io::Error::from(io::ErrorKind::InvalidData),
    ];
    for (errors, expected) in [(may_pass, true), (final_, false)] {
        for error in errors {
            let incomplete = Cell::new(false);
            assert_eq!(noted::<()>(Err(error), &incomplete), None);
            assert_eq!(incomplete.get(), expected);
        }
    }
    let incomplete = Cell::new(false);
    assert_eq!(noted(Ok(7), &incomplete), Some(7));
    assert!(!incomplete.get());

    let dir = tempfile::tempdir().unwrap();
    let identifier = Identifier::new(&dir.path().join("pods"), MemoryReads::Bounded);
    // Every file read (this process's own), or none there (a pid that cannot exist).
    assert!(!identifier.identify(std::process::id(), None).incomplete);
    assert!(!identifier.identify(u32::MAX - 1, None).incomplete);
}

#[test]
fn a_zombie_is_not_alive_unless_its_threads_run_on() {
    let status = |state: &str, threads: u32| {
        format!("Name:\tpython3\nState:\t{state}\nTgid:\t7\nThreads:\t{threads}\n").into_bytes()
    };
    assert!(status_says_alive(&status("S (sleeping)", 1)));
    assert!(status_says_alive(&status("R (running)", 4)));
    assert!(!status_says_alive(&status("Z (zombie)", 1)));
    assert!(!status_says_alive(&status("X (dead)", 1)));
    // The leader exited with pthread_exit; its threads still serve.
    assert!(status_says_alive(&status("Z (zombie)", 3)));
    assert!(is_alive(std::process::id()));
}

/// `prctl(PR_SET_NAME, "ab\xffcd")`: the kernel shows the name's bytes as they are.
#[test]
fn a_zombie_with_a_name_that_is_not_utf8_is_not_alive() {
    let status = b"Name:\tab\xffcd\nUmask:\t0022\nState:\tZ (zombie)\nTgid:\t7\nThreads:\t1\n";
    assert!(!status_says_alive(status));
    let status = b"Name:\tab\xffcd\nState:\tS (sleeping)\nTgid:\t7\nThreads:\t1\n";
    assert!(status_says_alive(status));
}

/// The same through procfs: a zombie child of this test whose name is not UTF-8.
#[test]
fn a_real_zombie_with_a_name_that_is_not_utf8_is_not_alive() {
    // SAFETY: the child only calls async-signal-safe functions (prctl, _exit).
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        let name = b"ab\xffcd\0";
        // SAFETY: a NUL-terminated name, in the child only.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, name.as_ptr());
            libc::_exit(0);
        }
    }
    let pid = child as u32;
    // Not reaped yet: a zombie once it has exited, which waitid with WNOWAIT waits for.
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid siginfo_t to fill; the child stays a zombie (WNOWAIT).
    let waited =
        unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
    assert_eq!(waited, 0);
    let status = fs::read(format!("/proc/{pid}/status")).unwrap();
    assert!(status.starts_with(b"Name:\tab\xffcd\n"), "{status:?}");
    let alive = is_alive(pid);
    // SAFETY: reaps the child.
    unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    assert!(!alive);
}

fn meta(comm: &str, from_exec: bool) -> ProcessMeta {
    let mut bytes = [0u8; COMM_LEN];
    bytes[..comm.len()].copy_from_slice(comm.as_bytes());
    ProcessMeta {
        comm: bytes,
        exit_ns: 0,
        from_exec: from_exec as u32,
        forked_from: 0,
    }
}

fn executable(tgid: u32, meta: Option<&ProcessMeta>) -> String {
    identify(tgid, meta).executable
}

#[test]
fn comm_stops_at_nul() {
    assert_eq!(comm_str(&meta("nginx", true).comm), "nginx");
    assert_eq!(comm_str(&[b'a'; COMM_LEN]), "a".repeat(COMM_LEN));
}

#[test]
fn exec_name_wins_over_procfs() {
    // The test process itself is alive, so procfs has a different comm for it.
    let me = std::process::id();
    assert_eq!(executable(me, Some(&meta("worker", true))), "worker");
}

#[test]
fn running_process_is_named_from_procfs() {
    let me = std::process::id();
    let procfs_comm = read_comm(me).unwrap();
    let identity = identify(me, Some(&meta("some-thread", false)));
    // The test binary's name is longer than a comm: the full name comes from its exe.
    let exe = std::env::current_exe().unwrap();
    assert_eq!(
        identity.executable,
        exe.file_name().unwrap().to_str().unwrap()
    );
    assert!(identity.executable.starts_with(&procfs_comm));
    assert_eq!(identity.service.name, identity.executable);
}

#[test]
fn dead_process_keeps_the_kernel_name() {
    // pid_max is below 2^22 on Linux, so this pid cannot exist.
    let gone = u32::MAX - 1;
    assert_eq!(
        executable(gone, Some(&meta("short-lived", false))),
        "short-lived"
    );
    assert_eq!(executable(gone, None), "unknown");
}

#[test]
fn kernel_threads_are_named_by_kind() {
    assert_eq!(kernel_thread_kind("kworker/u8:0-events_unbound"), "kworker");
    assert_eq!(kernel_thread_kind("ksoftirqd/1"), "ksoftirqd");
    assert_eq!(kernel_thread_kind("rcu_preempt"), "rcu_preempt");
    assert_eq!(kernel_thread_kind("/"), "unknown");
    // kthreadd (pid 2) is a kernel thread on every Linux system.
    let kthreadd = identify(2, None);
    assert_eq!(kthreadd.service.name, KERNEL_SERVICE);
    assert_eq!(kthreadd.executable, "kthreadd");
}

/// A server's child that took up a connection and exited before the agent looked is the
/// server's service (here the test process stands for the server), not what its own record
/// alone says. Before, it was `python3` (the inherited comm) or `unknown`.
#[test]
fn a_forked_child_gone_before_it_was_read_is_named_after_its_server() {
    let identifier = Identifier::new(Path::new("/nonexistent/pods"), MemoryReads::Bounded);
    let server = std::process::id();
    let gone = u32::MAX - 1;
    let child = ProcessMeta {
        forked_from: server,
        ..meta("python3", false)
    };
    let named = identifier.identify(gone, Some(&child));
    assert_eq!(named, identifier.identify(server, None));
    assert_ne!(named.executable, "python3");
    // After an exec, the child runs a program of its own.
    let execd = ProcessMeta {
        forked_from: server,
        ..meta("worker", true)
    };
    assert_eq!(identifier.identify(gone, Some(&execd)).executable, "worker");
    // A server gone as well: the child's own record.
    let orphan = ProcessMeta {
        forked_from: gone,
        ..meta("python3", false)
    };
    assert_eq!(
        identifier.identify(gone, Some(&orphan)).executable,
        "python3"
    );
}
