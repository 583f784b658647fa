//! PMD threads: each owns a [`PmdCore`] and its rx queues, applies control
//! messages and offload updates at the top of its poll loop (its quiescent
//! point), and polls. Nothing here takes a lock per packet.

use crate::datapath::{MegaflowInfo, OffloadClient, PmdCore, PmdCounters};
use crate::dpdk::tsc::{rdtsc, tsc_per_us};
use crossbeam_channel::{Receiver, Sender};
use fallback::cache::FlowHandle;
use fallback::megaflow::{Megaflow, Ufid};
use fallback::ofproto::table::{Pipeline, RuleId};
use fallback::port::{BufferSource, PacketBuf, Port, PortStats};
use fallback::sync::Recover;
use hashbrown::HashMap;
use offload::worker::{Offer, PmdRequests, PmdUpdates};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a PMD expires idle megaflows and re-offers refused ones.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Cache slots one loop iteration's slice of the sweep walks (a few tens
/// of microseconds; 100,000 megaflows take 25 iterations).
const SWEEP_SLICE: usize = 4096;
/// How often a PMD refreshes MAC-learning entries from its megaflows'
/// counts: far inside the shortest aging time (15 s), and cheap enough to
/// walk every megaflow on the PMD.
pub const MAC_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Empty polls before an idle PMD starts sleeping between polls (the
/// testbed shares two cores between NIC threads, traffic and PMDs).
const IDLE_SPINS: u32 = 256;
const IDLE_SLEEP_MAX: Duration = Duration::from_micros(500);

/// Offload requests through the worker's queue.
pub struct WorkerClient(pub PmdRequests);

impl OffloadClient for WorkerClient {
    fn put(&self, _pmd: u32, port: u32, mf: &Megaflow, handle: FlowHandle) -> bool {
        self.0.put(port, mf, handle) == Offer::Queued
    }
    fn delete(&self, _pmd: u32, port: u32, ufid: Ufid) -> bool {
        // A stopped worker removes nothing more: nothing to retry.
        self.0.delete(port, ufid) != Offer::QueueFull
    }
}

/// What a PMD reports about itself.
#[derive(Clone, Debug, Serialize)]
pub struct PmdSnapshot {
    pub pmd: u32,
    pub core: Option<usize>,
    #[serde(flatten)]
    pub counters: PmdCounters,
    pub megaflows: usize,
    pub marks_published: usize,
    /// TSC cycles spent on polls that received packets.
    pub busy_cycles: u64,
    pub cycles_per_packet: f64,
    /// The longest poll-loop iteration since start or `--clear` (control
    /// messages such as a new pipeline and its revalidation included, idle
    /// naps excluded), in TSC cycles and in microseconds.
    pub max_iteration_cycles: u64,
    pub max_iteration_us: f64,
    /// Where that iteration spent most of its time: control (commands such
    /// as a new pipeline), mark_updates, revalidation_verdicts, poll
    /// (packets, upcalls included) or sweep.
    pub max_iteration_part: &'static str,
    pub subtables: usize,
    pub subtables_per_dpcls_hit: f64,
    /// TSC cycles per upcall on this PMD (translation, megaflow install,
    /// offload offer): count, mean, p50, p99, max and the histogram.
    pub upcall_cycles: crate::cycle_histogram::CycleSummary,
    /// The revalidator thread's work on this PMD's megaflows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revalidator: Option<crate::revalidator::RevalidatorSnapshot>,
    #[serde(skip)]
    pub ports: Vec<(u32, PortStats)>,
}

/// Messages to a PMD thread.
pub enum PmdCommand<B> {
    AddPort {
        ofport: u32,
        port: Arc<dyn Port<Buf = B>>,
        offload: bool,
        /// The port's packet-out queue.
        outq: Option<Receiver<crate::datapath::OutFrame<B>>>,
    },
    DelPort {
        ofport: u32,
        reply: Sender<Option<PortStats>>,
    },
    SetRxqs(Vec<(u32, u16)>),
    /// Where multi-output copies take their buffers.
    SetBufferSource(Box<dyn BufferSource<B>>),
    Snapshot(Sender<PmdSnapshot>),
    Megaflows(Sender<Vec<MegaflowInfo>>),
    RuleStats(Sender<HashMap<RuleId, (u64, u64)>>),
    ClearCounters,
    /// Removes every megaflow (their NIC rules go too).
    FlushMegaflows(Sender<()>),
    /// Replies once every revalidation verdict received so far is applied
    /// (`Switch::settle`: a change is in the datapath when it returns).
    /// The verdicts are applied at the loop's usual pace, a share per
    /// iteration: a waiting CLI never makes an iteration long.
    ApplyVerdicts(Sender<()>),
    /// Stops the thread after flushing its megaflows.
    Quit,
}

/// Settings every PMD shares.
#[derive(Clone, Copy, Debug)]
pub struct PmdSettings {
    pub max_idle_ms: u64,
    pub upcall_budget: usize,
    pub emc_insert_inv_prob: u32,
}

/// The pipeline version a PMD is to use, handed over without waking it:
/// the PMD adopts it at its next quiescent point (the top of its loop, and
/// before any command, so that commands sent after a publication see it).
/// A channel message woke a napping PMD once per flow mod, which on a
/// two-core machine cost a controller's one-mod-per-barrier load a fifth
/// of its time; a napping PMD polls nothing, so it cannot use an old
/// version meanwhile.
#[derive(Default)]
struct PublishedPipeline {
    /// Bumped (under the lock) by each publication.
    generation: AtomicU64,
    slot: Mutex<Option<Arc<Pipeline>>>,
}

impl PublishedPipeline {
    fn publish(&self, pipeline: Arc<Pipeline>) {
        let unadopted = {
            let mut slot = self.slot.lock().recover();
            self.generation.fetch_add(1, Ordering::Release);
            slot.replace(pipeline)
        };
        // Freed outside the lock (a version the PMD skipped).
        drop(unadopted);
    }

    /// The version published since generation `seen`, if any.
    #[inline]
    fn take_newer(&self, seen: &mut u64) -> Option<Arc<Pipeline>> {
        if self.generation.load(Ordering::Acquire) == *seen {
            return None;
        }
        let mut slot = self.slot.lock().recover();
        *seen = self.generation.load(Ordering::Relaxed);
        slot.take()
    }
}

/// An idle PMD's nap: it parks its thread (one futex wait) rather than
/// blocking in the command channel's receive, whose spin-then-yield backoff
/// made an idle PMD call `sched_yield` about 11,000 times a second, on a
/// machine whose other core the control side, the client and the
/// revalidator share. Senders of commands unpark it.
#[derive(Default)]
struct Nap {
    napping: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

impl Nap {
    fn wake(&self) {
        // Pairs with the fence in `PmdLoop::nap`: either the PMD's check of
        // the channel sees the command, or this sees it napping.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.napping.load(Ordering::SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
}

/// The sending side of a PMD's command channel: sends and wakes a napping
/// PMD.
pub struct PmdCommands<B> {
    tx: Sender<PmdCommand<B>>,
    nap: Arc<Nap>,
}

impl<B> Clone for PmdCommands<B> {
    fn clone(&self) -> Self {
        PmdCommands {
            tx: self.tx.clone(),
            nap: Arc::clone(&self.nap),
        }
    }
}

impl<B> PmdCommands<B> {
    /// Queues a command; fails only when the PMD has stopped.
    pub fn send(
        &self,
        cmd: PmdCommand<B>,
    ) -> Result<(), crossbeam_channel::SendError<PmdCommand<B>>> {
        let sent = self.tx.send(cmd);
        self.nap.wake();
        sent
    }
}

/// A running PMD thread.
pub struct PmdThread<B> {
    pub id: u32,
    pub core: Option<usize>,
    pub commands: PmdCommands<B>,
    pub rxqs: Vec<(u32, u16)>,
    published: Arc<PublishedPipeline>,
    thread: Option<JoinHandle<()>>,
}

impl<B> PmdThread<B> {
    /// Hands the PMD a new pipeline version (see [`PublishedPipeline`]):
    /// it is used for every upcall the PMD makes from its next poll on.
    pub fn publish(&self, pipeline: Arc<Pipeline>) {
        self.published.publish(pipeline);
    }

    /// Asks the thread to stop and waits for it.
    pub fn stop(&mut self) {
        let _ = self.commands.send(PmdCommand::Quit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<B> Drop for PmdThread<B> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a PMD thread around `core` (pinned to `cpu` where given).
pub fn spawn<B: PacketBuf + Clone + Send + 'static>(
    core: PmdCore<B>,
    cpu: Option<usize>,
    updates: Option<PmdUpdates>,
    settings: PmdSettings,
) -> std::io::Result<PmdThread<B>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let id = core.id;
    let published = Arc::new(PublishedPipeline::default());
    let seen = Arc::clone(&published);
    let nap = Arc::new(Nap::default());
    let own_nap = Arc::clone(&nap);
    let thread = std::thread::Builder::new()
        .name(format!("pmd{id}"))
        .spawn(move || {
            if let Some(cpu) = cpu {
                pin_to_cpu(cpu);
            }
            let _ = own_nap.thread.set(std::thread::current());
            PmdLoop {
                core,
                cpu,
                commands: rx,
                nap: own_nap,
                published: seen,
                seen_generation: 0,
                updates,
                rxqs: Vec::new(),
                settings,
                busy_cycles: 0,
                busy_packets: 0,
                max_iteration: 0,
                max_iteration_part: "",
                settle_waiters: Vec::new(),
            }
            .run()
        })?;
    Ok(PmdThread {
        id,
        core: cpu,
        commands: PmdCommands { tx, nap },
        rxqs: Vec::new(),
        published,
        thread: Some(thread),
    })
}

/// Moves the calling thread (and so every thread it starts from now on:
/// the offload workers, the revalidator, the emulated NICs, the control
/// side) off the CPUs PMDs are pinned to, as OVS keeps its non-PMD threads
/// on other cores: a PMD then has its core to itself. Best effort; nothing
/// changes when no PMD is pinned or no other CPU is usable.
pub fn keep_off_pmd_cores(pmd_cores: &[Option<usize>]) {
    let Ok(mut set) = rustix::thread::sched_getaffinity(None) else {
        return;
    };
    let mut changed = false;
    for cpu in pmd_cores.iter().flatten() {
        if *cpu < rustix::thread::CpuSet::MAX_CPU && set.is_set(*cpu) {
            set.unset(*cpu);
            changed = true;
        }
    }
    if changed && set.count() > 0 {
        let _ = rustix::thread::sched_setaffinity(None, &set);
        // Threads started before (a logger, the control socket) too: one
        // left free to run on a PMD core takes it whenever the others are
        // busy.
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for t in tasks.flatten() {
                let tid = t.file_name().to_str().and_then(|n| n.parse::<i32>().ok());
                if let Some(pid) = tid.and_then(rustix::thread::Pid::from_raw) {
                    let _ = rustix::thread::sched_setaffinity(Some(pid), &set);
                }
            }
        }
    }
}

/// Pins the calling thread to one CPU (sched_setaffinity through rustix's
/// safe wrapper: std has no affinity call and unchecked code stays in src/dpdk/).
/// Best effort: a CPU the process may not use leaves the thread unpinned
/// (the daemon checks `pmd_cores` against the usable CPUs beforehand).
fn pin_to_cpu(cpu: usize) {
    if cpu < rustix::thread::CpuSet::MAX_CPU {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
}

struct PmdLoop<B> {
    core: PmdCore<B>,
    cpu: Option<usize>,
    commands: Receiver<PmdCommand<B>>,
    nap: Arc<Nap>,
    published: Arc<PublishedPipeline>,
    seen_generation: u64,
    updates: Option<PmdUpdates>,
    rxqs: Vec<(u32, u16)>,
    settings: PmdSettings,
    busy_cycles: u64,
    busy_packets: u64,
    /// Cycles of the longest loop iteration (see [`PmdSnapshot`]).
    max_iteration: u64,
    max_iteration_part: &'static str,
    /// `ApplyVerdicts` replies owed once the verdicts are applied.
    settle_waiters: Vec<Sender<()>>,
}

/// What [`PmdLoop::control`] did.
enum LoopControl {
    Quit,
    /// Adopted a pipeline or ran a command.
    Worked,
    Idle,
}

impl<B: PacketBuf + Clone + Send + 'static> PmdLoop<B> {
    fn run(mut self) {
        self.core.set_upcall_budget(self.settings.upcall_budget);
        // The bridge clock: MAC entries are learned, refreshed and aged on it.
        let start = self.core.bridge().epoch();
        // The bridge clock is read from the TSC, re-synchronised with it at
        // every sweep: two clock reads per iteration cost 1.5 % of the PMD
        // at one flow. Never steps back.
        let ticks_per_ms = (tsc_per_us() * 1000.0).max(1.0);
        let ms_per_tick = 1.0 / ticks_per_ms;
        let sweep_ticks = (ticks_per_ms * SWEEP_INTERVAL.as_secs_f64() * 1000.0) as u64;
        let mut clock = (start.elapsed().as_millis() as u64, rdtsc());
        let mut now_ms = clock.0;
        let mut last_sweep = clock.1;
        let mut last_mac_refresh = Instant::now();
        let (mut sweeping, mut refreshing) = (false, false);
        let mut idle_polls = 0u32;
        let mut sleep = Duration::from_micros(10);
        // The clock is read twice per iteration (around the poll), and
        // around the other parts only when they had work: a TSC read costs
        // about 40 cycles here, and six per iteration were 6 % of a
        // forwarding PMD's cycles. An iteration starts at the previous
        // one's last read; a part without work counts into the next part.
        let mut last_read = rdtsc();
        loop {
            let iteration = last_read;
            // Cycles spent waiting for work (not counted as the loop's own).
            let mut napped = 0;
            let t_marks = match self.control() {
                LoopControl::Quit => break,
                LoopControl::Worked => rdtsc(),
                LoopControl::Idle => iteration,
            };
            let updated = match &mut self.updates {
                Some(u) => self.core.apply_offload_updates(u) > 0,
                None => false,
            };
            let t_house = if updated { rdtsc() } else { t_marks };
            self.core.housekeeping();
            if !self.settle_waiters.is_empty() && self.core.verdicts_applied() {
                for w in self.settle_waiters.drain(..) {
                    let _ = w.send(());
                }
            }
            let t0 = rdtsc();
            now_ms = now_ms.max(clock.0 + (t0.wrapping_sub(clock.1) as f64 * ms_per_tick) as u64);
            let mut got = 0;
            for &(ofport, q) in &self.rxqs {
                got += self.core.poll_ofport(ofport, q, now_ms);
            }
            let t_polled = rdtsc();
            if got > 0 {
                self.busy_cycles += t_polled.wrapping_sub(t0);
                self.busy_packets += got as u64;
                idle_polls = 0;
                sleep = Duration::from_micros(10);
            } else {
                idle_polls = idle_polls.saturating_add(1);
                // Not while a settle waits: verdicts are applied per iteration.
                if idle_polls > IDLE_SPINS && self.settle_waiters.is_empty() {
                    // Wake on a control message or after a short nap.
                    let nap = rdtsc();
                    let woke = self.nap(sleep);
                    napped = rdtsc().wrapping_sub(nap);
                    if let Ok(cmd) = woke {
                        self.adopt_published();
                        if !self.command(cmd) {
                            break;
                        }
                    }
                    sleep = (sleep * 2).min(IDLE_SLEEP_MAX);
                } else {
                    std::hint::spin_loop();
                }
            }
            // The sweep (expiry, re-offers, MAC refresh) walks the
            // megaflows a slice per iteration.
            if !sweeping && t_polled.wrapping_sub(last_sweep) >= sweep_ticks {
                clock = (start.elapsed().as_millis() as u64, rdtsc());
                last_sweep = clock.1;
                sweeping = true;
                refreshing = last_mac_refresh.elapsed() >= MAC_REFRESH_INTERVAL;
                if refreshing {
                    last_mac_refresh = Instant::now();
                }
            }
            let swept = sweeping;
            if sweeping
                && self
                    .core
                    .sweep_slice(now_ms, self.settings.max_idle_ms, refreshing, SWEEP_SLICE)
            {
                sweeping = false;
            }
            let end = if swept || napped > 0 {
                rdtsc()
            } else {
                t_polled
            };
            last_read = end;
            let took = end.wrapping_sub(iteration).saturating_sub(napped);
            if took > self.max_iteration {
                self.max_iteration = took;
                // Which part of the loop the longest iteration spent most in.
                let parts = [
                    ("control", t_marks.wrapping_sub(iteration)),
                    ("mark_updates", t_house.wrapping_sub(t_marks)),
                    ("revalidation_verdicts", t0.wrapping_sub(t_house)),
                    ("poll", t_polled.wrapping_sub(t0)),
                    ("sweep", end.wrapping_sub(t_polled).saturating_sub(napped)),
                ];
                self.max_iteration_part = parts.iter().max_by_key(|p| p.1).map_or("", |p| p.0);
            }
        }
        // Shutdown: every megaflow goes, and with it every NIC rule.
        self.core.flush_megaflows();
        self.core.housekeeping();
        self.core.retry_pending_deletes(usize::MAX);
    }

    /// Applies a newer published pipeline and pending control messages.
    fn control(&mut self) -> LoopControl {
        let mut worked = self.adopt_published();
        while let Ok(cmd) = self.commands.try_recv() {
            worked = true;
            if !self.command(cmd) {
                return LoopControl::Quit;
            }
        }
        if worked {
            LoopControl::Worked
        } else {
            LoopControl::Idle
        }
    }

    /// Switches to the newest published pipeline, if there is a newer one
    /// (true when it did).
    #[inline]
    fn adopt_published(&mut self) -> bool {
        match self.published.take_newer(&mut self.seen_generation) {
            Some(p) => {
                self.core.set_pipeline(p);
                true
            }
            None => false,
        }
    }

    /// Sleeps up to `max` unless a command is (or arrives) queued; returns
    /// the command if one woke it.
    fn nap(&self, max: Duration) -> Result<PmdCommand<B>, crossbeam_channel::TryRecvError> {
        self.nap.napping.store(true, Ordering::SeqCst);
        // Pairs with the fence in `Nap::wake` (see there).
        std::sync::atomic::fence(Ordering::SeqCst);
        let cmd = match self.commands.try_recv() {
            Ok(cmd) => Ok(cmd),
            Err(_) => {
                std::thread::park_timeout(max);
                self.commands.try_recv()
            }
        };
        self.nap.napping.store(false, Ordering::SeqCst);
        cmd
    }

    fn command(&mut self, cmd: PmdCommand<B>) -> bool {
        match cmd {
            PmdCommand::AddPort {
                ofport,
                port,
                offload,
                outq,
            } => self.core.add_port_with_queue(ofport, port, offload, outq),
            PmdCommand::DelPort { ofport, reply } => {
                self.rxqs.retain(|(p, _)| *p != ofport);
                let _ = reply.send(self.core.del_port(ofport));
            }
            PmdCommand::SetRxqs(rxqs) => self.rxqs = rxqs,
            PmdCommand::SetBufferSource(s) => self.core.set_buffer_source(s),
            PmdCommand::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            PmdCommand::Megaflows(reply) => {
                let _ = reply.send(self.core.megaflows());
            }
            PmdCommand::RuleStats(reply) => {
                let _ = reply.send(self.core.rule_stats());
            }
            PmdCommand::ClearCounters => {
                self.core.clear_counters();
                self.busy_cycles = 0;
                self.busy_packets = 0;
                self.max_iteration = 0;
                self.max_iteration_part = "";
            }
            PmdCommand::FlushMegaflows(reply) => {
                self.core.flush_megaflows();
                let _ = reply.send(());
            }
            PmdCommand::ApplyVerdicts(reply) => self.settle_waiters.push(reply),
            PmdCommand::Quit => return false,
        }
        true
    }

    fn snapshot(&self) -> PmdSnapshot {
        let c = self.core.counters;
        let (subtables, per_hit) = self.core.dpcls_figures();
        PmdSnapshot {
            pmd: self.core.id,
            core: self.cpu,
            counters: c,
            megaflows: self.core.megaflow_count(),
            marks_published: self.core.marks().len(),
            busy_cycles: self.busy_cycles,
            cycles_per_packet: if self.busy_packets == 0 {
                0.0
            } else {
                self.busy_cycles as f64 / self.busy_packets as f64
            },
            max_iteration_cycles: self.max_iteration,
            max_iteration_us: self.max_iteration as f64 / tsc_per_us(),
            max_iteration_part: self.max_iteration_part,
            subtables,
            subtables_per_dpcls_hit: per_hit,
            upcall_cycles: self.core.upcall_cycles().summary(tsc_per_us()),
            revalidator: None,
            ports: self.core.port_stats(),
        }
    }
}
