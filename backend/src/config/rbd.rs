//! The `[[disk]]` keys of the rbd engine: which image, and how to reach its Ceph cluster.

use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use super::{Checker, ConfigError, EngineKind, RawDisk};

/// The config file librados reads unless `ceph_conf` names another.
pub const DEFAULT_CEPH_CONF: &str = "/etc/ceph/ceph.conf";
/// The client name used unless `ceph_id` names another (as the `rbd` tool does).
pub const DEFAULT_CEPH_ID: &str = "admin";

/// Where an rbd disk's image is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RbdConfig {
    pub pool: String,
    pub namespace: Option<String>,
    pub image: String,
    pub ceph_conf: PathBuf,
    /// Client name without the `client.` prefix.
    pub ceph_id: String,
    pub keyring: Option<PathBuf>,
    /// `osd_timeout_s`: a request an OSD has not answered in this long fails (IOERR); 0 waits
    /// until the OSD is back.
    pub osd_timeout_s: u32,
}

/// The longest `osd_timeout_s` accepted: an hour.
pub const MAX_OSD_TIMEOUT_S: u32 = 3600;

impl RbdConfig {
    /// `pool/name` or `pool/namespace/name`, as the config wrote it.
    pub fn spec(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}", self.pool, self.image),
            None => format!("{}/{}", self.pool, self.image),
        }
    }
}

/// Splits `pool/name` or `pool/namespace/name`; every part non-empty, without `@` (snapshots
/// are not served as disks) or NUL.
fn parse_image(spec: &str) -> Result<(String, Option<String>, String), String> {
    let parts: Vec<&str> = spec.split('/').collect();
    let bad =
        |why: &str| format!("{spec:?} {why}: expected \"pool/name\" or \"pool/namespace/name\"");
    if parts
        .iter()
        .any(|p| p.is_empty() || p.contains('@') || p.contains('\0'))
    {
        return Err(bad("has an empty part, an `@` or a NUL byte"));
    }
    match parts.as_slice() {
        [pool, name] => Ok((pool.to_string(), None, name.to_string())),
        [pool, ns, name] => Ok((pool.to_string(), Some(ns.to_string()), name.to_string())),
        _ => Err(bad("has the wrong number of parts")),
    }
}

