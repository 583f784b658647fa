//! Zero-copy header parse: packet bytes → [`FlowKey`], with OVS
//! `flow_extract` semantics.
//!
//! A header's fields enter the key only when the whole header (options
//! included) is present and valid; parsing stops at the first header that is
//! not, the rest of the key stays zero and [`ParseInfo::error`] says why. An
//! IP datagram shorter than its length field still has its headers parsed as
//! far as the bytes go, and is reported as truncated. Ethernet padding beyond
//! the IP length is ignored.

use crate::key::{ethertype, frag, ipproto, Field, FlowKey, VLAN_CFI};
use std::fmt;

/// `dl_type` of an 802.3 frame (length field instead of an EtherType), as
/// OVS's `FLOW_DL_TYPE_NONE`.
pub const DL_TYPE_NONE: u16 = 0x05ff;
/// EtherTypes start here; smaller values are 802.3 lengths.
const ETH_TYPE_MIN: u16 = 0x0600;
/// Reverse ARP has the ARP layout (OVS parses both).
const ETH_TYPE_RARP: u16 = 0x8035;

const ETH_HLEN: usize = 14;
const VLAN_TAG_OFS: usize = 12;
const ARP_HLEN: usize = 28;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const SCTP_HLEN: usize = 12;
const ICMP_HLEN: usize = 8;
const ICMPV6_HLEN: usize = 4;

/// IPv6 extension header numbers the parser walks.
pub mod ipv6_ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTH: u8 = 51;
    pub const DEST_OPTS: u8 = 60;
    pub const NO_NEXT: u8 = 59;
}

/// A header kind, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Header {
    Ethernet,
    Vlan,
    Arp,
    Ipv4,
    Ipv6,
    Ipv6HopByHop,
    Ipv6Routing,
    Ipv6Fragment,
    Ipv6Auth,
    Ipv6DestOpts,
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Header::Ethernet => "Ethernet",
            Header::Vlan => "802.1Q VLAN tag",
            Header::Arp => "ARP",
            Header::Ipv4 => "IPv4",
            Header::Ipv6 => "IPv6",
            Header::Ipv6HopByHop => "IPv6 hop-by-hop options",
            Header::Ipv6Routing => "IPv6 routing",
            Header::Ipv6Fragment => "IPv6 fragment",
            Header::Ipv6Auth => "IPv6 authentication (AH)",
            Header::Ipv6DestOpts => "IPv6 destination options",
            Header::Tcp => "TCP",
            Header::Udp => "UDP",
            Header::Sctp => "SCTP",
            Header::Icmp => "ICMP",
            Header::Icmpv6 => "ICMPv6",
        })
    }
}

/// Why a packet did not parse to its end. Offsets are from the start of the
/// frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{header} header at offset {offset} truncated: needs {needed} bytes, only {available} present")]
    Truncated {
        header: Header,
        offset: u32,
        needed: u32,
        available: u32,
    },
    #[error("{header} datagram at offset {offset} truncated: its length field says {length} bytes, only {available} present")]
    DatagramTruncated {
        header: Header,
        offset: u32,
        length: u32,
        available: u32,
    },
    #[error("IPv4 header at offset {offset} has IHL {ihl}, expected at least 5 (20 bytes)")]
    Ipv4HeaderLen { offset: u32, ihl: u8 },
    #[error("IPv4 header at offset {offset} has total length {total_len}, less than its {header_len}-byte header")]
    Ipv4TotalLen {
        offset: u32,
        total_len: u16,
        header_len: u16,
    },
    #[error("TCP header at offset {offset} has data offset {data_offset}, expected at least 5 (20 bytes)")]
    TcpDataOffset { offset: u32, data_offset: u8 },
    #[error("{header} header at offset {offset} is beyond the 65535-byte reach of header offsets")]
    OffsetOverflow { header: Header, offset: u32 },
}

/// What the actions executor and the mark path need besides the key: where
/// the headers are. An offset is set only when its header was complete and
/// valid (its fields are in the key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseInfo {
    /// The outer 802.1Q/802.1ad tag (its TPID), always 12 when present.
    pub vlan_ofs: Option<u16>,
    /// The IPv4, IPv6 or (Ethernet/IPv4) ARP header.
    pub l3_ofs: Option<u16>,
    /// The TCP, UDP, SCTP, ICMP or ICMPv6 header.
    pub l4_ofs: Option<u16>,
    /// One past the end of the IP datagram (its length field; a datagram
    /// cut short is not parsed): Ethernet padding excluded. 0 without IP.
    pub ip_end: u16,
    /// As in the key.
    pub dl_type: u16,
    /// As in the key (the upper-layer protocol for IPv6).
    pub nw_proto: u8,
    /// As in the key.
    pub nw_frag: u8,
    /// The 12 low bits of TCP's offset/flags word; 0 for other packets.
    pub tcp_flags: u16,
    /// Why the parse stopped before the end, if it did.
    pub error: Option<ParseError>,
}

impl ParseInfo {
    /// Nothing found.
    pub const NONE: ParseInfo = ParseInfo {
        vlan_ofs: None,
        l3_ofs: None,
        l4_ofs: None,
        ip_end: 0,
        dl_type: 0,
        nw_proto: 0,
        nw_frag: 0,
        tcp_flags: 0,
        error: None,
    };
}

impl Default for ParseInfo {
    fn default() -> Self {
        ParseInfo::NONE
    }
}

/// Parses `pkt` into `key` (fully overwritten: fields not present are zero;
/// `in_port` is set) and returns the header offsets.
pub fn parse(pkt: &[u8], in_port: u32, key: &mut FlowKey) -> ParseInfo {
    if let Some(info) = parse_common(pkt, in_port, key) {
        return info;
    }
    parse_general(pkt, in_port, key)
}

/// [`parse`] into `info`, returning the key's [`FlowKey::hash64`] (for
/// packets without a NIC hash): a common-case key hashes only the five
/// words it fills. The info is written in place: returned by value, the two
/// cases' results were merged through the stack, and the copy read the
/// parse's narrow stores back with wide loads, a store-forwarding stall.
#[inline(always)]
pub fn parse_hashed_into(pkt: &[u8], in_port: u32, key: &mut FlowKey, info: &mut ParseInfo) -> u64 {
    if let Some(common) = parse_common(pkt, in_port, key) {
        *info = common;
        return key.hash64_of_words(&COMMON_WORDS, COMMON_ZERO_TERMS);
    }
    *info = parse_general(pkt, in_port, key);
    key.hash64()
}

/// Every packet, header by header through [`Field`] (see [`parse`]). Out
/// of line: the callers inline the common case only.
#[inline(never)]
fn parse_general(pkt: &[u8], in_port: u32, key: &mut FlowKey) -> ParseInfo {
    *key = FlowKey::ZERO;
    key.set(Field::InPort, u128::from(in_port));
    let mut info = ParseInfo::NONE;
    let result = parse_l2(pkt, key, &mut info);
    info.error = result.err();
    info
}

/// The light parse of the mark path: header offsets and TCP flags only.
pub fn parse_offsets(pkt: &[u8]) -> ParseInfo {
    let mut scratch = FlowKey::ZERO;
    parse(pkt, 0, &mut scratch)
}

