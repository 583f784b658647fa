//! A Rust model of DPDK 22.11's generic flow API (`rte_flow`), limited to the
//! items and actions flowmark uses, and a renderer to dpdk-testpmd's
//! `flow create` syntax (the form OVS logs its rules in).
//!
//! Header fields keep the names `rte_flow.h` / `rte_ip.h` / `rte_tcp.h` give
//! them, in host byte order (the DPDK backend converts to network order).
//! A field is modelled only when testpmd 22.11 has a token for it, so that
//! every rule can be rendered; fields testpmd cannot set (IPv4
//! `total_length`/`hdr_checksum`, IPv6 `payload_len`, TCP `data_off`, the
//! IPv6 extension flags other than `has_frag_ext`) are left out on purpose.
//!
//! Semantics kept by this model (rte_flow 22.11):
//! - a field takes part in the match only where its mask has 1 bits;
//! - `last`, when present, turns a field into the range `spec..=last` (both
//!   masked); a `last` field that is zero or equal to `spec` is ignored;
//! - the ETH `ether_type` is the TPID when a VLAN item follows, else the
//!   EtherType of an untagged frame; leaving it and `has_vlan` unmasked
//!   matches tagged and untagged frames alike;
//! - the IPv6 `proto` is the *first* next header (an extension header when
//!   one is present), whereas an L4 item matches the upper-layer header.

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr};

use thiserror::Error;

/// The longest line testpmd's command line reads (its buffer is 512 bytes
/// with the terminating NUL); a longer one is cut and refused.
pub const TESTPMD_MAX_LINE: usize = 511;

/// Flow rule attributes (`struct rte_flow_attr`, without egress/transfer,
/// which flowmark never uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Attr {
    pub ingress: bool,
    pub group: u32,
    pub priority: u32,
}

impl Attr {
    /// What every flowmark rule uses: ingress, group 0, priority 0.
    pub const INGRESS: Attr = Attr {
        ingress: true,
        group: 0,
        priority: 0,
    };
}

/// `struct rte_flow_item_eth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Eth {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// `type`: EtherType, or TPID when a VLAN item follows.
    pub ether_type: u16,
    /// At least one VLAN tag is present (a 1-bit field; in a mask, `true`
    /// means "matters").
    pub has_vlan: bool,
}

/// `struct rte_flow_item_vlan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Vlan {
    /// PCP (3 bits), DEI (1), VID (12).
    pub tci: u16,
    /// EtherType (or TPID) after this tag.
    pub inner_type: u16,
    pub has_more_vlan: bool,
}

/// `struct rte_flow_item_ipv4` (`struct rte_ipv4_hdr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ipv4 {
    pub version_ihl: u8,
    pub type_of_service: u8,
    pub packet_id: u16,
    /// Flags (reserved 0x8000, DF 0x4000, MF 0x2000) and offset (0x1fff).
    pub fragment_offset: u16,
    pub time_to_live: u8,
    pub next_proto_id: u8,
    pub src_addr: u32,
    pub dst_addr: u32,
}

/// IPv4 `fragment_offset` bits.
pub mod ipv4_frag {
    pub const DF: u16 = 0x4000;
    pub const MF: u16 = 0x2000;
    pub const OFFSET: u16 = 0x1fff;
}

/// `struct rte_flow_item_ipv6` (`struct rte_ipv6_hdr` + extension flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ipv6 {
    /// Version (4 bits), traffic class (8), flow label (20).
    pub vtc_flow: u32,
    /// The first next header.
    pub proto: u8,
    pub hop_limits: u8,
    pub src_addr: u128,
    pub dst_addr: u128,
    /// The header chain contains a Fragment extension header.
    pub has_frag_ext: bool,
}

/// IPv6 `vtc_flow` layout.
pub mod ipv6_vtc {
    pub const TC_SHIFT: u32 = 20;
    pub const TC_MASK: u32 = 0x0ff0_0000;
    pub const FLOW_MASK: u32 = 0x000f_ffff;
}

