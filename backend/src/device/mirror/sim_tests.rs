//! Deterministic simulation of mirrors on seeded fault-injecting devices, checked against an
//! in-memory model. Every test derives all randomness from a seed and prints it on failure.

use super::*;
use crate::device::BlockDevice;
use crate::store::buf::AlignedBuf;
use crate::testing::{CrashMode, FaultyDevice, SplitMix};
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const CHUNK: u64 = 4096;

/// A component's data and metadata devices.
type DevicePair = (Arc<FaultyDevice>, Arc<FaultyDevice>);

/// In-memory devices by path; they outlive mirror instances so a "crash" can reopen them.
struct MemProvider {
    seed: u64,
    devs: Mutex<HashMap<PathBuf, DevicePair>>,
}

impl MemProvider {
    fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            seed,
            devs: Mutex::new(HashMap::new()),
        })
    }

    fn pair(&self, path: &Path) -> Option<DevicePair> {
        self.devs.lock().unwrap().get(path).cloned()
    }

    fn data(&self, path: &str) -> Arc<FaultyDevice> {
        self.pair(Path::new(path)).expect("device exists").0
    }

    /// Kills (or revives) a component's data and metadata.
    fn set_dead(&self, path: &str, dead: bool) {
        if let Some((d, m)) = self.pair(Path::new(path)) {
            d.set_dead(dead);
            m.set_dead(dead);
        }
    }

    fn crash_all(&self, mode: CrashMode) {
        for (d, m) in self.devs.lock().unwrap().values() {
            d.crash(mode);
            m.crash(mode);
        }
    }

    fn exists(&self, path: &str) -> bool {
        self.pair(Path::new(path)).is_some()
    }
}

/// Every test checks, at its end, that no device saw a transfer O_DIRECT would refuse: such a
/// transfer fails on files users get, whether or not the test injected faults.
impl Drop for MemProvider {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let devs = self.devs.lock().unwrap_or_else(|e| e.into_inner());
        for (path, (d, m)) in devs.iter() {
            let bad = d.stats().misaligned + m.stats().misaligned;
            assert_eq!(bad, 0, "{}: transfers O_DIRECT refuses", path.display());
        }
    }
}

impl DeviceProvider for MemProvider {
    fn open_data(&self, path: &Path, create_len: Option<u64>) -> io::Result<Arc<dyn BlockDevice>> {
        let mut devs = self.devs.lock().unwrap();
        if let Some((d, _)) = devs.get(path) {
            return Ok(d.clone());
        }
        let len = create_len.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let salt = self.seed ^ ((devs.len() as u64 + 1) * 0x51);
        let d = Arc::new(FaultyDevice::seeded(len, salt));
        // Like the files users get: O_DIRECT, so a misaligned buffer fails the test.
        d.set_direct(true);
        let m = Arc::new(FaultyDevice::seeded(0, salt));
        devs.insert(path.to_path_buf(), (d.clone(), m));
        Ok(d)
    }

    fn open_meta(&self, path: &Path, len: u64) -> io::Result<Arc<dyn BlockDevice>> {
        let mut devs = self.devs.lock().unwrap();
        let entry = devs
            .get_mut(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if entry.1.is_empty() {
            entry.1 = Arc::new(FaultyDevice::seeded(len, self.seed ^ 0xABCD));
            entry.1.set_direct(true);
        }
        Ok(entry.1.clone())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.devs.lock().unwrap().remove(path);
        Ok(())
    }
}

fn path(i: usize) -> String {
    format!("/sim/c{i}")
}

fn config(n: usize, chunks: u64) -> MirrorConfig {
    let mut c = MirrorConfig::new("sim", (0..n).map(|i| PathBuf::from(path(i))).collect());
    c.size = Some(chunks * CHUNK);
    c.chunk_size = CHUNK;
    c.options.assume_clean = true;
    c.options.checkpoint_chunks = 16;
    c.options.intent_region = 4 * CHUNK;
    c.options.throttle.max_yield = std::time::Duration::ZERO;
    c
}

fn open(p: &Arc<MemProvider>, n: usize, chunks: u64) -> MirrorDevice {
    MirrorDevice::open_with(config(n, chunks), p.clone()).expect("open mirror")
}

/// Like [`open`], with every write fanned out to the components on writer threads.
fn open_fanned_out(p: &Arc<MemProvider>, n: usize, chunks: u64) -> MirrorDevice {
    let mut c = config(n, chunks);
    c.options.parallel_write_min = Some(0);
    MirrorDevice::open_with(c, p.clone()).expect("open mirror")
}

/// The bytes a correct disk holds: as acknowledged, and as of the last flush.
struct Model {
    current: Vec<u8>,
    durable: Vec<u8>,
}

impl Model {
    fn new(len: usize) -> Self {
        Self {
            current: vec![0; len],
            durable: vec![0; len],
        }
    }

