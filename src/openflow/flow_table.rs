//! Flow mods and flow/aggregate/table stats with OpenFlow 1.3 semantics,
//! over an [`OpenFlowSwitch`] (or, for flow mods, a [`PipelineTable`]): table ids with `OFPTT_ALL`, cookie masks,
//! the out_port filter, strict and loose selection.

use super::error::{BadRequestCode as Brc, FlowModFailedCode as Fmfc, OfpError};
use super::message::{
    flow_flags, BundledFlowMods, BundledOp, FlowMod, FlowModCommand, FlowStats, FlowStatsRequest,
    TableStats, OFPG_ANY, OFPTT_ALL, OFP_NO_BUFFER,
};
use super::port::{ofport_from_of13, OFPP_ANY};
use super::switch::{FlowInfo, FlowTable, OpenFlowSwitch};
use fallback::ofproto::table::{loose_selects, Pipeline, RuleEntry, RuleId};
use fallback::ofproto::{ofport, Match, OfAction, Rule, N_TABLES};
use std::cell::RefCell;
use std::time::Duration;

/// True when one of `actions` outputs to `port` (flowmark numbering), as
/// OVS's out_port filter counts outputs.
fn outputs_to(actions: &[OfAction], port: u32) -> bool {
    actions.iter().any(|a| match *a {
        OfAction::Output(p) => p == port,
        OfAction::InPort => port == ofport::IN_PORT,
        OfAction::Flood => port == ofport::FLOOD,
        OfAction::All => port == ofport::ALL,
        OfAction::Normal => port == ofport::NORMAL,
        OfAction::Controller { .. } => port == ofport::CONTROLLER,
        _ => false,
    })
}

fn table_of(id: u8) -> Option<u8> {
    (id != OFPTT_ALL).then_some(id)
}

fn out_port_filter(p: u32) -> Result<Option<u32>, OfpError> {
    if p == OFPP_ANY {
        return Ok(None);
    }
    ofport_from_of13(p)
        .map(Some)
        .ok_or_else(|| OfpError::bad_request(Brc::BadPort, format!("out_port {p:#x}")))
}

/// A [`Pipeline`] that flow mods apply to directly, with OVS's semantics
/// (as [`OpenFlowSwitch`] states them): a bundle's scratch copy, and the
/// flow table of the tests' in-memory switch. Rules have no counters here.
pub struct PipelineTable {
    pipeline: RefCell<Pipeline>,
    max_flows: usize,
}

impl PipelineTable {
    pub fn new(pipeline: Pipeline, max_flows: usize) -> Self {
        PipelineTable {
            pipeline: RefCell::new(pipeline),
            max_flows,
        }
    }

    pub fn pipeline(&self) -> std::cell::Ref<'_, Pipeline> {
        self.pipeline.borrow()
    }

    pub fn into_pipeline(self) -> Pipeline {
        self.pipeline.into_inner()
    }

    pub fn max_flows(&self) -> usize {
        self.max_flows
    }

    /// A group mod (see [`super::group_table::apply_group_mod`]).
    pub fn group_mod(
        &self,
        gm: &super::message::GroupMod,
        now: std::time::Instant,
    ) -> Result<Vec<RuleId>, OfpError> {
        super::group_table::apply_group_mod(&mut self.pipeline.borrow_mut(), gm, now)
    }

    /// One OFPFC_ADD (see [`OpenFlowSwitch::add_flow_checked`]).
    pub fn add(&self, rule: Rule, check_overlap: bool) -> Result<RuleId, OfpError> {
        let mut p = self.pipeline.borrow_mut();
        let replaced = crate::switch::check_add(&p, &rule, check_overlap, self.max_flows)
            .map_err(add_refused)?;
        Ok(p.add_replacing(rule, replaced).id)
    }

    /// Many adds as one version (see [`OpenFlowSwitch::add_flows`]).
    pub fn add_all(&self, rules: Vec<Rule>) -> Result<Vec<RuleId>, OfpError> {
        let mut p = self.pipeline.borrow_mut();
        if p.len() + rules.len() > self.max_flows {
            return Err(OfpError::flow_mod_failed(
                Fmfc::TableFull,
                format!("the switch holds at most {} flows", self.max_flows),
            ));
        }
        Ok(p.batch(|p| rules.into_iter().map(|r| p.add(r).id).collect()))
    }

    /// The deleted rules' ids.
    pub fn delete(
        &self,
        table: Option<u8>,
        selector: &Match,
        strict_priority: Option<u16>,
    ) -> Vec<RuleId> {
        let mut p = self.pipeline.borrow_mut();
        match (strict_priority, table) {
            (Some(prio), Some(t)) => p.delete_strict(t, selector, prio),
            (Some(prio), None) => (0..=254u8)
                .flat_map(|t| p.delete_strict(t, selector, prio))
                .collect(),
            (None, t) => p.delete(t, selector),
        }
    }

    /// How many rules got `actions`.
    pub fn modify(
        &self,
        table: Option<u8>,
        selector: &Match,
        strict_priority: Option<u16>,
        actions: &[OfAction],
    ) -> usize {
        let mut p = self.pipeline.borrow_mut();
        match (strict_priority, table) {
            (Some(prio), None) => (0..=254u8)
                .map(|t| {
                    p.modify_actions(Some(t), selector, Some(prio), actions)
                        .len()
                })
                .sum(),
            (strict, t) => p.modify_actions(t, selector, strict, actions).len(),
        }
    }
}

