//! OpenFlow tables: rules kept in lookup order (priority descending, then the
//! order they were added: among equal priorities the first added wins), with
//! the add / modify / delete semantics of `ovs-ofctl add-flow`, `mod-flows`
//! and `del-flows`.

use super::{Match, OfAction, Rule, N_TABLES};
use crate::key::{Field, FlowKey, KEY_WORDS};
use std::fmt;
use std::sync::Arc;

/// A rule's identity for its whole life (kept across action modifications;
/// a replaced rule gets a new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub u64);

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule#{}", self.0)
    }
}

/// A rule in a table.
#[derive(Clone, Debug)]
pub struct RuleEntry {
    pub id: RuleId,
    /// Insertion order, for the equal-priority tie-break.
    pub seq: u64,
    pub rule: Rule,
}

/// Result of [`Pipeline::add`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Added {
    pub id: RuleId,
    /// A rule with the same table, priority and match that was replaced.
    pub replaced: Option<RuleId>,
}

/// All tables of one bridge.
#[derive(Clone, Debug)]
pub struct Pipeline {
    tables: Vec<Vec<Arc<RuleEntry>>>,
    next_id: u64,
    next_seq: u64,
    /// Bumped on every change, so caches know when to revalidate.
    version: u64,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new()
    }
}

/// True when `rule` is selected by the loose match `sel` (as `del-flows`
/// and `mod-flows` select): the rule is at least as specific as `sel` and
/// agrees with it on `sel`'s bits.
pub fn loose_selects(sel: &Match, rule: &Match) -> bool {
    sel.mask.is_subset_of(&rule.mask) && rule.value.masked(&sel.mask) == sel.value
}

