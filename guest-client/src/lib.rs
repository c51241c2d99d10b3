//! The VM's side of a vhost-user-blk channel, in userspace.
//!
//! `keel-client` does what a guest kernel's virtio-blk driver does, from an ordinary process:
//! it allocates its memory as a memfd, hands it to a vhost-user-blk server (keeld or
//! qemu-storage-daemon) over the unix socket, lays split virtqueues out in it and submits
//! virtio-blk requests as descriptor chains. Completions come back on the used ring, signalled
//! through an eventfd or found by polling.
//!
//! ```no_run
//! use keel_client::{Disk, DiskOptions};
//! # fn main() -> keel_client::Result<()> {
//! let mut disk = Disk::connect("/run/keel/vm1.sock", &DiskOptions::default())?;
//! let mut queue = disk.take_queue(0).expect("queue 0");
//! queue.write_slice(0, &[0xab; 4096])?;
//! queue.flush()?;
//! assert_eq!(queue.read_vec(0, 4096)?, vec![0xab; 4096]);
//! # Ok(()) }
//! ```

pub mod bench;
pub mod buffer;
pub mod disk;
pub mod error;
pub mod memory;
pub mod negotiate;
pub mod queue;
pub mod request;
pub mod ring;
pub mod verify;

pub use buffer::Buffer;
pub use disk::{Disk, DiskInfo, DiskOptions};
pub use error::{Error, Result};
pub use queue::{Completions, DeviceLimits, Push, Queue};
pub use request::{ByteRange, Completion, Request};
