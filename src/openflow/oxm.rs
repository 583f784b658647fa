//! `ofp_match` (OXM) ↔ [`Match`], as `ovs-ofctl -O OpenFlow13` encodes the
//! flow syntax: OXM basic fields where OpenFlow 1.3 has them, NXM fields
//! (`nw_ttl`, `nw_frag`, masked `vlan_tci`, `nw_tos` as a whole byte) and
//! the ONF experimenter `tcp_flags` where it does not.

use super::error::{BadMatchCode as Bmc, OfpError};
use super::port::{ofport_from_of13, ofport_to_of13};
use super::wire::{Put, Reader};
use fallback::key::{ethertype, ipproto, Field, VLAN_CFI};
use fallback::ofproto::Match;

/// `ofp_match.type`: OXM.
const OFPMT_OXM: u16 = 1;

/// OXM classes.
pub const OFPXMC_NXM_0: u16 = 0x0000;
pub const OFPXMC_NXM_1: u16 = 0x0001;
pub const OFPXMC_BASIC: u16 = 0x8000;
pub const OFPXMC_EXPERIMENTER: u16 = 0xffff;
/// The ONF experimenter id (its OXMs carry it after the header).
pub const ONF_EXPERIMENTER: u32 = 0x4f4e_4600;
/// `ONFOXM_ET_TCP_FLAGS`.
const ONF_TCP_FLAGS: u8 = 42;

/// `OFPVID_PRESENT`: the OXM spelling of OVS's CFI "VLAN present" bit.
const OFPVID_PRESENT: u16 = 0x1000;
const ETH_TYPE_RARP: u16 = 0x8035;
/// The TCP flag bits OVS matches (its exact `tcp_flags` mask).
const TCP_FLAGS_EXACT: u128 = 0x0fff;

/// An OXM field flowmark knows: (class, field) on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OxmField {
    InPort,
    /// `OXM_OF_METADATA`: the pipeline's 64-bit metadata.
    Metadata,
    EthDst,
    EthSrc,
    EthType,
    VlanVid,
    VlanPcp,
    IpDscp,
    IpEcn,
    IpProto,
    Ipv4Src,
    Ipv4Dst,
    TcpSrc,
    TcpDst,
    UdpSrc,
    UdpDst,
    SctpSrc,
    SctpDst,
    Icmpv4Type,
    Icmpv4Code,
    ArpOp,
    ArpSpa,
    ArpTpa,
    ArpSha,
    ArpTha,
    Ipv6Src,
    Ipv6Dst,
    Icmpv6Type,
    Icmpv6Code,
    /// `NXM_OF_VLAN_TCI`: the whole TCI, CFI bit = VLAN present.
    NxVlanTci,
    /// `NXM_OF_IP_TOS`: the TOS byte's DSCP bits, unshifted.
    NxIpTos,
    NxIpEcn,
    NxIpTtl,
    NxIpFrag,
    NxTcpFlags,
    /// `ONFOXM_ET_TCP_FLAGS` (experimenter class, ONF id).
    OnfTcpFlags,
}

