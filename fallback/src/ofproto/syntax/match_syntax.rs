//! Match fields: their names, prerequisites and value syntax, parsed into a
//! [`Match`] and printed back as OVS's `match_format` prints them.

use super::*;

// ---------------------------------------------------------------------------
// Match fields

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    /// An OpenFlow match: OVS's normalisation applies.
    OpenFlow,
    /// An exact packet: no masks, prerequisites enforced.
    Packet,
    /// A datapath megaflow: taken as written.
    Megaflow,
}

/// What must already be matched for a field to mean anything.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Prereq {
    None,
    Ipv4,
    Ipv6,
    IpAny,
    Arp,
    Tcp,
    Udp,
    Sctp,
    /// tcp, udp or sctp (the generic tp_src/tp_dst).
    L4Ports,
    Icmp,
    Icmp6,
    /// icmp or icmp6 (the generic icmp_type/icmp_code).
    IcmpAny,
}

impl Prereq {
    pub(super) fn holds(self, dl_type: u16, nw_proto: u8) -> bool {
        let ip4 = dl_type == ethertype::IPV4;
        let ip6 = dl_type == ethertype::IPV6;
        let ip = ip4 || ip6;
        match self {
            Prereq::None => true,
            Prereq::Ipv4 => ip4,
            Prereq::Ipv6 => ip6,
            Prereq::IpAny => ip,
            Prereq::Arp => dl_type == ethertype::ARP || dl_type == ETH_TYPE_RARP,
            Prereq::Tcp => ip && nw_proto == ipproto::TCP,
            Prereq::Udp => ip && nw_proto == ipproto::UDP,
            Prereq::Sctp => ip && nw_proto == ipproto::SCTP,
            Prereq::L4Ports => {
                ip && matches!(nw_proto, ipproto::TCP | ipproto::UDP | ipproto::SCTP)
            }
            Prereq::Icmp => ip4 && nw_proto == ipproto::ICMP,
            Prereq::Icmp6 => ip6 && nw_proto == ipproto::ICMPV6,
            Prereq::IcmpAny => {
                (ip4 && nw_proto == ipproto::ICMP) || (ip6 && nw_proto == ipproto::ICMPV6)
            }
        }
    }

    /// (what is needed, what to write) for error messages.
    pub(super) fn describe(self) -> (&'static str, &'static str) {
        match self {
            Prereq::None => ("nothing", ""),
            Prereq::Ipv4 => ("IPv4", "ip"),
            Prereq::Ipv6 => ("IPv6", "ipv6"),
            Prereq::IpAny => ("IPv4 or IPv6", "ip"),
            Prereq::Arp => ("ARP", "arp"),
            Prereq::Tcp => ("TCP", "tcp"),
            Prereq::Udp => ("UDP", "udp"),
            Prereq::Sctp => ("SCTP", "sctp"),
            Prereq::L4Ports => ("TCP, UDP or SCTP", "udp"),
            Prereq::Icmp => ("ICMP", "icmp"),
            Prereq::Icmp6 => ("ICMPv6", "icmp6"),
            Prereq::IcmpAny => ("ICMP or ICMPv6", "icmp"),
        }
    }
}

/// How a field's value is written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Syntax {
    Port,
    Mac,
    Ipv4,
    Ipv6,
    /// An integer of this many bytes (base 0, like strtoull).
    Int(u32),
    /// `nw_tos`: the DSCP bits of the TOS byte.
    Dscp,
    /// `nw_ecn`: the ECN bits.
    Ecn,
    Frag,
    TcpFlags,
    DlVlan,
    DlVlanPcp,
}

/// A match field name as ovs-ofctl knows it.
#[derive(Clone, Copy, Debug)]
pub(super) struct FieldSpec {
    pub(super) name: &'static str,
    pub(super) field: Field,
    pub(super) syntax: Syntax,
    /// Whether a partial mask is accepted (else only all ones).
    pub(super) maskable: bool,
    pub(super) prereq: Prereq,
    /// Stored in fewer bits than parsed (arp_op: 16 bits into nw_proto).
    pub(super) store_mask: u128,
}

pub(super) const fn spec(
    name: &'static str,
    field: Field,
    syntax: Syntax,
    maskable: bool,
    prereq: Prereq,
) -> FieldSpec {
    FieldSpec {
        name,
        field,
        syntax,
        maskable,
        prereq,
        store_mask: u128::MAX,
    }
}

