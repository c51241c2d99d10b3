//! librados and librbd, loaded at run time.
//!
//! The libraries are opened (dlopen) the first time an rbd disk is opened, so keeld runs on
//! hosts without Ceph's client libraries as long as no disk asks for them. Only the C functions
//! the engine calls are resolved; their signatures follow `rados/librados.h` and
//! `rbd/librbd.h` of Ceph 16. Everything here is raw: `image.rs` wraps it in safe types.

use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, OnceLock};

use libc::{iovec, ssize_t};
use libloading::Library;

pub type RadosT = *mut c_void;
pub type IoctxT = *mut c_void;
pub type ImageT = *mut c_void;
pub type CompletionT = *mut c_void;
pub type Callback = unsafe extern "C" fn(c: CompletionT, arg: *mut c_void);
pub type ImageOptionsT = *mut c_void;
/// `rbd_diff_iterate2`'s callback: (offset, length, exists, arg); non-zero stops the walk.
pub type DiffCallback = unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// `RBD_FEATURE_LAYERING` (rbd/features.h): the image can be a clone's parent.
pub const FEATURE_LAYERING: u64 = 1 << 0;
/// `RBD_FEATURE_EXCLUSIVE_LOCK`: one client at a time writes the image.
pub const FEATURE_EXCLUSIVE_LOCK: u64 = 1 << 2;
/// `RBD_LOCK_MODE_EXCLUSIVE` of `rbd_lock_mode_t`.
pub const LOCK_MODE_EXCLUSIVE: c_int = 0;

/// `rbd_snap_info_t`.
#[repr(C)]
pub struct SnapInfo {
    pub id: u64,
    pub size: u64,
    pub name: *const c_char,
}

/// The library file names Ceph's packages install (the runtime packages, not the -dev ones).
const LIBRADOS: &str = "librados.so.2";
const LIBRBD: &str = "librbd.so.1";