impl OxmField {
    /// (class, field number, value width in bytes, maskable).
    const fn spec(self) -> (u16, u8, usize, bool) {
        use OxmField as F;
        match self {
            F::InPort => (OFPXMC_BASIC, 0, 4, false),
            F::Metadata => (OFPXMC_BASIC, 2, 8, true),
            F::EthDst => (OFPXMC_BASIC, 3, 6, true),
            F::EthSrc => (OFPXMC_BASIC, 4, 6, true),
            F::EthType => (OFPXMC_BASIC, 5, 2, false),
            F::VlanVid => (OFPXMC_BASIC, 6, 2, true),
            F::VlanPcp => (OFPXMC_BASIC, 7, 1, false),
            F::IpDscp => (OFPXMC_BASIC, 8, 1, false),
            F::IpEcn => (OFPXMC_BASIC, 9, 1, false),
            F::IpProto => (OFPXMC_BASIC, 10, 1, false),
            F::Ipv4Src => (OFPXMC_BASIC, 11, 4, true),
            F::Ipv4Dst => (OFPXMC_BASIC, 12, 4, true),
            F::TcpSrc => (OFPXMC_BASIC, 13, 2, true),
            F::TcpDst => (OFPXMC_BASIC, 14, 2, true),
            F::UdpSrc => (OFPXMC_BASIC, 15, 2, true),
            F::UdpDst => (OFPXMC_BASIC, 16, 2, true),
            F::SctpSrc => (OFPXMC_BASIC, 17, 2, true),
            F::SctpDst => (OFPXMC_BASIC, 18, 2, true),
            F::Icmpv4Type => (OFPXMC_BASIC, 19, 1, false),
            F::Icmpv4Code => (OFPXMC_BASIC, 20, 1, false),
            F::ArpOp => (OFPXMC_BASIC, 21, 2, false),
            F::ArpSpa => (OFPXMC_BASIC, 22, 4, true),
            F::ArpTpa => (OFPXMC_BASIC, 23, 4, true),
            F::ArpSha => (OFPXMC_BASIC, 24, 6, true),
            F::ArpTha => (OFPXMC_BASIC, 25, 6, true),
            F::Ipv6Src => (OFPXMC_BASIC, 26, 16, true),
            F::Ipv6Dst => (OFPXMC_BASIC, 27, 16, true),
            F::Icmpv6Type => (OFPXMC_BASIC, 29, 1, false),
            F::Icmpv6Code => (OFPXMC_BASIC, 30, 1, false),
            F::NxVlanTci => (OFPXMC_NXM_0, 4, 2, true),
            F::NxIpTos => (OFPXMC_NXM_0, 5, 1, false),
            F::NxIpEcn => (OFPXMC_NXM_1, 28, 1, false),
            F::NxIpTtl => (OFPXMC_NXM_1, 29, 1, false),
            F::NxIpFrag => (OFPXMC_NXM_1, 26, 1, true),
            F::NxTcpFlags => (OFPXMC_NXM_1, 34, 2, true),
            F::OnfTcpFlags => (OFPXMC_EXPERIMENTER, ONF_TCP_FLAGS, 2, true),
        }
    }

    const ALL: [OxmField; 36] = {
        use OxmField as F;
        [
            F::InPort,
            F::Metadata,
            F::EthDst,
            F::EthSrc,
            F::EthType,
            F::VlanVid,
            F::VlanPcp,
            F::IpDscp,
            F::IpEcn,
            F::IpProto,
            F::Ipv4Src,
            F::Ipv4Dst,
            F::TcpSrc,
            F::TcpDst,
            F::UdpSrc,
            F::UdpDst,
            F::SctpSrc,
            F::SctpDst,
            F::Icmpv4Type,
            F::Icmpv4Code,
            F::ArpOp,
            F::ArpSpa,
            F::ArpTpa,
            F::ArpSha,
            F::ArpTha,
            F::Ipv6Src,
            F::Ipv6Dst,
            F::Icmpv6Type,
            F::Icmpv6Code,
            F::NxVlanTci,
            F::NxIpTos,
            F::NxIpEcn,
            F::NxIpTtl,
            F::NxIpFrag,
            F::NxTcpFlags,
            F::OnfTcpFlags,
        ]
    };

    /// OpenFlow basic fields by field number (what controllers send):
    /// one index instead of a scan of [`OxmField::ALL`] per field.
    const BASIC: [Option<OxmField>; 128] = {
        let mut t = [None; 128];
        let mut i = 0;
        while i < Self::ALL.len() {
            let (class, n, _, _) = Self::ALL[i].spec();
            if class == OFPXMC_BASIC {
                t[n as usize] = Some(Self::ALL[i]);
            }
            i += 1;
        }
        t
    };

    pub fn lookup(class: u16, field: u8) -> Option<OxmField> {
        if class == OFPXMC_BASIC {
            return Self::BASIC.get(usize::from(field)).copied().flatten();
        }
        Self::ALL.into_iter().find(|f| {
            let (c, n, _, _) = f.spec();
            c == class && n == field
        })
    }

    pub fn width(self) -> usize {
        self.spec().2
    }
}

