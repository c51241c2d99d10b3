//! keeld's NBD server: the served disks exported to standard tools (qemu-img, qemu-io, nbdcopy,
//! backup software) over the Network Block Device protocol.
//!
//! An export goes through the same engine as the disk's vhost-user frontend, with a queue of
//! its own per connection, so both see the same data under the same ordering rules.
//!
//! - [`wire`]: the protocol's messages, parsed and encoded (no I/O).
//! - [`handshake`]: option negotiation up to `NBD_OPT_GO`.
//! - [`transmission`]: requests checked, handed to the engine, answered.
//! - [`server`]: listeners, connection threads and their limits.

mod arena;
pub mod exports;
pub mod handshake;
pub mod server;
pub mod socket;
pub mod transmission;
pub mod wire;

pub use exports::{Export, Exports};
pub use server::{NbdListen, NbdServer};

use std::io;
use std::sync::Arc;

use crate::config::ServerConfig;

/// Starts the NBD server the `[server]` section asks for (none if it names no listener).
pub fn start(server: &ServerConfig, exports: Arc<Exports>) -> io::Result<Option<NbdServer>> {
    let listen = NbdListen {
        socket: server.nbd_socket.clone(),
        tcp: server.nbd_listen,
    };
    if listen.socket.is_none() && listen.tcp.is_none() {
        return Ok(None);
    }
    NbdServer::start(&listen, exports).map(Some)
}
