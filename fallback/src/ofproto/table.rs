//! OpenFlow tables, each a [`Classifier`] (lookup order: priority
//! descending, then the order rules were added: among equal priorities the
//! first added wins), with the add / modify / delete semantics of
//! `ovs-ofctl add-flow`, `mod-flows` and `del-flows`.

use super::classifier::Classifier;
use super::cow::CowTable;
use super::group::{self, Group, GroupError};
use super::meter::{self, Meter, MeterConfig, MeterError};
use super::{Match, OfAction, Rule, N_TABLES};
use crate::key::{FlowKey, KEY_WORDS};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// A rule's identity for its whole life (kept across action modifications;
/// a replaced rule gets a new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub u64);

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule#{}", self.0)
    }
}

/// The rules a megaflow was translated from. Most translations go
/// through one or two rules: those are kept inline, so that making a
/// megaflow (an upcall) allocates no list.
#[derive(Clone, Debug)]
pub enum RuleIds {
    Inline { len: u8, ids: [RuleId; 2] },
    Shared(Arc<[RuleId]>),
}

impl Default for RuleIds {
    fn default() -> Self {
        RuleIds::Inline {
            len: 0,
            ids: [RuleId(0); 2],
        }
    }
}

impl std::ops::Deref for RuleIds {
    type Target = [RuleId];
    fn deref(&self) -> &[RuleId] {
        match self {
            RuleIds::Inline { len, ids } => ids.get(..usize::from(*len)).unwrap_or(ids),
            RuleIds::Shared(ids) => ids,
        }
    }
}

impl From<&[RuleId]> for RuleIds {
    fn from(ids: &[RuleId]) -> Self {
        match *ids {
            [] => RuleIds::default(),
            [a] => RuleIds::Inline {
                len: 1,
                ids: [a, RuleId(0)],
            },
            [a, b] => RuleIds::Inline {
                len: 2,
                ids: [a, b],
            },
            _ => RuleIds::Shared(Arc::from(ids)),
        }
    }
}

impl From<Vec<RuleId>> for RuleIds {
    fn from(ids: Vec<RuleId>) -> Self {
        RuleIds::from(&ids[..])
    }
}

impl PartialEq for RuleIds {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for RuleIds {}

/// Match value words kept inline in a [`RuleEntry`]; a mask covering more
/// words puts the value on the heap.
const INLINE_WORDS: usize = 4;

/// A rule's match value, packed: only the key words its mask covers, in
/// word order (the mask itself is shared by every rule of its subtable).
/// Controller rules rarely cover more than four of the twelve words.
#[derive(Clone, Debug)]
enum PackedValue {
    /// The covered words, then zeros.
    Inline([u64; INLINE_WORDS]),
    Heap(Box<[u64]>),
}

impl PackedValue {
    fn pack(value: &FlowKey, mask: &FlowKey) -> PackedValue {
        let words = covered_words(mask).map(|w| value.words[w]);
        if covered_words(mask).count() <= INLINE_WORDS {
            let mut inline = [0u64; INLINE_WORDS];
            for (slot, v) in inline.iter_mut().zip(words) {
                *slot = v;
            }
            PackedValue::Inline(inline)
        } else {
            PackedValue::Heap(words.collect())
        }
    }

    #[inline]
    fn words(&self) -> &[u64] {
        match self {
            PackedValue::Inline(w) => w,
            PackedValue::Heap(w) => w,
        }
    }
}

/// The indexes of the key words a mask covers (has any bit of), ascending.
#[inline]
pub fn covered_words(mask: &FlowKey) -> impl Iterator<Item = usize> + '_ {
    (0..KEY_WORDS).filter(move |&w| mask.words[w] != 0)
}

/// A rule in a table, stored compactly (a controller installs millions):
/// the match value as the words its mask covers, the mask and the action
/// list shared (one mask per subtable; equal action lists added close
/// together share one list). [`RuleEntry::to_rule`] gives the [`Rule`]
/// back.
#[derive(Clone, Debug)]
pub struct RuleEntry {
    /// Also the insertion order, for the equal-priority tie-break (ids
    /// are handed out in order).
    pub id: RuleId,
    cookie: u64,
    mask: Arc<FlowKey>,
    actions: Arc<Vec<OfAction>>,
    value: PackedValue,
    priority: u16,
    idle_timeout: u16,
    hard_timeout: u16,
    table: u8,
}

impl RuleEntry {
    /// `rule`'s entry, its match value already masked, with `mask` equal to
    /// the rule's mask (shared) and `actions` equal to its actions (shared;
    /// `rule.actions` is not read).
    pub(crate) fn new(
        id: RuleId,
        rule: &Rule,
        mask: Arc<FlowKey>,
        actions: Arc<Vec<OfAction>>,
    ) -> RuleEntry {
        RuleEntry {
            id,
            cookie: rule.cookie,
            value: PackedValue::pack(&rule.r#match.value, &mask),
            mask,
            actions,
            priority: rule.priority,
            idle_timeout: rule.idle_timeout,
            hard_timeout: rule.hard_timeout,
            table: rule.table,
        }
    }

    pub fn table(&self) -> u8 {
        self.table
    }

    #[inline]
    pub fn priority(&self) -> u16 {
        self.priority
    }

    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    pub fn idle_timeout(&self) -> u16 {
        self.idle_timeout
    }

    pub fn hard_timeout(&self) -> u16 {
        self.hard_timeout
    }

    /// An empty list is `drop`.
    #[inline]
    pub fn actions(&self) -> &[OfAction] {
        &self.actions
    }

    #[inline]
    pub fn mask(&self) -> &FlowKey {
        &self.mask
    }

    /// The match value (masked), unpacked.
    pub fn match_value(&self) -> FlowKey {
        let mut v = FlowKey::ZERO;
        for (w, &x) in covered_words(&self.mask).zip(self.value.words()) {
            v.words[w] = x;
        }
        v
    }

    pub fn r#match(&self) -> Match {
        Match {
            value: self.match_value(),
            mask: *self.mask,
        }
    }

