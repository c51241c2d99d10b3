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

/// The attached frontend's backend-request channel, if it gave one.
#[derive(Debug, Default)]
pub struct ConfigNotifier {
    channel: Mutex<Option<UnixStream>>,
}

impl ConfigNotifier {
    pub fn install(&self, channel: Option<UnixStream>) {
        if let Ok(mut c) = self.channel.lock() {
            *c = channel;
        }
    }

    /// Sends the config-change message. `Ok(false)`: no frontend channel to send it on (none
    /// attached, or it did not negotiate BACKEND_REQ); the guest sees the change at its next
    /// config read or reconnect.
    pub fn notify(&self) -> io::Result<bool> {
        let Ok(mut guard) = self.channel.lock() else {
            return Ok(false);
        };
        let Some(sock) = guard.as_mut() else {
            return Ok(false);
        };
        let mut msg = [0u8; 12];
        msg[..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        msg[4..8].copy_from_slice(&FLAG_VERSION.to_le_bytes());
        sock.set_write_timeout(Some(std::time::Duration::from_secs(5)))?;
        sock.write_all(&msg)?;
        Ok(true)
    }
}
