//! `handover`: a disk two keelds may serve in turn (live migration between keelds).

use super::{Checker, ConfigError, EngineKind, RawDisk};

impl Checker<'_> {
    /// `handover = true` is for writable raw, keel and rbd disks that import nothing: the disks
    /// keeld locks (their files, or the image's exclusive lock) and can close and reopen while
    /// its socket stays.
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
        if !matches!(engine, EngineKind::Raw | EngineKind::Keel | EngineKind::Rbd) {
            return refuse("only raw, keel and rbd disks are handed over between keelds");
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
