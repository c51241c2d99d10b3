//! Which VBAs share each packed physical block: the reverse map for packed blocks, kept
//! beside the one-VBA-per-block reverse map of raw blocks. A packed block counts as one live
//! block in the segment usage table while any of its slots is mapped.

use smallvec::SmallVec;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub(crate) struct PackedOwners {
    by_block: HashMap<u64, SmallVec<[u64; 8]>>,
}

impl PackedOwners {
    /// Notes that `vba` lives in `block`; true if it is the block's first.
    pub fn add(&mut self, block: u64, vba: u64) -> bool {
        let owners = self.by_block.entry(block).or_default();
        if !owners.contains(&vba) {
            owners.push(vba);
        }
        owners.len() == 1
    }

    /// Notes that `vba` left `block`; true if that was the block's last.
    pub fn remove(&mut self, block: u64, vba: u64) -> bool {
        let Some(owners) = self.by_block.get_mut(&block) else {
            return false;
        };
        let before = owners.len();
        owners.retain(|v| *v != vba);
        if owners.is_empty() {
            self.by_block.remove(&block);
            return before > 0;
        }
        false
    }

    /// The VBAs in `block` (none for a raw or free block).
    pub fn owners(&self, block: u64) -> &[u64] {
        self.by_block.get(&block).map_or(&[], |o| &o[..])
    }

    pub fn clear(&mut self) {
        self.by_block.clear();
    }
}
