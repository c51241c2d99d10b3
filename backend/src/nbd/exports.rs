//! The disks keeld exports over NBD, by name, each with the engine its vhost-user frontend uses.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::config::DiskConfig;
use crate::engine::Engine;

/// One exported disk.
pub struct Export {
    pub name: String,
    pub engine: Arc<dyn Engine>,
    /// Requests must be aligned to this (the disk's logical block size).
    pub block_size: u32,
}

/// The exports by name; disks are added as they start.
#[derive(Default)]
pub struct Exports {
    by_name: RwLock<BTreeMap<String, Arc<Export>>>,
}

impl Exports {
    /// Exports `disk` through `engine`, the same engine its vhost-user frontend is served by,
    /// so both see the same data under the same ordering rules.
    pub fn add(&self, disk: &DiskConfig, engine: Arc<dyn Engine>) {
        let export = Export {
            name: disk.name.clone(),
            engine,
            block_size: disk.logical_block_size.max(512),
        };
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(disk.name.clone(), Arc::new(export));
    }

    /// Stops exporting `name` (its disk stopped); connections already open keep their engine
    /// until they close.
    pub fn remove(&self, name: &str) {
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Adds an export built by hand (tests, fuzzing).
    pub fn insert(&self, export: Export) {
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(export.name.clone(), Arc::new(export));
    }

    /// The export `name`: a disk, or `DISK@SNAPSHOT` for a snapshot of a disk whose engine
    /// serves snapshots (read-only, a view opened for this call).
    pub fn get(&self, name: &str) -> Option<Arc<Export>> {
        if let Some(e) = self
            .by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Some(Arc::clone(e));
        }
        let (disk, snapshot) = name.split_once('@')?;
        let base = self.get(disk)?;
        match base.engine.snapshot(snapshot) {
            Ok(engine) => Some(Arc::new(Export {
                name: name.to_string(),
                engine,
                block_size: base.block_size,
            })),
            Err(e) => {
                log::debug!("NBD export {name:?}: {e}");
                None
            }
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}
