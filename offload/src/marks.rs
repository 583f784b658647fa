//! Marks: the ids a NIC rule's MARK action stamps on packets, and how a PMD
//! turns one back into its own copy of the megaflow (DESIGN §1, §2 `marks`).
//!
//! - [`MarkPool`]: ids `1..=max` (0 means "no mark" to DPDK and is never
//!   handed out), with a quarantine between release and reuse.
//! - [`MarkRegistry`]: one mark per offloaded (ingress port, ufid), both
//!   ways round, plus the quiescence bookkeeping that ends quarantines.
//! - [`PmdRefs`]: the PMDs sharing one megaflow (each with its own copy);
//!   the NIC rule and the mark go when the last copy goes.
//! - [`MarkTable`]: a PMD's fast-path map mark → [`FlowHandle`].
//!
//! Quarantine model: the registry keeps a global [`Epoch`]. Every unpublish
//! is tagged with the current epoch, which then advances. Each PMD reports,
//! at the top of its poll loop, the epoch it read *before* applying its
//! pending updates. A mark unpublished at epoch E is free again once every
//! PMD has reported an epoch > E: from then on no PMD's table can still map
//! it to the old megaflow, so a new rule carrying it cannot be executed
//! with the old megaflow's actions.

use std::collections::VecDeque;
use std::fmt;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use fallback::cache::FlowHandle;
use fallback::growing::ChunkedVec;
use fallback::megaflow::Ufid;
use hashbrown::HashMap;
use thiserror::Error;

use crate::device::Capabilities;

/// An OpenFlow port number: the megaflow's `in_port`, the port whose NIC
/// gets the rule.
pub type PortId = u32;

/// A MARK id: never 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mark(NonZeroU32);

impl Mark {
    /// `None` for 0 ("no mark").
    pub const fn new(id: u32) -> Option<Mark> {
        match NonZeroU32::new(id) {
            Some(n) => Some(Mark(n)),
            None => None,
        }
    }

    #[inline]
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mark:{}", self.0)
    }
}

/// A PMD thread's id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PmdId(pub u32);

impl fmt::Display for PmdId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pmd{}", self.0)
    }
}

/// The quiescence clock (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Epoch(pub u64);

/// One NIC rule and one mark exist per offload key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct OffloadKey {
    pub port: PortId,
    pub ufid: Ufid,
}

/// A change to one PMD's [`MarkTable`], applied at the top of its poll loop.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PmdUpdate {
    /// Packets carrying `mark` belong to the PMD's megaflow `handle`.
    Publish { mark: Mark, handle: FlowHandle },
    /// Packets carrying `mark` take the software path.
    Unpublish { mark: Mark },
}

/// Mark bookkeeping errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MarkError {
    #[error(
        "all {max} marks are in use or quarantined; the megaflow stays in software \
         (raise the offload max-marks setting, or wait until deleted flows' marks leave quarantine)"
    )]
    Exhausted { max: u32 },
    #[error("max marks {max} is out of range: use 1..={}", Capabilities::MAX_MARK)]
    BadMax { max: u32 },
    #[error(
        "mark shard {shard} of {shards} does not exist for {max} marks: use fewer offload \
         threads than marks, and a shard below the thread count"
    )]
    BadShard { shard: u32, shards: u32, max: u32 },
    #[error("{mark:?} is not in use and cannot be released; this is a flowmark bug, report it")]
    NotInUse { mark: Mark },
    #[error(
        "{mark:?} is not held by the megaflow releasing it and stays with its owner; this is a \
         flowmark bug, report it"
    )]
    NotOwner { mark: Mark },
}

/// Where a mark id is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MarkStatus {
    Free,
    InUse,
    /// Released, waiting for every PMD to pass a quiescent point.
    Quarantined,
}

#[derive(Clone, Copy, Debug)]
struct Quarantined {
    mark: Mark,
    unpublished: Epoch,
    since: Instant,
}

