//! Mirror components on another host, reached over NBD (`nbd://host:port/export`,
//! `nbd+unix:///export?socket=/path`).
//!
//! A remote component's data is the export; its mirror metadata stays on this host, in a
//! sidecar beside the mirror's first local component, since it records what this keeld knows
//! of the component. A remote component that drops out (its connection fails) goes
//! `offline` rather than `failed`, and [`super::reconnect`] brings it back on its own.

use super::provider::{DeviceProvider, FileProvider, sidecar_path};
use crate::device::BlockDevice;
use crate::device::nbd::{NbdAddress, NbdDevice, NbdOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Whether a component path names a remote (NBD) component.
pub fn is_remote(path: &str) -> bool {
    NbdAddress::is_uri(path)
}

/// How long one request to a remote component may take before its connection counts as
/// dead: guest writes wait at most this long for a component that stalls without closing.
pub const REMOTE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Files as [`FileProvider`] opens them, and NBD exports for components given as URIs.
pub struct ComponentProvider {
    pub files: FileProvider,
    /// Where remote components' sidecars live.
    pub meta_dir: PathBuf,
    pub nbd: NbdOptions,
}

impl ComponentProvider {
    /// A provider for `components`: remote sidecars go beside the first local one.
    pub fn for_components(components: &[PathBuf], direct: bool) -> Self {
        let meta_dir = components
            .iter()
            .find(|p| !is_remote(&p.to_string_lossy()))
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        Self {
            files: FileProvider { direct },
            meta_dir,
            nbd: NbdOptions {
                request_timeout: REMOTE_REQUEST_TIMEOUT,
                ..NbdOptions::default()
            },
        }
    }

    /// Whether component `p` is new to this host: a file that does not exist, or a remote
    /// component this host has kept no metadata for.
    pub fn is_new(&self, p: &Path) -> bool {
        let s = p.to_string_lossy();
        if is_remote(&s) {
            !sidecar_path(&self.remote_meta_base(&s)).exists()
        } else {
            !p.exists()
        }
    }

    /// The local stand-in path whose sidecar holds remote component `uri`'s metadata.
    pub fn remote_meta_base(&self, uri: &str) -> PathBuf {
        let name: String = uri
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.meta_dir.join(format!("remote-{name}"))
    }
}

impl DeviceProvider for ComponentProvider {
    fn open_data(&self, path: &Path, create_len: Option<u64>) -> io::Result<Arc<dyn BlockDevice>> {
        let s = path.to_string_lossy();
        if !is_remote(&s) {
            return self.files.open_data(path, create_len);
        }
        let dev = NbdDevice::open(&s, self.nbd)?;
        if dev.read_only() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{s}: the export is read-only; a mirror component must take writes"),
            ));
        }
        Ok(Arc::new(dev))
    }

    fn open_meta(&self, path: &Path, len: u64) -> io::Result<Arc<dyn BlockDevice>> {
        let s = path.to_string_lossy();
        if !is_remote(&s) {
            return self.files.open_meta(path, len);
        }
        self.files.open_meta(&self.remote_meta_base(&s), len)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let s = path.to_string_lossy();
        if !is_remote(&s) {
            return self.files.remove(path);
        }
        // The export is not ours to delete; only what this host kept about it goes.
        match std::fs::remove_file(sidecar_path(&self.remote_meta_base(&s))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_sidecars_go_beside_the_first_local_component() {
        let p = ComponentProvider::for_components(
            &[
                PathBuf::from("nbd://h:10809/x"),
                PathBuf::from("/srv/a/d.img"),
                PathBuf::from("/srv/b/d.img"),
            ],
            true,
        );
        assert_eq!(p.meta_dir, Path::new("/srv/a"));
        assert_eq!(
            p.remote_meta_base("nbd+unix:///e?socket=/run/n.sock"),
            Path::new("/srv/a/remote-nbd_unix____e_socket__run_n_sock")
        );
        assert!(is_remote("nbd://h/x") && !is_remote("/srv/a/d.img"));
    }

    #[test]
    fn an_unreachable_export_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!(
            "nbd+unix:///?socket={}",
            dir.path().join("no.sock").display()
        );
        let p = ComponentProvider::for_components(&[dir.path().join("a.img")], false);
        let e = p.open_data(Path::new(&uri), Some(1 << 20)).err().unwrap();
        assert!(e.to_string().contains("no.sock"), "{e}");
    }
}
