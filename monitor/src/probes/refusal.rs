//! A program the kernel refused, told in one line. aya's load error carries the verifier's
//! log, which buried the start-up log on older kernels; the reason is the log's last line that
//! is not a statistic. The log goes to debug level (`--log-level debug`), for a bug report;
//! the walk of every instruction in it only at trace level (`verifier_log_level`).

use aya::{VerifierLogLevel, programs::ProgramError};

/// What the verifier writes in its log when it refuses a program. aya loads a program without
/// a log first, and only when the kernel refuses it loads it again with one, ten times larger
/// each time the log did not fit. At aya's default level the kernel prints every instruction
/// and state it walked: megabytes for the HTTP programs, so up to five more full passes, each
/// slowed by the printing (7.5 minutes on 5.15 under emulation for a build it refused). At
/// the statistics level it prints its reason and statistics only: one more pass, and the
/// reason is the same line. The walk is for a developer: `--log-level trace`.
pub fn verifier_log_level() -> VerifierLogLevel {
    if log::log_enabled!(log::Level::Trace) {
        VerifierLogLevel::DEBUG | VerifierLogLevel::STATS
    } else {
        VerifierLogLevel::STATS
    }
}

/// `error` and its causes, as `{error:#}` prints them, with a verifier log cut to its reason.
pub fn brief(error: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in error.chain() {
        if let Some(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) = cause.downcast_ref::<ProgramError>()
        {
            let log = verifier_log.to_string();
            log::debug!("the verifier's log ({}):\n{log}", parts.join(": "));
            parts.push(format!(
                "the kernel refused it ({io_error}): {}",
                refusal_reason(io_error, &log)
            ));
            // What follows is the same error's source again.
            break;
        }
        parts.push(cause.to_string());
    }
    parts.join(": ")
}

/// Why the kernel refused a program, from the load's error and the verifier's log. When the
/// log outgrew aya's largest buffer (ENOSPC) it was cut off before its reason, and its last
/// line is the middle of a state dump: that is said instead.
pub fn refusal_reason<'a>(error: &std::io::Error, log: &'a str) -> &'a str {
    const ENOSPC: i32 = 28;
    if error.raw_os_error() == Some(ENOSPC) {
        return "the verifier's log outgrew its buffer and lost the reason (the program is \
                probably too complex for this kernel's verifier; `--log-level debug` shows \
                what there is)";
    }
    verifier_reason(log)
}

/// The verifier's reason for refusing a program: the last line of its log that is not one
/// of the statistics it ends with.
pub fn verifier_reason(log: &str) -> &str {
    log.lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty() && !is_statistic(line))
        .unwrap_or("the verifier gave no reason")
}

fn is_statistic(line: &str) -> bool {
    ["verification time", "stack depth", "processed "]
        .iter()
        .any(|prefix| line.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 11's 5.10 on a `sys_exit` program with `bpf_loop` callbacks, which it predates.
    const LOG_5_10: &str = "number of funcs in func_info doesn't match number of subprogs
verification time 1039 usec
stack depth 0+0+0+0+0
processed 0 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
";

    /// The same kernel on a BTF switch program, whose log walks instructions first.
    const LOG_WALK: &str = "func 'sched_switch' arg1 has btf_id 132 type STRUCT 'task_struct'
; T::from_register(unsafe { *ptr as u64 })
28: (79) r8 = *(u64 *)(r6 +24)
func 'sched_switch' doesn't have 4-th argument
invalid bpf_context access off=24 size=8
verification time 1079 usec
stack depth 0+0
processed 12 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
";

    #[test]
    fn the_reason_is_the_last_line_before_the_statistics() {
        assert_eq!(
            verifier_reason(LOG_5_10),
            "number of funcs in func_info doesn't match number of subprogs"
        );
        assert_eq!(
            verifier_reason(LOG_WALK),
            "invalid bpf_context access off=24 size=8"
        );
    }

    /// 5.15 on a program its verifier could not finish, as aya's retries left it: the log
    /// cut off in a state dump, and ENOSPC.
    #[test]
    fn a_log_cut_off_is_not_taken_for_the_reason() {
        let cut = "frame1: R0=map_value(id=0,off=0,ks=4,vs=528,imm=0) R1_w=inv1 R2=map_value(id";
        let enospc = std::io::Error::from_raw_os_error(28);
        let reason = refusal_reason(&enospc, cut);
        assert!(reason.contains("outgrew its buffer"), "{reason}");
        let einval = std::io::Error::from_raw_os_error(22);
        assert_eq!(
            refusal_reason(&einval, LOG_5_10),
            "number of funcs in func_info doesn't match number of subprogs"
        );
    }

    #[test]
    fn an_empty_log_says_so() {
        assert_eq!(verifier_reason("\n"), "the verifier gave no reason");
    }

    #[test]
    fn errors_other_than_a_refusal_read_as_they_did() {
        let error = anyhow::anyhow!("no such tracepoint").context("attaching sys_exit");
        assert_eq!(brief(&error), format!("{error:#}"));
    }
}
