//! Corrupt containers: fuzz bytes written over a valid small container (superblocks, checkpoint,
//! tree nodes, journal, data), then opened, read and checked. Every outcome must be a clean
//! error or a working store; a panic is the finding. An input whose first byte is 0x80 or more
//! patches an encrypted container (AES-256-XTS) instead, opened with its key; one whose first
//! byte has bit 0x40 set a compressed (zstd) one, its data in packed blocks.

use std::sync::{Arc, OnceLock};

use keel_backend::store::compress::Codec;
use keel_backend::store::seal::Key;
use keel_backend::store::{CreateOptions, Op, Store, StoreOptions};
use keel_backend::testing::FaultyDevice;

use crate::bytes::Reader;

const CAPACITY: u64 = 1 << 20;
const MAX_PATCHES: u8 = 16;

fn options(key: Option<Key>) -> StoreOptions {
    StoreOptions {
        writers: 1,
        checkpoint_percent: 50,
        direct_io: false,
        key,
        ..StoreOptions::default()
    }
}

/// The encrypted container's key.
fn key() -> Key {
    let raw: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(89) ^ 0xa5).collect();
    Key::from_bytes(&raw).expect("a valid key")
}

/// A container with data, a snapshot, a checkpoint and journal records after it.
fn pristine(encrypted: bool, compressed: bool) -> &'static [u8] {
    static IMAGES: [OnceLock<Vec<u8>>; 4] = [const { OnceLock::new() }; 4];
    let image = &IMAGES[usize::from(encrypted) * 2 + usize::from(compressed)];
    image.get_or_init(|| {
        let mut opts = CreateOptions::new(CAPACITY);
        opts.segment_bytes = 64 << 10;
        opts.encryption = encrypted.then(key);
        opts.compression = compressed.then_some(Codec::Zstd);
        let geo = opts.geometry().expect("geometry");
        let dev = Arc::new(FaultyDevice::new(geo.container_bytes()));
        Store::format(dev.as_ref(), &opts).expect("format");
        {
            let store = Store::open(dev.clone(), options(opts.encryption.clone()))
                .expect("open fresh container");
            let block: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
            let write = |offset| Op::Write {
                offset,
                data: &block,
            };
            store
                .write_batch(0, &[write(0), write(65536)])
                .expect("write");
            store.create_snapshot("base").expect("snapshot");
            store.checkpoint().expect("checkpoint");
            store
                .write_batch(
                    0,
                    &[
                        write(4096),
                        Op::Discard {
                            offset: 65536,
                            len: 4096,
                        },
                    ],
                )
                .expect("write after checkpoint");
        }
        dev.contents()
    })
}

/// Applies the input's patches to a copy of the pristine image, then opens, reads and checks it.
pub fn run(data: &[u8]) {
    let encrypted = data.first().is_some_and(|b| *b >= 0x80);
    let compressed = data.first().is_some_and(|b| *b & 0x40 != 0);
    let mut image = pristine(encrypted, compressed).to_vec();
    let len = image.len() as u64;
    let mut r = Reader::new(data);
    let n = r.u8() % (MAX_PATCHES + 1);
    for _ in 0..n {
        // Offsets biased toward the start, where the superblocks and journal live.
        let sel = r.u8();
        let raw = u64::from(r.u32());
        let offset = if sel & 1 == 0 { raw % 65536 } else { raw % len } as usize;
        let xor = sel & 2 != 0;
        let count = usize::from(r.u8() % 64) + 1;
        let bytes = r.bytes(count);
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(slot) = image.get_mut(offset + i) {
                *slot = if xor { *slot ^ b } else { b };
            }
        }
    }
    let dev = Arc::new(FaultyDevice::from_image(image));
    let Ok(store) = Store::open(dev, options(encrypted.then(key))) else {
        return;
    };
    let mut buf = vec![0u8; 8192];
    for offset in [0, 4096, 65536, CAPACITY - 8192] {
        let _ = store.read(offset, &mut buf);
    }
    let _ = store.fsck();
    let _ = store.write_batch(
        0,
        &[Op::Write {
            offset: 8192,
            data: &buf[..4096],
        }],
    );
}
