//! What a read of the HTTP maps returns: histograms and counters summed over CPUs, and the
//! announcements drained since the last read.

use monitor_common::http::{
    ClientErrorKey, DurationHistogram, DurationKey, MAX_DURATION_BOUNDS, counter,
};

use super::RouteAnnouncement;

/// A histogram of one key summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationCounts {
    pub buckets: [u64; MAX_DURATION_BOUNDS + 1],
    pub sum_ns: u64,
}

impl Default for DurationCounts {
    fn default() -> Self {
        Self {
            buckets: [0; MAX_DURATION_BOUNDS + 1],
            sum_ns: 0,
        }
    }
}

impl DurationCounts {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub(super) fn add_histogram(&mut self, histogram: &DurationHistogram) {
        for (total, count) in self.buckets.iter_mut().zip(histogram.buckets) {
            *total += count;
        }
        self.sum_ns += histogram.sum_ns;
    }

    pub fn add(&mut self, other: &DurationCounts) {
        for (total, count) in self.buckets.iter_mut().zip(other.buckets) {
            *total += count;
        }
        self.sum_ns += other.sum_ns;
    }
}

#[derive(Clone, Debug)]
pub struct HttpSnapshot {
    pub durations: Vec<(DurationKey, DurationCounts)>,
    /// `monitor_common::http::counter`, summed over CPUs.
    pub counters: [u64; counter::COUNT as usize],
    pub announcements: Vec<RouteAnnouncement>,
    /// Listening sockets (tgid, fd) whose port the kernel asks the agent to check.
    pub unchecked_listeners: Vec<(u32, u32)>,
    /// Client requests without a complete response, summed over CPUs.
    pub client_errors: Vec<(ClientErrorKey, u64)>,
    /// Failed connects per process, summed over CPUs.
    pub connect_errors: Vec<(u32, u64)>,
}

// By hand: arrays derive `Default` only up to 32 elements.
impl Default for HttpSnapshot {
    fn default() -> Self {
        Self {
            durations: Vec::new(),
            counters: [0; counter::COUNT as usize],
            announcements: Vec::new(),
            unchecked_listeners: Vec::new(),
            client_errors: Vec::new(),
            connect_errors: Vec::new(),
        }
    }
}
