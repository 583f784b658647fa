//! The classifier behind one OpenFlow table (DESIGN §2 `ofproto`), after
//! the ideas of Open vSwitch's `lib/classifier.c`:
//!
//! - Tuple space search: one [`Subtable`] per distinct rule mask, holding its
//!   rules in a hash table keyed by the hash of the masked key. Subtables are
//!   visited in descending order of their highest rule priority, and the
//!   walk stops once no remaining subtable can beat the best match (it goes
//!   on through equal priorities: the rule added first wins a tie).
//! - Staged lookup: a subtable's mask is split into stages (metadata, L2,
//!   L3, L4) and hashed one stage at a time; each stage but the last keeps
//!   the set of partial hashes of its rules, so a key that no rule agrees
//!   with on the early stages is turned away there, and the megaflow mask
//!   gets only the fields of the stages consulted.
//! - Prefix tries for nw_src, nw_dst, ipv6_src, ipv6_dst, tp_src, tp_dst:
//!   when the trie proves that no rule of the subtable's prefix length
//!   matches the key, the subtable is skipped and only the key bits the trie
//!   needed for that proof are un-wildcarded.
//!
//! Every part is copy-on-write behind `Arc`s ([`CowTable`], [`Trie`]), so a
//! clone is a snapshot costing pointer copies, never a copy of the rules.

use super::cow::CowTable;
use super::table::{covered_words, RuleEntry, RuleId};
use super::trie::{top_bits, Trie, TrieMatch};
use super::{Match, OfAction, Rule};
use crate::key::{Field, FlowKey, KEY_WORDS};
use std::sync::Arc;

/// The lookup stages, in the order they are hashed.
const STAGES: [&[Field]; 4] = [
    &[Field::InPort, Field::Metadata],
    &[Field::DlType, Field::VlanTci, Field::DlSrc, Field::DlDst],
    &[
        Field::NwProto,
        Field::NwTos,
        Field::NwTtl,
        Field::NwFrag,
        Field::NwSrc,
        Field::NwDst,
        Field::Ipv6Src,
        Field::Ipv6Dst,
        Field::ArpSha,
        Field::ArpTha,
    ],
    &[Field::TpSrc, Field::TpDst, Field::TcpFlags],
];

/// Fields with a prefix trie, and the stage each belongs to.
pub const TRIE_FIELDS: [(Field, usize); 6] = [
    (Field::NwSrc, 2),
    (Field::NwDst, 2),
    (Field::Ipv6Src, 2),
    (Field::Ipv6Dst, 2),
    (Field::TpSrc, 3),
    (Field::TpDst, 3),
];
const N_TRIES: usize = TRIE_FIELDS.len();

/// The prefix length of a field's mask, or `None` when the mask is not a
/// prefix (CIDR) mask. Zero means wildcarded.
fn prefix_len(mask: &FlowKey, f: Field) -> Option<u32> {
    let m = left_aligned(mask, f);
    let ones = m.count_ones();
    (m.leading_ones() == ones).then_some(ones)
}

/// A field's value moved to the top of a `u128` (what the tries take).
#[inline]
fn left_aligned(k: &FlowKey, f: Field) -> u128 {
    k.get(f) << (128 - f.bits())
}

/// The key's top `bits` bits of `f`, as a right-aligned field mask.
#[inline]
fn prefix_mask(f: Field, bits: u32) -> u128 {
    top_bits(bits) >> (128 - f.bits())
}

#[inline]
fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(31)
}

/// Finalises a running hash (murmur3's fmix64) for table use.
#[inline]
fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// One stage of a subtable: the words of its mask that fall in the stage.
#[derive(Clone, Debug)]
struct Stage {
    words: Vec<(u8, u64)>,
    /// The subtable's mask over this stage and every earlier one: what a
    /// miss decided by this stage un-wildcards.
    upto: FlowKey,
    /// Tries to consult before hashing this stage: (trie index, the
    /// subtable's prefix length on that field).
    tries: Vec<(u8, u8)>,
}

impl Stage {
    #[inline]
    fn hash(&self, mut h: u64, k: &FlowKey) -> u64 {
        for &(w, m) in &self.words {
            h = mix(h, k.words[w as usize] & m);
        }
        h
    }
}

/// Bookkeeping for the partial hash of one stage: (hash, rules with it).
type StageCount = (u64, u32);

