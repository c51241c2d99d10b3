//! Live-import crash campaign: per point, a source (a sparse raw file, or a qcow2 chain of two
//! layers made with `qemu-img`/`qemu-io`, every block's content known, some holes) is imported
//! live by a real keeld while a writer in the test process writes, partly overwrites and
//! discards random blocks, flushing now and then. keeld gets SIGKILL at a seeded random moment
//! (some while it is still starting), is restarted on the same config, and every block is
//! checked against the model: a block the guest wrote and flushed never reverts to the source
//! or to an older write, a block it never wrote reads the source (zeroes over a hole), and a
//! block written since the last FLUSH reads its flushed content or one of the writes since,
//! whole. After a few kills the import is left to finish: every block is checked again, the
//! source is moved away and the disk reread, and `keel fsck` must find the container clean.
//!
//! `KEEL_IMPORT_CRASH_POINTS` (default 6, about a minute on two cores) is the number of
//! sources; `KEEL_IMPORT_CRASH_SEED` replays a run (printed, as is the failing point's kill).

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_backend::control::client::ControlClient;
use keel_client::{Disk, DiskOptions, Queue};
use keel_protocol::control::{DiskStats, ImportState};
use keel_tests::keeld::{LoggedKeeld, keel_binary, kill9, wait_for_socket};
use keel_tests::pattern;

mod import_crash_support;
use import_crash_support::{BLOCK, BLOCKS, MIB, Model, SECTOR, SIZE, make_source};

/// Slow enough that the kills land while the copy runs.
const IMPORT_RATE: &str = "8M";
const KILLS_PER_POINT: u64 = 3;
/// Requests between FLUSHes, picked per write phase.
const FLUSH_EVERY: [u64; 4] = [1, 4, 16, 64];
const MIN_DELAY_MS: u64 = 30;
const MAX_DELAY_MS: u64 = 1500;
/// One kill in this many first kills a keeld that is still starting, within this window.
const STARTUP_KILL_EVERY: u64 = 4;
const STARTUP_WINDOW_MS: u64 = 60;
const DEFAULT_POINTS: u64 = 6;
const START_TIMEOUT: Duration = Duration::from_secs(20);
const FINISH_TIMEOUT: Duration = Duration::from_secs(120);

fn points_total() -> u64 {
    keel_tests::campaign::points("KEEL_IMPORT_CRASH_POINTS", DEFAULT_POINTS)
}

fn base_seed() -> u64 {
    keel_tests::campaign::seed("KEEL_IMPORT_CRASH_SEED")
}

fn config(source: &str, rate: Option<&str>) -> String {
    let rate = rate.map_or(String::new(), |r| format!("import_rate = \"{r}\"\n"));
    format!(
        "[server]\ncontrol_socket = \"control.sock\"\n\n[[disk]]\nname = \"d\"\n\
         socket = \"d.sock\"\nengine = \"keel\"\npath = \"d.keel\"\n\
         import_from = \"{source}\"\n{rate}"
    )
}

/// Totals over the campaign, printed at the end.
#[derive(Default)]
struct Totals {
    kills: u64,
    kills_at_startup: u64,
    kills_mid_copy: u64,
    /// Restarts whose import resumed past block 0 (a checkpoint had written its cursor).
    resumed_past_start: u64,
    writes: u64,
    /// Reads during the writes, each checked against the last acknowledged writes.
    reads: u64,
    flushes: u64,
}

/// One source's campaign.
struct Point {
    seed: u64,
    label: String,
    dir: tempfile::TempDir,
    source: &'static str,
    model: Model,
    last_kill: String,
}