impl FlowTable for PipelineTable {
    fn has_group(&self, id: u32) -> Result<bool, OfpError> {
        Ok(self.pipeline.borrow().group(id).is_some())
    }
    fn has_meter(&self, id: u32) -> Result<bool, OfpError> {
        Ok(self.pipeline.borrow().meter(id).is_some())
    }
    fn flows(&self) -> Result<Vec<FlowInfo>, OfpError> {
        Ok(self
            .pipeline
            .borrow()
            .rules()
            .map(|e| FlowInfo {
                id: e.id,
                rule: e.to_rule(),
                n_packets: 0,
                n_bytes: 0,
                age: Duration::ZERO,
            })
            .collect())
    }
    fn add_flow_checked(
        &self,
        rule: Rule,
        check_overlap: bool,
        _send_flow_rem: bool,
    ) -> Result<(), OfpError> {
        self.add(rule, check_overlap).map(|_| ())
    }
    fn delete_flows(
        &self,
        table: Option<u8>,
        selector: &Match,
        strict_priority: Option<u16>,
    ) -> Result<usize, OfpError> {
        Ok(self.delete(table, selector, strict_priority).len())
    }
    fn modify_flows(
        &self,
        table: Option<u8>,
        selector: &Match,
        strict_priority: Option<u16>,
        actions: &[OfAction],
    ) -> Result<usize, OfpError> {
        Ok(self.modify(table, selector, strict_priority, actions))
    }
}

