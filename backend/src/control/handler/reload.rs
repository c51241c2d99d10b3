//! The control API's side of a config reload: disks join and leave its list.

use super::{DaemonControl, DiskEntry};
use std::sync::Arc;

impl DaemonControl {
    /// Serves a disk a reload added. `start` opens it while its name is held, so a clone
    /// cannot take the name meanwhile; it returns the entry and what keeps the disk served.
    pub fn add_disk<S>(
        &self,
        name: &str,
        start: impl FnOnce() -> Result<(DiskEntry, S), String>,
    ) -> Result<S, String> {
        let _held = self.reserve(name).map_err(|e| e.to_string())?;
        let (entry, server) = start()?;
        self.disks
            .write()
            .map_err(|_| "the disk list is poisoned".to_string())?
            .push(Arc::new(entry));
        Ok(server)
    }

    /// Stops answering for a disk a reload removed; refused while a frontend is attached
    /// (stopping the disk would take it away from a running guest).
    pub fn remove_disk(&self, name: &str) -> Result<(), String> {
        let mut disks = self
            .disks
            .write()
            .map_err(|_| "the disk list is poisoned".to_string())?;
        let i = disks
            .iter()
            .position(|d| d.config.name == name)
            .ok_or_else(|| "it is not served".to_string())?;
        if disks[i].attached() {
            return Err(
                "a frontend is attached: still served; detach it and send SIGHUP again".into(),
            );
        }
        disks.remove(i);
        Ok(())
    }
}
