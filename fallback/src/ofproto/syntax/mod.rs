//! The ovs-ofctl flow syntax: parsed and printed as Open vSwitch 3.1 does.
//!
//! * [`parse_flow`] / [`format_flow`]: a flow as `ovs-ofctl add-flow` takes it,
//!   printed as `ovs-ofctl parse-flow` prints it after `ADD `.
//! * [`parse_match`] / [`format_match`]: the match alone (`flow del "MATCH"`).
//! * [`parse_packet`]: an exact packet for `trace`, in the same syntax.
//! * [`parse_megaflow`] / [`format_megaflow`]: the `Megaflow:` line of
//!   `ovs-appctl ofproto/trace`.
//!
//! OVS normalises rather than refuses in several places, and so does this
//! module: a match field whose prerequisite is missing (`tp_dst` without a
//! transport protocol, `nw_src` without `ip`/`arp`) is dropped, as
//! `ovs-ofctl` drops it (it only logs "normalization changed ofp_match");
//! [`parse_flow_with_warnings`] reports what was dropped. Packets, like
//! `ofproto/trace`, refuse such fields instead.
//!
//! The protocol matters as it does to ovs-ofctl, which encodes a flow in
//! the first protocol that can carry it and prints what it decodes back:
//! OpenFlow 1.0, else NXM (its defaults), else, for a flow only OpenFlow
//! 1.1+ can carry (push_vlan), OpenFlow 1.3 as `ovs-ofctl -O OpenFlow13`
//! gives it. NXM and OpenFlow 1.3 carry ICMP type/code in 8 bits;
//! OpenFlow 1.3 checks mod_* actions against the match (an IPv4 rewrite on
//! IPv6, strip_vlan without a VLAN), carries VLAN PCP matches only with a
//! VID, and spells actions its own way (`set_field:...->eth_dst`,
//! `pop_vlan`, `mod_nw_ttl`). Flows OVS encodes but cannot decode back are
//! refused.

mod action_syntax;
mod lex;
mod match_syntax;
mod megaflow;
#[cfg(test)]
mod tests;

use action_syntax::*;
use lex::*;
use match_syntax::*;
use megaflow::*;
pub use megaflow::{format_megaflow, parse_megaflow, parse_packet};

use super::{ofport, Match, OfAction, Rule};
use crate::key::{ethertype, frag, ipproto, mac_to_u64, Field, FlowKey, VLAN_CFI};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// RARP's EtherType (printed as `rarp`, its addresses as `arp_*`).
const ETH_TYPE_RARP: u16 = 0x8035;
/// The bits of `tcp_flags` that OVS matches (its "exact" mask).
const TCP_FLAGS_MASK: u16 = 0x0fff;
/// The DSCP bits of the TOS byte.
const DSCP_MASK: u8 = 0xfc;
/// The ECN bits of the TOS byte.
const ECN_MASK: u8 = 0x03;
/// OVS's "all tables" id: in a flow addition it means table 0.
const TABLE_ALL: u32 = 255;

/// The protocols ovs-ofctl chooses from, as bits of a "usable" set:
/// OpenFlow 1.0, OpenFlow 1.0 with Nicira extensions (NXM), and OpenFlow
/// 1.3 (OXM). Its defaults are the first two; a flow that only OpenFlow
/// 1.1+ can carry (push_vlan) is what `ovs-ofctl -O OpenFlow13` prints.
const OF10: u8 = 1;
const NXM: u8 = 2;
const OF13: u8 = 4;

/// The protocol a flow is encoded in (and decoded back from).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Protocol {
    Of10,
    Nxm,
    Of13,
}

