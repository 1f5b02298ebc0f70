//! A program the kernel refused, told in one line. aya's load error carries the verifier's
//! whole log, hundreds of lines for a large program, which buried the start-up log on older
//! kernels; the reason is the log's last line that is not a statistic. The whole log goes to
//! debug level (`--log-level debug`), for a bug report.

use aya::programs::ProgramError;

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
                verifier_reason(&log)
            ));
            // What follows is the same error's source again.
            break;
        }
        parts.push(cause.to_string());
    }
    parts.join(": ")
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
