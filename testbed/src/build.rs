//! Builders of well-formed packets (correct lengths and checksums) for the
//! traffic generators, the soak, tests and property tests. They allocate;
//! they are not for the datapath (which is why they live here and not in
//! `fallback::packet`).

use fallback::key::{ethertype, ipproto};
use fallback::packet::checksum;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Addresses of an L4 checksum's pseudo-header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pseudo {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl Pseudo {
    fn sum(self, proto: u8, len: usize) -> u64 {
        let len = len as u32;
        match self {
            Pseudo::V4(s, d) => checksum::pseudo_v4(s.octets(), d.octets(), proto, len),
            Pseudo::V6(s, d) => checksum::pseudo_v6(s.octets(), d.octets(), proto, len),
        }
    }
}

pub const MAC_SRC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const MAC_DST: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// An Ethernet II frame (no padding, no FCS).
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `frame` with a tag (TPID, TCI) inserted after the MAC addresses: it
/// becomes the outer tag.
pub fn push_tag(frame: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
    let split = frame.len().min(12);
    let mut f = Vec::with_capacity(frame.len() + 4);
    f.extend_from_slice(&frame[..split]);
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&tci.to_be_bytes());
    f.extend_from_slice(&frame[split..]);
    f
}

/// An Ethernet/IPv4 ARP body.
pub fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&1u16.to_be_bytes());
    a.extend_from_slice(&ethertype::IPV4.to_be_bytes());
    a.extend_from_slice(&[6, 4]);
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

/// IPv4 header fields; lengths and checksum are computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Header {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub tos: u8,
    pub ttl: u8,
    pub id: u16,
    /// Flags (DF 0x4000, MF 0x2000) and the fragment offset in 8-byte units.
    pub flags_frag: u16,
    /// Options, padded to a multiple of 4 bytes with zero (end of list).
    pub options: Vec<u8>,
}

impl Ipv4Header {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Ipv4Header {
            src,
            dst,
            proto,
            tos: 0,
            ttl: 64,
            id: 1,
            flags_frag: 0,
            options: Vec::new(),
        }
    }

    pub fn pseudo(&self) -> Pseudo {
        Pseudo::V4(self.src, self.dst)
    }
}

/// An IPv4 datagram.
pub fn ipv4(h: &Ipv4Header, payload: &[u8]) -> Vec<u8> {
    let mut options = h.options.clone();
    options.resize(options.len().div_ceil(4) * 4, 0);
    let hlen = 20 + options.len();
    let total = (hlen + payload.len()) as u16;
    let mut p = Vec::with_capacity(hlen + payload.len());
    p.push(0x40 | (hlen / 4) as u8);
    p.push(h.tos);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&h.id.to_be_bytes());
    p.extend_from_slice(&h.flags_frag.to_be_bytes());
    p.push(h.ttl);
    p.push(h.proto);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&h.src.octets());
    p.extend_from_slice(&h.dst.octets());
    p.extend_from_slice(&options);
    let csum = checksum::finish(checksum::sum(&p, 0));
    p[10..12].copy_from_slice(&csum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// IPv6 header fields; the payload length is computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Header {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// The first next-header value (an extension header or the L4 protocol).
    pub next_header: u8,
    pub traffic_class: u8,
    pub hop_limit: u8,
    pub flow_label: u32,
}

impl Ipv6Header {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8) -> Self {
        Ipv6Header {
            src,
            dst,
            next_header,
            traffic_class: 0,
            hop_limit: 64,
            flow_label: 0,
        }
    }

    pub fn pseudo(&self) -> Pseudo {
        Pseudo::V6(self.src, self.dst)
    }
}

/// An IPv6 packet; `payload` holds any extension headers.
pub fn ipv6(h: &Ipv6Header, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    let first = (6u32 << 28) | (u32::from(h.traffic_class) << 20) | (h.flow_label & 0xf_ffff);
    p.extend_from_slice(&first.to_be_bytes());
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.push(h.next_header);
    p.push(h.hop_limit);
    p.extend_from_slice(&h.src.octets());
    p.extend_from_slice(&h.dst.octets());
    p.extend_from_slice(payload);
    p
}

/// A minimal extension header of kind `kind` (hop-by-hop, routing,
/// destination options: 8 bytes; AH: 16 bytes) followed by `next`.
pub fn ipv6_ext(kind: u8, next: u8) -> Vec<u8> {
    match kind {
        fallback::packet::ipv6_ext::AUTH => {
            // Next, payload length (in 4-byte units minus 2), reserved,
            // SPI, sequence number, 4-byte ICV.
            let mut e = vec![next, 2, 0, 0];
            e.extend_from_slice(&0x100u32.to_be_bytes());
            e.extend_from_slice(&1u32.to_be_bytes());
            e.extend_from_slice(&[0xaa; 4]);
            e
        }
        fallback::packet::ipv6_ext::ROUTING => vec![next, 0, 0, 0, 0, 0, 0, 0],
        // Options headers: one PadN option filling the 6 bytes.
        _ => vec![next, 0, 1, 4, 0, 0, 0, 0],
    }
}

