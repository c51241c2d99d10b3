//! The null engine: no storage. Reads return zeroes, writes are dropped, everything succeeds at
//! once. It measures the cost of the vhost-user channel and Keel's queue handling alone.

use super::sync_queue::{RunRequest, SyncQueue};
use super::{Capabilities, Engine, EngineError, IoOp, IoRequest, QueueEngine};

pub struct NullEngine {
    capacity: u64,
    read_only: bool,
}

impl NullEngine {
    pub fn new(capacity: u64, read_only: bool) -> Self {
        Self {
            capacity,
            read_only,
        }
    }
}

impl Engine for NullEngine {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all_unless(self.read_only)
    }

    fn describe(&self) -> String {
        format!("null engine, {} bytes", self.capacity)
    }

    fn queue(&self, _index: usize) -> Result<Box<dyn QueueEngine>, EngineError> {
        Ok(Box::new(SyncQueue::new(NullRunner {
            read_only: self.read_only,
        })))
    }

    fn flush(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

/// How a null queue runs a request: reads zeroes, refuses writes when read-only.
struct NullRunner {
    read_only: bool,
}

impl RunRequest for NullRunner {
    fn run(&mut self, req: &mut IoRequest) -> Result<(), EngineError> {
        match req.op {
            IoOp::Read { .. } => {
                req.buffers.fill_zero();
                Ok(())
            }
            ref op @ (IoOp::Write { .. } | IoOp::Discard { .. } | IoOp::WriteZeroes { .. })
                if self.read_only =>
            {
                Err(EngineError::ReadOnly { op: op.name() })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::GuestBuffers;
    use crate::engine::buffers::tests::two_region_memory;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn reads_zeroes_and_completes_everything() {
        let mem = two_region_memory();
        mem.write_slice(&[0xaa; 64], GuestAddress(0x10000)).unwrap();
        let engine = NullEngine::new(1 << 20, false);
        let mut q = engine.queue(0).unwrap();
        let buffers = GuestBuffers::from_guest(&mem, [(GuestAddress(0x10000), 64)]).unwrap();
        let mut batch = vec![
            IoRequest {
                token: 7,
                op: IoOp::Read { offset: 0 },
                buffers,
            },
            IoRequest {
                token: 8,
                op: IoOp::Flush,
                buffers: GuestBuffers::empty(),
            },
        ];
        q.submit(&mut batch);
        assert!(batch.is_empty());
        assert_eq!(q.in_flight(), 2);
        let mut done = Vec::new();
        q.reap(&mut done);
        assert_eq!(done.iter().map(|c| c.token).collect::<Vec<_>>(), vec![7, 8]);
        assert!(done.iter().all(|c| c.result.is_ok()));
        assert_eq!(q.in_flight(), 0);
        let mut back = [0xffu8; 64];
        mem.read_slice(&mut back, GuestAddress(0x10000)).unwrap();
        assert_eq!(back, [0; 64]);
    }

    #[test]
    fn read_only_refuses_writes() {
        let engine = NullEngine::new(1 << 20, true);
        assert!(engine.capabilities().read_only);
        let mut q = engine.queue(0).unwrap();
        let mut batch = vec![IoRequest {
            token: 1,
            op: IoOp::Write {
                offset: 0,
                durable: false,
            },
            buffers: GuestBuffers::empty(),
        }];
        q.submit(&mut batch);
        let mut done = Vec::new();
        q.wait(&mut done);
        assert!(matches!(done[0].result, Err(EngineError::ReadOnly { .. })));
    }
}