// Where [`parse_common`] writes: the key words of the fields it fills.
const W_L2: usize = Field::InPort.position().0;
const W_DST: usize = Field::DlDst.position().0;
const W_SRC: usize = Field::DlSrc.position().0;
const W_NW: usize = Field::NwSrc.position().0;
const W_TP: usize = Field::TpSrc.position().0;
/// The words [`parse_common`] writes; the others stay zero.
const COMMON_WORDS: [usize; 5] = [W_L2, W_DST, W_SRC, W_NW, W_TP];
const COMMON_ZERO_TERMS: u64 = FlowKey::hash_terms_of_zero_words(&COMMON_WORDS);
const _: () = {
    assert!(Field::InPort.position().1 == 0 && Field::DlDst.position().1 == 0);
    assert!(Field::DlSrc.position().1 == 0 && Field::NwSrc.position().1 == 0);
    assert!(Field::TpSrc.position().1 == 0);
    assert!(Field::DlType.position().0 == W_L2 && Field::VlanTci.position().0 == W_L2);
    assert!(Field::NwProto.position().0 == W_DST && Field::NwTos.position().0 == W_DST);
    assert!(Field::NwTtl.position().0 == W_SRC && Field::NwFrag.position().0 == W_SRC);
    assert!(Field::NwDst.position().0 == W_NW);
    assert!(Field::TpDst.position().0 == W_TP && Field::TcpFlags.position().0 == W_TP);
};

/// `nw_frag` of an IPv4 header, as OVS defines it.
#[inline]
fn ipv4_nw_frag(h: &[u8; IPV4_MIN_HLEN]) -> u8 {
    let frag_word = be16(h[6], h[7]);
    match (frag_word & 0x1fff != 0, frag_word & 0x2000 != 0) {
        (true, _) => frag::ANY | frag::LATER,
        (false, true) => frag::ANY,
        (false, false) => 0,
    }
}

/// The flags of the TCP header at `l4` of `datagram`, if the header
/// (options included) is complete and valid: what [`parse`] keys on.
#[inline]
fn complete_tcp_flags(datagram: &[u8], l4: usize) -> Option<u16> {
    let t: &[u8; TCP_MIN_HLEN] = header(datagram, l4)?;
    let data_offset = usize::from(t[12] >> 4) * 4;
    (data_offset >= TCP_MIN_HLEN && l4 + data_offset <= datagram.len())
        .then(|| be16(t[12], t[13]) & 0x0fff)
}

#[inline]
fn mac_word(b: &[u8; 14], at: usize) -> u64 {
    u64::from_be_bytes([
        0,
        0,
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
    ])
}

/// The common case — Ethernet, at most one VLAN tag, a complete and valid
/// IPv4 datagram carrying TCP or UDP (or a later fragment) — written into
/// the key's words at once. `None` for every other packet, which
/// [`parse_general`] takes; both give the same key and offsets (tested).
#[inline(always)]
fn parse_common(pkt: &[u8], in_port: u32, key: &mut FlowKey) -> Option<ParseInfo> {
    let eth: &[u8; ETH_HLEN] = header(pkt, 0)?;
    let mut dl_type = be16(eth[12], eth[13]);
    let (mut ofs, mut tci, mut vlan_ofs) = (ETH_HLEN, 0u16, None);
    if is_vlan_tpid(dl_type) {
        let tag: &[u8; 4] = header(pkt, ETH_HLEN)?;
        tci = be16(tag[0], tag[1]) | VLAN_CFI;
        dl_type = be16(tag[2], tag[3]);
        ofs += 4;
        vlan_ofs = Some(VLAN_TAG_OFS as u16);
    }
    if dl_type != ethertype::IPV4 {
        return None;
    }
    let h: &[u8; IPV4_MIN_HLEN] = header(pkt, ofs)?;
    let hlen = usize::from(h[0] & 0x0f) * 4;
    let end = ofs + usize::from(be16(h[2], h[3]));
    // Complete: no truncation to report, the datagram ends inside the bytes.
    if hlen < IPV4_MIN_HLEN || end < ofs + hlen || end > pkt.len() {
        return None;
    }
    let ip_end = u16::try_from(end).ok()?;
    let nw_frag = ipv4_nw_frag(h);
    let proto = h[9];
    let l4 = ofs + hlen;
    let datagram = &pkt[..end];
    let (ports, tcp_flags, l4_ofs) = if nw_frag & frag::LATER != 0 {
        (0u64, 0u16, None)
    } else {
        match proto {
            ipproto::TCP => {
                let flags = complete_tcp_flags(datagram, l4)?;
                let t: &[u8; 4] = header(datagram, l4)?;
                let ports = u64::from(u32::from_le_bytes([t[1], t[0], t[3], t[2]]));
                (ports, flags, Some(l4 as u16))
            }
            ipproto::UDP => {
                let u: &[u8; UDP_HLEN] = header(datagram, l4)?;
                let ports = u64::from(u32::from_le_bytes([u[1], u[0], u[3], u[2]]));
                (ports, 0, Some(l4 as u16))
            }
            _ => return None,
        }
    };
    *key = FlowKey::ZERO;
    key.words[W_L2] = u64::from(in_port)
        | u64::from(dl_type) << Field::DlType.position().1
        | u64::from(tci) << Field::VlanTci.position().1;
    key.words[W_DST] = mac_word(eth, 0)
        | u64::from(proto) << Field::NwProto.position().1
        | u64::from(h[1]) << Field::NwTos.position().1;
    key.words[W_SRC] = mac_word(eth, 6)
        | u64::from(h[8]) << Field::NwTtl.position().1
        | u64::from(nw_frag) << Field::NwFrag.position().1;
    key.words[W_NW] = u64::from(u32::from_be_bytes([h[12], h[13], h[14], h[15]]))
        | u64::from(u32::from_be_bytes([h[16], h[17], h[18], h[19]])) << Field::NwDst.position().1;
    key.words[W_TP] = ports | u64::from(tcp_flags) << Field::TcpFlags.position().1;
    Some(ParseInfo {
        vlan_ofs,
        l3_ofs: Some(ofs as u16),
        l4_ofs,
        ip_end,
        dl_type,
        nw_proto: proto,
        nw_frag,
        tcp_flags,
        error: None,
    })
}

/// The fields simple match reads (see [`crate::simple`]), each equal to
/// what [`parse`] would put in the key, read without extracting the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Fields {
    pub dl_type: u16,
    pub vlan_tci: u16,
    pub nw_frag: u8,
    pub tcp_flags: u16,
}

/// The fields of [`L2Fields`] for the packets whose parse is short: `None`
/// for a frame under 14 bytes and for IPv6 (whose fragment bits need the
/// extension-header walk), which take [`parse`].
#[inline]
pub fn l2_fields(pkt: &[u8]) -> Option<L2Fields> {
    let eth: &[u8; ETH_HLEN] = header(pkt, 0)?;
    let mut f = L2Fields {
        dl_type: be16(eth[12], eth[13]),
        vlan_tci: 0,
        nw_frag: 0,
        tcp_flags: 0,
    };
    let mut ofs = ETH_HLEN;
    if is_vlan_tpid(f.dl_type) {
        // Cut short, the frame keeps the TPID as its dl_type (as parse).
        let Some(tag) = header::<4>(pkt, ETH_HLEN) else {
            return Some(f);
        };
        f.vlan_tci = be16(tag[0], tag[1]) | VLAN_CFI;
        f.dl_type = be16(tag[2], tag[3]);
        ofs += 4;
    }
    if f.dl_type < ETH_TYPE_MIN {
        f.dl_type = DL_TYPE_NONE;
    }
    match f.dl_type {
        ethertype::IPV4 => {}
        ethertype::IPV6 => return None,
        _ => return Some(f),
    }
    // IPv4: nw_frag and the TCP flags only for a header parse accepts.
    let Some(h) = header::<IPV4_MIN_HLEN>(pkt, ofs) else {
        return Some(f);
    };
    let hlen = usize::from(h[0] & 0x0f) * 4;
    let total_len = usize::from(be16(h[2], h[3]));
    if hlen < IPV4_MIN_HLEN || total_len < hlen || pkt.len() < ofs + total_len {
        return Some(f);
    }
    let end = ofs + total_len;
    if end > usize::from(u16::MAX) {
        return None;
    }
    f.nw_frag = ipv4_nw_frag(h);
    if h[9] == ipproto::TCP && f.nw_frag & frag::LATER == 0 {
        f.tcp_flags = complete_tcp_flags(&pkt[..end], ofs + hlen).unwrap_or(0);
    }
    Some(f)
}

