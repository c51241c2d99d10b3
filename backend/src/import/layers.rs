//! A backing chain imported layer by layer (offline `keel import`): each layer's view (the
//! chain up to it, flattened by `qemu-nbd`) is written over the one before, only the blocks
//! that differ, and every layer below the top is then frozen as a snapshot named after its
//! file (`base` for `base.qcow2`). The top image's internal snapshots come next, each its own
//! view (`qemu-nbd --load-snapshot`) frozen under its name, then the top's current contents.
//! Blocks a view did not change stay shared with the snapshots below it: they are stored once.

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

/// One view of an image to import: a layer of its chain, or an internal snapshot of its top.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// The image file (or NBD URI).
    pub spec: String,
    /// The internal snapshot of `spec` to read instead of its current contents.
    pub internal: Option<String>,
    /// The Keel snapshot it becomes (unless it is the last view).
    pub name: String,
}

impl View {
    /// The view's source: the chain up to its layer, or the internal snapshot.
    pub fn open(&self) -> Result<Source, SourceError> {
        match &self.internal {
            Some(snapshot) => Source::open_internal_snapshot(&self.spec, snapshot),
            None => Source::open(&self.spec),
        }
    }
}

/// What `qemu-img info --backing-chain` says of `spec`: one object per layer, the top first.
pub(super) fn chain_info(spec: &str) -> Result<Vec<serde_json::Value>, SourceError> {
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
    Ok(match info {
        serde_json::Value::Array(chain) => chain,
        one => vec![one],
    })
}

/// Everything `spec` holds, oldest first: the layers of its backing chain below the top, the
/// top's internal snapshots (in the order `qemu-img snapshot -l` lists them), then the top.
/// Two views that would become snapshots of the same name are refused.
pub fn views(spec: &str) -> Result<Vec<View>, SourceError> {
    let top = View {
        spec: spec.to_string(),
        internal: None,
        name: snapshot_name(spec),
    };
    if NbdAddress::is_uri(spec) {
        return Ok(vec![top]);
    }
    let fail = |e: String| SourceError::Open(spec.to_string(), e);
    let chain = chain_info(spec)?;
    let mut views = Vec::new();
    // Layers below the top, oldest first.
    for layer in chain.iter().skip(1).rev() {
        let file = layer
            .get("filename")
            .and_then(|f| f.as_str())
            .ok_or_else(|| fail("qemu-img info names no file for a layer".into()))?;
        views.push(View {
            spec: file.to_string(),
            internal: None,
            name: snapshot_name(file),
        });
    }
    let internal = chain
        .first()
        .and_then(|t| t.get("snapshots"))
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    for snapshot in internal {
        let name = snapshot
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| fail("qemu-img info names no internal snapshot".into()))?;
        views.push(View {
            spec: spec.to_string(),
            internal: Some(name.to_string()),
            name: name.to_string(),
        });
    }
    views.push(top);
    let last = views.len() - 1;
    for (i, v) in views[..last].iter().enumerate() {
        if views[..i].iter().any(|w| w.name == v.name) {
            return Err(fail(format!(
                "two layers or internal snapshots would both become snapshot {:?}",
                v.name
            )));
        }
    }
    Ok(views)
}

/// The snapshot name of a layer: its file name without the extension.
pub fn snapshot_name(file: &str) -> String {
    let path = Path::new(file);
    path.file_stem()
        .or(path.file_name())
        .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into_owned())
}

/// Imports `views` (oldest first) into `store`, which the caller made sure is empty; returns
/// the snapshots made. `step(done, total)` follows the progress in bytes read.
pub fn import_layers(
    store: &Store,
    views: &[View],
    step: &mut dyn FnMut(u64, u64),
) -> Result<Vec<String>, LayerError> {
    let mut snapshots = Vec::new();
    let mut done = 0;
    let sources = views
        .iter()
        .map(View::open)
        .collect::<Result<Vec<_>, _>>()?;
    let total: u64 = sources.iter().map(Source::len).sum();
    for (i, source) in sources.iter().enumerate() {
        write_differences(store, source, &mut |n| {
            done += n;
            step(done, total);
        })?;
        if i + 1 < sources.len() {
            let name = views[i].name.clone();
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
