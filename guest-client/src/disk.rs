//! Connecting to a vhost-user-blk server: negotiation, shared memory, ring setup.
//!
//! The order follows what QEMU does for a vhost-user-blk device: owner, features, protocol
//! features, queue count, config space, SET_FEATURES, memory table, then per ring: size, base,
//! addresses, kick and call eventfds, enable.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel_protocol::features::{self, has};
use keel_protocol::{BlkConfig, SECTOR_SIZE, blk_config::CONFIG_SIZE};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures as Proto,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VringConfigData};

use crate::buffer::{Buffer, BufferPool};
use crate::error::{Error, Result};
use crate::memory::{Carver, SharedMemory, SharedRegion};
use crate::negotiate::{self, RingFeatures};
use crate::queue::{Completions, DeviceLimits, Doorbell, Hangup, Queue, QueueArea, QueueSetup};
use crate::ring::RingLayout;

/// Longest the handshake may take: a server that accepts but never answers (a keeld serving
/// another frontend, a socket that is not vhost-user) is reported, not waited on.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How to set the disk up.
#[derive(Clone, Debug)]
pub struct DiskOptions {
    /// Queues to set up; `None` takes every queue the device offers.
    pub queues: Option<u16>,
    /// Entries per ring (a power of two).
    pub queue_size: u16,
    /// Bytes of shared memory for I/O buffers.
    pub buffer_memory: u64,
    pub completions: Completions,
    /// Use indirect descriptors if the device offers them.
    pub indirect: bool,
    /// Use EVENT_IDX notification suppression if the device offers it.
    pub event_idx: bool,
    /// Upper bound on data buffers per request (the device's seg_max may lower it).
    pub max_segments: usize,
    /// Turn the device's write cache off (WCE = 0) before the rings start, as a guest with
    /// its cache off does: every write must then be durable when it completes.
    pub write_through: bool,
}

impl Default for DiskOptions {
    fn default() -> Self {
        Self {
            queues: None,
            queue_size: 256,
            buffer_memory: 64 << 20,
            completions: Completions::Interrupt,
            indirect: true,
            event_idx: true,
            max_segments: 128,
            write_through: false,
        }
    }
}

/// Whether a vhost-user failure means the server closed the connection.
fn closed_by_peer(e: &vhost::Error) -> bool {
    use vhost::vhost_user::Error as E;
    matches!(
        e,
        vhost::Error::VhostUserProtocol(E::SocketBroken(_) | E::PartialMessage | E::Disconnected)
    )
}

/// Ends a handshake the server does not answer: the vhost crate retries a read that times
/// out, so instead the socket is shut down once `timeout` passes, which fails the read.
struct Watchdog {
    done: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<bool>,
}

impl Watchdog {
    fn arm(stream: &UnixStream, timeout: Duration) -> std::io::Result<Self> {
        let stream = stream.try_clone()?;
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let expired = matches!(
                wait.recv_timeout(timeout),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            );
            if expired {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            expired
        });
        Ok(Self { done, thread })
    }

    /// Stops the watchdog; true if it had fired.
    fn disarm(self) -> bool {
        let _ = self.done.send(());
        self.thread.join().unwrap_or(true)
    }
}

/// What was negotiated and what the device reported.
#[derive(Clone, Debug)]
pub struct DiskInfo {
    pub offered_features: u64,
    pub features: u64,
    pub offered_protocol_features: u64,
    pub protocol_features: u64,
    pub config: BlkConfig,
    /// Queues the device offers.
    pub device_queues: u16,
    /// Queues set up.
    pub queues: u16,
    pub queue_size: u16,
    pub max_segments: usize,
    pub limits: DeviceLimits,
}

impl DiskInfo {
    pub fn capacity(&self) -> u64 {
        self.limits.capacity
    }

    /// The logical block size: what the device states, or 512.
    pub fn block_size(&self) -> u32 {
        if has(self.features, features::BLK_SIZE) && self.config.blk_size >= SECTOR_SIZE as u32 {
            self.config.blk_size
        } else {
            SECTOR_SIZE as u32
        }
    }
}

/// The vhost-user connection; the server stops serving the rings when it closes.
struct Connection {
    frontend: Frontend,
}

/// Whether the peer left an HTTP answer on `stream` (an HTTP server answers a vhost-user
/// message with an error and hangs up, so the client's next write fails before it reads).
fn answered_http(stream: &UnixStream) -> bool {
    use std::io::Read;
    let mut head = [0u8; 5];
    stream.set_nonblocking(true).is_ok()
        && (&*stream).read(&mut head).is_ok_and(|n| n == head.len())
        && &head == b"HTTP/"
}