/// Mark ids `1..=max` with quarantine before reuse.
///
/// Never-used ids are handed out lazily (`next_fresh`), so the per-mark
/// status vector and every PMD's [`MarkTable`] only grow as far as the
/// highest id actually used. Freed ids are reused first, oldest first.
///
/// With offload shards ([`MarkPool::sharded`]) the ids are dealt out
/// round-robin: shard `s` of `n` owns `s + 1`, `s + 1 + n`, ... so that no
/// two shards can ever hand out the same mark, and every PMD's table still
/// grows only as far as the marks in use.
#[derive(Debug)]
pub struct MarkPool {
    max: u32,
    /// This pool's ids are `shard + 1 + k * shards` up to `max`.
    shard: u32,
    shards: u32,
    /// How many ids this pool owns.
    capacity: u32,
    /// The next never-used id, as an index `1..=capacity` into this pool's ids.
    next_fresh: u32,
    free: VecDeque<Mark>,
    /// In release order, so epochs and times are non-decreasing.
    quarantine: VecDeque<Quarantined>,
    /// Indexed by the pool's own index; indexes at or above `next_fresh`
    /// are implicitly free.
    status: Vec<MarkStatus>,
    in_use: usize,
}

impl MarkPool {
    pub fn new(max: u32) -> Result<MarkPool, MarkError> {
        MarkPool::sharded(max, 0, 1)
    }

    /// Shard `shard` of `shards` of the ids `1..=max`.
    pub fn sharded(max: u32, shard: u32, shards: u32) -> Result<MarkPool, MarkError> {
        if max == 0 || max > Capabilities::MAX_MARK {
            return Err(MarkError::BadMax { max });
        }
        if shards == 0 || shard >= shards || shard >= max {
            return Err(MarkError::BadShard { shard, shards, max });
        }
        Ok(MarkPool {
            max,
            shard,
            shards,
            capacity: (max - shard - 1) / shards + 1,
            next_fresh: 1,
            free: VecDeque::new(),
            quarantine: VecDeque::new(),
            status: vec![MarkStatus::Free],
            in_use: 0,
        })
    }

    /// The highest mark id of the whole range (every shard's).
    pub fn max(&self) -> u32 {
        self.max
    }

    /// How many ids this pool owns (`max` unsharded).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The pool index of an id this pool owns.
    pub(crate) fn index(&self, mark: Mark) -> Option<usize> {
        let k = mark.get() - 1;
        (k % self.shards == self.shard).then(|| (k / self.shards) as usize + 1)
    }

