//! The `[[disk]]` keys about a keel container's space: when to warn, how far the container
//! file may grow, how long guest writes wait for space.

use super::{Checker, ConfigError, EngineKind, RawDisk, SizeValue};
use crate::store::{CreateOptions, Spare};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// How long a guest write of a served disk waits for space by default.
pub const DEFAULT_SPACE_WAIT_MS: u64 = 10_000;
/// The longest `space_wait_ms` accepted: a guest write must never look hung.
pub const MAX_SPACE_WAIT_MS: u64 = 120_000;

/// Space settings of one disk, with defaults applied (only the keel engine uses them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    /// `space_warn`: the state is `low` from this percentage of usable space held.
    pub warn_percent: u8,
    /// `space_critical`: `critical` from this percentage.
    pub critical_percent: u8,
    /// `space_wait_ms`: how long a guest write waits for space before it fails.
    pub wait: Duration,
    /// `max_size`: the container file grows up to this many bytes; `None`: it keeps its size.
    pub max_size: Option<u64>,
    /// `spare`: the spare space a container made for this disk gets (checked against `size`
    /// when it is known).
    pub spare: Spare,
    /// `cleaner_policy`: how the cleaner picks its victims.
    pub cleaner_policy: crate::store::VictimPolicy,
    /// `cleaner_io`: the I/O priority class of the cleaner's I/O while it cleans ahead.
    pub cleaner_io: crate::store::CleanerIo,
}

impl Default for DiskSpace {
    fn default() -> Self {
        let d = crate::store::SpaceOptions::default();
        Self {
            warn_percent: d.warn_percent,
            critical_percent: d.critical_percent,
            wait: Duration::from_millis(DEFAULT_SPACE_WAIT_MS),
            max_size: d.max_container_bytes,
            spare: Spare::default(),
            cleaner_policy: Default::default(),
            cleaner_io: Default::default(),
        }
    }
}

impl DiskSpace {
    /// The store's options for these settings.
    pub fn store_options(&self) -> crate::store::SpaceOptions {
        crate::store::SpaceOptions {
            warn_percent: self.warn_percent,
            critical_percent: self.critical_percent,
            wait: self.wait,
            max_container_bytes: self.max_size,
            cleaner_policy: self.cleaner_policy,
            cleaner_io: self.cleaner_io,
        }
    }
}

/// A percentage as written: `"85%"`, `"85"` or `85`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PercentValue {
    Number(u64),
    Text(String),
}

impl PercentValue {
    fn to_percent(&self) -> Result<u8, String> {
        let n = match self {
            Self::Number(n) => *n,
            Self::Text(t) => t
                .trim()
                .trim_end_matches('%')
                .trim()
                .parse()
                .map_err(|_| format!("\"{t}\" is not a percentage (expected e.g. \"85%\")"))?,
        };
        match u8::try_from(n) {
            Ok(p) if (1..=100).contains(&p) => Ok(p),
            _ => Err(format!("{n}% is outside 1%..=100%")),
        }
    }
}

