//! Snapshot space on a served keel disk: a 1 GiB disk with the default spare, written once,
//! then snapshotted and overwritten at random. Without `max_size` the API reports the space
//! state going `low`, then `critical` (and `ok` again once the snapshot is deleted); with
//! `max_size` the container file grows and no guest write fails.

use keel_backend::control::client::ControlClient;
use keel_protocol::control::{CreateSnapshot, DiskInfo, DiskStats, SnapshotInfo, SpaceState};
use keel_tests::client::Client;
use keel_tests::keeld::InProcess;
use keel_tests::pattern;

const CHUNK: usize = 256 << 10;
const DEPTH: usize = 8;
const DISK: u64 = 1 << 30;
const CHUNKS: u64 = DISK / CHUNK as u64;

/// A keel disk with the defaults users get (O_DIRECT, default spare and thresholds).
fn config(extra: &str) -> String {
    format!(
        "[server]\ncontrol_socket = \"keel.sock\"\n\n[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\n\
         engine = \"keel\"\npath = \"k.keel\"\nsize = \"1G\"\n{extra}\n"
    )
}

/// Writes chunks `order` yields, `DEPTH` at a time; after each round `each` sees the stats
/// and says whether to go on. Returns the failed writes' count.
fn write_chunks(
    c: &mut Client,
    order: impl Iterator<Item = u64>,
    round: u64,
    mut each: impl FnMut() -> bool,
) -> usize {
    let mut failed = 0;
    let order: Vec<u64> = order.collect();
    for group in order.chunks(DEPTH) {
        for (i, &chunk) in group.iter().enumerate() {
            let data = pattern(round * CHUNKS + chunk, CHUNK);
            c.buffer(0)[i * CHUNK..(i + 1) * CHUNK].copy_from_slice(&data);
            c.enqueue_write(0, chunk * CHUNK as u64, i * CHUNK, CHUNK, i);
        }
        failed += c
            .wait(0, group.len())
            .iter()
            .filter(|&&(_, r)| r != 0)
            .count();
        if !each() {
            break;
        }
    }
    failed
}

/// Chunks in a scattered order that visits each once (an odd stride is coprime to 2^n).
fn scattered() -> impl Iterator<Item = u64> {
    (0..CHUNKS).map(|i| (i * 2_654_435_761) % CHUNKS)
}

fn stats(api: &ControlClient) -> DiskStats {
    api.get("/v1/disks/k/stats").unwrap()
}

fn snapshot(api: &ControlClient, name: &str) {
    let _: SnapshotInfo = api
        .post(
            "/v1/disks/k/snapshots",
            &CreateSnapshot { name: name.into() },
        )
        .unwrap();
}

#[test]
fn snapshot_space_goes_low_then_critical_and_comes_back_when_the_snapshot_goes() {
    let keeld = InProcess::start(&config(""));
    let api = ControlClient::new(&keeld.dir().join("keel.sock"));
    let mut c = Client::connect(&keeld.socket("k"), 1, DEPTH * CHUNK).unwrap();
    let fresh = stats(&api).space.expect("a keel disk reports its space");
    assert_eq!(fresh.state, SpaceState::Ok);
    assert_eq!(fresh.max_container_bytes, None);
    assert_eq!(write_chunks(&mut c, 0..CHUNKS, 0, || true), 0);
    let full = stats(&api).space.unwrap();
    assert_eq!(
        full.state,
        SpaceState::Ok,
        "a full disk alone is fine: {full:?}"
    );
    assert_eq!(full.live_bytes, DISK);

    snapshot(&api, "before");
    let mut seen = vec![SpaceState::Ok];
    let failed = write_chunks(&mut c, scattered(), 1, || {
        let s = stats(&api).space.unwrap();
        if seen.last() != Some(&s.state) {
            seen.push(s.state);
        }
        s.state != SpaceState::Critical
    });
    assert_eq!(failed, 0, "no write fails before the state is critical");
    assert_eq!(
        seen,
        [SpaceState::Ok, SpaceState::Low, SpaceState::Critical]
    );
    let critical = stats(&api).space.unwrap();
    assert!(critical.snapshot_bytes > 0, "{critical:?}");
    let disks: Vec<DiskInfo> = api.get("/v1/disks").unwrap();
    assert_eq!(
        disks[0].space.as_ref().map(|s| s.state),
        Some(SpaceState::Critical)
    );

    let _: serde_json::Value = api.delete("/v1/disks/k/snapshots/before").unwrap();
    // The deleted snapshot's blocks come back in the background; a write needing space
    // takes them back at once, so writing on shows the state recover.
    let failed = write_chunks(&mut c, 0..64, 2, || true);
    assert_eq!(failed, 0);
    let mut after = stats(&api).space.unwrap();
    for _ in 0..3000 {
        if after.snapshot_bytes == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        after = stats(&api).space.unwrap();
    }
    assert_eq!(
        after.snapshot_bytes, 0,
        "the snapshot's blocks came back: {after:?}"
    );
    assert_eq!(after.state, SpaceState::Ok, "{after:?}");
}