impl Hangup for Connection {
    fn hangup_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }
}

/// A connected vhost-user-blk disk. Hands out its [`Queue`]s, one per thread.
pub struct Disk {
    info: DiskInfo,
    pool: Arc<BufferPool>,
    queues: Vec<Option<Queue>>,
    _conn: Arc<Connection>,
}

impl Disk {
    /// Connects to the server listening on `socket` and sets up the queues; the whole
    /// handshake must finish within [`REPLY_TIMEOUT`].
    pub fn connect(socket: impl AsRef<Path>, options: &DiskOptions) -> Result<Self> {
        Self::connect_within(socket.as_ref(), options, REPLY_TIMEOUT)
    }

    /// [`connect`](Self::connect), waiting at most `timeout` for each answer.
    pub fn connect_within(socket: &Path, options: &DiskOptions, timeout: Duration) -> Result<Self> {
        if !RingLayout::valid_size(options.queue_size) {
            return Err(Error::BadQueueSize(options.queue_size));
        }
        if !socket.exists() {
            return Err(Error::NoSocket(socket.to_path_buf()));
        }
        let connect_err = |e: std::io::Error| Error::Connect {
            path: socket.to_path_buf(),
            source: vhost::Error::IOError(e),
        };
        let stream = UnixStream::connect(socket).map_err(connect_err)?;
        let watchdog = Watchdog::arm(&stream, timeout).map_err(connect_err)?;
        // A second handle on the socket, to read what a peer that hung up had said first.
        let probe = stream.try_clone().map_err(connect_err)?;
        let result = Self::set_up(Frontend::from_stream(stream, 1), options);
        let fired = watchdog.disarm();
        match result {
            Err(Error::Protocol { step, .. }) if fired => Err(Error::NoAnswer { step }),
            Err(_) if fired => Err(Error::NoAnswer { step: "setup" }),
            Err(Error::Protocol { step, source }) if closed_by_peer(&source) => {
                if answered_http(&probe) {
                    Err(Error::NotVhostUser { step })
                } else {
                    Err(Error::HungUp { step })
                }
            }
            Err(Error::Protocol {
                step,
                source: vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::InvalidMessage),
            }) => Err(Error::NotVhostUser { step }),
            other => other,
        }
    }

    /// The handshake and ring setup on a connected frontend.
    fn set_up(mut fe: Frontend, options: &DiskOptions) -> Result<Self> {
        fe.set_owner().map_err(Error::protocol("SET_OWNER"))?;
        let offered = fe.get_features().map_err(Error::protocol("GET_FEATURES"))?;
        let ring = RingFeatures {
            indirect: options.indirect,
            event_idx: options.event_idx,
        };
        let acked = negotiate::virtio_features(offered, ring)?;
        let offered_proto = fe
            .get_protocol_features()
            .map_err(Error::protocol("GET_PROTOCOL_FEATURES"))?;
        let proto = negotiate::protocol_features(offered_proto)?;
        fe.set_protocol_features(proto)
            .map_err(Error::protocol("SET_PROTOCOL_FEATURES"))?;
        if proto.contains(Proto::REPLY_ACK) {
            // Every request that has no reply of its own is acknowledged, so a server that
            // rejects, say, the memory table says so here instead of failing silently later.
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let max_rings = if proto.contains(Proto::MQ) {
            fe.get_queue_num()
                .map_err(Error::protocol("GET_QUEUE_NUM"))?
        } else {
            1
        };
        if options.write_through {
            // Flags 0, as QEMU sends for a guest's write: QEMU's own vhost-user-blk export
            // takes any other value for a migration's and refuses it.
            fe.set_config(WCE_OFFSET, VhostUserConfigFlags::empty(), &[0])
                .map_err(Error::protocol("SET_CONFIG"))?;
        }
        let config = read_config(&mut fe)?;

        let device_queues = if has(acked, features::MQ) {
            config.num_queues.max(1)
        } else {
            1
        }
        .min(u16::try_from(max_rings).unwrap_or(u16::MAX));
        let queues = options.queues.unwrap_or(device_queues);
        if queues == 0 || queues > device_queues {
            return Err(Error::TooFewQueues {
                offered: device_queues,
                wanted: queues,
            });
        }
        let size = options.queue_size;
        let seg_max = if has(acked, features::SEG_MAX) && config.seg_max > 0 {
            config.seg_max as usize
        } else {
            options.max_segments
        };
        let max_segments = options
            .max_segments
            .min(seg_max)
            .min(usize::from(size) - 2)
            .max(1);
        let limits = DeviceLimits::new(acked, &config);

        fe.set_features(acked)
            .map_err(Error::protocol("SET_FEATURES"))?;

        let area_bytes = QueueArea::bytes(size, max_segments);
        let total = u64::from(queues) * area_bytes + Carver::pages(options.buffer_memory);
        let shm = SharedMemory::new(total)?;
        let regions = shm.region_infos()?;
        if proto.contains(Proto::CONFIGURE_MEM_SLOTS) {
            for r in &regions {
                fe.add_mem_region(r)
                    .map_err(Error::protocol("ADD_MEM_REG"))?;
            }
        } else {
            fe.set_mem_table(&regions)
                .map_err(Error::protocol("SET_MEM_TABLE"))?;
        }

        let mem = SharedRegion::new(shm.memory())?;
        let mut carver = Carver::new(shm.size());
        let areas = (0..queues)
            .map(|_| QueueArea::carve(&mut carver, size, max_segments))
            .collect::<Result<Vec<_>>>()?;
        let (pool_start, pool_len) = carver.rest();
        let pool = BufferPool::new(mem.clone(), pool_start, pool_len);

        let conn = Arc::new(Connection {
            frontend: fe.clone(),
        });
        let mut handles = Vec::with_capacity(usize::from(queues));
        for (index, area) in (0..queues).zip(areas) {
            let setup = QueueSetup {
                index,
                area,
                indirect: has(acked, features::RING_INDIRECT_DESC),
                event_idx: has(acked, features::RING_EVENT_IDX),
                completions: options.completions,
                max_segments,
                limits: limits.clone(),
            };
            let doorbell = Doorbell::new(Some(Arc::clone(&conn) as Arc<dyn Hangup>))?;
            // The queue zeroes its ring before the server may look at it.
            let queue = Queue::new(
                setup,
                mem.clone(),
                Arc::clone(&pool),
                doorbell,
                Some(Arc::clone(&conn) as Arc<dyn Send + Sync>),
            )?;
            start_ring(&mut fe, &shm, index, &area, queue.doorbell())?;
            handles.push(Some(queue));
        }

        Ok(Self {
            info: DiskInfo {
                offered_features: offered,
                features: acked,
                offered_protocol_features: offered_proto.bits(),
                protocol_features: proto.bits(),
                config,
                device_queues,
                queues,
                queue_size: size,
                max_segments,
                limits,
            },
            pool,
            queues: handles,
            _conn: conn,
        })
    }

    pub fn info(&self) -> &DiskInfo {
        &self.info
    }

    /// Takes queue `index` out of the disk (each queue can be taken once).
    pub fn take_queue(&mut self, index: u16) -> Option<Queue> {
        self.queues.get_mut(usize::from(index))?.take()
    }

    /// Takes every queue not yet taken.
    pub fn take_queues(&mut self) -> Vec<Queue> {
        self.queues.iter_mut().filter_map(Option::take).collect()
    }

    /// A zeroed buffer from the disk's shared memory, usable on any of its queues.
    pub fn alloc(&self, len: usize) -> Result<Buffer> {
        self.pool.alloc(len)
    }
}

