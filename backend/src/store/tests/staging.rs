//! The import's staging tree: a chain's views staged apart from the running point and frozen
//! as snapshots while the guest writes the running point, then adopted by it; and seeded crash
//! runs of the whole sequence (`KEEL_STAGING_STORE_SEED=<n>` replays one,
//! `KEEL_STAGING_STORE_POINTS=<n>` sets how many).

use super::import_disk::{BLOCK, BLOCKS, DISK, STEP, crash_and_reopen, open, range, served};
use super::{new_store, small_opts, store_opts};
use crate::store::diff::TreeRef;
use crate::store::{CreateOptions, Op, Store};
use crate::testing::{FaultyDevice, SplitMix};
use std::sync::Arc;

const NAMES: [&str; 3] = ["base", "mid", "nightly"];

fn fill(block: &mut [u8], tag: u64) {
    for (i, word) in block.chunks_mut(8).enumerate() {
        word.copy_from_slice(&(tag ^ i as u64).to_le_bytes());
    }
}

/// Four views of a chain, oldest first: the first a third holes, each next one changing about
/// a sixth of the blocks and zeroing about one in twenty.
fn make_views(rng: &mut SplitMix) -> Vec<Vec<u8>> {
    let mut views: Vec<Vec<u8>> = Vec::new();
    for v in 0..=NAMES.len() {
        let mut view = views.last().cloned().unwrap_or_else(|| vec![0u8; DISK]);
        for lba in 0..BLOCKS {
            let b = &mut view[range(lba)];
            if v == 0 {
                if !rng.chance(1, 3) {
                    fill(b, rng.next_u64() | 1);
                }
            } else if rng.chance(1, 20) {
                b.fill(0);
            } else if rng.chance(1, 6) {
                fill(b, rng.next_u64() | 1);
            }
        }
        views.push(view);
    }
    views
}

/// The blocks of view `v` the copier stages: those that differ from the view below.
fn changed(views: &[Vec<u8>], v: usize, lba: u64) -> bool {
    match v {
        0 => views[0][range(lba)].iter().any(|x| *x != 0),
        _ => views[v][range(lba)] != views[v - 1][range(lba)],
    }
}

/// What a snapshot reads as, block by block.
fn snapshot_image(store: &Store, id: u64) -> Result<Vec<u8>, String> {
    let d = store
        .diff(TreeRef::Empty, TreeRef::Snapshot(id))
        .map_err(|e| format!("diff: {e}"))?;
    let mut image = vec![0u8; DISK];
    for b in d.blocks {
        if let Some(v) = b.vba {
            store
                .read_vbas(&[v], &mut image[range(b.lba)])
                .map_err(|e| format!("snapshot {id} block {}: {e}", b.lba))?;
        }
    }
    Ok(image)
}

/// One step of the import as the copier takes it, from where the store says it is: stage a
/// step of the current view, freeze a finished view, adopt a step of the top view, or end.
/// `Ok(false)` once the import is finished.
fn import_step(store: &Store, views: &[Vec<u8>]) -> Result<bool, String> {
    let top = views.len() - 1;
    let Some((view, cursor)) = store.staging_progress() else {
        return Ok(false);
    };
    let view = view as usize;
    if cursor < BLOCKS {
        let end = (cursor + STEP).min(BLOCKS);
        let blocks: Vec<(u64, &[u8])> = (cursor..end)
            .filter(|lba| changed(views, view, *lba))
            .map(|lba| (lba, &views[view][range(lba)]))
            .collect();
        store
            .stage_blocks(1, &blocks)
            .map_err(|e| format!("stage: {e}"))?;
        store.advance_staging(end);
    } else if view < top {
        store
            .freeze_staging(NAMES[view])
            .map_err(|e| format!("freeze: {e}"))?;
    } else {
        let at = store.import_cursor().unwrap_or(BLOCKS);
        if at < BLOCKS {
            let n = STEP.min(BLOCKS - at);
            store
                .adopt_staging(at, n)
                .map_err(|e| format!("adopt: {e}"))?;
            store.advance_import(at + n);
        } else {
            store
                .flush()
                .and_then(|()| store.finish_import())
                .map_err(|e| format!("end: {e}"))?;
            return Ok(false);
        }
    }
    Ok(true)
}

