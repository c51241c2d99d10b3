//! Stopping every disk at shutdown, side by side and within a bounded time: a disk whose engine
//! cannot finish (an RBD cluster that went away, an NBD server that stopped answering) must not
//! keep keeld from exiting, nor the other disks from being flushed.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::engine::EngineError;

/// How long shutdown waits for the disks to stop (flush, close) before it gives up on those
/// still stopping. Below systemd's default stop timeout (90 s), so keeld reports them itself.
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// Stops each of `items` with `stop` on a thread of its own and waits for all of them, up to
/// `deadline`. Returns the failures by name; an item still stopping at the deadline is one (its
/// thread is left to finish or to end with the process).
pub fn stop_each_within<T, S>(
    items: Vec<T>,
    deadline: Duration,
    name: impl Fn(&T) -> String,
    stop: S,
) -> Vec<(String, EngineError)>
where
    T: Send + 'static,
    S: Fn(T) -> Result<(), EngineError> + Clone + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let mut stopping: Vec<String> = Vec::with_capacity(items.len());
    let mut failures = Vec::new();
    for item in items {
        let label = name(&item);
        let (tx, stop) = (tx.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("stop {label}"))
            .spawn({
                let label = label.clone();
                move || {
                    let r = stop(item);
                    let _ = tx.send((label, r));
                }
            });
        match spawned {
            Ok(_) => stopping.push(label),
            Err(e) => failures.push((
                label,
                EngineError::Io {
                    op: "starting the thread that stops the disk",
                    source: e,
                },
            )),
        }
    }
    drop(tx);
    let until = Instant::now() + deadline;
    while !stopping.is_empty() {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((label, r)) => {
                stopping.retain(|s| *s != label);
                if let Err(e) = r {
                    failures.push((label, e));
                }
            }
            Err(_) => break,
        }
    }
    failures.extend(stopping.into_iter().map(|label| {
        let source = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "still stopping after {} s (its engine did not finish flushing or closing); \
                 keeld exits without it",
                deadline.as_secs_f64()
            ),
        );
        (label, EngineError::Io { op: "stop", source })
    }));
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn disks_stop_side_by_side_and_a_stuck_one_is_reported_at_the_deadline() {
        // Three disks that each wait for the other two: they stop only if stopped side by side.
        let together = Arc::new(Barrier::new(3));
        let (never_tx, never_rx) = mpsc::channel::<()>();
        let never_rx = Arc::new(std::sync::Mutex::new(never_rx));
        let items = vec!["a", "b", "c", "stuck", "failing"];
        let started = Instant::now();
        let mut failures = stop_each_within(
            items,
            Duration::from_millis(500),
            |d| d.to_string(),
            move |d| match d {
                "stuck" => {
                    let _ = never_rx.lock().unwrap().recv();
                    Ok(())
                }
                "failing" => Err(EngineError::Refused("flush failed".into())),
                _ => {
                    together.wait();
                    Ok(())
                }
            },
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        failures.sort_by(|x, y| x.0.cmp(&y.0));
        let names: Vec<&str> = failures.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["failing", "stuck"]);
        assert!(
            failures[1].1.to_string().contains("still stopping"),
            "{}",
            failures[1].1
        );
        drop(never_tx);
    }
}
