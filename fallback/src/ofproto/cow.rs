//! A hash table that is cheap to snapshot: its entries are spread over
//! shards of at most about [`SHARD_TARGET`] entries, each behind an `Arc`,
//! and the shards over directories, each behind an `Arc`, under one root
//! `Arc`. Cloning copies one pointer. The first change after a snapshot
//! copies the root (one pointer per directory), one directory (one pointer
//! per shard in it) and one shard: about 2·√shards pointers plus a shard's
//! entries, never a pointer per shard (that made every snapshot of a
//! 1,000,000-rule table cost 8,000 reference counts, and every first change
//! after one as much again). The classifier is built from these so that
//! publishing a pipeline to the PMDs never copies it whole (see
//! [`super::table::Pipeline`]).

use hashbrown::HashTable;
use std::sync::Arc;

/// Entries per shard before the shard count doubles: a change after a
/// snapshot copies about this many entries.
const SHARD_TARGET: usize = 64;

type Shard<V> = Arc<HashTable<V>>;
type Dir<V> = Arc<Vec<Shard<V>>>;

/// A multi-valued hash table keyed by caller-supplied 64-bit hashes.
#[derive(Debug)]
pub struct CowTable<V> {
    /// Directories of `1 << dir_bits` shards each; `n_shards` in all (a
    /// power of two, or 0 while empty).
    root: Arc<Vec<Dir<V>>>,
    dir_bits: u32,
    n_shards: usize,
    len: usize,
}

impl<V> Clone for CowTable<V> {
    fn clone(&self) -> Self {
        CowTable {
            root: Arc::clone(&self.root),
            dir_bits: self.dir_bits,
            n_shards: self.n_shards,
            len: self.len,
        }
    }
}

impl<V> Default for CowTable<V> {
    fn default() -> Self {
        CowTable {
            root: Arc::new(Vec::new()),
            dir_bits: 0,
            n_shards: 0,
            len: 0,
        }
    }
}

impl<V: Clone> CowTable<V> {
    /// The shard of a hash: middle bits (hashbrown uses the low bits for
    /// the bucket and the top seven for its tag).
    #[inline]
    fn shard_of(n_shards: usize, hash: u64) -> usize {
        ((hash >> 32) as usize) & (n_shards.wrapping_sub(1))
    }

    /// (directory, slot in it) of a hash; `None` while empty.
    #[inline]
    fn place(&self, hash: u64) -> Option<(usize, usize)> {
        if self.n_shards == 0 {
            return None;
        }
        let s = Self::shard_of(self.n_shards, hash);
        Some((s >> self.dir_bits, s & ((1 << self.dir_bits) - 1)))
    }

    #[inline]
    fn shard(&self, hash: u64) -> Option<&HashTable<V>> {
        let (d, s) = self.place(hash)?;
        Some(&**self.root.get(d)?.get(s)?)
    }