impl Pipeline {
    pub fn new() -> Self {
        Pipeline {
            tables: vec![Vec::new(); N_TABLES],
            next_id: 1,
            next_seq: 0,
            version: 0,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The rules of a table in lookup order (empty for a table that does not exist).
    pub fn table(&self, table: u8) -> &[Arc<RuleEntry>] {
        self.tables
            .get(table as usize)
            .map_or(&[], |t| t.as_slice())
    }

    /// Every rule, table by table, in lookup order.
    pub fn rules(&self) -> impl Iterator<Item = &Arc<RuleEntry>> {
        self.tables.iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.tables.iter().map(|t| t.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: RuleId) -> Option<&Arc<RuleEntry>> {
        self.rules().find(|e| e.id == id)
    }

    /// Adds a rule; one with the same table, priority and match is replaced
    /// (as `ovs-ofctl add-flow` does).
    pub fn add(&mut self, mut rule: Rule) -> Added {
        rule.r#match.value = rule.r#match.value.masked(&rule.r#match.mask);
        let id = RuleId(self.next_id);
        self.next_id += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.version += 1;
        let t = &mut self.tables[rule.table as usize];
        let replaced = t
            .iter()
            .position(|e| e.rule.priority == rule.priority && e.rule.r#match == rule.r#match)
            .map(|i| t.remove(i).id);
        // First position whose priority is lower: after every equal one.
        let pos = t.partition_point(|e| e.rule.priority >= rule.priority);
        t.insert(pos, Arc::new(RuleEntry { id, seq, rule }));
        Added { id, replaced }
    }

    fn selected(&self, table: Option<u8>, sel: &Match, strict: Option<u16>) -> Vec<RuleId> {
        self.tables
            .iter()
            .enumerate()
            .filter(|(i, _)| table.is_none_or(|t| t as usize == *i))
            .flat_map(|(_, t)| t.iter())
            .filter(|e| match strict {
                Some(prio) => e.rule.priority == prio && e.rule.r#match == *sel,
                None => loose_selects(sel, &e.rule.r#match),
            })
            .map(|e| e.id)
            .collect()
    }

    /// Deletes the rules selected loosely by `sel` (in `table`, or in every
    /// table when `None`); returns their ids.
    pub fn delete(&mut self, table: Option<u8>, sel: &Match) -> Vec<RuleId> {
        let ids = self.selected(table, sel, None);
        self.remove_ids(&ids);
        ids
    }

    /// Deletes the rule with exactly this match and priority.
    pub fn delete_strict(&mut self, table: u8, sel: &Match, priority: u16) -> Vec<RuleId> {
        let ids = self.selected(Some(table), sel, Some(priority));
        self.remove_ids(&ids);
        ids
    }

    /// Deletes rules by id.
    pub fn remove_ids(&mut self, ids: &[RuleId]) {
        if ids.is_empty() {
            return;
        }
        for t in &mut self.tables {
            t.retain(|e| !ids.contains(&e.id));
        }
        self.version += 1;
    }

    /// Replaces the actions of the rules selected loosely by `sel` (as
    /// `mod-flows`); ids, order and counters stay. Returns the ids changed.
    pub fn modify_actions(
        &mut self,
        table: Option<u8>,
        sel: &Match,
        strict: Option<u16>,
        actions: &[OfAction],
    ) -> Vec<RuleId> {
        let ids = self.selected(table, sel, strict);
        for t in &mut self.tables {
            for e in t.iter_mut() {
                if ids.contains(&e.id) {
                    Arc::make_mut(e).rule.actions = actions.to_vec();
                }
            }
        }
        if !ids.is_empty() {
            self.version += 1;
        }
        ids
    }

    /// Linear lookup in one table. The matching rule's mask is ORed into
    /// `wc`; for each rule checked before it, only enough bits to prove the
    /// mismatch (see [`unwildcard_mismatch`]).
    #[inline]
    pub fn lookup(&self, table: u8, key: &FlowKey, wc: &mut FlowKey) -> Option<&Arc<RuleEntry>> {
        self.lookup_hinted(table, key, wc, None)
    }

    /// [`Pipeline::lookup`], proving mismatches with bits of `hint` where it
    /// can (revalidation passes the old megaflow's mask, so that the new
    /// translation stays inside it whenever the old one is still right).
    #[inline]
    pub fn lookup_hinted(
        &self,
        table: u8,
        key: &FlowKey,
        wc: &mut FlowKey,
        hint: Option<&FlowKey>,
    ) -> Option<&Arc<RuleEntry>> {
        for e in self.table(table) {
            let m = &e.rule.r#match;
            let mut diff = [0u64; KEY_WORDS];
            let mut any = 0u64;
            for (i, d) in diff.iter_mut().enumerate() {
                *d = (key.words[i] ^ m.value.words[i]) & m.mask.words[i];
                any |= *d;
            }
            if any == 0 {
                wc.or(&m.mask);
                return Some(e);
            }
            unwildcard_mismatch(&diff, m, wc, hint);
        }
        None
    }
}

/// Fields in the order a staged lookup consults them (metadata, L2, L3, L4).
const STAGE_ORDER: [Field; 18] = [
    Field::InPort,
    Field::DlType,
    Field::VlanTci,
    Field::DlSrc,
    Field::DlDst,
    Field::ArpSha,
    Field::ArpTha,
    Field::NwProto,
    Field::NwFrag,
    Field::NwTos,
    Field::NwTtl,
    Field::NwSrc,
    Field::NwDst,
    Field::Ipv6Src,
    Field::Ipv6Dst,
    Field::TpSrc,
    Field::TpDst,
    Field::TcpFlags,
];

/// A rule did not match: `diff` holds the bits (under the rule's mask) where
/// the key differs from it. Any packet that agrees with the key on one of
/// those bits mismatches the rule too, so un-wildcarding one of them is
/// enough — and nothing at all when `wc` already holds one. Otherwise the
/// first differing field in stage order is taken: for an address field only
/// its prefix down to the first differing bit (as OVS's prefix tries do),
/// for other fields the rule's whole mask of it (partial L4 masks would stop
/// a NIC from taking the megaflow).
fn unwildcard_mismatch(
    diff: &[u64; KEY_WORDS],
    m: &Match,
    wc: &mut FlowKey,
    hint: Option<&FlowKey>,
) {
    if diff.iter().zip(wc.words.iter()).any(|(d, w)| d & w != 0) {
        return;
    }
    let mut d = FlowKey::ZERO;
    d.words = *diff;
    if let Some(hint) = hint {
        // A field where the key differs from the rule on hinted bits: the
        // rule's bits of it inside the hint contain a differing one.
        for f in STAGE_ORDER {
            let in_hint = d.get(f) & hint.get(f);
            if in_hint != 0 {
                wc.or_field(f, m.mask.get(f) & hint.get(f));
                return;
            }
        }
    }
    for f in STAGE_ORDER {
        let fd = d.get(f);
        if fd == 0 {
            continue;
        }
        let rule_mask = m.mask.get(f);
        let bits = match f {
            Field::NwSrc | Field::NwDst | Field::Ipv6Src | Field::Ipv6Dst => {
                let top = 127 - fd.leading_zeros(); // highest differing bit
                rule_mask & !((1u128 << top) - 1)
            }
            _ => rule_mask,
        };
        wc.or_field(f, bits);
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Field;

    fn rule(table: u8, priority: u16, nw_src: Option<(u32, u32)>) -> Rule {
        let mut m = Match::ANY;
        if let Some((v, mask)) = nw_src {
            m.set_exact(Field::DlType, 0x0800);
            m.set_masked(Field::NwSrc, v as u128, mask as u128);
        }
        Rule {
            table,
            priority,
            r#match: m,
            actions: vec![OfAction::Output(priority as u32)],
            cookie: 0,
            idle_timeout: 0,
            hard_timeout: 0,
        }
    }

    fn ip(src: u32) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set(Field::DlType, 0x0800);
        k.set(Field::NwSrc, src as u128);
        k
    }

    #[test]
    fn priority_then_first_added() {
        let mut p = Pipeline::new();
        let low = p.add(rule(0, 1, None)).id;
        let a = p.add(rule(0, 5, Some((0x0a00_0000, 0xff00_0000)))).id;
        let _b = p.add(rule(0, 5, Some((0x0a01_0000, 0xffff_0000)))).id;
        let mut wc = FlowKey::ZERO;
        assert_eq!(
            p.lookup(0, &ip(0x0a01_0203), &mut wc).map(|e| e.id),
            Some(a)
        );
        assert_eq!(wc.get(Field::NwSrc), 0xff00_0000);
        let mut wc = FlowKey::ZERO;
        assert_eq!(
            p.lookup(0, &ip(0x0b00_0001), &mut wc).map(|e| e.id),
            Some(low)
        );
        assert_eq!(wc.get(Field::NwSrc), 0xff00_0000);
    }

    #[test]
    fn add_replaces_identical() {
        let mut p = Pipeline::new();
        let a = p.add(rule(0, 5, Some((1, u32::MAX)))).id;
        let b = p.add(rule(0, 5, Some((1, u32::MAX))));
        assert_eq!(b.replaced, Some(a));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn delete_loose_and_strict() {
        let mut p = Pipeline::new();
        p.add(rule(0, 5, Some((0x0a00_0000, 0xff00_0000))));
        p.add(rule(0, 6, Some((0x0a01_0000, 0xffff_0000))));
        p.add(rule(1, 5, Some((0x0b00_0000, 0xff00_0000))));
        p.add(rule(0, 1, None));
        // Loose: dl_type=ip,nw_src=10.0.0.0/8 selects both 10/8 and 10.1/16.
        let mut sel = Match::ANY;
        sel.set_exact(Field::DlType, 0x0800);
        sel.set_masked(Field::NwSrc, 0x0a00_0000, 0xff00_0000);
        assert_eq!(p.delete(None, &sel).len(), 2);
        assert_eq!(p.len(), 2);
        // Strict needs the priority too.
        let r = rule(1, 5, Some((0x0b00_0000, 0xff00_0000)));
        assert!(p.delete_strict(1, &r.r#match, 4).is_empty());
        assert_eq!(p.delete_strict(1, &r.r#match, 5).len(), 1);
        // An empty match deletes everything.
        assert_eq!(p.delete(None, &Match::ANY).len(), 1);
        assert!(p.is_empty());
    }

    #[test]
    fn modify_keeps_id() {
        let mut p = Pipeline::new();
        let id = p.add(rule(0, 5, None)).id;
        let v = p.version();
        let ids = p.modify_actions(None, &Match::ANY, None, &[OfAction::Normal]);
        assert_eq!(ids, vec![id]);
        assert_eq!(
            p.get(id).map(|e| e.rule.actions.clone()),
            Some(vec![OfAction::Normal])
        );
        assert!(p.version() > v);
    }
}
