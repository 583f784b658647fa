//! The megaflow property (DESIGN §2): for random rule sets and packets
//! derived from their matches, what a packet gets through megaflow + dpcls +
//! EMC equals what a plain linear full-pipeline lookup gives it, and no two
//! installed megaflows overlap with different actions.
//!
//! The reference here is written independently of `xlate`: it walks the
//! tables linearly and records, for every output, the port and the packet as
//! it would leave. Cached datapath actions are judged by executing them on
//! the key and comparing those effects.
//!
//! The tables are the classifier (staged lookup, prefix tries on addresses
//! and ports); rules use many prefix lengths so that the tries decide many
//! megaflow masks.
//!
//! `FLOWMARK_LONG=1` runs ten times as many rule sets.

use fallback::actions::DpAction;
use fallback::cache::{CacheHit, FlowCache};
use fallback::key::{ethertype, frag, ipproto, Field, FlowKey, VLAN_CFI, VLAN_VID_MASK};
use fallback::megaflow::Megaflow;
use fallback::ofproto::mac::MacTable;
use fallback::ofproto::xlate::{xlate, xlate_hinted};
use fallback::ofproto::{OfAction, Rule};
use fallback::packet::L2Fields;
use proptest::prelude::*;
use testbed::traffic::Rng;

mod common;
use common::*;

// ---- the reference: a plain linear walk of the rules ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    Out(u32, FlowKey),
    Controller,
    Meter(u32),
}

struct Reference<'a> {
    rules: &'a [Rule],
    macs: &'a MacTable,
    orig_in_port: u32,
    resubmits: usize,
    aborted: bool,
    effects: Vec<Effect>,
    /// A fragment's L4 ports (tp_src, tp_dst) the rules see as 0 until an
    /// action sets them (OVS's default fragment handling).
    hidden: [bool; 2],
}

