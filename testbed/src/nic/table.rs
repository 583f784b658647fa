//! The NIC's rule table and its lookup.
//!
//! Rules without ranges are kept in subtables by shape (item kinds and
//! masks, as a TCAM-less NIC's hash tables would): the packet's values under
//! the shape's masks are one hash lookup. Rules with ranges are scanned in
//! order. The winner is the rule with the lowest priority number; among
//! equal priorities (undefined in rte_flow) the oldest rule.

// hashbrown with its default (foldhash) hasher: the emulated NIC hashes
// every packet once per subtable, and SipHash was most of its lookup cost.
use hashbrown::DefaultHashBuilder;
use hashbrown::{HashMap, HashTable};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use offload::rte::{Action, Rule};

use super::rss::{HashTypes, Reta};
use crate::matcher::{Fields, Headers, ItemFields, ItemKind};
use crate::sink::AtomicCount;

/// Key slots gathered without allocating (4 items of 8 fields).
const KEY_ON_STACK: usize = 32;

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

/// A rule as installed.
#[derive(Debug)]
pub(crate) struct InstalledRule {
    pub handle: u64,
    pub priority: u32,
    pub rule: Rule,
    /// The rule's masked values where its masks are non-zero, item after
    /// item: the subtable key, kept compact (the masks are the subtable's).
    key: Box<[u128]>,
    /// Some item has a range (`last`): matched by scan, not by hash.
    ranged: bool,
    pub mark: Option<u32>,
    pub fate: Fate,
    /// COUNT: hits and bytes (updated by the NIC thread).
    pub counter: Option<AtomicCount>,
}

impl InstalledRule {
    #[cfg(test)]
    pub fn new(handle: u64, rule: Rule) -> InstalledRule {
        InstalledRule::build(handle, rule, &mut Vec::new(), &mut Vec::new())
    }

    /// Builds the installed form of `rule` (moved in, not copied); RSS
    /// redirection tables come from `retas`, one per distinct queue list;
    /// `shape` is filled with the rule's item kinds and masks.
    fn build(
        handle: u64,
        rule: Rule,
        retas: &mut Vec<(Vec<u16>, Arc<Reta>)>,
        shape: &mut Vec<(ItemKind, Fields)>,
    ) -> InstalledRule {
        let mut mark = None;
        let mut fate = Fate::Default;
        let mut counter = None;
        for a in &rule.actions {
            match a {
                Action::Mark { id } => mark = Some(*id),
                Action::Rss { queues, types } => {
                    let reta = match retas.iter().find(|(q, _)| q == queues) {
                        Some((_, r)) => Arc::clone(r),
                        None => {
                            let r = Arc::new(Reta::spread(queues));
                            retas.push((queues.clone(), Arc::clone(&r)));
                            r
                        }
                    };
                    fate = Fate::Rss {
                        types: HashTypes::of_action(types),
                        reta,
                    }
                }
                Action::Queue { index } => fate = Fate::Queue(*index),
                Action::Drop => fate = Fate::Drop,
                Action::Count => counter = Some(AtomicCount::default()),
            }
        }
        // The key is gathered on the stack (4 items of 8 slots cover every
        // pattern translate makes) and allocated once, at its exact size.
        let mut buf = [0u128; KEY_ON_STACK];
        let mut n = 0;
        let mut spill = Vec::new();
        let mut ranged = false;
        shape.clear();
        for item in &rule.pattern {
            let i = ItemFields::of(item);
            ranged |= i.has_range();
            for (v, m) in i.spec.iter().zip(i.mask.iter()).filter(|(_, m)| **m != 0) {
                match buf.get_mut(n) {
                    Some(slot) => {
                        *slot = v & m;
                        n += 1;
                    }
                    None => spill.push(v & m),
                }
            }
            shape.push((i.kind, i.mask));
        }
        let key: Box<[u128]> = if spill.is_empty() {
            Box::from(&buf[..n])
        } else {
            buf[..n].iter().chain(&spill).copied().collect()
        };
        InstalledRule {
            handle,
            priority: rule.attr.priority,
            key,
            ranged,
            rule,
            mark,
            fate,
            counter,
        }
    }

    /// Precedence: smaller wins.
    fn order(&self) -> (u32, u64) {
        (self.priority, self.handle)
    }

    fn has_range(&self) -> bool {
        self.ranged
    }

