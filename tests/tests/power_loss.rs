//! Power loss through the whole stack: keel-client's verify writer (32 writes in flight, FLUSH
//! every few dozen) talks vhost-user to a disk server whose engine (raw, or keel: the storage
//! core with its journal, checkpoints and cleaner) sits on a mirror of in-memory
//! fault-injecting devices. At a seeded random moment the power is cut: every device
//! stops at once and forgets its unflushed writes (or, in torn mode, keeps a random subset of
//! them, some cut at a sector boundary). The disk is then served again from what survived, the
//! mirror reconciles its copies, and every block must hold what the last completed FLUSH
//! promised.
//!
//! Mirrors of one and of two components, under each engine. `KEEL_POWER_POINTS` (default 200)
//! is the total over the four layouts; `KEEL_POWER_SEED` replays.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use keel_backend::config::{Config, DiskConfig};
use keel_backend::device::BlockDevice;
use keel_backend::device::mirror::{DeviceProvider, MirrorConfig, MirrorDevice, ResyncScheduler};
use keel_backend::engine::Engine;
use keel_backend::engine::device::MirroredRawEngine;
use keel_backend::engine::keel::KeelEngine;
use keel_backend::testing::{CrashMode, FaultyDevice};
use keel_backend::vhost::backend::DiskContext;
use keel_backend::vhost::server::DiskServer;
use keel_client::verify::check::Rules;
use keel_client::verify::state::State;
use keel_client::verify::{self, VerifyConfig, VerifyError, block};
use keel_client::{Disk, DiskOptions, Queue};
use keel_tests::keeld::wait_for_socket;

const BLOCK: usize = 4096;
const BLOCKS: u64 = 1024;
const DISK_BYTES: u64 = 8 << 20;
const IODEPTH: usize = 32;
const FLUSH_EVERY: [usize; 3] = [8, 32, 128];
const MIN_DELAY_MS: u64 = 20;
const MAX_DELAY_MS: u64 = 200;
const DEFAULT_POINTS: u64 = 200;

fn points_total() -> u64 {
    keel_tests::campaign::points("KEEL_POWER_POINTS", DEFAULT_POINTS)
}

fn base_seed() -> u64 {
    keel_tests::campaign::seed("KEEL_POWER_SEED")
}

/// The power of one boot: every device operation holds it shared, a cut takes it exclusively,
/// so the cut falls between operations and nothing reaches a device afterwards.
#[derive(Default)]
struct Power {
    off: RwLock<bool>,
}

/// A fault-injecting device behind one boot's power switch.
struct Powered {
    dev: Arc<FaultyDevice>,
    power: Arc<Power>,
    /// Answer FLUSH without making anything durable (a broken device, to show the check bites).
    flush_lies: bool,
}

impl Powered {
    fn on<T>(&self, op: impl FnOnce(&FaultyDevice) -> io::Result<T>) -> io::Result<T> {
        let off = self.power.off.read().unwrap_or_else(|e| e.into_inner());
        if *off {
            return Err(io::Error::other("the power is off"));
        }
        op(&self.dev)
    }
}

impl BlockDevice for Powered {
    fn len(&self) -> u64 {
        self.dev.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.on(|d| d.read_at(buf, offset))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.on(|d| d.write_at(buf, offset))
    }

    fn flush(&self) -> io::Result<()> {
        if self.flush_lies {
            return self.on(|_| Ok(()));
        }
        self.on(|d| d.flush())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.on(|d| d.discard(offset, len))
    }
}

/// Every device of the machine (component data and mirror metadata), by path; they outlive
/// boots, as disks outlive a power cut.
#[derive(Default)]
struct Devices {
    by_path: Mutex<HashMap<PathBuf, Arc<FaultyDevice>>>,
    seed: u64,
}

impl Devices {
    fn get(&self, path: PathBuf, len: u64) -> Arc<FaultyDevice> {
        let mut map = self.by_path.lock().unwrap();
        let n = map.len() as u64;
        Arc::clone(
            map.entry(path)
                .or_insert_with(|| Arc::new(FaultyDevice::seeded(len, self.seed ^ n))),
        )
    }

    /// The cut: what every device holds afterwards is what it had made durable, plus in torn
    /// mode a random part of the rest.
    fn crash(&self, mode: CrashMode) {
        for dev in self.by_path.lock().unwrap().values() {
            dev.crash(mode);
        }
    }
}

/// Hands the mirror this boot's view of the devices.
struct Provider {
    devices: Arc<Devices>,
    power: Arc<Power>,
    flush_lies: bool,
}

impl Provider {
    fn powered(&self, path: PathBuf, len: u64) -> Arc<dyn BlockDevice> {
        Arc::new(Powered {
            dev: self.devices.get(path, len),
            power: Arc::clone(&self.power),
            flush_lies: self.flush_lies,
        })
    }
}

impl DeviceProvider for Provider {
    fn open_data(&self, path: &Path, create_len: Option<u64>) -> io::Result<Arc<dyn BlockDevice>> {
        Ok(self.powered(path.to_path_buf(), create_len.unwrap_or(DISK_BYTES)))
    }