impl Reference<'_> {
    /// First rule by (priority desc, order added).
    fn find(&self, table: u8, pkt: &FlowKey) -> Option<&Rule> {
        let mut view = *pkt;
        for (f, hidden) in [Field::TpSrc, Field::TpDst].into_iter().zip(self.hidden) {
            if hidden {
                view.set(f, 0);
            }
        }
        let pkt = &view;
        let mut best: Option<&Rule> = None;
        for r in self.rules.iter().filter(|r| r.table == table) {
            let m = &r.r#match;
            let hit = (0..pkt.words.len())
                .all(|i| pkt.words[i] & m.mask.words[i] == m.value.words[i] & m.mask.words[i]);
            if hit && best.is_none_or(|b| r.priority > b.priority) {
                best = Some(r);
            }
        }
        best
    }

    fn out(&mut self, p: u32, pkt: &FlowKey) {
        if p == pkt.in_port() || !PORTS.contains(&p) {
            return;
        }
        let mut leaving = *pkt;
        leaving.set(Field::InPort, self.orig_in_port as u128);
        self.effects.push(Effect::Out(p, leaving));
    }

    fn flood(&mut self, pkt: &FlowKey) {
        for p in PORTS {
            self.out(p, pkt);
        }
    }

    fn run_table(&mut self, table: u8, pkt: &mut FlowKey, depth: usize) {
        let Some(rule) = self.find(table, pkt) else {
            return;
        };
        for a in rule.actions.clone() {
            if self.aborted {
                return;
            }
            let ip = matches!(pkt.dl_type(), ethertype::IPV4 | ethertype::IPV6);
            match a {
                OfAction::Output(p) => self.out(p, pkt),
                OfAction::InPort => {
                    let mut leaving = *pkt;
                    leaving.set(Field::InPort, self.orig_in_port as u128);
                    if PORTS.contains(&pkt.in_port()) {
                        self.effects.push(Effect::Out(pkt.in_port(), leaving));
                    }
                }
                OfAction::Flood | OfAction::All => self.flood(pkt),
                OfAction::Controller { .. } => self.effects.push(Effect::Controller),
                OfAction::Meter(m) => self.effects.push(Effect::Meter(m)),
                OfAction::Normal => {
                    let src = pkt.get(Field::DlSrc) as u64;
                    let dst = pkt.get(Field::DlDst) as u64;
                    let vlan = pkt.vlan_tci() & VLAN_VID_MASK;
                    if src & (1 << 40) != 0 || dst & 0xffff_ffff_fff0 == 0x0180_c200_0000 {
                        continue;
                    }
                    if dst & (1 << 40) != 0 {
                        self.flood(pkt);
                    } else if dst == src {
                        // Learned on the input port just now (as in OVS).
                    } else {
                        match self.macs.lookup(dst, vlan) {
                            Some(p) if p == pkt.in_port() => {}
                            Some(p) => self.out(p, pkt),
                            None => self.flood(pkt),
                        }
                    }
                }
                OfAction::Mod(f, v) | OfAction::SetField(f, v) => {
                    let push = matches!(a, OfAction::Mod(..));
                    match f {
                        Field::NwSrc | Field::NwDst if pkt.dl_type() == ethertype::IPV4 => {
                            pkt.set(f, v)
                        }
                        Field::DlSrc | Field::DlDst => pkt.set(f, v),
                        Field::TpSrc | Field::TpDst
                            if ip
                                && matches!(
                                    pkt.nw_proto(),
                                    ipproto::TCP | ipproto::UDP | ipproto::SCTP
                                ) =>
                        {
                            pkt.set(f, v);
                            self.hidden[usize::from(f == Field::TpDst)] = false;
                        }
                        Field::VlanTci | Field::VlanPcp
                            if pkt.vlan_tci() & VLAN_CFI != 0 || push =>
                        {
                            let tci = if pkt.vlan_tci() & VLAN_CFI != 0 {
                                pkt.vlan_tci()
                            } else {
                                VLAN_CFI
                            };
                            let tci = if f == Field::VlanTci {
                                (tci & !VLAN_VID_MASK) | (v as u16 & VLAN_VID_MASK)
                            } else {
                                (tci & 0x1fff) | ((v as u16) << 13)
                            };
                            pkt.set(Field::VlanTci, tci as u128);
                        }
                        Field::NwEcn if ip => {
                            let tos = (pkt.get(Field::NwTos) & 0xfc) | (v & 0x03);
                            pkt.set(Field::NwTos, tos);
                        }
                        _ => {}
                    }
                }
                OfAction::DecTtl => {
                    if ip {
                        let ttl = pkt.get(Field::NwTtl);
                        if ttl <= 1 {
                            return;
                        }
                        pkt.set(Field::NwTtl, ttl - 1);
                    }
                }
                OfAction::StripVlan => pkt.set(Field::VlanTci, 0),
                OfAction::PushVlan(_) => pkt.set(Field::VlanTci, VLAN_CFI as u128),
                OfAction::Resubmit { port, table: t } => {
                    self.resubmits += 1;
                    if depth + 1 >= 64 || self.resubmits > 64 * 64 {
                        self.aborted = true;
                        return;
                    }
                    let saved = pkt.in_port();
                    if let Some(p) = port {
                        pkt.set(Field::InPort, p as u128);
                    }
                    self.run_table(t.unwrap_or(table), pkt, depth + 1);
                    pkt.set(Field::InPort, saved as u128);
                }
                OfAction::Write(_)
                | OfAction::ClearActions
                | OfAction::GotoTable(_)
                | OfAction::WriteMetadata { .. }
                | OfAction::Group(_) => {
                    panic!("the rule generator makes no OpenFlow 1.3 instructions or groups")
                }
            }
        }
    }
}

fn reference(rules: &[Rule], macs: &MacTable, key: &FlowKey) -> Vec<Effect> {
    let mut r = Reference {
        rules,
        macs,
        orig_in_port: key.in_port(),
        resubmits: 0,
        aborted: false,
        effects: Vec::new(),
        hidden: [key.is_ip() && key.get(Field::NwFrag) & u128::from(frag::ANY) != 0; 2],
    };
    let mut pkt = *key;
    r.run_table(0, &mut pkt, 0);
    // A packet that goes nowhere is dropped whole, meters and all.
    let sends = r.effects.iter().any(|e| !matches!(e, Effect::Meter(_)));
    if r.aborted || !sends {
        Vec::new()
    } else {
        r.effects
    }
}

