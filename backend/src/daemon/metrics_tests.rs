//! The metrics exposition over a real daemon's disks, checked by Prometheus' own linter.

use super::DaemonControl;
use super::disks::DiskSet;
use super::served::start_disk;
use crate::config::Config;
use crate::control::metrics::render;
use crate::testing::promtool_check;
use crate::vhost::stats::{BatchCounts, LatencyOp, LocalLatency};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A daemon's control handler over a keel disk and a two-way raw mirror, with some traffic
/// counted on the keel disk.
fn control(dir: &Path) -> DaemonControl {
    let toml = "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\n\
                path = \"k.keel\"\nsize = \"4M\"\n\
                [[disk]]\nname = \"m\"\nsocket = \"m.sock\"\nengine = \"raw\"\n\
                mirror = [\"m0.img\", \"m1.img\"]\nsize = \"1M\"\n";
    let config = Config::parse(toml, &dir.join("keel.toml"), dir).unwrap();
    let served = config
        .disks
        .iter()
        .map(|disk| start_disk(disk).unwrap())
        .collect::<Vec<_>>();
    let keel_stats = Arc::clone(served[0].stats());
    keel_stats.record_batch(&BatchCounts {
        reads: 3,
        writes: 2,
        read_bytes: 3 * 4096,
        written_bytes: 2 * 4096,
        requests: 5,
        ..Default::default()
    });
    let mut by_op: [LocalLatency; LatencyOp::COUNT] = Default::default();
    for us in [10, 20, 300, 4000, 50_000] {
        by_op[LatencyOp::Read as usize].record(Duration::from_micros(us));
    }
    keel_stats.merge_latency(&by_op);
    DaemonControl::new(Arc::new(DiskSet::new(served, Vec::new())))
}

fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
}

#[test]
fn every_disk_is_reported_and_promtool_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = render(&control(dir.path()));
    promtool_check(&text);
    for (series, value) in [
        (r#"keel_disk_up{disk="k"}"#, "1"),
        (r#"keel_disk_up{disk="m"}"#, "1"),
        (r#"keel_disk_size_bytes{disk="k"}"#, "4194304"),
        (r#"keel_disk_requests_total{disk="k",op="read"}"#, "3"),
        (r#"keel_disk_requests_total{disk="k",op="write"}"#, "2"),
        (r#"keel_disk_io_bytes_total{disk="k",op="write"}"#, "8192"),
        (r#"keel_disk_batches_total{disk="k"}"#, "1"),
        (r#"keel_disk_batched_requests_total{disk="k"}"#, "5"),
        (
            r#"keel_disk_request_latency_seconds_count{disk="k",op="read"}"#,
            "5",
        ),
        (
            r#"keel_disk_request_latency_seconds_sum{disk="k",op="read"}"#,
            "0.05433",
        ),
        (
            r#"keel_disk_request_latency_seconds_bucket{disk="k",op="read",le="0.000016"}"#,
            "1",
        ),
        (
            r#"keel_disk_request_latency_seconds_bucket{disk="k",op="read",le="+Inf"}"#,
            "5",
        ),
        (r#"keel_store_space_state{disk="k",state="ok"}"#, "1"),
        (
            r#"keel_mirror_component_state{disk="m",component="1",state="in_sync"}"#,
            "1",
        ),
        (r#"keel_mirror_dirty_chunks{disk="m",component="0"}"#, "0"),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert_eq!(
        sample(
            &text,
            r#"keel_disk_request_latency_seconds_count{disk="k",op="write"}"#
        ),
        Some("0")
    );
    // The keel engine's store figures, absent for the raw mirror.
    assert!(sample(&text, r#"keel_store_journal_records_total{disk="k"}"#).is_some());
    assert!(sample(&text, r#"keel_store_space_bytes{disk="k",kind="free"}"#).is_some());
    assert!(sample(&text, r#"keel_store_journal_records_total{disk="m"}"#).is_none());
}