    /// The value words the mask covers, in word order (after them, in an
    /// inline value, zeros).
    #[inline]
    pub(crate) fn packed_value(&self) -> &[u64] {
        self.value.words()
    }

    /// True when the key matches.
    pub fn matches(&self, key: &FlowKey) -> bool {
        covered_words(&self.mask)
            .zip(self.value.words())
            .all(|(w, &v)| key.words[w] & self.mask.words[w] == v)
    }

    /// True when the loose match `sel` selects this rule (see
    /// [`loose_selects`]).
    pub fn loosely_selected_by(&self, sel: &Match) -> bool {
        sel.mask.is_subset_of(&self.mask) && self.match_value().masked(&sel.mask) == sel.value
    }

    /// The rule as added (or as modified since).
    pub fn to_rule(&self) -> Rule {
        Rule {
            table: self.table,
            priority: self.priority,
            r#match: self.r#match(),
            actions: self.actions.to_vec(),
            cookie: self.cookie,
            idle_timeout: self.idle_timeout,
            hard_timeout: self.hard_timeout,
        }
    }

    /// Heap bytes this entry accounts for: itself and its spilled value,
    /// and its share of its action list.
    fn heap_bytes(&self) -> f64 {
        let spilled = match &self.value {
            PackedValue::Inline(_) => 0,
            PackedValue::Heap(w) => w.len() * 8,
        };
        let actions = 16
            + std::mem::size_of::<Vec<OfAction>>()
            + self.actions.capacity() * std::mem::size_of::<OfAction>();
        (std::mem::size_of::<RuleEntry>() + 16 + spilled) as f64
            + actions as f64 / Arc::strong_count(&self.actions) as f64
    }
}

/// Action lists kept for sharing with the next rules added (controllers
/// install runs of rules with the same few action lists).
const RECENT_ACTIONS: usize = 8;

/// Result of [`Pipeline::add`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Added {
    pub id: RuleId,
    /// A rule with the same table, priority and match that was replaced.
    pub replaced: Option<RuleId>,
}

/// Approximate heap bytes of a [`Pipeline`] (allocator overhead aside).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapBytes {
    /// The rule entries (`Arc<RuleEntry>`, spilled match values) and their
    /// shares of the action lists.
    pub rules: usize,
    /// The id index behind `get`.
    pub id_index: usize,
    /// Subtables: their rule hash tables and stage hash sets.
    pub subtables: usize,
    /// The prefix tries.
    pub tries: usize,
}

impl HeapBytes {
    pub fn total(&self) -> usize {
        self.rules + self.id_index + self.subtables + self.tries
    }
}

/// All tables of one bridge.
///
/// Versioning: a `Pipeline` is a persistent value. Each table is a
/// [`Classifier`] behind an `Arc`, and every part of a classifier is
/// copy-on-write in small pieces (hash-table shards, trie paths), so a
/// clone is a snapshot that costs pointer copies, and a change after a
/// snapshot copies only the pieces it touches. Readers (PMDs doing upcalls)
/// hold a snapshot: they see one version however the owner's copy changes
/// meanwhile, and a batch of flow mods applied to the owner's copy becomes
/// visible as one version when the owner publishes it. This was preferred
/// to OVS's per-rule add/remove versions because here snapshots travel to
/// other threads as `Arc<Pipeline>`, and safe Rust has no lock-free way to
/// share one mutable structure between the writer and those readers.
#[derive(Clone)]
pub struct Pipeline {
    /// Pipelines that descend (by clone) from one `Pipeline::new` share
    /// it: a journal applies only within its lineage.
    lineage: u64,
    /// What changed since version `journal_base` (see [`Pipeline::publish`]).
    journal: Vec<RuleChange>,
    journal_base: u64,
    /// Tables the journal lost entries of (it keeps at most [`JOURNAL_MAX`]).
    journal_overflow: TableSet,
    tables: Vec<Arc<Classifier>>,
    /// Every rule by id (`get` without a scan).
    by_id: CowTable<Arc<RuleEntry>>,
    next_id: u64,
    /// Recently added action lists, most recent first: an added rule with
    /// an equal list shares it.
    recent_actions: [Option<Arc<Vec<OfAction>>>; RECENT_ACTIONS],
    /// Bumped once per change, or once per [`Pipeline::batch`].
    version: u64,
    in_batch: bool,
    batch_changed: bool,
    /// The group table (few and small next to the rules: copied whole on
    /// change).
    groups: Arc<std::collections::BTreeMap<u32, Arc<Group>>>,
    /// The serial of each installed group (see [`group::credit`]).
    group_serials: Arc<std::collections::BTreeSet<u64>>,
    /// Groups of each type (OpenFlow limits them per type).
    group_counts: [usize; 4],
    next_group_serial: u64,
    /// The meter table: configuration and running state (shared by every
    /// snapshot, so the PMDs' counts and buckets carry across versions).
    meters: Arc<std::collections::BTreeMap<u32, Arc<Meter>>>,
}

