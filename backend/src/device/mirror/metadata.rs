//! Persistent mirror metadata: the [`MirrorView`] in two checksummed slots (A/B).
//!
//! Each component has its own metadata device (a `<component>.keelmirror` sidecar file for
//! file components). Generation `g` goes to slot `g % 2`, so a torn write only ever damages the
//! slot being written; the crc32c exposes it and the other slot, one generation older, is used.
//!
//! Slot layout (little-endian): `magic[8] crc32c:u32 version:u32 generation:u64 body_len:u64`
//! then the body: `json_len:u32`, the JSON header, and the bitmaps' raw bytes back to back.
//! The crc covers everything from `version` to the end of the body.

use super::chunk_bitmap::ChunkBitmap;
use super::error::MirrorError;
use super::state::ComponentState;
use super::view::{ComponentRecord, DeltaRecord, MirrorView, Outage, ResyncPlan, Source};
use crate::device::BlockDevice;
use crate::store::buf::AlignedBuf;
use serde::{Deserialize, Serialize};
use std::io;
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"KEELMIR1";
const VERSION: u32 = 1;
const FIXED: usize = 32;
/// Slots are read and written in whole sectors of this size.
const SECTOR: usize = 512;

/// `len` rounded up to whole sectors.
fn sectors(len: usize) -> usize {
    len.div_ceil(SECTOR) * SECTOR
}

/// Bytes of metadata device a mirror needs: two slots, each room for the JSON header and
/// up to five bitmaps per component (tracking, resync work, sync, delta presence and its
/// durable part), plus the write-intent bitmap.
pub fn metadata_len(len: u64, chunk_size: u64, components: usize) -> u64 {
    let bitmap = len.div_ceil(chunk_size.max(1)).div_ceil(8);
    let slot = (64 << 10) + (5 * components as u64 + 1) * bitmap;
    2 * slot.div_ceil(4096) * 4096
}

#[derive(Serialize, Deserialize)]
struct Header {
    set_id: String,
    component_index: usize,
    len: u64,
    chunk_size: u64,
    lsn: u64,
    components: Vec<RecordHeader>,
    deltas: Vec<DeltaHeader>,
    intent: usize,
}

#[derive(Serialize, Deserialize)]
struct RecordHeader {
    path: String,
    state: ComponentState,
    last_lsn: u64,
    outage: Option<OutageHeader>,
    /// Absent in metadata written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed_why: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct OutageHeader {
    start_lsn: u64,
    tracking: usize,
    resync: Option<PlanHeader>,
}

#[derive(Serialize, Deserialize)]
struct PlanHeader {
    source: Source,
    work: usize,
    done: usize,
}

#[derive(Serialize, Deserialize)]
struct DeltaHeader {
    for_component: usize,
    path: String,
    start_lsn: u64,
    present: usize,
    durable: usize,
    failed: bool,
}

