//! A keel container's space report as `keel stats` and `keel info` print it.

use keel_protocol::control::SpaceReport;

/// Bytes with a binary unit, one decimal.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The report's lines, without a trailing newline.
pub fn space_lines(s: &SpaceReport) -> Vec<String> {
    let mut out = vec![format!(
        "{:<23} {}: {:.1}% of the usable space held",
        "space",
        s.state.as_str(),
        s.used_percent
    )];
    let rows = [
        ("  live", s.live_bytes, "the disk's own blocks"),
        (
            "  pinned by snapshots",
            s.snapshot_bytes,
            "freed by deleting snapshots",
        ),
        ("  metadata", s.metadata_bytes, "maps, usage table"),
        (
            "  reclaimable",
            s.reclaimable_bytes,
            "dead blocks, unfilled open segments",
        ),
        ("  free", s.free_bytes, "for guest writes"),
        (
            "  spare",
            s.spare_bytes,
            "kept for checkpoints and the cleaner",
        ),
    ];
    for (k, v, why) in rows {
        out.push(format!("{k:<23} {:>10}  ({why})", human(v)));
    }
    let grows = match s.max_container_bytes {
        Some(max) => format!(", grows up to {}", human(max)),
        None => String::new(),
    };
    out.push(format!(
        "{:<23} {:>10}  ({} of data space{grows})",
        "  container",
        human(s.container_bytes),
        human(s.data_bytes)
    ));
    if s.space_waits > 0 {
        out.push(format!("{:<23} {}", "  writes that waited", s.space_waits));
    }
    if s.stale {
        out.push(
            "  (read while another process has the container open: the figures may be \
             slightly stale)"
                .into(),
        );
    }
    out
}
