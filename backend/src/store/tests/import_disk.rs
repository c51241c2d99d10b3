//! The small disk the import tests (a crashing import, staged chains) run on, and how an
//! import in progress serves it.

use crate::store::Store;

pub(super) const BLOCK: usize = 4096;
pub(super) const DISK: usize = 1 << 20;
pub(super) const BLOCKS: u64 = (DISK / BLOCK) as u64;
/// Blocks per copier step (the real copier's are 1024: here a run crosses several).
pub(super) const STEP: u64 = 16;

/// The bytes of block `lba` in a disk image.
pub(super) fn range(lba: u64) -> std::ops::Range<usize> {
    lba as usize * BLOCK..(lba as usize + 1) * BLOCK
}

/// The disk as the import serves it: the container below the cursor or where it maps a block,
/// `source` (the view being imported) elsewhere.
pub(super) fn served(store: &Store, source: &[u8]) -> Result<Vec<u8>, String> {
    let mut image = vec![0u8; DISK];
    store
        .read(0, &mut image)
        .map_err(|e| format!("read: {e}"))?;
    if let Some(cursor) = store.import_cursor() {
        for lba in cursor..BLOCKS {
            if !store.is_mapped(lba) {
                image[range(lba)].copy_from_slice(&source[range(lba)]);
            }
        }
    }
    Ok(image)
}
