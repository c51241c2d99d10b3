//! `keel clone` on an rbd disk: an RBD layered clone of one of the image's snapshots, a new
//! image in the same pool and namespace that reads the snapshot where it was not written.
//!
//! The parent needs the `layering` feature. Ceph 16 makes a clone v2 (no protection needed)
//! only when the cluster requires clients of Mimic or later; otherwise it makes a clone v1,
//! which needs the snapshot protected. Keel tries as the cluster is set up and, when librbd
//! refuses an unprotected snapshot, protects it and tries again; a protected snapshot must be
//! unprotected (`rbd snap unprotect`, refused while clones remain) before it can be deleted.

use std::ffi::CString;
use std::io;
use std::ptr;

use log::info;

use super::ffi::{FEATURE_LAYERING, ImageOptionsT};
use super::image::{Image, check, errno};
use crate::engine::AdminError;

/// Clones snapshot `snap` of `parent` into image `child` beside it; answers its spec.
pub fn clone_snapshot(
    parent: &Image,
    spec: &str,
    snap: &str,
    child: &str,
) -> Result<String, AdminError> {
    let features = parent.features().map_err(super::admin_err)?;
    if features & FEATURE_LAYERING == 0 {
        return Err(AdminError::Unsupported(format!(
            "image {spec} lacks the layering feature: RBD cannot clone it (`rbd feature \
             enable` cannot add layering; copy the image instead)"
        )));
    }
    let snaps = parent.snap_list().map_err(super::admin_err)?;
    if !snaps.iter().any(|s| s.name == snap) {
        return Err(AdminError::NotFound(format!("no snapshot named {snap}")));
    }
    let child_spec = match spec.rsplit_once('/') {
        Some((pool, _)) => format!("{pool}/{child}"),
        None => child.to_string(),
    };
    match clone3(parent, snap, child) {
        Err(e) if errno(&e) == Some(libc::EINVAL) && !protected(parent, snap)? => {
            parent.snap_protect(snap).map_err(super::admin_err)?;
            info!("{spec}@{snap}: protected, as a clone v1 needs");
            clone3(parent, snap, child)
        }
        other => other,
    }
    .map_err(|e| match errno(&e) {
        Some(libc::EEXIST) => AdminError::Conflict(format!("image {child_spec} exists")),
        _ => super::admin_err(e),
    })?;
    info!("{spec}@{snap}: cloned into {child_spec}");
    Ok(child_spec)
}

fn protected(parent: &Image, snap: &str) -> Result<bool, AdminError> {
    parent.snap_is_protected(snap).map_err(super::admin_err)
}

/// `rbd_clone3` with the cluster's default options for the child.
fn clone3(parent: &Image, snap: &str, child: &str) -> io::Result<()> {
    let c = |s: &str| {
        CString::new(s)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} holds a NUL")))
    };
    let (p_name, p_snap, c_name) = (c(parent.name())?, c(snap)?, c(child)?);
    let api = parent.api();
    let mut opts: ImageOptionsT = ptr::null_mut();
    // SAFETY: `opts` is a valid out-pointer; destroyed below, once.
    unsafe { (api.rbd_image_options_create)(&mut opts) };
    let ctx = parent.ctx().raw();
    // SAFETY: the context is alive (the parent holds it); the names outlive the call; `opts`
    // was created above. Parent and child share the context: same pool and namespace.
    let rc = unsafe {
        (api.rbd_clone3)(
            ctx,
            p_name.as_ptr(),
            p_snap.as_ptr(),
            ctx,
            c_name.as_ptr(),
            opts,
        )
    };
    // SAFETY: created above and no longer used.
    unsafe { (api.rbd_image_options_destroy)(opts) };
    check(rc, &format!("cloning {snap:?} into {child:?}")).map(drop)
}
