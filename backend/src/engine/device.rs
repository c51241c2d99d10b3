//! An engine over any [`BlockDevice`], run synchronously: how a raw disk is served from a
//! mirror, which has no single file descriptor to hand to io_uring.

use super::sync_queue::{RunRequest, SyncQueue};
use super::{
    AdminError, Capabilities, Engine, EngineAdmin, EngineError, IoOp, IoRequest, MirrorCommand,
    QueueEngine, mirrored,
};
use crate::device::BlockDevice;
use crate::device::mirror::MirrorDevice;
use crate::store::buf::AlignedBuf;
use std::io;
use std::sync::Arc;

/// A raw disk whose bytes live on a mirror.
pub struct MirroredRawEngine {
    dev: Arc<MirrorDevice>,
    read_only: bool,
}

impl MirroredRawEngine {
    pub fn new(dev: Arc<MirrorDevice>, read_only: bool) -> Self {
        Self { dev, read_only }
    }
}

impl Engine for MirroredRawEngine {
    fn capacity(&self) -> u64 {
        self.dev.len()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all_unless(self.read_only)
    }

    fn describe(&self) -> String {
        format!(
            "raw engine on a mirror of {} components, {} bytes, synchronous I/O",
            self.dev.status().components.len(),
            self.dev.len()
        )
    }

    fn queue(&self, _index: usize) -> Result<Box<dyn QueueEngine>, EngineError> {
        Ok(Box::new(SyncQueue::new(DeviceRunner {
            dev: Arc::clone(&self.dev) as Arc<dyn BlockDevice>,
            read_only: self.read_only,
            scratch: AlignedBuf::zeroed(0),
        })))
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.dev.flush().map_err(|source| EngineError::Io {
            op: "flush",
            source,
        })
    }

    fn admin(&self) -> Option<&dyn EngineAdmin> {
        Some(self)
    }
}

impl Drop for MirroredRawEngine {
    fn drop(&mut self) {
        if !self.read_only {
            mirrored::shut_down(&self.dev);
        }
    }
}

impl EngineAdmin for MirroredRawEngine {
    fn mirror_status(&self) -> Result<serde_json::Value, AdminError> {
        mirrored::status(&self.dev)
    }

    fn mirror_command(&self, component: usize, cmd: MirrorCommand) -> Result<(), AdminError> {
        mirrored::command(&self.dev, component, cmd)
    }

    fn set_resync_rate(&self, bytes_per_sec: u64) -> Result<(), AdminError> {
        self.dev.set_resync_rate(bytes_per_sec);
        Ok(())
    }
}

/// How one queue runs a request: to completion, through a bounce buffer.
struct DeviceRunner {
    dev: Arc<dyn BlockDevice>,
    read_only: bool,
    /// Block-aligned, so the mirror's O_DIRECT components take the request as it is.
    scratch: AlignedBuf,
}

/// The first `len` bytes of the bounce buffer `scratch`, grown when a request needs more.
fn bounce(scratch: &mut AlignedBuf, len: usize) -> &mut [u8] {
    if scratch.len() < len {
        *scratch = AlignedBuf::scratch_len(len);
    }
    &mut scratch[..len]
}

impl RunRequest for DeviceRunner {
    fn run(&mut self, req: &mut IoRequest) -> Result<(), EngineError> {
        let io = |op: &'static str| move |source: io::Error| EngineError::Io { op, source };
        if self.read_only && !matches!(req.op, IoOp::Read { .. } | IoOp::Flush) {
            return Err(EngineError::ReadOnly { op: req.op.name() });
        }
        match &req.op {
            IoOp::Read { offset } => {
                let buf = bounce(&mut self.scratch, req.buffers.len());
                self.dev.read_at(buf, *offset).map_err(io("read"))?;
                req.buffers.write_from(buf);
            }
            IoOp::Write { offset, durable } => {
                let buf = bounce(&mut self.scratch, req.buffers.len());
                req.buffers.read_into(buf);
                self.dev.write_at(buf, *offset).map_err(io("write"))?;
                if *durable {
                    self.dev.flush().map_err(io("write"))?;
                }
            }
            IoOp::Flush => self.dev.flush().map_err(io("flush"))?,
            IoOp::Discard { ranges } => {
                for r in ranges {
                    self.dev.discard(r.offset, r.len).map_err(io("discard"))?;
                }
            }
            // A device's discard reads back as zeroes, so it serves both kinds of zeroing.
            IoOp::WriteZeroes { ranges } => {
                for z in ranges {
                    self.dev
                        .discard(z.range.offset, z.range.len)
                        .map_err(io("write-zeroes"))?;
                }
            }
        }
        Ok(())
    }
}
