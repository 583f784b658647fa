//! Actions and instructions ↔ [`OfAction`] lists, as `ovs-ofctl -O
//! OpenFlow13` encodes the flow syntax: `mod_*` as set-field (but
//! `mod_nw_ttl` as SET_NW_TTL and `mod_nw_tos` as IP_DSCP), `resubmit` as
//! the Nicira NXAST_RESUBMIT_TABLE experimenter action.
//!
//! flowmark rules hold one action list, so instructions are folded into it:
//! apply-actions first, then `clear_actions`, then each written action as
//! [`OfAction::Write`] (the action set runs when the pipeline ends), then
//! [`OfAction::GotoTable`]. A rule read back is encoded as the same
//! instructions.

use super::error::{BadActionCode as Bac, BadInstructionCode as Bic, OfpError};
use super::oxm::{put_oxm, read_oxm, OxmField};
use super::port::*;
use super::wire::{Put, Reader};
use fallback::key::{ethertype, ipproto, Field, VLAN_CFI};
use fallback::ofproto::{ofport, Match, OfAction, SetAction};

/// `OFPAT_*`.
mod at {
    pub const OUTPUT: u16 = 0;
    pub const PUSH_VLAN: u16 = 17;
    pub const POP_VLAN: u16 = 18;
    pub const GROUP: u16 = 22;
    pub const SET_NW_TTL: u16 = 23;
    pub const DEC_NW_TTL: u16 = 24;
    pub const SET_FIELD: u16 = 25;
    pub const EXPERIMENTER: u16 = 0xffff;
}

/// `OFPIT_*`.
mod it {
    pub const GOTO_TABLE: u16 = 1;
    pub const WRITE_METADATA: u16 = 2;
    pub const WRITE_ACTIONS: u16 = 3;
    pub const APPLY_ACTIONS: u16 = 4;
    pub const CLEAR_ACTIONS: u16 = 5;
    pub const METER: u16 = 6;
    pub const EXPERIMENTER: u16 = 0xffff;
}

/// Nicira's experimenter id and the action subtypes flowmark knows.
pub const NX_VENDOR_ID: u32 = 0x0000_2320;
const NXAST_RESUBMIT: u16 = 1;
const NXAST_RESUBMIT_TABLE: u16 = 14;
/// `OFPCML_NO_BUFFER`: send the whole packet to the controller.
pub const OFPCML_NO_BUFFER: u16 = 0xffff;

/// What the actions may assume about the packet (the rule's match), so that
/// `mod_tp_src` picks TCP/UDP/SCTP and set-field prerequisites are checked.
#[derive(Clone, Copy, Debug, Default)]
pub struct ActionContext {
    pub dl_type: Option<u16>,
    pub nw_proto: Option<u8>,
    /// The match requires a VLAN header.
    pub vlan: bool,
    /// Skip prerequisite checks (a packet-out's packet has no match).
    pub unchecked: bool,
}

impl ActionContext {
    pub fn of_match(m: &Match) -> Self {
        let exact = |f: Field| (m.mask.get(f) == f.full_mask()).then(|| m.value.get(f));
        let tci_mask = m.mask.get(Field::VlanTci) as u16;
        let tci = m.value.get(Field::VlanTci) as u16;
        ActionContext {
            dl_type: exact(Field::DlType).map(|v| v as u16),
            nw_proto: exact(Field::NwProto).map(|v| v as u8),
            vlan: tci_mask & VLAN_CFI != 0 && tci & VLAN_CFI != 0,
            unchecked: false,
        }
    }
    fn is_ip(&self) -> bool {
        matches!(self.dl_type, Some(ethertype::IPV4) | Some(ethertype::IPV6))
    }
}

// ---------------------------------------------------------------------------
// Encoding

fn put_output(out: &mut Vec<u8>, port: u32, max_len: u16) {
    out.put_u16(at::OUTPUT);
    out.put_u16(16);
    out.put_u32(port);
    out.put_u16(max_len);
    out.put_zeros(6);
}

