//! Long-lived writer threads that let one guest write reach several components at once.
//!
//! Spawning a thread per write cost more than the write itself (docs/mirror.md has the
//! numbers), so a mirror that fans writes out starts its writers once, at open. A write hands
//! the workers one job per extra component and does the first component's I/O itself while
//! they run; the jobs own what they touch (the device and a shared copy of the data), so a
//! job can never outlive what it borrows.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One piece of I/O for a worker.
pub type Job = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// A job, its slot in the caller's result list, and where to send the result.
struct Task {
    slot: usize,
    job: Job,
    done: Sender<(usize, io::Result<()>)>,
}

/// Writer threads sharing one queue. Dropping it ends them once their current job is done.
pub struct FanOut {
    queue: Option<Sender<Task>>,
    workers: Vec<JoinHandle<()>>,
}

/// Results of jobs handed to the workers, collected by [`Pending::wait`].
pub struct Pending {
    expected: usize,
    results: Receiver<(usize, io::Result<()>)>,
}

impl FanOut {
    /// Starts `threads` (at least one) writers named after `name`.
    pub fn new(name: &str, threads: usize) -> io::Result<Self> {
        let (tx, rx) = channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            let handle = std::thread::Builder::new()
                .name(format!("mirror-{name}-w{i}"))
                .spawn(move || worker(&rx))?;
            workers.push(handle);
        }
        Ok(Self {
            queue: Some(tx),
            workers,
        })
    }

    /// Queues `jobs` (each with the slot its result belongs in) and returns at once.
    pub fn submit(&self, jobs: Vec<(usize, Job)>) -> Pending {
        let (done, results) = channel();
        let mut expected = 0;
        for (slot, job) in jobs {
            let task = Task {
                slot,
                job,
                done: done.clone(),
            };
            match self.queue.as_ref().map(|q| q.send(task)) {
                Some(Ok(())) => expected += 1,
                // The workers are gone (only while dropping): run it here instead.
                Some(Err(std::sync::mpsc::SendError(task))) => run(task),
                None => {}
            }
        }
        Pending { expected, results }
    }
}

impl Pending {
    /// Waits for every queued job and stores its result in `out[slot]`.
    pub fn wait(self, out: &mut [Option<io::Result<()>>]) {
        for _ in 0..self.expected {
            let Ok((slot, r)) = self.results.recv() else {
                break;
            };
            if let Some(o) = out.get_mut(slot) {
                *o = Some(r);
            }
        }
    }
}

fn run(task: Task) {
    let r = catch_unwind(AssertUnwindSafe(task.job))
        .unwrap_or_else(|_| Err(io::Error::other("mirror writer panicked")));
    // The caller waits for every result; a closed channel means it is gone, nothing to tell.
    let _ = task.done.send((task.slot, r));
}

fn worker(rx: &Mutex<Receiver<Task>>) {
    loop {
        let task = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        match task {
            Ok(t) => run(t),
            Err(_) => return,
        }
    }
}

impl Drop for FanOut {
    fn drop(&mut self) {
        self.queue = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_result_lands_in_its_slot() {
        let f = FanOut::new("t", 2).unwrap();
        let jobs: Vec<(usize, Job)> = (0..5)
            .map(|i| {
                let job: Job = Box::new(move || {
                    if i % 2 == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::other(format!("job {i}")))
                    }
                });
                (i, job)
            })
            .collect();
        let mut out: Vec<Option<io::Result<()>>> = (0..5).map(|_| None).collect();
        f.submit(jobs).wait(&mut out);
        for (i, r) in out.iter().enumerate() {
            let r = r.as_ref().expect("a result per job");
            assert_eq!(r.is_ok(), i % 2 == 0, "slot {i}");
        }
    }

    #[test]
    fn a_panicking_job_is_an_error_and_the_workers_survive() {
        let f = FanOut::new("t", 1).unwrap();
        let mut out = vec![None];
        let boom: Job = Box::new(|| -> io::Result<()> { panic!("boom") });
        f.submit(vec![(0, boom)]).wait(&mut out);
        assert!(matches!(out[0], Some(Err(_))));
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        let mut out = vec![None];
        f.submit(vec![(
            0,
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }) as Job,
        )])
        .wait(&mut out);
        assert!(matches!(out[0], Some(Ok(()))));
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn threads_are_reused_not_spawned_per_write() {
        let f = FanOut::new("t", 2).unwrap();
        let names = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        for _ in 0..50 {
            let n = Arc::clone(&names);
            let mut out = vec![None];
            f.submit(vec![(
                0,
                Box::new(move || {
                    let id = format!("{:?}", std::thread::current().id());
                    n.lock().unwrap().insert(id);
                    Ok(())
                }) as Job,
            )])
            .wait(&mut out);
        }
        assert!(names.lock().unwrap().len() <= 2);
    }
}
