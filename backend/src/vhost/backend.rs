//! The vhost-user-blk device model: features, config space, and the glue between the
//! vhost-user-backend crate's worker threads and Keel's queue workers.
//!
//! One [`BlkBackend`] lives for one frontend connection; what outlives connections (the engine,
//! the counters, the limits) is in [`DiskContext`].

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_protocol::features::{self as f, bit};
use keel_protocol::{BlkConfig, ID_BYTES, SECTOR_SIZE};
use log::{debug, info, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use super::config_change::ConfigNotifier;
use super::dirty_log::{LogSwitch, VHOST_F_LOG_ALL};
use super::exit_events::ExitEvents;
use super::frontends::{FrontendGate, Wake};
use super::inflight::InflightSlot;
use super::request::Limits;
use super::stats::{DiskStats, RateLimit};
use super::worker::{QueueWorker, Vring};
use crate::config::DiskConfig;
use crate::engine::delay::DelayQueue;
use crate::engine::handover::HandoverEngine;
use crate::engine::{Engine, EngineError, GuestMemory};
use crate::qos::{DiskQos, ThrottledQueue};

/// Byte offset of `writeback` (WCE) in the virtio-blk config space.
pub const WCE_OFFSET: u32 = 32;
/// Largest discard / write-zeroes segment offered: 1 GiB in sectors.
const MAX_DISCARD_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;
/// Segments per discard / write-zeroes request.
const MAX_DISCARD_SEG: u32 = 32;
/// Most config-space bytes one GET_CONFIG answers (the vhost-user message limit).
const MAX_CONFIG_READ: u32 = 256;
/// Largest single data segment advertised (SIZE_MAX).
const SIZE_MAX: u32 = 1 << 20;

/// What a disk keeps across frontend connections.
pub struct DiskContext {
    pub name: String,
    pub engine: Arc<dyn Engine>,
    pub stats: Arc<DiskStats>,
    pub limits: Limits,
    /// GET_ID answer: the serial, NUL-padded.
    pub serial: [u8; ID_BYTES],
    pub queues: u16,
    pub queue_size: u16,
    pub logical_block_size: u32,
    pub poll: Duration,
    /// Latency added to every request (`delay_us`).
    pub delay: Duration,
    /// The attached frontend's channel for config-change messages.
    pub config_change: Arc<ConfigNotifier>,
    pub log_limit: RateLimit,
    /// The disk's I/O limits, shared by its queues.
    pub qos: Arc<DiskQos>,
    /// Which attached frontend is served (two are attached during a live migration).
    pub frontends: FrontendGate,
    /// For a `handover = true` disk, the engine that another keeld may hold in turn (`engine`
    /// is the same object): rings are served only while this keeld holds it.
    pub handover: Option<Arc<HandoverEngine>>,
}

impl DiskContext {
    pub fn new(cfg: &DiskConfig, engine: Arc<dyn Engine>, stats: Arc<DiskStats>) -> Self {
        let caps = engine.capabilities();
        let read_only = cfg.read_only || caps.read_only;
        let mut serial = [0u8; ID_BYTES];
        let n = cfg.serial.len().min(ID_BYTES);
        serial[..n].copy_from_slice(&cfg.serial.as_bytes()[..n]);
        let limits = Limits {
            capacity: engine.capacity(),
            seg_max: u32::from(cfg.queue_size).saturating_sub(2).clamp(1, 1022),
            max_discard_seg: MAX_DISCARD_SEG,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_seg: MAX_DISCARD_SEG,
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
            read_only,
            discard: caps.discard && !read_only,
            write_zeroes: caps.write_zeroes && !read_only,
        };
        Self {
            name: cfg.name.clone(),
            engine,
            stats,
            limits,
            serial,
            queues: cfg.queues,
            queue_size: cfg.queue_size,
            logical_block_size: cfg.logical_block_size,
            poll: Duration::from_micros(u64::from(cfg.poll_us)),
            delay: Duration::from_micros(u64::from(cfg.delay_us)),
            config_change: Arc::default(),
            log_limit: RateLimit::new(Duration::from_secs(1), 10),
            qos: Arc::new(DiskQos::new(&cfg.limits)),
            frontends: FrontendGate::default(),
            handover: None,
        }
    }

    /// The context of a `handover = true` disk.
    pub fn with_handover(
        cfg: &DiskConfig,
        engine: Arc<HandoverEngine>,
        stats: Arc<DiskStats>,
    ) -> Self {
        Self {
            handover: Some(Arc::clone(&engine)),
            ..Self::new(cfg, engine, stats)
        }
    }

    /// With every ring of every attached frontend stopped (or the frontend gone), a handover
    /// disk is given up for the other keeld (its queues are drained: each stopped ring, and
    /// each session that ended, finished its requests).
    pub fn release_if_idle(&self) {
        if let Some(h) = &self.handover
            && !self.frontends.any_running()
        {
            h.release();
        }
    }

    /// The virtio feature bits offered.
    pub fn features(&self) -> u64 {
        let mut feats = bit(f::VERSION_1)
            | bit(f::SEG_MAX)
            | bit(f::SIZE_MAX)
            | bit(f::BLK_SIZE)
            | bit(f::TOPOLOGY)
            | bit(f::FLUSH)
            | bit(f::CONFIG_WCE)
            | bit(f::MQ)
            | bit(f::RING_EVENT_IDX)
            | bit(f::RING_INDIRECT_DESC)
            | bit(f::VHOST_USER_PROTOCOL_FEATURES);
        if self.limits.read_only {
            feats |= bit(f::RO);
        }
        if self.limits.discard {
            feats |= bit(f::DISCARD);
        }
        if self.limits.write_zeroes {
            feats |= bit(f::WRITE_ZEROES);
        }
        feats
    }

    /// The limits with the engine's capacity now (the disk may have grown since the session
    /// started).
    pub fn limits_now(&self) -> Limits {
        Limits {
            capacity: self.engine.capacity(),
            ..self.limits
        }
    }

    /// The config space, with the write cache on (`wce`) or off.
    pub fn blk_config(&self, wce: bool) -> BlkConfig {
        let lbs = self.logical_block_size;
        // Report 4 KiB physical blocks (or the logical size if larger) so guests align to them.
        let physical = lbs.max(4096);
        BlkConfig {
            capacity: self.engine.capacity() / SECTOR_SIZE,
            size_max: SIZE_MAX,
            seg_max: self.limits.seg_max,
            blk_size: lbs,
            physical_block_exp: (physical / lbs).trailing_zeros() as u8,
            alignment_offset: 0,
            min_io_size: 1,
            opt_io_size: 0,
            wce: u8::from(wce),
            num_queues: self.queues,
            max_discard_sectors: self.limits.max_discard_sectors,
            max_discard_seg: self.limits.max_discard_seg,
            discard_sector_alignment: lbs / SECTOR_SIZE as u32,
            max_write_zeroes_sectors: self.limits.max_write_zeroes_sectors,
            max_write_zeroes_seg: self.limits.max_write_zeroes_seg,
            write_zeroes_may_unmap: 1,
        }
    }
}

/// State of one frontend connection that workers read.
#[derive(Debug, Default)]
pub struct SessionState {
    /// This frontend's id in the disk's [`FrontendGate`].
    pub frontend: u64,
    /// Dirty-page logging for live migration (SET_LOG_BASE, LOG_ALL).
    pub dirty: Arc<LogSwitch>,
    /// The guest turned the write cache off: writes must be durable when they complete.
    pub write_through: AtomicBool,
    /// The frontend's inflight area, if it keeps one.
    pub inflight: InflightSlot,
}

/// The vhost-user backend of one disk for one frontend connection.
pub struct BlkBackend {
    ctx: Arc<DiskContext>,
    session: Arc<SessionState>,
    memory: GuestMemoryAtomic<GuestMemory>,
    /// One per virtqueue; `workers[i]` is locked only by worker thread `i`, and by the frontend
    /// thread when it stops ring `i`.
    workers: Vec<Mutex<Option<QueueWorker>>>,
    acked_features: AtomicU64,
    /// The worker threads' exit events, closed when this connection's backend is dropped.
    exit_events: ExitEvents,
}

/// Epoll id of the engine's completion fd in each worker thread (ids up to `num_queues` are the
/// crate's).
fn completion_event(queues: u16) -> u16 {
    queues + 1
}

impl BlkBackend {
    pub fn new(ctx: Arc<DiskContext>, memory: GuestMemoryAtomic<GuestMemory>) -> Self {
        let workers = (0..ctx.queues).map(|_| Mutex::new(None)).collect();
        let session = SessionState {
            frontend: ctx.frontends.register(),
            ..SessionState::default()
        };
        Self {
            ctx,
            session: Arc::new(session),
            memory,
            workers,
            acked_features: AtomicU64::new(0),
            exit_events: ExitEvents::default(),
        }
    }

    /// Creates each queue's engine half and registers its completion fd with the worker thread
    /// that serves the queue.
    pub fn install_workers(
        &self,
        handlers: &[Arc<VringEpollHandler<Arc<BlkBackend>>>],
    ) -> Result<(), EngineError> {
        for (index, slot) in self.workers.iter().enumerate() {
            let mut engine = self.ctx.engine.queue(index)?;
            let queue_error = |source| EngineError::Queue {
                queue: index,
                source,
            };
            engine = Box::new(
                ThrottledQueue::new(engine, Arc::clone(&self.ctx.qos)).map_err(queue_error)?,
            );
            if !self.ctx.delay.is_zero() {
                engine = Box::new(DelayQueue::new(engine, self.ctx.delay).map_err(|source| {
                    EngineError::Queue {
                        queue: index,
                        source,
                    }
                })?);
            }
            let worker = QueueWorker::new(
                index,
                Arc::clone(&self.ctx),
                Arc::clone(&self.session),
                self.memory.clone(),
                engine,
            );
            if let (Some(fd), Some(handler)) = (worker.completion_fd(), handlers.get(index)) {
                handler
                    .register_listener(
                        fd,
                        EventSet::IN,
                        u64::from(completion_event(self.ctx.queues)),
                    )
                    .map_err(|source| EngineError::Queue {
                        queue: index,
                        source,
                    })?;
            }
            if let Ok(mut guard) = slot.lock() {
                *guard = Some(worker);
            }
        }
        Ok(())
    }

    /// Finishes every queue's in-flight requests and drops the queue halves (connection over).
    pub fn shutdown(&self) {
        for slot in &self.workers {
            let worker = slot.lock().ok().and_then(|mut g| g.take());
            if let Some(mut w) = worker {
                w.drain_all();
            }
        }
    }

    /// The connection's state that workers read (the relay installs the inflight area there).
    pub fn session(&self) -> &Arc<SessionState> {
        &self.session
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features.load(Ordering::Relaxed)
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        usize::from(self.ctx.queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.ctx.queue_size)
    }

    fn features(&self) -> u64 {
        // LOG_ALL is a vhost feature, not the device's: offered for live migration.
        self.ctx.features() | VHOST_F_LOG_ALL
    }

    fn acked_features(&self, features: u64) {
        debug!("{}: guest acked {:?}", self.ctx.name, f::names(features));
        self.acked_features.store(features, Ordering::Relaxed);
        let log_all = features & VHOST_F_LOG_ALL != 0;
        if self.session.dirty.set_log_all(log_all) {
            info!(
                "disk {}: frontend {}: dirty-page logging {}",
                self.ctx.name,
                self.session.frontend,
                if log_all { "on (migration)" } else { "off" }
            );
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::LOG_SHMFD
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The vrings track EVENT_IDX themselves; the workers' notification loop works either way.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let wce = !self.session.write_through.load(Ordering::Relaxed);
        // vhost-user config messages carry at most 256 bytes; never build more than that.
        let size = size.min(MAX_CONFIG_READ);
        self.ctx
            .blk_config(wce)
            .read_window(offset as usize, size as usize)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        match (offset, buf) {
            (WCE_OFFSET, [wce]) => {
                let write_through = *wce == 0;
                debug!(
                    "{}: guest set the write cache {}",
                    self.ctx.name,
                    if write_through { "off" } else { "on" }
                );
                self.session
                    .write_through
                    .store(write_through, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "only the write-cache byte is writable, not {offset}+{}",
                    buf.len()
                ),
            )),
        }
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemory>) -> io::Result<()> {
        // The workers read the same GuestMemoryAtomic the frontend handler updates. A region
        // that runs past the end of its file would fault (SIGBUS) on first touch and kill the
        // whole daemon: refuse the table and leave the session with no memory at all.
        if let Err(e) = check_regions_inside_files(&vm_memory::GuestAddressSpace::memory(&mem)) {
            warn!(
                "{}: refusing the frontend's memory table: {e}",
                self.ctx.name
            );
            mem.lock()
                .map_err(|_| io::Error::other("guest memory lock poisoned"))?
                .replace(GuestMemory::default());
            return Err(e);
        }
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.ctx.queues).map(|i| 1u64 << i).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match self.exit_events.create() {
            Ok(pair) => Some(pair),
            Err(e) => {
                warn!("{}: cannot create a worker exit event: {e}", self.ctx.name);
                None
            }
        }
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if let Some(slot) = self.workers.get(queue_index as usize)
            && let Ok(mut guard) = slot.lock()
            && let Some(worker) = guard.as_mut()
        {
            worker.drain_all();
            worker.ring_stopped();
        }
        // Its requests are done: a frontend waiting for the disk may take it now.
        self.ctx.frontends.ring_stopped(
            &self.ctx.name,
            self.session.frontend,
            queue_index as usize,
        );
        self.ctx.release_if_idle();
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        let (Some(slot), Some(vring)) = (self.workers.get(thread_id), vrings.first()) else {
            return Ok(());
        };
        let Ok(mut guard) = slot.lock() else {
            return Ok(());
        };
        let Some(worker) = guard.as_mut() else {
            return Ok(());
        };
        match device_event {
            0 => worker.process(vring, false),
            e if e == completion_event(self.ctx.queues) => worker.process(vring, true),
            other => debug!("{}: unexpected event {other}", self.ctx.name),
        }
        Ok(())
    }
}