fn put_set_field(out: &mut Vec<u8>, f: OxmField, v: u128) {
    let start = out.len();
    out.put_u16(at::SET_FIELD);
    out.put_u16(0);
    put_oxm(out, f, v, None);
    out.pad8_from(start);
    let len = out.len() - start;
    out.set_u16(start + 2, len as u16);
}

fn put_resubmit_table(out: &mut Vec<u8>, port: u16, table: u8) {
    out.put_u16(at::EXPERIMENTER);
    out.put_u16(16);
    out.put_u32(NX_VENDOR_ID);
    out.put_u16(NXAST_RESUBMIT_TABLE);
    out.put_u16(port);
    out.put_u8(table);
    out.put_zeros(3);
}

/// Writes one action.
pub fn encode_action(a: &OfAction, ctx: &ActionContext, out: &mut Vec<u8>) {
    match *a {
        OfAction::Output(p) => put_output(out, ofport_to_of13(p), 0),
        OfAction::InPort => put_output(out, OFPP_IN_PORT, 0),
        OfAction::Flood => put_output(out, OFPP_FLOOD, 0),
        OfAction::All => put_output(out, OFPP_ALL, 0),
        OfAction::Normal => put_output(out, OFPP_NORMAL, 0),
        OfAction::Controller { max_len } => put_output(out, OFPP_CONTROLLER, max_len),
        OfAction::DecTtl => {
            out.put_u16(at::DEC_NW_TTL);
            out.put_u16(8);
            out.put_zeros(4);
        }
        OfAction::StripVlan => {
            out.put_u16(at::POP_VLAN);
            out.put_u16(8);
            out.put_zeros(4);
        }
        OfAction::PushVlan(tpid) => {
            out.put_u16(at::PUSH_VLAN);
            out.put_u16(8);
            out.put_u16(tpid);
            out.put_zeros(2);
        }
        OfAction::Group(g) => {
            out.put_u16(at::GROUP);
            out.put_u16(8);
            out.put_u32(g);
        }
        OfAction::Resubmit { port, table } => put_resubmit_table(
            out,
            port.unwrap_or(ofport::IN_PORT) as u16,
            table.unwrap_or(0xff),
        ),
        // Instructions, not actions: `encode_instructions` writes them.
        OfAction::Write(_)
        | OfAction::ClearActions
        | OfAction::GotoTable(_)
        | OfAction::WriteMetadata { .. }
        | OfAction::Meter(_) => {}
        OfAction::Mod(f, v) | OfAction::SetField(f, v) => {
            let l4 = |tcp: OxmField, udp: OxmField, sctp: OxmField| match ctx.nw_proto {
                Some(ipproto::UDP) => udp,
                Some(ipproto::SCTP) => sctp,
                _ => tcp,
            };
            match f {
                Field::NwTtl => {
                    out.put_u16(at::SET_NW_TTL);
                    out.put_u16(8);
                    out.put_u8(v as u8);
                    out.put_zeros(3);
                }
                Field::DlSrc => put_set_field(out, OxmField::EthSrc, v),
                Field::DlDst => put_set_field(out, OxmField::EthDst, v),
                Field::NwSrc => put_set_field(out, OxmField::Ipv4Src, v),
                Field::NwDst => put_set_field(out, OxmField::Ipv4Dst, v),
                Field::NwTos => put_set_field(out, OxmField::IpDscp, (v & 0xfc) >> 2),
                Field::TpSrc => put_set_field(
                    out,
                    l4(OxmField::TcpSrc, OxmField::UdpSrc, OxmField::SctpSrc),
                    v,
                ),
                Field::TpDst => put_set_field(
                    out,
                    l4(OxmField::TcpDst, OxmField::UdpDst, OxmField::SctpDst),
                    v,
                ),
                Field::VlanTci => {
                    put_set_field(out, OxmField::VlanVid, u128::from(VLAN_CFI) | (v & 0x0fff))
                }
                Field::VlanPcp => put_set_field(out, OxmField::VlanPcp, v & 0x07),
                Field::NwEcn => put_set_field(out, OxmField::IpEcn, v & 0x03),
                Field::Ipv6Src => put_set_field(out, OxmField::Ipv6Src, v),
                Field::Ipv6Dst => put_set_field(out, OxmField::Ipv6Dst, v),
                // The flow syntax cannot set other fields.
                _ => {}
            }
        }
    }
}