    /// The rule's items, decoded (for matching by scan and for shapes; the
    /// hashed path needs only the key).
    fn items(&self) -> impl Iterator<Item = ItemFields> + '_ {
        self.rule.pattern.iter().map(ItemFields::of)
    }

    /// The rule's items have exactly this shape (kinds and masks).
    fn has_shape(&self, shape: &[(ItemKind, Fields)]) -> bool {
        self.rule.pattern.len() == shape.len()
            && self
                .items()
                .zip(shape)
                .all(|(i, (kind, mask))| i.kind == *kind && i.mask == *mask)
    }

    /// The masked key, value by value, of the slots the masks cover (the
    /// same sequence a packet's values under the subtable's shape give).
    fn key(&self) -> impl Iterator<Item = u128> + '_ {
        self.key.iter().copied()
    }

    pub fn matches(&self, h: &Headers) -> bool {
        !self.rule.pattern.is_empty()
            && self
                .items()
                .all(|i| h.fields(i.kind).is_some_and(|v| i.matches(&v)))
    }
}

/// Rules with one masked key, best first (the first inline: most keys
/// have one rule, which then costs no allocation of its own).
#[derive(Debug)]
struct Bucket {
    hash: u64,
    first: Arc<InstalledRule>,
    rest: Vec<Arc<InstalledRule>>,
}

impl Bucket {
    fn best(&self) -> &Arc<InstalledRule> {
        &self.first
    }

    fn insert(&mut self, r: Arc<InstalledRule>) {
        if r.order() < self.first.order() {
            let old = std::mem::replace(&mut self.first, r);
            self.rest.insert(0, old);
        } else {
            let at = self.rest.partition_point(|x| x.order() < r.order());
            self.rest.insert(at, r);
        }
    }

    /// Removes the rule; false when the bucket is left empty.
    fn remove(&mut self, handle: u64) -> bool {
        if self.first.handle == handle {
            if self.rest.is_empty() {
                return false;
            }
            self.first = self.rest.remove(0);
        } else {
            self.rest.retain(|x| x.handle != handle);
        }
        true
    }
}

#[derive(Debug)]
struct Subtable {
    shape: Vec<(ItemKind, Fields)>,
    /// Masked key → its bucket. The key is not stored: a bucket's rules
    /// carry it, so an entry is compared through its first rule.
    buckets: HashTable<Bucket>,
}

/// The hash of a masked key given value by value.
fn key_hash(state: &DefaultHashBuilder, values: impl Iterator<Item = u128>) -> u64 {
    let mut h = state.build_hasher();
    for v in values {
        h.write_u128(v);
    }
    h.finish()
}

/// Every rule of one port.
#[derive(Debug, Default)]
pub(crate) struct RuleTable {
    by_handle: HashMap<u64, Arc<InstalledRule>>,
    subtables: Vec<Subtable>,
    /// Rules with ranges, best first.
    ranged: Vec<Arc<InstalledRule>>,
    /// Redirection tables in use, one per distinct RSS queue list.
    retas: Vec<(Vec<u16>, Arc<Reta>)>,
    hasher: DefaultHashBuilder,
    /// The shape of the rule being inserted (kept for its allocation).
    shape: Vec<(ItemKind, Fields)>,
    next_handle: u64,
}

impl RuleTable {
    pub fn len(&self) -> usize {
        self.by_handle.len()
    }

    /// Installs `rule` (moved in: nothing of it is copied) and returns its
    /// handle.
    pub fn insert(&mut self, rule: Rule) -> u64 {
        self.next_handle += 1;
        let handle = self.next_handle;
        // Redirection tables no rule uses any more are dropped here, so
        // the list stays as short as the queue lists in use.
        self.retas.retain(|(_, r)| Arc::strong_count(r) > 1);
        let r = Arc::new(InstalledRule::build(
            handle,
            rule,
            &mut self.retas,
            &mut self.shape,
        ));
        self.by_handle.insert(handle, Arc::clone(&r));
        if r.has_range() {
            let at = self.ranged.partition_point(|x| x.order() < r.order());
            self.ranged.insert(at, r);
            return handle;
        }
        let i = match self.subtables.iter().position(|s| s.shape == self.shape) {
            Some(i) => i,
            None => {
                self.subtables.push(Subtable {
                    shape: self.shape.clone(),
                    buckets: HashTable::new(),
                });
                self.subtables.len() - 1
            }
        };
        let hash = key_hash(&self.hasher, r.key());
        let st = &mut self.subtables[i];
        match st
            .buckets
            .find_mut(hash, |b| b.hash == hash && b.first.key().eq(r.key()))
        {
            Some(bucket) => bucket.insert(r),
            None => {
                st.buckets.insert_unique(
                    hash,
                    Bucket {
                        hash,
                        first: r,
                        rest: Vec::new(),
                    },
                    |b| b.hash,
                );
            }
        }
        handle
    }

