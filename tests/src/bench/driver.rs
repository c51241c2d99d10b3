//! The two client libraries behind one per-queue interface, so a workload runs through either
//! with the same loop: libblkio's `virtio-blk-vhost-user` driver (the `blkio` crate) or Keel's
//! own `keel-client`.

use std::path::Path;

use keel_client::queue::Completions;
use keel_client::{Buffer, Disk, DiskOptions, Push, Queue, Request};

use super::data::{fill_data, varies};
use crate::client::{Client, Options, QueueIo};

/// One queue of a connected client, driven by one thread. Request `slot` always uses the
/// slot's own buffer of the workload's block size, which a write refills with the next
/// distinct data (see `data.rs`) unless the data is the constant pattern.
pub trait QueueDriver: Send {
    /// Puts request `slot` on the ring without notifying the device.
    fn enqueue(&mut self, slot: usize, read: bool, offset: u64) -> Result<(), String>;
    /// Notifies the device of what was enqueued, then sleeps on the completion eventfd until at
    /// least one request completes. Appends the slots that completed and whether they succeeded
    /// to `out`.
    fn submit_and_wait(&mut self, out: &mut Vec<(usize, bool)>) -> Result<(), String>;
    /// Notifies the device of what was enqueued and takes what has completed, without waiting
    /// (poll queues). Returns how many were appended to `out`.
    fn submit_and_reap(&mut self, out: &mut Vec<(usize, bool)>) -> Result<usize, String>;
}

/// A connection and its queues; the queues borrow the connection.
pub enum Connection {
    Blkio(Client),
    Keel(Disk),
}

/// What the connection is for.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub queues: usize,
    pub slots: usize,
    pub block_size: usize,
    pub poll: bool,
    /// keel-client only: use indirect descriptors / EVENT_IDX when the device offers them.
    pub indirect: bool,
    pub event_idx: bool,
}

impl Connection {
    pub fn blkio(socket: &Path, shape: &Shape) -> Result<Self, String> {
        let opts = Options {
            queues: shape.queues,
            buf_len: shape.block_size * shape.slots,
            poll: shape.poll,
            ..Options::default()
        };
        let mut c = Client::connect_with(socket, &opts).map_err(|e| format!("blkio: {e:?}"))?;
        for q in 0..shape.queues {
            // Not zeroes: a backend may shortcut zero writes.
            fill_data(c.buffer(q));
        }
        Ok(Self::Blkio(c))
    }

    pub fn keel(socket: &Path, shape: &Shape) -> Result<Self, String> {
        let page = keel_client::memory::PAGE as usize;
        let per_request = shape.block_size.div_ceil(page) * page;
        let options = DiskOptions {
            queues: Some(u16::try_from(shape.queues).map_err(|_| "too many queues")?),
            buffer_memory: (per_request * shape.slots * shape.queues + (1 << 20)) as u64,
            completions: if shape.poll {
                Completions::Poll
            } else {
                Completions::Interrupt
            },
            indirect: shape.indirect,
            event_idx: shape.event_idx,
            ..DiskOptions::default()
        };
        Disk::connect(socket, &options)
            .map(Self::Keel)
            .map_err(|e| format!("keel-client: {e}"))
    }

    pub fn capacity(&self) -> u64 {
        match self {
            Self::Blkio(c) => c.capacity(),
            Self::Keel(d) => d.info().capacity(),
        }
    }

    /// One driver per queue.
    pub fn queues(&mut self, shape: &Shape) -> Result<Vec<Box<dyn QueueDriver + '_>>, String> {
        match self {
            Self::Blkio(c) => Ok(c
                .split()
                .into_iter()
                .map(|io| {
                    Box::new(BlkioQueue {
                        io,
                        block_size: shape.block_size,
                        slots: shape.slots,
                        done: Vec::with_capacity(shape.slots),
                    }) as Box<dyn QueueDriver>
                })
                .collect()),
            Self::Keel(disk) => {
                let mut out: Vec<Box<dyn QueueDriver>> = Vec::new();
                for queue in disk.take_queues() {
                    let mut slots = Vec::with_capacity(shape.slots);
                    for _ in 0..shape.slots {
                        let mut b = queue.alloc(shape.block_size).map_err(|e| e.to_string())?;
                        let mut data = vec![0u8; shape.block_size];
                        fill_data(&mut data);
                        b.write_at(0, &data).map_err(|e| e.to_string())?;
                        slots.push(Some(b));
                    }
                    out.push(Box::new(KeelQueue {
                        queue,
                        slots,
                        done: Vec::with_capacity(shape.slots),
                        next: vec![0u8; shape.block_size],
                    }));
                }
                Ok(out)
            }
        }
    }
}

