//! The soak's rule model and its reference: the rules as plain data, their
//! ovs-ofctl text (what the switch is given), and a linear interpreter that
//! says which frames, byte for byte, a packet becomes under them. Independent
//! of `fallback`'s xlate, classifier, megaflows and caches: it knows only
//! this model's fields and OpenFlow's rules (output to the input port is
//! skipped, FLOOD goes to every other port, NORMAL is a learning switch keyed
//! by (MAC, VLAN), a table miss inside a resubmit continues the action list),
//! and builds the expected frames from scratch with `testbed::build`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use testbed::build;
use testbed::traffic::Rng;

/// Trailer every soak packet ends with: magic, flow, seq, window, in_port.
const MAGIC: [u8; 4] = *b"FMSK";
const TRAILER_LEN: usize = 4 + 4 + 8 + 8 + 1;
/// The "router" MAC most packets are sent to: never a source, so NORMAL
/// always floods it.
const DL_DST: u64 = 0x0200_0000_ff01;
const BROADCAST: u64 = 0xffff_ffff_ffff;
/// Destination /22 networks 10.0.(4n).0 for n below this get per-port
/// rules in table 0; the rest fall to the catch-all and table 1.
const NETS_WITH_RULES: u32 = 50;
pub const PORTS: [u32; 3] = [1, 2, 3];
const TP_DSTS: [u16; 4] = [80, 53, 2152, 443];
/// Source MACs per port: 0x0200_0000_PPKK (PP the port, KK below this).
const MACS_PER_PORT: u64 = 4;
const TPID_VLAN: u16 = 0x8100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L3 {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4 {
    Udp,
    Tcp,
    Icmp,
}

fn src_mac(port: u32, k: u64) -> u64 {
    0x0200_0000_0000 | (u64::from(port) << 8) | k
}

/// A packet as the pipeline sees it: the headers as sent, then as the
/// actions so far have made them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pkt {
    pub flow: u32,
    pub in_port: u32,
    pub dl_src: u64,
    pub dl_dst: u64,
    /// The VLAN ID of the (only) tag.
    pub vlan: Option<u16>,
    /// The tag's priority (0 as sent; `mod_vlan_pcp` sets it).
    pub pcp: u8,
    pub l3: L3,
    pub l4: L4,
    /// IPv4 addresses; IPv6 ones are derived (fd00::/64 + this).
    pub nw_src: u32,
    pub nw_dst: u32,
    /// TOS / traffic class.
    pub tos: u8,
    /// TTL / hop limit.
    pub ttl: u8,
    pub tp_src: u16,
    pub tp_dst: u16,
}

impl Pkt {
    /// Flow `flow`'s packet: mostly UDP over IPv4, and TCP, ICMP, IPv6
    /// (UDP, TCP, ICMPv6), VLAN tags 10 and 20; sent to the router MAC, to
    /// broadcast or to another port's station.
    pub fn of(flow: u32) -> Pkt {
        let a = (flow / 3) % 256;
        let b = (flow / 768) % 250 + 1;
        let in_port = PORTS[(flow % 3) as usize];
        let (l3, l4) = match (flow / 3) % 16 {
            0..=7 => (L3::V4, L4::Udp),
            8 | 9 => (L3::V4, L4::Tcp),
            10 => (L3::V4, L4::Icmp),
            11 | 12 => (L3::V6, L4::Udp),
            13 => (L3::V6, L4::Tcp),
            14 => (L3::V6, L4::Icmp),
            _ => (L3::V4, L4::Udp),
        };
        let vlan = match (flow / 7) % 5 {
            0 => Some(10),
            1 => Some(20),
            _ => None,
        };
        let dl_dst = match (flow / 13) % 6 {
            0 => BROADCAST,
            1 | 2 => src_mac(
                PORTS[((flow / 17) % 3) as usize],
                u64::from(flow / 19) % MACS_PER_PORT,
            ),
            _ => DL_DST,
        };
        let (tp_src, tp_dst) = match l4 {
            // ICMP echo: type and code in the key's L4 ports.
            L4::Icmp => (if l3 == L3::V4 { 8 } else { 128 }, 0),
            _ => (
                1024 + (flow % 60_000) as u16,
                TP_DSTS[((flow / 5) % 4) as usize],
            ),
        };
        Pkt {
            flow,
            in_port,
            dl_src: src_mac(in_port, u64::from(flow / 11) % MACS_PER_PORT),
            dl_dst,
            vlan,
            l3,
            l4,
            nw_src: u32::from_be_bytes([10, 128, (flow >> 8) as u8, flow as u8]),
            nw_dst: u32::from_be_bytes([10, 0, a as u8, b as u8]),
            pcp: 0,
            tos: 0,
            ttl: 64,
            tp_src,
            tp_dst,
        }
    }

