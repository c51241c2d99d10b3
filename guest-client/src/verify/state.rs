//! The verify state file: which generation each block must hold, and which blocks may hold a
//! newer one because their write was in flight.
//!
//! It is replaced atomically (write a temporary file, fsync, rename, fsync the directory), and
//! only after a FLUSH has completed, so it never claims more than the disk promised.
//!
//! Format (little endian): magic `KEELVST1`, block size u32, zero u32, blocks u64, seed u64,
//! last generation u64, pending generation u64, pending count u64, `blocks` x flushed generation
//! u32, `pending count` x block number u64, crc32c u32 of all that precedes it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

const MAGIC: &[u8; 8] = b"KEELVST1";
const HEADER: usize = 56;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is damaged: {why}")]
    Damaged { path: PathBuf, why: String },
    #[error("state file {path} was made with {what}, this run asks for {asked}")]
    Mismatch {
        path: PathBuf,
        what: String,
        asked: String,
    },
}

/// Expected contents of every block of one verify run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub block_size: u32,
    pub seed: u64,
    /// The newest generation every write of which has been flushed.
    pub last_generation: u64,
    /// Generation each block held at the last completed flush (0: never written).
    pub flushed: Vec<u32>,
    /// The generation of writes that may be in flight, and the blocks they go to.
    pub pending_generation: u64,
    pub pending: Vec<u64>,
}

impl State {
    pub fn new(block_size: u32, blocks: u64, seed: u64) -> Self {
        Self {
            block_size,
            seed,
            last_generation: 0,
            flushed: vec![0; blocks as usize],
            pending_generation: 0,
            pending: Vec::new(),
        }
    }

    pub fn blocks(&self) -> u64 {
        self.flushed.len() as u64
    }

    /// Records that writes of `generation` to `blocks` may be in flight from now on.
    pub fn set_pending(&mut self, generation: u64, mut blocks: Vec<u64>) {
        blocks.sort_unstable();
        self.pending_generation = generation;
        self.pending = blocks;
    }

    /// The generation a block may hold besides its flushed one, if a write to it was in flight.
    pub fn pending_for(&self, block: u64) -> Option<u64> {
        // The pending list is short (one flush interval), kept sorted on save.
        self.pending
            .binary_search(&block)
            .ok()
            .map(|_| self.pending_generation)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(HEADER + self.flushed.len() * 4 + self.pending.len() * 8 + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.blocks().to_le_bytes());
        out.extend_from_slice(&self.seed.to_le_bytes());
        out.extend_from_slice(&self.last_generation.to_le_bytes());
        out.extend_from_slice(&self.pending_generation.to_le_bytes());
        out.extend_from_slice(&(self.pending.len() as u64).to_le_bytes());
        for g in &self.flushed {
            out.extend_from_slice(&g.to_le_bytes());
        }
        let mut pending = self.pending.clone();
        pending.sort_unstable();
        for b in &pending {
            out.extend_from_slice(&b.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(raw: &[u8], path: &Path) -> Result<Self, StateError> {
        let damaged = |why: &str| StateError::Damaged {
            path: path.to_path_buf(),
            why: why.to_string(),
        };
        if raw.len() < HEADER + 4 || &raw[0..8] != MAGIC {
            return Err(damaged("not a keel-client verify state file"));
        }
        let (body, crc) = raw.split_at(raw.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(damaged("checksum mismatch"));
        }
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let block_size = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
        let blocks = u64_at(16);
        let pending_count = u64_at(48);
        let expected_len = blocks
            .checked_mul(4)
            .and_then(|f| pending_count.checked_mul(8).and_then(|p| f.checked_add(p)))
            .and_then(|n| n.checked_add(HEADER as u64));
        if expected_len != Some(body.len() as u64) {
            return Err(damaged("length does not match its block counts"));
        }
        let flushed_end = HEADER + blocks as usize * 4;
        let flushed = body[HEADER..flushed_end]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let pending: Vec<u64> = body[flushed_end..]
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect();
        if pending.iter().any(|&b| b >= blocks) || !pending.is_sorted() {
            return Err(damaged("pending block list out of range or unsorted"));
        }
        Ok(Self {
            block_size,
            seed: u64_at(24),
            last_generation: u64_at(32),
            flushed,
            pending_generation: u64_at(40),
            pending,
        })
    }

    pub fn load(path: &Path) -> Result<Option<Self>, StateError> {
        match std::fs::read(path) {
            Ok(raw) => Self::decode(&raw, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Refuses a state made for another geometry or seed.
    pub fn check_matches(
        &self,
        path: &Path,
        block_size: u32,
        blocks: u64,
        seed: u64,
    ) -> Result<(), StateError> {
        let ours = (self.block_size, self.blocks(), self.seed);
        if ours != (block_size, blocks, seed) {
            return Err(StateError::Mismatch {
                path: path.to_path_buf(),
                what: format!("bs={} blocks={} seed={}", ours.0, ours.1, ours.2),
                asked: format!("bs={block_size} blocks={blocks} seed={seed}"),
            });
        }
        Ok(())
    }

    /// Replaces the file at `path` atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(&self.encode()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        let mut s = State::new(4096, 10, 99);
        s.flushed[3] = 2;
        s.flushed[9] = 1;
        s.last_generation = 2;
        s.pending_generation = 3;
        s.pending = vec![1, 3, 7];
        s
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert_eq!(State::load(&path).unwrap(), None);
        let s = sample();
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), Some(s.clone()));
        assert_eq!(s.pending_for(3), Some(3));
        assert_eq!(s.pending_for(2), None);
        assert!(!dir.path().join("state.tmp").exists());
    }

    #[test]
    fn damage_and_mismatch_are_refused() {
        let p = Path::new("x");
        let mut raw = sample().encode();
        raw[HEADER + 2] ^= 1;
        assert!(matches!(
            State::decode(&raw, p),
            Err(StateError::Damaged { .. })
        ));
        assert!(matches!(
            State::decode(&raw[..20], p),
            Err(StateError::Damaged { .. })
        ));
        assert!(sample().check_matches(p, 4096, 10, 99).is_ok());
        assert!(matches!(
            sample().check_matches(p, 512, 10, 99),
            Err(StateError::Mismatch { .. })
        ));
    }
}
