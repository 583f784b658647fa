//! The offload lifecycle as a deterministic state machine: no threads, no
//! clock of its own (see the module documentation of `worker`).

use super::*;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fallback::growing::DenseMap;
use fallback::megaflow::Ufid;
use fallback::ofproto::Match;
use serde::{Serialize, Serializer};

use crate::device::{FlowDevice, FlowError, RuleHandle};
use crate::marks::{Mark, MarkRegistry, OffloadKey, PmdRefs};
use crate::rte::Rule;
use crate::translate::{empty_rule, translate_unchecked_into};

/// Engine settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Marks are `1..=max_marks`; at most every device's `max_mark`.
    pub max_marks: u32,
    /// Time a freed mark stays quarantined on top of the PMDs' quiescent
    /// points: packets the old rule marked may still wait in rx rings.
    pub min_quarantine: Duration,
    /// Insert latencies kept per port for the p99.
    pub latency_window: usize,
    /// This engine is offload shard `shard` of `shards` ([`shard_of`]):
    /// it owns the ports that shard to it and that shard's marks.
    pub shard: u32,
    pub shards: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_marks: crate::device::Capabilities::MAX_MARK,
            min_quarantine: Duration::from_millis(100),
            latency_window: 4096,
            shard: 0,
            shards: 1,
        }
    }
}

/// Upper bounds (µs) of the insert-latency histogram's buckets (the last,
/// +Inf, is implied): 10 µs to 1 s.
pub const LATENCY_BUCKETS_US: [u64; 15] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    1_000_000,
];

/// Insert latency (enqueue → rule created) of one port.
#[derive(Clone, Debug, Default)]
pub(super) struct Latency {
    count: u64,
    sum_us: u128,
    recent_us: VecDeque<u64>,
    /// Inserts per [`LATENCY_BUCKETS_US`] bucket (not cumulative).
    buckets: [u64; LATENCY_BUCKETS_US.len()],
}

impl Latency {
    pub(super) fn record(&mut self, d: Duration, window: usize) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.count += 1;
        self.sum_us += u128::from(us);
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|le| us <= *le) {
            self.buckets[i] += 1;
        }
        if self.recent_us.len() >= window.max(1) {
            self.recent_us.pop_front();
        }
        self.recent_us.push_back(us);
    }

    pub(super) fn summary(&self) -> LatencySummary {
        let avg = if self.count == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.count as f64
        };
        let mut v: Vec<u64> = self.recent_us.iter().copied().collect();
        v.sort_unstable();
        let p99 = match v.len() {
            0 => 0,
            n => v[(n * 99).div_ceil(100).saturating_sub(1)],
        };
        LatencySummary { avg, p99 }
    }

    pub(super) fn histogram(&self) -> LatencyHistogram {
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        let mut acc = 0;
        for n in self.buckets {
            acc += n;
            cumulative.push(acc);
        }
        LatencyHistogram {
            count: self.count,
            sum_us: u64::try_from(self.sum_us).unwrap_or(u64::MAX),
            cumulative,
        }
    }
}

/// Every insert latency of a port as a histogram (Prometheus' shape):
/// `cumulative[i]` inserts took at most `LATENCY_BUCKETS_US[i]` µs; `count`
/// is every insert (the +Inf bucket), `sum_us` their total.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LatencyHistogram {
    pub count: u64,
    pub sum_us: u64,
    pub cumulative: Vec<u64>,
}

/// Inserts per second over the last completed one-second window.
#[derive(Clone, Debug, Default)]
pub(super) struct Rate {
    window_start: Option<Instant>,
    in_window: u64,
    last: f64,
}

impl Rate {
    const WINDOW: Duration = Duration::from_secs(1);

    pub(super) fn record(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Self::WINDOW {
            self.last = self.in_window as f64 / elapsed.as_secs_f64();
            self.window_start = Some(now);
            self.in_window = 0;
        }
        self.in_window += 1;
    }