/// An IPv6 fragment header (`offset` in 8-byte units).
pub fn ipv6_frag(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut e = vec![next, 0];
    e.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    e.extend_from_slice(&id.to_be_bytes());
    e
}

/// A TCP segment (`options` padded to 4 bytes with zero).
pub fn tcp(ph: Pseudo, src: u16, dst: u16, flags: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut options = options.to_vec();
    options.resize(options.len().div_ceil(4) * 4, 0);
    let hlen = 20 + options.len();
    let mut s = Vec::with_capacity(hlen + payload.len());
    s.extend_from_slice(&src.to_be_bytes());
    s.extend_from_slice(&dst.to_be_bytes());
    s.extend_from_slice(&1000u32.to_be_bytes());
    s.extend_from_slice(&2000u32.to_be_bytes());
    let off_flags = ((hlen as u16 / 4) << 12) | (flags & 0x0fff);
    s.extend_from_slice(&off_flags.to_be_bytes());
    s.extend_from_slice(&8192u16.to_be_bytes());
    s.extend_from_slice(&[0, 0, 0, 0]);
    s.extend_from_slice(&options);
    s.extend_from_slice(payload);
    let csum = checksum::finish(checksum::sum(&s, ph.sum(ipproto::TCP, s.len())));
    s[16..18].copy_from_slice(&csum.to_be_bytes());
    s
}

/// A UDP datagram (checksum computed; 0 is sent as 0xffff).
pub fn udp(ph: Pseudo, src: u16, dst: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut s = Vec::with_capacity(len);
    s.extend_from_slice(&src.to_be_bytes());
    s.extend_from_slice(&dst.to_be_bytes());
    s.extend_from_slice(&(len as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    let csum = match checksum::finish(checksum::sum(&s, ph.sum(ipproto::UDP, len))) {
        0 => 0xffff,
        c => c,
    };
    s[6..8].copy_from_slice(&csum.to_be_bytes());
    s
}

/// An SCTP packet: common header (CRC32c computed) and `chunks`.
pub fn sctp(src: u16, dst: u16, chunks: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(12 + chunks.len());
    s.extend_from_slice(&src.to_be_bytes());
    s.extend_from_slice(&dst.to_be_bytes());
    s.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    s.extend_from_slice(&[0, 0, 0, 0]);
    s.extend_from_slice(chunks);
    let crc = checksum::crc32c(&s);
    s[8..12].copy_from_slice(&crc.to_le_bytes());
    s
}

/// An ICMP message: type, code, checksum, then `rest` (the 4 bytes of
/// "rest of header" and any data).
pub fn icmp(ty: u8, code: u8, rest: &[u8]) -> Vec<u8> {
    let mut s = vec![ty, code, 0, 0];
    s.extend_from_slice(rest);
    let csum = checksum::finish(checksum::sum(&s, 0));
    s[2..4].copy_from_slice(&csum.to_be_bytes());
    s
}

/// An ICMPv6 message (checksum over the pseudo-header).
pub fn icmpv6(ph: Pseudo, ty: u8, code: u8, rest: &[u8]) -> Vec<u8> {
    let mut s = vec![ty, code, 0, 0];
    s.extend_from_slice(rest);
    let csum = checksum::finish(checksum::sum(&s, ph.sum(ipproto::ICMPV6, s.len())));
    s[2..4].copy_from_slice(&csum.to_be_bytes());
    s
}

/// Ethernet/IPv4/TCP with a SYN and no payload.
pub fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let h = Ipv4Header::new(src, dst, ipproto::TCP);
    let l4 = tcp(h.pseudo(), sport, dport, 0x002, &[], &[]);
    ethernet(MAC_DST, MAC_SRC, ethertype::IPV4, &ipv4(&h, &l4))
}

/// Ethernet/IPv4/UDP.
pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let h = Ipv4Header::new(src, dst, ipproto::UDP);
    let l4 = udp(h.pseudo(), sport, dport, payload);
    ethernet(MAC_DST, MAC_SRC, ethertype::IPV4, &ipv4(&h, &l4))
}

/// Ethernet/IPv6/TCP with a SYN and no payload.
pub fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    let h = Ipv6Header::new(src, dst, ipproto::TCP);
    let l4 = tcp(h.pseudo(), sport, dport, 0x002, &[], &[]);
    ethernet(MAC_DST, MAC_SRC, ethertype::IPV6, &ipv6(&h, &l4))
}

/// Ethernet/IPv6/UDP.
pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let h = Ipv6Header::new(src, dst, ipproto::UDP);
    let l4 = udp(h.pseudo(), sport, dport, payload);
    ethernet(MAC_DST, MAC_SRC, ethertype::IPV6, &ipv6(&h, &l4))
}
