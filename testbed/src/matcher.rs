//! The emulated NIC's packet matcher: rte_flow items applied to raw bytes.
//!
//! Written apart from `fallback::packet` on purpose: the safety property
//! test compares the two, so they must not share a parser.
//!
//! rte_flow semantics kept here (DPDK 22.11 `rte_flow.rst`):
//! - a field takes part only where its mask has 1 bits; with a `last` that
//!   is non-zero and differs from `spec` (both masked), the masked value must
//!   lie in `spec..=last`, else it must equal `spec`;
//! - ETH `type` is the frame's own type field: the TPID of a tagged frame,
//!   the EtherType of an untagged one; `has_vlan` says a tag is present; an
//!   L3 item after an ETH item without a VLAN item looks past any tags (so
//!   that, with `type` and `has_vlan` unmasked, tagged and untagged frames
//!   both match);
//! - VLAN matches the outer tag, `inner_type` is the type field after it;
//! - IPv6 `proto` is the first next header; `has_frag_ext` says a Fragment
//!   extension header is in the chain; L4 items match the upper-layer header
//!   after the extension headers;
//! - an L4 item needs the whole fixed L4 header inside the IP datagram, and
//!   never matches a non-first fragment (it carries no L4 header).

use offload::rte::{Eth, Icmp, Icmp6, Ipv4, Ipv6, Item, Masked, Sctp, Tcp, Udp, Vlan};

/// 802.1Q tag.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad service tag.
pub const TPID_8021AD: u16 = 0x88a8;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_AUTH: u8 = 51;
const EXT_DEST_OPTS: u8 = 60;

/// The most tags the walk skips (more is not a frame a NIC classifies).
const MAX_TAGS: usize = 4;

/// Every field of an item as a number, in a fixed order, so that spec,
/// last, mask and the packet's values are compared slot by slot.
pub type Fields = [u128; 8];

/// A header struct whose fields can be listed as [`Fields`].
pub trait HeaderFields: Copy {
    fn fields(&self) -> Fields;
}

fn mac(m: [u8; 6]) -> u128 {
    m.iter().fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
}

impl HeaderFields for Eth {
    fn fields(&self) -> Fields {
        [
            mac(self.dst),
            mac(self.src),
            self.ether_type.into(),
            self.has_vlan.into(),
            0,
            0,
            0,
            0,
        ]
    }
}

impl HeaderFields for Vlan {
    fn fields(&self) -> Fields {
        [
            self.tci.into(),
            self.inner_type.into(),
            self.has_more_vlan.into(),
            0,
            0,
            0,
            0,
            0,
        ]
    }
}

impl HeaderFields for Ipv4 {
    fn fields(&self) -> Fields {
        [
            self.version_ihl.into(),
            self.type_of_service.into(),
            self.packet_id.into(),
            self.fragment_offset.into(),
            self.time_to_live.into(),
            self.next_proto_id.into(),
            self.src_addr.into(),
            self.dst_addr.into(),
        ]
    }
}

impl HeaderFields for Ipv6 {
    fn fields(&self) -> Fields {
        [
            self.vtc_flow.into(),
            self.proto.into(),
            self.hop_limits.into(),
            self.src_addr,
            self.dst_addr,
            self.has_frag_ext.into(),
            0,
            0,
        ]
    }
}

impl HeaderFields for Tcp {
    fn fields(&self) -> Fields {
        [
            self.src_port.into(),
            self.dst_port.into(),
            self.tcp_flags.into(),
            0,
            0,
            0,
            0,
            0,
        ]
    }
}

impl HeaderFields for Udp {
    fn fields(&self) -> Fields {
        [self.src_port.into(), self.dst_port.into(), 0, 0, 0, 0, 0, 0]
    }
}

impl HeaderFields for Sctp {
    fn fields(&self) -> Fields {
        [
            self.src_port.into(),
            self.dst_port.into(),
            self.tag.into(),
            0,
            0,
            0,
            0,
            0,
        ]
    }
}

impl HeaderFields for Icmp {
    fn fields(&self) -> Fields {
        [
            self.icmp_type.into(),
            self.icmp_code.into(),
            self.icmp_ident.into(),
            self.icmp_seq_nb.into(),
            0,
            0,
            0,
            0,
        ]
    }
}

impl HeaderFields for Icmp6 {
    fn fields(&self) -> Fields {
        [
            self.icmp_type.into(),
            self.icmp_code.into(),
            0,
            0,
            0,
            0,
            0,
            0,
        ]
    }
}

/// Which header an item describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemKind {
    Eth,
    Vlan,
    Ipv4,
    Ipv6,
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmp6,
}

impl ItemKind {
    pub const COUNT: usize = 9;