impl Checker<'_> {
    /// `space_warn`, `space_critical`, `space_wait_ms`, `spare`, `cleaner_policy`,
    /// `cleaner_io` and `max_size`.
    pub(super) fn check_space(
        &self,
        raw: &RawDisk,
        engine: EngineKind,
        size: Option<u64>,
        path: Option<&Path>,
    ) -> Result<DiskSpace, ConfigError> {
        let mut out = DiskSpace::default();
        let keel_only = |key: &str, span| {
            if engine == EngineKind::Keel {
                Ok(())
            } else {
                Err(self.err(
                    span,
                    key,
                    format!(
                        "only the keel engine keeps a container whose space this sets (this disk \
                         uses the {} engine)",
                        engine.name()
                    ),
                ))
            }
        };
        let percent = |v: &Spanned<PercentValue>, key: &str| {
            keel_only(key, v.span())?;
            v.get_ref()
                .to_percent()
                .map_err(|m| self.err(v.span(), key, m))
        };
        if let Some(v) = &raw.space_warn {
            out.warn_percent = percent(v, "space_warn")?;
        }
        if let Some(v) = &raw.space_critical {
            out.critical_percent = percent(v, "space_critical")?;
        }
        if out.warn_percent > out.critical_percent {
            let span = raw
                .space_warn
                .as_ref()
                .or(raw.space_critical.as_ref())
                .map(Spanned::span)
                .unwrap_or_default();
            return Err(self.err(
                span,
                "space_warn",
                format!(
                    "{}% is above space_critical ({}%): the warning must come first",
                    out.warn_percent, out.critical_percent
                ),
            ));
        }
        if let Some(v) = &raw.space_wait_ms {
            keel_only("space_wait_ms", v.span())?;
            let ms = *v.get_ref();
            if ms > MAX_SPACE_WAIT_MS {
                return Err(self.err(
                    v.span(),
                    "space_wait_ms",
                    format!(
                        "{ms} is above the limit of {MAX_SPACE_WAIT_MS} (a guest would take the \
                         disk for hung)"
                    ),
                ));
            }
            out.wait = Duration::from_millis(ms);
        }
        if let Some(v) = &raw.spare {
            keel_only("spare", v.span())?;
            let err = |m: String| self.err(v.span(), "spare", m);
            out.spare = match v.get_ref() {
                SizeValue::Bytes(b) => Spare::Bytes(*b),
                SizeValue::Text(t) => Spare::parse(t).map_err(&err)?,
            };
            if let Some(size) = size {
                out.spare.percent_of(size).map_err(&err)?;
            }
        }
        if let Some(v) = &raw.cleaner_policy {
            keel_only("cleaner_policy", v.span())?;
            out.cleaner_policy = crate::store::VictimPolicy::parse(v.get_ref())
                .map_err(|m| self.err(v.span(), "cleaner_policy", m))?;
        }
        if let Some(v) = &raw.cleaner_io {
            keel_only("cleaner_io", v.span())?;
            out.cleaner_io = crate::store::CleanerIo::parse(v.get_ref())
                .map_err(|m| self.err(v.span(), "cleaner_io", m))?;
        }
        if let Some(v) = &raw.max_size {
            out.max_size = Some(self.check_max_size(v, raw, engine, size, path, out.spare)?);
        }
        Ok(out)
    }

    fn check_max_size(
        &self,
        v: &Spanned<SizeValue>,
        raw: &RawDisk,
        engine: EngineKind,
        size: Option<u64>,
        path: Option<&Path>,
        spare: Spare,
    ) -> Result<u64, ConfigError> {
        let span = v.span();
        let err = |m: String| self.err(span.clone(), "max_size", m);
        if engine != EngineKind::Keel {
            return Err(err(format!(
                "only a keel container grows (this disk uses the {} engine)",
                engine.name()
            )));
        }
        if raw.mirror.is_some() {
            return Err(err("a mirrored container keeps its size".into()));
        }
        let bytes = v.get_ref().to_bytes().map_err(&err)?;
        if let Some(p) = path
            && let Ok(meta) = std::fs::metadata(p)
        {
            if !meta.is_file() {
                return Err(err(format!(
                    "{} is not a regular file: only a container file can grow",
                    p.display()
                )));
            }
            if bytes < meta.len() {
                return Err(err(format!(
                    "{bytes} bytes is below the container's {} bytes now",
                    meta.len()
                )));
            }
        }
        if let Some(size) = size
            && let Ok(geo) = create_options(size, spare).geometry()
            && bytes < geo.container_bytes()
        {
            return Err(err(format!(
                "{bytes} bytes is below the {} bytes a container for a {size}-byte disk starts \
                 with",
                geo.container_bytes()
            )));
        }
        Ok(bytes)
    }
}

/// The options a container for a `size`-byte disk is made with, with `spare` (the default
/// when it does not fit the size: the configuration check reports that).
pub fn create_options(size: u64, spare: Spare) -> CreateOptions {
    let mut o = CreateOptions::new(size);
    if let Ok(p) = spare.percent_of(size) {
        o.overprovision_percent = p;
    }
    o
}
