//! The switch: ports, PMD threads, the offload worker and the OpenFlow
//! pipeline, with the operations the daemon's control commands and the
//! demo need. Generic over the packet buffer (testbed `HeapPacket`s, DPDK
//! mbufs).

use crate::datapath::{
    BridgeState, MegaflowInfo, NoOffload, OffloadClient, OutFrame, PmdCore, PACKET_OUT_QUEUE,
};
use crate::pmd::{self, PmdCommand, PmdSettings, PmdSnapshot, PmdThread, WorkerClient};
use crate::revalidator::{PmdLink, RevalCommand, RevalidatorSnapshot, RevalidatorThread};
use fallback::actions::DpAction;
use fallback::ofproto::table::{Added, Pipeline, RuleId};
use fallback::ofproto::{Match, OfAction, Rule};
use fallback::port::{BufferSource, PacketBuf, Port, PortStats, TxDropReason};
use fallback::sync::Recover;
use hashbrown::HashMap;
use offload::device::FlowDevice;
use offload::marks::PmdId;
use offload::worker::{EngineConfig, FlowOffloadInfo, OffloadStatus, OffloadWorker, WorkerConfig};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// How long a control request waits for a PMD's answer.
const PMD_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("a port named {0:?} exists already; pick another name or `port del` it first")]
    DuplicatePort(String),
    #[error("OpenFlow port {0} is taken; leave the number out to get a free one")]
    DuplicateOfport(u32),
    #[error("no port named {0:?} (see `flowmark port list`)")]
    NoSuchPort(String),
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("offload worker: {0}")]
    Offload(#[from] offload::worker::WorkerError),
    #[error("PMD {0} did not answer within 5 s; it may be stuck (see the log)")]
    PmdTimeout(u32),
    #[error("at least one PMD thread is needed (pmd_cores is empty)")]
    NoPmds,
    #[error("the packet-out queue of port {0:?} is full ({1} frames): wait for it to drain (a barrier) and send again")]
    PacketOutQueueFull(String, usize),
}

/// Why a flow add was refused (OpenFlow's OFPFMFC_OVERLAP / TABLE_FULL).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddRefused {
    #[error("an overlapping flow of the same priority exists (OFPFF_CHECK_OVERLAP was set)")]
    Overlap,
    #[error("the switch holds at most {0} flows; delete some first")]
    TableFull(usize),
}

/// The checks of an OpenFlow flow add against `pipeline`, without cloning
/// or dumping it: a rule with the same table, priority and match replaces
/// (and never overlaps or overfills); otherwise, with `check_overlap`, an
/// equal-priority rule whose match overlaps refuses it, and a full switch
/// refuses it.
pub fn check_add(
    pipeline: &Pipeline,
    rule: &Rule,
    check_overlap: bool,
    max_flows: usize,
) -> Result<Option<RuleId>, AddRefused> {
    let m = &rule.r#match;
    let masked = Match {
        value: m.value.masked(&m.mask),
        mask: m.mask,
    };
    if let Some(table) = pipeline.classifier(rule.table) {
        // The replacement check is one classifier probe; its answer is the
        // add's (`Pipeline::add_replacing`).
        if let Some(same) = table.find_exact(&masked, rule.priority) {
            return Ok(Some(same.id));
        }
        if check_overlap
            && table
                .iter()
                .filter(|e| e.priority() == rule.priority)
                .any(|e| {
                    let both = e.mask().masked(&m.mask);
                    e.match_value().masked(&both) == masked.value.masked(&both)
                })
        {
            return Err(AddRefused::Overlap);
        }
    }
    if pipeline.len() >= max_flows {
        return Err(AddRefused::TableFull(max_flows));
    }
    Ok(None)
}

/// The switch's settings (the daemon's config file sets them).
#[derive(Clone, Debug)]
pub struct SwitchConfig {
    /// One PMD per entry; `Some(cpu)` pins it.
    pub pmd_cores: Vec<Option<usize>>,
    /// Offer megaflows to the NICs.
    pub offload: bool,
    pub max_marks: u32,
    pub max_idle_ms: u64,
    /// MAC-learning aging time.
    pub mac_aging_ms: u64,
    pub upcall_budget: usize,
    pub emc_insert_inv_prob: u32,
    pub offload_queue: usize,
    /// Offload worker threads (megaflows sharded by ingress port).
    pub offload_threads: usize,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            pmd_cores: vec![None],
            offload: true,
            max_marks: offload::device::Capabilities::MAX_MARK,
            max_idle_ms: 10_000,
            mac_aging_ms: fallback::ofproto::mac::DEFAULT_AGING_MS,
            upcall_budget: crate::datapath::DEFAULT_UPCALL_BUDGET,
            emc_insert_inv_prob: fallback::emc::DEFAULT_INSERT_INV_PROB,
            offload_queue: 65_536,
            offload_threads: 1,
        }
    }
}