impl Checker<'_> {
    /// `image`, `ceph_conf`, `ceph_id`, `keyring`: required and allowed for rbd disks only.
    pub(super) fn check_rbd(
        &self,
        raw: &RawDisk,
        engine: EngineKind,
        disk_span: Range<usize>,
    ) -> Result<Option<RbdConfig>, ConfigError> {
        let keys: [(&str, Option<Range<usize>>); 5] = [
            ("image", raw.image.as_ref().map(Spanned::span)),
            ("ceph_conf", raw.ceph_conf.as_ref().map(Spanned::span)),
            ("ceph_id", raw.ceph_id.as_ref().map(Spanned::span)),
            ("keyring", raw.keyring.as_ref().map(Spanned::span)),
            (
                "osd_timeout_s",
                raw.osd_timeout_s.as_ref().map(Spanned::span),
            ),
        ];
        if engine != EngineKind::Rbd {
            if let Some((key, Some(span))) = keys.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self.err(
                    span,
                    key,
                    format!(
                        "only rbd disks (engine = \"rbd\") have this key; this disk uses the {} \
                         engine",
                        engine.name()
                    ),
                ));
            }
            return Ok(None);
        }
        for (key, span) in [
            ("path", raw.path.as_ref().map(Spanned::span)),
            ("mirror", raw.mirror.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = span {
                return Err(self.err(
                    span,
                    key,
                    "an rbd disk lives in its image: give `image`, not a file".into(),
                ));
            }
        }
        let Some(image) = &raw.image else {
            return Err(self.err(
                disk_span,
                "image",
                "missing: the rbd engine needs \"pool/name\" or \"pool/namespace/name\"".into(),
            ));
        };
        let (pool, namespace, name) =
            parse_image(image.get_ref()).map_err(|m| self.err(image.span(), "image", m))?;
        let ceph_conf = match &raw.ceph_conf {
            Some(p) => self.resolve(p.get_ref()),
            None => PathBuf::from(DEFAULT_CEPH_CONF),
        };
        let ceph_id = match &raw.ceph_id {
            Some(id) => {
                let id = id.get_ref();
                let bare = id.strip_prefix("client.").unwrap_or(id);
                if bare.is_empty() || bare.contains('\0') {
                    return Err(self.err(
                        raw.ceph_id.as_ref().map_or(disk_span, Spanned::span),
                        "ceph_id",
                        format!("{id:?} is not a client name"),
                    ));
                }
                bare.to_owned()
            }
            None => DEFAULT_CEPH_ID.to_owned(),
        };
        let osd_timeout_s = self.at_most(&raw.osd_timeout_s, "osd_timeout_s", MAX_OSD_TIMEOUT_S)?;
        Ok(Some(RbdConfig {
            pool,
            namespace,
            image: name,
            ceph_conf,
            ceph_id,
            keyring: raw.keyring.as_ref().map(|k| self.resolve(k.get_ref())),
            osd_timeout_s,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_image;
    use crate::config::{Config, ConfigError};
    use std::path::Path;

    const HEAD: &str = "[[disk]]\nname = \"r\"\nsocket = \"r.sock\"\n";

    fn parse(body: &str) -> Result<Config, ConfigError> {
        let dir = Path::new("/tmp");
        Config::parse(&format!("{HEAD}{body}"), &dir.join("keel.toml"), dir)
    }

    /// The key and line a refusal names.
    fn refused(body: &str) -> (String, usize) {
        match parse(body) {
            Err(ConfigError::Invalid { key, line, .. }) => (key, line),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn rbd_disk_gets_defaults() {
        let c = parse("engine = \"rbd\"\nimage = \"rbd/vm1\"\n").unwrap();
        let rbd = c.disks[0].rbd.clone().unwrap();
        assert_eq!((rbd.pool.as_str(), rbd.image.as_str()), ("rbd", "vm1"));
        assert_eq!(rbd.namespace, None);
        assert_eq!(rbd.ceph_conf, Path::new("/etc/ceph/ceph.conf"));
        assert_eq!((rbd.ceph_id.as_str(), rbd.keyring), ("admin", None));
        assert_eq!(rbd.osd_timeout_s, 0);
        assert_eq!(c.disks[0].path, None);
    }

    #[test]
    fn rbd_keys_are_taken_and_checked() {
        let c = parse(
            "engine = \"rbd\"\nimage = \"p/ns/i\"\nceph_conf = \"c.conf\"\n\
             ceph_id = \"client.keel\"\nkeyring = \"k\"\nsize = \"1G\"\n",
        )
        .unwrap();
        let rbd = c.disks[0].rbd.clone().unwrap();
        assert_eq!(rbd.spec(), "p/ns/i");
        assert_eq!(rbd.ceph_conf, Path::new("/tmp/c.conf"));
        assert_eq!(rbd.ceph_id, "keel");
        assert_eq!(rbd.keyring.as_deref(), Some(Path::new("/tmp/k")));
        assert_eq!(c.disks[0].size, Some(1 << 30));
    }

    #[test]
    fn rbd_refusals_name_the_key() {
        assert_eq!(refused("engine = \"rbd\"\n"), ("image".into(), 1));
        assert_eq!(
            refused("engine = \"rbd\"\nimage = \"vm1\"\n"),
            ("image".into(), 5)
        );
        assert_eq!(
            refused("engine = \"rbd\"\nimage = \"rbd/a\"\npath = \"a.img\"\n"),
            ("path".into(), 6)
        );
        assert_eq!(
            refused("engine = \"raw\"\npath = \"a.img\"\nimage = \"rbd/a\"\n"),
            ("image".into(), 6)
        );
        assert_eq!(
            refused("engine = \"rbd\"\nimage = \"rbd/a\"\nceph_id = \"client.\"\n"),
            ("ceph_id".into(), 6)
        );
        assert_eq!(
            refused("engine = \"rbd\"\nimage = \"rbd/a\"\nosd_timeout_s = 3601\n"),
            ("osd_timeout_s".into(), 6)
        );
    }

    #[test]
    fn image_specs() {
        assert_eq!(
            parse_image("rbd/vm1").unwrap(),
            ("rbd".into(), None, "vm1".into())
        );
        assert_eq!(
            parse_image("rbd/tenant/vm1").unwrap(),
            ("rbd".into(), Some("tenant".into()), "vm1".into())
        );
        for bad in [
            "vm1",
            "rbd/",
            "/vm1",
            "rbd/a/b/c",
            "rbd/vm1@snap",
            "rbd//vm1",
        ] {
            assert!(parse_image(bad).is_err(), "{bad}");
        }
    }
}