    pub(super) fn per_second(&self, now: Instant) -> f64 {
        match self.window_start {
            Some(start) => {
                let elapsed = now.saturating_duration_since(start);
                if elapsed >= Self::WINDOW {
                    // The window is stale: everything since it began.
                    self.in_window as f64 / elapsed.as_secs_f64()
                } else {
                    self.last
                }
            }
            None => 0.0,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct PortCounters {
    inserted: u64,
    /// Offers refused (rejected or failed), counted as `failures` by kind.
    refused: u64,
    deleted: u64,
    resets: u64,
    destroy_errors: u64,
    failures: BTreeMap<String, u64>,
    latency: Latency,
    rate: Rate,
}

struct PortEntry {
    device: Arc<dyn FlowDevice>,
    n_rxq: u16,
    /// Failed megaflows (device refusals) in failure order.
    retry: VecDeque<OffloadKey>,
    /// Removing megaflows whose destroy failed.
    stuck: Vec<OffloadKey>,
    counters: PortCounters,
}

struct FlowEntry {
    state: OffloadState,
    r#match: Match,
    refs: PmdRefs,
    /// When this offer was enqueued (latency start).
    enqueued: Instant,
    /// In the pending queue (avoids duplicates there).
    queued: bool,
    /// Published and waiting for its rule in the batch under way (a key
    /// queued twice must not be prepared twice).
    staged: bool,
}

/// See [`OffloadEngine::progress`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Rules created (cumulative).
    pub inserted: u64,
    /// Offers the translator, the device or the marks refused (cumulative).
    pub refused: u64,
}

/// Counters not tied to a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineCounters {
    /// Requests from a PMD the engine does not know (ignored).
    pub unknown_pmd: u64,
    /// Puts whose ufid another megaflow (another match) holds already: left
    /// in software, never sharing that megaflow's rule and mark.
    pub ufid_collisions: u64,
    /// Deletes of a copy the engine had no record of (ignored).
    pub unknown_deletes: u64,
    /// Actions-only modifies (nothing done on the NIC).
    pub modified_in_place: u64,
    /// Megaflows retried after a failure.
    pub retries: u64,
}

/// Average and p99 insert latency in µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub avg: f64,
    pub p99: u64,
}

/// One port's line of `offload status` (the daemon adds the port's name).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PortOffloadStatus {
    pub port: PortId,
    pub rules_installed: usize,
    pub capacity: usize,
    pub marks_in_use: usize,
    /// Megaflows of this port waiting in the engine.
    pub queue_depth: usize,
    pub inserts_per_s: f64,
    pub inserted: u64,
    pub deleted: u64,
    pub resets: u64,
    /// Rejections and failures by reason kind.
    pub failures: BTreeMap<String, u64>,
    pub latency_us: LatencySummary,
    /// Every insert's latency, bucketed ([`LATENCY_BUCKETS_US`]).
    pub latency_histogram: LatencyHistogram,
}

/// Megaflows per state; the fields add up to the megaflows the engine knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    pub software: usize,
    pub pending: usize,
    pub offloaded: usize,
    pub rejected: usize,
    pub failed: usize,
    pub removing: usize,
}

impl StateCounts {
    pub fn total(&self) -> usize {
        self.software + self.pending + self.offloaded + self.rejected + self.failed + self.removing
    }

    fn add(&mut self, s: &OffloadState) {
        match s {
            OffloadState::Software => self.software += 1,
            OffloadState::Pending => self.pending += 1,
            OffloadState::Offloaded { .. } => self.offloaded += 1,
            OffloadState::Rejected { .. } => self.rejected += 1,
            OffloadState::Failed { .. } => self.failed += 1,
            OffloadState::Removing { .. } => self.removing += 1,
        }
    }
}

/// `offload status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OffloadStatus {
    pub ports: Vec<PortOffloadStatus>,
    pub states: StateCounts,
    /// Rejected megaflows by reason kind.
    pub rejected: BTreeMap<String, usize>,
    /// Failed megaflows by reason kind.
    pub failed: BTreeMap<String, usize>,
    pub marks_in_use: usize,
    pub marks_quarantined: usize,
    /// PMD offers refused because the request queue was full (filled in by
    /// [`OffloadWorker::status`]).
    pub offload_queue_full: u64,
    /// Requests waiting in the channel (filled in by the worker).
    pub request_queue_len: usize,
    pub counters: EngineCounters,
}

impl EngineCounters {
    /// Adds another shard's counters.
    pub fn merge(&mut self, o: EngineCounters) {
        let EngineCounters {
            unknown_pmd,
            ufid_collisions,
            unknown_deletes,
            modified_in_place,
            retries,
        } = o;
        self.unknown_pmd += unknown_pmd;
        self.ufid_collisions += ufid_collisions;
        self.unknown_deletes += unknown_deletes;
        self.modified_in_place += modified_in_place;
        self.retries += retries;
    }
}

