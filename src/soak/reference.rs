//! The soak's rule model and its reference: the rules as plain data, their
//! ovs-ofctl text (what the switch is given), and a linear interpreter that
//! says what a flow's packet becomes under them. Independent of `fallback`'s
//! xlate, megaflows and caches: it knows only this model's fields.

use fallback::packet::build;
use std::net::Ipv4Addr;
use testbed::traffic::Rng;

/// Trailer every soak packet ends with: magic, flow, seq, version, in_port.
const MAGIC: [u8; 4] = *b"FMSK";
const TRAILER_LEN: usize = 4 + 4 + 8 + 8 + 1;
const DL_DST: u64 = 0x0200_0000_ff01;
/// Destination /22 networks 10.0.(4n).0 for n below this get per-port
/// rules in table 0; the rest fall to the catch-all and table 1.
const NETS_WITH_RULES: u32 = 50;
const PORTS: [u32; 3] = [1, 2, 3];
const TP_DSTS: [u16; 4] = [80, 53, 2152, 443];

/// The headers of a flow's packets as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowHeaders {
    pub flow: u32,
    pub in_port: u32,
    pub nw_src: u32,
    pub nw_dst: u32,
    pub tp_src: u16,
    pub tp_dst: u16,
}

impl FlowHeaders {
    pub fn of(flow: u32) -> FlowHeaders {
        let a = (flow / 3) % 256;
        let b = (flow / 768) % 250 + 1;
        FlowHeaders {
            flow,
            in_port: PORTS[(flow % 3) as usize],
            nw_src: u32::from_be_bytes([10, 128, (flow >> 8) as u8, flow as u8]),
            nw_dst: u32::from_be_bytes([10, 0, a as u8, b as u8]),
            tp_src: 1024 + (flow % 60_000) as u16,
            tp_dst: TP_DSTS[((flow / 5) % 4) as usize],
        }
    }

    /// The frame for packet `seq` of this flow, stamped with `version`.
    pub fn frame(&self, seq: u64, version: u64) -> Vec<u8> {
        let mut trailer = Vec::with_capacity(TRAILER_LEN);
        trailer.extend_from_slice(&MAGIC);
        trailer.extend_from_slice(&self.flow.to_be_bytes());
        trailer.extend_from_slice(&seq.to_be_bytes());
        trailer.extend_from_slice(&version.to_be_bytes());
        trailer.push(self.in_port as u8);
        let h =
            build::Ipv4Header::new(Ipv4Addr::from(self.nw_src), Ipv4Addr::from(self.nw_dst), 17);
        let l4 = build::udp(h.pseudo(), self.tp_src, self.tp_dst, &trailer);
        let src = 0x0200_0000_0000u64 | u64::from(self.in_port);
        build::ethernet(mac(DL_DST), mac(src), 0x0800, &build::ipv4(&h, &l4))
    }
}

