//! The goals a recording variant meets or misses, and their verdicts.

use crate::bench::agent::Variant;

use super::{
    accuracy::AccuracyRound,
    summary::Summary,
    text::{drops_text, percent, range},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// The rounds fall on both sides of the goal: this run cannot tell.
    Inconclusive,
}

impl Verdict {
    fn of(met: bool) -> Self {
        if met { Verdict::Met } else { Verdict::Missed }
    }

    pub(super) fn key(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

pub struct Goal {
    pub name: &'static str,
    pub target: &'static str,
    pub measured: String,
    pub verdict: Verdict,
    /// By how much it is missed, when it is.
    pub miss: String,
}

impl Summary {
    pub(super) fn goals(&self, variant: Variant) -> Vec<Goal> {
        let v = variant.index();
        let kept = self.throughput_ratio[v];
        let capacity = self.capacity_ratio[v];
        let floor = self.throughput_ratio[Variant::EmptyPrograms.index()];
        let (loss, floor_loss) = (1.0 - kept.median, 1.0 - floor.median);
        let bpf = self.bpf_ns_per_request[v];
        let cpu = self.cpu_ms_per_1k_saturation[v].max(self.cpu_ms_per_1k_fixed[v]);
        let rss = self.peak_rss_mib[v];
        let losses = &self.losses[v];
        let lost: i64 = losses.not_recorded.iter().map(|n| n.abs()).sum();
        let rounds: Vec<&AccuracyRound> = self
            .accuracy
            .iter()
            .filter(|r| r.variant == variant)
            .collect();
        let unequal = rounds.iter().filter(|r| !r.equal()).count();
        // The floor's loss is only a yardstick when every round lost something.
        let floor_measurable = floor.max < 1.0;
        vec![
            Goal {
                name: "throughput with the agent, of no agent's in the same round",
                target: ">= 97 %",
                measured: format!("{} (rounds {})", percent(kept.median), range(&kept)),
                verdict: kept.at_least(0.97),
                miss: format!("{:.1} points short", (0.97 - kept.median) * 100.0),
            },
            Goal {
                name: "nginx's requests per CPU second at saturation (the capacity the agent \
                       leaves it), of no agent's in the same round",
                target: ">= 97 %",
                measured: format!("{} (rounds {})", percent(capacity.median), range(&capacity)),
                verdict: capacity.at_least(0.97),
                miss: format!("{:.1} points short", (0.97 - capacity.median) * 100.0),
            },
            Goal {
                name: "throughput lost, against the empty programs' loss",
                target: "<= 1.5x",
                measured: format!(
                    "{} against {} (empty programs' rounds {})",
                    percent(loss),
                    percent(floor_loss),
                    range(&floor)
                ),
                verdict: if floor_measurable {
                    Verdict::of(loss <= 1.5 * floor_loss)
                } else {
                    Verdict::Inconclusive
                },
                miss: format!("{:.1}x the floor's loss", loss / floor_loss),
            },
            Goal {
                name: "BPF time per request, all programs",
                target: "<= 200 ns",
                measured: format!("{bpf:.0} ns"),
                verdict: Verdict::of(bpf <= 200.0),
                miss: format!("{:.1}x the goal", bpf / 200.0),
            },
            Goal {
                name: "agent CPU per 1,000 requests (the higher of saturation and fixed rate)",
                target: "<= 5 ms",
                measured: format!("{cpu:.3} ms"),
                verdict: Verdict::of(cpu <= 5.0),
                miss: format!("{:.3} ms over", cpu - 5.0),
            },
            Goal {
                name: "agent peak RSS",
                target: "<= 40 MiB",
                measured: format!("{rss:.1} MiB"),
                verdict: Verdict::of(rss <= 40.0),
                miss: format!("{:.1} MiB over", rss - 40.0),
            },
            Goal {
                name: "requests not recorded at saturation, and kernel drops",
                target: "0",
                measured: format!("{lost} not recorded, {}", drops_text(&losses.drops)),
                verdict: Verdict::of(lost == 0 && losses.drops.is_empty()),
                miss: format!("{lost} requests, {}", drops_text(&losses.drops)),
            },
            Goal {
                name: "agent's counts equal to the load generator's",
                target: "every round",
                measured: format!(
                    "{} of {} rounds equal",
                    rounds.len() - unequal,
                    rounds.len()
                ),
                verdict: Verdict::of(unequal == 0 && !rounds.is_empty()),
                miss: format!("{unequal} rounds differ"),
            },
        ]
    }
}
