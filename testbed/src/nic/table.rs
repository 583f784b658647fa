//! The NIC's rule table and its lookup.
//!
//! Rules without ranges are kept in subtables by shape (item kinds and
//! masks, as a TCAM-less NIC's hash tables would): the packet's values under
//! the shape's masks are one hash lookup. Rules with ranges are scanned in
//! order. The winner is the rule with the lowest priority number; among
//! equal priorities (undefined in rte_flow) the oldest rule.
//!
//! Installed rules live in a slab: a handle is the slot and its
//! generation (a destroyed rule's handle never names the slot's next rule),
//! and subtables, buckets and the range list refer to slots. Inserting a
//! rule allocates nothing of its own (its key is inline up to
//! [`KEY_INLINE`] words) beyond the tables' amortised growth: the table
//! keeps the rule's compiled form (key, shape, mark, fate), as a NIC does,
//! not the rule it was given (a ranged rule keeps a copy of its items).

// hashbrown with its default (foldhash) hasher: the emulated NIC hashes
// every packet once per subtable, and SipHash was most of its lookup cost.
use fallback::growing::{hash_from_low32, GrowingTable};
use hashbrown::DefaultHashBuilder;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use offload::rte::{Action, Item, Rule};

use super::rss::{HashTypes, Reta};
use crate::matcher::{Fields, Headers, ItemFields, ItemKind};
use crate::sink::AtomicCount;

/// Key words kept inline in an installed rule (an IPv4 5-tuple with the
/// ETH item's has_vlan takes 7, an IPv6 one 8): longer keys spill to the
/// heap.
const KEY_INLINE: usize = 8;

/// A masked value as key words: its low 64 bits, and its high 64 bits when
/// the mask reaches them (IPv6 addresses). Which words a value gives
/// depends on its mask alone, so a rule and a packet under one shape give
/// the same sequence; most values fit one word, which keeps keys short.
fn key_words(v: u128, m: u128) -> impl Iterator<Item = u64> {
    let x = v & m;
    let hi = (m >> 64 != 0).then_some((x >> 64) as u64);
    std::iter::once(x as u64).chain(hi)
}

/// Where a matched packet goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// No fate action: the port's default RSS.
    Default,
    Queue(u16),
    Drop,
    Rss {
        types: HashTypes,
        /// Shared by every rule of the table with the same queue list.
        reta: Arc<Reta>,
    },
}

/// A rule's masked values where its masks are non-zero, item after item,
/// as [`key_words`]: its subtable key (the masks are the subtable's).
#[derive(Debug)]
enum RuleKey {
    Inline { len: u8, values: [u64; KEY_INLINE] },
    Spilled(Box<[u64]>),
}

impl RuleKey {
    fn values(&self) -> &[u64] {
        match self {
            RuleKey::Inline { len, values } => &values[..usize::from(*len)],
            RuleKey::Spilled(v) => v,
        }
    }
}

/// A subtable's item kinds and masks.
type Shape = [(ItemKind, Fields)];

/// How an installed rule is matched.
#[derive(Debug)]
enum Placement {
    /// By hash in the subtable of this shape (shared with the subtable,
    /// whose lookup it is).
    Hashed(Arc<Shape>),
    /// Some item has a range (`last`): by scan of its items.
    Ranged(Box<[Item]>),
}

/// A rule as installed: what matching and its actions need, as a NIC keeps
/// its compiled form rather than the `rte_flow` call's arguments (rte_flow
/// has no call that reads a rule back). An installed rule costs its slot
/// and a share of its subtable (a ranged rule also a copy of its items).
#[derive(Debug)]
pub(crate) struct InstalledRule {
    pub handle: u64,
    /// Insertion order: the tie-break among equal priorities (oldest wins).
    seq: u64,
    pub priority: u32,
    key: RuleKey,
    placement: Placement,
    pub mark: Option<u32>,
    pub fate: Fate,
    /// COUNT: hits and bytes (updated by the NIC thread).
    pub counter: Option<AtomicCount>,
}

/// A rule's actions as the NIC applies them.
struct Decoded {
    mark: Option<u32>,
    fate: Fate,
    counter: Option<AtomicCount>,
}

