//! What an OpenFlow session needs from the switch, and [`PipelineSwitch`],
//! an in-memory implementation over a [`Pipeline`] (tests, and a switch
//! without a datapath).

use super::error::{BadRequestCode, FlowModFailedCode, OfpError};
use super::message::FlowMod;
use fallback::ofproto::table::{loose_selects, Pipeline, RuleId};
use fallback::ofproto::{Match, OfAction, Rule};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rule with its counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowInfo {
    pub id: RuleId,
    pub rule: Rule,
    pub n_packets: u64,
    pub n_bytes: u64,
    pub age: Duration,
}

/// A port as OpenFlow describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    pub ofport: u32,
    pub name: String,
}

/// A port's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    /// Received packets that were malformed (did not parse, could not be
    /// made contiguous); not in `rx_dropped`.
    pub rx_errors: u64,
}

/// Something the controller is told about without asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchEvent {
    PortAdded(PortInfo),
    PortDeleted(PortInfo),
    /// A packet sent to the controller (by a `controller` action): `miss`
    /// when a table-miss rule sent it (reason NO_MATCH; each connection
    /// cuts `frame` to its `miss_send_len`), else reason ACTION (`frame`
    /// already cut to the action's `max_len`); `total_len` is the packet's
    /// length before any cut.
    PacketIn {
        in_port: u32,
        table: u8,
        cookie: u64,
        miss: bool,
        total_len: usize,
        frame: Vec<u8>,
    },
    /// A rule added with `send_flow_rem` went (OFPRR_* `reason`).
    FlowRemoved {
        rule: Box<Rule>,
        reason: u8,
        age: Duration,
        packets: u64,
        bytes: u64,
    },
}

/// The switch operations OpenFlow needs, with OVS semantics: `add_flows`
/// replaces a rule with the same table, priority and match; deletes and
/// modifies select loosely (every rule at least as specific as `selector`)
/// or, with `strict_priority`, exactly; `table` None means every table.
/// Errors are the OpenFlow error to report.
pub trait OpenFlowSwitch: Send + Sync {
    fn datapath_id(&self) -> u64;
    fn flows(&self) -> Result<Vec<FlowInfo>, OfpError>;
    fn add_flows(&self, rules: Vec<Rule>) -> Result<(), OfpError>;
    /// One OFPFC_ADD: refused with OFPFMFC_OVERLAP (with `check_overlap`)
    /// or OFPFMFC_TABLE_FULL, checked where the rules are (no dump). With
    /// `send_flow_rem`, its removal is announced (FLOW_REMOVED).
    fn add_flow_checked(
        &self,
        rule: Rule,
        check_overlap: bool,
        send_flow_rem: bool,
    ) -> Result<(), OfpError>;
    fn delete_flows(
        &self,
        table: Option<u8>,
        selector: &Match,
        strict_priority: Option<u16>,
    ) -> Result<usize, OfpError>;
    fn modify_flows(
        &self,
        table: Option<u8>,
        selector: &Match,
        strict_priority: Option<u16>,
        actions: &[OfAction],
    ) -> Result<usize, OfpError>;
    fn ports(&self) -> Result<Vec<PortInfo>, OfpError>;
    fn port_counters(&self) -> Result<Vec<(u32, PortCounters)>, OfpError>;
    /// Runs `actions` on `frame` as if it arrived on `in_port`.
    fn packet_out(&self, in_port: u32, actions: &[OfAction], frame: &[u8]) -> Result<(), OfpError>;
    /// Most flows the switch holds (more: `OFPFMFC_TABLE_FULL`).
    fn max_flows(&self) -> usize {
        1_000_000
    }
    /// A bundle's commit: every flow mod in order, as one new version, or
    /// (the index and error of the first that fails) no change at all.
    fn commit_flow_mods(&self, mods: &[FlowMod]) -> Result<(), (usize, OfpError)>;
}

/// A packet-out the [`PipelineSwitch`] received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketOutRecord {
    pub in_port: u32,
    pub actions: Vec<OfAction>,
    pub frame: Vec<u8>,
}

