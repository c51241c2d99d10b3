//! The background copy: moves the source into the container in 4 MiB steps from the store's
//! import cursor, writing only blocks the disk lacks (a guest write wins) and skipping blocks
//! that read as zeroes (holes stay holes). Blocks the source reports as zeroes (a raw file's
//! holes, NBD block status) are not even read. Each step moves the cursor; a checkpoint makes
//! it durable, so a restart rescans at most the steps since the last one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Import;
use crate::store::StoreError;
use crate::store::layout::BLOCK;

/// Blocks per step (4 MiB: one data write and one journal record each).
const STEP_BLOCKS: u64 = 1024;
/// Threads reading the source.
const READERS: usize = 4;
/// Steps each reader holds ready.
const READ_AHEAD: usize = 1;

/// A step read ahead: its first block, its bytes, and which blocks the source reported as
/// zeroes (when it could tell).
type Step = (u64, Vec<u8>, Option<Vec<bool>>);

/// How the copy shares the device with the guest.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Pause after each step while the guest sent a request within the last 50 ms.
    pub yield_to_guest: bool,
    /// Stay under this many bytes per second.
    pub rate: Option<u64>,
}

/// Why the copy stopped before the end.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the import was stopped")]
    Stopped,
    #[error("writing the container: {0}")]
    Store(#[from] StoreError),
}

/// Copies until the end (then finishes the import: the container no longer refers to the
/// source) or until `stop` is set. A source that fails pauses the copy, which retries each
/// second. `step` is called after each step with the bytes done.
pub fn run(
    import: &Import,
    pace: Pace,
    stop: &AtomicBool,
    step: &mut dyn FnMut(u64),
) -> Result<(), CopyError> {
    let store = import.store();
    if !import.views.is_empty() && super::staging::staging(store) {
        return super::staging::run(import, &import.views, pace, stop, step);
    }
    let end = import.progress.total_bytes.div_ceil(BLOCK);
    let first = store.import_cursor().unwrap_or(end);
    // The source is read ahead by a few threads, each taking every READERS-th step, so reads
    // overlap each other (an NBD server answers them in parallel) and the container's writes.
    let copied = std::thread::scope(|scope| {
        let mut steps = Vec::with_capacity(READERS);
        for k in 0..READERS as u64 {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Step>(READ_AHEAD);
            let from = first + k * STEP_BLOCKS;
            scope.spawn(move || read_ahead(import, from, end, stop, tx));
            steps.push(rx);
        }
        let (started, mut lba) = (std::time::Instant::now(), first);
        while lba < end {
            if let Some(rate) = pace.rate {
                let due = Duration::from_secs_f64(((lba - first) * BLOCK) as f64 / rate as f64);
                if let Some(early) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(early);
                }
            }
            if pace.yield_to_guest && import.progress.guest_idle_ms() < 50 {
                std::thread::sleep(Duration::from_millis(5));
            }
            // The reader ends early only when stopped.
            let next = ((lba - first) / STEP_BLOCKS) as usize % READERS;
            let Ok((at, bytes, zero)) = steps[next].recv() else {
                return Err(CopyError::Stopped);
            };
            debug_assert_eq!(at, lba);
            // Blocks the source reported as zeroes are not even looked at.
            let blocks: Vec<(u64, &[u8])> = bytes
                .chunks(BLOCK as usize)
                .enumerate()
                .filter(|(i, _)| zero.as_ref().is_none_or(|z| !z[*i]))
                .filter(|(_, b)| b.iter().any(|x| *x != 0))
                .map(|(i, b)| (lba + i as u64, b))
                .collect();
            if !blocks.is_empty() {
                store.fill_absent(import.writer, &blocks)?;
            }
            lba += bytes.len() as u64 / BLOCK;
            store.advance_import(lba);
            import.progress.advance(lba * BLOCK);
            step(lba * BLOCK);
        }
        Ok(())
    });
    copied?;
    store.flush()?;
    store.finish_import()?;
    import.progress.finish();
    import.drop_source();
    Ok(())
}

/// Reads every [`READERS`]-th step from `first` up to `end`, in order, into `tx`, retrying a
/// failed read each second (the import is `paused` meanwhile), until the end, `stop`, or the
/// receiver is gone.
fn read_ahead(
    import: &Import,
    first: u64,
    end: u64,
    stop: &AtomicBool,
    tx: std::sync::mpsc::SyncSender<Step>,
) {
    let mut lba = first;
    let mut failing = false;
    while lba < end && !stop.load(Ordering::Acquire) {
        let Some(source) = import.source() else {
            return;
        };
        let n = STEP_BLOCKS.min(end - lba);
        let mut bytes = vec![0u8; (n * BLOCK) as usize];
        // Blocks the source reports as zeroes are not read; zeroes are not copied.
        let zero = match source.read_sparse(&mut bytes, lba * BLOCK) {
            Ok(r) => {
                import.progress.note_source_read(r.read_bytes);
                r.zero
            }
            Err(e) => {
                let mut why = format!("reading {} at {}: {e}", source.name(), lba * BLOCK);
                if !failing {
                    log::warn!("import paused: {why}; retrying each second");
                }
                failing = true;
                import.progress.pause(Some(why.clone()));
                std::thread::sleep(Duration::from_secs(1));
                // A connection that failed stays failed: open the source again.
                if let Err(e) = import.reopen(&source) {
                    why = format!("{why}; opening it again: {e}");
                    import.progress.pause(Some(why));
                }
                continue;
            }
        };
        if failing {
            log::info!("import resumed: {} reads again", source.name());
            failing = false;
            import.progress.pause(None);
        }
        if tx.send((lba, bytes, zero)).is_err() {
            return;
        }
        lba += n + (READERS as u64 - 1) * STEP_BLOCKS;
    }
}

/// Runs [`run`] on a thread of its own, logging how it ended.
pub fn spawn(
    import: Arc<Import>,
    stop: Arc<AtomicBool>,
    name: String,
    rate: Option<u64>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("keel-import-{name}"))
        .spawn(move || {
            let pace = Pace {
                yield_to_guest: true,
                rate,
            };
            match run(&import, pace, &stop, &mut |_| {}) {
                Ok(()) => log::info!(
                    "{name}: import finished ({} bytes); the container no longer refers to \
                     the source, which may be deleted",
                    import.progress.total_bytes
                ),
                Err(CopyError::Stopped) => log::info!(
                    "{name}: import stopped at {} of {} bytes; it resumes at the next start",
                    import.progress.done_bytes(),
                    import.progress.total_bytes
                ),
                Err(e) => {
                    log::error!("{name}: import failed: {e}");
                    import.progress.pause(Some(e.to_string()));
                }
            }
        })
}