/// Why a flow, match, packet or megaflow string was refused. Every message
/// names the offending text and says what was expected instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowParseError {
    #[error("unknown field \"{name}\" in \"{token}\" (expected a match field such as nw_src, or an action list after \"actions=\")")]
    UnknownField { name: String, token: String },
    #[error("field \"{field}\" has no value in \"{token}\" (write {field}=VALUE)")]
    MissingValue { field: String, token: String },
    #[error("bad value \"{value}\" for {field}: expected {expected}")]
    BadValue {
        field: String,
        value: String,
        expected: String,
    },
    #[error(
        "{field} cannot be masked in \"{token}\" (give an exact value, or a mask of all ones)"
    )]
    MaskNotAllowed { field: String, token: String },
    #[error("no actions in \"{flow}\": a flow ends with \"actions=...\" (\"actions=drop\" drops)")]
    MissingActions { flow: String },
    #[error("unknown action \"{name}\" in \"{token}\" (expected output:PORT, a port number, in_port, flood, all, normal, local, controller, drop, mod_dl_src/dst, mod_nw_src/dst/tos/ttl, mod_tp_src/dst, mod_vlan_vid, dec_ttl, strip_vlan, push_vlan:TPID, set_field:VALUE->FIELD or resubmit)")]
    UnknownAction { name: String, token: String },
    #[error("bad argument \"{value}\" for action {action}: expected {expected}")]
    BadActionArg {
        action: String,
        value: String,
        expected: String,
    },
    #[error("\"drop\" must be the only action, but \"{other}\" is there too: remove one of them")]
    DropNotAlone { other: String },
    #[error("action \"{action}\" needs the match to select {needs} (add \"{hint}\" to the match)")]
    ActionPrerequisite {
        action: String,
        needs: &'static str,
        hint: &'static str,
    },
    #[error("{field} in \"{token}\" needs {needs} first (name \"{hint}\" before it)")]
    FieldPrerequisite {
        field: String,
        token: String,
        needs: &'static str,
        hint: &'static str,
    },
    #[error("\"{key}\" is not allowed in {context}: {advice}")]
    NotAllowed {
        key: String,
        context: &'static str,
        advice: &'static str,
    },
    #[error("\"{what}\" is Open vSwitch syntax that flowmark does not support: {advice}")]
    Unsupported { what: String, advice: &'static str },
    #[error("action \"{action}\" needs the match to select {needs}, and \"{of11}\" needs OpenFlow 1.1 or later, which checks that (OFPBAC_MATCH_INCONSISTENT): add \"{hint}\" to the match, or remove one of the two actions")]
    InconsistentWithOpenFlow13 {
        action: String,
        needs: &'static str,
        hint: &'static str,
        of11: String,
    },
    #[error("\"{action}\" would push a third VLAN header (OFPBAC_BAD_TAG): OVS keeps at most two; remove a push_vlan or pop one first")]
    TooManyVlans { action: String },
    #[error("\"{what}\" cannot be carried by OpenFlow 1.3, which push_vlan and meter need (ovs-ofctl cannot decode it back): {advice}")]
    NotInOpenFlow13 { what: String, advice: &'static str },
    #[error("\"{what}\" is out of place: {advice}")]
    InstructionOrder { what: String, advice: &'static str },
}

type Result<T> = std::result::Result<T, FlowParseError>;

// ---------------------------------------------------------------------------
// Public API

/// A flows file: one flow per line, blank lines and `#` comments skipped.
/// An error comes with its 1-based line number.
pub fn parse_flows(text: &str) -> std::result::Result<Vec<Rule>, (usize, FlowParseError)> {
    let mut rules = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        rules.push(parse_flow(line).map_err(|e| (i + 1, e))?);
    }
    Ok(rules)
}

/// Parses a flow in `ovs-ofctl add-flow` syntax.
pub fn parse_flow(s: &str) -> Result<Rule> {
    parse_flow_with_warnings(s).map(|(rule, _)| rule)
}

/// As [`parse_flow`], also returning one note per match field that OVS
/// semantics dropped because its prerequisite was missing (e.g.
/// `tp_dst=80` without `tcp`): the flow then matches more than it says.
pub fn parse_flow_with_warnings(s: &str) -> Result<(Rule, Vec<String>)> {
    let Some((match_part, actions_part)) = split_actions(s) else {
        return Err(FlowParseError::MissingActions {
            flow: s.trim().to_string(),
        });
    };
    let mut parser = MatchParser::new(Mode::OpenFlow);
    let mut rule = Rule {
        table: 0,
        priority: Rule::DEFAULT_PRIORITY,
        r#match: Match::ANY,
        actions: Vec::new(),
        cookie: 0,
        idle_timeout: 0,
        hard_timeout: 0,
    };
    for kv in KeyValues::new(match_part) {
        if !parse_flow_setting(&mut rule, &kv)? {
            parser.apply(&kv)?;
        }
    }
    let match_protocols = parser.protocols();
    let actions = parse_actions(actions_part)?;
    let checked = check_actions(&actions, &parser.m)?;
    let usable = match_protocols & checked.usable;
    // ovs-ofctl's choice: the first usable of its defaults (OpenFlow 1.0,
    // then NXM); failing those, what `-O OpenFlow13` gives.
    let protocol = if usable & OF10 != 0 {
        Protocol::Of10
    } else if usable & NXM != 0 {
        Protocol::Nxm
    } else {
        Protocol::Of13
    };
    let warnings = parser.normalise()?;
    let m = parser.encode(protocol)?;
    // What ovs-ofctl decodes is checked again, against the decoded match.
    let checked = if protocol == Protocol::Of13 {
        check_actions(&actions, &m)?
    } else {
        checked
    };
    rule.r#match = m;
    rule.actions = decode_actions(&actions, &checked, protocol)?;
    Ok((rule, warnings))
}

/// Prints a rule exactly as `ovs-ofctl parse-flow` prints it after `ADD `.
pub fn format_flow(rule: &Rule) -> String {
    let mut out = String::new();
    if rule.table != 0 && u32::from(rule.table) != TABLE_ALL {
        let _ = write!(out, "table:{} ", rule.table);
    }
    let mut items = Vec::new();
    if rule.priority != Rule::DEFAULT_PRIORITY {
        items.push(format!("priority={}", rule.priority));
    }
    format_match_items(&rule.r#match, &mut items);
    if !items.is_empty() {
        out.push_str(&items.join(","));
        out.push(' ');
    }
    if rule.cookie != 0 && rule.cookie != u64::MAX {
        let _ = write!(out, "cookie:{:#x} ", rule.cookie);
    }
    if rule.idle_timeout != 0 {
        let _ = write!(out, "idle:{} ", rule.idle_timeout);
    }
    if rule.hard_timeout != 0 {
        let _ = write!(out, "hard:{} ", rule.hard_timeout);
    }
    out.push_str("actions=");
    out.push_str(&format_actions(&rule.actions, &rule.r#match));
    out
}

/// Parses a match alone (as `ovs-ofctl del-flows` takes it, minus the
/// table/cookie/priority settings, which a [`Match`] cannot hold).
pub fn parse_match(s: &str) -> Result<Match> {
    if let Some((_, _)) = split_actions(s) {
        return Err(FlowParseError::NotAllowed {
            key: "actions".into(),
            context: "a match",
            advice: "a match selects flows; give the actions to parse_flow instead",
        });
    }
    let mut parser = MatchParser::new(Mode::OpenFlow);
    for kv in KeyValues::new(s) {
        if is_flow_setting(kv.key) {
            return Err(FlowParseError::NotAllowed {
                key: kv.key.to_string(),
                context: "a match",
                advice: "table, priority, cookie and timeouts belong to a flow, not to its match",
            });
        }
        parser.apply(&kv)?;
    }
    Ok(parser.finish_match()?.0)
}

/// Prints a match as ovs-ofctl prints it (`ip,nw_src=10.0.0.0/8`); the
/// match-everything match prints as the empty string.
pub fn format_match(m: &Match) -> String {
    let mut items = Vec::new();
    format_match_items(m, &mut items);
    items.join(",")
}