/// Every librados and librbd function the engine uses.
pub struct Api {
    pub rados_create: unsafe extern "C" fn(*mut RadosT, *const c_char) -> c_int,
    pub rados_conf_read_file: unsafe extern "C" fn(RadosT, *const c_char) -> c_int,
    pub rados_conf_set: unsafe extern "C" fn(RadosT, *const c_char, *const c_char) -> c_int,
    pub rados_connect: unsafe extern "C" fn(RadosT) -> c_int,
    pub rados_shutdown: unsafe extern "C" fn(RadosT),
    pub rados_ioctx_create: unsafe extern "C" fn(RadosT, *const c_char, *mut IoctxT) -> c_int,
    pub rados_ioctx_destroy: unsafe extern "C" fn(IoctxT),
    pub rados_ioctx_set_namespace: unsafe extern "C" fn(IoctxT, *const c_char),
    pub rbd_create: unsafe extern "C" fn(IoctxT, *const c_char, u64, *mut c_int) -> c_int,
    pub rbd_open: unsafe extern "C" fn(IoctxT, *const c_char, *mut ImageT, *const c_char) -> c_int,
    pub rbd_close: unsafe extern "C" fn(ImageT) -> c_int,
    pub rbd_get_size: unsafe extern "C" fn(ImageT, *mut u64) -> c_int,
    pub rbd_resize: unsafe extern "C" fn(ImageT, u64) -> c_int,
    pub rbd_flush: unsafe extern "C" fn(ImageT) -> c_int,
    pub rbd_snap_create: unsafe extern "C" fn(ImageT, *const c_char) -> c_int,
    pub rbd_snap_remove: unsafe extern "C" fn(ImageT, *const c_char) -> c_int,
    pub rbd_snap_rollback: unsafe extern "C" fn(ImageT, *const c_char) -> c_int,
    pub rbd_snap_list: unsafe extern "C" fn(ImageT, *mut SnapInfo, *mut c_int) -> c_int,
    pub rbd_snap_list_end: unsafe extern "C" fn(*mut SnapInfo),
    pub rbd_snap_get_timestamp: unsafe extern "C" fn(ImageT, u64, *mut libc::timespec) -> c_int,
    pub rbd_open_read_only:
        unsafe extern "C" fn(IoctxT, *const c_char, *mut ImageT, *const c_char) -> c_int,
    pub rbd_remove: unsafe extern "C" fn(IoctxT, *const c_char) -> c_int,
    pub rbd_get_features: unsafe extern "C" fn(ImageT, *mut u64) -> c_int,
    pub rbd_diff_iterate2: unsafe extern "C" fn(
        ImageT,
        *const c_char,
        u64,
        u64,
        u8,
        u8,
        DiffCallback,
        *mut c_void,
    ) -> c_int,
    pub rbd_snap_protect: unsafe extern "C" fn(ImageT, *const c_char) -> c_int,
    pub rbd_snap_is_protected: unsafe extern "C" fn(ImageT, *const c_char, *mut c_int) -> c_int,
    pub rbd_image_options_create: unsafe extern "C" fn(*mut ImageOptionsT),
    pub rbd_image_options_destroy: unsafe extern "C" fn(ImageOptionsT),
    pub rbd_clone3: unsafe extern "C" fn(
        IoctxT,
        *const c_char,
        *const c_char,
        IoctxT,
        *const c_char,
        ImageOptionsT,
    ) -> c_int,
    pub rbd_lock_acquire: unsafe extern "C" fn(ImageT, c_int) -> c_int,
    pub rbd_lock_release: unsafe extern "C" fn(ImageT) -> c_int,
    pub rbd_is_exclusive_lock_owner: unsafe extern "C" fn(ImageT, *mut c_int) -> c_int,
    pub rbd_aio_create_completion:
        unsafe extern "C" fn(*mut c_void, Callback, *mut CompletionT) -> c_int,
    pub rbd_aio_get_return_value: unsafe extern "C" fn(CompletionT) -> ssize_t,
    pub rbd_aio_release: unsafe extern "C" fn(CompletionT),
    pub rbd_aio_read: unsafe extern "C" fn(ImageT, u64, usize, *mut c_char, CompletionT) -> c_int,
    pub rbd_aio_readv: unsafe extern "C" fn(ImageT, *const iovec, c_int, u64, CompletionT) -> c_int,
    pub rbd_aio_writev:
        unsafe extern "C" fn(ImageT, *const iovec, c_int, u64, CompletionT) -> c_int,
    pub rbd_aio_discard: unsafe extern "C" fn(ImageT, u64, u64, CompletionT) -> c_int,
    pub rbd_aio_write_zeroes:
        unsafe extern "C" fn(ImageT, u64, usize, CompletionT, c_int, c_int) -> c_int,
    pub rbd_aio_flush: unsafe extern "C" fn(ImageT, CompletionT) -> c_int,
    pub rbd_read: unsafe extern "C" fn(ImageT, u64, usize, *mut c_char) -> ssize_t,
    pub rbd_write: unsafe extern "C" fn(ImageT, u64, usize, *const c_char) -> ssize_t,
    pub rbd_write_zeroes: unsafe extern "C" fn(ImageT, u64, usize, c_int, c_int) -> ssize_t,
    /// Kept loaded as long as any pointer above may be called.
    _rados: Library,
    _rbd: Library,
}

/// Resolves `name` in `lib` as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the function's true C signature.
unsafe fn symbol<T: Copy>(lib: &Library, name: &str) -> Result<T, String> {
    // SAFETY: the caller vouches for the type; the pointer is used only while the library
    // stays loaded (`Api` owns it).
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| format!("{name}: {e}"))
}