struct State {
    pipeline: Pipeline,
    added: Vec<(RuleId, Instant)>,
    counters: Vec<(RuleId, u64, u64)>,
    ports: Vec<(PortInfo, PortCounters)>,
    packet_outs: Vec<PacketOutRecord>,
}

/// An in-memory switch: a [`Pipeline`], ports with settable counters, and a
/// record of packet-outs.
pub struct PipelineSwitch {
    datapath_id: u64,
    max_flows: usize,
    state: Mutex<State>,
}

impl PipelineSwitch {
    pub fn new(datapath_id: u64, ports: Vec<PortInfo>) -> Self {
        PipelineSwitch {
            datapath_id,
            max_flows: 1_000_000,
            state: Mutex::new(State {
                pipeline: Pipeline::new(),
                added: Vec::new(),
                counters: Vec::new(),
                ports: ports
                    .into_iter()
                    .map(|p| (p, PortCounters::default()))
                    .collect(),
                packet_outs: Vec::new(),
            }),
        }
    }

    /// A switch over `pipeline` with no ports (a bundle's scratch copy).
    pub fn from_pipeline(datapath_id: u64, pipeline: Pipeline, max_flows: usize) -> Self {
        let s = PipelineSwitch::new(datapath_id, Vec::new()).with_max_flows(max_flows);
        if let Ok(mut st) = s.state.lock() {
            st.pipeline = pipeline;
        }
        s
    }

    /// The pipeline, with whatever flow mods were applied to it.
    pub fn into_pipeline(self) -> Pipeline {
        match self.state.into_inner() {
            Ok(st) => st.pipeline,
            Err(poisoned) => poisoned.into_inner().pipeline,
        }
    }