    /// The shard of `hash`, unshared (copied if a snapshot shares it).
    fn shard_mut(&mut self, hash: u64) -> Option<&mut HashTable<V>> {
        let (d, s) = self.place(hash)?;
        let dir = Arc::make_mut(&mut self.root).get_mut(d)?;
        Some(Arc::make_mut(Arc::make_mut(dir).get_mut(s)?))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn find(&self, hash: u64, eq: impl FnMut(&V) -> bool) -> Option<&V> {
        self.shard(hash)?.find(hash, eq)
    }

    /// Entries that may have `hash` (callers check equality).
    #[inline]
    pub fn iter_hash(&self, hash: u64) -> impl Iterator<Item = &V> {
        self.shard(hash)
            .into_iter()
            .flat_map(move |s| s.iter_hash(hash))
    }

    pub fn find_mut(&mut self, hash: u64, mut eq: impl FnMut(&V) -> bool) -> Option<&mut V> {
        // Look before copying: a miss must not unshare anything.
        self.shard(hash)?.find(hash, &mut eq)?;
        self.shard_mut(hash)?.find_mut(hash, eq)
    }

    /// Inserts `v` (duplicates allowed); `hasher` gives any entry's hash.
    pub fn insert(&mut self, hash: u64, v: V, hasher: impl Fn(&V) -> u64) {
        if self.len + 1 > self.n_shards * SHARD_TARGET {
            self.grow(&hasher);
        }
        if let Some(shard) = self.shard_mut(hash) {
            shard.insert_unique(hash, v, &hasher);
            self.len += 1;
        }
    }

    /// Removes one entry for which `eq` holds.
    pub fn remove(&mut self, hash: u64, mut eq: impl FnMut(&V) -> bool) -> Option<V> {
        // Look before copying: a miss must not unshare anything.
        self.shard(hash)?.find(hash, &mut eq)?;
        let removed = match self.shard_mut(hash)?.find_entry(hash, eq) {
            Ok(entry) => entry.remove().0,
            Err(_) => return None,
        };
        self.len -= 1;
        if self.len == 0 {
            *self = CowTable::default();
        }
        Some(removed)
    }

    pub fn iter(&self) -> impl Iterator<Item = &V> {
        self.root
            .iter()
            .flat_map(|d| d.iter())
            .flat_map(|s| s.iter())
    }

    /// Doubles the shard count (one shard to start with); directories hold
    /// about √shards each.
    fn grow(&mut self, hasher: &impl Fn(&V) -> u64) {
        self.grow_to((self.n_shards * 2).max(1), hasher);
    }

    /// Room for `additional` more entries without a shard-count doubling on
    /// the way (a bundle's adds: one re-spread instead of one per doubling).
    pub fn reserve(&mut self, additional: usize, hasher: impl Fn(&V) -> u64) {
        let want = (self.len + additional).div_ceil(SHARD_TARGET);
        if want > self.n_shards {
            self.grow_to(want.next_power_of_two(), &hasher);
        }
    }

    /// Re-spreads the entries over `n` shards (a power of two). Parts no
    /// snapshot shares are moved, not cloned: a clone of an `Arc` entry is
    /// an atomic increment now and a decrement when the old part drops, for
    /// every entry at every doubling.
    fn grow_to(&mut self, n: usize, hasher: &impl Fn(&V) -> u64) {
        let per_shard = self.len / n + self.len / (4 * n) + 1;
        let mut shards: Vec<HashTable<V>> = (0..n)
            .map(|_| HashTable::with_capacity(per_shard))
            .collect();
        let mut put = |v: V| {
            let h = hasher(&v);
            shards[Self::shard_of(n, h)].insert_unique(h, v, hasher);
        };
        match Arc::try_unwrap(std::mem::take(&mut self.root)) {
            Ok(dirs) => {
                for dir in dirs {
                    match Arc::try_unwrap(dir) {
                        Ok(dir) => {
                            for shard in dir {
                                match Arc::try_unwrap(shard) {
                                    Ok(shard) => shard.into_iter().for_each(&mut put),
                                    Err(shared) => shared.iter().cloned().for_each(&mut put),
                                }
                            }
                        }
                        Err(shared) => shared
                            .iter()
                            .flat_map(|s| s.iter())
                            .cloned()
                            .for_each(&mut put),
                    }
                }
            }
            Err(shared) => shared
                .iter()
                .flat_map(|d| d.iter())
                .flat_map(|s| s.iter())
                .cloned()
                .for_each(&mut put),
        }
        let dir_bits = n.trailing_zeros().div_ceil(2);
        let per_dir = 1usize << dir_bits;
        let mut root = Vec::with_capacity(n.div_ceil(per_dir));
        let mut it = shards.into_iter().map(Arc::new).peekable();
        while it.peek().is_some() {
            root.push(Arc::new(it.by_ref().take(per_dir).collect::<Vec<_>>()));
        }
        self.root = Arc::new(root);
        self.dir_bits = dir_bits;
        self.n_shards = n;
    }

    /// Heap bytes held (approximate: buckets and control bytes, and the
    /// directories).
    pub fn heap_bytes(&self) -> usize {
        let shards: usize = self
            .root
            .iter()
            .flat_map(|d| d.iter())
            .map(|s| s.capacity() * (std::mem::size_of::<V>() + 1) + 16 + 16)
            .sum();
        let dirs: usize = self.root.iter().map(|d| 16 + 16 + d.capacity() * 8).sum();
        shards + dirs + 16 + 16 + self.root.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: u64) -> u64 {
        x.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    #[test]
    fn snapshot_is_unaffected_by_later_changes() {
        let mut t: CowTable<u64> = CowTable::default();
        for x in 0..5000u64 {
            t.insert(h(x), x, |v| h(*v));
        }
        let snap = t.clone();
        for x in 0..2500u64 {
            assert_eq!(t.remove(h(x), |v| *v == x), Some(x));
        }
        t.insert(h(9999), 9999, |v| h(*v));
        assert_eq!(snap.len(), 5000);
        assert!(snap.find(h(7), |v| *v == 7).is_some());
        assert!(t.find(h(7), |v| *v == 7).is_none());
        assert!(snap.find(h(9999), |v| *v == 9999).is_none());
        assert_eq!(t.len(), 2501);
        assert_eq!(t.iter().count(), 2501);
    }

    #[test]
    fn reserved_room_takes_its_entries_without_growing() {
        let mut t: CowTable<u64> = CowTable::default();
        for x in 0..1000u64 {
            t.insert(h(x), x, |v| h(*v));
        }
        let snap = t.clone();
        t.reserve(50_000, |v| h(*v));
        let shards = t.n_shards;
        assert!(shards * SHARD_TARGET >= 51_000);
        for x in 1000..51_000u64 {
            t.insert(h(x), x, |v| h(*v));
        }
        assert_eq!(t.n_shards, shards);
        assert_eq!(t.len(), 51_000);
        assert_eq!(t.iter().count(), 51_000);
        assert!((0..51_000u64).all(|x| t.find(h(x), |v| *v == x).is_some()));
        // The snapshot taken before shares nothing that changed.
        assert_eq!(snap.len(), 1000);
        assert_eq!(snap.iter().count(), 1000);
        assert!(snap.find(h(1000), |v| *v == 1000).is_none());
        // Reserving what is there already changes nothing.
        t.reserve(0, |v| h(*v));
        assert_eq!(t.n_shards, shards);
    }

    #[test]
    fn growth_and_changes_after_a_snapshot_leave_it_alone() {
        let mut t: CowTable<u64> = CowTable::default();
        let mut snaps = Vec::new();
        for x in 0..20_000u64 {
            t.insert(h(x), x, |v| h(*v));
            if x % 997 == 0 {
                snaps.push((x, t.clone()));
            }
        }
        for x in (0..20_000u64).step_by(3) {
            assert_eq!(t.remove(h(x), |v| *v == x), Some(x));
            if let Some(v) = t.find_mut(h(x + 1), |v| *v == x + 1) {
                *v += 1_000_000;
            }
        }
        for (upto, s) in &snaps {
            assert_eq!(s.len() as u64, upto + 1);
            assert_eq!(s.iter().count() as u64, upto + 1);
            for x in 0..=*upto {
                assert!(
                    s.find(h(x), |v| *v == x).is_some(),
                    "{x} in snapshot {upto}"
                );
            }
        }
        assert!(t.find(h(1), |v| *v == 1_000_001).is_some());
        assert!(t.find(h(3), |v| *v == 3).is_none());
    }
}
