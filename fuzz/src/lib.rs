//! What the fuzz targets share: reads cut out of an input, the kernel's handling of a request
//! line modelled on the host, plain references for the byte-at-a-time scanners, and the
//! invariants every route template keeps.

pub mod reads;
pub mod reference;
pub mod route;
pub mod server;
