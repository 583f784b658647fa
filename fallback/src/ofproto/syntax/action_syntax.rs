//! Flow settings (table, priority, cookie, timeouts) and actions: parsed,
//! checked against the match as ovs-ofctl checks them, and printed.

use super::*;

// ---------------------------------------------------------------------------
// Flow settings (table, priority, cookie, timeouts)

pub(super) fn is_flow_setting(key: &str) -> bool {
    matches!(
        key,
        "table" | "priority" | "cookie" | "idle_timeout" | "hard_timeout" | "idle" | "hard"
    )
}

/// Applies a flow-level setting; `Ok(false)` when `kv` is not one.
pub(super) fn parse_flow_setting(rule: &mut Rule, kv: &KeyValue<'_>) -> Result<bool> {
    let bad = |expected: &str| FlowParseError::BadValue {
        field: kv.key.to_string(),
        value: kv.value.to_string(),
        expected: expected.to_string(),
    };
    match kv.key {
        "table" => {
            let t = parse_decimal(kv.value)
                .filter(|t| *t <= u64::from(TABLE_ALL))
                .ok_or_else(|| bad("a table number from 0 to 254 (255 means table 0)"))?;
            rule.table = if t == u64::from(TABLE_ALL) {
                0
            } else {
                t as u8
            };
        }
        "priority" => {
            rule.priority = parse_uint(kv.value)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| bad("a priority from 0 to 65535"))?;
        }
        // `idle`/`hard` are how ovs-ofctl prints them; accepting them makes
        // the canonical text re-parse (ovs-ofctl itself refuses them).
        "idle_timeout" | "hard_timeout" | "idle" | "hard" => {
            let t = parse_uint(kv.value)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| bad("seconds from 0 (never) to 65535"))?;
            if kv.key.starts_with("idle") {
                rule.idle_timeout = t;
            } else {
                rule.hard_timeout = t;
            }
        }
        "cookie" => {
            if kv.value.contains('/') {
                return Err(FlowParseError::NotAllowed {
                    key: kv.token.to_string(),
                    context: "a flow to add",
                    advice:
                        "a cookie mask only selects flows to delete or modify; give a plain cookie",
                });
            }
            let c = parse_uint(kv.value)
                .and_then(|c| u64::try_from(c).ok())
                .ok_or_else(|| bad("a 64-bit number (decimal, or hex with 0x)"))?;
            // All ones means "no cookie" to OVS: it prints none.
            rule.cookie = if c == u64::MAX { 0 } else { c };
        }
        "send_flow_rem" | "check_overlap" | "reset_counts" | "no_packet_counts"
        | "no_byte_counts" | "importance" | "out_port" | "out_group" => {
            return Err(FlowParseError::Unsupported {
                what: kv.token.to_string(),
                advice: "flowmark rules have no flags, importance or out_port; remove it",
            })
        }
        _ => return Ok(false),
    }
    Ok(true)
}

// ---------------------------------------------------------------------------
// Actions

/// An action as written: what it does, and which OVS action it was
/// spelled as (that decides which protocols can carry it and how
/// OpenFlow 1.3 prints it).
#[derive(Clone, Debug)]
pub(super) struct ParsedAction {
    pub(super) action: OfAction,
    pub(super) kind: Kind,
    pub(super) token: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    /// Not a set-field action, or an OpenFlow 1.0 `mod_*` one.
    Plain,
    /// `set_field:V->F`: `prereq` is F's; `dscp` when F is `ip_dscp`;
    /// `vid_present` when F is `vlan_vid` and V has the 0x1000 bit.
    SetField {
        prereq: Prereq,
        dscp: bool,
        vid_present: bool,
    },
    /// `load:V->NXM_...` (as ovs-ofctl prints set_field in OpenFlow 1.0).
    Load,
}

/// Parses an action list as written; [`check_actions`] checks it against
/// the match.
pub(super) fn parse_actions(s: &str) -> Result<Vec<ParsedAction>> {
    let mut actions = Vec::new();
    let mut drop_token: Option<String> = None;
    let mut first_other: Option<String> = None;
    let mut pending_ipv6_low: Option<(Field, u64, String)> = None;
    for kv in KeyValues::new(s) {
        let name = kv.key.to_ascii_lowercase();
        if let Some((_, _, token)) = &pending_ipv6_low {
            if name != "load" {
                return Err(unsupported_load(token));
            }
        }
        if name == "drop" {
            drop_token = Some(kv.token.to_string());
            continue;
        }
        if first_other.is_none() {
            first_other = Some(kv.token.to_string());
        }
        let token = kv.token.to_string();
        if name == "load" {
            let (field, half, v) = parse_load(&kv)?;
            match (half, pending_ipv6_low.take()) {
                (LoadHalf::Whole, None) => actions.push(ParsedAction {
                    action: OfAction::Mod(field, v),
                    kind: Kind::Load,
                    token,
                }),
                (LoadHalf::Low, None) => {
                    pending_ipv6_low = Some((field, v as u64, token));
                }
                (LoadHalf::High, Some((low_field, low, low_token))) if low_field == field => {
                    actions.push(ParsedAction {
                        action: OfAction::Mod(field, (v << 64) | u128::from(low)),
                        kind: Kind::Load,
                        token: format!("{low_token},{token}"),
                    });
                }
                _ => return Err(unsupported_load(kv.token)),
            }
            continue;
        }
        let (action, kind) = parse_action(&name, &kv)?;
        actions.push(ParsedAction {
            action,
            kind,
            token,
        });
    }
    if let Some((_, _, token)) = pending_ipv6_low {
        return Err(unsupported_load(&token));
    }
    if let (Some(_), Some(other)) = (&drop_token, first_other) {
        return Err(FlowParseError::DropNotAlone { other });
    }
    // A meter is an OpenFlow 1.3 instruction: one, before the actions.
    let mut meters = actions
        .iter()
        .enumerate()
        .filter(|(_, a)| matches!(a.action, OfAction::Meter(_)));
    if let Some((at, first)) = meters.next() {
        if at > 0 {
            return Err(FlowParseError::InstructionOrder {
                what: first.token.clone(),
                advice: "a meter runs before a flow's actions: write it first",
            });
        }
        if let Some((_, second)) = meters.next() {
            return Err(FlowParseError::InstructionOrder {
                what: second.token.clone(),
                advice: "a flow has at most one meter: remove one",
            });
        }
    }
    Ok(actions)
}