/// A port of the switch.
pub struct SwitchPort<B> {
    pub name: String,
    pub ofport: u32,
    pub kind: String,
    pub port: Arc<dyn Port<Buf = B>>,
    pub flow_device: Option<Arc<dyn FlowDevice>>,
    /// Frames the control side sends on the port (OpenFlow PACKET_OUT);
    /// the PMD polling the port's rx queue 0 transmits them.
    packet_outs: crossbeam_channel::Sender<OutFrame<B>>,
}

/// What a packet-out did (DESIGN §4: its frames reach the ports through
/// their packet-out queues and are counted there as transmits).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PacketOutReport {
    /// Frames queued, per OpenFlow port, in order.
    pub outputs: Vec<u32>,
    /// Copies sent to the controller (PACKET_INs).
    pub punts: usize,
    /// Why nothing was sent, when nothing was.
    pub drop: Option<fallback::ofproto::xlate::XlateDrop>,
}

/// `port list` row.
#[derive(Clone, Debug, Serialize)]
pub struct PortInfo {
    pub name: String,
    pub ofport: u32,
    #[serde(rename = "type")]
    pub kind: String,
    pub rxqs: u16,
    pub flow_device: bool,
    /// OpenFlow config bits set by PORT_MOD (`crate::datapath::port_config`;
    /// shown only when set).
    #[serde(skip_serializing_if = "is_zero")]
    pub config: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// `pmd rxqs` row.
#[derive(Clone, Debug, Serialize)]
pub struct RxqInfo {
    pub pmd: u32,
    pub core: Option<usize>,
    pub port: String,
    pub queue: u16,
}

/// Per-port accounting summed over PMDs (DESIGN §6).
#[derive(Clone, Debug, Serialize)]
pub struct NamedPortStats {
    pub name: String,
    #[serde(flatten)]
    pub stats: PortStats,
}

pub struct Switch<B> {
    config: SwitchConfig,
    pipeline: Pipeline,
    bridge: Arc<BridgeState>,
    ports: Vec<SwitchPort<B>>,
    pmds: Vec<PmdThread<B>>,
    worker: Option<OffloadWorker>,
    /// Packets punted by `controller` actions, from every PMD.
    punts: crossbeam_channel::Receiver<crate::datapath::Punt>,
    /// Where a packet-out's `controller` actions punt.
    punt_tx: crossbeam_channel::Sender<crate::datapath::Punt>,
    revalidator: RevalidatorThread,
}

/// Punts waiting for the controller side before PMDs start dropping them.
const PUNT_QUEUE: usize = 1024;

impl<B: PacketBuf + Clone + Send + 'static> Switch<B> {
    /// Starts the offload worker and the PMD threads (no ports yet).
    pub fn start(config: SwitchConfig) -> Result<Self, SwitchError> {
        if config.pmd_cores.is_empty() {
            return Err(SwitchError::NoPmds);
        }
        // Calibrated here, once, so that no PMD waits for it in a snapshot.
        crate::dpdk::tsc::tsc_per_us();
        pmd::keep_off_pmd_cores(&config.pmd_cores);
        let pipeline = Pipeline::new();
        let bridge = Arc::new(BridgeState::new(config.mac_aging_ms));
        let worker = if config.offload {
            let mut wc = WorkerConfig {
                queue_capacity: config.offload_queue,
                threads: config.offload_threads,
                ..WorkerConfig::default()
            };
            wc.engine = EngineConfig {
                max_marks: config.max_marks,
                ..EngineConfig::default()
            };
            Some(OffloadWorker::spawn(wc)?)
        } else {
            None
        };
        let settings = PmdSettings {
            max_idle_ms: config.max_idle_ms,
            upcall_budget: config.upcall_budget,
            emc_insert_inv_prob: config.emc_insert_inv_prob,
        };
        let (punt_tx, punts) = crossbeam_channel::bounded(PUNT_QUEUE);
        let (flow_events, events) = crossbeam_channel::unbounded();
        let mut links = Vec::new();
        let mut pmds = Vec::new();
        for (i, cpu) in config.pmd_cores.iter().enumerate() {
            let id = i as u32;
            let (client, updates): (Box<dyn OffloadClient>, _) = match &worker {
                Some(w) => {
                    let (requests, updates) = w.add_pmd(PmdId(id))?.into_parts();
                    (Box::new(WorkerClient(requests)), Some(updates))
                }
                None => (Box::new(NoOffload), None),
            };
            let mut core = PmdCore::new(
                id,
                Arc::new(pipeline.clone()),
                Arc::clone(&bridge),
                client,
                settings.emc_insert_inv_prob,
            );
            core.set_punt_channel(punt_tx.clone());
            let ops = Arc::new(fallback::revalidate::VerdictQueues::default());
            let returned = Arc::new(crate::datapath::ReturnedEvents::default());
            core.set_revalidator(flow_events.clone(), Arc::clone(&ops), Arc::clone(&returned));
            links.push(PmdLink {
                pmd: id,
                ops,
                returned,
            });
            pmds.push(pmd::spawn(core, *cpu, updates, settings)?);
        }
        let revalidator = RevalidatorThread::spawn(
            Arc::new(pipeline.clone()),
            Arc::clone(&bridge),
            links,
            events,
        )?;
        Ok(Switch {
            config,
            pipeline,
            bridge,
            ports: Vec::new(),
            pmds,
            worker,
            punts,
            punt_tx,
            revalidator,
        })
    }

