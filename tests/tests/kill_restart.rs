//! Kill -9 campaign: keeld is SIGKILLed at seeded random moments while keel-client's verify
//! writer keeps 32 writes in flight with a FLUSH every few dozen; keeld is restarted on the same
//! files and every block is checked against the verify state: each write acknowledged before a
//! completed FLUSH must read back, and no block may be corrupt, torn, stale or newer than allowed.
//!
//! Four disks: the raw and keel engines, each on one file and on a mirror of two; and a fifth,
//! an encrypted keel container (AES-256-XTS, O_DIRECT as by default). A few kill
//! points land while keeld is still starting (opening, replaying its journal, resyncing a
//! mirror) instead of under load.
//!
//! `KEEL_KILL_POINTS` (default 200) is the total over the four disks; `KEEL_KILL_SEED` replays a
//! run (the default seed comes from the clock and is printed, as is each failing point's delay).

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_backend::control::client::ControlClient;
use keel_client::verify::check::{CheckReport, Rules};
use keel_client::verify::state::State;
use keel_client::verify::{self, VerifyConfig, VerifyError};
use keel_client::{Disk, DiskOptions, Queue};
use keel_tests::keeld::{LoggedKeeld, kill9, wait_for_socket};

const BLOCK: usize = 4096;
/// 8 MiB of verify blocks: small enough to check in a few milliseconds, large enough that a
/// write phase rewrites each block a few times.
const BLOCKS: u64 = 2048;
const DISK_SIZE: &str = "8M";
const IODEPTH: usize = 32;
/// Writes between FLUSHes, picked per kill point.
const FLUSH_EVERY: [usize; 4] = [8, 32, 64, 256];
/// Time under load before the kill.
const MIN_DELAY_MS: u64 = 50;
const MAX_DELAY_MS: u64 = 300;
/// One kill point in this many lands while keeld is starting, within this window of the spawn.
const STARTUP_KILL_EVERY: u64 = 8;
const STARTUP_WINDOW_MS: u64 = 30;
const DEFAULT_POINTS: u64 = 200;
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum Layout {
    Single,
    Mirror,
    /// One encrypted container (keel engine), with its key in `d.key`.
    Encrypted,
}

#[derive(Clone, Copy, Debug)]
enum Engine {
    Raw,
    Keel,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Raw => "raw",
            Engine::Keel => "keel",
        }
    }
}

/// The config of the disk under test, in its own directory.
fn config(engine: Engine, layout: Layout) -> String {
    let ext = match engine {
        Engine::Raw => "img",
        Engine::Keel => "keel",
    };
    // Mirrors run as users get them, with O_DIRECT (`direct` left at its default).
    let storage = match layout {
        Layout::Single => format!("path = \"d.{ext}\"\ndirect = false"),
        Layout::Mirror => format!("mirror = [\"d0.{ext}\", \"d1.{ext}\"]"),
        Layout::Encrypted => {
            format!("path = \"d.{ext}\"\nencryption = \"aes-xts-256\"\nkey_file = \"d.key\"")
        }
    };
    format!(
        "[server]\nlog_level = \"warn\"\ncontrol_socket = \"control.sock\"\n\n[[disk]]\nname = \"d\"\nsocket = \"d.sock\"\nengine = \"{}\"\n{storage}\nsize = \"{DISK_SIZE}\"\n",
        engine.name()
    )
}

fn points_total() -> u64 {
    keel_tests::campaign::points("KEEL_KILL_POINTS", DEFAULT_POINTS)
}

fn base_seed() -> u64 {
    keel_tests::campaign::seed("KEEL_KILL_SEED")
}

/// A directory in memory if there is one: a SIGKILL keeps the page cache, so a disk file gives
/// the same guarantees as tmpfs here, and the verify state's fsyncs would otherwise leave only a
/// few epochs per kill point.
fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir")
}

