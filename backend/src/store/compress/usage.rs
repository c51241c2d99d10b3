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
    /// The size of a zstd container's dictionary, once it has one (not in `stored`).
    pub dictionary: Option<u64>,
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
        dictionary: None,
    }
}

impl Store {
    /// The running point's data, logical and stored.
    pub fn data_bytes(&self) -> DataBytes {
        let st = self.read_lock(&self.state);
        DataBytes {
            dictionary: self.dictionary_bytes(),
            ..data_bytes(&st.maps, self.codec.is_some())
        }
    }

    /// The size of a zstd container's dictionary, once it has one.
    pub fn dictionary_bytes(&self) -> Option<u64> {
        self.dict.get().map(|d| d.bytes().len() as u64)
    }

    /// The container's dictionary, once it has one.
    pub fn dictionary(&self) -> Option<&[u8]> {
        self.dict.get().map(|d| d.bytes())
    }

    /// Waits for a dictionary being trained in the background to be written (or given up).
    pub fn wait_for_dictionary(&self) {
        self.dict.wait();
    }
}