    /// Packets punted to the controller (one consumer: the OpenFlow side).
    pub fn punts(&self) -> crossbeam_channel::Receiver<crate::datapath::Punt> {
        self.punts.clone()
    }

    pub fn config(&self) -> &SwitchConfig {
        &self.config
    }

    pub fn ports(&self) -> &[SwitchPort<B>] {
        &self.ports
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub fn port_by_name(&self, name: &str) -> Option<&SwitchPort<B>> {
        self.ports.iter().find(|p| p.name == name)
    }

    /// Lowest free OpenFlow port number.
    pub fn free_ofport(&self) -> u32 {
        (1..)
            .find(|n| self.ports.iter().all(|p| p.ofport != *n))
            .unwrap_or(1)
    }

    /// Adds a port; its rx queues are spread over the PMDs.
    pub fn add_port(
        &mut self,
        name: &str,
        kind: &str,
        ofport: Option<u32>,
        port: Arc<dyn Port<Buf = B>>,
        flow_device: Option<Arc<dyn FlowDevice>>,
    ) -> Result<u32, SwitchError> {
        if self.port_by_name(name).is_some() {
            return Err(SwitchError::DuplicatePort(name.to_string()));
        }
        let ofport = match ofport {
            Some(n) if self.ports.iter().any(|p| p.ofport == n) => {
                return Err(SwitchError::DuplicateOfport(n))
            }
            Some(n) => n,
            None => self.free_ofport(),
        };
        let offload = self.worker.is_some() && flow_device.is_some();
        if let (Some(w), Some(dev)) = (&self.worker, &flow_device) {
            w.add_port(ofport, Arc::clone(dev), port.n_rxq())?;
        }
        let (packet_outs, outq) = crossbeam_channel::bounded(PACKET_OUT_QUEUE);
        for pmd in &self.pmds {
            let _ = pmd.commands.send(PmdCommand::AddPort {
                ofport,
                port: Arc::clone(&port),
                offload,
                outq: Some(outq.clone()),
            });
        }
        self.ports.push(SwitchPort {
            name: name.to_string(),
            ofport,
            kind: kind.to_string(),
            port,
            flow_device,
            packet_outs,
        });
        self.assign_rxqs();
        self.publish_ports();
        Ok(ofport)
    }

    /// Removes a port: its megaflows, their NIC rules and marks go with it.
    pub fn del_port(&mut self, name: &str) -> Result<SwitchPort<B>, SwitchError> {
        let idx = self
            .ports
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| SwitchError::NoSuchPort(name.to_string()))?;
        let ofport = self.ports[idx].ofport;
        for pmd in &self.pmds {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let _ = pmd.commands.send(PmdCommand::DelPort { ofport, reply: tx });
            rx.recv_timeout(PMD_REPLY_TIMEOUT)
                .map_err(|_| SwitchError::PmdTimeout(pmd.id))?;
        }
        if let Some(w) = &self.worker {
            if self.ports[idx].flow_device.is_some() {
                w.remove_port(ofport)?;
            }
        }
        self.bridge.flush_port_macs(ofport);
        // A port added later with this number starts with no config bits.
        self.bridge
            .set_port_config(ofport, 0, crate::datapath::port_config::ALL);
        let removed = self.ports.remove(idx);
        self.assign_rxqs();
        self.publish_ports();
        Ok(removed)
    }