pub fn encode_actions(actions: &[OfAction], ctx: &ActionContext, out: &mut Vec<u8>) {
    for a in actions {
        encode_action(a, ctx, out);
    }
}

/// Writes a rule's actions as instructions, in the specification's order:
/// meter, apply-actions (the plain actions; none for `drop`, as ovs-ofctl
/// sends it), clear-actions, write-actions, goto-table.
pub fn encode_instructions(actions: &[OfAction], ctx: &ActionContext, out: &mut Vec<u8>) {
    let is_instruction = |a: &OfAction| {
        matches!(
            a,
            OfAction::Write(_)
                | OfAction::ClearActions
                | OfAction::GotoTable(_)
                | OfAction::WriteMetadata { .. }
                | OfAction::Meter(_)
        )
    };
    if let Some(m) = fallback::ofproto::meter::meters_in(actions).next() {
        out.put_u16(it::METER);
        out.put_u16(8);
        out.put_u32(m);
    }
    let apply: Vec<OfAction> = actions
        .iter()
        .filter(|a| !is_instruction(a))
        .copied()
        .collect();
    let written: Vec<OfAction> = actions
        .iter()
        .filter_map(|a| match a {
            OfAction::Write(w) => Some(w.action()),
            _ => None,
        })
        .collect();
    let actions_instruction = |ty: u16, list: &[OfAction], out: &mut Vec<u8>| {
        let start = out.len();
        out.put_u16(ty);
        out.put_u16(0);
        out.put_zeros(4);
        encode_actions(list, ctx, out);
        let len = out.len() - start;
        out.set_u16(start + 2, len as u16);
    };
    if !apply.is_empty() {
        actions_instruction(it::APPLY_ACTIONS, &apply, out);
    }
    if actions.contains(&OfAction::ClearActions) {
        out.put_u16(it::CLEAR_ACTIONS);
        out.put_u16(8);
        out.put_zeros(4);
    }
    if !written.is_empty() {
        actions_instruction(it::WRITE_ACTIONS, &written, out);
    }
    if let Some((value, mask)) = actions.iter().find_map(|a| match a {
        OfAction::WriteMetadata { value, mask } => Some((*value, *mask)),
        _ => None,
    }) {
        out.put_u16(it::WRITE_METADATA);
        out.put_u16(24);
        out.put_zeros(4);
        out.put_u64(value);
        out.put_u64(mask);
    }
    if let Some(t) = actions.iter().find_map(|a| match a {
        OfAction::GotoTable(t) => Some(*t),
        _ => None,
    }) {
        out.put_u16(it::GOTO_TABLE);
        out.put_u16(8);
        out.put_u8(t);
        out.put_zeros(3);
    }
}

// ---------------------------------------------------------------------------
// Decoding

/// Where an action list is used: output to TABLE only makes sense in a
/// packet-out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionUse {
    Flow,
    PacketOut,
}

fn output_action(port: u32, max_len: u16, use_: ActionUse) -> Result<OfAction, OfpError> {
    Ok(match port {
        OFPP_IN_PORT => OfAction::InPort,
        OFPP_FLOOD => OfAction::Flood,
        OFPP_ALL => OfAction::All,
        OFPP_NORMAL => OfAction::Normal,
        OFPP_CONTROLLER => OfAction::Controller { max_len },
        OFPP_LOCAL if use_ == ActionUse::PacketOut => {
            return Err(OfpError::bad_action(
                Bac::BadOutPort,
                "output to LOCAL: flowmark has no local port",
            ))
        }
        OFPP_LOCAL => OfAction::Output(ofport::LOCAL),
        // A packet-out sent "to the table" runs the pipeline from table 0.
        OFPP_TABLE if use_ == ActionUse::PacketOut => OfAction::Resubmit {
            port: None,
            table: Some(0),
        },
        p if p < ofport::MAX => OfAction::Output(p),
        p => {
            return Err(OfpError::bad_action(
                Bac::BadOutPort,
                format!("output to port {p:#x}"),
            ))
        }
    })
}

