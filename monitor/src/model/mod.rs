//! What the agent knows, independent of where it came from and how it is exported.

pub mod http;
pub mod processes;
pub mod routes;
pub mod timing;

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
    time::Instant,
};

/// Keeps the `keep` entries of `map` (at least one, at most all) with the latest `time`, and
/// those that tie with the last of them: the bound of a cache that expires by age, for when
/// age alone does not keep it small.
pub fn keep_latest<K: Eq + Hash, V>(
    map: &mut HashMap<K, V>,
    keep: usize,
    time: impl Fn(&V) -> Instant,
) {
    let mut times: Vec<Instant> = map.values().map(&time).collect();
    times.sort_unstable();
    let cut = times[times.len() - keep];
    map.retain(|_, value| time(value) >= cut);
}

/// Drops the least recently `updated` entries of `map` beyond `max`, calling `dropped` with
/// each, as if their grace period had ended early: what they counted was exported, unless
/// services come and go faster than scrapes see them (the caller counts the series dropped).
/// Entries updated at `now`, by this refresh, stay even beyond `max`: they belong to
/// processes the kernel still reports, and one dropped would be made again at the next
/// refresh, from zero, each refresh a counter reset. Their number is bounded by the kernel's
/// maps; it is the series of processes gone, which nothing else bounds, that go.
pub fn evict_least_recent<K: Ord, V>(
    map: &mut BTreeMap<K, V>,
    max: usize,
    now: Instant,
    updated: impl Fn(&V) -> Instant,
    mut dropped: impl FnMut(&K),
) {
    if map.len() <= max {
        return;
    }
    let mut stale: Vec<Instant> = map.values().map(&updated).filter(|&t| t < now).collect();
    let excess = (map.len() - max).min(stale.len());
    if excess == 0 {
        return;
    }
    // Linear, not a sort: under churn this runs at every refresh.
    let cut = *stale.select_nth_unstable(excess - 1).1;
    // The series of one refresh share its instant: of those at the cut, only enough go to
    // reach `max`.
    let mut at_cut = excess - stale.iter().filter(|&&t| t < cut).count();
    map.retain(|key, value| {
        let time = updated(value);
        let drop = time < cut || (time == cut && at_cut > 0);
        if drop {
            if time == cut {
                at_cut -= 1;
            }
            dropped(key);
        }
        !drop
    });
}