pub(super) fn field_spec(name: &str) -> Option<FieldSpec> {
    use Prereq as P;
    use Syntax as S;
    let s = match name {
        "in_port" => spec("in_port", Field::InPort, S::Port, false, P::None),
        "dl_src" | "eth_src" => spec("dl_src", Field::DlSrc, S::Mac, true, P::None),
        "dl_dst" | "eth_dst" => spec("dl_dst", Field::DlDst, S::Mac, true, P::None),
        "dl_type" | "eth_type" => spec("dl_type", Field::DlType, S::Int(2), false, P::None),
        "dl_vlan" => spec("dl_vlan", Field::VlanTci, S::DlVlan, false, P::None),
        "dl_vlan_pcp" => spec("dl_vlan_pcp", Field::VlanTci, S::DlVlanPcp, false, P::None),
        "vlan_tci" => spec("vlan_tci", Field::VlanTci, S::Int(2), true, P::None),
        "nw_src" | "ip_src" => spec("nw_src", Field::NwSrc, S::Ipv4, true, P::Ipv4),
        "nw_dst" | "ip_dst" => spec("nw_dst", Field::NwDst, S::Ipv4, true, P::Ipv4),
        "arp_spa" => spec("arp_spa", Field::NwSrc, S::Ipv4, true, P::Arp),
        "arp_tpa" => spec("arp_tpa", Field::NwDst, S::Ipv4, true, P::Arp),
        "ipv6_src" => spec("ipv6_src", Field::Ipv6Src, S::Ipv6, true, P::Ipv6),
        "ipv6_dst" => spec("ipv6_dst", Field::Ipv6Dst, S::Ipv6, true, P::Ipv6),
        "nw_proto" | "ip_proto" => spec("nw_proto", Field::NwProto, S::Int(1), false, P::IpAny),
        "arp_op" => FieldSpec {
            store_mask: 0xff,
            ..spec("arp_op", Field::NwProto, S::Int(2), false, P::Arp)
        },
        "nw_tos" => spec("nw_tos", Field::NwTos, S::Dscp, false, P::IpAny),
        "nw_ecn" | "ip_ecn" => spec("nw_ecn", Field::NwTos, S::Ecn, false, P::IpAny),
        "nw_ttl" => spec("nw_ttl", Field::NwTtl, S::Int(1), false, P::IpAny),
        "nw_frag" | "ip_frag" => spec("nw_frag", Field::NwFrag, S::Frag, false, P::IpAny),
        "tp_src" => spec("tp_src", Field::TpSrc, S::Int(2), true, P::L4Ports),
        "tp_dst" => spec("tp_dst", Field::TpDst, S::Int(2), true, P::L4Ports),
        "tcp_src" => spec("tcp_src", Field::TpSrc, S::Int(2), true, P::Tcp),
        "tcp_dst" => spec("tcp_dst", Field::TpDst, S::Int(2), true, P::Tcp),
        "udp_src" => spec("udp_src", Field::TpSrc, S::Int(2), true, P::Udp),
        "udp_dst" => spec("udp_dst", Field::TpDst, S::Int(2), true, P::Udp),
        "sctp_src" => spec("sctp_src", Field::TpSrc, S::Int(2), true, P::Sctp),
        "sctp_dst" => spec("sctp_dst", Field::TpDst, S::Int(2), true, P::Sctp),
        "icmp_type" => spec("icmp_type", Field::TpSrc, S::Int(1), false, P::IcmpAny),
        "icmp_code" => spec("icmp_code", Field::TpDst, S::Int(1), false, P::IcmpAny),
        "icmpv4_type" => spec("icmpv4_type", Field::TpSrc, S::Int(1), false, P::Icmp),
        "icmpv4_code" => spec("icmpv4_code", Field::TpDst, S::Int(1), false, P::Icmp),
        "icmpv6_type" => spec("icmpv6_type", Field::TpSrc, S::Int(1), false, P::Icmp6),
        "icmpv6_code" => spec("icmpv6_code", Field::TpDst, S::Int(1), false, P::Icmp6),
        "tcp_flags" => spec("tcp_flags", Field::TcpFlags, S::TcpFlags, true, P::Tcp),
        "arp_sha" => spec("arp_sha", Field::ArpSha, S::Mac, true, P::Arp),
        "arp_tha" => spec("arp_tha", Field::ArpTha, S::Mac, true, P::Arp),
        _ => return None,
    };
    Some(s)
}

/// Protocol shorthands: (dl_type, nw_proto).
pub(super) fn protocol_shorthand(name: &str) -> Option<(u16, Option<u8>)> {
    Some(match name {
        "ip" | "ipv4" => (ethertype::IPV4, None),
        "ipv6" => (ethertype::IPV6, None),
        "icmp" => (ethertype::IPV4, Some(ipproto::ICMP)),
        "icmp6" => (ethertype::IPV6, Some(ipproto::ICMPV6)),
        "tcp" => (ethertype::IPV4, Some(ipproto::TCP)),
        "tcp6" => (ethertype::IPV6, Some(ipproto::TCP)),
        "udp" => (ethertype::IPV4, Some(ipproto::UDP)),
        "udp6" => (ethertype::IPV6, Some(ipproto::UDP)),
        "sctp" => (ethertype::IPV4, Some(ipproto::SCTP)),
        "sctp6" => (ethertype::IPV6, Some(ipproto::SCTP)),
        "arp" => (ethertype::ARP, None),
        "rarp" => (ETH_TYPE_RARP, None),
        _ => return None,
    })
}

/// TCP flag names, bit by bit from the lowest (OVS prints unnamed bits as
/// `[200]` and so on).
pub(super) const TCP_FLAG_NAMES: [&str; 12] = [
    "fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr", "ns", "[200]", "[400]", "[800]",
];

pub(super) fn tcp_flag_bit(name: &str) -> Option<u16> {
    TCP_FLAG_NAMES
        .iter()
        .position(|n| *n == name)
        .map(|i| 1u16 << i)
}