fn check_set_prereq(f: OxmField, ctx: &ActionContext) -> Result<(), OfpError> {
    use OxmField as O;
    let ok = match f {
        O::EthSrc | O::EthDst => true,
        O::VlanVid | O::VlanPcp => true,
        O::Ipv4Src | O::Ipv4Dst => ctx.dl_type == Some(ethertype::IPV4),
        O::Ipv6Src | O::Ipv6Dst => ctx.dl_type == Some(ethertype::IPV6),
        O::IpDscp | O::IpEcn | O::NxIpEcn | O::NxIpTos | O::NxIpTtl => ctx.is_ip(),
        O::TcpSrc | O::TcpDst => ctx.is_ip() && ctx.nw_proto == Some(ipproto::TCP),
        O::UdpSrc | O::UdpDst => ctx.is_ip() && ctx.nw_proto == Some(ipproto::UDP),
        O::SctpSrc | O::SctpDst => ctx.is_ip() && ctx.nw_proto == Some(ipproto::SCTP),
        _ => false,
    };
    if ok || ctx.unchecked {
        Ok(())
    } else {
        Err(OfpError::bad_action(
            Bac::MatchInconsistent,
            format!("set-field {f:?} needs a match that guarantees the header"),
        ))
    }
}

fn set_field_action(r: &mut Reader<'_>, ctx: &ActionContext) -> Result<OfAction, OfpError> {
    let t = read_oxm(r).map_err(|e| {
        let detail = e.to_string();
        match e {
            OfpError::BadMatch {
                code: super::error::BadMatchCode::BadField,
                ..
            } => OfpError::bad_action(Bac::BadSetType, detail),
            _ => OfpError::bad_action(Bac::BadSetLen, detail),
        }
    })?;
    if t.mask.is_some() {
        return Err(OfpError::bad_action(
            Bac::BadSetArgument,
            "set-field with a mask",
        ));
    }
    use OxmField as O;
    let (f, v) = match t.field {
        O::EthSrc => (Field::DlSrc, t.value),
        O::EthDst => (Field::DlDst, t.value),
        O::Ipv4Src => (Field::NwSrc, t.value),
        O::Ipv4Dst => (Field::NwDst, t.value),
        O::Ipv6Src => (Field::Ipv6Src, t.value),
        O::Ipv6Dst => (Field::Ipv6Dst, t.value),
        O::IpDscp if t.value <= 63 => (Field::NwTos, t.value << 2),
        O::NxIpTos => (Field::NwTos, t.value & 0xfc),
        O::IpEcn | O::NxIpEcn if t.value <= 3 => (Field::NwEcn, t.value),
        O::NxIpTtl => (Field::NwTtl, t.value),
        O::TcpSrc | O::UdpSrc | O::SctpSrc => (Field::TpSrc, t.value),
        O::TcpDst | O::UdpDst | O::SctpDst => (Field::TpDst, t.value),
        // OFPVID_PRESENT must be set (Open vSwitch refuses a bare VID too).
        O::VlanVid if t.value <= 0x1fff && t.value & 0x1000 != 0 => {
            (Field::VlanTci, t.value & 0x0fff)
        }
        O::VlanPcp if t.value <= 7 => (Field::VlanPcp, t.value),
        O::IpDscp | O::VlanVid | O::VlanPcp | O::IpEcn | O::NxIpEcn => {
            return Err(OfpError::bad_action(
                Bac::BadSetArgument,
                format!("set-field {:?} value {:#x} out of range", t.field, t.value),
            ))
        }
        other => {
            return Err(OfpError::bad_action(
                Bac::BadSetType,
                format!("set-field {other:?} is not supported"),
            ))
        }
    };
    check_set_prereq(t.field, ctx)?;
    Ok(OfAction::Mod(f, v))
}

