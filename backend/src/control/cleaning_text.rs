//! A keel disk's cleaning counters as `keel stats` prints them: where write time goes besides
//! the guest's own data.

use keel_protocol::control::CleaningStats;

/// Microseconds as milliseconds with one decimal.
fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// The counters' lines, without a trailing newline.
pub fn cleaning_lines(c: &CleaningStats) -> Vec<String> {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / f64::from(1 << 20));
    let rows = [
        (
            "write amplification",
            format!("{:.3}", c.write_amplification),
        ),
        (
            "  cleaner moved",
            format!(
                "{} blocks from {} segments ({} of them by guest writers)",
                c.blocks_moved, c.segments_cleaned, c.segments_cleaned_by_writers
            ),
        ),
        (
            "  cleaner read",
            format!("{} in {}", mib(c.read_bytes), ms(c.read_us)),
        ),
        (
            "  cleaner wrote",
            format!(
                "{} in {} (maps included)",
                mib(c.written_bytes),
                ms(c.write_us)
            ),
        ),
        ("  segments freed", c.segments_freed.to_string()),
        (
            "  freed by marks",
            format!(
                "{} in {} releases",
                c.segments_freed_by_marks, c.mark_releases
            ),
        ),
        (
            "  checkpoints",
            format!(
                "{} in {} (longest {})",
                c.checkpoints,
                ms(c.checkpoint_us),
                ms(c.checkpoint_max_us)
            ),
        ),
        (
            "  waits for checkpoint",
            format!(
                "{} batches, {}",
                c.checkpoint_waits,
                ms(c.checkpoint_wait_us)
            ),
        ),
        (
            "  waits for a segment",
            format!("{} batches, {}", c.segment_waits, ms(c.segment_wait_us)),
        ),
        (
            "  paced to the cleaner",
            format!("{} batches, {}", c.paced_batches, ms(c.paced_us)),
        ),
        (
            "  metadata gathered",
            format!(
                "{} times, {} nodes marked in {}",
                c.meta_gathers,
                c.meta_nodes_marked,
                ms(c.meta_mark_us)
            ),
        ),
        (
            "  pipelined batches",
            format!(
                "{} planned beside one in flight, {} refused ({} after taking blocks)",
                c.batches_pipelined, c.pipelined_refused, c.pipelined_refused_late
            ),
        ),
    ];
    rows.into_iter()
        .map(|(k, v)| format!("{k:<23} {v}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_shown() {
        let c = CleaningStats {
            blocks_moved: 11,
            read_bytes: 3 << 20,
            written_bytes: 1 << 20,
            read_us: 1500,
            write_us: 2500,
            segments_cleaned: 7,
            segments_cleaned_by_writers: 2,
            segments_freed: 6,
            mark_releases: 2,
            segments_freed_by_marks: 5,
            checkpoints: 4,
            checkpoint_us: 40_000,
            checkpoint_max_us: 12_300,
            checkpoint_waits: 3,
            checkpoint_wait_us: 2_400,
            segment_waits: 9,
            segment_wait_us: 81_000,
            meta_gathers: 2,
            meta_nodes_marked: 900,
            meta_mark_us: 3_100,
            paced_batches: 12,
            paced_us: 4_500,
            batches_pipelined: 40,
            pipelined_refused: 6,
            pipelined_refused_late: 1,
            write_amplification: 1.25,
        };
        let text = cleaning_lines(&c).join("\n");
        for want in [
            "1.250",
            "11 blocks from 7 segments (2 of them by guest writers)",
            "3.0 MiB in 1.5 ms",
            "1.0 MiB in 2.5 ms",
            "  segments freed        6",
            "  freed by marks        5 in 2 releases",
            "4 in 40.0 ms (longest 12.3 ms)",
            "9 batches, 81.0 ms",
            "  waits for checkpoint  3 batches, 2.4 ms",
            "  paced to the cleaner  12 batches, 4.5 ms",
            "  metadata gathered     2 times, 900 nodes marked in 3.1 ms",
            "  pipelined batches     40 planned beside one in flight, 6 refused (1 after taking blocks)",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
    }
}
