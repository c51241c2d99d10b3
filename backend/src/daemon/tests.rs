//! The control API's clone calls over a served keel disk.

use std::path::Path;
use std::sync::Arc;

use super::{DaemonControl, DiskSet, start_disk};
use crate::config::Config;
use crate::control::{ApiCall, ApiError, ControlHandler};
use crate::store::StoreError;

/// A control API over one served keel disk `k` in `dir`, with a snapshot `gold`.
fn control_over_k(dir: &Path) -> DaemonControl {
    let toml = "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\n\
                path = \"k.keel\"\nsize = \"4M\"\ndirect = false\n";
    let config = Config::parse(toml, &dir.join("keel.toml"), dir).unwrap();
    let served = start_disk(&config.disks[0]).unwrap();
    let control = DaemonControl::new(Arc::new(DiskSet::new(vec![served], Vec::new())));
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

/// While a clone copies, another caller lists and snapshots the disks and clones under
/// another name; the name being cloned is refused with a Conflict.
#[test]
fn other_calls_answer_while_a_clone_copies() {
    let dir = tempfile::tempdir().unwrap();
    let control = control_over_k(dir.path());
    let answer = control
        .clone_disk_with("k", "gold", "copy", |store, id, path| {
            assert!(
                control.disks.is_unlocked(),
                "the copy runs without the disk list's lock"
            );
            std::thread::scope(|s| {
                s.spawn(|| {
                    assert_eq!(disk_names(&control), ["k"]);
                    control
                        .call(ApiCall::DiskStats { disk: "k".into() })
                        .unwrap();
                    control
                        .call(ApiCall::CreateSnapshot {
                            disk: "k".into(),
                            name: "during".into(),
                        })
                        .unwrap();
                    match clone(&control, "copy") {
                        Err(ApiError::Conflict(m)) => {
                            assert!(m.contains("being cloned"), "{m}")
                        }
                        other => panic!("a name being cloned was not refused: {other:?}"),
                    }
                    clone(&control, "other").unwrap();
                })
                .join()
                .unwrap();
            });
            store.clone_snapshot(id, path)
        })
        .unwrap();
    assert_eq!(answer.disk, "copy");
    assert!(dir.path().join("copy.keel").exists());
    assert_eq!(disk_names(&control), ["copy", "k", "other"]);
    assert!(control.cloning.lock().unwrap().is_empty());
    match clone(&control, "copy") {
        Err(ApiError::Conflict(m)) => assert!(m.contains("disk copy exists"), "{m}"),
        other => panic!("a registered name was not refused: {other:?}"),
    }
    stop(&control);
}

/// A failed copy takes its partial container and its name with it, so the same clone can
/// be retried; a container someone else created meanwhile is left alone.
#[test]
fn a_failed_clone_frees_its_name_and_container() {
    let dir = tempfile::tempdir().unwrap();
    let control = control_over_k(dir.path());
    let container = dir.path().join("copy.keel");

    let err = control
        .clone_disk_with("k", "gold", "copy", |_, _, path| {
            std::fs::write(path, b"half a container")?;
            Err(StoreError::Failed)
        })
        .unwrap_err();
    assert!(matches!(err, ApiError::Internal(_)), "{err:?}");
    assert!(!container.exists(), "the partial container was left behind");
    assert!(control.cloning.lock().unwrap().is_empty());

    let err = control
        .clone_disk_with("k", "gold", "copy", |store, id, path| {
            std::fs::write(path, b"not this clone's")?;
            store.clone_snapshot(id, path)
        })
        .unwrap_err();
    assert!(matches!(err, ApiError::Conflict(_)), "{err:?}");
    assert_eq!(std::fs::read(&container).unwrap(), b"not this clone's");
    assert!(control.cloning.lock().unwrap().is_empty());
    std::fs::remove_file(&container).unwrap();

    clone(&control, "copy").unwrap();
    assert_eq!(disk_names(&control), ["copy", "k"]);
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
