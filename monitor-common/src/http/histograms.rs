//! Duration histograms and client error counts: their keys, buckets and bucket search.

use super::*;

/// Key of the duration histograms: one per process, role, method, status and target (the
/// route of a server request, the server address of a client request).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DurationKey {
    pub tgid: u32,
    pub status: u16,
    pub method: u8,
    /// `role::SERVER` or `role::CLIENT`.
    pub role: u8,
    /// A route hash (server) or a server-address hash (client).
    pub route: u64,
}

/// Key of `CLIENT_ERRORS`: client requests that got no complete response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientErrorKey {
    /// Server-address hash.
    pub host: u64,
    pub tgid: u32,
    /// `client_error::*`.
    pub kind: u8,
    pub method: u8,
    pub _reserved: u16,
}

/// Why a client request has no duration.
pub mod client_error {
    /// The connection closed (or was reset) before any response.
    pub const NO_RESPONSE: u8 = 1;
    /// The response stopped before its declared length or final chunk.
    pub const CUT_OFF: u8 = 2;
    pub const NAMES: [&str; 3] = ["", "no_response", "response_cut_off"];
}

/// Bucket counts of one key on one CPU; bucket `i` counts durations `<= bounds[i]` (and above
/// `bounds[i-1]`), the bucket after the last bound everything above.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationHistogram {
    pub buckets: [u64; MAX_DURATION_BOUNDS + 1],
    pub sum_ns: u64,
}

impl DurationHistogram {
    pub const ZERO: Self = Self {
        buckets: [0; MAX_DURATION_BOUNDS + 1],
        sum_ns: 0,
    };
}

/// Bucket index of `ns` among the first `count` of `bounds` (ascending): a binary search, so
/// the kernel spends five comparisons whatever the number of buckets.
#[inline(always)]
pub fn duration_bucket(bounds: &[u64; MAX_DURATION_BOUNDS], count: usize, ns: u64) -> usize {
    let count = if count > MAX_DURATION_BOUNDS {
        MAX_DURATION_BOUNDS
    } else {
        count
    };
    // Smallest i with ns <= bounds[i]; `count` when above them all.
    let (mut low, mut high) = (0usize, count);
    let mut step = 0;
    while step < 6 && low < high {
        let mid = (low + high) / 2;
        if ns <= bounds[mid & (MAX_DURATION_BOUNDS - 1)] {
            high = mid;
        } else {
            low = mid + 1;
        }
        step += 1;
    }
    low
}