impl StateCounts {
    /// Adds another shard's counts.
    pub fn merge(&mut self, o: StateCounts) {
        self.software += o.software;
        self.pending += o.pending;
        self.offloaded += o.offloaded;
        self.rejected += o.rejected;
        self.failed += o.failed;
        self.removing += o.removing;
    }
}

impl OffloadStatus {
    /// Adds another shard's status (its ports are its own: shards own
    /// disjoint ports).
    pub fn merge(&mut self, o: OffloadStatus) {
        self.ports.extend(o.ports);
        self.states.merge(o.states);
        for (k, n) in o.rejected {
            *self.rejected.entry(k).or_insert(0) += n;
        }
        for (k, n) in o.failed {
            *self.failed.entry(k).or_insert(0) += n;
        }
        self.marks_in_use += o.marks_in_use;
        self.marks_quarantined += o.marks_quarantined;
        self.offload_queue_full = self.offload_queue_full.max(o.offload_queue_full);
        self.request_queue_len += o.request_queue_len;
        self.counters.merge(o.counters);
    }
}

fn ser_display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// One megaflow's line of `megaflow dump` (offload part).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowOffloadInfo {
    #[serde(serialize_with = "ser_display")]
    pub ufid: Ufid,
    pub port: PortId,
    pub state: &'static str,
    pub mark: Option<u32>,
    pub rule: Option<u64>,
    pub reason: Option<String>,
    /// PMDs holding a copy.
    pub pmds: Vec<u32>,
}

/// The offload lifecycle as a pure state machine (see the module docs).
pub struct OffloadEngine {
    config: EngineConfig,
    marks: MarkRegistry,
    ports: BTreeMap<PortId, PortEntry>,
    /// Entries written once, side by side; the index grows a little per
    /// insert (an all-at-once rehash of a large map held every queued
    /// insert behind it for milliseconds).
    flows: DenseMap<OffloadKey, FlowEntry>,
    pending: VecDeque<OffloadKey>,
    /// Failed for want of a mark, in failure order.
    waiting_for_marks: VecDeque<OffloadKey>,
    counters: EngineCounters,
    /// A batch's rules between publication and creation (kept for its
    /// allocation).
    staged: Vec<(OffloadKey, Mark, Rule)>,
    /// Rules to translate into, their lists kept from earlier inserts (at
    /// most a batch's worth: an insert allocates no rule of its own).
    spare_rules: Vec<Rule>,
}

