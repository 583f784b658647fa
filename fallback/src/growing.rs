//! A hash table that grows a little at a time.
//!
//! A plain hash table grows all at once: the insert that fills it allocates
//! a table twice the size and moves every entry. In the megaflow cache that
//! insert is an upcall on a PMD thread, and at a few hundred thousand
//! megaflows the move touches tens of megabytes of fresh pages: 30–40 ms of
//! page faults during which the PMD forwards nothing. [`GrowingTable`]
//! instead keeps the full table aside as `old`, inserts into a new one of
//! twice the size, and moves [`MOVE_BATCH`] entries from `old` every
//! [`MOVE_EVERY`] inserts or removes, so no single call does more than a
//! bounded amount of work. Lookups probe the new table, then the old one
//! while it still holds entries. (Redis grows its dictionaries the same way.)
//!
//! Each entry's hash must be computable cheaply from the entry (`hash_of`):
//! moving an entry re-places it by that hash.
//!
//! Freeing the emptied old table is itself a stall (unmapping tens of
//! megabytes: 1–3 ms), so with [`GrowingTable::set_retire`] the table is
//! kept for the owner to take ([`GrowingTable::take_retired`]) and free on
//! another thread.

use hashbrown::HashTable;
use std::hash::{BuildHasher, Hash};

/// Entries moved from the old table per move step.
pub const MOVE_BATCH: usize = 64;
/// Inserts and removes between two move steps. With `MOVE_BATCH / MOVE_EVERY
/// = 4` entries moved per insert, the old table (n entries) is empty after
/// n / 4 inserts, long before the new one (room for 2n) fills.
pub const MOVE_EVERY: u32 = 16;
/// Smallest table allocated.
const MIN_CAPACITY: usize = 16;

pub struct GrowingTable<T> {
    cur: HashTable<T>,
    /// The table being emptied into `cur`; empty (and unallocated) otherwise.
    old: HashTable<T>,
    ops: u32,
    /// Keep emptied old tables in `retired` instead of freeing them here.
    retire: bool,
    retired: Option<HashTable<T>>,
}

impl<T> std::fmt::Debug for GrowingTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GrowingTable({} entries)", self.len())
    }
}

impl<T> Default for GrowingTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> GrowingTable<T> {
    pub fn new() -> Self {
        GrowingTable {
            cur: HashTable::new(),
            old: HashTable::new(),
            ops: 0,
            retire: false,
            retired: None,
        }
    }

    /// Whether emptied old tables wait for [`GrowingTable::take_retired`]
    /// (true) or are freed at once (false, the default).
    pub fn set_retire(&mut self, retire: bool) {
        self.retire = retire;
        if !retire {
            self.retired = None;
        }
    }

    /// The emptied old table, for the caller to free where a stall does
    /// not matter.
    #[inline]
    pub fn take_retired(&mut self) -> Option<HashTable<T>> {
        self.retired.take()
    }

    pub fn len(&self) -> usize {
        self.cur.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cur.is_empty() && self.old.is_empty()
    }

    /// Whether entries are still being moved out of an old table.
    pub fn is_moving(&self) -> bool {
        !self.old.is_empty()
    }

    #[inline]
    pub fn find(&self, hash: u64, mut eq: impl FnMut(&T) -> bool) -> Option<&T> {
        match self.cur.find(hash, &mut eq) {
            Some(e) => Some(e),
            None if !self.old.is_empty() => self.old.find(hash, eq),
            None => None,
        }
    }

    #[inline]
    pub fn find_mut(&mut self, hash: u64, mut eq: impl FnMut(&T) -> bool) -> Option<&mut T> {
        if let Some(e) = self.cur.find_mut(hash, &mut eq) {
            return Some(e);
        }
        if self.old.is_empty() {
            return None;
        }
        self.old.find_mut(hash, eq)
    }

    /// [`GrowingTable::find`] when the caller knows no old table is being
    /// emptied ([`GrowingTable::is_moving`] is false): one probe, no check.
    #[inline]
    pub fn find_settled(&self, hash: u64, eq: impl FnMut(&T) -> bool) -> Option<&T> {
        debug_assert!(self.old.is_empty());
        self.cur.find(hash, eq)
    }