/// Writes one OXM TLV (with its mask when `mask` is not all ones).
pub fn put_oxm(out: &mut Vec<u8>, f: OxmField, value: u128, mask: Option<u128>) {
    let (class, field, width, _) = f.spec();
    let exp = class == OFPXMC_EXPERIMENTER;
    let has_mask = mask.is_some();
    let len = width * if has_mask { 2 } else { 1 } + if exp { 4 } else { 0 };
    out.put_u16(class);
    out.put_u8((field << 1) | u8::from(has_mask));
    out.put_u8(len as u8);
    if exp {
        out.put_u32(ONF_EXPERIMENTER);
    }
    out.put_uint(value, width);
    if let Some(m) = mask {
        out.put_uint(m, width);
    }
}

/// One OXM TLV read off the wire.
#[derive(Clone, Copy, Debug)]
pub struct Tlv {
    pub field: OxmField,
    pub value: u128,
    /// `None`: exact.
    pub mask: Option<u128>,
}

/// Reads one OXM TLV; unknown fields are `BAD_FIELD`.
pub fn read_oxm(r: &mut Reader<'_>) -> Result<Tlv, OfpError> {
    let bad_len = || OfpError::bad_match(Bmc::BadLen, "an OXM field runs past the match");
    let class = r.u16().map_err(|_| bad_len())?;
    let fh = r.u8().map_err(|_| bad_len())?;
    let len = usize::from(r.u8().map_err(|_| bad_len())?);
    let mut payload = Reader::new(r.bytes(len).map_err(|_| bad_len())?);
    let (field_no, has_mask) = (fh >> 1, fh & 1 == 1);
    if class == OFPXMC_EXPERIMENTER {
        let exp = payload.u32().map_err(|_| bad_len())?;
        if exp != ONF_EXPERIMENTER {
            return Err(OfpError::bad_match(
                Bmc::BadField,
                format!("experimenter OXM from unknown experimenter {exp:#x}"),
            ));
        }
    }
    let field = OxmField::lookup(class, field_no).ok_or_else(|| {
        OfpError::bad_match(
            Bmc::BadField,
            format!("OXM class {class:#06x} field {field_no} is not supported"),
        )
    })?;
    let (_, _, width, maskable) = field.spec();
    if payload.remaining() != width * if has_mask { 2 } else { 1 } {
        return Err(OfpError::bad_match(
            Bmc::BadLen,
            format!("{field:?} has length {len}"),
        ));
    }
    if has_mask && !maskable {
        return Err(OfpError::bad_match(
            Bmc::BadMask,
            format!("{field:?} cannot be masked"),
        ));
    }
    let value = payload.uint(width).map_err(|_| bad_len())?;
    let mask = if has_mask {
        Some(payload.uint(width).map_err(|_| bad_len())?)
    } else {
        None
    };
    if let Some(m) = mask {
        if value & !m != 0 {
            return Err(OfpError::bad_match(
                Bmc::BadWildcards,
                format!("{field:?} value {value:#x} has bits outside its mask {m:#x}"),
            ));
        }
    }
    Ok(Tlv { field, value, mask })
}

fn field_bits(m: &Match, f: Field) -> (u128, u128) {
    let mask = m.mask.get(f);
    (m.value.get(f) & mask, mask)
}

/// The value when `f` is matched exactly, else `None`.
fn exact(m: &Match, f: Field) -> Option<u128> {
    let (v, mask) = field_bits(m, f);
    (mask == f.full_mask()).then_some(v)
}