pub(super) fn unsupported_load(token: &str) -> FlowParseError {
    FlowParseError::Unsupported {
        what: token.to_string(),
        advice: "flowmark reads load only as ovs-ofctl prints set_field (load:V->NXM_NX_IP_TTL[], or the NXM_NX_IPV6_SRC/DST [0..63] then [64..127] pair); use set_field:VALUE->FIELD",
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum LoadHalf {
    Whole,
    Low,
    High,
}

pub(super) fn parse_load(kv: &KeyValue<'_>) -> Result<(Field, LoadHalf, u128)> {
    let (value, dst) = kv
        .value
        .split_once("->")
        .ok_or_else(|| unsupported_load(kv.token))?;
    let (field, half) = match dst {
        "NXM_NX_IP_TTL[]" => (Field::NwTtl, LoadHalf::Whole),
        "NXM_NX_IP_ECN[]" => (Field::NwEcn, LoadHalf::Whole),
        "NXM_NX_IPV6_SRC[0..63]" => (Field::Ipv6Src, LoadHalf::Low),
        "NXM_NX_IPV6_SRC[64..127]" => (Field::Ipv6Src, LoadHalf::High),
        "NXM_NX_IPV6_DST[0..63]" => (Field::Ipv6Dst, LoadHalf::Low),
        "NXM_NX_IPV6_DST[64..127]" => (Field::Ipv6Dst, LoadHalf::High),
        // How OpenFlow 1.0 carries set_field to sctp_src/sctp_dst.
        "OXM_OF_SCTP_SRC[]" => (Field::TpSrc, LoadHalf::Whole),
        "OXM_OF_SCTP_DST[]" => (Field::TpDst, LoadHalf::Whole),
        _ => return Err(unsupported_load(kv.token)),
    };
    let limit: u128 = match field {
        Field::NwTtl => 0xff,
        Field::NwEcn => 0x03,
        Field::TpSrc | Field::TpDst => 0xffff,
        _ => u128::from(u64::MAX),
    };
    let v =
        parse_uint(value)
            .filter(|v| *v <= limit)
            .ok_or_else(|| FlowParseError::BadActionArg {
                action: "load".into(),
                value: value.into(),
                expected: format!("a number up to {limit:#x}"),
            })?;
    Ok((field, half, v))
}

pub(super) fn bad_arg(action: &str, value: &str, expected: &str) -> FlowParseError {
    FlowParseError::BadActionArg {
        action: action.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

/// The output action for a port number or name; refuses ports OVS refuses.
pub(super) fn output_to(port: u32, action: &str, value: &str) -> Result<OfAction> {
    Ok(match port {
        ofport::IN_PORT => OfAction::InPort,
        ofport::FLOOD => OfAction::Flood,
        ofport::ALL => OfAction::All,
        ofport::NORMAL => OfAction::Normal,
        ofport::CONTROLLER => OfAction::Controller { max_len: u16::MAX },
        ofport::LOCAL => OfAction::Output(ofport::LOCAL),
        ofport::TABLE => {
            return Err(FlowParseError::Unsupported {
                what: value.to_string(),
                advice: "output to TABLE is only meaningful in packet-outs; use resubmit(,TABLE)",
            })
        }
        p if p < ofport::MAX => OfAction::Output(p),
        _ => {
            return Err(bad_arg(
                action,
                value,
                "a port below 65280 or one of in_port, flood, all, normal, local, controller",
            ))
        }
    })
}

pub(super) fn parse_u16_arg(action: &str, value: &str, what: &str) -> Result<u16> {
    parse_uint(value)
        .and_then(|v| u16::try_from(v).ok())
        .ok_or_else(|| bad_arg(action, value, what))
}

pub(super) fn parse_u8_arg(action: &str, value: &str, what: &str) -> Result<u8> {
    parse_uint(value)
        .and_then(|v| u8::try_from(v).ok())
        .ok_or_else(|| bad_arg(action, value, what))
}

const VLAN_PRIORITY: &str = "a VLAN priority from 0 to 7";
const ECN_VALUE: &str = "an ECN value from 0 to 3";

/// A number from 0 to `max`.
fn parse_upto_arg(action: &str, value: &str, max: u8, what: &str) -> Result<u128> {
    parse_uint(value)
        .filter(|v| *v <= u128::from(max))
        .ok_or_else(|| bad_arg(action, value, what))
}

pub(super) fn parse_action(name: &str, kv: &KeyValue<'_>) -> Result<(OfAction, Kind)> {
    let v = kv.value;
    let mac = |action: &str| -> Result<u128> {
        parse_mac(v)
            .map(u128::from)
            .ok_or_else(|| bad_arg(action, v, "an Ethernet address like aa:bb:cc:dd:ee:ff"))
    };
    let ip = |action: &str| -> Result<u128> {
        parse_ipv4(v)
            .map(u128::from)
            .ok_or_else(|| bad_arg(action, v, "an IPv4 address like 192.168.0.1"))
    };
    if name == "set_field" {
        return parse_set_field(kv);
    }
    let action = match name {
        "output" => {
            if kv.token.contains('(') {
                return Err(FlowParseError::Unsupported {
                    what: kv.token.into(),
                    advice: "use output:PORT",
                });
            }
            let port = parse_port(v).ok_or_else(|| {
                bad_arg("output", v, "a port number or one of in_port, flood, all, normal, local, controller")
            })?;
            output_to(port, "output", v)?
        }
        "controller" => OfAction::Controller {
            max_len: parse_controller(v)?,
        },
        "mod_dl_src" => OfAction::Mod(Field::DlSrc, mac("mod_dl_src")?),
        "mod_dl_dst" => OfAction::Mod(Field::DlDst, mac("mod_dl_dst")?),
        "mod_nw_src" => OfAction::Mod(Field::NwSrc, ip("mod_nw_src")?),
        "mod_nw_dst" => OfAction::Mod(Field::NwDst, ip("mod_nw_dst")?),
        "mod_nw_tos" => {
            let tos = parse_u8_arg("mod_nw_tos", v, "a TOS value from 0 to 252 with the two ECN bits zero (a multiple of 4)")?;
            if tos & ECN_MASK != 0 {
                return Err(bad_arg("mod_nw_tos", v, "a TOS value with the two ECN bits zero (a multiple of 4)"));
            }
            OfAction::Mod(Field::NwTos, u128::from(tos))
        }
        "mod_nw_ttl" => {
            let ttl = parse_u8_arg("mod_nw_ttl", v, "a TTL from 0 to 255")?;
            OfAction::Mod(Field::NwTtl, u128::from(ttl))
        }
        "mod_tp_src" => OfAction::Mod(
            Field::TpSrc,
            u128::from(parse_u16_arg("mod_tp_src", v, "a port from 0 to 65535")?),
        ),
        "mod_tp_dst" => OfAction::Mod(
            Field::TpDst,
            u128::from(parse_u16_arg("mod_tp_dst", v, "a port from 0 to 65535")?),
        ),
        "mod_vlan_pcp" => OfAction::Mod(
            Field::VlanPcp,
            parse_upto_arg("mod_vlan_pcp", v, 7, VLAN_PRIORITY)?,
        ),
        "mod_nw_ecn" => OfAction::Mod(
            Field::NwEcn,
            parse_upto_arg("mod_nw_ecn", v, 3, ECN_VALUE)?,
        ),
        "mod_vlan_vid" => {
            let vid = parse_u16_arg("mod_vlan_vid", v, "a VLAN id from 0 to 4095")?;
            if vid > 0x0fff {
                return Err(bad_arg("mod_vlan_vid", v, "a VLAN id from 0 to 4095"));
            }
            OfAction::Mod(Field::VlanTci, u128::from(vid))
        }
        "dec_ttl" => {
            if !v.is_empty() {
                return Err(FlowParseError::Unsupported {
                    what: kv.token.into(),
                    advice: "dec_ttl takes no controller ids in flowmark; write dec_ttl",
                });
            }
            OfAction::DecTtl
        }
        "strip_vlan" | "pop_vlan" => OfAction::StripVlan,
        "push_vlan" => {
            let tpid = parse_u16_arg("push_vlan", v, "a VLAN ethertype: 0x8100 or 0x88a8")?;
            if tpid != ethertype::VLAN && tpid != ethertype::QINQ {
                return Err(bad_arg("push_vlan", v, "a VLAN ethertype: 0x8100 or 0x88a8"));
            }
            OfAction::PushVlan(tpid)
        }
        "resubmit" => parse_resubmit(kv)?,
        "group" if kv.has_value => {
            let advice = "a group id from 0 to 4294967040 (0xffffff00)";
            let id = parse_uint(v)
                .and_then(|id| u32::try_from(id).ok())
                .filter(|id| *id <= crate::ofproto::group::GROUP_MAX)
                .ok_or_else(|| bad_arg("group", v, advice))?;
            OfAction::Group(id)
        }
        "meter" if kv.has_value => {
            let advice = "a meter id from 1 to 4294901760 (0xffff0000)";
            let id = parse_uint(v)
                .and_then(|id| u32::try_from(id).ok())
                .filter(|id| (1..=crate::ofproto::meter::METER_MAX).contains(id))
                .ok_or_else(|| bad_arg("meter", v, advice))?;
            OfAction::Meter(id)
        }
        "enqueue" | "note" | "learn" | "ct" | "goto_table"
        | "write_metadata" | "set_queue" | "pop_queue" | "fin_timeout" | "multipath"
        | "bundle" | "group" | "meter" | "move" | "push_mpls" | "pop_mpls" | "set_tunnel"
        | "sample" | "exit" | "clone" | "encap" | "decap" | "conjunction" => {
            return Err(FlowParseError::Unsupported {
                what: kv.token.into(),
                advice: "flowmark implements output, flood, all, normal, in_port, controller, drop, mod_*, set_field, dec_ttl, strip_vlan, push_vlan, group, meter and resubmit",
            })
        }
        _ if !kv.has_value => match parse_port(kv.key) {
            Some(port) => output_to(port, "output", kv.key)?,
            None => {
                return Err(FlowParseError::UnknownAction {
                    name: kv.key.into(),
                    token: kv.token.into(),
                })
            }
        },
        _ => {
            return Err(FlowParseError::UnknownAction {
                name: kv.key.into(),
                token: kv.token.into(),
            })
        }
    };
    Ok((action, Kind::Plain))
}

/// `controller`, `controller:MAX_LEN`, `controller(max_len=N)`.
pub(super) fn parse_controller(v: &str) -> Result<u16> {
    if v.is_empty() {
        return Ok(u16::MAX);
    }
    if let Some(n) = parse_decimal(v) {
        return u16::try_from(n).map_err(|_| bad_arg("controller", v, "a max_len from 0 to 65535"));
    }
    let mut max_len = u16::MAX;
    for kv in KeyValues::new(v) {
        if kv.key == "max_len" {
            max_len = parse_decimal(kv.value)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| bad_arg("controller", kv.value, "a max_len from 0 to 65535"))?;
        } else {
            return Err(FlowParseError::Unsupported {
                what: format!("controller({v})"),
                advice: "flowmark's controller action takes only max_len",
            });
        }
    }
    Ok(max_len)
}

/// `resubmit(PORT,TABLE)`, `resubmit(,TABLE)`, `resubmit:PORT`.
pub(super) fn parse_resubmit(kv: &KeyValue<'_>) -> Result<OfAction> {
    let (port_s, table_s) = match kv.value.split_once(',') {
        Some((p, rest)) => {
            if let Some((t, extra)) = rest.split_once(',') {
                if !extra.is_empty() {
                    return Err(bad_arg("resubmit", extra, "at most (PORT,TABLE)"));
                }
                (p, t)
            } else {
                (p, rest)
            }
        }
        None => (kv.value, ""),
    };
    let port = match port_s {
        "" => None,
        p => match parse_port(p) {
            Some(ofport::IN_PORT) => None,
            Some(p) => Some(p),
            None => {
                return Err(bad_arg(
                    "resubmit",
                    p,
                    "a port number or name (or nothing, for the input port)",
                ))
            }
        },
    };
    let table = match table_s {
        "" => None,
        t => match parse_decimal(t) {
            Some(255) => None,
            Some(t) if t < 255 => Some(t as u8),
            _ => {
                return Err(bad_arg(
                    "resubmit",
                    t,
                    "a table number from 0 to 254 (or nothing, for this table)",
                ))
            }
        },
    };
    if port.is_none() && table.is_none() {
        return Err(bad_arg(
            "resubmit",
            kv.value,
            "a port or a table: resubmit(,TABLE), resubmit(PORT,TABLE) or resubmit:PORT",
        ));
    }
    Ok(OfAction::Resubmit { port, table })
}

/// set_field target names: (field, prerequisite, value syntax).
pub(super) fn set_field_target(name: &str) -> Option<(Field, Prereq, SetSyntax)> {
    use Prereq as P;
    Some(match name {
        "eth_src" | "dl_src" => (Field::DlSrc, P::None, SetSyntax::Mac),
        "eth_dst" | "dl_dst" => (Field::DlDst, P::None, SetSyntax::Mac),
        "ip_src" | "nw_src" => (Field::NwSrc, P::Ipv4, SetSyntax::Ipv4),
        "ip_dst" | "nw_dst" => (Field::NwDst, P::Ipv4, SetSyntax::Ipv4),
        "ipv6_src" => (Field::Ipv6Src, P::Ipv6, SetSyntax::Ipv6),
        "ipv6_dst" => (Field::Ipv6Dst, P::Ipv6, SetSyntax::Ipv6),
        "nw_tos" => (Field::NwTos, P::IpAny, SetSyntax::Tos),
        "ip_dscp" => (Field::NwTos, P::IpAny, SetSyntax::Dscp),
        "ip_ecn" | "nw_ecn" => (Field::NwEcn, P::IpAny, SetSyntax::UpTo(3, ECN_VALUE)),
        "nw_ttl" => (Field::NwTtl, P::IpAny, SetSyntax::Int(1)),
        // OVS's tp_src/tp_dst are the TCP fields.
        "tcp_src" | "tp_src" => (Field::TpSrc, P::Tcp, SetSyntax::Int(2)),
        "tcp_dst" | "tp_dst" => (Field::TpDst, P::Tcp, SetSyntax::Int(2)),
        "udp_src" => (Field::TpSrc, P::Udp, SetSyntax::Int(2)),
        "udp_dst" => (Field::TpDst, P::Udp, SetSyntax::Int(2)),
        "sctp_src" => (Field::TpSrc, P::Sctp, SetSyntax::Int(2)),
        "sctp_dst" => (Field::TpDst, P::Sctp, SetSyntax::Int(2)),
        "vlan_vid" => (Field::VlanTci, P::None, SetSyntax::VlanVid),
        "vlan_pcp" => (Field::VlanPcp, P::None, SetSyntax::UpTo(7, VLAN_PRIORITY)),
        _ => return None,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SetSyntax {
    Mac,
    Ipv4,
    Ipv6,
    Tos,
    Dscp,
    Int(u32),
    /// A small field's values, 0 to the bound (VLAN PCP, ECN), and what
    /// the error calls them.
    UpTo(u8, &'static str),
    VlanVid,
}

pub(super) fn parse_set_field(kv: &KeyValue<'_>) -> Result<(OfAction, Kind)> {
    let (value, target) = kv.value.split_once("->").ok_or_else(|| {
        bad_arg(
            "set_field",
            kv.value,
            "VALUE->FIELD, e.g. set_field:10.0.0.1->nw_src",
        )
    })?;
    let Some((field, prereq, syntax)) = set_field_target(target) else {
        return Err(bad_arg(
            "set_field",
            target,
            "one of eth_src, eth_dst, ip_src, ip_dst, ipv6_src, ipv6_dst, nw_tos, ip_dscp, ip_ecn, nw_ttl, tcp_src, tcp_dst, udp_src, udp_dst, sctp_src, sctp_dst, vlan_vid, vlan_pcp",
        ));
    };
    if value.contains('/') {
        return Err(FlowParseError::Unsupported {
            what: kv.token.into(),
            advice: "flowmark sets whole fields; drop the /MASK",
        });
    }
    let bad = |what: &str| bad_arg("set_field", value, what);
    let v: u128 = match syntax {
        SetSyntax::Mac => parse_mac(value)
            .map(u128::from)
            .ok_or_else(|| bad("an Ethernet address"))?,
        SetSyntax::Ipv4 => parse_ipv4(value)
            .map(u128::from)
            .ok_or_else(|| bad("an IPv4 address"))?,
        SetSyntax::Ipv6 => parse_ipv6(value).ok_or_else(|| bad("an IPv6 address"))?,
        SetSyntax::Tos => parse_uint(value)
            .filter(|t| *t <= 0xff && *t & u128::from(ECN_MASK) == 0)
            .ok_or_else(|| {
                bad("a TOS value with the two ECN bits zero (a multiple of 4, at most 252)")
            })?,
        SetSyntax::Dscp => {
            parse_uint(value)
                .filter(|d| *d <= 63)
                .ok_or_else(|| bad("a DSCP value from 0 to 63"))?
                << 2
        }
        SetSyntax::Int(bytes) => parse_uint(value)
            .filter(|x| *x < 1u128 << (8 * bytes))
            .ok_or_else(|| {
                bad(if bytes == 1 {
                    "a number from 0 to 255"
                } else {
                    "a number from 0 to 65535"
                })
            })?,
        SetSyntax::UpTo(max, what) => parse_upto_arg("set_field", value, max, what)?,
        SetSyntax::VlanVid => parse_uint(value).filter(|x| *x <= 0x1fff).ok_or_else(|| {
            bad("a VLAN id from 0 to 4095 (0x1000 may be set, as in OpenFlow 1.2+)")
        })?,
    };
    let kind = Kind::SetField {
        prereq,
        dscp: syntax == SetSyntax::Dscp,
        vid_present: syntax == SetSyntax::VlanVid && v & u128::from(VLAN_CFI) != 0,
    };
    let v = if syntax == SetSyntax::VlanVid {
        v & 0x0fff
    } else {
        v
    };
    Ok((OfAction::Mod(field, v), kind))
}

/// What checking an action list against a match found, as OVS's
/// ofpacts_check does it: the protocols that can carry the actions with
/// this match, and for each action whether the packet had a VLAN header
/// when it ran.
pub(super) struct Checked {
    pub(super) usable: u8,
    pub(super) had_vlan: Vec<bool>,
}

/// Checks the actions in order against the match, tracking the VLAN
/// headers that push_vlan/strip_vlan/mod_vlan_vid add and remove. A
/// set_field (or load) whose field's prerequisites fail is refused; an
/// OpenFlow 1.0 action that does not fit the match (mod_nw_src on IPv6,
/// strip_vlan without a VLAN, mod_tp_dst on ICMP, ...) only rules out the
/// protocols that check consistency, OpenFlow 1.1 and later; if push_vlan
/// needs exactly those, the flow is refused.
pub(super) fn check_actions(actions: &[ParsedAction], m: &Match) -> Result<Checked> {
    let dl_type = (m.value.get(Field::DlType) & m.mask.get(Field::DlType)) as u16;
    let nw_proto = (m.value.get(Field::NwProto) & m.mask.get(Field::NwProto)) as u8;
    let ip4 = dl_type == ethertype::IPV4;
    let ip = ip4 || dl_type == ethertype::IPV6;
    let later = ip && m.value.get(Field::NwFrag) as u8 & frag::LATER != 0;
    let ports = ip && matches!(nw_proto, ipproto::TCP | ipproto::UDP | ipproto::SCTP);
    let mut vlans = [m.value.get(Field::VlanTci) as u16 & VLAN_CFI != 0, false];
    let mut usable = OF10 | NXM | OF13;
    let mut inconsistent: Option<(&ParsedAction, &'static str, &'static str)> = None;
    let mut of11: Option<&ParsedAction> = None;
    let mut had_vlan = Vec::with_capacity(actions.len());
    let needs = |a: &ParsedAction, needs: &'static str, hint: &'static str| {
        FlowParseError::ActionPrerequisite {
            action: a.token.clone(),
            needs,
            hint,
        }
    };
    for a in actions {
        had_vlan.push(vlans[0]);
        let mut consistent_if = |ok: bool, what: &'static str, hint: &'static str| {
            if !ok {
                usable &= OF10 | NXM;
                inconsistent.get_or_insert((a, what, hint));
            }
        };
        match (a.action, a.kind) {
            (OfAction::Meter(_), _) => {
                usable &= OF13;
                of11.get_or_insert(a);
            }
            (OfAction::PushVlan(_), _) => {
                usable &= OF13;
                of11.get_or_insert(a);
                if vlans[1] {
                    return Err(FlowParseError::TooManyVlans {
                        action: a.token.clone(),
                    });
                }
                vlans = [true, vlans[0]];
            }
            (OfAction::StripVlan, _) => {
                consistent_if(vlans[0], "packets with a VLAN header", "dl_vlan=VID");
                vlans = [vlans[1], false];
            }
            (OfAction::DecTtl, _) => consistent_if(ip, "IPv4 or IPv6", "ip"),
            (OfAction::Mod(field, _), Kind::Plain) => match field {
                Field::VlanTci | Field::VlanPcp => vlans[0] = true,
                Field::NwSrc | Field::NwDst => consistent_if(ip4, "IPv4", "ip"),
                Field::NwTos => consistent_if(ip, "IPv4 or IPv6", "ip"),
                // OpenFlow 1.0 carries it as a load of the TTL field,
                // which OVS checks when it decodes it.
                Field::NwTtl if !ip => return Err(needs(a, "IPv4 or IPv6", "ip")),
                // Likewise the ECN field's load.
                Field::NwEcn if !ip => return Err(needs(a, "IPv4 or IPv6", "ip")),
                Field::TpSrc | Field::TpDst => consistent_if(
                    ports && !later,
                    "TCP, UDP or SCTP packets that are not later fragments",
                    "tcp",
                ),
                _ => {}
            },
            (OfAction::Mod(field, _), Kind::SetField { prereq, .. }) => {
                if matches!(field, Field::VlanTci | Field::VlanPcp) {
                    if !vlans[0] {
                        return Err(needs(a, "packets with a VLAN header", "dl_vlan=VID"));
                    }
                } else {
                    let l4 = matches!(prereq, Prereq::Tcp | Prereq::Udp | Prereq::Sctp);
                    if !prereq.holds(dl_type, nw_proto) || (l4 && later) {
                        let (what, hint) = prereq.describe();
                        let what = if l4 && later {
                            "a transport protocol on packets that are not later fragments"
                        } else {
                            what
                        };
                        return Err(needs(a, what, hint));
                    }
                }
                if matches!(
                    field,
                    Field::NwTtl | Field::NwEcn | Field::Ipv6Src | Field::Ipv6Dst
                ) || prereq == Prereq::Sctp
                {
                    // No OpenFlow 1.0 action sets them.
                    usable &= NXM | OF13;
                }
            }
            (OfAction::Mod(field, _), Kind::Load) => {
                let prereq = match field {
                    Field::NwTtl | Field::NwEcn => Prereq::IpAny,
                    Field::TpSrc | Field::TpDst => Prereq::Sctp,
                    _ => Prereq::Ipv6,
                };
                if !prereq.holds(dl_type, nw_proto) || (prereq == Prereq::Sctp && later) {
                    let (what, hint) = prereq.describe();
                    return Err(needs(a, what, hint));
                }
            }
            _ => {}
        }
    }
    if usable == 0 {
        let (action, needs, hint) =
            inconsistent.map_or(("", "", ""), |(a, n, h)| (a.token.as_str(), n, h));
        return Err(FlowParseError::InconsistentWithOpenFlow13 {
            action: action.to_string(),
            needs,
            hint,
            of11: of11.map(|a| a.token.clone()).unwrap_or_default(),
        });
    }
    Ok(Checked { usable, had_vlan })
}

/// The actions as ovs-ofctl decodes them from `protocol`: OpenFlow 1.0
/// (and NXM) collapse every set-field spelling into one; OpenFlow 1.3
/// keeps set_field apart from mod_nw_ttl and mod_nw_tos (ip_dscp), and
/// turns mod_vlan_vid on an untagged packet into push_vlan plus set_field.
pub(super) fn decode_actions(
    actions: &[ParsedAction],
    checked: &Checked,
    protocol: Protocol,
) -> Result<Vec<OfAction>> {
    let mut out = Vec::with_capacity(actions.len());
    for (a, had_vlan) in actions.iter().zip(&checked.had_vlan) {
        let OfAction::Mod(field, v) = a.action else {
            out.push(a.action);
            continue;
        };
        let sctp = matches!(field, Field::TpSrc | Field::TpDst)
            && matches!(
                a.kind,
                Kind::Load
                    | Kind::SetField {
                        prereq: Prereq::Sctp,
                        ..
                    }
            );
        if protocol != Protocol::Of13 {
            // OpenFlow 1.0 has no SCTP port action: ovs-ofctl prints
            // set_field to sctp_src/sctp_dst as a load.
            out.push(if sctp {
                OfAction::SetField(field, v)
            } else {
                OfAction::Mod(field, v)
            });
            continue;
        }
        if field == Field::NwTtl && a.kind == Kind::Load {
            // OpenFlow 1.3 keeps a TTL load's own spelling, which flowmark
            // (reading load only where it means set_field) cannot print
            // back: refuse rather than print it differently.
            return Err(FlowParseError::Unsupported {
                what: a.token.clone(),
                advice: "with push_vlan (OpenFlow 1.3) ovs-ofctl keeps a TTL load as load, which flowmark does not carry; write set_field:VALUE->nw_ttl or mod_nw_ttl:VALUE",
            });
        }
        // Mod and SetField act alike once a VLAN header is there (which an
        // explicit push_vlan now ensures); SetField marks only the
        // set_field spellings OpenFlow 1.3 prints apart from mod_*.
        let decoded = match (field, a.kind) {
            (Field::VlanTci, Kind::SetField { vid_present, .. }) => {
                if !vid_present {
                    return Err(FlowParseError::NotInOpenFlow13 {
                        what: a.token.clone(),
                        advice: "an OpenFlow 1.3 vlan_vid value carries the VLAN-present bit: write VID+4096 (e.g. set_field:4101->vlan_vid for VLAN 5)",
                    });
                }
                OfAction::Mod(field, v)
            }
            (Field::VlanPcp, Kind::SetField { .. }) => OfAction::Mod(field, v),
            (Field::VlanTci | Field::VlanPcp, _) => {
                if !had_vlan {
                    out.push(OfAction::PushVlan(ethertype::VLAN));
                }
                OfAction::Mod(field, v)
            }
            // set_field to nw_tos (not ip_dscp, as mod_nw_tos prints),
            // to nw_ttl (not mod_nw_ttl) and to ipv6_src/dst (not the
            // load pair) print as written.
            (Field::NwTos, Kind::SetField { dscp: false, .. })
            | (Field::NwTtl | Field::Ipv6Src | Field::Ipv6Dst, Kind::SetField { .. })
            // A load keeps its spelling: SCTP ports as SetField (what
            // prints the load form); a TTL load was refused above.
            | (Field::TpSrc | Field::TpDst, Kind::Load) => {
                OfAction::SetField(field, v)
            }
            _ => OfAction::Mod(field, v),
        };
        out.push(decoded);
    }
    Ok(out)
}

/// Prints an action list as ovs-ofctl does: in OpenFlow 1.0 spelling, or,
/// when the list needs OpenFlow 1.1+ (push_vlan), as `ovs-ofctl -O
/// OpenFlow13` prints it.
pub(super) fn format_actions(actions: &[OfAction], m: &Match) -> String {
    if actions.is_empty() {
        return "drop".to_string();
    }
    let of13 = actions.iter().any(|a| {
        matches!(
            a,
            OfAction::PushVlan(_)
                | OfAction::Meter(_)
                | OfAction::Write(_)
                | OfAction::ClearActions
                | OfAction::GotoTable(_)
                | OfAction::WriteMetadata { .. }
        )
    });
    let nw_proto = (m.value.get(Field::NwProto) & m.mask.get(Field::NwProto)) as u8;
    let one = |a: &OfAction| match *a {
        _ if of13 => format_action_of13(a, nw_proto),
        OfAction::SetField(f @ (Field::TpSrc | Field::TpDst), v) if nw_proto == ipproto::SCTP => {
            format_sctp_load(f, v)
        }
        _ => format_action(a),
    };
    // Consecutive written actions print as one `write_actions(...)`.
    let mut out: Vec<String> = Vec::new();
    let mut written: Vec<String> = Vec::new();
    for a in actions {
        match a {
            OfAction::Write(w) => written.push(one(&w.action())),
            _ => {
                if !written.is_empty() {
                    out.push(format!("write_actions({})", written.join(",")));
                    written.clear();
                }
                out.push(one(a));
            }
        }
    }
    if !written.is_empty() {
        out.push(format!("write_actions({})", written.join(",")));
    }
    out.join(",")
}

/// `load:V->OXM_OF_SCTP_SRC[]`: how ovs-ofctl prints set_field to an SCTP
/// port in OpenFlow 1.0, and a load of one in any protocol.
pub(super) fn format_sctp_load(f: Field, v: u128) -> String {
    let name = if f == Field::TpSrc { "SRC" } else { "DST" };
    format!("load:{}->OXM_OF_SCTP_{name}[]", fmt_load_value(v & 0xffff))
}

/// An action in OpenFlow 1.3 spelling: set_field for the OpenFlow 1.0
/// mod_* actions, except mod_nw_ttl (OpenFlow 1.3 has it) and mod_nw_tos
/// (set_field to ip_dscp); pop_vlan for strip_vlan.
pub(super) fn format_action_of13(a: &OfAction, nw_proto: u8) -> String {
    match *a {
        OfAction::StripVlan => "pop_vlan".into(),
        OfAction::Mod(Field::NwTos, v) => format!("set_field:{}->ip_dscp", (v as u8) >> 2),
        OfAction::Mod(Field::NwTtl, v) => format!("mod_nw_ttl:{}", v as u8),
        OfAction::Mod(f @ (Field::Ipv6Src | Field::Ipv6Dst), v) => format_set(f, v),
        OfAction::SetField(f @ (Field::TpSrc | Field::TpDst), v) if nw_proto == ipproto::SCTP => {
            format_sctp_load(f, v)
        }
        OfAction::Mod(f, v) | OfAction::SetField(f, v) => {
            let l4 = |tcp: &'static str, udp: &'static str, sctp: &'static str| match nw_proto {
                ipproto::UDP => udp,
                ipproto::SCTP => sctp,
                _ => tcp,
            };
            let (value, name) = match f {
                Field::DlSrc => (crate::key::fmt_mac(v as u64), "eth_src"),
                Field::DlDst => (crate::key::fmt_mac(v as u64), "eth_dst"),
                Field::NwSrc => (Ipv4Addr::from(v as u32).to_string(), "ip_src"),
                Field::NwDst => (Ipv4Addr::from(v as u32).to_string(), "ip_dst"),
                Field::Ipv6Src => (fmt_ipv6(v), "ipv6_src"),
                Field::Ipv6Dst => (fmt_ipv6(v), "ipv6_dst"),
                Field::NwTos => ((v as u8).to_string(), "nw_tos"),
                Field::NwTtl => ((v as u8).to_string(), "nw_ttl"),
                Field::TpSrc => ((v as u16).to_string(), l4("tcp_src", "udp_src", "sctp_src")),
                Field::TpDst => ((v as u16).to_string(), l4("tcp_dst", "udp_dst", "sctp_dst")),
                Field::VlanTci => (((v as u16 & 0x0fff) | VLAN_CFI).to_string(), "vlan_vid"),
                Field::VlanPcp => ((v as u8 & 0x07).to_string(), "vlan_pcp"),
                Field::NwEcn => ((v as u8 & 0x03).to_string(), "nw_ecn"),
                other => return format_set(other, v),
            };
            format!("set_field:{value}->{name}")
        }
        _ => format_action(a),
    }
}

pub(super) fn format_action(a: &OfAction) -> String {
    match *a {
        OfAction::Output(p) if p >= ofport::IN_PORT => fmt_port(p),
        OfAction::Output(p) => format!("output:{p}"),
        OfAction::InPort => "IN_PORT".into(),
        OfAction::Flood => "FLOOD".into(),
        OfAction::All => "ALL".into(),
        OfAction::Normal => "NORMAL".into(),
        OfAction::Controller { max_len } => format!("CONTROLLER:{max_len}"),
        OfAction::Mod(field, v) | OfAction::SetField(field, v) => format_set(field, v),
        OfAction::DecTtl => "dec_ttl".into(),
        OfAction::StripVlan => "strip_vlan".into(),
        OfAction::PushVlan(tpid) => format!("push_vlan:{tpid:#06x}"),
        OfAction::Write(w) => format!("write_actions({})", format_action(&w.action())),
        OfAction::ClearActions => "clear_actions".into(),
        OfAction::GotoTable(t) => format!("goto_table:{t}"),
        OfAction::Group(g) => format!("group:{g}"),
        OfAction::Meter(m) => format!("meter:{m}"),
        OfAction::WriteMetadata { value, mask } if mask == u64::MAX => {
            format!("write_metadata:{value:#x}")
        }
        OfAction::WriteMetadata { value, mask } => format!("write_metadata:{value:#x}/{mask:#x}"),
        OfAction::Resubmit { port, table } => match (port, table) {
            (Some(p), None) => format!("resubmit:{}", fmt_port(p)),
            (p, t) => format!(
                "resubmit({},{})",
                p.map(fmt_port).unwrap_or_default(),
                t.map(|t| t.to_string()).unwrap_or_default()
            ),
        },
    }
}

/// `load`'s value as OVS prints it: `0` or `0x...`.
pub(super) fn fmt_load_value(v: u128) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

pub(super) fn format_set(field: Field, v: u128) -> String {
    match field {
        Field::DlSrc => format!("mod_dl_src:{}", crate::key::fmt_mac(v as u64)),
        Field::DlDst => format!("mod_dl_dst:{}", crate::key::fmt_mac(v as u64)),
        Field::NwSrc => format!("mod_nw_src:{}", Ipv4Addr::from(v as u32)),
        Field::NwDst => format!("mod_nw_dst:{}", Ipv4Addr::from(v as u32)),
        Field::NwTos => format!("mod_nw_tos:{}", v as u8),
        Field::NwTtl => format!("load:{}->NXM_NX_IP_TTL[]", fmt_load_value(v & 0xff)),
        Field::TpSrc => format!("mod_tp_src:{}", v as u16),
        Field::TpDst => format!("mod_tp_dst:{}", v as u16),
        Field::VlanTci => format!("mod_vlan_vid:{}", v as u16 & 0x0fff),
        Field::VlanPcp => format!("mod_vlan_pcp:{}", v as u8 & 0x07),
        Field::NwEcn => format!("load:{}->NXM_NX_IP_ECN[]", fmt_load_value(v & 0x03)),
        Field::Ipv6Src | Field::Ipv6Dst => {
            let name = if field == Field::Ipv6Src {
                "NXM_NX_IPV6_SRC"
            } else {
                "NXM_NX_IPV6_DST"
            };
            format!(
                "load:{}->{name}[0..63],load:{}->{name}[64..127]",
                fmt_load_value(v & u128::from(u64::MAX)),
                fmt_load_value(v >> 64)
            )
        }
        other => format!("set_field:{v:#x}->{other}"),
    }
}