    /// The frame for packet `seq` of this flow, sent in `window`.
    pub fn frame(&self, seq: u64, window: u64) -> Vec<u8> {
        self.bytes(&trailer(self.flow, seq, window, self.in_port))
    }

    /// The frame these headers make, with `payload` last.
    fn bytes(&self, payload: &[u8]) -> Vec<u8> {
        let (ethertype, l3) = match self.l3 {
            L3::V4 => {
                let proto = match self.l4 {
                    L4::Udp => 17,
                    L4::Tcp => 6,
                    L4::Icmp => 1,
                };
                let mut h = build::Ipv4Header::new(
                    Ipv4Addr::from(self.nw_src),
                    Ipv4Addr::from(self.nw_dst),
                    proto,
                );
                h.tos = self.tos;
                h.ttl = self.ttl;
                let l4 = match self.l4 {
                    L4::Udp => build::udp(h.pseudo(), self.tp_src, self.tp_dst, payload),
                    L4::Tcp => {
                        build::tcp(h.pseudo(), self.tp_src, self.tp_dst, 0x018, &[], payload)
                    }
                    L4::Icmp => build::icmp(self.tp_src as u8, self.tp_dst as u8, &echo(payload)),
                };
                (0x0800, build::ipv4(&h, &l4))
            }
            L3::V6 => {
                let nh = match self.l4 {
                    L4::Udp => 17,
                    L4::Tcp => 6,
                    L4::Icmp => 58,
                };
                let mut h = build::Ipv6Header::new(v6(0, self.nw_src), v6(1, self.nw_dst), nh);
                h.traffic_class = self.tos;
                h.hop_limit = self.ttl;
                let l4 = match self.l4 {
                    L4::Udp => build::udp(h.pseudo(), self.tp_src, self.tp_dst, payload),
                    L4::Tcp => {
                        build::tcp(h.pseudo(), self.tp_src, self.tp_dst, 0x018, &[], payload)
                    }
                    L4::Icmp => build::icmpv6(
                        h.pseudo(),
                        self.tp_src as u8,
                        self.tp_dst as u8,
                        &echo(payload),
                    ),
                };
                (0x86dd, build::ipv6(&h, &l4))
            }
        };
        let f = build::ethernet(mac(self.dl_dst), mac(self.dl_src), ethertype, &l3);
        match self.vlan {
            Some(vid) => build::push_tag(&f, TPID_VLAN, u16::from(self.pcp) << 13 | (vid & 0x0fff)),
            None => f,
        }
    }
}

/// Echo identifier and sequence number, then the payload.
fn echo(payload: &[u8]) -> Vec<u8> {
    let mut rest = vec![0x12, 0x34, 0x00, 0x01];
    rest.extend_from_slice(payload);
    rest
}

fn v6(net: u16, low: u32) -> Ipv6Addr {
    let l = low.to_be_bytes();
    Ipv6Addr::new(
        0xfd00,
        0,
        0,
        net,
        0,
        0,
        u16::from_be_bytes([l[0], l[1]]),
        u16::from_be_bytes([l[2], l[3]]),
    )
}

