//! Megaflow → rte_flow rule for the megaflow's ingress port.
//!
//! Two rules govern every choice here (DESIGN §1, §2 `translate`):
//! - the consumed-mask rule: every masked bit of the megaflow is expressed
//!   by an item (or shown to hold for every packet that can match), else the
//!   megaflow is rejected and the reason names the field;
//! - the safety rule: the rule may match fewer packets than the megaflow,
//!   never more. `exact` says it matches exactly the same packets.
//!
//! Choices made here:
//! - a megaflow that says nothing about VLANs (`vlan_tci` unmasked) covers
//!   tagged and untagged frames; `eth type is T` matches untagged frames
//!   only (rte_flow 22.11), so such rules are not `exact`;
//! - an `xl710` NIC (no ETH match on type alone) gets no ETH `type` where
//!   the following IPv4/IPv6 item pins the type: an empty ETH item when the
//!   megaflow says nothing about VLANs (not claimed `exact`: "eth / ipv4" is
//!   read differently by different PMDs for tagged frames), and
//!   `has_vlan is 0` kept when the megaflow wants untagged frames (exact);
//!   any other type-alone match is rejected;
//! - `nw_frag=later` (IPv4) uses a `fragment_offset` range, so it needs a
//!   NIC with ranges; IPv6 first/later fragments need the IPV6_FRAG_EXT
//!   item, which is not modelled: rejected;
//! - an L4 item (TCP/UDP/SCTP/ICMP/ICMP6) is added whenever `nw_proto`
//!   names one exactly, and then the IP proto mask is dropped (the item pins
//!   it). An L4 item cannot match a later fragment (no L4 header), so it
//!   makes the rule inexact unless the megaflow excludes later fragments.
//!   For later fragments no L4 item is added; their L4 key fields are zero,
//!   so a zero-valued L4 match is consumed and a non-zero one rejected;
//! - L4 items after IPv6 are taken to match the upper-layer header after
//!   any extension headers (as OVS's `nw_proto` does); the IPv6 item's own
//!   `proto` is the first next header, so an IPv6 `nw_proto` without an L4
//!   item is rejected (testpmd 22.11 has no flag to exclude extension
//!   headers other than `has_frag_ext`);
//! - the MARK check is made here (not left to `validate`) so that the
//!   reason appears in `flowmark translate` and the megaflow is `Rejected`
//!   without a device round trip;
//! - the mark id given to [`translate`] may be a placeholder: translate
//!   once, then [`Translation::set_mark`] when a mark is allocated.

use fallback::key::{ethertype, frag, ipproto, Field, VLAN_CFI};
use fallback::ofproto::Match;
use thiserror::Error;

use crate::device::Capabilities;
use crate::rte::{
    ipv4_frag, ipv6_vtc, mac_from_u128, Action, Attr, Eth, Icmp, Icmp6, Ipv4, Ipv6, Item, Masked,
    Rule, Sctp, Tcp, Udp, Vlan,
};

/// A megaflow that has an rte_flow rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The OpenFlow ingress port (the megaflow's `in_port`, consumed by
    /// installing the rule on that port).
    pub port: u32,
    pub rule: Rule,
    /// The rule matches exactly the megaflow's packets (else a subset).
    pub exact: bool,
}

impl Translation {
    /// Fills in the MARK id (translations are made before a mark exists).
    pub fn set_mark(&mut self, mark: u32) {
        self.rule.set_mark(mark);
    }
}

/// Why a megaflow has no rte_flow rule. Permanent for that megaflow.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{reason}")]
pub struct Rejected {
    /// The megaflow field at fault, when one is.
    pub field: Option<Field>,
    /// Names the field, item or action and says why.
    pub reason: String,
}

impl Rejected {
    fn field(field: Field, why: impl AsRef<str>) -> Self {
        Rejected {
            field: Some(field),
            reason: format!("{field}: {}", why.as_ref()),
        }
    }

    fn other(reason: impl Into<String>) -> Self {
        Rejected {
            field: None,
            reason: reason.into(),
        }
    }
}

