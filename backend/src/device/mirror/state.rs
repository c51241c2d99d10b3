//! The state a component of a mirror is in, and what each state allows.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a component stands relative to the mirror's current contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    /// Holds every acknowledged write; serves reads.
    InSync,
    /// Taken down on purpose; others track what it misses.
    Offline,
    /// Dropped out after an I/O error; others track what it misses.
    Failed,
    /// Taken down on purpose with a delta component collecting its writes.
    Maintenance,
    /// Back and reachable, waiting for its resync to start.
    Stale,
    /// Being copied to; takes new writes, serves reads only of chunks already in sync.
    Resyncing,
}

impl ComponentState {
    /// Whether the component is open and receives every write.
    pub fn receives_writes(self) -> bool {
        matches!(self, Self::InSync | Self::Stale | Self::Resyncing)
    }

    /// Whether the component is away and the others keep a tracking bitmap for it.
    pub fn is_absent(self) -> bool {
        matches!(self, Self::Offline | Self::Failed | Self::Maintenance)
    }

    /// Whether the component waits for or runs a resync.
    pub fn is_catching_up(self) -> bool {
        matches!(self, Self::Stale | Self::Resyncing)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InSync => "in_sync",
            Self::Offline => "offline",
            Self::Failed => "failed",
            Self::Maintenance => "maintenance",
            Self::Stale => "stale",
            Self::Resyncing => "resyncing",
        }
    }
}

impl fmt::Display for ComponentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_is_exactly_one_of_writable_or_absent() {
        use ComponentState::*;
        for s in [InSync, Offline, Failed, Maintenance, Stale, Resyncing] {
            assert_ne!(s.receives_writes(), s.is_absent(), "{s}");
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
    }
}