    /// The mark at pool index `i` ([`MarkPool::index`] the other way round).
    fn mark_at(&self, i: usize) -> Option<Mark> {
        let k = u32::try_from(i.checked_sub(1)?).ok()?;
        Mark::new(
            k.checked_mul(self.shards)?
                .checked_add(self.shard)?
                .checked_add(1)?,
        )
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    pub fn status(&self, mark: Mark) -> MarkStatus {
        self.index(mark)
            .and_then(|i| self.status.get(i))
            .copied()
            .unwrap_or(MarkStatus::Free)
    }

    /// A free mark, or `Exhausted` (call [`MarkPool::reclaim`] first).
    pub fn alloc(&mut self) -> Result<Mark, MarkError> {
        let mark = match self.free.pop_front() {
            Some(m) => m,
            None if self.next_fresh <= self.capacity => {
                let id = (self.next_fresh - 1) * self.shards + self.shard + 1;
                let m = Mark::new(id).ok_or(MarkError::Exhausted { max: self.capacity })?;
                self.next_fresh += 1;
                self.status.push(MarkStatus::Free);
                m
            }
            None => return Err(MarkError::Exhausted { max: self.capacity }),
        };
        self.set_status(mark, MarkStatus::InUse);
        self.in_use += 1;
        Ok(mark)
    }

    /// Frees a mark that was never published to any PMD: no table can hold
    /// it, so it is reusable at once.
    pub fn release_now(&mut self, mark: Mark) -> Result<(), MarkError> {
        self.take_in_use(mark)?;
        self.set_status(mark, MarkStatus::Free);
        self.free.push_back(mark);
        Ok(())
    }

    /// Quarantines a mark whose unpublish was sent at `unpublished`.
    pub fn quarantine(
        &mut self,
        mark: Mark,
        unpublished: Epoch,
        now: Instant,
    ) -> Result<(), MarkError> {
        self.take_in_use(mark)?;
        self.set_status(mark, MarkStatus::Quarantined);
        self.quarantine.push_back(Quarantined {
            mark,
            unpublished,
            since: now,
        });
        Ok(())
    }

    /// Frees the quarantined marks unpublished before `quiescent_below` (every
    /// PMD has reported an epoch ≥ it) and quarantined for at least
    /// `min_age`. Returns how many were freed.
    pub fn reclaim(&mut self, quiescent_below: Epoch, now: Instant, min_age: Duration) -> usize {
        let mut freed = 0;
        while let Some(q) = self.quarantine.front().copied() {
            let aged = now.saturating_duration_since(q.since) >= min_age;
            if q.unpublished >= quiescent_below || !aged {
                break;
            }
            self.quarantine.pop_front();
            self.set_status(q.mark, MarkStatus::Free);
            self.free.push_back(q.mark);
            freed += 1;
        }
        freed
    }

    fn take_in_use(&mut self, mark: Mark) -> Result<(), MarkError> {
        if self.status(mark) != MarkStatus::InUse {
            return Err(MarkError::NotInUse { mark });
        }
        self.in_use -= 1;
        Ok(())
    }

    fn set_status(&mut self, mark: Mark, status: MarkStatus) {
        if let Some(s) = self.index(mark).and_then(|i| self.status.get_mut(i)) {
            *s = status;
        }
    }
}

/// The owner of each mark, and the PMDs' quiescence. A key's own mark is
/// kept by the caller (the offload engine, in the key's entry), which gives
/// a key a mark only while it holds none: no key → mark map here, one hash
/// table fewer to fill per insert.
#[derive(Debug)]
pub struct MarkRegistry {
    pool: MarkPool,
    /// The owner of each of the pool's marks, by pool index (a mark's
    /// owner is a vector read; it grows as far as the pool's fresh ids, a
    /// chunk at a time: a `Vec` copied megabytes at each doubling).
    by_mark: ChunkedVec<Option<OffloadKey>>,
    epoch: Epoch,
    pmd_seen: HashMap<PmdId, Epoch>,
    /// Extra time a mark stays quarantined after every PMD has passed a
    /// quiescent point (packets the old rule marked may still sit in rx rings).
    min_quarantine: Duration,
}

impl MarkRegistry {
    pub fn new(max_marks: u32, min_quarantine: Duration) -> Result<MarkRegistry, MarkError> {
        MarkRegistry::sharded(max_marks, min_quarantine, 0, 1)
    }

    /// The registry of offload shard `shard` of `shards`: its marks are
    /// that shard's of `1..=max_marks` ([`MarkPool::sharded`]).
    pub fn sharded(
        max_marks: u32,
        min_quarantine: Duration,
        shard: u32,
        shards: u32,
    ) -> Result<MarkRegistry, MarkError> {
        Ok(MarkRegistry {
            pool: MarkPool::sharded(max_marks, shard, shards)?,
            by_mark: ChunkedVec::default(),
            epoch: Epoch(0),
            pmd_seen: HashMap::new(),
            min_quarantine,
        })
    }

    pub fn pool(&self) -> &MarkPool {
        &self.pool
    }

    /// Marks assigned to a key (not free, not quarantined).
    pub fn in_use(&self) -> usize {
        self.pool.in_use()
    }

    /// The current epoch: what PMDs must get past to end the quarantines
    /// started so far.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn owner(&self, mark: Mark) -> Option<OffloadKey> {
        let i = self.pool.index(mark)?;
        self.by_mark.get(i).copied().flatten()
    }

