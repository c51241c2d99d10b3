//! Helpers shared by Keel's whole-system tests and benchmarks.
