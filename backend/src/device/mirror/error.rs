//! The mirror layer's error type.

use super::state::ComponentState;
use std::io;

/// Everything a mirror operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("a mirror needs at least one component")]
    NoComponents,
    #[error("component {0} does not exist")]
    NoSuchComponent(usize),
    #[error("component {index} is {state}; {operation} needs {wanted}")]
    WrongState {
        index: usize,
        state: ComponentState,
        operation: &'static str,
        wanted: &'static str,
    },
    #[error("component {0} is the last in-sync copy and cannot be taken out")]
    LastInSync(usize),
    #[error("no in-sync component or delta holds the data component {0} needs")]
    NoSource(usize),
    #[error("no component can serve the request")]
    NoUsableComponent,
    #[error("component {index} holds {have} bytes, the disk needs {need}")]
    TooSmall { index: usize, have: u64, need: u64 },
    #[error("chunk size {0} must be a power of two of at least 4096 bytes")]
    BadChunkSize(u64),
    #[error("metadata of component {index} belongs to mirror set {found}, not {expected}")]
    ForeignSet {
        index: usize,
        found: String,
        expected: String,
    },
    #[error("the mirror set's metadata {0}")]
    MetadataMismatch(String),
    #[error("mirror metadata of {0} bytes does not fit a {1}-byte slot")]
    MetadataTooLarge(usize, u64),
    #[error("mirror metadata is corrupt: {0}")]
    MetadataCorrupt(String),
    #[error("no component's metadata could be written")]
    MetadataUnwritable,
    #[error("the resync of component {index} failed: {why}")]
    ResyncFailed { index: usize, why: String },
}

impl MirrorError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<MirrorError> for io::Error {
    fn from(e: MirrorError) -> Self {
        match e {
            MirrorError::Io { source, .. } => source,
            other => io::Error::other(other),
        }
    }
}
