//! Getting a zstd container its dictionary: the plaintext of the first blocks that compress
//! is gathered (up to [`SAMPLE_BYTES`]), then a background thread trains the dictionary,
//! writes it durably and only then hands it to the writers. Blocks that do not compress are
//! never looked at: a batch of data that does not compress pays one relaxed load and a look
//! at its (raw) physical blocks.

use super::dict::{self, Dictionary, MAX_DICT_BYTES};
use super::pack::{Packed, Physical};
use crate::device::BlockDevice;
use crate::store::error::{Result, StoreError};
use crate::store::layout::BLOCK_SIZE;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

/// Plaintext gathered before training: 256 blocks.
pub const SAMPLE_BYTES: usize = 1 << 20;

/// A container's dictionary, or the sample it is being trained from.
pub struct DictState {
    ready: Arc<OnceLock<Arc<Dictionary>>>,
    /// Blocks are still being gathered.
    sampling: AtomicBool,
    sample: Mutex<Vec<u8>>,
    trainer: Mutex<Option<JoinHandle<()>>>,
    dev: Arc<dyn BlockDevice>,
    uuid: [u8; 16],
}

impl DictState {
    /// The state of a container on `dev` whose dictionary is `loaded`; without one, blocks
    /// are gathered for training when `train` (a writable zstd container with the feature).
    pub fn new(
        dev: Arc<dyn BlockDevice>,
        uuid: [u8; 16],
        loaded: Option<Dictionary>,
        train: bool,
    ) -> Self {
        let ready = OnceLock::new();
        let has = loaded.is_some();
        if let Some(d) = loaded {
            let _ = ready.set(Arc::new(d));
        }
        Self {
            ready: Arc::new(ready),
            sampling: AtomicBool::new(train && !has),
            sample: Mutex::new(Vec::new()),
            trainer: Mutex::new(None),
            dev,
            uuid,
        }
    }

    /// Reads the dictionary of a container on `dev` (`uuid`) when it has the feature
    /// (`has_dict`); without one yet, a `writable` open gathers blocks to train it.
    pub fn open(
        dev: Arc<dyn BlockDevice>,
        uuid: [u8; 16],
        has_dict: bool,
        writable: bool,
    ) -> Result<Self> {
        let loaded = if has_dict {
            dict::read(dev.as_ref(), &uuid)?
        } else {
            None
        };
        Ok(Self::new(dev, uuid, loaded, has_dict && writable))
    }

    /// The dictionary, once it is durable.
    pub fn get(&self) -> Option<&Arc<Dictionary>> {
        self.ready.get()
    }

    /// Takes the plaintext of the blocks of a batch (`sources`) that `packed` compressed
    /// into the sample; the sample full, starts training it in the background.
    pub fn offer(&self, sources: &[&[u8]], packed: &Packed) {
        if !self.sampling.load(Ordering::Relaxed) {
            return;
        }
        let mut slots = (packed.phys.iter())
            .filter_map(|p| match p {
                Physical::Packed { slots, .. } => Some(slots.iter().map(|(i, _)| *i)),
                Physical::Raw(_) => None,
            })
            .flatten()
            .peekable();
        if slots.peek().is_none() {
            return;
        }
        let mut sample = self.sample.lock().unwrap_or_else(|e| e.into_inner());
        if !self.sampling.load(Ordering::Relaxed) {
            return;
        }
        for i in slots {
            if sample.len() >= SAMPLE_BYTES {
                break;
            }
            sample.extend_from_slice(sources[i]);
        }
        if sample.len() < SAMPLE_BYTES {
            return;
        }
        self.sampling.store(false, Ordering::Relaxed);
        let sample = std::mem::take(&mut *sample);
        let (ready, dev, uuid) = (self.ready.clone(), self.dev.clone(), self.uuid);
        let spawned = std::thread::Builder::new()
            .name("keel-dict".into())
            .spawn(move || {
                if let Err(e) = install(&ready, dev.as_ref(), &uuid, train(&sample)) {
                    ::log::warn!("no compression dictionary: {e}");
                }
            });
        match spawned {
            Ok(h) => *self.trainer.lock().unwrap_or_else(|e| e.into_inner()) = Some(h),
            Err(e) => ::log::warn!("no compression dictionary: {e}"),
        }
    }

    /// Makes `bytes` the dictionary now (a clone takes its source's); refused once the
    /// container has one.
    pub fn install(&self, bytes: Vec<u8>) -> Result<()> {
        self.sampling.store(false, Ordering::Relaxed);
        self.wait();
        install(&self.ready, self.dev.as_ref(), &self.uuid, bytes)
    }

    /// Bytes gathered for training so far.
    #[cfg(test)]
    pub fn sampled(&self) -> usize {
        self.sample.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits for a training in the background to finish.
    pub fn wait(&self) {
        let h = self
            .trainer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }
}

impl Drop for DictState {
    /// The trainer writes to the container: it must be done before the container is let go.
    fn drop(&mut self) {
        self.wait();
    }
}

/// A dictionary trained from `sample` (whole blocks); where zstd's trainer finds nothing
/// to build one from (the same few blocks over and over), the sample's end as raw content.
fn train(sample: &[u8]) -> Vec<u8> {
    let sizes = vec![BLOCK_SIZE; sample.len() / BLOCK_SIZE];
    let whole = &sample[..sizes.len() * BLOCK_SIZE];
    zstd::dict::from_continuous(whole, &sizes, MAX_DICT_BYTES)
        .unwrap_or_else(|_| whole[whole.len().saturating_sub(MAX_DICT_BYTES)..].to_vec())
}

fn install(
    ready: &OnceLock<Arc<Dictionary>>,
    dev: &dyn BlockDevice,
    uuid: &[u8; 16],
    bytes: Vec<u8>,
) -> Result<()> {
    if ready.get().is_some() {
        return Err(StoreError::Invalid(
            "the container has its dictionary already".into(),
        ));
    }
    let d = Dictionary::new(bytes)?;
    dict::write(dev, uuid, d.bytes())?;
    ready
        .set(Arc::new(d))
        .map_err(|_| StoreError::Invalid("the container has its dictionary already".into()))
}