/// The megaflow's fields, with a record of which masked bits have been
/// expressed so far.
struct Fields<'a> {
    m: &'a Match,
    left: fallback::FlowKey,
}

impl<'a> Fields<'a> {
    fn new(m: &'a Match) -> Self {
        Fields { m, left: m.mask }
    }

    /// (value, mask) of a field; the value is already masked.
    fn get(&self, f: Field) -> (u128, u128) {
        let mask = self.m.mask.get(f);
        (self.m.value.get(f) & mask, mask)
    }

    fn masked(&self, f: Field) -> bool {
        self.m.mask.get(f) != 0
    }

    fn consume(&mut self, f: Field) {
        self.left.set(f, 0);
    }

    /// Gets a field and marks it expressed.
    fn take(&mut self, f: Field) -> (u128, u128) {
        self.consume(f);
        self.get(f)
    }
}

/// What the megaflow says about a VLAN tag.
#[derive(Clone, Copy, PartialEq, Eq)]
enum VlanMatch {
    /// Nothing: tagged and untagged frames.
    Any,
    /// Untagged frames only.
    Absent,
    /// Tagged frames; TCI spec and mask without the CFI/DEI bit.
    Present { tci: u16, mask: u16 },
}

/// Where the megaflow stands on IP fragments.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FragMatch {
    /// Later fragments (no L4 header) cannot match.
    excludes_later: bool,
    /// Only later fragments can match.
    later_only: bool,
}

/// Translates a megaflow into an rte_flow rule for its ingress port:
/// attributes ingress/group 0/priority 0, the pattern, and the actions
/// MARK(`mark`) + RSS over queues `0..n_rxq`.
pub fn translate(
    m: &Match,
    caps: &Capabilities,
    mark: u32,
    n_rxq: u16,
) -> Result<Translation, Rejected> {
    translate_rule(m, caps, mark, n_rxq, true)
}

/// [`translate`] without its last step, the check of the rule against
/// `caps` ([`Capabilities::check`]), for a caller that hands the rule to
/// [`FlowDevice::validate`](crate::device::FlowDevice::validate) next (the
/// offload engine): the device's validate makes that check, and an insert
/// then makes it once. The rule is written into `rule`, whose lists are
/// reused (the engine translates into the same few rules over and over:
/// no allocation per insert). After a refusal `rule` holds no usable rule.
pub fn translate_unchecked_into(
    m: &Match,
    caps: &Capabilities,
    mark: u32,
    n_rxq: u16,
    rule: &mut Rule,
) -> Result<Translated, Rejected> {
    translate_into(m, caps, mark, n_rxq, false, rule)
}

/// What [`translate_unchecked_into`] says besides the rule it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translated {
    /// As [`Translation::port`].
    pub port: u32,
    /// As [`Translation::exact`].
    pub exact: bool,
}

/// A rule with no items or actions yet, room for a translation's.
pub fn empty_rule() -> Rule {
    Rule {
        attr: Attr::INGRESS,
        // ETH, VLAN, IP, L4 at most; MARK and RSS.
        pattern: Vec::with_capacity(4),
        actions: Vec::with_capacity(2),
    }
}

fn translate_rule(
    m: &Match,
    caps: &Capabilities,
    mark: u32,
    n_rxq: u16,
    check: bool,
) -> Result<Translation, Rejected> {
    let mut rule = empty_rule();
    let t = translate_into(m, caps, mark, n_rxq, check, &mut rule)?;
    Ok(Translation {
        port: t.port,
        rule,
        exact: t.exact,
    })
}

