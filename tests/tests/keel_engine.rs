//! The keel engine through keeld: data round trips, batching into one metadata transaction per
//! kick, persistence across a restart, snapshots and mirrors through the control API.

use keel_backend::control::client::{ClientError, ControlClient};
use keel_protocol::control::{CreateSnapshot, DiskInfo, DiskStats, RevertSnapshot, SnapshotInfo};
use keel_tests::client::Client;
use keel_tests::keeld::InProcess;

const MIB: usize = 1 << 20;

fn keel_disk(name: &str, size: &str, extra: &str) -> String {
    format!(
        "[[disk]]\nname = \"{name}\"\nsocket = \"{name}.sock\"\nengine = \"keel\"\npath = \"{name}.keel\"\nsize = \"{size}\"\ndirect = false\n{extra}\n"
    )
}

fn with_control(disks: &str) -> String {
    format!("[server]\ncontrol_socket = \"keel.sock\"\n\n{disks}")
}

use keel_tests::pattern;

#[test]
fn keel_disk_round_trips_and_survives_a_restart() {
    let keeld = InProcess::start(&keel_disk("k", "64M", ""));
    let mut c = Client::connect(&keeld.socket("k"), 1, 2 * MIB).unwrap();
    assert_eq!(c.capacity(), 64 << 20);
    let cases: &[(u64, usize)] = &[
        (0, 4096),
        (17 * 512, 512),
        (20 * 512, 3 * 512),
        (1 << 20, 128 << 10),
        ((64 << 20) - 4096, 4096),
        (12345 * 512, MIB),
    ];
    for (i, &(off, len)) in cases.iter().enumerate() {
        c.write(0, off, &pattern(i as u64, len)).unwrap();
    }
    for (i, &(off, len)) in cases.iter().enumerate() {
        assert_eq!(
            c.read(0, off, len).unwrap(),
            pattern(i as u64, len),
            "{off}+{len}"
        );
    }
    // Unwritten space reads as zeroes; discard and write-zeroes give zeroes back.
    assert_eq!(c.read(0, 32 << 20, 8192).unwrap(), vec![0; 8192]);
    c.discard(0, 1 << 20, 64 << 10).unwrap();
    assert_eq!(c.read(0, 1 << 20, 64 << 10).unwrap(), vec![0; 64 << 10]);
    c.write_zeroes(0, 0, 4096, false).unwrap();
    assert_eq!(c.read(0, 0, 4096).unwrap(), vec![0; 4096]);
    c.flush(0).unwrap();
    // Out of range: an error, and the disk keeps serving.
    assert!(c.read(0, 64 << 20, 4096).is_err());
    assert!(c.read(0, 17 * 512, 512).unwrap() == pattern(1, 512));
    drop(c);

    let dir = keeld.stop();
    let keeld = InProcess::start_in(dir, &keel_disk("k", "64M", ""));
    let mut c = Client::connect(&keeld.socket("k"), 1, 2 * MIB).unwrap();
    let (off, len) = cases[5];
    assert!(c.read(0, off, len).unwrap() == pattern(5, len));
    assert_eq!(c.read(0, 0, 4096).unwrap(), vec![0; 4096]);
}

#[test]
fn a_kick_of_writes_is_one_metadata_transaction() {
    let keeld = InProcess::start(&with_control(&keel_disk("k", "64M", "")));
    let api = ControlClient::new(&keeld.dir().join("keel.sock"));
    let mut c = Client::connect(&keeld.socket("k"), 1, 2 * MIB).unwrap();
    let before: DiskStats = api.get("/v1/disks/k/stats").unwrap();
    // 32 random 4 KiB writes submitted together: the worker sees them in one or a few kicks.
    for i in 0..32usize {
        let data = pattern(100 + i as u64, 4096);
        c.buffer(0)[i * 4096..(i + 1) * 4096].copy_from_slice(&data);
        c.enqueue_write(0, (i as u64 * 7919 % 16384) * 4096, i * 4096, 4096, i);
    }
    let done = c.wait(0, 32);
    assert!(done.iter().all(|&(_, r)| r >= 0), "{done:?}");
    let after: DiskStats = api.get("/v1/disks/k/stats").unwrap();
    let writes = after.writes - before.writes;
    let records = after.metadata_transactions - before.metadata_transactions;
    assert_eq!(writes, 32);
    assert!(
        records < writes / 2,
        "{records} metadata transactions for {writes} writes submitted together"
    );
    assert!(after.latency.last().is_some_and(|b| b.count >= 32));
}

