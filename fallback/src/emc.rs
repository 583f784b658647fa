//! EMC: the exact-match cache in front of dpcls, one per PMD.
//!
//! 8192 entries, two candidate slots per key (taken from two parts of the
//! hash, like OVS's `EM_FLOW_HASH_SEGS`). The hash is the NIC's RSS hash when
//! the packet carries one (no key hashing at all), else the key's own hash.
//! Insertion is probabilistic (1 in `insert_inv_prob`, as OVS's
//! `emc-insert-inv-prob`), so that a flood of one-packet flows does not
//! thrash the cache.

use crate::key::FlowKey;

/// Entries in the cache (a power of two).
pub const EMC_ENTRIES: usize = 8192;
const EMC_MASK: u32 = EMC_ENTRIES as u32 - 1;
/// OVS's default: insert one miss in 100.
pub const DEFAULT_INSERT_INV_PROB: u32 = 100;

#[derive(Clone, Copy)]
struct Slot<V> {
    hash: u32,
    key: FlowKey,
    value: Option<V>,
}

/// The exact-match cache. `V` is the caller's megaflow handle; the caller
/// checks that a returned handle is still alive (a removed megaflow may leave
/// stale entries behind until they are overwritten or [`Emc::retain`] runs).
pub struct Emc<V> {
    slots: Box<[Slot<V>]>,
    insert_inv_prob: u32,
    rng: u32,
    pub hits: u64,
}

impl<V: Copy> Emc<V> {
    pub fn new(insert_inv_prob: u32) -> Self {
        let empty = Slot {
            hash: 0,
            key: FlowKey::ZERO,
            value: None,
        };
        Emc {
            slots: vec![empty; EMC_ENTRIES].into_boxed_slice(),
            insert_inv_prob,
            rng: 0x2545_f491,
            hits: 0,
        }
    }

    #[inline]
    fn candidates(hash: u32) -> [usize; 2] {
        [
            (hash & EMC_MASK) as usize,
            ((hash >> 13) & EMC_MASK) as usize,
        ]
    }

    /// False for `insert_inv_prob == 0`: OVS's "never insert", and with
    /// nothing ever inserted the cache is not looked up either.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.insert_inv_prob != 0
    }

    /// Reads the stored hashes of `hash`'s candidate slots and returns
    /// them combined, for the caller to pass to `black_box`: done for a
    /// whole burst before its lookups, the slots' cache misses overlap (a
    /// prefetch in safe code).
    #[inline]
    pub fn touch(&self, hash: u32) -> u32 {
        let [a, b] = Self::candidates(hash);
        self.slots[a].hash ^ self.slots[b].hash
    }

    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, hash: u32) -> Option<V> {
        for i in Self::candidates(hash) {
            let s = &self.slots[i];
            if s.hash == hash && s.value.is_some() && s.key.same_as(key) {
                self.hits += 1;
                return s.value;
            }
        }
        None
    }

    /// Offers a key after a dpcls hit; inserted with probability
    /// 1/`insert_inv_prob`.
    #[inline]
    pub fn offer(&mut self, key: &FlowKey, hash: u32, value: V) {
        if self.insert_inv_prob == 0 {
            return;
        }
        if self.insert_inv_prob > 1 {
            // xorshift32: cheap, deterministic, good enough for sampling.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 17;
            self.rng ^= self.rng << 5;
            if !self.rng.is_multiple_of(self.insert_inv_prob) {
                return;
            }
        }
        self.insert(key, hash, value);
    }

    /// Inserts unconditionally: updates the key's slot if present, else takes
    /// an empty candidate, else replaces the candidate with the lower hash
    /// (an arbitrary but stable choice, as OVS does).
    pub fn insert(&mut self, key: &FlowKey, hash: u32, value: V) {
        let [a, b] = Self::candidates(hash);
        let victim = if self.holds(a, key, hash) || self.slots[a].value.is_none() {
            a
        } else if self.holds(b, key, hash) || self.slots[b].value.is_none() {
            b
        } else if self.slots[a].hash <= self.slots[b].hash {
            a
        } else {
            b
        };
        self.slots[victim] = Slot {
            hash,
            key: *key,
            value: Some(value),
        };
    }

    fn holds(&self, i: usize, key: &FlowKey, hash: u32) -> bool {
        let s = &self.slots[i];
        s.value.is_some() && s.hash == hash && s.key.same_as(key)
    }

    /// Keeps only the entries whose handle passes `keep` (after megaflows
    /// were removed).
    pub fn retain(&mut self, mut keep: impl FnMut(V) -> bool) {
        for s in self.slots.iter_mut() {
            if let Some(v) = s.value {
                if !keep(v) {
                    s.value = None;
                }
            }
        }
    }

    pub fn clear(&mut self) {
        self.retain(|_| false);
    }

    /// Number of occupied entries (a scan: for stats, not the fast path).
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.value.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Field;

    fn k(n: u32) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set(Field::NwSrc, n as u128);
        k
    }

    #[test]
    fn insert_then_hit() {
        let mut e: Emc<u32> = Emc::new(1);
        let key = k(7);
        let h = key.hash64() as u32;
        assert_eq!(e.lookup(&key, h), None);
        e.offer(&key, h, 3);
        assert_eq!(e.lookup(&key, h), Some(3));
        // Same hash, other key: no false hit.
        assert_eq!(e.lookup(&k(8), h), None);
        e.retain(|v| v != 3);
        assert_eq!(e.lookup(&key, h), None);
    }

    #[test]
    fn two_way_collisions() {
        let mut e: Emc<u32> = Emc::new(1);
        // Three keys forced onto the same two slots: the newest always hits.
        for n in 0..3u32 {
            e.insert(&k(n), 5, n);
            assert_eq!(e.lookup(&k(n), 5), Some(n));
        }
        assert!(e.len() <= 2);
    }

    #[test]
    fn probabilistic_insertion_samples() {
        let mut e: Emc<u32> = Emc::new(100);
        let mut inserted = 0;
        for n in 0..10_000u32 {
            let key = k(n);
            let h = key.hash64() as u32;
            e.offer(&key, h, n);
            if e.lookup(&key, h).is_some() {
                inserted += 1;
            }
        }
        assert!((40..=250).contains(&inserted), "{inserted}");
    }
}
