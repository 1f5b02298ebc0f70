//! HTTP/1.x: the map ABI of the HTTP programs, and the byte-level logic both sides share
//! (method recognition, status lines, route templating), so that the kernel and the agent
//! agree by construction and the logic is unit-tested on the host.

mod config;
mod connection;
mod counters;
mod events;
mod histograms;
mod not_request;
mod route;
mod start_line;

pub use config::*;
pub use connection::*;
pub use counters::*;
pub use events::*;
pub use histograms::*;
pub use not_request::*;
pub use route::*;
pub use start_line::*;

const _: () = assert!(core::mem::size_of::<SegmentShape>() == 24);
const _: () = assert!(core::mem::size_of::<NotRequestScanner>() == 8);
const _: () = assert!(core::mem::size_of::<RouteTemplater>() == 56);
const _: () = assert!(core::mem::size_of::<HttpEvent>() == 16 + MAX_PATH_LEN);
const _: () = assert!(core::mem::size_of::<DurationKey>() == 16);
const _: () = assert!(core::mem::size_of::<DurationHistogram>() == 8 * (MAX_DURATION_BOUNDS + 2));
const _: () = assert!(core::mem::size_of::<Connection>() == 56 + 56 + 40 + 24);
const _: () = assert!(core::mem::size_of::<ProcessRoute>() == 16);
const _: () = assert!(core::mem::size_of::<ClientErrorKey>() == 16);
const _: () = assert!(
    core::mem::size_of::<HttpConfig>() == 8 * MAX_DURATION_BOUNDS + 40 + 16 * MAX_EXCLUDED_COMMS
);
const _: () = assert!(CAPTURE_LEN.is_power_of_two() && MAX_DURATION_BOUNDS.is_power_of_two());

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), made of integers, without padding (asserted above).
    unsafe impl aya::Pod for super::HttpEvent {}
    unsafe impl aya::Pod for super::DurationKey {}
    unsafe impl aya::Pod for super::DurationHistogram {}
    unsafe impl aya::Pod for super::Connection {}
    unsafe impl aya::Pod for super::ProcessRoute {}
    unsafe impl aya::Pod for super::FileTableOffsets {}
    unsafe impl aya::Pod for super::HttpConfig {}
    unsafe impl aya::Pod for super::ClientErrorKey {}
}

#[cfg(test)]
mod tests;