    /// Round-robin of every (port, queue) over the PMDs.
    fn assign_rxqs(&mut self) {
        let n = self.pmds.len();
        let mut per_pmd: Vec<Vec<(u32, u16)>> = vec![Vec::new(); n];
        let mut i = 0;
        for p in &self.ports {
            for q in 0..p.port.n_rxq() {
                per_pmd[i % n].push((p.ofport, q));
                i += 1;
            }
        }
        for (pmd, rxqs) in self.pmds.iter_mut().zip(per_pmd) {
            pmd.rxqs = rxqs.clone();
            let _ = pmd.commands.send(PmdCommand::SetRxqs(rxqs));
        }
    }

    pub fn rxqs(&self) -> Vec<RxqInfo> {
        let mut out = Vec::new();
        for pmd in &self.pmds {
            for (ofport, q) in &pmd.rxqs {
                let name = self
                    .ports
                    .iter()
                    .find(|p| p.ofport == *ofport)
                    .map_or_else(|| ofport.to_string(), |p| p.name.clone());
                out.push(RxqInfo {
                    pmd: pmd.id,
                    core: pmd.core,
                    port: name,
                    queue: *q,
                });
            }
        }
        out
    }

    pub fn port_list(&self) -> Vec<PortInfo> {
        self.ports
            .iter()
            .map(|p| PortInfo {
                name: p.name.clone(),
                ofport: p.ofport,
                kind: p.kind.clone(),
                rxqs: p.port.n_rxq(),
                flow_device: p.flow_device.is_some(),
                config: self.bridge.port_config(p.ofport),
            })
            .collect()
    }

    /// OFPT_PORT_MOD: `ofport`'s config bits under `mask` set to those of
    /// `config`; the PMDs read them at their next burst. `None`: no such
    /// port. Else the config after.
    pub fn port_mod(&self, ofport: u32, config: u32, mask: u32) -> Option<u32> {
        self.ports
            .iter()
            .any(|p| p.ofport == ofport)
            .then(|| self.bridge.set_port_config(ofport, config, mask).1)
    }

    // ---- OpenFlow ----

    /// Sends the PMDs a snapshot of the pipeline (cheap: the classifier is
    /// copy-on-write, so this shares every table with the owner's copy).
    fn publish_pipeline(&mut self) {
        let snapshot = Arc::new(self.pipeline.publish());
        for pmd in &self.pmds {
            pmd.publish(Arc::clone(&snapshot));
        }
        self.revalidator.send(RevalCommand::Pipeline(snapshot));
    }

    /// Waits until the revalidator has judged every change made so far and
    /// every PMD has applied its verdicts: the change is in the datapath.
    /// The CLI's flow and port commands wait for this; OpenFlow barriers do
    /// not (as in OVS, a barrier covers the classifier, revalidation follows).
    pub fn settle(&self) -> bool {
        if !self.revalidator.sync(PMD_REPLY_TIMEOUT) {
            return false;
        }
        // And every PMD has applied them (a big verdict is otherwise
        // applied a share per loop iteration).
        self.ask(PmdCommand::ApplyVerdicts).is_ok()
    }

    /// The revalidator thread's figures.
    pub fn revalidator_stats(&self) -> Option<Vec<(u32, RevalidatorSnapshot)>> {
        self.revalidator.snapshot(PMD_REPLY_TIMEOUT)
    }

    /// Tells the revalidator the bridge's port list (flooding megaflows
    /// depend on it).
    fn publish_ports(&self) {
        let mut ports: Vec<u32> = self.ports.iter().map(|p| p.ofport).collect();
        ports.sort_unstable();
        self.revalidator
            .send(RevalCommand::Ports(ports, self.offload_ofports()));
    }

