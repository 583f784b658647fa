//! A hash table that is cheap to snapshot: its entries are spread over
//! shards of at most about [`SHARD_TARGET`] entries, each behind an `Arc`,
//! and the shards are the leaves of a tree of `Arc`'d nodes of at most
//! [`FANOUT`] children. Cloning copies one pointer. The first change after
//! a snapshot copies the path to one shard: at most `FANOUT` pointers per
//! level and a shard's entries. (Two levels of √shards pointers each were
//! about 320 reference counts to touch at a million entries for every first
//! change after a snapshot, and as many to drop on the thread that frees
//! the old version; three levels of at most 32 are about 140.) The
//! classifier is built from these so that publishing a pipeline to the
//! PMDs never copies it whole (see [`super::table::Pipeline`]).

use hashbrown::HashTable;
use std::sync::Arc;

/// Entries per shard before the shard count doubles: a change after a
/// snapshot copies about this many entries.
const SHARD_TARGET: usize = 64;
/// Children per node: log2.
const FANOUT_BITS: u32 = 5;
const FANOUT: usize = 1 << FANOUT_BITS;

#[derive(Clone, Debug)]
enum Node<V> {
    Inner(Vec<Arc<Node<V>>>),
    Shard(HashTable<V>),
}

/// A multi-valued hash table keyed by caller-supplied 64-bit hashes.
#[derive(Debug)]
pub struct CowTable<V> {
    /// `None` while empty. Shard `s` is reached from the root by `s`'s
    /// [`FANOUT_BITS`]-bit digits, most significant first, `depth` of them.
    root: Option<Arc<Node<V>>>,
    depth: u32,
    /// A power of two, or 0 while empty.
    n_shards: usize,
    len: usize,
}

impl<V> Clone for CowTable<V> {
    fn clone(&self) -> Self {
        CowTable {
            root: self.root.clone(),
            depth: self.depth,
            n_shards: self.n_shards,
            len: self.len,
        }
    }
}

impl<V> Default for CowTable<V> {
    fn default() -> Self {
        CowTable {
            root: None,
            depth: 0,
            n_shards: 0,
            len: 0,
        }
    }
}

/// Every entry under `node`.
pub struct Iter<'a, V> {
    stack: Vec<std::slice::Iter<'a, Arc<Node<V>>>>,
    shard: Option<hashbrown::hash_table::Iter<'a, V>>,
}

impl<'a, V> Iter<'a, V> {
    fn new(root: Option<&'a Node<V>>) -> Self {
        let mut it = Iter {
            stack: Vec::new(),
            shard: None,
        };
        if let Some(n) = root {
            it.enter(n);
        }
        it
    }

    fn enter(&mut self, n: &'a Node<V>) {
        match n {
            Node::Inner(kids) => self.stack.push(kids.iter()),
            Node::Shard(t) => self.shard = Some(t.iter()),
        }
    }
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = &'a V;

    fn next(&mut self) -> Option<&'a V> {
        loop {
            if let Some(v) = self.shard.as_mut().and_then(|s| s.next()) {
                return Some(v);
            }
            self.shard = None;
            let top = self.stack.last_mut()?;
            match top.next() {
                Some(kid) => self.enter(kid),
                None => {
                    self.stack.pop();
                }
            }
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

    /// The next child on shard `s`'s path: its digit below `shift` (which
    /// steps down a level).
    #[inline]
    fn next_child(s: usize, shift: &mut u32) -> Option<usize> {
        *shift = shift.checked_sub(FANOUT_BITS)?;
        Some((s >> *shift) & (FANOUT - 1))
    }

    #[inline]
    fn shard(&self, hash: u64) -> Option<&HashTable<V>> {
        let s = Self::shard_of(self.n_shards, hash);
        let mut node = self.root.as_deref()?;
        let mut shift = FANOUT_BITS * self.depth;
        loop {
            match node {
                Node::Shard(t) => return Some(t),
                Node::Inner(kids) => node = kids.get(Self::next_child(s, &mut shift)?)?,
            }
        }
    }

    /// The shard of `hash`, unshared (the path to it copied where a
    /// snapshot shares it).
    fn shard_mut(&mut self, hash: u64) -> Option<&mut HashTable<V>> {
        let s = Self::shard_of(self.n_shards, hash);
        let mut node = Arc::make_mut(self.root.as_mut()?);
        let mut shift = FANOUT_BITS * self.depth;
        loop {
            match node {
                Node::Shard(t) => return Some(t),
                Node::Inner(kids) => {
                    node = Arc::make_mut(kids.get_mut(Self::next_child(s, &mut shift)?)?)
                }
            }
        }
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

    pub fn iter(&self) -> Iter<'_, V> {
        Iter::new(self.root.as_deref())
    }

    /// Doubles the shard count (one shard to start with).
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
        if let Some(root) = self.root.take() {
            drain(root, &mut put);
        }
        // Bottom-up: shard `s` sits at position `s` of the bottom level,
        // so its digits are its path.
        let mut level: Vec<Arc<Node<V>>> = shards
            .into_iter()
            .map(|t| Arc::new(Node::Shard(t)))
            .collect();
        let mut depth = 0;
        while level.len() > 1 {
            let mut up = Vec::with_capacity(level.len().div_ceil(FANOUT));
            let mut it = level.into_iter().peekable();
            while it.peek().is_some() {
                up.push(Arc::new(Node::Inner(it.by_ref().take(FANOUT).collect())));
            }
            level = up;
            depth += 1;
        }
        self.root = level.pop();
        self.depth = depth;
        self.n_shards = n;
    }