/// A set of OpenFlow table numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TableSet([u64; 4]);

impl TableSet {
    pub const ALL: TableSet = TableSet([u64::MAX; 4]);

    pub fn insert(&mut self, t: u8) {
        self.0[t as usize / 64] |= 1 << (t % 64);
    }

    pub fn contains(&self, t: u8) -> bool {
        self.0[t as usize / 64] & (1 << (t % 64)) != 0
    }

    pub fn intersects(&self, other: &TableSet) -> bool {
        self.0.iter().zip(other.0.iter()).any(|(a, b)| a & b != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
}

/// One rule change, as revalidation needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleChange {
    /// A new rule: megaflows that looked `table` up and overlap `r#match`
    /// may now hit it.
    Added {
        table: u8,
        r#match: Match,
    },
    /// A rule went or changed its actions: megaflows translated through it.
    Removed {
        table: u8,
        id: RuleId,
    },
    Modified {
        table: u8,
        id: RuleId,
    },
}

impl RuleChange {
    pub fn table(&self) -> u8 {
        match *self {
            RuleChange::Added { table, .. }
            | RuleChange::Removed { table, .. }
            | RuleChange::Modified { table, .. } => table,
        }
    }
}

/// The changes between two versions of a pipeline.
#[derive(Clone, Copy, Debug)]
pub enum Changes<'a> {
    /// Exactly these rule changes.
    Rules(&'a [RuleChange]),
    /// These, plus unrecorded changes in `overflow`'s tables.
    Tables {
        rules: &'a [RuleChange],
        overflow: TableSet,
    },
    /// Unknown (another lineage, or versions the journal does not span).
    All,
}

/// Rule changes a pipeline remembers between publications; past this a
/// change is remembered by its table only (a big bundle revalidates the
/// megaflows that consulted its tables, not rule by rule).
pub const JOURNAL_MAX: usize = 256;

static LINEAGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("rules", &self.len())
            .field("version", &self.version)
            .finish()
    }
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