    /// The sorted ports whose megaflows go to a NIC (`Bridge::widen_l4`).
    pub fn offload_ofports(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .ports
            .iter()
            .filter(|p| self.worker.is_some() && p.flow_device.is_some())
            .map(|p| p.ofport)
            .collect();
        v.sort_unstable();
        v
    }

    pub fn flow_add(&mut self, rule: Rule) -> Added {
        let replaced = self.pipeline.same_rule(&rule);
        self.flow_add_replacing(rule, replaced)
    }

    /// [`Switch::flow_add`] where `replaced` is what [`check_add`] found.
    pub fn flow_add_replacing(&mut self, rule: Rule, replaced: Option<RuleId>) -> Added {
        let added = self.pipeline.add_replacing(rule, replaced);
        self.publish_pipeline();
        added
    }

    /// Adds many rules as one pipeline version with one publication (one
    /// revalidation); returns their ids in order.
    pub fn flow_add_all(&mut self, rules: Vec<Rule>) -> Vec<RuleId> {
        let ids = self
            .pipeline
            .batch(|p| rules.into_iter().map(|r| p.add(r).id).collect());
        self.publish_pipeline();
        ids
    }

    pub fn flow_del(&mut self, table: Option<u8>, sel: &Match, strict: Option<u16>) -> Vec<RuleId> {
        let ids = match (strict, table) {
            (Some(prio), t) => self.pipeline.delete_strict(t.unwrap_or(0), sel, prio),
            (None, t) => self.pipeline.delete(t, sel),
        };
        if !ids.is_empty() {
            self.publish_pipeline();
        }
        ids
    }

    pub fn flow_mod(
        &mut self,
        table: Option<u8>,
        sel: &Match,
        strict: Option<u16>,
        actions: &[OfAction],
    ) -> Vec<RuleId> {
        let ids = self.pipeline.modify_actions(table, sel, strict, actions);
        if !ids.is_empty() {
            self.publish_pipeline();
        }
        ids
    }