/// `nw_frag` keywords: (value, mask).
pub(super) fn frag_keyword(s: &str, mode: Mode) -> Option<(u8, u8)> {
    // Megaflows always un-wildcard both bits, so their "no" means both.
    let both = frag::MASK;
    Some(match (s, mode) {
        ("no", Mode::Megaflow) => (0, both),
        ("no", _) => (0, frag::ANY),
        ("yes", _) => (frag::ANY, frag::ANY),
        ("first", _) => (frag::ANY, both),
        ("later", _) => (both, both),
        ("not_later", _) => (0, frag::LATER),
        _ => return None,
    })
}

/// Reserved port names, as ovs-ofctl reads and prints them.
pub(super) const PORT_NAMES: [(&str, u32); 8] = [
    ("IN_PORT", ofport::IN_PORT),
    ("TABLE", ofport::TABLE),
    ("NORMAL", ofport::NORMAL),
    ("FLOOD", ofport::FLOOD),
    ("ALL", ofport::ALL),
    ("CONTROLLER", ofport::CONTROLLER),
    ("LOCAL", ofport::LOCAL),
    ("ANY", ofport::NONE),
];

/// A port: a reserved name (any case) or a decimal number up to 65535.
pub(super) fn parse_port(s: &str) -> Option<u32> {
    if s.eq_ignore_ascii_case("none") {
        return Some(ofport::NONE);
    }
    if let Some((_, p)) = PORT_NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)) {
        return Some(*p);
    }
    parse_decimal(s)
        .filter(|p| *p <= u64::from(ofport::NONE))
        .map(|p| p as u32)
}

pub(super) fn fmt_port(p: u32) -> String {
    match PORT_NAMES.iter().find(|(_, n)| *n == p) {
        Some((name, _)) if p >= ofport::IN_PORT => (*name).to_string(),
        _ => p.to_string(),
    }
}

/// Builds a [`Match`] field by field, in order, as OVS does.
pub(super) struct MatchParser {
    pub(super) m: Match,
    pub(super) mode: Mode,
    /// Set when a field or mask needs NXM: then OVS does not round-trip
    /// the match through an OpenFlow 1.0 match, whose VLAN rules differ.
    pub(super) nxm_only: bool,
}

impl MatchParser {
    pub(super) fn new(mode: Mode) -> Self {
        MatchParser {
            m: Match::ANY,
            mode,
            nxm_only: false,
        }
    }

    pub(super) fn dl_type(&self) -> u16 {
        (self.m.value.get(Field::DlType) & self.m.mask.get(Field::DlType)) as u16
    }

    pub(super) fn nw_proto(&self) -> u8 {
        (self.m.value.get(Field::NwProto) & self.m.mask.get(Field::NwProto)) as u8
    }

    pub(super) fn apply(&mut self, kv: &KeyValue<'_>) -> Result<()> {
        if kv.key == "eth" {
            // The default packet type: nothing to record.
            return Ok(());
        }
        if let Some((dl_type, proto)) = protocol_shorthand(kv.key) {
            self.m.set_exact(Field::DlType, u128::from(dl_type));
            if let Some(p) = proto {
                self.m.set_exact(Field::NwProto, u128::from(p));
            }
            return Ok(());
        }
        let Some(spec) = field_spec(kv.key) else {
            if matches!(
                kv.key,
                "recirc_id"
                    | "metadata"
                    | "pkt_mark"
                    | "tun_id"
                    | "ipv6_label"
                    | "nd_target"
                    | "mpls_label"
                    | "ct_state"
                    | "reg0"
                    | "dl_vlan1"
                    | "igmp_type"
            ) {
                return Err(FlowParseError::Unsupported {
                    what: kv.token.to_string(),
                    advice: "flowmark's flow key has no such field; match on Ethernet, VLAN, IPv4/IPv6, ARP and L4 fields",
                });
            }
            return Err(FlowParseError::UnknownField {
                name: kv.key.to_string(),
                token: kv.token.to_string(),
            });
        };
        if !kv.has_value || kv.value.is_empty() {
            return Err(FlowParseError::MissingValue {
                field: kv.key.to_string(),
                token: kv.token.to_string(),
            });
        }
        if self.mode == Mode::Packet && !spec.prereq.holds(self.dl_type(), self.nw_proto()) {
            let (needs, hint) = spec.prereq.describe();
            return Err(FlowParseError::FieldPrerequisite {
                field: kv.key.to_string(),
                token: kv.token.to_string(),
                needs,
                hint,
            });
        }
        self.apply_field(&spec, kv)
    }

    pub(super) fn bad_value(
        &self,
        kv: &KeyValue<'_>,
        expected: impl Into<String>,
    ) -> FlowParseError {
        FlowParseError::BadValue {
            field: kv.key.to_string(),
            value: kv.value.to_string(),
            expected: expected.into(),
        }
    }