    /// Every mark in use with its owner, by mark.
    pub fn iter(&self) -> impl Iterator<Item = (OffloadKey, Mark)> + '_ {
        self.by_mark
            .iter()
            .enumerate()
            .filter_map(|(i, k)| Some(((*k)?, self.pool.mark_at(i)?)))
    }

    /// A mark for `key`, which holds none (the caller keeps each key's
    /// mark and asks again only once it is released). Reclaims quarantined
    /// marks when the pool has nothing free.
    pub fn assign(&mut self, key: OffloadKey, now: Instant) -> Result<Mark, MarkError> {
        let mark = match self.pool.alloc() {
            Ok(m) => m,
            Err(_) => {
                self.reclaim(now);
                self.pool.alloc()?
            }
        };
        if let Some(i) = self.pool.index(mark) {
            while self.by_mark.len() <= i {
                self.by_mark.push(None);
            }
            if let Some(owner) = self.by_mark.get_mut(i) {
                *owner = Some(key);
            }
        }
        Ok(mark)
    }

    /// Releases `key`'s mark, which was never published: free at once.
    pub fn unassign_unpublished(&mut self, key: &OffloadKey, mark: Mark) -> Result<(), MarkError> {
        self.unlink(key, mark)?;
        self.pool.release_now(mark)
    }

    /// Releases `key`'s mark after its unpublish went to every PMD that had
    /// it: quarantined at the current epoch, and the epoch advances.
    pub fn unassign(
        &mut self,
        key: &OffloadKey,
        mark: Mark,
        now: Instant,
    ) -> Result<(), MarkError> {
        self.unlink(key, mark)?;
        self.pool.quarantine(mark, self.epoch, now)?;
        self.epoch = Epoch(self.epoch.0 + 1);
        Ok(())
    }

    /// Forgets `mark`'s owner, which must be `key`.
    fn unlink(&mut self, key: &OffloadKey, mark: Mark) -> Result<(), MarkError> {
        match self.pool.index(mark).and_then(|i| self.by_mark.get_mut(i)) {
            Some(owner) if owner.as_ref() == Some(key) => {
                *owner = None;
                Ok(())
            }
            _ => Err(MarkError::NotOwner { mark }),
        }
    }

    /// A new PMD has no table entries yet, so it is past every unpublish.
    pub fn add_pmd(&mut self, pmd: PmdId) {
        self.pmd_seen.insert(pmd, self.epoch);
    }

    /// A stopped PMD no longer holds quarantines back.
    pub fn remove_pmd(&mut self, pmd: PmdId) {
        self.pmd_seen.remove(&pmd);
    }

    pub fn pmds(&self) -> impl Iterator<Item = PmdId> + '_ {
        self.pmd_seen.keys().copied()
    }

    /// `pmd` has applied every update sent before `seen` was current.
    /// Unknown PMDs are ignored; a report never moves backwards or past
    /// the current epoch.
    pub fn pmd_quiescent(&mut self, pmd: PmdId, seen: Epoch) {
        let current = self.epoch;
        if let Some(e) = self.pmd_seen.get_mut(&pmd) {
            *e = (*e).max(seen.min(current));
        }
    }

    /// The last epoch `pmd` reported.
    pub fn pmd_epoch(&self, pmd: PmdId) -> Option<Epoch> {
        self.pmd_seen.get(&pmd).copied()
    }

    /// Marks unpublished before this epoch have left every PMD's table.
    pub fn quiescent_below(&self) -> Epoch {
        self.pmd_seen.values().copied().min().unwrap_or(self.epoch)
    }

    /// Frees what quiescence (and `min_quarantine`) allows. Returns how
    /// many marks became free.
    pub fn reclaim(&mut self, now: Instant) -> usize {
        let below = self.quiescent_below();
        self.pool.reclaim(below, now, self.min_quarantine)
    }
}

/// The PMDs holding a copy of one megaflow, each with its own handle.
/// Usually one: the first is kept inline (no allocation per megaflow), the
/// others in a Vec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PmdRefs {
    first: Option<(PmdId, FlowHandle)>,
    rest: Vec<(PmdId, FlowHandle)>,
}

impl PmdRefs {
    /// Adds or updates `pmd`'s copy; returns its previous handle.
    pub fn insert(&mut self, pmd: PmdId, handle: FlowHandle) -> Option<FlowHandle> {
        if let Some((_, h)) = self.all_mut().find(|(p, _)| *p == pmd) {
            return Some(std::mem::replace(h, handle));
        }
        if self.first.is_none() {
            self.first = Some((pmd, handle));
        } else {
            self.rest.push((pmd, handle));
        }
        None
    }

    pub fn remove(&mut self, pmd: PmdId) -> Option<FlowHandle> {
        if let Some((p, h)) = self.first {
            if p == pmd {
                self.first = self.rest.pop();
                return Some(h);
            }
        }
        let i = self.rest.iter().position(|(p, _)| *p == pmd)?;
        Some(self.rest.swap_remove(i).1)
    }

