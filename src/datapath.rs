//! The PMD's packet work (DESIGN §1), free of threads: one rx burst at a
//! time, mark path → parse → EMC → dpcls → upcall, batched per megaflow,
//! executed, and queued per output port; tx bursts flushed at the end.
//!
//! [`PmdCore`] owns everything one PMD touches per packet (its flow cache,
//! its mark table, its ports' tx bursts and its counters), so the fast path
//! takes no lock. The pipeline snapshot and the MAC table are consulted only
//! on upcalls.

use crate::cycle_histogram::CycleHistogram;
use crate::dpdk::tsc::rdtsc;
use fallback::actions::DpAction;
use fallback::cache::{CacheHit, FlowCache, FlowHandle};
use fallback::exec::{self, ExecError, Sink};
use fallback::key::FlowKey;
use fallback::megaflow::{Megaflow, RecentActions, Ufid};
use fallback::ofproto::mac::{MacLearn, MacTable};
use fallback::ofproto::meter::{self, Meter};
use fallback::ofproto::table::{Pipeline, RuleId, RuleIds};
use fallback::ofproto::xlate::{xlate_reusing, Bridge, XlateBuffers, XlateDrop};
use fallback::packet::{self, ParseInfo};
use fallback::port::{
    BufferSource, Burst, PacketBuf, Port, PortStats, RxDropReason, TxDropReason, BURST,
};
use fallback::revalidate::{ports_digest, FlowRecord, RevalOp, Revalidator};
use fallback::simple::SimpleTable;
use fallback::sync::Recover;
use hashbrown::HashMap;
use offload::marks::{MarkTable, PmdUpdate};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Upcalls one port may make per rx burst of 32 while other ports of its
/// PMD receive too: a flood of new flows on one port cannot starve the
/// others (the rest are dropped as `upcall_limit`). An upcall costs about
/// ten cache hits, so 8 keeps a storming port's burst within about three
/// bursts' worth of hit work. A port that is the only one of its PMD that
/// received anything in the last [`UPCALL_FAIRNESS_MS`] has nobody to starve
/// and upcalls its whole burst, as OVS-DPDK does: with the budget, a
/// one-shot stream of new flows lost three in four.
pub const DEFAULT_UPCALL_BUDGET: usize = 8;
/// How recently another port must have received for the upcall budget to
/// apply (1–2 ms at the clock's millisecond grain).
pub const UPCALL_FAIRNESS_MS: u64 = 1;
/// Revalidation verdicts a PMD applies per loop iteration at most (a delete
/// with 100,000 megaflows installed measured about 6 µs: dpcls, EMC, the NIC
/// rule's delete, the revalidator's note, mostly cache misses) ...
const REVAL_OPS_PER_ITERATION: usize = 128;
/// ... in slices of this many, stopping after the slice that passes
/// [`REVAL_BUDGET_US`]: 128 deletes took 1.1-1.7 ms when the caches were
/// cold, so a count alone did not bound the iteration.
const REVAL_OPS_SLICE: usize = 16;
const REVAL_BUDGET_US: f64 = 250.0;
/// Idle megaflows one sweep slice removes, and refused ones it offers
/// again, at most (about 1 µs each).
const SWEEP_REMOVALS_PER_SLICE: usize = 256;
/// Mark table updates a PMD applies per loop iteration (about 30 ns each
/// with the mark table in cache, up to ten times that after a mass change
/// has evicted it: 4,096 at a time took 0.8-1.1 ms then).
const MARK_UPDATES_PER_ITERATION: usize = 1024;
/// NIC-rule deletes the offload worker's queue refused, retried per loop
/// iteration at most (each a channel send; once the worker has drained its
/// queue, up to a queue's worth, 4,096, would otherwise go in one iteration).
const PENDING_DELETES_PER_ITERATION: usize = 512;
/// Removed rules' counts checked per sweep slice (each a lookup in the
/// OpenFlow tables: cache misses at 100,000 rules).
const RETIRED_PRUNE_PER_SLICE: usize = 1024;
/// Ethernet header plus one VLAN tag, on top of the IP MTU.
const L2_OVERHEAD: usize = 18;

/// The bridge state every PMD consults on upcalls.
pub struct BridgeState {
    pub macs: RwLock<MacTable>,
    /// Bumped when the MAC table's answers change (for revalidation).
    pub mac_version: AtomicU64,
    /// Rung (without blocking) when `mac_version` moves: the revalidator
    /// thread waits on it.
    mac_changed: (
        crossbeam_channel::Sender<()>,
        crossbeam_channel::Receiver<()>,
    ),
    /// The clock MAC entries are learned, refreshed and aged on (one for
    /// every PMD and the aging sweep).
    epoch: Instant,
    /// Each port's OpenFlow config bits ([`port_config`]), one cell per
    /// ofport that every PMD holding the port reads once per burst.
    port_configs: Mutex<HashMap<u32, Arc<AtomicU32>>>,
}

/// The OpenFlow port config bits (`OFPPC_*`) a port can be given, and what
/// the datapath does about them, as Open vSwitch does: a port that does not
/// receive drops what arrives (STP frames aside), one that does not forward
/// sends nothing (Open vSwitch skips the output; flowmark counts it as a
/// transmit drop, DESIGN §6), one that is down does neither.
pub mod port_config {
    pub const PORT_DOWN: u32 = 1 << 0;
    pub const NO_RECV: u32 = 1 << 2;
    pub const NO_FWD: u32 = 1 << 5;
    /// Open vSwitch honours it only for OpenFlow 1.0-style table misses,
    /// which flowmark does not have: kept and reported, nothing more.
    pub const NO_PACKET_IN: u32 = 1 << 6;
    /// What OpenFlow 1.3 can set (other bits are ignored, as OVS does).
    pub const ALL: u32 = PORT_DOWN | NO_RECV | NO_FWD | NO_PACKET_IN;
    /// The STP bridge group address, which a `NO_RECV` port still takes.
    pub const STP_DST: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x00];

    /// `current` with its bits under `mask` set to those of `config`, as a
    /// PORT_MOD asks (bits outside [`ALL`] untouched).
    pub const fn apply(current: u32, config: u32, mask: u32) -> u32 {
        let mask = mask & ALL;
        (current & !mask) | (config & mask)
    }
}

impl Default for BridgeState {
    fn default() -> Self {
        Self::new(fallback::ofproto::mac::DEFAULT_AGING_MS)
    }
}

impl BridgeState {
    pub fn new(mac_aging_ms: u64) -> Self {
        BridgeState {
            macs: RwLock::new(MacTable::new(
                fallback::ofproto::mac::DEFAULT_MAX_ENTRIES,
                mac_aging_ms,
            )),
            mac_version: AtomicU64::new(0),
            mac_changed: crossbeam_channel::bounded(1),
            epoch: Instant::now(),
            port_configs: Mutex::new(HashMap::new()),
        }
    }

    /// The cell holding `ofport`'s config bits (made on first use).
    pub fn port_config_cell(&self, ofport: u32) -> Arc<AtomicU32> {
        let mut cells = self.port_configs.lock().recover();
        Arc::clone(cells.entry(ofport).or_default())
    }

    /// `ofport`'s OpenFlow config bits ([`port_config`]).
    pub fn port_config(&self, ofport: u32) -> u32 {
        self.port_config_cell(ofport).load(Ordering::Relaxed)
    }

    /// Sets `ofport`'s config bits under `mask` to those of `config` (bits
    /// outside [`port_config::ALL`] ignored); returns (before, after).
    pub fn set_port_config(&self, ofport: u32, config: u32, mask: u32) -> (u32, u32) {
        let cell = self.port_config_cell(ofport);
        let before = cell
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(port_config::apply(c, config, mask))
            })
            .unwrap_or_else(|c| c);
        (before, port_config::apply(before, config, mask))
    }

    /// Milliseconds on the bridge clock.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    fn macs_mut(&self) -> std::sync::RwLockWriteGuard<'_, MacTable> {
        self.macs.write().recover()
    }

    /// Rings once per change (a full bell means one is pending already).
    fn mac_moved(&self) {
        self.mac_version.fetch_add(1, Ordering::AcqRel);
        let _ = self.mac_changed.0.try_send(());
    }

    /// What rings when the MAC table's answers change.
    pub fn mac_changes(&self) -> crossbeam_channel::Receiver<()> {
        self.mac_changed.1.clone()
    }

    /// A copy of the MAC table (for revalidation, off the PMDs).
    pub fn mac_snapshot(&self) -> MacTable {
        self.macs.read().recover().clone()
    }

    /// Learns or refreshes MAC entries (upcalls, the refresh sweep); PMDs
    /// revalidate when an answer changed.
    pub fn learn_macs(&self, learns: impl IntoIterator<Item = (MacLearn, u64)>) {
        let mut macs = self.macs_mut();
        let mut changed = false;
        for (l, at_ms) in learns {
            changed |= macs.learn(l, at_ms);
        }
        if changed {
            self.mac_moved();
        }
    }

    /// Forgets the entries learned on a port (the port is gone).
    pub fn flush_port_macs(&self, ofport: u32) {
        self.macs_mut().flush_port(ofport);
        self.mac_moved();
    }

    /// Forgets entries unused for the aging time; PMDs revalidate when any went.
    pub fn age_macs(&self, now_ms: u64) {
        if self.macs_mut().expire(now_ms) {
            self.mac_moved();
        }
    }
}

/// Where a PMD sends offload requests (the offload worker's queue). `put`
/// and `delete` never wait; `false` means the queue was full.
pub trait OffloadClient: Send {
    fn put(&self, pmd: u32, port: u32, mf: &Megaflow, handle: FlowHandle) -> bool;
    fn delete(&self, pmd: u32, port: u32, ufid: Ufid) -> bool;
}

/// A PMD with offload off (or in tests): nothing is offered.
pub struct NoOffload;

impl OffloadClient for NoOffload {
    fn put(&self, _: u32, _: u32, _: &Megaflow, _: FlowHandle) -> bool {
        true
    }
    fn delete(&self, _: u32, _: u32, _: Ufid) -> bool {
        true
    }
}