    pub(super) fn apply_field(&mut self, spec: &FieldSpec, kv: &KeyValue<'_>) -> Result<()> {
        let field = spec.field;
        let full = field.full_mask();
        // Keyword-valued fields first: they take no "/mask".
        match spec.syntax {
            Syntax::Port => {
                let port = parse_port(kv.value).ok_or_else(|| {
                    self.bad_value(
                        kv,
                        "a port number from 0 to 65535 or a port name such as LOCAL",
                    )
                })?;
                self.m.set_exact(field, u128::from(port));
                return Ok(());
            }
            Syntax::Frag => {
                let (v, mask) = frag_keyword(kv.value, self.mode)
                    .ok_or_else(|| self.bad_value(kv, "one of no, yes, first, later, not_later"))?;
                if self.mode == Mode::Packet && mask != frag::MASK && !(v == 0 && mask == frag::ANY)
                {
                    return Err(FlowParseError::MaskNotAllowed {
                        field: kv.key.into(),
                        token: kv.token.into(),
                    });
                }
                let mask = if self.mode == Mode::Packet {
                    frag::MASK
                } else {
                    mask
                };
                self.m.set_masked(field, u128::from(v), u128::from(mask));
                self.nxm_only = true;
                return Ok(());
            }
            Syntax::TcpFlags => {
                let (v, mask) = parse_tcp_flags(kv.value).ok_or_else(|| {
                    self.bad_value(
                        kv,
                        "flag names (+syn-ack, or syn|ack) or a value/mask up to 0xfff",
                    )
                })?;
                if self.mode == Mode::Packet && mask != TCP_FLAGS_MASK {
                    return Err(FlowParseError::MaskNotAllowed {
                        field: kv.key.into(),
                        token: kv.token.into(),
                    });
                }
                if mask != 0 {
                    self.nxm_only = true;
                }
                self.m.set_masked(field, u128::from(v), u128::from(mask));
                return Ok(());
            }
            _ => {}
        }
        let (value_text, mask_text) = match kv.value.split_once('/') {
            Some((v, m)) => (v, Some(m)),
            None => (kv.value, None),
        };
        if self.mode == Mode::Packet && mask_text.is_some() {
            return Err(FlowParseError::MaskNotAllowed {
                field: kv.key.into(),
                token: kv.token.into(),
            });
        }
        let (value, mask, exact_mask) = match spec.syntax {
            Syntax::Mac => {
                let v = parse_mac(value_text).ok_or_else(|| {
                    self.bad_value(kv, "an Ethernet address like aa:bb:cc:dd:ee:ff")
                })?;
                let m = match mask_text {
                    None => full,
                    Some(t) => u128::from(parse_mac(t).ok_or_else(|| {
                        self.bad_value(kv, "a mask like ff:ff:ff:00:00:00 after \"/\"")
                    })?),
                };
                (u128::from(v), m, full)
            }
            Syntax::Ipv4 => {
                let v = parse_ipv4(value_text).ok_or_else(|| {
                    self.bad_value(
                        kv,
                        "an IPv4 address like 10.0.0.1, optionally /PREFIX or /MASK",
                    )
                })?;
                let m = match mask_text {
                    None => full,
                    Some(t) => match parse_decimal(t) {
                        Some(len) if len <= 32 => prefix_mask(32, len as u32),
                        Some(_) => return Err(self.bad_value(kv, "a prefix length from 0 to 32")),
                        None => u128::from(parse_ipv4(t).ok_or_else(|| {
                            self.bad_value(
                                kv,
                                "a prefix length from 0 to 32 or a dotted mask after \"/\"",
                            )
                        })?),
                    },
                };
                (u128::from(v), m, full)
            }
            Syntax::Ipv6 => {
                let v = parse_ipv6(value_text).ok_or_else(|| {
                    self.bad_value(kv, "an IPv6 address like 2001:db8::1, optionally /PREFIX")
                })?;
                let m = match mask_text {
                    None => full,
                    // Like OVS, a mask starting with a digit is read as a
                    // prefix length ("0:ffff::" is refused, "ffff::" not).
                    Some(t) if t.starts_with(|c: char| c.is_ascii_digit()) => {
                        match parse_decimal(t) {
                            Some(len) if len <= 128 => prefix_mask(128, len as u32),
                            _ => {
                                return Err(self.bad_value(
                                    kv,
                                    "a prefix length from 0 to 128, or a mask starting with a hex letter",
                                ))
                            }
                        }
                    }
                    Some(t) => parse_ipv6(t).ok_or_else(|| {
                        self.bad_value(
                            kv,
                            "a prefix length from 0 to 128 or an IPv6 mask after \"/\"",
                        )
                    })?,
                };
                (v, m, full)
            }
            Syntax::Int(_) | Syntax::Dscp | Syntax::Ecn | Syntax::DlVlan | Syntax::DlVlanPcp => {
                let bytes = match spec.syntax {
                    Syntax::Int(b) => b,
                    Syntax::DlVlan => 2,
                    _ => 1,
                };
                let limit = (1u128 << (8 * bytes)) - 1;
                let v = parse_uint(value_text).ok_or_else(|| {
                    self.bad_value(
                        kv,
                        format!(
                            "a number (decimal, or hex with 0x) for the {bytes}-byte field {}",
                            spec.name
                        ),
                    )
                })?;
                if v > limit {
                    return Err(self.bad_value(
                        kv,
                        format!(
                            "a value that fits the {bytes}-byte field {} (at most {limit})",
                            spec.name
                        ),
                    ));
                }
                let m = match mask_text {
                    None => limit,
                    Some(t) => {
                        let m = parse_uint(t)
                            .ok_or_else(|| self.bad_value(kv, "a numeric mask after \"/\""))?;
                        if m > limit {
                            return Err(self.bad_value(
                                kv,
                                format!("a mask that fits the {bytes}-byte field {}", spec.name),
                            ));
                        }
                        m
                    }
                };
                (v, m, limit)
            }
            // Keyword-valued syntaxes returned above.
            Syntax::Port | Syntax::Frag | Syntax::TcpFlags => return Ok(()),
        };
        let is_exact = mask == exact_mask;
        if !spec.maskable && !is_exact && self.mode != Mode::Megaflow {
            return Err(FlowParseError::MaskNotAllowed {
                field: kv.key.into(),
                token: kv.token.into(),
            });
        }
        self.note_protocol(spec, mask, is_exact);
        match spec.syntax {
            Syntax::Dscp | Syntax::Ecn => {
                // nw_tos and nw_ecn share the TOS byte: keep the other bits.
                let bits = u128::from(if spec.syntax == Syntax::Dscp {
                    DSCP_MASK
                } else {
                    ECN_MASK
                });
                let (cur_value, cur_mask) = (self.m.value.get(field), self.m.mask.get(field));
                self.m
                    .set_masked(field, (cur_value & !bits) | (value & bits), cur_mask | bits);
            }
            Syntax::DlVlan => self.set_dl_vlan(value as u16),
            Syntax::DlVlanPcp => self.set_dl_vlan_pcp(value as u8),
            Syntax::Int(1) if matches!(field, Field::TpSrc | Field::TpDst) => {
                // ICMP type/code live in the 16-bit transport port fields.
                let m = if self.mode == Mode::Megaflow && mask_text.is_some() {
                    mask
                } else {
                    full
                };
                self.m.set_masked(field, value, m);
            }
            _ => {
                let value = value & spec.store_mask;
                let mask = mask & spec.store_mask & full;
                self.m.set_masked(field, value, mask);
            }
        }
        Ok(())
    }