    pub fn get(&self, pmd: PmdId) -> Option<FlowHandle> {
        self.iter().find(|(p, _)| *p == pmd).map(|(_, h)| h)
    }

    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = (PmdId, FlowHandle)> + '_ {
        self.first.iter().chain(self.rest.iter()).copied()
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut (PmdId, FlowHandle)> + '_ {
        self.first.iter_mut().chain(self.rest.iter_mut())
    }

    pub fn pmds(&self) -> impl Iterator<Item = PmdId> + '_ {
        self.iter().map(|(p, _)| p)
    }
}

/// A PMD's mark → megaflow map: a vector indexed by mark id, so a lookup
/// is one bounds check and one load (no hashing, no lock, no allocation).
/// It grows only when a mark is published, at the top of the poll loop.
#[derive(Clone, Debug, Default)]
pub struct MarkTable {
    slots: Vec<Option<FlowHandle>>,
    len: usize,
}

impl MarkTable {
    pub fn new() -> MarkTable {
        MarkTable::default()
    }

    /// The handle for a packet's raw mark (the mbuf's FDIR id). Unknown
    /// marks and 0 give `None`; the handle may still be stale, which
    /// `FlowCache::get` detects (generation check): both go to software.
    #[inline]
    pub fn lookup(&self, mark: u32) -> Option<FlowHandle> {
        match self.slots.get(mark as usize) {
            Some(slot) => *slot,
            None => None,
        }
    }

    pub fn publish(&mut self, mark: Mark, handle: FlowHandle) {
        let i = mark.get() as usize;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        if self.slots[i].replace(handle).is_none() {
            self.len += 1;
        }
    }