fn translate_into(
    m: &Match,
    caps: &Capabilities,
    mark: u32,
    n_rxq: u16,
    check: bool,
    rule: &mut Rule,
) -> Result<Translated, Rejected> {
    rule.attr = Attr::INGRESS;
    rule.pattern.clear();
    // The RSS queue list's room is kept for this rule's list.
    let mut queues = rule
        .actions
        .drain(..)
        .find_map(|a| match a {
            Action::Rss { queues, .. } => Some(queues),
            _ => None,
        })
        .unwrap_or_default();
    if !caps.mark {
        return Err(Rejected::other(format!(
            "MARK unsupported by this NIC (profile {})",
            caps.profile
        )));
    }
    if n_rxq == 0 {
        return Err(Rejected::other(
            "RSS: the port has no rx queue to spread marked packets over",
        ));
    }
    let mut fields = Fields::new(m);
    let mut exact = true;

    // in_port: consumed by choosing the port.
    let (in_port, in_port_mask) = fields.take(Field::InPort);
    if in_port_mask != Field::InPort.full_mask() {
        return Err(Rejected::field(
            Field::InPort,
            format!(
                "must be matched exactly (mask {in_port_mask:#x}): a rule is installed on one \
                 ingress port"
            ),
        ));
    }
    let port = in_port as u32;

    for f in [Field::ArpSha, Field::ArpTha] {
        if fields.masked(f) {
            return Err(Rejected::field(f, "no rte_flow item matches ARP fields"));
        }
    }

    // dl_type: exact or nothing.
    let (dl_type_v, dl_type_m) = fields.take(Field::DlType);
    let dl_type = match dl_type_m {
        0 => None,
        // Below 0x0600 the field is an 802.3 length, not an EtherType: OVS
        // keys such frames as 0x05ff, a value no frame carries on the wire.
        0xffff if dl_type_v < 0x0600 => {
            return Err(Rejected::field(
                Field::DlType,
                format!(
                    "dl_type={dl_type_v:#06x} stands for 802.3 frames (a length field, not an \
                     EtherType); no rte_flow item matches them, so they stay in software"
                ),
            ))
        }
        0xffff => Some(dl_type_v as u16),
        _ => {
            return Err(Rejected::field(
                Field::DlType,
                format!("partial mask {dl_type_m:#06x}: only an exact EtherType is offloaded"),
            ))
        }
    };

    let vlan = vlan_match(&mut fields, &mut exact)?;

    // ETH: addresses with their masks, has_vlan from the CFI bit.
    let (dst_v, dst_m) = fields.take(Field::DlDst);
    let (src_v, src_m) = fields.take(Field::DlSrc);
    let mut eth = Masked::new(
        Eth {
            dst: mac_from_u128(dst_v),
            src: mac_from_u128(src_v),
            ..Eth::default()
        },
        Eth {
            dst: mac_from_u128(dst_m),
            src: mac_from_u128(src_m),
            ..Eth::default()
        },
    );
    match vlan {
        VlanMatch::Any => {}
        VlanMatch::Absent => {
            eth.mask.has_vlan = true;
        }
        // The VLAN item already restricts the rule to tagged frames;
        // `has_vlan is 1` would only lengthen the line.
        VlanMatch::Present { .. } => {}
    }

    let is_ip = matches!(dl_type, Some(ethertype::IPV4 | ethertype::IPV6));
    let mut vlan_item = None;
    if let VlanMatch::Present { tci, mask } = vlan {
        // The ETH type would be the TPID here: the EtherType goes in the
        // VLAN item's inner_type.
        let mut item = Masked::new(
            Vlan {
                tci,
                ..Vlan::default()
            },
            Vlan {
                tci: mask,
                ..Vlan::default()
            },
        );
        if let Some(t) = dl_type {
            item.spec.inner_type = t;
            item.mask.inner_type = 0xffff;
        }
        vlan_item = Some(item);
    } else if let Some(t @ (ethertype::VLAN | ethertype::QINQ)) = dl_type {
        // A key has a TPID as dl_type only for a frame with a second tag;
        // without a VLAN item the NIC would read the outer tag's TPID and
        // match every tagged frame.
        return Err(Rejected::field(
            Field::DlType,
            format!(
                "dl_type={t:#06x} is a VLAN TPID (an inner tag): without a vlan_tci match \
                 the NIC would match every tagged frame"
            ),
        ));
    } else if let Some(t) = dl_type {
        let has_mac = src_m != 0 || dst_m != 0;
        if caps.eth_type_alone || has_mac {
            eth.spec.ether_type = t;
            eth.mask.ether_type = 0xffff;
            if vlan == VlanMatch::Any {
                // `type` without a VLAN item matches untagged frames only.
                exact = false;
            }
        } else if is_ip {
            // The IPv4/IPv6 item pins the type. It looks past any number of
            // tags, while the datapath's key reads one: a double-tagged IP
            // frame has the inner TPID as dl_type and is outside the
            // megaflow. So, with the VLAN wildcarded, untagged frames only
            // (narrower: tagged ones stay in software).
            if vlan == VlanMatch::Any {
                eth.mask.has_vlan = true;
                exact = false;
            }
        } else {
            return Err(Rejected::field(
                Field::DlType,
                format!(
                    "this NIC (profile {}) cannot match an Ethernet header on its type alone, \
                     and no IPv4/IPv6 item pins EtherType {t:#06x}",
                    caps.profile
                ),
            ));
        }
    }

    let pattern = &mut rule.pattern;
    pattern.push(Item::Eth(eth));
    if let Some(v) = vlan_item {
        pattern.push(Item::Vlan(v));
    }

    match dl_type {
        Some(ethertype::IPV4) => ipv4_items(&mut fields, caps, pattern, &mut exact)?,
        Some(ethertype::IPV6) => ipv6_items(&mut fields, pattern, &mut exact)?,
        _ => refuse_ip_fields(&fields, dl_type)?,
    }

    // Anything still masked has no item.
    if fields.left == fallback::FlowKey::ZERO {
        // Everything expressed (the common case: no per-field walk).
    } else if let Some(f) = Field::ALL.into_iter().find(|f| fields.left.get(*f) != 0) {
        return Err(Rejected::field(f, "no rte_flow item expresses this field"));
    }

    queues.clear();
    queues.extend(0..n_rxq);
    rule.actions.push(Action::Mark { id: mark.max(1) });
    rule.actions.push(Action::Rss {
        queues,
        types: vec![],
    });
    // A translator bug must not reach a NIC: the rule fits the profile.
    // (A placeholder mark 0 is checked with a valid id, then put back.)
    if check {
        if let Err(e) = caps.check(rule) {
            return Err(Rejected::other(e.to_string()));
        }
    }
    if mark == 0 {
        rule.set_mark(0);
    }
    Ok(Translated { port, exact })
}

