//! Opening a mirror: load or create every component's metadata, agree on the newest view,
//! and repair what an unclean stop may have left behind.

use super::chunk_bitmap::ChunkBitmap;
use super::chunk_locks::ChunkLocks;
use super::config::MirrorConfig;
use super::device::MirrorDevice;
use super::error::MirrorError;
use super::fanout::FanOut;
use super::lsn::LsnClock;
use super::metadata::{MetadataStore, metadata_len};
use super::provider::DeviceProvider;
use super::remote::{ComponentProvider, is_remote};
use super::repair::{repair_deltas, resync_intent};
use super::shared::{DeltaRuntime, Runtime, Shared, State, start_outage, still_failed};
use super::state::ComponentState;
use super::throttle::GuestActivity;
use super::view::{ComponentRecord, MirrorView, Outage, ResyncPlan, Source};
use crate::device::BlockDevice;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

/// A component's data device; `None` when it could not be opened.
type DataDevice = Option<Arc<dyn BlockDevice>>;

/// A component's loaded metadata (the view and its slot); `None` when blank or unreadable.
type LoadedView = Option<(MirrorView, usize)>;

impl MirrorDevice {
    /// Opens a mirror of files, each with a `<path>.keelmirror` metadata sidecar.
    pub fn open(config: MirrorConfig) -> Result<Self, MirrorError> {
        let provider = Arc::new(ComponentProvider::for_components(
            &config.components,
            config.options.direct,
        ));
        Self::open_with(config, provider)
    }

    /// Opens a mirror whose devices come from `provider`.
    pub fn open_with(
        config: MirrorConfig,
        provider: Arc<dyn DeviceProvider>,
    ) -> Result<Self, MirrorError> {
        let n = config.components.len();
        if n == 0 {
            return Err(MirrorError::NoComponents);
        }
        let chunk = config.chunk_size;
        if chunk < 4096 || !chunk.is_power_of_two() {
            return Err(MirrorError::BadChunkSize(chunk));
        }
        let (data, len) = open_components(&config, provider.as_ref())?;
        let meta_len = metadata_len(len, chunk, n);
        let (metas, loaded) = load_metadata(&config, provider.as_ref(), &data, meta_len);
        let shared = Shared {
            name: config.name.clone(),
            len,
            chunk_size: chunk,
            meta_len,
            provider,
            options: config.options.clone(),
            gate: RwLock::new(()),
            state: Mutex::new(State {
                view: MirrorView {
                    set_id: String::new(),
                    generation: 0,
                    len,
                    chunk_size: chunk,
                    lsn: 0,
                    components: Vec::new(),
                    deltas: Vec::new(),
                    intent: ChunkBitmap::new(0),
                },
                comps: Vec::new(),
                deltas: HashMap::new(),
                dirty_cur: ChunkBitmap::new(len.div_ceil(chunk)),
                dirty_prev: None,
                catching_up: false,
            }),
            flush_lock: Mutex::new(()),
            clock: LsnClock::starting_after(0),
            chunk_locks: ChunkLocks::default(),
            guest: GuestActivity::default(),
            events: Mutex::new(VecDeque::new()),
            fanout: match config.options.parallel_write_min {
                // One writer per component besides the one the writing thread serves.
                Some(_) if n > 1 => Some(
                    FanOut::new(&config.name, n - 1)
                        .map_err(|e| MirrorError::io("starting the mirror's writer threads", e))?,
                ),
                _ => None,
            },
            poisoned: AtomicBool::new(false),
            reconnects: Default::default(),
        };
        let newest = newest_view(&loaded)?;
        let view = match newest {
            None => fresh_view(&config, len, &data)?,
            Some(v) => {
                check_view(&v, &config, len, &loaded)?;
                newer_from_deltas(&shared, v)?
            }
        };
        let mut st = State {
            dirty_cur: ChunkBitmap::new(view.chunks()),
            dirty_prev: None,
            catching_up: false,
            comps: Vec::with_capacity(n),
            deltas: HashMap::new(),
            view,
        };
        for (i, rec) in st.view.components.iter().enumerate() {
            if rec.state == ComponentState::Failed {
                shared.event(still_failed(&config.name, i, rec.failed_why.as_deref()));
            }
        }
        attach_components(&shared, &mut st, &config, data, metas, &loaded);
        resume_resyncs(&mut st);
        open_deltas(&shared, &mut st, meta_len);
        if st.view.in_sync().next().is_none() {
            return Err(MirrorError::NoUsableComponent);
        }
        resync_intent(&shared, &mut st);
        repair_deltas(&shared, &mut st);
        st.catching_up = st.view.components.iter().any(|c| c.state.is_catching_up());
        // Writes after the last flush may have used LSNs beyond it: never hand them out again.
        let lsn = st
            .view
            .components
            .iter()
            .flat_map(|c| [Some(c.last_lsn), c.outage.as_ref().map(|o| o.start_lsn)])
            .flatten()
            .chain(st.view.deltas.iter().map(|d| d.start_lsn))
            .fold(st.view.lsn, u64::max);
        st.view.lsn = lsn;
        shared.persist(&mut st)?;
        let shared = Shared {
            clock: LsnClock::starting_after(lsn),
            state: Mutex::new(st),
            ..shared
        };
        let dev = Self {
            shared: Arc::new(shared),
        };
        for i in dev.pending_resyncs() {
            dev.queue_resync(i);
        }
        super::reconnect::start(&dev.shared);
        Ok(dev)
    }
}

