//! The fuzz inputs' byte format: little-endian fields read by a reader that never fails.
//!
//! libFuzzer mutates raw bytes; a decoder that turns *every* byte string into a valid scenario
//! (missing bytes read as zero) lets each mutation reach the code under test instead of being
//! thrown away by a parse error. The [`Writer`] is its inverse, used to build seed inputs.

/// Reads fields from a fuzz input; past the end every field is zero.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let src = self.bytes(N);
        out[..src.len()].copy_from_slice(src);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let n = self.data.len();
        self.bytes(n)
    }
}

/// Builds an input field by field, the inverse of [`Reader`].
#[derive(Default)]
pub struct Writer {
    pub out: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_written_then_zeroes() {
        let mut w = Writer::default();
        w.u8(7)
            .u16(0x1234)
            .u32(0xdead_beef)
            .u64(u64::MAX)
            .bytes(b"ab");
        let mut r = Reader::new(&w.out);
        assert_eq!(r.u8(), 7);
        assert_eq!(r.u16(), 0x1234);
        assert_eq!(r.u32(), 0xdead_beef);
        assert_eq!(r.u64(), u64::MAX);
        assert_eq!(r.bytes(5), b"ab");
        assert!(r.is_empty());
        assert_eq!(r.u64(), 0);
    }

    #[test]
    fn short_field_is_zero_extended() {
        let mut r = Reader::new(&[0x01, 0x02]);
        assert_eq!(r.u32(), 0x0201);
    }
}
