//! `keel diff` on an rbd disk: the extents that changed between two RBD snapshots, or a
//! snapshot and the head, as librbd's `rbd_diff_iterate2` reports them.
//!
//! The walk asks for exact extents (`whole_object` off), so the report lists the bytes written,
//! discarded or zeroed, not the RBD objects they fell in. An extent librbd reports as not
//! existing reads as zeroes in the newer side: it is a `zero` extent, as on keel disks.

use std::ffi::{CString, c_int, c_void};
use std::io;
use std::ptr;
use std::sync::{Mutex, PoisonError};

use super::image::{Image, check};
use crate::engine::AdminError;
use crate::store::diff::{DiffReport, EMPTY, Extent, ExtentKind, RUNNING};

/// The unit of the extents librbd reports: bytes, shown as the sector size.
const SECTOR: u64 = 512;

/// The diff of `image` from side `from` to side `to` (snapshot names, [`EMPTY`] or
/// [`RUNNING`], as the control API passes them). `disk_size` is the served capacity.
pub fn diff(image: &Image, from: &str, to: &str, disk_size: u64) -> Result<DiffReport, AdminError> {
    let order = |name: &str| -> Result<usize, AdminError> {
        let snaps = image.snap_list().map_err(super::admin_err)?;
        snaps
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| AdminError::NotFound(format!("no snapshot named {name}")))
    };
    if from == RUNNING {
        return Err(AdminError::Invalid(
            "a diff of an rbd disk runs from a snapshot (or @empty) to a later one or the head"
                .into(),
        ));
    }
    if to == EMPTY {
        return Err(AdminError::Invalid(
            "@empty is the start of a diff, not its end".into(),
        ));
    }
    let from_snap = (from != EMPTY).then_some(from);
    if let Some(f) = from_snap {
        let f = order(f)?;
        if to != RUNNING && order(to)? < f {
            return Err(AdminError::Invalid(format!(
                "snapshot {from} is newer than {to}: a diff runs from the older one"
            )));
        }
    }
    let extents = if to == RUNNING {
        walk(image, from_snap, disk_size)
    } else {
        let at = image.open_snapshot(to).map_err(super::admin_err)?;
        let size = at.size().map_err(super::admin_err)?;
        walk(&at, from_snap, size)
    }
    .map_err(super::admin_err)?;
    Ok(report(from, to, disk_size, merge(extents)))
}

/// Calls `rbd_diff_iterate2` over `[0, len)` of `image` (at whatever it was opened on) and
/// collects what it reports, in librbd's order.
pub(super) fn walk(image: &Image, from: Option<&str>, len: u64) -> io::Result<Vec<Extent>> {
    let from = from
        .map(|f| {
            CString::new(f).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "snapshot holds a NUL byte")
            })
        })
        .transpose()?;
    let out: Mutex<Vec<Extent>> = Mutex::new(Vec::new());
    // SAFETY: the image is open; `from` (or NULL: since the image was created) outlives the
    // call; `collect` matches librbd's callback type and gets `out`, which lives across the call
    // (librbd calls back only before it returns, from whichever of its threads: hence the
    // mutex).
    let rc = unsafe {
        (image.api().rbd_diff_iterate2)(
            image.raw(),
            from.as_ref().map_or(ptr::null(), |f| f.as_ptr()),
            0,
            len,
            1, // a clone's diff from @empty includes what it reads from its parent
            0, // exact extents, not whole objects
            collect,
            (&raw const out).cast_mut().cast(),
        )
    };
    check(rc, "rbd_diff_iterate2")?;
    Ok(out.into_inner().unwrap_or_else(PoisonError::into_inner))
}

/// Appends one reported extent to the `Mutex<Vec<Extent>>` behind `arg`. Called from C: it
/// must not panic.
unsafe extern "C" fn collect(offset: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `&Mutex<Vec<Extent>>` `walk` passed, alive until
    // `rbd_diff_iterate2` returns, which is after its last callback.
    let out = unsafe { &*arg.cast::<Mutex<Vec<Extent>>>() };
    out.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Extent {
            offset,
            length: len as u64,
            kind: if exists != 0 {
                ExtentKind::Data
            } else {
                ExtentKind::Zero
            },
        });
    0
}

/// Sorted by offset, touching extents of one kind joined.
fn merge(mut extents: Vec<Extent>) -> Vec<Extent> {
    extents.sort_by_key(|e| e.offset);
    let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
    for e in extents.into_iter().filter(|e| e.length > 0) {
        match out.last_mut() {
            Some(last) if last.kind == e.kind && last.offset + last.length == e.offset => {
                last.length += e.length;
            }
            _ => out.push(e),
        }
    }
    out
}

fn report(from: &str, to: &str, disk_size: u64, extents: Vec<Extent>) -> DiffReport {
    let bytes = |kind| {
        extents
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.length)
            .sum()
    };
    DiffReport {
        from: from.to_string(),
        to: to.to_string(),
        disk_size,
        block_size: SECTOR,
        data_bytes: bytes(ExtentKind::Data),
        zero_bytes: bytes(ExtentKind::Zero),
        nodes_opened: 0,
        shared_skipped: 0,
        extents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(offset: u64, length: u64, kind: ExtentKind) -> Extent {
        Extent {
            offset,
            length,
            kind,
        }
    }

    #[test]
    fn touching_extents_of_one_kind_merge_and_others_stay_apart() {
        use ExtentKind::{Data, Zero};
        let merged = merge(vec![
            ext(8192, 4096, Data),
            ext(0, 4096, Data),
            ext(4096, 4096, Data),
            ext(12288, 512, Zero),
            ext(20000, 0, Data),
            ext(16384, 4096, Data),
        ]);
        assert_eq!(
            merged,
            vec![
                ext(0, 12288, Data),
                ext(12288, 512, Zero),
                ext(16384, 4096, Data),
            ]
        );
        let r = report("a", "b", 1 << 20, merged);
        assert_eq!(
            (r.data_bytes, r.zero_bytes, r.block_size),
            (16384, 512, 512)
        );
    }
}