/// The TCP flags [`parse`] would report (0 for other packets), through
/// [`l2_fields`] where it can.
#[inline]
pub fn tcp_flags(pkt: &[u8]) -> u16 {
    match l2_fields(pkt) {
        Some(f) => f.tcp_flags,
        None => parse_offsets(pkt).tcp_flags,
    }
}

/// `N` bytes at `ofs` as an array, if present.
#[inline]
fn header<const N: usize>(pkt: &[u8], ofs: usize) -> Option<&[u8; N]> {
    pkt.get(ofs..ofs.checked_add(N)?)?.try_into().ok()
}

/// Like [`header`], with the truncation error.
#[inline]
fn need<const N: usize>(pkt: &[u8], ofs: usize, h: Header) -> Result<&[u8; N], ParseError> {
    header(pkt, ofs).ok_or_else(|| truncated(h, ofs, N, pkt.len()))
}

/// Fails unless `len` bytes are present at `ofs` (variable-length headers).
#[inline]
fn need_len(pkt: &[u8], ofs: usize, len: usize, h: Header) -> Result<(), ParseError> {
    match ofs.checked_add(len) {
        Some(end) if end <= pkt.len() => Ok(()),
        _ => Err(truncated(h, ofs, len, pkt.len())),
    }
}

fn truncated(header: Header, ofs: usize, needed: usize, len: usize) -> ParseError {
    ParseError::Truncated {
        header,
        offset: sat32(ofs),
        needed: sat32(needed),
        available: sat32(len.saturating_sub(ofs)),
    }
}

fn sat32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn ofs16(ofs: usize, header: Header) -> Result<u16, ParseError> {
    u16::try_from(ofs).map_err(|_| ParseError::OffsetOverflow {
        header,
        offset: sat32(ofs),
    })
}

#[inline]
fn be16(hi: u8, lo: u8) -> u16 {
    u16::from_be_bytes([hi, lo])
}

/// Big-endian unsigned integer from up to 16 bytes.
#[inline]
fn be_uint(bytes: &[u8]) -> u128 {
    bytes
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
}

fn is_vlan_tpid(t: u16) -> bool {
    t == ethertype::VLAN || t == ethertype::QINQ
}

fn parse_l2(pkt: &[u8], key: &mut FlowKey, info: &mut ParseInfo) -> Result<(), ParseError> {
    let eth: &[u8; ETH_HLEN] = need(pkt, 0, Header::Ethernet)?;
    key.set(Field::DlDst, be_uint(&eth[0..6]));
    key.set(Field::DlSrc, be_uint(&eth[6..12]));
    let mut dl_type = be16(eth[12], eth[13]);
    let mut ofs = ETH_HLEN;

    if is_vlan_tpid(dl_type) {
        // TCI and the inner EtherType. Cut short, the frame keeps the TPID
        // as its dl_type, as in OVS.
        let Some(tag) = header::<4>(pkt, ETH_HLEN) else {
            key.set(Field::DlType, u128::from(dl_type));
            info.dl_type = dl_type;
            return Err(truncated(Header::Vlan, ETH_HLEN, 4, pkt.len()));
        };
        key.set(Field::VlanTci, u128::from(be16(tag[0], tag[1]) | VLAN_CFI));
        info.vlan_ofs = Some(VLAN_TAG_OFS as u16);
        dl_type = be16(tag[2], tag[3]);
        ofs += 4;
    }
    if dl_type < ETH_TYPE_MIN {
        dl_type = DL_TYPE_NONE;
    }
    key.set(Field::DlType, u128::from(dl_type));
    info.dl_type = dl_type;

    match dl_type {
        // A second tag (QinQ) is not looked into: dl_type is its TPID.
        ethertype::IPV4 => parse_ipv4(pkt, ofs, key, info),
        ethertype::IPV6 => parse_ipv6(pkt, ofs, key, info),
        ethertype::ARP | ETH_TYPE_RARP => parse_arp(pkt, ofs, key, info),
        _ => Ok(()),
    }
}

fn parse_arp(
    pkt: &[u8],
    ofs: usize,
    key: &mut FlowKey,
    info: &mut ParseInfo,
) -> Result<(), ParseError> {
    let a: &[u8; ARP_HLEN] = need(pkt, ofs, Header::Arp)?;
    let ethernet_ipv4 =
        be16(a[0], a[1]) == 1 && be16(a[2], a[3]) == ethertype::IPV4 && a[4] == 6 && a[5] == 4;
    if !ethernet_ipv4 {
        // Valid, just not a kind the key describes.
        return Ok(());
    }
    let l3 = ofs16(ofs, Header::Arp)?;
    let op = be16(a[6], a[7]);
    // OVS keeps the opcode only when it fits nw_proto.
    if let Ok(op) = u8::try_from(op) {
        key.set(Field::NwProto, u128::from(op));
        info.nw_proto = op;
    }
    key.set(Field::ArpSha, be_uint(&a[8..14]));
    key.set(Field::NwSrc, be_uint(&a[14..18]));
    key.set(Field::ArpTha, be_uint(&a[18..24]));
    key.set(Field::NwDst, be_uint(&a[24..28]));
    info.l3_ofs = Some(l3);
    Ok(())
}

fn parse_ipv4(
    pkt: &[u8],
    ofs: usize,
    key: &mut FlowKey,
    info: &mut ParseInfo,
) -> Result<(), ParseError> {
    // As Open vSwitch: the ethertype says IPv4, the version field is not
    // read; a header or datagram its length fields do not fit leaves every
    // IP field unset.
    let h: &[u8; IPV4_MIN_HLEN] = need(pkt, ofs, Header::Ipv4)?;
    let ihl = h[0] & 0x0f;
    if ihl < 5 {
        return Err(ParseError::Ipv4HeaderLen {
            offset: sat32(ofs),
            ihl,
        });
    }
    let hlen = usize::from(ihl) * 4;
    need_len(pkt, ofs, hlen, Header::Ipv4)?;
    let total_len = be16(h[2], h[3]);
    if usize::from(total_len) < hlen {
        return Err(ParseError::Ipv4TotalLen {
            offset: sat32(ofs),
            total_len,
            header_len: hlen as u16,
        });
    }
    let available = pkt.len() - ofs; // ≥ hlen, checked above
    if usize::from(total_len) > available {
        return Err(ParseError::DatagramTruncated {
            header: Header::Ipv4,
            offset: sat32(ofs),
            length: u32::from(total_len),
            available: sat32(available),
        });
    }
    let end = ofs + usize::from(total_len);
    let l3 = ofs16(ofs, Header::Ipv4)?;
    let ip_end = ofs16(end, Header::Ipv4)?;

    let proto = h[9];
    let nw_frag = ipv4_nw_frag(h);
    key.set(Field::NwSrc, be_uint(&h[12..16]));
    key.set(Field::NwDst, be_uint(&h[16..20]));
    key.set(Field::NwProto, u128::from(proto));
    key.set(Field::NwTos, u128::from(h[1]));
    key.set(Field::NwTtl, u128::from(h[8]));
    key.set(Field::NwFrag, u128::from(nw_frag));
    info.l3_ofs = Some(l3);
    info.ip_end = ip_end;
    info.nw_proto = proto;
    info.nw_frag = nw_frag;

    if nw_frag & frag::LATER == 0 {
        let datagram = pkt.get(..end).unwrap_or_default();
        parse_l4(datagram, ofs + hlen, proto, false, key, info)?;
    }
    Ok(())
}