    fn write(&mut self, off: usize, data: &[u8]) {
        self.current[off..off + data.len()].copy_from_slice(data);
    }
}

/// A seeded write: 512-byte aligned (offset, length and buffer, as a guest's or the store's
/// are), up to three chunks long, with recognisable bytes.
fn random_write(rng: &mut SplitMix, len: u64) -> (u64, AlignedBuf) {
    let sectors = len / 512;
    let n = 1 + rng.below(3 * CHUNK / 512);
    let start = rng.below(sectors - n + 1);
    let tag = rng.next_u64();
    let data: Vec<u8> = (0..n * 512)
        .map(|i| (tag.wrapping_add(i / 8).wrapping_mul(31) >> 3) as u8)
        .collect();
    (start * 512, AlignedBuf::copy_of(&data))
}

/// An aligned buffer of `len` bytes of `byte`.
fn filled(byte: u8, len: usize) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(len);
    b.fill(byte);
    b
}

fn chunks_of(off: u64, len: usize) -> impl Iterator<Item = u64> {
    off / CHUNK..=(off + len as u64 - 1) / CHUNK
}

fn read_all(dev: &MirrorDevice) -> Vec<u8> {
    let mut buf = AlignedBuf::zeroed(dev.len() as usize);
    dev.read_at(&mut buf, 0).expect("read whole disk");
    buf.to_vec()
}

/// Chunks where two images differ (compared by crc32c per chunk).
fn differing_chunks(a: &[u8], b: &[u8]) -> Vec<usize> {
    a.chunks(CHUNK as usize)
        .zip(b.chunks(CHUNK as usize))
        .enumerate()
        .filter(|(_, (x, y))| crc32c::crc32c(x) != crc32c::crc32c(y))
        .map(|(i, _)| i)
        .collect()
}

fn assert_components_match(p: &MemProvider, n: usize, expected: &[u8], seed: u64) {
    for i in 0..n {
        let got = p.data(&path(i)).contents();
        let diff = differing_chunks(&got, expected);
        assert!(
            diff.is_empty(),
            "seed {seed}: component {i} differs in chunks {diff:?}"
        );
    }
}

fn state(dev: &MirrorDevice, i: usize) -> ComponentState {
    dev.status().components[i].state
}

#[test]
fn failed_component_mid_load_then_resync_copies_only_dirty_chunks() {
    let seed = 0x1001;
    let chunks = 256;
    let p = MemProvider::new(seed);
    let dev = open(&p, 2, chunks);
    let mut rng = SplitMix::new(seed);
    let mut model = Model::new((chunks * CHUNK) as usize);
    let mut since_flush = BTreeSet::new();
    let mut expected_dirty = BTreeSet::new();
    for step in 0..400 {
        if step == 150 {
            p.set_dead(&path(1), true);
            // What the survivor must track: everything since the last flush, and all after.
            expected_dirty = since_flush.clone();
        }
        let (off, data) = random_write(&mut rng, chunks * CHUNK);
        dev.write_at(&data, off)
            .expect("a write succeeds while one component is good");
        model.write(off as usize, &data);
        since_flush.extend(chunks_of(off, data.len()));
        if step >= 150 {
            expected_dirty.extend(chunks_of(off, data.len()));
        }
        if step % 37 == 0 {
            dev.flush().unwrap();
            since_flush.clear();
        }
        if step % 10 == 0 {
            assert!(read_all(&dev) == model.current, "seed {seed} step {step}");
        }
    }
    let st = dev.status();
    assert_eq!(st.components[0].state, ComponentState::InSync);
    assert_eq!(st.components[1].state, ComponentState::Failed);
    assert!(st.events.iter().any(|e| e.contains("component 1 failed")));
    let tracked = st.components[1].dirty_chunks;
    assert_eq!(
        tracked,
        expected_dirty.len() as u64,
        "tracking bitmap is exact"
    );
    assert!(tracked < chunks, "not a full resync");

    p.set_dead(&path(1), false);
    dev.online(1).unwrap();
    assert_eq!(state(&dev, 1), ComponentState::Stale);
    let out = dev.run_resync(1).unwrap();
    assert_eq!(
        out,
        ResyncOutcome::Completed {
            bytes: tracked * CHUNK
        }
    );
    let st = dev.status();
    assert_eq!(st.components[1].resync_bytes_copied, tracked * CHUNK);
    assert!(
        st.components
            .iter()
            .all(|c| c.state == ComponentState::InSync)
    );
    dev.flush().unwrap();
    assert!(
        read_all(&dev) == model.current,
        "disk differs from the model"
    );
    assert_components_match(&p, 2, &model.current, seed);
}