fn vlan_match(fields: &mut Fields, exact: &mut bool) -> Result<VlanMatch, Rejected> {
    let (tci, mask) = fields.take(Field::VlanTci);
    let (tci, mask) = (tci as u16, mask as u16);
    let cfi = VLAN_CFI;
    if mask == 0 {
        return Ok(VlanMatch::Any);
    }
    let rest_v = tci & !cfi;
    let rest_m = mask & !cfi;
    if mask & cfi != 0 {
        if tci & cfi == 0 {
            // Untagged frames have an all-zero TCI in the key.
            if rest_v != 0 {
                return Err(Rejected::field(
                    Field::VlanTci,
                    format!("{tci:#06x}/{mask:#06x} matches no packet (no VLAN, yet TCI bits set)"),
                ));
            }
            return Ok(VlanMatch::Absent);
        }
        // The CFI bit is OVS's "VLAN present"; the wire DEI bit is not in
        // the key, so it is left out of the item.
        return Ok(VlanMatch::Present {
            tci: rest_v,
            mask: rest_m,
        });
    }
    if rest_v != 0 {
        // Some TCI bit must be set: only tagged frames qualify.
        return Ok(VlanMatch::Present {
            tci: rest_v,
            mask: rest_m,
        });
    }
    // Untagged frames and tagged frames with these bits zero: one rule
    // cannot say both; keep the untagged ones.
    *exact = false;
    Ok(VlanMatch::Absent)
}

const IP_AND_L4_FIELDS: [Field; 11] = [
    Field::NwProto,
    Field::NwTos,
    Field::NwTtl,
    Field::NwFrag,
    Field::NwSrc,
    Field::NwDst,
    Field::TpSrc,
    Field::TpDst,
    Field::TcpFlags,
    Field::Ipv6Src,
    Field::Ipv6Dst,
];