impl Api {
    fn load() -> Result<Self, String> {
        let open = |file: &str| {
            // SAFETY: loading runs the library's initialisers: librados and librbd are Ceph's
            // own client libraries, whose initialisers only set up their static state.
            unsafe { Library::new(file) }.map_err(|e| {
                format!(
                    "cannot load {file} ({e}): an rbd disk needs Ceph's client libraries \
                     (Debian: librbd1)"
                )
            })
        };
        let rados = open(LIBRADOS)?;
        let rbd = open(LIBRBD)?;
        // SAFETY: each field's type is the C prototype of the function of the same name in
        // librados.h / librbd.h (Ceph 16, stable C ABI).
        unsafe {
            Ok(Self {
                rados_create: symbol(&rados, "rados_create")?,
                rados_conf_read_file: symbol(&rados, "rados_conf_read_file")?,
                rados_conf_set: symbol(&rados, "rados_conf_set")?,
                rados_connect: symbol(&rados, "rados_connect")?,
                rados_shutdown: symbol(&rados, "rados_shutdown")?,
                rados_ioctx_create: symbol(&rados, "rados_ioctx_create")?,
                rados_ioctx_destroy: symbol(&rados, "rados_ioctx_destroy")?,
                rados_ioctx_set_namespace: symbol(&rados, "rados_ioctx_set_namespace")?,
                rbd_create: symbol(&rbd, "rbd_create")?,
                rbd_open: symbol(&rbd, "rbd_open")?,
                rbd_close: symbol(&rbd, "rbd_close")?,
                rbd_get_size: symbol(&rbd, "rbd_get_size")?,
                rbd_resize: symbol(&rbd, "rbd_resize")?,
                rbd_flush: symbol(&rbd, "rbd_flush")?,
                rbd_snap_create: symbol(&rbd, "rbd_snap_create")?,
                rbd_snap_remove: symbol(&rbd, "rbd_snap_remove")?,
                rbd_snap_rollback: symbol(&rbd, "rbd_snap_rollback")?,
                rbd_snap_list: symbol(&rbd, "rbd_snap_list")?,
                rbd_snap_list_end: symbol(&rbd, "rbd_snap_list_end")?,
                rbd_snap_get_timestamp: symbol(&rbd, "rbd_snap_get_timestamp")?,
                rbd_open_read_only: symbol(&rbd, "rbd_open_read_only")?,
                rbd_remove: symbol(&rbd, "rbd_remove")?,
                rbd_get_features: symbol(&rbd, "rbd_get_features")?,
                rbd_diff_iterate2: symbol(&rbd, "rbd_diff_iterate2")?,
                rbd_snap_protect: symbol(&rbd, "rbd_snap_protect")?,
                rbd_snap_is_protected: symbol(&rbd, "rbd_snap_is_protected")?,
                rbd_image_options_create: symbol(&rbd, "rbd_image_options_create")?,
                rbd_image_options_destroy: symbol(&rbd, "rbd_image_options_destroy")?,
                rbd_clone3: symbol(&rbd, "rbd_clone3")?,
                rbd_lock_acquire: symbol(&rbd, "rbd_lock_acquire")?,
                rbd_lock_release: symbol(&rbd, "rbd_lock_release")?,
                rbd_is_exclusive_lock_owner: symbol(&rbd, "rbd_is_exclusive_lock_owner")?,
                rbd_aio_create_completion: symbol(&rbd, "rbd_aio_create_completion")?,
                rbd_aio_get_return_value: symbol(&rbd, "rbd_aio_get_return_value")?,
                rbd_aio_release: symbol(&rbd, "rbd_aio_release")?,
                rbd_aio_read: symbol(&rbd, "rbd_aio_read")?,
                rbd_aio_readv: symbol(&rbd, "rbd_aio_readv")?,
                rbd_aio_writev: symbol(&rbd, "rbd_aio_writev")?,
                rbd_aio_discard: symbol(&rbd, "rbd_aio_discard")?,
                rbd_aio_write_zeroes: symbol(&rbd, "rbd_aio_write_zeroes")?,
                rbd_aio_flush: symbol(&rbd, "rbd_aio_flush")?,
                rbd_read: symbol(&rbd, "rbd_read")?,
                rbd_write: symbol(&rbd, "rbd_write")?,
                rbd_write_zeroes: symbol(&rbd, "rbd_write_zeroes")?,
                _rados: rados,
                _rbd: rbd,
            })
        }
    }
}

/// The libraries, loaded once per process on first use; a failure is kept and reported again.
pub fn api() -> Result<Arc<Api>, String> {
    static API: OnceLock<Result<Arc<Api>, String>> = OnceLock::new();
    API.get_or_init(|| Api::load().map(Arc::new)).clone()
}