    /// Heap bytes held (approximate: buckets and control bytes, and the
    /// nodes).
    pub fn heap_bytes(&self) -> usize {
        fn bytes<V>(n: &Node<V>) -> usize {
            16 + std::mem::size_of::<Node<V>>()
                + match n {
                    Node::Inner(kids) => {
                        16 + kids.capacity() * 8 + kids.iter().map(|k| bytes(k)).sum::<usize>()
                    }
                    Node::Shard(t) => 16 + t.capacity() * (std::mem::size_of::<V>() + 1),
                }
        }
        self.root.as_deref().map_or(0, bytes)
    }
}

/// Hands every entry under `node` to `put`: moved out of the parts only
/// this table holds, cloned from the parts a snapshot shares.
fn drain<V: Clone>(node: Arc<Node<V>>, put: &mut impl FnMut(V)) {
    match Arc::try_unwrap(node) {
        Ok(Node::Inner(kids)) => kids.into_iter().for_each(|k| drain(k, put)),
        Ok(Node::Shard(t)) => t.into_iter().for_each(put),
        Err(shared) => Iter::new(Some(&shared)).cloned().for_each(put),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: u64) -> u64 {
        x.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// A table holding `0..n`.
    fn filled(n: u64) -> CowTable<u64> {
        let mut t: CowTable<u64> = CowTable::default();
        for x in 0..n {
            t.insert(h(x), x, |v| h(*v));
        }
        t
    }

    #[test]
    fn snapshot_is_unaffected_by_later_changes() {
        let mut t = filled(5000);
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

    /// Shards of `a` that are the same allocation as in `b`.
    fn shared_shards<V>(a: &CowTable<V>, b: &CowTable<V>) -> usize {
        fn walk<V>(a: &Arc<Node<V>>, b: &Arc<Node<V>>) -> usize {
            match (&**a, &**b) {
                (Node::Shard(_), Node::Shard(_)) => usize::from(Arc::ptr_eq(a, b)),
                (Node::Inner(x), Node::Inner(y)) => {
                    x.iter().zip(y.iter()).map(|(p, q)| walk(p, q)).sum()
                }
                _ => 0,
            }
        }
        match (&a.root, &b.root) {
            (Some(x), Some(y)) if a.depth == b.depth => walk(x, y),
            _ => 0,
        }
    }

    #[test]
    fn a_change_after_a_snapshot_copies_one_path() {
        let mut t = filled(40_000);
        assert!(t.depth >= 2, "a tree of several levels: depth {}", t.depth);
        let snap = t.clone();
        assert_eq!(shared_shards(&t, &snap), t.n_shards);
        let x = 40_000u64;
        if t.len() < t.n_shards * SHARD_TARGET {
            t.insert(h(x), x, |v| h(*v));
            assert_eq!(shared_shards(&t, &snap), t.n_shards - 1);
        }
        assert_eq!(t.remove(h(7), |v| *v == 7), Some(7));
        assert!(shared_shards(&t, &snap) >= t.n_shards - 2);
        assert!(snap.find(h(7), |v| *v == 7).is_some());
        assert!(snap.find(h(x), |v| *v == x).is_none());
        assert_eq!(snap.iter().count(), 40_000);
    }

    #[test]
    fn reserved_room_takes_its_entries_without_growing() {
        let mut t = filled(1000);
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
