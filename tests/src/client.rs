//! A small synchronous vhost-user-blk client over the `blkio` crate, for tests and benchmarks.
//!
//! All I/O goes through one memory region shared with the server (as a guest's RAM would be).

use std::mem::MaybeUninit;
use std::path::Path;
use std::time::Duration;

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};

/// A connected client with one buffer region of `buf_len` bytes per queue.
pub struct Client {
    blkio: Blkio,
    queues: Vec<Blkioq>,
    region: MemoryRegion,
    per_queue: usize,
}

/// How to connect.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub queues: usize,
    /// Buffer bytes per queue.
    pub buf_len: usize,
    /// Virtqueue size; blkio's default (256) if `None`.
    pub queue_size: Option<i32>,
    /// Open the device read-only (required when the server offers RO).
    pub read_only: bool,
    /// Poll queues: no completion eventfd, waiting spins on the used ring.
    pub poll: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queues: 1,
            buf_len: 1 << 20,
            queue_size: None,
            read_only: false,
            poll: false,
        }
    }
}

/// The errno of a failed request (negative, as blkio reports it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestFailed(pub i32);

impl Client {
    /// Connects to the vhost-user-blk socket at `path` with `queues` queues and `buf_len` bytes
    /// of buffer per queue.
    pub fn connect(path: &Path, queues: usize, buf_len: usize) -> Result<Self, blkio::Error> {
        Self::connect_with(
            path,
            &Options {
                queues,
                buf_len,
                ..Options::default()
            },
        )
    }

    /// Connects with every option spelled out.
    pub fn connect_with(path: &Path, opts: &Options) -> Result<Self, blkio::Error> {
        let Options {
            queues,
            buf_len,
            queue_size,
            read_only,
            poll,
        } = *opts;
        let mut blkio = Blkio::new("virtio-blk-vhost-user")?;
        blkio.set_str("path", &path.to_string_lossy())?;
        blkio.set_bool("read-only", read_only)?;
        blkio.connect()?;
        let (normal, polled) = if poll { (0, queues) } else { (queues, 0) };
        blkio.set_i32("num-queues", normal as i32)?;
        blkio.set_i32("num-poll-queues", polled as i32)?;
        if let Some(size) = queue_size {
            blkio.set_i32("queue-size", size)?;
        }
        let started = blkio.start()?;
        let align = blkio.get_u64("mem-region-alignment")? as usize;
        let per_queue = buf_len.div_ceil(align) * align;
        let region = blkio.alloc_mem_region(per_queue * queues)?;
        blkio.map_mem_region(&region)?;
        Ok(Self {
            blkio,
            queues: started
                .queues
                .into_iter()
                .chain(started.poll_queues)
                .collect(),
            region,
            per_queue,
        })
    }

    pub fn capacity(&self) -> u64 {
        self.blkio.get_u64("capacity").unwrap_or(0)
    }

    pub fn read_only(&self) -> bool {
        self.blkio.get_bool("read-only").unwrap_or(false)
    }

    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// The buffer of queue `q`.
    pub fn buffer(&mut self, q: usize) -> &mut [u8] {
        assert!(q < self.queues.len());
        // SAFETY: the region is mapped, `per_queue * queues` bytes long, and each queue's slice is
        // disjoint; the borrow of `self` keeps it from being freed while the slice lives.
        unsafe {
            std::slice::from_raw_parts_mut(
                (self.region.addr as *mut u8).add(q * self.per_queue),
                self.per_queue,
            )
        }
    }

    fn buf_ptr(&self, q: usize, offset: usize) -> *mut u8 {
        (self.region.addr + q * self.per_queue + offset) as *mut u8
    }

    /// Blocks until `n` requests of queue `q` complete; returns their results by user data.
    pub fn wait(&mut self, q: usize, n: usize) -> Vec<(usize, i32)> {
        let mut out = Vec::with_capacity(n);
        let mut comps: Vec<MaybeUninit<Completion>> =
            (0..n.max(1)).map(|_| MaybeUninit::uninit()).collect();
        while out.len() < n {
            let want = n - out.len();
            let mut timeout = Duration::from_secs(30);
            let got = match self.queues[q].do_io(&mut comps[..want], want, Some(&mut timeout), None)
            {
                Ok(got) => got,
                // A signal (a fuzzer's timer, a profiler) interrupted the wait: wait again.
                Err(e) if e.errno() == blkio::Errno::INTR => continue,
                Err(e) => panic!("do_io: {e:?}"),
            };
            assert!(got > 0, "no completion within 30 s");
            for c in &comps[..got] {
                // SAFETY: do_io initialised the first `got` entries.
                let c = unsafe { c.assume_init_ref() };
                out.push((c.user_data, c.ret));
            }
        }
        out
    }

    fn one(&mut self, q: usize) -> Result<(), RequestFailed> {
        let (_, ret) = self.wait(q, 1)[0];
        if ret == 0 {
            Ok(())
        } else {
            Err(RequestFailed(ret))
        }
    }

    /// Queues a read of `len` bytes at disk `offset` into queue `q`'s buffer at `buf_off`.
    pub fn enqueue_read(&mut self, q: usize, offset: u64, buf_off: usize, len: usize, tag: usize) {
        let p = self.buf_ptr(q, buf_off);
        self.queues[q].read(offset, p, len, tag, ReqFlags::empty());
    }