fn mac(v: u64) -> [u8; 6] {
    let b = v.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

fn fmt_mac(v: u64) -> String {
    let m = mac(v);
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// One transmitted packet as the checker compares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output {
    pub port: u32,
    pub dl_dst: u64,
    pub tos: u8,
    pub ttl: u8,
    pub nw_src: u32,
    pub nw_dst: u32,
    pub tp_src: u16,
    pub tp_dst: u16,
}

/// A captured packet: what came out, and what its trailer says went in.
#[derive(Clone, Copy, Debug)]
pub struct Observed {
    pub flow: u32,
    pub seq: u64,
    pub version: u64,
    pub output: Output,
}

impl Observed {
    /// Reads a captured frame (untagged Ethernet/IPv4/UDP with the soak's
    /// trailer); `None` for anything else.
    pub fn parse(port: u32, f: &[u8]) -> Option<Observed> {
        let be16 = |i: usize| Some(u16::from_be_bytes([*f.get(i)?, *f.get(i + 1)?]));
        let be32 = |i: usize| {
            Some(u32::from_be_bytes([
                *f.get(i)?,
                *f.get(i + 1)?,
                *f.get(i + 2)?,
                *f.get(i + 3)?,
            ]))
        };
        if be16(12)? != 0x0800 || f.get(14)? & 0xf0 != 0x40 || *f.get(23)? != 17 {
            return None;
        }
        let l4 = 14 + usize::from(f.get(14)? & 0x0f) * 4;
        let t = f.get(f.len().checked_sub(TRAILER_LEN)?..)?;
        if t[..4] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&t[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let mut dst = [0u8; 8];
        dst[2..].copy_from_slice(f.get(..6)?);
        Some(Observed {
            flow: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            seq: u64_at(8),
            version: u64_at(16),
            output: Output {
                port,
                dl_dst: u64::from_be_bytes(dst),
                tos: *f.get(15)?,
                ttl: *f.get(22)?,
                nw_src: be32(26)?,
                nw_dst: be32(30)?,
                tp_src: be16(l4)?,
                tp_dst: be16(l4 + 2)?,
            },
        })
    }
}

/// An action of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Output(u32),
    /// `mod_nw_tos` (the DSCP bits of the TOS byte).
    Tos(u8),
    DlDst(u64),
    DecTtl,
    Resubmit(u8),
}

/// A rule of the model: always `udp`; an optional in_port, a destination
/// prefix, an optional exact tp_dst.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoakRule {
    pub table: u8,
    pub priority: u16,
    pub in_port: Option<u32>,
    pub dst_net: u32,
    pub prefix: u8,
    pub tp_dst: Option<u16>,
    /// Empty: drop.
    pub actions: Vec<Action>,
}