/// Offset of `writeback` (WCE) in virtio-blk's config space.
const WCE_OFFSET: u32 = 32;

fn read_config(fe: &mut Frontend) -> Result<BlkConfig> {
    let (_, payload) = fe
        .get_config(
            0,
            CONFIG_SIZE as u32,
            VhostUserConfigFlags::empty(),
            &[0u8; CONFIG_SIZE],
        )
        .map_err(Error::protocol("GET_CONFIG"))?;
    Ok(BlkConfig::from_bytes(&payload))
}

/// Hands ring `index` to the server. The ring memory must already be initialised: the
/// server may start reading it as soon as the kick eventfd arrives.
fn start_ring(
    fe: &mut Frontend,
    shm: &SharedMemory,
    index: u16,
    area: &QueueArea,
    doorbell: &Doorbell,
) -> Result<()> {
    let i = usize::from(index);
    let ring = &area.ring;
    fe.set_vring_num(i, ring.size())
        .map_err(Error::protocol("SET_VRING_NUM"))?;
    fe.set_vring_base(i, 0)
        .map_err(Error::protocol("SET_VRING_BASE"))?;
    let addrs = VringConfigData {
        queue_max_size: ring.size(),
        queue_size: ring.size(),
        flags: 0,
        desc_table_addr: shm.host_address(ring.desc_table())?,
        used_ring_addr: shm.host_address(ring.used())?,
        avail_ring_addr: shm.host_address(ring.avail())?,
        log_addr: None,
    };
    fe.set_vring_addr(i, &addrs)
        .map_err(Error::protocol("SET_VRING_ADDR"))?;
    fe.set_vring_call(i, doorbell.call_fd())
        .map_err(Error::protocol("SET_VRING_CALL"))?;
    fe.set_vring_kick(i, doorbell.kick_fd())
        .map_err(Error::protocol("SET_VRING_KICK"))?;
    fe.set_vring_enable(i, true)
        .map_err(Error::protocol("SET_VRING_ENABLE"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_protocol::features::bit;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    const GET_FEATURES: u32 = 1;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    /// Header flags of a reply: version 1, REPLY.
    const REPLY: u32 = 0x1 | 0x4;

    /// A server that only answers the two feature queries, with the given bits.
    fn fake_server(
        features: u64,
        protocol: u64,
    ) -> (tempfile::TempDir, std::thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("s")).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut hdr = [0u8; 12];
            while s.read_exact(&mut hdr).is_ok() {
                let req = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
                let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
                let mut body = vec![0u8; size as usize];
                if s.read_exact(&mut body).is_err() {
                    return;
                }
                let value = match req {
                    GET_FEATURES => features,
                    GET_PROTOCOL_FEATURES => protocol,
                    _ => continue,
                };
                let mut reply = Vec::new();
                reply.extend_from_slice(&req.to_le_bytes());
                reply.extend_from_slice(&REPLY.to_le_bytes());
                reply.extend_from_slice(&8u32.to_le_bytes());
                reply.extend_from_slice(&value.to_le_bytes());
                if s.write_all(&reply).is_err() {
                    return;
                }
            }
        });
        (dir, server)
    }

    #[test]
    fn a_server_without_config_space_is_refused_by_name() {
        let (dir, server) = fake_server(negotiate::REQUIRED, Proto::MQ.bits());
        match Disk::connect(dir.path().join("s"), &DiskOptions::default()) {
            Err(Error::RefusedProtocolFeatures(names)) => assert_eq!(names, "CONFIG"),
            Err(e) => panic!("expected RefusedProtocolFeatures, got {e}"),
            Ok(_) => panic!("expected RefusedProtocolFeatures, got a disk"),
        }
        server.join().unwrap();
    }

    #[test]
    fn a_server_without_version_1_is_refused_by_name() {
        let features = bit(features::VHOST_USER_PROTOCOL_FEATURES) | bit(features::FLUSH);
        let (dir, server) = fake_server(features, Proto::all().bits());
        match Disk::connect(dir.path().join("s"), &DiskOptions::default()) {
            Err(Error::MissingFeatures(names)) => assert_eq!(names, "VERSION_1"),
            Err(e) => panic!("expected MissingFeatures, got {e}"),
            Ok(_) => panic!("expected MissingFeatures, got a disk"),
        }
        server.join().unwrap();
    }

    #[test]
    fn a_server_that_never_answers_is_reported_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent");
        let listener = UnixListener::bind(&path).unwrap();
        // Accepts and reads, never answers (a socket that speaks another protocol).
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        });
        let got = Disk::connect_within(
            &path,
            &DiskOptions::default(),
            std::time::Duration::from_millis(100),
        );
        match got {
            Err(Error::NoAnswer { step }) => assert_eq!(step, "GET_FEATURES"),
            Err(e) => panic!("expected NoAnswer, got {e}"),
            Ok(_) => panic!("expected NoAnswer, got a disk"),
        }
        server.join().unwrap();
    }

    #[test]
    fn an_http_answer_is_named_as_not_vhost_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("http");
        let listener = UnixListener::bind(&path).unwrap();
        // Answers its first read like an HTTP server that cannot parse the request.
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut first = [0u8; 12];
            let _ = s.read_exact(&mut first);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        });
        match Disk::connect(&path, &DiskOptions::default()) {
            Err(e @ Error::NotVhostUser { .. }) => {
                assert!(e.to_string().contains("speaks HTTP"), "{e}")
            }
            Err(e) => panic!("expected NotVhostUser, got {e:?}"),
            Ok(_) => panic!("expected NotVhostUser, got a disk"),
        }
        server.join().unwrap();
    }

    #[test]
    fn bad_options_are_refused_before_connecting() {
        let options = DiskOptions {
            queue_size: 100,
            ..DiskOptions::default()
        };
        assert!(matches!(
            Disk::connect("/nonexistent", &options),
            Err(Error::BadQueueSize(100))
        ));
        assert!(matches!(
            Disk::connect("/nonexistent/socket", &DiskOptions::default()),
            Err(Error::NoSocket(_))
        ));
    }
}