impl OffloadEngine {
    pub fn new(config: EngineConfig) -> Result<OffloadEngine, EngineError> {
        Ok(OffloadEngine {
            marks: MarkRegistry::sharded(
                config.max_marks,
                config.min_quarantine,
                config.shard,
                config.shards,
            )?,
            config,
            ports: BTreeMap::new(),
            flows: DenseMap::new(),
            pending: VecDeque::new(),
            waiting_for_marks: VecDeque::new(),
            counters: EngineCounters::default(),
            staged: Vec::new(),
            spare_rules: Vec::new(),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn marks(&self) -> &MarkRegistry {
        &self.marks
    }

    pub fn counters(&self) -> EngineCounters {
        self.counters
    }

    /// The epoch PMDs must report past for the quarantines so far to end.
    pub fn epoch(&self) -> Epoch {
        self.marks.epoch()
    }

    /// Megaflows the engine knows (one per port and ufid).
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn state(&self, port: PortId, ufid: Ufid) -> Option<&OffloadState> {
        self.flows.get(&OffloadKey { port, ufid }).map(|e| &e.state)
    }

    /// The PMDs holding a copy of the megaflow, with their handles.
    pub fn sharers(&self, port: PortId, ufid: Ufid) -> Option<&PmdRefs> {
        self.flows.get(&OffloadKey { port, ufid }).map(|e| &e.refs)
    }

    pub fn flows(&self) -> impl Iterator<Item = (OffloadKey, &OffloadState)> + '_ {
        self.flows.iter().map(|(k, e)| (*k, &e.state))
    }

    /// Work queued for [`OffloadEngine::process`].
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Megaflows failed for want of a mark: worth a [`OffloadEngine::process`]
    /// call once PMDs have reported past more quarantines.
    pub fn waiting_for_marks(&self) -> usize {
        self.waiting_for_marks.len()
    }

    // ---- PMDs -------------------------------------------------------------

    pub fn add_pmd(&mut self, pmd: PmdId) {
        self.marks.add_pmd(pmd);
    }

    /// A PMD stopped: its copies are gone (as if deleted, without
    /// unpublishing to it) and it no longer holds quarantines back.
    pub fn remove_pmd(&mut self, pmd: PmdId, now: Instant, out: &mut dyn UpdateSink) {
        let keys: Vec<OffloadKey> = self
            .flows
            .iter()
            .filter(|(_, e)| e.refs.get(pmd).is_some())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.drop_copy(key, pmd, false, now, out);
        }
        self.marks.remove_pmd(pmd);
    }

    /// `pmd` applied every update sent before `seen` was the current epoch
    /// (it read the epoch, then drained its updates).
    pub fn pmd_quiescent(&mut self, pmd: PmdId, seen: Epoch) {
        self.marks.pmd_quiescent(pmd, seen);
    }

    // ---- ports ------------------------------------------------------------

    /// Gives port `port` a flow device with `n_rxq` rx queues (RSS spreads
    /// marked packets over them). Replaces (as a removal) a device the port
    /// had. Its software megaflows are offered.
    pub fn add_port(
        &mut self,
        port: PortId,
        device: Arc<dyn FlowDevice>,
        n_rxq: u16,
        now: Instant,
        out: &mut dyn UpdateSink,
    ) -> Result<(), EngineError> {
        let device_max = device.capabilities().max_mark;
        let pool_max = self.marks.pool().max();
        if device.capabilities().mark && device_max < pool_max {
            return Err(EngineError::MarkRange {
                port,
                device_max,
                pool_max,
            });
        }
        if self.ports.contains_key(&port) {
            self.remove_port(port, now, out);
        }
        self.ports.insert(
            port,
            PortEntry {
                device,
                n_rxq,
                retry: VecDeque::new(),
                stuck: Vec::new(),
                counters: PortCounters::default(),
            },
        );
        for (key, e) in self.flows.iter_mut() {
            if key.port == port && e.state == OffloadState::Software {
                e.state = OffloadState::Pending;
                e.enqueued = now;
                if !e.queued {
                    e.queued = true;
                    self.pending.push_back(*key);
                }
            }
        }
        Ok(())
    }

    /// The port is going away: destroys exactly its rules, releases their
    /// marks and drops its device. Its megaflows stay as `Software` until
    /// their PMDs delete them (and Removing ones are gone).
    pub fn remove_port(&mut self, port: PortId, now: Instant, out: &mut dyn UpdateSink) {
        let Some(entry) = self.ports.remove(&port) else {
            return;
        };
        let mut gone = Vec::new();
        let mut destroy_failed = false;
        for (key, e) in self.flows.iter_mut().filter(|(k, _)| k.port == port) {
            if let Some(rule) = e.state.rule() {
                destroy_failed |= entry.device.destroy(rule).is_err();
            }
            if let Some(mark) = e.state.mark() {
                release_mark(&mut self.marks, key, mark, &e.refs, now, out);
            }
            if matches!(e.state, OffloadState::Removing { .. }) {
                gone.push(*key);
            }
            e.state = OffloadState::Software;
        }
        if destroy_failed {
            // One device per port: flush takes exactly this port's rules.
            // If that fails too the device is beyond help; it goes anyway.
            let _ = entry.device.flush();
        }
        for key in gone {
            self.flows.remove(&key);
        }
    }

    /// The port's NIC lost all its rules: its megaflows go back to Pending
    /// (their marks are released first) and are offered again.
    pub fn device_reset(&mut self, port: PortId, now: Instant, out: &mut dyn UpdateSink) {
        let Some(entry) = self.ports.get_mut(&port) else {
            return;
        };
        entry.counters.resets += 1;
        // Rules created between the reset and this notice survived it, and
        // nothing tracks them once their megaflows are re-offered: their
        // marks (released below, later reused) would tag packets for other
        // megaflows. Start from an empty table.
        if entry.device.flush().is_err() {
            *entry
                .counters
                .failures
                .entry("reset_flush".to_string())
                .or_insert(0) += 1;
        }
        entry.retry.clear();
        entry.stuck.clear();
        let mut gone = Vec::new();
        for (key, e) in self.flows.iter_mut().filter(|(k, _)| k.port == port) {
            if let Some(mark) = e.state.mark() {
                release_mark(&mut self.marks, key, mark, &e.refs, now, out);
            }
            match e.state {
                OffloadState::Removing { .. } => gone.push(*key),
                OffloadState::Offloaded { .. } | OffloadState::Failed { .. } => {
                    e.state = OffloadState::Pending;
                    e.enqueued = now;
                    if !e.queued {
                        e.queued = true;
                        self.pending.push_back(*key);
                    }
                }
                _ => {}
            }
        }
        for key in gone {
            self.flows.remove(&key);
        }
    }

    // ---- requests ---------------------------------------------------------

    /// Applies one request. Device work for new megaflows happens in
    /// [`OffloadEngine::process`]; deletes touch the device here.
    pub fn handle(&mut self, req: OffloadRequest, now: Instant, out: &mut dyn UpdateSink) {
        match req {
            OffloadRequest::Put(put) => self.put(put, out),
            OffloadRequest::Modify { old, new } => {
                if old == new.ufid {
                    self.modify_actions(new, out);
                } else {
                    self.delete(new.pmd, new.port, old, now, out);
                    self.put(new, out);
                }
            }
            OffloadRequest::Delete { pmd, port, ufid } => self.delete(pmd, port, ufid, now, out),
        }
    }

    fn put(&mut self, put: PutRequest, out: &mut dyn UpdateSink) {
        if self.marks.pmd_epoch(put.pmd).is_none() {
            self.counters.unknown_pmd += 1;
            return;
        }
        let key = OffloadKey {
            port: put.port,
            ufid: put.ufid,
        };
        let has_device = self.ports.contains_key(&put.port);
        let Some(e) = self.flows.get_or_insert_with(key, || FlowEntry {
            state: if has_device {
                OffloadState::Pending
            } else {
                OffloadState::Software
            },
            r#match: put.r#match,
            refs: PmdRefs::default(),
            enqueued: put.enqueued,
            queued: false,
            staged: false,
        }) else {
            // Only a bug leaves the map's index and entries out of step;
            // the megaflow then stays in software.
            return;
        };
        if e.r#match != put.r#match {
            // Another megaflow under this ufid (a hash collision): sharing
            // its rule and mark would give this PMD's packets the other
            // megaflow's match. This one stays in software.
            self.counters.ufid_collisions += 1;
            return;
        }
        let previous = e.refs.insert(put.pmd, put.handle);
        if let OffloadState::Removing {
            port, mark, rule, ..
        } = e.state
        {
            // The rule survived its failed destroy: use it again.
            e.state = OffloadState::Offloaded { port, mark, rule };
        }
        match e.state {
            OffloadState::Offloaded { mark, .. } if previous != Some(put.handle) => {
                out.send(
                    put.pmd,
                    PmdUpdate::Publish {
                        mark,
                        handle: put.handle,
                    },
                );
            }
            OffloadState::Pending if !e.queued => {
                e.queued = true;
                self.pending.push_back(key);
            }
            _ => {}
        }
    }

