//! What a data block's checksum covers, and how the store reaches those bytes.
//!
//! A plaintext container's data crcs cover the bytes on the device. An encrypted container made
//! with `CIPHERTEXT_CRC` has them cover the ciphertext as stored at the block's PBA, so a data
//! block is checked (by reads, recovery, the cleaner, fsck, scrub) before, or without, being
//! decrypted. An encrypted container from before that bit has them cover the plaintext: its
//! data is decrypted first, then checked. [`DataView::covered`] is the one place that decides.
//!
//! On a container with `VBA_TWEAK` a data block stored as it is has its VBA as its tweak, a
//! packed one its place ([`DataView::tweak`] decides): such a block reads the same wherever
//! it is, and the cleaner copies it as stored ([`DataView::moves_as_stored`]).

use super::{Sealer, pba_tweak, vba_tweak};
use crate::device::BlockDevice;
use crate::store::compress::block_of;
use crate::store::compress::place::{self, Grain};
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
    /// Raw data blocks are tweaked by their VBA (`VBA_TWEAK`, which implies `over_ciphertext`).
    by_vba: bool,
    /// How finely packed slots are placed (`FINE_SLOTS`): which slot addresses are valid.
    grain: Grain,
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
            by_vba: false,
            grain: Grain::Sector,
        }
    }

    /// This view for a container whose superblock has the `incompat` bits: its slot grain.
    pub fn with_slots_of(self, incompat: u64) -> Self {
        Self {
            grain: Grain::of(incompat),
            ..self
        }
    }

    /// How finely the container places packed slots.
    pub fn grain(&self) -> Grain {
        self.grain
    }

    /// Whether `pba`, read from the VBA map or the journal, is a well formed address for this
    /// container (see [`place::is_valid`]).
    pub fn valid_pba(&self, pba: u64) -> bool {
        place::is_valid(pba, self.grain)
    }

    /// This view with raw data blocks tweaked by their VBA (`VBA_TWEAK`); only meaningful
    /// with checksums over the ciphertext, which the superblock check ensures.
    pub fn tweaked_by_vba(self, by_vba: bool) -> Self {
        Self {
            by_vba: by_vba && self.over_ciphertext,
            ..self
        }
    }

    /// Whether raw data blocks are tweaked by their VBA (an encrypted container with
    /// `VBA_TWEAK`).
    pub fn by_vba(&self) -> bool {
        self.sealer.is_some() && self.by_vba
    }

    /// Whether the data block at `pba` (as the VBA map has it: a packed one carries its slot)
    /// keeps its ciphertext and checksum when moved: a raw block tweaked by its VBA. Every
    /// other encrypted block is decrypted and sealed again for its new place.
    pub fn moves_as_stored(&self, pba: u64) -> bool {
        self.by_vba() && place::slot_of(pba).is_none()
    }

    /// The XTS tweak of the data block holding VBA `vba` at `pba` (as the VBA map has it).
    pub fn tweak(&self, vba: u64, pba: u64) -> u128 {
        if self.moves_as_stored(pba) {
            vba_tweak(vba)
        } else {
            pba_tweak(block_of(pba))
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

    /// Turns `buf`, read from `offset` and made [`covered`](Self::covered) first, into
    /// plaintext. `owner(i)` is the VBA and PBA (as the VBA map has it) block `i` holds, when
    /// the caller knows it: a block tweaked by its VBA needs it; any other is opened under its
    /// place.
    pub fn plaintext(
        &self,
        buf: &mut [u8],
        offset: u64,
        owner: impl Fn(usize) -> Option<(u64, u64)> + Sync,
    ) -> io::Result<()> {
        match &self.sealer {
            Some(sealer) if self.over_ciphertext && self.by_vba => {
                let first = offset / crate::store::layout::BLOCK;
                sealer.open_each(buf, |i| match owner(i) {
                    Some((vba, pba)) => self.tweak(vba, pba),
                    None => pba_tweak(first + i as u64),
                })
            }
            Some(sealer) if self.over_ciphertext => sealer.open(buf, offset),
            _ => Ok(()),
        }
    }
}
