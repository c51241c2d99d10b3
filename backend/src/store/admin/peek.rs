//! What a file is, read from its superblocks without opening (or locking) the container:
//! for `keeld --check` and the `keel` CLI, which must tell a raw image from a container and
//! know a container's disk size before anything starts.

use crate::store::log::superblock::Superblock;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes covering both superblock slots.
const BOTH_SLOTS: usize = 8192;

/// What the start of a file says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peeked {
    /// No Keel superblock magic in either slot: a raw image (or nothing yet).
    NotAContainer,
    /// A Keel container whose newest valid superblock gives this guest-visible size.
    Container { capacity: u64 },
    /// The magic is there but neither superblock is valid: `keel fsck` will say more.
    Damaged,
}

/// Reads `path`'s superblocks. The newest valid one gives the capacity, which an online or
/// offline grow writes there before any write may reach the new end.
pub fn peek(path: &Path) -> io::Result<Peeked> {
    Ok(match newest(path)? {
        None => Peeked::NotAContainer,
        Some(None) => Peeked::Damaged,
        Some(Some(sb)) => Peeked::Container {
            capacity: sb.geometry.capacity,
        },
    })
}

/// Whether `path` is a container a live import is still filling (its newest superblock has
/// the `IMPORTING` feature).
pub fn importing(path: &Path) -> io::Result<bool> {
    Ok(matches!(newest(path)?, Some(Some(sb))
        if sb.incompat & crate::store::log::superblock::INCOMPAT_IMPORTING != 0))
}

/// The newest valid superblock: `None` for a file that is not a container, `Some(None)` for
/// one whose superblocks are both damaged.
fn newest(path: &Path) -> io::Result<Option<Option<Superblock>>> {
    let f = File::open(path)?;
    let mut end = &f;
    let len = io::Seek::seek(&mut end, io::SeekFrom::End(0))?;
    let mut start = vec![0u8; BOTH_SLOTS];
    let mut filled = 0;
    while filled < start.len() {
        match f.read_at(&mut start[filled..], filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    let start = &start[..filled];
    if !crate::store::admin::diff_file::is_container_start(start) {
        return Ok(None);
    }
    Ok(Some(
        start
            .chunks(BOTH_SLOTS / 2)
            .filter_map(|slot| Superblock::decode(slot, len).ok())
            .max_by_key(|sb| sb.generation),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CreateOptions, Store, StoreOptions};

    #[test]
    fn tells_containers_from_raw_images_and_reads_the_grown_size() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.img");
        std::fs::write(&raw, vec![7u8; 16384]).unwrap();
        assert_eq!(peek(&raw).unwrap(), Peeked::NotAContainer);
        let empty = dir.path().join("empty.img");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(peek(&empty).unwrap(), Peeked::NotAContainer);

        let c = dir.path().join("c.keel");
        Store::create_path(&c, &CreateOptions::new(16 << 20)).unwrap();
        assert_eq!(peek(&c).unwrap(), Peeked::Container { capacity: 16 << 20 });
        let store = Store::open_path(&c, StoreOptions::default()).unwrap();
        store.grow_in_place(17 << 20).unwrap();
        assert_eq!(peek(&c).unwrap(), Peeked::Container { capacity: 17 << 20 });

        let mut bytes = std::fs::read(&c).unwrap();
        bytes[100] ^= 0xff;
        bytes[4096 + 100] ^= 0xff;
        let broken = dir.path().join("broken.keel");
        std::fs::write(&broken, bytes).unwrap();
        assert_eq!(peek(&broken).unwrap(), Peeked::Damaged);
    }
}
