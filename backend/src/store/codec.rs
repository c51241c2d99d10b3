//! Little-endian field encoding for on-disk structures, bounds-checked on both sides.
//!
//! Decoding reads bytes that came from the device, so every read returns `None` past the
//! end instead of panicking. Encoding writes into buffers the store sized itself; a write
//! past the end is a bug and is reported as `false` from [`Put::ok`].

/// Crc32c of `data` seeded with the block address it is stored at, so a block written to the
/// wrong place (a misdirected write) fails its check just as a flipped bit does.
pub fn block_crc(pba: u64, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&pba.to_le_bytes()), data)
}

/// Sequential little-endian writer over a byte slice.
pub struct Put<'a> {
    buf: &'a mut [u8],
    pos: usize,
    overflow: bool,
}

impl<'a> Put<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            overflow: false,
        }
    }

    pub fn at(buf: &'a mut [u8], pos: usize) -> Self {
        Self {
            buf,
            pos,
            overflow: false,
        }
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        match self.buf.get_mut(self.pos..self.pos + b.len()) {
            Some(dst) => dst.copy_from_slice(b),
            None => self.overflow = true,
        }
        self.pos += b.len();
        self
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes(&[v])
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> &'a mut [u8] {
        self.buf
    }

    /// Whether every write fit.
    pub fn ok(&self) -> bool {
        !self.overflow
    }
}

/// Sequential little-endian reader over untrusted bytes.
pub struct Get<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Get<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn at(buf: &'a [u8], pos: usize) -> Self {
        Self { buf, pos }
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        self.bytes(2)?.try_into().ok().map(u16::from_le_bytes)
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    pub fn u64(&mut self) -> Option<u64> {
        self.bytes(8)?.try_into().ok().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut b = [0u8; 15];
        let mut p = Put::new(&mut b);
        p.u8(1).u16(2).u32(3).u64(4);
        assert!(p.ok());
        p.u8(9);
        assert!(!p.ok());
        let mut g = Get::new(&b);
        assert_eq!(g.u8(), Some(1));
        assert_eq!(g.u16(), Some(2));
        assert_eq!(g.u32(), Some(3));
        assert_eq!(g.u64(), Some(4));
        assert_eq!(g.u8(), None);
    }

    #[test]
    fn crc_depends_on_address() {
        let d = [7u8; 64];
        assert_ne!(block_crc(1, &d), block_crc(2, &d));
        assert_eq!(block_crc(1, &d), block_crc(1, &d));
    }
}