/// A packet punted to the controller by a `controller` action (becomes an
/// OpenFlow PACKET_IN). Punts are the slow path: the frame is copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Punt {
    pub in_port: u32,
    pub table: u8,
    pub cookie: u64,
    /// A table-miss rule punted it (PACKET_IN reason NO_MATCH; each
    /// connection cuts the frame to its `miss_send_len`), else ACTION.
    pub miss: bool,
    /// The frame: cut to the action's `max_len` (0xffff: whole) for
    /// ACTION, whole for NO_MATCH.
    pub frame: Vec<u8>,
    /// The frame's length before any cut.
    pub total_len: usize,
}

impl Punt {
    /// A punt of `data`, cut as [`Punt::frame`] says.
    pub fn new(
        in_port: u32,
        table: u8,
        cookie: u64,
        max_len: u16,
        miss: bool,
        data: &[u8],
    ) -> Self {
        let n = if miss || max_len == 0xffff {
            data.len()
        } else {
            data.len().min(usize::from(max_len))
        };
        Punt {
            in_port,
            table,
            cookie,
            miss,
            frame: data[..n].to_vec(),
            total_len: data.len(),
        }
    }
}

/// A frame the control side sends on a port (an OpenFlow PACKET_OUT's
/// output): the port's own buffer, or why it has none (counted as a tx drop).
pub type OutFrame<B> = Result<B, TxDropReason>;

/// Frames one packet-out queue holds before the control side refuses more.
pub const PACKET_OUT_QUEUE: usize = 1024;

/// A port as one PMD sees it.
pub struct PmdPort<B> {
    pub ofport: u32,
    pub port: Arc<dyn Port<Buf = B>>,
    /// Megaflows of this ingress port are offered to the NIC.
    pub offload: bool,
    /// This PMD's share of the port's accounting (DESIGN §6).
    pub stats: PortStats,
    tx: Burst<B>,
    /// The bytes of the packets in `tx`, summed as they are queued (the
    /// queueing reads each length anyway; the flush then need not).
    tx_queued_bytes: u64,
    txq: u16,
    /// Largest frame the port sends (MTU + L2 header and one tag), read
    /// once: not a virtual call per packet.
    max_frame: usize,
    /// Frames the control side sends on this port; the PMD that polls the
    /// port's rx queue 0 drains it.
    outq: Option<crossbeam_channel::Receiver<OutFrame<B>>>,
    /// When this PMD last received on the port (bridge clock, ms).
    last_rx_ms: Option<u64>,
    /// The port's OpenFlow config bits ([`port_config`]), set by the
    /// control side.
    admin: Arc<AtomicU32>,
}

/// Per-PMD counters (`pmd stats`).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PmdCounters {
    pub packets: u64,
    pub mark_hits: u64,
    /// A mark with no live megaflow behind it: the packet took the software path.
    pub stale_marks: u64,
    /// Found by simple match (see `fallback::simple`): no key, no EMC.
    pub simple_hits: u64,
    pub emc_hits: u64,
    pub dpcls_hits: u64,
    pub upcalls: u64,
    /// Packets dropped at the upcall budget.
    pub lost: u64,
    pub controller_punts: u64,
    /// Punts the controller channel had no room for (or no listener).
    pub punts_dropped: u64,
    /// Punts the controller meter (OpenFlow's `meter=controller`) refused.
    pub punts_metered: u64,
    pub offload_queue_full: u64,
    pub megaflows_installed: u64,
    pub megaflows_removed: u64,
    /// Transmits to a port removed since the megaflow was made.
    pub tx_no_such_port: u64,
    pub revalidations: u64,
    /// Upcalls whose megaflow's ufid was taken by another megaflow (the
    /// packet is dropped as `xlate_error`, the flow stays uncached).
    pub ufid_collisions: u64,
}

/// What the PMD keeps per megaflow beyond the megaflow itself.
#[derive(Clone, Copy, Debug)]
struct FlowMeta {
    ingress: u32,
    /// The offload worker has this PMD's put (false: offload is off for the
    /// port, or the queue was full and the next sweep offers it again).
    offered: bool,
}

/// [`FlowMeta`] per megaflow, indexed by the handle's slot: no hashing, and
/// growing adds a chunk, never a rehash or a copy inside an upcall.
#[derive(Default)]
struct FlowMetas {
    /// In chunks that never move: a `Vec` here doubled inside an upcall
    /// (at 524,288 megaflows, 12 MB copied into fresh pages).
    slots: fallback::growing::ChunkedVec<Option<(FlowHandle, FlowMeta)>>,
}

impl FlowMetas {
    fn get(&self, h: FlowHandle) -> Option<&FlowMeta> {
        match self.slots.get(h.index() as usize)? {
            Some((at, m)) if *at == h => Some(m),
            _ => None,
        }
    }

    fn get_mut(&mut self, h: FlowHandle) -> Option<&mut FlowMeta> {
        match self.slots.get_mut(h.index() as usize)? {
            Some((at, m)) if *at == h => Some(m),
            _ => None,
        }
    }

    fn insert(&mut self, h: FlowHandle, meta: FlowMeta) {
        let i = h.index() as usize;
        while self.slots.len() <= i {
            self.slots.push(None);
        }
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = Some((h, meta));
        }
    }

    fn remove(&mut self, h: FlowHandle) -> Option<FlowMeta> {
        let slot = self.slots.get_mut(h.index() as usize)?;
        match slot {
            Some((at, _)) if *at == h => slot.take().map(|(_, m)| m),
            _ => None,
        }
    }

    fn iter(&self) -> impl Iterator<Item = (FlowHandle, &FlowMeta)> {
        self.slots.iter().flatten().map(|(h, m)| (*h, m))
    }
}

/// Emptied event lists the revalidator hands back to one PMD, which takes
/// them without waiting.
pub type ReturnedEvents = fallback::sync::TryQueue<Vec<FlowEvent>>;

/// A PMD's report to its revalidator about one megaflow.
#[derive(Debug)]
// Installed is large on purpose (see its record).
#[allow(clippy::large_enum_variant)]
pub enum FlowEvent {
    Installed {
        pmd: u32,
        handle: FlowHandle,
        /// By value, not boxed: a box per install was a heap block the
        /// PMD allocated and the revalidator freed, and glibc's free of
        /// another thread's block takes that thread's arena lock, which
        /// then stalled the PMD's next malloc (a 5 ms upcall seen in
        /// bench-revalidation). It travels in a [`FlowEvent::Batch`], whose
        /// list comes back to the PMD.
        record: FlowRecord,
    },
    Removed {
        pmd: u32,
        handle: FlowHandle,
        ufid: Ufid,
    },
    /// Hash tables the PMD's flow cache let go, for the revalidator thread
    /// to free: unmapping tens of megabytes on the PMD stalled it for
    /// milliseconds.
    Retired(fallback::cache::RetiredTables),
    /// A pipeline version the PMD held last, for the revalidator thread to
    /// free: after a large bundle, dropping the old version releases every
    /// rule and table shard it did not share with the new one (3.7 ms on
    /// the PMD after a 100,000-rule bundle).
    OldPipeline(Arc<Pipeline>),
    /// The events of one loop iteration of PMD `pmd`, in order: one channel
    /// message (and at most one wake-up) per burst rather than per
    /// megaflow. The revalidator gives the emptied list back on the PMD's
    /// [`ReturnedEvents`], so the PMD neither allocates a list per burst
    /// nor has its channel blocks, sized by `Installed`, freed over there
    /// 31 events at a time.
    Batch(u32, Vec<FlowEvent>),
}

/// Hands the tables `cache` let go to the revalidator thread to free.
#[inline]
fn send_retired(cache: &mut FlowCache, events: &crossbeam_channel::Sender<FlowEvent>) {
    if let Some(tables) = cache.take_retired() {
        let _ = events.send(FlowEvent::Retired(tables));
    }
}

/// Where a PMD's megaflows are revalidated.
pub enum Revalidation {
    /// Here, by the same engine, when a change reaches the PMD (tests,
    /// benchmarks, `flowmark bench`: deterministic, one thread).
    Inline(Box<Revalidator>),
    /// On the revalidator thread (the daemon): installs and removals go to
    /// it, and only its verdicts (modify, delete) come back; the PMD never
    /// translates for revalidation.
    Thread {
        events: crossbeam_channel::Sender<FlowEvent>,
        ops: Arc<fallback::revalidate::VerdictQueues>,
        returned: Arc<ReturnedEvents>,
    },
}

/// Packets and bytes of removed megaflows per OpenFlow rule, in a vector
/// so that pruning the rules the pipeline lost can go a slice at a time.
#[derive(Default)]
struct RetiredStats {
    /// Grows a little per insert: a bundle's 100,000 megaflow deletes put as
    /// many rules here, and an all-at-once rehash stalled the PMD's
    /// iteration applying them.
    index: fallback::growing::GrowingMap<RuleId, usize>,
    /// In chunks for the same reason: a `Vec` doubling at 16,384, 32,768
    /// and 65,536 rules made those deletes' iterations 0.4-1.5 ms.
    entries: fallback::growing::ChunkedVec<(RuleId, u64, u64)>,
    cursor: usize,
}

