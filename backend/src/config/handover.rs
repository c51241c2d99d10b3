//! `handover`: a disk two keelds may serve in turn (live migration between keelds).

use super::{Checker, ConfigError, EngineKind, RawDisk};

impl Checker<'_> {
    /// `handover = true` is for writable raw and keel disks that import nothing: the disks whose
    /// files keeld locks and can close and reopen while its socket stays.
    pub(super) fn check_handover(
        &self,
        raw: &RawDisk,
        engine: EngineKind,
        importing: bool,
    ) -> Result<bool, ConfigError> {
        let Some(v) = &raw.handover else {
            return Ok(false);
        };
        if !*v.get_ref() {
            return Ok(false);
        }
        let refuse = |m: &str| Err(self.err(v.span(), "handover", m.to_string()));
        if !matches!(engine, EngineKind::Raw | EngineKind::Keel) {
            return refuse("only raw and keel disks are handed over between keelds");
        }
        if raw.read_only.as_ref().is_some_and(|r| *r.get_ref()) {
            return refuse(
                "a read-only disk needs no handover: keelds share its file (shared lock)",
            );
        }
        if importing {
            return refuse("a disk that imports cannot be handed over until its import is done");
        }
        Ok(true)
    }
}