/// `struct rte_flow_item_tcp` (the fields testpmd can set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    /// FIN 0x01 ... CWR 0x80.
    pub tcp_flags: u8,
}

/// `struct rte_flow_item_udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Udp {
    pub src_port: u16,
    pub dst_port: u16,
}

/// `struct rte_flow_item_sctp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Sctp {
    pub src_port: u16,
    pub dst_port: u16,
    pub tag: u32,
}

/// `struct rte_flow_item_icmp` (`struct rte_icmp_hdr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Icmp {
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub icmp_ident: u16,
    pub icmp_seq_nb: u16,
}

/// `struct rte_flow_item_icmp6` (`type` and `code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Icmp6 {
    pub icmp_type: u8,
    pub icmp_code: u8,
}

/// One item's spec, optional range end, and mask (`rte_flow_item`'s
/// `spec`/`last`/`mask`). Spec bits outside the mask do not matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Masked<T> {
    pub spec: T,
    pub last: Option<T>,
    pub mask: T,
}

impl<T> Masked<T> {
    pub fn new(spec: T, mask: T) -> Self {
        Masked {
            spec,
            last: None,
            mask,
        }
    }

    pub fn range(spec: T, last: T, mask: T) -> Self {
        Masked {
            spec,
            last: Some(last),
            mask,
        }
    }
}

impl<T: Default> Masked<T> {
    /// An item that matches the header's presence only (all-zero mask).
    pub fn any() -> Self {
        Masked::default()
    }
}

/// A pattern item. The END item is implicit at the end of a pattern.
/// IPv6 is boxed: its 144 bytes (spec, last and mask of two 128-bit
/// addresses) would size every item, and the emulated NIC keeps each
/// rule's pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Item {
    Eth(Masked<Eth>),
    Vlan(Masked<Vlan>),
    Ipv4(Masked<Ipv4>),
    Ipv6(Box<Masked<Ipv6>>),
    Tcp(Masked<Tcp>),
    Udp(Masked<Udp>),
    Sctp(Masked<Sctp>),
    Icmp(Masked<Icmp>),
    Icmp6(Masked<Icmp6>),
}

impl Item {
    /// The item's testpmd token (also its name in error messages).
    pub fn token(&self) -> &'static str {
        match self {
            Item::Eth(_) => Eth::TOKEN,
            Item::Vlan(_) => Vlan::TOKEN,
            Item::Ipv4(_) => Ipv4::TOKEN,
            Item::Ipv6(_) => Ipv6::TOKEN,
            Item::Tcp(_) => Tcp::TOKEN,
            Item::Udp(_) => Udp::TOKEN,
            Item::Sctp(_) => Sctp::TOKEN,
            Item::Icmp(_) => Icmp::TOKEN,
            Item::Icmp6(_) => Icmp6::TOKEN,
        }
    }

    /// The item's fields as (name, spec, effective range end, mask), spec
    /// and range end already masked. The range end is `None` where `last`
    /// is absent, zero, or equal to the spec (rte_flow ignores it there).
    pub fn fields(&self) -> Vec<ItemField> {
        match self {
            Item::Eth(m) => item_fields(m),
            Item::Vlan(m) => item_fields(m),
            Item::Ipv4(m) => item_fields(m),
            Item::Ipv6(m) => item_fields(m),
            Item::Tcp(m) => item_fields(m),
            Item::Udp(m) => item_fields(m),
            Item::Sctp(m) => item_fields(m),
            Item::Icmp(m) => item_fields(m),
            Item::Icmp6(m) => item_fields(m),
        }
    }

    /// True when some field is matched as a range (`last`).
    pub fn has_range(&self) -> bool {
        self.has_last() && self.fields().iter().any(|f| f.last.is_some())
    }

    /// True when the item carries a `last` at all (cheap: no field list).
    pub fn has_last(&self) -> bool {
        match self {
            Item::Eth(m) => m.last.is_some(),
            Item::Vlan(m) => m.last.is_some(),
            Item::Ipv4(m) => m.last.is_some(),
            Item::Ipv6(m) => m.last.is_some(),
            Item::Tcp(m) => m.last.is_some(),
            Item::Udp(m) => m.last.is_some(),
            Item::Sctp(m) => m.last.is_some(),
            Item::Icmp(m) => m.last.is_some(),
            Item::Icmp6(m) => m.last.is_some(),
        }
    }

    fn render(&self, out: &mut String) -> Result<(), RenderError> {
        out.push_str(self.token());
        for f in self.fields() {
            if f.mask == 0 {
                continue;
            }
            let Some(token) = f.token else {
                return Err(RenderError::NoToken {
                    item: self.token(),
                    field: f.name,
                });
            };
            let full = full_mask(f.bits);
            let v = |x| FieldText(f.kind, x);
            if let Some(last) = f.last {
                // testpmd fills unset masks from the item's default mask,
                // so a range always carries its mask explicitly.
                let _ = write!(
                    out,
                    " {token} spec {} {token} last {} {token} mask {}",
                    v(f.spec),
                    v(last),
                    v(f.mask)
                );
            } else if f.mask == full {
                let _ = write!(out, " {token} is {}", v(f.spec));
            } else if let Some(len) = prefix_len(f.mask, f.bits).filter(|_| f.kind.has_prefix()) {
                let _ = write!(out, " {token} spec {} {token} prefix {len}", v(f.spec));
            } else {
                let _ = write!(
                    out,
                    " {token} spec {} {token} mask {}",
                    v(f.spec),
                    v(f.mask)
                );
            }
        }
        Ok(())
    }
}

