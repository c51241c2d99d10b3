//! The two codecs a container may use, by name and by superblock number.

use super::super::layout::BLOCK_SIZE;
use super::dict::Dictionary;
use lz4_flex::block::CompressTable;
use std::cell::RefCell;
use zstd::zstd_safe::{CCtx, DCtx};

/// zstd level without a dictionary: fast, still well ahead of lz4 on ratio.
pub(super) const ZSTD_LEVEL: i32 = 1;
/// zstd level with the container's dictionary: on text it takes a block from about 1750
/// bytes (level 1) to about 1570, two 64-byte granules less per block, for more CPU per
/// compressed block. Data that does not compress never trains a dictionary, so it never
/// pays this.
pub(super) const DICT_LEVEL: i32 = 3;

/// How a compressed container's packed slots are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Lz4,
    Zstd,
}

impl Codec {
    /// The superblock's `compression` field (0: none).
    pub fn number(self) -> u32 {
        match self {
            Codec::Lz4 => 1,
            Codec::Zstd => 2,
        }
    }

    /// The codec a superblock's `compression` field names; `None` for 0 or an unknown value.
    pub fn from_number(n: u32) -> Option<Self> {
        match n {
            1 => Some(Codec::Lz4),
            2 => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// The name users give (`--compression`, the `compression` config key).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }

    /// Parses a user's setting: `Ok(None)` for "none".
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        match s {
            "none" => Ok(None),
            "lz4" => Ok(Some(Codec::Lz4)),
            "zstd" => Ok(Some(Codec::Zstd)),
            other => Err(format!(
                "unknown compression {other:?} (use \"none\", \"lz4\" or \"zstd\")"
            )),
        }
    }

    /// The name of an optional codec ("none" for none).
    pub fn name_of(c: Option<Self>) -> &'static str {
        c.map_or("none", Self::name)
    }

    /// Compresses one block into `out` (room for the codec's worst case: two blocks), with
    /// `dict` when given (zstd only); `None` if that fails.
    pub fn compress(
        self,
        dict: Option<&Dictionary>,
        block: &[u8],
        out: &mut [u8],
    ) -> Option<usize> {
        match self {
            Codec::Lz4 => LZ4.with(|t| {
                let mut t = t.borrow_mut();
                lz4_flex::block::compress_into_with_table(block, out, &mut t).ok()
            }),
            Codec::Zstd => ZSTD.with(|z| {
                let mut z = z.borrow_mut();
                let (c, _) = z.as_mut()?;
                match dict {
                    Some(d) => c.compress_using_cdict(out, block, d.cdict()),
                    None => c.compress(out, block, ZSTD_LEVEL),
                }
                .ok()
            }),
        }
    }

    /// Decompresses `body` into `out` (with `dict`, which only zstd slots use), returning
    /// the bytes written.
    pub fn decompress(
        self,
        dict: Option<&Dictionary>,
        body: &[u8],
        out: &mut [u8],
    ) -> Result<usize, String> {
        debug_assert_eq!(out.len(), BLOCK_SIZE);
        match (self, dict) {
            (Codec::Lz4, None) => {
                lz4_flex::block::decompress_into(body, out).map_err(|e| e.to_string())
            }
            (Codec::Lz4, Some(_)) => Err("an lz4 slot says it uses a dictionary".into()),
            (Codec::Zstd, dict) => ZSTD.with(|z| {
                let mut z = z.borrow_mut();
                let (_, d) = z.as_mut().ok_or("no zstd context")?;
                match dict {
                    Some(dict) => d.decompress_using_ddict(out, body, dict.ddict()),
                    None => d.decompress(out, body),
                }
                .map_err(|code| zstd::zstd_safe::get_error_name(code).to_string())
            }),
        }
    }
}

type ZstdContexts = (CCtx<'static>, DCtx<'static>);

thread_local! {
    /// zstd contexts are costly to make: each thread keeps one of each (a dictionary is
    /// passed with each call, so one context serves every container).
    static ZSTD: RefCell<Option<ZstdContexts>> =
        RefCell::new(CCtx::try_create().zip(DCtx::try_create()));

    /// lz4's hash table, kept by each thread and cleared per block. Made anew for every
    /// block, it was an 8 KiB zeroed allocation that the heap often grew into with an
    /// mprotect and page faults: most of an attempt's time on data that does not shrink.
    static LZ4: RefCell<CompressTable> = RefCell::new(CompressTable::default());
}