fn decode_actions(actions: &[Action], retas: &mut Vec<(Vec<u16>, Arc<Reta>)>) -> Decoded {
    let mut d = Decoded {
        mark: None,
        fate: Fate::Default,
        counter: None,
    };
    for a in actions {
        match a {
            Action::Mark { id } => d.mark = Some(*id),
            Action::Rss { queues, types } => {
                let reta = match retas.iter().find(|(q, _)| q == queues) {
                    Some((_, r)) => Arc::clone(r),
                    None => {
                        let r = Arc::new(Reta::spread(queues));
                        retas.push((queues.clone(), Arc::clone(&r)));
                        r
                    }
                };
                d.fate = Fate::Rss {
                    types: HashTypes::of_action(types),
                    reta,
                }
            }
            Action::Queue { index } => d.fate = Fate::Queue(*index),
            Action::Drop => d.fate = Fate::Drop,
            Action::Count => d.counter = Some(AtomicCount::default()),
        }
    }
    d
}

/// The rule's masked values where its masks are non-zero, item after item
/// (its subtable key); `shape` is filled with its item kinds and masks.
/// True when some item has a range.
fn key_and_shape(pattern: &[Item], shape: &mut Vec<(ItemKind, Fields)>) -> (RuleKey, bool) {
    let mut values = [0u64; KEY_INLINE];
    let mut n = 0;
    let mut spill: Vec<u64> = Vec::new();
    let mut ranged = false;
    shape.clear();
    for item in pattern {
        let i = ItemFields::of(item);
        ranged |= i.has_range();
        let words = i
            .spec
            .iter()
            .zip(i.mask.iter())
            .filter(|(_, m)| **m != 0)
            .flat_map(|(v, m)| key_words(*v, *m));
        for w in words {
            if !spill.is_empty() {
                spill.push(w);
            } else if let Some(slot) = values.get_mut(n) {
                *slot = w;
                n += 1;
            } else {
                spill.extend_from_slice(&values);
                spill.push(w);
            }
        }
        shape.push((i.kind, i.mask));
    }
    let key = if spill.is_empty() {
        RuleKey::Inline {
            // n ≤ KEY_INLINE.
            len: n as u8,
            values,
        }
    } else {
        RuleKey::Spilled(spill.into_boxed_slice())
    };
    (key, ranged)
}

impl InstalledRule {
    #[cfg(test)]
    pub fn new(handle: u64, rule: Rule) -> InstalledRule {
        let mut shape = Vec::new();
        let (key, _) = key_and_shape(&rule.pattern, &mut shape);
        let d = decode_actions(&rule.actions, &mut Vec::new());
        InstalledRule {
            handle,
            seq: handle,
            priority: rule.attr.priority,
            key,
            placement: Placement::Hashed(Arc::from(shape)),
            mark: d.mark,
            fate: d.fate,
            counter: d.counter,
        }
    }

    /// Precedence: smaller wins.
    fn order(&self) -> (u32, u64) {
        (self.priority, self.seq)
    }

    /// The masked key, value by value, of the slots the masks cover (the
    /// same sequence a packet's values under the subtable's shape give).
    fn key(&self) -> &[u64] {
        self.key.values()
    }

    /// The packet matches the rule (a scan; the hashed path needs only
    /// the key).
    pub fn matches(&self, h: &Headers) -> bool {
        match &self.placement {
            Placement::Ranged(items) => {
                !items.is_empty()
                    && items
                        .iter()
                        .map(ItemFields::of)
                        .all(|i| h.fields(i.kind).is_some_and(|v| i.matches(&v)))
            }
            Placement::Hashed(shape) => {
                let mut key = self.key().iter();
                !shape.is_empty()
                    && shape.iter().all(|(kind, mask)| {
                        h.fields(*kind).is_some_and(|v| {
                            v.iter()
                                .zip(mask.iter())
                                .filter(|(_, m)| **m != 0)
                                .flat_map(|(v, m)| key_words(*v, *m))
                                .all(|w| key.next() == Some(&w))
                        })
                    })
            }
        }
    }
}

/// One slab slot: a rule or nothing, and the generation its handle carries.
#[derive(Debug)]
struct Slot {
    generation: u32,
    rule: Option<InstalledRule>,
}