#[test]
fn with_max_size_the_container_grows_and_no_write_fails() {
    let keeld = InProcess::start(&config("max_size = \"3G\""));
    let api = ControlClient::new(&keeld.dir().join("keel.sock"));
    let path = keeld.dir().join("k.keel");
    let start = std::fs::metadata(&path).unwrap().len();
    let mut c = Client::connect(&keeld.socket("k"), 1, DEPTH * CHUNK).unwrap();
    assert_eq!(write_chunks(&mut c, 0..CHUNKS, 0, || true), 0);
    snapshot(&api, "before");
    // More than the container held free: three quarters of the disk overwritten.
    let failed = write_chunks(&mut c, scattered().take(CHUNKS as usize * 3 / 4), 1, || {
        true
    });
    assert_eq!(failed, 0, "no write fails while the container can grow");
    let s = stats(&api).space.unwrap();
    assert_eq!(s.snapshot_bytes, DISK * 3 / 4, "{s:?}");
    assert!(s.container_bytes > start, "{s:?}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), s.container_bytes);
    assert!(
        s.max_container_bytes
            .is_some_and(|m| m <= 3 << 30 && m > s.container_bytes)
    );
    assert_eq!(s.state, SpaceState::Ok, "measured against max_size: {s:?}");
    // Chunk 0 comes first in the scattered order: it holds the second round's data.
    assert_eq!(c.read(0, 0, CHUNK).unwrap(), pattern(CHUNKS, CHUNK));
}

/// `keel info` refuses a container keeld holds; `keel info -U` reads it anyway, without its
/// lock, shows its space and says the figures may be stale; keeld keeps serving.
#[test]
fn keel_info_force_share_reads_a_served_container() {
    let keeld = InProcess::start(&config("").replace("1G", "64M"));
    let mut c = Client::connect(&keeld.socket("k"), 1, DEPTH * CHUNK).unwrap();
    c.write(0, 0, &pattern(7, CHUNK)).unwrap();
    c.flush(0).unwrap();
    let keel = |args: &[&str]| {
        std::process::Command::new(keel_tests::keeld::keel_binary())
            .current_dir(keeld.dir())
            .env_remove("KEEL_CONTROL")
            .args(args)
            .output()
            .expect("run keel")
    };
    let refused = keel(&["info", "k.keel"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("in use") || why.contains("locked"), "{why}");

    let shared = keel(&["info", "-U", "k.keel"]);
    assert!(shared.status.success(), "{shared:?}");
    let text = String::from_utf8_lossy(&shared.stdout);
    assert!(text.contains("space                   ok"), "{text}");
    assert!(text.contains("slightly stale"), "{text}");
    let json = keel(&["info", "--force-share", "--json", "k.keel"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["space"]["stale"], true);
    assert_eq!(v["space"]["live_bytes"], CHUNK as u64);
    assert_eq!(v["space"]["state"], "ok");
    // keeld's lock and disk are untouched.
    c.write(0, CHUNK as u64, &pattern(8, CHUNK)).unwrap();
    assert_eq!(c.read(0, 0, CHUNK).unwrap(), pattern(7, CHUNK));
}

/// A 64 MiB disk written in full, then pinned by snapshot `pin`: about 32 MiB of overwrites
/// later no space is left. `space_wait_ms` as given.
fn pinned_small_disk(wait_ms: u64) -> (InProcess, ControlClient, Client) {
    let keeld = InProcess::start(
        &config(&format!("space_wait_ms = {wait_ms}")).replace("size = \"1G\"", "size = \"64M\""),
    );
    let api = ControlClient::new(&keeld.dir().join("keel.sock"));
    let mut c = Client::connect(&keeld.socket("k"), 1, DEPTH * CHUNK).unwrap();
    let chunks = (64 << 20) / CHUNK as u64;
    assert_eq!(write_chunks(&mut c, 0..chunks, 0, || true), 0);
    snapshot(&api, "pin");
    (keeld, api, c)
}

/// A guest write that finds no space waits; deleting the snapshot during the wait lets it
/// (and every later write) through.
#[test]
fn a_write_waiting_for_space_goes_through_when_the_snapshot_is_deleted() {
    let (keeld, api, mut c) = pinned_small_disk(120_000);
    let control = keeld.dir().join("keel.sock");
    let deleter = std::thread::spawn(move || {
        let api = ControlClient::new(&control);
        // Until a write waits; then the delete it waits for.
        while stats(&api).space.unwrap().space_waits == 0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _: serde_json::Value = api.delete("/v1/disks/k/snapshots/pin").unwrap();
    });
    // Twice what the pinned container has room for: some write must wait.
    for (i, chunk) in (0..(64 << 20) / CHUNK as u64).enumerate() {
        c.write(0, chunk * CHUNK as u64, &pattern(1000 + i as u64, CHUNK))
            .unwrap_or_else(|e| panic!("write {i} failed: {e:?}"));
    }
    deleter.join().unwrap();
    let s = stats(&api);
    assert_eq!((s.errors, s.space.unwrap().space_waits), (0, 1));
    assert_eq!(c.read(0, 0, CHUNK).unwrap(), pattern(1000, CHUNK));
}

/// With nothing to free, a write waits `space_wait_ms` and fails with IOERR; the next one
/// fails at once; after the snapshot is deleted writes go through again.
#[test]
fn a_write_fails_with_ioerr_once_its_wait_is_over() {
    let (_keeld, api, mut c) = pinned_small_disk(200);
    let mut failed = None;
    for chunk in 0..(64 << 20) / CHUNK as u64 {
        if let Err(e) = c.write(0, chunk * CHUNK as u64, &pattern(chunk, CHUNK)) {
            failed = Some((chunk, e.0));
            break;
        }
    }
    let (chunk, ret) = failed.expect("the pinned container ran out of space");
    assert_eq!(ret, -libc::EIO, "VIRTIO_BLK_S_IOERR");
    let offset = chunk * CHUNK as u64;
    assert!(c.write(0, offset, &pattern(chunk, CHUNK)).is_err());
    let s = stats(&api);
    let space = s.space.unwrap();
    assert_eq!(
        space.space_waits, 1,
        "the second write did not wait: {space:?}"
    );
    // A 64 MiB container runs out a little before `critical`: the 4 MiB segments the cleaner
    // and the metadata writers keep open are a large share of it.
    assert_ne!(space.state, SpaceState::Ok, "{space:?}");
    assert_eq!(space.free_bytes, 0, "{space:?}");
    assert!(s.errors >= 2);
    let _: serde_json::Value = api.delete("/v1/disks/k/snapshots/pin").unwrap();
    c.write(0, offset, &pattern(chunk, CHUNK)).unwrap();
    assert_eq!(c.read(0, offset, CHUNK).unwrap(), pattern(chunk, CHUNK));
}