fn trailer(flow: u32, seq: u64, window: u64, in_port: u32) -> Vec<u8> {
    let mut t = Vec::with_capacity(TRAILER_LEN);
    t.extend_from_slice(&MAGIC);
    t.extend_from_slice(&flow.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&window.to_be_bytes());
    t.push(in_port as u8);
    t
}

fn mac(v: u64) -> [u8; 6] {
    let b = v.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// What a captured frame's trailer says went in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub flow: u32,
    pub seq: u64,
    pub window: u64,
    pub in_port: u32,
}

impl Tag {
    /// Reads the trailer at the end of a captured frame; `None` for a frame
    /// the soak did not make.
    pub fn parse(f: &[u8]) -> Option<Tag> {
        let t = f.get(f.len().checked_sub(TRAILER_LEN)?..)?;
        if t.get(..4)? != MAGIC {
            return None;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&t[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Some(Tag {
            flow: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            seq: u64_at(8),
            window: u64_at(16),
            in_port: u32::from(t[24]),
        })
    }
}

/// An action of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Output(u32),
    /// `mod_nw_tos` (the DSCP bits of the TOS byte / traffic class).
    Tos(u8),
    /// `mod_nw_ecn` (the ECN bits; only on rules that match IP, as OVS
    /// requires).
    Ecn(u8),
    /// `mod_vlan_pcp`: sets the priority, pushing a tag onto an untagged
    /// packet.
    Pcp(u8),
    DlDst(u64),
    DecTtl,
    Resubmit(u8),
    Normal,
    Flood,
    /// `mod_vlan_vid`: sets the VID, pushing a tag onto an untagged packet.
    SetVid(u16),
    StripVlan,
}

/// The protocol part of a rule's match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Any,
    Ip,
    Udp,
    Tcp,
    Icmp,
    Ipv6,
    Udp6,
    Tcp6,
    Icmp6,
}

impl Proto {
    fn matches(self, l3: L3, l4: L4) -> bool {
        match self {
            Proto::Any => true,
            Proto::Ip => l3 == L3::V4,
            Proto::Udp => (l3, l4) == (L3::V4, L4::Udp),
            Proto::Tcp => (l3, l4) == (L3::V4, L4::Tcp),
            Proto::Icmp => (l3, l4) == (L3::V4, L4::Icmp),
            Proto::Ipv6 => l3 == L3::V6,
            Proto::Udp6 => (l3, l4) == (L3::V6, L4::Udp),
            Proto::Tcp6 => (l3, l4) == (L3::V6, L4::Tcp),
            Proto::Icmp6 => (l3, l4) == (L3::V6, L4::Icmp),
        }
    }

    fn text(self) -> Option<&'static str> {
        Some(match self {
            Proto::Any => return None,
            Proto::Ip => "ip",
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
            Proto::Icmp => "icmp",
            Proto::Ipv6 => "ipv6",
            Proto::Udp6 => "udp6",
            Proto::Tcp6 => "tcp6",
            Proto::Icmp6 => "icmp6",
        })
    }

    fn is_v4(self) -> bool {
        matches!(self, Proto::Ip | Proto::Udp | Proto::Tcp | Proto::Icmp)
    }

    fn has_ports(self) -> bool {
        matches!(self, Proto::Udp | Proto::Tcp | Proto::Udp6 | Proto::Tcp6)
    }
}

/// The VLAN part of a rule's match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VlanMatch {
    Any,
    Untagged,
    Vid(u16),
}

/// A rule of the model: an optional in_port, a protocol, a VLAN match, an
/// IPv4 destination prefix (IPv4 protocols only), an optional exact tp_dst
/// (UDP/TCP only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoakRule {
    pub table: u8,
    pub priority: u16,
    pub in_port: Option<u32>,
    pub proto: Proto,
    pub vlan: VlanMatch,
    pub dst_net: u32,
    pub prefix: u8,
    pub tp_dst: Option<u16>,
    /// Empty: drop.
    pub actions: Vec<Action>,
}

