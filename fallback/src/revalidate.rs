//! Revalidation (DESIGN §4): after a pipeline, MAC table or port change,
//! which installed megaflows the change can affect, and what becomes of
//! them: re-translated with the old mask as a hint, a megaflow whose new
//! mask fits inside the old one keeps its match (new actions swapped in,
//! ufid, mark and NIC rule kept); one that would need a wider mask is
//! deleted (its next packet upcalls).
//!
//! Pure logic over a mirror of one PMD's megaflows: the daemon runs it on a
//! revalidator thread fed with the PMD's installs and removals and sends
//! the PMD only the resulting [`RevalOp`]s; tests and benchmarks run the
//! same engine inline.
//!
//! Invariant: after every call, each record is the translation of its
//! megaflow against this engine's pipeline, MAC table and port list. A
//! change is then exactly "old engine state → new", and only the records
//! whose dependencies ([`XlateDeps`]) meet the change are translated again.

use crate::actions::DpAction;
use crate::cache::FlowHandle;
use crate::megaflow::{Megaflow, Ufid};
use crate::ofproto::mac::{MacLearn, MacTable};
use crate::ofproto::table::{Changes, Pipeline, RuleChange, RuleId, RuleIds, TableSet};
use crate::ofproto::xlate::{xlate_hinted, Bridge, XlateDeps, XlateDrop, Xlation};
use crate::ofproto::Match;
use crate::sync::TryQueue;
use hashbrown::{HashMap, HashSet};
use std::sync::Arc;

/// MAC answers changed in one step past which every megaflow that looked
/// up a MAC is re-translated (cheaper than the per-flow set test).
const MAC_CHANGES_MAX: usize = 1024;

/// What revalidation knows of one installed megaflow.
#[derive(Clone, Debug)]
pub struct FlowRecord {
    pub ufid: Ufid,
    pub r#match: Match,
    pub actions: Arc<[DpAction]>,
    pub rules: RuleIds,
    pub drop: Option<XlateDrop>,
    pub learn: Option<MacLearn>,
    pub deps: XlateDeps,
    /// What it was translated against: [`Pipeline::stamp`],
    /// [`MacTable::version`], [`ports_digest`].
    pub pipeline: (u64, u64),
    pub mac_version: u64,
    pub ports: u64,
}

impl FlowRecord {
    /// The record of a megaflow just made from `deps`' translation.
    pub fn new(
        mf: &Megaflow,
        deps: XlateDeps,
        pipeline: (u64, u64),
        mac_version: u64,
        ports: u64,
    ) -> Self {
        FlowRecord {
            ufid: mf.ufid,
            r#match: mf.r#match,
            actions: Arc::clone(mf.actions()),
            rules: mf.rules.clone(),
            drop: mf.drop,
            learn: mf.learn,
            deps,
            pipeline,
            mac_version,
            ports,
        }
    }
}

/// What a PMD is to do with one of its megaflows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevalOp {
    /// New actions for the same match (counts so far belong to the old rules).
    Modify {
        handle: FlowHandle,
        ufid: Ufid,
        actions: Arc<[DpAction]>,
        rules: RuleIds,
        drop: Option<XlateDrop>,
        learn: Option<MacLearn>,
    },
    /// The megaflow is too wide now: remove it (and its NIC rule).
    Delete { handle: FlowHandle, ufid: Ufid },
}

/// The revalidator's verdicts to one PMD, and the emptied batches coming
/// back: the PMD neither waits for a preempted revalidator ([`TryQueue`])
/// nor frees the revalidator's allocations (glibc's free of another
/// thread's chunk takes that thread's arena lock, which a preempted
/// revalidator may hold).
#[derive(Default)]
pub struct VerdictQueues {
    pub to_pmd: TryQueue<Vec<RevalOp>>,
    pub returned: TryQueue<Vec<RevalOp>>,
}

/// Counters of one engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RevalStats {
    /// Pipeline, MAC or port changes processed.
    pub passes: u64,
    /// Megaflows re-translated (by a change, or at install because they
    /// were made against another state than the engine's).
    pub translated: u64,
    /// Megaflows a change could not affect (not translated).
    pub skipped: u64,
    pub modified: u64,
    pub deleted: u64,
}