#[test]
fn crash_while_degraded_resumes_from_tracking_bitmap() {
    let seed = 0x2002;
    let chunks = 128;
    let p = MemProvider::new(seed);
    let mut rng = SplitMix::new(seed);
    let mut model = Model::new((chunks * CHUNK) as usize);
    {
        let dev = open(&p, 2, chunks);
        for step in 0..120 {
            if step == 40 {
                p.set_dead(&path(1), true);
            }
            let (off, data) = random_write(&mut rng, chunks * CHUNK);
            dev.write_at(&data, off).unwrap();
            model.write(off as usize, &data);
            if step % 25 == 24 {
                dev.flush().unwrap();
                model.durable = model.current.clone();
            }
        }
        assert_eq!(state(&dev, 1), ComponentState::Failed);
        p.crash_all(CrashMode::DropAll);
    }
    p.set_dead(&path(1), false);
    let dev = open(&p, 2, chunks);
    assert_eq!(
        state(&dev, 1),
        ComponentState::Failed,
        "the outage survives the crash"
    );
    assert!(
        read_all(&dev) == model.durable,
        "seed {seed}: disk differs from the model"
    );
    let dirty = dev.status().components[1].dirty_chunks;
    assert!(
        dirty > 0 && dirty < chunks,
        "{dirty} dirty chunks: no full resync"
    );
    dev.online(1).unwrap();
    assert_eq!(
        dev.run_resync(1).unwrap(),
        ResyncOutcome::Completed {
            bytes: dirty * CHUNK
        }
    );
    assert_components_match(&p, 2, &model.durable, seed);
}

#[test]
fn crash_during_resync_resumes_instead_of_restarting() {
    let seed = 0x3003;
    let chunks = 256;
    let p = MemProvider::new(seed);
    let mut rng = SplitMix::new(seed);
    let mut model = Model::new((chunks * CHUNK) as usize);
    let dirty;
    {
        let dev = open(&p, 2, chunks);
        dev.offline(1).unwrap();
        for _ in 0..150 {
            let (off, data) = random_write(&mut rng, chunks * CHUNK);
            dev.write_at(&data, off).unwrap();
            model.write(off as usize, &data);
        }
        dev.flush().unwrap();
        model.durable = model.current.clone();
        dirty = dev.status().components[1].dirty_chunks;
        dev.online(1).unwrap();
        assert!(matches!(
            dev.resync_step(1, 40).unwrap(),
            ResyncOutcome::Paused { bytes } if bytes == 40 * CHUNK
        ));
        // Guest writes during the resync, to synced and unsynced chunks alike.
        for _ in 0..30 {
            let (off, data) = random_write(&mut rng, chunks * CHUNK);
            dev.write_at(&data, off).unwrap();
            model.write(off as usize, &data);
        }
        dev.flush().unwrap();
        model.durable = model.current.clone();
        dev.resync_step(1, 20).unwrap();
        // Unflushed writes that the crash throws away.
        for _ in 0..10 {
            let (off, data) = random_write(&mut rng, chunks * CHUNK);
            dev.write_at(&data, off).unwrap();
        }
        p.crash_all(CrashMode::DropAll);
    }
    let dev = open(&p, 2, chunks);
    let st = dev.status();
    assert_eq!(st.components[1].state, ComponentState::Stale);
    let progress = st.components[1]
        .resync
        .clone()
        .expect("resync survives the crash");
    // The write-intent bitmap re-adds the chunks that had writes in flight at the crash.
    let (total, done) = (progress.total_chunks, progress.done_chunks);
    assert!(total >= dirty && done > 0 && done <= 60, "{total} {done}");
    assert!(
        read_all(&dev) == model.durable,
        "disk differs from the model"
    );
    let out = dev.run_resync(1).unwrap();
    assert_eq!(
        out,
        ResyncOutcome::Completed {
            bytes: (total - done) * CHUNK
        }
    );
    assert_components_match(&p, 2, &model.durable, seed);
}