/// Writes the OXM list of `m` (without the `ofp_match` header).
pub fn encode_oxms(m: &Match, out: &mut Vec<u8>) {
    let put_masked = |out: &mut Vec<u8>, oxm: OxmField, f: Field| {
        let (v, mask) = field_bits(m, f);
        if mask == 0 {
            return;
        }
        put_oxm(out, oxm, v, (mask != f.full_mask()).then_some(mask));
    };
    if let Some(p) = exact(m, Field::InPort) {
        put_oxm(
            out,
            OxmField::InPort,
            u128::from(ofport_to_of13(p as u32)),
            None,
        );
    }
    put_masked(out, OxmField::Metadata, Field::Metadata);
    put_masked(out, OxmField::EthSrc, Field::DlSrc);
    put_masked(out, OxmField::EthDst, Field::DlDst);
    let dl_type = exact(m, Field::DlType).map(|t| t as u16);
    if let Some(t) = dl_type {
        put_oxm(out, OxmField::EthType, u128::from(t), None);
    }
    // VLAN: VID and the present bit as VLAN_VID, the priority as VLAN_PCP
    // when a VLAN is required (OVS's mapping, which drops partial PCP masks).
    let (tci, tci_mask) = field_bits(m, Field::VlanTci);
    let (tci, tci_mask) = (tci as u16, tci_mask as u16);
    let vid_mask = tci_mask & 0x1fff;
    if vid_mask == 0x1fff {
        put_oxm(out, OxmField::VlanVid, u128::from(tci & 0x1fff), None);
    } else if vid_mask != 0 {
        put_oxm(
            out,
            OxmField::VlanVid,
            u128::from(tci & 0x1fff),
            Some(u128::from(vid_mask)),
        );
    }
    if tci & VLAN_CFI != 0 && tci_mask & 0xe000 != 0 {
        put_oxm(out, OxmField::VlanPcp, u128::from(tci >> 13), None);
    }
    let is_ip4 = dl_type == Some(ethertype::IPV4);
    let is_ip6 = dl_type == Some(ethertype::IPV6);
    let is_arp = matches!(dl_type, Some(ethertype::ARP) | Some(ETH_TYPE_RARP));
    if is_ip4 {
        put_masked(out, OxmField::Ipv4Src, Field::NwSrc);
        put_masked(out, OxmField::Ipv4Dst, Field::NwDst);
    }
    if is_ip6 {
        put_masked(out, OxmField::Ipv6Src, Field::Ipv6Src);
        put_masked(out, OxmField::Ipv6Dst, Field::Ipv6Dst);
    }
    if is_arp {
        if let Some(op) = exact(m, Field::NwProto) {
            put_oxm(out, OxmField::ArpOp, op, None);
        }
        put_masked(out, OxmField::ArpSpa, Field::NwSrc);
        put_masked(out, OxmField::ArpTpa, Field::NwDst);
        put_masked(out, OxmField::ArpSha, Field::ArpSha);
        put_masked(out, OxmField::ArpTha, Field::ArpTha);
    }
    let mut nw_proto = None;
    if is_ip4 || is_ip6 {
        nw_proto = exact(m, Field::NwProto).map(|p| p as u8);
        if let Some(p) = nw_proto {
            put_oxm(out, OxmField::IpProto, u128::from(p), None);
        }
        let (frag, frag_mask) = field_bits(m, Field::NwFrag);
        let frag_mask = frag_mask & 3;
        if frag_mask == 3 {
            put_oxm(out, OxmField::NxIpFrag, frag, None);
        } else if frag_mask != 0 {
            put_oxm(out, OxmField::NxIpFrag, frag & frag_mask, Some(frag_mask));
        }
        let (tos, tos_mask) = field_bits(m, Field::NwTos);
        if tos_mask & 0xfc == 0xfc {
            put_oxm(out, OxmField::IpDscp, (tos & 0xfc) >> 2, None);
        }
        if tos_mask & 0x03 == 0x03 {
            put_oxm(out, OxmField::IpEcn, tos & 0x03, None);
        }
        if let Some(ttl) = exact(m, Field::NwTtl) {
            put_oxm(out, OxmField::NxIpTtl, ttl, None);
        }
    }
    match (nw_proto, is_ip4, is_ip6) {
        (Some(ipproto::TCP), ..) => {
            put_masked(out, OxmField::TcpSrc, Field::TpSrc);
            put_masked(out, OxmField::TcpDst, Field::TpDst);
            let (flags, flags_mask) = field_bits(m, Field::TcpFlags);
            // OVS's tcp_flags is 12 bits wide: that mask is "exact".
            let flags_mask = flags_mask & TCP_FLAGS_EXACT;
            if flags_mask != 0 {
                let mask = (flags_mask != TCP_FLAGS_EXACT).then_some(flags_mask);
                put_oxm(out, OxmField::OnfTcpFlags, flags & flags_mask, mask);
            }
        }
        (Some(ipproto::UDP), ..) => {
            put_masked(out, OxmField::UdpSrc, Field::TpSrc);
            put_masked(out, OxmField::UdpDst, Field::TpDst);
        }
        (Some(ipproto::SCTP), ..) => {
            put_masked(out, OxmField::SctpSrc, Field::TpSrc);
            put_masked(out, OxmField::SctpDst, Field::TpDst);
        }
        (Some(ipproto::ICMP), true, _) => {
            if let Some(t) = exact_low8(m, Field::TpSrc) {
                put_oxm(out, OxmField::Icmpv4Type, t, None);
            }
            if let Some(c) = exact_low8(m, Field::TpDst) {
                put_oxm(out, OxmField::Icmpv4Code, c, None);
            }
        }
        (Some(ipproto::ICMPV6), _, true) => {
            if let Some(t) = exact_low8(m, Field::TpSrc) {
                put_oxm(out, OxmField::Icmpv6Type, t, None);
            }
            if let Some(c) = exact_low8(m, Field::TpDst) {
                put_oxm(out, OxmField::Icmpv6Code, c, None);
            }
        }
        _ => {}
    }
}