/// Slots per slab chunk.
const SLAB_CHUNK: usize = 1024;

/// Installed rules by slot, in chunks of [`SLAB_CHUNK`] allocated as the
/// table grows: a growing table never moves its rules (no reallocation and
/// copy of the whole table), and an empty one reserves nothing however large
/// the device's capacity.
#[derive(Debug, Default)]
struct Slab {
    chunks: Vec<Vec<Slot>>,
    /// Empty slots, reused last-freed first.
    free: Vec<u32>,
    /// Slots ever filled (the next fresh slot).
    used: u32,
    len: usize,
}

/// A handle is `generation << 32 | slot`; generations start at 1, so no
/// handle is 0.
fn handle_of(slot: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(slot)
}

fn slot_of(handle: u64) -> (u32, u32) {
    ((handle & 0xffff_ffff) as u32, (handle >> 32) as u32)
}

impl Slab {
    fn slot(&self, slot: u32) -> Option<&Slot> {
        let i = slot as usize;
        self.chunks.get(i / SLAB_CHUNK)?.get(i % SLAB_CHUNK)
    }

    fn slot_mut(&mut self, slot: u32) -> Option<&mut Slot> {
        let i = slot as usize;
        self.chunks.get_mut(i / SLAB_CHUNK)?.get_mut(i % SLAB_CHUNK)
    }

    /// The next rule's slot and handle.
    fn vacant(&self) -> (u32, u64) {
        match self.free.last() {
            Some(&slot) => {
                let generation = self.slot(slot).map_or(1, |s| s.generation);
                (slot, handle_of(slot, generation))
            }
            // Slots are u32 (the handle's low half); a NIC table is far smaller.
            None => (self.used, handle_of(self.used, 1)),
        }
    }

    /// Fills the slot [`Slab::vacant`] gave.
    fn fill(&mut self, slot: u32, rule: InstalledRule) {
        if self.free.last() == Some(&slot) {
            self.free.pop();
            if let Some(s) = self.slot_mut(slot) {
                s.rule = Some(rule);
            }
        } else {
            if self.chunks.last().is_none_or(|c| c.len() == SLAB_CHUNK) {
                self.chunks.push(Vec::with_capacity(SLAB_CHUNK));
            }
            if let Some(c) = self.chunks.last_mut() {
                c.push(Slot {
                    generation: 1,
                    rule: Some(rule),
                });
            }
            self.used += 1;
        }
        self.len += 1;
    }

    /// The slot of a live handle.
    fn find(&self, handle: u64) -> Option<u32> {
        let (slot, generation) = slot_of(handle);
        let s = self.slot(slot)?;
        (s.generation == generation && s.rule.is_some()).then_some(slot)
    }

    /// The rule in a slot (the tables refer only to filled slots).
    fn get(&self, slot: u32) -> Option<&InstalledRule> {
        self.slot(slot).and_then(|s| s.rule.as_ref())
    }

    /// A slot's precedence (an empty slot, which no table refers to, last).
    fn order(&self, slot: u32) -> (u32, u64) {
        self.get(slot)
            .map_or((u32::MAX, u64::MAX), InstalledRule::order)
    }

    /// The slot's rule has this key.
    fn has_key(&self, slot: u32, key: &[u64]) -> bool {
        self.get(slot).is_some_and(|r| r.key() == key)
    }

    fn take(&mut self, slot: u32) -> Option<InstalledRule> {
        let s = self.slot_mut(slot)?;
        let r = s.rule.take()?;
        s.generation = s.generation.wrapping_add(1).max(1);
        self.free.push(slot);
        self.len -= 1;
        Some(r)
    }

    fn clear(&mut self) {
        for (slot, s) in self.chunks.iter_mut().flatten().enumerate() {
            if s.rule.take().is_some() {
                s.generation = s.generation.wrapping_add(1).max(1);
                // Slots are u32 (see `vacant`).
                self.free.push(slot as u32);
            }
        }
        self.len = 0;
    }

    fn rules(&self) -> impl Iterator<Item = &InstalledRule> + '_ {
        self.chunks.iter().flatten().filter_map(|s| s.rule.as_ref())
    }
}