#[test]
fn snapshots_through_the_control_api() {
    let keeld = InProcess::start(&with_control(&format!(
        "{}{}",
        keel_disk("k", "64M", ""),
        keel_tests::keeld::raw_disk("r", "8M", "")
    )));
    let api = ControlClient::new(&keeld.dir().join("keel.sock"));
    let disks: Vec<DiskInfo> = api.get("/v1/disks").unwrap();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0].engine, "keel");

    let mut c = Client::connect(&keeld.socket("k"), 1, MIB).unwrap();
    c.write(0, 0, &pattern(1, 8192)).unwrap();
    let s1: SnapshotInfo = api
        .post(
            "/v1/disks/k/snapshots",
            &CreateSnapshot { name: "s1".into() },
        )
        .unwrap();
    assert_eq!(s1.name, "s1");
    c.write(0, 0, &pattern(2, 8192)).unwrap();
    assert_eq!(c.read(0, 0, 8192).unwrap(), pattern(2, 8192));

    let taken = api.post::<_, SnapshotInfo>(
        "/v1/disks/k/snapshots",
        &CreateSnapshot { name: "s1".into() },
    );
    assert!(matches!(taken, Err(ClientError::Api { status: 409, .. })));
    let list: Vec<SnapshotInfo> = api.get("/v1/disks/k/snapshots").unwrap();
    assert_eq!(
        list.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["s1"]
    );

    // Revert while attached needs force.
    let refused = api.post::<_, serde_json::Value>(
        "/v1/disks/k/snapshots/s1/revert",
        &RevertSnapshot { force: false },
    );
    assert!(matches!(refused, Err(ClientError::Api { status: 409, .. })));
    drop(c);
    // Detaching is asynchronous: wait until the daemon has seen it.
    let mut reverted = false;
    for _ in 0..200 {
        match api.post::<_, serde_json::Value>(
            "/v1/disks/k/snapshots/s1/revert",
            &RevertSnapshot { force: false },
        ) {
            Ok(_) => {
                reverted = true;
                break;
            }
            Err(ClientError::Api { status: 409, .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(25))
            }
            Err(e) => panic!("revert: {e}"),
        }
    }
    assert!(reverted, "revert still refused after the frontend left");
    let mut c = Client::connect(&keeld.socket("k"), 1, MIB).unwrap();
    assert_eq!(c.read(0, 0, 8192).unwrap(), pattern(1, 8192));
    drop(c);

    let _: serde_json::Value = api.delete("/v1/disks/k/snapshots/s1").unwrap();
    let list: Vec<SnapshotInfo> = api.get("/v1/disks/k/snapshots").unwrap();
    assert!(list.is_empty());
    let missing = api.delete::<serde_json::Value>("/v1/disks/k/snapshots/s1");
    assert!(matches!(missing, Err(ClientError::Api { status: 404, .. })));
    // The raw engine has no snapshots; an unknown disk is 404.
    let raw = api.get::<serde_json::Value>("/v1/disks/r/snapshots");
    assert!(matches!(raw, Err(ClientError::Api { status: 501, .. })));
    let nodisk = api.get::<serde_json::Value>("/v1/disks/nope/stats");
    assert!(matches!(nodisk, Err(ClientError::Api { status: 404, .. })));
}

/// A delete answers once it is durable; keeld's cleaner thread then gives the snapshot's
/// blocks back, and the stats say when that is done.
#[test]
fn a_deleted_snapshot_gives_its_blocks_back_in_the_background() {
    let keeld = InProcess::start(&with_control(&keel_disk("k", "64M", "")));
    let api = ControlClient::new(&keeld.dir().join("keel.sock"));
    let mut c = Client::connect(&keeld.socket("k"), 1, 2 * MIB).unwrap();
    c.write(0, 0, &pattern(1, MIB)).unwrap();
    let _: SnapshotInfo = api
        .post(
            "/v1/disks/k/snapshots",
            &CreateSnapshot { name: "s1".into() },
        )
        .unwrap();
    // The snapshot now holds the first version of 256 blocks alone.
    c.write(0, 0, &pattern(2, MIB)).unwrap();
    let _: serde_json::Value = api.delete("/v1/disks/k/snapshots/s1").unwrap();
    let list: Vec<SnapshotInfo> = api.get("/v1/disks/k/snapshots").unwrap();
    assert!(
        list.is_empty(),
        "gone from the list when the delete answers"
    );
    let mut pending = u64::MAX;
    for _ in 0..500 {
        let s: DiskStats = api.get("/v1/disks/k/stats").unwrap();
        pending = s.snapshots_being_deleted;
        if pending == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(pending, 0, "the cleaner thread did not finish the delete");
    assert_eq!(c.read(0, 0, MIB).unwrap(), pattern(2, MIB));
}

#[test]
fn mirrored_disks_keep_serving_with_a_component_offline() {
    for engine in ["raw", "keel"] {
        let toml = with_control(&format!(
            "[[disk]]\nname = \"m\"\nsocket = \"m.sock\"\nengine = \"{engine}\"\nmirror = [\"a.img\", \"b.img\"]\nsize = \"32M\"\n"
        ));
        let keeld = InProcess::start(&toml);
        let api = ControlClient::new(&keeld.dir().join("keel.sock"));
        let mut c = Client::connect(&keeld.socket("m"), 1, MIB).unwrap();
        c.write(0, 4096, &pattern(7, 65536)).unwrap();
        c.flush(0).unwrap();
        let _: serde_json::Value = api
            .post("/v1/disks/m/mirror/1/offline", &serde_json::json!({}))
            .unwrap();
        c.write(0, 1 << 20, &pattern(8, 65536)).unwrap();
        c.flush(0).unwrap();
        let status: serde_json::Value = api.get("/v1/disks/m/mirror").unwrap();
        let comps = status["components"].as_array().unwrap();
        assert_eq!(comps[1]["state"], "offline", "{engine}: {status}");
        assert!(
            comps[1]["dirty_chunks"].as_u64().unwrap() >= 1,
            "{engine}: {status}"
        );
        let _: serde_json::Value = api
            .post("/v1/disks/m/mirror/1/online", &serde_json::json!({}))
            .unwrap();
        assert_eq!(
            c.read(0, 4096, 65536).unwrap(),
            pattern(7, 65536),
            "{engine}"
        );
        assert_eq!(
            c.read(0, 1 << 20, 65536).unwrap(),
            pattern(8, 65536),
            "{engine}"
        );
        let bad = api
            .post::<_, serde_json::Value>("/v1/disks/m/mirror/5/offline", &serde_json::json!({}));
        assert!(
            matches!(bad, Err(ClientError::Api { status: 404, .. })),
            "{engine}"
        );
    }
}
