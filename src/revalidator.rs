//! The revalidator thread (DESIGN §4): keeps one [`Revalidator`] engine
//! per PMD, fed with the PMD's installs and removals, and re-translates the
//! megaflows a pipeline, MAC-table or port change can affect while the PMDs
//! keep forwarding. PMDs receive only the verdicts (modify, delete) and
//! apply them at the top of their loop; they never translate to revalidate.

use crate::datapath::{BridgeState, FlowEvent, ReturnedEvents};
use crossbeam_channel::{select, Receiver, Sender};
use fallback::ofproto::table::Pipeline;
use fallback::revalidate::{RevalOp, RevalStats, Revalidator, VerdictQueues};
use serde::Serialize;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the revalidator waits after the last queued pipeline version
/// before taking the next (verdicts are sent first; a `Sync` waits at most
/// this much longer).
const PIPELINE_COALESCE: Duration = Duration::from_micros(500);

/// Emptied lists kept for each PMD (event lists coming back to it, verdict
/// batches coming back from it), and the longest kept.
const RETURNED_LISTS: usize = 4;
const RETURNED_LIST_CAPACITY: usize = 4 * fallback::port::BURST;
const RETURNED_VERDICTS_CAPACITY: usize = 4096;

/// Messages to the revalidator thread.
pub enum RevalCommand {
    /// A new pipeline version (its journal says what changed).
    Pipeline(Arc<Pipeline>),
    /// The bridge's sorted port list, and which of them offload.
    Ports(Vec<u32>, Vec<u32>),
    /// Answered once everything sent before it is processed and its
    /// verdicts are on their way to the PMDs.
    Sync(Sender<()>),
    Snapshot(Sender<Vec<(u32, RevalidatorSnapshot)>>),
    Quit,
}

/// What the revalidator reports about one PMD's megaflows (`pmd stats`,
/// under `revalidator`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RevalidatorSnapshot {
    /// Megaflows of the PMD it knows (equals the PMD's count at quiescence).
    pub megaflows: usize,
    #[serde(flatten)]
    pub stats: RevalStats,
    /// The last and the longest change processed (every PMD's megaflows),
    /// in microseconds.
    pub last_pass_us: u64,
    pub max_pass_us: u64,
}

/// A running revalidator thread.
pub struct RevalidatorThread {
    commands: Sender<RevalCommand>,
    thread: Option<JoinHandle<()>>,
}

/// One PMD as the revalidator sees it.
pub struct PmdLink {
    pub pmd: u32,
    /// Verdicts to the PMD (which never waits to take them).
    pub ops: Arc<VerdictQueues>,
    /// The PMD's event lists, emptied, going back to it.
    pub returned: Arc<ReturnedEvents>,
}

impl RevalidatorThread {
    /// Starts the thread. Every PMD in `pmds` reports on `events`.
    pub fn spawn(
        pipeline: Arc<Pipeline>,
        bridge: Arc<BridgeState>,
        pmds: Vec<PmdLink>,
        events: Receiver<FlowEvent>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("revalidator".into())
            .spawn(move || {
                let macs = bridge.mac_snapshot();
                let engines = pmds
                    .iter()
                    .map(|_| {
                        Revalidator::new(
                            Arc::clone(&pipeline),
                            macs.clone(),
                            Vec::new(),
                            Some(Vec::new()),
                        )
                    })
                    .collect();
                Loop {
                    ops: pmds.iter().map(|_| Vec::new()).collect(),
                    pmds,
                    engines,
                    bridge,
                    last_pass: Duration::ZERO,
                    max_pass: Duration::ZERO,
                }
                .run(rx, events)
            })?;
        Ok(RevalidatorThread {
            commands: tx,
            thread: Some(thread),
        })
    }

    pub fn send(&self, cmd: RevalCommand) {
        let _ = self.commands.send(cmd);
    }

