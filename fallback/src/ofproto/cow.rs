//! A hash table that is cheap to snapshot: its entries are spread over
//! shards of at most about [`SHARD_TARGET`] entries, each behind an `Arc`.
//! Cloning copies one pointer per shard; the first change to a shard that a
//! snapshot still shares copies that shard only. The classifier is built
//! from these so that publishing a pipeline to the PMDs never copies it
//! whole (see [`super::table::Pipeline`]).

use hashbrown::HashTable;
use std::sync::Arc;

/// Entries per shard before the shard count doubles: a change after a
/// snapshot copies about this many entries, a snapshot one pointer per
/// shard. 128 measured best for one-flow-mod-per-barrier loads (100k rules
/// with ovs-ofctl add-flows: 1024 → 22 s, 128 → 12.5 s, 32 → 20 s).
const SHARD_TARGET: usize = 128;

/// A multi-valued hash table keyed by caller-supplied 64-bit hashes.
#[derive(Clone, Debug)]
pub struct CowTable<V> {
    shards: Vec<Arc<HashTable<V>>>,
    len: usize,
}

impl<V> Default for CowTable<V> {
    fn default() -> Self {
        CowTable {
            shards: Vec::new(),
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

    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn find(&self, hash: u64, eq: impl FnMut(&V) -> bool) -> Option<&V> {
        if self.shards.is_empty() {
            return None;
        }
        self.shards[Self::shard_of(self.shards.len(), hash)].find(hash, eq)
    }

    /// Entries that may have `hash` (callers check equality).
    #[inline]
    pub fn iter_hash(&self, hash: u64) -> impl Iterator<Item = &V> {
        let shard = if self.shards.is_empty() {
            None
        } else {
            Some(&self.shards[Self::shard_of(self.shards.len(), hash)])
        };
        shard.into_iter().flat_map(move |s| s.iter_hash(hash))
    }

    pub fn find_mut(&mut self, hash: u64, eq: impl FnMut(&V) -> bool) -> Option<&mut V> {
        if self.shards.is_empty() {
            return None;
        }
        let i = Self::shard_of(self.shards.len(), hash);
        Arc::make_mut(&mut self.shards[i]).find_mut(hash, eq)
    }

    /// Inserts `v` (duplicates allowed); `hasher` gives any entry's hash.
    pub fn insert(&mut self, hash: u64, v: V, hasher: impl Fn(&V) -> u64) {
        if self.len + 1 > self.shards.len() * SHARD_TARGET {
            self.grow(&hasher);
        }
        let i = Self::shard_of(self.shards.len(), hash);
        Arc::make_mut(&mut self.shards[i]).insert_unique(hash, v, &hasher);
        self.len += 1;
    }

    /// Removes one entry for which `eq` holds.
    pub fn remove(&mut self, hash: u64, eq: impl FnMut(&V) -> bool) -> Option<V> {
        if self.shards.is_empty() {
            return None;
        }
        let i = Self::shard_of(self.shards.len(), hash);
        let removed = match Arc::make_mut(&mut self.shards[i]).find_entry(hash, eq) {
            Ok(entry) => entry.remove().0,
            Err(_) => return None,
        };
        self.len -= 1;
        if self.len == 0 {
            self.shards.clear();
        }
        Some(removed)
    }

    pub fn iter(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Doubles the shard count (one shard to start with).
    fn grow(&mut self, hasher: &impl Fn(&V) -> u64) {
        let n = (self.shards.len() * 2).max(1);
        let mut shards: Vec<HashTable<V>> = (0..n).map(|_| HashTable::new()).collect();
        for v in self.iter() {
            let h = hasher(v);
            shards[Self::shard_of(n, h)].insert_unique(h, v.clone(), hasher);
        }
        self.shards = shards.into_iter().map(Arc::new).collect();
    }

    /// Heap bytes held (approximate: buckets and control bytes).
    pub fn heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.capacity() * (std::mem::size_of::<V>() + 1) + 16)
            .sum::<usize>()
            + self.shards.capacity() * std::mem::size_of::<usize>()
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
}