    fn open_meta(&self, path: &Path, len: u64) -> io::Result<Arc<dyn BlockDevice>> {
        Ok(self.powered(path.with_extension("meta"), len))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        Err(io::Error::other(format!(
            "{}: no deltas in this test",
            path.display()
        )))
    }
}

/// One served boot.
struct Boot {
    server: DiskServer,
    power: Arc<Power>,
}

struct Campaign {
    label: String,
    base_seed: u64,
    seed: u64,
    components: usize,
    /// The storage core instead of the raw engine.
    keel: bool,
    flush_lies: bool,
    devices: Arc<Devices>,
    scheduler: Arc<ResyncScheduler>,
    dir: tempfile::TempDir,
    disk: DiskConfig,
    verify: VerifyConfig,
    boots: u64,
    cuts: [u64; 2],
    generations: u64,
}

impl Campaign {
    fn new(components: usize, keel: bool, salt: u64) -> Self {
        let base_seed = base_seed();
        let seed = base_seed ^ salt;
        // The verify state is fsynced after every FLUSH: keep it in memory if possible.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("tempdir");
        let file = dir.path().join("keel.toml");
        std::fs::write(
            &file,
            format!(
                "[[disk]]\nname = \"d\"\nsocket = \"d.sock\"\nengine = \"null\"\nsize = {DISK_BYTES}\n"
            ),
        )
        .unwrap();
        let disk = Config::load(&file).expect("config").disks.remove(0);
        Self {
            label: format!(
                "{} engine, mirror of {components}",
                if keel { "keel" } else { "raw" }
            ),
            keel,
            base_seed,
            seed,
            components,
            flush_lies: false,
            devices: Arc::new(Devices {
                seed,
                ..Devices::default()
            }),
            scheduler: ResyncScheduler::new(2),
            dir,
            disk,
            verify: VerifyConfig {
                block_size: BLOCK,
                blocks: BLOCKS,
                seed: seed | 1,
                iodepth: IODEPTH,
                flush_every: FLUSH_EVERY[0],
                rounds: 0,
                duration: None,
                rules: Rules::default(),
            },
            boots: 0,
            cuts: [0; 2],
            generations: 0,
        }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.path().join("verify.state")
    }

    fn hint(&self, point: u64, what: &str) -> String {
        format!(
            "{}: power-loss point {point}: {what}\nreplay: KEEL_POWER_SEED={} KEEL_POWER_POINTS={} \
             cargo test -p keel-tests --test power_loss",
            self.label,
            self.base_seed,
            points_total()
        )
    }

    fn boot(&mut self, point: u64) -> Boot {
        let power = Arc::new(Power::default());
        let provider = Arc::new(Provider {
            devices: Arc::clone(&self.devices),
            power: Arc::clone(&power),
            flush_lies: self.flush_lies,
        });
        let paths = (0..self.components)
            .map(|i| PathBuf::from(format!("c{i}")))
            .collect();
        let mut config = MirrorConfig::new("d", paths);
        config.size = Some(if self.keel {
            KeelEngine::container_bytes(DISK_BYTES).expect("container size")
        } else {
            DISK_BYTES
        });
        config.chunk_size = 64 << 10;
        config.options.assume_clean = self.boots == 0;
        config.options.scheduler = Some(Arc::clone(&self.scheduler));
        config.options.intent_region = 1 << 20;
        let dev = MirrorDevice::open_with(config, provider)
            .unwrap_or_else(|e| panic!("{}", self.hint(point, &format!("mirror open: {e}"))));
        let engine: Arc<dyn Engine> = if self.keel {
            let format = (self.boots == 0).then_some(DISK_BYTES);
            Arc::new(
                KeelEngine::on_device(Arc::new(dev), format, 1, false, "d").unwrap_or_else(|e| {
                    panic!("{}", self.hint(point, &format!("container open: {e}")))
                }),
            )
        } else {
            Arc::new(MirroredRawEngine::new(Arc::new(dev), false))
        };
        let ctx = Arc::new(DiskContext::new(&self.disk, engine, Arc::default()));
        let socket = self.dir.path().join("d.sock");
        let server = DiskServer::start(ctx, socket.clone()).expect("serve");
        assert!(wait_for_socket(&socket, Duration::from_secs(5)));
        self.boots += 1;
        Boot { server, power }
    }

