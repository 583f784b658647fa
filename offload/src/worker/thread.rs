//! The worker thread around the engine, and the PMDs' halves of its
//! channels ([`PmdOffload`], [`PmdRequests`], [`PmdUpdates`]).

use super::*;
use fallback::sync::{Busy, Recover, TryQueue};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};
use fallback::cache::FlowHandle;
use fallback::megaflow::{Megaflow, Ufid};
use hashbrown::HashMap;
use thiserror::Error;

use crate::device::FlowDevice;
use crate::marks::MarkTable;

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
    /// Offload threads: megaflows are sharded by ingress port
    /// ([`shard_of`]), each shard with its own engine, request queue and
    /// share of the marks. `engine.shard`/`engine.shards` are set per
    /// thread from this.
    pub threads: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            threads: 1,
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

/// State shared between the worker threads and the PMDs (atomics only).
#[derive(Debug, Default)]
struct Shared {
    /// Each shard's engine epoch, stored after the updates of that epoch
    /// were sent.
    epochs: Vec<AtomicU64>,
    queue_full: AtomicU64,
}

/// What a PMD has seen of each shard's epochs (it stores, the shards read).
type Seen = Arc<[AtomicU64]>;

enum Control {
    AddPmd {
        pmd: PmdId,
        updates: Arc<UpdateQueues>,
        seen: Seen,
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
    Progress {
        reply: Sender<Progress>,
    },
    Dump {
        reply: Sender<Vec<FlowOffloadInfo>>,
    },
    Shutdown,
}

/// One offload thread: its request queue, its control queue, its thread.
struct Shard {
    requests: Sender<OffloadRequest>,
    control: Sender<Control>,
    thread: Option<JoinHandle<()>>,
}

/// The daemon's handle on the offload threads (one per shard).
pub struct OffloadWorker {
    shards: Vec<Shard>,
    shared: Arc<Shared>,
}

impl OffloadWorker {
    pub fn spawn(config: WorkerConfig) -> Result<OffloadWorker, WorkerError> {
        let n = config.threads.max(1);
        let shared = Arc::new(Shared {
            epochs: (0..n).map(|_| AtomicU64::new(0)).collect(),
            queue_full: AtomicU64::new(0),
        });
        let mut worker = OffloadWorker {
            shards: Vec::with_capacity(n),
            shared,
        };
        for index in 0..n {
            let engine = OffloadEngine::new(EngineConfig {
                shard: index as u32,
                shards: n as u32,
                ..config.engine
            })?;
            let (requests, request_rx) = crossbeam_channel::bounded(config.queue_capacity.max(1));
            let (control, control_rx) = crossbeam_channel::unbounded();
            let thread_shared = Arc::clone(&worker.shared);
            let name = if n == 1 {
                "offload".to_string()
            } else {
                format!("offload-{index}")
            };
            // On failure `worker` is dropped, which stops the shards
            // already started.
            let thread = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    WorkerThread {
                        engine,
                        config,
                        index,
                        requests: request_rx,
                        control: control_rx,
                        shared: thread_shared,
                        pmds: PmdChannels::default(),
                        // The engine's first epoch, as `shared.epochs` start.
                        stored_epoch: 0,
                    }
                    .run()
                })
                .map_err(WorkerError::Spawn)?;
            worker.shards.push(Shard {
                requests,
                control,
                thread: Some(thread),
            });
        }
        Ok(worker)
    }

    /// Offload threads.
    pub fn threads(&self) -> usize {
        self.shards.len()
    }

    fn shard(&self, port: PortId) -> &Shard {
        // `shards` is never empty (spawn makes at least one).
        &self.shards[shard_of(port, self.shards.len())]
    }

    fn call_shard<T>(
        shard: &Shard,
        make: impl FnOnce(Sender<T>) -> Control,
    ) -> Result<T, WorkerError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        shard
            .control
            .send(make(reply))
            .map_err(|_| WorkerError::Stopped)?;
        rx.recv().map_err(|_| WorkerError::Stopped)
    }

    /// Asks every shard (in order) and collects the answers.
    fn call_all<T>(
        &self,
        mut make: impl FnMut(Sender<T>) -> Control,
    ) -> Result<Vec<T>, WorkerError> {
        self.shards
            .iter()
            .map(|s| Self::call_shard(s, &mut make))
            .collect()
    }

    /// Registers a PMD with every shard and gives it its end (the daemon
    /// moves it into the PMD thread).
    pub fn add_pmd(&self, pmd: PmdId) -> Result<PmdOffload, WorkerError> {
        let updates = Arc::new(UpdateQueues::default());
        let seen: Seen = (0..self.shards.len()).map(|_| AtomicU64::new(0)).collect();
        self.call_all(|reply| Control::AddPmd {
            pmd,
            updates: Arc::clone(&updates),
            seen: Arc::clone(&seen),
            reply,
        })?;
        Ok(PmdOffload {
            requests: PmdRequests {
                pmd,
                requests: self.shards.iter().map(|s| s.requests.clone()).collect(),
                shared: Arc::clone(&self.shared),
            },
            updates: PmdUpdates {
                leftover: std::sync::Mutex::new(Vec::new()),
                spare: Vec::new(),
                updates,
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
        self.call_all(|reply| Control::RemovePmd { pmd, reply })
            .map(drop)
    }

    pub fn add_port(
        &self,
        port: PortId,
        device: Arc<dyn FlowDevice>,
        n_rxq: u16,
    ) -> Result<(), WorkerError> {
        Ok(Self::call_shard(self.shard(port), |reply| {
            Control::AddPort {
                port,
                device,
                n_rxq,
                reply,
            }
        })??)
    }

    /// Returns once the port's rules are destroyed and its marks released.
    pub fn remove_port(&self, port: PortId) -> Result<(), WorkerError> {
        Self::call_shard(self.shard(port), |reply| Control::RemovePort {
            port,
            reply,
        })
    }

    /// The port's NIC was reset (all its rules lost).
    pub fn device_reset(&self, port: PortId) -> Result<(), WorkerError> {
        Self::call_shard(self.shard(port), |reply| Control::Reset { port, reply })
    }

    /// Every shard's status, merged.
    pub fn status(&self) -> Result<OffloadStatus, WorkerError> {
        let mut all = self
            .call_all(|reply| Control::Status { reply })?
            .into_iter();
        let Some(mut s) = all.next() else {
            return Err(WorkerError::Stopped);
        };
        for o in all {
            s.merge(o);
        }
        s.ports.sort_by_key(|p| p.port);
        s.offload_queue_full = self.shared.queue_full.load(Ordering::Relaxed);
        Ok(s)
    }

    /// Every shard's [`OffloadEngine::progress`], summed (O(ports)).
    pub fn progress(&self) -> Result<Progress, WorkerError> {
        Ok(self
            .call_all(|reply| Control::Progress { reply })?
            .into_iter()
            .fold(Progress::default(), |a, p| Progress {
                inserted: a.inserted + p.inserted,
                refused: a.refused + p.refused,
            }))
    }

    /// Every shard's megaflows, ordered by port and ufid.
    pub fn dump(&self) -> Result<Vec<FlowOffloadInfo>, WorkerError> {
        let mut v: Vec<FlowOffloadInfo> = self
            .call_all(|reply| Control::Dump { reply })?
            .into_iter()
            .flatten()
            .collect();
        v.sort_by_key(|i| (i.port, i.ufid));
        Ok(v)
    }

    /// For the main thread (it may wait): a request that must not be lost.
    pub fn request(&self, req: OffloadRequest) -> Result<(), WorkerError> {
        self.shard(req.port())
            .requests
            .send(req)
            .map_err(|_| WorkerError::Stopped)
    }

    /// For a revalidation sweep's re-offers: never waits.
    pub fn offer(&self, req: OffloadRequest) -> Offer {
        try_send(&self.shard(req.port()).requests, &self.shared, req)
    }

    /// Requests waiting in the channels.
    pub fn queue_len(&self) -> usize {
        self.shards.iter().map(|s| s.requests.len()).sum()
    }

    /// Stops the threads after the requests already queued.
    pub fn shutdown(mut self) -> Result<(), WorkerError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), WorkerError> {
        let mut result = Ok(());
        for shard in &mut self.shards {
            let Some(thread) = shard.thread.take() else {
                continue;
            };
            // A send error means the thread is already gone; join says how.
            let _ = shard.control.send(Control::Shutdown);
            if thread.join().is_err() {
                result = Err(WorkerError::Stopped);
            }
        }
        result
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
    /// One queue per shard, indexed by [`shard_of`].
    requests: Vec<Sender<OffloadRequest>>,
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
        try_send(self.queue(req.port()), &self.shared, req)
    }

    /// The queue of the shard that owns `port`.
    fn queue(&self, port: PortId) -> &Sender<OffloadRequest> {
        // Never empty: made from the worker's shards.
        &self.requests[shard_of(port, self.requests.len())]
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

/// Shards whose epochs a PMD reads without allocating.
const MAX_SHARDS_ON_STACK: usize = 16;

/// The shards' epochs as read before draining (on the stack for up to
/// [`MAX_SHARDS_ON_STACK`] shards): every update a shard sent before it
/// stored its epoch is applied by the time the drain reports them.
struct EpochsSeen {
    stack: [u64; MAX_SHARDS_ON_STACK],
    many: Vec<u64>,
    len: usize,
}

impl EpochsSeen {
    fn read(epochs: &[AtomicU64]) -> Self {
        let mut e = EpochsSeen {
            stack: [0; MAX_SHARDS_ON_STACK],
            many: Vec::new(),
            len: epochs.len(),
        };
        if epochs.len() <= MAX_SHARDS_ON_STACK {
            for (v, s) in e.stack.iter_mut().zip(epochs) {
                *v = s.load(Ordering::Acquire);
            }
        } else {
            e.many = epochs.iter().map(|s| s.load(Ordering::Acquire)).collect();
        }
        e
    }

    /// Stores them as this PMD's quiescent point.
    fn report(&self, seen: &[AtomicU64]) {
        let epochs = if self.len <= MAX_SHARDS_ON_STACK {
            &self.stack[..self.len]
        } else {
            &self.many[..]
        };
        for (s, epoch) in seen.iter().zip(epochs) {
            // Only this PMD stores it; an unchanged value is not stored
            // again, so the line stays in the worker's cache.
            if s.load(Ordering::Relaxed) != *epoch {
                s.store(*epoch, Ordering::Release);
            }
        }
    }
}

/// A PMD's receiving side: the worker's [`PmdUpdate`]s and the PMD's
/// quiescence report.
pub struct PmdUpdates {
    /// Worker → PMD and back (see [`UpdateQueues`]).
    updates: Arc<UpdateQueues>,
    /// Emptied batches the return queue was busy for (tried again later).
    spare: Vec<Vec<PmdUpdate>>,
    /// What a bounded [`PmdUpdates::apply_at_most`] left, last first.
    leftover: std::sync::Mutex<Vec<PmdUpdate>>,
    shared: Arc<Shared>,
    seen: Seen,
}

impl PmdUpdates {
    /// Call at the top of every poll loop: hands every pending update to
    /// `apply` (in order), then reports the quiescent point. Returns the
    /// number of updates.
    pub fn drain(&self, mut apply: impl FnMut(PmdUpdate)) -> usize {
        // Read the epochs before draining: every update a shard sent
        // before it stored its epoch is applied by the time we report it.
        // (Shards' marks are disjoint, so one channel for all of them
        // keeps each mark's updates in order.)
        let epochs = EpochsSeen::read(&self.shared.epochs);
        let mut n = 0;
        // Updates a bounded call left over come first, in order.
        {
            let mut left = self.leftover.lock().recover();
            n += left.len();
            left.drain(..).rev().for_each(&mut apply);
        }
        while let Some(batch) = self.updates.to_pmd.pop() {
            n += batch.len();
            batch.into_iter().for_each(&mut apply);
        }
        epochs.report(&self.seen);
        n
    }

    /// [`PmdUpdates::apply_to`] that stops after `max` updates, so that a
    /// flood of them (a bundle's worth of deletes in one batch) spreads
    /// over several loop iterations; the quiescent point is reported only
    /// by a call that leaves nothing behind.
    pub fn apply_at_most(&mut self, table: &mut MarkTable, max: usize) -> usize {
        let epochs = EpochsSeen::read(&self.shared.epochs);
        // Never poisoned in practice (only this thread takes it); the lock
        // exists so that `drain(&self)` can share the leftovers.
        let left = self.leftover.get_mut().recover();
        let mut n = 0;
        // Seen empty under the lock: only then may the epochs be reported.
        let mut drained = false;
        loop {
            while n < max {
                let Some(u) = left.pop() else {
                    break;
                };
                table.apply(u);
                n += 1;
            }
            if n >= max {
                break;
            }
            match self.updates.to_pmd.try_pop() {
                Ok(Some(mut batch)) => {
                    // Kept last first, to pop in order. The emptied one
                    // goes back to the worker, which allocated it: freeing
                    // it here would take the worker's malloc arena lock,
                    // which a preempted worker may hold.
                    batch.reverse();
                    let empty = std::mem::replace(left, batch);
                    if empty.capacity() > 0 {
                        self.spare.push(empty);
                    }
                }
                Ok(None) => {
                    drained = true;
                    break;
                }
                Err(Busy) => break,
            }
        }
        if drained && left.is_empty() {
            epochs.report(&self.seen);
        }
        while let Some(v) = self.spare.pop() {
            if let Err(v) = self.updates.returned.try_push(v) {
                self.spare.push(v);
                break;
            }
        }
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
        if let Err(TrySendError::Full(req)) = self.requests.queue(req.port()).try_send(req) {
            self.backlog.push_back(req);
        }
    }

    fn flush_backlog(&mut self) {
        while let Some(req) = self.backlog.pop_front() {
            match self.requests.queue(req.port()).try_send(req) {
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

/// The per-PMD update channels and quiescence reports. Updates are held
/// back until [`UpdateSink::flush`] and then sent as one message per PMD.
#[derive(Default)]
struct PmdChannels {
    senders: HashMap<PmdId, PmdChannel>,
    seen: HashMap<PmdId, Seen>,
    /// PMDs whose end was dropped without `remove_pmd`.
    vanished: Vec<PmdId>,
}

struct PmdChannel {
    tx: Arc<UpdateQueues>,
    held: Vec<PmdUpdate>,
}

impl UpdateSink for PmdChannels {
    fn send(&mut self, pmd: PmdId, update: PmdUpdate) {
        if let Some(c) = self.senders.get_mut(&pmd) {
            c.held.push(update);
        }
    }

    fn flush(&mut self) {
        let mut gone = Vec::new();
        for (pmd, c) in &mut self.senders {
            if c.held.is_empty() {
                continue;
            }
            // Unbounded: never waits. Closed means the PMD's end is gone.
            // The next batch starts with this one's room: one allocation
            // per batch, not one per doubling.
            if c.tx.to_pmd.is_closed() {
                gone.push(*pmd);
                continue;
            }
            // A batch the PMD emptied and gave back, else a new one.
            let next = match c.tx.returned.pop() {
                Some(mut v) => {
                    v.clear();
                    v
                }
                None => Vec::with_capacity(c.held.capacity()),
            };
            c.tx.to_pmd.push(std::mem::replace(&mut c.held, next));
        }
        for pmd in gone {
            self.senders.remove(&pmd);
            self.vanished.push(pmd);
        }
    }
}

struct WorkerThread {
    engine: OffloadEngine,
    config: WorkerConfig,
    /// This thread's shard.
    index: usize,
    requests: Receiver<OffloadRequest>,
    control: Receiver<Control>,
    shared: Arc<Shared>,
    pmds: PmdChannels,
    /// The epoch last stored in `shared.epochs`.
    stored_epoch: u64,
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
            if let Some(seen) = seen.get(self.index) {
                self.engine
                    .pmd_quiescent(*pmd, Epoch(seen.load(Ordering::Acquire)));
            }
        }
    }

    /// Publishes the epoch once the updates of the last call are sent, and
    /// forgets PMDs that vanished.
    fn after_updates(&mut self) {
        self.pmds.flush();
        for pmd in std::mem::take(&mut self.pmds.vanished) {
            self.pmds.seen.remove(&pmd);
            self.engine.remove_pmd(pmd, Instant::now(), &mut NoUpdates);
        }
        // Stored when it changed only (it changes when a mark is
        // unpublished, after that update is sent): an unchanged line stays
        // in the PMDs' caches, which read it at every poll.
        let epoch = self.engine.epoch().0;
        if epoch != self.stored_epoch {
            if let Some(e) = self.shared.epochs.get(self.index) {
                e.store(epoch, Ordering::Release);
            }
            self.stored_epoch = epoch;
        }
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
                if let Some(seen) = seen.get(self.index) {
                    seen.store(self.engine.epoch().0, Ordering::Release);
                }
                self.pmds.senders.insert(
                    pmd,
                    PmdChannel {
                        tx: updates,
                        held: Vec::new(),
                    },
                );
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
            Control::Progress { reply } => {
                let _ = reply.send(self.engine.progress());
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

/// What woke the worker: a value on its stack, moved once; boxing the
/// large request (a megaflow's match is two flow keys) would cost an
/// allocation per request instead.
#[allow(clippy::large_enum_variant)]
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

impl Drop for PmdUpdates {
    /// The worker forgets a PMD whose end is gone.
    fn drop(&mut self) {
        self.updates.to_pmd.close();
    }
}

/// The worker's updates to one PMD, and the emptied batches coming back.
/// [`TryQueue`]s: the PMD never waits for a worker that a busy control
/// core preempted in mid-push.
#[derive(Default)]
pub struct UpdateQueues {
    to_pmd: TryQueue<Vec<PmdUpdate>>,
    returned: TryQueue<Vec<PmdUpdate>>,
}