fn parse_ipv6(
    pkt: &[u8],
    ofs: usize,
    key: &mut FlowKey,
    info: &mut ParseInfo,
) -> Result<(), ParseError> {
    // As for IPv4 (and as Open vSwitch): the version field is not read,
    // and a payload length past the bytes leaves every IP field unset.
    let h: &[u8; IPV6_HLEN] = need(pkt, ofs, Header::Ipv6)?;
    let payload_len = usize::from(be16(h[4], h[5]));
    let available = pkt.len() - ofs - IPV6_HLEN; // header checked above
    if payload_len > available {
        return Err(ParseError::DatagramTruncated {
            header: Header::Ipv6,
            offset: sat32(ofs),
            length: sat32(IPV6_HLEN + payload_len),
            available: sat32(IPV6_HLEN + available),
        });
    }
    let end = ofs + IPV6_HLEN + payload_len;
    let l3 = ofs16(ofs, Header::Ipv6)?;
    let ip_end = ofs16(end, Header::Ipv6)?;

    let traffic_class = ((h[0] & 0x0f) << 4) | (h[1] >> 4);
    key.set(Field::NwTos, u128::from(traffic_class));
    key.set(Field::NwTtl, u128::from(h[7]));
    key.set(Field::Ipv6Src, be_uint(&h[8..24]));
    key.set(Field::Ipv6Dst, be_uint(&h[24..40]));
    info.l3_ofs = Some(l3);
    info.ip_end = ip_end;

    let datagram = pkt.get(..end).unwrap_or_default();

    // Walk the extension headers. Each is at least 8 bytes, so this ends.
    let mut next = h[6];
    let mut p = ofs + IPV6_HLEN;
    loop {
        let (kind, is_auth) = match next {
            ipv6_ext::HOP_BY_HOP => (Header::Ipv6HopByHop, false),
            ipv6_ext::ROUTING => (Header::Ipv6Routing, false),
            ipv6_ext::DEST_OPTS => (Header::Ipv6DestOpts, false),
            ipv6_ext::AUTH => (Header::Ipv6Auth, true),
            ipv6_ext::FRAGMENT => {
                let f: &[u8; 8] = need(datagram, p, Header::Ipv6Fragment)?;
                let offset_flags = be16(f[2], f[3]);
                p += 8;
                if offset_flags & 0xfff8 != 0 {
                    // A later fragment: no upper-layer header here. As OVS,
                    // nw_proto says "fragment".
                    set_ipv6_proto(key, info, ipv6_ext::FRAGMENT, frag::ANY | frag::LATER);
                    return Ok(());
                }
                if offset_flags & 1 != 0 {
                    info.nw_frag = frag::ANY;
                    key.set(Field::NwFrag, u128::from(frag::ANY));
                }
                next = f[0];
                continue;
            }
            _ => break,
        };
        let e: &[u8; 8] = need(datagram, p, kind)?;
        let len = if is_auth {
            (usize::from(e[1]) + 2) * 4
        } else {
            (usize::from(e[1]) + 1) * 8
        };
        need_len(datagram, p, len, kind)?;
        next = e[0];
        p += len;
    }
    let nw_frag = info.nw_frag;
    set_ipv6_proto(key, info, next, nw_frag);
    parse_l4(datagram, p, next, true, key, info)?;
    Ok(())
}

fn set_ipv6_proto(key: &mut FlowKey, info: &mut ParseInfo, proto: u8, nw_frag: u8) {
    key.set(Field::NwProto, u128::from(proto));
    key.set(Field::NwFrag, u128::from(nw_frag));
    info.nw_proto = proto;
    info.nw_frag = nw_frag;
}

/// Parses the upper-layer header at `ofs` of `datagram` (which ends where
/// the IP datagram ends).
fn parse_l4(
    datagram: &[u8],
    ofs: usize,
    proto: u8,
    ipv6: bool,
    key: &mut FlowKey,
    info: &mut ParseInfo,
) -> Result<(), ParseError> {
    let (src, dst, header) = match proto {
        ipproto::TCP => {
            let t: &[u8; TCP_MIN_HLEN] = need(datagram, ofs, Header::Tcp)?;
            let data_offset = t[12] >> 4;
            if data_offset < 5 {
                return Err(ParseError::TcpDataOffset {
                    offset: sat32(ofs),
                    data_offset,
                });
            }
            need_len(datagram, ofs, usize::from(data_offset) * 4, Header::Tcp)?;
            let flags = be16(t[12], t[13]) & 0x0fff;
            key.set(Field::TcpFlags, u128::from(flags));
            info.tcp_flags = flags;
            (be16(t[0], t[1]), be16(t[2], t[3]), Header::Tcp)
        }
        ipproto::UDP => {
            let u: &[u8; UDP_HLEN] = need(datagram, ofs, Header::Udp)?;
            (be16(u[0], u[1]), be16(u[2], u[3]), Header::Udp)
        }
        ipproto::SCTP => {
            let s: &[u8; SCTP_HLEN] = need(datagram, ofs, Header::Sctp)?;
            (be16(s[0], s[1]), be16(s[2], s[3]), Header::Sctp)
        }
        ipproto::ICMP if !ipv6 => {
            let i: &[u8; ICMP_HLEN] = need(datagram, ofs, Header::Icmp)?;
            (u16::from(i[0]), u16::from(i[1]), Header::Icmp)
        }
        ipproto::ICMPV6 if ipv6 => {
            let i: &[u8; ICMPV6_HLEN] = need(datagram, ofs, Header::Icmpv6)?;
            (u16::from(i[0]), u16::from(i[1]), Header::Icmpv6)
        }
        _ => return Ok(()),
    };
    info.l4_ofs = Some(ofs16(ofs, header)?);
    key.set(Field::TpSrc, u128::from(src));
    key.set(Field::TpDst, u128::from(dst));
    Ok(())
}

/// Internet checksums (RFC 1071, RFC 1624) and SCTP's CRC32c.
pub mod checksum {
    /// Adds the big-endian 16-bit words of `data` to `sum` (an odd last byte
    /// is padded with zero).
    pub fn sum(data: &[u8], mut sum: u64) -> u64 {
        let mut words = data.chunks_exact(2);
        for w in &mut words {
            sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            sum += u64::from(*last) << 8;
        }
        sum
    }

    /// Folds a sum to 16 bits with end-around carry.
    pub fn fold(mut sum: u64) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// The checksum field value for a sum taken with the field zeroed.
    pub fn finish(sum: u64) -> u16 {
        !fold(sum)
    }

