//! Telling the attached frontend that the config space changed (the disk grew).
//!
//! A frontend that negotiated BACKEND_REQ gives keeld a socket for backend-initiated messages
//! (SET_BACKEND_REQ_FD). The relay keeps a copy here; when the capacity changes keeld sends
//! VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on it, and the frontend reads the config space again and
//! tells the guest (QEMU: `virtio_notify_config`; Linux then revalidates the disk's size), as
//! qemu-storage-daemon and SPDK do.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

/// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG.
const CONFIG_CHANGE_MSG: u32 = 2;
const FLAG_VERSION: u32 = 0x1;

/// The attached frontends' backend-request channels (two during a live migration), by
/// frontend id.
#[derive(Debug, Default)]
pub struct ConfigNotifier {
    channels: Mutex<Vec<(u64, UnixStream)>>,
}

impl ConfigNotifier {
    /// Sets (or with `None` removes) frontend `frontend`'s channel.
    pub fn install(&self, frontend: u64, channel: Option<UnixStream>) {
        if let Ok(mut c) = self.channels.lock() {
            c.retain(|(id, _)| *id != frontend);
            if let Some(channel) = channel {
                c.push((frontend, channel));
            }
        }
    }

    /// Sends the config-change message to every attached frontend. `Ok(false)`: no frontend
    /// channel to send it on (none attached, or it did not negotiate BACKEND_REQ); the guest
    /// sees the change at its next config read or reconnect.
    pub fn notify(&self) -> io::Result<bool> {
        let Ok(mut guard) = self.channels.lock() else {
            return Ok(false);
        };
        if guard.is_empty() {
            return Ok(false);
        }
        let mut msg = [0u8; 12];
        msg[..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        msg[4..8].copy_from_slice(&FLAG_VERSION.to_le_bytes());
        for (_, sock) in guard.iter_mut() {
            sock.set_write_timeout(Some(std::time::Duration::from_secs(5)))?;
            sock.write_all(&msg)?;
        }
        Ok(true)
    }
}
