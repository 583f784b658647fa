//! The offload worker (DESIGN §2 `worker`, §3, §4).
//!
//! [`OffloadEngine`] is the whole lifecycle as a deterministic state machine:
//! no threads, no clock of its own (`now` is a parameter), the NICs behind
//! the [`FlowDevice`]s it is given per port, and PMD table updates handed to
//! an [`UpdateSink`]. [`OffloadWorker`] is the thin thread around it: PMDs
//! `try_send` requests on a bounded crossbeam channel (a full queue leaves
//! the megaflow in software), the thread blocks on receive, drains a batch,
//! and sends [`PmdUpdate`]s on one unbounded channel per PMD, which each PMD
//! applies at the top of its poll loop ([`PmdOffload::quiesce`]). Nothing
//! here ever waits for a PMD, and no PMD ever waits for the worker.
//!
//! Per megaflow (one entry per ingress port and ufid, shared by every PMD
//! that installed it) the state is one of [`OffloadState`]:
//! - `Put`: a new entry is `Pending` (or `Software` when its port has no
//!   flow device) and queued; [`OffloadEngine::process`] translates it,
//!   validates, allocates a mark, publishes mark → megaflow to every PMD
//!   holding a copy, then creates the rule. A refusal unpublishes, releases
//!   the mark and records why: `Rejected` (translate refused, or the device
//!   said `Unsupported`/`Invalid`: permanent) or `Failed` (`NoSpace`,
//!   `Device`, marks exhausted: retried when that changes).
//! - `Modify` with the same ufid (actions changed): the rule and the mark
//!   stay; with a different ufid (the match changed): delete, then put.
//! - `Delete`: the PMD's copy goes (it is unpublished there); when the last
//!   copy goes, the rule is destroyed, the mark unpublished, quarantined
//!   and later freed. A failed destroy leaves the entry `Removing`, still
//!   holding its mark, until the device changes.
//! - Port removal destroys that port's rules and releases their marks; its
//!   megaflows stay, in `Software`, until their PMDs delete them.
//! - NIC reset: the port's rules are gone; its megaflows go back to
//!   `Pending` and are offered again.
//!
//! Failed megaflows are retried one per rule destroyed on their port, all
//! of them on a reset, and those waiting for a mark as marks leave
//! quarantine: never in a loop of their own.
//!
//! Using the thread: the daemon spawns one [`OffloadWorker`], gives it each
//! NIC port's device ([`OffloadWorker::add_port`]; VM ports get none, so
//! their megaflows stay `Software`), and registers each PMD
//! ([`OffloadWorker::add_pmd`]), moving the returned [`PmdOffload`] into the
//! PMD thread. There, at the top of every poll loop, [`PmdOffload::quiesce`]
//! applies the worker's [`PmdUpdate`]s to the PMD's [`MarkTable`] and
//! reports the quiescent point; the fast path calls
//! [`PmdOffload::lookup`]. After an upcall the PMD calls
//! [`PmdOffload::offer_put`] (a `QueueFull` leaves the megaflow in software
//! until the next revalidation sweep offers it again); when it removes a
//! megaflow, [`PmdOffload::offer_delete`]. A datapath that keeps its own
//! MarkTable and delete backlog uses the two halves instead
//! ([`PmdOffload::into_parts`]: [`PmdRequests`], [`PmdUpdates`]).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};
use fallback::cache::FlowHandle;
use fallback::megaflow::{Megaflow, Ufid};
use fallback::ofproto::Match;
use hashbrown::HashMap;
use serde::{Serialize, Serializer};
use thiserror::Error;

use crate::device::{FlowDevice, FlowError, RuleHandle};
use crate::marks::{Mark, MarkError, MarkRegistry, MarkTable, OffloadKey, PmdRefs};
use crate::translate::{translate, Rejected};

pub use crate::marks::{Epoch, PmdId, PmdUpdate, PortId};

/// A PMD installed a megaflow and offers it for offload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutRequest {
    pub pmd: PmdId,
    /// The megaflow's `in_port`: the port whose NIC gets the rule.
    pub port: PortId,
    pub ufid: Ufid,
    pub r#match: Match,
    /// The PMD's own copy, which its [`MarkTable`] will point to.
    pub handle: FlowHandle,
    /// When the PMD enqueued the request (for the insert latency).
    pub enqueued: Instant,
}

/// What PMDs (and the daemon on their behalf) ask of the worker.
// The variants are sized by the match (176 bytes); boxing would put an
// allocation on the PMD's upcall path for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadRequest {
    Put(PutRequest),
    /// Revalidation changed a megaflow of `new.pmd` on `new.port`. Same
    /// ufid: only its actions changed (`new.handle` is its copy, possibly
    /// a new one). Another ufid: the match changed; `old` is deleted, then
    /// `new` is put (break before make).
    Modify {
        old: Ufid,
        new: PutRequest,
    },
    /// `pmd` removed its copy of the megaflow.
    Delete {
        pmd: PmdId,
        port: PortId,
        ufid: Ufid,
    },
}

/// Why a megaflow cannot be offloaded (permanent for that megaflow).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RejectReason {
    #[error("{0}")]
    Translate(Rejected),
    #[error(
        "the match's in_port {rule_port} is not port {port}; this is a flowmark bug, report it"
    )]
    PortMismatch { port: PortId, rule_port: PortId },
    #[error("{0}")]
    Device(FlowError),
}

impl RejectReason {
    /// A short stable key for counting by reason.
    pub fn kind(&self) -> String {
        match self {
            RejectReason::Translate(r) => match r.field {
                Some(f) => format!("translate:{f}"),
                None => "translate".to_string(),
            },
            RejectReason::PortMismatch { .. } => "port_mismatch".to_string(),
            RejectReason::Device(e) => e.kind().to_string(),
        }
    }
}

/// Why a valid rule is not on the NIC (retried when things change).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FailReason {
    #[error("{0}")]
    Device(FlowError),
    #[error("{0}")]
    Marks(MarkError),
}

impl FailReason {
    pub fn kind(&self) -> &'static str {
        match self {
            FailReason::Device(e) => e.kind(),
            FailReason::Marks(_) => "marks_exhausted",
        }
    }
}

/// A megaflow's offload state (DESIGN §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffloadState {
    /// Not offered: the port has no flow device.
    Software,
    /// Queued for the device.
    Pending,
    Offloaded {
        port: PortId,
        mark: Mark,
        rule: RuleHandle,
    },
    Rejected {
        reason: RejectReason,
    },
    Failed {
        error: FailReason,
    },
    /// Every PMD's copy is gone but destroying the rule failed: the rule
    /// may still mark packets, so the mark stays reserved until the device
    /// changes (a later destroy succeeds, a reset, the port's removal).
    Removing {
        port: PortId,
        mark: Mark,
        rule: RuleHandle,
        error: FlowError,
    },
}

impl OffloadState {
    /// `software|pending|offloaded|rejected|failed|removing` (DESIGN §5).
    pub fn name(&self) -> &'static str {
        match self {
            OffloadState::Software => "software",
            OffloadState::Pending => "pending",
            OffloadState::Offloaded { .. } => "offloaded",
            OffloadState::Rejected { .. } => "rejected",
            OffloadState::Failed { .. } => "failed",
            OffloadState::Removing { .. } => "removing",
        }
    }

    /// The mark this megaflow holds (its rule is, or may be, on the NIC).
    pub fn mark(&self) -> Option<Mark> {
        match self {
            OffloadState::Offloaded { mark, .. } | OffloadState::Removing { mark, .. } => {
                Some(*mark)
            }
            _ => None,
        }
    }

    pub fn rule(&self) -> Option<RuleHandle> {
        match self {
            OffloadState::Offloaded { rule, .. } | OffloadState::Removing { rule, .. } => {
                Some(*rule)
            }
            _ => None,
        }
    }

    /// Why it is not offloaded (Rejected, Failed) or not yet gone (Removing).
    pub fn reason(&self) -> Option<String> {
        match self {
            OffloadState::Rejected { reason } => Some(reason.to_string()),
            OffloadState::Failed { error } => Some(error.to_string()),
            OffloadState::Removing { error, .. } => Some(error.to_string()),
            _ => None,
        }
    }
}

