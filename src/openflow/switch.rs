//! What an OpenFlow session needs from the switch. The daemon implements it
//! ([`super::daemon::DaemonSwitch`]); the tests have an in-memory one
//! (`tests/support/pipeline_switch.rs`).

use super::error::OfpError;
use super::flow_table::{AggregateCounts, RuleSelector};
use super::group_table::GroupInfo;
use super::message::{BundledFlowMods, GroupMod, MeterMod};
use super::meter_table::MeterInfo;
use fallback::ofproto::table::RuleId;
use fallback::ofproto::{Match, OfAction, Rule};
use std::sync::Arc;
use std::time::Duration;

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
    /// OpenFlow config bits (`OFPPC_*`, see `crate::datapath::port_config`).
    pub config: u32,
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
    /// The port's config changed (a PORT_MOD).
    PortModified(PortInfo),
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

/// The flow operations a flow mod needs, with the semantics above: every
/// [`OpenFlowSwitch`] has them, and so does a bare pipeline
/// ([`super::flow_table::PipelineTable`], a bundle's scratch copy).
pub trait FlowTable {
    /// Whether group `id` exists (a flow naming another is refused).
    fn has_group(&self, id: u32) -> Result<bool, OfpError>;
    /// Whether meter `id` exists (a flow naming another is refused).
    fn has_meter(&self, id: u32) -> Result<bool, OfpError>;
    fn flows(&self) -> Result<Vec<FlowInfo>, OfpError>;
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
}

/// The switch operations OpenFlow needs, with OVS semantics: `add_flows`
/// replaces a rule with the same table, priority and match; deletes and
/// modifies select loosely (every rule at least as specific as `selector`)
/// or, with `strict_priority`, exactly; `table` None means every table.
/// Errors are the OpenFlow error to report.
pub trait OpenFlowSwitch: FlowTable + Send + Sync {
    fn datapath_id(&self) -> u64;
    fn add_flows(&self, rules: Vec<Rule>) -> Result<(), OfpError>;
    fn ports(&self) -> Result<Vec<PortInfo>, OfpError>;
    fn port_counters(&self) -> Result<Vec<(u32, PortCounters)>, OfpError>;
    /// OFPT_PORT_MOD: sets `ofport`'s config bits under `mask` to those of
    /// `config` (bits OpenFlow 1.3 cannot set are ignored); the config
    /// after. `OFPPMFC_BAD_PORT` for a port the switch does not have.
    fn port_mod(&self, ofport: u32, config: u32, mask: u32) -> Result<u32, OfpError>;
    /// Runs `actions` on `frame` as if it arrived on `in_port`.
    fn packet_out(&self, in_port: u32, actions: &[OfAction], frame: &[u8]) -> Result<(), OfpError>;
    /// Most flows the switch holds (more: `OFPFMFC_TABLE_FULL`).
    fn max_flows(&self) -> usize {
        1_000_000
    }
    /// Counts of the rules `sel` selects (OFPMP_AGGREGATE). The default
    /// goes through [`OpenFlowSwitch::flows`]; the daemon counts in place.
    fn aggregate(&self, sel: RuleSelector) -> Result<AggregateCounts, OfpError> {
        let mut c = AggregateCounts::default();
        for f in self.flows()?.iter().filter(|f| sel.selects_rule(&f.rule)) {
            c.flows += 1;
            c.packets += f.n_packets;
            c.bytes += f.n_bytes;
        }
        Ok(c)
    }
    /// A bundle's commit: every flow mod in order, as one new version, or
    /// (the index and error of the first that fails) no change at all.
    /// Shared, not copied: the session keeps it to quote a failing message.
    fn commit_flow_mods(&self, mods: Arc<BundledFlowMods>) -> Result<(), (usize, OfpError)>;
    /// OFPT_GROUP_MOD, as [`super::group_table::apply_group_mod`] (a delete
    /// takes the rules naming the group with it).
    fn group_mod(&self, gm: &GroupMod) -> Result<(), OfpError>;
    /// Every group with its counters.
    fn groups(&self) -> Result<Vec<GroupInfo>, OfpError>;
    /// OFPT_METER_MOD, as [`super::meter_table::apply_meter_mod`] (a
    /// delete takes the rules naming the meter with it).
    fn meter_mod(&self, mm: &MeterMod) -> Result<(), OfpError>;
    /// Every meter with its flow count.
    fn meters(&self) -> Result<Vec<MeterInfo>, OfpError>;
}