    /// Records whether OpenFlow 1.0 could carry this field as written.
    pub(super) fn note_protocol(&mut self, spec: &FieldSpec, mask: u128, is_exact: bool) {
        let wildcard = mask == 0;
        let needs_nxm = match spec.field {
            Field::DlSrc | Field::DlDst | Field::VlanTci | Field::TpSrc | Field::TpDst => {
                !(wildcard || is_exact)
            }
            Field::NwSrc | Field::NwDst => cidr_len(mask, 32).is_none(),
            Field::Ipv6Src | Field::Ipv6Dst | Field::ArpSha | Field::ArpTha => !wildcard,
            Field::NwTtl => true,
            Field::NwTos => spec.syntax == Syntax::Ecn,
            _ => false,
        };
        self.nxm_only |= needs_nxm;
    }

    /// OVS's match_set_dl_vlan: 0xffff means "no VLAN header".
    pub(super) fn set_dl_vlan(&mut self, vid: u16) {
        let (mut tci, mut mask) = self.tci();
        if vid == 0xffff {
            tci = 0;
            mask = 0xffff;
        } else {
            tci = (tci & !0x0fff) | (vid & 0x0fff) | VLAN_CFI;
            mask |= 0x0fff | VLAN_CFI;
        }
        self.m
            .set_masked(Field::VlanTci, u128::from(tci), u128::from(mask));
    }

    /// OVS's match_set_dl_vlan_pcp.
    pub(super) fn set_dl_vlan_pcp(&mut self, pcp: u8) {
        let (tci, mask) = self.tci();
        let tci = (tci & !0xe000) | (u16::from(pcp & 7) << 13) | VLAN_CFI;
        let mask = mask | 0xe000 | VLAN_CFI;
        self.m
            .set_masked(Field::VlanTci, u128::from(tci), u128::from(mask));
    }

    pub(super) fn tci(&self) -> (u16, u16) {
        (
            self.m.value.get(Field::VlanTci) as u16,
            self.m.mask.get(Field::VlanTci) as u16,
        )
    }

    /// The protocols (of [`OF10`], [`NXM`], [`OF13`]) that can carry the
    /// match as parsed, as OVS's usable-protocols computation says.
    pub(super) fn protocols(&self) -> u8 {
        let ipv6_l3_l4 = self.dl_type() == ethertype::IPV6
            && [Field::NwProto, Field::NwTos, Field::TpSrc, Field::TpDst]
                .iter()
                .any(|f| self.m.mask.get(*f) != 0);
        if self.nxm_only || ipv6_l3_l4 {
            NXM | OF13
        } else {
            OF10 | NXM | OF13
        }
    }

