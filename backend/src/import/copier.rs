//! The background copy: moves the source into the container in 1 MiB steps from the store's
//! import cursor, writing only blocks the disk lacks (a guest write wins) and skipping blocks
//! that read as zeroes (holes stay holes). Each step moves the cursor; a checkpoint makes it
//! durable, so a restart rescans at most the steps since the last one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Import;
use crate::store::StoreError;
use crate::store::layout::BLOCK;

/// Blocks per step.
const STEP_BLOCKS: u64 = 256;

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
    let total = import.progress.total_bytes;
    let end = total.div_ceil(BLOCK);
    let mut lba = store.import_cursor().unwrap_or(end);
    let mut buf = vec![0u8; (STEP_BLOCKS * BLOCK) as usize];
    let mut failing = false;
    let (started, from) = (std::time::Instant::now(), lba);
    while lba < end {
        if let Some(rate) = pace.rate {
            let due = Duration::from_secs_f64(((lba - from) * BLOCK) as f64 / rate as f64);
            if let Some(early) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(early);
            }
        }
        if stop.load(Ordering::Acquire) {
            return Err(CopyError::Stopped);
        }
        if pace.yield_to_guest && import.progress.guest_idle_ms() < 50 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let n = STEP_BLOCKS.min(end - lba);
        let bytes = &mut buf[..(n * BLOCK) as usize];
        let Some(source) = import.source() else {
            return Err(CopyError::Stopped);
        };
        if let Err(e) = source.read(bytes, lba * BLOCK) {
            let why = format!("reading {} at {}: {e}", source.name(), lba * BLOCK);
            if !failing {
                log::warn!("import paused: {why}; retrying each second");
            }
            failing = true;
            import.progress.pause(Some(why));
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        if failing {
            log::info!("import resumed: {} reads again", source.name());
            failing = false;
            import.progress.pause(None);
        }
        let blocks: Vec<(u64, &[u8])> = bytes
            .chunks(BLOCK as usize)
            .enumerate()
            .filter(|(_, b)| b.iter().any(|x| *x != 0))
            .map(|(i, b)| (lba + i as u64, b))
            .collect();
        if !blocks.is_empty() {
            store.fill_absent(import.writer, &blocks)?;
        }
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