    /// [`GrowingTable::find`] for a table looked up far more often than it
    /// changes: while an old table is being emptied, lookups move entries
    /// too (a batch every [`MOVE_EVERY`] lookups), so a table that stops
    /// growing does not probe two tables forever.
    #[inline]
    pub fn find_moving(
        &mut self,
        hash: u64,
        mut eq: impl FnMut(&T) -> bool,
        hash_of: impl Fn(&T) -> u64,
    ) -> Option<&T> {
        if !self.old.is_empty() {
            self.step(&hash_of);
        }
        match self.cur.find(hash, &mut eq) {
            Some(e) => Some(e),
            None if !self.old.is_empty() => self.old.find(hash, eq),
            None => None,
        }
    }

    /// Inserts an entry the caller knows is not there yet.
    pub fn insert_unique(&mut self, hash: u64, value: T, hash_of: impl Fn(&T) -> u64) {
        // `capacity()` is what the table holds without reallocating; an
        // insert into a full table would grow it all at once.
        if self.cur.len() >= self.cur.capacity() {
            self.start_growing(&hash_of);
        }
        self.cur.insert_unique(hash, value, &hash_of);
        self.step(&hash_of);
    }

    /// The entry `eq` picks among those of `hash`, inserted from `make`
    /// when absent: one probe of each table, no second lookup. `eq` reads
    /// what `make` consumes (`with`; a map's key).
    pub fn find_or_insert_mut<W>(
        &mut self,
        hash: u64,
        with: W,
        eq: impl Fn(&W, &T) -> bool,
        make: impl FnOnce(W) -> T,
        hash_of: impl Fn(&T) -> u64,
    ) -> &mut T {
        // Growth and the move step first: where an entry lives is settled
        // before it is looked for.
        if self.cur.len() >= self.cur.capacity() {
            self.start_growing(&hash_of);
        }
        self.step(&hash_of);
        // An entry still in the old table moves over now.
        if !self.old.is_empty() {
            if let Ok(entry) = self.old.find_entry(hash, |e| eq(&with, e)) {
                let (value, _) = entry.remove();
                return self.cur.insert_unique(hash, value, &hash_of).into_mut();
            }
        }
        match self.cur.find_entry(hash, |e| eq(&with, e)) {
            Ok(entry) => entry.into_mut(),
            Err(absent) => absent
                .into_table()
                .insert_unique(hash, make(with), &hash_of)
                .into_mut(),
        }
    }

    /// Removes and returns the entry `eq` picks among those of `hash`.
    pub fn remove(
        &mut self,
        hash: u64,
        mut eq: impl FnMut(&T) -> bool,
        hash_of: impl Fn(&T) -> u64,
    ) -> Option<T> {
        let removed = match self.cur.find_entry(hash, &mut eq) {
            Ok(entry) => Some(entry.remove().0),
            Err(_) if !self.old.is_empty() => match self.old.find_entry(hash, eq) {
                Ok(entry) => Some(entry.remove().0),
                Err(_) => None,
            },
            Err(_) => None,
        };
        if removed.is_some() {
            self.step(&hash_of);
        }
        removed
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.cur.iter().chain(self.old.iter())
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.cur.iter_mut().chain(self.old.iter_mut())
    }

    /// Removes every entry and frees both tables.
    pub fn clear(&mut self) {
        self.cur = HashTable::new();
        self.old = HashTable::new();
        self.ops = 0;
    }

    /// Sets the full table aside and starts an empty one with room for
    /// twice its entries (measured by entries, not the full table's size:
    /// a table full of tombstones after many removes starts over smaller).
    #[cold]
    fn start_growing(&mut self, hash_of: &impl Fn(&T) -> u64) {
        // The step rate empties the old table before the new one fills, so
        // this is a fallback: finish the move (all at once) first.
        if !self.old.is_empty() {
            let old = std::mem::take(&mut self.old);
            for e in old {
                self.cur.insert_unique(hash_of(&e), e, hash_of);
            }
        }
        let capacity = (2 * self.cur.len()).max(MIN_CAPACITY);
        self.old = std::mem::replace(&mut self.cur, HashTable::with_capacity(capacity));
        self.ops = 0;
    }

