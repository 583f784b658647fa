//! The per-PMD flow cache: the megaflows a PMD has installed, its dpcls and
//! its EMC, tied together by generation-checked handles so that a stale EMC
//! entry or mark can never reach a removed (or reused) megaflow.

use crate::dpcls::{Dpcls, Retired};
use crate::emc::Emc;
use crate::growing::{ChunkedVec, GrowingTable};
use crate::key::FlowKey;
use crate::megaflow::{Megaflow, Ufid};
use crate::simple::{SimplePorts, SimpleTable};

/// A megaflow's handle in one [`FlowCache`]: slot index and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowHandle {
    index: u32,
    gen: u32,
}

impl FlowHandle {
    /// No megaflow's handle (a placeholder: [`FlowCache::get`] of it is
    /// `None`).
    pub const NONE: FlowHandle = FlowHandle {
        index: u32::MAX,
        gen: u32::MAX,
    };

    /// The slot (see [`FlowCache::iter_slots`]).
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// Two different megaflows hashed to one ufid; the second is not installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is taken by a megaflow with another match (a ufid hash collision); the packet is dropped as xlate_error and the flow stays uncached")]
pub struct UfidCollision(pub Ufid);

/// Which stage found the megaflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheHit {
    Emc,
    Dpcls,
}

/// `repr(C)`: the generation, then the megaflow, whose first fields are
/// what the direct route reads ([`crate::megaflow::HotFields`], stats): 64
/// contiguous bytes. (Aligning slots to cache lines as well bought nothing
/// measurable in cycles and cost 56 bytes per megaflow.)
#[repr(C)]
struct Slot {
    gen: u32,
    flow: Option<Megaflow>,
}

/// Slots per chunk (a chunk of ~100 KB stays under malloc's mmap
/// threshold). In chunks that never move: a growing `Vec<Slot>` moved every
/// megaflow (hundreds of bytes each) on each doubling, an upcall of 12–15 ms
/// on the PMD at 65,536 megaflows.
const CHUNK: usize = 256;

type Slots = ChunkedVec<Slot, CHUNK>;

/// Hash tables the cache no longer uses (see [`FlowCache::set_retire_tables`]);
/// dropping this frees them.
pub struct RetiredTables(Vec<Retired>);

impl std::fmt::Debug for RetiredTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RetiredTables({})", self.0.len())
    }
}

