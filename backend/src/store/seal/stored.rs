//! What a data block's checksum covers, and how the store reaches those bytes.
//!
//! A plaintext container's data crcs cover the bytes on the device. An encrypted container made
//! with `CIPHERTEXT_CRC` has them cover the ciphertext as stored at the block's PBA, so a data
//! block is checked (by reads, recovery, the cleaner, fsck, scrub) before, or without, being
//! decrypted. An encrypted container from before that bit has them cover the plaintext: its
//! data is decrypted first, then checked. [`DataView::covered`] is the one place that decides.

use super::Sealer;
use crate::device::BlockDevice;
use std::io;
use std::sync::Arc;

/// The container's stored bytes and the cipher, as data checks need them.
#[derive(Clone)]
pub(crate) struct DataView {
    /// The device under the cipher: the container's bytes as stored.
    raw: Arc<dyn BlockDevice>,
    sealer: Option<Arc<Sealer>>,
    /// Data crcs cover the ciphertext (`CIPHERTEXT_CRC`); meaningful with a sealer only.
    over_ciphertext: bool,
}

impl DataView {
    pub fn new(
        raw: Arc<dyn BlockDevice>,
        sealer: Option<Arc<Sealer>>,
        over_ciphertext: bool,
    ) -> Self {
        Self {
            raw,
            sealer,
            over_ciphertext,
        }
    }

    /// The device as stored (ciphertext on an encrypted container).
    pub fn raw(&self) -> &dyn BlockDevice {
        self.raw.as_ref()
    }

    pub fn sealer(&self) -> Option<&Arc<Sealer>> {
        self.sealer.as_ref()
    }

    /// Whether data crcs are computed over the ciphertext the store writes (so the store
    /// seals data before checksumming it).
    pub fn crc_over_ciphertext(&self) -> bool {
        self.sealer.is_some() && self.over_ciphertext
    }

    /// Reads whole blocks at `offset` as stored.
    pub fn read_raw(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.raw.read_at(buf, offset)
    }

    /// Turns `buf`, read as stored from `offset`, into the bytes data crcs cover: left as it
    /// is, unless the container is encrypted with plaintext crcs (then it is decrypted).
    pub fn covered(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.sealer {
            Some(sealer) if !self.over_ciphertext => sealer.open(buf, offset),
            _ => Ok(()),
        }
    }

    /// Turns `buf`, made [`covered`](Self::covered) first, into plaintext.
    pub fn plaintext(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.sealer {
            Some(sealer) if self.over_ciphertext => sealer.open(buf, offset),
            _ => Ok(()),
        }
    }
}
