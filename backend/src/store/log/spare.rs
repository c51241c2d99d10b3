//! Spare data space: the room a container has beyond its disk's capacity, chosen at creation.
//! The cleaner lives on it: with more spare, the segments it empties hold fewer live blocks,
//! so it copies less per segment freed (write amplification falls, steady-state random writes
//! rise) at the cost of host space. `keel resize` keeps the percentage a container has.

use crate::store::layout::{BLOCK, Geometry};

/// Spare space of a container made with no choice given, in percent of the capacity: guest
/// data then fills 80 % of the data space. A 2 GiB disk overwritten at random after a
/// sequential fill costs the cleaner 1.71 moved blocks per guest block at 25 %, 2.22 at 20 %
/// (docs/benchmarks.md, "A default spare of 25 %"), for 4 % more host space.
pub const DEFAULT_SPARE_PERCENT: u64 = 25;
/// The least spare a container's disk grows down to in place (`keel resize` on a container
/// that cannot grow).
pub const MIN_SPARE_PERCENT: u64 = 10;
/// The least spare a container is made with: with 10 %, a 1 GiB disk overwritten at random
/// after a sequential fill ran out of victims the cleaner may take (at most 90 % live) in two
/// runs of three, and guest writes failed (with the cleaner then holding 24 segments free; it
/// holds a share of the spare now, but 10 % leaves little room either way).
pub const MIN_CREATE_SPARE_PERCENT: u64 = 15;
/// The most spare accepted at creation (five times the disk in all).
pub const MAX_SPARE_PERCENT: u64 = 400;

/// Spare space as asked for: a percentage of the capacity, or bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spare {
    Percent(u64),
    Bytes(u64),
}

impl Default for Spare {
    fn default() -> Self {
        Self::Percent(DEFAULT_SPARE_PERCENT)
    }
}

impl Spare {
    /// `"25%"` (a percentage of the disk's size) or a size in Keel's size grammar (`"512M"`,
    /// `"1073741824"`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        match t.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse()
                .map(Self::Percent)
                .map_err(|_| format!("spare {text:?}: not a percentage (e.g. \"25%\")")),
            None => keel_protocol::parse_size(t)
                .map(Self::Bytes)
                .map_err(|e| format!("spare {text:?}: {e} (or a percentage, e.g. \"25%\")")),
        }
    }

    /// The whole percentage of a `capacity`-byte disk this is (bytes round up), checked
    /// against [`MIN_CREATE_SPARE_PERCENT`] ..= [`MAX_SPARE_PERCENT`].
    pub fn percent_of(self, capacity: u64) -> Result<u64, String> {
        let p = match self {
            Self::Percent(p) => p,
            Self::Bytes(b) => {
                u64::try_from((u128::from(b) * 100).div_ceil(u128::from(capacity.max(1))))
                    .unwrap_or(u64::MAX)
            }
        };
        if (MIN_CREATE_SPARE_PERCENT..=MAX_SPARE_PERCENT).contains(&p) {
            Ok(p)
        } else {
            Err(format!(
                "spare of {p}% of the disk is outside \
                 {MIN_CREATE_SPARE_PERCENT}%..={MAX_SPARE_PERCENT}% (below, the cleaner copies \
                 nearly everything it reads, and may find nothing to clean)"
            ))
        }
    }
}

/// Data segments beyond the checkpoints' and the cleaner's reserve that a container's
/// geometry sets aside for guest data and its spare (the `+ 4` of creation included).
fn data_segments_for_guest(geo: &Geometry) -> u64 {
    geo.data_segments()
        .saturating_sub(geo.reserved_segments() + 4)
}

/// Spare segments: those beyond the capacity, the reserve and creation's slack.
pub fn spare_segments(geo: &Geometry) -> u64 {
    data_segments_for_guest(geo).saturating_sub(geo.capacity_blocks().div_ceil(geo.seg_blocks))
}

/// The spare a container's geometry gives its disk, in whole percent of the capacity
/// (rounded down: a container made with `p`% reads back at least `p`%).
pub fn spare_percent(geo: &Geometry) -> u64 {
    let cap = (geo.capacity / BLOCK).max(1);
    let data = data_segments_for_guest(geo) * geo.seg_blocks;
    data.saturating_sub(cap) * 100 / cap
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CreateOptions;

    #[test]
    fn parses_percentages_and_sizes() {
        assert_eq!(Spare::parse("25%"), Ok(Spare::Percent(25)));
        assert_eq!(Spare::parse(" 40 % "), Ok(Spare::Percent(40)));
        assert_eq!(Spare::parse("512M"), Ok(Spare::Bytes(512 << 20)));
        assert_eq!(Spare::parse("4096"), Ok(Spare::Bytes(4096)));
        assert!(Spare::parse("lots").is_err());
        assert!(Spare::parse("x%").is_err());
        assert_eq!(Spare::Bytes(512 << 20).percent_of(2 << 30), Ok(25));
        assert_eq!(Spare::Bytes((512 << 20) + 1).percent_of(2 << 30), Ok(26));
        assert!(Spare::Percent(10).percent_of(1 << 30).is_err());
        assert_eq!(Spare::Percent(15).percent_of(1 << 30), Ok(15));
        assert!(Spare::Percent(401).percent_of(1 << 30).is_err());
        assert!(Spare::Bytes(u64::MAX).percent_of(4096).is_err());
    }

    #[test]
    fn a_new_container_reads_back_its_spare() {
        for cap in [1u64 << 20, 64 << 20, 2 << 30, 100 << 30] {
            for p in [15, 20, 25, 50, 100] {
                let mut o = CreateOptions::new(cap);
                o.overprovision_percent = p;
                let geo = o.geometry().unwrap();
                let got = spare_percent(&geo);
                // At most one segment more than asked for.
                let slack = geo.seg_blocks * 100 / (cap / BLOCK) + 1;
                assert!(got >= p && got <= p + slack, "{cap} {p}%: {got}%");
            }
        }
    }
}
