//! An in-memory [`OpenFlowSwitch`] for tests: a [`PipelineTable`], ports
//! with settable counters, and a record of packet-outs (no datapath).
#![allow(dead_code)]

use fallback::ofproto::table::{Pipeline, RuleId};
use fallback::ofproto::{Match, OfAction, Rule};
use flowmark::openflow::error::{BadRequestCode, OfpError};
use flowmark::openflow::flow_table::{apply_flow_mods_to, PipelineTable};
use flowmark::openflow::group_table::{apply_group_mod, group_infos, GroupInfo};
use flowmark::openflow::message::{BundledFlowMods, GroupMod, MeterMod};
use flowmark::openflow::switch::{FlowInfo, FlowTable, OpenFlowSwitch, PortCounters, PortInfo};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A packet-out the [`PipelineSwitch`] received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketOutRecord {
    pub in_port: u32,
    pub actions: Vec<OfAction>,
    pub frame: Vec<u8>,
}

struct State {
    table: PipelineTable,
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
                table: PipelineTable::new(Pipeline::new(), 1_000_000),
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

    pub fn with_max_flows(mut self, n: usize) -> Self {
        self.max_flows = n;
        if let Ok(mut s) = self.state.lock() {
            let p = s.table.pipeline().clone();
            s.table = PipelineTable::new(p, n);
        }
        self
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, OfpError> {
        self.state.lock().map_err(|_| {
            OfpError::bad_request(BadRequestCode::Eperm, "switch state poisoned by a panic")
        })
    }

    /// A copy of the pipeline.
    pub fn pipeline(&self) -> Pipeline {
        self.lock()
            .map(|s| s.table.pipeline().clone())
            .unwrap_or_default()
    }

    /// Counts `packets`/`bytes` on every rule selected loosely by `sel`.
    pub fn hit(&self, sel: &Match, packets: u64, bytes: u64) {
        if let Ok(mut s) = self.lock() {
            let ids: Vec<RuleId> = s
                .table
                .pipeline()
                .entries()
                .filter(|e| e.loosely_selected_by(sel))
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

impl FlowTable for PipelineSwitch {
    fn has_group(&self, id: u32) -> Result<bool, OfpError> {
        self.lock()?.table.has_group(id)
    }
    fn has_meter(&self, id: u32) -> Result<bool, OfpError> {
        self.lock()?.table.has_meter(id)
    }
    fn flows(&self) -> Result<Vec<FlowInfo>, OfpError> {
        let s = self.lock()?;
        let now = Instant::now();
        let p = s.table.pipeline();
        Ok(p.rules()
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
                    rule: e.to_rule(),
                    n_packets: p,
                    n_bytes: b,
                    age,
                }
            })
            .collect())
    }
    fn add_flow_checked(
        &self,
        rule: Rule,
        check_overlap: bool,
        _send_flow_rem: bool,
    ) -> Result<(), OfpError> {
        let mut s = self.lock()?;
        let id = s.table.add(rule, check_overlap)?;
        s.added.push((id, Instant::now()));
        Ok(())
    }
    fn delete_flows(
        &self,
        table: Option<u8>,
        selector: &Match,
        strict_priority: Option<u16>,
    ) -> Result<usize, OfpError> {
        let mut s = self.lock()?;
        let ids = s.table.delete(table, selector, strict_priority);
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
        Ok(self
            .lock()?
            .table
            .modify(table, selector, strict_priority, actions))
    }
}

impl OpenFlowSwitch for PipelineSwitch {
    fn datapath_id(&self) -> u64 {
        self.datapath_id
    }

    fn commit_flow_mods(&self, mods: Arc<BundledFlowMods>) -> Result<(), (usize, OfpError)> {
        let mut s = self.lock().map_err(|e| (0, e))?;
        let scratch = s.table.pipeline().clone();
        let new = apply_flow_mods_to(scratch, &mods, self.max_flows)?;
        let now = Instant::now();
        let known: std::collections::HashSet<RuleId> =
            s.table.pipeline().rules().map(|e| e.id).collect();
        let fresh: Vec<RuleId> = new
            .rules()
            .map(|e| e.id)
            .filter(|id| !known.contains(id))
            .collect();
        s.added.extend(fresh.into_iter().map(|id| (id, now)));
        s.table = PipelineTable::new(new, self.max_flows);
        Ok(())
    }

    fn add_flows(&self, rules: Vec<Rule>) -> Result<(), OfpError> {
        let mut s = self.lock()?;
        let ids = s.table.add_all(rules)?;
        let now = Instant::now();
        s.added.extend(ids.into_iter().map(|id| (id, now)));
        Ok(())
    }

    fn ports(&self) -> Result<Vec<PortInfo>, OfpError> {
        Ok(self.lock()?.ports.iter().map(|p| p.0.clone()).collect())
    }

    fn port_mod(&self, ofport: u32, config: u32, mask: u32) -> Result<u32, OfpError> {
        let mut s = self.lock()?;
        let Some((port, _)) = s.ports.iter_mut().find(|(p, _)| p.ofport == ofport) else {
            return Err(OfpError::port_mod_failed(
                flowmark::openflow::error::PortModFailedCode::BadPort,
                format!("no port {ofport}"),
            ));
        };
        port.config = flowmark::datapath::port_config::apply(port.config, config, mask);
        Ok(port.config)
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

    fn group_mod(&self, gm: &GroupMod) -> Result<(), OfpError> {
        let mut s = self.lock()?;
        let mut scratch = s.table.pipeline().clone();
        apply_group_mod(&mut scratch, gm, Instant::now())?;
        s.table = PipelineTable::new(scratch, self.max_flows);
        Ok(())
    }

    /// Groups count what the rules' counters ([`PipelineSwitch::hit`])
    /// credit them: nothing (no datapath here).
    fn groups(&self) -> Result<Vec<GroupInfo>, OfpError> {
        let s = self.lock()?;
        let infos = group_infos(&s.table.pipeline(), [], Instant::now());
        Ok(infos)
    }

    fn meter_mod(&self, mm: &MeterMod) -> Result<(), OfpError> {
        let mut s = self.lock()?;
        let mut scratch = s.table.pipeline().clone();
        flowmark::openflow::meter_table::apply_meter_mod(&mut scratch, mm, Instant::now())?;
        s.table = PipelineTable::new(scratch, self.max_flows);
        Ok(())
    }

    fn meters(&self) -> Result<Vec<flowmark::openflow::meter_table::MeterInfo>, OfpError> {
        let s = self.lock()?;
        let infos = flowmark::openflow::meter_table::meter_infos(&s.table.pipeline());
        Ok(infos)
    }
}