/// The rules that share one mask.
#[derive(Clone, Debug)]
pub struct Subtable {
    /// Shared with every rule here (a rule keeps only the value words the
    /// mask covers).
    mask: Arc<FlowKey>,
    /// The words the mask covers, (index, mask word), ascending: how a
    /// rule's packed value lines up with a key.
    covered: Arc<[(u8, u64)]>,
    /// Non-empty stages only; at least one unless the mask is empty. Shared:
    /// they never change, and a copy-on-write clone of the subtable (the
    /// first change after each snapshot) should not reallocate them.
    stages: Arc<[Stage]>,
    /// Partial hashes of every stage but the last.
    stage_hashes: Vec<CowTable<StageCount>>,
    /// Rules by the hash of their masked key (all stages).
    rules: CowTable<Arc<RuleEntry>>,
    /// At least the highest priority of a rule here (exact unless
    /// `max_count` is 0: see `remove`).
    max_priority: u16,
    /// Rules at `max_priority`.
    max_count: u32,
    /// At most the id of the first added rule at `max_priority`: a match of
    /// equal priority found earlier beats this subtable if it was added
    /// before that. (Bounds, not exact values, keep lookups exact: a
    /// subtable is only ever visited needlessly, never skipped wrongly.)
    max_first: RuleId,
    /// Removals since `max_priority` went stale (see `remove`).
    stale_removals: u32,
    /// The prefix length on each trie field (0: not a prefix field here).
    trie_plen: [u8; N_TRIES],
}

impl Subtable {
    fn new(mask: FlowKey) -> Subtable {
        let mut stages: Vec<Stage> = Vec::new();
        let mut upto = FlowKey::ZERO;
        let mut trie_plen = [0u8; N_TRIES];
        for (j, &(f, _)) in TRIE_FIELDS.iter().enumerate() {
            trie_plen[j] = prefix_len(&mask, f).unwrap_or(0) as u8;
        }
        for (si, fields) in STAGES.iter().enumerate() {
            let mut stage_mask = FlowKey::ZERO;
            for &f in fields.iter() {
                stage_mask.set(f, mask.get(f));
            }
            if stage_mask.is_zero() {
                continue;
            }
            upto.or(&stage_mask);
            let words = (0..KEY_WORDS)
                .filter(|&w| stage_mask.words[w] != 0)
                .map(|w| (w as u8, stage_mask.words[w]))
                .collect();
            let tries = TRIE_FIELDS
                .iter()
                .enumerate()
                .filter(|(j, (_, s))| *s == si && trie_plen[*j] > 0)
                .map(|(j, _)| (j as u8, trie_plen[j]))
                .collect();
            stages.push(Stage { words, upto, tries });
        }
        let n_partial = stages.len().saturating_sub(1);
        Subtable {
            covered: covered_words(&mask)
                .map(|w| (w as u8, mask.words[w]))
                .collect(),
            mask: Arc::new(mask),
            stages: stages.into(),
            stage_hashes: vec![CowTable::default(); n_partial],
            rules: CowTable::default(),
            max_priority: 0,
            max_count: 0,
            max_first: RuleId(0),
            stale_removals: 0,
            trie_plen,
        }
    }

    fn len(&self) -> usize {
        self.rules.len()
    }

    fn full_hash(&self, k: &FlowKey) -> u64 {
        let h = self.stages.iter().fold(0u64, |h, s| s.hash(h, k));
        finish(h)
    }

    /// True when `key` matches the rule `r` of this subtable.
    #[inline]
    fn matches(&self, key: &FlowKey, r: &RuleEntry) -> bool {
        self.covered
            .iter()
            .zip(r.packed_value())
            .all(|(&(w, m), &v)| key.words[w as usize] & m == v)
    }

    fn insert(&mut self, e: Arc<RuleEntry>) {
        let value = e.match_value();
        self.count_partials(&value, true);
        let prio = e.priority();
        if self.len() == 0 || prio > self.max_priority {
            self.max_priority = prio;
            self.max_count = 1;
            self.max_first = e.id;
            self.stale_removals = 0;
        } else if prio == self.max_priority {
            self.max_count += 1;
            self.max_first = self.max_first.min(e.id);
        }
        let h = self.full_hash(&value);
        let stages = &self.stages;
        self.rules.insert(h, e, |r| {
            let value = r.match_value();
            finish(stages.iter().fold(0u64, |h, s| s.hash(h, &value)))
        });
    }