    pub fn with_max_flows(mut self, n: usize) -> Self {
        self.max_flows = n;
        self
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, OfpError> {
        self.state.lock().map_err(|_| {
            OfpError::bad_request(BadRequestCode::Eperm, "switch state poisoned by a panic")
        })
    }

    /// A copy of the pipeline.
    pub fn pipeline(&self) -> Pipeline {
        self.lock().map(|s| s.pipeline.clone()).unwrap_or_default()
    }

    /// Counts `packets`/`bytes` on every rule selected loosely by `sel`.
    pub fn hit(&self, sel: &Match, packets: u64, bytes: u64) {
        if let Ok(mut s) = self.lock() {
            let ids: Vec<RuleId> = s
                .pipeline
                .entries()
                .filter(|e| loose_selects(sel, &e.rule.r#match))
                .map(|e| e.id)
                .collect();
            for id in ids {
                match s.counters.iter_mut().find(|c| c.0 == id) {
                    Some(c) => {
                        c.1 += packets;
                        c.2 += bytes;
                    }
                    None => s.counters.push((id, packets, bytes)),
                }
            }
        }
    }

    pub fn set_port_counters(&self, ofport: u32, c: PortCounters) {
        if let Ok(mut s) = self.lock() {
            if let Some(p) = s.ports.iter_mut().find(|p| p.0.ofport == ofport) {
                p.1 = c;
            }
        }
    }

    pub fn packet_outs(&self) -> Vec<PacketOutRecord> {
        self.lock()
            .map(|s| s.packet_outs.clone())
            .unwrap_or_default()
    }
}

impl OpenFlowSwitch for PipelineSwitch {
    fn datapath_id(&self) -> u64 {
        self.datapath_id
    }

    fn flows(&self) -> Result<Vec<FlowInfo>, OfpError> {
        let s = self.lock()?;
        let now = Instant::now();
        Ok(s.pipeline
            .rules()
            .map(|e| {
                let (p, b) = s
                    .counters
                    .iter()
                    .find(|c| c.0 == e.id)
                    .map_or((0, 0), |c| (c.1, c.2));
                let age = s
                    .added
                    .iter()
                    .find(|a| a.0 == e.id)
                    .map_or(Duration::ZERO, |a| now.duration_since(a.1));
                FlowInfo {
                    id: e.id,
                    rule: e.rule.clone(),
                    n_packets: p,
                    n_bytes: b,
                    age,
                }
            })
            .collect())
    }

    fn commit_flow_mods(&self, mods: &[FlowMod]) -> Result<(), (usize, OfpError)> {
        let mut s = self.lock().map_err(|e| (0, e))?;
        let scratch = s.pipeline.clone();
        let new = super::flow_table::apply_flow_mods_to(scratch, mods, self.max_flows)?;
        let now = Instant::now();
        let known: std::collections::HashSet<RuleId> = s.pipeline.rules().map(|e| e.id).collect();
        let fresh: Vec<RuleId> = new
            .rules()
            .map(|e| e.id)
            .filter(|id| !known.contains(id))
            .collect();
        s.added.extend(fresh.into_iter().map(|id| (id, now)));
        s.pipeline = new;
        Ok(())
    }

    fn add_flow_checked(
        &self,
        rule: Rule,
        check_overlap: bool,
        _send_flow_rem: bool,
    ) -> Result<(), OfpError> {
        let mut s = self.lock()?;
        crate::switch::check_add(&s.pipeline, &rule, check_overlap, self.max_flows)
            .map_err(super::flow_table::add_refused)?;
        let added = s.pipeline.add(rule);
        s.added.push((added.id, Instant::now()));
        Ok(())
    }

    fn add_flows(&self, rules: Vec<Rule>) -> Result<(), OfpError> {
        let mut s = self.lock()?;
        if s.pipeline.len() + rules.len() > self.max_flows {
            return Err(OfpError::flow_mod_failed(
                FlowModFailedCode::TableFull,
                format!("the switch holds at most {} flows", self.max_flows),
            ));
        }
        let now = Instant::now();
        let ids: Vec<RuleId> = s
            .pipeline
            .batch(|p| rules.into_iter().map(|r| p.add(r).id).collect());
        s.added.extend(ids.into_iter().map(|id| (id, now)));
        Ok(())
    }

    fn delete_flows(
        &self,
        table: Option<u8>,
        selector: &Match,
        strict_priority: Option<u16>,
    ) -> Result<usize, OfpError> {
        let mut s = self.lock()?;
        let ids = match (strict_priority, table) {
            (Some(prio), Some(t)) => s.pipeline.delete_strict(t, selector, prio),
            (Some(prio), None) => (0..=254u8)
                .flat_map(|t| s.pipeline.delete_strict(t, selector, prio))
                .collect(),
            (None, t) => s.pipeline.delete(t, selector),
        };
        s.added.retain(|a| !ids.contains(&a.0));
        s.counters.retain(|c| !ids.contains(&c.0));
        Ok(ids.len())
    }

    fn modify_flows(
        &self,
        table: Option<u8>,
        selector: &Match,
        strict_priority: Option<u16>,
        actions: &[OfAction],
    ) -> Result<usize, OfpError> {
        let mut s = self.lock()?;
        let n = match (strict_priority, table) {
            (Some(prio), None) => (0..=254u8)
                .map(|t| {
                    s.pipeline
                        .modify_actions(Some(t), selector, Some(prio), actions)
                        .len()
                })
                .sum(),
            (strict, t) => s
                .pipeline
                .modify_actions(t, selector, strict, actions)
                .len(),
        };
        Ok(n)
    }

    fn ports(&self) -> Result<Vec<PortInfo>, OfpError> {
        Ok(self.lock()?.ports.iter().map(|p| p.0.clone()).collect())
    }

    fn port_counters(&self) -> Result<Vec<(u32, PortCounters)>, OfpError> {
        Ok(self
            .lock()?
            .ports
            .iter()
            .map(|p| (p.0.ofport, p.1))
            .collect())
    }

    fn packet_out(&self, in_port: u32, actions: &[OfAction], frame: &[u8]) -> Result<(), OfpError> {
        self.lock()?.packet_outs.push(PacketOutRecord {
            in_port,
            actions: actions.to_vec(),
            frame: frame.to_vec(),
        });
        Ok(())
    }

    fn max_flows(&self) -> usize {
        self.max_flows
    }
}
