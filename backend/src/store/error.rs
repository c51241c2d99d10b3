//! The store's one error type; the engine maps every variant to a virtio status.

use std::io;

/// Everything the storage core can answer instead of data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("device I/O failed: {0}")]
    Io(#[from] io::Error),
    /// Another process holds the container's lock; the text names the file and the holder.
    #[error("the container is in use: {0}")]
    InUse(String),
    #[error("no space left in the container")]
    NoSpace,
    #[error("data checksum mismatch in block at LBA {lba} (physical block {pba})")]
    DataChecksum { lba: u64, pba: u64 },
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("unsupported container: {0}")]
    Unsupported(String),
    #[error("request {offset}+{len} is outside the disk's {capacity} bytes")]
    OutOfRange {
        offset: u64,
        len: u64,
        capacity: u64,
    },
    #[error("request {offset}+{len} is not aligned to 512-byte sectors")]
    Misaligned { offset: u64, len: u64 },
    #[error(
        "the container is encrypted: key required (--key-file, or key_file in the disk's config)"
    )]
    KeyRequired,
    #[error("wrong key: the key does not match the container's key check value")]
    WrongKey,
    /// A key was given for a container made without encryption: encryption is chosen when a
    /// container is made and never changed in place.
    #[error(
        "the container is not encrypted, and encryption cannot be turned on in place: \
         `keel export` it, then `keel import` it into a container made with \
         `keel create --encryption aes-xts-256 --key-file PATH`"
    )]
    NotEncrypted,
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A metadata write failed or a panic poisoned a lock: the state in memory may not be
    /// what is on the device, so nothing more is served from it.
    #[error(
        "the store stopped after an earlier failure (a metadata write, or a panic mid-update); \
         reopen it to recover"
    )]
    Failed,
    /// A plan that may not wait ([`Store::try_plan_batch`](crate::store::Store::try_plan_batch))
    /// found it would have to: the caller plans the batch again once it may wait. Never
    /// answered to a guest.
    #[error("the batch would wait for the store")]
    WouldWait,
}

impl StoreError {
    pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            what,
            detail: detail.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;
