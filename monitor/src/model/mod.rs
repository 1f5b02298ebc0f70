//! What the agent knows, independent of where it came from and how it is exported.

pub mod http;
pub mod processes;
pub mod routes;
pub mod timing;
