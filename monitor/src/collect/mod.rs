//! Reads what the kernel programs wrote (maps) and what procfs says about processes.

pub mod process;
pub mod sched;
