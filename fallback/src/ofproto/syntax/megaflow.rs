//! The `Megaflow:` line of `ovs-appctl ofproto/trace`, and exact packets
//! for `trace`, in the same syntax.

use super::*;

/// Parses a packet for `trace`: every named field exact, the rest zero.
/// Masks are refused, and so is a field whose prerequisite was not named
/// before it (as `ofproto/trace` refuses them). Deviation from OVS: the
/// generic `tp_src`/`tp_dst` are accepted for UDP and SCTP too, not only
/// TCP.
pub fn parse_packet(s: &str) -> Result<FlowKey> {
    if let Some((_, _)) = split_actions(s) {
        return Err(FlowParseError::NotAllowed {
            key: "actions".into(),
            context: "a packet",
            advice: "a packet is header fields only",
        });
    }
    let mut parser = MatchParser::new(Mode::Packet);
    for kv in KeyValues::new(s) {
        if is_flow_setting(kv.key) {
            return Err(FlowParseError::NotAllowed {
                key: kv.key.to_string(),
                context: "a packet",
                advice: "a packet is header fields only (in_port, dl_*, nw_*, tp_*, ...)",
            });
        }
        parser.apply(&kv)?;
    }
    Ok(parser.m.value)
}

/// Prints a megaflow as the `Megaflow:` line of `ovs-appctl ofproto/trace`
/// does: `recirc_id=0,eth,` then the match in ovs-ofctl order.
pub fn format_megaflow(m: &Match) -> String {
    let mut items = vec!["recirc_id=0".to_string(), "eth".to_string()];
    format_match_items(m, &mut items);
    items.join(",")
}

/// Parses a megaflow as [`format_megaflow`] prints it (also plain match
/// syntax). Fields not named are wildcarded; nothing is normalised away.
/// `nw_frag=no|first|later` un-wildcard both fragment bits, as OVS's
/// megaflows do.
/// True when `f` may be matched given the match's `dl_type` and
/// `nw_proto` (OVS drops a field whose prerequisite is not in the match).
pub(super) fn prereq_met(f: Field, dl_type: u16, nw_proto: u8) -> bool {
    let ip4 = dl_type == ethertype::IPV4;
    let ip6 = dl_type == ethertype::IPV6;
    let arp = dl_type == ethertype::ARP || dl_type == ETH_TYPE_RARP;
    let icmp = (ip4 && nw_proto == ipproto::ICMP) || (ip6 && nw_proto == ipproto::ICMPV6);
    let ports = (ip4 || ip6) && matches!(nw_proto, ipproto::TCP | ipproto::UDP | ipproto::SCTP);
    match f {
        Field::NwSrc | Field::NwDst => ip4 || arp,
        Field::NwProto => ip4 || ip6 || arp,
        Field::NwTos | Field::NwEcn | Field::NwTtl | Field::NwFrag => ip4 || ip6,
        Field::TpSrc | Field::TpDst => ports || icmp,
        Field::TcpFlags => (ip4 || ip6) && nw_proto == ipproto::TCP,
        Field::Ipv6Src | Field::Ipv6Dst => ip6,
        Field::ArpSha | Field::ArpTha => arp,
        Field::InPort
        | Field::DlType
        | Field::VlanTci
        | Field::VlanPcp
        | Field::DlSrc
        | Field::DlDst
        | Field::Metadata => true,
    }
}

pub fn parse_megaflow(s: &str) -> Result<Match> {
    let mut parser = MatchParser::new(Mode::Megaflow);
    for kv in KeyValues::new(s) {
        match kv.key {
            "recirc_id" => {
                if parse_uint(kv.value) != Some(0) {
                    return Err(FlowParseError::BadValue {
                        field: "recirc_id".into(),
                        value: kv.value.into(),
                        expected: "0 (flowmark does not recirculate)".into(),
                    });
                }
            }
            "actions" | "action" => {
                return Err(FlowParseError::NotAllowed {
                    key: kv.key.into(),
                    context: "a megaflow",
                    advice: "a megaflow is a match; its actions are printed separately",
                })
            }
            key if is_flow_setting(key) => {
                return Err(FlowParseError::NotAllowed {
                    key: key.into(),
                    context: "a megaflow",
                    advice: "megaflows have no table, priority, cookie or timeouts",
                })
            }
            _ => parser.apply(&kv)?,
        }
    }
    // A megaflow names its protocol before the fields that need it; one
    // whose fields contradict it (`ipv6,ipv6_src=..,ip`) is refused rather
    // than kept with a field its printed form would not show.
    let (dl_type, nw_proto) = (parser.dl_type(), parser.nw_proto());
    if let Some(f) = Field::ALL
        .into_iter()
        .find(|f| parser.m.mask.get(*f) != 0 && !prereq_met(*f, dl_type, nw_proto))
    {
        return Err(FlowParseError::FieldPrerequisite {
            field: f.name().to_string(),
            token: s.to_string(),
            needs: "the protocol it belongs to (the megaflow's last protocol name wins)",
            hint: "one protocol name (ip, ipv6, arp, tcp, udp, ...) before the fields",
        });
    }
    Ok(parser.m)
}
