//! Test support: an in-memory block device that can crash, tear and fail writes.
//! Public so whole-system tests and benchmarks can use it too.

mod faulty;
mod rng;

pub use faulty::{CrashMode, FaultyDevice};
pub use rng::SplitMix;