impl SoakRule {
    fn any(table: u8, priority: u16, actions: Vec<Action>) -> SoakRule {
        SoakRule {
            table,
            priority,
            in_port: None,
            proto: Proto::Any,
            vlan: VlanMatch::Any,
            dst_net: 0,
            prefix: 0,
            tp_dst: None,
            actions,
        }
    }

    /// Open vSwitch refuses an ECN set on a rule that does not match IP:
    /// such rules go without it.
    fn fit_actions(&mut self) {
        if self.proto == Proto::Any {
            self.actions.retain(|a| !matches!(a, Action::Ecn(_)));
        }
    }

    fn matches(&self, p: &Pkt) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix.min(32)))
        };
        self.in_port.is_none_or(|i| i == p.in_port)
            && self.proto.matches(p.l3, p.l4)
            && match self.vlan {
                VlanMatch::Any => true,
                VlanMatch::Untagged => p.vlan.is_none(),
                VlanMatch::Vid(v) => p.vlan == Some(v),
            }
            && (!self.proto.is_v4() || p.nw_dst & mask == self.dst_net & mask)
            && (!self.proto.has_ports() || self.tp_dst.is_none_or(|t| t == p.tp_dst))
    }

    /// The match in ovs-ofctl syntax (table and priority go separately);
    /// empty for a rule that matches everything.
    pub fn match_text(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(p) = self.in_port {
            parts.push(format!("in_port={p}"));
        }
        if let Some(t) = self.proto.text() {
            parts.push(t.to_string());
        }
        match self.vlan {
            VlanMatch::Any => {}
            VlanMatch::Untagged => parts.push("vlan_tci=0x0000/0x1000".to_string()),
            VlanMatch::Vid(v) => parts.push(format!("dl_vlan={v}")),
        }
        if self.proto.is_v4() && self.prefix > 0 {
            parts.push(format!(
                "nw_dst={}/{}",
                Ipv4Addr::from(self.dst_net),
                self.prefix
            ));
        }
        if self.proto.has_ports() {
            if let Some(p) = self.tp_dst {
                parts.push(format!("tp_dst={p}"));
            }
        }
        parts.join(",")
    }

    /// The whole flow in ovs-ofctl syntax.
    pub fn to_flow(&self) -> String {
        let actions: Vec<String> = self
            .actions
            .iter()
            .map(|a| match a {
                Action::Output(p) => format!("output:{p}"),
                Action::Tos(t) => format!("mod_nw_tos:{t}"),
                Action::Ecn(e) => format!("mod_nw_ecn:{e}"),
                Action::Pcp(p) => format!("mod_vlan_pcp:{p}"),
                Action::DlDst(m) => format!("mod_dl_dst:{}", fallback::key::fmt_mac(*m)),
                Action::DecTtl => "dec_ttl".to_string(),
                Action::Resubmit(t) => format!("resubmit(,{t})"),
                Action::Normal => "NORMAL".to_string(),
                Action::Flood => "FLOOD".to_string(),
                Action::SetVid(v) => format!("mod_vlan_vid:{v}"),
                Action::StripVlan => "strip_vlan".to_string(),
            })
            .collect();
        let actions = if actions.is_empty() {
            "drop".to_string()
        } else {
            actions.join(",")
        };
        let m = self.match_text();
        let m = if m.is_empty() { String::new() } else { m + "," };
        format!(
            "table={},priority={},{m}actions={actions}",
            self.table, self.priority
        )
    }
}

/// A change the churn made (the rule as it is after the change).
#[derive(Clone, Debug)]
pub enum Change {
    Modify(SoakRule),
    Add(SoakRule),
    Delete(SoakRule),
}

#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<SoakRule>,
}

