#![no_std]
// Exists so that `monitor` can name this crate as a build-dependency (cache invalidation).
