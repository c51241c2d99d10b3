//! Helpers shared by Keel's whole-system tests and benchmarks.

pub mod bench;
pub mod client;
pub mod keeld;
pub mod raw_frontend;