    /// Queues a write of `len` bytes from queue `q`'s buffer at `buf_off` to disk `offset`.
    pub fn enqueue_write(&mut self, q: usize, offset: u64, buf_off: usize, len: usize, tag: usize) {
        let p = self.buf_ptr(q, buf_off);
        self.queues[q].write(offset, p, len, tag, ReqFlags::empty());
    }

    /// Submits queued requests without waiting.
    pub fn submit(&mut self, q: usize) {
        let mut none: [MaybeUninit<Completion>; 0] = [];
        self.queues[q]
            .do_io(&mut none, 0, None, None)
            .expect("do_io");
    }

    /// Reads `len` bytes at `offset` on queue `q`.
    pub fn read(&mut self, q: usize, offset: u64, len: usize) -> Result<Vec<u8>, RequestFailed> {
        self.enqueue_read(q, offset, 0, len, 0);
        self.one(q)?;
        Ok(self.buffer(q)[..len].to_vec())
    }

    /// Writes `data` at `offset` on queue `q`.
    pub fn write(&mut self, q: usize, offset: u64, data: &[u8]) -> Result<(), RequestFailed> {
        self.buffer(q)[..data.len()].copy_from_slice(data);
        self.enqueue_write(q, offset, 0, data.len(), 0);
        self.one(q)
    }

    pub fn flush(&mut self, q: usize) -> Result<(), RequestFailed> {
        self.queues[q].flush(0, ReqFlags::empty());
        self.one(q)
    }

    pub fn discard(&mut self, q: usize, offset: u64, len: u64) -> Result<(), RequestFailed> {
        self.queues[q].discard(offset, len, 0, ReqFlags::empty());
        self.one(q)
    }

    /// Write-zeroes; `unmap` lets the server deallocate the range.
    pub fn write_zeroes(
        &mut self,
        q: usize,
        offset: u64,
        len: u64,
        unmap: bool,
    ) -> Result<(), RequestFailed> {
        let flags = if unmap {
            ReqFlags::empty()
        } else {
            ReqFlags::NO_UNMAP
        };
        self.queues[q].write_zeroes(offset, len, 0, flags);
        self.one(q)
    }

    /// Every queue with its own part of the buffer, each usable from its own thread while the
    /// client is borrowed.
    pub fn split(&mut self) -> Vec<QueueIo<'_>> {
        let base = self.region.addr;
        let per_queue = self.per_queue;
        self.queues
            .iter_mut()
            .enumerate()
            .map(|(i, queue)| QueueIo {
                queue,
                buf: base + i * per_queue,
                len: per_queue,
                comps: Vec::new(),
            })
            .collect()
    }
}

/// One queue of a [`Client`] and its buffer, for one thread.
pub struct QueueIo<'a> {
    queue: &'a mut Blkioq,
    /// Address of this queue's part of the mapped region.
    buf: usize,
    len: usize,
    comps: Vec<MaybeUninit<Completion>>,
}

impl QueueIo<'_> {
    fn ptr(&self, buf_off: usize, len: usize) -> *mut u8 {
        assert!(
            buf_off + len <= self.len,
            "buffer range outside the queue's region"
        );
        (self.buf + buf_off) as *mut u8
    }

    /// This queue's buffer at `buf_off`, `len` bytes (what a write is about to send).
    pub fn buffer_mut(&mut self, buf_off: usize, len: usize) -> &mut [u8] {
        let p = self.ptr(buf_off, len);
        // SAFETY: `ptr` checked that the range lies in this queue's part of the mapped
        // region, which no other queue uses and which outlives the borrow of `self`; no
        // request in flight uses the slot being refilled.
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }

    /// Queues a read of `len` bytes at disk `offset` into this queue's buffer at `buf_off`.
    pub fn enqueue_read(&mut self, offset: u64, buf_off: usize, len: usize, tag: usize) {
        let p = self.ptr(buf_off, len);
        self.queue.read(offset, p, len, tag, ReqFlags::empty());
    }

    /// Queues a write of `len` bytes from this queue's buffer at `buf_off` to disk `offset`.
    pub fn enqueue_write(&mut self, offset: u64, buf_off: usize, len: usize, tag: usize) {
        let p = self.ptr(buf_off, len);
        self.queue.write(offset, p, len, tag, ReqFlags::empty());
    }

    /// Submits what was queued and waits (sleeping, or spinning on a poll queue) until at least
    /// `min` requests complete; appends (tag, result) of up to `max` completions to `out`.
    pub fn do_io(
        &mut self,
        min: usize,
        max: usize,
        out: &mut Vec<(usize, i32)>,
    ) -> Result<usize, blkio::Error> {
        while self.comps.len() < max {
            self.comps.push(MaybeUninit::uninit());
        }
        let got = loop {
            match self.queue.do_io(&mut self.comps[..max], min, None, None) {
                // A signal (a profiler's timer) interrupted the wait: wait again.
                Err(e) if e.errno() == blkio::Errno::INTR => continue,
                r => break r?,
            }
        };
        for c in &self.comps[..got] {
            // SAFETY: do_io initialised the first `got` entries.
            let c = unsafe { c.assume_init_ref() };
            out.push((c.user_data, c.ret));
        }
        Ok(got)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.blkio.unmap_mem_region(&self.region);
        self.queues.clear();
        self.blkio.free_mem_region(&self.region);
    }
}
