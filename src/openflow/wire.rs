//! Bounds-checked big-endian reading and writing. Every read that would run
//! past the end gives `Truncated`, which each caller turns into the
//! `BAD_LEN` error of its own context (message, match, action).

/// A read ran past the end of its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated;

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let end = self.pos.checked_add(n).ok_or(Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(Truncated)?;
        self.pos = end;
        Ok(s)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    pub fn skip(&mut self, n: usize) -> Result<(), Truncated> {
        self.bytes(n).map(|_| ())
    }
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    /// Big-endian unsigned of 1..=16 bytes.
    pub fn uint(&mut self, n: usize) -> Result<u128, Truncated> {
        Ok(be_uint(self.bytes(n)?))
    }
}

/// A big-endian unsigned integer of up to 16 bytes.
pub fn be_uint(b: &[u8]) -> u128 {
    b.iter().fold(0u128, |acc, x| (acc << 8) | u128::from(*x))
}

/// Appends big-endian values to a byte vector.
pub trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    /// The low `n` bytes of `v`, big-endian.
    fn put_uint(&mut self, v: u128, n: usize);
    fn put_zeros(&mut self, n: usize);
    /// Pads with zeros to a multiple of 8 bytes, counted from `start`.
    fn pad8_from(&mut self, start: usize);
    /// Writes `v` at `at` (a length placeholder written earlier).
    fn set_u16(&mut self, at: usize, v: u16);
    /// A fixed-size, zero-padded string field.
    fn put_str(&mut self, s: &str, n: usize);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_uint(&mut self, v: u128, n: usize) {
        let b = v.to_be_bytes();
        self.extend_from_slice(&b[16 - n..]);
    }
    fn put_zeros(&mut self, n: usize) {
        self.resize(self.len() + n, 0);
    }
    fn pad8_from(&mut self, start: usize) {
        let len = self.len() - start;
        self.put_zeros((8 - len % 8) % 8);
    }
    fn set_u16(&mut self, at: usize, v: u16) {
        self[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    fn put_str(&mut self, s: &str, n: usize) {
        // Keep a terminating NUL, as C peers expect, and cut on a character
        // boundary so that the peer gets valid UTF-8.
        let mut take = s.len().min(n.saturating_sub(1));
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.extend_from_slice(&s.as_bytes()[..take]);
        self.put_zeros(n - take);
    }
}

/// Reads a NUL-terminated string field of `b.len()` bytes as C peers (and
/// OVS) do: at most `b.len() - 1` bytes, the last being the terminator.
/// Bytes that are not UTF-8 read as `?` each, so what [`Put::put_str`]
/// writes back is the same length and reads back the same.
pub fn get_str(b: &[u8]) -> String {
    let b = &b[..b.len().saturating_sub(1)];
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    let mut s = String::with_capacity(end);
    for chunk in b[..end].utf8_chunks() {
        s.push_str(chunk.valid());
        s.extend(chunk.invalid().iter().map(|_| '?'));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_fields_keep_their_terminator_and_read_back_the_same() {
        // A field without a NUL reads as its first n-1 bytes, as OVS reads it.
        assert_eq!(get_str(b"0123456789abcdef"), "0123456789abcde");
        assert_eq!(get_str(b"eth0\0\0\0\0"), "eth0");
        assert_eq!(get_str(b""), "");
        // Not UTF-8: one '?' a byte, so the length survives a round trip.
        let s = get_str(b"a\xff\xfeb\xc3\0");
        assert_eq!(s, "a??b?");
        let mut out = Vec::new();
        out.put_str(&s, 8);
        assert_eq!(get_str(&out), s);
        // Cut on a character boundary: 7 bytes of room, "é" is two.
        let mut out = Vec::new();
        out.put_str("abcdeé", 7);
        assert_eq!(out, b"abcde\0\0");
        assert_eq!(get_str(&out), "abcde");
    }
}
