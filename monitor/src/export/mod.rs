//! Prometheus exposition: metric families built from the model, and the HTTP server (with the
//! TLS and Basic authentication of `--web-config-file`).

pub mod basic_auth;
pub mod connection_limit;
pub mod families;
pub mod http;
pub mod metrics;
pub mod reload;
pub mod server;
pub mod tls;
pub mod web_config;