/// The highest-generation view among the components' metadata; all must be one set.
fn newest_view(loaded: &[Option<(MirrorView, usize)>]) -> Result<Option<MirrorView>, MirrorError> {
    let newest = loaded
        .iter()
        .flatten()
        .max_by_key(|(v, _)| v.generation)
        .map(|(v, _)| v.clone());
    if let Some(v) = &newest {
        for (i, (other, _)) in loaded
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((i, l.as_ref()?)))
        {
            if other.set_id != v.set_id {
                return Err(MirrorError::ForeignSet {
                    index: i,
                    found: other.set_id.clone(),
                    expected: v.set_id.clone(),
                });
            }
        }
    }
    Ok(newest)
}

fn check_view(
    v: &MirrorView,
    config: &MirrorConfig,
    len: u64,
    loaded: &[Option<(MirrorView, usize)>],
) -> Result<(), MirrorError> {
    if v.components.len() != config.components.len() {
        return Err(MirrorError::MetadataMismatch(format!(
            "names {} components, the configuration {}",
            v.components.len(),
            config.components.len()
        )));
    }
    if v.chunk_size != config.chunk_size || v.len != len {
        return Err(MirrorError::MetadataMismatch(format!(
            "says {} bytes in {}-byte chunks, the configuration {len} in {}",
            v.len, v.chunk_size, config.chunk_size
        )));
    }
    for (i, l) in loaded.iter().enumerate() {
        if let Some((_, idx)) = l
            && *idx != i
        {
            return Err(MirrorError::MetadataMismatch(format!(
                "of component {i} says it is component {idx}: was the order changed?"
            )));
        }
    }
    Ok(())
}

/// A delta may hold a newer view than every component (the last mirror failed during
/// maintenance): take it.
fn newer_from_deltas(shared: &Shared, mut v: MirrorView) -> Result<MirrorView, MirrorError> {
    for d in v.deltas.clone().iter().filter(|d| !d.failed) {
        let Ok(meta) = shared
            .provider
            .open_meta(Path::new(&d.path), shared.meta_len)
        else {
            continue;
        };
        if let Ok(Some((dv, _))) = MetadataStore::new(meta).load()
            && dv.set_id == v.set_id
            && dv.generation > v.generation
        {
            v = dv;
        }
    }
    Ok(v)
}

/// The view of a brand-new set: component 0 is the reference; the others are in sync only
/// if the configuration vouches for it, else they get a full copy.
fn fresh_view(
    config: &MirrorConfig,
    len: u64,
    data: &[Option<Arc<dyn BlockDevice>>],
) -> Result<MirrorView, MirrorError> {
    if data.first().is_none_or(|d| d.is_none()) {
        return Err(MirrorError::NoUsableComponent);
    }
    let chunks = len.div_ceil(config.chunk_size);
    let components = config
        .components
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let clean = i == 0 || config.options.assume_clean;
            ComponentRecord {
                path: p.to_string_lossy().into_owned(),
                state: if clean {
                    ComponentState::InSync
                } else {
                    ComponentState::Stale
                },
                last_lsn: 0,
                outage: (!clean).then(|| Outage {
                    start_lsn: 0,
                    tracking: ChunkBitmap::full(chunks),
                    resync: Some(ResyncPlan {
                        source: Source::Mirror(0),
                        work: ChunkBitmap::full(chunks),
                        done: ChunkBitmap::new(chunks),
                    }),
                }),
                failed_why: None,
            }
        })
        .collect();
    Ok(MirrorView {
        set_id: random_set_id(),
        generation: 0,
        len,
        chunk_size: config.chunk_size,
        lsn: 0,
        components,
        deltas: Vec::new(),
        intent: ChunkBitmap::new(chunks),
    })
}

