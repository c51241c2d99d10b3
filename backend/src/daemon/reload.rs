//! SIGHUP: the disks of a changed config file join or leave a running keeld. What cannot
//! change live (a served disk's settings, the `[server]` section) is refused and keeps
//! being served as before.

use super::Daemon;
use crate::config::Config;

/// What a reload did and what it refused, one phrase each, for keeld's log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reload {
    pub applied: Vec<String>,
    pub refused: Vec<String>,
}

impl Daemon {
    /// Brings the served disks in line with `new`: removed disks stop (flushed), added disks
    /// start; anything else that differs is refused.
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
            match self.config.disks.iter().find(|d| d.name == disk.name) {
                Some(d) if d != disk => r.refused.push(format!(
                    "disk {} changed: a restart applies it (served as before)",
                    disk.name
                )),
                Some(_) => {}
                None => match self.start_disk(disk) {
                    Ok(_) => {
                        self.config.disks.push(disk.clone());
                        r.applied.push(format!(
                            "disk {} added on {}",
                            disk.name,
                            disk.socket.display()
                        ));
                    }
                    Err(e) => r.refused.push(format!("disk {} not added: {e}", disk.name)),
                },
            }
        }
        r
    }

    /// Stops a disk a reload removed; refused while a frontend is attached (stopping the disk
    /// would take it away from a running guest).
    fn remove(&mut self, name: &str) -> Result<(), String> {
        let served = self
            .disks
            .get(name)
            .map_err(|_| "it is not served".to_string())?;
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