    pub fn of(item: &Item) -> ItemKind {
        match item {
            Item::Eth(_) => ItemKind::Eth,
            Item::Vlan(_) => ItemKind::Vlan,
            Item::Ipv4(_) => ItemKind::Ipv4,
            Item::Ipv6(_) => ItemKind::Ipv6,
            Item::Tcp(_) => ItemKind::Tcp,
            Item::Udp(_) => ItemKind::Udp,
            Item::Sctp(_) => ItemKind::Sctp,
            Item::Icmp(_) => ItemKind::Icmp,
            Item::Icmp6(_) => ItemKind::Icmp6,
        }
    }
}

/// An item's spec, effective range end and mask as [`Fields`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ItemFields {
    pub kind: ItemKind,
    pub spec: Fields,
    /// `Some` only where the item has `last`; per-slot effectiveness is
    /// decided in [`field_matches`].
    pub last: Option<Fields>,
    pub mask: Fields,
}

fn split<T: HeaderFields>(kind: ItemKind, m: &Masked<T>) -> ItemFields {
    ItemFields {
        kind,
        spec: m.spec.fields(),
        last: m.last.map(|l| l.fields()),
        mask: m.mask.fields(),
    }
}

impl ItemFields {
    pub fn of(item: &Item) -> ItemFields {
        let kind = ItemKind::of(item);
        match item {
            Item::Eth(m) => split(kind, m),
            Item::Vlan(m) => split(kind, m),
            Item::Ipv4(m) => split(kind, m),
            Item::Ipv6(m) => split(kind, m),
            Item::Tcp(m) => split(kind, m),
            Item::Udp(m) => split(kind, m),
            Item::Sctp(m) => split(kind, m),
            Item::Icmp(m) => split(kind, m),
            Item::Icmp6(m) => split(kind, m),
        }
    }

    /// True when some slot is a real range (see [`field_matches`]).
    pub fn has_range(&self) -> bool {
        let Some(last) = self.last else {
            return false;
        };
        (0..8).any(|i| effective_last(self.spec[i], last[i], self.mask[i]).is_some())
    }

    /// The spec under the mask: the exact-match key of a range-free item.
    pub fn masked_spec(&self) -> Fields {
        let mut k = self.spec;
        for (v, m) in k.iter_mut().zip(self.mask.iter()) {
            *v &= m;
        }
        k
    }

    /// Does a header with these field values match?
    pub fn matches(&self, values: &Fields) -> bool {
        (0..8).all(|i| {
            field_matches(
                values[i],
                self.spec[i],
                self.last.map(|l| l[i]),
                self.mask[i],
            )
        })
    }
}

/// `last` as rte_flow applies it: masked, and ignored when zero or equal to
/// the masked spec.
fn effective_last(spec: u128, last: u128, mask: u128) -> Option<u128> {
    let (s, l) = (spec & mask, last & mask);
    (l != 0 && l != s).then_some(l)
}

/// One field: masked equality, or masked inclusive range with `last`.
pub fn field_matches(value: u128, spec: u128, last: Option<u128>, mask: u128) -> bool {
    let v = value & mask;
    let s = spec & mask;
    match last.and_then(|l| effective_last(spec, l, mask)) {
        Some(l) => s <= v && v <= l,
        None => v == s,
    }
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[inline]
fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

#[inline]
fn be128(b: &[u8], at: usize) -> Option<u128> {
    Some(u128::from_be_bytes(b.get(at..at + 16)?.try_into().ok()?))
}

fn is_tpid(t: u16) -> bool {
    t == TPID_8021Q || t == TPID_8021AD
}

/// The L3 header as the walk found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    None,
    Ipv4 {
        header: Ipv4,
        /// Where the header's options end.
        payload_ofs: usize,
    },
    Ipv6 {
        header: Ipv6,
    },
}

/// The upper-layer header: protocol and offset, when the packet carries one
/// (not a later fragment, extension headers all present).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4At {
    pub proto: u8,
    pub ofs: usize,
    /// One past the last byte of the IP datagram.
    pub end: usize,
}

/// What the byte walk found, as rte_flow item structs (host order). A
/// header is `Some` only when it is wholly present and well-formed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    pub eth: Option<Eth>,
    pub vlan: Option<Vlan>,
    pub ipv4: Option<Ipv4>,
    pub ipv6: Option<Ipv6>,
    pub tcp: Option<Tcp>,
    pub udp: Option<Udp>,
    pub sctp: Option<Sctp>,
    pub icmp: Option<Icmp>,
    pub icmp6: Option<Icmp6>,
}

