//! SIGHUP: the disks of a changed config file join or leave a running keeld. A disk's limits
//! change live; what else cannot change live (a served disk's other settings, the `[server]`
//! section) is refused and keeps being served as before.
//!
//! The disks compared are the ones served: a disk added through the API that the file now
//! holds, the same, is unchanged (and from then on the file's); one the file does not hold is
//! left alone. A file's disk removed through the API starts again.

use super::Daemon;
use crate::config::{Config, DiskConfig};

/// What a reload did and what it refused, one phrase each, for keeld's log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reload {
    pub applied: Vec<String>,
    pub refused: Vec<String>,
}

impl Daemon {
    /// Brings the served disks in line with `new`: removed disks stop (flushed), added disks
    /// start, changed limits apply; anything else that differs is refused.
    pub fn reload(&mut self, new: &Config) -> Reload {
        let mut r = Reload::default();
        if new.server != self.config.server {
            r.refused
                .push("[server] changed: a restart applies it (served as before)".into());
        }
        let gone: Vec<String> = self
            .config
            .disks
            .iter()
            .filter(|d| !new.disks.iter().any(|n| n.name == d.name))
            .map(|d| d.name.clone())
            .collect();
        for name in gone {
            match self.remove(&name) {
                Ok(()) => r.applied.push(format!("disk {name} removed")),
                Err(m) => r.refused.push(format!("disk {name} not removed: {m}")),
            }
        }
        for disk in &new.disks {
            self.reload_disk(disk, &mut r);
        }
        r
    }

    /// Compares one disk of the new file with the one served under its name.
    fn reload_disk(&mut self, disk: &DiskConfig, r: &mut Reload) {
        let name = &disk.name;
        let now = match self.disks.get(name) {
            Ok(served) => Some(served.config.clone()),
            Err(_) => self
                .disks
                .failed()
                .iter()
                .find(|f| f.config.name == *name)
                .map(|f| f.config.clone()),
        };
        let Some(now) = now else {
            match self.start_disk(disk) {
                Ok(_) => {
                    self.adopt(disk);
                    r.applied
                        .push(format!("disk {name} added on {}", disk.socket.display()));
                }
                Err(e) => r.refused.push(format!("disk {name} not added: {e}")),
            }
            return;
        };
        let same_but_limits = DiskConfig {
            limits: disk.limits.clone(),
            ..now.clone()
        };
        if same_but_limits != *disk {
            r.refused.push(format!(
                "disk {name} changed: a restart applies it (served as before)"
            ));
            return;
        }
        if now.limits != disk.limits {
            match self.set_file_limits(disk) {
                Ok(()) => r.applied.push(format!("disk {name}: limits changed")),
                Err(m) => r
                    .refused
                    .push(format!("disk {name}: limits not changed: {m}")),
            }
        }
        self.adopt(disk);
    }

    /// Records `disk` as the file's (replacing an older entry of its name).
    fn adopt(&mut self, disk: &DiskConfig) {
        self.config.disks.retain(|d| d.name != disk.name);
        self.config.disks.push(disk.clone());
    }

    /// Puts the file's limits of `disk` in force.
    fn set_file_limits(&self, disk: &DiskConfig) -> Result<(), String> {
        let served = self
            .disks
            .get(&disk.name)
            .map_err(|_| "it is not served".to_string())?;
        let now = served.qos().limits();
        if now.resync_bps_limit != disk.limits.resync_bps_limit
            && let Some(admin) = served.engine().admin()
        {
            admin
                .set_resync_rate(disk.limits.resync_bps_limit)
                .map_err(|e| e.to_string())?;
        }
        served.qos().set(&disk.limits);
        Ok(())
    }

    /// Stops a disk a reload removed; refused while a frontend is attached (stopping the disk
    /// would take it away from a running guest).
    fn remove(&mut self, name: &str) -> Result<(), String> {
        let served = match self.disks.get(name) {
            Ok(served) => served,
            Err(super::Missing::Unknown) => {
                // Already stopped through the API: nothing to stop.
                self.config.disks.retain(|d| d.name != name);
                return Ok(());
            }
            Err(_) => return Err("it is not served".into()),
        };
        if served.attached() {
            return Err(
                "a frontend is attached: still served; detach it and send SIGHUP again".into(),
            );
        }
        let stopped = self.stop_disk(name);
        self.config.disks.retain(|d| d.name != name);
        stopped.map_err(|e| format!("stopped, but its flush failed: {e}"))
    }
}
