//! The `[[disk]]` keys of a mirrored disk: `mirror` (local files and NBD URIs) and
//! `resync_chunk`.

use super::paths::check_writable_dir;
use super::{Checker, ConfigError, DEFAULT_RESYNC_CHUNK, EngineKind, RawDisk};
use crate::device::mirror::remote::is_remote;
use std::path::{Path, PathBuf};

impl Checker<'_> {
    /// `mirror` and `resync_chunk`: at least two distinct components, for raw and keel disks.
    pub(super) fn check_mirror(
        &self,
        raw: &RawDisk,
        engine: EngineKind,
        size: Option<u64>,
    ) -> Result<(Vec<PathBuf>, u64), ConfigError> {
        let chunk = match &raw.resync_chunk {
            None => DEFAULT_RESYNC_CHUNK,
            Some(v) => {
                let bytes = v
                    .get_ref()
                    .to_bytes()
                    .map_err(|m| self.err(v.span(), "resync_chunk", m))?;
                if !bytes.is_power_of_two() || !(4096..=(64 << 20)).contains(&bytes) {
                    return Err(self.err(
                        v.span(),
                        "resync_chunk",
                        format!("{bytes} bytes is not a power of two between 4K and 64M"),
                    ));
                }
                if raw.mirror.is_none() {
                    return Err(self.err(
                        v.span(),
                        "resync_chunk",
                        "only mirrored disks (`mirror = [...]`) have a resync chunk".into(),
                    ));
                }
                bytes
            }
        };
        let Some(list) = &raw.mirror else {
            return Ok((Vec::new(), chunk));
        };
        let span = list.span();
        if engine == EngineKind::Null {
            return Err(self.err(span, "mirror", "the null engine stores nothing".into()));
        }
        // An NBD URI names a remote component as it is; a file path is taken from the
        // config's directory.
        let remote = is_remote;
        let paths: Vec<PathBuf> = list
            .get_ref()
            .iter()
            .map(|p| {
                if remote(p) {
                    PathBuf::from(p)
                } else {
                    self.resolve(p)
                }
            })
            .collect();
        for p in list.get_ref().iter().filter(|p| remote(p)) {
            crate::device::nbd::NbdAddress::parse(p)
                .map_err(|e| self.err(span.clone(), "mirror", e.to_string()))?;
        }
        if list.get_ref().iter().all(|p| remote(p)) {
            return Err(self.err(
                span,
                "mirror",
                "needs at least one local component (remote components' metadata is kept \
                 beside the first local one)"
                    .into(),
            ));
        }
        if paths.len() < 2 {
            return Err(self.err(
                span,
                "mirror",
                format!("needs at least 2 components, got {}", paths.len()),
            ));
        }
        for (i, p) in paths.iter().enumerate() {
            if paths[..i].contains(p) {
                return Err(self.err(span, "mirror", format!("{} is named twice", p.display())));
            }
            if remote(&p.to_string_lossy()) {
                continue;
            }
            let dir = p.parent().unwrap_or(Path::new("."));
            check_writable_dir(dir).map_err(|m| self.err(span.clone(), "mirror", m))?;
        }
        if size.is_none() {
            return Err(self.err(span, "size", "missing: a mirrored disk needs a size".into()));
        }
        Ok((paths, chunk))
    }
}