fn random_actions(rng: &mut Rng, table: u8, version: u64) -> Vec<Action> {
    let port = |rng: &mut Rng| PORTS[rng.below(3) as usize];
    // The version in the address: an action that changed shows.
    let dl_dst = 0x0200_1000_0000 | (version & 0xffff_ffff);
    match rng.below(if table == 0 { 14 } else { 12 }) {
        0 => vec![Action::Output(port(rng))],
        1 => vec![
            Action::Tos((rng.below(64) as u8) << 2),
            Action::Output(port(rng)),
        ],
        2 => vec![Action::DlDst(dl_dst), Action::Output(port(rng))],
        3 => vec![Action::DecTtl, Action::Output(port(rng))],
        4 => vec![Action::Output(port(rng)), Action::Output(port(rng))],
        5 => vec![],
        6 => vec![
            Action::Tos(0x20),
            Action::Ecn(1),
            Action::Output(port(rng)),
            Action::DecTtl,
            Action::Output(port(rng)),
        ],
        7 => vec![Action::Normal],
        8 => vec![Action::Flood],
        9 => vec![
            Action::SetVid(30 + rng.below(3) as u16),
            Action::Pcp(5),
            Action::Output(port(rng)),
        ],
        10 => vec![Action::StripVlan, Action::Normal],
        11 => vec![
            Action::DlDst(dl_dst),
            Action::Pcp(3),
            Action::SetVid(20),
            Action::Flood,
        ],
        12 => vec![Action::StripVlan, Action::Resubmit(1)],
        _ => vec![Action::Resubmit(1)],
    }
}

/// A (MAC, VLAN ID) key of the learning table.
pub type MacKey = (u64, u16);

/// What the interpreter needs from the bridge: its ports (sorted) and the
/// learning table as the packet would find it.
pub struct Bridge<'a> {
    pub ports: &'a [u32],
    pub lookup: &'a dyn Fn(MacKey) -> Option<u32>,
}

/// Every frame a packet becomes, and what its way through NORMAL depended
/// on and taught the learning table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// (port, frame bytes), in output order.
    pub frames: Vec<(u32, Vec<u8>)>,
    /// Learning-table entries NORMAL looked up (its destinations).
    pub lookups: Vec<MacKey>,
    /// Entries NORMAL would learn: (key, port).
    pub learns: Vec<(MacKey, u32)>,
}

impl RuleSet {
    /// Table 0: per-port IPv4 rules for each /22 below [`NETS_WITH_RULES`]
    /// (UDP, TCP, ICMP, any IP), VLAN and IPv6 rules, a catch-all
    /// resubmitting to table 1; table 1: per-protocol rules, NORMAL for
    /// untagged traffic, a drop.
    pub fn initial(rng: &mut Rng) -> RuleSet {
        let mut rules = Vec::new();
        let mut prio = 1000u16;
        for n in 0..NETS_WITH_RULES {
            for p in PORTS {
                rules.push(SoakRule {
                    table: 0,
                    priority: prio,
                    in_port: Some(p),
                    proto: [Proto::Udp, Proto::Udp, Proto::Ip, Proto::Tcp, Proto::Icmp]
                        [(n % 5) as usize],
                    vlan: VlanMatch::Any,
                    dst_net: u32::from_be_bytes([10, 0, (n * 4) as u8, 0]),
                    prefix: 22,
                    tp_dst: None,
                    actions: random_actions(rng, 0, 0),
                });
                prio += 1;
            }
        }
        rules.push(SoakRule {
            vlan: VlanMatch::Vid(10),
            ..SoakRule::any(0, 2000, random_actions(rng, 0, 0))
        });
        rules.push(SoakRule {
            vlan: VlanMatch::Vid(20),
            proto: Proto::Udp,
            ..SoakRule::any(0, 2001, random_actions(rng, 0, 0))
        });
        for (i, proto) in [Proto::Udp6, Proto::Tcp6, Proto::Icmp6]
            .into_iter()
            .enumerate()
        {
            rules.push(SoakRule {
                proto,
                ..SoakRule::any(0, 900 + i as u16, random_actions(rng, 0, 0))
            });
        }
        for p in PORTS {
            rules.push(SoakRule {
                in_port: Some(p),
                proto: Proto::Ipv6,
                ..SoakRule::any(0, 950 + p as u16, random_actions(rng, 0, 0))
            });
        }
        for (i, tp) in [80u16, 53, 2152].into_iter().enumerate() {
            rules.push(SoakRule {
                proto: [Proto::Udp6, Proto::Tcp6, Proto::Udp6][i],
                tp_dst: Some(tp),
                ..SoakRule::any(0, 960 + i as u16, random_actions(rng, 0, 0))
            });
        }
        rules.push(SoakRule::any(0, 1, vec![Action::Resubmit(1)]));
        for (i, tp) in [80u16, 2152].into_iter().enumerate() {
            rules.push(SoakRule {
                proto: Proto::Udp,
                tp_dst: Some(tp),
                ..SoakRule::any(1, 20 + i as u16, random_actions(rng, 1, 0))
            });
        }
        rules.push(SoakRule {
            proto: Proto::Tcp,
            tp_dst: Some(443),
            ..SoakRule::any(1, 22, random_actions(rng, 1, 0))
        });
        rules.push(SoakRule {
            proto: Proto::Icmp,
            ..SoakRule::any(1, 23, random_actions(rng, 1, 0))
        });
        rules.push(SoakRule {
            proto: Proto::Icmp6,
            ..SoakRule::any(1, 24, random_actions(rng, 1, 0))
        });
        rules.push(SoakRule {
            in_port: Some(3),
            ..SoakRule::any(1, 10, vec![Action::Output(1)])
        });
        rules.push(SoakRule {
            vlan: VlanMatch::Untagged,
            ..SoakRule::any(1, 5, vec![Action::Normal])
        });
        rules.push(SoakRule::any(1, 0, vec![]));
        for r in &mut rules {
            r.fit_actions();
        }
        RuleSet { rules }
    }