/// A megaflow that is not IP may not mask IP or L4 fields.
fn refuse_ip_fields(fields: &Fields, dl_type: Option<u16>) -> Result<(), Rejected> {
    let Some(f) = IP_AND_L4_FIELDS.into_iter().find(|f| fields.masked(*f)) else {
        return Ok(());
    };
    let why = match dl_type {
        Some(ethertype::ARP) => "no rte_flow item matches ARP fields (dl_type=0x0806)".to_string(),
        Some(t) => format!("no rte_flow item for this field with dl_type={t:#06x}"),
        None => "IP and L4 fields need an exact dl_type (0x0800 or 0x86dd)".to_string(),
    };
    Err(Rejected::field(f, why))
}

/// nw_frag's (value, mask), both within [`frag::MASK`]. The key never has
/// other bits set, so a value there matches no packet; a mask there alone
/// says nothing.
fn nw_frag(fields: &mut Fields) -> Result<(u8, u8), Rejected> {
    let (v, m) = fields.take(Field::NwFrag);
    if v & !u128::from(frag::MASK) != 0 {
        return Err(Rejected::field(
            Field::NwFrag,
            format!("{v:#x}/{m:#x} has bits outside 0x3 set: matches no packet"),
        ));
    }
    Ok((v as u8, m as u8 & frag::MASK))
}

fn frag_state(value: u8, mask: u8) -> FragMatch {
    let any_is = |bit: u8, set: bool| mask & bit != 0 && (value & bit != 0) == set;
    FragMatch {
        excludes_later: any_is(frag::LATER, false) || any_is(frag::ANY, false),
        later_only: any_is(frag::LATER, true),
    }
}

fn ipv4_items(
    fields: &mut Fields,
    caps: &Capabilities,
    pattern: &mut Vec<Item>,
    exact: &mut bool,
) -> Result<(), Rejected> {
    let mut ip = Masked::<Ipv4>::any();
    let (v, m) = fields.take(Field::NwTos);
    (ip.spec.type_of_service, ip.mask.type_of_service) = (v as u8, m as u8);
    let (v, m) = fields.take(Field::NwTtl);
    (ip.spec.time_to_live, ip.mask.time_to_live) = (v as u8, m as u8);
    let (v, m) = fields.take(Field::NwSrc);
    (ip.spec.src_addr, ip.mask.src_addr) = (v as u32, m as u32);
    let (v, m) = fields.take(Field::NwDst);
    (ip.spec.dst_addr, ip.mask.dst_addr) = (v as u32, m as u32);

    // nw_frag → fragment_offset. The mask covers MF and the offset, never
    // DF (a don't-fragment bit says nothing about being a fragment).
    let (fv, fm) = nw_frag(fields)?;
    let frag_mask = ipv4_frag::MF | ipv4_frag::OFFSET;
    match (fm, fv) {
        (0, _) => {}
        (frag::MASK, 0) | (frag::ANY, 0) => {
            // Not a fragment: MF clear, offset zero.
            ip.mask.fragment_offset = frag_mask;
        }
        (frag::MASK, frag::ANY) => {
            // First fragment: MF set, offset zero.
            ip.spec.fragment_offset = ipv4_frag::MF;
            ip.mask.fragment_offset = frag_mask;
        }
        (frag::MASK, frag::MASK) | (frag::LATER, frag::LATER) => {
            // Later fragment: offset 1..=0x1fff, a range.
            if !caps.ranges {
                return Err(Rejected::field(
                    Field::NwFrag,
                    format!(
                        "nw_frag=later needs a fragment_offset range (last), which this NIC \
                         (profile {}) cannot match",
                        caps.profile
                    ),
                ));
            }
            ip.spec.fragment_offset = 1;
            ip.last = Some(Ipv4 {
                fragment_offset: ipv4_frag::OFFSET,
                ..Ipv4::default()
            });
            ip.mask.fragment_offset = ipv4_frag::OFFSET;
        }
        (frag::LATER, 0) => {
            // Not a later fragment: offset zero (MF either way).
            ip.mask.fragment_offset = ipv4_frag::OFFSET;
        }
        (frag::ANY, frag::ANY) => {
            return Err(Rejected::field(
                Field::NwFrag,
                "any fragment (first or later) is two rte_flow matches (MF set or offset \
                 non-zero); a single rule cannot express it",
            ));
        }
        (m, v) => {
            return Err(Rejected::field(
                Field::NwFrag,
                format!(
                    "{v:#x}/{m:#x} matches no packet (later fragment bit without fragment bit)"
                ),
            ));
        }
    }
    let frag = frag_state(fv, fm);

    let (proto_v, proto_m) = fields.take(Field::NwProto);
    let (proto_v, proto_m) = (proto_v as u8, proto_m as u8);
    let l4 = if proto_m == 0xff && !frag.later_only {
        l4_item(fields, proto_v, false)?
    } else {
        None
    };
    match l4 {
        Some(item) => {
            // The L4 item pins the protocol; it cannot match a later
            // fragment (there is no L4 header).
            if !frag.excludes_later {
                *exact = false;
            }
            pattern.push(Item::Ipv4(ip));
            pattern.push(item);
        }
        None => {
            (ip.spec.next_proto_id, ip.mask.next_proto_id) = (proto_v, proto_m);
            no_l4_header(fields, proto_v, proto_m, frag.later_only)?;
            pattern.push(Item::Ipv4(ip));
        }
    }
    Ok(())
}

