//! The small disk the import tests (a crashing import, staged chains) run on, and how an
//! import in progress serves it.

use super::{random_crash, store_opts};
use crate::store::{Store, StoreOptions};
use crate::testing::{FaultyDevice, SplitMix};
use std::sync::Arc;

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

/// Opens the container on `dev` with two writers (the guest's queue and the copier).
pub(super) fn open(dev: &Arc<FaultyDevice>) -> Result<Store, String> {
    Store::open(
        dev.clone(),
        StoreOptions {
            writers: 2,
            ..store_opts()
        },
    )
    .map_err(|e| format!("open: {e}"))
}

/// Pulls the plug on `store` (a mode `rng` picks) and recovers what survived: `dev` becomes
/// the surviving device. Returns the recovered store and where it happened, for errors.
pub(super) fn crash_and_reopen(
    store: Store,
    dev: &mut Arc<FaultyDevice>,
    rng: &mut SplitMix,
    cycle: u64,
) -> Result<(Store, String), String> {
    let (mode, image) = random_crash(dev, rng);
    drop(store);
    *dev = Arc::new(FaultyDevice::from_image(image));
    let at = format!("cycle {cycle} ({mode:?})");
    let store = open(dev).map_err(|e| format!("{at}: recovery: {e}"))?;
    Ok((store, at))
}