/// Rules with one masked key, best first (the first inline: most keys
/// have one rule, which then costs no allocation of its own; a bucket is 16
/// bytes).
#[derive(Debug)]
struct Bucket {
    /// The key hash's low 32 bits ([`key_hash`] is made from them).
    hash: u32,
    first: u32,
    /// Boxed: a bucket of one rule (the common case) is then 16 bytes,
    /// where an inline `Vec` would make every bucket 32.
    #[allow(clippy::box_collection)]
    rest: Option<Box<Vec<u32>>>,
}

impl Bucket {
    fn new(hash: u64, first: u32) -> Bucket {
        Bucket {
            hash: hash as u32,
            first,
            rest: None,
        }
    }

    /// The bucket's [`key_hash`].
    fn table_hash(&self) -> u64 {
        hash_from_low32(self.hash)
    }

    /// Holds rules with a key of this [`key_hash`].
    fn has_hash(&self, hash: u64) -> bool {
        self.hash == hash as u32
    }

    fn insert(&mut self, slab: &Slab, slot: u32) {
        let order = slab.order(slot);
        let rest = self.rest.get_or_insert_with(Box::default);
        if order < slab.order(self.first) {
            let old = std::mem::replace(&mut self.first, slot);
            rest.insert(0, old);
        } else {
            let at = rest.partition_point(|x| slab.order(*x) < order);
            rest.insert(at, slot);
        }
    }

    /// Removes the slot; false when the bucket is left empty.
    fn remove(&mut self, slot: u32) -> bool {
        let Some(rest) = self.rest.as_mut() else {
            return self.first != slot;
        };
        if self.first == slot {
            if rest.is_empty() {
                return false;
            }
            self.first = rest.remove(0);
        } else {
            rest.retain(|x| *x != slot);
        }
        if rest.is_empty() {
            self.rest = None;
        }
        true
    }
}

#[derive(Debug)]
struct Subtable {
    shape: Arc<Shape>,
    shape_hash: u64,
    /// Masked key → its bucket. The key is not stored: a bucket's rules
    /// carry it, so an entry is compared through its first rule. Grows a
    /// little per insert, as a NIC's rule memory does not stall inserts.
    buckets: GrowingTable<Bucket>,
}

/// The hash of a masked key given word by word, made from 32 bits (what a
/// [`Bucket`] keeps of it).
fn key_hash(state: &DefaultHashBuilder, words: impl Iterator<Item = u64>) -> u64 {
    let mut h = state.build_hasher();
    for w in words {
        h.write_u64(w);
    }
    hash_from_low32(h.finish() as u32)
}

fn shape_hash(state: &DefaultHashBuilder, shape: &[(ItemKind, Fields)]) -> u64 {
    state.hash_one(shape)
}

/// Every rule of one port.
#[derive(Debug, Default)]
pub(crate) struct RuleTable {
    slab: Slab,
    subtables: Vec<Subtable>,
    /// The subtable the last hashed rule went to (an index into
    /// `subtables`, checked before use: removals move subtables).
    last_subtable: Option<usize>,
    /// Slots of the rules with ranges, best first.
    ranged: Vec<u32>,
    /// Redirection tables in use, one per distinct RSS queue list.
    retas: Vec<(Vec<u16>, Arc<Reta>)>,
    hasher: DefaultHashBuilder,
    /// The shape of the rule being inserted (kept for its allocation).
    shape: Vec<(ItemKind, Fields)>,
    next_seq: u64,
}

impl RuleTable {
    pub fn len(&self) -> usize {
        self.slab.len
    }