fn ipv6_items(
    fields: &mut Fields,
    pattern: &mut Vec<Item>,
    exact: &mut bool,
) -> Result<(), Rejected> {
    let mut ip = Masked::<Ipv6>::any();
    let (v, m) = fields.take(Field::NwTos);
    ip.spec.vtc_flow = (v as u32) << ipv6_vtc::TC_SHIFT;
    ip.mask.vtc_flow = (m as u32) << ipv6_vtc::TC_SHIFT;
    let (v, m) = fields.take(Field::NwTtl);
    (ip.spec.hop_limits, ip.mask.hop_limits) = (v as u8, m as u8);
    let (v, m) = fields.take(Field::Ipv6Src);
    (ip.spec.src_addr, ip.mask.src_addr) = (v, m);
    let (v, m) = fields.take(Field::Ipv6Dst);
    (ip.spec.dst_addr, ip.mask.dst_addr) = (v, m);

    let (fv, fm) = nw_frag(fields)?;
    match (fm, fv) {
        (0, _) => {}
        (frag::MASK, 0) | (frag::ANY, 0) => {
            // A Fragment header with offset 0 and no more-fragments flag (an
            // atomic fragment) is no fragment to the datapath, as to OVS,
            // but has_frag_ext excludes it: narrower.
            ip.mask.has_frag_ext = true;
            *exact = false;
        }
        (frag::ANY, frag::ANY) => {
            // has_frag_ext would also match atomic fragments, which the
            // megaflow excludes: wider, so refused.
            return Err(Rejected::field(
                Field::NwFrag,
                "IPv6 has_frag_ext also matches atomic fragments (a Fragment header with \
                 offset 0 and no more-fragments flag), which are no fragments to the \
                 datapath; nw_frag=yes over IPv6 stays in software",
            ));
        }
        (frag::MASK, frag::ANY) | (frag::MASK, frag::MASK) | (frag::LATER, _) => {
            return Err(Rejected::field(
                Field::NwFrag,
                "telling first from later IPv6 fragments needs the IPV6_FRAG_EXT item, \
                 which flowmark does not use",
            ));
        }
        (m, v) => {
            return Err(Rejected::field(
                Field::NwFrag,
                format!("{v:#x}/{m:#x} matches no packet"),
            ));
        }
    }
    let frag = frag_state(fv, fm);

    let (proto_v, proto_m) = fields.take(Field::NwProto);
    let (proto_v, proto_m) = (proto_v as u8, proto_m as u8);
    let l4 = if proto_m == 0xff {
        l4_item(fields, proto_v, true)?
    } else {
        None
    };
    match l4 {
        Some(item) => {
            if !frag.excludes_later {
                *exact = false;
            }
            pattern.push(Item::Ipv6(Box::new(ip)));
            pattern.push(item);
        }
        None => {
            if proto_m != 0 {
                return Err(Rejected::field(
                    Field::NwProto,
                    format!(
                        "IPv6 next header {proto_v} (mask {proto_m:#x}) has no L4 item to pin \
                         it: rte_flow's ipv6 proto is the first next header, and extension \
                         headers cannot be excluded"
                    ),
                ));
            }
            no_l4_header(fields, proto_v, proto_m, false)?;
            pattern.push(Item::Ipv6(Box::new(ip)));
        }
    }
    Ok(())
}

