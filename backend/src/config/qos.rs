//! The `[[disk]]` keys that limit a disk's I/O (`iops_limit`, `bps_limit`... see
//! [`crate::qos`]) and its mirror's resync rate.

use super::{Checker, ConfigError, RawDisk, SizeValue};
use keel_protocol::control::DiskLimits;
use toml::Spanned;

impl Checker<'_> {
    /// The limits keys, each absent one unlimited; checked as `PUT .../limits` checks them.
    pub(super) fn check_limits(
        &self,
        raw: &RawDisk,
        disk_span: std::ops::Range<usize>,
    ) -> Result<DiskLimits, ConfigError> {
        let count = |v: &Option<Spanned<u64>>| v.as_ref().map_or(0, |v| *v.get_ref());
        let rate = |v: &Option<Spanned<SizeValue>>, key: &str| match v {
            None => Ok(0),
            Some(v) => v
                .get_ref()
                .to_bytes()
                .map_err(|m| self.err(v.span(), key, m)),
        };
        let limits = DiskLimits {
            iops_limit: count(&raw.iops_limit),
            read_iops_limit: count(&raw.read_iops_limit),
            write_iops_limit: count(&raw.write_iops_limit),
            bps_limit: rate(&raw.bps_limit, "bps_limit")?,
            read_bps_limit: rate(&raw.read_bps_limit, "read_bps_limit")?,
            write_bps_limit: rate(&raw.write_bps_limit, "write_bps_limit")?,
            iops_burst: count(&raw.iops_burst),
            burst_seconds: raw.burst_seconds.as_ref().map_or(1, |v| *v.get_ref()),
            resync_bps_limit: rate(&raw.resync_bps_limit, "resync_bps_limit")?,
        };
        if let Some(v) = &raw.resync_bps_limit
            && raw.mirror.is_none()
        {
            return Err(self.err(
                v.span(),
                "resync_bps_limit",
                "only mirrored disks (`mirror = [...]`) resync".into(),
            ));
        }
        crate::qos::check(&limits).map_err(|e| {
            let span = match e.key {
                "iops_burst" => raw.iops_burst.as_ref().map(Spanned::span),
                _ => raw.burst_seconds.as_ref().map(Spanned::span),
            };
            self.err(span.unwrap_or(disk_span), e.key, e.message)
        })?;
        Ok(limits)
    }
}
