//! Runs resync jobs with a global concurrency limit.
//!
//! Jobs wait in per-disk queues; a disk's queue sits in the global queue of its priority while
//! it holds jobs. A free slot takes the first disk of the highest non-empty priority, runs that
//! disk's oldest job and puts the disk back at the end of its priority queue, so disks of one
//! priority take turns and a busy disk cannot starve the others.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Resync priority; higher runs first.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ResyncPriority {
    Low,
    #[default]
    Normal,
    High,
}

type JobFn = Box<dyn FnOnce() + Send>;

struct Job {
    what: String,
    run: JobFn,
}

#[derive(Default)]
struct Queues {
    running: usize,
    by_priority: BTreeMap<ResyncPriority, VecDeque<String>>,
    by_disk: HashMap<String, VecDeque<Job>>,
    started: Vec<String>,
}

/// The process-wide resync scheduler; share one `Arc` between all mirrored disks.
pub struct ResyncScheduler {
    limit: usize,
    queues: Mutex<Queues>,
    idle: Condvar,
}

impl ResyncScheduler {
    /// At most `limit` (at least 1) jobs run at once.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            queues: Mutex::new(Queues::default()),
            idle: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `run` for `disk`; `what` names the job in logs.
    pub fn submit(
        self: &Arc<Self>,
        disk: &str,
        priority: ResyncPriority,
        what: String,
        run: impl FnOnce() + Send + 'static,
    ) {
        let mut q = self.lock();
        let disk_queue = q.by_disk.entry(disk.to_string()).or_default();
        disk_queue.push_back(Job {
            what,
            run: Box::new(run),
        });
        if disk_queue.len() == 1 {
            q.by_priority
                .entry(priority)
                .or_default()
                .push_back(disk.to_string());
        }
        self.dispatch(q);
    }

    fn next_job(q: &mut Queues) -> Option<Job> {
        let (&prio, disks) = q
            .by_priority
            .iter_mut()
            .rev()
            .find(|(_, d)| !d.is_empty())?;
        let disk = disks.pop_front()?;
        let jobs = q.by_disk.get_mut(&disk)?;
        let job = jobs.pop_front();
        if jobs.is_empty() {
            q.by_disk.remove(&disk);
        } else if let Some(d) = q.by_priority.get_mut(&prio) {
            d.push_back(disk);
        }
        job
    }

    fn dispatch(self: &Arc<Self>, mut q: MutexGuard<'_, Queues>) {
        while q.running < self.limit {
            let Some(job) = Self::next_job(&mut q) else {
                break;
            };
            q.running += 1;
            q.started.push(job.what.clone());
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("keel-resync".into())
                .spawn(move || {
                    log::info!("resync job started: {}", job.what);
                    (job.run)();
                    log::info!("resync job ended: {}", job.what);
                    let mut q = me.lock();
                    q.running -= 1;
                    me.idle.notify_all();
                    me.dispatch(q);
                });
            if let Err(e) = spawned {
                log::error!("cannot start a resync thread: {e}");
                q.running -= 1;
                break;
            }
        }
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.lock().running
    }

    /// Names of started jobs, in start order.
    pub fn started(&self) -> Vec<String> {
        self.lock().started.clone()
    }

    /// Blocks until no job runs or waits.
    pub fn wait_idle(&self) {
        let mut q = self.lock();
        while q.running > 0 || !q.by_disk.is_empty() {
            q = self.idle.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn priority_then_round_robin_under_a_limit() {
        let s = ResyncScheduler::new(1);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        // Occupies the only slot until released, so everything below queues.
        s.submit(
            "blocker",
            ResyncPriority::Low,
            "blocker".into(),
            move || {
                let _ = release_rx.recv();
            },
        );
        let noop = || {};
        s.submit("a", ResyncPriority::Normal, "a1".into(), noop);
        s.submit("a", ResyncPriority::Normal, "a2".into(), noop);
        s.submit("b", ResyncPriority::Normal, "b1".into(), noop);
        s.submit("c", ResyncPriority::Low, "c1".into(), noop);
        s.submit("d", ResyncPriority::High, "d1".into(), noop);
        assert_eq!(s.running(), 1);
        release_tx.send(()).unwrap();
        s.wait_idle();
        assert_eq!(s.started(), vec!["blocker", "d1", "a1", "b1", "a2", "c1"]);
    }

    #[test]
    fn never_more_than_the_limit() {
        let s = ResyncScheduler::new(2);
        let now = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for i in 0..8 {
            let (now, peak) = (now.clone(), peak.clone());
            s.submit(
                &format!("disk{}", i % 3),
                ResyncPriority::Normal,
                format!("j{i}"),
                move || {
                    use std::sync::atomic::Ordering::SeqCst;
                    let n = now.fetch_add(1, SeqCst) + 1;
                    peak.fetch_max(n, SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    now.fetch_sub(1, SeqCst);
                },
            );
        }
        s.wait_idle();
        assert_eq!(s.started().len(), 8);
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    }
}
