//! `PUT /v1/disks/{name}/limits`: a disk's I/O limits and its mirror's resync rate, changed
//! while it is served.

use keel_protocol::control::{DiskLimits, LimitsUpdate};

use super::control::DaemonControl;
use crate::control::ApiError;

impl DaemonControl {
    /// Applies `update` to `disk`'s limits, checked as the config's keys are; answers the
    /// limits now in force.
    pub(super) fn set_limits(
        &self,
        disk: &str,
        update: &LimitsUpdate,
    ) -> Result<DiskLimits, ApiError> {
        let d = self.disk(disk)?;
        let now = d.qos().limits();
        let new = update.apply(&now);
        crate::qos::check(&new)
            .map_err(|e| ApiError::BadRequest(format!("`{}`: {}", e.key, e.message)))?;
        if new.resync_bps_limit != now.resync_bps_limit {
            let admin = d.engine().admin();
            let set = admin.map(|a| a.set_resync_rate(new.resync_bps_limit));
            match set {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(super::control::from_admin(e)),
                None => {
                    return Err(ApiError::BadRequest(format!(
                        "`resync_bps_limit`: disk {disk} is not mirrored"
                    )));
                }
            }
        }
        d.qos().set(&new);
        log::info!("disk {disk}: limits now {}", crate::qos::describe(&new));
        Ok(new)
    }
}
