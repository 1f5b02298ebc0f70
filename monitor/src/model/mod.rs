//! What the agent knows, independent of where it came from and how it is exported.

pub mod http;
pub mod processes;
pub mod routes;
pub mod timing;

use std::{collections::HashMap, hash::Hash, time::Instant};

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
