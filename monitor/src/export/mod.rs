//! Prometheus exposition: metric families built from the model, and the HTTP server.

pub mod families;
pub mod http;
pub mod metrics;
pub mod server;