/// Applies a flow mod.
pub fn apply_flow_mod<T: FlowTable + ?Sized>(sw: &T, fm: FlowMod) -> Result<(), OfpError> {
    if fm.buffer_id != OFP_NO_BUFFER && matches!(fm.command, FlowModCommand::Add) {
        return Err(OfpError::bad_request(
            Brc::BufferUnknown,
            format!("buffer {:#x}: flowmark buffers no packets", fm.buffer_id),
        ));
    }
    if fm.flags & !flow_flags::ALL != 0 {
        return Err(OfpError::flow_mod_failed(
            Fmfc::BadFlags,
            format!("flags {:#x}", fm.flags),
        ));
    }
    if fm.table_id != OFPTT_ALL && usize::from(fm.table_id) >= N_TABLES {
        return Err(OfpError::flow_mod_failed(
            Fmfc::BadTableId,
            format!("table {}", fm.table_id),
        ));
    }
    if matches!(
        fm.command,
        FlowModCommand::Add | FlowModCommand::Modify | FlowModCommand::ModifyStrict
    ) {
        // OVS checks a flow's meter, then its groups.
        super::meter_table::check_meters(&fm.actions, |m| sw.has_meter(m))?;
        super::group_table::check_groups(&fm.actions, |g| sw.has_group(g))?;
    }
    let modify = |strict: bool| -> Result<(), OfpError> {
        let sel = RuleSelector {
            table: table_of(fm.table_id),
            strict_priority: strict.then_some(fm.priority),
            r#match: fm.r#match,
            cookie: fm.cookie,
            cookie_mask: fm.cookie_mask,
            out_port: None,
            out_group: None,
        };
        if sel.is_plain() {
            sw.modify_flows(sel.table, &sel.r#match, sel.strict_priority, &fm.actions)?;
            return Ok(());
        }
        for f in sw.flows()?.iter().filter(|f| sel.selects_rule(&f.rule)) {
            let r = &f.rule;
            sw.modify_flows(Some(r.table), &r.r#match, Some(r.priority), &fm.actions)?;
        }
        Ok(())
    };
    let delete = |strict: bool| -> Result<(), OfpError> {
        let sel = RuleSelector {
            table: table_of(fm.table_id),
            strict_priority: strict.then_some(fm.priority),
            r#match: fm.r#match,
            cookie: fm.cookie,
            cookie_mask: fm.cookie_mask,
            out_port: out_port_filter(fm.out_port)?,
            out_group: (fm.out_group != OFPG_ANY).then_some(fm.out_group),
        };
        if sel.is_plain() {
            sw.delete_flows(sel.table, &sel.r#match, sel.strict_priority)?;
            return Ok(());
        }
        for f in sw.flows()?.iter().filter(|f| sel.selects_rule(&f.rule)) {
            let r = &f.rule;
            sw.delete_flows(Some(r.table), &r.r#match, Some(r.priority))?;
        }
        Ok(())
    };
    match fm.command {
        FlowModCommand::Add => {
            if fm.table_id == OFPTT_ALL {
                return Err(OfpError::flow_mod_failed(
                    Fmfc::BadTableId,
                    "a flow is added to one table, not OFPTT_ALL",
                ));
            }
            let (check_overlap, send_flow_rem) = (
                fm.flags & flow_flags::CHECK_OVERLAP != 0,
                fm.flags & flow_flags::SEND_FLOW_REM != 0,
            );
            let rule = Rule {
                table: fm.table_id,
                priority: fm.priority,
                r#match: fm.r#match,
                actions: fm.actions,
                cookie: fm.cookie,
                idle_timeout: fm.idle_timeout,
                hard_timeout: fm.hard_timeout,
            };
            sw.add_flow_checked(rule, check_overlap, send_flow_rem)
        }
        FlowModCommand::Modify => modify(false),
        FlowModCommand::ModifyStrict => modify(true),
        FlowModCommand::Delete => delete(false),
        FlowModCommand::DeleteStrict => delete(true),
    }
}

/// Applies `mods` in order to `pipeline` (a copy: pipelines share their
/// rules copy-on-write): all of them, or the index and error of the first
/// that fails, with the copy dropped.
pub fn apply_flow_mods_to(
    mut pipeline: fallback::ofproto::table::Pipeline,
    mods: &BundledFlowMods,
    max_flows: usize,
) -> Result<fallback::ofproto::table::Pipeline, (usize, OfpError)> {
    // The id index grows once for the bundle, not a doubling at a time.
    pipeline.reserve(mods.n_adds().min(max_flows.saturating_sub(pipeline.len())));
    let scratch = PipelineTable::new(pipeline, max_flows);
    let now = std::time::Instant::now();
    for (i, op) in mods.ops().enumerate() {
        match op {
            BundledOp::Flow(fm) => apply_flow_mod(&scratch, fm),
            BundledOp::Group(gm) => scratch.group_mod(gm, now).map(|_| ()),
        }
        .map_err(|e| (i, e))?;
    }
    Ok(scratch.into_pipeline())
}

/// The OpenFlow error for a refused add.
pub fn add_refused(r: crate::switch::AddRefused) -> OfpError {
    use crate::switch::AddRefused;
    match r {
        AddRefused::Overlap => OfpError::flow_mod_failed(Fmfc::Overlap, r.to_string()),
        AddRefused::TableFull(_) => OfpError::flow_mod_failed(Fmfc::TableFull, r.to_string()),
    }
}

/// The selection of a modify, delete or stats request, owned so that an
/// aggregate can run where the rules are (the daemon's main thread) over
/// the rules in place: no copy of the table per request (at a million
/// rules a copied dump was half a gigabyte of short-lived heap).
#[derive(Clone, Debug)]
pub struct RuleSelector {
    table: Option<u8>,
    /// Strict (modify/delete --strict): this priority and exactly the match.
    strict_priority: Option<u16>,
    r#match: fallback::ofproto::Match,
    cookie: u64,
    cookie_mask: u64,
    /// Flowmark numbering; `None`: no filter.
    out_port: Option<u32>,
    /// Rules whose actions name this group; `None`: no filter.
    out_group: Option<u32>,
}

impl RuleSelector {
    /// A stats request's selector; `None` when it can select nothing.
    pub fn of_request(q: &FlowStatsRequest) -> Result<Option<RuleSelector>, OfpError> {
        Ok(Some(RuleSelector {
            table: table_of(q.table_id),
            strict_priority: None,
            r#match: q.r#match,
            cookie: q.cookie,
            cookie_mask: q.cookie_mask,
            out_port: out_port_filter(q.out_port)?,
            out_group: (q.out_group != OFPG_ANY).then_some(q.out_group),
        }))
    }

    fn selects_parts(&self, table: u8, cookie: u64, actions: &[OfAction]) -> bool {
        self.table.is_none_or(|t| t == table)
            && (cookie & self.cookie_mask) == (self.cookie & self.cookie_mask)
            && self.out_port.is_none_or(|p| outputs_to(actions, p))
            && self
                .out_group
                .is_none_or(|g| fallback::ofproto::group::groups_in(actions).any(|a| a == g))
    }

    pub fn selects_entry(&self, e: &RuleEntry) -> bool {
        self.selects_parts(e.table(), e.cookie(), e.actions())
            && match self.strict_priority {
                Some(prio) => e.priority() == prio && e.r#match() == self.r#match,
                None => e.loosely_selected_by(&self.r#match),
            }
    }

    pub fn selects_rule(&self, r: &Rule) -> bool {
        self.selects_parts(r.table, r.cookie, &r.actions)
            && match self.strict_priority {
                Some(prio) => r.priority == prio && r.r#match == self.r#match,
                None => loose_selects(&self.r#match, &r.r#match),
            }
    }

    /// True when the switch's own selection gives the same rules (no cookie
    /// or out_port filter), so one bulk call does.
    fn is_plain(&self) -> bool {
        self.cookie_mask == 0 && self.out_port.is_none() && self.out_group.is_none()
    }
}

/// An aggregate stats reply's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggregateCounts {
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// The flows a flow or aggregate stats request selects.
pub fn select_flows(
    sw: &dyn OpenFlowSwitch,
    q: &FlowStatsRequest,
) -> Result<Vec<FlowInfo>, OfpError> {
    let Some(sel) = RuleSelector::of_request(q)? else {
        return Ok(Vec::new());
    };
    Ok(sw
        .flows()?
        .into_iter()
        .filter(|f| sel.selects_rule(&f.rule))
        .collect())
}

pub fn flow_stats(f: &FlowInfo) -> FlowStats {
    FlowStats {
        table_id: f.rule.table,
        duration_sec: f.age.as_secs().min(u64::from(u32::MAX)) as u32,
        duration_nsec: f.age.subsec_nanos(),
        priority: f.rule.priority,
        idle_timeout: f.rule.idle_timeout,
        hard_timeout: f.rule.hard_timeout,
        flags: 0,
        cookie: f.rule.cookie,
        packet_count: f.n_packets,
        byte_count: f.n_bytes,
        r#match: f.rule.r#match,
        actions: f.rule.actions.clone(),
    }
}

/// Per-table counts for every table (0..=254).
pub fn table_stats(flows: &[FlowInfo]) -> Vec<TableStats> {
    let mut t: Vec<TableStats> = (0..N_TABLES)
        .map(|i| TableStats {
            table_id: i as u8,
            ..TableStats::default()
        })
        .collect();
    for f in flows {
        if let Some(s) = t.get_mut(usize::from(f.rule.table)) {
            s.active_count += 1;
            s.matched_count += f.n_packets;
            s.lookup_count += f.n_packets;
        }
    }
    t
}
