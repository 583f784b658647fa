//! The classifier against a linear reference scan (DESIGN §2 `ofproto`):
//! on random rule sets of 10,000+ rules with adds, replacements, deletes
//! (by id, strict, loose) and modifies interleaved, every probe gets the
//! same rule as the reference (priority descending, first added among
//! equals), and every packet sampled inside the returned megaflow mask gets
//! that same rule from the reference too (the mask is sound).
//!
//! Rules that overlap at equal priority carry the same actions, as the
//! DESIGN asks of tests. `FLOWMARK_LONG=1` runs larger sets, more seeds and
//! more probes (about 3 minutes in release).

use fallback::key::{ethertype, ipproto, Field, FlowKey, VLAN_CFI, VLAN_VID_MASK};
use fallback::ofproto::table::{loose_selects, Pipeline, RuleId};
use fallback::ofproto::{Match, OfAction, Rule};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

#[path = "../../tests/support/test_env.rs"]
mod test_env;
use test_env::long;
use testbed::traffic::Rng;

const TABLES: [u8; 2] = [0, 3];
const V4_NETS: [u32; 8] = [
    0x0a00_0000,
    0x0a01_0000,
    0x0a01_0100,
    0x0a80_0000,
    0xc0a8_0000,
    0xc0a8_c800,
    0xc0a8_c880,
    0xac10_0000,
];
const V6_NETS: [u128; 4] = [
    0x2001_0db8 << 96,
    (0x2001_0db8 << 96) | (0x0001 << 80),
    0xfe80 << 112,
    (0x2001_0db9 << 96) | 0xff,
];
const L4_PORTS: [u128; 6] = [80, 443, 2152, 2123, 0x1000, 0x1001];
const MACS: [u128; 4] = [
    0x0200_0000_0001,
    0x0200_0000_0002,
    0x0200_0000_0003,
    0xffff_ffff_ffff,
];

fn prefix32(len: u32) -> u128 {
    if len == 0 {
        0
    } else {
        (u32::MAX << (32 - len)) as u128
    }
}

fn random_match(r: &mut Rng) -> Match {
    let mut m = Match::ANY;
    if r.chance(30) {
        m.set_exact(Field::InPort, 1 + r.below(8) as u128);
    }
    if r.chance(8) {
        m.set_exact(Field::DlDst, r.pick(&MACS));
    }
    if r.chance(8) {
        m.set_masked(
            Field::VlanTci,
            (VLAN_CFI | r.below(3) as u16) as u128,
            (VLAN_CFI | VLAN_VID_MASK) as u128,
        );
    }
    match r.below(20) {
        0..=13 => {
            m.set_exact(Field::DlType, ethertype::IPV4 as u128);
            for f in [Field::NwSrc, Field::NwDst] {
                if r.chance(50) {
                    let len = r.pick(&[8u32, 12, 16, 20, 24, 25, 28, 32]);
                    let v = r.pick(&V4_NETS) as u128 | r.below(256) as u128;
                    m.set_masked(f, v, prefix32(len));
                }
            }
            if r.chance(10) {
                m.set_masked(Field::NwTos, r.pick(&[0u128, 0x10, 0xb8]), 0xfc);
            }
            if r.chance(60) {
                let proto = r.pick(&[ipproto::UDP, ipproto::TCP, ipproto::ICMP]);
                m.set_exact(Field::NwProto, proto as u128);
                if proto != ipproto::ICMP {
                    for f in [Field::TpSrc, Field::TpDst] {
                        if r.chance(40) {
                            let mask = r.pick(&[0xffffu128, 0xffff, 0xffff, 0xff00, 0xfff0]);
                            m.set_masked(f, r.pick(&L4_PORTS), mask);
                        }
                    }
                }
                if proto == ipproto::TCP && r.chance(10) {
                    m.set_masked(Field::TcpFlags, 0x002, 0x012);
                }
            }
        }
        14..=16 => {
            m.set_exact(Field::DlType, ethertype::IPV6 as u128);
            for f in [Field::Ipv6Src, Field::Ipv6Dst] {
                if r.chance(50) {
                    let len = r.pick(&[16u32, 32, 48, 64, 127, 128]);
                    m.set_masked(f, r.pick(&V6_NETS), u128::MAX << (128 - len));
                }
            }
            if r.chance(40) {
                m.set_exact(Field::NwProto, ipproto::UDP as u128);
                if r.chance(50) {
                    m.set_exact(Field::TpDst, r.pick(&L4_PORTS));
                }
            }
        }
        17 => {
            m.set_exact(Field::DlType, ethertype::ARP as u128);
            if r.chance(50) {
                m.set_exact(Field::NwDst, r.pick(&V4_NETS) as u128 | 1);
            }
        }
        _ => {}
    }
    m
}