impl RetiredStats {
    fn add(&mut self, id: RuleId, packets: u64, bytes: u64) {
        match self.index.get(&id) {
            Some(&i) => {
                if let Some(e) = self.entries.get_mut(i) {
                    e.1 += packets;
                    e.2 += bytes;
                }
            }
            None => {
                self.index.insert(id, self.entries.len());
                self.entries.push((id, packets, bytes));
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (RuleId, (u64, u64))> + '_ {
        self.entries.iter().map(|&(id, p, b)| (id, (p, b)))
    }

    /// Checks up to `budget` entries from where the last call stopped,
    /// dropping those `keep` refuses; true once the end is reached.
    fn prune_slice(&mut self, keep: impl Fn(RuleId) -> bool, budget: usize) -> bool {
        let mut checked = 0;
        while self.cursor < self.entries.len() && checked < budget {
            checked += 1;
            let Some(&(id, _, _)) = self.entries.get(self.cursor) else {
                break;
            };
            if keep(id) {
                self.cursor += 1;
                continue;
            }
            // The last entry (not checked yet) moves here and is checked next.
            self.index.remove(&id);
            self.entries.swap_remove(self.cursor);
            if let Some(&(moved, _, _)) = self.entries.get(self.cursor) {
                self.index.insert(moved, self.cursor);
            }
        }
        if self.cursor >= self.entries.len() {
            self.cursor = 0;
            true
        } else {
            false
        }
    }
}

/// Per-megaflow information for `megaflow dump`.
#[derive(Clone, Debug)]
pub struct MegaflowInfo {
    pub ufid: Ufid,
    pub megaflow: Megaflow,
    pub ingress: u32,
    pub offered: bool,
}

/// One PMD's datapath.
pub struct PmdCore<B> {
    pub id: u32,
    cache: FlowCache,
    meta: FlowMetas,
    marks: MarkTable,
    ports: Vec<PmdPort<B>>,
    /// ofport → index in `ports` (u16::MAX: none).
    by_ofport: Vec<u16>,
    /// The sorted ofports of the bridge (FLOOD/NORMAL targets).
    ofports: Vec<u32>,
    /// The sorted ofports whose megaflows go to a NIC (their megaflows
    /// widen L4 port masks, see `Bridge::widen_l4`).
    offload_ofports: Vec<u32>,
    pipeline: Arc<Pipeline>,
    bridge: Arc<BridgeState>,
    reval: Revalidation,
    /// [`ports_digest`] of `ofports` (megaflow records carry it).
    ports_digest: u64,
    /// The pipeline changed since removed rules' counts were last pruned.
    prune_retired: bool,
    /// Inline verdicts reached mid-burst, applied at housekeeping.
    deferred_ops: Vec<RevalOp>,
    /// The revalidator's verdicts not applied yet, in order. A deque over
    /// the batch's own buffer (`VecDeque::from` a `Vec` moves nothing): a
    /// bundle's batch holds 100,000 verdicts, and reversing it in place to
    /// pop from the back took 1.3-1.5 ms of one loop iteration.
    reval_backlog: VecDeque<RevalOp>,
    /// Emptied verdict batches to give back (the queue was busy).
    reval_spare: Vec<Vec<RevalOp>>,
    /// The slot where the periodic sweep goes on ([`PmdCore::sweep_slice`]).
    sweep_cursor: usize,
    /// The newest use the MAC refresh of the sweep under way saw.
    sweep_newest_use: u64,
    sweep_idle: Vec<FlowHandle>,
    sweep_offer: Vec<FlowHandle>,
    mac_version_seen: u64,
    /// Megaflows used after this time refresh their MAC entry at the next
    /// [`PmdCore::refresh_macs`].
    macs_refreshed_ms: u64,
    learn_scratch: Vec<(MacLearn, u64)>,
    offload: Box<dyn OffloadClient>,
    /// Deletes the worker's queue had no room for, retried each iteration.
    pending_deletes: VecDeque<(u32, Ufid)>,
    /// Deletes of removed megaflows' NIC rules, sent by `flush_removals`.
    deferred_deletes: Vec<(u32, Ufid)>,
    pub counters: PmdCounters,
    /// TSC cycles of each upcall (translation, install, offload offer).
    upcall_cycles: Box<CycleHistogram>,
    /// The burst's install reports to the revalidator thread, sent together
    /// at the end of the burst: sent one by one, each woke the parked
    /// revalidator (a futex wake per upcall, about a fifth of a flow's
    /// setup); the first send of a run wakes it, the rest find it awake.
    unsent_events: Vec<FlowEvent>,
    /// An upcall's translation lists, kept between upcalls.
    xlate_bufs: XlateBuffers,
    /// Action lists of recent megaflows, shared by equal ones.
    recent_actions: RecentActions,
    /// Packets and bytes of removed megaflows, per OpenFlow rule.
    retired_rule_stats: RetiredStats,
    upcall_budget: usize,
    /// Where punted packets go (the daemon's OpenFlow side), if anywhere.
    punts: Option<crossbeam_channel::Sender<Punt>>,
    rx: Burst<B>,
    /// Buffers for the extra copies of multi-output actions.
    copies: Option<Box<dyn BufferSource<B>>>,
    /// The burst's packets with their megaflow and what was read of their
    /// headers; mark-path packets are parsed (lightly) only when their
    /// megaflow's actions need header offsets.
    batch: Vec<(FlowHandle, Option<B>, Headers)>,
    /// The keys of a burst's packets that go to the EMC and dpcls.
    keys: Box<[FlowKey; BURST]>,
    /// The parse results that [`Headers::Parsed`] points at. Apart from the
    /// batch so that a parse writes its result once, field by field, where
    /// it is read: copied into a batch entry, the parse's narrow stores were
    /// read back with wide loads, which the CPU cannot forward (the hottest
    /// instruction of a 1-flow EMC profile).
    infos: Box<[ParseInfo; BURST]>,
    /// The receiving port's simple megaflows, copied once per burst (they
    /// change between bursts). A field, not a local: as a local, the copy's
    /// words were moved between stack slots on every packet.
    simple: Option<SimpleTable<FlowHandle>>,
}

impl<B: PacketBuf + Clone + Send + 'static> PmdCore<B> {
    pub fn new(
        id: u32,
        pipeline: Arc<Pipeline>,
        bridge: Arc<BridgeState>,
        offload: Box<dyn OffloadClient>,
        emc_insert_inv_prob: u32,
    ) -> Self {
        let mac_version_seen = bridge.mac_version.load(Ordering::Acquire);
        let reval = Revalidation::Inline(Box::new(Revalidator::new(
            Arc::clone(&pipeline),
            bridge.mac_snapshot(),
            Vec::new(),
            Some(Vec::new()),
        )));
        PmdCore {
            id,
            cache: FlowCache::new(emc_insert_inv_prob),
            meta: FlowMetas::default(),
            marks: MarkTable::new(),
            ports: Vec::new(),
            by_ofport: Vec::new(),
            ofports: Vec::new(),
            offload_ofports: Vec::new(),
            pipeline,
            bridge,
            reval,
            ports_digest: ports_digest(&[], Some(&[])),
            prune_retired: false,
            deferred_ops: Vec::new(),
            reval_backlog: VecDeque::new(),
            reval_spare: Vec::new(),
            sweep_cursor: 0,
            sweep_newest_use: 0,
            sweep_idle: Vec::new(),
            sweep_offer: Vec::new(),
            mac_version_seen,
            macs_refreshed_ms: 0,
            learn_scratch: Vec::new(),
            offload,
            pending_deletes: VecDeque::new(),
            deferred_deletes: Vec::new(),
            counters: PmdCounters::default(),
            upcall_cycles: Box::default(),
            unsent_events: Vec::with_capacity(BURST),
            xlate_bufs: XlateBuffers::default(),
            recent_actions: RecentActions::default(),
            retired_rule_stats: RetiredStats::default(),
            upcall_budget: DEFAULT_UPCALL_BUDGET,
            punts: None,
            rx: Burst::new(),
            copies: None,
            batch: Vec::with_capacity(BURST),
            keys: Box::new([FlowKey::ZERO; BURST]),
            infos: Box::new([ParseInfo::NONE; BURST]),
            simple: None,
        }
    }

    /// Hands revalidation to the revalidator thread: this PMD reports its
    /// installs and removals on `events` and applies the verdicts from `ops`.
    /// Megaflows installed so far are reported now.
    pub fn set_revalidator(
        &mut self,
        events: crossbeam_channel::Sender<FlowEvent>,
        ops: Arc<fallback::revalidate::VerdictQueues>,
        returned: Arc<ReturnedEvents>,
    ) {
        let stamp = self.pipeline.stamp();
        let mac_version = self.bridge.macs.read().recover().version();
        if let Revalidation::Inline(engine) = &self.reval {
            // Records the inline engine has carry their dependencies.
            for (h, mf) in self.cache.iter() {
                let _ = events.send(FlowEvent::Installed {
                    pmd: self.id,
                    handle: h,
                    record: FlowRecord::new(
                        mf,
                        engine
                            .deps_of(h)
                            .unwrap_or(fallback::ofproto::xlate::XlateDeps::ALL),
                        stamp,
                        mac_version,
                        self.ports_digest,
                    ),
                });
            }
        }
        self.cache.set_retire_tables(true);
        self.reval = Revalidation::Thread {
            events,
            ops,
            returned,
        };
    }

    /// The bridge clock (MAC learning, refresh and aging run on it).
    pub fn bridge(&self) -> &Arc<BridgeState> {
        &self.bridge
    }

    /// Where multi-output copies take their buffers (without one, copies
    /// are `Clone`s).
    pub fn set_buffer_source(&mut self, source: Box<dyn BufferSource<B>>) {
        self.copies = Some(source);
    }

    pub fn set_upcall_budget(&mut self, budget: usize) {
        self.upcall_budget = budget.max(1);
    }

    /// Sends punted packets (`controller` actions) to `tx`.
    pub fn set_punt_channel(&mut self, tx: crossbeam_channel::Sender<Punt>) {
        self.punts = Some(tx);
    }

    // ---- ports ----

    /// Adds a port (every PMD knows every port: any may transmit on it).
    pub fn add_port(&mut self, ofport: u32, port: Arc<dyn Port<Buf = B>>, offload: bool) {
        self.add_port_with_queue(ofport, port, offload, None);
    }

    /// [`PmdCore::add_port`] with the port's packet-out queue (drained when
    /// this PMD polls the port's rx queue 0).
    pub fn add_port_with_queue(
        &mut self,
        ofport: u32,
        port: Arc<dyn Port<Buf = B>>,
        offload: bool,
        outq: Option<crossbeam_channel::Receiver<OutFrame<B>>>,
    ) {
        self.del_port(ofport);
        let txq = (self.id % port.n_txq().max(1) as u32) as u16;
        let max_frame = port.mtu() + L2_OVERHEAD;
        self.ports.push(PmdPort {
            ofport,
            port,
            offload,
            stats: PortStats::default(),
            tx: Burst::new(),
            tx_queued_bytes: 0,
            txq,
            max_frame,
            outq,
            last_rx_ms: None,
            admin: self.bridge.port_config_cell(ofport),
        });
        self.reindex();
    }

    /// Removes a port and every megaflow that enters through it or outputs
    /// to it (their NIC rules go with them).
    pub fn del_port(&mut self, ofport: u32) -> Option<PortStats> {
        let idx = self.ports.iter().position(|p| p.ofport == ofport)?;
        let mut p = self.ports.remove(idx);
        p.tx.clear();
        let doomed: Vec<FlowHandle> = self
            .cache
            .iter()
            .filter(|(_, mf)| {
                mf.r#match.value.in_port() == ofport
                    || mf.actions().iter().any(
                        |a| matches!(a, fallback::actions::DpAction::Output(o) if *o == ofport),
                    )
            })
            .map(|(h, _)| h)
            .collect();
        for h in doomed {
            self.remove_megaflow(h);
        }
        self.flush_removals();
        // After the removals: revalidating flooders against the new port
        // list must not turn the removed outputs into kept drops first.
        self.reindex();
        Some(p.stats)
    }

    fn reindex(&mut self) {
        self.by_ofport.clear();
        self.ofports.clear();
        self.offload_ofports.clear();
        for (i, p) in self.ports.iter().enumerate() {
            let o = p.ofport as usize;
            if o >= self.by_ofport.len() {
                self.by_ofport.resize(o + 1, u16::MAX);
            }
            self.by_ofport[o] = i as u16;
            self.ofports.push(p.ofport);
            if p.offload {
                self.offload_ofports.push(p.ofport);
            }
        }
        self.ofports.sort_unstable();
        self.offload_ofports.sort_unstable();
        self.ports_digest = ports_digest(&self.ofports, Some(&self.offload_ofports));
        // Flooding megaflows follow the port list (the thread's engine
        // hears of it from the switch).
        if let Revalidation::Inline(engine) = &mut self.reval {
            let mut ops = Vec::new();
            engine.set_ports(
                self.ofports.clone(),
                Some(self.offload_ofports.clone()),
                &mut ops,
            );
            self.apply_reval_ops(ops);
        }
    }

    #[inline]
    fn port_index(&self, ofport: u32) -> Option<usize> {
        port_index(&self.by_ofport, ofport)
    }

    /// Whether another port of this PMD received within the last
    /// [`UPCALL_FAIRNESS_MS`] (then the upcall budget applies).
    fn others_receive(&self, port_idx: usize, now_ms: u64) -> bool {
        self.ports.iter().enumerate().any(|(i, p)| {
            i != port_idx
                && p.last_rx_ms
                    .is_some_and(|t| t + UPCALL_FAIRNESS_MS >= now_ms)
        })
    }

    pub fn ports(&self) -> &[PmdPort<B>] {
        &self.ports
    }

    // ---- control ----

    /// A new pipeline for upcalls. Inline, the megaflows its changes can
    /// affect are revalidated here and now; with a revalidator thread that
    /// thread does it and sends the verdicts. Counts of rules it no longer
    /// has are forgotten at the next sweep (rule churn must not grow memory).
    pub fn set_pipeline(&mut self, pipeline: Arc<Pipeline>) {
        let old = std::mem::replace(&mut self.pipeline, pipeline);
        if let Revalidation::Thread { events, .. } = &self.reval {
            // Only this PMD holds it: whoever else did has moved on, and
            // nothing can take a new reference to an unpublished version.
            if Arc::strong_count(&old) == 1 {
                let _ = events.send(FlowEvent::OldPipeline(old));
            }
        }
        self.prune_retired = true;
        if let Revalidation::Inline(engine) = &mut self.reval {
            let mut ops = Vec::new();
            engine.set_pipeline(Arc::clone(&self.pipeline), &mut ops);
            self.counters.revalidations += 1;
            self.apply_reval_ops(ops);
        }
    }

    /// Applies revalidation verdicts. Each names the megaflow by handle
    /// (slot and generation) and ufid: one removed meanwhile is skipped.
    pub fn apply_reval_ops(&mut self, ops: impl IntoIterator<Item = RevalOp>) {
        for op in ops {
            match op {
                RevalOp::Delete { handle, ufid } => {
                    if self.cache.get(handle).is_some_and(|m| m.ufid == ufid) {
                        self.remove_megaflow(handle);
                    }
                }
                RevalOp::Modify {
                    handle,
                    ufid,
                    actions,
                    rules,
                    drop,
                    learn,
                } => {
                    let Some(mf) = self.cache.get_mut(handle).filter(|m| m.ufid == ufid) else {
                        continue;
                    };
                    // Counts so far belong to the old rules.
                    for r in mf.rules.iter() {
                        self.retired_rule_stats
                            .add(*r, mf.stats.packets, mf.stats.bytes);
                    }
                    // The MAC refresh credits only packets counted under the
                    // current actions (`packets > 0`): a megaflow that learns
                    // only from now on taught nothing yet. One whose learning
                    // stays refreshes its entry now, not to lose the packets
                    // since the last refresh.
                    if let Some(l) = learn.filter(|l| mf.learn == Some(*l)) {
                        if mf.stats.packets > 0 && mf.stats.used > self.macs_refreshed_ms {
                            self.learn_scratch.push((l, mf.stats.used));
                        }
                    }
                    mf.stats.packets = 0;
                    mf.stats.bytes = 0;
                    mf.set_actions(actions);
                    mf.rules = rules;
                    mf.drop = drop;
                    mf.learn = learn;
                }
            }
        }
        self.flush_removals();
        if !self.learn_scratch.is_empty() {
            self.bridge.learn_macs(self.learn_scratch.drain(..));
        }
    }

    /// Forgets the counts of removed megaflows' rules that the pipeline no
    /// longer has, `budget` entries at a time (at the sweep, not on every
    /// flow mod, and never all at once).
    fn prune_retired_stats(&mut self, budget: usize) {
        if self.prune_retired {
            let pipeline = &self.pipeline;
            if self.retired_rule_stats.prune_slice(
                |id| pipeline.get(id).is_some() || pipeline.credits_live_group(id),
                budget,
            ) {
                self.prune_retired = false;
            }
        }
    }

    /// Applies an update from the offload worker.
    pub fn apply_offload_update(&mut self, u: PmdUpdate) {
        self.marks.apply(u);
    }

    pub fn marks(&self) -> &MarkTable {
        &self.marks
    }

    pub fn megaflow_count(&self) -> usize {
        self.cache.len()
    }

    /// Installs a megaflow as an upcall would, without translating (for
    /// benchmarks and tests that need a given set of masks). It is not
    /// offered to the NIC.
    pub fn preinstall(
        &mut self,
        ingress: u32,
        mf: Megaflow,
    ) -> Result<FlowHandle, fallback::cache::UfidCollision> {
        let h = self.cache.install(mf)?;
        if self.meta.get(h).is_none() {
            self.meta.insert(
                h,
                FlowMeta {
                    ingress,
                    offered: true,
                },
            );
        }
        Ok(h)
    }

    /// Publishes a mark for a megaflow directly (benchmarks and tests; the
    /// offload worker does this through [`PmdUpdate`]s).
    pub fn publish_mark(&mut self, mark: offload::marks::Mark, handle: FlowHandle) {
        self.marks.publish(mark, handle);
    }

    /// Every megaflow with its PMD-side state.
    pub fn megaflows(&self) -> Vec<MegaflowInfo> {
        self.cache
            .iter()
            .map(|(h, mf)| {
                let meta = self.meta.get(h);
                MegaflowInfo {
                    ufid: mf.ufid,
                    megaflow: mf.clone(),
                    ingress: meta.map_or(mf.r#match.value.in_port(), |m| m.ingress),
                    offered: meta.is_some_and(|m| m.offered),
                }
            })
            .collect()
    }

    /// Packets and bytes per OpenFlow rule: live megaflows plus removed ones.
    pub fn rule_stats(&self) -> HashMap<RuleId, (u64, u64)> {
        let mut out: HashMap<RuleId, (u64, u64)> = self.retired_rule_stats.iter().collect();
        for (_, mf) in self.cache.iter() {
            for r in mf.rules.iter() {
                let e = out.entry(*r).or_insert((0, 0));
                e.0 += mf.stats.packets;
                e.1 += mf.stats.bytes;
            }
        }
        out
    }

    /// Zeroes the PMD counters (`pmd stats --clear`).
    pub fn clear_counters(&mut self) {
        self.counters = PmdCounters::default();
        self.upcall_cycles.clear();
    }

    /// The cycles each upcall took since start or the last clear.
    pub fn upcall_cycles(&self) -> &CycleHistogram {
        &self.upcall_cycles
    }

    /// Removes one megaflow and asks the worker to remove its NIC rule.
    fn remove_megaflow(&mut self, h: FlowHandle) {
        let Some(mf) = self.cache.remove(h) else {
            return;
        };
        for r in mf.rules.iter() {
            self.retired_rule_stats
                .add(*r, mf.stats.packets, mf.stats.bytes);
        }
        self.counters.megaflows_removed += 1;
        match &mut self.reval {
            Revalidation::Inline(engine) => engine.removed(h, mf.ufid),
            // After the installs reported before it; sent by the caller's
            // `flush_removals`.
            Revalidation::Thread { .. } => self.unsent_events.push(FlowEvent::Removed {
                pmd: self.id,
                handle: h,
                ufid: mf.ufid,
            }),
        }
        if let Some(meta) = self.meta.remove(h).filter(|m| m.offered) {
            self.deferred_deletes.push((meta.ingress, mf.ufid));
        }
    }

    /// Sends what removals left for other threads, all at once: the
    /// revalidator's reports, the tables the cache let go, the offload
    /// worker's deletes. Sent one at a time between removals, each send
    /// could wake a parked thread on the other core (in a VM an inter-
    /// processor interrupt): applying 128 delete verdicts took 1.4-1.7 ms.
    fn flush_removals(&mut self) {
        if let Revalidation::Thread {
            events, returned, ..
        } = &self.reval
        {
            if !self.unsent_events.is_empty() {
                let next = match returned.try_pop() {
                    Ok(Some(list)) => list,
                    // None back yet (the first bursts, or the revalidator
                    // behind): a new list, which joins the ones in turn.
                    Ok(None) | Err(_) => Vec::with_capacity(BURST),
                };
                let batch = std::mem::replace(&mut self.unsent_events, next);
                let _ = events.send(FlowEvent::Batch(self.id, batch));
            }
            send_retired(&mut self.cache, events);
        }
        if self.deferred_deletes.is_empty() {
            return;
        }
        let mut deletes = std::mem::take(&mut self.deferred_deletes);
        for &(port, ufid) in &deletes {
            if !self.offload.delete(self.id, port, ufid) {
                self.pending_deletes.push_back((port, ufid));
            }
        }
        deletes.clear();
        self.deferred_deletes = deletes;
    }

    /// Removes every megaflow (e.g. at shutdown).
    pub fn flush_megaflows(&mut self) {
        let all: Vec<FlowHandle> = self.cache.iter().map(|(h, _)| h).collect();
        for h in all {
            self.remove_megaflow(h);
        }
        self.flush_removals();
    }

    /// One slice of the periodic sweep, `budget` cache slots from where the
    /// last slice stopped: megaflows idle for longer than `max_idle_ms` go,
    /// ones whose offload put found the worker's queue full are offered
    /// again, and with `refresh` the MAC entries of megaflows used since the
    /// last refresh are refreshed (as [`PmdCore::refresh_macs`]). A slice at
    /// a time, so that no PMD loop iteration walks every megaflow. Returns
    /// true when the sweep reached the last slot (the next slice starts over).
    pub fn sweep_slice(
        &mut self,
        now_ms: u64,
        max_idle_ms: u64,
        refresh: bool,
        budget: usize,
    ) -> bool {
        if self.sweep_cursor == 0 {
            self.sweep_newest_use = self.macs_refreshed_ms;
        }
        self.prune_retired_stats(budget.min(RETIRED_PRUNE_PER_SLICE));
        let start = self.sweep_cursor;
        let mut end = start.saturating_add(budget).min(self.cache.slots());
        let since = self.macs_refreshed_ms;
        let mut idle = std::mem::take(&mut self.sweep_idle);
        let mut offer = std::mem::take(&mut self.sweep_offer);
        let mut learns = std::mem::take(&mut self.learn_scratch);
        idle.clear();
        offer.clear();
        learns.clear();
        for (h, mf) in self.cache.iter_slots(start..end) {
            if now_ms.saturating_sub(mf.stats.used) > max_idle_ms {
                idle.push(h);
                // A removal costs far more than a look (dpcls, the NIC
                // rule's delete, the revalidator's note): the slice ends
                // after a bounded number of them.
                if idle.len() >= SWEEP_REMOVALS_PER_SLICE {
                    end = h.index() as usize + 1;
                    break;
                }
                continue;
            }
            if refresh && mf.stats.used > since && mf.stats.packets > 0 {
                if let Some(l) = mf.learn {
                    learns.push((l, mf.stats.used));
                    self.sweep_newest_use = self.sweep_newest_use.max(mf.stats.used);
                }
            }
            if self.meta.get(h).is_some_and(|m| {
                !m.offered
                    && self
                        .port_index(m.ingress)
                        .is_some_and(|i| self.ports[i].offload)
            }) {
                offer.push(h);
                // A put builds the worker's request: bounded like removals.
                if offer.len() >= SWEEP_REMOVALS_PER_SLICE {
                    end = h.index() as usize + 1;
                    break;
                }
            }
        }
        for &h in &idle {
            self.remove_megaflow(h);
        }
        self.flush_removals();
        if !learns.is_empty() {
            self.bridge.learn_macs(learns.drain(..));
        }
        // Puts wait behind refused deletes (see `upcall`).
        if self.pending_deletes.is_empty() {
            for &h in &offer {
                let (Some(mf), Some(meta)) = (self.cache.get(h), self.meta.get(h).copied()) else {
                    continue;
                };
                if self.offload.put(self.id, meta.ingress, mf, h) {
                    if let Some(m) = self.meta.get_mut(h) {
                        m.offered = true;
                    }
                } else {
                    self.counters.offload_queue_full += 1;
                    break;
                }
            }
        }
        self.sweep_idle = idle;
        self.sweep_offer = offer;
        self.learn_scratch = learns;
        if end >= self.cache.slots() {
            self.sweep_cursor = 0;
            if refresh {
                self.macs_refreshed_ms = self.sweep_newest_use;
            }
            true
        } else {
            self.sweep_cursor = end;
            false
        }
    }

    /// Megaflows whose offload put found the worker's queue full, offered
    /// again (the revalidation sweep's second job).
    pub fn reoffer(&mut self) -> usize {
        let mut offered = 0;
        let offloading: Vec<u32> = self
            .ports
            .iter()
            .filter(|p| p.offload)
            .map(|p| p.ofport)
            .collect();
        let handles: Vec<FlowHandle> = self
            .meta
            .iter()
            .filter(|(_, m)| !m.offered && offloading.contains(&m.ingress))
            .map(|(h, _)| h)
            .collect();
        for h in handles {
            let (Some(mf), Some(meta)) = (self.cache.get(h), self.meta.get(h).copied()) else {
                continue;
            };
            if self.offload.put(self.id, meta.ingress, mf, h) {
                offered += 1;
                if let Some(m) = self.meta.get_mut(h) {
                    m.offered = true;
                }
            } else {
                self.counters.offload_queue_full += 1;
                break;
            }
        }
        offered
    }

    /// Offers refused NIC-rule deletes again, in order, `at_most` of them,
    /// and only until the worker's queue refuses one.
    pub fn retry_pending_deletes(&mut self, at_most: usize) {
        for _ in 0..at_most {
            let Some(&(port, ufid)) = self.pending_deletes.front() else {
                break;
            };
            if !self.offload.delete(self.id, port, ufid) {
                break;
            }
            self.pending_deletes.pop_front();
        }
    }

    /// Work to do at the top of the poll loop: retry deletes, revalidate
    /// after a MAC-learning change.
    pub fn housekeeping(&mut self) {
        // Bounded: with a bundle's worth of deletes waiting, retrying them
        // all every iteration would cost milliseconds per iteration.
        self.retry_pending_deletes(PENDING_DELETES_PER_ITERATION);
        if !self.deferred_ops.is_empty() {
            let ops = std::mem::take(&mut self.deferred_ops);
            self.apply_reval_ops(ops);
        }
        match &mut self.reval {
            Revalidation::Inline(engine) => {
                let v = self.bridge.mac_version.load(Ordering::Acquire);
                if v != self.mac_version_seen {
                    self.mac_version_seen = v;
                    let mut ops = Vec::new();
                    engine.set_macs(self.bridge.mac_snapshot(), &mut ops);
                    self.counters.revalidations += 1;
                    self.apply_reval_ops(ops);
                }
            }
            Revalidation::Thread { ops, .. } => {
                // A big verdict (a bundle's worth of megaflows) is applied
                // a slice per loop iteration, so that no iteration is long.
                if self.reval_backlog.is_empty() {
                    if let Ok(Some(batch)) = ops.to_pmd.try_pop() {
                        self.counters.revalidations += 1;
                        // The emptied batch goes back to the revalidator
                        // (empty: `Vec::from` moves nothing).
                        let empty = std::mem::replace(&mut self.reval_backlog, batch.into());
                        if empty.capacity() > 0 {
                            self.reval_spare.push(empty.into());
                        }
                    }
                }
                while let Some(v) = self.reval_spare.pop() {
                    if let Err(v) = ops.returned.try_push(v) {
                        self.reval_spare.push(v);
                        break;
                    }
                }
                if !self.reval_backlog.is_empty() {
                    let t0 = rdtsc();
                    let budget = (crate::dpdk::tsc::tsc_per_us() * REVAL_BUDGET_US) as u64;
                    // Taken out so that slices drain it while `self` applies them.
                    let mut backlog = std::mem::take(&mut self.reval_backlog);
                    let mut applied = 0;
                    while !backlog.is_empty() && applied < REVAL_OPS_PER_ITERATION {
                        let n = backlog.len().min(REVAL_OPS_SLICE);
                        applied += n;
                        self.apply_reval_ops(backlog.drain(..n));
                        if rdtsc().wrapping_sub(t0) > budget {
                            break;
                        }
                    }
                    self.reval_backlog = backlog;
                }
            }
        }
    }

    /// Every verdict the revalidator has sent is applied (inline
    /// revalidation applies them as they come).
    pub fn verdicts_applied(&self) -> bool {
        match &self.reval {
            Revalidation::Inline(_) => true,
            Revalidation::Thread { ops, .. } => {
                self.reval_backlog.is_empty()
                    && self.deferred_ops.is_empty()
                    && ops.to_pmd.try_is_empty() == Ok(true)
            }
        }
    }

    pub fn pending_deletes(&self) -> usize {
        self.pending_deletes.len()
    }

    /// (subtables, subtables probed per dpcls hit).
    pub fn dpcls_figures(&self) -> (usize, f64) {
        let d = self.cache.dpcls();
        let per_hit = if d.hits == 0 {
            0.0
        } else {
            d.probes_on_hit as f64 / d.hits as f64
        };
        (d.subtables().len(), per_hit)
    }

    /// This PMD's accounting for every port.
    pub fn port_stats(&self) -> Vec<(u32, PortStats)> {
        self.ports.iter().map(|p| (p.ofport, p.stats)).collect()
    }

    /// Applies the offload worker's updates to the mark table; this is the
    /// PMD's quiescent point.
    pub fn apply_offload_updates(&mut self, updates: &mut offload::worker::PmdUpdates) -> usize {
        updates.apply_at_most(&mut self.marks, MARK_UPDATES_PER_ITERATION)
    }

    // ---- the fast path ----

    /// [`PmdCore::poll`] by OpenFlow port number.
    #[inline]
    pub fn poll_ofport(&mut self, ofport: u32, queue: u16, now_ms: u64) -> usize {
        match self.port_index(ofport) {
            Some(i) => self.poll(i, queue, now_ms),
            None => 0,
        }
    }

    /// Polls one rx queue of the port at `port_idx`, processes the burst and
    /// flushes the tx bursts. Returns the number of packets received.
    pub fn poll(&mut self, port_idx: usize, queue: u16, now_ms: u64) -> usize {
        if port_idx >= self.ports.len() {
            return 0;
        }
        let sent_out = queue == 0 && self.drain_packet_outs(port_idx);
        let n = self.ports[port_idx].port.rx_burst(queue, &mut self.rx);
        if n == 0 {
            if sent_out {
                self.flush_tx();
            }
            return 0;
        }
        self.ports[port_idx].last_rx_ms = Some(now_ms);
        let mut rx = std::mem::replace(&mut self.rx, Burst::unallocated());
        let admin = self.ports[port_idx].admin.load(Ordering::Relaxed);
        if admin & (port_config::PORT_DOWN | port_config::NO_RECV) != 0 {
            Self::refuse_received(&mut self.ports[port_idx], admin, &mut rx);
        }
        self.process_burst(port_idx, &mut rx, now_ms);
        self.rx = rx;
        self.flush_tx();
        n
    }

    /// Classifies and executes a burst received on `port_idx`, in stages
    /// over the whole burst (as OVS's `dfc_processing`): the mark path and
    /// simple match first; the other packets' keys are extracted and hashed
    /// together, their EMC slots read back to back (the cache misses of a
    /// burst overlap instead of following each other), then looked up in
    /// order: EMC, dpcls, upcall. Packets keep their order in the batch.
    pub fn process_burst(&mut self, port_idx: usize, rx: &mut Burst<B>, now_ms: u64) {
        // BURST packets at a time: the stages' arrays are that long.
        while !rx.is_empty() {
            self.process_chunk(port_idx, rx, now_ms);
        }
    }

    /// The direct route: while each packet takes the mark path or simple
    /// match to a megaflow whose only action is one output, it goes straight
    /// to that port's tx queue (no batch, no grouping), and a run of one
    /// megaflow's packets costs one stats update. Stops, without taking it,
    /// at the first packet it cannot send so: that packet and the rest go
    /// through the batch, after these, so each megaflow's packets keep their
    /// order. Returns the bytes of the packets it took.
    ///
    /// Its own function, not inlined: a small loop keeps its state in
    /// registers, where the whole classifier around it spilled it.
    #[inline(never)]
    fn direct_route(
        &mut self,
        port_idx: usize,
        ofport: u32,
        chunk: &mut std::vec::Drain<'_, B>,
        now_ms: u64,
    ) -> u64 {
        let mut bytes = 0u64;
        let mut run = DirectRun::NONE;
        while let Some(next) = chunk.as_slice().first() {
            if !next.is_contiguous() {
                break;
            }
            if let Some(mark) = next.mark() {
                // The previous packet's mark: same megaflow, checked.
                if run.mark != Some(mark) {
                    let found = self.marks.lookup(mark).and_then(|h| {
                        let mf = self.cache.get(h)?;
                        if mf.hot().in_port != ofport {
                            return None;
                        }
                        direct_output(mf, &self.by_ofport).map(|(to, tcp)| (h, to, tcp))
                    });
                    let Some((h, to, maybe_tcp)) = found else {
                        break;
                    };
                    run.finish(&mut self.cache, &mut self.ports[port_idx], now_ms);
                    run = DirectRun::new(Some(mark), h, to, maybe_tcp);
                }
                let Some(pkt) = chunk.next() else { break };
                self.counters.mark_hits += 1;
                bytes += pkt.len() as u64;
                run.send_marked(pkt, &mut self.ports);
                continue;
            }
            let Some(table) = &self.simple else { break };
            let Some(f) = packet::l2_fields(next.data()) else {
                break;
            };
            let Some(h) = table.lookup(ofport, &f) else {
                break;
            };
            if run.handle != h {
                let out = self
                    .cache
                    .get(h)
                    .and_then(|mf| direct_output(mf, &self.by_ofport));
                let Some((to, maybe_tcp)) = out else { break };
                run.finish(&mut self.cache, &mut self.ports[port_idx], now_ms);
                run = DirectRun::new(None, h, to, maybe_tcp);
            }
            let Some(pkt) = chunk.next() else { break };
            self.counters.simple_hits += 1;
            bytes += pkt.len() as u64;
            run.count(&pkt, f.tcp_flags);
            queue_tx(&mut self.ports[run.to], pkt);
        }
        run.finish(&mut self.cache, &mut self.ports[port_idx], now_ms);
        bytes
    }

    /// [`PmdCore::process_burst`] of the first (at most) BURST packets.
    fn process_chunk(&mut self, port_idx: usize, rx: &mut Burst<B>, now_ms: u64) {
        let ofport = self.ports[port_idx].ofport;
        self.simple = self.cache.simple_table(ofport);
        let mut chunk = rx.drain_front(BURST);
        let rx_packets = chunk.len() as u64;
        // The direct route first: it stops at the first packet it cannot
        // take, and the loop below classifies that packet and the rest.
        let mut rx_bytes = self.direct_route(port_idx, ofport, &mut chunk, now_ms);
        let mut batch = std::mem::take(&mut self.batch);
        // Packets that need the caches: their place in the batch, key, hash.
        let mut pending = [0u8; BURST];
        let mut hashes = [0u32; BURST];
        let mut n_pending = 0;
        for pkt in chunk {
            rx_bytes += pkt.len() as u64;
            if !pkt.is_contiguous() {
                self.ports[port_idx]
                    .stats
                    .count_rx_drop(RxDropReason::NotLinear, 1);
                continue;
            }
            // Mark path: mark → megaflow, no key extraction, no EMC/dpcls.
            if let Some(mark) = pkt.mark() {
                if let Some(h) = self.marks.lookup(mark) {
                    if let Some(mf) = self.cache.get(h) {
                        if mf.hot().in_port == ofport {
                            self.counters.mark_hits += 1;
                            batch.push((h, Some(pkt), Headers::Unread));
                            continue;
                        }
                    }
                }
                self.counters.stale_marks += 1;
            }
            // Simple match: a few L2 fields against the port's megaflows.
            if let Some(table) = &self.simple {
                if let Some(f) = packet::l2_fields(pkt.data()) {
                    if let Some(h) = table.lookup(ofport, &f) {
                        self.counters.simple_hits += 1;
                        batch.push((h, Some(pkt), Headers::TcpFlags(f.tcp_flags)));
                        continue;
                    }
                }
            }
            let key = &mut self.keys[n_pending];
            let info = &mut self.infos[n_pending];
            let hash = match pkt.rss_hash() {
                Some(hash) => {
                    *info = packet::parse(pkt.data(), ofport, key);
                    hash
                }
                None => packet::parse_hashed_into(pkt.data(), ofport, key, info) as u32,
            };
            if info.l3_ofs.is_none() && pkt.len() < 14 {
                // Not even an Ethernet header: nothing to classify.
                self.ports[port_idx]
                    .stats
                    .count_rx_drop(RxDropReason::ParseError, 1);
                continue;
            }
            hashes[n_pending] = hash;
            pending[n_pending] = batch.len() as u8;
            batch.push((
                FlowHandle::NONE,
                Some(pkt),
                Headers::Parsed(n_pending as u8),
            ));
            n_pending += 1;
        }
        self.counters.packets += rx_packets;
        self.ports[port_idx].stats.rx += rx_packets;
        self.ports[port_idx].stats.rx_bytes += rx_bytes;

        if n_pending > 0 {
            let mut touched = 0u32;
            for &hash in &hashes[..n_pending] {
                touched ^= self.cache.touch(hash);
            }
            std::hint::black_box(touched);
            let mut upcalls = 0usize;
            let mut dropped = false;
            for j in 0..n_pending {
                let at = pending[j] as usize;
                let found = match self.cache.lookup(&self.keys[j], hashes[j]) {
                    Some((h, how)) => {
                        match how {
                            CacheHit::Emc => self.counters.emc_hits += 1,
                            CacheHit::Dpcls => self.counters.dpcls_hits += 1,
                        }
                        Some(h)
                    }
                    None if upcalls >= self.upcall_budget
                        && self.others_receive(port_idx, now_ms) =>
                    {
                        self.counters.lost += 1;
                        self.ports[port_idx]
                            .stats
                            .count_rx_drop(RxDropReason::UpcallLimit, 1);
                        None
                    }
                    None => {
                        upcalls += 1;
                        let key = self.keys[j];
                        let t0 = rdtsc();
                        let h = self.upcall(port_idx, &key, now_ms);
                        self.upcall_cycles.record(rdtsc().wrapping_sub(t0));
                        if h.is_none() {
                            self.ports[port_idx]
                                .stats
                                .count_rx_drop(RxDropReason::XlateError, 1);
                        }
                        h
                    }
                };
                match found {
                    Some(h) => batch[at].0 = h,
                    None => {
                        batch[at].1 = None;
                        dropped = true;
                    }
                }
            }
            if dropped {
                batch.retain(|(_, pkt, _)| pkt.is_some());
            }
        }
        self.execute_batch(port_idx, &mut batch, n_pending, now_ms);
        self.batch = batch;
        self.flush_removals();
    }

    /// Translates a missed key, installs the megaflow and offers it to the
    /// NIC. `None`: the megaflow's ufid collided with another megaflow's,
    /// and the packet is the caller's to drop (counted).
    fn upcall(&mut self, port_idx: usize, key: &FlowKey, now_ms: u64) -> Option<FlowHandle> {
        self.counters.upcalls += 1;
        let (x, learn, mac_version) = {
            let macs = self.bridge.macs.read().recover();
            let x = xlate_reusing(
                Bridge {
                    pipeline: &self.pipeline,
                    macs: &macs,
                    ports: &self.ofports,
                    widen_l4: Some(&self.offload_ofports),
                },
                key,
                &mut self.xlate_bufs,
            );
            // Only a new or moved entry takes the write lock here; known
            // ones are refreshed by the sweep from the megaflow's counts.
            let learn = x
                .learn
                .filter(|l| macs.lookup(l.mac, l.vlan) != Some(l.port));
            (x, learn, macs.version())
        };
        if let Some(l) = learn {
            self.bridge.learn_macs([(l, now_ms)]);
        }
        let deps = x.deps;
        // Equal action lists shared, rule lists of one or two inline and the
        // translation's lists reused: an upcall allocates nothing but table
        // growth.
        let actions = self.recent_actions.share(&x.actions);
        let mut mf = Megaflow::with_lists(key, &x.mask, actions, RuleIds::from(&x.rules[..]));
        mf.drop = x.drop;
        mf.learn = x.learn;
        self.xlate_bufs.recycle(x);
        mf.stats.used = now_ms;
        let ufid = mf.ufid;
        let existed = self.cache.find(&ufid);
        let h = match self.cache.install(mf) {
            Ok(h) => h,
            Err(_) => {
                self.counters.ufid_collisions += 1;
                return None;
            }
        };
        if existed.is_none() {
            self.counters.megaflows_installed += 1;
            if let Some(mf) = self.cache.get(h) {
                let record = FlowRecord::new(
                    mf,
                    deps,
                    self.pipeline.stamp(),
                    mac_version,
                    self.ports_digest,
                );
                match &mut self.reval {
                    // Verdicts wait for housekeeping: the burst holds handles.
                    Revalidation::Inline(engine) => {
                        engine.installed(h, record, &mut self.deferred_ops)
                    }
                    Revalidation::Thread { .. } => {
                        self.unsent_events.push(FlowEvent::Installed {
                            pmd: self.id,
                            handle: h,
                            record,
                        });
                    }
                }
            }
            let port = &self.ports[port_idx];
            let ingress = port.ofport;
            let mut meta = FlowMeta {
                ingress,
                offered: false,
            };
            // Puts wait behind refused deletes, so that the worker never
            // sees a megaflow's delete after its re-put.
            if port.offload && self.pending_deletes.is_empty() && self.deferred_deletes.is_empty() {
                if let Some(mf) = self.cache.get(h) {
                    if self.offload.put(self.id, ingress, mf, h) {
                        meta.offered = true;
                    } else {
                        self.counters.offload_queue_full += 1;
                    }
                }
            }
            self.meta.insert(h, meta);
        }
        Some(h)
    }

    /// Refreshes the MAC-learning entries of megaflows that counted packets
    /// since the last sweep (mark-path packets included: they count on the
    /// megaflow too), as OVS refreshes learning from megaflow statistics;
    /// without this an entry would age out while its host keeps sending
    /// through a cached megaflow that never upcalls again. Returns how many
    /// megaflows refreshed an entry.
    pub fn refresh_macs(&mut self) -> usize {
        let since = self.macs_refreshed_ms;
        let mut newest = since;
        let mut learns = std::mem::take(&mut self.learn_scratch);
        learns.clear();
        for (_, mf) in self.cache.iter() {
            if let Some(l) = mf.learn {
                if mf.stats.used > since && mf.stats.packets > 0 {
                    learns.push((l, mf.stats.used));
                    newest = newest.max(mf.stats.used);
                }
            }
        }
        let n = learns.len();
        if n > 0 {
            self.bridge.learn_macs(learns.drain(..));
        }
        self.macs_refreshed_ms = newest;
        self.learn_scratch = learns;
        n
    }

    /// Executes the batch in arrival order, a run of consecutive packets of
    /// one megaflow at a time: the megaflow's stats and action list are
    /// touched once per run, not per packet. Runs rather than groups of a
    /// megaflow across the burst: no grouping pass, and order kept; traffic
    /// comes in runs of a flow, and packets of many flows interleaved make
    /// runs of one, as groups of one would be.
    fn execute_batch(
        &mut self,
        port_idx: usize,
        batch: &mut Vec<(FlowHandle, Option<B>, Headers)>,
        infos_used: usize,
        now_ms: u64,
    ) {
        let mut out = Emitter {
            ports: &mut self.ports,
            by_ofport: &self.by_ofport,
            counters: &mut self.counters,
            punts: &self.punts,
            in_port: 0,
            controller_meter: self.pipeline.meter(meter::METER_CONTROLLER).map(|m| &**m),
            now_ms,
        };
        out.in_port = out.ports[port_idx].ofport;
        let copies = &mut self.copies;
        let pipeline = &self.pipeline;
        // Packets parsed here take the info slots after the receive side's.
        let infos = &mut self.infos;
        let mut free_info = infos_used;
        let mut rest = &mut batch[..];
        while let Some(&(h, _, _)) = rest.first() {
            let len = rest.iter().take_while(|(x, _, _)| *x == h).count();
            let (members, tail) = std::mem::take(&mut rest).split_at_mut(len);
            rest = tail;
            let Some(mf) = self.cache.get_mut(h) else {
                // Cannot happen (handles are fresh within a burst); never
                // lose the packets' count if it does.
                out.ports[port_idx]
                    .stats
                    .count_rx_drop(RxDropReason::XlateError, members.len() as u64);
                continue;
            };
            // Header offsets are needed by modifying actions; TCP flags (for
            // the flow's stats) only where the megaflow may be TCP.
            let (modifies, maybe_tcp) = (mf.hot().modifies, mf.hot().maybe_tcp);
            // The run's statistics in one update.
            let (mut packets, mut bytes, mut flags) = (0u64, 0usize, 0u16);
            for (_, pkt, headers) in members.iter_mut() {
                let Some(pkt) = pkt else { continue };
                flags |= match *headers {
                    Headers::Parsed(at) => infos[usize::from(at)].tcp_flags,
                    // Every packet has at most one slot: BURST suffice.
                    _ if modifies && free_info < BURST => {
                        let info = &mut infos[free_info];
                        *info = packet::parse_offsets(pkt.data());
                        *headers = Headers::Parsed(free_info as u8);
                        free_info += 1;
                        info.tcp_flags
                    }
                    Headers::TcpFlags(f) => f,
                    Headers::Unread if maybe_tcp => packet::tcp_flags(pkt.data()),
                    Headers::Unread => 0,
                };
                packets += 1;
                bytes += pkt.len();
            }
            mf.stats.packets += packets;
            mf.stats.bytes += bytes as u64;
            mf.stats.used = now_ms;
            mf.stats.tcp_flags |= flags;
            let actions: &[DpAction] = mf.actions();
            if actions.is_empty() {
                let reason = match mf.drop {
                    Some(XlateDrop::NoMatch) => RxDropReason::NoMatch,
                    Some(XlateDrop::RecursionTooDeep | XlateDrop::TooManyResubmits) => {
                        RxDropReason::XlateError
                    }
                    _ => RxDropReason::DropAction,
                };
                let dropped = members.iter_mut().filter_map(|m| m.1.take()).count();
                out.ports[port_idx]
                    .stats
                    .count_rx_drop(reason, dropped as u64);
                continue;
            }
            // One output and nothing else (the common case): the port is
            // looked up once for the run and no action runs.
            if let [DpAction::Output(to)] = actions {
                let to = port_index(out.by_ofport, *to);
                for m in members.iter_mut() {
                    let Some(pkt) = m.1.take() else {
                        continue;
                    };
                    out.ports[port_idx].stats.forwarded += 1;
                    out.send(to, Ok(pkt));
                }
                continue;
            }
            for (_, pkt, headers) in members.iter_mut() {
                let Some(pkt) = pkt.take() else { continue };
                // Parsed above whenever an action needs the offsets.
                let info = match *headers {
                    Headers::Parsed(at) => infos[usize::from(at)],
                    _ => ParseInfo::NONE,
                };
                let copy = |p: &B| match copies.as_mut().and_then(|c| c.take()) {
                    Some(mut b) => {
                        b.clone_from(p);
                        b
                    }
                    None => p.clone(),
                };
                // A meter the pipeline no longer has (its rules are being
                // removed with it) lets packets through, as OVS's datapath
                // does with an unknown meter id.
                let meter =
                    |id: u32, len: usize| pipeline.meter(id).is_none_or(|m| m.admit(now_ms, len));
                let ran = exec::execute_gated(actions, pkt, info, copy, meter, |sink, res| {
                    out.emit(sink, res)
                });
                let stats = &mut out.ports[port_idx].stats;
                match ran {
                    exec::Ran::Metered {
                        after_output: false,
                        ..
                    } => stats.count_rx_drop(RxDropReason::Meter, 1),
                    _ => stats.forwarded += 1,
                }
            }
        }
        batch.clear();
    }

    /// Queues the control side's frames for this port (its packet-out
    /// queue) on the port's tx burst, counted like any transmit. True when
    /// there were any.
    fn drain_packet_outs(&mut self, port_idx: usize) -> bool {
        let Some(port) = self.ports.get_mut(port_idx) else {
            return false;
        };
        if port.outq.as_ref().is_none_or(|q| q.is_empty()) {
            return false;
        }
        let Some(q) = port.outq.take() else {
            return false;
        };
        let mut any = false;
        while let Ok(frame) = q.try_recv() {
            any = true;
            port.stats.tx_attempted += 1;
            let pkt = match frame {
                Ok(pkt) => pkt,
                Err(reason) => {
                    port.stats.count_tx_drop(reason, 1);
                    continue;
                }
            };
            queue_tx_counted(port, pkt);
        }
        port.outq = Some(q);
        any
    }

    /// What a port configured down or not to receive drops of a burst it
    /// received (counted as received and dropped); STP frames stay on a
    /// port that is only not receiving.
    #[cold]
    fn refuse_received(port: &mut PmdPort<B>, admin: u32, rx: &mut Burst<B>) {
        let down = admin & port_config::PORT_DOWN != 0;
        let (mut n, mut bytes) = (0u64, 0u64);
        rx.retain(|p| {
            let stp = !down && p.data().get(..6) == Some(&port_config::STP_DST[..]);
            if !stp {
                n += 1;
                bytes += p.len() as u64;
            }
            stp
        });
        port.stats.rx += n;
        port.stats.rx_bytes += bytes;
        let reason = if down {
            RxDropReason::PortDown
        } else {
            RxDropReason::NoRecv
        };
        port.stats.count_rx_drop(reason, n);
    }

    fn flush_port(port: &mut PmdPort<B>) {
        if port.tx.is_empty() {
            return;
        }
        let admin = port.admin.load(Ordering::Relaxed);
        if admin & (port_config::PORT_DOWN | port_config::NO_FWD) != 0 {
            let reason = if admin & port_config::PORT_DOWN != 0 {
                TxDropReason::PortDown
            } else {
                TxDropReason::NoForward
            };
            port.stats.count_tx_drop(reason, port.tx.len() as u64);
            port.tx.clear();
            port.tx_queued_bytes = 0;
            return;
        }
        let queued = port.tx.len() as u64;
        let queued_bytes = std::mem::take(&mut port.tx_queued_bytes);
        let sent = port.port.tx_burst(port.txq, &mut port.tx) as u64;
        port.stats.tx += sent;
        // What was sent is what left the burst: exact even where a port
        // sends other packets than the first `sent` (the DPDK port passes
        // over failed copies and chained mbufs, see `Port::tx_burst`).
        let left_bytes: u64 = port.tx.iter().map(|p| p.len() as u64).sum();
        port.stats.tx_bytes += queued_bytes.saturating_sub(left_bytes);
        let refused = queued - sent;
        if refused > 0 {
            let reason = if port.port.is_down() {
                TxDropReason::PortDown
            } else {
                TxDropReason::RingFull
            };
            port.stats.count_tx_drop(reason, refused);
        }
        port.tx.clear();
    }

    /// Sends every queued packet.
    pub fn flush_tx(&mut self) {
        for port in &mut self.ports {
            Self::flush_port(port);
        }
    }
}

/// What the receive side read of a packet's headers before its megaflow
/// was found: the mark path reads nothing, simple match only the TCP flags.
#[derive(Clone, Copy, Debug)]
enum Headers {
    Unread,
    TcpFlags(u16),
    /// The packet's slot in [`PmdCore::infos`].
    Parsed(u8),
}

/// Where a batch's packets go: the PMD's ports, counters and punt queue,
/// borrowed apart from its flow cache so that a group's actions are read
/// in place while its packets are sent.
struct Emitter<'a, B: PacketBuf> {
    ports: &'a mut Vec<PmdPort<B>>,
    by_ofport: &'a [u16],
    counters: &'a mut PmdCounters,
    punts: &'a Option<crossbeam_channel::Sender<Punt>>,
    /// The ingress port of the batch (for punts).
    in_port: u32,
    /// The meter every punt passes (`meter=controller`), if there is one.
    controller_meter: Option<&'a Meter>,
    now_ms: u64,
}

impl<B: PacketBuf + Clone + Send + 'static> Emitter<'_, B> {
    #[inline]
    fn emit(&mut self, sink: Sink, res: Result<B, ExecError>) {
        let ofport = match sink {
            Sink::Controller {
                table,
                cookie,
                max_len,
                miss,
            } => {
                self.counters.controller_punts += 1;
                if let (Some(m), Ok(pkt)) = (self.controller_meter, &res) {
                    if !m.admit(self.now_ms, pkt.len()) {
                        self.counters.punts_metered += 1;
                        return;
                    }
                }
                let sent = match (&self.punts, &res) {
                    (Some(tx), Ok(pkt)) => tx
                        .try_send(Punt::new(
                            self.in_port,
                            table,
                            cookie,
                            max_len,
                            miss,
                            pkt.data(),
                        ))
                        .is_ok(),
                    _ => false,
                };
                if !sent {
                    self.counters.punts_dropped += 1;
                }
                return;
            }
            Sink::Port(p) => p,
        };
        self.send(port_index(self.by_ofport, ofport), res);
    }

