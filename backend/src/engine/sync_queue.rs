//! The one queue whose requests run to completion inside `submit`: the null engine, the raw
//! engine without io_uring and the mirrored raw engine each give only how one request runs.

use super::{Completion, EngineError, IoRequest, QueueEngine};

/// How one request runs, to completion, on the calling thread.
pub(crate) trait RunRequest: Send {
    fn run(&mut self, req: &mut IoRequest) -> Result<(), EngineError>;
}

/// A queue that runs each request as it is submitted and hands the results out on the next
/// `reap` or `wait`.
pub(crate) struct SyncQueue<R> {
    runner: R,
    done: Vec<Completion>,
}

impl<R: RunRequest> SyncQueue<R> {
    pub fn new(runner: R) -> Self {
        Self {
            runner,
            done: Vec::new(),
        }
    }
}

impl<R: RunRequest> QueueEngine for SyncQueue<R> {
    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        for mut req in batch.drain(..) {
            let result = self.runner.run(&mut req);
            self.done.push(Completion {
                token: req.token,
                result,
            });
        }
    }

    fn reap(&mut self, done: &mut Vec<Completion>) {
        done.append(&mut self.done);
    }

    fn wait(&mut self, done: &mut Vec<Completion>) {
        self.reap(done);
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}