/// A packet near the rules: fields from the same pools, then maybe inside `m`.
fn random_packet(r: &mut Rng, m: Option<&Match>) -> FlowKey {
    let mut k = FlowKey::ZERO;
    k.set(Field::InPort, 1 + r.below(8) as u128);
    k.set(Field::DlSrc, r.pick(&MACS[..3]));
    k.set(Field::DlDst, r.pick(&MACS));
    k.set(
        Field::DlType,
        r.pick(&[
            ethertype::IPV4,
            ethertype::IPV4,
            ethertype::IPV6,
            ethertype::ARP,
        ]) as u128,
    );
    if r.chance(15) {
        k.set(Field::VlanTci, (VLAN_CFI | r.below(3) as u16) as u128);
    }
    k.set(
        Field::NwSrc,
        r.pick(&V4_NETS) as u128 | r.below(256) as u128,
    );
    k.set(
        Field::NwDst,
        r.pick(&V4_NETS) as u128 | r.below(256) as u128,
    );
    k.set(Field::Ipv6Src, r.pick(&V6_NETS) | r.below(4) as u128);
    k.set(Field::Ipv6Dst, r.pick(&V6_NETS) | r.below(4) as u128);
    k.set(
        Field::NwProto,
        r.pick(&[ipproto::UDP, ipproto::TCP, ipproto::ICMP]) as u128,
    );
    k.set(Field::NwTos, r.pick(&[0u128, 0x10, 0xb9]));
    k.set(Field::NwTtl, 64);
    k.set(Field::TpSrc, r.pick(&L4_PORTS) ^ r.below(4) as u128);
    k.set(Field::TpDst, r.pick(&L4_PORTS) ^ r.below(4) as u128);
    k.set(Field::TcpFlags, r.pick(&[0u128, 0x002, 0x012]));
    if let Some(m) = m {
        for i in 0..k.words.len() {
            k.words[i] = (k.words[i] & !m.mask.words[i]) | m.value.words[i];
        }
        if r.chance(50) {
            // Flip a few low bits of one field: near misses of prefixes.
            let f = r.pick(&Field::ALL);
            let flip = 1u128 << r.below(f.bits().min(40) as u64);
            k.set(f, k.get(f) ^ flip);
        }
    }
    k
}

/// The reference: each table's rules in lookup order (priority descending,
/// then first added), scanned linearly.
#[derive(Default)]
struct Reference {
    tables: BTreeMap<u8, BTreeMap<(Reverse<u16>, RuleId), Rule>>,
    /// Every live rule's (table, priority), and the ids in a vector for
    /// picking one at random in O(1).
    place: HashMap<RuleId, (u8, u16, usize)>,
    live: Vec<RuleId>,
}