/// One field of an item, flattened for rendering and checking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemField {
    /// The C field name (for messages).
    pub name: &'static str,
    /// testpmd's token, `None` when testpmd cannot set this part.
    pub token: Option<&'static str>,
    pub kind: FieldKind,
    pub bits: u32,
    pub spec: u128,
    pub last: Option<u128>,
    pub mask: u128,
}

/// How a field's value is written in testpmd syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Dec,
    Hex,
    EtherType,
    Flag,
    Mac,
    Ipv4,
    Ipv6,
}

impl FieldKind {
    /// testpmd's `prefix` is used for addresses only (where it reads well).
    fn has_prefix(self) -> bool {
        matches!(self, FieldKind::Mac | FieldKind::Ipv4 | FieldKind::Ipv6)
    }
}

struct FieldText(FieldKind, u128);

impl fmt::Display for FieldText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.1;
        match self.0 {
            FieldKind::Dec => write!(f, "{v}"),
            FieldKind::Hex => write!(f, "{v:#x}"),
            FieldKind::EtherType => write!(f, "{v:#06x}"),
            FieldKind::Flag => write!(f, "{}", u8::from(v != 0)),
            FieldKind::Mac => f.write_str(&fallback::key::fmt_mac(v as u64)),
            FieldKind::Ipv4 => write!(f, "{}", Ipv4Addr::from(v as u32)),
            FieldKind::Ipv6 => write!(f, "{}", Ipv6Addr::from(v)),
        }
    }
}

