//! Writes the seed corpus: `cargo run --example seeds [corpus-dir]` (default: `corpus`).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"),
        PathBuf::from,
    );
    let n = keel_fuzz::seeds::write_all(&dir)?;
    println!("wrote {n} seeds under {}", dir.display());
    Ok(())
}
