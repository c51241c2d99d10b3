//! `GET /metrics`: every disk's counters in the Prometheus text exposition format.
//!
//! Nothing here sits on the data path: at scrape time the figures are read through the same
//! [`ControlHandler`] calls that serve `/v1/disks/{name}/stats` (which sum the per-batch
//! counters the queue workers publish) and written out by [`exposition`].

mod exposition;

use keel_protocol::control::{DiskInfo, DiskState, DiskStats};
use serde_json::Value;

use super::{ApiCall, ControlHandler};
use exposition::{Family, HistogramSample, Kind, Labels, write_histogram};

/// The `Content-Type` of a `/metrics` answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The path metrics are served at, on the control socket and on `metrics_listen`.
pub const PATH: &str = "/metrics";

/// Whether a request asks for the metrics (a query string is ignored).
pub fn is_metrics_request(method: &str, url: &str) -> bool {
    method == "GET" && url.split('?').next() == Some(PATH)
}

/// What one scrape read of one disk.
#[derive(Debug)]
struct DiskScrape {
    info: DiskInfo,
    /// `None` for a disk that failed to open.
    stats: Option<DiskStats>,
    /// The mirror status (`/v1/disks/{disk}/mirror`), for a mirrored disk.
    mirror: Option<Value>,
}

/// Every disk's figures at one moment.
#[derive(Debug)]
struct Scrape(Vec<DiskScrape>);

/// Reads every disk's figures through `handler` and encodes them.
pub fn render(handler: &dyn ControlHandler) -> String {
    let infos: Vec<DiskInfo> = handler
        .call(ApiCall::ListDisks)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let disks = infos
        .into_iter()
        .map(|info| {
            let serving = info.state == DiskState::Serving;
            let disk = info.name.clone();
            let stats = serving
                .then(|| handler.call(ApiCall::DiskStats { disk: disk.clone() }).ok())
                .flatten()
                .and_then(|v| serde_json::from_value(v).ok());
            // Disks without a mirror answer "unsupported": no mirror figures then.
            let mirror = serving
                .then(|| handler.call(ApiCall::MirrorStatus { disk }).ok())
                .flatten();
            DiskScrape {
                info,
                stats,
                mirror,
            }
        })
        .collect();
    Scrape(disks).write()
}

fn disk(name: &str) -> Labels {
    vec![("disk", name.to_string())]
}

fn with(mut labels: Labels, key: &'static str, value: impl ToString) -> Labels {
    labels.push((key, value.to_string()));
    labels
}