/// Engine-level misuse, reported to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    #[error(
        "port {port}'s NIC carries marks up to {device_max} but the mark pool goes to {pool_max}; \
         set the offload max-marks setting to at most {device_max}"
    )]
    MarkRange {
        port: PortId,
        device_max: u32,
        pool_max: u32,
    },
    #[error(transparent)]
    Marks(#[from] MarkError),
}

/// Receives the table updates meant for each PMD.
pub trait UpdateSink {
    fn send(&mut self, pmd: PmdId, update: PmdUpdate);
}

/// Collects updates in order (tests, or a caller that forwards them).
impl UpdateSink for Vec<(PmdId, PmdUpdate)> {
    fn send(&mut self, pmd: PmdId, update: PmdUpdate) {
        self.push((pmd, update));
    }
}

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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_marks: crate::device::Capabilities::MAX_MARK,
            min_quarantine: Duration::from_millis(100),
            latency_window: 4096,
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
struct Latency {
    count: u64,
    sum_us: u128,
    recent_us: VecDeque<u64>,
    /// Inserts per [`LATENCY_BUCKETS_US`] bucket (not cumulative).
    buckets: [u64; LATENCY_BUCKETS_US.len()],
}

impl Latency {
    fn record(&mut self, d: Duration, window: usize) {
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

    fn summary(&self) -> LatencySummary {
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

    fn histogram(&self) -> LatencyHistogram {
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
struct Rate {
    window_start: Option<Instant>,
    in_window: u64,
    last: f64,
}

impl Rate {
    const WINDOW: Duration = Duration::from_secs(1);

    fn record(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Self::WINDOW {
            self.last = self.in_window as f64 / elapsed.as_secs_f64();
            self.window_start = Some(now);
            self.in_window = 0;
        }
        self.in_window += 1;
    }

    fn per_second(&self, now: Instant) -> f64 {
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
    flows: HashMap<OffloadKey, FlowEntry>,
    pending: VecDeque<OffloadKey>,
    /// Failed for want of a mark, in failure order.
    waiting_for_marks: VecDeque<OffloadKey>,
    counters: EngineCounters,
}

impl OffloadEngine {
    pub fn new(config: EngineConfig) -> Result<OffloadEngine, EngineError> {
        Ok(OffloadEngine {
            marks: MarkRegistry::new(config.max_marks, config.min_quarantine)?,
            config,
            ports: BTreeMap::new(),
            flows: HashMap::new(),
            pending: VecDeque::new(),
            waiting_for_marks: VecDeque::new(),
            counters: EngineCounters::default(),
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
            if e.state.mark().is_some() {
                release_mark(&mut self.marks, key, &e.refs, now, out);
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
            if e.state.mark().is_some() {
                release_mark(&mut self.marks, key, &e.refs, now, out);
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
        if self
            .flows
            .get(&key)
            .is_some_and(|e| e.r#match != put.r#match)
        {
            // Another megaflow under this ufid (a hash collision): sharing
            // its rule and mark would give this PMD's packets the other
            // megaflow's match. This one stays in software.
            self.counters.ufid_collisions += 1;
            return;
        }
        let has_device = self.ports.contains_key(&put.port);
        let e = self.flows.entry(key).or_insert_with(|| FlowEntry {
            state: if has_device {
                OffloadState::Pending
            } else {
                OffloadState::Software
            },
            r#match: put.r#match,
            refs: PmdRefs::default(),
            enqueued: put.enqueued,
            queued: false,
        });
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
                    release_mark(&mut self.marks, &key, &e.refs, now, out);
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
                        error,
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
        let mut available = (pool.max() as usize)
            .saturating_sub(pool.in_use())
            .saturating_sub(pool.quarantined());
        while available > 0 {
            let Some(key) = self.waiting_for_marks.pop_front() else {
                break;
            };
            if let Some(e) = self.flows.get_mut(&key) {
                if matches!(
                    e.state,
                    OffloadState::Failed {
                        error: FailReason::Marks(_)
                    }
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
        let mut done = 0;
        while done < budget {
            let Some(key) = self.pending.pop_front() else {
                break;
            };
            done += 1;
            self.offer(key, now, out);
        }
        done
    }

    /// Put, device side: translate → validate → mark → publish → create.
    fn offer(&mut self, key: OffloadKey, now: Instant, out: &mut dyn UpdateSink) {
        let Some(e) = self.flows.get_mut(&key) else {
            return;
        };
        e.queued = false;
        if e.state != OffloadState::Pending {
            return;
        }
        let Some(port) = self.ports.get_mut(&key.port) else {
            e.state = OffloadState::Software;
            return;
        };
        let caps = *port.device.capabilities();
        let mut translation = match translate(&e.r#match, &caps, 1, port.n_rxq) {
            Ok(t) => t,
            Err(r) => {
                refuse(
                    e,
                    port,
                    key,
                    OffloadState::Rejected {
                        reason: RejectReason::Translate(r),
                    },
                );
                return;
            }
        };
        if translation.port != key.port {
            let reason = RejectReason::PortMismatch {
                port: key.port,
                rule_port: translation.port,
            };
            refuse(e, port, key, OffloadState::Rejected { reason });
            return;
        }
        if let Err(err) = port.device.validate(&translation.rule) {
            refuse(e, port, key, refusal(err));
            return;
        }
        let mark = match self.marks.assign(key, now) {
            Ok(m) => m,
            Err(err) => {
                let state = OffloadState::Failed {
                    error: FailReason::Marks(err),
                };
                refuse(e, port, key, state);
                self.waiting_for_marks.push_back(key);
                return;
            }
        };
        translation.set_mark(mark.get());
        for (pmd, handle) in e.refs.iter() {
            out.send(pmd, PmdUpdate::Publish { mark, handle });
        }
        match port.device.create(&translation.rule) {
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
                release_mark(&mut self.marks, &key, &e.refs, now, out);
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

    /// `offload status` (O(megaflows): a control-path call).
    pub fn status(&self, now: Instant) -> OffloadStatus {
        let mut per_port: BTreeMap<PortId, (usize, usize)> = BTreeMap::new();
        let mut states = StateCounts::default();
        let mut rejected = BTreeMap::new();
        let mut failed = BTreeMap::new();
        for (key, e) in &self.flows {
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
    refs: &PmdRefs,
    now: Instant,
    out: &mut dyn UpdateSink,
) {
    if let Some(mark) = marks.mark_of(key) {
        for pmd in refs.pmds() {
            out.send(pmd, PmdUpdate::Unpublish { mark });
        }
        // Cannot fail: the mark came from mark_of.
        let _ = marks.unassign(key, now);
    }
}

/// DESIGN §3: Unsupported/Invalid are permanent, NoSpace/Device are not.
fn refusal(err: FlowError) -> OffloadState {
    if err.is_permanent() {
        OffloadState::Rejected {
            reason: RejectReason::Device(err),
        }
    } else {
        OffloadState::Failed {
            error: FailReason::Device(err),
        }
    }
}

/// Records a refused offer: state, counters, and the retry queue for
/// device failures.
fn refuse(e: &mut FlowEntry, port: &mut PortEntry, key: OffloadKey, state: OffloadState) {
    let kind = match &state {
        OffloadState::Rejected { reason } => reason.kind(),
        OffloadState::Failed { error } => {
            if matches!(error, FailReason::Device(_)) {
                port.retry.push_back(key);
            }
            error.kind().to_string()
        }
        other => other.name().to_string(),
    };
    *port.counters.failures.entry(kind).or_insert(0) += 1;
    e.state = state;
}

// ---- the thread -----------------------------------------------------------

/// Worker thread settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    pub engine: EngineConfig,
    /// Requests the channel holds before PMDs get `QueueFull`.
    pub queue_capacity: usize,
    /// Requests taken per wake-up, and megaflows offered per round.
    pub batch: usize,
    /// While megaflows wait for quarantined marks, how often to look at
    /// the PMDs' reports again (only then; otherwise the thread sleeps in
    /// a blocking receive).
    pub mark_wait_poll: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            engine: EngineConfig::default(),
            queue_capacity: 4096,
            batch: 64,
            mark_wait_poll: Duration::from_millis(50),
        }
    }
}

/// Why a call to the worker failed.
#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("the offload worker thread has stopped; restart flowmark (its log says why)")]
    Stopped,
    #[error("cannot start the offload worker thread: {0}; check the process's thread limit")]
    Spawn(#[source] std::io::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What an offer on the PMD side came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The queue was full: the megaflow stays in software (counted as
    /// `offload_queue_full`) until the next revalidation sweep offers it.
    QueueFull,
    /// The worker is gone.
    Stopped,
}

/// State shared between the worker thread and the PMDs (atomics only).
#[derive(Debug, Default)]
struct Shared {
    /// The engine's epoch, stored after the updates of that epoch were sent.
    epoch: AtomicU64,
    queue_full: AtomicU64,
}

enum Control {
    AddPmd {
        pmd: PmdId,
        updates: Sender<PmdUpdate>,
        seen: Arc<AtomicU64>,
        reply: Sender<()>,
    },
    RemovePmd {
        pmd: PmdId,
        reply: Sender<()>,
    },
    AddPort {
        port: PortId,
        device: Arc<dyn FlowDevice>,
        n_rxq: u16,
        reply: Sender<Result<(), EngineError>>,
    },
    RemovePort {
        port: PortId,
        reply: Sender<()>,
    },
    Reset {
        port: PortId,
        reply: Sender<()>,
    },
    Status {
        reply: Sender<OffloadStatus>,
    },
    Dump {
        reply: Sender<Vec<FlowOffloadInfo>>,
    },
    Shutdown,
}

/// The daemon's handle on the offload thread.
pub struct OffloadWorker {
    requests: Sender<OffloadRequest>,
    control: Sender<Control>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl OffloadWorker {
    pub fn spawn(config: WorkerConfig) -> Result<OffloadWorker, WorkerError> {
        let engine = OffloadEngine::new(config.engine)?;
        let (requests, request_rx) = crossbeam_channel::bounded(config.queue_capacity.max(1));
        let (control, control_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("offload".to_string())
            .spawn(move || {
                WorkerThread {
                    engine,
                    config,
                    requests: request_rx,
                    control: control_rx,
                    shared: thread_shared,
                    pmds: PmdChannels::default(),
                }
                .run()
            })
            .map_err(WorkerError::Spawn)?;
        Ok(OffloadWorker {
            requests,
            control,
            shared,
            thread: Some(thread),
        })
    }

    fn call<T>(&self, make: impl FnOnce(Sender<T>) -> Control) -> Result<T, WorkerError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.control
            .send(make(reply))
            .map_err(|_| WorkerError::Stopped)?;
        rx.recv().map_err(|_| WorkerError::Stopped)
    }

    /// Registers a PMD and gives it its end (the daemon moves it into the
    /// PMD thread).
    pub fn add_pmd(&self, pmd: PmdId) -> Result<PmdOffload, WorkerError> {
        let (updates, updates_rx) = crossbeam_channel::unbounded();
        let seen = Arc::new(AtomicU64::new(0));
        let seen_pmd = Arc::clone(&seen);
        self.call(|reply| Control::AddPmd {
            pmd,
            updates,
            seen: seen_pmd,
            reply,
        })?;
        Ok(PmdOffload {
            requests: PmdRequests {
                pmd,
                requests: self.requests.clone(),
                shared: Arc::clone(&self.shared),
            },
            updates: PmdUpdates {
                updates: updates_rx,
                shared: Arc::clone(&self.shared),
                seen,
            },
            table: MarkTable::new(),
            backlog: VecDeque::new(),
        })
    }

    /// The PMD stopped: its copies are dropped and its quiescence no
    /// longer awaited.
    pub fn remove_pmd(&self, pmd: PmdId) -> Result<(), WorkerError> {
        self.call(|reply| Control::RemovePmd { pmd, reply })
    }

    pub fn add_port(
        &self,
        port: PortId,
        device: Arc<dyn FlowDevice>,
        n_rxq: u16,
    ) -> Result<(), WorkerError> {
        Ok(self.call(|reply| Control::AddPort {
            port,
            device,
            n_rxq,
            reply,
        })??)
    }

    /// Returns once the port's rules are destroyed and its marks released.
    pub fn remove_port(&self, port: PortId) -> Result<(), WorkerError> {
        self.call(|reply| Control::RemovePort { port, reply })
    }

    /// The port's NIC was reset (all its rules lost).
    pub fn device_reset(&self, port: PortId) -> Result<(), WorkerError> {
        self.call(|reply| Control::Reset { port, reply })
    }

    pub fn status(&self) -> Result<OffloadStatus, WorkerError> {
        self.call(|reply| Control::Status { reply })
    }

    pub fn dump(&self) -> Result<Vec<FlowOffloadInfo>, WorkerError> {
        self.call(|reply| Control::Dump { reply })
    }

    /// For the main thread (it may wait): a request that must not be lost.
    pub fn request(&self, req: OffloadRequest) -> Result<(), WorkerError> {
        self.requests.send(req).map_err(|_| WorkerError::Stopped)
    }

    /// For a revalidation sweep's re-offers: never waits.
    pub fn offer(&self, req: OffloadRequest) -> Offer {
        try_send(&self.requests, &self.shared, req)
    }

    /// Requests waiting in the channel.
    pub fn queue_len(&self) -> usize {
        self.requests.len()
    }

    /// Stops the thread after the requests already queued.
    pub fn shutdown(mut self) -> Result<(), WorkerError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), WorkerError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // A send error means the thread is already gone; join says how.
        let _ = self.control.send(Control::Shutdown);
        thread.join().map_err(|_| WorkerError::Stopped)
    }
}

impl Drop for OffloadWorker {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn try_send(requests: &Sender<OffloadRequest>, shared: &Shared, req: OffloadRequest) -> Offer {
    match requests.try_send(req) {
        Ok(()) => Offer::Queued,
        Err(TrySendError::Full(_)) => {
            shared.queue_full.fetch_add(1, Ordering::Relaxed);
            Offer::QueueFull
        }
        Err(TrySendError::Disconnected(_)) => Offer::Stopped,
    }
}

/// A PMD's sending side. Every method is `&self` and never waits; a
/// datapath that keeps its own backlog of refused deletes can use this
/// alone (with [`PmdUpdates`]) instead of [`PmdOffload`].
#[derive(Clone)]
pub struct PmdRequests {
    pmd: PmdId,
    requests: Sender<OffloadRequest>,
    shared: Arc<Shared>,
}

impl PmdRequests {
    pub fn pmd(&self) -> PmdId {
        self.pmd
    }

    /// Offers a megaflow this PMD just installed as `handle`.
    pub fn put(&self, port: PortId, mf: &Megaflow, handle: FlowHandle) -> Offer {
        self.send(OffloadRequest::Put(self.put_request(port, mf, handle)))
    }

    /// Revalidation changed this PMD's megaflow `old` into `mf` (see
    /// [`OffloadRequest::Modify`]). A `QueueFull` must be retried: it may
    /// carry a delete.
    pub fn modify(&self, old: Ufid, port: PortId, mf: &Megaflow, handle: FlowHandle) -> Offer {
        let new = self.put_request(port, mf, handle);
        self.send(OffloadRequest::Modify { old, new })
    }

    /// This PMD removed its copy of a megaflow. A `QueueFull` must be
    /// retried (a lost delete would leave the rule and its mark behind).
    pub fn delete(&self, port: PortId, ufid: Ufid) -> Offer {
        let pmd = self.pmd;
        self.send(OffloadRequest::Delete { pmd, port, ufid })
    }

    /// Sends a request as is (e.g. one kept back earlier).
    pub fn send(&self, req: OffloadRequest) -> Offer {
        try_send(&self.requests, &self.shared, req)
    }

    fn put_request(&self, port: PortId, mf: &Megaflow, handle: FlowHandle) -> PutRequest {
        PutRequest {
            pmd: self.pmd,
            port,
            ufid: mf.ufid,
            r#match: mf.r#match,
            handle,
            enqueued: Instant::now(),
        }
    }
}

/// A PMD's receiving side: the worker's [`PmdUpdate`]s and the PMD's
/// quiescence report.
pub struct PmdUpdates {
    updates: Receiver<PmdUpdate>,
    shared: Arc<Shared>,
    seen: Arc<AtomicU64>,
}

impl PmdUpdates {
    /// Call at the top of every poll loop: hands every pending update to
    /// `apply` (in order), then reports the quiescent point. Returns the
    /// number of updates.
    pub fn drain(&self, mut apply: impl FnMut(PmdUpdate)) -> usize {
        // Read the epoch before draining: every update sent before the
        // worker stored this epoch is applied by the time we report it.
        let epoch = self.shared.epoch.load(Ordering::Acquire);
        let mut n = 0;
        while let Ok(update) = self.updates.try_recv() {
            apply(update);
            n += 1;
        }
        self.seen.store(epoch, Ordering::Release);
        n
    }

    /// [`PmdUpdates::drain`] into a [`MarkTable`].
    pub fn apply_to(&self, table: &mut MarkTable) -> usize {
        self.drain(|u| table.apply(u))
    }
}

/// A PMD's whole end: its [`MarkTable`], its updates and its offers, with
/// a backlog so deletes and modifies are never lost. Owned by the PMD
/// thread; no method blocks.
pub struct PmdOffload {
    requests: PmdRequests,
    updates: PmdUpdates,
    table: MarkTable,
    /// Deletes and modifies the full queue refused, in order. Puts wait
    /// behind them so the worker sees one PMD's requests in order.
    backlog: VecDeque<OffloadRequest>,
}

impl PmdOffload {
    pub fn pmd(&self) -> PmdId {
        self.requests.pmd
    }

    /// The fast path: the PMD's megaflow for a packet's mark. Check the
    /// handle with `FlowCache::get`; a miss or a dead handle means software.
    #[inline]
    pub fn lookup(&self, mark: u32) -> Option<FlowHandle> {
        self.table.lookup(mark)
    }

    pub fn marks(&self) -> &MarkTable {
        &self.table
    }

    /// Call at the top of every poll loop: applies the worker's updates,
    /// reports the quiescent point, and retries kept-back requests.
    /// Returns the number of updates applied.
    pub fn quiesce(&mut self) -> usize {
        let applied = self.updates.apply_to(&mut self.table);
        self.flush_backlog();
        applied
    }

    /// Offers a megaflow this PMD just installed. Never waits.
    pub fn offer_put(&mut self, port: PortId, mf: &Megaflow, handle: FlowHandle) -> Offer {
        self.flush_backlog();
        if !self.backlog.is_empty() {
            self.requests
                .shared
                .queue_full
                .fetch_add(1, Ordering::Relaxed);
            return Offer::QueueFull;
        }
        self.requests.put(port, mf, handle)
    }

    /// See [`PmdRequests::modify`]. Never waits and is never lost.
    pub fn offer_modify(&mut self, old: Ufid, port: PortId, mf: &Megaflow, handle: FlowHandle) {
        let new = self.requests.put_request(port, mf, handle);
        self.send_or_keep(OffloadRequest::Modify { old, new });
    }

    /// This PMD removed its copy of a megaflow. Never waits and is never lost.
    pub fn offer_delete(&mut self, port: PortId, ufid: Ufid) {
        let pmd = self.requests.pmd;
        self.send_or_keep(OffloadRequest::Delete { pmd, port, ufid });
    }

    /// Requests kept back by a full queue.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// The two sides, for a datapath that owns its MarkTable and backlog.
    pub fn into_parts(self) -> (PmdRequests, PmdUpdates) {
        (self.requests, self.updates)
    }

    fn send_or_keep(&mut self, req: OffloadRequest) {
        self.flush_backlog();
        if !self.backlog.is_empty() {
            self.backlog.push_back(req);
            return;
        }
        if let Err(TrySendError::Full(req)) = self.requests.requests.try_send(req) {
            self.backlog.push_back(req);
        }
    }

    fn flush_backlog(&mut self) {
        while let Some(req) = self.backlog.pop_front() {
            match self.requests.requests.try_send(req) {
                Ok(()) => {}
                Err(TrySendError::Full(req)) => {
                    self.backlog.push_front(req);
                    return;
                }
                // The worker is gone: nothing will ever take them.
                Err(TrySendError::Disconnected(_)) => {
                    self.backlog.clear();
                    return;
                }
            }
        }
    }
}

/// The per-PMD update channels and quiescence reports.
#[derive(Default)]
struct PmdChannels {
    senders: HashMap<PmdId, Sender<PmdUpdate>>,
    seen: HashMap<PmdId, Arc<AtomicU64>>,
    /// PMDs whose end was dropped without `remove_pmd`.
    vanished: Vec<PmdId>,
}

impl UpdateSink for PmdChannels {
    fn send(&mut self, pmd: PmdId, update: PmdUpdate) {
        if let Some(tx) = self.senders.get(&pmd) {
            // Unbounded: never waits. An error means the PMD's end is gone.
            if tx.send(update).is_err() {
                self.senders.remove(&pmd);
                self.vanished.push(pmd);
            }
        }
    }
}

struct WorkerThread {
    engine: OffloadEngine,
    config: WorkerConfig,
    requests: Receiver<OffloadRequest>,
    control: Receiver<Control>,
    shared: Arc<Shared>,
    pmds: PmdChannels,
}

enum Flow {
    Continue,
    Stop,
}

impl WorkerThread {
    fn run(mut self) {
        let mut requests_open = true;
        loop {
            if !self.engine.has_pending() {
                match self.wait(requests_open) {
                    Wake::Request(req) => self.handle(req),
                    Wake::Control(c) => {
                        if let Flow::Stop = self.control(c) {
                            return;
                        }
                    }
                    Wake::RequestsClosed => requests_open = false,
                    Wake::Stop => return,
                    Wake::Timeout => {}
                }
            }
            // Batch: take what else is waiting without blocking.
            for _ in 1..self.config.batch.max(1) {
                match self.requests.try_recv() {
                    Ok(req) => self.handle(req),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        requests_open = false;
                        break;
                    }
                }
            }
            while let Ok(c) = self.control.try_recv() {
                if let Flow::Stop = self.control(c) {
                    return;
                }
            }
            self.read_quiescence();
            let now = Instant::now();
            self.engine
                .process(now, self.config.batch.max(1), &mut self.pmds);
            self.after_updates();
        }
    }

    fn wait(&self, requests_open: bool) -> Wake {
        let mut sel = Select::new();
        let control_index = sel.recv(&self.control);
        if requests_open {
            sel.recv(&self.requests);
        }
        let op = if self.engine.waiting_for_marks() > 0 {
            match sel.select_timeout(self.config.mark_wait_poll) {
                Ok(op) => op,
                Err(_) => return Wake::Timeout,
            }
        } else {
            sel.select()
        };
        if op.index() == control_index {
            match op.recv(&self.control) {
                Ok(c) => Wake::Control(c),
                // Every handle is gone.
                Err(_) => Wake::Stop,
            }
        } else {
            match op.recv(&self.requests) {
                Ok(r) => Wake::Request(r),
                Err(_) => Wake::RequestsClosed,
            }
        }
    }

    fn handle(&mut self, req: OffloadRequest) {
        self.engine.handle(req, Instant::now(), &mut self.pmds);
        self.after_updates();
    }

    fn read_quiescence(&mut self) {
        for (pmd, seen) in &self.pmds.seen {
            self.engine
                .pmd_quiescent(*pmd, Epoch(seen.load(Ordering::Acquire)));
        }
    }

    /// Publishes the epoch once the updates of the last call are sent, and
    /// forgets PMDs that vanished.
    fn after_updates(&mut self) {
        for pmd in std::mem::take(&mut self.pmds.vanished) {
            self.pmds.seen.remove(&pmd);
            self.engine.remove_pmd(pmd, Instant::now(), &mut NoUpdates);
        }
        self.shared
            .epoch
            .store(self.engine.epoch().0, Ordering::Release);
    }

    fn control(&mut self, c: Control) -> Flow {
        let now = Instant::now();
        // A dropped reply receiver only means the caller stopped waiting.
        match c {
            Control::AddPmd {
                pmd,
                updates,
                seen,
                reply,
            } => {
                self.engine.add_pmd(pmd);
                seen.store(self.engine.epoch().0, Ordering::Release);
                self.pmds.senders.insert(pmd, updates);
                self.pmds.seen.insert(pmd, seen);
                let _ = reply.send(());
            }
            Control::RemovePmd { pmd, reply } => {
                self.pmds.senders.remove(&pmd);
                self.pmds.seen.remove(&pmd);
                self.engine.remove_pmd(pmd, now, &mut self.pmds);
                let _ = reply.send(());
            }
            Control::AddPort {
                port,
                device,
                n_rxq,
                reply,
            } => {
                let r = self
                    .engine
                    .add_port(port, device, n_rxq, now, &mut self.pmds);
                let _ = reply.send(r);
            }
            Control::RemovePort { port, reply } => {
                self.engine.remove_port(port, now, &mut self.pmds);
                let _ = reply.send(());
            }
            Control::Reset { port, reply } => {
                self.engine.device_reset(port, now, &mut self.pmds);
                let _ = reply.send(());
            }
            Control::Status { reply } => {
                let mut s = self.engine.status(now);
                s.offload_queue_full = self.shared.queue_full.load(Ordering::Relaxed);
                s.request_queue_len = self.requests.len();
                let _ = reply.send(s);
            }
            Control::Dump { reply } => {
                let _ = reply.send(self.engine.dump());
            }
            Control::Shutdown => return Flow::Stop,
        }
        self.after_updates();
        Flow::Continue
    }
}

enum Wake {
    Request(OffloadRequest),
    Control(Control),
    RequestsClosed,
    Stop,
    Timeout,
}

/// For a PMD that is gone: nothing to tell it.
struct NoUpdates;

impl UpdateSink for NoUpdates {
    fn send(&mut self, _pmd: PmdId, _update: PmdUpdate) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{Capabilities, Counters, Profile};
    use crate::marks::{MarkStatus, MarkTable};
    use crate::rte::{Action, Rule};
    use fallback::cache::FlowCache;
    use fallback::key::{ethertype, frag, Field, VLAN_CFI};
    use fallback::megaflow::Megaflow;
    use std::sync::Mutex;

    /// What the test device was asked, in order.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Call {
        Create { handle: u64, mark: u32 },
        Destroy(u64),
    }

    #[derive(Default)]
    struct DevState {
        rules: BTreeMap<u64, u32>,
        next: u64,
        capacity: usize,
        fail_validate: Option<FlowError>,
        fail_create: VecDeque<FlowError>,
        fail_destroy: Option<FlowError>,
        calls: Vec<Call>,
    }

    /// A scripted flow device: a capacity and queued refusals.
    struct TestDevice {
        caps: Capabilities,
        state: Mutex<DevState>,
    }

    impl TestDevice {
        fn new(capacity: usize) -> Arc<TestDevice> {
            Arc::new(TestDevice {
                caps: Capabilities {
                    max_rules: capacity,
                    ..Profile::Generic.capabilities()
                },
                state: Mutex::new(DevState {
                    capacity,
                    ..DevState::default()
                }),
            })
        }

        fn st(&self) -> std::sync::MutexGuard<'_, DevState> {
            self.state.lock().unwrap()
        }

        /// The marks of the rules on the device.
        fn marks(&self) -> Vec<u32> {
            self.st().rules.values().copied().collect()
        }

        fn reset(&self) {
            self.st().rules.clear();
        }
    }

    fn mark_of(rule: &Rule) -> u32 {
        rule.actions
            .iter()
            .find_map(|a| match a {
                Action::Mark { id } => Some(*id),
                _ => None,
            })
            .unwrap_or(0)
    }

    impl FlowDevice for TestDevice {
        fn capabilities(&self) -> &Capabilities {
            &self.caps
        }
        fn validate(&self, rule: &Rule) -> Result<(), FlowError> {
            self.caps.check(rule)?;
            match self.st().fail_validate.clone() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        fn create(&self, rule: &Rule) -> Result<RuleHandle, FlowError> {
            let mut s = self.st();
            if let Some(e) = s.fail_create.pop_front() {
                return Err(e);
            }
            if s.rules.len() >= s.capacity {
                return Err(FlowError::NoSpace);
            }
            s.next += 1;
            let (handle, mark) = (s.next, mark_of(rule));
            s.rules.insert(handle, mark);
            s.calls.push(Call::Create { handle, mark });
            Ok(RuleHandle(handle))
        }
        fn destroy(&self, handle: RuleHandle) -> Result<(), FlowError> {
            let mut s = self.st();
            if let Some(e) = s.fail_destroy.clone() {
                return Err(e);
            }
            s.calls.push(Call::Destroy(handle.0));
            match s.rules.remove(&handle.0) {
                Some(_) => Ok(()),
                None => Err(FlowError::invalid("rule handle", "unknown")),
            }
        }
        fn query(&self, _: RuleHandle) -> Result<Counters, FlowError> {
            Err(FlowError::unsupported("query", "no COUNT"))
        }
        fn flush(&self) -> Result<(), FlowError> {
            self.reset();
            Ok(())
        }
    }

    /// An untagged, unfragmented IPv4 megaflow from `nw_src` on `port`.
    fn ipv4_match(port: PortId, nw_src: u32) -> Match {
        let mut m = Match::ANY;
        m.set_exact(Field::InPort, port.into());
        m.set_exact(Field::DlType, ethertype::IPV4.into());
        m.set_masked(Field::VlanTci, 0, VLAN_CFI.into());
        m.set_masked(Field::NwFrag, 0, frag::MASK.into());
        m.set_exact(Field::NwSrc, nw_src.into());
        m
    }

    /// A megaflow no rte_flow item can express (ARP sender hardware address).
    fn arp_match(port: PortId) -> Match {
        let mut m = Match::ANY;
        m.set_exact(Field::InPort, port.into());
        m.set_exact(Field::DlType, ethertype::ARP.into());
        m.set_exact(Field::ArpSha, 0x0200_0000_0001);
        m
    }

    struct Pmd {
        id: PmdId,
        cache: FlowCache,
        table: MarkTable,
    }

    /// An engine, some PMDs with their caches and tables, and a clock.
    struct Harness {
        engine: OffloadEngine,
        now: Instant,
        pmds: Vec<Pmd>,
        out: Vec<(PmdId, PmdUpdate)>,
    }

    impl Harness {
        fn new(n_pmds: u32, max_marks: u32) -> Harness {
            let config = EngineConfig {
                max_marks,
                min_quarantine: Duration::ZERO,
                latency_window: 16,
            };
            let mut engine = OffloadEngine::new(config).unwrap();
            let pmds = (0..n_pmds)
                .map(|i| {
                    engine.add_pmd(PmdId(i));
                    Pmd {
                        id: PmdId(i),
                        cache: FlowCache::new(1),
                        table: MarkTable::new(),
                    }
                })
                .collect();
            Harness {
                engine,
                now: Instant::now(),
                pmds,
                out: Vec::new(),
            }
        }

        fn add_port(&mut self, port: PortId, dev: &Arc<TestDevice>) {
            let dev: Arc<dyn FlowDevice> = dev.clone();
            self.engine
                .add_port(port, dev, 2, self.now, &mut self.out)
                .unwrap();
        }

        fn tick(&mut self, ms: u64) {
            self.now += Duration::from_millis(ms);
        }

        /// `pmd` installs the megaflow and offers it; returns its ufid.
        fn put(&mut self, pmd: usize, m: Match) -> Ufid {
            let req = self.put_request(pmd, m);
            self.engine
                .handle(OffloadRequest::Put(req), self.now, &mut self.out);
            req.ufid
        }

        fn put_request(&mut self, pmd: usize, m: Match) -> PutRequest {
            let p = &mut self.pmds[pmd];
            let mf = Megaflow::new(&m.value, &m.mask, Vec::new(), Vec::new());
            let ufid = mf.ufid;
            let handle = p
                .cache
                .install(mf)
                .expect("distinct matches: no ufid collision");
            PutRequest {
                pmd: p.id,
                port: m.value.get(Field::InPort) as PortId,
                ufid,
                r#match: m,
                handle,
                enqueued: self.now,
            }
        }

        fn delete(&mut self, pmd: usize, port: PortId, ufid: Ufid) {
            let p = &mut self.pmds[pmd];
            if let Some(h) = p.cache.find(&ufid) {
                p.cache.remove(h);
            }
            let req = OffloadRequest::Delete {
                pmd: p.id,
                port,
                ufid,
            };
            self.engine.handle(req, self.now, &mut self.out);
        }

        fn process(&mut self) -> usize {
            self.engine.process(self.now, usize::MAX, &mut self.out)
        }

        /// Every PMD applies its updates and reports a quiescent point.
        fn quiesce_all(&mut self) {
            for i in 0..self.pmds.len() {
                self.quiesce(i);
            }
        }

        fn quiesce(&mut self, pmd: usize) {
            let id = self.pmds[pmd].id;
            let epoch = self.engine.epoch();
            let (mine, rest): (Vec<_>, Vec<_>) = self.out.drain(..).partition(|(p, _)| *p == id);
            self.out = rest;
            for (_, u) in mine {
                self.pmds[pmd].table.apply(u);
            }
            self.engine.pmd_quiescent(id, epoch);
        }

        fn state(&self, port: PortId, ufid: Ufid) -> OffloadState {
            self.engine.state(port, ufid).cloned().unwrap()
        }

        fn mark(&self, port: PortId, ufid: Ufid) -> Mark {
            self.state(port, ufid).mark().unwrap()
        }

        /// The ufid `pmd`'s table gives for a raw mark (through its cache).
        fn table_ufid(&self, pmd: usize, mark: u32) -> Option<Ufid> {
            let p = &self.pmds[pmd];
            p.cache.get(p.table.lookup(mark)?).map(|mf| mf.ufid)
        }
    }

    #[test]
    fn put_offloads_publishes_and_creates_the_rule() {
        let mut h = Harness::new(1, 100);
        let dev = TestDevice::new(10);
        h.add_port(1, &dev);
        let u = h.put(0, ipv4_match(1, 0x0a00_0001));
        assert_eq!(h.state(1, u), OffloadState::Pending);
        h.tick(3);
        assert_eq!(h.process(), 1);
        let mark = h.mark(1, u);
        assert!(matches!(
            h.state(1, u),
            OffloadState::Offloaded { port: 1, .. }
        ));
        assert_eq!(dev.marks(), vec![mark.get()]);
        assert_eq!(h.engine.marks().owner(mark).map(|k| k.ufid), Some(u));
        h.quiesce_all();
        assert_eq!(h.table_ufid(0, mark.get()), Some(u));
        let s = h.engine.status(h.now);
        assert_eq!(s.states.offloaded, 1);
        let p = &s.ports[0];
        assert_eq!((p.rules_installed, p.marks_in_use, p.inserted), (1, 1, 1));
        assert_eq!(p.capacity, 10);
        assert_eq!(p.latency_us.p99, 3000);
        assert_eq!(p.latency_us.avg, 3000.0);
        let d = h.engine.dump();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].state, d[0].mark, d[0].pmds.clone()),
            ("offloaded", Some(mark.get()), vec![0])
        );
    }

    #[test]
    fn one_rule_and_mark_shared_by_pmds_until_the_last_copy_goes() {
        let mut h = Harness::new(2, 100);
        let dev = TestDevice::new(10);
        h.add_port(1, &dev);
        let m = ipv4_match(1, 0x0a00_0001);
        let u = h.put(0, m);
        h.process();
        h.put(1, m);
        h.process();
        h.quiesce_all();
        let mark = h.mark(1, u);
        assert_eq!(dev.marks(), vec![mark.get()], "one rule for both PMDs");
        assert_eq!(h.table_ufid(0, mark.get()), Some(u));
        assert_eq!(h.table_ufid(1, mark.get()), Some(u));
        assert_eq!(h.engine.sharers(1, u).map(PmdRefs::len), Some(2));

        h.delete(0, 1, u);
        h.quiesce_all();
        assert_eq!(dev.marks(), vec![mark.get()], "PMD 1 still has its copy");
        assert_eq!(h.pmds[0].table.lookup(mark.get()), None);
        assert_eq!(h.table_ufid(1, mark.get()), Some(u));

        h.delete(1, 1, u);
        assert!(dev.marks().is_empty());
        assert!(h.engine.state(1, u).is_none());
        assert_eq!(
            h.engine.marks().pool().status(mark),
            MarkStatus::Quarantined
        );
        assert_eq!(h.engine.status(h.now).ports[0].deleted, 1);
        h.quiesce_all();
        assert!(h.pmds.iter().all(|p| p.table.is_empty()));
    }

    #[test]
    fn translate_refusal_is_rejected_without_touching_the_device() {
        let mut h = Harness::new(1, 100);
        let dev = TestDevice::new(10);
        h.add_port(1, &dev);
        let u = h.put(0, arp_match(1));
        h.process();
        let s = h.state(1, u);
        assert_eq!(s.name(), "rejected");
        assert!(s.reason().unwrap().contains("arp_sha"), "{s:?}");
        assert!(dev.st().calls.is_empty());
        assert_eq!(h.engine.marks().in_use(), 0);
        assert!(h.out.is_empty(), "nothing published");
        let st = h.engine.status(h.now);
        assert_eq!(st.rejected.get("translate:arp_sha"), Some(&1));
        assert_eq!(st.ports[0].failures.get("translate:arp_sha"), Some(&1));
    }

    #[test]
    fn validate_unsupported_and_create_invalid_are_rejected() {
        let mut h = Harness::new(1, 100);
        let dev = TestDevice::new(10);
        h.add_port(1, &dev);
        dev.st().fail_validate = Some(FlowError::unsupported("item IPV4", "no"));
        let a = h.put(0, ipv4_match(1, 1));
        h.process();
        assert!(matches!(
            h.state(1, a),
            OffloadState::Rejected {
                reason: RejectReason::Device(FlowError::Unsupported { .. })
            }
        ));
        dev.st().fail_validate = None;
        dev.st()
            .fail_create
            .push_back(FlowError::invalid("action RSS", "bad"));
        let b = h.put(0, ipv4_match(1, 2));
        h.process();
        assert_eq!(h.state(1, b).name(), "rejected");
        // The mark was published before create: now unpublished and quarantined.
        assert_eq!(h.engine.marks().in_use(), 0);
        assert_eq!(h.engine.marks().pool().quarantined(), 1);
        let kinds: Vec<_> = h.out.iter().map(|(_, u)| u).collect();
        assert!(matches!(
            kinds[..],
            [PmdUpdate::Publish { .. }, PmdUpdate::Unpublish { .. }]
        ));
        // Rejected is permanent: a freed rule does not retry it.
        let c = h.put(0, ipv4_match(1, 3));
        h.process();
        h.delete(0, 1, c);
        h.process();
        assert_eq!(h.state(1, b).name(), "rejected");
    }

    #[test]
    fn no_space_fails_and_is_retried_when_a_rule_is_destroyed() {
        let mut h = Harness::new(1, 100);
        let dev = TestDevice::new(1);
        h.add_port(1, &dev);
        let a = h.put(0, ipv4_match(1, 1));
        let b = h.put(0, ipv4_match(1, 2));
        let c = h.put(0, ipv4_match(1, 3));
        h.process();
        assert_eq!(h.state(1, a).name(), "offloaded");
        assert_eq!(
            h.state(1, b),
            OffloadState::Failed {
                error: FailReason::Device(FlowError::NoSpace)
            }
        );
        assert_eq!(h.state(1, c).name(), "failed");
        assert_eq!(
            h.engine.marks().in_use(),
            1,
            "failed megaflows hold no mark"
        );
        // Nothing retries on its own.
        assert_eq!(h.process(), 0);
        h.delete(0, 1, a);
        assert_eq!(h.state(1, b), OffloadState::Pending, "oldest failure first");
        assert_eq!(h.state(1, c).name(), "failed", "one retry per freed rule");
        h.process();
        assert_eq!(h.state(1, b).name(), "offloaded");
        assert_eq!(h.engine.counters().retries, 1);
        assert_eq!(
            h.engine.status(h.now).ports[0].failures.get("no_space"),
            Some(&2)
        );
    }

    #[test]
    fn device_error_fails_and_is_retried_on_reset() {
        let mut h = Harness::new(1, 100);
        let dev = TestDevice::new(10);
        h.add_port(1, &dev);
        dev.st()
            .fail_create
            .push_back(FlowError::Device("Function not implemented".into()));
        let a = h.put(0, ipv4_match(1, 1));
        h.process();
        let s = h.state(1, a);
        assert_eq!(s.name(), "failed");
        assert!(s.reason().unwrap().contains("Function not implemented"));
        h.engine.device_reset(1, h.now, &mut h.out);
        assert_eq!(h.state(1, a), OffloadState::Pending);
        h.process();
        assert_eq!(h.state(1, a).name(), "offloaded");
    }

    #[test]
    fn actions_only_modify_keeps_rule_and_mark() {
        let mut h = Harness::new(1, 100);
        let dev = TestDevice::new(10);
        h.add_port(1, &dev);
        let m = ipv4_match(1, 1);
        let req = h.put_request(0, m);
        h.engine.handle(OffloadRequest::Put(req), h.now, &mut h.out);
        h.process();
        h.quiesce_all();
        let mark = h.mark(1, req.ufid);
        let calls = dev.st().calls.len();
        // Same handle (actions swapped in place): nothing at all.
        let modify = OffloadRequest::Modify {
            old: req.ufid,
            new: req,
        };
        h.engine.handle(modify, h.now, &mut h.out);
        h.process();
        assert!(h.out.is_empty());
        assert_eq!(dev.st().calls.len(), calls, "no NIC call");
        assert_eq!(h.mark(1, req.ufid), mark);
        assert_eq!(h.engine.counters().modified_in_place, 1);
        // A new copy of the same megaflow: republished, still no NIC call.
        let old = h.pmds[0].cache.find(&req.ufid).unwrap();
        h.pmds[0].cache.remove(old);
        let req2 = h.put_request(0, m);
        assert_ne!(req2.handle, req.handle);
        let modify = OffloadRequest::Modify {
            old: req.ufid,
            new: req2,
        };
        h.engine.handle(modify, h.now, &mut h.out);
        h.quiesce_all();
        assert_eq!(dev.st().calls.len(), calls);
        assert_eq!(h.pmds[0].table.lookup(mark.get()), Some(req2.handle));
    }

    #[test]
    fn changed_match_deletes_then_puts() {
        let mut h = Harness::new(1, 100);
        let dev = TestDevice::new(1);
        h.add_port(1, &dev);
        let old = h.put(0, ipv4_match(1, 1));
        h.process();
        let old_rule = h.state(1, old).rule().unwrap();
        let req = h.put_request(0, ipv4_match(1, 2));
        h.engine
            .handle(OffloadRequest::Modify { old, new: req }, h.now, &mut h.out);
        h.process();
        assert!(h.engine.state(1, old).is_none());
        assert_eq!(h.state(1, req.ufid).name(), "offloaded", "room made first");
        let calls = dev.st().calls.clone();
        let n = calls.len();
        assert_eq!(calls[n - 2], Call::Destroy(old_rule.0), "break before make");
        assert!(matches!(calls[n - 1], Call::Create { .. }));
    }

    #[test]
    fn freed_mark_waits_for_every_pmd() {
        let mut h = Harness::new(2, 1);
        let dev = TestDevice::new(10);
        h.add_port(1, &dev);
        let a = h.put(0, ipv4_match(1, 1));
        h.process();
        let mark = h.mark(1, a);
        h.delete(0, 1, a);
        let b = h.put(0, ipv4_match(1, 2));
        h.process();
        assert_eq!(
            h.state(1, b),
            OffloadState::Failed {
                error: FailReason::Marks(MarkError::Exhausted { max: 1 })
            }
        );
        assert_eq!(h.engine.waiting_for_marks(), 1);
        // PMD 0 applied the unpublish; PMD 1 (which never had the mark) has
        // not reported since: still quarantined.
        h.quiesce(0);
        h.process();
        assert_eq!(h.state(1, b).name(), "failed");
        h.quiesce(1);
        h.process();
        assert_eq!(h.state(1, b).name(), "offloaded");
        assert_eq!(h.mark(1, b), mark, "reused only after the quarantine");
        assert_eq!(h.engine.status(h.now).failed.len(), 0);
    }

    #[test]
    fn port_removal_takes_exactly_that_ports_rules_and_marks() {
        let mut h = Harness::new(1, 100);
        let (d1, d2) = (TestDevice::new(10), TestDevice::new(10));
        h.add_port(1, &d1);
        h.add_port(2, &d2);
        let a = h.put(0, ipv4_match(1, 1));
        let b = h.put(0, ipv4_match(2, 1));
        h.process();
        h.quiesce_all();
        let (ma, mb) = (h.mark(1, a), h.mark(2, b));
        h.engine.remove_port(1, h.now, &mut h.out);
        assert!(d1.marks().is_empty());
        assert_eq!(d2.marks(), vec![mb.get()]);
        assert_eq!(h.state(1, a), OffloadState::Software);
        assert_eq!(
            h.engine.marks().mark_of(&OffloadKey { port: 1, ufid: a }),
            None
        );
        assert_eq!(h.engine.marks().in_use(), 1);
        h.quiesce_all();
        assert_eq!(h.pmds[0].table.lookup(ma.get()), None);
        assert_eq!(h.table_ufid(0, mb.get()), Some(b));
        assert_eq!(h.engine.status(h.now).ports.len(), 1);
        // The PMD's later delete of the software megaflow just forgets it.
        h.delete(0, 1, a);
        assert!(h.engine.state(1, a).is_none());
    }

    #[test]
    fn nic_reset_reoffers_the_ports_megaflows() {
        let mut h = Harness::new(1, 100);
        let (d1, d2) = (TestDevice::new(10), TestDevice::new(10));
        h.add_port(1, &d1);
        h.add_port(2, &d2);
        let a = h.put(0, ipv4_match(1, 1));
        let r = h.put(0, arp_match(1));
        let b = h.put(0, ipv4_match(2, 1));
        h.process();
        h.quiesce_all();
        let old = h.mark(1, a);
        d1.reset();
        h.engine.device_reset(1, h.now, &mut h.out);
        assert_eq!(h.state(1, a), OffloadState::Pending);
        assert_eq!(h.state(1, r).name(), "rejected", "rejection is permanent");
        assert_eq!(h.state(2, b).name(), "offloaded", "other port untouched");
        assert_eq!(h.engine.marks().pool().status(old), MarkStatus::Quarantined);
        h.process();
        h.quiesce_all();
        let new = h.mark(1, a);
        assert_ne!(new, old);
        assert_eq!(d1.marks(), vec![new.get()]);
        assert_eq!(h.table_ufid(0, new.get()), Some(a));
        assert_eq!(h.pmds[0].table.lookup(old.get()), None);
        assert_eq!(h.engine.status(h.now).ports[0].resets, 1);
    }

    #[test]
    fn reset_flushes_rules_the_engine_no_longer_tracks() {
        let mut h = Harness::new(1, 100);
        let dev = TestDevice::new(10);
        h.add_port(1, &dev);
        let a = h.put(0, ipv4_match(1, 1));
        h.process();
        h.quiesce_all();
        let old = h.mark(1, a);
        // The NIC resets (its rules are gone) and, before the engine hears
        // of it, a rule lands on it that nothing tracks once the notice
        // arrives: it carries a's mark, which the reset releases for reuse.
        dev.reset();
        let stray = translate(&ipv4_match(1, 2), dev.capabilities(), old.get(), 2)
            .unwrap()
            .rule;
        dev.create(&stray).unwrap();
        assert_eq!(dev.marks(), vec![old.get()]);
        h.engine.device_reset(1, h.now, &mut h.out);
        h.quiesce_all();
        h.process();
        h.quiesce_all();
        assert_eq!(h.state(1, a).name(), "offloaded");
        // Everything goes through the engine: the device ends empty.
        h.delete(0, 1, a);
        h.quiesce_all();
        h.process();
        assert!(h.engine.is_empty());
        assert_eq!(
            dev.marks(),
            Vec::<u32>::new(),
            "rules leaked on the device (the reset must flush it)"
        );
        assert_eq!(h.engine.marks().in_use(), 0, "marks leaked");
        assert_eq!(h.engine.status(h.now).ports[0].rules_installed, 0);
    }

    #[test]
    fn port_without_flow_device_stays_software_until_one_is_added() {
        let mut h = Harness::new(1, 100);
        let u = h.put(0, ipv4_match(3, 1));
        h.process();
        assert_eq!(h.state(3, u), OffloadState::Software);
        let dev = TestDevice::new(10);
        h.add_port(3, &dev);
        assert_eq!(h.state(3, u), OffloadState::Pending);
        h.process();
        assert_eq!(h.state(3, u).name(), "offloaded");
    }

    #[test]
    fn failed_destroy_keeps_the_mark_until_the_device_changes() {
        let mut h = Harness::new(1, 100);
        let dev = TestDevice::new(10);
        h.add_port(1, &dev);
        let a = h.put(0, ipv4_match(1, 1));
        let b = h.put(0, ipv4_match(1, 2));
        h.process();
        dev.st().fail_destroy = Some(FlowError::Device("busy".into()));
        h.delete(0, 1, a);
        let s = h.state(1, a);
        assert_eq!(s.name(), "removing");
        assert!(s.reason().unwrap().contains("busy"));
        assert_eq!(
            h.engine.marks().in_use(),
            2,
            "the rule may still mark packets"
        );
        // Offered again meanwhile: the surviving rule is used again.
        h.put(0, ipv4_match(1, 1));
        assert_eq!(h.state(1, a).name(), "offloaded");
        h.delete(0, 1, a);
        assert_eq!(h.state(1, a).name(), "removing");
        // The device recovers: the next successful destroy finishes it.
        dev.st().fail_destroy = None;
        h.delete(0, 1, b);
        assert!(h.engine.state(1, a).is_none());
        assert!(dev.marks().is_empty());
        assert_eq!(h.engine.marks().in_use(), 0);
    }

    #[test]
    fn reset_finishes_a_stuck_removal() {
        let mut h = Harness::new(1, 100);
        let dev = TestDevice::new(10);
        h.add_port(1, &dev);
        let a = h.put(0, ipv4_match(1, 1));
        h.process();
        dev.st().fail_destroy = Some(FlowError::Device("busy".into()));
        h.delete(0, 1, a);
        assert_eq!(h.state(1, a).name(), "removing");
        dev.reset();
        h.engine.device_reset(1, h.now, &mut h.out);
        assert!(h.engine.state(1, a).is_none());
        assert_eq!(h.engine.marks().in_use(), 0);
        assert!(h.engine.is_empty());
    }

    #[test]
    fn a_ufid_collision_never_shares_the_rule_or_mark() {
        let mut h = Harness::new(2, 100);
        let dev = TestDevice::new(10);
        h.add_port(1, &dev);
        let u = h.put(0, ipv4_match(1, 1));
        h.process();
        h.quiesce_all();
        // PMD 1 offers another match under the same ufid.
        let mut req = h.put_request(1, ipv4_match(1, 2));
        req.ufid = u;
        h.out.clear();
        h.engine.handle(OffloadRequest::Put(req), h.now, &mut h.out);
        h.process();
        assert_eq!(h.engine.counters().ufid_collisions, 1);
        assert!(
            h.out.iter().all(|(p, _)| *p != PmdId(1)),
            "nothing published to PMD 1"
        );
        assert_eq!(h.engine.sharers(1, u).map(PmdRefs::len), Some(1));
        assert_eq!(dev.marks().len(), 1);
    }

    #[test]
    fn pmd_removal_drops_its_copies() {
        let mut h = Harness::new(2, 100);
        let dev = TestDevice::new(10);
        h.add_port(1, &dev);
        let m = ipv4_match(1, 1);
        let u = h.put(0, m);
        h.put(1, m);
        let only0 = h.put(0, ipv4_match(1, 2));
        h.process();
        h.engine.remove_pmd(PmdId(0), h.now, &mut h.out);
        assert_eq!(h.engine.sharers(1, u).map(PmdRefs::len), Some(1));
        assert!(h.engine.state(1, only0).is_none());
        assert_eq!(dev.marks().len(), 1);
        assert!(h
            .out
            .iter()
            .all(|(p, _)| *p != PmdId(0) || h.engine.marks().pmd_epoch(*p).is_none()));
        // Requests from the removed PMD are ignored.
        h.put(0, ipv4_match(1, 9));
        assert_eq!(h.engine.counters().unknown_pmd, 1);
        h.delete(0, 1, Ufid(1234));
        assert_eq!(h.engine.counters().unknown_deletes, 1);
    }

    #[test]
    fn device_with_fewer_marks_than_the_pool_is_refused() {
        let mut h = Harness::new(1, 1000);
        let mut dev = TestDevice {
            caps: Profile::Generic.capabilities(),
            state: Mutex::new(DevState::default()),
        };
        dev.caps.max_mark = 999;
        let dev: Arc<dyn FlowDevice> = Arc::new(dev);
        let err = h.engine.add_port(1, dev, 1, h.now, &mut h.out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "port 1's NIC carries marks up to 999 but the mark pool goes to 1000; \
             set the offload max-marks setting to at most 999"
        );
    }

    #[test]
    fn status_serialises_with_the_cli_field_names() {
        let mut h = Harness::new(1, 100);
        let dev = TestDevice::new(10);
        h.add_port(1, &dev);
        let u = h.put(0, ipv4_match(1, 1));
        h.process();
        let s = h.engine.status(h.now);
        let port = &s.ports[0];
        assert_eq!(port.inserts_per_s, 0.0);
        let row = &h.engine.dump()[0];
        assert_eq!(row.ufid, u);
        assert_eq!(row.reason, None);
        assert_eq!(row.rule, h.state(1, u).rule().map(|r| r.0));
    }

    #[test]
    fn latency_p99_and_rate() {
        let mut l = Latency::default();
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms), 1000);
        }
        let s = l.summary();
        assert_eq!(s.p99, 99_000);
        assert_eq!(s.avg, 50_500.0);
        // 1..=100 ms: 10 ms is the 10th insert, 25 ms the 25th, 50 ms the
        // 50th, 100 ms the last; nothing at or under 5 ms but 1..=5.
        let h = l.histogram();
        assert_eq!(h.count, 100);
        assert_eq!(h.sum_us, 5_050_000);
        let at = |le: u64| h.cumulative[LATENCY_BUCKETS_US.iter().position(|b| *b == le).unwrap()];
        assert_eq!(at(1_000), 1);
        assert_eq!(at(5_000), 5);
        assert_eq!(at(10_000), 10);
        assert_eq!(at(50_000), 50);
        assert_eq!(at(100_000), 100);
        assert_eq!(at(1_000_000), 100);
        assert_eq!(at(500), 0);
        let mut big = Latency::default();
        big.record(Duration::from_secs(3), 10);
        assert_eq!(
            big.histogram().cumulative.last(),
            Some(&0),
            "above every bound: only +Inf"
        );
        assert_eq!(big.histogram().count, 1);
        let t0 = Instant::now();
        let mut r = Rate::default();
        for i in 0..10 {
            r.record(t0 + Duration::from_millis(i * 100));
        }
        r.record(t0 + Duration::from_millis(1000));
        assert_eq!(r.per_second(t0 + Duration::from_millis(1000)), 10.0);
        assert_eq!(r.per_second(t0 + Duration::from_millis(3000)), 0.5);
    }
}