/// ICMP type and code live in the low byte of tp_src/tp_dst.
fn exact_low8(m: &Match, f: Field) -> Option<u128> {
    let (v, mask) = field_bits(m, f);
    (mask & 0xff == 0xff).then_some(v & 0xff)
}

/// Writes a whole `ofp_match` (header, OXMs, padding to 8 bytes).
pub fn encode_match(m: &Match, out: &mut Vec<u8>) {
    let start = out.len();
    out.put_u16(OFPMT_OXM);
    out.put_u16(0);
    encode_oxms(m, out);
    let len = out.len() - start;
    out.set_u16(start + 2, len as u16);
    out.pad8_from(start);
}

/// Reads an `ofp_match` including its padding.
pub fn decode_match(r: &mut Reader<'_>) -> Result<Match, OfpError> {
    let bad_len = |d: &str| OfpError::bad_match(Bmc::BadLen, d.to_string());
    let ty = r
        .u16()
        .map_err(|_| bad_len("no room for the match header"))?;
    let len = usize::from(
        r.u16()
            .map_err(|_| bad_len("no room for the match header"))?,
    );
    if ty != OFPMT_OXM {
        return Err(OfpError::bad_match(
            Bmc::BadType,
            format!("match type {ty} (only OXM, type 1, is OpenFlow 1.3)"),
        ));
    }
    if len < 4 {
        return Err(bad_len("match length below 4"));
    }
    let body = r
        .bytes(len - 4)
        .map_err(|_| bad_len("the match runs past the message"))?;
    let pad = (8 - len % 8) % 8;
    r.skip(pad)
        .map_err(|_| bad_len("the match's padding runs past the message"))?;
    let mut fields = Reader::new(body);
    // On the stack: no field twice, so at most one of each (a heap block
    // per match was a tenth of a bundled flow mod's decode).
    let mut tlvs = [Tlv {
        field: OxmField::InPort,
        value: 0,
        mask: None,
    }; OxmField::ALL.len()];
    let mut n = 0;
    while !fields.is_empty() {
        let t = read_oxm(&mut fields)?;
        if tlvs[..n].iter().any(|x| x.field == t.field) {
            return Err(OfpError::bad_match(
                Bmc::DupField,
                format!("{:?} appears twice", t.field),
            ));
        }
        // Every field is distinct, so there is room.
        if let Some(slot) = tlvs.get_mut(n) {
            *slot = t;
            n += 1;
        }
    }
    match_from_tlvs(&tlvs[..n])
}

