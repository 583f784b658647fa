//! dpcls: the megaflow classifier, by tuple-space search.
//!
//! One [`Subtable`] per distinct mask; each holds a hash table of masked keys.
//! A lookup masks the packet's key with each subtable's mask in turn and
//! probes; subtables are kept ordered by hit count (re-sorted every
//! [`RESORT_INTERVAL`] lookups) so that the busiest masks are tried first.
//! Only the mask's non-zero words are hashed and compared.

use crate::growing::GrowingTable;
use crate::key::{FlowKey, KEY_WORDS};

/// Lookups between two re-sorts of the subtables.
pub const RESORT_INTERVAL: u32 = 1 << 16;

/// Errors of [`Dpcls::insert`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DpclsError {
    #[error("a megaflow with this mask and masked key is already installed; remove it first")]
    Exists,
}

struct Entry<V> {
    value: FlowKey,
    data: V,
    /// The masked value's hash, kept so that growing the table moves
    /// entries without hashing them again.
    hash: u64,
}

/// All megaflows sharing one mask.
pub struct Subtable<V> {
    mask: FlowKey,
    /// Indices of the mask's non-zero words, then unused slots.
    words: [u8; KEY_WORDS],
    n_words: usize,
    /// Grows a little per insert: an all-at-once resize at a few hundred
    /// thousand megaflows stalled the PMD's upcall for 30–40 ms.
    table: GrowingTable<Entry<V>>,
    hits: u64,
}

impl<V: Copy> Subtable<V> {
    fn new(mask: FlowKey) -> Self {
        let mut words = [0u8; KEY_WORDS];
        let mut n_words = 0;
        for (i, w) in mask.words.iter().enumerate() {
            if *w != 0 {
                words[n_words] = i as u8;
                n_words += 1;
            }
        }
        Subtable {
            mask,
            words,
            n_words,
            table: GrowingTable::new(),
            hits: 0,
        }
    }

    /// Hash of `key & mask` over the mask's words.
    #[inline]
    fn hash_masked(&self, key: &FlowKey) -> u64 {
        hash_words(key, &self.mask, &self.words[..self.n_words])
    }

    /// Equality of `key & mask` with an already masked value.
    #[inline]
    fn eq_masked(&self, key: &FlowKey, value: &FlowKey) -> bool {
        eq_masked_words(&self.mask, &self.words[..self.n_words], key, value)
    }

    #[inline]
    fn lookup(&self, key: &FlowKey) -> Option<V> {
        let h = self.hash_masked(key);
        self.table
            .find(h, |e| self.eq_masked(key, &e.value))
            .map(|e| e.data)
    }

    /// [`Subtable::lookup`] when its table is not growing.
    #[inline]
    fn lookup_settled(&self, key: &FlowKey) -> Option<V> {
        let h = self.hash_masked(key);
        self.table
            .find_settled(h, |e| self.eq_masked(key, &e.value))
            .map(|e| e.data)
    }

    /// [`Subtable::lookup`] that also moves entries while the table grows.
    #[inline]
    fn lookup_moving(&mut self, key: &FlowKey) -> Option<V> {
        let h = self.hash_masked(key);
        let (mask, words) = (&self.mask, &self.words[..self.n_words]);
        self.table
            .find_moving(
                h,
                |e| eq_masked_words(mask, words, key, &e.value),
                |e| e.hash,
            )
            .map(|e| e.data)
    }

    pub fn mask(&self) -> &FlowKey {
        &self.mask
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn hits(&self) -> u64 {
        self.hits
    }
}

/// The classifier. `V` is the caller's handle for a megaflow.
pub struct Dpcls<V> {
    subtables: Vec<Subtable<V>>,
    /// Emptied hash tables and dropped subtables, kept for the owner to free
    /// on another thread ([`Dpcls::take_retired`]) when `retire` is set.
    retire: bool,
    retired: Vec<Retired>,
    /// Some subtable may be growing (set by inserts, cleared by the lookup
    /// that finds none): lookups then probe old tables too and help move
    /// their entries; otherwise one probe per subtable, no check.
    moving: bool,
    lookups_since_sort: u32,
    len: usize,
    /// Subtables probed by successful lookups, for `subtables_per_dpcls_hit`.
    pub probes_on_hit: u64,
    pub hits: u64,
}

/// A table or subtable the classifier no longer uses, to be dropped where
/// unmapping its memory stalls no one.
pub type Retired = Box<dyn Send>;

impl<V: Copy + Send + 'static> Default for Dpcls<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy + Send + 'static> Dpcls<V> {
    pub fn new() -> Self {
        Dpcls {
            subtables: Vec::new(),
            retire: false,
            retired: Vec::new(),
            moving: false,
            lookups_since_sort: 0,
            len: 0,
            probes_on_hit: 0,
            hits: 0,
        }
    }

