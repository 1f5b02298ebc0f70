//! A figure of a variant against no agent's in the same round: the pairing of the rounds and
//! the median, lowest and highest ratio.

use crate::bench::{
    agent::Variant,
    stats::{median, ratio},
};

use super::goals::Verdict;

/// A figure of a variant relative to no agent in the same round: the median over the rounds
/// and the lowest and highest round.
#[derive(Clone, Copy, Debug)]
pub struct Paired {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Paired {
    fn of(ratios: Vec<f64>) -> Self {
        let finite: Vec<f64> = ratios.into_iter().filter(|r| r.is_finite()).collect();
        Self {
            median: median(finite.clone()),
            min: finite.iter().copied().fold(f64::NAN, f64::min),
            max: finite.iter().copied().fold(f64::NAN, f64::max),
        }
    }

    /// Met when every round is at least `goal`, missed when none is.
    pub(super) fn at_least(&self, goal: f64) -> Verdict {
        if self.min >= goal {
            Verdict::Met
        } else if self.max < goal {
            Verdict::Missed
        } else {
            Verdict::Inconclusive
        }
    }
}

/// `figure` of `variant` over no agent's, round by round.
pub(super) fn paired<R>(
    rounds: &[R],
    variant: Variant,
    round_of: impl Fn(&R) -> (usize, Variant),
    figure: impl Fn(&R) -> f64,
) -> Paired {
    let of = |wanted: Variant, round: usize| {
        rounds
            .iter()
            .find(|r| round_of(r) == (round, wanted))
            .map(&figure)
    };
    let count = rounds.iter().map(|r| round_of(r).0 + 1).max().unwrap_or(0);
    Paired::of(
        (0..count)
            .filter_map(|round| Some(ratio(of(variant, round)?, of(Variant::NoAgent, round)?)))
            .collect(),
    )
}