impl Headers {
    /// Walks `pkt`. Never fails: what is not there stays `None`.
    pub fn parse(pkt: &[u8]) -> Headers {
        let mut h = Headers::default();
        let (Some(dst), Some(src), Some(outer_type)) = (
            pkt.get(0..6).and_then(|s| <[u8; 6]>::try_from(s).ok()),
            pkt.get(6..12).and_then(|s| <[u8; 6]>::try_from(s).ok()),
            be16(pkt, 12),
        ) else {
            return h;
        };
        h.eth = Some(Eth {
            dst,
            src,
            ether_type: outer_type,
            has_vlan: is_tpid(outer_type),
        });
        // Skip the tags; the first one is the VLAN item's.
        let mut ofs = 14;
        let mut ether_type = outer_type;
        let mut tags = 0;
        while is_tpid(ether_type) {
            let (Some(tci), Some(inner)) = (be16(pkt, ofs), be16(pkt, ofs + 2)) else {
                return h; // a cut tag: nothing behind it is there
            };
            if tags == 0 {
                h.vlan = Some(Vlan {
                    tci,
                    inner_type: inner,
                    has_more_vlan: is_tpid(inner),
                });
            }
            tags += 1;
            ofs += 4;
            ether_type = inner;
            if tags >= MAX_TAGS {
                return h;
            }
        }
        let l4 = match ether_type {
            ETHERTYPE_IPV4 => h.walk_ipv4(pkt, ofs),
            ETHERTYPE_IPV6 => h.walk_ipv6(pkt, ofs),
            _ => None,
        };
        if let Some(at) = l4 {
            h.walk_l4(pkt, at, h.ipv6.is_some());
        }
        h
    }

    fn walk_ipv4(&mut self, pkt: &[u8], ofs: usize) -> Option<L4At> {
        let hdr = pkt.get(ofs..ofs + 20)?;
        let version_ihl = hdr[0];
        let hlen = usize::from(version_ihl & 0x0f) * 4;
        let total_len = usize::from(be16(hdr, 2)?);
        // A datagram its length field does not fit is not parsed: the
        // software datapath (as Open vSwitch) reads no IP field from it, and
        // an IPv4 item matching it would take packets outside its megaflow.
        // Like the software parse (and Open vSwitch), the version field is
        // not read: the ethertype says IPv4.
        if hlen < 20 || total_len < hlen || pkt.len() < ofs + total_len {
            return None;
        }
        let fragment_offset = be16(hdr, 6)?;
        let ip = Ipv4 {
            version_ihl,
            type_of_service: hdr[1],
            packet_id: be16(hdr, 4)?,
            fragment_offset,
            time_to_live: hdr[8],
            next_proto_id: hdr[9],
            src_addr: be32(hdr, 12)?,
            dst_addr: be32(hdr, 16)?,
        };
        self.ipv4 = Some(ip);
        // A non-first fragment carries no L4 header.
        if fragment_offset & 0x1fff != 0 {
            return None;
        }
        Some(L4At {
            proto: ip.next_proto_id,
            ofs: ofs + hlen,
            end: ofs + total_len,
        })
    }

    fn walk_ipv6(&mut self, pkt: &[u8], ofs: usize) -> Option<L4At> {
        let hdr = pkt.get(ofs..ofs + 40)?;
        // The version field is not read, as for IPv4.
        let vtc_flow = be32(hdr, 0)?;
        let payload_len = usize::from(be16(hdr, 4)?);
        // As for IPv4: a datagram cut short is not parsed.
        let end = ofs + 40 + payload_len;
        if pkt.len() < end {
            return None;
        }
        let first_next = hdr[6];
        let mut ip = Ipv6 {
            vtc_flow,
            proto: first_next,
            hop_limits: hdr[7],
            src_addr: be128(hdr, 8)?,
            dst_addr: be128(hdr, 24)?,
            has_frag_ext: false,
        };
        let datagram = pkt.get(..end)?;
        let mut next = first_next;
        let mut p = ofs + 40;
        let mut later_fragment = false;
        let mut complete = false;
        // Every extension header the datagram holds, as the datapath's parse
        // walks them (a fixed bound of 8 here missed the L4 header behind a
        // ninth, which translation's exactness does not allow for). Each is
        // at least 8 bytes, so the walk ends.
        loop {
            let len = match next {
                EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS => {
                    usize::from(*datagram.get(p + 1)?) * 8 + 8
                }
                EXT_AUTH => (usize::from(*datagram.get(p + 1)?) + 2) * 4,
                EXT_FRAGMENT => {
                    ip.has_frag_ext = true;
                    let frag = be16(datagram, p + 2);
                    if frag.is_some_and(|f| f & 0xfff8 != 0) {
                        later_fragment = true;
                    }
                    8
                }
                _ => {
                    complete = true;
                    break;
                }
            };
            if datagram.len() < p + len {
                break;
            }
            next = datagram[p];
            p += len;
            if later_fragment {
                break;
            }
        }
        self.ipv6 = Some(ip);
        (complete && !later_fragment).then_some(L4At {
            proto: next,
            ofs: p,
            end,
        })
    }