    /// OVS's ofputil_normalize_match: drops the fields whose prerequisites
    /// the match lacks, and refuses transport fields on later fragments
    /// (OVS cannot decode such a flow). Returns notes on dropped fields.
    pub(super) fn normalise(&mut self) -> Result<Vec<String>> {
        let (dl_type, nw_proto) = (self.dl_type(), self.nw_proto());
        let ports = prereq_met(Field::TpSrc, dl_type, nw_proto)
            && !matches!(nw_proto, ipproto::ICMP | ipproto::ICMPV6);
        let allowed = |f: Field| prereq_met(f, dl_type, nw_proto);
        let mut warnings = Vec::new();
        let frag_value = self.m.value.get(Field::NwFrag) as u8;
        if frag_value & frag::LATER != 0 && ports {
            // Later fragments carry no transport header: OVS encodes TCP,
            // UDP and SCTP fields on them but cannot decode the result
            // (OFPBMC_BAD_PREREQ). ICMP type and code are not checked.
            for f in [Field::TpSrc, Field::TpDst, Field::TcpFlags] {
                if self.m.mask.get(f) != 0 && allowed(f) {
                    return Err(FlowParseError::FieldPrerequisite {
                        field: f.name().to_string(),
                        token: "nw_frag=later".into(),
                        needs: "a packet that is not a later fragment",
                        hint: "nw_frag=not_later",
                    });
                }
            }
        }
        for f in Field::ALL {
            if self.m.mask.get(f) != 0 && !allowed(f) {
                warnings.push(format!(
                    "{f} ignored: its prerequisite (such as ip, ipv6, arp, tcp or udp) is not in the match"
                ));
                self.m.set_masked(f, 0, 0);
            }
        }
        Ok(warnings)
    }

    /// The normalised match after ovs-ofctl encoded it in `protocol` and
    /// decoded it again, or the error OVS meets decoding it.
    pub(super) fn encode(mut self, protocol: Protocol) -> Result<Match> {
        let (tci, mask) = self.tci();
        match protocol {
            Protocol::Of10 => {
                // An OpenFlow 1.0 match says "no VLAN" or a VID/PCP: an
                // exact TCI without the VLAN-present bit comes back as
                // "no VLAN".
                if mask == 0xffff && tci & VLAN_CFI == 0 {
                    self.m.set_exact(Field::VlanTci, 0);
                }
                return Ok(self.m);
            }
            Protocol::Nxm => {}
            Protocol::Of13 => {
                // OXM has VLAN_VID (the VID and the present bit) and, only
                // with a VID, an exact VLAN_PCP whose prerequisite is a
                // VLAN header.
                let vid = tci & (0x0fff | VLAN_CFI);
                let vid_mask = mask & (0x0fff | VLAN_CFI);
                let pcp = vid != 0 && mask & 0xe000 != 0;
                if pcp && vid & VLAN_CFI == 0 {
                    return Err(FlowParseError::NotInOpenFlow13 {
                        what: format!("vlan_tci={tci:#06x}/{mask:#06x}"),
                        advice: "OpenFlow 1.3 matches a VLAN PCP only on packets with a VLAN header: add the VLAN-present bit 0x1000 to the value and the mask (or use dl_vlan/dl_vlan_pcp)",
                    });
                }
                let (tci, mask) = if pcp {
                    (vid | (tci & 0xe000), vid_mask | 0xe000 | VLAN_CFI)
                } else {
                    (vid, vid_mask)
                };
                self.m
                    .set_masked(Field::VlanTci, u128::from(tci), u128::from(mask));
            }
        }
        // NXM and OXM carry ICMP type and code as exact 8-bit fields.
        let dl_type = self.dl_type();
        let nw_proto = self.nw_proto();
        if Prereq::IcmpAny.holds(dl_type, nw_proto) {
            for f in [Field::TpSrc, Field::TpDst] {
                if self.m.mask.get(f) != 0 {
                    let v = self.m.value.get(f) & 0xff;
                    self.m.set_masked(f, v, 0xffff);
                }
            }
        }
        Ok(self.m)
    }

    /// A match alone, in the protocol ovs-ofctl would pick for it.
    pub(super) fn finish_match(mut self) -> Result<(Match, Vec<String>)> {
        let protocol = if self.protocols() & OF10 != 0 {
            Protocol::Of10
        } else {
            Protocol::Nxm
        };
        let warnings = self.normalise()?;
        Ok((self.encode(protocol)?, warnings))
    }
}

/// `tcp_flags` values: `+syn-ack`, `syn|ack`, `0x12`, `0x12/0x1f`.
pub(super) fn parse_tcp_flags(s: &str) -> Option<(u16, u16)> {
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        let (v, m) = match s.split_once('/') {
            Some((v, m)) => (parse_uint(v)?, parse_uint(m)?),
            None => (parse_uint(s)?, u128::from(TCP_FLAGS_MASK)),
        };
        if v > u128::from(TCP_FLAGS_MASK) || m > u128::from(TCP_FLAGS_MASK) {
            return None;
        }
        return Some(((v & m) as u16, m as u16));
    }
    if s.starts_with(['+', '-']) {
        let (mut value, mut mask) = (0u16, 0u16);
        let mut rest = s;
        while !rest.is_empty() {
            let sign = rest.chars().next()?;
            if sign != '+' && sign != '-' {
                return None;
            }
            let body = &rest[1..];
            let end = body.find(['+', '-']).unwrap_or(body.len());
            let bit = tcp_flag_bit(&body[..end])?;
            if mask & bit != 0 {
                return None;
            }
            mask |= bit;
            if sign == '+' {
                value |= bit;
            }
            rest = &body[end..];
        }
        return Some((value, mask));
    }
    let mut value = 0u16;
    for name in s.split('|') {
        value |= tcp_flag_bit(name)?;
    }
    Some((value, TCP_FLAGS_MASK))
}