    /// An OpenFlow PACKET_OUT: `actions` run on `frame` as if it arrived on
    /// `in_port` (a port or [`fallback::ofproto::ofport::CONTROLLER`]);
    /// output to TABLE runs the pipeline. The resulting frames go to their
    /// ports' packet-out queues (the owning PMD transmits and counts them),
    /// `controller` copies to the PACKET_IN channel. All or nothing: when
    /// a port's queue has no room for its frames, nothing is sent.
    pub fn packet_out(
        &self,
        in_port: u32,
        actions: &[OfAction],
        frame: &[u8],
    ) -> Result<PacketOutReport, SwitchError> {
        let mut key = fallback::key::FlowKey::ZERO;
        let info = fallback::packet::parse(frame, in_port, &mut key);
        let ofports: Vec<u32> = {
            let mut v: Vec<u32> = self.ports.iter().map(|p| p.ofport).collect();
            v.sort_unstable();
            v
        };
        let x = {
            let macs = self.bridge.macs.read().recover();
            fallback::ofproto::xlate::xlate_actions(
                fallback::ofproto::xlate::Bridge {
                    pipeline: &self.pipeline,
                    macs: &macs,
                    ports: &ofports,
                    widen_l4: None,
                },
                &key,
                actions,
            )
        };
        let mut report = PacketOutReport {
            drop: x.drop,
            ..PacketOutReport::default()
        };
        // Room first (this thread is the queues' only producer, so room
        // seen now is room at send time).
        for p in &self.ports {
            let n = x
                .actions
                .iter()
                .filter(|a| matches!(a, DpAction::Output(o) if *o == p.ofport))
                .count();
            if n > 0 && PACKET_OUT_QUEUE - p.packet_outs.len() < n {
                return Err(SwitchError::PacketOutQueueFull(
                    p.name.clone(),
                    PACKET_OUT_QUEUE,
                ));
            }
        }
        let mut sinks = Vec::new();
        // A rule's meter (output to TABLE) meters packet-outs too, as OVS's
        // datapath does when it executes them.
        let now_ms = self.bridge.now_ms();
        fallback::exec::execute_gated(
            &x.actions,
            fallback::port::HeapPacket::from_bytes(frame),
            info,
            fallback::port::HeapPacket::clone,
            |id, len| self.pipeline.meter(id).is_none_or(|m| m.admit(now_ms, len)),
            |sink, res| sinks.push((sink, res)),
        );
        for (sink, res) in sinks {
            match sink {
                fallback::exec::Sink::Port(o) => {
                    let Some(p) = self.ports.iter().find(|p| p.ofport == o) else {
                        continue;
                    };
                    let out = match res {
                        Ok(pkt) => p.port.frame_buf(pkt.data()).ok_or(TxDropReason::NoBuffer),
                        Err(fallback::exec::ExecError::NoHeadroom { .. }) => {
                            Err(TxDropReason::NoHeadroom)
                        }
                    };
                    if p.packet_outs.try_send(out).is_ok() {
                        report.outputs.push(o);
                    }
                }
                fallback::exec::Sink::Controller {
                    table,
                    cookie,
                    max_len,
                    miss,
                } => {
                    let Ok(pkt) = res else { continue };
                    let punt = crate::datapath::Punt::new(
                        in_port,
                        table,
                        cookie,
                        max_len,
                        miss,
                        pkt.data(),
                    );
                    if self.punt_tx.try_send(punt).is_ok() {
                        report.punts += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Replaces the whole pipeline (e.g. a controller's full sync).
    pub fn set_pipeline(&mut self, pipeline: Pipeline) {
        self.pipeline = pipeline;
        self.publish_pipeline();
    }

    // ---- reading state ----

    fn ask<T>(
        &self,
        make: impl Fn(crossbeam_channel::Sender<T>) -> PmdCommand<B>,
    ) -> Result<Vec<T>, SwitchError> {
        let mut out = Vec::with_capacity(self.pmds.len());
        for pmd in &self.pmds {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let _ = pmd.commands.send(make(tx));
            out.push(
                rx.recv_timeout(PMD_REPLY_TIMEOUT)
                    .map_err(|_| SwitchError::PmdTimeout(pmd.id))?,
            );
        }
        Ok(out)
    }

    pub fn pmd_snapshots(&self) -> Result<Vec<PmdSnapshot>, SwitchError> {
        let mut snaps = self.ask(PmdCommand::Snapshot)?;
        if let Some(reval) = self.revalidator_stats() {
            for s in &mut snaps {
                s.revalidator = reval
                    .iter()
                    .find(|(p, _)| *p == s.pmd)
                    .map(|(_, r)| r.clone());
            }
        }
        Ok(snaps)
    }

    /// Gives every PMD a source of buffers for multi-output copies (a
    /// packet pool: copies then cost no allocation); `make` is called once
    /// per PMD.
    pub fn set_buffer_sources(&self, make: impl Fn() -> Option<Box<dyn BufferSource<B>>>) {
        for pmd in &self.pmds {
            if let Some(source) = make() {
                let _ = pmd.commands.send(PmdCommand::SetBufferSource(source));
            }
        }
    }

    pub fn clear_pmd_counters(&self) {
        for pmd in &self.pmds {
            let _ = pmd.commands.send(PmdCommand::ClearCounters);
        }
    }

    /// Every PMD's megaflows, with the PMD id.
    pub fn megaflows(&self) -> Result<Vec<(u32, MegaflowInfo)>, SwitchError> {
        let per = self.ask(PmdCommand::Megaflows)?;
        Ok(self
            .pmds
            .iter()
            .zip(per)
            .flat_map(|(p, flows)| flows.into_iter().map(move |f| (p.id, f)))
            .collect())
    }

    /// Packets and bytes per OpenFlow rule, summed over PMDs.
    pub fn rule_stats(&self) -> Result<HashMap<RuleId, (u64, u64)>, SwitchError> {
        let mut out: HashMap<RuleId, (u64, u64)> = HashMap::new();
        for per in self.ask(PmdCommand::RuleStats)? {
            for (id, (p, b)) in per {
                let e = out.entry(id).or_insert((0, 0));
                e.0 += p;
                e.1 += b;
            }
        }
        Ok(out)
    }

    /// Per-port accounting, summed over PMDs, in port order.
    pub fn port_stats(&self) -> Result<Vec<NamedPortStats>, SwitchError> {
        let snaps = self.pmd_snapshots()?;
        Ok(self
            .ports
            .iter()
            .map(|p| {
                let mut stats = PortStats::default();
                for s in &snaps {
                    for (ofport, ps) in &s.ports {
                        if *ofport == p.ofport {
                            stats.merge(ps);
                        }
                    }
                }
                NamedPortStats {
                    name: p.name.clone(),
                    stats,
                }
            })
            .collect())
    }

    pub fn offload_status(&self) -> Option<Result<OffloadStatus, SwitchError>> {
        self.worker
            .as_ref()
            .map(|w| w.status().map_err(SwitchError::from))
    }

    pub fn offload_dump(&self) -> Result<Vec<FlowOffloadInfo>, SwitchError> {
        match &self.worker {
            Some(w) => Ok(w.dump()?),
            None => Ok(Vec::new()),
        }
    }

    /// The NIC on `ofport` lost its rules: re-offer every megaflow of it.
    pub fn nic_reset(&self, ofport: u32) -> Result<(), SwitchError> {
        if let Some(w) = &self.worker {
            w.device_reset(ofport)?;
        }
        Ok(())
    }

    /// Removes every megaflow on every PMD (their NIC rules go too).
    pub fn flush_megaflows(&self) -> Result<(), SwitchError> {
        self.ask(PmdCommand::FlushMegaflows).map(|_| ())
    }

    /// A copy of the MAC-learning table (for `trace` against the live state).
    pub fn mac_table(&self) -> fallback::ofproto::mac::MacTable {
        self.bridge.macs.read().recover().clone()
    }

    /// How many MAC-learning entries there are (for the metrics).
    pub fn mac_entries(&self) -> usize {
        self.bridge.macs.read().recover().len()
    }

    /// MAC table housekeeping (aging, on the bridge clock the PMDs learn
    /// and refresh with); revalidates PMDs when entries went.
    pub fn age_macs(&self) {
        self.bridge.age_macs(self.bridge.now_ms());
    }

    /// Stops the PMDs (their megaflows and NIC rules removed), then removes
    /// every port from the offload worker and stops it.
    pub fn shutdown(&mut self) {
        let _ = self.flush_megaflows();
        for pmd in &mut self.pmds {
            pmd.stop();
        }
        self.revalidator.stop();
        if let Some(w) = self.worker.take() {
            for p in &self.ports {
                if p.flow_device.is_some() {
                    let _ = w.remove_port(p.ofport);
                }
            }
            drop(w);
        }
    }
}

impl<B> Drop for Switch<B> {
    fn drop(&mut self) {
        for pmd in &mut self.pmds {
            pmd.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fallback::ofproto::syntax::parse_flow;

    fn pipeline(flows: &[&str]) -> Pipeline {
        let mut p = Pipeline::new();
        for f in flows {
            p.add(parse_flow(f).expect("valid flow"));
        }
        p
    }

    #[test]
    fn check_add_replaces_refuses_overlap_and_full() {
        let p = pipeline(&[
            "priority=10,ip,nw_dst=10.0.0.0/8,actions=output:2",
            "priority=20,ip,nw_dst=10.1.0.0/16,actions=output:3",
        ]);
        let rule = |f: &str| parse_flow(f).expect("valid flow");
        // The same table, priority and match replaces: never refused.
        let same = rule("priority=10,ip,nw_dst=10.0.0.0/8,actions=drop");
        let first = p.rules().find(|e| e.priority() == 10).map(|e| e.id);
        assert!(first.is_some());
        assert_eq!(check_add(&p, &same, true, 2), Ok(first));
        assert_eq!(p.same_rule(&same), first);
        // Overlapping at the same priority: refused only when asked.
        let overlap = rule("priority=10,ip,nw_dst=10.2.0.0/16,actions=drop");
        assert_eq!(check_add(&p, &overlap, true, 100), Err(AddRefused::Overlap));
        assert_eq!(check_add(&p, &overlap, false, 100), Ok(None));
        // Disjoint, or another priority: no overlap.
        let disjoint = rule("priority=10,ip,nw_dst=11.0.0.0/8,actions=drop");
        assert_eq!(check_add(&p, &disjoint, true, 100), Ok(None));
        let other_prio = rule("priority=11,ip,nw_dst=10.2.0.0/16,actions=drop");
        assert_eq!(check_add(&p, &other_prio, true, 100), Ok(None));
        // Full.
        assert_eq!(
            check_add(&p, &disjoint, false, 2),
            Err(AddRefused::TableFull(2))
        );
    }
}
