//! Helpers shared by Keel's whole-system tests and benchmarks.

pub mod client;
pub mod keeld;
pub mod raw_frontend;