// ---------------------------------------------------------------------------
// Match printing (OVS's match_format)

pub(super) fn fmt_ipv4_masked(name: &str, v: u128, mask: u128, items: &mut Vec<String>) {
    if mask == 0 {
        return;
    }
    let mut s = format!("{name}={}", Ipv4Addr::from(v as u32));
    if mask != 0xffff_ffff {
        match cidr_len(mask, 32) {
            Some(len) => {
                let _ = write!(s, "/{len}");
            }
            None => {
                let _ = write!(s, "/{}", Ipv4Addr::from(mask as u32));
            }
        }
    }
    items.push(s);
}

pub(super) fn fmt_ipv6_masked(name: &str, v: u128, mask: u128, items: &mut Vec<String>) {
    if mask == 0 {
        return;
    }
    let mut s = format!("{name}={}", fmt_ipv6(v));
    if mask != u128::MAX {
        match cidr_len(mask, 128) {
            Some(len) => {
                let _ = write!(s, "/{len}");
            }
            None => {
                let _ = write!(s, "/{}", fmt_ipv6(mask));
            }
        }
    }
    items.push(s);
}

pub(super) fn fmt_eth_masked(name: &str, v: u128, mask: u128, items: &mut Vec<String>) {
    if mask == 0 {
        return;
    }
    let mut s = format!("{name}={}", crate::key::fmt_mac(v as u64));
    if mask != Field::DlSrc.full_mask() {
        let _ = write!(s, "/{}", crate::key::fmt_mac(mask as u64));
    }
    items.push(s);
}

pub(super) fn fmt_be16_masked(name: &str, v: u128, mask: u128, items: &mut Vec<String>) {
    if mask == 0 {
        return;
    }
    if mask == 0xffff {
        items.push(format!("{name}={v}"));
    } else {
        items.push(format!("{name}={v:#x}/{mask:#x}"));
    }
}

pub(super) fn fmt_tcp_flags(v: u16, mask: u16) -> String {
    let mask = mask & TCP_FLAGS_MASK;
    if mask == TCP_FLAGS_MASK {
        if v == 0 {
            return "tcp_flags=0".into();
        }
        let names: Vec<&str> = (0..12)
            .filter(|i| v & (1 << i) != 0)
            .map(|i| TCP_FLAG_NAMES[i])
            .collect();
        return format!("tcp_flags={}", names.join("|"));
    }
    if mask == 0 {
        return "tcp_flags=0/0".into();
    }
    let mut s = "tcp_flags=".to_string();
    for (i, name) in TCP_FLAG_NAMES.iter().enumerate() {
        if mask & (1 << i) != 0 {
            s.push(if v & (1 << i) != 0 { '+' } else { '-' });
            s.push_str(name);
        }
    }
    s
}