    /// One tick of churn: new actions for 1% of the rules, and now and
    /// then a high-priority tp_dst rule added or deleted (a megaflow mask
    /// change). Returns what changed, to apply to the switch.
    pub fn churn(&mut self, rng: &mut Rng, version: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        let n = (self.rules.len() / 100).max(1);
        for _ in 0..n {
            let i = rng.below(self.rules.len() as u64) as usize;
            let table = self.rules[i].table;
            self.rules[i].actions = random_actions(rng, table, version);
            self.rules[i].fit_actions();
            changes.push(Change::Modify(self.rules[i].clone()));
        }
        if rng.below(3) == 0 {
            let net = rng.below(u64::from(NETS_WITH_RULES)) as u32 * 4 + rng.below(4) as u32;
            let priority = 5000 + net as u16;
            if let Some(i) = self
                .rules
                .iter()
                .position(|r| r.table == 0 && r.priority == priority)
            {
                changes.push(Change::Delete(self.rules.remove(i)));
            } else {
                let mut r = SoakRule {
                    proto: Proto::Udp,
                    dst_net: u32::from_be_bytes([10, 0, net as u8, 0]),
                    prefix: 24,
                    tp_dst: Some(53),
                    ..SoakRule::any(0, priority, random_actions(rng, 0, version))
                };
                r.fit_actions();
                self.rules.push(r.clone());
                changes.push(Change::Add(r));
            }
        }
        changes
    }

    fn find(&self, table: u8, p: &Pkt) -> Option<&SoakRule> {
        self.rules
            .iter()
            .filter(|r| r.table == table && r.matches(p))
            .max_by_key(|r| r.priority)
    }

    /// Everything packet `seq` of `flow`, sent in `window`, becomes under
    /// these rules on `bridge`.
    pub fn outcome(&self, bridge: &Bridge<'_>, flow: u32, seq: u64, window: u64) -> Outcome {
        let mut pkt = Pkt::of(flow);
        let mut run = Run {
            rules: self,
            bridge,
            trailer: trailer(flow, seq, window, pkt.in_port),
            out: Outcome::default(),
        };
        run.table(0, &mut pkt, 0);
        run.out
    }
}

struct Run<'a, 'b> {
    rules: &'a RuleSet,
    bridge: &'a Bridge<'b>,
    trailer: Vec<u8>,
    out: Outcome,
}