fn full_mask(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// The prefix length when `mask` is leading ones within `bits`.
fn prefix_len(mask: u128, bits: u32) -> Option<u32> {
    let full = full_mask(bits);
    let ones = (mask << (128 - bits)).leading_ones();
    let expect = if ones == 0 {
        0
    } else if ones >= bits {
        full
    } else {
        full & !(full >> ones)
    };
    (mask == expect).then_some(ones)
}

/// A MAC address as a 48-bit number (network order in the low bits).
pub fn mac_to_u128(mac: [u8; 6]) -> u128 {
    mac.iter().fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
}

/// The inverse of [`mac_to_u128`].
pub fn mac_from_u128(v: u128) -> [u8; 6] {
    let b = (v as u64).to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// A header whose fields can be listed for rendering.
trait Header: Copy {
    const TOKEN: &'static str;
    /// (C name, testpmd token, kind, width, value), in testpmd's order.
    fn raw_fields(&self) -> Vec<RawField>;
}

type RawField = (&'static str, Option<&'static str>, FieldKind, u32, u128);

fn item_fields<T: Header>(m: &Masked<T>) -> Vec<ItemField> {
    let spec = m.spec.raw_fields();
    let mask = m.mask.raw_fields();
    let last = m.last.map(|l| l.raw_fields());
    spec.iter()
        .zip(mask.iter())
        .enumerate()
        .map(|(i, (s, k))| {
            let (name, token, kind, bits, sv) = *s;
            let kv = k.4;
            let spec = sv & kv;
            let last = last
                .as_ref()
                .and_then(|l| l.get(i))
                .map(|l| l.4 & kv)
                .filter(|l| *l != 0 && *l != spec);
            ItemField {
                name,
                token,
                kind,
                bits,
                spec,
                last,
                mask: kv,
            }
        })
        .collect()
}

impl Header for Eth {
    const TOKEN: &'static str = "eth";
    fn raw_fields(&self) -> Vec<RawField> {
        vec![
            (
                "dst",
                Some("dst"),
                FieldKind::Mac,
                48,
                mac_to_u128(self.dst),
            ),
            (
                "src",
                Some("src"),
                FieldKind::Mac,
                48,
                mac_to_u128(self.src),
            ),
            (
                "type",
                Some("type"),
                FieldKind::EtherType,
                16,
                self.ether_type.into(),
            ),
            (
                "has_vlan",
                Some("has_vlan"),
                FieldKind::Flag,
                1,
                self.has_vlan.into(),
            ),
        ]
    }
}

impl Header for Vlan {
    const TOKEN: &'static str = "vlan";
    fn raw_fields(&self) -> Vec<RawField> {
        vec![
            ("tci", Some("tci"), FieldKind::Hex, 16, self.tci.into()),
            (
                "inner_type",
                Some("inner_type"),
                FieldKind::EtherType,
                16,
                self.inner_type.into(),
            ),
            (
                "has_more_vlan",
                Some("has_more_vlan"),
                FieldKind::Flag,
                1,
                self.has_more_vlan.into(),
            ),
        ]
    }
}

impl Header for Ipv4 {
    const TOKEN: &'static str = "ipv4";
    fn raw_fields(&self) -> Vec<RawField> {
        vec![
            (
                "version_ihl",
                Some("version_ihl"),
                FieldKind::Hex,
                8,
                self.version_ihl.into(),
            ),
            (
                "type_of_service",
                Some("tos"),
                FieldKind::Hex,
                8,
                self.type_of_service.into(),
            ),
            (
                "packet_id",
                Some("packet_id"),
                FieldKind::Dec,
                16,
                self.packet_id.into(),
            ),
            (
                "fragment_offset",
                Some("fragment_offset"),
                FieldKind::Hex,
                16,
                self.fragment_offset.into(),
            ),
            (
                "time_to_live",
                Some("ttl"),
                FieldKind::Dec,
                8,
                self.time_to_live.into(),
            ),
            (
                "next_proto_id",
                Some("proto"),
                FieldKind::Dec,
                8,
                self.next_proto_id.into(),
            ),
            (
                "src_addr",
                Some("src"),
                FieldKind::Ipv4,
                32,
                self.src_addr.into(),
            ),
            (
                "dst_addr",
                Some("dst"),
                FieldKind::Ipv4,
                32,
                self.dst_addr.into(),
            ),
        ]
    }
}

impl Header for Ipv6 {
    const TOKEN: &'static str = "ipv6";
    fn raw_fields(&self) -> Vec<RawField> {
        let vtc = self.vtc_flow;
        vec![
            // testpmd sets vtc_flow through `tc` and `flow`; the version
            // nibble has no token.
            (
                "vtc_flow version",
                None,
                FieldKind::Hex,
                4,
                (vtc >> 28).into(),
            ),
            (
                "vtc_flow traffic class",
                Some("tc"),
                FieldKind::Hex,
                8,
                ((vtc & ipv6_vtc::TC_MASK) >> ipv6_vtc::TC_SHIFT).into(),
            ),
            (
                "vtc_flow flow label",
                Some("flow"),
                FieldKind::Hex,
                20,
                (vtc & ipv6_vtc::FLOW_MASK).into(),
            ),
            ("proto", Some("proto"), FieldKind::Dec, 8, self.proto.into()),
            (
                "hop_limits",
                Some("hop"),
                FieldKind::Dec,
                8,
                self.hop_limits.into(),
            ),
            ("src_addr", Some("src"), FieldKind::Ipv6, 128, self.src_addr),
            ("dst_addr", Some("dst"), FieldKind::Ipv6, 128, self.dst_addr),
            (
                "has_frag_ext",
                Some("has_frag_ext"),
                FieldKind::Flag,
                1,
                self.has_frag_ext.into(),
            ),
        ]
    }
}

impl Header for Tcp {
    const TOKEN: &'static str = "tcp";
    fn raw_fields(&self) -> Vec<RawField> {
        vec![
            (
                "src_port",
                Some("src"),
                FieldKind::Dec,
                16,
                self.src_port.into(),
            ),
            (
                "dst_port",
                Some("dst"),
                FieldKind::Dec,
                16,
                self.dst_port.into(),
            ),
            (
                "tcp_flags",
                Some("flags"),
                FieldKind::Hex,
                8,
                self.tcp_flags.into(),
            ),
        ]
    }
}

impl Header for Udp {
    const TOKEN: &'static str = "udp";
    fn raw_fields(&self) -> Vec<RawField> {
        vec![
            (
                "src_port",
                Some("src"),
                FieldKind::Dec,
                16,
                self.src_port.into(),
            ),
            (
                "dst_port",
                Some("dst"),
                FieldKind::Dec,
                16,
                self.dst_port.into(),
            ),
        ]
    }
}

impl Header for Sctp {
    const TOKEN: &'static str = "sctp";
    fn raw_fields(&self) -> Vec<RawField> {
        vec![
            (
                "src_port",
                Some("src"),
                FieldKind::Dec,
                16,
                self.src_port.into(),
            ),
            (
                "dst_port",
                Some("dst"),
                FieldKind::Dec,
                16,
                self.dst_port.into(),
            ),
            ("tag", Some("tag"), FieldKind::Dec, 32, self.tag.into()),
        ]
    }
}

impl Header for Icmp {
    const TOKEN: &'static str = "icmp";
    fn raw_fields(&self) -> Vec<RawField> {
        vec![
            (
                "icmp_type",
                Some("type"),
                FieldKind::Dec,
                8,
                self.icmp_type.into(),
            ),
            (
                "icmp_code",
                Some("code"),
                FieldKind::Dec,
                8,
                self.icmp_code.into(),
            ),
            (
                "icmp_ident",
                Some("ident"),
                FieldKind::Dec,
                16,
                self.icmp_ident.into(),
            ),
            (
                "icmp_seq_nb",
                Some("seq"),
                FieldKind::Dec,
                16,
                self.icmp_seq_nb.into(),
            ),
        ]
    }
}

impl Header for Icmp6 {
    const TOKEN: &'static str = "icmp6";
    fn raw_fields(&self) -> Vec<RawField> {
        vec![
            (
                "type",
                Some("type"),
                FieldKind::Dec,
                8,
                self.icmp_type.into(),
            ),
            (
                "code",
                Some("code"),
                FieldKind::Dec,
                8,
                self.icmp_code.into(),
            ),
        ]
    }
}

/// RSS hash types (`RTE_ETH_RSS_*`), by their testpmd names. An empty list
/// asks for the PMD's default, as OVS does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RssType {
    Ipv4,
    Ipv4Tcp,
    Ipv4Udp,
    Ipv4Sctp,
    Ipv6,
    Ipv6Tcp,
    Ipv6Udp,
    Ipv6Sctp,
}

impl RssType {
    pub const ALL: [RssType; 8] = [
        RssType::Ipv4,
        RssType::Ipv4Tcp,
        RssType::Ipv4Udp,
        RssType::Ipv4Sctp,
        RssType::Ipv6,
        RssType::Ipv6Tcp,
        RssType::Ipv6Udp,
        RssType::Ipv6Sctp,
    ];

    pub fn token(self) -> &'static str {
        match self {
            RssType::Ipv4 => "ipv4",
            RssType::Ipv4Tcp => "ipv4-tcp",
            RssType::Ipv4Udp => "ipv4-udp",
            RssType::Ipv4Sctp => "ipv4-sctp",
            RssType::Ipv6 => "ipv6",
            RssType::Ipv6Tcp => "ipv6-tcp",
            RssType::Ipv6Udp => "ipv6-udp",
            RssType::Ipv6Sctp => "ipv6-sctp",
        }
    }
}