/// A write made while the set had one target sets no intent bit; the resync then copies it,
/// unflushed on the source, to the returning component and flushes only that one. After a
/// crash that drops it on the source, the copies must still agree.
#[test]
fn unflushed_data_copied_by_a_resync_is_reconciled_after_a_crash() {
    let seed = 0x3103;
    let chunks = 64;
    let p = MemProvider::new(seed);
    let mut model = Model::new((chunks * CHUNK) as usize);
    {
        let dev = open(&p, 2, chunks);
        dev.offline(1).unwrap();
        let data = filled(0x77, CHUNK as usize);
        dev.write_at(&data, 5 * CHUNK).unwrap();
        model.write(5 * CHUNK as usize, &data);
        dev.online(1).unwrap();
        assert!(matches!(
            dev.run_resync(1).unwrap(),
            ResyncOutcome::Completed { .. }
        ));
        // Completing flushes the set: the write is durable everywhere.
        model.durable = model.current.clone();
        dev.offline(1).unwrap();
        let newer = filled(0x99, CHUNK as usize);
        dev.write_at(&newer, 9 * CHUNK).unwrap();
        dev.write_at(&newer, 40 * CHUNK).unwrap();
        dev.online(1).unwrap();
        // Copy chunk 9 and checkpoint, but stop before the end (which would flush the set).
        assert!(matches!(
            dev.resync_step(1, 1).unwrap(),
            ResyncOutcome::Paused { .. }
        ));
        assert_eq!(p.data(&path(1)).contents()[9 * CHUNK as usize], 0x99);
        p.crash_all(CrashMode::DropAll);
    }
    let dev = open(&p, 2, chunks);
    for i in dev.pending_resyncs() {
        dev.run_resync(i).unwrap();
    }
    assert!(
        read_all(&dev) == model.durable,
        "disk differs from the model"
    );
    assert_components_match(&p, 2, &model.durable, seed);
}

#[test]
fn delta_keeps_the_data_when_the_last_mirror_fails_during_maintenance() {
    let seed = 0x4004;
    let chunks = 128;
    let p = MemProvider::new(seed);
    let dev = open(&p, 2, chunks);
    let mut rng = SplitMix::new(seed);
    let mut model = Model::new((chunks * CHUNK) as usize);
    for _ in 0..40 {
        let (off, data) = random_write(&mut rng, chunks * CHUNK);
        dev.write_at(&data, off).unwrap();
        model.write(off as usize, &data);
    }
    dev.flush().unwrap();
    let delta = "/sim/delta1";
    dev.maintenance(1, Path::new(delta)).unwrap();
    assert_eq!(state(&dev, 1), ComponentState::Maintenance);
    let mut maintained = BTreeSet::new();
    for _ in 0..45 {
        let (off, data) = random_write(&mut rng, chunks * CHUNK);
        dev.write_at(&data, off)
            .expect("both the mirror and the delta take the write");
        model.write(off as usize, &data);
        maintained.extend(chunks_of(off, data.len()));
    }
    p.set_dead(&path(0), true);
    // The last mirror is gone: whole chunks, and parts of chunks the delta holds, still work.
    for step in 0..15u64 {
        let c = (step * 7) % chunks;
        let (off, data) = if maintained.contains(&c) {
            (c * CHUNK + 512, filled(step as u8 + 1, 1024))
        } else {
            (c * CHUNK, filled(step as u8 + 1, CHUNK as usize))
        };
        dev.write_at(&data, off).expect("the delta takes the write");
        model.write(off as usize, &data);
        maintained.insert(c);
    }
    let outside = (0..chunks).find(|c| !maintained.contains(c)).unwrap();
    assert!(
        dev.write_at(&filled(1, 512), outside * CHUNK).is_err(),
        "a partial write to a chunk only the absent component holds cannot be kept whole"
    );
    let st = dev.status();
    assert_eq!(st.components[0].state, ComponentState::Failed);
    assert_eq!(st.deltas[0].chunks_held, maintained.len() as u64);
    // New data is readable from the delta alone.
    let c = *maintained.iter().next().unwrap();
    let mut buf = AlignedBuf::zeroed(CHUNK as usize);
    dev.read_at(&mut buf, c * CHUNK).unwrap();
    assert!(*buf == model.current[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize]);

    dev.online(1).unwrap();
    let out = dev.run_resync(1).unwrap();
    assert_eq!(
        out,
        ResyncOutcome::Completed {
            bytes: maintained.len() as u64 * CHUNK
        }
    );
    assert!(
        !p.exists(delta),
        "the delta is removed once the component is back"
    );
    let disk = read_all(&dev);
    assert!(
        disk == model.current,
        "seed {seed}: disk differs from the model in chunks {:?}",
        differing_chunks(&disk, &model.current)
    );

    p.set_dead(&path(0), false);
    dev.online(0).unwrap();
    dev.run_resync(0).unwrap();
    dev.flush().unwrap();
    assert_components_match(&p, 2, &model.current, seed);
}