    fn modify_actions(&mut self, new: PutRequest, out: &mut dyn UpdateSink) {
        let key = OffloadKey {
            port: new.port,
            ufid: new.ufid,
        };
        let known = self
            .flows
            .get(&key)
            .is_some_and(|e| e.refs.get(new.pmd).is_some());
        if known {
            // Same match: the rule and the mark stay; only a new copy needs
            // publishing, which put does.
            self.counters.modified_in_place += 1;
        }
        self.put(new, out);
    }

    fn delete(
        &mut self,
        pmd: PmdId,
        port: PortId,
        ufid: Ufid,
        now: Instant,
        out: &mut dyn UpdateSink,
    ) {
        let key = OffloadKey { port, ufid };
        let held = self
            .flows
            .get(&key)
            .is_some_and(|e| e.refs.get(pmd).is_some());
        if !held {
            self.counters.unknown_deletes += 1;
            return;
        }
        self.drop_copy(key, pmd, true, now, out);
    }

    /// Removes `pmd`'s copy; the last copy takes the rule and mark along.
    fn drop_copy(
        &mut self,
        key: OffloadKey,
        pmd: PmdId,
        unpublish: bool,
        now: Instant,
        out: &mut dyn UpdateSink,
    ) {
        let Some(e) = self.flows.get_mut(&key) else {
            return;
        };
        if e.refs.remove(pmd).is_none() {
            return;
        }
        if let (Some(mark), true) = (e.state.mark(), unpublish) {
            out.send(pmd, PmdUpdate::Unpublish { mark });
        }
        if !e.refs.is_empty() {
            return;
        }
        match e.state {
            OffloadState::Offloaded { port, mark, rule } => {
                self.destroy_rule(key, port, mark, rule, now, out);
            }
            _ => {
                self.flows.remove(&key);
            }
        }
    }