    /// Queues a packet (or counts its failure) on the port at `idx`.
    /// Always inlined: it is the per-packet step of every output.
    #[inline(always)]
    fn send(&mut self, idx: Option<usize>, res: Result<B, ExecError>) {
        let Some(idx) = idx else {
            self.counters.tx_no_such_port += 1;
            return;
        };
        let port = &mut self.ports[idx];
        port.stats.tx_attempted += 1;
        let pkt = match res {
            Ok(pkt) => pkt,
            Err(ExecError::NoHeadroom { .. }) => {
                port.stats.count_tx_drop(TxDropReason::NoHeadroom, 1);
                return;
            }
        };
        queue_tx_counted(port, pkt);
    }
}

/// Queues a packet on a port's tx burst (flushing a full one), counting the
/// transmit attempt.
#[inline(always)]
fn queue_tx<B: PacketBuf + Clone + Send + 'static>(port: &mut PmdPort<B>, pkt: B) {
    port.stats.tx_attempted += 1;
    queue_tx_counted(port, pkt);
}

/// [`queue_tx`] of an attempt already counted.
#[inline(always)]
fn queue_tx_counted<B: PacketBuf + Clone + Send + 'static>(port: &mut PmdPort<B>, pkt: B) {
    let len = pkt.len();
    if len > port.max_frame {
        port.stats.count_tx_drop(TxDropReason::TooBig, 1);
        return;
    }
    if port.tx.is_full() {
        PmdCore::flush_port(port);
    }
    match port.tx.push(pkt) {
        Ok(()) => port.tx_queued_bytes += len as u64,
        Err(_pkt) => port.stats.count_tx_drop(TxDropReason::RingFull, 1),
    }
}

