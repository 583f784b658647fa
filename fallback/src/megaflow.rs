//! Megaflows: a wildcarded match, the datapath actions every packet of it
//! gets, and the OpenFlow rules it was built from (the xlate cache).

use crate::actions::DpAction;
use crate::key::{FlowKey, KEY_WORDS};
use crate::ofproto::mac::MacLearn;
use crate::ofproto::table::{RuleId, RuleIds};
use crate::ofproto::xlate::{XlateDrop, Xlation};
use crate::ofproto::Match;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::OnceLock;

/// Unique flow id: a 128-bit hash of the masked key *and* the mask, so two
/// megaflows with equal masked keys but different masks differ.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Ufid(pub u128);

impl Ufid {
    /// A keyed 128-bit hash (two SipHash-1-3 lanes under secret keys drawn
    /// once per process): nobody can craft two matches with one ufid, and
    /// [`crate::cache::FlowCache::install`] still compares the match.
    pub fn of(m: &Match) -> Ufid {
        static KEYS: OnceLock<(RandomState, RandomState)> = OnceLock::new();
        let (ka, kb) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
        let (mut a, mut b) = (ka.build_hasher(), kb.build_hasher());
        for w in m.value.words.iter().chain(m.mask.words.iter()) {
            a.write_u64(*w);
            b.write_u64(*w);
        }
        Ufid(((a.finish() as u128) << 64) | b.finish() as u128)
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

/// What the direct route (mark path, simple match) reads of a megaflow,
/// derived from its match and actions when they are set. With the stats
/// and the slot's generation it takes the first 64 bytes of the megaflow's
/// slot (see `FlowCache`): a marked packet reads nothing else of its
/// megaflow. Before, it read the match's value and mask and the action list
/// (another allocation): four or five cache lines per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotFields {
    /// The match's `in_port` (a megaflow's match never changes).
    pub in_port: u32,
    /// The port of a megaflow whose only action is one output.
    pub single_output: Option<u32>,
    /// Whether its packets may be TCP (their flags go into its stats).
    pub maybe_tcp: bool,
    /// Whether an action changes the packet (anything but outputs and
    /// punts): its execution needs the header offsets.
    pub modifies: bool,
}

impl HotFields {
    fn of(m: &Match, actions: &[DpAction]) -> Self {
        HotFields {
            in_port: m.value.in_port(),
            single_output: match actions {
                [DpAction::Output(port)] => Some(*port),
                _ => None,
            },
            maybe_tcp: m.mask.nw_proto() != 0xff || m.value.nw_proto() == crate::key::ipproto::TCP,
            modifies: actions.iter().any(|a| {
                !matches!(
                    a,
                    DpAction::Output(_) | DpAction::Controller { .. } | DpAction::Meter(_)
                )
            }),
        }
    }
}

/// A datapath megaflow. `repr(C)`: the fields the direct route reads come
/// first, next to the slot's generation.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct Megaflow {
    pub(crate) hot: HotFields,
    pub stats: FlowStats,
    pub ufid: Ufid,
    /// `value` is already masked. Never changed once the megaflow exists
    /// (its ufid and [`HotFields`] derive from it).
    pub r#match: Match,
    /// Shared so that a modify can swap them without touching the match;
    /// set through [`Megaflow::set_actions`], which keeps [`HotFields`] in
    /// step.
    actions: Arc<[DpAction]>,
    /// The OpenFlow rules this megaflow was translated from.
    pub rules: RuleIds,
    /// Why the (empty) action list drops, for the rx drop counters.
    pub drop: Option<XlateDrop>,
    /// The source MAC its NORMAL action learned: the megaflow's traffic
    /// keeps that entry alive (the refresh sweep re-learns it while the
    /// megaflow counts packets).
    pub learn: Option<MacLearn>,
}

impl Megaflow {
    /// Builds a megaflow from a packet key and the mask xlate produced.
    pub fn new(key: &FlowKey, mask: &FlowKey, actions: Vec<DpAction>, rules: Vec<RuleId>) -> Self {
        Megaflow::with_lists(key, mask, actions.into(), rules.into())
    }

    /// [`Megaflow::new`] with lists already shared (a PMD's upcall passes
    /// an action list equal megaflows share, see [`RecentActions`]).
    pub fn with_lists(
        key: &FlowKey,
        mask: &FlowKey,
        actions: Arc<[DpAction]>,
        rules: RuleIds,
    ) -> Self {
        let m = Match {
            value: key.masked(mask),
            mask: *mask,
        };
        Megaflow {
            hot: HotFields::of(&m, &actions),
            stats: FlowStats::default(),
            ufid: Ufid::of(&m),
            r#match: m,
            actions,
            rules,
            drop: None,
            learn: None,
        }
    }

    #[inline]
    pub fn hot(&self) -> &HotFields {
        &self.hot
    }

    #[inline]
    pub fn actions(&self) -> &Arc<[DpAction]> {
        &self.actions
    }

    /// Replaces the actions (a revalidation's modify).
    pub fn set_actions(&mut self, actions: Arc<[DpAction]>) {
        self.hot = HotFields::of(&self.r#match, &actions);
        self.actions = actions;
    }

    /// The megaflow of a translation made for `key`.
    pub fn from_xlation(key: &FlowKey, x: Xlation) -> Self {
        let mut mf = Megaflow::new(key, &x.mask, x.actions, x.rules);
        mf.drop = x.drop;
        mf.learn = x.learn;
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

/// The action lists of the last few megaflows a PMD made, so that equal
/// lists (every megaflow of a rule, as a rule's flows usually get the same
/// actions) share one allocation instead of one each per upcall.
#[derive(Default)]
pub struct RecentActions([Option<Arc<[DpAction]>>; 4]);

impl RecentActions {
    /// A shared list equal to `actions`: a recent one, or a new one that
    /// becomes the most recent.
    pub fn share(&mut self, actions: &[DpAction]) -> Arc<[DpAction]> {
        let recent = &mut self.0;
        if !crate::ofproto::table::recent_first(recent, |a| **a == *actions) {
            recent[0] = Some(Arc::from(actions));
        }
        match &recent[0] {
            Some(a) => Arc::clone(a),
            None => Arc::from(actions),
        }
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
    fn equal_recent_action_lists_are_shared() {
        let mut recent = RecentActions::default();
        let out2 = recent.share(&[DpAction::Output(2)]);
        let out3 = recent.share(&[DpAction::Output(3)]);
        assert!(Arc::ptr_eq(&out2, &recent.share(&[DpAction::Output(2)])));
        assert!(Arc::ptr_eq(&out3, &recent.share(&[DpAction::Output(3)])));
        assert_eq!(*recent.share(&[]), []);
        // Past four others, a list is made again, equal but not shared.
        for p in 4..8 {
            recent.share(&[DpAction::Output(p)]);
        }
        let again = recent.share(&[DpAction::Output(2)]);
        assert_eq!(again, out2);
        assert!(!Arc::ptr_eq(&again, &out2));
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
