//! The `[[disk]]` key `compression`: the codec a keel disk's new container compresses with.

use super::{Checker, ConfigError, EngineKind, RawDisk};
use crate::store::compress::Codec;

impl Checker<'_> {
    /// `compression`: "none" (the default), "lz4" or "zstd", keel disks only. An existing
    /// container with another setting is refused when the disk starts.
    pub(super) fn check_compression(
        &self,
        raw: &RawDisk,
        engine: EngineKind,
        disk_span: std::ops::Range<usize>,
    ) -> Result<Option<Codec>, ConfigError> {
        let Some(c) = &raw.compression else {
            return Ok(None);
        };
        let codec = Codec::parse(c.get_ref()).map_err(|m| self.err(c.span(), "compression", m))?;
        if codec.is_some() && engine != EngineKind::Keel {
            return Err(self.err(
                disk_span,
                "compression",
                "only keel disks are compressed (engine = \"keel\")".into(),
            ));
        }
        Ok(codec)
    }
}