    pub fn unpublish(&mut self, mark: Mark) -> Option<FlowHandle> {
        let old = self.slots.get_mut(mark.get() as usize)?.take();
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub fn apply(&mut self, update: PmdUpdate) {
        match update {
            PmdUpdate::Publish { mark, handle } => self.publish(mark, handle),
            PmdUpdate::Unpublish { mark } => {
                self.unpublish(mark);
            }
        }
    }

    /// Published marks.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (Mark, FlowHandle)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((Mark::new(u32::try_from(i).ok()?)?, (*s)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fallback::cache::FlowCache;
    use fallback::key::Field;
    use fallback::megaflow::Megaflow;
    use fallback::FlowKey;

    #[test]
    fn pmd_refs_first_inline_then_the_rest() {
        let h = handles(3);
        let mut r = PmdRefs::default();
        assert!(r.is_empty());
        assert_eq!(r.insert(PmdId(1), h[0]), None);
        assert_eq!(r.insert(PmdId(2), h[1]), None);
        assert_eq!(r.insert(PmdId(3), h[2]), None);
        assert_eq!(r.insert(PmdId(2), h[0]), Some(h[1]));
        assert_eq!(r.len(), 3);
        assert_eq!(r.remove(PmdId(1)), Some(h[0]));
        assert_eq!(r.get(PmdId(1)), None);
        assert_eq!(r.get(PmdId(2)), Some(h[0]));
        assert_eq!(r.get(PmdId(3)), Some(h[2]));
        let mut pmds: Vec<u32> = r.pmds().map(|p| p.0).collect();
        pmds.sort_unstable();
        assert_eq!(pmds, [2, 3]);
        assert_eq!(r.remove(PmdId(1)), None);
        assert_eq!(r.remove(PmdId(3)), Some(h[2]));
        assert_eq!(r.remove(PmdId(2)), Some(h[0]));
        assert!(r.is_empty());
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn owner_follows_assign_and_unassign() {
        let t0 = Instant::now();
        let mut reg = MarkRegistry::sharded(10, Duration::ZERO, 1, 2).unwrap();
        let key = |u: u128| OffloadKey {
            port: 1,
            ufid: Ufid(u),
        };
        let a = reg.assign(key(1), t0).unwrap();
        let b = reg.assign(key(2), t0).unwrap();
        assert_eq!(reg.owner(a), Some(key(1)));
        assert_eq!(reg.owner(b), Some(key(2)));
        // A mark of the other shard has no owner here.
        assert_eq!(reg.owner(Mark::new(1).unwrap()), None);
        // Only the owner releases a mark.
        assert_eq!(
            reg.unassign(&key(2), a, t0),
            Err(MarkError::NotOwner { mark: a })
        );
        assert_eq!(reg.owner(a), Some(key(1)));
        assert_eq!(
            reg.iter().collect::<Vec<_>>(),
            vec![(key(1), a), (key(2), b)]
        );
        reg.unassign(&key(1), a, t0).unwrap();
        assert_eq!(reg.owner(a), None);
        assert_eq!(reg.owner(b), Some(key(2)));
        assert_eq!(reg.iter().collect::<Vec<_>>(), vec![(key(2), b)]);
        assert_eq!(
            reg.unassign(&key(1), a, t0),
            Err(MarkError::NotOwner { mark: a })
        );
    }

    fn handles(n: u32) -> Vec<FlowHandle> {
        let mut cache = FlowCache::new(1);
        (0..n)
            .map(|i| {
                let mut k = FlowKey::ZERO;
                k.set(Field::NwSrc, i as u128);
                let mut m = FlowKey::ZERO;
                m.set(Field::NwSrc, u32::MAX as u128);
                cache
                    .install(Megaflow::new(&k, &m, vec![], vec![]))
                    .expect("distinct matches: no ufid collision")
            })
            .collect()
    }

    fn key(port: PortId, u: u128) -> OffloadKey {
        OffloadKey {
            port,
            ufid: Ufid(u),
        }
    }

    #[test]
    fn mark_zero_does_not_exist() {
        assert_eq!(Mark::new(0), None);
        assert_eq!(Mark::new(7).map(Mark::get), Some(7));
    }

    #[test]
    fn pool_hands_out_1_to_max_then_exhausts() {
        let mut p = MarkPool::new(3).unwrap();
        let got: Vec<u32> = (0..3).map(|_| p.alloc().unwrap().get()).collect();
        assert_eq!(got, vec![1, 2, 3]);
        assert_eq!(p.alloc(), Err(MarkError::Exhausted { max: 3 }));
        assert_eq!(p.in_use(), 3);
        assert!(MarkPool::new(0).is_err());
        assert!(MarkPool::sharded(4, 2, 2).is_err());
        assert!(MarkPool::sharded(1, 1, 2).is_err());
        assert!(MarkPool::new(Capabilities::MAX_MARK + 1).is_err());
    }

    #[test]
    fn pool_release_now_reuses_and_refuses_double_release() {
        let mut p = MarkPool::new(2).unwrap();
        let a = p.alloc().unwrap();
        p.release_now(a).unwrap();
        assert_eq!(p.release_now(a), Err(MarkError::NotInUse { mark: a }));
        assert_eq!(p.status(a), MarkStatus::Free);
        // Fresh ids come after freed ones are used up.
        assert_eq!(p.alloc().unwrap(), a);
    }

    #[test]
    fn quarantine_holds_until_epoch_and_age() {
        let t0 = Instant::now();
        let mut p = MarkPool::new(1).unwrap();
        let a = p.alloc().unwrap();
        p.quarantine(a, Epoch(4), t0).unwrap();
        assert_eq!(p.status(a), MarkStatus::Quarantined);
        assert!(p.alloc().is_err());
        assert_eq!(p.reclaim(Epoch(4), t0, Duration::ZERO), 0);
        let later = t0 + Duration::from_millis(5);
        assert_eq!(p.reclaim(Epoch(5), later, Duration::from_millis(10)), 0);
        assert_eq!(p.reclaim(Epoch(5), later, Duration::from_millis(5)), 1);
        assert_eq!(p.alloc(), Ok(a));
    }

    #[test]
    fn registry_waits_for_every_pmd() {
        let t0 = Instant::now();
        let mut r = MarkRegistry::new(1, Duration::ZERO).unwrap();
        r.add_pmd(PmdId(0));
        r.add_pmd(PmdId(1));
        let k = key(1, 10);
        let m = r.assign(k, t0).unwrap();
        assert_eq!(r.owner(m), Some(k));
        r.unassign(&k, m, t0).unwrap();
        assert_eq!(r.owner(m), None);
        assert_eq!(r.epoch(), Epoch(1));
        // PMD 0 caught up, PMD 1 did not: still quarantined.
        r.pmd_quiescent(PmdId(0), Epoch(1));
        assert_eq!(
            r.assign(key(1, 11), t0),
            Err(MarkError::Exhausted { max: 1 })
        );
        // Reports never run ahead of the current epoch.
        r.pmd_quiescent(PmdId(1), Epoch(99));
        assert_eq!(r.pmd_epoch(PmdId(1)), Some(Epoch(1)));
        assert_eq!(r.assign(key(1, 11), t0), Ok(m));
    }

    #[test]
    fn removed_pmd_holds_nothing_back_and_new_pmd_starts_current() {
        let t0 = Instant::now();
        let mut r = MarkRegistry::new(1, Duration::ZERO).unwrap();
        r.add_pmd(PmdId(0));
        let k = key(1, 10);
        let m = r.assign(k, t0).unwrap();
        r.unassign(&k, m, t0).unwrap();
        r.add_pmd(PmdId(1));
        assert_eq!(r.quiescent_below(), Epoch(0));
        r.remove_pmd(PmdId(0));
        assert_eq!(r.quiescent_below(), Epoch(1));
        assert!(r.assign(key(2, 1), t0).is_ok());
    }

    #[test]
    fn unpublished_marks_skip_quarantine() {
        let t0 = Instant::now();
        let mut r = MarkRegistry::new(1, Duration::from_secs(3600)).unwrap();
        r.add_pmd(PmdId(0));
        let m = r.assign(key(1, 1), t0).unwrap();
        assert_eq!(r.unassign_unpublished(&key(1, 1), m), Ok(()));
        assert_eq!(r.epoch(), Epoch(0));
        assert_eq!(r.assign(key(1, 2), t0), Ok(m));
        assert_eq!(
            r.unassign_unpublished(&key(9, 9), m),
            Err(MarkError::NotOwner { mark: m })
        );
    }

    #[test]
    fn pmd_refs_count_copies() {
        let h = handles(2);
        let mut refs = PmdRefs::default();
        assert_eq!(refs.insert(PmdId(0), h[0]), None);
        assert_eq!(refs.insert(PmdId(1), h[0]), None);
        assert_eq!(refs.insert(PmdId(0), h[1]), Some(h[0]));
        assert_eq!(refs.len(), 2);
        assert_eq!(refs.get(PmdId(0)), Some(h[1]));
        assert_eq!(refs.remove(PmdId(0)), Some(h[1]));
        assert_eq!(refs.remove(PmdId(0)), None);
        assert_eq!(refs.remove(PmdId(1)), Some(h[0]));
        assert!(refs.is_empty());
    }

    #[test]
    fn mark_table_lookup() {
        let h = handles(2);
        let mut t = MarkTable::new();
        let m5 = Mark::new(5).unwrap();
        assert_eq!(t.lookup(0), None);
        assert_eq!(t.lookup(5), None);
        assert_eq!(t.lookup(u32::MAX), None);
        t.apply(PmdUpdate::Publish {
            mark: m5,
            handle: h[0],
        });
        assert_eq!(t.lookup(5), Some(h[0]));
        assert_eq!(t.lookup(4), None);
        t.publish(m5, h[1]);
        assert_eq!(t.len(), 1);
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![(m5, h[1])]);
        t.apply(PmdUpdate::Unpublish { mark: m5 });
        assert_eq!(t.lookup(5), None);
        assert!(t.is_empty());
        assert_eq!(t.unpublish(Mark::new(1000).unwrap()), None);
    }

    /// Two shards of 1..=5: disjoint ids, each pool exhausts on its own
    /// share, and an id of the other shard is never "in use" here.
    #[test]
    fn sharded_pools_deal_disjoint_ids() {
        let mut a = MarkPool::sharded(5, 0, 2).unwrap();
        let mut b = MarkPool::sharded(5, 1, 2).unwrap();
        assert_eq!((a.capacity(), b.capacity()), (3, 2));
        let ids = |p: &mut MarkPool| {
            let mut v = Vec::new();
            while let Ok(m) = p.alloc() {
                v.push(m.get());
            }
            v
        };
        assert_eq!(ids(&mut a), vec![1, 3, 5]);
        assert_eq!(ids(&mut b), vec![2, 4]);
        let two = Mark::new(2).unwrap();
        assert_eq!(a.status(two), MarkStatus::Free);
        assert!(a.release_now(two).is_err());
        assert_eq!(b.status(two), MarkStatus::InUse);
        b.release_now(two).unwrap();
        assert_eq!(b.alloc().map(Mark::get), Ok(2));
    }
}