/// What executing datapath actions on a key does.
fn execute(actions: &[DpAction], key: &FlowKey) -> Vec<Effect> {
    let mut pkt = *key;
    let mut effects = Vec::new();
    for a in actions {
        match *a {
            DpAction::Output(p) => effects.push(Effect::Out(p, pkt)),
            DpAction::Controller { .. } => effects.push(Effect::Controller),
            DpAction::Meter(m) => effects.push(Effect::Meter(m)),
            DpAction::PushVlan(_) => pkt.set(Field::VlanTci, VLAN_CFI as u128),
            DpAction::PopVlan => pkt.set(Field::VlanTci, 0),
            DpAction::Set(Field::NwTos, v) => {
                let tos = (pkt.get(Field::NwTos) & 0x03) | (v & 0xfc);
                pkt.set(Field::NwTos, tos);
            }
            DpAction::Set(Field::VlanTci, v) => {
                let tci = (pkt.vlan_tci() & !VLAN_VID_MASK) | (v as u16 & VLAN_VID_MASK);
                pkt.set(Field::VlanTci, tci as u128);
            }
            DpAction::Set(f, v) => pkt.set(f, v),
        }
    }
    effects
}

struct Tally {
    /// Megaflows whose address mask is a prefix no rule has: bits a prefix
    /// trie chose to prove a miss.
    trie_narrowed: usize,
    packets: usize,
    rule_hits: usize,
    emc: usize,
    dpcls: usize,
    upcalls: usize,
    simple: usize,
}