    /// Waits (up to `timeout`) until everything sent so far is processed.
    pub fn sync(&self, timeout: Duration) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(RevalCommand::Sync(tx));
        rx.recv_timeout(timeout).is_ok()
    }

    /// Per PMD, in the order the PMDs were given.
    pub fn snapshot(&self, timeout: Duration) -> Option<Vec<(u32, RevalidatorSnapshot)>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(RevalCommand::Snapshot(tx));
        rx.recv_timeout(timeout).ok()
    }

    pub fn stop(&mut self) {
        self.send(RevalCommand::Quit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RevalidatorThread {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Loop {
    pmds: Vec<PmdLink>,
    engines: Vec<Revalidator>,
    /// Verdicts per PMD not sent yet.
    ops: Vec<Vec<RevalOp>>,
    bridge: Arc<BridgeState>,
    last_pass: Duration,
    max_pass: Duration,
}

impl Loop {
    fn run(mut self, commands: Receiver<RevalCommand>, events: Receiver<FlowEvent>) {
        let macs_changed = self.bridge.mac_changes();
        let mut caught_up = false;
        loop {
            // Caught up with a stream of versions: wait a moment before
            // taking the next ones, so that they queue up without each
            // waking this thread (a wake-up is a system call on the
            // publishing thread and two context switches on its core, per
            // flow mod under `ovs-ofctl add-flows`); then they go back to back.
            if std::mem::take(&mut caught_up) {
                std::thread::sleep(PIPELINE_COALESCE);
            }
            select! {
                recv(commands) -> cmd => match cmd {
                    Ok(RevalCommand::Pipeline(p)) => {
                        self.pass(|e, out| e.set_pipeline(Arc::clone(&p), out));
                        caught_up = commands.is_empty();
                    }
                    Ok(RevalCommand::Ports(ports, offload)) => {
                        self.pass(|e, out| e.set_ports(ports.clone(), Some(offload.clone()), out))
                    }
                    Ok(RevalCommand::Sync(reply)) => {
                        // Installs reported before the sync are part of it.
                        self.drain_events(&events);
                        self.flush();
                        let _ = reply.send(());
                    }
                    Ok(RevalCommand::Snapshot(reply)) => {
                        let _ = reply.send(self.snapshot());
                    }
                    Ok(RevalCommand::Quit) | Err(_) => break,
                },
                recv(events) -> ev => match ev {
                    Ok(ev) => self.event(ev),
                    Err(_) => break,
                },
                recv(macs_changed) -> _ => {
                    let macs = self.bridge.mac_snapshot();
                    self.pass(|e, out| e.set_macs(macs.clone(), out));
                }
            }
            self.flush();
        }
    }

    fn engine_index(&self, pmd: u32) -> Option<usize> {
        self.pmds.iter().position(|p| p.pmd == pmd)
    }

    fn event(&mut self, ev: FlowEvent) {
        match ev {
            FlowEvent::Installed {
                pmd,
                handle,
                record,
            } => {
                if let Some(i) = self.engine_index(pmd) {
                    self.engines[i].installed(handle, record, &mut self.ops[i]);
                }
            }
            FlowEvent::Removed { pmd, handle, ufid } => {
                if let Some(i) = self.engine_index(pmd) {
                    self.engines[i].removed(handle, ufid);
                }
            }
            // Freed here, off the PMD.
            FlowEvent::Retired(tables) => drop(tables),
            FlowEvent::OldPipeline(pipeline) => drop(pipeline),
            FlowEvent::Batch(pmd, mut list) => {
                for ev in list.drain(..) {
                    self.event(ev);
                }
                // A few burst-sized lists keep the PMD supplied. More (the
                // PMD's sends while this thread was behind) or a long one
                // (a mass removal) would be memory held for good: freed.
                if let Some(i) = self.engine_index(pmd) {
                    let back = &self.pmds[i].returned;
                    if back.held() < RETURNED_LISTS && list.capacity() <= RETURNED_LIST_CAPACITY {
                        back.push(list);
                    }
                }
            }
        }
    }

    fn drain_events(&mut self, events: &Receiver<FlowEvent>) {
        while let Ok(ev) = events.try_recv() {
            self.event(ev);
        }
    }

    /// One change through every PMD's engine, timed.
    fn pass(&mut self, mut f: impl FnMut(&mut Revalidator, &mut Vec<RevalOp>)) {
        let t = Instant::now();
        for (e, out) in self.engines.iter_mut().zip(self.ops.iter_mut()) {
            f(e, out);
        }
        self.last_pass = t.elapsed();
        self.max_pass = self.max_pass.max(self.last_pass);
    }

    fn flush(&mut self) {
        for (link, out) in self.pmds.iter().zip(self.ops.iter_mut()) {
            if !out.is_empty() {
                // A batch the PMD gave back, else a new one on first push.
                let next = link.ops.returned.pop().unwrap_or_default();
                link.ops.to_pmd.push(std::mem::replace(out, next));
                // The PMD gives every batch back (freeing here is this
                // thread's job); beyond a few, or one that held a whole
                // pass's verdicts, they would be memory kept for good.
                while link.ops.returned.held() > RETURNED_LISTS {
                    drop(link.ops.returned.pop());
                }
                if out.capacity() > RETURNED_VERDICTS_CAPACITY {
                    *out = Vec::new();
                }
            }
        }
    }

    fn snapshot(&self) -> Vec<(u32, RevalidatorSnapshot)> {
        self.pmds
            .iter()
            .zip(self.engines.iter())
            .map(|(link, e)| {
                (
                    link.pmd,
                    RevalidatorSnapshot {
                        megaflows: e.len(),
                        stats: e.stats,
                        last_pass_us: self.last_pass.as_micros() as u64,
                        max_pass_us: self.max_pass.as_micros() as u64,
                    },
                )
            })
            .collect()
    }
}