#[test]
fn both_components_failing_returns_errors_and_corrupts_nothing() {
    let seed = 0x5005;
    let chunks = 64;
    let p = MemProvider::new(seed);
    let dev = open(&p, 2, chunks);
    let mut rng = SplitMix::new(seed);
    let mut model = Model::new((chunks * CHUNK) as usize);
    for _ in 0..30 {
        let (off, data) = random_write(&mut rng, chunks * CHUNK);
        dev.write_at(&data, off).unwrap();
        model.write(off as usize, &data);
    }
    dev.flush().unwrap();
    p.set_dead(&path(0), true);
    p.set_dead(&path(1), true);
    assert!(dev.write_at(&filled(0xEE, 4096), 0).is_err());
    let mut buf = AlignedBuf::zeroed(4096);
    assert!(dev.read_at(&mut buf, 0).is_err());
    assert!(dev.flush().is_err());
    let st = dev.status();
    assert!(
        st.components
            .iter()
            .all(|c| c.state == ComponentState::InSync),
        "no component is taken out when none proved healthy"
    );
    p.set_dead(&path(0), false);
    p.set_dead(&path(1), false);
    assert!(
        read_all(&dev) == model.current,
        "disk differs from the model"
    );
    dev.write_at(&filled(0x11, 512), 512).unwrap();
    model.write(512, &[0x11; 512]);
    dev.flush().unwrap();
    assert_components_match(&p, 2, &model.current, seed);
}

#[test]
fn write_intent_reconciles_copies_torn_differently_by_a_power_loss() {
    let seed = 0x7007;
    let chunks = 128;
    let p = MemProvider::new(seed);
    let mut rng = SplitMix::new(seed);
    let mut written = BTreeSet::new();
    {
        let dev = open(&p, 2, chunks);
        for _ in 0..40 {
            let (off, data) = random_write(&mut rng, chunks * CHUNK);
            dev.write_at(&data, off).unwrap();
            // The epoch just flushed stays in the intent bitmap (hysteresis).
            written.extend(chunks_of(off, data.len()));
        }
        dev.flush().unwrap();
        for _ in 0..40 {
            let (off, data) = random_write(&mut rng, chunks * CHUNK);
            dev.write_at(&data, off).unwrap();
            written.extend(chunks_of(off, data.len()));
        }
        // Each device keeps or tears its unflushed writes independently.
        p.crash_all(CrashMode::RandomSubset);
    }
    let a = p.data(&path(0)).contents();
    assert!(
        !differing_chunks(&a, &p.data(&path(1)).contents()).is_empty(),
        "seed {seed}: the crash left the copies identical; pick another seed"
    );
    let dev = open(&p, 2, chunks);
    let st = dev.status();
    assert_eq!(st.components[1].state, ComponentState::Stale);
    let work = st.components[1].resync.clone().unwrap().total_chunks;
    // Intent bits cover whole regions (4 chunks in these tests).
    let regions: BTreeSet<u64> = written.iter().map(|c| c / 4).collect();
    assert!(
        work <= regions.len() as u64 * 4 && work < chunks,
        "only chunks written in the last two flush epochs: {work}"
    );
    assert!(read_all(&dev) == a, "reads come from component 0");
    dev.run_resync(1).unwrap();
    assert_components_match(&p, 2, &a, seed);
    dev.close().unwrap();
    let dev = open(&p, 2, chunks);
    assert!(
        dev.pending_resyncs().is_empty(),
        "a clean close leaves nothing to reconcile"
    );
}

#[test]
fn replace_copies_everything_onto_a_new_component() {
    let seed = 0x6006;
    let chunks = 64;
    let p = MemProvider::new(seed);
    let dev = open(&p, 2, chunks);
    let mut rng = SplitMix::new(seed);
    let mut model = Model::new((chunks * CHUNK) as usize);
    for _ in 0..30 {
        let (off, data) = random_write(&mut rng, chunks * CHUNK);
        dev.write_at(&data, off).unwrap();
        model.write(off as usize, &data);
    }
    p.set_dead(&path(1), true);
    dev.flush().unwrap();
    assert_eq!(state(&dev, 1), ComponentState::Failed);
    dev.replace(1, Path::new("/sim/new1")).unwrap();
    assert_eq!(
        dev.run_resync(1).unwrap(),
        ResyncOutcome::Completed {
            bytes: chunks * CHUNK
        }
    );
    dev.flush().unwrap();
    assert!(p.data("/sim/new1").contents() == model.current);
    assert_eq!(dev.component_path(1), Some(PathBuf::from("/sim/new1")));
    assert!(matches!(dev.replace(0, Path::new("/sim/x")), Ok(())));
    assert!(matches!(dev.offline(1), Err(MirrorError::LastInSync(1))));
}