fn check_rule_set(seed: u64, tally: &mut Tally) {
    let mut r = Rng::new(seed);
    let rules = random_rules(&mut r);
    let (pipeline, macs) = pipeline_and_macs(&rules, 3);
    let bridge = bridge(&pipeline, &macs);
    let mut cache = FlowCache::new(1);
    let table0: Vec<&Rule> = rules.iter().filter(|r| r.table == 0).collect();
    let mut hits_here = 0;
    let mut k = FlowKey::ZERO;
    for i in 0..1000 {
        // Every third packet repeats the previous one (EMC hits).
        if i % 3 != 2 {
            let src = r.pick(&table0);
            k = packet_from(&mut r, &src.r#match);
        }
        let hash = k.hash64() as u32;
        let full = xlate(bridge, &k);
        // Simple match, where the packet's port has a table: any megaflow
        // it returns holds the packet and gives the full translation.
        let in_port = k.in_port();
        if let Some(t) = cache.simple_table(in_port) {
            let fields = L2Fields {
                dl_type: k.get(Field::DlType) as u16,
                vlan_tci: k.get(Field::VlanTci) as u16,
                nw_frag: k.get(Field::NwFrag) as u8,
                tcp_flags: 0,
            };
            if let Some(h) = t.lookup(in_port, &fields) {
                tally.simple += 1;
                let mf = cache.get(h).expect("a live handle");
                assert!(
                    mf.matches(&k),
                    "simple match returned a megaflow that does not match"
                );
                assert_eq!(**mf.actions(), *full.actions, "seed {seed}: simple match");
            }
        }
        if full
            .rules
            .first()
            .is_some_and(|id| pipeline.get(*id).is_some_and(|e| e.priority() > 0))
        {
            hits_here += 1;
        }
        let actions = match cache.lookup(&k, hash) {
            Some((h, how)) => {
                match how {
                    CacheHit::Emc => tally.emc += 1,
                    CacheHit::Dpcls => tally.dpcls += 1,
                }
                let mf = cache.get(h).expect("a live handle");
                assert!(
                    mf.matches(&k),
                    "cache returned a megaflow that does not match"
                );
                mf.actions().to_vec()
            }
            None => {
                tally.upcalls += 1;
                let mf = Megaflow::new(&k, &full.mask, full.actions.clone(), full.rules.clone());
                for f in [Field::NwSrc, Field::NwDst, Field::Ipv6Src, Field::Ipv6Dst] {
                    let m = full.mask.get(f);
                    if m != 0 && rules.iter().all(|r| r.r#match.mask.get(f) != m) {
                        tally.trie_narrowed += 1;
                    }
                }
                assert!(mf.matches(&k));
                cache
                    .install(mf)
                    .expect("distinct matches: no ufid collision");
                full.actions.clone()
            }
        };
        assert_eq!(
            actions, full.actions,
            "seed {seed}: cached actions differ from a full translation of {k:?}"
        );
        let want = reference(&rules, &macs, &k);
        let got = execute(&actions, &k);
        assert_eq!(
            got, want,
            "seed {seed}: datapath effects differ from the reference for {k:?}\nactions {actions:?}\nrules {rules:#?}"
        );
        tally.packets += 1;
    }
    // The rule set is not vacuous. Most seeds hit rules with 45-80% of
    // their packets; about one in 60,000 falls under 30% (seeds
    // 4921869192363752487 and 18173158347189076874: 27% and 28%), which
    // made this guard fail a run now and then.
    assert!(
        hits_here * 100 >= 25 * 1000,
        "seed {seed}: only {hits_here} of 1000 packets hit a rule other than a table-miss one"
    );
    tally.rule_hits += hits_here;
    // No two megaflows overlap with different actions.
    let flows: Vec<&Megaflow> = cache.iter().map(|(_, f)| f).collect();
    // Revalidation against the unchanged pipeline keeps every megaflow: the
    // masked key re-translated with the old mask as hint gives the same
    // actions and a mask inside the old one (no NIC rule churn).
    for mf in &flows {
        let x = xlate_hinted(bridge, &mf.r#match.value, Some(&mf.r#match.mask));
        assert_eq!(
            x.actions,
            **mf.actions(),
            "seed {seed}: revalidation changed the actions of {mf:?}"
        );
        assert!(
            x.mask.is_subset_of(&mf.r#match.mask),
            "seed {seed}: revalidation widened the mask of {mf:?}: {:?}",
            x.mask
        );
    }
    for (i, a) in flows.iter().enumerate() {
        for b in &flows[i + 1..] {
            if a.overlaps(b) {
                assert_eq!(
                    a.actions(),
                    b.actions(),
                    "seed {seed}: overlapping megaflows with different actions"
                );
            }
        }
    }
}

#[path = "../../tests/support/test_env.rs"]
mod test_env;

proptest! {
    #![proptest_config(ProptestConfig { cases: test_env::cases(200), ..ProptestConfig::default() })]

    #[test]
    fn megaflow_dpcls_emc_equal_linear_lookup(seed in any::<u64>()) {
        let mut tally = Tally { trie_narrowed: 0, packets: 0, rule_hits: 0, emc: 0, dpcls: 0, upcalls: 0, simple: 0 };
        check_rule_set(seed, &mut tally);
        prop_assert_eq!(tally.packets, 1000);
        // Every stage was exercised on this rule set.
        prop_assert!(tally.emc > 0 && tally.dpcls > 0 && tally.upcalls > 0);
    }
}

#[test]
fn fixed_seeds_exercise_every_path() {
    let mut tally = Tally {
        trie_narrowed: 0,
        packets: 0,
        rule_hits: 0,
        emc: 0,
        dpcls: 0,
        upcalls: 0,
        simple: 0,
    };
    for seed in 1..=20u64 {
        check_rule_set(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), &mut tally);
    }
    assert_eq!(tally.packets, 20_000);
    assert!(tally.rule_hits >= 6_000);
    assert!(tally.emc > 1000 && tally.dpcls > 100 && tally.upcalls > 100);
    // Some ports had only simple megaflows, and simple match answered.
    assert!(tally.simple > 0);
    // The classifier's prefix tries shaped some of those megaflows.
    assert!(
        tally.trie_narrowed > 20,
        "{} trie-narrowed megaflows",
        tally.trie_narrowed
    );
}
