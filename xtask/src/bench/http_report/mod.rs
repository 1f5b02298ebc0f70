//! The HTTP figures: medians over the rounds, the goals they meet or miss, the accuracy of
//! the agent's counts and percentiles, as Markdown for BENCHMARKS.md and as JSON.
//!
//! The summary of the rounds is built in `summary`, each variant against no agent in the same
//! round in `paired`; `goals` judges it, `accuracy` and `perf` hold those sections, `json` and
//! `markdown` write it out, with the number formats of `text`.

mod accuracy;
mod goals;
mod json;
mod markdown;
mod paired;
mod perf;
mod summary;
mod text;

pub use markdown::markdown;
pub use summary::Summary;

use super::agent::Variant;

/// The variants that record HTTP, for which goals and accuracy are reported.
const RECORDING: [Variant; 2] = [Variant::Monitor, Variant::ServerOnly];

/// One figure per variant, indexed by `Variant::index` (NaN where it does not apply).
type PerVariant = [f64; 4];

fn per_variant(f: impl Fn(Variant) -> f64) -> PerVariant {
    Variant::ALL.map(f)
}

#[cfg(test)]
mod tests {
    use super::{Variant, goals::Verdict, paired::paired, summary::hook_of};

    #[test]
    fn ratios_pair_each_round_with_no_agent_in_the_same_round() {
        // (round, variant, figure)
        let rounds = [
            (0, Variant::NoAgent, 100.0),
            (0, Variant::Monitor, 90.0),
            (1, Variant::Monitor, 50.0),
            (1, Variant::NoAgent, 50.0),
            (2, Variant::NoAgent, 200.0),
            (2, Variant::Monitor, 196.0),
        ];
        let p = paired(&rounds, Variant::Monitor, |r| (r.0, r.1), |r| r.2);
        assert_eq!((p.median, p.min, p.max), (0.98, 0.9, 1.0));
        assert_eq!(p.at_least(0.97), Verdict::Inconclusive);
        assert_eq!(p.at_least(0.85), Verdict::Met);
        assert_eq!(p.at_least(1.01), Verdict::Missed);
    }

    #[test]
    fn real_and_empty_programs_share_their_hook() {
        assert_eq!(hook_of("sys_exit_btf"), "sys_exit");
        assert_eq!(hook_of("sched_switch_empty"), "sched_switch");
        assert_eq!(hook_of("cpu_clock_tick"), "cpu_clock_tick");
        assert_eq!(hook_of("cpu_clock_tick_empty"), "cpu_clock_tick");
    }
}