impl Run<'_, '_> {
    fn table(&mut self, table: u8, pkt: &mut Pkt, depth: u32) {
        if depth > 8 {
            return;
        }
        let Some(rule) = self.rules.find(table, pkt) else {
            // A miss at the top drops; inside a resubmit the list goes on.
            return;
        };
        for a in &rule.actions {
            match a {
                Action::Output(p) => self.output(*p, pkt),
                Action::Flood => self.flood(pkt),
                Action::Normal => self.normal(pkt),
                Action::Tos(t) => pkt.tos = (pkt.tos & 0x03) | (t & 0xfc),
                Action::DlDst(m) => pkt.dl_dst = *m,
                Action::DecTtl => {
                    if pkt.ttl <= 1 {
                        // TTL exceeded: the rest of this rule's list is skipped.
                        return;
                    }
                    pkt.ttl -= 1;
                }
                Action::Ecn(e) => pkt.tos = (pkt.tos & 0xfc) | (e & 0x03),
                Action::SetVid(v) => pkt.vlan = Some(*v & 0x0fff),
                Action::Pcp(p) => {
                    pkt.vlan.get_or_insert(0);
                    pkt.pcp = p & 0x07;
                }
                Action::StripVlan => {
                    pkt.vlan = None;
                    pkt.pcp = 0;
                }
                Action::Resubmit(t) => self.table(*t, pkt, depth + 1),
            }
        }
    }

    /// OpenFlow: output to the input port, or to a port the bridge does not
    /// have, sends nothing.
    fn output(&mut self, port: u32, pkt: &Pkt) {
        if port == pkt.in_port || self.bridge.ports.binary_search(&port).is_err() {
            return;
        }
        self.out.frames.push((port, pkt.bytes(&self.trailer)));
    }

    fn flood(&mut self, pkt: &Pkt) {
        for &p in self.bridge.ports {
            self.output(p, pkt);
        }
    }

    fn normal(&mut self, pkt: &Pkt) {
        let vid = pkt.vlan.unwrap_or(0);
        if (self.bridge.lookup)((pkt.dl_src, vid)) != Some(pkt.in_port) {
            self.out.learns.push(((pkt.dl_src, vid), pkt.in_port));
        }
        if pkt.dl_dst & 0x0100_0000_0000 != 0 {
            self.flood(pkt);
            return;
        }
        if pkt.dl_dst == pkt.dl_src {
            // Learned on the input port just now (as in OVS): dropped.
            return;
        }
        self.out.lookups.push((pkt.dl_dst, vid));
        match (self.bridge.lookup)((pkt.dl_dst, vid)) {
            Some(p) if p == pkt.in_port => {}
            Some(p) => self.output(p, pkt),
            None => self.flood(pkt),
        }
    }
}

/// The learning table as the checker knows it: entries the switch has
/// certainly learned, and entries it may have learned (a packet that would
/// teach them was sent but not seen to go through).
#[derive(Clone, Debug, Default)]
pub struct MacModel {
    entries: HashMap<MacKey, (u32, bool)>,
}

impl MacModel {
    /// The port of a certain entry.
    pub fn certain(&self, k: MacKey) -> Option<u32> {
        self.entries.get(&k).filter(|e| e.1).map(|e| e.0)
    }

    /// Whether the switch's answer for `k` is known.
    pub fn is_certain(&self, k: MacKey) -> bool {
        self.entries.get(&k).is_none_or(|e| e.1)
    }

    /// The port the entry has if learned at all.
    pub fn maybe(&self, k: MacKey) -> Option<u32> {
        self.entries.get(&k).map(|e| e.0)
    }

    pub fn learned(&mut self, k: MacKey, port: u32) {
        self.entries.insert(k, (port, true));
    }

    pub fn maybe_learned(&mut self, k: MacKey, port: u32) {
        let e = self.entries.entry(k).or_insert((port, false));
        if e.0 != port {
            *e = (port, false);
        }
    }