impl SoakRule {
    fn matches(&self, in_port: u32, h: &FlowHeaders) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        self.in_port.is_none_or(|p| p == in_port)
            && h.nw_dst & mask == self.dst_net & mask
            && self.tp_dst.is_none_or(|p| p == h.tp_dst)
    }

    /// The match in ovs-ofctl syntax (table and priority go separately).
    pub fn match_text(&self) -> String {
        let mut s = String::new();
        if let Some(p) = self.in_port {
            s += &format!("in_port={p},");
        }
        s += "udp";
        if self.prefix > 0 {
            s += &format!(",nw_dst={}/{}", Ipv4Addr::from(self.dst_net), self.prefix);
        }
        if let Some(p) = self.tp_dst {
            s += &format!(",tp_dst={p}");
        }
        s
    }

    /// The whole flow in ovs-ofctl syntax.
    pub fn to_flow(&self) -> String {
        let actions: Vec<String> = self
            .actions
            .iter()
            .map(|a| match a {
                Action::Output(p) => format!("output:{p}"),
                Action::Tos(t) => format!("mod_nw_tos:{t}"),
                Action::DlDst(m) => format!("mod_dl_dst:{}", fmt_mac(*m)),
                Action::DecTtl => "dec_ttl".to_string(),
                Action::Resubmit(t) => format!("resubmit(,{t})"),
            })
            .collect();
        let actions = if actions.is_empty() {
            "drop".to_string()
        } else {
            actions.join(",")
        };
        format!(
            "table={},priority={},{},actions={actions}",
            self.table,
            self.priority,
            self.match_text()
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
    match rng.below(if table == 0 { 8 } else { 7 }) {
        0 => vec![Action::Output(port(rng))],
        1 => vec![
            Action::Tos((rng.below(64) as u8) << 2),
            Action::Output(port(rng)),
        ],
        2 => vec![
            // The version in the address: an action that changed shows.
            Action::DlDst(0x0200_0000_0000 | (version & 0xffff_ffff)),
            Action::Output(port(rng)),
        ],
        3 => vec![Action::DecTtl, Action::Output(port(rng))],
        4 => vec![Action::Output(port(rng)), Action::Output(port(rng))],
        5 => vec![],
        6 => vec![
            Action::Tos(0x20),
            Action::Output(port(rng)),
            Action::DecTtl,
            Action::Output(port(rng)),
        ],
        _ => vec![Action::Resubmit(1)],
    }
}

impl RuleSet {
    /// Table 0: per-port rules for each /22 below [`NETS_WITH_RULES`], a
    /// catch-all resubmitting to table 1; table 1: a few rules and a drop.
    pub fn initial(rng: &mut Rng) -> RuleSet {
        let mut rules = Vec::new();
        let mut prio = 1000u16;
        for n in 0..NETS_WITH_RULES {
            for p in PORTS {
                rules.push(SoakRule {
                    table: 0,
                    priority: prio,
                    in_port: Some(p),
                    dst_net: u32::from_be_bytes([10, 0, (n * 4) as u8, 0]),
                    prefix: 22,
                    tp_dst: None,
                    actions: random_actions(rng, 0, 0),
                });
                prio += 1;
            }
        }
        rules.push(SoakRule {
            table: 0,
            priority: 1,
            in_port: None,
            dst_net: 0,
            prefix: 0,
            tp_dst: None,
            actions: vec![Action::Resubmit(1)],
        });
        for (i, tp) in [80u16, 2152].into_iter().enumerate() {
            rules.push(SoakRule {
                table: 1,
                priority: 20 + i as u16,
                in_port: None,
                dst_net: 0,
                prefix: 0,
                tp_dst: Some(tp),
                actions: random_actions(rng, 1, 0),
            });
        }
        rules.push(SoakRule {
            table: 1,
            priority: 10,
            in_port: Some(3),
            dst_net: 0,
            prefix: 0,
            tp_dst: None,
            actions: vec![Action::Output(1)],
        });
        rules.push(SoakRule {
            table: 1,
            priority: 0,
            in_port: None,
            dst_net: 0,
            prefix: 0,
            tp_dst: None,
            actions: vec![],
        });
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
                let r = SoakRule {
                    table: 0,
                    priority,
                    in_port: None,
                    dst_net: u32::from_be_bytes([10, 0, net as u8, 0]),
                    prefix: 24,
                    tp_dst: Some(53),
                    actions: random_actions(rng, 0, version),
                };
                self.rules.push(r.clone());
                changes.push(Change::Add(r));
            }
        }
        changes
    }

    fn find(&self, table: u8, in_port: u32, h: &FlowHeaders) -> Option<&SoakRule> {
        self.rules
            .iter()
            .filter(|r| r.table == table && r.matches(in_port, h))
            .max_by_key(|r| r.priority)
    }

    /// Every packet the flow's packet becomes under these rules.
    pub fn outputs(&self, h: &FlowHeaders) -> Vec<Output> {
        let mut state = Output {
            port: 0,
            dl_dst: DL_DST,
            tos: 0,
            ttl: 64,
            nw_src: h.nw_src,
            nw_dst: h.nw_dst,
            tp_src: h.tp_src,
            tp_dst: h.tp_dst,
        };
        let mut out = Vec::new();
        self.run(0, h, &mut state, &mut out, 0);
        out
    }

    fn run(
        &self,
        table: u8,
        h: &FlowHeaders,
        state: &mut Output,
        out: &mut Vec<Output>,
        depth: u32,
    ) {
        if depth > 8 {
            return;
        }
        let Some(rule) = self.find(table, h.in_port, h) else {
            return;
        };
        for a in &rule.actions {
            match a {
                // OpenFlow: output to the input port is dropped.
                Action::Output(p) if *p == h.in_port => {}
                Action::Output(p) => out.push(Output { port: *p, ..*state }),
                Action::Tos(t) => state.tos = (state.tos & 0x03) | (t & 0xfc),
                Action::DlDst(m) => state.dl_dst = *m,
                Action::DecTtl => state.ttl = state.ttl.saturating_sub(1),
                Action::Resubmit(t) => self.run(*t, h, state, out, depth + 1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back() {
        let h = FlowHeaders::of(12_345);
        let f = h.frame(77, 9);
        let o = Observed::parse(2, &f).unwrap();
        assert_eq!((o.flow, o.seq, o.version), (12_345, 77, 9));
        assert_eq!(o.output.nw_dst, h.nw_dst);
        assert_eq!(o.output.tp_dst, h.tp_dst);
        assert_eq!(o.output.ttl, 64);
        assert_eq!(o.output.dl_dst, DL_DST);
    }
}
