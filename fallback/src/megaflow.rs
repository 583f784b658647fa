//! Megaflows: a wildcarded match, the datapath actions every packet of it
//! gets, and the OpenFlow rules it was built from (the xlate cache).

use crate::actions::DpAction;
use crate::key::{FlowKey, KEY_WORDS};
use crate::ofproto::table::RuleId;
use crate::ofproto::xlate::{XlateDrop, Xlation};
use crate::ofproto::Match;
use std::fmt;
use std::sync::Arc;

/// Unique flow id: a 128-bit hash of the masked key *and* the mask, so two
/// megaflows with equal masked keys but different masks differ.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Ufid(pub u128);

impl Ufid {
    pub fn of(m: &Match) -> Ufid {
        // Two independent 64-bit lanes over value and mask words.
        let mut a: u64 = 0x243f_6a88_85a3_08d3;
        let mut b: u64 = 0x1319_8a2e_0370_7344;
        let words = m.value.words.iter().chain(m.mask.words.iter());
        for (i, w) in words.enumerate() {
            let x = w ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            a = (a ^ x).wrapping_mul(0xff51_afd7_ed55_8ccd).rotate_left(29);
            b = (b ^ x.rotate_left(17)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            b ^= b >> 31;
        }
        a ^= a >> 33;
        a = a.wrapping_mul(0xff51_afd7_ed55_8ccd);
        a ^= a >> 33;
        b ^= b >> 29;
        b = b.wrapping_mul(0x94d0_49bb_1331_11eb);
        b ^= b >> 32;
        Ufid(((a as u128) << 64) | b as u128)
    }
}

impl fmt::Display for Ufid {
    /// The 8-4-4-4-12 layout OVS uses for ufids.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            (v & 0xffff_ffff_ffff) as u64
        )
    }
}

impl fmt::Debug for Ufid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ufid:{self}")
    }
}

/// Per-megaflow counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    /// Time of the last packet (caller's clock, e.g. ms since start).
    pub used: u64,
    /// OR of the TCP flags seen.
    pub tcp_flags: u16,
}

impl FlowStats {
    #[inline]
    pub fn hit(&mut self, bytes: usize, now: u64, tcp_flags: u16) {
        self.packets += 1;
        self.bytes += bytes as u64;
        self.used = now;
        self.tcp_flags |= tcp_flags;
    }
}

/// A datapath megaflow.
#[derive(Clone, Debug)]
pub struct Megaflow {
    pub ufid: Ufid,
    /// `value` is already masked.
    pub r#match: Match,
    /// Shared so that a modify can swap them without touching the match.
    pub actions: Arc<[DpAction]>,
    /// The OpenFlow rules this megaflow was translated from.
    pub rules: Arc<[RuleId]>,
    /// Why the (empty) action list drops, for the rx drop counters.
    pub drop: Option<XlateDrop>,
    pub stats: FlowStats,
}

impl Megaflow {
    /// Builds a megaflow from a packet key and the mask xlate produced.
    pub fn new(key: &FlowKey, mask: &FlowKey, actions: Vec<DpAction>, rules: Vec<RuleId>) -> Self {
        let m = Match {
            value: key.masked(mask),
            mask: *mask,
        };
        Megaflow {
            ufid: Ufid::of(&m),
            r#match: m,
            actions: actions.into(),
            rules: rules.into(),
            drop: None,
            stats: FlowStats::default(),
        }
    }

    /// The megaflow of a translation made for `key`.
    pub fn from_xlation(key: &FlowKey, x: Xlation) -> Self {
        let mut mf = Megaflow::new(key, &x.mask, x.actions, x.rules);
        mf.drop = x.drop;
        mf
    }

    #[inline]
    pub fn matches(&self, key: &FlowKey) -> bool {
        self.r#match.matches(key)
    }

    /// Two megaflows overlap when some packet matches both: on the bits both
    /// masks share, their values agree.
    pub fn overlaps(&self, other: &Megaflow) -> bool {
        (0..KEY_WORDS).all(|i| {
            let common = self.r#match.mask.words[i] & other.r#match.mask.words[i];
            (self.r#match.value.words[i] ^ other.r#match.value.words[i]) & common == 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Field;

    fn mf(nw_src: u32, mask: u32) -> Megaflow {
        let mut k = FlowKey::ZERO;
        k.set(Field::NwSrc, nw_src as u128);
        let mut m = FlowKey::ZERO;
        m.set(Field::NwSrc, mask as u128);
        Megaflow::new(&k, &m, vec![], vec![])
    }

    #[test]
    fn ufid_depends_on_mask() {
        // Same masked key (10.0.0.0) under two masks: different flows.
        let a = mf(0x0a00_0000, 0xff00_0000);
        let b = mf(0x0a00_0000, 0xffff_0000);
        assert_eq!(a.r#match.value, b.r#match.value);
        assert_ne!(a.ufid, b.ufid);
        assert_eq!(a.ufid, mf(0x0a01_0203, 0xff00_0000).ufid);
    }

    #[test]
    fn overlap() {
        assert!(mf(0x0a00_0000, 0xff00_0000).overlaps(&mf(0x0a01_0000, 0xffff_0000)));
        assert!(!mf(0x0b00_0000, 0xff00_0000).overlaps(&mf(0x0a01_0000, 0xffff_0000)));
    }

    #[test]
    fn ufid_format() {
        let u = Ufid(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(u.to_string(), "01234567-89ab-cdef-0011-223344556677");
    }
}
