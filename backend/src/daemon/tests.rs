//! The control API's clone calls over a served keel disk.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use keel_protocol::control::DiskState;

use super::clone::CopyStep;
use super::{DaemonControl, DiskSet, start_disk};
use crate::config::Config;
use crate::control::{ApiCall, ApiError, ControlHandler};
use crate::store::{Op, StoreError};

/// A control API over one served keel disk `k` in `dir`, with a snapshot `gold` of two
/// written blocks.
fn control_over_k(dir: &Path) -> DaemonControl {
    let toml = "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\n\
                path = \"k.keel\"\nsize = \"4M\"\ndirect = false\n";
    let config = Config::parse(toml, &dir.join("keel.toml"), dir).unwrap();
    let served = start_disk(&config.disks[0]).unwrap();
    let control = DaemonControl::new(Arc::new(DiskSet::new(vec![served], Vec::new())));
    let store = control.disk("k").unwrap().store().unwrap();
    for (offset, byte) in [(0, 1u8), (1 << 20, 2)] {
        let data = vec![byte; 4096];
        store
            .write_batch(
                0,
                &[Op::Write {
                    offset,
                    data: &data,
                }],
            )
            .unwrap();
    }
    control
        .call(ApiCall::CreateSnapshot {
            disk: "k".into(),
            name: "gold".into(),
        })
        .unwrap();
    control
}

fn clone(control: &DaemonControl, new_disk: &str) -> Result<serde_json::Value, ApiError> {
    control.call(ApiCall::Clone {
        disk: "k".into(),
        snapshot: "gold".into(),
        new_disk: new_disk.into(),
    })
}