/// The L4 item for an exact protocol, or `None` when rte_flow has no item
/// for it. Consumes tp_src, tp_dst and tcp_flags when it returns an item.
fn l4_item(fields: &mut Fields, proto: u8, ipv6: bool) -> Result<Option<Item>, Rejected> {
    let item = match (proto, ipv6) {
        (ipproto::TCP, _) => {
            let (src, dst) = l4_ports(fields)?;
            let (fv, fm) = fields.take(Field::TcpFlags);
            if fm & !0xff != 0 {
                return Err(Rejected::field(
                    Field::TcpFlags,
                    format!(
                        "mask {fm:#05x} covers bits above 0xff (NS, reserved): the TCP item's \
                         flags field has 8 bits"
                    ),
                ));
            }
            Item::Tcp(Masked::new(
                Tcp {
                    src_port: src.0,
                    dst_port: dst.0,
                    tcp_flags: fv as u8,
                },
                Tcp {
                    src_port: src.1,
                    dst_port: dst.1,
                    tcp_flags: fm as u8,
                },
            ))
        }
        (ipproto::UDP, _) => {
            let (src, dst) = l4_ports(fields)?;
            not_tcp_flags(fields, proto)?;
            Item::Udp(Masked::new(
                Udp {
                    src_port: src.0,
                    dst_port: dst.0,
                },
                Udp {
                    src_port: src.1,
                    dst_port: dst.1,
                },
            ))
        }
        (ipproto::SCTP, _) => {
            let (src, dst) = l4_ports(fields)?;
            not_tcp_flags(fields, proto)?;
            Item::Sctp(Masked::new(
                Sctp {
                    src_port: src.0,
                    dst_port: dst.0,
                    ..Sctp::default()
                },
                Sctp {
                    src_port: src.1,
                    dst_port: dst.1,
                    ..Sctp::default()
                },
            ))
        }
        (ipproto::ICMP, false) => {
            let (t, c) = icmp_type_code(fields)?;
            not_tcp_flags(fields, proto)?;
            Item::Icmp(Masked::new(
                Icmp {
                    icmp_type: t.0,
                    icmp_code: c.0,
                    ..Icmp::default()
                },
                Icmp {
                    icmp_type: t.1,
                    icmp_code: c.1,
                    ..Icmp::default()
                },
            ))
        }
        (ipproto::ICMPV6, true) => {
            let (t, c) = icmp_type_code(fields)?;
            not_tcp_flags(fields, proto)?;
            Item::Icmp6(Masked::new(
                Icmp6 {
                    icmp_type: t.0,
                    icmp_code: c.0,
                },
                Icmp6 {
                    icmp_type: t.1,
                    icmp_code: c.1,
                },
            ))
        }
        _ => return Ok(None),
    };
    Ok(Some(item))
}

/// tp_src and tp_dst as (spec, mask) ports: full masks only.
type PortMatch = (u16, u16);

fn l4_ports(fields: &mut Fields) -> Result<(PortMatch, PortMatch), Rejected> {
    let mut port = |f: Field| {
        let (v, m) = fields.take(f);
        match m {
            0 | 0xffff => Ok((v as u16, m as u16)),
            _ => Err(Rejected::field(
                f,
                format!("partial mask {m:#06x}: L4 ports are offloaded with a full mask only"),
            )),
        }
    };
    Ok((port(Field::TpSrc)?, port(Field::TpDst)?))
}

/// A one-byte field as (spec, mask).
type ByteMatch = (u8, u8);