impl Point {
    fn new(index: u64, base_seed: u64) -> Self {
        let seed = base_seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut rng = fastrand::Rng::with_seed(seed);
        let qcow2 = index % 2 == 1;
        // On disk, not in memory: the container opens with O_DIRECT as users get it.
        let dir = tempfile::tempdir().expect("tempdir");
        let (source, view) = make_source(dir.path(), qcow2, &mut rng);
        std::fs::write(
            dir.path().join("keel.toml"),
            config(source, Some(IMPORT_RATE)),
        )
        .expect("config");
        let label = format!("point {index} ({source})");
        Self {
            seed,
            label,
            dir,
            source,
            model: Model::new(view),
            last_kill: "none yet".into(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn fail(&self, what: &str) -> ! {
        let log = std::fs::read_to_string(self.path("keeld.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{}: {what}\nthe kill before: {}\nreplay: KEEL_IMPORT_CRASH_SEED={} \
             KEEL_IMPORT_CRASH_POINTS={} cargo test -p keel-tests --test import_crash\n\
             keeld log (last lines):\n{}",
            self.label,
            self.last_kill,
            base_seed(),
            points_total(),
            tail.join("\n")
        )
    }

    fn start(&self) -> LoggedKeeld {
        let keeld = LoggedKeeld::spawn(self.dir.path());
        for socket in ["d.sock", "control.sock"] {
            if !wait_for_socket(&self.path(socket), START_TIMEOUT) {
                self.fail("keeld did not start listening");
            }
        }
        keeld
    }

    fn connect(&self) -> Queue {
        let options = DiskOptions {
            queues: Some(1),
            ..DiskOptions::default()
        };
        // keeld may still be tearing down the probe connection of `wait_for_socket`.
        let started = Instant::now();
        loop {
            match Disk::connect(self.path("d.sock"), &options) {
                Ok(mut d) => return d.take_queue(0).expect("queue 0"),
                Err(e) if started.elapsed() > Duration::from_secs(5) => {
                    self.fail(&format!("connect: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Where the last start resumed the copy, as keeld logs it.
    fn resumed_from(&self) -> Option<u64> {
        let log = std::fs::read_to_string(self.path("keeld.log")).ok()?;
        let (_, after) = log.rsplit_once(" from byte ")?;
        after.split(';').next()?.trim().parse().ok()
    }

    fn stats(&self) -> DiskStats {
        ControlClient::new(&self.path("control.sock"))
            .get("/v1/disks/d/stats")
            .unwrap_or_else(|e| self.fail(&format!("stats: {e}")))
    }

    /// Reads every block and checks it against the model; then FLUSHes, so what was read is
    /// durable and becomes the model's durable content.
    fn check(&mut self, q: &mut Queue, when: &str) {
        let (read, wrong) = self.read_and_compare(q, when);
        if !wrong.is_empty() {
            let first: Vec<&str> = wrong.iter().take(8).map(|(_, w)| w.as_str()).collect();
            self.fail(&format!(
                "{when}: {} blocks wrong, the first:\n{}",
                wrong.len(),
                first.join("\n")
            ));
        }
        q.flush()
            .unwrap_or_else(|e| self.fail(&format!("{when}: flush: {e}")));
        self.model.pending.clear();
        self.model.durable = read;
    }

    /// The whole disk, and the blocks the model does not allow (with why).
    fn read_and_compare(&self, q: &mut Queue, when: &str) -> (Vec<u8>, Vec<(u64, String)>) {
        let mut read = Vec::with_capacity(SIZE as usize);
        for off in (0..SIZE).step_by(MIB as usize) {
            let got = q
                .read_vec(off, MIB as usize)
                .unwrap_or_else(|e| self.fail(&format!("{when}: read at {off}: {e}")));
            read.extend_from_slice(&got);
        }
        let wrong = (0..BLOCKS)
            .filter(|&b| !self.model.allowed(b, &read[Model::range(b)]))
            .map(|b| (b, self.model.describe(b, &read[Model::range(b)])))
            .collect();
        (read, wrong)
    }

    /// Writes until the disk fails under it (keeld killed): whole blocks (one to four),
    /// sectors within a block and discards of a block, with a FLUSH every `flush_every`
    /// writes; between them, reads of one to eight blocks, each of which must hold what the
    /// last write acknowledged left there (or the source's bytes, if none).
    fn write_until_killed(
        &mut self,
        q: &mut Queue,
        rng: &mut fastrand::Rng,
        totals: &mut Totals,
        kill_label: &str,
    ) {
        let flush_every = FLUSH_EVERY[rng.usize(0..FLUSH_EVERY.len())];
        let mut generation = rng.u64(..);
        let mut writes = 0u64;
        loop {
            generation += 1;
            let result = match rng.u8(0..10) {
                2 | 3 => {
                    let blocks = rng.u64(1..=8);
                    let first = rng.u64(0..=BLOCKS - blocks);
                    let Ok(got) = q.read_vec(first * BLOCK as u64, blocks as usize * BLOCK) else {
                        return;
                    };
                    self.check_read(first, &got, kill_label);
                    totals.reads += 1;
                    continue;
                }
                0 => {
                    let block = rng.u64(0..BLOCKS);
                    let offset = rng.usize(0..BLOCK / SECTOR) * SECTOR;
                    let data = pattern(generation, SECTOR);
                    self.model.write(block, offset, &data);
                    q.write_slice(block * BLOCK as u64 + offset as u64, &data)
                }
                1 => {
                    let block = rng.u64(0..BLOCKS);
                    self.model.write(block, 0, &[0; BLOCK]);
                    q.discard(block * BLOCK as u64, BLOCK as u64)
                }
                _ => {
                    let blocks = rng.u64(1..=4);
                    let first = rng.u64(0..=BLOCKS - blocks);
                    let data = pattern(generation, blocks as usize * BLOCK);
                    for (i, chunk) in data.chunks(BLOCK).enumerate() {
                        self.model.write(first + i as u64, 0, chunk);
                    }
                    q.write_slice(first * BLOCK as u64, &data)
                }
            };
            if result.is_err() {
                return;
            }
            totals.writes += 1;
            writes += 1;
            if writes.is_multiple_of(flush_every) {
                if q.flush().is_err() {
                    return;
                }
                self.model.flushed();
                totals.flushes += 1;
            }
        }
    }

    /// A read that completed while the copy runs: every block as the last acknowledged write
    /// left it, or the source's bytes where the guest never wrote.
    fn check_read(&self, first: u64, got: &[u8], when: &str) {
        for (i, block) in got.chunks(BLOCK).enumerate() {
            let lba = first + i as u64;
            if block != self.model.latest(lba).as_slice() {
                self.fail(&format!(
                    "a read while writing before {when}: {}",
                    self.model.describe(lba, block)
                ));
            }
        }
    }

    /// One kill: maybe a kill while keeld starts; then start, check, write, and SIGKILL at a
    /// random moment (reading the import's state just before).
    fn kill(&mut self, kill: u64, totals: &mut Totals) {
        let mut rng = fastrand::Rng::with_seed(self.seed ^ (kill + 1).wrapping_mul(0x2545_f491));
        if rng.u64(0..STARTUP_KILL_EVERY) == 0 {
            let delay = rng.u64(0..STARTUP_WINDOW_MS);
            let keeld = LoggedKeeld::spawn(self.dir.path());
            std::thread::sleep(Duration::from_millis(delay));
            keeld.kill();
            totals.kills_at_startup += 1;
            self.last_kill = format!("kill {kill}: {delay} ms after the spawn");
        }
        let keeld = self.start();
        let mut q = self.connect();
        if self.resumed_from().is_some_and(|byte| byte > 0) {
            totals.resumed_past_start += 1;
        }
        self.check(&mut q, &format!("after restart, before kill {kill}"));
        let delay = rng.u64(MIN_DELAY_MS..=MAX_DELAY_MS);
        let pid = keeld.pid();
        let at_kill = Arc::new(Mutex::new(None));
        let killer = {
            let at_kill = at_kill.clone();
            let control = self.path("control.sock");
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay));
                let stats: Option<DiskStats> =
                    ControlClient::new(&control).get("/v1/disks/d/stats").ok();
                *at_kill.lock().unwrap() = stats.and_then(|s| s.import);
                kill9(pid);
            })
        };
        self.write_until_killed(&mut q, &mut rng, totals, &format!("kill {kill}"));
        killer.join().expect("killer thread");
        keeld.kill();
        drop(q);
        let import = at_kill.lock().unwrap().take();
        if import
            .as_ref()
            .is_some_and(|i| i.state == ImportState::Copying)
        {
            totals.kills_mid_copy += 1;
        }
        totals.kills += 1;
        self.last_kill = format!(
            "kill {kill}: {delay} ms into the writes, import then {}",
            import.map_or("unknown".into(), |i| format!(
                "{:?} at {} of {} bytes",
                i.state, i.copied_bytes, i.total_bytes
            ))
        );
    }

    fn wait_for_done(&self) {
        let deadline = Instant::now() + FINISH_TIMEOUT;
        loop {
            let import = self.stats().import;
            match import {
                Some(i) if i.state == ImportState::Done => {
                    assert_eq!(i.copied_bytes, SIZE);
                    return;
                }
                // A finished import a restart found done is no longer reported.
                None => return,
                Some(i) if Instant::now() > deadline => {
                    self.fail(&format!("the import did not finish: {i:?}"))
                }
                Some(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The import finishes at full speed; the disk then reads right without its source, and
    /// the container is clean.
    fn finish(&mut self) {
        std::fs::write(self.path("keel.toml"), config(self.source, None)).unwrap();
        let keeld = self.start();
        let mut q = self.connect();
        self.check(&mut q, "after the last restart");
        self.wait_for_done();
        self.check(&mut q, "import done");
        drop(q);
        let status = keeld.terminate();
        if !status.success() {
            self.fail(&format!("SIGTERM: {status}"));
        }
        std::fs::create_dir(self.path("gone")).unwrap();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let name = entry.unwrap().file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".img") || name.ends_with(".qcow2") {
                std::fs::rename(self.path(&name), self.path("gone").join(&*name)).unwrap();
            }
        }
        let keeld = self.start();
        let mut q = self.connect();
        if let Some(i) = self.stats().import {
            self.fail(&format!("a finished import is still reported: {i:?}"));
        }
        self.check(&mut q, "without the source");
        drop(q);
        let status = keeld.terminate();
        if !status.success() {
            self.fail(&format!("SIGTERM without the source: {status}"));
        }
        let out = Command::new(keel_binary())
            .current_dir(self.dir.path())
            .args(["fsck", "d.keel"])
            .output()
            .expect("run keel fsck");
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.contains(" 0 problems") {
            self.fail(&format!(
                "fsck: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    fn run(mut self, totals: &mut Totals) {
        for kill in 0..KILLS_PER_POINT {
            self.kill(kill, totals);
        }
        self.finish();
        println!(
            "{}: {} kills, import finished, fsck clean",
            self.label, KILLS_PER_POINT
        );
    }
}

#[test]
fn live_import_survives_kill_9_at_random_points() {
    let seed = base_seed();
    let points = points_total();
    println!("import crash campaign seed {seed} (KEEL_IMPORT_CRASH_SEED to replay)");
    let started = Instant::now();
    let mut totals = Totals::default();
    for index in 0..points {
        Point::new(index, seed).run(&mut totals);
    }
    println!(
        "seed {seed}: {points} sources, {} kills under writes ({} mid-copy), {} at startup, \
         {} restarts resumed past block 0, {} writes, {} checked reads, {} flushes, {:.1} s",
        totals.kills,
        totals.kills_mid_copy,
        totals.kills_at_startup,
        totals.resumed_past_start,
        totals.writes,
        totals.reads,
        totals.flushes,
        started.elapsed().as_secs_f64()
    );
    // The campaign must have killed keeld while the copy ran, or it tested nothing.
    assert!(
        points == 0 || totals.kills_mid_copy > 0,
        "no kill landed mid-copy"
    );
}

/// The campaign's check can fail: after one kill, the model is told that a block of source
/// data and a hole of the source were written by the guest and flushed (they were not); the
/// check after the next restart must name exactly those two, as reading the source.
#[test]
fn the_check_finds_blocks_that_read_the_source_instead_of_a_guest_write() {
    let mut totals = Totals::default();
    let mut point = Point::new(0, base_seed());
    point.kill(0, &mut totals);
    let source = point.model.source.clone();
    let untouched = |b: &u64| {
        point.model.durable[Model::range(*b)] == source[Model::range(*b)]
            && !point.model.pending.contains_key(b)
    };
    let is_zero = |b: &u64| source[Model::range(*b)].iter().all(|x| *x == 0);
    let data = (0..BLOCKS)
        .find(|b| untouched(b) && !is_zero(b))
        .expect("a block of source data the writer left alone");
    let hole = (0..BLOCKS)
        .find(|b| untouched(b) && is_zero(b))
        .expect("a hole the writer left alone");
    // Straight into the durable contents: the writes still pending from before the kill stay
    // pending (promoting them with a FLUSH would make their loss, which the kill allows, an
    // error).
    for block in [data, hole] {
        point.model.durable[Model::range(block)].copy_from_slice(&pattern(block ^ 0xbad, BLOCK));
    }
    let keeld = point.start();
    let mut q = point.connect();
    let (_, wrong) = point.read_and_compare(&mut q, "tampered model");
    drop(q);
    keeld.kill();
    let named: Vec<u64> = wrong.iter().map(|(b, _)| *b).collect();
    assert_eq!(named, vec![data.min(hole), data.max(hole)], "{wrong:?}");
    assert!(
        wrong
            .iter()
            .any(|(_, w)| w.contains("the source's content (stale)")),
        "{wrong:?}"
    );
}
