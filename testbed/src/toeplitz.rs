//! The Toeplitz RSS hash (Microsoft RSS specification), as NICs compute it.
//!
//! For each input bit, most significant first, that is set, the hash takes
//! the XOR of the key's 32 bits starting at that bit position. The input is
//! the concatenation of source address, destination address and, for the
//! port-hash types, source port and destination port, all in network order.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The 40-byte key most NICs and DPDK applications default to (the key of
/// the Microsoft RSS verification suite).
pub const DEFAULT_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// The longest input: two IPv6 addresses and two ports.
pub const MAX_INPUT: usize = 36;

/// A Toeplitz hasher over one key. Input bytes beyond `key.len() - 4` are
/// ignored (the key has no bits left to cover them), as in hardware.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toeplitz {
    key: Vec<u8>,
}

impl Default for Toeplitz {
    fn default() -> Self {
        Toeplitz::new(&DEFAULT_KEY)
    }
}

impl Toeplitz {
    pub fn new(key: &[u8]) -> Self {
        Toeplitz { key: key.to_vec() }
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The hash of `input`.
    pub fn hash(&self, input: &[u8]) -> u32 {
        // `window` holds the key bits at the current input bit position in
        // its top 32 bits; the bytes below are the next key bytes to shift in.
        let mut window: u64 = 0;
        for i in 0..8 {
            window = (window << 8) | u64::from(self.key.get(i).copied().unwrap_or(0));
        }
        let mut result = 0u32;
        for (n, byte) in input.iter().enumerate() {
            if n + 4 >= self.key.len() {
                break;
            }
            for bit in (0..8).rev() {
                if byte & (1 << bit) != 0 {
                    result ^= (window >> 32) as u32;
                }
                window <<= 1;
            }
            // After 8 shifts the low byte is free: bring in the next key byte.
            window |= u64::from(self.key.get(n + 8).copied().unwrap_or(0));
        }
        result
    }

    /// The IPv4 2-tuple hash (RSS type `ipv4`).
    pub fn ipv4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let mut input = [0u8; 8];
        input[..4].copy_from_slice(&src.octets());
        input[4..].copy_from_slice(&dst.octets());
        self.hash(&input)
    }

    /// The IPv4 4-tuple hash (RSS types `ipv4-tcp`, `ipv4-udp`, `ipv4-sctp`).
    pub fn ipv4_ports(&self, src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> u32 {
        let mut input = [0u8; 12];
        input[..4].copy_from_slice(&src.octets());
        input[4..8].copy_from_slice(&dst.octets());
        input[8..10].copy_from_slice(&sport.to_be_bytes());
        input[10..].copy_from_slice(&dport.to_be_bytes());
        self.hash(&input)
    }

    /// The IPv6 2-tuple hash (RSS type `ipv6`).
    pub fn ipv6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> u32 {
        let mut input = [0u8; 32];
        input[..16].copy_from_slice(&src.octets());
        input[16..].copy_from_slice(&dst.octets());
        self.hash(&input)
    }

    /// The IPv6 4-tuple hash (RSS types `ipv6-tcp`, `ipv6-udp`, `ipv6-sctp`).
    pub fn ipv6_ports(&self, src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> u32 {
        let mut input = [0u8; MAX_INPUT];
        input[..16].copy_from_slice(&src.octets());
        input[16..32].copy_from_slice(&dst.octets());
        input[32..34].copy_from_slice(&sport.to_be_bytes());
        input[34..].copy_from_slice(&dport.to_be_bytes());
        self.hash(&input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Microsoft's "Verifying the RSS Hash Calculation", IPv4 table:
    /// (source, source port, destination, destination port, IPv4 only,
    /// IPv4 with TCP).
    const V4: [(&str, u16, &str, u16, u32, u32); 5] = [
        (
            "66.9.149.187",
            2794,
            "161.142.100.80",
            1766,
            0x323e8fc2,
            0x51ccc178,
        ),
        (
            "199.92.111.2",
            14230,
            "65.69.140.83",
            4739,
            0xd718262a,
            0xc626b0ea,
        ),
        (
            "24.19.198.95",
            12898,
            "12.22.207.184",
            38024,
            0xd2d0a5de,
            0x5c2b394a,
        ),
        (
            "38.27.205.30",
            48228,
            "209.142.163.6",
            2217,
            0x82989176,
            0xafc7327f,
        ),
        (
            "153.39.163.191",
            44251,
            "202.188.127.2",
            1303,
            0x5d1809c5,
            0x10e828a2,
        ),
    ];

    /// The same document's IPv6 table.
    const V6: [(&str, u16, &str, u16, u32, u32); 3] = [
        (
            "3ffe:2501:200:1fff::7",
            2794,
            "3ffe:2501:200:3::1",
            1766,
            0x2cc18cd5,
            0x40207d3d,
        ),
        (
            "3ffe:501:8::260:97ff:fe40:efab",
            14230,
            "ff02::1",
            4739,
            0x0f0c461c,
            0xdde51bbf,
        ),
        (
            "3ffe:1900:4545:3:200:f8ff:fe21:67cf",
            44251,
            "fe80::200:f8ff:fe21:67cf",
            38024,
            0x4b61e985,
            0x02d1feef,
        ),
    ];

    #[test]
    fn microsoft_ipv4_vectors() {
        let t = Toeplitz::default();
        for (src, sport, dst, dport, ip_only, with_ports) in V4 {
            let (s, d) = (src.parse().unwrap(), dst.parse().unwrap());
            assert_eq!(t.ipv4(s, d), ip_only, "{src} -> {dst}");
            assert_eq!(
                t.ipv4_ports(s, d, sport, dport),
                with_ports,
                "{src}:{sport} -> {dst}:{dport}"
            );
        }
    }

    #[test]
    fn microsoft_ipv6_vectors() {
        let t = Toeplitz::default();
        for (src, sport, dst, dport, ip_only, with_ports) in V6 {
            let (s, d) = (src.parse().unwrap(), dst.parse().unwrap());
            assert_eq!(t.ipv6(s, d), ip_only, "{src} -> {dst}");
            assert_eq!(
                t.ipv6_ports(s, d, sport, dport),
                with_ports,
                "{src}.{sport} -> {dst}.{dport}"
            );
        }
    }

    #[test]
    fn short_key_ignores_uncovered_input() {
        let t = Toeplitz::new(&DEFAULT_KEY[..8]);
        // 4 input bytes are covered by an 8-byte key; the rest is ignored.
        assert_eq!(t.hash(&[1, 2, 3, 4]), t.hash(&[1, 2, 3, 4, 5, 6]));
        assert_eq!(t.hash(&[]), 0);
    }
}
