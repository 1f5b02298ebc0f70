//! Harness for the integration tests: start the real agent (root), run workloads, scrape,
//! and poll with a bound instead of sleeping.

pub mod agent;
pub mod bpf;
pub mod capabilities;
pub mod churn;
pub mod guest;
pub mod http;
pub mod https;
pub mod metrics;
pub mod poll;
pub mod servers;
pub mod workload;

pub use agent::MonitorAgent;
pub use metrics::Scrape;
pub use poll::poll_until;