    fn connect(&self, point: u64) -> (Disk, Queue) {
        let options = DiskOptions {
            queues: Some(1),
            buffer_memory: 4 << 20,
            ..DiskOptions::default()
        };
        let started = Instant::now();
        loop {
            match Disk::connect(self.dir.path().join("d.sock"), &options) {
                Ok(mut d) => {
                    let q = d.take_queue(0).expect("queue 0");
                    return (d, q);
                }
                Err(e) if started.elapsed() > Duration::from_secs(5) => {
                    panic!("{}", self.hint(point, &format!("connect: {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn state(&self) -> State {
        verify::open_state(&self.state_path(), &self.verify).expect("state")
    }

    /// Checks every block (a torn block is allowed where a write was in flight), then settles
    /// the blocks that were in flight by writing their flushed generation again, so the next
    /// write phase starts from a state with nothing pending.
    fn check_and_settle(&self, queue: &mut Queue, point: u64, context: &str) -> u64 {
        let mut state = self.state();
        let rules = Rules {
            allow_torn_pending: true,
        };
        let config = VerifyConfig {
            rules,
            ..self.verify.clone()
        };
        let report = verify::check(queue, &state, &config)
            .unwrap_or_else(|e| panic!("{}", self.hint(point, &format!("check: {e}"))));
        assert!(
            report.problems() == 0,
            "{}",
            self.hint(
                point,
                &format!(
                    "{context}: generation {}, pending {} blocks of generation {}\n{}",
                    state.last_generation,
                    state.pending.len(),
                    state.pending_generation,
                    report.to_text()
                )
            )
        );
        if !state.pending.is_empty() {
            for &b in &state.pending {
                let generation = u64::from(state.flushed[b as usize]);
                let image = if generation == 0 {
                    vec![0; BLOCK]
                } else {
                    block::expected(BLOCK, state.seed, b, generation)
                };
                queue
                    .write_slice(b * BLOCK as u64, &image)
                    .unwrap_or_else(|e| panic!("{}", self.hint(point, &format!("settle: {e}"))));
            }
            queue.flush().expect("flush");
            state.last_generation = state.last_generation.max(state.pending_generation);
            state.set_pending(0, Vec::new());
            state.save(&self.state_path()).expect("save state");
        }
        state.last_generation
    }

    fn point(&mut self, point: u64) {
        let mut rng = fastrand::Rng::with_seed(self.seed ^ point.wrapping_mul(0x9e37_79b9));
        let delay = rng.u64(MIN_DELAY_MS..=MAX_DELAY_MS);
        let flush_every = FLUSH_EVERY[rng.usize(0..FLUSH_EVERY.len())];
        let torn = rng.bool();
        let boot = self.boot(point);
        let (disk, mut queue) = self.connect(point);
        let before = self.check_and_settle(&mut queue, point, "after power came back");

        let config = VerifyConfig {
            flush_every,
            ..self.verify.clone()
        };
        let mut state = self.state();
        let power = Arc::clone(&boot.power);
        let devices = Arc::clone(&self.devices);
        let mode = if torn {
            CrashMode::RandomSubset
        } else {
            CrashMode::DropAll
        };
        let cut = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay));
            let mut off = power.off.write().unwrap_or_else(|e| e.into_inner());
            *off = true;
            devices.crash(mode);
        });
        let outcome = verify::write(&mut queue, &mut state, &self.state_path(), &config);
        cut.join().expect("power cut");
        drop(queue);
        drop(disk);
        // The server's own flush at stop fails: the power is off.
        let _ = boot.server.stop();
        let what = format!("delay {delay} ms, flush every {flush_every}, {mode:?}");
        match outcome {
            Err(VerifyError::Disk(_)) => {}
            Err(e) => panic!("{}", self.hint(point, &format!("{what}: write: {e}"))),
            Ok(_) => panic!("{}", self.hint(point, "endless write ended")),
        }
        self.cuts[usize::from(torn)] += 1;
        self.generations += state.last_generation.saturating_sub(before);
    }

    fn run(mut self, points: u64) {
        let started = Instant::now();
        for point in 0..points {
            self.point(point);
        }
        let boot = self.boot(points);
        let (disk, mut queue) = self.connect(points);
        let generation = self.check_and_settle(&mut queue, points, "final check");
        drop(queue);
        drop(disk);
        boot.server.stop().expect("clean stop");
        println!(
            "{}: seed {}: {} power cuts ({} dropping unflushed writes, {} tearing them), {} \
             flushed epochs, final generation {generation}, {:.1} s",
            self.label,
            self.base_seed,
            points,
            self.cuts[0],
            self.cuts[1],
            self.generations,
            started.elapsed().as_secs_f64()
        );
    }
}

fn campaign(components: usize, keel: bool, salt: u64) {
    let points = points_total().div_ceil(4).max(1);
    println!(
        "power-loss seed {} (KEEL_POWER_SEED to replay)",
        base_seed()
    );
    Campaign::new(components, keel, salt).run(points);
}

#[test]
fn raw_disk_on_one_device_keeps_every_flushed_write_across_power_loss() {
    campaign(1, false, 0);
}

#[test]
fn raw_disk_on_a_mirror_keeps_every_flushed_write_across_power_loss() {
    campaign(2, false, 1 << 40);
}

#[test]
fn keel_disk_on_one_device_keeps_every_flushed_write_across_power_loss() {
    campaign(1, true, 3 << 40);
}

#[test]
fn keel_disk_on_a_mirror_keeps_every_flushed_write_across_power_loss() {
    campaign(2, true, 4 << 40);
}

/// The check can fail: on devices that answer FLUSH without making anything durable, the first
/// power cut loses flushed writes and the check after it says so.
#[test]
#[should_panic(expected = "after power came back")]
fn a_device_that_ignores_flush_is_caught() {
    let mut c = Campaign::new(1, false, 2 << 40);
    c.flush_lies = true;
    c.run(3);
}