    /// Every [`MOVE_EVERY`] calls, moves up to [`MOVE_BATCH`] entries.
    #[inline]
    fn step(&mut self, hash_of: &impl Fn(&T) -> u64) {
        if self.old.is_empty() {
            return;
        }
        self.ops += 1;
        if self.ops >= MOVE_EVERY {
            self.ops = 0;
            self.move_some(hash_of);
        }
    }

    #[cold]
    fn move_some(&mut self, hash_of: &impl Fn(&T) -> u64) {
        // `extract_if` walks from the table's start each time, skipping the
        // emptied groups 16 buckets per load: a few µs at the largest sizes,
        // paid once per MOVE_BATCH entries.
        let cur = &mut self.cur;
        for e in self.old.extract_if(|_| true).take(MOVE_BATCH) {
            cur.insert_unique(hash_of(&e), e, hash_of);
        }
        if self.old.is_empty() {
            // Free the old allocation now, not at the next growth (or hand
            // it over; one not taken since the last growth is freed here).
            let old = std::mem::take(&mut self.old);
            if self.retire {
                self.retired = Some(old);
            }
        }
    }
}

/// A map over a [`GrowingTable`]: grows without an all-at-once rehash.
/// Keys are hashed with hashbrown's default (randomly seeded) hasher.
pub struct GrowingMap<K, V> {
    table: GrowingTable<(K, V)>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl<K, V> std::fmt::Debug for GrowingMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GrowingMap({} entries)", self.table.len())
    }
}