    /// A removed port: its entries go (uncertain ones may be elsewhere).
    pub fn flush_port(&mut self, port: u32) {
        self.entries.retain(|_, e| e.0 != port || !e.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back() {
        for flow in [12_345, 12_346, 3 * 10, 3 * 14 + 1, 3 * 11 + 2, 7 * 5] {
            let h = Pkt::of(flow);
            let f = h.frame(77, 9);
            let t = Tag::parse(&f).unwrap();
            assert_eq!(
                (t.flow, t.seq, t.window, t.in_port),
                (flow, 77, 9, h.in_port)
            );
            let mut key = fallback::key::FlowKey::ZERO;
            let info = fallback::packet::parse(&f, h.in_port, &mut key);
            assert!(info.l3_ofs.is_some(), "flow {flow} parses");
        }
    }

    #[test]
    fn traffic_mixes_protocols_vlans_and_destinations() {
        let pkts: Vec<Pkt> = (0..3000).map(Pkt::of).collect();
        for (l3, l4) in [
            (L3::V4, L4::Udp),
            (L3::V4, L4::Tcp),
            (L3::V4, L4::Icmp),
            (L3::V6, L4::Udp),
            (L3::V6, L4::Tcp),
            (L3::V6, L4::Icmp),
        ] {
            assert!(pkts.iter().any(|p| (p.l3, p.l4) == (l3, l4)));
        }
        assert!(pkts.iter().any(|p| p.vlan == Some(10)));
        assert!(pkts.iter().any(|p| p.dl_dst == BROADCAST));
        assert!(pkts.iter().any(|p| p.dl_dst >> 8 == 0x02_0000_0002));
    }

    #[test]
    fn normal_floods_then_unicasts_and_learns() {
        let rules = RuleSet {
            rules: vec![SoakRule::any(0, 1, vec![Action::Normal])],
        };
        let flow = (0..10_000)
            .find(|f| {
                let p = Pkt::of(*f);
                p.dl_dst >> 16 == 0x0200_0000 && p.dl_dst >> 8 & 0xff != u64::from(p.in_port)
            })
            .unwrap();
        let p = Pkt::of(flow);
        let none = |_: MacKey| None;
        let b = Bridge {
            ports: &[1, 2, 3],
            lookup: &none,
        };
        let o = rules.outcome(&b, flow, 1, 0);
        assert_eq!(o.frames.len(), 2, "unknown destination: flood");
        assert_eq!(o.learns, vec![((p.dl_src, p.vlan.unwrap_or(0)), p.in_port)]);
        let dst_port = (p.dl_dst >> 8 & 0xff) as u32;
        let known = move |k: MacKey| (k.0 == p.dl_dst).then_some(dst_port);
        let b = Bridge {
            ports: &[1, 2, 3],
            lookup: &known,
        };
        let o = rules.outcome(&b, flow, 1, 0);
        assert_eq!(o.frames.len(), 1);
        assert_eq!(o.frames[0].0, dst_port);
    }

    #[test]
    fn vlan_push_and_strip_change_the_bytes() {
        let flow = (0..1000).find(|f| Pkt::of(*f).vlan.is_none()).unwrap();
        let p = Pkt::of(flow);
        let ports = [1, 2, 3];
        let out = PORTS.iter().copied().find(|x| *x != p.in_port).unwrap();
        let none = |_: MacKey| None;
        let b = Bridge {
            ports: &ports,
            lookup: &none,
        };
        let push = RuleSet {
            rules: vec![SoakRule::any(
                0,
                1,
                vec![
                    Action::SetVid(30),
                    Action::Output(out),
                    Action::StripVlan,
                    Action::Output(out),
                ],
            )],
        };
        let o = push.outcome(&b, flow, 5, 0);
        let plain = p.frame(5, 0);
        assert_eq!(o.frames[0].1.len(), plain.len() + 4);
        assert_eq!(&o.frames[0].1[12..16], &[0x81, 0x00, 0x00, 30]);
        assert_eq!(o.frames[1].1, plain);
    }
}