    /// Number of megaflows.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn subtables(&self) -> &[Subtable<V>] {
        &self.subtables
    }

    /// Whether tables the classifier lets go wait for [`Dpcls::take_retired`]
    /// (true) or are freed at once (false, the default).
    pub fn set_retire(&mut self, retire: bool) {
        self.retire = retire;
        for st in &mut self.subtables {
            st.table.set_retire(retire);
        }
        if !retire {
            self.retired.clear();
        }
    }

    /// Moves the tables let go since the last call into `out`.
    pub fn take_retired(&mut self, out: &mut Vec<Retired>) {
        out.append(&mut self.retired);
    }

    /// Installs a megaflow given by `mask` and any key inside it.
    pub fn insert(&mut self, mask: &FlowKey, key: &FlowKey, data: V) -> Result<(), DpclsError> {
        let value = key.masked(mask);
        let idx = match self.subtables.iter().position(|s| s.mask == *mask) {
            Some(i) => i,
            None => {
                let mut st = Subtable::new(*mask);
                st.table.set_retire(self.retire);
                self.subtables.push(st);
                self.subtables.len() - 1
            }
        };
        let st = &mut self.subtables[idx];
        let h = st.hash_masked(&value);
        if st.table.find(h, |e| e.value == value).is_some() {
            return Err(DpclsError::Exists);
        }
        st.table.insert_unique(
            h,
            Entry {
                value,
                data,
                hash: h,
            },
            |e| e.hash,
        );
        if let Some(old) = st.table.take_retired() {
            self.retired.push(Box::new(old));
        }
        self.moving |= st.table.is_moving();
        self.len += 1;
        Ok(())
    }

    /// Removes the megaflow given by `mask` and any key inside it; returns
    /// its handle. An emptied subtable is dropped.
    pub fn remove(&mut self, mask: &FlowKey, key: &FlowKey) -> Option<V> {
        let value = key.masked(mask);
        let idx = self.subtables.iter().position(|s| s.mask == *mask)?;
        let st = &mut self.subtables[idx];
        let h = st.hash_masked(&value);
        let data = st.table.remove(h, |e| e.value == value, |e| e.hash)?.data;
        if let Some(old) = st.table.take_retired() {
            self.retired.push(Box::new(old));
        }
        self.len -= 1;
        if st.table.is_empty() {
            // An emptied table keeps its allocation (tables never shrink).
            let st = self.subtables.remove(idx);
            if self.retire {
                self.retired.push(Box::new(st));
            }
        }
        Some(data)
    }

    /// Finds the megaflow matching `key`, trying the busiest masks first.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey) -> Option<V> {
        self.lookups_since_sort += 1;
        if self.lookups_since_sort >= RESORT_INTERVAL {
            self.sort_subtables();
        }
        if self.moving {
            return self.lookup_while_moving(key);
        }
        for (i, st) in self.subtables.iter_mut().enumerate() {
            if let Some(v) = st.lookup_settled(key) {
                st.hits += 1;
                self.hits += 1;
                self.probes_on_hit += i as u64 + 1;
                return Some(v);
            }
        }
        None
    }

    #[cold]
    fn lookup_while_moving(&mut self, key: &FlowKey) -> Option<V> {
        let mut found = None;
        for (i, st) in self.subtables.iter_mut().enumerate() {
            if let Some(v) = st.lookup_moving(key) {
                st.hits += 1;
                self.hits += 1;
                self.probes_on_hit += i as u64 + 1;
                found = Some(v);
                break;
            }
        }
        self.moving = self.subtables.iter().any(|st| st.table.is_moving());
        found
    }

    /// Lookup without touching counters or order (for tests and control paths).
    pub fn peek(&self, key: &FlowKey) -> Option<V> {
        self.subtables.iter().find_map(|st| st.lookup(key))
    }

    /// Orders subtables by hits since the last sort, busiest first.
    pub fn sort_subtables(&mut self) {
        self.subtables.sort_by_key(|s| std::cmp::Reverse(s.hits));
        for st in &mut self.subtables {
            st.hits /= 2; // decay, so the order follows current traffic
        }
        self.lookups_since_sort = 0;
    }

    /// Removes every megaflow.
    pub fn clear(&mut self) {
        self.subtables.clear();
        self.moving = false;
        self.len = 0;
    }
}