/// The frozen views must read exactly as the chain's, and the staged part of the view being
/// staged as that view.
fn check_views(store: &Store, views: &[Vec<u8>]) -> Result<(), String> {
    let snaps = store.list_snapshots();
    let names: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
    if names.as_slice() != &NAMES[..names.len().min(NAMES.len())] || names.len() > NAMES.len() {
        return Err(format!("snapshots {names:?}, not the views oldest first"));
    }
    for (i, s) in snaps.iter().enumerate() {
        let image = snapshot_image(store, s.seq)?;
        if let Some(b) = (0..BLOCKS).find(|b| image[range(*b)] != views[i][range(*b)]) {
            return Err(format!(
                "snapshot {} differs from its view at block {b}",
                s.name
            ));
        }
    }
    if let Some((view, cursor)) = store.staging_progress() {
        if view as usize != snaps.len() {
            return Err(format!(
                "staging view {view} with {} snapshots",
                snaps.len()
            ));
        }
        let mut b = vec![0u8; BLOCK];
        for lba in 0..cursor {
            store
                .read_staged(lba, &mut b)
                .map_err(|e| format!("staged read: {e}"))?;
            if b != views[view as usize][range(lba)] {
                return Err(format!("staged block {lba} of view {view} is wrong"));
            }
        }
    }
    Ok(())
}

fn write(store: &Store, lba: u64, data: &[u8]) -> crate::store::Result<()> {
    store.write_batch(
        0,
        &[Op::Write {
            offset: lba * BLOCK as u64,
            data,
        }],
    )
}

