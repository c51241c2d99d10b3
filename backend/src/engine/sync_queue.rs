//! A raw-engine queue without io_uring: every request runs to completion inside `submit`.

use std::sync::Arc;

use super::raw::RawFiles;
use super::{Completion, IoRequest, QueueEngine};

pub(super) struct SyncQueue {
    files: Arc<RawFiles>,
    done: Vec<Completion>,
}

impl SyncQueue {
    pub fn new(files: Arc<RawFiles>) -> Self {
        Self {
            files,
            done: Vec::new(),
        }
    }
}

impl QueueEngine for SyncQueue {
    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        for req in batch.drain(..) {
            let result = self.files.execute_blocking(&req);
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