fn random_set_id() -> String {
    let mut bytes = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if from_os.is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = (t ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens every component's data device (an unreachable one is logged and left `None`) and
/// settles the mirror's length: the configured size, or the first reachable component's.
fn open_components(
    config: &MirrorConfig,
    provider: &dyn DeviceProvider,
) -> Result<(Vec<DataDevice>, u64), MirrorError> {
    let data: Vec<DataDevice> = config
        .components
        .iter()
        .enumerate()
        .map(|(i, p)| match provider.open_data(p, config.size) {
            Ok(d) => Some(d),
            Err(e) => {
                log::error!(
                    "mirror {}: component {i} ({}): {e}",
                    config.name,
                    p.display()
                );
                None
            }
        })
        .collect();
    let len = match config.size {
        Some(s) => s,
        None => data
            .iter()
            .flatten()
            .next()
            .map(|d| d.len())
            .ok_or(MirrorError::NoUsableComponent)?,
    };
    for (i, d) in data.iter().enumerate() {
        if let Some(d) = d.as_ref().filter(|d| d.len() < len) {
            return Err(MirrorError::TooSmall {
                index: i,
                have: d.len(),
                need: len,
            });
        }
    }
    Ok((data, len))
}

/// Opens and loads each reachable component's metadata; unreadable metadata leaves the
/// component unreachable (`None`), blank metadata loads as `None` beside an open store.
fn load_metadata(
    config: &MirrorConfig,
    provider: &dyn DeviceProvider,
    data: &[DataDevice],
    meta_len: u64,
) -> (Vec<Option<MetadataStore>>, Vec<LoadedView>) {
    let n = config.components.len();
    let mut metas: Vec<Option<MetadataStore>> = Vec::with_capacity(n);
    let mut loaded = Vec::with_capacity(n);
    for (i, (p, d)) in config.components.iter().zip(data).enumerate() {
        let m = d
            .as_ref()
            .and_then(|_| match provider.open_meta(p, meta_len) {
                Ok(m) => Some(MetadataStore::new(m)),
                Err(e) => {
                    log::error!("mirror {}: metadata of component {i}: {e}", config.name);
                    None
                }
            });
        let (m, l) = match m.as_ref().map(|m| m.load()) {
            Some(Ok(l)) => (m, l),
            Some(Err(e)) => {
                // Unreadable metadata: the component is treated as unreachable.
                log::error!(
                    "mirror {}: reading metadata of component {i}: {e}",
                    config.name
                );
                (None, None)
            }
            None => (None, None),
        };
        loaded.push(l);
        metas.push(m);
    }
    (metas, loaded)
}

/// Gives each component of the view its devices; one that should take writes but cannot be
/// reached is failed, and an in-sync one with blank metadata (a replaced disk) goes stale.
fn attach_components(
    shared: &Shared,
    st: &mut State,
    config: &MirrorConfig,
    data: Vec<DataDevice>,
    metas: Vec<Option<MetadataStore>>,
    loaded: &[LoadedView],
) {
    let (len, chunk) = (shared.len, shared.chunk_size);
    for (i, (d, m)) in data.into_iter().zip(metas).enumerate() {
        let blank = loaded.get(i).is_some_and(|l| l.is_none());
        let Some(rec) = st.view.components.get_mut(i) else {
            continue;
        };
        rec.path = config.components[i].to_string_lossy().into_owned();
        let usable = d.is_some() && m.is_some();
        let mut rt = Runtime {
            durable_lsn: rec.last_lsn,
            ..Runtime::default()
        };
        if rec.state.receives_writes() && !usable {
            let msg = format!("component {i} is unreachable at open");
            let chunks = len.div_ceil(chunk);
            // A remote one waits offline while it is reconnected.
            let state = if is_remote(&rec.path) {
                ComponentState::Offline
            } else {
                ComponentState::Failed
            };
            start_outage(rec, state, rec.last_lsn, ChunkBitmap::new(chunks));
            rec.failed_why = Some("unreachable at open".into());
            shared.event(msg);
        } else if rec.state == ComponentState::InSync && blank && st.view.generation > 0 {
            // Fresh metadata under a set that knows this component: a replaced disk.
            let chunks = st.view.len.div_ceil(st.view.chunk_size);
            rec.state = ComponentState::Stale;
            rec.last_lsn = 0;
            rec.outage = Some(Outage {
                start_lsn: 0,
                tracking: ChunkBitmap::full(chunks),
                resync: None,
            });
            shared.event(format!("component {i} has no mirror metadata: full resync"));
        }
        if rec.state.receives_writes() {
            rt.data = d;
            rt.meta = m;
        }
        st.comps.push(rt);
    }
}

/// Catching-up components resume; a component found stale at open gets its plan now.
fn resume_resyncs(st: &mut State) {
    let n = st.view.components.len();
    for i in 0..n {
        let needs_plan = st.view.components.get(i).is_some_and(|r| {
            r.state.is_catching_up() && r.outage.as_ref().is_some_and(|o| o.resync.is_none())
        });
        if needs_plan {
            let plan = st.view.plan_resync(i, None);
            if let Some(o) = st
                .view
                .components
                .get_mut(i)
                .and_then(|r| r.outage.as_mut())
            {
                o.resync = plan;
            }
        }
        if let Some(r) = st.view.components.get_mut(i)
            && r.state == ComponentState::Resyncing
        {
            r.state = ComponentState::Stale;
        }
    }
}

/// Opens the deltas the view names; one that cannot be opened is marked failed.
fn open_deltas(shared: &Shared, st: &mut State, meta_len: u64) {
    for d in st.view.deltas.iter_mut().filter(|d| !d.failed) {
        match shared.provider.open(Path::new(&d.path), None, meta_len) {
            Ok(dev) => {
                st.deltas.insert(
                    d.for_component,
                    DeltaRuntime {
                        data: dev.data,
                        meta: MetadataStore::new(dev.meta),
                    },
                );
            }
            Err(e) => {
                d.failed = true;
                shared.event(format!("delta {} unreachable at open: {e}", d.path));
            }
        }
    }
}