/// The port index and "may be TCP" of a megaflow whose only action is one
/// output to a port of this PMD: the megaflows the direct route serves.
#[inline]
fn direct_output(mf: &Megaflow, by_ofport: &[u16]) -> Option<(usize, bool)> {
    let hot = mf.hot();
    let to = port_index(by_ofport, hot.single_output?)?;
    Some((to, hot.maybe_tcp))
}

/// The open run of `process_chunk`'s direct route: consecutive packets of
/// one megaflow, counted into its stats once when the run ends.
struct DirectRun {
    /// The mark the run's packets carry (mark-path runs).
    mark: Option<u32>,
    handle: FlowHandle,
    /// The output port's index.
    to: usize,
    maybe_tcp: bool,
    packets: u64,
    bytes: u64,
    tcp_flags: u16,
}

impl DirectRun {
    const NONE: DirectRun = DirectRun::new(None, FlowHandle::NONE, 0, false);

    const fn new(mark: Option<u32>, handle: FlowHandle, to: usize, maybe_tcp: bool) -> Self {
        DirectRun {
            mark,
            handle,
            to,
            maybe_tcp,
            packets: 0,
            bytes: 0,
            tcp_flags: 0,
        }
    }

    #[inline(always)]
    fn count<B: PacketBuf>(&mut self, pkt: &B, tcp_flags: u16) {
        self.packets += 1;
        self.bytes += pkt.len() as u64;
        self.tcp_flags |= tcp_flags;
    }