/// An action. The END action is implicit at the end of the list.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Attach `id` to the packet (`RTE_MBUF_F_RX_FDIR_ID`, `hash.fdir.hi`).
    Mark {
        id: u32,
    },
    /// Spread over `queues` by the hash of `types` (empty: PMD default).
    Rss {
        queues: Vec<u16>,
        types: Vec<RssType>,
    },
    Queue {
        index: u16,
    },
    Drop,
    Count,
}

impl Action {
    pub fn token(&self) -> &'static str {
        match self {
            Action::Mark { .. } => "mark",
            Action::Rss { .. } => "rss",
            Action::Queue { .. } => "queue",
            Action::Drop => "drop",
            Action::Count => "count",
        }
    }

    /// True for actions that decide where the packet goes.
    pub fn is_fate(&self) -> bool {
        matches!(
            self,
            Action::Rss { .. } | Action::Queue { .. } | Action::Drop
        )
    }

    fn render(&self, out: &mut String) {
        match self {
            Action::Mark { id } => {
                let _ = write!(out, "mark id {id}");
            }
            Action::Rss { queues, types } => {
                out.push_str("rss");
                if !types.is_empty() {
                    out.push_str(" types");
                    for t in types {
                        out.push(' ');
                        out.push_str(t.token());
                    }
                    out.push_str(" end");
                }
                if !queues.is_empty() {
                    out.push_str(" queues");
                    for q in queues {
                        let _ = write!(out, " {q}");
                    }
                    out.push_str(" end");
                }
            }
            Action::Queue { index } => {
                let _ = write!(out, "queue index {index}");
            }
            Action::Drop => out.push_str("drop"),
            Action::Count => out.push_str("count"),
        }
    }
}

