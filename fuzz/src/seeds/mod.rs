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
    // container: patch count, then (selector, offset, length - 1, bytes) per patch.
    let patch = |sel: u8, offset: u32, bytes: &[u8]| {
        let mut v = vec![sel];
        v.extend_from_slice(&offset.to_le_bytes());
        v.push(bytes.len() as u8 - 1);
        v.extend_from_slice(bytes);
        v
    };
    out.push(("container", "pristine", vec![0]));
    out.push((
        "container",
        "superblock-zeroed",
        [vec![1], patch(0, 0, &[0; 64])].concat(),
    ));
    out.push((
        "container",
        "flip-4k",
        [vec![1], patch(2, 4096, &[0xff; 8])].concat(),
    ));
    out.push((
        "container",
        "flip-8k",
        [vec![1], patch(2, 8192, &[0x01; 32])].concat(),
    ));
    out.push((
        "container",
        "flip-scattered",
        [
            vec![3],
            patch(3, 70000, &[0x80]),
            patch(3, 200_000, &[0x40; 4]),
            patch(2, 12288, &[1]),
        ]
        .concat(),
    ));
    // A first byte with bit 0x40 patches a compressed container (0x80: encrypted too); 0x44
    // and 0xcc are 0 patches.
    out.push(("container", "compressed-pristine", vec![0x44]));
    out.push(("container", "compressed-encrypted-pristine", vec![0xcc]));
    out.push((
        "container",
        "compressed-flip-scattered",
        [
            vec![0x46],
            patch(3, 70000, &[0x80]),
            patch(3, 200_000, &[0x40; 4]),
        ]
        .concat(),
    ));
    for (name, msgs) in frontend::seeds() {
        out.push((
            "vhost_frontend",
            name,
            keel_tests::raw_frontend::encode(&msgs),
        ));
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
