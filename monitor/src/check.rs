//! `--check`: what a run on this host would attach and what it would miss, for install
//! scripts and init containers. The agent starts as for a run (same options, same fallbacks),
//! is reported on, and stops without serving.

use std::fmt::Write as _;

use crate::probes::{AttachedProgram, CLOCK_TICK_HOOK, http::IDLE_SWEEP_HOOK};

/// Every hook attached.
pub const COMPLETE: u8 = 0;
/// The agent runs here, without the hooks the report lists.
pub const DEGRADED: u8 = 3;

/// What a run loses without `hook` (`monitor_hook_unavailable` names the same hooks).
pub fn loss(hook: &str) -> &'static str {
    match hook {
        "sys_exit" => "no HTTP metrics (CPU time and run-queue waits are still measured)",
        "sys_enter_close" => {
            "close(2) seen at its exit only: a connection another thread reuses at once may be \
             taken for the old one"
        }
        "sys_enter_sendmsg" => {
            "connections passed to another process (Node's cluster module, pm2) noted at \
             sendmsg's exit only, where the receiver may have taken them first"
        }
        "sched_process_fork" => "connections a forking server's children serve are not followed",
        CLOCK_TICK_HOOK => {
            "no per-CPU clock tick: a busy process's CPU time moves only when it is switched out"
        }
        crate::probes::tls::TLS_HOOK => {
            "HTTPS through OpenSSL's libssl is not measured (its uprobes were refused: the \
             agent's log says why, often a missing CAP_SYS_ADMIN where they are perf events, \
             before Linux 6.6)"
        }
        IDLE_SWEEP_HOOK => {
            "no HTTP idle sweep: a keep-alive connection's last response is recorded only at \
             its close"
        }
        _ => "not measured as usual (the agent's log says why)",
    }
}

/// The host as a run would find it.
pub struct Findings<'a> {
    pub kernel: &'a str,
    pub btf: bool,
    pub attached: &'a [AttachedProgram],
    pub unavailable: &'a [&'static str],
    /// Where CPU time and waits come from, as the start-up summary says it.
    pub sched_accounting: &'a str,
    pub capabilities_kept: &'a str,
    pub http: bool,
}

/// The report printed on standard output, and the exit status (`COMPLETE` or `DEGRADED`).
pub fn report(findings: &Findings) -> (String, u8) {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "monitor {} check: kernel {}, BTF {}",
        env!("CARGO_PKG_VERSION"),
        findings.kernel,
        if findings.btf { "yes" } else { "no" }
    );
    let _ = writeln!(text, "attached:");
    for program in findings.attached {
        let _ = writeln!(text, "  {} ({})", program.hook, program.kind);
    }
    if !findings.http {
        let _ = writeln!(text, "HTTP: off (--no-http)");
    }
    let _ = writeln!(
        text,
        "CPU time and waits: from the {}",
        findings.sched_accounting
    );
    let _ = writeln!(
        text,
        "capabilities kept after start-up: {}",
        findings.capabilities_kept
    );
    if findings.unavailable.is_empty() {
        let _ = writeln!(text, "result: ok, every hook attached");
        return (text, COMPLETE);
    }
    let _ = writeln!(text, "unavailable:");
    for hook in findings.unavailable {
        let _ = writeln!(text, "  {hook}: {}", loss(hook));
    }
    let _ = writeln!(
        text,
        "result: degraded, {} hook(s) unavailable; the agent runs without them",
        findings.unavailable.len()
    );
    (text, DEGRADED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::HookKind;

    fn findings<'a>(
        attached: &'a [AttachedProgram],
        unavailable: &'a [&'static str],
    ) -> Findings<'a> {
        Findings {
            kernel: "6.18.0",
            btf: true,
            attached,
            unavailable,
            sched_accounting: "kernel's per-task accounting",
            capabilities_kept: "cap_sys_ptrace",
            http: true,
        }
    }

    const SWITCH: AttachedProgram = AttachedProgram {
        hook: "sched_switch",
        kind: HookKind::TpBtf,
        program: "sched_switch_btf",
    };

    #[test]
    fn every_hook_attached_is_complete() {
        let (text, status) = report(&findings(&[SWITCH], &[]));
        assert_eq!(status, COMPLETE);
        assert!(text.contains("  sched_switch (tp_btf)\n"), "{text}");
        assert!(
            text.ends_with("result: ok, every hook attached\n"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_hook_is_degraded_and_says_what_is_lost() {
        let (text, status) = report(&findings(&[SWITCH], &["sched_process_fork"]));
        assert_eq!(status, DEGRADED);
        assert!(
            text.contains("  sched_process_fork: connections a forking server's children"),
            "{text}"
        );
        assert!(
            text.contains("result: degraded, 1 hook(s) unavailable"),
            "{text}"
        );
    }
}