/// ICMP type (tp_src) and code (tp_dst) as (spec, mask) bytes. The key's
/// upper byte is always zero for ICMP, so a mask there is consumed as long
/// as the value there is zero.
fn icmp_type_code(fields: &mut Fields) -> Result<(ByteMatch, ByteMatch), Rejected> {
    let mut byte = |f: Field| {
        let (v, m) = fields.take(f);
        if v > 0xff {
            return Err(Rejected::field(
                f,
                format!("ICMP type/code {v:#x} is over 0xff: matches no packet"),
            ));
        }
        Ok((v as u8, (m & 0xff) as u8))
    };
    Ok((byte(Field::TpSrc)?, byte(Field::TpDst)?))
}

fn not_tcp_flags(fields: &Fields, proto: u8) -> Result<(), Rejected> {
    if fields.masked(Field::TcpFlags) {
        return Err(Rejected::field(
            Field::TcpFlags,
            format!("only TCP has flags (nw_proto={proto})"),
        ));
    }
    Ok(())
}

/// L4 key fields where no L4 item follows the IP item.
fn no_l4_header(
    fields: &mut Fields,
    proto_v: u8,
    proto_m: u8,
    later_only: bool,
) -> Result<(), Rejected> {
    for f in [Field::TpSrc, Field::TpDst, Field::TcpFlags] {
        let (v, m) = fields.get(f);
        if m == 0 {
            continue;
        }
        if later_only {
            // A later fragment has no L4 header: its L4 key fields are 0.
            if v != 0 {
                return Err(Rejected::field(
                    f,
                    format!(
                        "{v:#x}: later fragments carry no L4 header (the key holds 0), so this \
                         matches no packet"
                    ),
                ));
            }
            fields.consume(f);
            continue;
        }
        let why = if proto_m == 0xff {
            format!("L4 fields are offloaded for tcp, udp, sctp, icmp and icmp6 only (nw_proto={proto_v})")
        } else {
            "L4 fields need an exact nw_proto".to_string()
        };
        return Err(Rejected::field(f, why));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Profile;

    #[test]
    fn frag_states() {
        let no = frag_state(0, 3);
        assert!(no.excludes_later && !no.later_only);
        let first = frag_state(1, 3);
        assert!(first.excludes_later && !first.later_only);
        let later = frag_state(3, 3);
        assert!(!later.excludes_later && later.later_only);
        let none = frag_state(0, 0);
        assert!(!none.excludes_later && !none.later_only);
    }

    #[test]
    fn placeholder_mark_is_patched() {
        let mut m = Match::ANY;
        m.set_exact(Field::InPort, 1);
        let mut t = translate(&m, &Profile::Generic.capabilities(), 0, 1).unwrap();
        assert_eq!(t.rule.mark(), Some(0));
        t.set_mark(42);
        assert_eq!(t.rule.mark(), Some(42));
    }

    /// The engine's unchecked translation is the same rule; only the final
    /// profile check is left to the device's validate. Translating into a
    /// rule that held another translation (more items, more queues) or a
    /// refusal leaves nothing of it behind.
    #[test]
    fn unchecked_translation_is_the_same_rule() {
        let mut m = Match::ANY;
        m.set_exact(Field::InPort, 3);
        m.set_exact(Field::DlType, ethertype::IPV4.into());
        m.set_exact(Field::NwSrc, 0x0a00_0001);
        let mut wide = m;
        wide.set_exact(Field::NwProto, ipproto::TCP.into());
        wide.set_exact(Field::NwFrag, 0);
        wide.set_exact(Field::TpDst, 80);
        let mut reused = empty_rule();
        for p in [Profile::Generic, Profile::Xl710, Profile::NoMark] {
            let caps = p.capabilities();
            // Whatever the buffer held before: a wider rule, 8 queues.
            let _ = translate_unchecked_into(&wide, &caps, 9, 8, &mut reused);
            let into = translate_unchecked_into(&m, &caps, 7, 2, &mut reused);
            let fresh = translate(&m, &caps, 7, 2);
            match (into, fresh) {
                (Ok(t), Ok(f)) => {
                    assert_eq!((t.port, t.exact), (f.port, f.exact), "{p}");
                    assert_eq!(reused, f.rule, "{p}");
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "{p}"),
                (a, b) => panic!("{p}: into {a:?}, fresh {b:?}"),
            }
        }
    }
}