    pub fn get(&self, handle: u64) -> Option<&Arc<InstalledRule>> {
        self.by_handle.get(&handle)
    }

    pub fn remove(&mut self, handle: u64) -> Option<Arc<InstalledRule>> {
        let r = self.by_handle.remove(&handle)?;
        if r.has_range() {
            self.ranged.retain(|x| x.handle != handle);
            return Some(r);
        }
        if let Some(i) = self.subtables.iter().position(|s| r.has_shape(&s.shape)) {
            let hash = key_hash(&self.hasher, r.key());
            let st = &mut self.subtables[i];
            if let Ok(mut entry) = st
                .buckets
                .find_entry(hash, |b| b.hash == hash && b.first.key().eq(r.key()))
            {
                if !entry.get_mut().remove(handle) {
                    entry.remove();
                }
            }
            if st.buckets.is_empty() {
                self.subtables.swap_remove(i);
            }
        }
        Some(r)
    }

    pub fn clear(&mut self) {
        self.by_handle.clear();
        self.subtables.clear();
        self.ranged.clear();
        self.retas.clear();
    }

    /// Every rule, oldest first.
    pub fn rules(&self) -> Vec<Arc<InstalledRule>> {
        let mut v: Vec<_> = self.by_handle.values().cloned().collect();
        v.sort_by_key(|r| r.handle);
        v
    }

    /// The winning rule for a packet. `scratch` is reused between calls so
    /// that a lookup does not allocate.
    pub fn lookup(&self, h: &Headers, scratch: &mut Vec<u128>) -> Option<&Arc<InstalledRule>> {
        let mut best: Option<&Arc<InstalledRule>> = None;
        'subtables: for st in &self.subtables {
            scratch.clear();
            for (kind, mask) in &st.shape {
                let Some(values) = h.fields(*kind) else {
                    continue 'subtables;
                };
                scratch.extend(
                    values
                        .iter()
                        .zip(mask.iter())
                        .filter(|(_, m)| **m != 0)
                        .map(|(v, m)| v & m),
                );
            }
            let hash = key_hash(&self.hasher, scratch.iter().copied());
            let found = st.buckets.find(hash, |b| {
                b.hash == hash && b.first.key().eq(scratch.iter().copied())
            });
            if let Some(r) = found.map(Bucket::best) {
                if best.is_none_or(|b| r.order() < b.order()) {
                    best = Some(r);
                }
            }
        }
        for r in &self.ranged {
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
        Item::Eth(Masked::new(
            Eth {
                ether_type: ETHERTYPE_IPV4,
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
        let host = t.insert(rule(
            1,
            vec![ip_eth(), dst(gw, !0)],
            vec![Action::Mark { id: 1 }],
        ));
        let net = t.insert(rule(
            1,
            vec![ip_eth(), dst(gw, 0xffff_ff00)],
            vec![Action::Mark { id: 2 }],
        ));
        // Equal priority: the older rule wins.
        assert_eq!(t.lookup(&h, &mut s).map(|r| r.handle), Some(host));
        let ranged = t.insert(rule(
            0,
            vec![ip_eth(), dst(gw, 0xffff_ff00), sport_range(2000, 2200)],
            vec![Action::Drop],
        ));
        assert_eq!(t.lookup(&h, &mut s).map(|r| r.handle), Some(ranged));
        let better = t.insert(rule(0, vec![ip_eth()], vec![Action::Count]));
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
        assert!(t.remove(ranged).is_none());
        t.clear();
        assert_eq!(t.len(), 0);
        assert!(t.lookup(&h, &mut s).is_none());
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
                let h = t.insert(rule(r.below(3) as u32, pattern, vec![Action::Drop]));
                installed.push(h);
            }
            // Remove a few to exercise bucket and subtable clean-up.
            for h in installed.iter().step_by(5) {
                t.remove(*h);
            }
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
                let linear = t
                    .rules()
                    .into_iter()
                    .filter(|x| x.matches(&h))
                    .min_by_key(|x| x.order())
                    .map(|x| x.handle);
                assert_eq!(t.lookup(&h, &mut s).map(|x| x.handle), linear);
            }
        }
    }
}