impl<K: Hash + Eq, V> Default for GrowingMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq, V> GrowingMap<K, V> {
    pub fn new() -> Self {
        GrowingMap {
            table: GrowingTable::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    #[inline]
    fn hash(&self, k: &K) -> u64 {
        self.hasher.hash_one(k)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.get(k).is_some()
    }

    #[inline]
    pub fn get(&self, k: &K) -> Option<&V> {
        self.table.find(self.hash(k), |e| e.0 == *k).map(|e| &e.1)
    }

    #[inline]
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let h = self.hash(k);
        self.table.find_mut(h, |e| e.0 == *k).map(|e| &mut e.1)
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let h = self.hash(&k);
        if let Some(e) = self.table.find_mut(h, |e| e.0 == k) {
            return Some(std::mem::replace(&mut e.1, v));
        }
        let hasher = &self.hasher;
        self.table
            .insert_unique(h, (k, v), |e| hasher.hash_one(&e.0));
        None
    }

    /// The value of `k`, inserted from `make` when absent: one hash.
    pub fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        let h = self.hash(&k);
        let hasher = &self.hasher;
        &mut self
            .table
            .find_or_insert_mut(
                h,
                k,
                |k, e| e.0 == *k,
                |k| (k, make()),
                |e| hasher.hash_one(&e.0),
            )
            .1
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let h = self.hash(k);
        let hasher = &self.hasher;
        self.table
            .remove(h, |e| e.0 == *k, |e| hasher.hash_one(&e.0))
            .map(|e| e.1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.table.iter().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.table.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.table.iter().map(|e| &e.1)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.table.iter().map(|e| &e.0)
    }

    pub fn clear(&mut self) {
        self.table.clear();
    }
}

/// A vector in fixed chunks of `CHUNK` entries that never move: a push
/// allocates at most one chunk, where a `Vec` at 65,536 entries copies them
/// all into twice the memory (fresh pages: 1.3-1.5 ms on a PMD applying a
/// bundle's verdicts, 12-15 ms for the megaflow cache's slots inside one
/// upcall). Order as a `Vec`'s; `swap_remove` as `Vec::swap_remove`.
/// `CHUNK` is best a power of two (the index splits into shifts).
#[derive(Debug)]
pub struct ChunkedVec<T, const CHUNK: usize = 1024> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T, const CHUNK: usize> Default for ChunkedVec<T, CHUNK> {
    fn default() -> Self {
        ChunkedVec {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T, const CHUNK: usize> ChunkedVec<T, CHUNK> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    #[inline]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    pub fn push(&mut self, v: T) {
        if self.len.is_multiple_of(CHUNK) && self.chunks.len() == self.len / CHUNK {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        if let Some(chunk) = self.chunks.get_mut(self.len / CHUNK) {
            chunk.push(v);
            self.len += 1;
        }
    }

    pub fn pop(&mut self) -> Option<T> {
        let last = self.len.checked_sub(1)?;
        let v = self.chunks.get_mut(last / CHUNK)?.pop()?;
        self.len = last;
        // Past the chunk the next push goes to, one emptied chunk stays as a
        // spare (no allocate/free churn at a chunk boundary).
        while self.chunks.len() > last / CHUNK + 2 {
            self.chunks.pop();
        }
        Some(v)
    }

    /// Removes entry `i`; the last entry takes its place.
    pub fn swap_remove(&mut self, i: usize) -> Option<T> {
        if i >= self.len {
            return None;
        }
        let last = self.pop()?;
        if i == self.len {
            return Some(last);
        }
        self.get_mut(i).map(|slot| std::mem::replace(slot, last))
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks.iter_mut().flatten()
    }
}

/// A map whose entries sit side by side in a [`ChunkedVec`], the hash table
/// holding only each entry's position and 32 bits of its key's hash (8
/// bytes, whatever the key). For large values: a [`GrowingMap`] of them
/// touches twice their size in fresh memory and copies each one as it
/// grows (the offload engine's 300-byte entries: a fifth of its time per
/// insert); here an entry is written once, where it stays until removed
/// (then the last entry moves into its place), and the index of 100,000
/// entries is a megabyte or two, not the eight a key-holding index takes.
#[derive(Debug)]
pub struct DenseMap<K, V> {
    index: GrowingTable<IndexSlot>,
    entries: ChunkedVec<(K, V)>,
    hasher: hashbrown::DefaultHashBuilder,
}

/// A [`DenseMap`] entry's position and the low 32 bits of its key's hash:
/// enough to re-place it when the index grows, without reading the entry.
#[derive(Clone, Copy, Debug)]
struct IndexSlot {
    hash: u32,
    pos: u32,
}

/// A table hash made from a key hash's low 32 bits, for tables whose
/// entries keep only those 32 bits: hashbrown places an entry by the
/// hash's low bits and filters probes by its top 7, which are taken from
/// bits 25..32 (independent of the placement bits below 2^25 buckets).
pub fn hash_from_low32(lo: u32) -> u64 {
    u64::from(lo) | (u64::from(lo >> 25) << 57)
}

impl<K: Hash + Eq + Copy, V> Default for DenseMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Copy, V> DenseMap<K, V> {
    pub fn new() -> Self {
        DenseMap {
            index: GrowingTable::new(),
            entries: ChunkedVec::default(),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.get(k).is_some()
    }

    #[inline]
    fn lo_hash(&self, k: &K) -> u32 {
        // The low half: hashbrown's default hasher mixes every bit into it.
        self.hasher.hash_one(k) as u32
    }

    /// The position of `k`'s entry.
    #[inline]
    fn position(&self, k: &K) -> Option<usize> {
        let lo = self.lo_hash(k);
        let entries = &self.entries;
        self.index
            .find(hash_from_low32(lo), |s| {
                s.hash == lo && entries.get(s.pos as usize).is_some_and(|e| e.0 == *k)
            })
            .map(|s| s.pos as usize)
    }

    #[inline]
    pub fn get(&self, k: &K) -> Option<&V> {
        let i = self.position(k)?;
        self.entries.get(i).map(|e| &e.1)
    }

    #[inline]
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = self.position(k)?;
        self.entries.get_mut(i).map(|e| &mut e.1)
    }

    /// The value of `k`, inserted from `make` when absent: one hash. `None`
    /// when the map already holds 2^32 - 1 entries (positions are 32-bit).
    pub fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> Option<&mut V> {
        let next = u32::try_from(self.entries.len())
            .ok()
            .filter(|n| *n != u32::MAX)?;
        let lo = self.lo_hash(&k);
        let entries = &self.entries;
        let slot = self.index.find_or_insert_mut(
            hash_from_low32(lo),
            k,
            |k, s| s.hash == lo && entries.get(s.pos as usize).is_some_and(|e| e.0 == *k),
            |_| IndexSlot {
                hash: lo,
                pos: next,
            },
            |s| hash_from_low32(s.hash),
        );
        let i = slot.pos as usize;
        if slot.pos == next {
            self.entries.push((k, make()));
        }
        self.entries.get_mut(i).map(|e| &mut e.1)
    }

    /// Inserts or replaces; returns the value replaced. A map holding
    /// 2^32 - 1 entries drops the value of a new key.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        if let Some(old) = self.get_mut(&k) {
            return Some(std::mem::replace(old, v));
        }
        self.get_or_insert_with(k, || v);
        None
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let lo = self.lo_hash(k);
        let entries = &self.entries;
        let i = self
            .index
            .remove(
                hash_from_low32(lo),
                |s| s.hash == lo && entries.get(s.pos as usize).is_some_and(|e| e.0 == *k),
                |s| hash_from_low32(s.hash),
            )?
            .pos;
        let last = u32::try_from(self.entries.len().checked_sub(1)?).ok()?;
        let (_, v) = self.entries.swap_remove(i as usize)?;
        if i != last {
            // The last entry moved into the hole: its slot follows it.
            if let Some(&(moved, _)) = self.entries.get(i as usize) {
                let lo = self.lo_hash(&moved);
                if let Some(s) = self
                    .index
                    .find_mut(hash_from_low32(lo), |s| s.hash == lo && s.pos == last)
                {
                    s.pos = i;
                }
            }
        }
        Some(v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|e| &e.1)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|e| &e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn h(k: u64) -> u64 {
        k.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn hash_of(e: &(u64, u64)) -> u64 {
        h(e.0)
    }

    #[test]
    fn dense_map_behaves_as_a_hash_map() {
        let mut d: DenseMap<u64, u64> = DenseMap::new();
        let mut m: HashMap<u64, u64> = HashMap::new();
        let mut x = 7u64;
        for step in 0..30_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x >> 4) % 4096;
            match x % 6 {
                0 | 1 => assert_eq!(d.remove(&k), m.remove(&k)),
                2 => assert_eq!(d.insert(k, step), m.insert(k, step)),
                3 => {
                    if let (Some(a), Some(b)) = (d.get_mut(&k), m.get_mut(&k)) {
                        *a += 1;
                        *b += 1;
                    }
                }
                _ => {
                    let a = d.get_or_insert_with(k, || step).copied();
                    assert_eq!(a, Some(*m.entry(k).or_insert(step)));
                }
            }
            assert_eq!(d.len(), m.len());
            assert_eq!(d.get(&k), m.get(&k));
            assert_eq!(d.contains_key(&k), m.contains_key(&k));
        }
        assert!(d.len() > 1024, "entries span chunks");
        let mut all: Vec<_> = d.iter().map(|(k, v)| (*k, *v)).collect();
        all.sort_unstable();
        let mut want: Vec<_> = m.into_iter().collect();
        want.sort_unstable();
        assert_eq!(all, want);
        assert_eq!(d.keys().count(), d.values().count());
        for (_, v) in d.iter_mut() {
            *v = 0;
        }
        assert!(d.values().all(|v| *v == 0));
    }