/// Equality of `key & mask` with a masked `value` over the mask's `words`.
#[inline]
fn eq_masked_words(mask: &FlowKey, words: &[u8], key: &FlowKey, value: &FlowKey) -> bool {
    words.iter().all(|&i| {
        let i = i as usize;
        key.words[i] & mask.words[i] == value.words[i]
    })
}

#[inline]
fn hash_words(value: &FlowKey, mask: &FlowKey, words: &[u8]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ words.len() as u64;
    for &i in words {
        let i = i as usize;
        h = (h ^ (value.words[i] & mask.words[i])).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 29;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Field;

    fn key(src: u32, dst: u32, port: u16) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set(Field::NwSrc, src as u128);
        k.set(Field::NwDst, dst as u128);
        k.set(Field::TpDst, port as u128);
        k
    }

    fn mask(src: u32, dst: u32, port: u16) -> FlowKey {
        key(src, dst, port)
    }

    #[test]
    fn insert_lookup_remove() {
        let mut c: Dpcls<u32> = Dpcls::new();
        let m1 = mask(0xffff_ffff, 0, 0);
        let m2 = mask(0, 0xff00_0000, 0xffff);
        c.insert(&m1, &key(1, 2, 3), 10).unwrap();
        c.insert(&m2, &key(0, 0x0a00_0000, 80), 20).unwrap();
        assert_eq!(c.insert(&m1, &key(1, 9, 9), 11), Err(DpclsError::Exists));
        assert_eq!(c.len(), 2);
        assert_eq!(c.subtables().len(), 2);
        assert_eq!(c.lookup(&key(1, 77, 77)), Some(10));
        assert_eq!(c.lookup(&key(5, 0x0a01_0101, 80)), Some(20));
        assert_eq!(c.lookup(&key(5, 0x0a01_0101, 81)), None);
        assert_eq!(c.remove(&m1, &key(1, 0, 0)), Some(10));
        assert_eq!(c.subtables().len(), 1);
        assert_eq!(c.lookup(&key(1, 77, 77)), None);
        assert_eq!(c.remove(&m1, &key(1, 0, 0)), None);
    }

    #[test]
    fn busiest_subtable_first() {
        let mut c: Dpcls<u32> = Dpcls::new();
        let cold = mask(0xffff_ffff, 0, 0);
        let hot = mask(0, 0xffff_ffff, 0);
        c.insert(&cold, &key(1, 0, 0), 1).unwrap();
        c.insert(&hot, &key(0, 2, 0), 2).unwrap();
        for _ in 0..10 {
            assert_eq!(c.lookup(&key(9, 2, 0)), Some(2));
        }
        c.sort_subtables();
        assert_eq!(c.subtables()[0].mask(), &hot);
    }

    #[test]
    fn many_entries_one_subtable() {
        let mut c: Dpcls<u32> = Dpcls::new();
        let m = mask(0xffff_ffff, 0xffff_ffff, 0xffff);
        for i in 0..10_000u32 {
            c.insert(&m, &key(i, !i, i as u16), i).unwrap();
        }
        for i in (0..10_000u32).step_by(7) {
            assert_eq!(c.lookup(&key(i, !i, i as u16)), Some(i));
        }
        assert_eq!(c.subtables().len(), 1);
    }
}
