//! Bringing remote components back on their own after a network blip.
//!
//! A thread per mirror with remote components looks, a few times a second, for remote
//! components that dropped out by themselves (offline with a reason, or failed) and tries to
//! bring each one online, with a backoff from 1 s doubling to 30 s between attempts. When one
//! connects, the usual `online` step queues a resync that copies only the chunks its tracking
//! bitmap holds. A component an operator took offline (no reason recorded) or into
//! maintenance is left alone.

use super::remote::is_remote;
use super::shared::Shared;
use super::state::ComponentState;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the thread looks for components to bring back.
const TICK: Duration = Duration::from_millis(200);
/// The first wait after a failed attempt; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Attempts to bring one component back.
#[derive(Clone, Debug)]
pub(super) struct Retry {
    attempts: u32,
    next: Instant,
    last_error: Option<String>,
}

/// What `keel mirror status` shows of a component being reconnected.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReconnectStatus {
    /// Failed attempts so far.
    pub attempts: u32,
    /// Seconds until the next attempt.
    pub next_in_secs: u64,
    pub last_error: Option<String>,
}

/// The retry state of every component being reconnected, by index.
#[derive(Default)]
pub(super) struct Reconnects(std::sync::Mutex<HashMap<usize, Retry>>);

impl Reconnects {
    pub fn status(&self, n: usize) -> Option<ReconnectStatus> {
        let map = self.0.lock().ok()?;
        map.get(&n).map(|r| ReconnectStatus {
            attempts: r.attempts,
            next_in_secs: r.next.saturating_duration_since(Instant::now()).as_secs(),
            last_error: r.last_error.clone(),
        })
    }
}

/// Starts the thread for `shared` if any of its components is remote.
pub(super) fn start(shared: &Arc<Shared>) {
    let any_remote = {
        let st = shared.lock_state();
        st.view.components.iter().any(|c| is_remote(&c.path))
    };
    if !any_remote {
        return;
    }
    let weak = Arc::downgrade(shared);
    let name = format!("keel-reconnect-{}", shared.name);
    if let Err(e) = std::thread::Builder::new()
        .name(name)
        .spawn(move || run(&weak))
    {
        log::error!(
            "mirror {}: cannot start reconnecting remote components: {e}",
            shared.name
        );
    }
}

fn run(weak: &Weak<Shared>) {
    loop {
        std::thread::sleep(TICK);
        // The mirror is gone when nobody else holds it: the thread ends with it.
        let Some(shared) = weak.upgrade() else { return };
        shared.reconnect_due();
    }
}

impl Shared {
    /// Remote components that dropped out on their own.
    fn lost_remotes(&self) -> Vec<usize> {
        let st = self.lock_state();
        st.view
            .components
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                is_remote(&c.path)
                    && match c.state {
                        ComponentState::Offline => c.failed_why.is_some(),
                        ComponentState::Failed => true,
                        _ => false,
                    }
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// One pass: tries every lost remote component whose backoff has run out.
    pub(super) fn reconnect_due(self: &Arc<Self>) {
        let lost = self.lost_remotes();
        let now = Instant::now();
        let due: Vec<usize> = {
            let Ok(mut map) = self.reconnects.0.lock() else {
                return;
            };
            map.retain(|i, _| lost.contains(i));
            lost.into_iter()
                .filter(|i| map.get(i).is_none_or(|r| r.next <= now))
                .collect()
        };
        for n in due {
            let outcome = self.online(n);
            let Ok(mut map) = self.reconnects.0.lock() else {
                return;
            };
            match outcome {
                Ok(()) => {
                    map.remove(&n);
                    drop(map);
                    self.event(format!("component {n} reconnected"));
                }
                Err(e) => {
                    let r = map.entry(n).or_insert(Retry {
                        attempts: 0,
                        next: now,
                        last_error: None,
                    });
                    r.attempts += 1;
                    let shift = r.attempts.saturating_sub(1).min(5);
                    r.next = Instant::now() + (FIRST_BACKOFF * (1 << shift)).min(MAX_BACKOFF);
                    let first = r.last_error.is_none();
                    r.last_error = Some(e.to_string());
                    drop(map);
                    if first {
                        self.event(format!(
                            "component {n} unreachable, retrying with backoff: {e}"
                        ));
                    }
                }
            }
        }
    }
}