/// A flow rule: attributes, pattern, actions (END implicit in both lists).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub attr: Attr,
    pub pattern: Vec<Item>,
    pub actions: Vec<Action>,
}

/// Why a rule has no testpmd line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RenderError {
    #[error(
        "{item} field {field} is masked but testpmd has no token for it; \
         clear that mask or extend the renderer"
    )]
    NoToken {
        item: &'static str,
        field: &'static str,
    },
    #[error(
        "the testpmd line is {len} characters, over testpmd's {max}; \
         use prefixes or fewer queues"
    )]
    TooLong { len: usize, max: usize },
}

impl Rule {
    /// The MARK id, if the rule marks.
    pub fn mark(&self) -> Option<u32> {
        self.actions.iter().find_map(|a| match a {
            Action::Mark { id } => Some(*id),
            _ => None,
        })
    }

    /// Sets the id of the rule's MARK action (a translation is made once
    /// and its mark filled in when one is allocated). False when the rule
    /// has no MARK action.
    pub fn set_mark(&mut self, new_id: u32) -> bool {
        let mut found = false;
        for a in &mut self.actions {
            if let Action::Mark { id } = a {
                *id = new_id;
                found = true;
            }
        }
        found
    }

    /// The rule as dpdk-testpmd's `flow create PORT ...` command.
    pub fn testpmd_create(&self, port_id: u16) -> Result<String, RenderError> {
        self.testpmd_command("create", port_id)
    }