    /// The IPv4 pseudo-header's contribution.
    pub fn pseudo_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u32) -> u64 {
        let s = sum(&src, 0);
        let s = sum(&dst, s);
        s + u64::from(proto) + u64::from(len)
    }

    /// The IPv6 pseudo-header's contribution.
    pub fn pseudo_v6(src: [u8; 16], dst: [u8; 16], next_header: u8, len: u32) -> u64 {
        let s = sum(&src, 0);
        let s = sum(&dst, s);
        s + u64::from(next_header) + u64::from(len >> 16) + u64::from(len & 0xffff)
    }

    /// RFC 1624 eqn. 3: the checksum after words summing (folded) to `old`
    /// were replaced by words summing to `new`: `HC' = ~(~HC + ~m + m')`.
    pub fn adjust(csum: u16, old: u16, new: u16) -> u16 {
        let s = u64::from(!csum) + u64::from(!old) + u64::from(new);
        !fold(s)
    }

    const fn crc32c_table() -> [u32; 256] {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    }

    static CRC32C: [u32; 256] = crc32c_table();

    /// CRC32c (Castagnoli), as SCTP uses it (RFC 9260 appendix A). SCTP
    /// stores it in the packet as `crc.to_le_bytes()`.
    pub fn crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for b in data {
            crc = CRC32C[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
        }
        !crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::mac_to_u64;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use testbed::build::*;

    const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const IP_B: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 3);
    const IP6_A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const IP6_B: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x1, 0x2, 0x3, 0x4);

    fn parsed(pkt: &[u8]) -> (FlowKey, ParseInfo) {
        let mut key = FlowKey::ZERO;
        let info = parse(pkt, 7, &mut key);
        (key, info)
    }

    fn ip4_frame(h: &Ipv4Header, l4: &[u8]) -> Vec<u8> {
        ethernet(MAC_DST, MAC_SRC, ethertype::IPV4, &ipv4(h, l4))
    }

    fn ip6_frame(h: &Ipv6Header, payload: &[u8]) -> Vec<u8> {
        ethernet(MAC_DST, MAC_SRC, ethertype::IPV6, &ipv6(h, payload))
    }

    /// A test packet with the stages at which its fields become known.
    struct Case {
        name: &'static str,
        pkt: Vec<u8>,
        /// (end offset, field, value): for frames of at least `end` bytes the
        /// field has `value` (later stages override earlier ones); `None`
        /// means "the value of the full parse".
        stages: Vec<(usize, Field, Option<u128>)>,
        /// Shorter than this, the parse must report an error.
        complete_at: usize,
    }

    const ETH_FIELDS: [Field; 3] = [Field::DlDst, Field::DlSrc, Field::DlType];
    const IP4_FIELDS: [Field; 6] = [
        Field::NwSrc,
        Field::NwDst,
        Field::NwProto,
        Field::NwTos,
        Field::NwTtl,
        Field::NwFrag,
    ];
    const IP6_FIELDS: [Field; 4] = [Field::Ipv6Src, Field::Ipv6Dst, Field::NwTos, Field::NwTtl];
    const L4_FIELDS: [Field; 3] = [Field::TpSrc, Field::TpDst, Field::TcpFlags];

    fn stage(end: usize, fields: &[Field]) -> Vec<(usize, Field, Option<u128>)> {
        fields.iter().map(|f| (end, *f, None)).collect()
    }

    fn case(name: &'static str, pkt: Vec<u8>, stages: &[(usize, &[Field])]) -> Case {
        let complete_at = pkt.len();
        Case {
            name,
            pkt,
            stages: stages.iter().flat_map(|(e, f)| stage(*e, f)).collect(),
            complete_at,
        }
    }

    fn cases() -> Vec<Case> {
        let mut v = Vec::new();
        let tcp4h = Ipv4Header {
            options: vec![0x94, 0x04, 0, 0], // router alert
            tos: 0xb9,
            ttl: 17,
            ..Ipv4Header::new(IP_A, IP_B, ipproto::TCP)
        };
        let seg = tcp(tcp4h.pseudo(), 1234, 80, 0x012, &[2, 4, 5, 0xb4], b"hello");
        v.push(case(
            "tcp4+options",
            ip4_frame(&tcp4h, &seg),
            &[(14, &ETH_FIELDS), (38, &IP4_FIELDS), (38 + 24, &L4_FIELDS)],
        ));
        v.push(case(
            "udp4",
            udp4(IP_A, IP_B, 2152, 2152, b"gtp"),
            &[(14, &ETH_FIELDS), (34, &IP4_FIELDS), (42, &L4_FIELDS)],
        ));
        let s4 = Ipv4Header::new(IP_A, IP_B, ipproto::SCTP);
        v.push(case(
            "sctp4",
            ip4_frame(&s4, &sctp(5000, 6000, &[1, 0, 0, 4])),
            &[(14, &ETH_FIELDS), (34, &IP4_FIELDS), (46, &L4_FIELDS)],
        ));
        let i4 = Ipv4Header::new(IP_A, IP_B, ipproto::ICMP);
        v.push(case(
            "icmp4",
            ip4_frame(&i4, &icmp(8, 0, &[0, 1, 0, 2, 0xde, 0xad])),
            &[(14, &ETH_FIELDS), (34, &IP4_FIELDS), (42, &L4_FIELDS)],
        ));
        let first = Ipv4Header {
            flags_frag: 0x2000,
            ..Ipv4Header::new(IP_A, IP_B, ipproto::UDP)
        };
        let udp_seg = udp(first.pseudo(), 53, 53, &[0; 16]);
        v.push(case(
            "ipv4 first fragment",
            ip4_frame(&first, &udp_seg[..16]),
            &[(14, &ETH_FIELDS), (34, &IP4_FIELDS), (42, &L4_FIELDS)],
        ));
        let later = Ipv4Header {
            flags_frag: 2,
            ..Ipv4Header::new(IP_A, IP_B, ipproto::UDP)
        };
        v.push(case(
            "ipv4 later fragment",
            ip4_frame(&later, &[0; 16]),
            &[(14, &ETH_FIELDS), (34, &IP4_FIELDS)],
        ));
        v.push(case(
            "arp",
            ethernet(
                [0xff; 6],
                MAC_SRC,
                ethertype::ARP,
                &arp(1, MAC_SRC, IP_A, [0; 6], IP_B),
            ),
            &[
                (14, &ETH_FIELDS),
                (
                    42,
                    &[
                        Field::NwProto,
                        Field::NwSrc,
                        Field::NwDst,
                        Field::ArpSha,
                        Field::ArpTha,
                    ],
                ),
            ],
        ));
        // VLAN: while the tag is cut, dl_type is the TPID.
        let mut vlan = case(
            "vlan udp4",
            push_tag(&udp4(IP_A, IP_B, 1, 2, b""), ethertype::VLAN, 0x2064),
            &[
                (14, &ETH_FIELDS),
                (18, &[Field::VlanTci, Field::DlType]),
                (38, &IP4_FIELDS),
                (46, &L4_FIELDS),
            ],
        );
        vlan.stages
            .insert(3, (14, Field::DlType, Some(u128::from(ethertype::VLAN))));
        v.push(vlan);
        let mut qinq = case(
            "qinq",
            push_tag(
                &push_tag(&udp4(IP_A, IP_B, 1, 2, b""), ethertype::VLAN, 100),
                ethertype::QINQ,
                200,
            ),
            &[(14, &ETH_FIELDS), (18, &[Field::VlanTci, Field::DlType])],
        );
        qinq.stages
            .insert(3, (14, Field::DlType, Some(u128::from(ethertype::QINQ))));
        qinq.complete_at = 18;
        v.push(qinq);
        let mut dot3 = case(
            "802.3",
            ethernet(MAC_DST, MAC_SRC, 40, &[0x42, 0x42, 0x03, 0, 0, 0]),
            &[(14, &ETH_FIELDS)],
        );
        dot3.complete_at = 14;
        v.push(dot3);

        // IPv6 with each extension header, then TCP.
        for ext in [
            ipv6_ext::HOP_BY_HOP,
            ipv6_ext::ROUTING,
            ipv6_ext::DEST_OPTS,
            ipv6_ext::AUTH,
        ] {
            let h = Ipv6Header {
                traffic_class: 0xb8,
                hop_limit: 3,
                ..Ipv6Header::new(IP6_A, IP6_B, ext)
            };
            let e = ipv6_ext(ext, ipproto::TCP);
            let end = 54 + e.len();
            let mut payload = e;
            payload.extend(tcp(h.pseudo(), 443, 50000, 0x018, &[], b"data"));
            let mut c = case(
                "ipv6 ext + tcp",
                ip6_frame(&h, &payload),
                &[
                    (14, &ETH_FIELDS),
                    (54, &IP6_FIELDS),
                    (end, &[Field::NwProto]),
                    (end + 20, &L4_FIELDS),
                ],
            );
            c.name = match ext {
                ipv6_ext::HOP_BY_HOP => "ipv6 hop-by-hop",
                ipv6_ext::ROUTING => "ipv6 routing",
                ipv6_ext::DEST_OPTS => "ipv6 dest opts",
                _ => "ipv6 auth",
            };
            v.push(c);
        }
        // A chain: hop-by-hop, destination options, first fragment, UDP.
        let h = Ipv6Header::new(IP6_A, IP6_B, ipv6_ext::HOP_BY_HOP);
        let mut payload = ipv6_ext(ipv6_ext::HOP_BY_HOP, ipv6_ext::DEST_OPTS);
        payload.extend(ipv6_ext(ipv6_ext::DEST_OPTS, ipv6_ext::FRAGMENT));
        payload.extend(ipv6_frag(ipproto::UDP, 0, true, 99));
        payload.extend(udp(h.pseudo(), 4789, 4789, &[1; 8]));
        v.push(case(
            "ipv6 chain, first fragment, udp",
            ip6_frame(&h, &payload),
            &[
                (14, &ETH_FIELDS),
                (54, &IP6_FIELDS),
                (78, &[Field::NwFrag]),
                (78, &[Field::NwProto]),
                (86, &L4_FIELDS),
            ],
        ));
        let h = Ipv6Header::new(IP6_A, IP6_B, ipv6_ext::FRAGMENT);
        let mut payload = ipv6_frag(ipproto::UDP, 185, false, 99);
        payload.extend([7; 24]);
        v.push(case(
            "ipv6 later fragment",
            ip6_frame(&h, &payload),
            &[
                (14, &ETH_FIELDS),
                (54, &IP6_FIELDS),
                (62, &[Field::NwFrag, Field::NwProto]),
            ],
        ));
        let h = Ipv6Header::new(IP6_A, IP6_B, ipproto::ICMPV6);
        v.push(case(
            "icmpv6",
            ip6_frame(&h, &icmpv6(h.pseudo(), 128, 0, &[0, 1, 0, 1])),
            &[
                (14, &ETH_FIELDS),
                (54, &IP6_FIELDS),
                (54, &[Field::NwProto]),
                (58, &L4_FIELDS),
            ],
        ));
        v.push(case(
            "udp6",
            udp6(IP6_A, IP6_B, 546, 547, b"dhcp"),
            &[
                (14, &ETH_FIELDS),
                (54, &IP6_FIELDS),
                (54, &[Field::NwProto]),
                (62, &L4_FIELDS),
            ],
        ));
        v
    }

    /// The key a frame cut to `len` bytes must parse to. An IP datagram
    /// (ending at `ip_end`, 0 for none) gives its fields only when whole,
    /// as in Open vSwitch.
    fn expected_at(c: &Case, full: &FlowKey, ip_end: u16, len: usize) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set(Field::InPort, 7);
        let l2 = [Field::DlDst, Field::DlSrc, Field::DlType, Field::VlanTci];
        for (end, field, value) in &c.stages {
            let whole = l2.contains(field) || len >= usize::from(ip_end);
            if len >= *end && whole {
                k.set(*field, value.unwrap_or_else(|| full.get(*field)));
            }
        }
        k
    }

    #[test]
    fn every_case_parses_completely() {
        for c in cases() {
            let (key, info) = parsed(&c.pkt);
            assert_eq!(info.error, None, "{}", c.name);
            assert_eq!(
                key,
                expected_at(&c, &key, info.ip_end, c.pkt.len()),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn truncation_at_every_length() {
        for c in cases() {
            let (full, full_info) = parsed(&c.pkt);
            for len in 0..=c.pkt.len() {
                let (key, info) = parsed(&c.pkt[..len]);
                assert_eq!(
                    key,
                    expected_at(&c, &full, full_info.ip_end, len),
                    "{} cut to {len}: {:?}",
                    c.name,
                    info.error
                );
                assert_eq!(
                    info.error.is_some(),
                    len < c.complete_at,
                    "{} cut to {len}: {:?}",
                    c.name,
                    info.error
                );
                // Offsets never point past the bytes, and never disagree
                // with the full parse.
                for ofs in [info.vlan_ofs, info.l3_ofs, info.l4_ofs]
                    .into_iter()
                    .flatten()
                {
                    assert!(usize::from(ofs) < len, "{} cut to {len}", c.name);
                }
                if info.l4_ofs.is_some() {
                    assert_eq!(info.l4_ofs, full_info.l4_ofs);
                }
            }
        }
    }

    #[test]
    fn ethernet_only() {
        let pkt = ethernet(MAC_DST, MAC_SRC, 0x88cc, &[0; 30]);
        let (key, info) = parsed(&pkt);
        assert_eq!(key.in_port(), 7);
        assert_eq!(key.dl_dst(), MAC_DST);
        assert_eq!(key.dl_src(), MAC_SRC);
        assert_eq!(key.dl_type(), 0x88cc);
        assert_eq!(key.vlan_tci(), 0);
        assert_eq!(info.error, None);
        assert_eq!(info.l3_ofs, None);
        let (key, info) = parsed(&pkt[..13]);
        assert_eq!(key.dl_dst(), [0; 6]);
        assert!(matches!(
            info.error,
            Some(ParseError::Truncated {
                header: Header::Ethernet,
                offset: 0,
                needed: 14,
                available: 13
            })
        ));
    }

    #[test]
    fn vlan_and_qinq() {
        let pkt = push_tag(&udp4(IP_A, IP_B, 1, 2, b""), ethertype::VLAN, 0xa064);
        let (key, info) = parsed(&pkt);
        assert_eq!(key.vlan_tci(), 0xa064 | VLAN_CFI);
        assert_eq!(key.dl_type(), ethertype::IPV4);
        assert_eq!(info.vlan_ofs, Some(12));
        assert_eq!(info.l3_ofs, Some(18));
        assert_eq!(info.l4_ofs, Some(38));
        assert_eq!(key.get(Field::TpDst), 2);

        let qinq = push_tag(&pkt, ethertype::QINQ, 0x0c8);
        let (key, info) = parsed(&qinq);
        assert_eq!(key.vlan_tci(), 0x0c8 | VLAN_CFI);
        assert_eq!(key.dl_type(), ethertype::VLAN);
        assert_eq!(key.get(Field::NwSrc), 0);
        assert_eq!(info.l3_ofs, None);
        assert_eq!(info.error, None);
    }

    #[test]
    fn dot3_length_field() {
        let pkt = ethernet(
            MAC_DST,
            MAC_SRC,
            0x0026,
            &[0xaa, 0xaa, 0x03, 0, 0, 0, 0x08, 0],
        );
        let (key, info) = parsed(&pkt);
        assert_eq!(key.dl_type(), DL_TYPE_NONE);
        assert_eq!(info.error, None);
        // Tagged 802.3 too.
        let (key, _) = parsed(&push_tag(&pkt, ethertype::VLAN, 5));
        assert_eq!(key.dl_type(), DL_TYPE_NONE);
        assert_eq!(key.vlan_tci(), 5 | VLAN_CFI);
    }

    #[test]
    fn arp_fields() {
        let sha = [0x2e, 0xa9, 0xbe, 0x9e, 0x4d, 0x07];
        let tha = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66];
        let pkt = ethernet(
            [0xff; 6],
            sha,
            ethertype::ARP,
            &arp(2, sha, IP_A, tha, IP_B),
        );
        let (key, info) = parsed(&pkt);
        assert_eq!(key.nw_proto(), 2);
        assert_eq!(key.get(Field::NwSrc), u128::from(u32::from(IP_A)));
        assert_eq!(key.get(Field::NwDst), u128::from(u32::from(IP_B)));
        assert_eq!(key.get(Field::ArpSha), u128::from(mac_to_u64(sha)));
        assert_eq!(key.get(Field::ArpTha), u128::from(mac_to_u64(tha)));
        assert_eq!(info.l3_ofs, Some(14));
        // A non-Ethernet/IPv4 ARP is valid but not described.
        let mut odd = pkt.clone();
        odd[15] = 6; // htype 6 (IEEE 802)
        let (key, info) = parsed(&odd);
        assert_eq!(key.nw_proto(), 0);
        assert_eq!(key.get(Field::NwSrc), 0);
        assert_eq!(info.error, None);
        // Opcodes above 255 do not fit nw_proto (OVS leaves it zero).
        let mut big = pkt.clone();
        big[20] = 1;
        let (key, _) = parsed(&big);
        assert_eq!(key.nw_proto(), 0);
        assert_eq!(key.get(Field::NwSrc), u128::from(u32::from(IP_A)));
    }

    #[test]
    fn ipv4_with_options_and_tcp() {
        let c = &cases()[0];
        let (key, info) = parsed(&c.pkt);
        assert_eq!(key.dl_type(), ethertype::IPV4);
        assert_eq!(key.get(Field::NwSrc), 0x0a00_0001);
        assert_eq!(key.get(Field::NwDst), 0xc0a8_c803);
        assert_eq!(key.nw_proto(), ipproto::TCP);
        assert_eq!(key.get(Field::NwTos), 0xb9);
        assert_eq!(key.get(Field::NwTtl), 17);
        assert_eq!(key.nw_frag(), 0);
        assert_eq!(key.get(Field::TpSrc), 1234);
        assert_eq!(key.get(Field::TpDst), 80);
        assert_eq!(key.get(Field::TcpFlags), 0x012);
        assert_eq!(info.tcp_flags, 0x012);
        assert_eq!(info.l3_ofs, Some(14));
        assert_eq!(info.l4_ofs, Some(38));
        assert_eq!(usize::from(info.ip_end), c.pkt.len());
    }

    #[test]
    fn ipv4_padding_ignored() {
        let mut pkt = udp4(IP_A, IP_B, 1, 2, b"");
        let len = pkt.len();
        pkt.resize(60, 0xee);
        let (key, info) = parsed(&pkt);
        assert_eq!(info.error, None);
        assert_eq!(usize::from(info.ip_end), len);
        assert_eq!(key.get(Field::TpDst), 2);
    }

    #[test]
    fn ipv4_bad_headers() {
        let pkt = udp4(IP_A, IP_B, 1, 2, b"");
        // As Open vSwitch: the version field is not read.
        let mut v5 = pkt.clone();
        v5[14] = 0x55;
        let (key, info) = parsed(&v5);
        assert_eq!(key.dl_type(), ethertype::IPV4);
        assert_eq!(key.get(Field::NwSrc), u128::from(u32::from(IP_A)));
        assert_eq!(key.get(Field::TpDst), 2);
        assert_eq!(info.error, None);
        // A total length past the bytes: no IP field at all (Open vSwitch
        // 3.1's flow extraction, checked with ofproto/trace).
        let mut long = pkt.clone();
        let len = (pkt.len() - 14 + 1) as u16;
        long[16..18].copy_from_slice(&len.to_be_bytes());
        let (key, info) = parsed(&long);
        assert_eq!(key.dl_type(), ethertype::IPV4);
        assert_eq!(key.get(Field::NwSrc), 0);
        assert_eq!(key.nw_proto(), 0);
        assert_eq!(key.get(Field::TpDst), 0);
        assert_eq!(info.l3_ofs, None);
        assert!(matches!(
            info.error,
            Some(ParseError::DatagramTruncated {
                header: Header::Ipv4,
                ..
            })
        ));
        assert_eq!(l2_fields(&long).map(|f| f.nw_frag), Some(0));
        let mut ihl = pkt.clone();
        ihl[14] = 0x44;
        assert_eq!(
            parsed(&ihl).1.error,
            Some(ParseError::Ipv4HeaderLen { offset: 14, ihl: 4 })
        );
        let mut total = pkt.clone();
        total[16..18].copy_from_slice(&19u16.to_be_bytes());
        assert!(matches!(
            parsed(&total).1.error,
            Some(ParseError::Ipv4TotalLen { total_len: 19, .. })
        ));
        // The TCP data offset is checked.
        let mut tcp = tcp4(IP_A, IP_B, 1, 2);
        tcp[46] = 0x40;
        let (key, info) = parsed(&tcp);
        assert_eq!(key.nw_proto(), ipproto::TCP);
        assert_eq!(key.get(Field::TpSrc), 0);
        assert_eq!(info.l4_ofs, None);
        assert!(matches!(
            info.error,
            Some(ParseError::TcpDataOffset { data_offset: 4, .. })
        ));
    }

    #[test]
    fn ipv4_fragments() {
        let first = cases()
            .into_iter()
            .find(|c| c.name == "ipv4 first fragment")
            .unwrap();
        let (key, info) = parsed(&first.pkt);
        assert_eq!(key.nw_frag(), frag::ANY);
        assert_eq!(key.get(Field::TpSrc), 53);
        assert!(info.l4_ofs.is_some());
        let later = cases()
            .into_iter()
            .find(|c| c.name == "ipv4 later fragment")
            .unwrap();
        let (key, info) = parsed(&later.pkt);
        assert_eq!(key.nw_frag(), frag::ANY | frag::LATER);
        assert_eq!(key.nw_proto(), ipproto::UDP);
        assert_eq!(key.get(Field::TpSrc), 0);
        assert_eq!(info.l4_ofs, None);
        // DF alone is not a fragment.
        let df = Ipv4Header {
            flags_frag: 0x4000,
            ..Ipv4Header::new(IP_A, IP_B, ipproto::UDP)
        };
        let seg = udp(df.pseudo(), 1, 2, b"");
        assert_eq!(parsed(&ip4_frame(&df, &seg)).0.nw_frag(), 0);
    }

    #[test]
    fn ipv6_extension_headers() {
        for c in cases().iter().filter(|c| c.name.starts_with("ipv6 ")) {
            let (key, info) = parsed(&c.pkt);
            assert_eq!(key.dl_type(), ethertype::IPV6, "{}", c.name);
            assert_eq!(key.get(Field::Ipv6Src), u128::from(IP6_A), "{}", c.name);
            assert_eq!(key.get(Field::Ipv6Dst), u128::from(IP6_B), "{}", c.name);
            assert_eq!(info.l3_ofs, Some(14));
            match c.name {
                "ipv6 later fragment" => {
                    assert_eq!(key.nw_proto(), ipv6_ext::FRAGMENT);
                    assert_eq!(key.nw_frag(), frag::ANY | frag::LATER);
                    assert_eq!(info.l4_ofs, None);
                }
                "ipv6 chain, first fragment, udp" => {
                    assert_eq!(key.nw_proto(), ipproto::UDP);
                    assert_eq!(key.nw_frag(), frag::ANY);
                    assert_eq!(key.get(Field::TpSrc), 4789);
                    assert_eq!(info.l4_ofs, Some(78));
                }
                _ => {
                    assert_eq!(key.nw_proto(), ipproto::TCP, "{}", c.name);
                    assert_eq!(key.get(Field::NwTos), 0xb8);
                    assert_eq!(key.get(Field::NwTtl), 3);
                    assert_eq!(key.nw_frag(), 0);
                    assert_eq!(key.get(Field::TpSrc), 443);
                    assert_eq!(key.get(Field::TpDst), 50000);
                    assert_eq!(key.get(Field::TcpFlags), 0x018);
                }
            }
        }
    }

    #[test]
    fn ipv6_atomic_fragment_is_not_a_fragment() {
        let h = Ipv6Header::new(IP6_A, IP6_B, ipv6_ext::FRAGMENT);
        let mut payload = ipv6_frag(ipproto::UDP, 0, false, 1);
        payload.extend(udp(h.pseudo(), 1, 2, b""));
        let (key, info) = parsed(&ip6_frame(&h, &payload));
        assert_eq!(key.nw_frag(), 0);
        assert_eq!(key.nw_proto(), ipproto::UDP);
        assert_eq!(info.l4_ofs, Some(62));
    }

    #[test]
    fn ipv6_bad_version_and_payload_length() {
        // As Open vSwitch: the version field is not read.
        let mut pkt = udp6(IP6_A, IP6_B, 1, 2, b"");
        pkt[14] = 0x45;
        let (key, info) = parsed(&pkt);
        assert_eq!(key.get(Field::Ipv6Src), u128::from(IP6_A));
        assert_eq!(key.get(Field::TpDst), 2);
        assert_eq!(info.error, None);
        // A payload length past the bytes: no IP field at all.
        let mut pkt = udp6(IP6_A, IP6_B, 1, 2, b"");
        pkt[18..20].copy_from_slice(&100u16.to_be_bytes());
        let (key, info) = parsed(&pkt);
        assert_eq!(key.dl_type(), ethertype::IPV6);
        assert_eq!(key.get(Field::Ipv6Src), 0);
        assert_eq!(key.get(Field::TpDst), 0);
        assert_eq!(info.l3_ofs, None);
        assert!(matches!(
            info.error,
            Some(ParseError::DatagramTruncated {
                header: Header::Ipv6,
                length: 140,
                available: 48,
                ..
            })
        ));
    }

    #[test]
    fn l4_protocols() {
        let sctp = cases().into_iter().find(|c| c.name == "sctp4").unwrap();
        let (key, _) = parsed(&sctp.pkt);
        assert_eq!((key.get(Field::TpSrc), key.get(Field::TpDst)), (5000, 6000));
        let icmp4 = cases().into_iter().find(|c| c.name == "icmp4").unwrap();
        let (key, _) = parsed(&icmp4.pkt);
        assert_eq!((key.get(Field::TpSrc), key.get(Field::TpDst)), (8, 0));
        let icmp6 = cases().into_iter().find(|c| c.name == "icmpv6").unwrap();
        let (key, info) = parsed(&icmp6.pkt);
        assert_eq!((key.get(Field::TpSrc), key.get(Field::TpDst)), (128, 0));
        assert_eq!(info.l4_ofs, Some(54));
        let (key, _) = parsed(&udp4(IP_A, IP_B, 2152, 2123, b""));
        assert_eq!((key.get(Field::TpSrc), key.get(Field::TpDst)), (2152, 2123));
        // ICMP (v4) inside IPv6 is not an ICMP header.
        let h = Ipv6Header::new(IP6_A, IP6_B, ipproto::ICMP);
        let (key, info) = parsed(&ip6_frame(&h, &icmp(8, 0, &[0; 4])));
        assert_eq!(key.nw_proto(), ipproto::ICMP);
        assert_eq!(key.get(Field::TpSrc), 0);
        assert_eq!(info.l4_ofs, None);
    }

    #[test]
    fn error_messages_name_the_header() {
        let pkt = tcp4(IP_A, IP_B, 1, 2);
        let msg = parsed(&pkt[..40]).1.error.unwrap().to_string();
        assert_eq!(
            msg,
            "IPv4 datagram at offset 14 truncated: its length field says 40 bytes, only 26 present"
        );
        // A whole datagram too short for its TCP header.
        let mut short = pkt[..40].to_vec();
        short[16..18].copy_from_slice(&26u16.to_be_bytes());
        let msg = parsed(&short).1.error.unwrap().to_string();
        assert_eq!(
            msg,
            "TCP header at offset 34 truncated: needs 20 bytes, only 6 present"
        );
        let msg = parsed(&pkt[..30]).1.error.unwrap().to_string();
        assert_eq!(
            msg,
            "IPv4 header at offset 14 truncated: needs 20 bytes, only 16 present"
        );
    }

    #[test]
    fn checksum_known_values() {
        assert_eq!(checksum::crc32c(b"123456789"), 0xe306_9283);
        // RFC 1071 example words.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum::fold(checksum::sum(&data, 0)), 0xddf2);
    }

    /// The common-case parse takes the packets it is for (the property
    /// below only compares where it answers).
    #[test]
    fn the_common_case_parse_takes_tcp_udp_and_later_fragments() {
        for c in cases() {
            let common = [
                "tcp4+options",
                "udp4",
                "ipv4 first fragment",
                "ipv4 later fragment",
                "vlan udp4",
            ];
            let mut key = FlowKey::ZERO;
            let mut general = FlowKey::ZERO;
            let got = parse_common(&c.pkt, 1, &mut key);
            let tagged = testbed::build::push_tag(&c.pkt, ethertype::VLAN, 0x2005);
            let mut scratch = FlowKey::ZERO;
            let got_tagged = parse_common(&tagged, 1, &mut scratch);
            if common.contains(&c.name) {
                assert_eq!(
                    got,
                    Some(parse_general(&c.pkt, 1, &mut general)),
                    "{}",
                    c.name
                );
                assert_eq!(key, general, "{}", c.name);
                // A second tag is not looked into (QinQ): general parse.
                assert_eq!(
                    got_tagged.is_some(),
                    c.name != "vlan udp4",
                    "{} tagged",
                    c.name
                );
            } else {
                assert_eq!(got, None, "{}", c.name);
            }
        }
    }

    /// Case `which` (VLAN-tagged with `tag`), bytes overwritten at `flips`,
    /// cut to `cut` bytes (at least one).
    fn mutated(which: usize, tag: Option<u16>, flips: &[(usize, u8)], cut: usize) -> Vec<u8> {
        let all = cases();
        let mut pkt = all[which % all.len()].pkt.clone();
        if let Some(tci) = tag {
            pkt = testbed::build::push_tag(&pkt, ethertype::VLAN, tci);
        }
        for &(at, v) in flips {
            let n = pkt.len();
            pkt[at % n] = v;
        }
        pkt.truncate(cut.max(1));
        pkt
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::test_env::cases(256)))]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut key = FlowKey::ZERO;
            let info = parse(&bytes, 1, &mut key);
            for ofs in [info.vlan_ofs, info.l3_ofs, info.l4_ofs].into_iter().flatten() {
                proptest::prop_assert!(usize::from(ofs) < bytes.len());
            }
        }

        #[test]
        fn the_common_case_parse_equals_the_general_one(
            which in 0usize..18,
            flips in proptest::collection::vec((0usize..64, proptest::num::u8::ANY), 0..4),
            cut in 0usize..200,
            tag in proptest::option::of(proptest::num::u16::ANY),
        ) {
            let pkt = mutated(which, tag, &flips, cut);
            let mut general = FlowKey::ZERO;
            let want = parse_general(&pkt, 3, &mut general);
            let mut common = FlowKey::ZERO;
            if let Some(info) = parse_common(&pkt, 3, &mut common) {
                proptest::prop_assert_eq!(info, want);
                proptest::prop_assert_eq!(common, general);
            }
            // Hashed: the same parse, and the whole key's hash.
            let mut hashed = FlowKey::ZERO;
            let mut info = ParseInfo::NONE;
            let hash = parse_hashed_into(&pkt, 3, &mut hashed, &mut info);
            proptest::prop_assert_eq!(info, want);
            proptest::prop_assert_eq!(hashed, general);
            proptest::prop_assert_eq!(hash, general.hash64());
        }

        #[test]
        fn l2_fields_agree_with_parse(
            which in 0usize..18,
            flips in proptest::collection::vec((0usize..64, proptest::num::u8::ANY), 0..4),
            cut in 0usize..200,
        ) {
            let pkt = mutated(which, None, &flips, cut);
            let mut key = FlowKey::ZERO;
            let info = parse(&pkt, 1, &mut key);
            match l2_fields(&pkt) {
                Some(f) => {
                    proptest::prop_assert_eq!(u128::from(f.dl_type), key.get(Field::DlType));
                    proptest::prop_assert_eq!(u128::from(f.vlan_tci), key.get(Field::VlanTci));
                    proptest::prop_assert_eq!(u128::from(f.nw_frag), key.get(Field::NwFrag));
                    proptest::prop_assert_eq!(f.tcp_flags, info.tcp_flags);
                }
                None => proptest::prop_assert!(
                    pkt.len() < 14 || key.get(Field::DlType) == u128::from(ethertype::IPV6)
                ),
            }
        }

        #[test]
        fn mutated_packets_never_panic(
            which in 0usize..18,
            flips in proptest::collection::vec((0usize..200, proptest::num::u8::ANY), 0..6),
            cut in 0usize..200,
        ) {
            let pkt = mutated(which, None, &flips, cut);
            let mut key = FlowKey::ZERO;
            let _ = parse(&pkt, 1, &mut key);
        }
    }
}