    fn walk_l4(&mut self, pkt: &[u8], at: L4At, ipv6: bool) {
        let Some(l4) = pkt.get(at.ofs..at.end) else {
            return;
        };
        match at.proto {
            PROTO_TCP if l4.len() >= 20 => {
                let data_off = usize::from(l4[12] >> 4) * 4;
                if data_off >= 20 && l4.len() >= data_off {
                    self.tcp = Some(Tcp {
                        src_port: u16::from_be_bytes([l4[0], l4[1]]),
                        dst_port: u16::from_be_bytes([l4[2], l4[3]]),
                        tcp_flags: l4[13],
                    });
                }
            }
            PROTO_UDP if l4.len() >= 8 => {
                self.udp = Some(Udp {
                    src_port: u16::from_be_bytes([l4[0], l4[1]]),
                    dst_port: u16::from_be_bytes([l4[2], l4[3]]),
                });
            }
            PROTO_SCTP if l4.len() >= 12 => {
                self.sctp = Some(Sctp {
                    src_port: u16::from_be_bytes([l4[0], l4[1]]),
                    dst_port: u16::from_be_bytes([l4[2], l4[3]]),
                    tag: u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
                });
            }
            PROTO_ICMP if !ipv6 && l4.len() >= 8 => {
                self.icmp = Some(Icmp {
                    icmp_type: l4[0],
                    icmp_code: l4[1],
                    icmp_ident: u16::from_be_bytes([l4[4], l4[5]]),
                    icmp_seq_nb: u16::from_be_bytes([l4[6], l4[7]]),
                });
            }
            PROTO_ICMP6 if ipv6 && l4.len() >= 4 => {
                self.icmp6 = Some(Icmp6 {
                    icmp_type: l4[0],
                    icmp_code: l4[1],
                });
            }
            _ => {}
        }
    }

    /// The field values of the header an item of `kind` describes.
    pub fn fields(&self, kind: ItemKind) -> Option<Fields> {
        match kind {
            ItemKind::Eth => self.eth.map(|h| h.fields()),
            ItemKind::Vlan => self.vlan.map(|h| h.fields()),
            ItemKind::Ipv4 => self.ipv4.map(|h| h.fields()),
            ItemKind::Ipv6 => self.ipv6.map(|h| h.fields()),
            ItemKind::Tcp => self.tcp.map(|h| h.fields()),
            ItemKind::Udp => self.udp.map(|h| h.fields()),
            ItemKind::Sctp => self.sctp.map(|h| h.fields()),
            ItemKind::Icmp => self.icmp.map(|h| h.fields()),
            ItemKind::Icmp6 => self.icmp6.map(|h| h.fields()),
        }
    }

    /// Does one item match this packet?
    pub fn item_matches(&self, item: &Item) -> bool {
        let f = ItemFields::of(item);
        self.fields(f.kind).is_some_and(|values| f.matches(&values))
    }

    /// Does a whole pattern match? An empty pattern matches nothing (a PMD
    /// refuses it).
    pub fn pattern_matches(&self, pattern: &[Item]) -> bool {
        !pattern.is_empty() && pattern.iter().all(|i| self.item_matches(i))
    }
}