    /// Counts a rule's partial hashes in (or out of) the stage sets.
    fn count_partials(&mut self, value: &FlowKey, add: bool) {
        let mut h = 0u64;
        for (stage, set) in self.stages.iter().zip(self.stage_hashes.iter_mut()) {
            h = stage.hash(h, value);
            let p = finish(h);
            if add {
                match set.find_mut(p, |c| c.0 == p) {
                    Some(c) => c.1 += 1,
                    None => set.insert(p, (p, 1), |c| c.0),
                }
            } else {
                let gone = match set.find_mut(p, |c| c.0 == p) {
                    Some(c) => {
                        c.1 -= 1;
                        c.1 == 0
                    }
                    None => false,
                };
                if gone {
                    set.remove(p, |c| c.0 == p);
                }
            }
        }
    }

    fn remove(&mut self, e: &RuleEntry) -> Option<Arc<RuleEntry>> {
        let value = e.match_value();
        let h = self.full_hash(&value);
        let removed = self.rules.remove(h, |r| r.id == e.id)?;
        self.count_partials(&value, false);
        if removed.priority() == self.max_priority {
            self.max_count = self.max_count.saturating_sub(1);
        }
        // When the first added rule at the top priority leaves, `max_first`
        // stays a lower bound; when the last one leaves, `max_priority`
        // stays an upper bound. Rescanning the subtable for exact values at
        // every such removal made deleting a large subtable quadratic (a
        // million-rule del-flows did not finish in ten minutes); a rescan
        // once a quarter of the subtable has gone since the bounds went
        // stale costs O(1) per removal, amortised.
        if self.max_count == 0 && self.len() > 0 {
            self.stale_removals += 1;
            if self.stale_removals as usize * 4 >= self.len() {
                self.rescan_max();
            }
        }
        Some(removed)
    }

    /// Exact `max_priority`, `max_count` and `max_first` (one scan).
    fn rescan_max(&mut self) {
        self.max_priority = self.rules.iter().map(|r| r.priority()).max().unwrap_or(0);
        let top = self
            .rules
            .iter()
            .filter(|r| r.priority() == self.max_priority);
        let (count, first) = top.fold((0u32, RuleId(u64::MAX)), |(n, f), r| (n + 1, f.min(r.id)));
        self.max_count = count;
        self.max_first = first;
        self.stale_removals = 0;
    }

    /// Swaps the entry with `new`'s id for `new` (same match and priority).
    fn replace(&mut self, new: Arc<RuleEntry>) -> bool {
        let h = self.full_hash(&new.match_value());
        match self.rules.find_mut(h, |r| r.id == new.id) {
            Some(slot) => {
                *slot = new;
                true
            }
            None => false,
        }
    }

    /// The rule with exactly this masked value and priority.
    fn find_exact(&self, value: &FlowKey, priority: u16) -> Option<&Arc<RuleEntry>> {
        let h = self.full_hash(value);
        self.rules.iter_hash(h).find(|r| {
            r.priority() == priority
                && self
                    .covered
                    .iter()
                    .zip(r.packed_value())
                    .all(|(&(w, _), &v)| value.words[w as usize] == v)
        })
    }
}

/// A trie lookup done at most once per key and table.
#[derive(Clone, Copy, Default)]
struct TrieCtx {
    done: bool,
    found: TrieMatch,
}

/// A subtable's place in the visiting order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OrderKey {
    max_priority: u16,
    max_first: RuleId,
    slot: u32,
}

impl OrderKey {
    fn of(st: &Subtable, slot: u32) -> OrderKey {
        OrderKey {
            max_priority: st.max_priority,
            max_first: st.max_first,
            slot,
        }
    }

    /// True when a match `best` found earlier beats every rule here.
    #[inline]
    fn beaten_by(&self, best: &RuleEntry) -> bool {
        let p = best.priority();
        p > self.max_priority || (p == self.max_priority && best.id < self.max_first)
    }
}

/// One OpenFlow table's rules.
#[derive(Clone, Debug, Default)]
pub struct Classifier {
    /// Subtables by slot (a slot is free while `None`).
    subtables: Vec<Option<Arc<Subtable>>>,
    free_slots: Vec<u32>,
    by_mask: hashbrown::HashMap<FlowKey, u32>,
    /// The visiting order: highest max priority first, then the subtable
    /// whose first rule at that priority was added first.
    order: Vec<OrderKey>,
    tries: [Trie; N_TRIES],
    n_rules: usize,
}

impl Classifier {
    pub fn len(&self) -> usize {
        self.n_rules
    }

    pub fn is_empty(&self) -> bool {
        self.n_rules == 0
    }

    pub fn n_subtables(&self) -> usize {
        self.order.len()
    }

    fn subtable(&self, slot: u32) -> Option<&Subtable> {
        self.subtables.get(slot as usize)?.as_deref()
    }