fn experimenter_action(r: &mut Reader<'_>) -> Result<OfAction, OfpError> {
    let bad_len = || OfpError::bad_action(Bac::BadLen, "Nicira action too short");
    let vendor = r.u32().map_err(|_| bad_len())?;
    if vendor != NX_VENDOR_ID {
        return Err(OfpError::bad_action(
            Bac::BadExperimenter,
            format!("experimenter {vendor:#x}"),
        ));
    }
    let subtype = r.u16().map_err(|_| bad_len())?;
    let port = u32::from(r.u16().map_err(|_| bad_len())?);
    let table = match subtype {
        NXAST_RESUBMIT => 0xff,
        NXAST_RESUBMIT_TABLE => r.u8().map_err(|_| bad_len())?,
        other => {
            return Err(OfpError::bad_action(
                Bac::BadExpType,
                format!("Nicira action subtype {other}"),
            ))
        }
    };
    let port = match port {
        ofport::IN_PORT => None,
        p if p < ofport::MAX || p == ofport::LOCAL => Some(p),
        p => {
            return Err(OfpError::bad_action(
                Bac::BadArgument,
                format!("resubmit to port {p:#x}"),
            ))
        }
    };
    let table = (table != 0xff).then_some(table);
    if port.is_none() && table.is_none() {
        return Err(OfpError::bad_action(
            Bac::BadArgument,
            "resubmit to the same port and table would loop",
        ));
    }
    Ok(OfAction::Resubmit { port, table })
}

/// Decodes an action list occupying all of `bytes`.
pub fn decode_actions(
    bytes: &[u8],
    ctx: &ActionContext,
    use_: ActionUse,
) -> Result<Vec<OfAction>, OfpError> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while !r.is_empty() {
        let bad_len = |d: &str| OfpError::bad_action(Bac::BadLen, d.to_string());
        let ty = r.u16().map_err(|_| bad_len("action header cut short"))?;
        let len = usize::from(r.u16().map_err(|_| bad_len("action header cut short"))?);
        if len < 8 || len % 8 != 0 {
            return Err(bad_len(
                "action length is not a multiple of 8 of at least 8",
            ));
        }
        let body = r
            .bytes(len - 4)
            .map_err(|_| bad_len("action runs past its list"))?;
        let mut b = Reader::new(body);
        let fixed = |want: usize| {
            if len == want {
                Ok(())
            } else {
                Err(bad_len("wrong length for the action type"))
            }
        };
        let a = match ty {
            at::OUTPUT => {
                fixed(16)?;
                let port = b.u32().map_err(|_| bad_len("output"))?;
                let max_len = b.u16().map_err(|_| bad_len("output"))?;
                output_action(port, max_len, use_)?
            }
            at::PUSH_VLAN => {
                fixed(8)?;
                let tpid = b.u16().map_err(|_| bad_len("push_vlan"))?;
                if tpid != ethertype::VLAN && tpid != ethertype::QINQ {
                    return Err(OfpError::bad_action(
                        Bac::BadArgument,
                        format!("push_vlan ethertype {tpid:#06x}"),
                    ));
                }
                OfAction::PushVlan(tpid)
            }
            at::POP_VLAN => {
                fixed(8)?;
                OfAction::StripVlan
            }
            at::SET_NW_TTL => {
                fixed(8)?;
                if !ctx.is_ip() && !ctx.unchecked {
                    return Err(OfpError::bad_action(
                        Bac::MatchInconsistent,
                        "set_nw_ttl needs an IP match",
                    ));
                }
                OfAction::Mod(
                    Field::NwTtl,
                    u128::from(b.u8().map_err(|_| bad_len("set_nw_ttl"))?),
                )
            }
            at::DEC_NW_TTL => {
                fixed(8)?;
                OfAction::DecTtl
            }
            at::SET_FIELD => set_field_action(&mut b, ctx)?,
            // Whether the group exists is the flow mod's check (the
            // group table is the switch's).
            at::GROUP => {
                fixed(8)?;
                let g = b.u32().map_err(|_| bad_len("group"))?;
                if g > fallback::ofproto::group::GROUP_MAX {
                    return Err(OfpError::bad_action(
                        Bac::BadOutGroup,
                        format!("group:{g:#x} is a reserved group id"),
                    ));
                }
                OfAction::Group(g)
            }
            at::EXPERIMENTER => experimenter_action(&mut b)?,
            other => {
                return Err(OfpError::bad_action(
                    Bac::BadType,
                    format!("action type {other} is not supported"),
                ))
            }
        };
        out.push(a);
    }
    Ok(out)
}