/// Serialises `view` as seen by component `index` into one slot image.
pub fn encode(view: &MirrorView, index: usize) -> Result<Vec<u8>, MirrorError> {
    let mut blob: Vec<u8> = Vec::new();
    let mut push = |b: &ChunkBitmap| {
        blob.extend_from_slice(b.as_bytes());
        blob.len() / b.as_bytes().len().max(1) - 1
    };
    let components = view
        .components
        .iter()
        .map(|c| RecordHeader {
            path: c.path.clone(),
            state: c.state,
            last_lsn: c.last_lsn,
            outage: c.outage.as_ref().map(|o| OutageHeader {
                start_lsn: o.start_lsn,
                tracking: push(&o.tracking),
                resync: o.resync.as_ref().map(|p| PlanHeader {
                    source: p.source,
                    work: push(&p.work),
                    done: push(&p.done),
                }),
            }),
            failed_why: c.failed_why.clone(),
        })
        .collect();
    let deltas = view
        .deltas
        .iter()
        .map(|d| DeltaHeader {
            for_component: d.for_component,
            path: d.path.clone(),
            start_lsn: d.start_lsn,
            present: push(&d.present),
            durable: push(&d.durable),
            failed: d.failed,
        })
        .collect();
    let intent = push(&view.intent);
    let header = Header {
        set_id: view.set_id.clone(),
        component_index: index,
        len: view.len,
        chunk_size: view.chunk_size,
        lsn: view.lsn,
        components,
        deltas,
        intent,
    };
    let json = serde_json::to_vec(&header)
        .map_err(|e| MirrorError::MetadataCorrupt(format!("cannot encode: {e}")))?;
    let body_len = 4 + json.len() + blob.len();
    let mut out = Vec::with_capacity(FIXED + body_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&view.generation.to_le_bytes());
    out.extend_from_slice(&(body_len as u64).to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&blob);
    let crc = crc32c::crc32c(&out[12..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn corrupt(what: &str) -> MirrorError {
    MirrorError::MetadataCorrupt(what.to_string())
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses the fixed part of a slot: `(generation, body_len)` if the magic and version match.
fn parse_fixed(b: &[u8]) -> Option<(u64, u64)> {
    if b.get(..8)? != MAGIC || u32_at(b, 12)? != VERSION {
        return None;
    }
    Some((u64_at(b, 16)?, u64_at(b, 24)?))
}

/// Decodes a whole slot image into the view and the component index it was written for.
pub fn decode(slot: &[u8]) -> Result<(MirrorView, usize), MirrorError> {
    let (generation, body_len) = parse_fixed(slot).ok_or_else(|| corrupt("bad magic"))?;
    let end = usize::try_from(body_len)
        .ok()
        .and_then(|l| l.checked_add(FIXED))
        .filter(|&e| e <= slot.len())
        .ok_or_else(|| corrupt("body beyond slot"))?;
    let stored = u32_at(slot, 8).ok_or_else(|| corrupt("short slot"))?;
    if crc32c::crc32c(&slot[12..end]) != stored {
        return Err(corrupt("checksum mismatch"));
    }
    let body = &slot[FIXED..end];
    let json_len = u32_at(body, 0).ok_or_else(|| corrupt("short body"))? as usize;
    let json = body
        .get(4..4 + json_len)
        .ok_or_else(|| corrupt("header beyond body"))?;
    let blob = &body[4 + json_len..];
    let h: Header = serde_json::from_slice(json).map_err(|e| corrupt(&format!("header: {e}")))?;
    if h.chunk_size == 0 {
        return Err(corrupt("zero chunk size"));
    }
    let chunks = h.len.div_ceil(h.chunk_size);
    let bytes = chunks.div_ceil(8) as usize;
    let bitmap = |i: usize| -> Result<ChunkBitmap, MirrorError> {
        let start = i
            .checked_mul(bytes)
            .ok_or_else(|| corrupt("bitmap index"))?;
        blob.get(start..start + bytes)
            .and_then(|b| ChunkBitmap::from_bytes(b, chunks))
            .ok_or_else(|| corrupt("bitmap beyond body"))
    };
    let mut components = Vec::with_capacity(h.components.len());
    for c in h.components {
        let outage = match c.outage {
            None => None,
            Some(o) => Some(Outage {
                start_lsn: o.start_lsn,
                tracking: bitmap(o.tracking)?,
                resync: match o.resync {
                    None => None,
                    Some(p) => Some(ResyncPlan {
                        source: p.source,
                        work: bitmap(p.work)?,
                        done: bitmap(p.done)?,
                    }),
                },
            }),
        };
        components.push(ComponentRecord {
            path: c.path,
            state: c.state,
            last_lsn: c.last_lsn,
            outage,
            failed_why: c.failed_why,
        });
    }
    let mut deltas = Vec::with_capacity(h.deltas.len());
    for d in h.deltas {
        deltas.push(DeltaRecord {
            for_component: d.for_component,
            path: d.path,
            start_lsn: d.start_lsn,
            present: bitmap(d.present)?,
            durable: bitmap(d.durable)?,
            failed: d.failed,
        });
    }
    let view = MirrorView {
        set_id: h.set_id,
        generation,
        len: h.len,
        chunk_size: h.chunk_size,
        lsn: h.lsn,
        components,
        deltas,
        intent: bitmap(h.intent)?,
    };
    Ok((view, h.component_index))
}

/// The A/B metadata slots of one component (or delta).
#[derive(Clone)]
pub struct MetadataStore {
    dev: Arc<dyn BlockDevice>,
    slot_size: u64,
}

impl MetadataStore {
    pub fn new(dev: Arc<dyn BlockDevice>) -> Self {
        let slot_size = dev.len() / 2;
        Self { dev, slot_size }
    }

    fn read_slot(&self, slot: u64) -> io::Result<Option<(MirrorView, usize)>> {
        let base = slot * self.slot_size;
        if self.slot_size < FIXED as u64 {
            return Ok(None);
        }
        // Whole sectors into an aligned buffer, so an O_DIRECT sidecar takes the reads as they
        // are; the slot's first sector holds the fixed part.
        let first = (SECTOR as u64).min(self.slot_size) as usize;
        let mut fixed = AlignedBuf::zeroed(first);
        self.dev.read_at(&mut fixed, base)?;
        let Some((_, body_len)) = parse_fixed(&fixed) else {
            return Ok(None);
        };
        if body_len > self.slot_size - FIXED as u64 {
            return Ok(None);
        }
        let len = FIXED + body_len as usize;
        let mut buf = AlignedBuf::zeroed(sectors(len).min(self.slot_size as usize));
        self.dev.read_at(&mut buf, base)?;
        match decode(&buf[..len]) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                log::warn!("mirror metadata slot {slot} unusable: {e}");
                Ok(None)
            }
        }
    }

    /// The newest intact copy, with the component index it was written for; `None` when the
    /// device holds no mirror metadata at all.
    pub fn load(&self) -> io::Result<Option<(MirrorView, usize)>> {
        let a = self.read_slot(0)?;
        let b = self.read_slot(1)?;
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some(if a.0.generation >= b.0.generation {
                a
            } else {
                b
            }),
            (a, b) => a.or(b),
        })
    }

    /// Writes `view` for component `index` into the slot its generation selects, durably.
    pub fn store(&self, view: &MirrorView, index: usize) -> Result<(), MirrorError> {
        let image = encode(view, index)?;
        if image.len() as u64 > self.slot_size {
            return Err(MirrorError::MetadataTooLarge(image.len(), self.slot_size));
        }
        let at = (view.generation % 2) * self.slot_size;
        // Padded to whole sectors (the slot has room: its size is a multiple of 4 KiB) in an
        // aligned buffer, so an O_DIRECT sidecar takes the write as it is.
        let mut padded = AlignedBuf::zeroed(sectors(image.len()).min(self.slot_size as usize));
        padded[..image.len()].copy_from_slice(&image);
        self.dev
            .write_at(&padded, at)
            .and_then(|()| self.dev.flush())
            .map_err(|e| MirrorError::io("writing mirror metadata", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::mirror::view::tests::two_way;
    use crate::testing::{CrashMode, FaultyDevice};

    fn sample() -> MirrorView {
        let mut v = two_way(1000);
        let mut t = ChunkBitmap::new(1000);
        t.set_range(5, 9);
        let mut d = ChunkBitmap::new(1000);
        d.set(5);
        v.components[1].state = ComponentState::Resyncing;
        v.components[1].outage = Some(Outage {
            start_lsn: 3,
            tracking: t.clone(),
            resync: Some(ResyncPlan {
                source: Source::Delta,
                work: t.clone(),
                done: d,
            }),
        });
        v.deltas.push(DeltaRecord {
            for_component: 1,
            path: "/x/delta".into(),
            start_lsn: 3,
            durable: ChunkBitmap::new(1000),
            present: t,
            failed: false,
        });
        v
    }

    #[test]
    fn round_trip_and_checksum() {
        let v = sample();
        let mut img = encode(&v, 1).unwrap();
        let (back, idx) = decode(&img).unwrap();
        assert_eq!((back, idx), (v, 1));
        let last = img.len() - 1;
        img[last] ^= 1;
        assert!(matches!(decode(&img), Err(MirrorError::MetadataCorrupt(_))));
        assert!(decode(&img[..20]).is_err());
    }

    #[test]
    fn newest_slot_wins_and_a_torn_write_falls_back() {
        let len = metadata_len(1000 * 4096, 4096, 2) as usize;
        let dev = Arc::new(FaultyDevice::seeded(len as u64, 11));
        let store = MetadataStore::new(dev.clone());
        assert!(store.load().unwrap().is_none());
        let mut v = sample();
        store.store(&v, 0).unwrap();
        v.generation += 1;
        v.lsn = 99;
        store.store(&v, 0).unwrap();
        assert_eq!(store.load().unwrap().unwrap().0.lsn, 99);

        let mut torn_seen = false;
        for seed in 0..40 {
            let dev = Arc::new(FaultyDevice::seeded(len as u64, seed));
            let store = MetadataStore::new(dev.clone());
            let mut v = sample();
            store.store(&v, 0).unwrap();
            dev.set_fail_flushes(true);
            v.generation += 1;
            v.lsn = 7;
            assert!(store.store(&v, 0).is_err());
            dev.set_fail_flushes(false);
            dev.crash(CrashMode::RandomSubset);
            let (got, _) = store.load().unwrap().expect("one slot is always intact");
            assert!(got.lsn == 7 || got.lsn == 0, "never a mix: {}", got.lsn);
            torn_seen |= got.lsn == 0;
        }
        assert!(torn_seen, "some seed lost the second copy");
    }

    #[test]
    fn too_small_slot_is_refused() {
        let dev = Arc::new(FaultyDevice::seeded(256, 1));
        let store = MetadataStore::new(dev);
        assert!(matches!(
            store.store(&sample(), 0),
            Err(MirrorError::MetadataTooLarge(..))
        ));
    }
}