    /// Every rule, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<RuleEntry>> {
        self.subtables.iter().flatten().flat_map(|s| s.rules.iter())
    }

    /// The rule with exactly this match and priority.
    pub fn find_exact(&self, m: &Match, priority: u16) -> Option<&Arc<RuleEntry>> {
        let slot = *self.by_mask.get(&m.mask)?;
        self.subtable(slot)?.find_exact(&m.value, priority)
    }

    /// Rules selected by `keep` among those whose mask includes `sel_mask`
    /// (a loose selection can only pick those).
    pub fn select<'a>(
        &'a self,
        sel_mask: &'a FlowKey,
        mut keep: impl FnMut(&RuleEntry) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Arc<RuleEntry>> + 'a {
        self.subtables
            .iter()
            .flatten()
            .filter(move |s| sel_mask.is_subset_of(&s.mask))
            .flat_map(|s| s.rules.iter())
            .filter(move |r| keep(r))
    }

    fn set_order(&mut self, old: Option<OrderKey>, new: Option<OrderKey>) {
        if old == new {
            return;
        }
        if let Some(k) = old {
            if let Some(i) = self.order.iter().position(|o| *o == k) {
                self.order.remove(i);
            }
        }
        if let Some(k) = new {
            let i = self.order.partition_point(|o| {
                (std::cmp::Reverse(o.max_priority), o.max_first)
                    <= (std::cmp::Reverse(k.max_priority), k.max_first)
            });
            self.order.insert(i, k);
        }
    }

    /// Adds a rule (its match value already masked) as the entry `id` with
    /// `actions` (`rule.actions` is not read); returns the entry. Rules
    /// with the same match and priority are the caller's business (see
    /// `Pipeline::add`).
    pub fn insert(
        &mut self,
        id: RuleId,
        rule: &Rule,
        actions: Arc<Vec<OfAction>>,
    ) -> Arc<RuleEntry> {
        let mask = rule.r#match.mask;
        let slot = match self.by_mask.get(&mask) {
            Some(&s) => s,
            None => {
                let s = match self.free_slots.pop() {
                    Some(s) => s,
                    None => {
                        self.subtables.push(None);
                        (self.subtables.len() - 1) as u32
                    }
                };
                self.by_mask.insert(mask, s);
                s
            }
        };
        let arc =
            self.subtables[slot as usize].get_or_insert_with(|| Arc::new(Subtable::new(mask)));
        let st = Arc::make_mut(arc);
        let e = Arc::new(RuleEntry::new(id, rule, Arc::clone(&st.mask), actions));
        let old = (st.len() > 0).then(|| OrderKey::of(st, slot));
        st.insert(Arc::clone(&e));
        let new = OrderKey::of(st, slot);
        let plens = st.trie_plen;
        self.set_order(old, Some(new));
        let value = &rule.r#match.value;
        for (j, &(f, _)) in TRIE_FIELDS.iter().enumerate() {
            if plens[j] > 0 {
                self.tries[j].insert(left_aligned(value, f), plens[j] as u32);
            }
        }
        self.n_rules += 1;
        e
    }

    /// Removes the rule with `e`'s id; returns it.
    pub fn remove(&mut self, e: &RuleEntry) -> Option<Arc<RuleEntry>> {
        let slot = *self.by_mask.get(e.mask())?;
        let arc = self.subtables.get_mut(slot as usize)?.as_mut()?;
        let st = Arc::make_mut(arc);
        let old = OrderKey::of(st, slot);
        let removed = st.remove(e)?;
        let (left, new, plens) = (st.len(), OrderKey::of(st, slot), st.trie_plen);
        if left == 0 {
            self.subtables[slot as usize] = None;
            self.free_slots.push(slot);
            self.by_mask.remove(e.mask());
            self.set_order(Some(old), None);
        } else {
            self.set_order(Some(old), Some(new));
        }
        let value = removed.match_value();
        for (j, &(f, _)) in TRIE_FIELDS.iter().enumerate() {
            if plens[j] > 0 {
                self.tries[j].remove(left_aligned(&value, f), plens[j] as u32);
            }
        }
        self.n_rules -= 1;
        Some(removed)
    }

    /// Replaces a rule by a new entry with the same id, match and priority
    /// (new actions).
    pub fn replace(&mut self, new: Arc<RuleEntry>) -> bool {
        let Some(&slot) = self.by_mask.get(new.mask()) else {
            return false;
        };
        match self.subtables.get_mut(slot as usize) {
            Some(Some(arc)) => Arc::make_mut(arc).replace(new),
            _ => false,
        }
    }

    /// The highest-priority rule matching `key` (the first added among
    /// equals). Every key bit the answer depends on is ORed into `wc`: the
    /// winner's mask, and for each subtable visited in vain only what
    /// proved the miss. `hint` (revalidation: the old megaflow's mask) lets
    /// a trie proof use bits the old megaflow already had.
    pub fn lookup(
        &self,
        key: &FlowKey,
        wc: &mut FlowKey,
        hint: Option<&FlowKey>,
    ) -> Option<&Arc<RuleEntry>> {
        let mut best: Option<&Arc<RuleEntry>> = None;
        let mut tries = [TrieCtx::default(); N_TRIES];
        for k in &self.order {
            if best.is_some_and(|b| k.beaten_by(b)) {
                // Sorted order: every later subtable is beaten too.
                break;
            }
            let Some(st) = self.subtable(k.slot) else {
                continue;
            };
            if let Some(r) = self.lookup_subtable(st, key, wc, hint, &mut tries) {
                let better = match best {
                    None => true,
                    Some(b) => {
                        r.priority() > b.priority() || (r.priority() == b.priority() && r.id < b.id)
                    }
                };
                if better {
                    best = Some(r);
                }
            }
        }
        best
    }

    fn lookup_subtable<'a>(
        &'a self,
        st: &'a Subtable,
        key: &FlowKey,
        wc: &mut FlowKey,
        hint: Option<&FlowKey>,
        tries: &mut [TrieCtx; N_TRIES],
    ) -> Option<&'a Arc<RuleEntry>> {
        let mut h = 0u64;
        let last = st.stages.len().saturating_sub(1);
        for (i, stage) in st.stages.iter().enumerate() {
            // A trie proof that the subtable cannot match: the first one
            // found, or in revalidation the first within the old mask (so
            // that the masked key takes the same proof as the packet did).
            let mut proof: Option<(Field, u128)> = None;
            for &(j, plen) in &stage.tries {
                let (j, plen) = (j as usize, plen as u32);
                let f = TRIE_FIELDS[j].0;
                let ctx = &mut tries[j];
                if !ctx.done {
                    ctx.found = self.tries[j].lookup(left_aligned(key, f), f.bits());
                    ctx.done = true;
                }
                if ctx.found.has_plen(plen) {
                    continue;
                }
                // No rule with this prefix length matches the key: skip the
                // subtable if proving it costs no more bits than the
                // subtable itself would un-wildcard, or only bits the
                // megaflow has anyway.
                let bits = ctx.found.bits;
                let need = prefix_mask(f, bits);
                let has = |m: &FlowKey| m.get(f) & need == need;
                let in_hint = hint.is_some_and(has);
                if bits <= plen || has(wc) || in_hint {
                    if hint.is_none() || in_hint {
                        proof = Some((f, need));
                        break;
                    }
                    proof = proof.or(Some((f, need)));
                }
            }
            if let Some((f, need)) = proof {
                if i > 0 {
                    wc.or(&st.stages[i - 1].upto);
                }
                wc.or_field(f, need);
                return None;
            }
            h = stage.hash(h, key);
            if i < last {
                let p = finish(h);
                if st.stage_hashes[i].find(p, |c| c.0 == p).is_none() {
                    wc.or(&stage.upto);
                    return None;
                }
            }
        }
        wc.or(&st.mask);
        let h = finish(h);
        st.rules
            .iter_hash(h)
            .filter(|r| st.matches(key, r))
            .min_by_key(|r| (std::cmp::Reverse(r.priority()), r.id))
    }

    /// Approximate heap bytes of the index (not the rules themselves):
    /// (subtables with their hash tables, prefix tries).
    pub fn index_heap_bytes(&self) -> (usize, usize) {
        let subtables: usize = self
            .subtables
            .iter()
            .flatten()
            .map(|s| {
                std::mem::size_of::<Subtable>()
                    + 16
                    + 16
                    + std::mem::size_of::<FlowKey>()
                    + 16
                    + s.covered.len() * 16
                    + s.rules.heap_bytes()
                    + s.stage_hashes.iter().map(|t| t.heap_bytes()).sum::<usize>()
                    + s.stages
                        .iter()
                        .map(|st| std::mem::size_of::<Stage>() + st.words.len() * 16)
                        .sum::<usize>()
            })
            .sum();
        let tries = self.tries.iter().map(|t| t.heap_bytes()).sum::<usize>();
        (
            subtables
                + self.subtables.capacity() * 8
                + self.by_mask.capacity() * (std::mem::size_of::<(FlowKey, u32)>() + 1)
                + self.order.capacity() * std::mem::size_of::<OrderKey>(),
            tries,
        )
    }
}