    /// Installs `rule` and returns its handle (the table keeps the rule's
    /// compiled form, see [`InstalledRule`]).
    pub fn insert(&mut self, rule: &Rule) -> u64 {
        self.next_seq += 1;
        let (slot, handle) = self.slab.vacant();
        // Redirection tables no rule uses any more are dropped here, so
        // the list stays as short as the queue lists in use.
        self.retas.retain(|(_, r)| Arc::strong_count(r) > 1);
        let d = decode_actions(&rule.actions, &mut self.retas);
        let (key, ranged) = key_and_shape(&rule.pattern, &mut self.shape);
        let hash = key_hash(&self.hasher, key.values().iter().copied());
        let order = (rule.attr.priority, self.next_seq);
        let (placement, subtable) = if ranged {
            (Placement::Ranged(rule.pattern.as_slice().into()), None)
        } else {
            // Rules come in runs of one shape (an offload burst): the last
            // subtable inserted into is compared first, without hashing
            // the shape.
            let last = self.last_subtable.filter(|i| {
                self.subtables
                    .get(*i)
                    .is_some_and(|s| *s.shape == *self.shape)
            });
            let i = match last {
                Some(i) => i,
                None => {
                    let shape_hash = shape_hash(&self.hasher, &self.shape);
                    let found = self
                        .subtables
                        .iter()
                        .position(|s| s.shape_hash == shape_hash && *s.shape == *self.shape);
                    found.unwrap_or_else(|| {
                        self.subtables.push(Subtable {
                            shape: Arc::from(self.shape.as_slice()),
                            shape_hash,
                            buckets: GrowingTable::new(),
                        });
                        self.subtables.len() - 1
                    })
                }
            };
            self.last_subtable = Some(i);
            let shape = self.subtables.get(i).map(|s| Arc::clone(&s.shape));
            (Placement::Hashed(shape.unwrap_or_default()), Some(i))
        };
        self.slab.fill(
            slot,
            InstalledRule {
                handle,
                seq: self.next_seq,
                priority: order.0,
                key,
                placement,
                mark: d.mark,
                fate: d.fate,
                counter: d.counter,
            },
        );
        let slab = &self.slab;
        let Some(st) = subtable.and_then(|i| self.subtables.get_mut(i)) else {
            let at = self.ranged.partition_point(|x| slab.order(*x) < order);
            self.ranged.insert(at, slot);
            return handle;
        };
        let key = slab.get(slot).map_or(&[][..], InstalledRule::key);
        match st
            .buckets
            .find_mut(hash, |b| b.has_hash(hash) && slab.has_key(b.first, key))
        {
            Some(bucket) => bucket.insert(slab, slot),
            None => {
                st.buckets
                    .insert_unique(hash, Bucket::new(hash, slot), Bucket::table_hash);
            }
        }
        handle
    }

    pub fn get(&self, handle: u64) -> Option<&InstalledRule> {
        self.slab.find(handle).and_then(|s| self.slab.get(s))
    }

    /// Removes the rule; false when no rule has this handle.
    pub fn remove(&mut self, handle: u64) -> bool {
        let Some(slot) = self.slab.find(handle) else {
            return false;
        };
        let Some(r) = self.slab.get(slot) else {
            return false;
        };
        if let Placement::Ranged(_) = r.placement {
            self.ranged.retain(|x| *x != slot);
        } else if let Some(i) = self.subtables.iter().position(
            |s| matches!(&r.placement, Placement::Hashed(shape) if Arc::ptr_eq(shape, &s.shape)),
        ) {
            let hash = key_hash(&self.hasher, r.key().iter().copied());
            let slab = &self.slab;
            let st = &mut self.subtables[i];
            let same = |b: &Bucket| b.has_hash(hash) && slab.has_key(b.first, r.key());
            let emptied = st
                .buckets
                .find_mut(hash, same)
                .is_some_and(|b| !b.remove(slot));
            if emptied {
                // The emptied bucket still names the slot as its first.
                st.buckets.remove(
                    hash,
                    |b| b.has_hash(hash) && b.first == slot && b.rest.is_none(),
                    Bucket::table_hash,
                );
            }
            if st.buckets.is_empty() {
                self.subtables.swap_remove(i);
            }
        }
        self.slab.take(slot).is_some()
    }

    pub fn clear(&mut self) {
        self.slab.clear();
        self.subtables.clear();
        self.ranged.clear();
        self.retas.clear();
    }

    /// Every rule, oldest first.
    pub fn rules(&self) -> Vec<&InstalledRule> {
        let mut v: Vec<&InstalledRule> = self.slab.rules().collect();
        v.sort_by_key(|r| r.seq);
        v
    }