#[test]
fn views_become_snapshots_while_the_guest_writes_the_running_point() {
    let (dev, s) = new_store(&small_opts());
    let views = make_views(&mut SplitMix::new(7));
    let top = views.last().unwrap().clone();
    s.begin_import(DISK as u64).unwrap();
    s.begin_staging().unwrap();
    let mut model = top.clone();
    let mut guest = vec![0u8; BLOCK];
    // The guest writes before, between and after the views are staged and adopted.
    let mut steps = 0u64;
    loop {
        if steps.is_multiple_of(5) {
            let lba = (steps * 37) % BLOCKS;
            fill(&mut guest, 0xabc0_0000 + steps);
            write(&s, lba, &guest).unwrap();
            model[range(lba)].copy_from_slice(&guest);
        }
        steps += 1;
        if !import_step(&s, &views).unwrap() {
            break;
        }
        check_views(&s, &views).unwrap();
    }
    assert!(s.staging_progress().is_none());
    assert!(s.import_finished());
    check_views(&s, &views).unwrap();
    assert_eq!(s.list_snapshots().len(), NAMES.len());
    let mut image = vec![0u8; DISK];
    s.read(0, &mut image).unwrap();
    assert!(
        image == model,
        "the running point is the top with the guest's writes"
    );
    // Stored once: no more blocks than distinct contents of the views and the guest's writes.
    let distinct: std::collections::HashSet<&[u8]> = (views[..NAMES.len()].iter())
        .chain([&model])
        .flat_map(|v| v.chunks(BLOCK))
        .filter(|b| b.iter().any(|x| *x != 0))
        .collect();
    let report = s.fsck();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(
        report.vbas,
        distinct.len() as u64,
        "shared blocks stored once"
    );
    drop(s);
    let s = Store::open(dev.clone(), store_opts()).unwrap();
    check_views(&s, &views).unwrap();
    s.read(0, &mut image).unwrap();
    assert!(image == model);
    // The snapshots are like any: delete the middle one, revert to the oldest.
    let mid = s.list_snapshots()[1].seq;
    s.delete_snapshot(mid).unwrap();
    while s.reclaim_step().unwrap() {}
    let base = s.list_snapshots()[0].seq;
    s.revert_to_snapshot(base).unwrap();
    s.read(0, &mut image).unwrap();
    assert!(image == views[0], "reverted to the base view");
    let report = s.fsck();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn staging_refuses_without_a_staging_tree_and_bad_ranges() {
    let (_dev, s) = new_store(&small_opts());
    let b = vec![1u8; BLOCK];
    assert!(s.stage_blocks(0, &[(0, &b)]).is_err());
    assert!(s.freeze_staging("x").is_err());
    assert!(s.adopt_staging(0, 1).is_err());
    s.begin_staging().unwrap();
    let id = s.freeze_staging("base").unwrap();
    for refused in [
        s.create_snapshot("user").err(),
        s.delete_snapshot(id).err(),
        s.revert_to_snapshot(id).err(),
    ] {
        assert!(
            refused.is_some_and(|e| e.to_string().contains("import")),
            "snapshot operations wait for the staged snapshots"
        );
    }
    assert!(s.stage_blocks(0, &[(BLOCKS, &b)]).is_err());
    assert!(s.stage_blocks(0, &[(0, &b[..100])]).is_err());
    assert!(s.adopt_staging(BLOCKS - 1, 2).is_err());
    assert!(s.stage_unmap(u64::MAX, 2).is_err());
    // A guest write the running point holds is not replaced by an adoption.
    write(&s, 3, &[9u8; BLOCK]).unwrap();
    s.stage_blocks(0, &[(3, &b), (4, &b)]).unwrap();
    s.adopt_staging(0, BLOCKS).unwrap();
    s.finish_import().unwrap();
    let mut back = vec![0u8; 2 * BLOCK];
    s.read(3 * BLOCK as u64, &mut back).unwrap();
    assert!(back[..BLOCK].iter().all(|x| *x == 9));
    assert!(back[BLOCK..].iter().all(|x| *x == 1));
    let report = s.fsck();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(
        report.vbas, 2,
        "the staged block 3 the guest had written is freed"
    );
}

fn hashes(image: &[u8]) -> Vec<u32> {
    image.chunks(BLOCK).map(crc32c::crc32c).collect()
}

/// Runs crash cycles for one seed: import steps, guest writes, flushes, checkpoints and
/// cleaner steps, sometimes a failed write, then a crash; after each recovery the snapshots
/// are their views, the staged part is its view, the served disk is a state at or after the
/// last flush, fsck is clean. Then the import finishes and the container alone holds it all.
fn run(seed: u64) -> Result<u64, String> {
    let mut rng = SplitMix::new(seed);
    // Room for the snapshots' blocks on top of the disk's.
    let opts = CreateOptions {
        overprovision_percent: 300,
        ..small_opts()
    };
    let geo = opts.geometry().map_err(|e| e.to_string())?;
    let fresh = FaultyDevice::new(geo.container_bytes());
    crate::store::Store::format(&fresh, &opts).map_err(|e| e.to_string())?;
    let mut dev = Arc::new(fresh);
    let views = make_views(&mut rng);
    let top = views.last().expect("views").clone();
    {
        let s = open(&dev)?;
        s.begin_staged_import(DISK as u64, None)
            .map_err(|e| e.to_string())?;
    }
    let mut model = top.clone();
    let mut crashes = 0;
    for cycle in 0..5u64 {
        let store = open(&dev).map_err(|e| format!("cycle {cycle}: {e}"))?;
        let mut allowed = vec![hashes(&model)];
        if rng.chance(1, 4) {
            dev.fail_writes_after(Some(rng.below(60)));
        }
        for step in 0..1 + rng.below(60) {
            let ok = match rng.below(12) {
                0..=2 => {
                    let lba = rng.below(BLOCKS);
                    let mut data = vec![0u8; BLOCK];
                    fill(&mut data, (seed ^ (cycle << 48) ^ (step << 32)) | 1);
                    model[range(lba)].copy_from_slice(&data);
                    allowed.push(hashes(&model));
                    write(&store, lba, &data).is_ok()
                }
                3..=7 => import_step(&store, &views).is_ok(),
                8 => {
                    let ok = store.flush().is_ok();
                    if ok {
                        allowed = vec![hashes(&model)];
                    }
                    ok
                }
                9 => {
                    let ok = store.checkpoint().is_ok();
                    if ok {
                        allowed = vec![hashes(&model)];
                    }
                    ok
                }
                _ => store.clean_step().is_ok(),
            };
            if !ok {
                break;
            }
        }
        let (store, at) = crash_and_reopen(store, &mut dev, &mut rng, cycle)?;
        crashes += 1;
        check_views(&store, &views).map_err(|e| format!("{at}: {e}"))?;
        let image = served(&store, &top).map_err(|e| format!("{at}: {e}"))?;
        if !allowed.contains(&hashes(&image)) {
            return Err(format!(
                "{at}: the served disk matches none of the {} allowed states",
                allowed.len()
            ));
        }
        let report = store.fsck();
        if !report.is_clean() {
            return Err(format!("{at}: fsck: {:?}", report.problems));
        }
        model = image;
    }
    let store = open(&dev)?;
    while import_step(&store, &views)? {}
    drop(store);
    let store = open(&dev)?;
    if !store.import_finished() || store.staging_progress().is_some() {
        return Err("the finished import is not recorded".into());
    }
    check_views(&store, &views)?;
    if store.list_snapshots().len() != NAMES.len() {
        return Err("a view is missing".into());
    }
    let mut image = vec![0u8; DISK];
    store.read(0, &mut image).map_err(|e| e.to_string())?;
    if let Some(b) = (0..BLOCKS).find(|b| image[range(*b)] != model[range(*b)]) {
        return Err(format!("after the import, block {b} differs from the disk"));
    }
    let report = store.fsck();
    if !report.is_clean() {
        return Err(format!("after the import: fsck: {:?}", report.problems));
    }
    Ok(crashes)
}

#[test]
fn staging_crash_points_resume_to_the_chain_and_the_guest_writes() {
    let crashes = crate::store::tests::run_crash_points(
        "staging crash run",
        ("KEEL_STAGING_STORE_POINTS", "KEEL_STAGING_STORE_SEED"),
        60,
        (0x7374_6167_0000, &[]),
        run,
    );
    assert!(crashes > 0);
}
