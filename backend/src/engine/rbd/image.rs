//! Safe handles over librados and librbd: a cluster connection, an I/O context on a pool (and
//! namespace), an open image. Every call checks its return code; errors carry the errno.

use std::ffi::{CStr, CString, c_int};
use std::io;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use super::ffi::{self, Api, ImageT, IoctxT, RadosT, SnapInfo};

/// A failed librados/librbd call: what was asked, and the errno it returned.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct CallError {
    what: String,
    errno: i32,
    source: io::Error,
}

/// Turns a librados/librbd return code into a result; the errno stays readable ([`errno`]).
pub fn check(rc: c_int, what: &str) -> io::Result<c_int> {
    if rc < 0 {
        let source = io::Error::from_raw_os_error(-rc);
        let kind = source.kind();
        let what = what.to_string();
        Err(io::Error::new(
            kind,
            CallError {
                what,
                errno: -rc,
                source,
            },
        ))
    } else {
        Ok(rc)
    }
}

/// The errno behind `e`, whether it came from [`check`] or from the OS.
pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
        .or_else(|| e.get_ref()?.downcast_ref::<CallError>().map(|c| c.errno))
}

/// Checks a synchronous librbd I/O call's answer: an errno, or the byte count asked for.
fn sized(n: libc::ssize_t, want: usize, what: &str) -> io::Result<()> {
    let rc = c_int::try_from(n.min(0)).unwrap_or(-libc::EIO);
    check(rc, what)?;
    if n as usize != want {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{what}: {n} of {want} bytes"),
        ));
    }
    Ok(())
}

fn cstring(s: &str, what: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} holds a NUL byte"),
        )
    })
}

/// How to reach the cluster.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub ceph_conf: String,
    /// Client name without the `client.` prefix.
    pub id: String,
    pub keyring: Option<String>,
    /// How long connecting (finding a mon, authenticating) may take.
    pub connect_timeout: Duration,
    /// How long an OSD may take to answer a request before it fails; `None`: no limit.
    pub osd_timeout: Option<Duration>,
    /// librbd's cache (`rbd_cache`). Off, a write completes only once the OSDs have it on
    /// stable storage; on, it may complete from the cache once the guest has flushed.
    pub cache: bool,
}

/// A connected cluster handle (`rados_t`).
pub struct Cluster {
    api: Arc<Api>,
    handle: RadosT,
}

// SAFETY: librados cluster handles are thread-safe (documented: "the handle is thread-safe");
// Keel calls into it from the worker and control threads.
unsafe impl Send for Cluster {}
// SAFETY: as above.
unsafe impl Sync for Cluster {}

impl Cluster {
    /// Creates a handle, reads the config file, sets the options and connects.
    pub fn connect(opts: &ConnectOptions) -> io::Result<Self> {
        let api = ffi::api().map_err(io::Error::other)?;
        let id = cstring(&opts.id, "ceph_id")?;
        let mut handle: RadosT = ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer; `id` is a NUL-terminated string alive for the
        // call.
        let rc = unsafe { (api.rados_create)(&mut handle, id.as_ptr()) };
        check(rc, "rados_create")?;
        let cluster = Self { api, handle };
        let conf = cstring(&opts.ceph_conf, "ceph_conf")?;
        // SAFETY: `cluster.handle` was created above and not yet shut down; `conf` outlives the
        // call.
        let rc = unsafe { (cluster.api.rados_conf_read_file)(cluster.handle, conf.as_ptr()) };
        check(rc, &format!("reading {}", opts.ceph_conf))?;
        let secs = opts.connect_timeout.as_secs().max(1).to_string();
        cluster.set("client_mount_timeout", &secs)?;
        cluster.set("rados_mon_op_timeout", &secs)?;
        // A discard of part of an object zeroes it instead of being skipped: Keel's disks read
        // discarded ranges back as zeroes, whatever the engine.
        cluster.set("rbd_skip_partial_discard", "false")?;
        // Set after the config file is read, so that file cannot turn the cache on behind the
        // engine's back: the queues rely on it being off to skip flushes (docs/rbd.md).
        cluster.set("rbd_cache", if opts.cache { "true" } else { "false" })?;
        // Each queue has a worker thread of its own, so librbd may start a request on it
        // instead of handing it to its op thread first: one thread switch less per request
        // (docs/benchmarks.md, "RBD"). The worker then waits when librbd does (an image refresh,
        // the objecter's in-flight limit), which stalls only this queue.
        cluster.set("rbd_non_blocking_aio", "false")?;
        // librbd sends writes straight from guest memory instead of copying them first (a third
        // less CPU per 1 MiB write, docs/benchmarks.md), whatever the config file says. The
        // queues keep that memory mapped until librbd calls back, and the watchdog answers the
        // writes of a blocklisted client, which librbd 16 never calls back (docs/rbd.md, "The
        // data path").
        cluster.set("rbd_disable_zero_copy_writes", "false")?;
        if let Some(t) = opts.osd_timeout {
            cluster.set("rados_osd_op_timeout", &t.as_secs().max(1).to_string())?;
        }
        if let Some(keyring) = &opts.keyring {
            // librados would only say "permission denied" for a keyring it cannot read.
            std::fs::File::open(keyring)
                .map_err(|e| io::Error::new(e.kind(), format!("keyring {keyring}: {e}")))?;
            cluster.set("keyring", keyring)?;
        }
        // SAFETY: the handle is configured and not yet connected.
        let rc = unsafe { (cluster.api.rados_connect)(cluster.handle) };
        let what = if rc == -libc::EACCES || rc == -libc::EPERM {
            let keyring = opts.keyring.as_deref().unwrap_or("the one ceph_conf names");
            format!(
                "connecting to the Ceph cluster as client.{}: the cluster refused its \
                 credentials (check ceph_id and the key in keyring {keyring})",
                opts.id
            )
        } else {
            "connecting to the Ceph cluster".to_string()
        };
        check(rc, &what)?;
        Ok(cluster)
    }