    #[test]
    fn chunked_vec_behaves_as_a_vec() {
        let mut c: ChunkedVec<u64> = ChunkedVec::default();
        let mut v = Vec::new();
        let mut x = 1u64;
        for step in 0..20_000u64 {
            // xorshift: pushes outnumber removals, across chunk boundaries.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 5 {
                0 if !v.is_empty() => {
                    let i = (x >> 8) as usize % v.len();
                    assert_eq!(c.swap_remove(i), Some(v.swap_remove(i)));
                }
                1 => assert_eq!(c.pop(), v.pop()),
                _ => {
                    c.push(step);
                    v.push(step);
                }
            }
            assert_eq!(c.len(), v.len());
            if let Some(i) = v.len().checked_sub(1) {
                assert_eq!(c.get(i), v.get(i));
            }
        }
        assert!(c.len() > 2 * 1024);
        assert!(c.iter().eq(v.iter()));
        assert_eq!(c.get(c.len()), None);
        assert_eq!(c.swap_remove(c.len()), None);
        while c.pop().is_some() {}
        assert!(c.is_empty() && c.chunks.len() <= 2);
    }

    #[test]
    fn grows_without_losing_entries_and_finishes_moving() {
        let mut t = GrowingTable::new();
        let mut moves_seen = false;
        for k in 0..100_000u64 {
            t.insert_unique(h(k), (k, k * 3), hash_of);
            moves_seen |= t.is_moving();
            // The new table never fills while an old one is being emptied.
            assert!(t.cur.len() <= t.cur.capacity());
        }
        assert!(moves_seen);
        assert!(t.take_retired().is_none(), "retiring is off by default");
        assert_eq!(t.len(), 100_000);
        for k in 0..100_000u64 {
            assert_eq!(t.find(h(k), |e| e.0 == k), Some(&(k, k * 3)));
        }
        assert_eq!(t.find(h(100_001), |e| e.0 == 100_001), None);
        for k in (0..100_000u64).step_by(2) {
            assert_eq!(t.remove(h(k), |e| e.0 == k, hash_of), Some((k, k * 3)));
        }
        assert_eq!(t.len(), 50_000);
        assert_eq!(t.iter().count(), 50_000);
    }

