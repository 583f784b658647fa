//! The daemon's per-rule times beside the pipeline: when each rule was
//! added (OpenFlow `duration`, hard timeouts), idle-timeout activity, and
//! which rules asked for FLOW_REMOVED. Sized for controllers that install
//! millions of rules: a rule without timeouts or flags costs nothing here
//! (a time and flags per rule in a hash map cost about 120 bytes each).

use fallback::ofproto::table::{Pipeline, RuleId};
use hashbrown::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Rules added within this span of each other share one time.
const RUN_SPAN: Duration = Duration::from_millis(1);

/// Rule ids from `first` up to the next run's first, added from `opened`
/// to `stamp`: each of them counts as added at `stamp` (a duration reads
/// at most `RUN_SPAN` short, a timeout fires at most that late).
#[derive(Clone, Copy, Debug)]
struct Run {
    first: RuleId,
    opened: Instant,
    stamp: Instant,
}

/// Idle-timeout bookkeeping of one rule.
#[derive(Clone, Copy, Debug)]
pub struct Activity {
    /// The rule's packet count when last seen.
    pub last_packets: u64,
    /// When that count last grew (or the rule was added).
    pub last_active: Instant,
}

/// Per-rule times and flags of one pipeline lineage.
#[derive(Debug, Default)]
pub struct RuleClocks {
    /// The lineage of the pipeline the ids belong to (ids grow within one).
    lineage: Option<u64>,
    /// Ascending by `first`; ids are handed out in increasing order, so
    /// one entry covers every rule added in a run.
    runs: Vec<Run>,
    /// Every id up to this one is covered by `runs`.
    seen_upto: u64,
    /// Rules with an idle or hard timeout (a rule's timeouts never change).
    timed: HashMap<RuleId, Activity>,
    /// Rules added with OFPFF_SEND_FLOW_REM.
    flagged: HashSet<RuleId>,
}

impl RuleClocks {
    /// Rules up to id `upto` not seen yet were added at `now`.
    fn stamp_upto(&mut self, upto: RuleId, now: Instant) {
        if upto.0 <= self.seen_upto {
            return;
        }
        match self.runs.last_mut() {
            Some(run) if now.saturating_duration_since(run.opened) < RUN_SPAN => run.stamp = now,
            _ => self.runs.push(Run {
                first: RuleId(self.seen_upto + 1),
                opened: now,
                stamp: now,
            }),
        }
        self.seen_upto = upto.0;
    }

    /// The run covering `id`.
    fn run_of(&self, id: RuleId) -> Option<usize> {
        if id.0 > self.seen_upto {
            return None;
        }
        self.runs.partition_point(|r| r.first <= id).checked_sub(1)
    }

    /// When `id` was added (`None`: not recorded).
    pub fn added(&self, id: RuleId) -> Option<Instant> {
        self.run_of(id).map(|i| self.runs[i].stamp)
    }

    /// Starts afresh for a pipeline of another lineage (its ids may repeat
    /// ours).
    fn adopt(&mut self, pipeline: &Pipeline) {
        let lineage = pipeline.stamp().0;
        if self.lineage != Some(lineage) {
            *self = RuleClocks {
                lineage: Some(lineage),
                ..RuleClocks::default()
            };
        }
    }

    /// The rule `id` was added to `pipeline` at `now` (replacing
    /// `replaced`).
    pub fn add(
        &mut self,
        pipeline: &Pipeline,
        id: RuleId,
        replaced: Option<RuleId>,
        timed: bool,
        send_flow_rem: bool,
        now: Instant,
    ) {
        self.adopt(pipeline);
        if let Some(old) = replaced {
            self.timed.remove(&old);
            self.flagged.remove(&old);
        }
        self.stamp_upto(id, now);
        if timed {
            self.timed.insert(
                id,
                Activity {
                    last_packets: 0,
                    last_active: now,
                },
            );
        }
        if send_flow_rem {
            self.flagged.insert(id);
        }
    }