    fn set(&self, option: &str, value: &str) -> io::Result<()> {
        let (o, v) = (cstring(option, option)?, cstring(value, option)?);
        // SAFETY: the handle is alive; both strings outlive the call.
        let rc = unsafe { (self.api.rados_conf_set)(self.handle, o.as_ptr(), v.as_ptr()) };
        check(rc, option).map(drop)
    }

    /// An I/O context on `pool` (and `namespace`, if any).
    pub fn ioctx(self: &Arc<Self>, pool: &str, namespace: Option<&str>) -> io::Result<IoCtx> {
        let name = cstring(pool, "pool")?;
        let mut io: IoctxT = ptr::null_mut();
        // SAFETY: the cluster is connected; `io` is a valid out-pointer.
        let rc = unsafe { (self.api.rados_ioctx_create)(self.handle, name.as_ptr(), &mut io) };
        check(rc, &format!("pool {pool:?}"))?;
        let ctx = IoCtx {
            cluster: Arc::clone(self),
            handle: io,
        };
        if let Some(ns) = namespace {
            let ns = cstring(ns, "namespace")?;
            // SAFETY: the context was created above; librados copies the namespace.
            unsafe { (self.api.rados_ioctx_set_namespace)(ctx.handle, ns.as_ptr()) };
        }
        Ok(ctx)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: every IoCtx and Image holds an Arc of this cluster, so none is left.
        unsafe { (self.api.rados_shutdown)(self.handle) };
    }
}

/// An I/O context (`rados_ioctx_t`) on one pool and namespace.
pub struct IoCtx {
    cluster: Arc<Cluster>,
    handle: IoctxT,
}

impl IoCtx {
    /// The raw handle, for calls that take a context; valid while `self` lives.
    pub fn raw(&self) -> IoctxT {
        self.handle
    }
}

// SAFETY: librados I/O contexts may be used from any thread; Keel changes its namespace only
// before sharing it.
unsafe impl Send for IoCtx {}
// SAFETY: as above.
unsafe impl Sync for IoCtx {}

impl Drop for IoCtx {
    fn drop(&mut self) {
        // SAFETY: images opened on this context hold an Arc of it, so none is left.
        unsafe { (self.cluster.api.rados_ioctx_destroy)(self.handle) };
    }
}

impl IoCtx {
    /// Creates image `name` of `size` bytes with the cluster's default features.
    pub fn create(&self, name: &str, size: u64) -> io::Result<()> {
        let n = cstring(name, "image")?;
        let mut order: c_int = 0;
        // SAFETY: the context is alive; `n` and `order` outlive the call.
        let rc =
            unsafe { (self.cluster.api.rbd_create)(self.handle, n.as_ptr(), size, &mut order) };
        check(rc, &format!("creating image {name:?}")).map(drop)
    }

    /// Removes image `name` (it must have no snapshots).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let n = cstring(name, "image")?;
        // SAFETY: the context is alive; `n` outlives the call.
        let rc = unsafe { (self.cluster.api.rbd_remove)(self.handle, n.as_ptr()) };
        check(rc, &format!("removing image {name:?}")).map(drop)
    }
}

/// An open image (`rbd_image_t`).
pub struct Image {
    ctx: Arc<IoCtx>,
    handle: ImageT,
    name: String,
}

// SAFETY: librbd image handles are thread-safe: QEMU and others submit aio on one handle from
// several threads.
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

