//! The agent's own timings as a histogram: how long reading the kernel maps into the model
//! takes (`monitor_refresh_duration_seconds`), so its cost is visible where it runs.

use std::time::Duration;

/// Upper bounds, in seconds, of the refresh-duration buckets: 50 µs (a few processes) to 1 s
/// (a map of tens of thousands of entries on a loaded host).
pub const REFRESH_BOUNDS: [f64; 13] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Clone, Debug, PartialEq)]
pub struct Timings {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one counts everything above the last bound.
    counts: Vec<u64>,
    sum_seconds: f64,
}

impl Timings {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum_seconds: 0.0,
        }
    }

    pub fn observe(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = self.bounds.partition_point(|&bound| bound < seconds);
        self.counts[bucket] += 1;
        self.sum_seconds += seconds;
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Counts of the buckets with an upper bound, in order.
    pub fn counts(&self) -> &[u64] {
        &self.counts[..self.bounds.len()]
    }

    pub fn above_last(&self) -> u64 {
        self.counts[self.bounds.len()]
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_bucket_of_their_upper_bound() {
        let mut timings = Timings::new(&[0.001, 0.01]);
        timings.observe(Duration::from_micros(1000));
        timings.observe(Duration::from_micros(1001));
        timings.observe(Duration::from_millis(50));
        assert_eq!(timings.counts(), &[1, 1]);
        assert_eq!(timings.above_last(), 1);
        assert!((timings.sum_seconds() - 0.052001).abs() < 1e-9);
    }

    #[test]
    fn refresh_bounds_ascend() {
        assert!(REFRESH_BOUNDS.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