struct BlkioQueue<'a> {
    io: QueueIo<'a>,
    block_size: usize,
    slots: usize,
    done: Vec<(usize, i32)>,
}

impl QueueDriver for BlkioQueue<'_> {
    fn enqueue(&mut self, slot: usize, read: bool, offset: u64) -> Result<(), String> {
        let (at, len) = (slot * self.block_size, self.block_size);
        if !read && varies() {
            fill_data(self.io.buffer_mut(at, len));
        }
        if read {
            self.io.enqueue_read(offset, at, len, slot);
        } else {
            self.io.enqueue_write(offset, at, len, slot);
        }
        Ok(())
    }

    fn submit_and_wait(&mut self, out: &mut Vec<(usize, bool)>) -> Result<(), String> {
        self.do_io(1, out).map(|_| ())
    }

    fn submit_and_reap(&mut self, out: &mut Vec<(usize, bool)>) -> Result<usize, String> {
        self.do_io(0, out)
    }
}

impl BlkioQueue<'_> {
    fn do_io(&mut self, min: usize, out: &mut Vec<(usize, bool)>) -> Result<usize, String> {
        self.done.clear();
        let n = self
            .io
            .do_io(min, self.slots, &mut self.done)
            .map_err(|e| format!("do_io: {e:?}"))?;
        out.extend(self.done.iter().map(|&(slot, ret)| (slot, ret == 0)));
        Ok(n)
    }
}

struct KeelQueue {
    queue: Queue,
    /// Each slot's buffer while the slot is idle; it travels with the request otherwise.
    slots: Vec<Option<Buffer>>,
    done: Vec<keel_client::Completion>,
    /// A write's next data, copied into its buffer.
    next: Vec<u8>,
}

impl QueueDriver for KeelQueue {
    fn enqueue(&mut self, slot: usize, read: bool, offset: u64) -> Result<(), String> {
        let mut buf = self.slots[slot]
            .take()
            .ok_or_else(|| format!("slot {slot} is already in flight"))?;
        if !read && varies() {
            fill_data(&mut self.next);
            buf.write_at(0, &self.next).map_err(|e| e.to_string())?;
        }
        let buffers = vec![buf];
        let request = if read {
            Request::Read { offset, buffers }
        } else {
            Request::Write { offset, buffers }
        };
        match self.queue.push(request, slot as u64) {
            Ok(Push::Queued) => Ok(()),
            Ok(Push::Full(_)) => Err(format!(
                "the ring ({} entries) has no room for {} requests",
                self.queue.size(),
                self.slots.len()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    fn submit_and_wait(&mut self, out: &mut Vec<(usize, bool)>) -> Result<(), String> {
        self.queue.kick().map_err(|e| e.to_string())?;
        self.done.clear();
        self.queue.wait(&mut self.done).map_err(|e| e.to_string())?;
        self.hand_back(out);
        Ok(())
    }

    fn submit_and_reap(&mut self, out: &mut Vec<(usize, bool)>) -> Result<usize, String> {
        self.queue.kick().map_err(|e| e.to_string())?;
        self.done.clear();
        let n = self.queue.reap(&mut self.done).map_err(|e| e.to_string())?;
        self.hand_back(out);
        Ok(n)
    }
}

impl KeelQueue {
    /// Reports the completions and puts their buffers back in their slots.
    fn hand_back(&mut self, out: &mut Vec<(usize, bool)>) {
        for mut c in self.done.drain(..) {
            let slot = c.token as usize;
            out.push((slot, c.result().is_ok()));
            self.slots[slot] = c.buffers.pop();
        }
    }
}