    /// Destroys an entry's rule (every copy already unpublished); on
    /// success the mark goes to quarantine and the entry away, and a failed
    /// megaflow of the port gets the room.
    fn destroy_rule(
        &mut self,
        key: OffloadKey,
        port: PortId,
        mark: Mark,
        rule: RuleHandle,
        now: Instant,
        out: &mut dyn UpdateSink,
    ) {
        let result = match self.ports.get(&port) {
            Some(p) => p.device.destroy(rule),
            // Cannot happen (port removal clears its rules); nothing to destroy.
            None => Ok(()),
        };
        match result {
            // Invalid: the device no longer knows the rule (reset unseen yet).
            Ok(()) | Err(FlowError::Invalid { .. }) => {
                if let Some(e) = self.flows.remove(&key) {
                    release_mark(&mut self.marks, &key, mark, &e.refs, now, out);
                }
                if let Some(p) = self.ports.get_mut(&port) {
                    p.counters.deleted += 1;
                }
                self.room_freed(port, now, out);
            }
            Err(error) => {
                if let Some(e) = self.flows.get_mut(&key) {
                    e.state = OffloadState::Removing {
                        port,
                        mark,
                        rule,
                        error: Box::new(error),
                    };
                }
                if let Some(p) = self.ports.get_mut(&port) {
                    p.counters.destroy_errors += 1;
                    p.stuck.push(key);
                }
            }
        }
    }

    /// A rule left `port`: finish stuck removals, and retry one failed megaflow.
    fn room_freed(&mut self, port: PortId, now: Instant, out: &mut dyn UpdateSink) {
        let Some(p) = self.ports.get_mut(&port) else {
            return;
        };
        for key in std::mem::take(&mut p.stuck) {
            if let Some(OffloadState::Removing {
                port, mark, rule, ..
            }) = self.flows.get(&key).map(|e| e.state.clone())
            {
                // Not recursive beyond one level: a success here empties
                // `stuck` for the nested call.
                self.destroy_rule(key, port, mark, rule, now, out);
            }
        }
        let Some(p) = self.ports.get_mut(&port) else {
            return;
        };
        while let Some(key) = p.retry.pop_front() {
            if let Some(e) = self.flows.get_mut(&key) {
                if matches!(e.state, OffloadState::Failed { .. }) {
                    self.counters.retries += 1;
                    e.state = OffloadState::Pending;
                    e.enqueued = now;
                    if !e.queued {
                        e.queued = true;
                        self.pending.push_back(key);
                    }
                    break;
                }
            }
        }
    }

    // ---- device work ------------------------------------------------------

    /// Offers up to `budget` queued megaflows to their devices. Returns how
    /// many were offered. Also ends quarantines the PMDs' reports allow and
    /// retries megaflows that were waiting for a mark.
    pub fn process(&mut self, now: Instant, budget: usize, out: &mut dyn UpdateSink) -> usize {
        self.marks.reclaim(now);
        let pool = self.marks.pool();
        let mut available = (pool.capacity() as usize)
            .saturating_sub(pool.in_use())
            .saturating_sub(pool.quarantined());
        while available > 0 {
            let Some(key) = self.waiting_for_marks.pop_front() else {
                break;
            };
            if let Some(e) = self.flows.get_mut(&key) {
                if matches!(
                    &e.state,
                    OffloadState::Failed { error } if matches!(**error, FailReason::Marks(_))
                ) {
                    self.counters.retries += 1;
                    available -= 1;
                    e.state = OffloadState::Pending;
                    e.enqueued = now;
                    if !e.queued {
                        e.queued = true;
                        self.pending.push_back(key);
                    }
                }
            }
        }
        // A batch: every megaflow translated, validated and given a mark,
        // then every mark published (one flush of the sink: one message
        // per PMD), then every rule created. Publication still comes
        // before creation for each of them (DESIGN §3).
        let mut staged = std::mem::take(&mut self.staged);
        let mut done = 0;
        while done < budget {
            let Some(key) = self.pending.pop_front() else {
                break;
            };
            done += 1;
            let mut rule = self.spare_rules.pop().unwrap_or_else(empty_rule);
            match self.prepare(key, now, out, &mut rule) {
                Some(mark) => staged.push((key, mark, rule)),
                None => self.spare_rules.push(rule),
            }
        }
        if !staged.is_empty() {
            out.flush();
        }
        for (key, mark, rule) in staged.drain(..) {
            self.create(key, mark, &rule, now, out);
            self.spare_rules.push(rule);
        }
        self.staged = staged;
        done
    }