    /// The rule as dpdk-testpmd's `flow validate PORT ...` command.
    pub fn testpmd_validate(&self, port_id: u16) -> Result<String, RenderError> {
        self.testpmd_command("validate", port_id)
    }

    fn testpmd_command(&self, verb: &str, port_id: u16) -> Result<String, RenderError> {
        let mut out = format!("flow {verb} {port_id}");
        if self.attr.ingress {
            out.push_str(" ingress");
        }
        let _ = write!(
            out,
            " priority {} group {} pattern",
            self.attr.priority, self.attr.group
        );
        for item in &self.pattern {
            out.push(' ');
            item.render(&mut out)?;
            out.push_str(" /");
        }
        out.push_str(" end actions");
        for action in &self.actions {
            out.push(' ');
            action.render(&mut out);
            out.push_str(" /");
        }
        out.push_str(" end");
        if out.len() > TESTPMD_MAX_LINE {
            return Err(RenderError::TooLong {
                len: out.len(),
                max: TESTPMD_MAX_LINE,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ovs_logged_line_round_trips() {
        let rule = Rule {
            attr: Attr::INGRESS,
            pattern: vec![
                Item::Eth(Masked::new(
                    Eth {
                        ether_type: 0x0800,
                        ..Eth::default()
                    },
                    Eth {
                        ether_type: 0xffff,
                        has_vlan: true,
                        ..Eth::default()
                    },
                )),
                Item::Ipv4(Masked::new(
                    Ipv4::default(),
                    Ipv4 {
                        fragment_offset: 0xffff,
                        ..Ipv4::default()
                    },
                )),
            ],
            actions: vec![
                Action::Mark { id: 1 },
                Action::Rss {
                    queues: vec![],
                    types: vec![],
                },
            ],
        };
        assert_eq!(
            rule.testpmd_create(1).unwrap(),
            "flow create 1 ingress priority 0 group 0 pattern eth type is 0x0800 \
             has_vlan is 0 / ipv4 fragment_offset is 0x0 / end actions mark id 1 / rss / end"
        );
    }

    #[test]
    fn prefix_detection() {
        assert_eq!(prefix_len(0xff00_0000, 32), Some(8));
        assert_eq!(prefix_len(0xffff_ffff, 32), Some(32));
        assert_eq!(prefix_len(0, 32), Some(0));
        assert_eq!(prefix_len(0xff00_ff00, 32), None);
        assert_eq!(prefix_len(u128::MAX << 64, 128), Some(64));
        assert_eq!(prefix_len(0xffff_ff00_0000, 48), Some(24));
    }

    #[test]
    fn range_renders_spec_last_mask() {
        let item = Item::Ipv4(Masked::range(
            Ipv4 {
                fragment_offset: 1,
                ..Ipv4::default()
            },
            Ipv4 {
                fragment_offset: 0x1fff,
                ..Ipv4::default()
            },
            Ipv4 {
                fragment_offset: 0x1fff,
                ..Ipv4::default()
            },
        ));
        let mut s = String::new();
        item.render(&mut s).unwrap();
        assert_eq!(
            s,
            "ipv4 fragment_offset spec 0x1 fragment_offset last 0x1fff fragment_offset mask 0x1fff"
        );
        assert!(item.has_range());
    }

    /// An IPv6 item is boxed so that every other item (and so every IPv4
    /// rule's pattern, which the NIC keeps per rule) stays small: a
    /// 144-byte variant had sized all of them.
    #[test]
    fn items_stay_small() {
        let size = std::mem::size_of::<Item>();
        assert!(size <= 64, "Item is {size} bytes");
    }

    #[test]
    fn version_nibble_has_no_token() {
        let item = Item::Ipv6(Box::new(Masked::new(
            Ipv6::default(),
            Ipv6 {
                vtc_flow: 0xf000_0000,
                ..Ipv6::default()
            },
        )));
        let mut s = String::new();
        assert!(matches!(
            item.render(&mut s),
            Err(RenderError::NoToken { item: "ipv6", .. })
        ));
    }
}