/// A ufid is a keyed hash already; folding its halves is enough.
#[inline]
fn ufid_hash(u: &Ufid) -> u64 {
    ((u.0 as u64) ^ ((u.0 >> 64) as u64)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Megaflows + dpcls + EMC of one PMD.
pub struct FlowCache {
    slots: Slots,
    free: Vec<u32>,
    /// Grows a little per install (see [`GrowingTable`]): installs are
    /// upcalls on the PMD.
    by_ufid: GrowingTable<(Ufid, FlowHandle)>,
    dpcls: Dpcls<FlowHandle>,
    emc: Emc<FlowHandle>,
    simple: SimplePorts<FlowHandle>,
}

impl FlowCache {
    /// `emc_insert_inv_prob`: insert one dpcls hit in N into the EMC (1 =
    /// all, 0 = none, and then the EMC is not consulted at all).
    pub fn new(emc_insert_inv_prob: u32) -> Self {
        FlowCache {
            slots: Slots::default(),
            free: Vec::new(),
            by_ufid: GrowingTable::new(),
            dpcls: Dpcls::new(),
            emc: Emc::new(emc_insert_inv_prob),
            simple: SimplePorts::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_ufid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ufid.is_empty()
    }

    /// Whether the hash tables the cache lets go (a growing table's emptied
    /// old half, an emptied subtable) wait for [`FlowCache::take_retired`]
    /// instead of being freed by the call that let them go: unmapping tens
    /// of megabytes stalls the PMD for milliseconds, so a PMD with a
    /// revalidator thread hands them to that thread.
    pub fn set_retire_tables(&mut self, retire: bool) {
        self.by_ufid.set_retire(retire);
        self.dpcls.set_retire(retire);
    }

    /// The tables let go since the last call, if any.
    pub fn take_retired(&mut self) -> Option<RetiredTables> {
        let mut tables = Vec::new();
        if let Some(t) = self.by_ufid.take_retired() {
            tables.push(Box::new(t) as Retired);
        }
        self.dpcls.take_retired(&mut tables);
        (!tables.is_empty()).then_some(RetiredTables(tables))
    }

    pub fn dpcls(&self) -> &Dpcls<FlowHandle> {
        &self.dpcls
    }

    /// EMC, then dpcls (a dpcls hit is offered to the EMC).
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, hash: u32) -> Option<(FlowHandle, CacheHit)> {
        if !self.emc.enabled() {
            return self.dpcls.lookup(key).map(|h| (h, CacheHit::Dpcls));
        }
        if let Some(h) = self.emc.lookup(key, hash) {
            if self.get(h).is_some() {
                return Some((h, CacheHit::Emc));
            }
        }
        let h = self.dpcls.lookup(key)?;
        self.emc.offer(key, hash, h);
        Some((h, CacheHit::Dpcls))
    }

    /// Reads the EMC slots a lookup of `hash` will compare (see
    /// [`Emc::touch`]).
    #[inline]
    pub fn touch(&self, hash: u32) -> u32 {
        if self.emc.enabled() {
            self.emc.touch(hash)
        } else {
            0
        }
    }

    /// The simple-match table of packets received on `in_port`, when every
    /// megaflow of that port is simple (see [`crate::simple`]).
    #[inline]
    pub fn simple_table(&self, in_port: u32) -> Option<SimpleTable<FlowHandle>> {
        self.simple.table(in_port)
    }

    /// The megaflow behind a handle, if it is still installed.
    #[inline]
    pub fn get(&self, h: FlowHandle) -> Option<&Megaflow> {
        let s = self.slots.get(h.index as usize)?;
        if s.gen == h.gen {
            s.flow.as_ref()
        } else {
            None
        }
    }

    #[inline]
    pub fn get_mut(&mut self, h: FlowHandle) -> Option<&mut Megaflow> {
        let s = self.slots.get_mut(h.index as usize)?;
        if s.gen == h.gen {
            s.flow.as_mut()
        } else {
            None
        }
    }

    pub fn find(&self, ufid: &Ufid) -> Option<FlowHandle> {
        self.by_ufid
            .find(ufid_hash(ufid), |e| e.0 == *ufid)
            .map(|e| e.1)
    }

    /// Installs a megaflow. If the same megaflow is there already (two
    /// packets of one megaflow upcalled in one burst), that one's handle is
    /// returned and `mf` is dropped. A different megaflow under the same
    /// ufid (a hash collision) is refused: handing out the installed one's
    /// handle would give the packet another megaflow's actions.
    pub fn install(&mut self, mf: Megaflow) -> Result<FlowHandle, UfidCollision> {
        if let Some(h) = self.find(&mf.ufid) {
            return match self.get(h) {
                Some(old) if old.r#match == mf.r#match => Ok(h),
                _ => Err(UfidCollision(mf.ufid)),
            };
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { gen: 0, flow: None });
                (self.slots.len() - 1) as u32
            }
        };
        let gen = self.slots.get(index as usize).map_or(0, |s| s.gen);
        let h = FlowHandle { index, gen };
        // A new ufid: dpcls cannot hold this match yet (its ufid would be
        // this one, unless the ufid collided with a removed flow's, which
        // remove() took out of dpcls too).
        let inserted = self.dpcls.insert(&mf.r#match.mask, &mf.r#match.value, h);
        debug_assert!(inserted.is_ok());
        self.by_ufid
            .insert_unique(ufid_hash(&mf.ufid), (mf.ufid, h), |e| ufid_hash(&e.0));
        self.simple.insert(&mf.r#match, h);
        if let Some(slot) = self.slots.get_mut(index as usize) {
            slot.flow = Some(mf);
        }
        Ok(h)
    }

    /// Removes a megaflow; its handle (and any EMC entry or mark still
    /// carrying it) is dead from now on.
    pub fn remove(&mut self, h: FlowHandle) -> Option<Megaflow> {
        let slot = self.slots.get_mut(h.index as usize)?;
        if slot.gen != h.gen {
            return None;
        }
        let mf = slot.flow.take()?;
        slot.gen = slot.gen.wrapping_add(1);
        self.free.push(h.index);
        self.by_ufid
            .remove(ufid_hash(&mf.ufid), |e| e.0 == mf.ufid, |e| ufid_hash(&e.0));
        self.dpcls.remove(&mf.r#match.mask, &mf.r#match.value);
        self.simple.remove(&mf.r#match, h);
        Some(mf)
    }

    /// Every installed megaflow with its handle.
    pub fn iter(&self) -> impl Iterator<Item = (FlowHandle, &Megaflow)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.flow.as_ref().map(|f| {
                (
                    FlowHandle {
                        index: i as u32,
                        gen: s.gen,
                    },
                    f,
                )
            })
        })
    }

    /// Slots (live or free): the bound of [`FlowCache::iter_slots`].
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The megaflows in slots `range` (a sweep a slice at a time).
    pub fn iter_slots(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (FlowHandle, &Megaflow)> {
        let start = range.start.min(self.slots.len());
        let end = range.end.min(self.slots.len());
        (start..end).filter_map(move |i| {
            let s = self.slots.get(i)?;
            s.flow.as_ref().map(|f| {
                (
                    FlowHandle {
                        index: i as u32,
                        gen: s.gen,
                    },
                    f,
                )
            })
        })
    }

    /// Removes every megaflow.
    pub fn clear(&mut self) {
        let handles: Vec<FlowHandle> = self.iter().map(|(h, _)| h).collect();
        for h in handles {
            self.remove(h);
        }
        self.emc.clear();
    }

    pub fn emc_hits(&self) -> u64 {
        self.emc.hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::DpAction;
    use crate::key::Field;

    fn key(src: u32) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set(Field::NwSrc, src as u128);
        k
    }

    /// The direct route reads the generation, [`crate::megaflow::HotFields`]
    /// and the stats: 64 contiguous bytes at the slot's start.
    #[test]
    fn a_slot_starts_with_what_the_direct_route_reads() {
        use crate::megaflow::FlowStats;
        let stats_end = std::mem::offset_of!(Slot, flow)
            + std::mem::offset_of!(Megaflow, stats)
            + std::mem::size_of::<FlowStats>();
        assert_eq!(std::mem::offset_of!(Megaflow, hot), 0);
        assert!(stats_end <= 64, "stats end at byte {stats_end}");
        // The megaflow's fields sit where the `Option` puts its value.
        let slot = Slot {
            gen: 0,
            flow: Some(mf(1, 0xffff_ffff, 2)),
        };
        let base = &slot as *const Slot as usize;
        let flow = slot
            .flow
            .as_ref()
            .map_or(0, |m| m as *const Megaflow as usize);
        assert_eq!(flow - base, std::mem::offset_of!(Slot, flow));
    }

    #[test]
    fn set_actions_keeps_the_hot_fields_in_step() {
        let mut m = mf(1, 0xffff_ffff, 2);
        assert_eq!(m.hot().single_output, Some(2));
        assert!(!m.hot().modifies);
        m.set_actions(vec![DpAction::Output(2), DpAction::Output(3)].into());
        assert_eq!(m.hot().single_output, None);
        assert!(!m.hot().modifies);
        m.set_actions(vec![DpAction::PopVlan, DpAction::Output(3)].into());
        assert!(m.hot().modifies);
        m.set_actions(vec![DpAction::Output(7)].into());
        assert_eq!(m.hot().single_output, Some(7));
        assert_eq!(m.hot().in_port, m.r#match.value.in_port());
    }

    fn mf(src: u32, mask: u32, port: u32) -> Megaflow {
        let mut m = FlowKey::ZERO;
        m.set(Field::NwSrc, mask as u128);
        Megaflow::new(&key(src), &m, vec![DpAction::Output(port)], vec![])
    }

    #[test]
    fn dpcls_then_emc_then_stale() {
        let mut c = FlowCache::new(1);
        let h = c.install(mf(0x0a00_0000, 0xff00_0000, 2)).unwrap();
        let k = key(0x0a01_0101);
        assert_eq!(c.lookup(&k, 42), Some((h, CacheHit::Dpcls)));
        assert_eq!(c.lookup(&k, 42), Some((h, CacheHit::Emc)));
        assert!(c.remove(h).is_some());
        // The EMC entry is stale: a miss, never the reused slot's flow.
        let h2 = c.install(mf(0x0b00_0000, 0xff00_0000, 3)).unwrap();
        assert_ne!(h, h2);
        assert_eq!(c.lookup(&k, 42), None);
        assert!(c.get(h).is_none());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn install_same_ufid_twice_returns_first() {
        let mut c = FlowCache::new(1);
        let a = c.install(mf(0x0a00_0001, 0xff00_0000, 2)).unwrap();
        let b = c.install(mf(0x0a00_0002, 0xff00_0000, 2)).unwrap();
        assert_eq!(a, b);
        assert_eq!(c.len(), 1);
        c.clear();
        assert!(c.is_empty());
        assert!(c.dpcls().is_empty());
    }

    #[test]
    fn ufid_collision_is_refused_not_shared() {
        let mut c = FlowCache::new(1);
        let a = c.install(mf(0x0a00_0000, 0xff00_0000, 2)).unwrap();
        // Another match forced onto the same ufid.
        let mut b = mf(0x0b00_0000, 0xff00_0000, 3);
        b.ufid = c.get(a).unwrap().ufid;
        assert_eq!(c.install(b.clone()), Err(UfidCollision(b.ufid)));
        assert_eq!(c.len(), 1);
        // A packet of the refused megaflow finds nothing: it never gets
        // the installed megaflow's actions.
        assert_eq!(c.lookup(&key(0x0b01_0101), 7), None);
        assert_eq!(c.lookup(&key(0x0a01_0101), 7), Some((a, CacheHit::Dpcls)));
    }

    #[test]
    fn handles_and_slices_hold_across_chunks() {
        let mut c = FlowCache::new(1);
        let n = 3 * CHUNK as u32 + 5;
        let hs: Vec<FlowHandle> = (0..n)
            .map(|i| {
                c.install(mf(0x0a00_0000 + (i << 8), 0xffff_ff00, 2))
                    .unwrap()
            })
            .collect();
        assert_eq!(c.slots(), n as usize);
        for (i, h) in hs.iter().enumerate() {
            assert_eq!(h.index() as usize, i);
            assert!(c.get(*h).is_some());
        }
        // A sweep in slices that straddle chunk borders sees every flow once.
        let mut seen = Vec::new();
        let mut at = 0;
        while at < c.slots() {
            seen.extend(c.iter_slots(at..at + 100).map(|(h, _)| h));
            at += 100;
        }
        assert_eq!(seen, hs);
        assert_eq!(c.iter().map(|(h, _)| h).collect::<Vec<_>>(), hs);
        // A removed slot in a middle chunk is reused with a new generation.
        let old = hs[CHUNK + 3];
        assert!(c.remove(old).is_some());
        let again = c.install(mf(0x0b00_0000, 0xffff_ff00, 3)).unwrap();
        assert_eq!(again.index(), old.index());
        assert!(c.get(old).is_none());
        assert!(c.get(again).is_some());
        assert_eq!(c.slots(), n as usize);
    }

    #[test]
    fn emc_off_is_never_consulted() {
        let mut c = FlowCache::new(0);
        let h = c.install(mf(0x0a00_0000, 0xff00_0000, 2)).unwrap();
        let k = key(0x0a01_0101);
        for _ in 0..3 {
            assert_eq!(c.lookup(&k, 42), Some((h, CacheHit::Dpcls)));
        }
        assert_eq!(c.emc_hits(), 0);
    }
}
