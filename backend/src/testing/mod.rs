//! Test support, compiled only for Keel's own tests (`cfg(test)`) and for crates that enable the
//! `testing` feature (the whole-system tests): not part of the library's API.

mod faulty;
mod promtool;
mod rng;

pub use faulty::{CrashMode, FaultyDevice, FaultyStats};
pub use promtool::promtool_check;
pub use rng::SplitMix;

#[cfg(test)]
mod tests;