    #[test]
    fn lookups_finish_a_move_that_inserts_left() {
        let mut t = GrowingTable::new();
        let mut k = 0u64;
        while !t.is_moving() {
            t.insert_unique(h(k), (k, k), hash_of);
            k += 1;
        }
        for _ in 0..100_000 {
            assert!(t.find_moving(h(0), |e| e.0 == 0, hash_of).is_some());
            if !t.is_moving() {
                break;
            }
        }
        assert!(!t.is_moving());
        assert_eq!(t.len(), k as usize);
        for i in 0..k {
            assert_eq!(t.find(h(i), |e| e.0 == i), Some(&(i, i)));
        }
    }

    #[test]
    fn retired_tables_wait_to_be_taken() {
        let mut t = GrowingTable::new();
        t.set_retire(true);
        let mut retired = 0;
        for k in 0..10_000u64 {
            t.insert_unique(h(k), (k, k), hash_of);
            if let Some(old) = t.take_retired() {
                assert!(old.is_empty());
                retired += 1;
            }
        }
        assert!(retired >= 5, "{retired}");
        assert_eq!(t.len(), 10_000);
    }

    #[test]
    fn map_inserts_replaces_and_removes_across_growth() {
        let mut m = GrowingMap::new();
        for k in 0..50_000u32 {
            assert_eq!(m.insert(k, k), None);
        }
        for k in 0..50_000u32 {
            assert_eq!(m.insert(k, k + 1), Some(k));
        }
        for k in (0..50_000u32).step_by(3) {
            assert_eq!(m.remove(&k), Some(k + 1));
        }
        if let Some(v) = m.get_mut(&1) {
            *v = 7;
        }
        assert_eq!(m.get(&1), Some(&7));
        assert_eq!(m.get(&0), None);
        assert_eq!(m.len(), 50_000 - 16_667);
        assert_eq!(m.iter().count(), m.len());
    }

    proptest! {
        /// Against a `HashMap` model, with keys from a small range so that
        /// inserts, removes and growth interleave.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((0u8..4, 0u64..2_000), 1..6_000)) {
            let mut t = GrowingTable::new();
            let mut model: HashMap<u64, u64> = HashMap::new();
            for (i, (op, k)) in ops.into_iter().enumerate() {
                let i = i as u64;
                match op {
                    0 => {
                        if let std::collections::hash_map::Entry::Vacant(v) = model.entry(k) {
                            v.insert(i);
                            t.insert_unique(h(k), (k, i), hash_of);
                        }
                    }
                    1 => {
                        let got = t.remove(h(k), |e| e.0 == k, hash_of).map(|e| e.1);
                        prop_assert_eq!(got, model.remove(&k));
                    }
                    2 => {
                        // Found (in either table) or inserted, then changed
                        // in place.
                        let want = *model.entry(k).or_insert(i) + 1;
                        let e = t.find_or_insert_mut(h(k), k, |k, e| e.0 == *k, |k| (k, i), hash_of);
                        e.1 += 1;
                        model.insert(k, want);
                    }
                    _ => {
                        prop_assert_eq!(t.find(h(k), |e| e.0 == k).map(|e| e.1), model.get(&k).copied());
                    }
                }
                prop_assert_eq!(t.len(), model.len());
            }
            let mut all: Vec<_> = t.iter().copied().collect();
            all.sort_unstable();
            let mut want: Vec<_> = model.into_iter().collect();
            want.sort_unstable();
            prop_assert_eq!(all, want);
        }
    }
}
