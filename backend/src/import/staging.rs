//! A live import of a chain that becomes snapshots: the views (each layer below the top, the
//! top's internal snapshots, then the top, see [`layers::views`](super::layers::views)) are
//! built one after another in the store's staging tree, which the guest never writes, each
//! frozen as a snapshot once staged; the running point, which the guest writes from its first
//! request, then adopts the staged top view's blocks where it has none (shared, not copied;
//! a guest write always wins). The store keeps the view being staged and its cursor with its
//! checkpoints, so a restart resumes there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::Import;
use super::copier::{CopyError, Pace};
use super::layers::View;
use super::source::Source;
use crate::store::Store;
use crate::store::layout::BLOCK;

/// Blocks per step (4 MiB: one source read, one journal record).
const STEP_BLOCKS: u64 = 1024;

/// Stages the views from where the store says the import is, then has the running point
/// adopt the top view and finishes the import (which drops the staging tree).
pub fn run(
    import: &Import,
    views: &[View],
    pace: Pace,
    stop: &AtomicBool,
    step: &mut dyn FnMut(u64),
) -> Result<(), CopyError> {
    let store = import.store();
    let end = import.progress.total_bytes.div_ceil(BLOCK);
    let mut paced = Paced::new(pace);
    while let Some((view, cursor)) = store.staging_progress() {
        let Some(v) = views.get(view as usize) else {
            break;
        };
        if cursor < end {
            stage_view(import, v, cursor, end, &mut paced, stop)?;
        }
        if (view as usize) + 1 < views.len() {
            store.freeze_staging(&v.name)?;
            log::info!("import: view {} staged and frozen as a snapshot", v.name);
        } else {
            break;
        }
    }
    let mut lba = store.import_cursor().unwrap_or(end);
    while lba < end {
        if stop.load(Ordering::Acquire) {
            return Err(CopyError::Stopped);
        }
        let n = STEP_BLOCKS.min(end - lba);
        store.adopt_staging(lba, n)?;
        lba += n;
        store.advance_import(lba);
        import.progress.advance(lba * BLOCK);
        step(lba * BLOCK);
    }
    store.flush()?;
    store.finish_import()?;
    import.progress.finish();
    import.drop_source();
    Ok(())
}

/// Stages `view` from block `from` to `end`: the blocks that differ from the staging tree
/// (the view below), blocks that became zeroes unmapped. A failing source is opened again
/// each second (the import is `paused` meanwhile).
fn stage_view(
    import: &Import,
    view: &View,
    from: u64,
    end: u64,
    paced: &mut Paced,
    stop: &AtomicBool,
) -> Result<(), CopyError> {
    let store = import.store();
    let mut source: Option<Source> = None;
    let mut lba = from;
    let mut new = vec![0u8; (STEP_BLOCKS * BLOCK) as usize];
    let mut old = vec![0u8; (STEP_BLOCKS * BLOCK) as usize];
    while lba < end {
        if stop.load(Ordering::Acquire) {
            return Err(CopyError::Stopped);
        }
        let n = STEP_BLOCKS.min(end - lba);
        let bytes = (n * BLOCK) as usize;
        let Some(src) = &source else {
            match view.open() {
                Ok(s) => source = Some(s),
                Err(e) => {
                    import.progress.pause(Some(e.to_string()));
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            continue;
        };
        match src.read_sparse(&mut new[..bytes], lba * BLOCK) {
            Ok(r) => {
                import.progress.note_source_read(r.read_bytes);
                import.progress.pause(None);
            }
            Err(e) => {
                let why = format!("reading {} at {}: {e}", view_label(view), lba * BLOCK);
                log::warn!("import paused: {why}; retrying each second");
                import.progress.pause(Some(why));
                std::thread::sleep(Duration::from_secs(1));
                // A connection that failed stays failed: open the view again.
                source = None;
                continue;
            }
        }
        store.read_staged(lba, &mut old[..bytes])?;
        let changed: Vec<(u64, &[u8])> = (new[..bytes].chunks(BLOCK as usize))
            .zip(old[..bytes].chunks(BLOCK as usize))
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, _))| (lba + i as u64, a))
            .collect();
        if !changed.is_empty() {
            store.stage_blocks(import.writer, &changed)?;
        }
        lba += n;
        store.advance_staging(lba);
        paced.after(import, n * BLOCK);
    }
    Ok(())
}

fn view_label(v: &View) -> String {
    match &v.internal {
        Some(s) => format!("{} (internal snapshot {s})", v.spec),
        None => v.spec.clone(),
    }
}

/// The copy's pace: yields to a busy guest and stays under the rate cap.
struct Paced {
    pace: Pace,
    started: Instant,
    bytes: u64,
}

impl Paced {
    fn new(pace: Pace) -> Self {
        Self {
            pace,
            started: Instant::now(),
            bytes: 0,
        }
    }

    fn after(&mut self, import: &Import, bytes: u64) {
        self.bytes += bytes;
        if let Some(rate) = self.pace.rate {
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            if let Some(early) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(early);
            }
        }
        if self.pace.yield_to_guest && import.progress.guest_idle_ms() < 50 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Whether `store` is staging views (the import began with a chain or internal snapshots).
pub fn staging(store: &Store) -> bool {
    store.staging_progress().is_some()
}