impl Image {
    /// Opens image `name`; `Err` with `NotFound` if there is none.
    pub fn open(ctx: &Arc<IoCtx>, name: &str) -> io::Result<Self> {
        let n = cstring(name, "image")?;
        let mut handle: ImageT = ptr::null_mut();
        // SAFETY: the context is alive, `handle` a valid out-pointer, no snapshot (NULL).
        let rc =
            unsafe { (ctx.cluster.api.rbd_open)(ctx.handle, n.as_ptr(), &mut handle, ptr::null()) };
        check(rc, &format!("opening image {name:?}"))?;
        Ok(Self {
            ctx: Arc::clone(ctx),
            handle,
            name: name.to_string(),
        })
    }

    /// Opens snapshot `snap` of this image, read-only, on a handle of its own (the served
    /// handle stays at the head).
    pub fn open_snapshot(&self, snap: &str) -> io::Result<Self> {
        let (n, s) = (cstring(&self.name, "image")?, cstring(snap, "snapshot")?);
        let mut handle: ImageT = ptr::null_mut();
        // SAFETY: the context is alive, `handle` a valid out-pointer, both strings outlive the
        // call.
        let rc = unsafe {
            (self.api().rbd_open_read_only)(self.ctx.handle, n.as_ptr(), &mut handle, s.as_ptr())
        };
        check(rc, &format!("opening snapshot {snap:?}"))?;
        Ok(Self {
            ctx: Arc::clone(&self.ctx),
            handle,
            name: self.name.clone(),
        })
    }

    /// The I/O context the image was opened on (its pool and namespace).
    pub fn ctx(&self) -> &Arc<IoCtx> {
        &self.ctx
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The image's feature bits (`RBD_FEATURE_*`).
    pub fn features(&self) -> io::Result<u64> {
        let mut bits = 0u64;
        // SAFETY: the image is open; `bits` is a valid out-pointer.
        let rc = unsafe { (self.api().rbd_get_features)(self.handle, &mut bits) };
        check(rc, "rbd_get_features")?;
        Ok(bits)
    }

    pub fn api(&self) -> &Api {
        &self.ctx.cluster.api
    }

    /// The raw handle, for the queues' aio calls; valid while `self` lives.
    pub fn raw(&self) -> ImageT {
        self.handle
    }

    pub fn size(&self) -> io::Result<u64> {
        let mut size = 0u64;
        // SAFETY: the image is open; `size` is a valid out-pointer.
        let rc = unsafe { (self.api().rbd_get_size)(self.handle, &mut size) };
        check(rc, "rbd_get_size")?;
        Ok(size)
    }

    pub fn resize(&self, size: u64) -> io::Result<()> {
        // SAFETY: the image is open.
        let rc = unsafe { (self.api().rbd_resize)(self.handle, size) };
        check(rc, "rbd_resize").map(drop)
    }

    /// Reads `buf.len()` bytes at `offset` (a synchronous `rbd_read`; beyond the image's end
    /// is an error, never a short read).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // SAFETY: the image is open; `buf` is valid for writes of `buf.len()` bytes for the
        // whole (synchronous) call.
        let n = unsafe {
            (self.api().rbd_read)(self.handle, offset, buf.len(), buf.as_mut_ptr().cast())
        };
        sized(n, buf.len(), "rbd_read")
    }

