//! `keel apply FILE DISK` on a served rbd disk: an export file (`keel diff --export` of a keel
//! or an rbd disk) replayed through the disk's open image.
//!
//! The closest RBD equivalent of "this disk is the export's FROM point": the image holds a
//! snapshot named FROM and its head has not changed since (or, for a FROM of `@empty`, nothing
//! was ever written to it), as `rbd_diff_iterate2` from that snapshot to the head says. After
//! the apply keeld takes snapshot TO, so the next increment (FROM = this TO) finds its base,
//! as `rbd import-diff` does.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use keel_protocol::control::ApplyAnswer;

use super::image::Image;
use crate::engine::AdminError;
use crate::store::diff::EMPTY;
use crate::store::diff_file::{self, ApplyTarget};

/// Largest zeroing one librbd call is asked for.
const ZERO_CHUNK: u64 = 1 << 30;

/// Replays `file` onto `image` (served, writable) and takes snapshot TO.
pub fn apply(image: &Image, file: &Path, force: bool) -> Result<ApplyAnswer, AdminError> {
    let shown = file.display();
    let open = || {
        File::open(file)
            .map(|f| BufReader::with_capacity(1 << 20, f))
            .map_err(|e| AdminError::Invalid(format!("{shown}: {e}")))
    };
    // The whole file is checked before anything is written.
    let (header, _) =
        diff_file::verify(open()?).map_err(|e| AdminError::Invalid(format!("{shown}: {e}")))?;
    let size = image.size().map_err(super::admin_err)?;
    if header.disk_size != size {
        return Err(AdminError::Invalid(format!(
            "{shown} is an export of a {}-byte disk, the image holds {size} bytes",
            header.disk_size
        )));
    }
    let snaps = image.snap_list().map_err(super::admin_err)?;
    let has = |name: &str| snaps.iter().any(|s| s.name == name);
    let take = !header.to.starts_with('@') && !has(&header.to);
    if !force {
        if !header.to.starts_with('@') && has(&header.to) {
            return Err(AdminError::Conflict(format!(
                "the image already holds snapshot {}, the end of this export (applied already?); \
                 force it to apply anyway",
                header.to
            )));
        }
        check_base(image, &header.from, has(&header.from), size)?;
    }
    let mut target = Target { image, size };
    let totals = diff_file::apply(open()?, &mut target)
        .map_err(|e| AdminError::Failed(format!("applying {shown}: {e}")))?;
    if take {
        image.snap_create(&header.to).map_err(super::admin_err)?;
    }
    Ok(ApplyAnswer {
        from: header.from,
        to: header.to.clone(),
        records: totals.records,
        data_bytes: totals.data_bytes,
        zero_bytes: totals.zero_bytes,
        snapshot: take.then_some(header.to),
    })
}

/// Refuses an image that is not at `from`: no snapshot of that name, or a head changed since
/// it (for `@empty`: anything written at all).
fn check_base(image: &Image, from: &str, has_from: bool, size: u64) -> Result<(), AdminError> {
    let base = if from == EMPTY {
        None
    } else if has_from {
        Some(from)
    } else {
        return Err(AdminError::Conflict(format!(
            "this export runs from snapshot {from}, which the image does not hold: apply it \
             onto a copy at that point (with a snapshot of that name), or force it"
        )));
    };
    let changed = super::diff::walk(image, base, size).map_err(super::admin_err)?;
    if let Some(first) = changed.first() {
        return Err(AdminError::Conflict(format!(
            "the image changed since {} (first at byte {}): this export applies onto an image \
             at its FROM point; revert to it, or force the apply",
            base.unwrap_or("it was created"),
            first.offset
        )));
    }
    Ok(())
}

/// The open image as the target of [`diff_file::apply`].
struct Target<'a> {
    image: &'a Image,
    size: u64,
}

impl ApplyTarget for Target<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> crate::store::Result<()> {
        Ok(self.image.write_at(offset, data)?)
    }

    fn zero(&mut self, offset: u64, len: u64) -> crate::store::Result<()> {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let n = (end - at).min(ZERO_CHUNK);
            self.image.write_zeroes(at, n as usize)?;
            at += n;
        }
        Ok(())
    }

    fn finish(&mut self) -> crate::store::Result<()> {
        Ok(self.image.flush()?)
    }
}