impl Wake for BlkBackend {
    /// Kicks every started ring of this frontend, so that its workers serve what waited.
    fn wake(&self) {
        for slot in &self.workers {
            if let Ok(guard) = slot.lock()
                && let Some(worker) = guard.as_ref()
            {
                worker.kick();
            }
        }
    }
}

/// Every file-backed region must lie inside its file: the kernel maps past EOF happily and
/// faults only when the page is touched.
fn check_regions_inside_files(mem: &GuestMemory) -> io::Result<()> {
    use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion};
    for region in mem.iter() {
        let Some(fo) = region.file_offset() else {
            continue;
        };
        let meta = fo.file().metadata()?;
        if !meta.is_file() {
            continue;
        }
        let end = fo.start().checked_add(region.len());
        if end.is_none_or(|end| end > meta.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "region at guest address {:#x} maps {} bytes from offset {} of a {}-byte file",
                    region.start_addr().0,
                    region.len(),
                    fo.start(),
                    meta.len()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EngineKind;
    use crate::engine::null::NullEngine;

    fn disk(read_only: bool) -> DiskConfig {
        DiskConfig {
            name: "d".into(),
            socket: "d.sock".into(),
            engine: EngineKind::Null,
            path: None,
            mirror: Vec::new(),
            resync_chunk: crate::config::DEFAULT_RESYNC_CHUNK,
            size: Some(1 << 30),
            resize: false,
            queues: 2,
            queue_size: 128,
            read_only,
            serial: "SERIAL-1".into(),
            direct: true,
            logical_block_size: 512,
            poll_us: 0,
            delay_us: 0,
            space: Default::default(),
            limits: crate::qos::unlimited(),
            import_from: None,
            import_rate: None,
            rbd: None,
            handover: false,
            key_file: None,
            compression: Default::default(),
        }
    }

    fn backend(read_only: bool) -> BlkBackend {
        let cfg = disk(read_only);
        let engine = Arc::new(NullEngine::new(1 << 30, read_only));
        let ctx = Arc::new(DiskContext::new(&cfg, engine, Arc::default()));
        BlkBackend::new(ctx, GuestMemoryAtomic::new(GuestMemory::default()))
    }

    #[test]
    fn features_follow_the_disk() {
        let rw = backend(false).features();
        assert!(f::has(rw, f::DISCARD) && f::has(rw, f::WRITE_ZEROES) && !f::has(rw, f::RO));
        for feat in [
            f::VERSION_1,
            f::FLUSH,
            f::CONFIG_WCE,
            f::MQ,
            f::RING_EVENT_IDX,
            f::SEG_MAX,
        ] {
            assert!(f::has(rw, feat), "{feat}");
        }
        let ro = backend(true).features();
        assert!(f::has(ro, f::RO) && !f::has(ro, f::DISCARD) && !f::has(ro, f::WRITE_ZEROES));
    }

    #[test]
    fn config_space_describes_the_disk() {
        let b = backend(false);
        let raw = b.get_config(0, 80);
        assert_eq!(raw.len(), 80, "longer reads are zero-filled, not truncated");
        let c = BlkConfig::from_bytes(&raw);
        assert_eq!(c.capacity, (1 << 30) / 512);
        assert_eq!((c.seg_max, c.num_queues, c.blk_size), (126, 2, 512));
        assert_eq!((c.wce, c.physical_block_exp), (1, 3));
        assert_eq!(b.get_config(WCE_OFFSET, 1), vec![1]);
        assert_eq!(
            b.get_config(0, u32::MAX).len(),
            256,
            "no huge allocation on request"
        );
    }

    #[test]
    fn guest_toggles_the_write_cache_and_nothing_else() {
        let b = backend(false);
        b.set_config(WCE_OFFSET, &[0]).unwrap();
        assert!(b.session.write_through.load(Ordering::Relaxed));
        assert_eq!(b.get_config(WCE_OFFSET, 1), vec![0]);
        b.set_config(WCE_OFFSET, &[1]).unwrap();
        assert!(!b.session.write_through.load(Ordering::Relaxed));
        assert!(b.set_config(0, &[0; 8]).is_err());
        assert!(b.set_config(WCE_OFFSET, &[0, 0]).is_err());
    }

    #[test]
    fn one_worker_thread_per_queue() {
        let b = backend(false);
        assert_eq!(b.queues_per_thread(), vec![0b01, 0b10]);
        assert_eq!(b.num_queues(), 2);
        assert_eq!(b.max_queue_size(), 128);
    }
}
