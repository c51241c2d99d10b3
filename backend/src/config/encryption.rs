//! The `[[disk]]` keys of encryption at rest: `encryption` and `key_file` (docs/security.md).

use super::{Checker, ConfigError, EngineKind, RawDisk};
use crate::store::seal::{AES_XTS_256, KeySource};

impl Checker<'_> {
    /// `encryption` and `key_file`: keel disks only, both or neither. The key itself is read
    /// when the disk starts, so a missing or bad key fails that disk alone.
    pub(super) fn check_encryption(
        &self,
        raw: &RawDisk,
        engine: EngineKind,
        disk_span: std::ops::Range<usize>,
    ) -> Result<Option<KeySource>, ConfigError> {
        let (cipher, key_file) = match (&raw.encryption, &raw.key_file) {
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (c, k),
            (Some(c), None) => {
                return Err(self.err(
                    c.span(),
                    "key_file",
                    "missing: an encrypted disk needs its key (a file of 32 or 64 raw bytes, \
                     env:NAME or credential:NAME)"
                        .into(),
                ));
            }
            (None, Some(k)) => {
                return Err(self.err(
                    k.span(),
                    "encryption",
                    format!(
                        "missing: a disk with key_file is encrypted: encryption = \"{AES_XTS_256}\""
                    ),
                ));
            }
        };
        if engine != EngineKind::Keel {
            return Err(self.err(
                disk_span,
                "encryption",
                "only keel disks are encrypted (engine = \"keel\")".into(),
            ));
        }
        if cipher.get_ref() != AES_XTS_256 {
            return Err(self.err(
                cipher.span(),
                "encryption",
                format!(
                    "{:?} is not a cipher Keel knows: use \"{AES_XTS_256}\"",
                    cipher.get_ref()
                ),
            ));
        }
        let err =
            |e: crate::store::StoreError| self.err(key_file.span(), "key_file", e.to_string());
        Ok(Some(
            match KeySource::parse(key_file.get_ref()).map_err(err)? {
                KeySource::File(p) => KeySource::File(self.resolve(&p.to_string_lossy())),
                other => other,
            },
        ))
    }
}
