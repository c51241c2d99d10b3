//! The `[[disk]]` key `compression`: the codec a keel disk's new container compresses with.

use super::{Checker, ConfigError, EngineKind, RawDisk};
use crate::store::compress::Codec;

/// What a disk's `compression` key asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// No key: a new container is not compressed; an existing one is served as it was made.
    #[default]
    Unset,
    /// The key names a codec (`None`: "none"): a new container gets it, and an existing one
    /// made with another is refused (its compression cannot change in place).
    Set(Option<Codec>),
}

impl Compression {
    /// The codec a container created for this disk gets.
    pub fn for_new(self) -> Option<Codec> {
        match self {
            Self::Unset => None,
            Self::Set(codec) => codec,
        }
    }

    /// Whether a container compressed with `has` contradicts the key.
    pub fn contradicts(self, has: Option<Codec>) -> bool {
        matches!(self, Self::Set(want) if want != has)
    }
}

impl Checker<'_> {
    /// `compression`: "none", "lz4" or "zstd", keel disks only. An existing container made
    /// with another codec than the one named is refused when the disk starts; without the key
    /// it is served as it was made.
    pub(super) fn check_compression(
        &self,
        raw: &RawDisk,
        engine: EngineKind,
        disk_span: std::ops::Range<usize>,
    ) -> Result<Compression, ConfigError> {
        let Some(c) = &raw.compression else {
            return Ok(Compression::Unset);
        };
        let codec = Codec::parse(c.get_ref()).map_err(|m| self.err(c.span(), "compression", m))?;
        if codec.is_some() && engine != EngineKind::Keel {
            return Err(self.err(
                disk_span,
                "compression",
                "only keel disks are compressed (engine = \"keel\")".into(),
            ));
        }
        Ok(Compression::Set(codec))
    }
}