    /// Put, device side, first half: translate (into `rule`) → validate →
    /// mark → publish. Returns the mark, filled in `rule`, when the rule is
    /// to be created.
    fn prepare(
        &mut self,
        key: OffloadKey,
        now: Instant,
        out: &mut dyn UpdateSink,
        rule: &mut Rule,
    ) -> Option<Mark> {
        let e = self.flows.get_mut(&key)?;
        e.queued = false;
        if e.state != OffloadState::Pending || e.staged {
            return None;
        }
        let Some(port) = self.ports.get_mut(&key.port) else {
            e.state = OffloadState::Software;
            return None;
        };
        let caps = *port.device.capabilities();
        // Unchecked: the device's validate below checks the rule against
        // the capabilities, once.
        let translation = match translate_unchecked_into(&e.r#match, &caps, 1, port.n_rxq, rule) {
            Ok(t) => t,
            Err(r) => {
                refuse(
                    e,
                    port,
                    key,
                    OffloadState::Rejected {
                        reason: Box::new(RejectReason::Translate(r)),
                    },
                );
                return None;
            }
        };
        if translation.port != key.port {
            let reason = RejectReason::PortMismatch {
                port: key.port,
                rule_port: translation.port,
            };
            let reason = Box::new(reason);
            refuse(e, port, key, OffloadState::Rejected { reason });
            return None;
        }
        if let Err(err) = port.device.validate(rule) {
            refuse(e, port, key, refusal(err));
            return None;
        }
        let mark = match self.marks.assign(key, now) {
            Ok(m) => m,
            Err(err) => {
                let state = OffloadState::Failed {
                    error: Box::new(FailReason::Marks(err)),
                };
                refuse(e, port, key, state);
                self.waiting_for_marks.push_back(key);
                return None;
            }
        };
        rule.set_mark(mark.get());
        for (pmd, handle) in e.refs.iter() {
            out.send(pmd, PmdUpdate::Publish { mark, handle });
        }
        e.staged = true;
        Some(mark)
    }

    /// Put, device side, second half: create the published rule; a
    /// refusal unpublishes and releases the mark.
    fn create(
        &mut self,
        key: OffloadKey,
        mark: Mark,
        rule: &Rule,
        now: Instant,
        out: &mut dyn UpdateSink,
    ) {
        let (Some(e), Some(port)) = (self.flows.get_mut(&key), self.ports.get_mut(&key.port))
        else {
            // Cannot happen: nothing runs between the halves.
            return;
        };
        e.staged = false;
        match port.device.create_validated(rule) {
            Ok(rule) => {
                e.state = OffloadState::Offloaded {
                    port: key.port,
                    mark,
                    rule,
                };
                let c = &mut port.counters;
                c.inserted += 1;
                c.latency.record(
                    now.saturating_duration_since(e.enqueued),
                    self.config.latency_window,
                );
                c.rate.record(now);
            }
            Err(err) => {
                release_mark(&mut self.marks, &key, mark, &e.refs, now, out);
                refuse(e, port, key, refusal(err));
            }
        }
    }

    // ---- reports ----------------------------------------------------------

    pub fn state_counts(&self) -> StateCounts {
        let mut c = StateCounts::default();
        for e in self.flows.values() {
            c.add(&e.state);
        }
        c
    }

    /// Rules created and offers refused so far, over every port: O(ports),
    /// for a caller watching a burst of offers settle without the
    /// O(megaflows) walk of [`OffloadEngine::status`].
    pub fn progress(&self) -> Progress {
        let mut p = Progress::default();
        for port in self.ports.values() {
            p.inserted += port.counters.inserted;
            p.refused += port.counters.refused;
        }
        p
    }

