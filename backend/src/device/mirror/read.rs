//! The mirror's read path: the lowest-numbered local component holding current data for the
//! range (remote ones after the local ones), falling over to the next on error.

use super::error::MirrorError;
use super::remote::is_remote;
use super::shared::{Shared, State, Target};
use crate::device::BlockDevice;
use std::io;
use std::sync::Arc;

impl Shared {
    /// Devices that hold current data for all of `first..=last`, in preference order: local
    /// components before remote ones, each in index order.
    pub(super) fn read_sources(
        st: &State,
        first: u64,
        last: u64,
    ) -> Vec<(Target, Arc<dyn BlockDevice>)> {
        let mut out = Vec::new();
        let mut remote = Vec::new();
        for (i, rt) in st.comps.iter().enumerate() {
            let Some(d) = rt.data.as_ref() else { continue };
            if (first..=last).all(|c| st.view.component_valid_for(i, c)) {
                let far = st
                    .view
                    .components
                    .get(i)
                    .is_some_and(|c| is_remote(&c.path));
                let to = if far { &mut remote } else { &mut out };
                to.push((Target::Component(i), d.clone()));
            }
        }
        out.append(&mut remote);
        for (&c, rt) in &st.deltas {
            if (first..=last).all(|k| st.view.delta_valid_for(c, k)) {
                out.push((Target::Delta(c), rt.data.clone()));
            }
        }
        out
    }

    pub(super) fn read_range(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let chunk = self.chunk_size;
        let (first, last) = (offset / chunk, (offset + buf.len() as u64 - 1) / chunk);
        let sources = Self::read_sources(&self.lock_state(), first, last);
        if sources.is_empty() {
            if first == last {
                return Err(MirrorError::NoUsableComponent.into());
            }
            // No single component holds the whole range: read it chunk by chunk.
            let mut done = 0usize;
            while done < buf.len() {
                let at = offset + done as u64;
                let n = ((chunk - at % chunk) as usize).min(buf.len() - done);
                self.read_range(&mut buf[done..done + n], at)?;
                done += n;
            }
            return Ok(());
        }
        let mut failed: Vec<(Target, String)> = Vec::new();
        let mut last_err = None;
        for (t, dev) in &sources {
            match dev.read_at(buf, offset) {
                Ok(()) => {
                    if !failed.is_empty() {
                        let mut st = self.lock_state();
                        for (t, e) in failed {
                            self.take_out(&mut st, t, &format!("read error: {e}"));
                        }
                        self.persist(&mut st)?;
                    }
                    return Ok(());
                }
                Err(e) => {
                    failed.push((*t, e.to_string()));
                    last_err = Some(e);
                }
            }
        }
        log::error!("mirror {}: read failed on every component", self.name);
        Err(last_err.unwrap_or_else(|| io::Error::other("no component")))
    }
}