/// Does `pattern` match the frame `pkt`?
pub fn pattern_matches(pattern: &[Item], pkt: &[u8]) -> bool {
    Headers::parse(pkt).pattern_matches(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
    const B: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 3);

    fn a6() -> Ipv6Addr {
        "2001:db8::1".parse().unwrap()
    }
    fn b6() -> Ipv6Addr {
        "2001:db8::2".parse().unwrap()
    }

    fn eth_item(spec: Eth, mask: Eth) -> Item {
        Item::Eth(Masked::new(spec, mask))
    }

    fn eth_type(t: u16) -> Item {
        eth_item(
            Eth {
                ether_type: t,
                ..Eth::default()
            },
            Eth {
                ether_type: 0xffff,
                ..Eth::default()
            },
        )
    }

    fn ipv4_frag(spec: u16, last: Option<u16>, mask: u16) -> Item {
        let f = |v| Ipv4 {
            fragment_offset: v,
            ..Ipv4::default()
        };
        Item::Ipv4(Masked {
            spec: f(spec),
            last: last.map(f),
            mask: f(mask),
        })
    }

    fn udp_dst(port: u16) -> Item {
        Item::Udp(Masked::new(
            Udp {
                dst_port: port,
                ..Udp::default()
            },
            Udp {
                dst_port: 0xffff,
                ..Udp::default()
            },
        ))
    }

    fn frag4(flags_frag: u16) -> Vec<u8> {
        let mut h = build::Ipv4Header::new(A, B, PROTO_UDP);
        h.flags_frag = flags_frag;
        let l4 = build::udp(h.pseudo(), 2152, 2152, &[0; 8]);
        build::ethernet(
            build::MAC_DST,
            build::MAC_SRC,
            ETHERTYPE_IPV4,
            &build::ipv4(&h, &l4),
        )
    }

    #[test]
    fn field_semantics_mask_and_range() {
        // Masked equality ignores bits outside the mask, in spec and value.
        assert!(field_matches(0x1234, 0x12ff, None, 0xff00));
        assert!(!field_matches(0x1334, 0x12ff, None, 0xff00));
        // A zero mask matches anything.
        assert!(field_matches(7, 99, Some(100), 0));
        // last: inclusive range of masked values.
        assert!(field_matches(5, 1, Some(10), 0xff));
        assert!(field_matches(10, 1, Some(10), 0xff));
        assert!(!field_matches(11, 1, Some(10), 0xff));
        assert!(!field_matches(0, 1, Some(10), 0xff));
        // last zero or equal to spec: ignored (plain equality).
        assert!(field_matches(3, 3, Some(0), 0xff));
        assert!(!field_matches(4, 3, Some(0), 0xff));
        assert!(!field_matches(4, 3, Some(3), 0xff));
        // last is masked too: 0x1ff & 0xff = 0xff.
        assert!(field_matches(0x80, 0x10, Some(0x1ff), 0xff));
        // last below spec: an empty range.
        assert!(!field_matches(5, 10, Some(2), 0xff));
    }

    #[test]
    fn eth_addresses_type_and_has_vlan() {
        let frame = build::udp4(A, B, 1, 2, &[]);
        let h = Headers::parse(&frame);
        let eth = h.eth.unwrap();
        assert_eq!((eth.dst, eth.src), (build::MAC_DST, build::MAC_SRC));
        assert_eq!((eth.ether_type, eth.has_vlan), (ETHERTYPE_IPV4, false));
        assert!(h.item_matches(&eth_type(ETHERTYPE_IPV4)));
        assert!(!h.item_matches(&eth_type(ETHERTYPE_IPV6)));
        let dst_only = eth_item(
            Eth {
                dst: build::MAC_DST,
                ..Eth::default()
            },
            Eth {
                dst: [0xff; 6],
                ..Eth::default()
            },
        );
        assert!(h.item_matches(&dst_only));
        let src_prefix = eth_item(
            Eth {
                src: [0x02, 0, 0, 0xaa, 0xbb, 0xcc],
                ..Eth::default()
            },
            Eth {
                src: [0xff, 0xff, 0xff, 0, 0, 0],
                ..Eth::default()
            },
        );
        assert!(h.item_matches(&src_prefix));
        let untagged_only = eth_item(
            Eth::default(),
            Eth {
                has_vlan: true,
                ..Eth::default()
            },
        );
        assert!(h.item_matches(&untagged_only));
        let tagged = build::push_tag(&frame, TPID_8021Q, 0x2064);
        assert!(!Headers::parse(&tagged).item_matches(&untagged_only));
        // A runt has no Ethernet header: even an empty ETH item misses.
        assert!(!Headers::parse(&frame[..13]).item_matches(&Item::Eth(Masked::any())));
    }

    #[test]
    fn eth_type_before_vlan_is_the_tpid() {
        let frame = build::push_tag(&build::udp4(A, B, 1, 2, &[]), TPID_8021Q, 0x6064);
        let h = Headers::parse(&frame);
        // An untagged EtherType does not match a tagged frame's type field.
        assert!(!h.item_matches(&eth_type(ETHERTYPE_IPV4)));
        assert!(h.item_matches(&eth_type(TPID_8021Q)));
        let has_vlan = eth_item(
            Eth {
                has_vlan: true,
                ..Eth::default()
            },
            Eth {
                has_vlan: true,
                ..Eth::default()
            },
        );
        assert!(h.item_matches(&has_vlan));
        let vlan = |tci: u16, tci_mask: u16, inner: u16| {
            Item::Vlan(Masked::new(
                Vlan {
                    tci,
                    inner_type: inner,
                    has_more_vlan: false,
                },
                Vlan {
                    tci: tci_mask,
                    inner_type: 0xffff,
                    has_more_vlan: true,
                },
            ))
        };
        // VID 100, PCP 3.
        assert!(h.item_matches(&vlan(100, 0x0fff, ETHERTYPE_IPV4)));
        assert!(h.item_matches(&vlan(0x6064, 0xffff, ETHERTYPE_IPV4)));
        assert!(!h.item_matches(&vlan(101, 0x0fff, ETHERTYPE_IPV4)));
        assert!(!h.item_matches(&vlan(100, 0x0fff, ETHERTYPE_IPV6)));
        // eth / vlan / ipv4 / udp as a pattern.
        let pattern = [
            eth_type(TPID_8021Q),
            vlan(100, 0x0fff, ETHERTYPE_IPV4),
            Item::Ipv4(Masked::any()),
            udp_dst(2),
        ];
        assert!(h.pattern_matches(&pattern));
        // Without a VLAN item, type and has_vlan unmasked: tagged and
        // untagged frames both reach the L3 item.
        let loose = [
            Item::Eth(Masked::any()),
            Item::Ipv4(Masked::any()),
            udp_dst(2),
        ];
        assert!(h.pattern_matches(&loose));
        assert!(pattern_matches(&loose, &build::udp4(A, B, 1, 2, &[])));
        // The VLAN item needs a tag.
        assert!(!pattern_matches(
            &[Item::Eth(Masked::any()), Item::Vlan(Masked::any())],
            &build::udp4(A, B, 1, 2, &[])
        ));
        // QinQ: has_more_vlan, and the outer tag is the VLAN item's.
        let qinq = build::push_tag(&frame, TPID_8021AD, 7);
        let q = Headers::parse(&qinq);
        let v = q.vlan.unwrap();
        assert_eq!(
            (v.tci, v.inner_type, v.has_more_vlan),
            (7, TPID_8021Q, true)
        );
        assert!(q.ipv4.is_some());
        // A cut tag hides what follows.
        assert_eq!(Headers::parse(&frame[..16]).vlan, None);
    }

    #[test]
    fn ipv4_fields_and_fragment_ranges() {
        let mut h = build::Ipv4Header::new(A, B, PROTO_TCP);
        h.tos = 0xb8;
        h.ttl = 9;
        h.id = 0x4242;
        let l4 = build::tcp(h.pseudo(), 80, 443, 0x012, &[], &[]);
        let frame = build::ethernet(
            build::MAC_DST,
            build::MAC_SRC,
            ETHERTYPE_IPV4,
            &build::ipv4(&h, &l4),
        );
        let p = Headers::parse(&frame);
        let ip = p.ipv4.unwrap();
        assert_eq!(ip.version_ihl, 0x45);
        assert_eq!(
            (ip.type_of_service, ip.time_to_live, ip.packet_id),
            (0xb8, 9, 0x4242)
        );
        assert_eq!((ip.src_addr, ip.dst_addr), (u32::from(A), u32::from(B)));
        assert_eq!(ip.next_proto_id, PROTO_TCP);
        let t = p.tcp.unwrap();
        assert_eq!((t.src_port, t.dst_port, t.tcp_flags), (80, 443, 0x12));
        let src_24 = Item::Ipv4(Masked::new(
            Ipv4 {
                src_addr: u32::from(Ipv4Addr::new(10, 1, 2, 0)),
                ..Ipv4::default()
            },
            Ipv4 {
                src_addr: 0xffff_ff00,
                ..Ipv4::default()
            },
        ));
        assert!(p.item_matches(&src_24));
        let proto_udp = Item::Ipv4(Masked::new(
            Ipv4 {
                next_proto_id: PROTO_UDP,
                ..Ipv4::default()
            },
            Ipv4 {
                next_proto_id: 0xff,
                ..Ipv4::default()
            },
        ));
        assert!(!p.item_matches(&proto_udp));

        // fragment_offset: not a fragment (MF=0, offset 0), first fragment
        // (MF=1, offset 0), later fragments (offset 1..=0x1fff, a range).
        let whole = frag4(0x4000); // DF only
        let first = frag4(0x2000);
        let later = frag4(0x2000 | 5);
        let last = frag4(7);
        let not_frag = ipv4_frag(0, None, 0x3fff);
        let first_frag = ipv4_frag(0x2000, None, 0x3fff);
        let later_frag = ipv4_frag(1, Some(0x1fff), 0x1fff);
        let any_frag = ipv4_frag(1, Some(0x3fff), 0x3fff);
        let cases = [
            (&whole, [true, false, false, false]),
            (&first, [false, true, false, true]),
            (&later, [false, false, true, true]),
            (&last, [false, false, true, true]),
        ];
        for (frame, expect) in cases {
            let h = Headers::parse(frame);
            let got = [&not_frag, &first_frag, &later_frag, &any_frag].map(|i| h.item_matches(i));
            assert_eq!(got, expect, "{:#06x}", h.ipv4.unwrap().fragment_offset);
        }
        // A later fragment has no UDP header to match; the first one has.
        assert!(Headers::parse(&first).udp.is_some());
        assert!(Headers::parse(&later).udp.is_none());
        assert!(!pattern_matches(
            &[
                eth_type(ETHERTYPE_IPV4),
                Item::Ipv4(Masked::any()),
                udp_dst(2152)
            ],
            &later
        ));
    }

    #[test]
    fn malformed_ipv4_is_not_ipv4() {
        let frame = build::udp4(A, B, 1, 2, &[]);
        // The version field is not read (as the software parse and OVS).
        let mut bad_version = frame.clone();
        bad_version[14] = 0x65;
        assert!(Headers::parse(&bad_version).ipv4.is_some());
        let mut v6 = build::udp6(a6(), b6(), 1, 2, &[]);
        v6[14] = 0x00;
        assert!(Headers::parse(&v6).ipv6.is_some());
        let mut short_ihl = frame.clone();
        short_ihl[14] = 0x44;
        assert_eq!(Headers::parse(&short_ihl).ipv4, None);
        // Cut inside the IPv4 header, then inside the UDP header: the
        // datagram is not whole, so not IPv4 (the software parse reads no IP
        // field from it either).
        assert_eq!(Headers::parse(&frame[..30]).ipv4, None);
        assert_eq!(Headers::parse(&frame[..38]).ipv4, None);
        // A whole datagram too short for its UDP header.
        let mut short = frame[..38].to_vec();
        short[16..18].copy_from_slice(&24u16.to_be_bytes());
        let cut = Headers::parse(&short);
        assert!(cut.ipv4.is_some() && cut.udp.is_none());
        // The IP total length bounds the L4 header, not the frame's padding.
        let mut lying = frame.clone();
        lying[16..18].copy_from_slice(&24u16.to_be_bytes());
        assert!(Headers::parse(&lying).udp.is_none());
    }

    #[test]
    fn ipv6_first_next_header_and_frag_ext() {
        let h6 = build::Ipv6Header::new(a6(), b6(), EXT_HOP_BY_HOP);
        let udp = build::udp(h6.pseudo(), 5000, 53, &[1, 2, 3]);
        let mut payload = build::ipv6_ext(EXT_HOP_BY_HOP, EXT_FRAGMENT);
        payload.extend(build::ipv6_frag(PROTO_UDP, 0, true, 9));
        payload.extend(&udp);
        let first = build::ethernet(
            build::MAC_DST,
            build::MAC_SRC,
            ETHERTYPE_IPV6,
            &build::ipv6(&h6, &payload),
        );
        let p = Headers::parse(&first);
        let ip = p.ipv6.unwrap();
        assert_eq!(ip.proto, EXT_HOP_BY_HOP, "proto is the first next header");
        assert!(ip.has_frag_ext);
        assert_eq!(p.udp.unwrap().dst_port, 53);
        let proto = |v: u8| {
            Item::Ipv6(Box::new(Masked::new(
                Ipv6 {
                    proto: v,
                    ..Ipv6::default()
                },
                Ipv6 {
                    proto: 0xff,
                    ..Ipv6::default()
                },
            )))
        };
        assert!(p.item_matches(&proto(EXT_HOP_BY_HOP)));
        assert!(!p.item_matches(&proto(PROTO_UDP)));
        let frag_ext = |v: bool| {
            Item::Ipv6(Box::new(Masked::new(
                Ipv6 {
                    has_frag_ext: v,
                    ..Ipv6::default()
                },
                Ipv6 {
                    has_frag_ext: true,
                    ..Ipv6::default()
                },
            )))
        };
        assert!(p.item_matches(&frag_ext(true)));
        assert!(!p.item_matches(&frag_ext(false)));

        // A later fragment: no UDP.
        let mut payload = build::ipv6_ext(EXT_DEST_OPTS, EXT_FRAGMENT);
        payload.extend(build::ipv6_frag(PROTO_UDP, 100, false, 9));
        payload.extend(&[0u8; 16]);
        let h6 = build::Ipv6Header::new(a6(), b6(), EXT_DEST_OPTS);
        let later = build::ethernet(
            build::MAC_DST,
            build::MAC_SRC,
            ETHERTYPE_IPV6,
            &build::ipv6(&h6, &payload),
        );
        let p = Headers::parse(&later);
        assert!(p.ipv6.unwrap().has_frag_ext);
        assert!(p.udp.is_none());

        // Plain TCP over IPv6 with an AH and routing header before it.
        let h6 = build::Ipv6Header::new(a6(), b6(), EXT_AUTH);
        let mut payload = build::ipv6_ext(EXT_AUTH, EXT_ROUTING);
        payload.extend(build::ipv6_ext(EXT_ROUTING, PROTO_TCP));
        payload.extend(build::tcp(h6.pseudo(), 1, 2, 0x10, &[], &[]));
        let frame = build::ethernet(
            build::MAC_DST,
            build::MAC_SRC,
            ETHERTYPE_IPV6,
            &build::ipv6(&h6, &payload),
        );
        let p = Headers::parse(&frame);
        assert!(!p.ipv6.unwrap().has_frag_ext);
        assert_eq!(p.tcp.unwrap().dst_port, 2);

        // Addresses, traffic class and flow label.
        let mut h6 = build::Ipv6Header::new(a6(), b6(), PROTO_UDP);
        h6.traffic_class = 0x2e;
        h6.flow_label = 0xabcde;
        h6.hop_limit = 3;
        let frame = build::ethernet(
            build::MAC_DST,
            build::MAC_SRC,
            ETHERTYPE_IPV6,
            &build::ipv6(&h6, &build::udp(h6.pseudo(), 1, 2, &[])),
        );
        let ip = Headers::parse(&frame).ipv6.unwrap();
        assert_eq!(ip.vtc_flow, 0x62ea_bcde);
        assert_eq!(ip.hop_limits, 3);
        assert_eq!(
            (ip.src_addr, ip.dst_addr),
            (u128::from(a6()), u128::from(b6()))
        );
        let src_64 = Item::Ipv6(Box::new(Masked::new(
            Ipv6 {
                src_addr: u128::from(a6()) | 0xffff,
                ..Ipv6::default()
            },
            Ipv6 {
                src_addr: u128::MAX << 64,
                ..Ipv6::default()
            },
        )));
        assert!(Headers::parse(&frame).item_matches(&src_64));
    }

    #[test]
    fn l4_items() {
        let tcp = build::tcp4(A, B, 1000, 80);
        let udp = build::udp4(A, B, 2152, 2152, &[0; 4]);
        let tcp_any = Item::Tcp(Masked::any());
        let udp_any = Item::Udp(Masked::any());
        assert!(Headers::parse(&tcp).item_matches(&tcp_any));
        assert!(!Headers::parse(&tcp).item_matches(&udp_any));
        assert!(Headers::parse(&udp).item_matches(&udp_dst(2152)));
        assert!(!Headers::parse(&udp).item_matches(&udp_dst(2123)));
        let syn = Item::Tcp(Masked::new(
            Tcp {
                tcp_flags: 0x02,
                ..Tcp::default()
            },
            Tcp {
                tcp_flags: 0x02,
                ..Tcp::default()
            },
        ));
        assert!(Headers::parse(&tcp).item_matches(&syn));
        let port_range = Item::Tcp(Masked::range(
            Tcp {
                dst_port: 1,
                ..Tcp::default()
            },
            Tcp {
                dst_port: 1023,
                ..Tcp::default()
            },
            Tcp {
                dst_port: 0xffff,
                ..Tcp::default()
            },
        ));
        assert!(Headers::parse(&tcp).item_matches(&port_range));
        // SCTP with its verification tag.
        let h = build::Ipv4Header::new(A, B, PROTO_SCTP);
        let sctp = build::ethernet(
            build::MAC_DST,
            build::MAC_SRC,
            ETHERTYPE_IPV4,
            &build::ipv4(&h, &build::sctp(38412, 38412, &[])),
        );
        let s = Headers::parse(&sctp).sctp.unwrap();
        assert_eq!((s.src_port, s.dst_port, s.tag), (38412, 38412, 0x1234_5678));
        // ICMP echo with ident and sequence.
        let h = build::Ipv4Header::new(A, B, PROTO_ICMP);
        let icmp = build::ethernet(
            build::MAC_DST,
            build::MAC_SRC,
            ETHERTYPE_IPV4,
            &build::ipv4(&h, &build::icmp(8, 0, &[0x12, 0x34, 0, 7])),
        );
        let i = Headers::parse(&icmp).icmp.unwrap();
        assert_eq!(
            (i.icmp_type, i.icmp_code, i.icmp_ident, i.icmp_seq_nb),
            (8, 0, 0x1234, 7)
        );
        // ICMP6 only after IPv6; ICMP only after IPv4.
        let h6 = build::Ipv6Header::new(a6(), b6(), PROTO_ICMP6);
        let icmp6 = build::ethernet(
            build::MAC_DST,
            build::MAC_SRC,
            ETHERTYPE_IPV6,
            &build::ipv6(&h6, &build::icmpv6(h6.pseudo(), 135, 0, &[0; 20])),
        );
        let p = Headers::parse(&icmp6);
        assert_eq!(p.icmp6.map(|i| i.icmp_type), Some(135));
        assert!(p.icmp.is_none());
        let h6 = build::Ipv6Header::new(a6(), b6(), PROTO_ICMP);
        let icmp_in_v6 = build::ethernet(
            build::MAC_DST,
            build::MAC_SRC,
            ETHERTYPE_IPV6,
            &build::ipv6(&h6, &build::icmp(8, 0, &[0; 4])),
        );
        assert!(Headers::parse(&icmp_in_v6).icmp.is_none());
        // A TCP header whose data offset reaches past the segment.
        let mut bad = tcp.clone();
        bad[14 + 20 + 12] = 0xf0;
        assert!(Headers::parse(&bad).tcp.is_none());
    }

    #[test]
    fn range_detection() {
        let f = ItemFields::of(&ipv4_frag(1, Some(0x1fff), 0x1fff));
        assert!(f.has_range());
        let f = ItemFields::of(&ipv4_frag(1, Some(1), 0x1fff));
        assert!(!f.has_range());
        let f = ItemFields::of(&ipv4_frag(0x2001, Some(0x3fff), 0x0fff));
        assert_eq!(f.masked_spec()[3], 1);
    }

    #[test]
    fn never_panics_on_any_prefix() {
        let h6 = build::Ipv6Header::new(a6(), b6(), EXT_HOP_BY_HOP);
        let mut payload = build::ipv6_ext(EXT_HOP_BY_HOP, EXT_FRAGMENT);
        payload.extend(build::ipv6_frag(PROTO_TCP, 0, true, 9));
        payload.extend(build::tcp(h6.pseudo(), 1, 2, 0x10, &[], &[]));
        let frames = [
            build::push_tag(&build::tcp4(A, B, 1, 2), TPID_8021Q, 5),
            build::ethernet(
                build::MAC_DST,
                build::MAC_SRC,
                ETHERTYPE_IPV6,
                &build::ipv6(&h6, &payload),
            ),
        ];
        for f in &frames {
            for n in 0..=f.len() {
                let _ = Headers::parse(&f[..n]);
            }
        }
    }
}