/// Decodes a flow mod's instructions into one action list.
pub fn decode_instructions(
    bytes: &[u8],
    table: u8,
    ctx: &ActionContext,
) -> Result<Vec<OfAction>, OfpError> {
    let mut r = Reader::new(bytes);
    let mut apply: Option<Vec<OfAction>> = None;
    let mut write: Option<Vec<OfAction>> = None;
    let mut goto: Option<u8> = None;
    let mut clear = false;
    let mut metadata: Option<(u64, u64)> = None;
    let mut meter: Option<u32> = None;
    while !r.is_empty() {
        let bad_len = |d: &str| OfpError::bad_instruction(Bic::BadLen, d.to_string());
        let ty = r
            .u16()
            .map_err(|_| bad_len("instruction header cut short"))?;
        let len = usize::from(
            r.u16()
                .map_err(|_| bad_len("instruction header cut short"))?,
        );
        if len < 8 || len % 8 != 0 {
            return Err(bad_len("instruction length is not a multiple of 8"));
        }
        let body = r
            .bytes(len - 4)
            .map_err(|_| bad_len("instruction runs past the message"))?;
        let mut b = Reader::new(body);
        let dup = |seen: bool| {
            if seen {
                Err(OfpError::bad_instruction(
                    Bic::UnsupInst,
                    "an instruction type appears twice",
                ))
            } else {
                Ok(())
            }
        };
        match ty {
            it::APPLY_ACTIONS | it::WRITE_ACTIONS => {
                b.skip(4).map_err(|_| bad_len("actions instruction"))?;
                let acts = decode_actions(b.rest(), ctx, ActionUse::Flow)?;
                let slot = if ty == it::APPLY_ACTIONS {
                    &mut apply
                } else {
                    &mut write
                };
                dup(slot.is_some())?;
                *slot = Some(acts);
            }
            it::GOTO_TABLE => {
                dup(goto.is_some())?;
                let t = b.u8().map_err(|_| bad_len("goto_table"))?;
                if t <= table || t == 0xff {
                    return Err(OfpError::bad_instruction(
                        Bic::BadTableId,
                        format!("goto_table:{t} from table {table} (must go forward)"),
                    ));
                }
                goto = Some(t);
            }
            it::CLEAR_ACTIONS => {
                dup(clear)?;
                clear = true;
            }
            it::WRITE_METADATA => {
                dup(metadata.is_some())?;
                if len != 24 {
                    return Err(bad_len("write_metadata is 24 bytes"));
                }
                b.skip(4).map_err(|_| bad_len("write_metadata"))?;
                let value = b.u64().map_err(|_| bad_len("write_metadata"))?;
                let mask = b.u64().map_err(|_| bad_len("write_metadata"))?;
                metadata = Some((value, mask));
            }
            // Whether the meter exists is the flow mod's check (the meter
            // table is the switch's).
            it::METER => {
                dup(meter.is_some())?;
                if len != 8 {
                    return Err(bad_len("meter is 8 bytes"));
                }
                meter = Some(b.u32().map_err(|_| bad_len("meter instruction"))?);
            }
            it::EXPERIMENTER => {
                return Err(OfpError::bad_instruction(
                    Bic::BadExperimenter,
                    "experimenter instructions are not supported",
                ))
            }
            other => {
                return Err(OfpError::bad_instruction(
                    Bic::UnknownInst,
                    format!("instruction type {other}"),
                ))
            }
        }
    }
    let mut actions: Vec<OfAction> = meter.map(OfAction::Meter).into_iter().collect();
    actions.extend(apply.unwrap_or_default());
    if clear {
        actions.push(OfAction::ClearActions);
    }
    for a in write.unwrap_or_default() {
        let w = SetAction::from_action(a).ok_or_else(|| {
            OfpError::bad_action(
                Bac::BadType,
                format!("{a:?} cannot be in an action set (write-actions)"),
            )
        })?;
        actions.push(OfAction::Write(w));
    }
    if let Some((value, mask)) = metadata {
        actions.push(OfAction::WriteMetadata { value, mask });
    }
    if let Some(t) = goto {
        actions.push(OfAction::GotoTable(t));
    }
    Ok(actions)
}