fn disk_names(control: &DaemonControl) -> Vec<String> {
    let list = control.call(ApiCall::ListDisks).unwrap();
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn stop(control: &DaemonControl) {
    assert!(control.disks.stop_all().is_empty());
}

/// The list entry of disk `name`.
fn entry(control: &DaemonControl, name: &str) -> serde_json::Value {
    control
        .call(ApiCall::DiskInfo { disk: name.into() })
        .unwrap()
}

/// A copy step that reports `progress` blocks, says so on `reported`, then waits for `go`
/// before copying for real.
fn held_copy(
    progress: u64,
    reported: std::sync::mpsc::Sender<()>,
    go: std::sync::mpsc::Receiver<()>,
) -> CopyStep {
    Box::new(move |store, blocks, path, watch| {
        watch.copied.store(progress, Ordering::Relaxed);
        reported.send(()).unwrap();
        go.recv().unwrap();
        store.clone_into(blocks, path, watch)
    })
}

/// The clone call answers at once; while the copy runs the new disk is listed as cloning with
/// its progress, other calls answer, and the name is refused to a second clone; then it is
/// served.
#[test]
fn a_clone_copies_in_the_background_and_reports_its_progress() {
    let dir = tempfile::tempdir().unwrap();
    let control = control_over_k(dir.path());
    let (go, wait) = std::sync::mpsc::channel();
    let (reported, on_report) = std::sync::mpsc::channel();
    let answer = control
        .clone_disk_with("k", "gold", "copy", held_copy(1, reported, wait))
        .unwrap();
    on_report.recv().unwrap();
    assert_eq!(answer.disk, "copy");
    assert_eq!(answer.state, DiskState::Cloning);
    assert_eq!(answer.blocks, 2, "the snapshot maps two blocks");

    let e = entry(&control, "copy");
    assert_eq!(e["state"], "cloning", "{e}");
    assert_eq!(e["clone"]["source"], "k@gold", "{e}");
    assert_eq!(e["clone"]["copied_bytes"], 4096, "{e}");
    assert_eq!(e["clone"]["total_bytes"], 8192, "{e}");
    assert_eq!(disk_names(&control), ["copy", "k"]);
    control
        .call(ApiCall::CreateSnapshot {
            disk: "k".into(),
            name: "during".into(),
        })
        .unwrap();
    match clone(&control, "copy") {
        Err(ApiError::Conflict(m)) => assert!(m.contains("being cloned"), "{m}"),
        other => panic!("a name being cloned was not refused: {other:?}"),
    }

    go.send(()).unwrap();
    control.finish_clones(false);
    let e = entry(&control, "copy");
    assert_eq!(e["state"], "serving", "{e}");
    assert!(e.get("clone").is_none(), "{e}");
    assert!(dir.path().join("copy.keel").exists());
    assert!(dir.path().join("copy.sock").exists());
    assert_eq!(disk_names(&control), ["copy", "k"]);
    match clone(&control, "copy") {
        Err(ApiError::Conflict(m)) => assert!(m.contains("disk copy exists"), "{m}"),
        other => panic!("a registered name was not refused: {other:?}"),
    }
    stop(&control);
}

/// Clones `k@gold` into `copy` with the copy step `copy`, and waits for it to end.
fn clone_with(
    control: &DaemonControl,
    copy: impl FnOnce(
        &crate::store::Store,
        &[crate::store::diff::ChangedBlock],
        &Path,
        &crate::store::CloneWatch,
    ) -> Result<u64, StoreError>
    + Send
    + 'static,
) {
    control
        .clone_disk_with("k", "gold", "copy", Box::new(copy))
        .unwrap();
    control.finish_clones(false);
}

/// A failed copy is listed as failed with its reason and takes its partial container with
/// it, so the same clone can be retried; a container someone else created meanwhile is left
/// alone.
#[test]
fn a_failed_clone_is_listed_and_frees_its_name_and_container() {
    let dir = tempfile::tempdir().unwrap();
    let control = control_over_k(dir.path());
    let container = dir.path().join("copy.keel");

    clone_with(&control, |_, _, path, _| {
        std::fs::write(path, b"half a container")?;
        Err(StoreError::Failed)
    });
    let e = entry(&control, "copy");
    assert_eq!(e["state"], "failed", "{e}");
    assert!(!e["error"].as_str().unwrap().is_empty(), "{e}");
    assert!(!container.exists(), "the partial container was left behind");

    clone_with(&control, |store, blocks, path, watch| {
        std::fs::write(path, b"not this clone's")?;
        store.clone_into(blocks, path, watch)
    });
    let e = entry(&control, "copy");
    assert!(e["error"].as_str().unwrap().contains("exists"), "{e}");
    assert_eq!(std::fs::read(&container).unwrap(), b"not this clone's");
    match clone(&control, "copy") {
        Err(ApiError::Conflict(m)) => assert!(m.contains("copy.keel exists"), "{m}"),
        other => panic!("a clone over an existing file was not refused: {other:?}"),
    }
    std::fs::remove_file(&container).unwrap();

    clone(&control, "copy").unwrap();
    control.finish_clones(false);
    assert_eq!(entry(&control, "copy")["state"], "serving");
    assert_eq!(disk_names(&control), ["copy", "k"]);
    stop(&control);
}

/// Shutting down stops a clone mid-copy and removes what it had written.
#[test]
fn shutdown_cancels_a_running_clone() {
    let dir = tempfile::tempdir().unwrap();
    let control = control_over_k(dir.path());
    control
        .clone_disk_with(
            "k",
            "gold",
            "copy",
            Box::new(|store, blocks, path, watch| {
                while !watch.cancel.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                store.clone_into(blocks, path, watch)
            }),
        )
        .unwrap();
    control.finish_clones(true);
    let e = entry(&control, "copy");
    assert_eq!(e["state"], "failed", "{e}");
    assert!(e["error"].as_str().unwrap().contains("cancelled"), "{e}");
    assert!(!dir.path().join("copy.keel").exists());
    stop(&control);
}

/// The daemon starts, lists and stops disks by name; a name is served once.
#[test]
fn the_daemon_starts_lists_and_stops_disks() {
    let dir = tempfile::tempdir().unwrap();
    let disk = |name: &str| {
        format!(
            "[[disk]]\nname = \"{name}\"\nsocket = \"{name}.sock\"\nengine = \"null\"\nsize = \"1M\"\n"
        )
    };
    let config = Config::parse(&disk("a"), &dir.path().join("keel.toml"), dir.path()).unwrap();
    let daemon = super::Daemon::start(&config).unwrap();
    let more = Config::parse(&disk("b"), &dir.path().join("keel.toml"), dir.path()).unwrap();
    let b = &more.disks[0];
    daemon.start_disk(b).unwrap();
    assert!(b.socket.exists());
    let names = |d: &super::Daemon| -> Vec<String> {
        d.list()
            .unwrap()
            .iter()
            .map(|s| s.name().to_string())
            .collect()
    };
    assert_eq!(names(&daemon), ["a", "b"]);
    assert!(matches!(
        daemon.start_disk(b),
        Err(super::DaemonError::Exists(n)) if n == "disk b exists"
    ));
    daemon.stop_disk("b").unwrap();
    assert!(!b.socket.exists(), "a stopped disk's socket is removed");
    assert_eq!(names(&daemon), ["a"]);
    assert!(matches!(
        daemon.stop_disk("b"),
        Err(super::DaemonError::NotFound(n)) if n == "b"
    ));
    daemon.shutdown().unwrap();
}

/// A store that fails while its disk is served (a metadata write failed, a lock was poisoned)
/// is listed as failed with its cause, and its requests fail, rather than the disk looking
/// healthy while every guest request gets IOERR.
#[test]
fn a_store_that_fails_while_serving_is_listed_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let control = control_over_k(dir.path());
    assert_eq!(entry(&control, "k")["state"], "serving");
    assert!(entry(&control, "k").get("error").is_none());

    let store = control.disk("k").unwrap().store().unwrap();
    store.latch_failed("a metadata write failed: injected".into());

    let k = entry(&control, "k");
    assert_eq!(k["state"], "failed", "{k}");
    assert!(
        k["error"].as_str().unwrap().contains("injected"),
        "the cause is not reported: {k}"
    );
    let listed = control.call(ApiCall::ListDisks).unwrap();
    assert_eq!(listed[0]["state"], "failed", "{listed}");
    let data = vec![7u8; 4096];
    assert!(matches!(
        store.write_batch(
            0,
            &[Op::Write {
                offset: 0,
                data: &data
            }]
        ),
        Err(StoreError::Failed)
    ));
    // Closing cannot checkpoint a failed store: the stop says so instead of claiming a clean
    // close (the journal replays at the next open).
    let errors = control.disks.stop_all();
    assert_eq!(errors.len(), 1, "{errors:?}");
}