    /// In step with `pipeline`: its rules not recorded yet were added at
    /// `now`; what is kept for rules it no longer has goes.
    pub fn sync(&mut self, pipeline: &Pipeline, now: Instant) {
        self.adopt(pipeline);
        self.timed.retain(|id, _| pipeline.get(*id).is_some());
        self.flagged.retain(|id| pipeline.get(*id).is_some());
        let mut upto = RuleId(0);
        for e in pipeline.entries() {
            upto = upto.max(e.id);
            if e.idle_timeout() > 0 || e.hard_timeout() > 0 {
                self.timed.entry(e.id).or_insert(Activity {
                    last_packets: 0,
                    last_active: now,
                });
            }
        }
        self.stamp_upto(upto, now);
        // Runs left without rules go (new ids are past them all).
        let mut used = vec![false; self.runs.len()];
        for e in pipeline.entries() {
            if let Some(i) = self.run_of(e.id) {
                used[i] = true;
            }
        }
        let mut used = used.into_iter();
        self.runs.retain(|_| used.next().unwrap_or(false));
    }

    /// Rules that asked for FLOW_REMOVED.
    pub fn n_flagged(&self) -> usize {
        self.flagged.len()
    }

    pub fn is_flagged(&self, id: RuleId) -> bool {
        self.flagged.contains(&id)
    }

    /// Rules with a timeout.
    pub fn n_timed(&self) -> usize {
        self.timed.len()
    }

    /// The idle-timeout bookkeeping of a rule with a timeout.
    pub fn activity_mut(&mut self, id: RuleId) -> Option<&mut Activity> {
        self.timed.get_mut(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fallback::ofproto::syntax::parse_flow;

    fn add(p: &mut Pipeline, text: &str) -> RuleId {
        match parse_flow(text) {
            Ok(r) => p.add(r).id,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn times_follow_runs_of_ids_and_leave_with_their_rules() {
        let t0 = Instant::now();
        let mut p = Pipeline::new();
        let mut c = RuleClocks::default();
        c.sync(&p, t0);
        let a = add(&mut p, "priority=1,in_port=1,actions=drop");
        c.add(&p, a, None, false, true, t0);
        // Added in one bundle: stamped at the sync that sees them.
        let b = add(&mut p, "priority=2,in_port=2,actions=drop");
        let timed = add(&mut p, "priority=3,in_port=3,hard_timeout=5,actions=drop");
        let t1 = t0 + Duration::from_secs(1);
        c.sync(&p, t1);
        assert_eq!(c.added(a), Some(t0));
        assert_eq!(c.added(b), Some(t1));
        assert_eq!(c.added(timed), Some(t1));
        assert_eq!((c.n_flagged(), c.n_timed()), (1, 1));
        assert!(c.is_flagged(a) && !c.is_flagged(b));
        // Adds within RUN_SPAN share a run, stamped at the latest.
        let t2 = t1 + Duration::from_secs(1);
        let d = add(&mut p, "priority=4,in_port=4,actions=drop");
        c.add(&p, d, None, false, false, t2);
        let e = add(&mut p, "priority=5,in_port=5,actions=drop");
        let t3 = t2 + RUN_SPAN / 2;
        c.add(&p, e, None, false, false, t3);
        assert_eq!((c.added(d), c.added(e)), (Some(t3), Some(t3)));
        assert_eq!(c.runs.len(), 3);
        assert_eq!(c.added(RuleId(e.0 + 1)), None);
        // Deleting a run's rules drops the run and their flags.
        p.remove_ids(&[a]);
        c.sync(&p, t3);
        assert_eq!(c.runs.len(), 2);
        assert_eq!(c.added(b), Some(t1));
        assert_eq!(c.n_flagged(), 0);
        p.remove_ids(&[timed]);
        c.sync(&p, t3);
        assert_eq!(c.n_timed(), 0);
    }

    #[test]
    fn another_lineage_starts_afresh() {
        let t0 = Instant::now();
        let mut p = Pipeline::new();
        let mut c = RuleClocks::default();
        let a = add(&mut p, "priority=1,in_port=1,actions=drop");
        c.add(&p, a, None, false, true, t0);
        let mut q = Pipeline::new();
        let b = add(&mut q, "priority=1,in_port=2,actions=drop");
        let t1 = t0 + Duration::from_secs(3);
        c.sync(&q, t1);
        assert_eq!(b, a);
        assert_eq!(c.added(b), Some(t1));
        assert_eq!(c.n_flagged(), 0);
    }
}