/// One disk's campaign: its files, the verify state and what the runs did.
struct Campaign {
    label: String,
    dir: tempfile::TempDir,
    /// A mirror's component files (empty for a single file).
    components: Vec<&'static str>,
    /// The run's seed (printed for replay); `seed` mixes in the disk.
    base_seed: u64,
    seed: u64,
    verify: VerifyConfig,
    kills_under_load: u64,
    kills_at_startup: u64,
    generations: u64,
    /// Writes in those epochs (an epoch at the end of a pass may be shorter: an upper bound).
    flushed_writes: u64,
    started: Instant,
    /// How the last kill point ended keeld (named when the check after it fails).
    last_kill: String,
}

impl Campaign {
    fn new(engine: Engine, layout: Layout, base_seed: u64, salt: u64) -> Self {
        let components = match (engine, layout) {
            (_, Layout::Single | Layout::Encrypted) => Vec::new(),
            (Engine::Raw, Layout::Mirror) => vec!["d0.img", "d1.img"],
            (Engine::Keel, Layout::Mirror) => vec!["d0.keel", "d1.keel"],
        };
        let seed = base_seed ^ salt;
        let dir = scratch_dir();
        std::fs::write(dir.path().join("keel.toml"), config(engine, layout)).expect("config");
        let key: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(73) ^ 0x5c).collect();
        std::fs::write(dir.path().join("d.key"), key).expect("key file");
        let label = format!("{} {:?}", engine.name(), layout).to_lowercase();
        Self {
            label,
            dir,
            components,
            base_seed,
            seed,
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
            kills_under_load: 0,
            kills_at_startup: 0,
            generations: 0,
            flushed_writes: 0,
            started: Instant::now(),
            last_kill: "none yet".into(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn replay_hint(&self, point: u64, what: &str) -> String {
        let log = std::fs::read_to_string(self.path("keeld.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{}: kill point {point}: {what}\nthe kill before: {}\nreplay: KEEL_KILL_SEED={} \
             KEEL_KILL_POINTS={} cargo test -p keel-tests --test kill_restart\n\
             keeld log (last lines):\n{}",
            self.label,
            self.last_kill,
            self.base_seed,
            points_total(),
            tail.join("\n")
        )
    }

    fn start(&self, point: u64) -> LoggedKeeld {
        let keeld = LoggedKeeld::spawn(self.dir.path());
        if !wait_for_socket(&self.path("d.sock"), START_TIMEOUT) {
            panic!(
                "{}",
                self.replay_hint(point, "keeld did not start listening")
            );
        }
        keeld
    }

    fn connect(&self, point: u64) -> Disk {
        let options = DiskOptions {
            queues: Some(1),
            buffer_memory: 4 << 20,
            ..DiskOptions::default()
        };
        // keeld may still be tearing down the probe connection of `wait_for_socket`.
        let started = Instant::now();
        loop {
            match Disk::connect(self.path("d.sock"), &options) {
                Ok(d) => return d,
                Err(e) if started.elapsed() > Duration::from_secs(5) => {
                    panic!("{}", self.replay_hint(point, &format!("connect: {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn state(&self, point: u64) -> State {
        verify::open_state(&self.path("verify.state"), &self.verify)
            .unwrap_or_else(|e| panic!("{}", self.replay_hint(point, &format!("state: {e}"))))
    }

    fn check_report(&self, queue: &mut Queue, point: u64) -> (State, CheckReport) {
        let state = self.state(point);
        let report = verify::check(queue, &state, &self.verify)
            .unwrap_or_else(|e| panic!("{}", self.replay_hint(point, &format!("check: {e}"))));
        (state, report)
    }

    /// Checks every block against the saved state; panics with the offenders.
    fn check(&self, queue: &mut Queue, point: u64, context: &str) -> u64 {
        let (state, report) = self.check_report(queue, point);
        assert!(
            report.problems() == 0,
            "{}",
            self.replay_hint(
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
        state.last_generation
    }

    /// One kill point: restart, check, write under load and kill. One point in
    /// `STARTUP_KILL_EVERY` first kills a keeld that is still starting.
    fn kill_point(&mut self, point: u64) {
        let mut rng = fastrand::Rng::with_seed(self.seed ^ point.wrapping_mul(0x9e37_79b9));
        let at_startup = rng.u64(0..STARTUP_KILL_EVERY) == 0;
        let startup_delay = rng.u64(0..STARTUP_WINDOW_MS);
        let delay = rng.u64(MIN_DELAY_MS..=MAX_DELAY_MS);
        let flush_every = FLUSH_EVERY[rng.usize(0..FLUSH_EVERY.len())];

        if at_startup {
            let keeld = LoggedKeeld::spawn(self.dir.path());
            std::thread::sleep(Duration::from_millis(startup_delay));
            keeld.kill();
            self.kills_at_startup += 1;
            self.last_kill = format!("point {point}: {startup_delay} ms after the spawn");
        }

        let keeld = self.start(point);
        let mut disk = self.connect(point);
        let mut queue = disk.take_queue(0).expect("queue 0");
        let before = self.check(&mut queue, point, "after restart");
        let config = VerifyConfig {
            flush_every,
            ..self.verify.clone()
        };
        let state_path = self.path("verify.state");
        let mut state = verify::open_state(&state_path, &config).expect("state");
        let killed = Arc::new(AtomicBool::new(false));
        let pid = keeld.pid();
        let killer = {
            let killed = killed.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay));
                killed.store(true, Ordering::SeqCst);
                kill9(pid);
            })
        };
        let outcome = verify::write(&mut queue, &mut state, &state_path, &config);
        killer.join().expect("killer thread");
        let was_killed = killed.load(Ordering::SeqCst);
        keeld.kill();
        drop(queue);
        drop(disk);
        let what = format!("delay {delay} ms, flush every {flush_every}");
        match outcome {
            Err(VerifyError::Disk(_)) if was_killed => {}
            Err(e) => panic!(
                "{}",
                self.replay_hint(point, &format!("{what}: write: {e}"))
            ),
            Ok(_) => panic!("{}", self.replay_hint(point, "endless write ended")),
        }
        self.kills_under_load += 1;
        self.last_kill = format!("point {point}: {what}");
        let epochs = state.last_generation.saturating_sub(before);
        self.generations += epochs;
        self.flushed_writes += epochs * flush_every as u64;
    }

    /// Waits until every component of a mirror is in sync (the resync after the last unclean
    /// stop has finished), as the control API reports it.
    fn wait_for_mirror_in_sync(&self, point: u64) {
        if self.components.is_empty() {
            return;
        }
        let client = ControlClient::new(&self.path("control.sock"));
        let started = Instant::now();
        loop {
            let status: Result<serde_json::Value, _> = client.get("/v1/disks/d/mirror");
            let status = status.unwrap_or_else(|e| {
                panic!(
                    "{}",
                    self.replay_hint(point, &format!("mirror status: {e}"))
                )
            });
            let components = status["components"].as_array().cloned().unwrap_or_default();
            let in_sync = components.len() == self.components.len()
                && components
                    .iter()
                    .all(|c| c["state"] == "in_sync" && c["resync"].is_null());
            if in_sync {
                return;
            }
            if started.elapsed() > START_TIMEOUT {
                panic!(
                    "{}",
                    self.replay_hint(point, &format!("mirror never in sync: {status}"))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After a clean stop with every component in sync, the components hold the same bytes.
    fn assert_components_equal(&self, point: u64) {
        let Some((first, rest)) = self.components.split_first() else {
            return;
        };
        let reference = std::fs::read(self.path(first)).expect("read component");
        for other in rest {
            let data = std::fs::read(self.path(other)).expect("read component");
            let differ = reference
                .iter()
                .zip(&data)
                .position(|(a, b)| a != b)
                .map(|at| at as u64)
                .or((reference.len() != data.len())
                    .then_some(reference.len().min(data.len()) as u64));
            if let Some(at) = differ {
                panic!(
                    "{}",
                    self.replay_hint(
                        point,
                        &format!("in-sync components {first} and {other} differ at byte {at}")
                    )
                );
            }
        }
    }

    fn run(mut self, points: u64) {
        self.kill_points(points);
        self.final_check(points);
    }

    fn kill_points(&mut self, points: u64) {
        self.started = Instant::now();
        for point in 0..points {
            self.kill_point(point);
        }
    }

    fn final_check(self, points: u64) {
        // A last restart: everything must check out, and a clean stop must flush and exit 0.
        let keeld = self.start(points);
        let mut disk = self.connect(points);
        let mut queue = disk.take_queue(0).expect("queue 0");
        let generation = self.check(&mut queue, points, "final check");
        drop(queue);
        drop(disk);
        self.wait_for_mirror_in_sync(points);
        let status = keeld.terminate();
        assert!(
            status.success(),
            "{}",
            self.replay_hint(points, &format!("SIGTERM: {status}"))
        );
        self.assert_components_equal(points);
        let log = File::open(self.path("keeld.log")).map(|f| f.metadata().map(|m| m.len()));
        println!(
            "{}: seed {}: {} kill points under load, {} at startup, {} flushed epochs \
             (at most {} writes), final generation {generation}, {:.1} s (log {} bytes)",
            self.label,
            self.base_seed,
            self.kills_under_load,
            self.kills_at_startup,
            self.generations,
            self.flushed_writes,
            self.started.elapsed().as_secs_f64(),
            log.ok().and_then(Result::ok).unwrap_or(0)
        );
    }
}

/// Kill points for one of the four disks: a quarter of the total, at least one.
fn campaign(engine: Engine, layout: Layout, salt: u64) {
    let points = points_total().div_ceil(4).max(1);
    let seed = base_seed();
    println!("kill campaign seed {seed} (KEEL_KILL_SEED to replay)");
    Campaign::new(engine, layout, seed, salt).run(points);
}

#[test]
fn raw_disk_keeps_every_flushed_write_across_kill_9() {
    campaign(Engine::Raw, Layout::Single, 0);
}

#[test]
fn keel_disk_keeps_every_flushed_write_across_kill_9() {
    campaign(Engine::Keel, Layout::Single, 1 << 40);
}

#[test]
fn encrypted_keel_disk_keeps_every_flushed_write_across_kill_9() {
    campaign(Engine::Keel, Layout::Encrypted, 5 << 40);
}

#[test]
fn raw_mirror_keeps_every_flushed_write_across_kill_9() {
    campaign(Engine::Raw, Layout::Mirror, 2 << 40);
}

#[test]
fn keel_mirror_keeps_every_flushed_write_across_kill_9() {
    campaign(Engine::Keel, Layout::Mirror, 3 << 40);
}

/// The campaign's check can fail: after a few kill points on the raw disk, one flushed block of
/// the image is zeroed and another has a byte flipped, behind keeld's back; the check after the
/// next restart must name both.
#[test]
fn the_check_finds_a_lost_and_a_corrupt_block() {
    use std::os::unix::fs::FileExt;
    let mut c = Campaign::new(Engine::Raw, Layout::Single, base_seed(), 4 << 40);
    c.kill_points(3);
    let state = c.state(3);
    let mut flushed =
        (0..BLOCKS).filter(|&b| state.flushed[b as usize] > 0 && state.pending_for(b).is_none());
    let (zeroed, flipped) = (flushed.next().unwrap(), flushed.next().unwrap());
    let image = OpenOptions::new()
        .read(true)
        .write(true)
        .open(c.path("d.img"))
        .unwrap();
    image
        .write_all_at(&[0; BLOCK], zeroed * BLOCK as u64)
        .unwrap();
    let mut byte = [0u8];
    let at = flipped * BLOCK as u64 + 1000;
    image.read_exact_at(&mut byte, at).unwrap();
    image.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    let keeld = c.start(3);
    let mut disk = c.connect(3);
    let mut queue = disk.take_queue(0).unwrap();
    let (_, report) = c.check_report(&mut queue, 3);
    keeld.kill();
    assert_eq!(
        (report.problems(), report.never_written, report.corrupt),
        (2, 1, 1),
        "{}",
        report.to_text()
    );
    let named: Vec<u64> = report.first_offenders.iter().map(|o| o.block).collect();
    assert_eq!(named, vec![zeroed.min(flipped), zeroed.max(flipped)]);
}