#[test]
fn operations_refuse_wrong_states() {
    let p = MemProvider::new(7);
    let dev = open(&p, 2, 16);
    assert!(matches!(dev.online(0), Err(MirrorError::WrongState { .. })));
    assert!(matches!(
        dev.offline(5),
        Err(MirrorError::NoSuchComponent(5))
    ));
    dev.offline(0).unwrap();
    assert!(matches!(dev.offline(1), Err(MirrorError::LastInSync(1))));
    assert!(matches!(
        dev.maintenance(1, Path::new("/sim/d")),
        Err(MirrorError::LastInSync(1))
    ));
    assert!(matches!(
        dev.run_resync(1),
        Err(MirrorError::WrongState { .. })
    ));
    dev.online(0).unwrap();
    assert_eq!(
        dev.run_resync(0).unwrap(),
        ResyncOutcome::Completed { bytes: 0 }
    );
}

#[test]
fn scheduler_runs_resyncs_in_the_background() {
    let p = MemProvider::new(9);
    let sched = ResyncScheduler::new(1);
    let mut cfg = config(2, 64);
    cfg.options.scheduler = Some(sched.clone());
    let dev = MirrorDevice::open_with(cfg, p.clone()).unwrap();
    dev.offline(1).unwrap();
    dev.write_at(&filled(5, 8192), 4096 * 10).unwrap();
    dev.online(1).unwrap();
    sched.wait_idle();
    let st = dev.status();
    assert_eq!(st.components[1].state, ComponentState::InSync);
    assert_eq!(st.components[1].resync_bytes_copied, 2 * CHUNK);
}

