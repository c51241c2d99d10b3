//! How much guest data the running point maps, and what it takes once compressed: what
//! `keel info` and `keel stats` report.

use super::place;
use crate::store::Store;
use crate::store::layout::BLOCK;
use crate::store::maps::Maps;

/// The running point's data, as the guest sees it and as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataBytes {
    pub logical: u64,
    pub stored: u64,
}

impl DataBytes {
    /// `logical / stored`; 1 with nothing mapped.
    pub fn ratio(&self) -> f64 {
        if self.stored == 0 {
            1.0
        } else {
            self.logical as f64 / self.stored as f64
        }
    }
}

/// Walks the running point (a VBA lookup per block only when `compressed`).
pub(crate) fn data_bytes(maps: &Maps, compressed: bool) -> DataBytes {
    let mut mapped = 0u64;
    let mut stored = 0u64;
    maps.lba.range(maps.running, 0, u64::MAX, &mut |_, v| {
        mapped += 1;
        if compressed {
            stored += maps
                .vba
                .get(maps.vba_root, v.0)
                .map_or(0, |e| place::stored_len(e.pba));
        }
    });
    DataBytes {
        logical: mapped * BLOCK,
        stored: if compressed { stored } else { mapped * BLOCK },
    }
}

impl Store {
    /// The running point's data, logical and stored.
    pub fn data_bytes(&self) -> DataBytes {
        let st = self.read_lock(&self.state);
        data_bytes(&st.maps, self.codec.is_some())
    }
}
