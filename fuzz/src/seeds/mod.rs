//! Seed inputs for each target, written to `corpus/<target>/` by `cargo run --example seeds`.
//! Seeds start the fuzzer at well-formed and classic hostile inputs instead of at empty bytes.

pub mod chain;
pub mod frontend;

use std::fs;
use std::io;
use std::path::Path;

/// Every target's seeds: (target, file name, bytes).
pub fn all() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, s) in chain::seeds() {
        out.push(("desc_chain", name, s.encode()));
    }
    for (name, msgs) in frontend::seeds() {
        out.push(("vhost_frontend", name, keel_tests::raw_frontend::encode(&msgs)));
    }
    out
}

/// Writes every seed under `corpus_dir/<target>/<name>`.
pub fn write_all(corpus_dir: &Path) -> io::Result<usize> {
    let seeds = all();
    for (target, name, bytes) in &seeds {
        let dir = corpus_dir.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), bytes)?;
    }
    Ok(seeds.len())
}