    /// The winning rule for a packet. `scratch` is reused between calls so
    /// that a lookup does not allocate.
    pub fn lookup(&self, h: &Headers, scratch: &mut Vec<u64>) -> Option<&InstalledRule> {
        let mut best: Option<&InstalledRule> = None;
        'subtables: for st in &self.subtables {
            scratch.clear();
            for (kind, mask) in st.shape.iter() {
                let Some(values) = h.fields(*kind) else {
                    continue 'subtables;
                };
                scratch.extend(
                    values
                        .iter()
                        .zip(mask.iter())
                        .filter(|(_, m)| **m != 0)
                        .flat_map(|(v, m)| key_words(*v, *m)),
                );
            }
            let hash = key_hash(&self.hasher, scratch.iter().copied());
            let found = st.buckets.find(hash, |b| {
                b.has_hash(hash) && self.slab.has_key(b.first, scratch.as_slice())
            });
            if let Some(r) = found.and_then(|b| self.slab.get(b.first)) {
                if best.is_none_or(|b| r.order() < b.order()) {
                    best = Some(r);
                }
            }
        }
        for r in self.ranged.iter().filter_map(|s| self.slab.get(*s)) {
            if best.is_some_and(|b| b.order() < r.order()) {
                break;
            }
            if r.matches(h) {
                best = Some(r);
                break;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;
    use crate::matcher::ETHERTYPE_IPV4;
    use offload::rte::{Attr, Eth, Ipv4, Item, Masked, Udp};
    use std::net::Ipv4Addr;

    fn rule(priority: u32, pattern: Vec<Item>, actions: Vec<Action>) -> Rule {
        Rule {
            attr: Attr {
                priority,
                ..Attr::INGRESS
            },
            pattern,
            actions,
        }
    }

    fn ip_eth() -> Item {
        eth_type(ETHERTYPE_IPV4)
    }

    /// An ETH item matching this EtherType exactly.
    fn eth_type(t: u16) -> Item {
        Item::Eth(Masked::new(
            Eth {
                ether_type: t,
                ..Eth::default()
            },
            Eth {
                ether_type: 0xffff,
                ..Eth::default()
            },
        ))
    }

    fn dst(a: Ipv4Addr, mask: u32) -> Item {
        Item::Ipv4(Masked::new(
            Ipv4 {
                dst_addr: a.into(),
                ..Ipv4::default()
            },
            Ipv4 {
                dst_addr: mask,
                ..Ipv4::default()
            },
        ))
    }

    fn sport_range(lo: u16, hi: u16) -> Item {
        Item::Udp(Masked::range(
            Udp {
                src_port: lo,
                ..Udp::default()
            },
            Udp {
                src_port: hi,
                ..Udp::default()
            },
            Udp {
                src_port: 0xffff,
                ..Udp::default()
            },
        ))
    }

    #[test]
    fn priority_then_age_across_subtables_and_ranges() {
        let gw = Ipv4Addr::new(192, 168, 200, 3);
        let pkt = build::udp4(Ipv4Addr::new(10, 1, 0, 1), gw, 2152, 2152, &[]);
        let h = Headers::parse(&pkt);
        let mut t = RuleTable::default();
        let mut s = Vec::new();
        assert!(t.lookup(&h, &mut s).is_none());
        let host = t.insert(&rule(
            1,
            vec![ip_eth(), dst(gw, !0)],
            vec![Action::Mark { id: 1 }],
        ));
        let net = t.insert(&rule(
            1,
            vec![ip_eth(), dst(gw, 0xffff_ff00)],
            vec![Action::Mark { id: 2 }],
        ));
        // Equal priority: the older rule wins.
        assert_eq!(t.lookup(&h, &mut s).map(|r| r.handle), Some(host));
        let ranged = t.insert(&rule(
            0,
            vec![ip_eth(), dst(gw, 0xffff_ff00), sport_range(2000, 2200)],
            vec![Action::Drop],
        ));
        assert_eq!(t.lookup(&h, &mut s).map(|r| r.handle), Some(ranged));
        let better = t.insert(&rule(0, vec![ip_eth()], vec![Action::Count]));
        assert_eq!(
            t.lookup(&h, &mut s).map(|r| r.handle),
            Some(ranged),
            "ranged is older"
        );
        t.remove(ranged);
        assert_eq!(t.lookup(&h, &mut s).map(|r| r.handle), Some(better));
        t.remove(better);
        t.remove(host);
        assert_eq!(t.lookup(&h, &mut s).map(|r| r.handle), Some(net));
        let other = build::udp4(
            Ipv4Addr::new(10, 1, 0, 1),
            Ipv4Addr::new(1, 1, 1, 1),
            1,
            2,
            &[],
        );
        assert!(t.lookup(&Headers::parse(&other), &mut s).is_none());
        assert_eq!(t.len(), 1);
        assert!(!t.remove(ranged));
        t.clear();
        assert_eq!(t.len(), 0);
        assert!(t.lookup(&h, &mut s).is_none());
    }

    /// A slot reused after a destroy (or a reset) gets a new generation:
    /// the old handle names no rule, never the slot's new one.
    #[test]
    fn stale_handles_name_no_rule() {
        let gw = Ipv4Addr::new(192, 168, 200, 3);
        let mut t = RuleTable::default();
        let a = t.insert(&rule(0, vec![ip_eth(), dst(gw, !0)], vec![Action::Drop]));
        assert!(t.get(a).is_some());
        assert!(t.remove(a));
        assert!(t.get(a).is_none());
        let b = t.insert(&rule(0, vec![ip_eth(), dst(gw, !0)], vec![Action::Count]));
        assert_ne!(a, b);
        assert!(t.get(a).is_none());
        assert!(!t.remove(a));
        assert!(t.get(b).is_some_and(|r| r.counter.is_some()));
        assert_eq!(t.len(), 1);
        t.clear();
        assert!(t.get(b).is_none());
        let c = t.insert(&rule(0, vec![ip_eth()], vec![Action::Drop]));
        assert!(c != a && c != b);
        assert!(!t.remove(b));
        assert_eq!(t.len(), 1);
        // Rules beyond one slab chunk keep their handles and order.
        let handles: Vec<u64> = (0..SLAB_CHUNK as u32 + 10)
            .map(|i| {
                t.insert(&rule(
                    1,
                    vec![ip_eth(), dst(Ipv4Addr::from(i), !0)],
                    vec![Action::Drop],
                ))
            })
            .collect();
        assert_eq!(t.len(), SLAB_CHUNK + 11);
        assert!(handles
            .iter()
            .all(|h| t.get(*h).is_some_and(|r| r.handle == *h)));
        let order: Vec<u64> = t.rules().iter().map(|r| r.handle).collect();
        assert_eq!(order[0], c);
        assert_eq!(&order[1..], &handles[..]);
    }

    #[test]
    fn actions_decoded() {
        let r = InstalledRule::new(
            7,
            rule(
                0,
                vec![ip_eth()],
                vec![
                    Action::Mark { id: 9 },
                    Action::Count,
                    Action::Rss {
                        queues: vec![1, 2],
                        types: vec![],
                    },
                ],
            ),
        );
        assert_eq!(r.mark, Some(9));
        assert!(r.counter.is_some());
        assert!(matches!(&r.fate, Fate::Rss { reta, .. } if reta.queue(Some(1)) == 2));
    }

    /// The rule a scan of the rules as given picks for a packet: the best
    /// priority, then the oldest (`installed` is in installation order),
    /// matching item by item, not through the table's keys.
    fn scan_winner(installed: &[(u64, u32, Vec<Item>)], h: &Headers) -> Option<u64> {
        installed
            .iter()
            .enumerate()
            .filter(|(_, (_, _, pattern))| {
                pattern
                    .iter()
                    .map(ItemFields::of)
                    .all(|i| h.fields(i.kind).is_some_and(|v| i.matches(&v)))
            })
            .min_by_key(|(age, (_, priority, _))| (*priority, *age))
            .map(|(_, (handle, ..))| *handle)
    }

    /// IPv6 addresses take two key words where their masks reach the high
    /// half: prefixes ending in either half, and addresses differing in
    /// either half, still find exactly the rules a scan of the items finds.
    #[test]
    fn ipv6_keys_split_into_words_match_as_the_items_do() {
        use crate::traffic::Rng;
        use offload::rte::Ipv6;
        use std::net::Ipv6Addr;
        let addrs: [u128; 4] = [
            0x2001_0db8_0000_0000_0000_0000_0000_0001,
            0x2001_0db8_0000_0000_0000_0000_0000_0002,
            0x2001_0db8_0000_0001_0000_0000_0000_0001,
            0xfe80_0000_0000_0000_0200_f8ff_fe21_67cf,
        ];
        let prefix = |len: u32| {
            if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            }
        };
        let lens = [128, 127, 72, 64, 48, 0];
        let eth6 = eth_type(0x86dd);
        let mut r = Rng::new(11);
        for _ in 0..50 {
            let mut t = RuleTable::default();
            let mut installed = Vec::new();
            for _ in 0..r.below(30) {
                let (src, dst) = (addrs[r.below(4) as usize], addrs[r.below(4) as usize]);
                let (sm, dm) = (
                    prefix(lens[r.below(6) as usize]),
                    prefix(lens[r.below(6) as usize]),
                );
                let pattern = vec![
                    eth6.clone(),
                    Item::Ipv6(Box::new(Masked::new(
                        Ipv6 {
                            src_addr: src,
                            dst_addr: dst,
                            ..Ipv6::default()
                        },
                        Ipv6 {
                            src_addr: sm,
                            dst_addr: dm,
                            ..Ipv6::default()
                        },
                    ))),
                ];
                let priority = r.below(2) as u32;
                let h = t.insert(&rule(priority, pattern.clone(), vec![Action::Drop]));
                installed.push((h, priority, pattern));
            }
            let mut s = Vec::new();
            for _ in 0..40 {
                let pkt = build::udp6(
                    Ipv6Addr::from(addrs[r.below(4) as usize]),
                    Ipv6Addr::from(addrs[r.below(4) as usize]),
                    1,
                    2,
                    &[],
                );
                let h = Headers::parse(&pkt);
                let linear = scan_winner(&installed, &h);
                assert_eq!(t.lookup(&h, &mut s).map(|x| x.handle), linear);
            }
        }
    }

    /// The subtable lookup picks what a linear scan in precedence order
    /// picks, for random rules (exact, prefix, range) and packets.
    #[test]
    fn lookup_agrees_with_a_linear_scan() {
        use crate::traffic::Rng;
        let mut r = Rng::new(7);
        let addrs = [
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 1, 1),
        ];
        let masks = [!0u32, 0xffff_ff00, 0xffff_0000, 0];
        for _ in 0..50 {
            let mut t = RuleTable::default();
            let mut installed = Vec::new();
            for _ in 0..r.below(40) {
                let mut pattern = vec![ip_eth()];
                let a = addrs[r.below(3) as usize];
                pattern.push(dst(a, masks[r.below(4) as usize]));
                match r.below(3) {
                    0 => {}
                    1 => pattern.push(Item::Udp(Masked::new(
                        Udp {
                            src_port: [1, 2, 3][r.below(3) as usize],
                            ..Udp::default()
                        },
                        Udp {
                            src_port: 0xffff,
                            ..Udp::default()
                        },
                    ))),
                    _ => pattern.push(sport_range(1 + r.below(2) as u16, 2 + r.below(2) as u16)),
                }
                let priority = r.below(3) as u32;
                let h = t.insert(&rule(priority, pattern.clone(), vec![Action::Drop]));
                installed.push((h, priority, pattern));
            }
            // Remove a few to exercise bucket and subtable clean-up.
            for (h, ..) in installed.iter().step_by(5) {
                t.remove(*h);
            }
            installed.retain(|(h, ..)| t.get(*h).is_some());
            let mut s = Vec::new();
            for _ in 0..50 {
                let pkt = build::udp4(
                    Ipv4Addr::new(10, 9, 9, 9),
                    addrs[r.below(3) as usize],
                    r.below(4) as u16,
                    53,
                    &[],
                );
                let h = Headers::parse(&pkt);
                let linear = scan_winner(&installed, &h);
                // The rule's own scan agrees.
                let scanned = t
                    .rules()
                    .into_iter()
                    .filter(|x| x.matches(&h))
                    .min_by_key(|x| x.order())
                    .map(|x| x.handle);
                assert_eq!(scanned, linear);
                assert_eq!(t.lookup(&h, &mut s).map(|x| x.handle), linear);
            }
        }
    }
}