    /// Writes `data` at `offset` (a synchronous `rbd_write`).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        // SAFETY: the image is open; `data` is valid for reads of `data.len()` bytes for the
        // whole (synchronous) call.
        let n = unsafe {
            (self.api().rbd_write)(self.handle, offset, data.len(), data.as_ptr().cast())
        };
        sized(n, data.len(), "rbd_write")
    }

    /// Makes `[offset, offset + len)` read as zeroes (`rbd_write_zeroes`, which deallocates
    /// where it can).
    pub fn write_zeroes(&self, offset: u64, len: usize) -> io::Result<()> {
        // SAFETY: the image is open; the call only reads its integer arguments.
        let n = unsafe { (self.api().rbd_write_zeroes)(self.handle, offset, len, 0, 0) };
        sized(n, len, "rbd_write_zeroes")
    }

    pub fn flush(&self) -> io::Result<()> {
        // SAFETY: the image is open.
        check(unsafe { (self.api().rbd_flush)(self.handle) }, "rbd_flush").map(drop)
    }

    fn snap_call(
        &self,
        f: unsafe extern "C" fn(ImageT, *const std::ffi::c_char) -> c_int,
        name: &str,
        what: &str,
    ) -> io::Result<()> {
        let n = cstring(name, "snapshot")?;
        // SAFETY: the image is open; `n` outlives the call; `f` is one of the snapshot calls
        // taking (image, name).
        check(unsafe { f(self.handle, n.as_ptr()) }, what).map(drop)
    }

    pub fn snap_create(&self, name: &str) -> io::Result<()> {
        self.snap_call(self.api().rbd_snap_create, name, "rbd_snap_create")
    }

    pub fn snap_remove(&self, name: &str) -> io::Result<()> {
        self.snap_call(self.api().rbd_snap_remove, name, "rbd_snap_remove")
    }

    pub fn snap_rollback(&self, name: &str) -> io::Result<()> {
        self.snap_call(self.api().rbd_snap_rollback, name, "rbd_snap_rollback")
    }

    /// Takes the image's exclusive lock for good: librbd then refuses to hand it to another
    /// client that asks for it (rather than passing it back and forth on each write).
    pub fn lock_exclusive(&self) -> io::Result<()> {
        // SAFETY: the image is open.
        let rc =
            unsafe { (self.api().rbd_lock_acquire)(self.handle, super::ffi::LOCK_MODE_EXCLUSIVE) };
        check(rc, "rbd_lock_acquire").map(drop)
    }

    /// Gives the exclusive lock back while the image stays open: from then on this handle
    /// cannot write (librbd's standard lock policy, set by [`Self::lock_exclusive`], never
    /// takes the lock again on its own).
    pub fn unlock(&self) -> io::Result<()> {
        // SAFETY: the image is open.
        let rc = unsafe { (self.api().rbd_lock_release)(self.handle) };
        check(rc, "rbd_lock_release").map(drop)
    }

    /// Whether this handle owns the image's exclusive lock now.
    pub fn owns_lock(&self) -> io::Result<bool> {
        let mut owner: c_int = 0;
        // SAFETY: the image is open; `owner` is a valid out-pointer.
        let rc = unsafe { (self.api().rbd_is_exclusive_lock_owner)(self.handle, &mut owner) };
        check(rc, "rbd_is_exclusive_lock_owner")?;
        Ok(owner != 0)
    }

    pub fn snap_protect(&self, name: &str) -> io::Result<()> {
        self.snap_call(self.api().rbd_snap_protect, name, "rbd_snap_protect")
    }

    pub fn snap_is_protected(&self, name: &str) -> io::Result<bool> {
        let n = cstring(name, "snapshot")?;
        let mut yes: c_int = 0;
        // SAFETY: the image is open; `n` and `yes` outlive the call.
        let rc = unsafe { (self.api().rbd_snap_is_protected)(self.handle, n.as_ptr(), &mut yes) };
        check(rc, &format!("snapshot {name:?}"))?;
        Ok(yes != 0)
    }

    /// The image's snapshots, oldest first.
    pub fn snap_list(&self) -> io::Result<Vec<Snapshot>> {
        let mut max: c_int = 16;
        loop {
            let mut infos: Vec<SnapInfo> = (0..max)
                .map(|_| SnapInfo {
                    id: 0,
                    size: 0,
                    name: ptr::null(),
                })
                .collect();
            // SAFETY: `infos` has room for `max` entries, as `max` tells librbd.
            let rc =
                unsafe { (self.api().rbd_snap_list)(self.handle, infos.as_mut_ptr(), &mut max) };
            if rc == -libc::ERANGE {
                continue; // `max` now holds the count needed.
            }
            let n = check(rc, "rbd_snap_list")? as usize;
            let out = infos[..n]
                .iter()
                .map(|s| {
                    // SAFETY: librbd filled the first `n` entries with NUL-terminated names that
                    // live until `rbd_snap_list_end`.
                    let name = unsafe { CStr::from_ptr(s.name) };
                    Snapshot {
                        name: name.to_string_lossy().into_owned(),
                        created: self.snap_timestamp(s.id),
                    }
                })
                .collect();
            // SAFETY: releases the names librbd allocated for this list, once.
            unsafe { (self.api().rbd_snap_list_end)(infos.as_mut_ptr()) };
            return Ok(out);
        }
    }
}

impl Image {
    /// When snapshot `id` was taken, in seconds since the epoch; 0 if librbd cannot say.
    fn snap_timestamp(&self, id: u64) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: the image is open; `ts` is a valid out-pointer.
        let rc = unsafe { (self.api().rbd_snap_get_timestamp)(self.handle, id, &mut ts) };
        if rc < 0 {
            0
        } else {
            u64::try_from(ts.tv_sec).unwrap_or(0)
        }
    }
}

/// One RBD snapshot of an image.
pub struct Snapshot {
    pub name: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: the image is open and every queue that used it has finished its requests
        // (the queues hold an Arc of the engine, which holds this image).
        unsafe { (self.api().rbd_close)(self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_call_keeps_its_errno_and_says_what_failed() {
        let e = check(-libc::ENOENT, "opening image \"x\"").unwrap_err();
        assert_eq!(errno(&e), Some(libc::ENOENT));
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with("opening image \"x\": "), "{e}");
        assert_eq!(errno(&io::Error::other("plain")), None);
        assert_eq!(check(3, "ok").unwrap(), 3);
    }
}
