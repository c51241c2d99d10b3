//! Keel's fuzz harnesses. Each module turns arbitrary bytes into one hostile scenario and runs it
//! against the real code; the targets in `fuzz_targets/` are thin wrappers, and `tests/replay.rs`
//! replays the committed corpus and every past crash on stable Rust.

pub mod bytes;
pub mod chain;
pub mod container;
pub mod frontend;
pub mod guest;
pub mod nbd;
pub mod seeds;