    /// Counts a mark-path packet into the run (its TCP flags read only
    /// where the megaflow may be TCP) and queues it on the run's port.
    #[inline(always)]
    fn send_marked<B: PacketBuf + Clone + Send + 'static>(
        &mut self,
        pkt: B,
        ports: &mut [PmdPort<B>],
    ) {
        let flags = if self.maybe_tcp {
            packet::tcp_flags(pkt.data())
        } else {
            0
        };
        self.count(&pkt, flags);
        queue_tx(&mut ports[self.to], pkt);
    }

    /// Adds the run to its megaflow's stats and its packets to the ingress
    /// port's forwarded count.
    fn finish<B: PacketBuf>(
        &mut self,
        cache: &mut FlowCache,
        ingress: &mut PmdPort<B>,
        now_ms: u64,
    ) {
        if self.packets == 0 {
            return;
        }
        ingress.stats.forwarded += self.packets;
        if let Some(mf) = cache.get_mut(self.handle) {
            mf.stats.packets += self.packets;
            mf.stats.bytes += self.bytes;
            mf.stats.used = now_ms;
            mf.stats.tcp_flags |= self.tcp_flags;
        }
        *self = DirectRun::NONE;
    }
}

fn port_index(by_ofport: &[u16], ofport: u32) -> Option<usize> {
    match by_ofport.get(ofport as usize) {
        Some(&i) if i != u16::MAX => Some(i as usize),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_stats_prune_a_slice_at_a_time_and_keep_the_rest_exact() {
        let mut r = RetiredStats::default();
        for i in 0..100u64 {
            r.add(RuleId(i), i, 10 * i);
        }
        r.add(RuleId(7), 1, 1);
        // Keep the even rules, three entries per slice.
        let keep = |id: RuleId| id.0 % 2 == 0;
        let mut slices = 1;
        while !r.prune_slice(keep, 3) {
            slices += 1;
        }
        assert!(slices >= 100 / 3, "{slices}");
        let mut left: Vec<(RuleId, (u64, u64))> = r.iter().collect();
        left.sort();
        let want: Vec<(RuleId, (u64, u64))> = (0..100u64)
            .filter(|i| i % 2 == 0)
            .map(|i| (RuleId(i), (i, 10 * i)))
            .collect();
        assert_eq!(left, want);
        // The index follows the moves: adding to a kept rule finds it.
        r.add(RuleId(98), 2, 2);
        assert!(r.iter().any(|e| e == (RuleId(98), (100, 982))));
        assert_eq!(r.iter().count(), 50);
    }
}