/// Appends the match's items in OVS's order (without priority).
pub(super) fn format_match_items(m: &Match, items: &mut Vec<String>) {
    let val = |f: Field| m.value.get(f) & m.mask.get(f);
    let msk = |f: Field| m.mask.get(f);
    let dl_type = val(Field::DlType) as u16;
    let nw_proto = val(Field::NwProto) as u8;
    let mut skip_type = false;
    let mut skip_proto = false;
    let arp = dl_type == ethertype::ARP || dl_type == ETH_TYPE_RARP;

    // OpenFlow 1.3 pipeline metadata (rules from OpenFlow only).
    match msk(Field::Metadata) as u64 {
        0 => {}
        u64::MAX => items.push(format!("metadata={:#x}", val(Field::Metadata))),
        mask => items.push(format!("metadata={:#x}/{mask:#x}", val(Field::Metadata))),
    }
    if msk(Field::DlType) != 0 {
        skip_type = true;
        let proto_masked = msk(Field::NwProto) != 0;
        let name = match dl_type {
            ethertype::IPV4 => {
                let n = match (proto_masked, nw_proto) {
                    (true, ipproto::ICMP) => Some("icmp"),
                    (true, 2) => Some("igmp"),
                    (true, ipproto::TCP) => Some("tcp"),
                    (true, ipproto::UDP) => Some("udp"),
                    (true, ipproto::SCTP) => Some("sctp"),
                    _ => None,
                };
                skip_proto = n.is_some();
                Some(n.unwrap_or("ip"))
            }
            ethertype::IPV6 => {
                let n = match (proto_masked, nw_proto) {
                    (true, ipproto::ICMPV6) => Some("icmp6"),
                    (true, ipproto::TCP) => Some("tcp6"),
                    (true, ipproto::UDP) => Some("udp6"),
                    (true, ipproto::SCTP) => Some("sctp6"),
                    _ => None,
                };
                skip_proto = n.is_some();
                Some(n.unwrap_or("ipv6"))
            }
            ethertype::ARP => Some("arp"),
            ETH_TYPE_RARP => Some("rarp"),
            0x8847 => Some("mpls"),
            0x8848 => Some("mplsm"),
            _ => None,
        };
        match name {
            Some(n) => items.push(n.to_string()),
            None => skip_type = false,
        }
    }
    if msk(Field::InPort) != 0 {
        items.push(format!("in_port={}", fmt_port(val(Field::InPort) as u32)));
    }
    let tci_mask = msk(Field::VlanTci) as u16;
    if tci_mask != 0 {
        let tci = val(Field::VlanTci) as u16;
        let vid_mask = tci_mask & 0x0fff;
        let pcp_mask = tci_mask & 0xe000;
        let cfi = tci_mask & VLAN_CFI;
        if cfi != 0
            && tci & VLAN_CFI != 0
            && (vid_mask == 0 || vid_mask == 0x0fff)
            && (pcp_mask == 0 || pcp_mask == 0xe000)
            && (vid_mask != 0 || pcp_mask != 0)
        {
            if vid_mask != 0 {
                items.push(format!("dl_vlan={}", tci & 0x0fff));
            }
            if pcp_mask != 0 {
                items.push(format!("dl_vlan_pcp={}", tci >> 13));
            }
        } else if tci_mask == 0xffff {
            items.push(format!("vlan_tci={tci:#06x}"));
        } else {
            items.push(format!("vlan_tci={tci:#06x}/{tci_mask:#06x}"));
        }
    }
    fmt_eth_masked("dl_src", val(Field::DlSrc), msk(Field::DlSrc), items);
    fmt_eth_masked("dl_dst", val(Field::DlDst), msk(Field::DlDst), items);
    if !skip_type && msk(Field::DlType) != 0 {
        items.push(format!("dl_type={dl_type:#06x}"));
    }
    if dl_type == ethertype::IPV6 {
        fmt_ipv6_masked("ipv6_src", val(Field::Ipv6Src), msk(Field::Ipv6Src), items);
        fmt_ipv6_masked("ipv6_dst", val(Field::Ipv6Dst), msk(Field::Ipv6Dst), items);
    } else if arp {
        fmt_ipv4_masked("arp_spa", val(Field::NwSrc), msk(Field::NwSrc), items);
        fmt_ipv4_masked("arp_tpa", val(Field::NwDst), msk(Field::NwDst), items);
    } else {
        fmt_ipv4_masked("nw_src", val(Field::NwSrc), msk(Field::NwSrc), items);
        fmt_ipv4_masked("nw_dst", val(Field::NwDst), msk(Field::NwDst), items);
    }
    if !skip_proto && msk(Field::NwProto) != 0 {
        let name = if arp { "arp_op" } else { "nw_proto" };
        items.push(format!("{name}={nw_proto}"));
    }
    if arp {
        fmt_eth_masked("arp_sha", val(Field::ArpSha), msk(Field::ArpSha), items);
        fmt_eth_masked("arp_tha", val(Field::ArpTha), msk(Field::ArpTha), items);
    }
    let tos_mask = msk(Field::NwTos) as u8;
    let tos = val(Field::NwTos) as u8;
    if tos_mask & DSCP_MASK != 0 {
        items.push(format!("nw_tos={}", tos & DSCP_MASK));
    }
    if tos_mask & ECN_MASK != 0 {
        items.push(format!("nw_ecn={}", tos & ECN_MASK));
    }
    if msk(Field::NwTtl) != 0 {
        items.push(format!("nw_ttl={}", val(Field::NwTtl)));
    }
    let frag_mask = msk(Field::NwFrag) as u8 & frag::MASK;
    let fr = val(Field::NwFrag) as u8;
    let frag_text = match frag_mask {
        frag::MASK => Some(match (fr & frag::ANY != 0, fr & frag::LATER != 0) {
            (true, true) => "later",
            (true, false) => "first",
            (false, true) => "<error>",
            (false, false) => "no",
        }),
        frag::ANY => Some(if fr & frag::ANY != 0 { "yes" } else { "no" }),
        frag::LATER => Some(if fr & frag::LATER != 0 {
            "later"
        } else {
            "not_later"
        }),
        _ => None,
    };
    if let Some(t) = frag_text {
        items.push(format!("nw_frag={t}"));
    }
    let (src_name, dst_name) = if (dl_type == ethertype::IPV4 && nw_proto == ipproto::ICMP)
        || (dl_type == ethertype::IPV6 && nw_proto == ipproto::ICMPV6)
    {
        ("icmp_type", "icmp_code")
    } else if dl_type == ethertype::IPV4 && nw_proto == 2 {
        ("igmp_type", "igmp_code")
    } else {
        ("tp_src", "tp_dst")
    };
    fmt_be16_masked(src_name, val(Field::TpSrc), msk(Field::TpSrc), items);
    fmt_be16_masked(dst_name, val(Field::TpDst), msk(Field::TpDst), items);
    let is_ip = dl_type == ethertype::IPV4 || dl_type == ethertype::IPV6;
    if is_ip && nw_proto == ipproto::TCP && msk(Field::TcpFlags) != 0 {
        items.push(fmt_tcp_flags(
            val(Field::TcpFlags) as u16,
            msk(Field::TcpFlags) as u16,
        ));
    }
}
