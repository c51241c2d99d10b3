//! Test support, compiled only for Keel's own tests (`cfg(test)`) and for crates that enable the
//! `testing` feature (the whole-system tests): not part of the library's API.

mod faulty;
mod rng;

pub use faulty::{CrashMode, FaultyDevice, FaultyStats};
pub use rng::SplitMix;

#[cfg(test)]
mod tests;
