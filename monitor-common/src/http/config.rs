//! What the agent tells the programs at start-up, and the verdicts it gives on listeners.

use super::*;

/// What the agent tells the HTTP programs, written once before they are attached. (A map
/// rather than globals: arrays in globals are constant-folded by the compiler unless every
/// read is volatile, and one look-up here is as cheap.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Upper bounds of the duration buckets, ascending, in nanoseconds.
    pub duration_bounds_ns: [u64; MAX_DURATION_BOUNDS],
    pub duration_bound_count: u32,
    /// Distinct routes per process before routes collapse to `/<first segment>/{*}`.
    pub route_budget: u32,
    /// The agent's own process: never measured.
    pub agent_tgid: u32,
    /// 1 with `--http-ports`: only connections accepted on listeners the agent allowed.
    pub port_filter: u32,
    /// Distinct server addresses per client process before `__overflow__`.
    pub host_budget: u32,
    /// Tests only: `test_fault::*` bits.
    pub test_faults: u32,
    /// A response with no write for this long, on a connection left open, is finished.
    pub idle_timeout_ns: u64,
    /// Random, per agent start: the seed of every `fingerprint::*`.
    pub fingerprint_seed: u64,
    /// Executables (`comm`, NUL-padded) whose connections are never tracked.
    pub excluded_comms: [[u8; 16]; MAX_EXCLUDED_COMMS],
}

pub const MAX_EXCLUDED_COMMS: usize = 8;

/// Faults the tests make the programs act out (`HttpConfig::test_faults`).
pub mod test_fault {
    /// No histogram can be allocated: every request is carried to the agent
    /// (`ObservationEvent`).
    pub const NO_HISTOGRAM: u32 = 1;
}

/// Verdicts on listening sockets in `LISTENERS` (with `--http-ports`).
pub mod listener {
    pub const UNCHECKED: u8 = 0;
    pub const ALLOWED: u8 = 1;
    pub const DENIED: u8 = 2;
}