impl Reference {
    fn add(&mut self, id: RuleId, rule: Rule) -> Option<RuleId> {
        let t = self.tables.entry(rule.table).or_default();
        let prio = Reverse(rule.priority);
        let replaced = t
            .range((prio, RuleId(0))..=(prio, RuleId(u64::MAX)))
            .find(|(_, r)| r.r#match == rule.r#match)
            .map(|((_, id), _)| *id);
        if let Some(old) = replaced {
            self.remove(&[old]);
        }
        self.place
            .insert(id, (rule.table, rule.priority, self.live.len()));
        self.live.push(id);
        let t = self.tables.entry(rule.table).or_default();
        t.insert((Reverse(rule.priority), id), rule);
        replaced
    }

    fn remove(&mut self, ids: &[RuleId]) {
        for id in ids {
            let Some((table, prio, i)) = self.place.remove(id) else {
                continue;
            };
            if let Some(t) = self.tables.get_mut(&table) {
                t.remove(&(Reverse(prio), *id));
            }
            self.live.swap_remove(i);
            if let Some(moved) = self.live.get(i) {
                if let Some(p) = self.place.get_mut(moved) {
                    p.2 = i;
                }
            }
        }
    }

    fn get_mut(&mut self, id: RuleId) -> Option<&mut Rule> {
        let &(table, prio, _) = self.place.get(&id)?;
        self.tables.get_mut(&table)?.get_mut(&(Reverse(prio), id))
    }

    fn pick(&self, r: &mut Rng) -> Option<(RuleId, Rule)> {
        if self.live.is_empty() {
            return None;
        }
        let id = self.live[r.below(self.live.len() as u64) as usize];
        let &(table, prio, _) = self.place.get(&id)?;
        let rule = self.tables.get(&table)?.get(&(Reverse(prio), id))?;
        Some((id, rule.clone()))
    }

    fn lookup(&self, table: u8, k: &FlowKey) -> Option<RuleId> {
        self.tables
            .get(&table)?
            .iter()
            .find(|(_, r)| k.matches(&r.r#match.value, &r.r#match.mask))
            .map(|((_, id), _)| *id)
    }

    fn all(&self) -> impl Iterator<Item = (u16, RuleId, &Rule)> {
        self.tables
            .values()
            .flat_map(|t| t.iter().map(|((p, id), r)| (p.0, *id, r)))
    }

    fn len(&self) -> usize {
        self.live.len()
    }
}

struct World {
    r: Rng,
    p: Pipeline,
    reference: Reference,
    /// Priorities in use per table, with the actions of their rules: equal
    /// priorities only ever carry equal actions.
    prio_actions: Vec<(u8, u16, Vec<OfAction>)>,
    probes: usize,
    samples: usize,
    hits: usize,
}

impl World {
    fn new_rule(&mut self) -> Rule {
        let table = self.r.pick(&TABLES);
        let priority = 1 + self.r.below(30_000) as u16;
        let actions = match self
            .prio_actions
            .iter()
            .find(|(t, p, _)| *t == table && *p == priority)
        {
            Some((_, _, a)) => a.clone(),
            None => {
                let a = vec![OfAction::Output(self.r.below(0xff00) as u32)];
                self.prio_actions.push((table, priority, a.clone()));
                a
            }
        };
        Rule {
            table,
            priority,
            r#match: random_match(&mut self.r),
            actions,
            cookie: 0,
            idle_timeout: 0,
            hard_timeout: 0,
        }
    }

    fn add(&mut self, rule: Rule) {
        let added = self.p.add(rule.clone());
        let mut rule = rule;
        rule.r#match.value = rule.r#match.value.masked(&rule.r#match.mask);
        let replaced = self.reference.add(added.id, rule);
        assert_eq!(added.replaced, replaced, "add: replaced rule");
    }

    fn some_rule(&mut self) -> Option<(RuleId, Rule)> {
        self.reference.pick(&mut self.r)
    }

    fn step(&mut self) {
        match self.r.below(100) {
            0..=39 => {
                let rule = self.new_rule();
                self.add(rule);
            }
            40..=44 => {
                // Same table, priority and match: a replacement.
                if let Some((_, rule)) = self.some_rule() {
                    self.add(rule);
                }
            }
            45..=64 => {
                if let Some((id, _)) = self.some_rule() {
                    self.p.remove_ids(&[id]);
                    self.reference.remove(&[id]);
                    assert!(self.p.get(id).is_none());
                }
            }
            65..=74 => {
                if let Some((id, rule)) = self.some_rule() {
                    let ids = self
                        .p
                        .delete_strict(rule.table, &rule.r#match, rule.priority);
                    assert_eq!(ids, vec![id], "delete_strict");
                    self.reference.remove(&ids);
                }
            }
            75..=77 => {
                // Loose delete of a narrow selection (an exact in_port and
                // nw_src /32 picks few rules).
                let mut sel = Match::ANY;
                sel.set_exact(Field::DlType, ethertype::IPV4 as u128);
                sel.set_exact(Field::InPort, 1 + self.r.below(8) as u128);
                sel.set_masked(
                    Field::NwSrc,
                    self.r.pick(&V4_NETS) as u128,
                    prefix32(self.r.pick(&[24u32, 32])),
                );
                let table = self.r.pick(&TABLES);
                let mut want: Vec<RuleId> = self
                    .reference
                    .all()
                    .filter(|(_, _, r)| r.table == table && loose_selects(&sel, &r.r#match))
                    .map(|(_, id, _)| id)
                    .collect();
                want.sort_unstable();
                let got = self.p.delete(Some(table), &sel);
                assert_eq!(got, want, "loose delete");
                self.reference.remove(&got);
            }
            _ => {
                // Strict modify: new actions for the whole priority so that
                // equal priorities keep equal actions.
                if let Some((id, rule)) = self.some_rule() {
                    let actions = vec![OfAction::Output(self.r.below(0xff00) as u32)];
                    let mut changed = Vec::new();
                    let same_prio: Vec<(RuleId, Rule)> = self
                        .reference
                        .all()
                        .filter(|(p, _, r)| *p == rule.priority && r.table == rule.table)
                        .map(|(_, id, r)| (id, r.clone()))
                        .collect();
                    for (_, r) in &same_prio {
                        changed.extend(self.p.modify_actions(
                            Some(r.table),
                            &r.r#match,
                            Some(r.priority),
                            &actions,
                        ));
                    }
                    assert!(changed.contains(&id));
                    for rid in &changed {
                        if let Some(r) = self.reference.get_mut(*rid) {
                            r.actions = actions.clone();
                        }
                    }
                    for pa in &mut self.prio_actions {
                        if pa.0 == rule.table && pa.1 == rule.priority {
                            pa.2 = actions.clone();
                        }
                    }
                    assert_eq!(self.p.get(id).map(|e| e.actions().to_vec()), Some(actions));
                }
            }
        }
    }

    fn probe(&mut self, samples: usize) {
        let table = self.r.pick(&TABLES);
        let src = if self.r.chance(80) {
            self.some_rule().map(|(_, r)| r.r#match)
        } else {
            None
        };
        let k = random_packet(&mut self.r, src.as_ref());
        let mut wc = FlowKey::ZERO;
        let got = self.p.lookup(table, &k, &mut wc).map(|e| e.id);
        let want = self.reference.lookup(table, &k);
        assert_eq!(got, want, "lookup in table {table} of {k:?}");
        if let Some(id) = got {
            let e = self
                .p
                .get(id)
                .expect("the returned rule is in the pipeline");
            assert!(e.mask().is_subset_of(&wc), "winner's mask in wc");
            self.hits += 1;
        }
        // Packets inside the megaflow: wildcarded bits random, or taken from
        // another packet near the rules.
        for s in 0..samples {
            let other = if s % 2 == 0 {
                let mut o = FlowKey::ZERO;
                for w in o.words.iter_mut() {
                    *w = self.r.next_u64();
                }
                o
            } else {
                let src = self.some_rule().map(|(_, r)| r.r#match);
                random_packet(&mut self.r, src.as_ref())
            };
            let mut inside = k;
            for i in 0..k.words.len() {
                inside.words[i] = (k.words[i] & wc.words[i]) | (other.words[i] & !wc.words[i]);
            }
            assert_eq!(
                self.reference.lookup(table, &inside),
                want,
                "a packet inside the megaflow mask {wc:?} of {k:?} gets another rule: {inside:?}"
            );
            self.samples += 1;
        }
        self.probes += 1;
    }
}

fn run(seed: u64, n_rules: usize, rounds: usize, probes_per_round: usize) -> World {
    let mut w = World {
        r: Rng::new(seed),
        p: Pipeline::new(),
        reference: Reference::default(),
        prio_actions: Vec::new(),
        probes: 0,
        samples: 0,
        hits: 0,
    };
    // A snapshot taken now must not see anything that follows.
    let empty = w.p.clone();
    for _ in 0..n_rules {
        let rule = w.new_rule();
        w.add(rule);
    }
    assert!(empty.is_empty());
    assert_eq!(w.p.len(), w.reference.len());
    for _ in 0..rounds {
        for _ in 0..20 {
            w.step();
        }
        for _ in 0..probes_per_round {
            w.probe(4);
        }
    }
    assert_eq!(w.p.len(), w.reference.len());
    w
}

#[test]
fn classifier_equals_linear_scan_on_10k_rules() {
    let (seeds, rules, rounds) = if long() {
        (4u64, 50_000, 400)
    } else {
        (2, 10_000, 120)
    };
    for seed in 0..seeds {
        let w = run(
            seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) + 7,
            rules,
            rounds,
            10,
        );
        // Adds outnumber deletes: the set stays about as large as it began.
        assert!(
            w.reference.len() >= rules * 9 / 10,
            "rule set shrank to {}",
            w.reference.len()
        );
        // The probes hit rules most of the time, and the rule set has many
        // masks (the subtables and tries are exercised).
        assert!(w.hits * 2 >= w.probes, "{} hits of {}", w.hits, w.probes);
        assert!(w.samples >= w.probes * 4);
    }
}

#[test]
fn small_rule_sets_with_heavy_churn() {
    // Few rules, many changes: subtables come and go, priorities move.
    let seeds = if long() { 200 } else { 30 };
    for seed in 0..seeds {
        let w = run(seed * 7919 + 3, 50, 60, 10);
        assert!(w.probes > 0);
    }
}
