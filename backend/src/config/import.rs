//! The `[[disk]]` keys of a live import: `import_from` (docs/import.md).

use super::{Checker, ConfigError, EngineKind, RawDisk};
use std::path::PathBuf;

impl Checker<'_> {
    /// `import_from`: a keel disk in one container, writable; a path resolves like `path`.
    pub(super) fn check_import(
        &self,
        raw: &RawDisk,
        engine: EngineKind,
        mirror: &[PathBuf],
    ) -> Result<Option<String>, ConfigError> {
        let Some(from) = &raw.import_from else {
            return Ok(None);
        };
        let refuse = |m: &str| Err(self.err(from.span(), "import_from", m.to_string()));
        if engine != EngineKind::Keel {
            return refuse("only keel disks import (engine = \"keel\")");
        }
        if !mirror.is_empty() {
            return refuse("a mirrored disk cannot import yet; import into one container");
        }
        if raw.read_only.as_ref().is_some_and(|v| *v.get_ref()) {
            return refuse("a read-only disk cannot import");
        }
        let text = from.get_ref();
        if text.is_empty() {
            return refuse("empty: give an image path or an NBD URI");
        }
        if crate::device::nbd::NbdAddress::is_uri(text) {
            crate::device::nbd::NbdAddress::parse(text)
                .map_err(|e| self.err(from.span(), "import_from", e.to_string()))?;
            return Ok(Some(text.clone()));
        }
        Ok(Some(self.resolve(text).display().to_string()))
    }

    /// `import_rate`: only with `import_from`, at least 1 MiB/s.
    pub(super) fn check_import_rate(
        &self,
        raw: &RawDisk,
        importing: bool,
        disk_span: std::ops::Range<usize>,
    ) -> Result<Option<u64>, ConfigError> {
        Ok(match &raw.import_rate {
            None => None,
            Some(_) if !importing => {
                return Err(self.err(
                    disk_span,
                    "import_rate",
                    "only a disk with `import_from` has an import rate".into(),
                ));
            }
            Some(v) => {
                let err = |m: String| self.err(v.span(), "import_rate", m);
                let rate = v.get_ref().to_bytes().map_err(err)?;
                if rate < 1 << 20 {
                    return Err(self.err(
                        v.span(),
                        "import_rate",
                        "below 1M (bytes per second): the copy would never end".into(),
                    ));
                }
                Some(rate)
            }
        })
    }
}