impl Scrape {
    fn write(&self) -> String {
        use Kind::{Counter, Gauge};
        let mut up = Family::new(
            "keel_disk_up",
            Gauge,
            "1 when the disk is served, 0 when it failed to open or another keeld holds it",
        );
        let mut connected = Family::new(
            "keel_disk_frontend_connected",
            Gauge,
            "1 while a vhost-user frontend is attached",
        );
        let mut size = Family::new("keel_disk_size_bytes", Gauge, "Capacity the guest sees");
        let mut requests = Family::new(
            "keel_disk_requests_total",
            Counter,
            "Requests served, by operation",
        );
        let mut bytes = Family::new(
            "keel_disk_io_bytes_total",
            Counter,
            "Guest bytes read and written",
        );
        let mut errors = Family::new(
            "keel_disk_errors_total",
            Counter,
            "Requests that failed: io = the engine failed it, invalid = malformed request, unsupported = answered UNSUPP",
        );
        let mut batches = Family::new(
            "keel_disk_batches_total",
            Counter,
            "Batches the queue workers submitted to the engine",
        );
        let mut batched = Family::new(
            "keel_disk_batched_requests_total",
            Counter,
            "Requests in all batches (divided by batches: the mean queue depth per batch)",
        );
        let mut max_batch = Family::new(
            "keel_disk_max_batch_requests",
            Gauge,
            "The largest batch seen",
        );
        let mut in_flight = Family::new(
            "keel_disk_in_flight_requests",
            Gauge,
            "Requests submitted to the engine and not completed yet",
        );
        let mut throttled = Family::new(
            "keel_disk_throttled_seconds_total",
            Counter,
            "Time the disk's queues held requests back for its I/O limits, summed over queues",
        );
        let mut throttled_requests = Family::new(
            "keel_disk_throttled_requests_total",
            Counter,
            "Requests that waited for the disk's I/O limits",
        );
        let mut journal = Family::new(
            "keel_store_journal_records_total",
            Counter,
            "Metadata transactions (journal records) written",
        );
        let mut device_written = Family::new(
            "keel_store_device_written_bytes_total",
            Counter,
            "Bytes written to the backing devices, data and metadata",
        );
        let mut amplification = Family::new(
            "keel_store_write_amplification",
            Gauge,
            "Device bytes written per guest byte written since keeld started",
        );
        let mut checksum = Family::new(
            "keel_store_checksum_errors_total",
            Counter,
            "Data blocks whose checksum did not match on read",
        );
        let mut deleting = Family::new(
            "keel_store_snapshots_being_deleted",
            Gauge,
            "Deleted snapshots whose blocks the cleaner is still giving back",
        );
        let mut space = Family::new(
            "keel_store_space_bytes",
            Gauge,
            "Where the container's space goes (kind = container, max_container, data, live, snapshot, metadata, reclaimable, free, spare)",
        );
        let mut used = Family::new(
            "keel_store_used_ratio",
            Gauge,
            "Held blocks as a fraction of the space guest data may use",
        );
        let mut space_state = Family::new(
            "keel_store_space_state",
            Gauge,
            "1 for the container's current space state (ok, low, critical)",
        );
        let mut space_waits = Family::new(
            "keel_store_space_waits_total",
            Counter,
            "Guest writes that had to wait for space",
        );
        let mut cleaner_blocks = Family::new(
            "keel_store_cleaner_moved_blocks_total",
            Counter,
            "Live blocks the cleaner copied elsewhere",
        );
        let mut cleaner_bytes = Family::new(
            "keel_store_cleaner_bytes_total",
            Counter,
            "Bytes the cleaner read from victim segments and wrote as copies (op = read, write)",
        );
        let mut cleaner_seconds = Family::new(
            "keel_store_cleaner_seconds_total",
            Counter,
            "Time the cleaner spent reading victims and writing copies with their map updates (op = read, write)",
        );
        let mut segments = Family::new(
            "keel_store_segments_total",
            Counter,
            "Segments cleaned (event = cleaned, cleaned_by_writer: by a guest writer short of space) and given back to the free list (event = freed)",
        );
        let mut checkpoint_seconds = Family::new(
            "keel_store_checkpoint_seconds_total",
            Counter,
            "Time checkpoints held the journal (while freezing the maps)",
        );
        let mut checkpoint_waits = Family::new(
            "keel_store_checkpoint_waits_total",
            Counter,
            "Batches that waited for a checkpoint (one freezing the maps, or a full journal)",
        );
        let mut checkpoint_wait_seconds = Family::new(
            "keel_store_checkpoint_wait_seconds_total",
            Counter,
            "Time batches waited for a checkpoint",
        );
        let mut checkpoint_max = Family::new(
            "keel_store_checkpoint_max_seconds",
            Gauge,
            "The longest checkpoint since keeld started",
        );
        let mut segment_waits = Family::new(
            "keel_store_segment_waits_total",
            Counter,
            "Guest batches that found no free segment",
        );
        let mut segment_wait_seconds = Family::new(
            "keel_store_segment_wait_seconds_total",
            Counter,
            "Time guest batches spent getting a segment",
        );
        let mut meta_gathers = Family::new(
            "keel_store_meta_gathers_total",
            Counter,
            "Times sparse metadata segments were gathered (their nodes marked for the next checkpoint)",
        );
        let mut paced = Family::new(
            "keel_store_paced_batches_total",
            Counter,
            "Guest batches delayed to the cleaner's pace because free space was low",
        );
        let mut paced_seconds = Family::new(
            "keel_store_paced_seconds_total",
            Counter,
            "Time guest batches were delayed to the cleaner's pace",
        );
        let mut pipelined = Family::new(
            "keel_store_pipelined_batches_total",
            Counter,
            "Guest batches planned beside one in flight on the same queue (outcome = planned), refused because planning would wait (refused), and of those refused after taking their blocks (refused_late)",
        );
        let mut meta_mark_seconds = Family::new(
            "keel_store_meta_mark_seconds_total",
            Counter,
            "Time marking those nodes held the maps (not the journal)",
        );
        let mut component = Family::new(
            "keel_mirror_component_state",
            Gauge,
            "1 for each mirror component's current state",
        );
        let mut dirty = Family::new(
            "keel_mirror_dirty_chunks",
            Gauge,
            "Chunks a mirror component misses (its tracking bitmap)",
        );
        let mut resync_total = Family::new(
            "keel_mirror_resync_chunks",
            Gauge,
            "Chunks the running resync of a component has to copy",
        );
        let mut resync_done = Family::new(
            "keel_mirror_resync_done_chunks",
            Gauge,
            "Chunks the running resync of a component has copied",
        );
        let mut resync_bytes = Family::new(
            "keel_mirror_resync_copied_bytes_total",
            Counter,
            "Bytes copied onto a component by resyncs since keeld started",
        );

        for d in &self.0 {
            let name = &d.info.name;
            up.add(disk(name), d.info.state == DiskState::Serving);
            connected.add(disk(name), d.info.connected);
            size.add(disk(name), d.info.size);
            if let Some(s) = &d.stats {
                for (op, n) in [
                    ("read", s.reads),
                    ("write", s.writes),
                    ("flush", s.flushes),
                    ("discard", s.discards),
                    ("write_zeroes", s.write_zeroes),
                    ("get_id", s.get_ids),
                ] {
                    requests.add(with(disk(name), "op", op), n);
                }
                bytes.add(with(disk(name), "op", "read"), s.read_bytes);
                bytes.add(with(disk(name), "op", "write"), s.written_bytes);
                errors.add(with(disk(name), "kind", "io"), s.errors);
                errors.add(with(disk(name), "kind", "invalid"), s.invalid_requests);
                errors.add(with(disk(name), "kind", "unsupported"), s.unsupported);
                batches.add(disk(name), s.batches);
                batched.add(disk(name), s.batched_requests);
                max_batch.add(disk(name), s.max_batch);
                in_flight.add(disk(name), s.in_flight);
                throttled.add(disk(name), s.throttled_seconds);
                throttled_requests.add(disk(name), s.throttled_requests);
                if d.info.engine == "keel" {
                    journal.add(disk(name), s.metadata_transactions);
                    device_written.add(disk(name), s.device_bytes_written);
                    checksum.add(disk(name), s.checksum_errors);
                    deleting.add(disk(name), s.snapshots_being_deleted);
                    if s.written_bytes > 0 {
                        amplification.add(
                            disk(name),
                            s.device_bytes_written as f64 / s.written_bytes as f64,
                        );
                    }
                }
                if let Some(r) = &s.space {
                    let kinds = [
                        ("container", Some(r.container_bytes)),
                        ("max_container", r.max_container_bytes),
                        ("data", Some(r.data_bytes)),
                        ("live", Some(r.live_bytes)),
                        ("snapshot", Some(r.snapshot_bytes)),
                        ("metadata", Some(r.metadata_bytes)),
                        ("reclaimable", Some(r.reclaimable_bytes)),
                        ("free", Some(r.free_bytes)),
                        ("spare", Some(r.spare_bytes)),
                    ];
                    for (kind, v) in kinds {
                        if let Some(v) = v {
                            space.add(with(disk(name), "kind", kind), v);
                        }
                    }
                    used.add(disk(name), r.used_percent / 100.0);
                    let state = serde_json::to_value(r.state).unwrap_or(Value::Null);
                    if let Some(state) = state.as_str() {
                        space_state.add(with(disk(name), "state", state), 1.0);
                    }
                    space_waits.add(disk(name), r.space_waits);
                }
                if let Some(c) = &s.cleaning {
                    let secs = |us: u64| us as f64 / 1e6;
                    cleaner_blocks.add(disk(name), c.blocks_moved);
                    cleaner_bytes.add(with(disk(name), "op", "read"), c.read_bytes);
                    cleaner_bytes.add(with(disk(name), "op", "write"), c.written_bytes);
                    cleaner_seconds.add(with(disk(name), "op", "read"), secs(c.read_us));
                    cleaner_seconds.add(with(disk(name), "op", "write"), secs(c.write_us));
                    for (event, n) in [
                        ("cleaned", c.segments_cleaned),
                        ("cleaned_by_writer", c.segments_cleaned_by_writers),
                        ("freed", c.segments_freed),
                        ("freed_by_mark", c.segments_freed_by_marks),
                    ] {
                        segments.add(with(disk(name), "event", event), n);
                    }
                    checkpoint_seconds.add(disk(name), secs(c.checkpoint_us));
                    checkpoint_max.add(disk(name), secs(c.checkpoint_max_us));
                    checkpoint_waits.add(disk(name), c.checkpoint_waits);
                    checkpoint_wait_seconds.add(disk(name), secs(c.checkpoint_wait_us));
                    segment_waits.add(disk(name), c.segment_waits);
                    segment_wait_seconds.add(disk(name), secs(c.segment_wait_us));
                    meta_gathers.add(disk(name), c.meta_gathers);
                    meta_mark_seconds.add(disk(name), secs(c.meta_mark_us));
                    paced.add(disk(name), c.paced_batches);
                    paced_seconds.add(disk(name), secs(c.paced_us));
                    for (outcome, n) in [
                        ("planned", c.batches_pipelined),
                        ("refused", c.pipelined_refused),
                        ("refused_late", c.pipelined_refused_late),
                    ] {
                        pipelined.add(with(disk(name), "outcome", outcome), n);
                    }
                }
            }
            if let Some(m) = &d.mirror {
                let comps = m["components"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                for c in comps {
                    let index = c["index"].as_u64().unwrap_or(0);
                    let at = || with(disk(name), "component", index);
                    if let Some(state) = c["state"].as_str() {
                        component.add(with(at(), "state", state), 1.0);
                    }
                    dirty.add(at(), c["dirty_chunks"].as_u64().unwrap_or(0));
                    resync_bytes.add(at(), c["resync_bytes_copied"].as_u64().unwrap_or(0));
                    if let Some(r) = c["resync"].as_object() {
                        let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
                        resync_total.add(at(), n("total_chunks"));
                        resync_done.add(at(), n("done_chunks"));
                    }
                }
            }
        }

        let mut out = String::new();
        for f in [
            &up,
            &connected,
            &size,
            &requests,
            &bytes,
            &errors,
            &batches,
            &batched,
            &max_batch,
            &in_flight,
            &throttled,
            &throttled_requests,
        ] {
            f.write(&mut out);
        }
        write_latency(&mut out, &self.0);
        for f in [
            &journal,
            &device_written,
            &amplification,
            &checksum,
            &deleting,
            &space,
            &used,
            &space_state,
            &space_waits,
            &cleaner_blocks,
            &cleaner_bytes,
            &cleaner_seconds,
            &segments,
            &checkpoint_seconds,
            &checkpoint_max,
            &checkpoint_waits,
            &checkpoint_wait_seconds,
            &segment_waits,
            &segment_wait_seconds,
            &meta_gathers,
            &meta_mark_seconds,
            &paced,
            &paced_seconds,
            &pipelined,
            &component,
            &dirty,
            &resync_total,
            &resync_done,
            &resync_bytes,
        ] {
            f.write(&mut out);
        }
        out
    }
}

/// The completion latency histograms of every served disk, by operation, in seconds.
fn write_latency(out: &mut String, disks: &[DiskScrape]) {
    let samples: Vec<HistogramSample> = disks
        .iter()
        .filter_map(|d| Some((d, d.stats.as_ref()?)))
        .flat_map(|(d, s)| {
            s.latency_by_op.iter().map(|op| HistogramSample {
                labels: with(disk(&d.info.name), "op", &op.op),
                buckets: op
                    .buckets
                    .iter()
                    .map(|b| {
                        let le = if b.le_us == u64::MAX {
                            f64::INFINITY
                        } else {
                            b.le_us as f64 / 1e6
                        };
                        (le, b.count)
                    })
                    .collect(),
                sum: op.sum_us as f64 / 1e6,
                count: op.buckets.last().map_or(0, |b| b.count),
            })
        })
        .collect();
    write_histogram(
        out,
        "keel_disk_request_latency_seconds",
        "Time from taking a request off the ring to completing it, by operation",
        &samples,
    );
}

#[cfg(test)]
mod tests;
