//! The config file as TOML gives it, before any check: every value with its place in the
//! file, so an error can name the line.

use super::space::PercentValue;
use super::{EngineKind, SizeValue};
use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) disk: Vec<Spanned<RawDisk>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) control_socket: Option<Spanned<String>>,
    pub(super) log_level: Option<Spanned<String>>,
    pub(super) metrics_listen: Option<Spanned<String>>,
    pub(super) log_format: Option<Spanned<String>>,
    pub(super) nbd_socket: Option<Spanned<String>>,
    pub(super) nbd_listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDisk {
    pub(super) name: Spanned<String>,
    pub(super) socket: Spanned<String>,
    pub(super) engine: Spanned<EngineKind>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) mirror: Option<Spanned<Vec<String>>>,
    pub(super) resync_chunk: Option<Spanned<SizeValue>>,
    pub(super) size: Option<Spanned<SizeValue>>,
    pub(super) resize: Option<Spanned<bool>>,
    pub(super) queues: Option<Spanned<u16>>,
    pub(super) queue_size: Option<Spanned<u16>>,
    pub(super) read_only: Option<Spanned<bool>>,
    pub(super) serial: Option<Spanned<String>>,
    pub(super) direct: Option<Spanned<bool>>,
    pub(super) logical_block_size: Option<Spanned<u32>>,
    pub(super) poll_us: Option<Spanned<u32>>,
    pub(super) delay_us: Option<Spanned<u32>>,
    pub(super) max_size: Option<Spanned<SizeValue>>,
    pub(super) space_warn: Option<Spanned<PercentValue>>,
    pub(super) space_critical: Option<Spanned<PercentValue>>,
    pub(super) space_wait_ms: Option<Spanned<u64>>,
    pub(super) spare: Option<Spanned<SizeValue>>,
    pub(super) cleaner_policy: Option<Spanned<String>>,
    pub(super) cleaner_io: Option<Spanned<String>>,
    pub(super) iops_limit: Option<Spanned<u64>>,
    pub(super) read_iops_limit: Option<Spanned<u64>>,
    pub(super) write_iops_limit: Option<Spanned<u64>>,
    pub(super) bps_limit: Option<Spanned<SizeValue>>,
    pub(super) read_bps_limit: Option<Spanned<SizeValue>>,
    pub(super) write_bps_limit: Option<Spanned<SizeValue>>,
    pub(super) iops_burst: Option<Spanned<u64>>,
    pub(super) burst_seconds: Option<Spanned<u64>>,
    pub(super) resync_bps_limit: Option<Spanned<SizeValue>>,
    pub(super) import_from: Option<Spanned<String>>,
    pub(super) import_rate: Option<Spanned<SizeValue>>,
    pub(super) handover: Option<Spanned<bool>>,
    pub(super) encryption: Option<Spanned<String>>,
    pub(super) key_file: Option<Spanned<String>>,
    pub(super) compression: Option<Spanned<String>>,
    pub(super) image: Option<Spanned<String>>,
    pub(super) ceph_conf: Option<Spanned<String>>,
    pub(super) ceph_id: Option<Spanned<String>>,
    pub(super) keyring: Option<Spanned<String>>,
    pub(super) osd_timeout_s: Option<Spanned<u32>>,
}
