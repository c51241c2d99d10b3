//! A backing chain imported layer by layer (offline `keel import`): each layer's view (the
//! chain up to it, flattened by `qemu-nbd`) is written over the one before, only the blocks
//! that differ, and every layer below the top is then frozen as a snapshot named after its
//! file (`base` for `base.qcow2`). Blocks a layer did not change stay shared with the
//! snapshots below it: they are stored once.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{Source, SourceError};
use crate::device::nbd::NbdAddress;
use crate::store::layout::BLOCK;
use crate::store::{Op, Store, StoreError};

/// Bytes compared and written per batch.
const STEP: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("writing the container: {0}")]
    Store(#[from] StoreError),
}

/// The files of `spec`'s backing chain, oldest first; just `spec` for an NBD URI or an image
/// without a backing file.
pub fn backing_chain(spec: &str) -> Result<Vec<String>, SourceError> {
    if NbdAddress::is_uri(spec) {
        return Ok(vec![spec.to_string()]);
    }
    let fail = |e: String| SourceError::Open(spec.to_string(), e);
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "--backing-chain"])
        .arg(Path::new(spec))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("running qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let info: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("qemu-img info: {e}")))?;
    let Some(chain) = info.as_array() else {
        return Ok(vec![spec.to_string()]);
    };
    let mut files = chain
        .iter()
        .map(|layer| {
            layer
                .get("filename")
                .and_then(|f| f.as_str())
                .map(str::to_string)
                .ok_or_else(|| fail("qemu-img info names no file for a layer".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    files.reverse();
    // The top is the file as given (qemu-img may spell it differently).
    if let Some(top) = files.last_mut() {
        *top = spec.to_string();
    }
    Ok(files)
}

/// The snapshot name of a layer: its file name without the extension.
pub fn snapshot_name(file: &str) -> String {
    let path = Path::new(file);
    path.file_stem()
        .or(path.file_name())
        .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into_owned())
}

/// Imports `layers` (oldest first) into `store`, which the caller made sure is empty; returns
/// the snapshots made. `step(done, total)` follows the progress in bytes read.
pub fn import_layers(
    store: &Store,
    layers: &[String],
    step: &mut dyn FnMut(u64, u64),
) -> Result<Vec<String>, LayerError> {
    let mut snapshots = Vec::new();
    let mut done = 0;
    let sources = layers
        .iter()
        .map(|l| Source::open(l))
        .collect::<Result<Vec<_>, _>>()?;
    let total: u64 = sources.iter().map(Source::len).sum();
    for (i, source) in sources.iter().enumerate() {
        write_differences(store, source, &mut |n| {
            done += n;
            step(done, total);
        })?;
        if i + 1 < sources.len() {
            let name = snapshot_name(&layers[i]);
            store.create_snapshot(&name)?;
            snapshots.push(name);
        }
    }
    store.flush()?;
    store.checkpoint()?;
    Ok(snapshots)
}

/// Makes the container read as `source`: writes the blocks that differ, unmaps those that
/// became zeroes.
fn write_differences(
    store: &Store,
    source: &Source,
    step: &mut dyn FnMut(u64),
) -> Result<(), LayerError> {
    let len = source.len().next_multiple_of(BLOCK);
    let mut new = vec![0u8; STEP as usize];
    let mut old = vec![0u8; STEP as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(STEP) as usize;
        source
            .read(&mut new[..n], at)
            .map_err(|e| LayerError::Read(source.name().to_string(), e))?;
        store.read(at, &mut old[..n])?;
        let mut ops = Vec::new();
        for (k, (b_new, b_old)) in new[..n]
            .chunks(BLOCK as usize)
            .zip(old[..n].chunks(BLOCK as usize))
            .enumerate()
        {
            if b_new == b_old {
                continue;
            }
            let offset = at + k as u64 * BLOCK;
            if b_new.iter().all(|b| *b == 0) {
                ops.push(Op::WriteZeroes { offset, len: BLOCK });
            } else {
                ops.push(Op::Write {
                    offset,
                    data: b_new,
                });
            }
        }
        if !ops.is_empty() {
            store.write_batch(0, &ops)?;
        }
        at += n as u64;
        step(n as u64);
    }
    Ok(())
}
