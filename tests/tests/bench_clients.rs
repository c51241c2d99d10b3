//! The benchmark load loop (`keel_tests::bench`) through both client libraries against keeld:
//! every pattern, several queues, both completion modes, and errors that come back as errors.

use std::time::Duration;

use keel_tests::bench::{self, ClientKind, Pattern, RunOptions, Workload};
use keel_tests::keeld::{InProcess, null_disk, raw_disk};

const SPAN: u64 = 16 << 20;

fn workload(pattern: Pattern, block_size: usize, queue_depth: usize) -> Workload {
    Workload {
        pattern,
        block_size,
        queue_depth,
        span: SPAN,
        runtime: Duration::from_millis(150),
        warmup: Duration::from_millis(20),
    }
}

#[test]
fn both_clients_run_every_pattern_on_two_queues_in_both_modes() {
    let keeld = InProcess::start(&raw_disk("r", "16M", "queues = 2"));
    for client in [ClientKind::Keel, ClientKind::Blkio] {
        for poll in [false, true] {
            for pattern in [
                Pattern::RandRead,
                Pattern::RandWrite,
                Pattern::SeqRead,
                Pattern::SeqWrite,
            ] {
                let opts = RunOptions {
                    queues: 2,
                    ..RunOptions::new(client, poll)
                };
                let w = workload(pattern, 8192, 4);
                let r = bench::run_with(&keeld.socket("r"), &w, &opts)
                    .unwrap_or_else(|e| panic!("{client:?} poll={poll} {}: {e}", w.label()));
                let m = r.measurement;
                assert!(
                    r.ops > 0,
                    "{client:?} poll={poll} {}: no requests",
                    w.label()
                );
                assert!((m.iops - r.ops as f64 / 0.15).abs() < 1.0);
                assert!((m.mib_per_s - m.iops * 8192.0 / f64::from(1 << 20)).abs() < 1e-6);
                assert!(m.lat_p50_us > 0.0 && m.lat_p50_us <= m.lat_p99_us);
                assert!(m.lat_p99_us <= r.lat_p999_us && r.lat_p999_us <= r.lat_max_us);
            }
        }
    }
}

#[test]
fn keel_client_runs_without_indirect_descriptors_or_event_idx() {
    let keeld = InProcess::start(&null_disk("n", "16M", ""));
    for (indirect, event_idx) in [(false, true), (true, false), (false, false)] {
        let opts = RunOptions {
            indirect,
            event_idx,
            ..RunOptions::new(ClientKind::Keel, true)
        };
        let r = bench::run_with(
            &keeld.socket("n"),
            &workload(Pattern::RandRead, 4096, 32),
            &opts,
        )
        .unwrap();
        assert!(r.ops > 0);
    }
}

#[test]
fn writes_to_a_read_only_disk_fail_with_an_error() {
    let keeld = InProcess::start(&null_disk("ro", "16M", "read_only = true"));
    for client in [ClientKind::Keel, ClientKind::Blkio] {
        let r = bench::run_with(
            &keeld.socket("ro"),
            &workload(Pattern::RandWrite, 4096, 2),
            &RunOptions::new(client, false),
        );
        assert!(
            r.is_err(),
            "{client:?}: writes to a read-only disk succeeded"
        );
    }
}

#[test]
fn a_span_beyond_the_disk_or_an_odd_block_size_is_refused() {
    let keeld = InProcess::start(&null_disk("n", "8M", ""));
    for client in [ClientKind::Keel, ClientKind::Blkio] {
        let opts = RunOptions::new(client, false);
        let err = bench::run_with(
            &keeld.socket("n"),
            &workload(Pattern::RandRead, 4096, 1),
            &opts,
        )
        .unwrap_err();
        assert!(err.contains("fit the disk"), "{client:?}: {err}");
        let err = bench::run_with(
            &keeld.socket("n"),
            &workload(Pattern::RandRead, 1000, 1),
            &opts,
        )
        .unwrap_err();
        assert!(err.contains("block size 1000"), "{client:?}: {err}");
    }
}