/// Builds a [`Match`] from OXM fields, checking prerequisites as OpenFlow
/// 1.3 requires (`BAD_PREREQ`).
pub fn match_from_tlvs(tlvs: &[Tlv]) -> Result<Match, OfpError> {
    use OxmField as O;
    let get = |f: O| tlvs.iter().find(|t| t.field == f);
    let dl_type = get(O::EthType).map(|t| t.value as u16);
    let nw_proto = get(O::IpProto).map(|t| t.value as u8);
    let is_ip = matches!(dl_type, Some(ethertype::IPV4) | Some(ethertype::IPV6));
    let mut m = Match::ANY;
    let mut or = |f: Field, v: u128, mask: u128| {
        let cur_mask = m.mask.get(f);
        let cur_v = m.value.get(f);
        m.mask.set(f, cur_mask | mask);
        m.value.set(f, (cur_v & !mask) | (v & mask));
    };
    for t in tlvs {
        let w = t.field.width();
        let full = if w == 16 {
            u128::MAX
        } else {
            (1u128 << (8 * w)) - 1
        };
        let mask = t.mask.unwrap_or(full);
        let prereq = match t.field {
            O::InPort
            | O::Metadata
            | O::EthDst
            | O::EthSrc
            | O::EthType
            | O::VlanVid
            | O::NxVlanTci => true,
            O::VlanPcp => get(O::VlanVid).is_some_and(|v| v.value as u16 & OFPVID_PRESENT != 0),
            O::IpDscp
            | O::IpEcn
            | O::IpProto
            | O::NxIpTos
            | O::NxIpEcn
            | O::NxIpTtl
            | O::NxIpFrag => is_ip,
            O::Ipv4Src | O::Ipv4Dst => dl_type == Some(ethertype::IPV4),
            O::Ipv6Src | O::Ipv6Dst => dl_type == Some(ethertype::IPV6),
            O::ArpOp | O::ArpSpa | O::ArpTpa | O::ArpSha | O::ArpTha => {
                matches!(dl_type, Some(ethertype::ARP) | Some(ETH_TYPE_RARP))
            }
            O::TcpSrc | O::TcpDst | O::NxTcpFlags | O::OnfTcpFlags => {
                is_ip && nw_proto == Some(ipproto::TCP)
            }
            O::UdpSrc | O::UdpDst => is_ip && nw_proto == Some(ipproto::UDP),
            O::SctpSrc | O::SctpDst => is_ip && nw_proto == Some(ipproto::SCTP),
            O::Icmpv4Type | O::Icmpv4Code => {
                dl_type == Some(ethertype::IPV4) && nw_proto == Some(ipproto::ICMP)
            }
            O::Icmpv6Type | O::Icmpv6Code => {
                dl_type == Some(ethertype::IPV6) && nw_proto == Some(ipproto::ICMPV6)
            }
        };
        if !prereq {
            return Err(OfpError::bad_match(
                Bmc::BadPrereq,
                format!("{:?} without its prerequisite", t.field),
            ));
        }
        let bad_value = |what: &str| OfpError::bad_match(Bmc::BadValue, what.to_string());
        match t.field {
            O::InPort => {
                let p = ofport_from_of13(t.value as u32)
                    .ok_or_else(|| bad_value("in_port is not a port a packet can come from"))?;
                or(Field::InPort, u128::from(p), Field::InPort.full_mask());
            }
            O::Metadata => or(Field::Metadata, t.value, mask),
            O::EthDst => or(Field::DlDst, t.value, mask),
            O::EthSrc => or(Field::DlSrc, t.value, mask),
            O::EthType => {
                if t.value < 0x600 {
                    return Err(bad_value("eth_type below 0x600 is a length, not a type"));
                }
                or(Field::DlType, t.value, mask)
            }
            O::VlanVid => {
                if t.value > 0x1fff {
                    return Err(bad_value("vlan_vid above 0x1fff"));
                }
                // VID bits with OFPVID_PRESENT required clear match no
                // packet, and have no stable encoding: refused.
                let present = u128::from(OFPVID_PRESENT);
                if t.value & 0x0fff & mask != 0 && mask & present != 0 && t.value & present == 0 {
                    return Err(bad_value(
                        "vlan_vid with VID bits but without OFPVID_PRESENT (0x1000) matches no packet",
                    ));
                }
                or(Field::VlanTci, t.value, mask & 0x1fff)
            }
            O::VlanPcp => {
                if t.value > 7 {
                    return Err(bad_value("vlan_pcp above 7"));
                }
                or(
                    Field::VlanTci,
                    (t.value << 13) | u128::from(VLAN_CFI),
                    0xe000 | u128::from(VLAN_CFI),
                )
            }
            O::NxVlanTci => {
                // As for vlan_vid: TCI bits with the CFI ("VLAN present")
                // bit required clear match no packet; refused.
                let cfi = u128::from(VLAN_CFI);
                if t.value & mask & !cfi != 0 && mask & cfi != 0 && t.value & cfi == 0 {
                    return Err(bad_value(
                        "vlan_tci with TCI bits but without the CFI (present) bit matches no packet",
                    ));
                }
                if mask & cfi != 0 && t.value & cfi == 0 {
                    // "No VLAN", whatever else the mask covers: the
                    // canonical form (OVS's, and what vlan_vid=OFPVID_NONE
                    // decodes to), so that it re-encodes to itself.
                    or(Field::VlanTci, 0, 0x1fff)
                } else {
                    or(Field::VlanTci, t.value, mask)
                }
            }
            O::IpDscp => {
                if t.value > 63 {
                    return Err(bad_value("ip_dscp above 63"));
                }
                or(Field::NwTos, t.value << 2, 0xfc)
            }
            O::NxIpTos => or(Field::NwTos, t.value & 0xfc, 0xfc),
            O::IpEcn | O::NxIpEcn => {
                if t.value > 3 {
                    return Err(bad_value("ip_ecn above 3"));
                }
                or(Field::NwTos, t.value, 0x03)
            }
            O::IpProto => or(Field::NwProto, t.value, 0xff),
            O::NxIpTtl => or(Field::NwTtl, t.value, 0xff),
            O::NxIpFrag => or(Field::NwFrag, t.value & 3, mask & 3),
            O::Ipv4Src | O::ArpSpa => or(Field::NwSrc, t.value, mask),
            O::Ipv4Dst | O::ArpTpa => or(Field::NwDst, t.value, mask),
            O::Ipv6Src => or(Field::Ipv6Src, t.value, mask),
            O::Ipv6Dst => or(Field::Ipv6Dst, t.value, mask),
            O::ArpOp => {
                if t.value > 0xff {
                    return Err(bad_value("arp_op above 255 cannot be matched"));
                }
                or(Field::NwProto, t.value, 0xff)
            }
            O::ArpSha => or(Field::ArpSha, t.value, mask),
            O::ArpTha => or(Field::ArpTha, t.value, mask),
            O::TcpSrc | O::UdpSrc | O::SctpSrc => or(Field::TpSrc, t.value, mask),
            O::TcpDst | O::UdpDst | O::SctpDst => or(Field::TpDst, t.value, mask),
            O::Icmpv4Type | O::Icmpv6Type => or(Field::TpSrc, t.value, 0xffff),
            O::Icmpv4Code | O::Icmpv6Code => or(Field::TpDst, t.value, 0xffff),
            O::NxTcpFlags | O::OnfTcpFlags => or(Field::TcpFlags, t.value, mask & TCP_FLAGS_EXACT),
        }
    }
    m.value = m.value.masked(&m.mask);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_found_by_its_class_and_number_and_nothing_else() {
        for f in OxmField::ALL {
            let (class, n, _, _) = f.spec();
            assert_eq!(OxmField::lookup(class, n), Some(f), "{f:?}");
        }
        let known = |class: u16, n: u8| {
            OxmField::ALL
                .iter()
                .any(|f| f.spec().0 == class && f.spec().1 == n)
        };
        for class in [OFPXMC_BASIC, OFPXMC_NXM_0, OFPXMC_NXM_1, 0x1234] {
            for n in 0..=127u8 {
                if !known(class, n) {
                    assert_eq!(
                        OxmField::lookup(class, n),
                        None,
                        "class {class:#x} field {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_match_with_a_field_twice_is_refused() {
        // ip, nw_dst=10.0.0.1 twice.
        let body = [
            0x80, 0x00, 0x0a, 0x02, 0x08, 0x00, // eth_type
            0x80, 0x00, 0x18, 0x04, 10, 0, 0, 1, // ipv4_dst
            0x80, 0x00, 0x18, 0x04, 10, 0, 0, 1, // ipv4_dst again
        ];
        let len = (4 + body.len()) as u16;
        let mut bytes = vec![0x00, 0x01];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&body);
        bytes.resize(bytes.len().next_multiple_of(8), 0);
        let err = decode_match(&mut Reader::new(&bytes)).expect_err("a field twice");
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