    /// `offload status` (O(megaflows): a control-path call).
    pub fn status(&self, now: Instant) -> OffloadStatus {
        let mut per_port: BTreeMap<PortId, (usize, usize)> = BTreeMap::new();
        let mut states = StateCounts::default();
        let mut rejected = BTreeMap::new();
        let mut failed = BTreeMap::new();
        for (key, e) in self.flows.iter() {
            states.add(&e.state);
            let slot = per_port.entry(key.port).or_default();
            match &e.state {
                OffloadState::Offloaded { .. } | OffloadState::Removing { .. } => slot.0 += 1,
                OffloadState::Pending => slot.1 += 1,
                OffloadState::Rejected { reason } => {
                    *rejected.entry(reason.kind()).or_insert(0) += 1;
                }
                OffloadState::Failed { error } => {
                    *failed.entry(error.kind().to_string()).or_insert(0) += 1;
                }
                OffloadState::Software => {}
            }
        }
        let ports = self
            .ports
            .iter()
            .map(|(port, p)| {
                let (rules, queued) = per_port.get(port).copied().unwrap_or_default();
                let c = &p.counters;
                PortOffloadStatus {
                    port: *port,
                    rules_installed: rules,
                    capacity: p.device.capabilities().max_rules,
                    marks_in_use: rules,
                    queue_depth: queued,
                    inserts_per_s: c.rate.per_second(now),
                    inserted: c.inserted,
                    deleted: c.deleted,
                    resets: c.resets,
                    failures: c.failures.clone(),
                    latency_us: c.latency.summary(),
                    latency_histogram: c.latency.histogram(),
                }
            })
            .collect();
        OffloadStatus {
            ports,
            states,
            rejected,
            failed,
            marks_in_use: self.marks.in_use(),
            marks_quarantined: self.marks.pool().quarantined(),
            offload_queue_full: 0,
            request_queue_len: 0,
            counters: self.counters,
        }
    }

    /// Per-megaflow offload state for `megaflow dump`, ordered by port and ufid.
    pub fn dump(&self) -> Vec<FlowOffloadInfo> {
        let mut v: Vec<FlowOffloadInfo> = self
            .flows
            .iter()
            .map(|(key, e)| {
                let mut pmds: Vec<u32> = e.refs.pmds().map(|p| p.0).collect();
                pmds.sort_unstable();
                FlowOffloadInfo {
                    ufid: key.ufid,
                    port: key.port,
                    state: e.state.name(),
                    mark: e.state.mark().map(Mark::get),
                    rule: e.state.rule().map(|r| r.0),
                    reason: e.state.reason(),
                    pmds,
                }
            })
            .collect();
        v.sort_by_key(|i| (i.port, i.ufid));
        v
    }
}

/// Unpublishes `key`'s mark from every PMD holding a copy and quarantines it.
fn release_mark(
    marks: &mut MarkRegistry,
    key: &OffloadKey,
    mark: Mark,
    refs: &PmdRefs,
    now: Instant,
    out: &mut dyn UpdateSink,
) {
    for pmd in refs.pmds() {
        out.send(pmd, PmdUpdate::Unpublish { mark });
    }
    // Cannot fail: the mark is the one the entry holds (the lifecycle
    // property test checks the registry's owners against the entries).
    let _ = marks.unassign(key, mark, now);
}

/// DESIGN §3: Unsupported/Invalid are permanent, NoSpace/Device are not.
fn refusal(err: FlowError) -> OffloadState {
    if err.is_permanent() {
        OffloadState::Rejected {
            reason: Box::new(RejectReason::Device(err)),
        }
    } else {
        OffloadState::Failed {
            error: Box::new(FailReason::Device(err)),
        }
    }
}

/// Records a refused offer: state, counters, and the retry queue for
/// device failures.
fn refuse(e: &mut FlowEntry, port: &mut PortEntry, key: OffloadKey, state: OffloadState) {
    let kind = match &state {
        OffloadState::Rejected { reason } => reason.kind(),
        OffloadState::Failed { error } => {
            if matches!(**error, FailReason::Device(_)) {
                port.retry.push_back(key);
            }
            error.kind().to_string()
        }
        other => other.name().to_string(),
    };
    *port.counters.failures.entry(kind).or_insert(0) += 1;
    port.counters.refused += 1;
    e.state = state;
}

// ---- the thread -----------------------------------------------------------
