//! The agent as a library: the binary (`main.rs`) parses the command line and calls [`run::run`];
//! benchmarks and fuzz targets reach the parsers and the model through here.

pub mod agent;
pub mod check;
pub mod cli;
pub mod collect;
pub mod export;
pub mod model;
pub mod open_files;
pub mod preflight;
pub mod privileges;
pub mod probes;
pub mod run;
#[cfg(test)]
mod test_support;