#[test]
fn watching_a_resync_reports_one_that_fails_at_once() {
    let p = MemProvider::new(13);
    let sched = ResyncScheduler::new(1);
    let mut cfg = config(2, 64);
    cfg.options.scheduler = Some(sched.clone());
    let dev = MirrorDevice::open_with(cfg, p.clone()).unwrap();
    dev.offline(1).unwrap();
    dev.write_at(&filled(5, 8192), 4096 * 10).unwrap();
    p.data(&path(1)).set_fail_writes(true);
    dev.online(1).unwrap();
    // The bound only matters if the scheduler never runs the job; the answer comes with the
    // first chunk.
    let e = dev
        .watch_resync(1, std::time::Duration::from_secs(60))
        .unwrap_err();
    assert!(
        matches!(e, MirrorError::ResyncFailed { index: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("write error"), "{e}");
    sched.wait_idle();
    p.data(&path(1)).set_fail_writes(false);
    dev.online(1).unwrap();
    dev.watch_resync(1, std::time::Duration::from_secs(60))
        .unwrap();
    sched.wait_idle();
    assert_eq!(state(&dev, 1), ComponentState::InSync);
    assert_eq!(
        dev.status().components[1].resync_bytes_copied,
        2 * CHUNK,
        "after the failed attempt, still only the dirty chunks"
    );
    assert_components_match(&p, 2, &read_all(&dev), 13);
}

#[test]
fn a_component_failed_in_an_earlier_run_says_why_and_how_to_bring_it_back() {
    let p = MemProvider::new(15);
    let dev = open(&p, 2, 64);
    dev.offline(1).unwrap();
    dev.write_at(&filled(7, 8192), 4096 * 20).unwrap();
    p.data(&path(1)).set_fail_writes(true);
    dev.online(1).unwrap();
    assert!(dev.run_resync(1).is_err());
    dev.close().unwrap();
    p.data(&path(1)).set_fail_writes(false);
    let dev = open(&p, 2, 64);
    assert_eq!(
        state(&dev, 1),
        ComponentState::Failed,
        "never cleared on its own"
    );
    let events = dev.status().events;
    let said = events
        .iter()
        .find(|e| e.contains("component 1 is still failed from an earlier run"))
        .unwrap_or_else(|| panic!("{events:?}"));
    assert!(
        said.contains("resync write error: injected write error"),
        "{said}"
    );
    assert!(said.contains("keel mirror online sim 1"), "{said}");
    dev.online(1).unwrap();
    assert_eq!(
        dev.run_resync(1).unwrap(),
        ResyncOutcome::Completed { bytes: 2 * CHUNK }
    );
    assert_components_match(&p, 2, &read_all(&dev), 15);
}

/// A panic while the state lock is held may leave the view half-updated: from then on every
/// guest request fails with EIO instead of being served from it.
#[test]
fn a_poisoned_state_lock_fails_every_request() {
    let p = MemProvider::new(5);
    let dev = open(&p, 2, 8);
    let mut b = AlignedBuf::copy_of(&[7; 4096]);
    dev.write_at(&b, 0).unwrap();
    let panicked = std::thread::scope(|s| {
        s.spawn(|| {
            let _state = dev.shared.lock_state();
            panic!("a panic mid-update");
        })
        .join()
    });
    assert!(panicked.is_err());
    let eio = Some(libc::EIO);
    assert_eq!(dev.read_at(&mut b, 0).unwrap_err().raw_os_error(), eio);
    assert_eq!(dev.write_at(&b, 0).unwrap_err().raw_os_error(), eio);
    assert_eq!(dev.flush().unwrap_err().raw_os_error(), eio);
    assert_eq!(dev.discard(0, 4096).unwrap_err().raw_os_error(), eio);
}

#[test]
fn a_refused_io_is_called_keels_error_and_a_device_error_is_not() {
    let einval = "resync write error: Invalid argument (os error 22)";
    assert!(shared::still_failed("d0", 1, Some(einval)).contains("Keel's error"));
    let eio = "write error: Input/output error (os error 5)";
    let said = shared::still_failed("d0", 1, Some(eio));
    assert!(
        !said.contains("Keel's error") && said.contains("check the device"),
        "{said}"
    );
}

#[test]
fn fresh_set_without_assume_clean_copies_component_zero() {
    let p = MemProvider::new(11);
    let mut cfg = config(2, 32);
    cfg.options.assume_clean = false;
    // Component 0 holds data before it becomes a mirror.
    p.open_data(Path::new(&path(0)), Some(32 * CHUNK))
        .unwrap()
        .write_at(&filled(9, 4096), 0)
        .unwrap();
    let dev = MirrorDevice::open_with(cfg, p.clone()).unwrap();
    assert_eq!(dev.pending_resyncs(), vec![1]);
    let mut b = AlignedBuf::zeroed(4096);
    dev.read_at(&mut b, 0).unwrap();
    assert_eq!(b[..], [9; 4096], "reads come from the reference copy");
    dev.run_resync(1).unwrap();
    assert_eq!(p.data(&path(1)).contents()[..4096], [9; 4096]);
}

/// Seeded random operations against the model: writes, reads, flushes, component failures,
/// offline/online/maintenance, partial resyncs and crashes. Invariant kept by the driver: at
/// least one in-sync component is healthy, so every guest request must succeed.
#[test]
fn randomized_model_check() {
    // KEEL_SIM_SEED=7 replays one seed; KEEL_SIM_SEEDS=1000 runs that many.
    let seeds = match (
        std::env::var("KEEL_SIM_SEED"),
        std::env::var("KEEL_SIM_SEEDS"),
    ) {
        (Ok(s), _) => {
            let seed: u64 = s
                .parse()
                .unwrap_or_else(|e| panic!("KEEL_SIM_SEED={s:?} is not a seed: {e}"));
            seed..seed + 1
        }
        (_, Ok(n)) => {
            0..n.parse()
                .unwrap_or_else(|e| panic!("KEEL_SIM_SEEDS={n:?} is not a count: {e}"))
        }
        _ => 0..24u64,
    };
    for seed in seeds {
        run_model(seed, 3, 64, 400, open);
    }
}

/// The same model check with writes fanned out on the writer threads.
#[test]
fn randomized_model_check_with_writer_threads() {
    for seed in 1000..1008u64 {
        run_model(seed, 3, 64, 400, open_fanned_out);
    }
}

type Opener = fn(&Arc<MemProvider>, usize, u64) -> MirrorDevice;

fn run_model(seed: u64, n: usize, chunks: u64, ops: usize, open: Opener) {
    let p = MemProvider::new(seed);
    let mut dev = open(&p, n, chunks);
    let mut rng = SplitMix::new(seed);
    let len = chunks * CHUNK;
    let mut model = Model::new(len as usize);
    let mut broken: Option<usize> = None;
    let mut deltas = 0;
    for op in 0..ops {
        let st = dev.status();
        let healthy_in_sync = |except: usize| {
            st.components.iter().any(|c| {
                c.index != except && c.state == ComponentState::InSync && broken != Some(c.index)
            })
        };
        let i = rng.below(n as u64) as usize;
        let ctx = format!("seed {seed} op {op}");
        let kind = rng.below(100);
        if std::env::var_os("KEEL_SIM_TRACE").is_some() {
            let states: Vec<_> = st.components.iter().map(|c| c.state.as_str()).collect();
            eprintln!("{ctx}: kind {kind} comp {i} broken {broken:?} states {states:?}");
        }
        match kind {
            0..60 => {
                let (off, data) = random_write(&mut rng, len);
                dev.write_at(&data, off)
                    .unwrap_or_else(|e| panic!("{ctx}: write: {e}"));
                model.write(off as usize, &data);
            }
            60..72 => {
                let (off, data) = random_write(&mut rng, len);
                let mut buf = AlignedBuf::zeroed(data.len());
                dev.read_at(&mut buf, off)
                    .unwrap_or_else(|e| panic!("{ctx}: read: {e}"));
                let want = &model.current[off as usize..off as usize + buf.len()];
                if buf[..] != *want {
                    for c in 0..n {
                        let img = p.data(&path(c)).contents();
                        let same = &img[off as usize..off as usize + buf.len()] == want;
                        eprintln!("component {c} matches model: {same}");
                    }
                    eprintln!("{:?}", dev.status());
                    for c in 0..n {
                        eprintln!(
                            "c{c} differs in {:?}",
                            differing_chunks(&p.data(&path(c)).contents(), &model.current)
                        );
                    }
                    for d in dev.status().deltas {
                        eprintln!(
                            "delta differs in {:?}",
                            differing_chunks(&p.data(&d.path).contents(), &model.current)
                        );
                    }
                    let st = dev.shared.lock_state();
                    for (c, rec) in st.view.components.iter().enumerate() {
                        if let Some(o) = &rec.outage {
                            eprintln!(
                                "c{c} tracking {:?}",
                                o.tracking.iter_set().collect::<Vec<_>>()
                            );
                            if let Some(plan) = &o.resync {
                                eprintln!(
                                    "c{c} work {:?}",
                                    plan.work.iter_set().collect::<Vec<_>>()
                                );
                                eprintln!(
                                    "c{c} done {:?}",
                                    plan.done.iter_set().collect::<Vec<_>>()
                                );
                            }
                        }
                    }
                    drop(st);
                    panic!("{ctx}: read at {off}+{} differs", buf.len());
                }
            }
            72..78 => {
                dev.flush().unwrap_or_else(|e| panic!("{ctx}: flush: {e}"));
                model.durable = model.current.clone();
            }
            78..81 if broken.is_none() && healthy_in_sync(i) => {
                p.set_dead(&path(i), true);
                broken = Some(i);
            }
            81..85 => {
                if let Some(b) = broken.take() {
                    p.set_dead(&path(b), false);
                }
            }
            85..88
                if broken != Some(i)
                    && healthy_in_sync(i)
                    && st.components[i].state.receives_writes() =>
            {
                dev.offline(i)
                    .unwrap_or_else(|e| panic!("{ctx}: offline: {e}"));
                if st.components[i].state == ComponentState::InSync {
                    // Taking an in-sync component out flushes the set first.
                    model.durable = model.current.clone();
                }
            }
            88..90
                if broken != Some(i)
                    && healthy_in_sync(i)
                    && st.components[i].state == ComponentState::InSync =>
            {
                deltas += 1;
                let d = format!("/sim/delta{i}-{deltas}");
                dev.maintenance(i, Path::new(&d))
                    .unwrap_or_else(|e| panic!("{ctx}: maintenance: {e}"));
                model.durable = model.current.clone();
            }
            90..94 if broken != Some(i) && st.components[i].state.is_absent() => {
                dev.online(i)
                    .unwrap_or_else(|e| panic!("{ctx}: online: {e}"));
            }
            94..98 if st.components[i].state.is_catching_up() => {
                // Errors are allowed only if the target itself is broken.
                // A checkpoint flushes only the target, so the guest's writes stay unflushed
                // on the other components; completing a resync flushes the set.
                let r = dev.resync_step(i, 1 + rng.below(20));
                assert!(r.is_ok() || broken == Some(i), "{ctx}: resync: {r:?}");
                if let Ok(ResyncOutcome::Completed { .. }) = r {
                    model.durable = model.current.clone();
                }
            }
            98..100 => {
                drop(dev);
                p.crash_all(CrashMode::DropAll);
                model.current = model.durable.clone();
                dev = open(&p, n, chunks);
            }
            _ => {}
        }
    }
    // Heal everything, bring everyone back, and compare every component with the model.
    if let Some(b) = broken.take() {
        p.set_dead(&path(b), false);
    }
    for i in 0..n {
        if dev.status().components[i].state.is_absent() {
            dev.online(i)
                .unwrap_or_else(|e| panic!("seed {seed}: final online {i}: {e}"));
        }
    }
    for i in dev.pending_resyncs() {
        dev.run_resync(i)
            .unwrap_or_else(|e| panic!("seed {seed}: final resync {i}: {e}"));
    }
    dev.flush().unwrap();
    let st = dev.status();
    assert!(
        st.components
            .iter()
            .all(|c| c.state == ComponentState::InSync),
        "seed {seed}: {st:?}"
    );
    assert!(st.deltas.is_empty(), "seed {seed}: deltas left behind");
    let disk = read_all(&dev);
    assert!(
        disk == model.current,
        "seed {seed}: disk differs from the model in chunks {:?}",
        differing_chunks(&disk, &model.current)
    );
    assert_components_match(&p, n, &model.current, seed);
}