/// A digest of the bridge's sorted port list (FLOOD and output-skipping
/// translations depend on it).
pub fn ports_digest(ports: &[u32], widen_l4: Option<&[u32]>) -> u64 {
    // FNV-1a: tiny and stable; a collision only skips the re-translation
    // at install of a megaflow made while a port change was under way
    // (the change itself re-translates everything it can affect).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let widen = widen_l4.map_or(&[u32::MAX][..], |w| w);
    for p in ports.iter().chain([&0]).chain(widen) {
        for b in p.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^ ports.len() as u64
}

fn widens(widen_l4: Option<&[u32]>, port: u32) -> bool {
    widen_l4.is_none_or(|w| w.binary_search(&port).is_ok())
}

/// True when some packet of the megaflow `mf` can match `rule`: on the bits
/// both masks hold, their values agree.
fn overlaps(mf: &Match, rule: &Match) -> bool {
    mf.value
        .words
        .iter()
        .zip(rule.value.words.iter())
        .zip(mf.mask.words.iter().zip(rule.mask.words.iter()))
        .all(|((a, b), (ma, mb))| (a ^ b) & ma & mb == 0)
}

/// The megaflows of one PMD and the bridge state they were translated against.
pub struct Revalidator {
    pipeline: Arc<Pipeline>,
    macs: MacTable,
    ports: Vec<u32>,
    /// [`Bridge::widen_l4`].
    widen_l4: Option<Vec<u32>>,
    ports_digest: u64,
    flows: HashMap<FlowHandle, FlowRecord>,
    pub stats: RevalStats,
}

/// The rule changes of one step, arranged for the per-megaflow test.
struct Affects {
    added: Vec<(u8, Match)>,
    added_tables: TableSet,
    touched: HashSet<RuleId>,
    overflow: TableSet,
}

impl Affects {
    fn of(changes: &[RuleChange], overflow: TableSet) -> Self {
        let mut a = Affects {
            added: Vec::new(),
            added_tables: TableSet::default(),
            touched: HashSet::new(),
            overflow,
        };
        for c in changes {
            match *c {
                RuleChange::Added { table, r#match } => {
                    a.added.push((table, r#match));
                    a.added_tables.insert(table);
                }
                RuleChange::Removed { id, .. } | RuleChange::Modified { id, .. } => {
                    a.touched.insert(id);
                }
            }
        }
        a
    }

    fn hits(&self, r: &FlowRecord) -> bool {
        let d = &r.deps;
        if d.tables.intersects(&self.overflow) || d.tables_rewritten.intersects(&self.overflow) {
            return true;
        }
        // A rule added where the packet had been rewritten: its key at
        // that lookup is not the megaflow's, assume it can match.
        if d.tables_rewritten.intersects(&self.added_tables) {
            return true;
        }
        if d.tables.intersects(&self.added_tables)
            && self
                .added
                .iter()
                .any(|(t, m)| d.tables.contains(*t) && overlaps(&r.r#match, m))
        {
            return true;
        }
        // A rule that lost every lookup of this megaflow changes nothing
        // by going or changing: only the rules it went through count.
        !self.touched.is_empty() && r.rules.iter().any(|id| self.touched.contains(id))
    }
}

impl Revalidator {
    /// An engine for a bridge with these (sorted) ports, of which
    /// `widen_l4` offload (see [`Bridge::widen_l4`]).
    pub fn new(
        pipeline: Arc<Pipeline>,
        macs: MacTable,
        ports: Vec<u32>,
        widen_l4: Option<Vec<u32>>,
    ) -> Self {
        let ports_digest = ports_digest(&ports, widen_l4.as_deref());
        Revalidator {
            pipeline,
            macs,
            ports,
            widen_l4,
            ports_digest,
            flows: HashMap::new(),
            stats: RevalStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// The dependencies recorded for a megaflow.
    pub fn deps_of(&self, handle: FlowHandle) -> Option<XlateDeps> {
        self.flows.get(&handle).map(|r| r.deps)
    }

    /// A megaflow the PMD installed. Made against an older state than this
    /// engine's (a change crossed the upcall), it is translated now; made
    /// against a newer one (the PMD heard of a change first), it waits for
    /// that change to reach the engine, which then translates it.
    pub fn installed(&mut self, handle: FlowHandle, rec: FlowRecord, out: &mut Vec<RevalOp>) {
        let (lineage, version) = self.pipeline.stamp();
        let pipeline_ahead = rec.pipeline.0 == lineage && rec.pipeline.1 > version;
        let stale = (rec.pipeline != (lineage, version) && !pipeline_ahead)
            || (rec.deps.uses_macs() && rec.mac_version < self.macs.version())
            || rec.ports != self.ports_digest;
        self.flows.insert(handle, rec);
        if stale {
            self.revalidate_one(handle, out);
        }
    }

    /// A megaflow the PMD removed (expired, flushed, its port gone).
    pub fn removed(&mut self, handle: FlowHandle, ufid: Ufid) {
        if self.flows.get(&handle).is_some_and(|r| r.ufid == ufid) {
            self.flows.remove(&handle);
        }
    }

    /// A new pipeline version: re-translates the megaflows its changes can
    /// affect (every one when the changes are unknown).
    pub fn set_pipeline(&mut self, pipeline: Arc<Pipeline>, out: &mut Vec<RevalOp>) {
        let affects = match pipeline.changes_since(&self.pipeline) {
            Changes::Rules(rules) => Some(Affects::of(rules, TableSet::default())),
            Changes::Tables { rules, overflow } => Some(Affects::of(rules, overflow)),
            Changes::All => None,
        };
        let old = self.pipeline.stamp();
        self.pipeline = pipeline;
        self.stats.passes += 1;
        match affects {
            // Records made against a newer version than `old` are
            // translated whatever the changes.
            Some(a) => self.revalidate_where(out, |r| r.pipeline != old || a.hits(r)),
            None => self.revalidate_where(out, |_| true),
        }
    }

    /// A new MAC table: re-translates the megaflows whose NORMAL lookups
    /// now get another answer.
    pub fn set_macs(&mut self, macs: MacTable, out: &mut Vec<RevalOp>) {
        if macs.version() == self.macs.version() {
            return;
        }
        let changed = self.macs.changed_answers(&macs);
        let old = self.macs.version();
        self.macs = macs;
        self.stats.passes += 1;
        // Records made against a MAC table between the old and the new
        // one are translated whatever the differences.
        let between = |r: &FlowRecord| r.deps.uses_macs() && r.mac_version != old;
        if changed.len() > MAC_CHANGES_MAX {
            self.revalidate_where(out, |r| r.deps.uses_macs());
        } else {
            let changed: HashSet<(u64, u16)> = changed.into_iter().collect();
            self.revalidate_where(out, |r| {
                between(r) || r.deps.mac_any || r.deps.mac.is_some_and(|m| changed.contains(&m))
            });
        }
        // Records that did not look a MAC up are still right against it.
        let v = self.macs.version();
        for r in self.flows.values_mut() {
            r.mac_version = v;
        }
    }

    /// A new port list (sorted) and set of offloading ports: re-translates
    /// the megaflows that flooded, skipped an output because of the list,
    /// output to a port that went, or entered on a port that started or
    /// stopped offloading (its megaflows' L4 masks change).
    pub fn set_ports(
        &mut self,
        ports: Vec<u32>,
        widen_l4: Option<Vec<u32>>,
        out: &mut Vec<RevalOp>,
    ) {
        let digest = ports_digest(&ports, widen_l4.as_deref());
        if digest == self.ports_digest && ports == self.ports && widen_l4 == self.widen_l4 {
            return;
        }
        let gone: Vec<u32> = self
            .ports
            .iter()
            .copied()
            .filter(|p| ports.binary_search(p).is_err())
            .collect();
        let rewidened: Vec<u32> = self
            .ports
            .iter()
            .chain(ports.iter())
            .copied()
            .filter(|p| widens(self.widen_l4.as_deref(), *p) != widens(widen_l4.as_deref(), *p))
            .collect();
        self.ports = ports;
        self.widen_l4 = widen_l4;
        self.ports_digest = digest;
        self.stats.passes += 1;
        self.revalidate_where(out, |r| {
            r.deps.ports
                || rewidened.contains(&r.r#match.value.in_port())
                || (!gone.is_empty()
                    && r.actions
                        .iter()
                        .any(|a| matches!(a, DpAction::Output(p) if gone.contains(p))))
        });
        for r in self.flows.values_mut() {
            r.ports = digest;
        }
    }

    fn revalidate_where(&mut self, out: &mut Vec<RevalOp>, affected: impl Fn(&FlowRecord) -> bool) {
        let mut todo = Vec::new();
        let stamp = self.pipeline.stamp();
        for (h, r) in self.flows.iter_mut() {
            if affected(r) {
                todo.push(*h);
            } else {
                self.stats.skipped += 1;
                r.pipeline = stamp;
            }
        }
        for h in todo {
            self.revalidate_one(h, out);
        }
    }

    fn translate(&self, r: &FlowRecord) -> Xlation {
        let bridge = Bridge {
            pipeline: &self.pipeline,
            macs: &self.macs,
            ports: &self.ports,
            widen_l4: self.widen_l4.as_deref(),
        };
        // The masked key is a packet of the megaflow.
        xlate_hinted(bridge, &r.r#match.value, Some(&r.r#match.mask))
    }

    fn revalidate_one(&mut self, h: FlowHandle, out: &mut Vec<RevalOp>) {
        let Some(r) = self.flows.get(&h) else {
            return;
        };
        self.stats.translated += 1;
        let x = self.translate(r);
        if !x.mask.is_subset_of(&r.r#match.mask) {
            out.push(RevalOp::Delete {
                handle: h,
                ufid: r.ufid,
            });
            self.flows.remove(&h);
            self.stats.deleted += 1;
            return;
        }
        let (stamp, macs, ports) = (
            self.pipeline.stamp(),
            self.macs.version(),
            self.ports_digest,
        );
        let Some(r) = self.flows.get_mut(&h) else {
            return;
        };
        let changed = *x.actions != *r.actions || *x.rules != *r.rules || x.drop != r.drop;
        r.deps = x.deps;
        r.pipeline = stamp;
        r.mac_version = macs;
        r.ports = ports;
        r.learn = x.learn;
        if changed {
            r.actions = x.actions.into();
            r.rules = x.rules.into();
            r.drop = x.drop;
            self.stats.modified += 1;
            out.push(RevalOp::Modify {
                handle: h,
                ufid: r.ufid,
                actions: Arc::clone(&r.actions),
                rules: r.rules.clone(),
                drop: r.drop,
                learn: r.learn,
            });
        }
    }
}