#[inline]
fn id_hash(id: RuleId) -> u64 {
    let h = id.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

/// A few recently used values, most recent first, so that a run of equal
/// ones is kept once: moves the first that `is` picks to the front and
/// returns true; else makes room at the front (the oldest falls off, the
/// front is left `None` for the caller's new value) and returns false.
pub fn recent_first<T>(recent: &mut [Option<T>], is: impl Fn(&T) -> bool) -> bool {
    match recent.iter().position(|r| r.as_ref().is_some_and(&is)) {
        Some(i) => {
            recent[..=i].rotate_right(1);
            true
        }
        None => {
            recent.rotate_right(1);
            if let Some(front) = recent.first_mut() {
                *front = None;
            }
            false
        }
    }
}

/// Lookup order: priority descending, then first added.
fn lookup_order(a: &Arc<RuleEntry>, b: &Arc<RuleEntry>) -> std::cmp::Ordering {
    b.priority().cmp(&a.priority()).then(a.id.cmp(&b.id))
}

impl Pipeline {
    pub fn new() -> Self {
        Pipeline {
            lineage: LINEAGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            journal: Vec::new(),
            journal_base: 0,
            journal_overflow: TableSet::default(),
            tables: Vec::new(),
            by_id: CowTable::default(),
            next_id: 1,
            recent_actions: Default::default(),
            version: 0,
            in_batch: false,
            batch_changed: false,
            groups: Arc::default(),
            group_serials: Arc::default(),
            group_counts: [0; 4],
            next_group_serial: 1,
            meters: Arc::default(),
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Which pipeline this is: its lineage and version (two snapshots with
    /// one stamp hold the same rules).
    pub fn stamp(&self) -> (u64, u64) {
        (self.lineage, self.version)
    }

    fn record(&mut self, c: RuleChange) {
        if self.journal.len() < JOURNAL_MAX {
            self.journal.push(c);
        } else {
            self.journal_overflow.insert(c.table());
        }
    }

    /// A snapshot to hand to readers; the journal starts afresh from this
    /// version, so the next snapshot says what changed since this one.
    pub fn publish(&mut self) -> Pipeline {
        let snapshot = self.clone();
        self.journal.clear();
        self.journal_overflow = TableSet::default();
        self.journal_base = self.version;
        snapshot
    }

    /// What changed since `older` (a version of a pipeline, for example
    /// the one a revalidator last saw).
    pub fn changes_since(&self, older: &Pipeline) -> Changes<'_> {
        if older.lineage != self.lineage || older.version != self.journal_base {
            Changes::All
        } else if self.journal_overflow.is_empty() {
            Changes::Rules(&self.journal)
        } else {
            Changes::Tables {
                rules: &self.journal,
                overflow: self.journal_overflow,
            }
        }
    }

    fn changed(&mut self) {
        if self.in_batch {
            self.batch_changed = true;
        } else {
            self.version += 1;
        }
    }

    /// Applies several changes as one version.
    pub fn batch<R>(&mut self, f: impl FnOnce(&mut Pipeline) -> R) -> R {
        let outer = self.in_batch;
        self.in_batch = true;
        let r = f(self);
        self.in_batch = outer;
        if !outer && self.batch_changed {
            self.batch_changed = false;
            self.version += 1;
        }
        r
    }

    /// The classifier of a table (`None` for a table that never held a
    /// rule, or does not exist).
    pub fn classifier(&self, table: u8) -> Option<&Classifier> {
        self.tables.get(table as usize).map(|c| &**c)
    }

    /// The rules of a table in lookup order (empty for a table that does
    /// not exist). Sorts: for dumps, not for the packet path.
    pub fn table(&self, table: u8) -> Vec<&Arc<RuleEntry>> {
        let mut v: Vec<&Arc<RuleEntry>> = self
            .classifier(table)
            .map(|c| c.iter().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| lookup_order(a, b));
        v
    }

    /// Every rule, table by table, in lookup order.
    pub fn rules(&self) -> impl Iterator<Item = &Arc<RuleEntry>> {
        (0..N_TABLES as u16)
            .filter(|t| self.classifier(*t as u8).is_some_and(|c| !c.is_empty()))
            .flat_map(|t| self.table(t as u8))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every rule, in no particular order (no sorting, unlike `rules`).
    pub fn entries(&self) -> impl Iterator<Item = &Arc<RuleEntry>> {
        self.by_id.iter()
    }

    /// Room for `additional` more rules in the id index (a bundle's adds,
    /// before they start).
    pub fn reserve(&mut self, additional: usize) {
        self.by_id.reserve(additional, |e| id_hash(e.id));
    }

    /// Every rule's id, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = RuleId> + '_ {
        self.entries().map(|e| e.id)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: RuleId) -> Option<&Arc<RuleEntry>> {
        self.by_id.find(id_hash(id), |e| e.id == id)
    }

    /// Adds a rule; one with the same table, priority and match is replaced
    /// (as `ovs-ofctl add-flow` does).
    pub fn add(&mut self, rule: Rule) -> Added {
        let replaced = self.same_rule(&rule);
        self.add_replacing(rule, replaced)
    }

    /// The rule an add of `rule` would replace: same table, priority and
    /// (masked) match.
    pub fn same_rule(&self, rule: &Rule) -> Option<RuleId> {
        let m = &rule.r#match;
        let masked = Match {
            value: m.value.masked(&m.mask),
            mask: m.mask,
        };
        self.classifier(rule.table)?
            .find_exact(&masked, rule.priority)
            .map(|e| e.id)
    }

    /// [`Pipeline::add`] for a caller that already asked
    /// [`Pipeline::same_rule`] on this version (an add's checks probe the
    /// classifier once, not twice). A `Some` answer is checked against the
    /// rule it names (one id lookup), so a stale one never removes another
    /// rule.
    pub fn add_replacing(&mut self, mut rule: Rule, replaced: Option<RuleId>) -> Added {
        rule.r#match.value = rule.r#match.value.masked(&rule.r#match.mask);
        let replaced = match replaced {
            Some(old)
                if !self.get(old).is_some_and(|e| {
                    e.table() == rule.table
                        && e.priority() == rule.priority
                        && e.r#match() == rule.r#match
                }) =>
            {
                self.same_rule(&rule)
            }
            r => r,
        };
        let id = RuleId(self.next_id);
        self.next_id += 1;
        let table = rule.table as usize;
        if let Some(old) = replaced {
            self.remove_one(old);
        }
        self.record(RuleChange::Added {
            table: rule.table,
            r#match: rule.r#match,
        });
        let actions = self.shared_actions(std::mem::take(&mut rule.actions));
        if self.tables.len() <= table {
            self.tables.resize_with(table + 1, Default::default);
        }
        let entry = Arc::make_mut(&mut self.tables[table]).insert(id, &rule, actions);
        self.by_id.insert(id_hash(id), entry, |e| id_hash(e.id));
        self.changed();
        Added { id, replaced }
    }

    /// `actions` as a shared list: a recently added equal one if any.
    fn shared_actions(&mut self, actions: Vec<OfAction>) -> Arc<Vec<OfAction>> {
        let recent = &mut self.recent_actions;
        if !recent_first(recent, |a| **a == actions) {
            recent[0] = Some(Arc::new(actions));
        }
        recent[0].clone().unwrap_or_default()
    }

    fn remove_one(&mut self, id: RuleId) -> bool {
        let Some(entry) = self.by_id.remove(id_hash(id), |e| e.id == id) else {
            return false;
        };
        let table = entry.table();
        Arc::make_mut(&mut self.tables[table as usize]).remove(&entry);
        self.record(RuleChange::Removed { table, id });
        true
    }

    fn selected(&self, table: Option<u8>, sel: &Match, strict: Option<u16>) -> Vec<RuleId> {
        let tables = match table {
            Some(t) => t as usize..t as usize + 1,
            None => 0..N_TABLES,
        };
        let mut ids: Vec<RuleId> = Vec::new();
        for t in tables {
            let Some(cls) = self.tables.get(t) else {
                continue;
            };
            match strict {
                Some(prio) => ids.extend(cls.find_exact(sel, prio).map(|e| e.id)),
                None => ids.extend(
                    cls.select(&sel.mask, |e| e.loosely_selected_by(sel))
                        .map(|e| e.id),
                ),
            }
        }
        ids.sort_unstable();
        ids
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
        let mut sel = *sel;
        sel.value = sel.value.masked(&sel.mask);
        let ids = self.selected(Some(table), &sel, Some(priority));
        self.remove_ids(&ids);
        ids
    }

    /// Deletes rules by id.
    pub fn remove_ids(&mut self, ids: &[RuleId]) {
        let mut any = false;
        for &id in ids {
            any |= self.remove_one(id);
        }
        if any {
            self.changed();
        }
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
        let mut sel = *sel;
        sel.value = sel.value.masked(&sel.mask);
        let ids = self.selected(table, &sel, strict);
        if ids.is_empty() {
            return ids;
        }
        let actions = self.shared_actions(actions.to_vec());
        for &id in &ids {
            let h = id_hash(id);
            let Some(slot) = self.by_id.find_mut(h, |e| e.id == id) else {
                continue;
            };
            let mut entry = RuleEntry::clone(slot);
            entry.actions = Arc::clone(&actions);
            let entry = Arc::new(entry);
            *slot = Arc::clone(&entry);
            let table = entry.table();
            Arc::make_mut(&mut self.tables[table as usize]).replace(entry);
            self.record(RuleChange::Modified { table, id });
        }
        self.changed();
        ids
    }

    /// Group `id`, if the bridge has it.
    #[inline]
    pub fn group(&self, id: u32) -> Option<&Arc<Group>> {
        self.groups.get(&id)
    }

    /// Every group, by id.
    pub fn groups(&self) -> impl Iterator<Item = &Arc<Group>> {
        self.groups.values()
    }

    /// True while a statistics credit id ([`group::credit`]) belongs to an
    /// installed group (its counts are still reported).
    pub fn credits_live_group(&self, id: RuleId) -> bool {
        group::credit::parse(id).is_some_and(|(serial, _)| self.group_serials.contains(&serial))
    }

    /// Puts `g` in the table (new or in place of the group with its id).
    fn put_group(&mut self, g: Group) {
        let serials = Arc::make_mut(&mut self.group_serials);
        serials.insert(g.serial);
        self.group_counts[g.kind as usize] += 1;
        if let Some(old) = Arc::make_mut(&mut self.groups).insert(g.id, Arc::new(g)) {
            serials.remove(&old.serial);
            self.group_counts[old.kind as usize] -= 1;
        }
    }

    /// OFPGC_ADD.
    pub fn group_add(&mut self, g: Group) -> Result<(), GroupError> {
        if self.groups.contains_key(&g.id) {
            return Err(GroupError::Exists(g.id));
        }
        // No rule names a group before it exists (every way in refuses one
        // that does): only the rules running a group that chains to this
        // one translate differently now.
        self.install_group(g, false)
    }

    /// OFPGC_MODIFY: the group's type and buckets are replaced (its
    /// statistics start again, as in OVS).
    pub fn group_modify(&mut self, g: Group) -> Result<(), GroupError> {
        if !self.groups.contains_key(&g.id) {
            return Err(GroupError::Unknown(g.id));
        }
        self.install_group(g, true)
    }

    /// Installs `g` under a new serial, new or in place of the group with
    /// its id; `named`: rules may name it (see `touch_group_users`).
    fn install_group(&mut self, mut g: Group, named: bool) -> Result<(), GroupError> {
        let replaced_kind = self.groups.get(&g.id).map(|o| o.kind);
        let of_kind = self.group_counts[g.kind as usize];
        if replaced_kind != Some(g.kind) && of_kind >= group::MAX_GROUPS {
            return Err(GroupError::OutOfGroups(g.kind.name()));
        }
        g.serial = self.next_group_serial;
        self.next_group_serial += 1;
        let id = g.id;
        self.put_group(g);
        self.touch_group_users(id, named);
        self.changed();
        Ok(())
    }

    /// OFPGC_DELETE of group `id` ([`group::GROUP_ALL`]: every group), with
    /// the rules that name it, as in OVS. A group that does not exist is no
    /// error. Returns the ids of the rules deleted.
    pub fn group_delete(&mut self, id: u32) -> Vec<RuleId> {
        let ids: Vec<u32> = if id == group::GROUP_ALL {
            self.groups.keys().copied().collect()
        } else if self.groups.contains_key(&id) {
            vec![id]
        } else {
            return Vec::new();
        };
        let users = self.rules_naming(|a| group::groups_in(a).any(|g| ids.contains(&g)));
        for g in &ids {
            self.touch_group_users(*g, true);
        }
        let groups = Arc::make_mut(&mut self.groups);
        let serials = Arc::make_mut(&mut self.group_serials);
        for g in &ids {
            if let Some(old) = groups.remove(g) {
                serials.remove(&old.serial);
                self.group_counts[old.kind as usize] -= 1;
            }
        }
        self.remove_ids(&users);
        self.changed();
        users
    }

    /// The ids, sorted, of the rules whose actions `names` holds for (a
    /// scan of every rule: group and meter deletes).
    fn rules_naming(&self, names: impl Fn(&[OfAction]) -> bool) -> Vec<RuleId> {
        let mut ids: Vec<RuleId> = self
            .entries()
            .filter(|e| names(e.actions()))
            .map(|e| e.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Meter `id`, if the bridge has it.
    #[inline]
    pub fn meter(&self, id: u32) -> Option<&Arc<Meter>> {
        self.meters.get(&id)
    }

    /// Every meter, by id.
    pub fn meters(&self) -> impl Iterator<Item = &Arc<Meter>> {
        self.meters.values()
    }

    /// OFPMC13_ADD: a meter with full buckets, added at `now`.
    pub fn meter_add(&mut self, config: MeterConfig, now: Instant) -> Result<(), MeterError> {
        config.check()?;
        if self.meters.contains_key(&config.id) {
            return Err(MeterError::Exists(config.id));
        }
        if self.meters.len() >= meter::MAX_METERS {
            return Err(MeterError::OutOfMeters);
        }
        let m = Meter::new(config, now)?;
        Arc::make_mut(&mut self.meters).insert(m.config.id, Arc::new(m));
        self.changed();
        Ok(())
    }

    /// OFPMC13_MODIFY: the meter starts again from full buckets and zero
    /// counts, as OVS's userspace datapath replaces it. Translations do not
    /// depend on a meter's configuration: no rule is revalidated.
    pub fn meter_modify(&mut self, config: MeterConfig) -> Result<(), MeterError> {
        config.check()?;
        let Some(old) = self.meters.get(&config.id) else {
            return Err(MeterError::Unknown(config.id));
        };
        let m = Meter::new(config, old.created)?;
        Arc::make_mut(&mut self.meters).insert(m.config.id, Arc::new(m));
        self.changed();
        Ok(())
    }

    /// OFPMC13_DELETE of meter `id` ([`meter::METER_ALL`]: every meter),
    /// with the rules that name it, as in OVS. A meter that does not exist
    /// is no error. Returns the ids of the rules deleted.
    pub fn meter_delete(&mut self, id: u32) -> Vec<RuleId> {
        let ids: Vec<u32> = if id == meter::METER_ALL {
            self.meters.keys().copied().collect()
        } else if self.meters.contains_key(&id) {
            vec![id]
        } else {
            return Vec::new();
        };
        let users = self.rules_naming(|a| meter::meters_in(a).any(|m| ids.contains(&m)));
        let meters = Arc::make_mut(&mut self.meters);
        for m in &ids {
            meters.remove(m);
        }
        self.remove_ids(&users);
        self.changed();
        users
    }

    /// Records as modified every rule whose translation can run group `id`:
    /// the rules naming it or a group that runs or watches it (chains
    /// followed to their end). `named`: rules may name `id` itself. The
    /// rules are found by a scan of every rule (O(rules) per group mod that
    /// needs it).
    fn touch_group_users(&mut self, id: u32, named: bool) {
        let mut affected = vec![id];
        let mut i = 0;
        while i < affected.len() {
            let g = affected[i];
            for o in self.groups.values() {
                if !affected.contains(&o.id) && o.references().any(|r| r == g) {
                    affected.push(o.id);
                }
            }
            i += 1;
        }
        if !named {
            affected.retain(|g| *g != id);
            if affected.is_empty() {
                return;
            }
        }
        let users: Vec<(u8, RuleId)> = self
            .entries()
            .filter(|e| group::groups_in(e.actions()).any(|g| affected.contains(&g)))
            .map(|e| (e.table(), e.id))
            .collect();
        for (table, id) in users {
            self.record(RuleChange::Modified { table, id });
        }
    }

    /// Classifier lookup in one table: the best matching rule, with every
    /// key bit the answer depends on ORed into `wc`.
    #[inline]
    pub fn lookup(&self, table: u8, key: &FlowKey, wc: &mut FlowKey) -> Option<&Arc<RuleEntry>> {
        self.lookup_hinted(table, key, wc, None)
    }

    /// [`Pipeline::lookup`] for revalidation: `hint` is the old megaflow's
    /// mask, whose bits a trie proof may reuse (so an unchanged decision
    /// keeps the mask inside the old one).
    #[inline]
    pub fn lookup_hinted(
        &self,
        table: u8,
        key: &FlowKey,
        wc: &mut FlowKey,
        hint: Option<&FlowKey>,
    ) -> Option<&Arc<RuleEntry>> {
        self.tables.get(table as usize)?.lookup(key, wc, hint)
    }

    /// Approximate heap bytes, part by part.
    pub fn heap_bytes(&self) -> HeapBytes {
        let rules: f64 = self.by_id.iter().map(|e| e.heap_bytes()).sum();
        let mut b = HeapBytes {
            rules: rules as usize,
            id_index: self.by_id.heap_bytes(),
            subtables: 0,
            tries: 0,
        };
        for t in &self.tables {
            let (subtables, tries) = t.index_heap_bytes();
            b.subtables += subtables;
            b.tries += tries;
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Field;

    #[test]
    fn rule_lists_of_up_to_two_stay_inline_and_compare_by_content() {
        let ids: Vec<RuleId> = (1..=3).map(RuleId).collect();
        for n in 0..=3 {
            let list = RuleIds::from(&ids[..n]);
            assert_eq!(*list, ids[..n]);
            assert_eq!(matches!(list, RuleIds::Inline { .. }), n <= 2);
            assert_eq!(list, RuleIds::Shared(Arc::from(&ids[..n])));
        }
        assert_ne!(RuleIds::from(&ids[..1]), RuleIds::from(&ids[..2]));
        assert!(std::mem::size_of::<RuleIds>() <= 24);
    }

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
    fn a_stale_replacement_answer_removes_nothing_else() {
        let mut p = Pipeline::new();
        let a = p.add(rule(0, 5, Some((1, u32::MAX)))).id;
        let b = p.add(rule(0, 6, Some((2, u32::MAX)))).id;
        // `a` named as the rule an add of `b`'s twin replaces: wrong, so the
        // add finds the right one itself.
        let twin = p.add_replacing(rule(0, 6, Some((2, u32::MAX))), Some(a));
        assert_eq!(twin.replaced, Some(b));
        assert!(p.get(a).is_some());
        assert_eq!(p.len(), 2);
        // A new rule named as replacing `a`: nothing is replaced.
        let c = p.add_replacing(rule(0, 7, Some((3, u32::MAX))), Some(a));
        assert_eq!(c.replaced, None);
        assert_eq!(p.len(), 3);
        // The right answer is taken as it is.
        let a2 = p.add_replacing(rule(0, 5, Some((1, u32::MAX))), Some(a));
        assert_eq!(a2.replaced, Some(a));
        assert_eq!(p.len(), 3);
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
            p.get(id).map(|e| e.actions().to_vec()),
            Some(vec![OfAction::Normal])
        );
        assert!(p.version() > v);
    }

    fn with(fields: &[(Field, u128, u128)], priority: u16) -> Rule {
        let mut r = rule(0, priority, None);
        for &(f, v, m) in fields {
            r.r#match.set_masked(f, v, m);
        }
        r
    }

    #[test]
    fn staged_miss_leaves_later_stages_wildcarded() {
        let mut p = Pipeline::new();
        p.add(with(
            &[
                (Field::InPort, 1, u32::MAX as u128),
                (Field::DlType, 0x0800, 0xffff),
                (Field::NwProto, 6, 0xff),
                (Field::TpDst, 80, 0xffff),
            ],
            10,
        ));
        let mut k = ip(0x0a00_0001);
        k.set(Field::InPort, 2);
        k.set(Field::NwProto, 6);
        k.set(Field::TpDst, 80);
        let mut wc = FlowKey::ZERO;
        assert!(p.lookup(0, &k, &mut wc).is_none());
        // Only the metadata stage was consulted.
        assert_eq!(wc.get(Field::InPort), u32::MAX as u128);
        assert_eq!(wc.get(Field::DlType), 0);
        assert_eq!(wc.get(Field::NwProto), 0);
        assert_eq!(wc.get(Field::TpDst), 0);
    }

    #[test]
    fn trie_proves_a_miss_with_few_bits() {
        let mut p = Pipeline::new();
        let mut wide = rule(0, 1, None);
        wide.r#match.set_exact(Field::DlType, 0x0800);
        let wide = p.add(wide).id;
        for i in 0..50u32 {
            p.add(rule(
                0,
                10 + i as u16,
                Some((0x0a00_0000 | (i << 8), 0xffff_ff00)),
            ));
        }
        // 192.168.1.1 leaves the trie at its first bit (10/8 starts with 0).
        let mut wc = FlowKey::ZERO;
        assert_eq!(
            p.lookup(0, &ip(0xc0a8_0101), &mut wc).map(|e| e.id),
            Some(wide)
        );
        assert_eq!(wc.get(Field::NwSrc), 0x8000_0000);
        // 10.0.99.1 shares 10.0.0.0/18 with the rules: more bits, not all 32.
        let mut wc = FlowKey::ZERO;
        assert_eq!(
            p.lookup(0, &ip(0x0a00_6301), &mut wc).map(|e| e.id),
            Some(wide)
        );
        let bits = wc.get(Field::NwSrc).count_ones();
        assert!((17..24).contains(&bits), "{bits} bits");
        // A hit un-wildcards the rule's mask.
        let mut wc = FlowKey::ZERO;
        assert!(p.lookup(0, &ip(0x0a00_0301), &mut wc).is_some());
        assert_eq!(wc.get(Field::NwSrc), 0xffff_ff00);
    }

    #[test]
    fn entries_give_back_their_rule_whatever_words_the_mask_covers() {
        // Two words (inline) and seven (on the heap: past the inline four).
        let narrow = with(&[(Field::InPort, 3, 0xffff_ffff)], 9);
        let wide = with(
            &[
                (Field::DlType, 0x86dd, 0xffff),
                (Field::DlDst, 0x0200_0000_0001, 0xffff_ffff_ffff),
                (Field::NwProto, 6, 0xff),
                (Field::TpDst, 443, 0xffff),
                (Field::Ipv6Src, 0x2001_0db8 << 96, u128::MAX << 64),
                (Field::Ipv6Dst, 7, u128::MAX),
                (Field::Metadata, 0x55, 0xff),
            ],
            9,
        );
        let mut p = Pipeline::new();
        for r in [&narrow, &wide] {
            let id = p.add(r.clone()).id;
            let e = p.get(id).map(|e| e.to_rule());
            assert_eq!(e.as_ref(), Some(r));
            let mut key = r.r#match.value;
            let mut wc = FlowKey::ZERO;
            assert_eq!(p.lookup(0, &key, &mut wc).map(|e| e.id), Some(id));
            // Differing in the last word the mask covers: no match.
            let last = covered_words(&r.r#match.mask).last().unwrap_or(0);
            key.words[last] ^=
                r.r#match.mask.words[last] & r.r#match.mask.words[last].wrapping_neg();
            assert!(!p.get(id).is_some_and(|e| e.matches(&key)));
            let mut wc = FlowKey::ZERO;
            assert_ne!(p.lookup(0, &key, &mut wc).map(|e| e.id), Some(id));
        }
    }

    #[test]
    fn equal_action_lists_are_shared() {
        let mut p = Pipeline::new();
        let ids: Vec<RuleId> = [1u32, 2, 1, 3, 1]
            .iter()
            .enumerate()
            .map(|(i, &port)| {
                let mut r = rule(0, 5, Some((i as u32, u32::MAX)));
                r.actions = vec![OfAction::Output(port)];
                p.add(r).id
            })
            .collect();
        let list = |p: &Pipeline, i: usize| p.get(ids[i]).map(|e| e.actions().as_ptr());
        assert_eq!(list(&p, 0), list(&p, 2));
        assert_eq!(list(&p, 0), list(&p, 4));
        assert_ne!(list(&p, 0), list(&p, 1));
        // The new list is rule 1's (added recently).
        let output_2 = list(&p, 1);
        let changed = p.modify_actions(None, &Match::ANY, None, &[OfAction::Output(2)]);
        assert_eq!(changed.len(), 5);
        assert!((0..5).all(|i| list(&p, i) == output_2));
        assert_eq!(
            p.get(ids[0]).map(|e| e.actions().to_vec()),
            Some(vec![OfAction::Output(2)])
        );
    }

    #[test]
    fn snapshot_sees_one_version_and_a_batch_is_one_version() {
        let mut p = Pipeline::new();
        let a = p.add(rule(0, 5, Some((0x0a00_0000, 0xff00_0000)))).id;
        let snapshot = p.clone();
        let v = p.version();
        let b = p.batch(|p| {
            p.remove_ids(&[a]);
            let b = p.add(rule(0, 7, Some((0x0a00_0000, 0xffff_0000)))).id;
            p.modify_actions(None, &Match::ANY, None, &[OfAction::Normal]);
            b
        });
        assert_eq!(p.version(), v + 1);
        // The snapshot still has the old rule, its actions and no new one.
        let mut wc = FlowKey::ZERO;
        let old = snapshot.lookup(0, &ip(0x0a00_0001), &mut wc);
        assert_eq!(old.map(|e| e.id), Some(a));
        assert_eq!(
            old.map(|e| e.actions().to_vec()),
            Some(vec![OfAction::Output(5)])
        );
        assert!(snapshot.get(b).is_none());
        let mut wc = FlowKey::ZERO;
        let new = p.lookup(0, &ip(0x0a00_0001), &mut wc);
        assert_eq!(new.map(|e| e.id), Some(b));
        assert_eq!(
            new.map(|e| e.actions().to_vec()),
            Some(vec![OfAction::Normal])
        );
        assert!(p.get(a).is_none());
    }

    /// Add rate, lookup cost and bytes per rule with 100,000 rules:
    /// `cargo test --release -p fallback --lib -- --ignored --nocapture classifier_scale`.
    #[test]
    #[ignore]
    fn classifier_scale() {
        use std::time::Instant;
        let n = 100_000u32;
        let mk = |i: u32, masks: u32| {
            let mut r = rule(0, 1 + (i % 1000) as u16, None);
            r.r#match.set_exact(Field::DlType, 0x0800);
            r.r#match.set_exact(Field::NwProto, 17);
            let plen = 32 - (i % masks) * 4;
            r.r#match.set_masked(
                Field::NwDst,
                (0x0a00_0000 | i) as u128 & !((1u128 << (32 - plen)) - 1),
                (u32::MAX << (32 - plen)) as u128,
            );
            r.r#match.set_exact(Field::TpDst, (i % 50_000) as u128);
            r
        };
        for masks in [1u32, 8] {
            let rules: Vec<Rule> = (0..n).map(|i| mk(i, masks)).collect();
            let mut p = Pipeline::new();
            let t = Instant::now();
            for r in rules {
                p.add(r);
            }
            let add_s = t.elapsed().as_secs_f64();
            let probes: Vec<FlowKey> = (0..200_000u32)
                .map(|i| {
                    let mut k = ip(0x0a0b_0c0d);
                    k.set(Field::NwProto, 17);
                    k.set(
                        Field::NwDst,
                        (0x0a00_0000 | (i.wrapping_mul(2_654_435_761) % (2 * n))) as u128,
                    );
                    k.set(Field::TpDst, (i % 60_000) as u128);
                    k
                })
                .collect();
            let t = Instant::now();
            let mut hits = 0usize;
            for k in &probes {
                let mut wc = FlowKey::ZERO;
                hits += p.lookup(0, k, &mut wc).is_some() as usize;
            }
            let lookup_ns = t.elapsed().as_nanos() as f64 / probes.len() as f64;
            // The whole upcall translation, and the linear scan it replaced.
            let macs = crate::ofproto::mac::MacTable::default();
            let bridge = crate::ofproto::xlate::Bridge {
                pipeline: &p,
                macs: &macs,
                ports: &[1, 2, 3],
                widen_l4: None,
            };
            let t = Instant::now();
            for k in &probes {
                std::hint::black_box(crate::ofproto::xlate::xlate(bridge, k));
            }
            let xlate_ns = t.elapsed().as_nanos() as f64 / probes.len() as f64;
            let entries: Vec<&Arc<RuleEntry>> = p.table(0);
            let t = Instant::now();
            for k in &probes[..2000] {
                let m = entries.iter().find(|e| e.matches(k));
                std::hint::black_box(m);
            }
            let linear_ns = t.elapsed().as_nanos() as f64 / 2000.0;
            let t = Instant::now();
            let snap = p.clone();
            let clone_us = t.elapsed().as_secs_f64() * 1e6;
            let t = Instant::now();
            p.add(mk(n + 1, masks));
            let first_change_us = t.elapsed().as_secs_f64() * 1e6;
            drop(snap);
            let b = p.heap_bytes();
            let per = |x: usize| x / p.len();
            println!(
                "{masks} masks, {n} rules: {:.0} adds/s, lookup {:.0} ns ({hits} hits of {}), \
                 xlate {xlate_ns:.0} ns, linear scan {linear_ns:.0} ns, {} subtables, \
                 snapshot {clone_us:.1} us, first change after it {first_change_us:.1} us, \
                 ~{} B/rule (rule entries {}, id index {}, subtables {}, tries {})",
                n as f64 / add_s,
                lookup_ns,
                probes.len(),
                p.classifier(0).map_or(0, |c| c.n_subtables()),
                per(b.total()),
                per(b.rules),
                per(b.id_index),
                per(b.subtables),
                per(b.tries),
            );
        }
    }
}
