//! xlate: a flow key through the OpenFlow pipeline → datapath actions and
//! the megaflow mask.
//!
//! The mask un-wildcards every bit that any table lookup or action depended
//! on (what each classifier lookup reports: the winner's mask, and for the
//! subtables it visited in vain the stages or trie prefixes that proved the
//! miss; NORMAL's MAC lookup; the prerequisites of set actions), so that
//! every packet matching the megaflow gets the same actions from a full
//! pipeline lookup. As in OVS, `in_port`,
//! `dl_type` and, for IP, `nw_frag` are always un-wildcarded, so is the
//! VLAN-present bit whenever any TCI bit is, and so is `nw_proto` whenever
//! an L4 field is.
//!
//! Set actions are committed lazily, just before the next output (as OVS's
//! `commit_odp_actions`): a set that no output follows is dropped, and each
//! field is written once per output with its final value.

use super::group::{self, GroupType};
use super::mac::{MacLearn, MacTable};
use super::table::{Pipeline, RuleId, TableSet};
use super::{ofport, OfAction, SetAction};
use crate::actions::DpAction;
use crate::key::{ethertype, frag, ipproto, Field, FlowKey, VLAN_CFI, VLAN_VID_MASK};

/// OVS's limits: translation depth and total resubmits per packet.
pub const MAX_DEPTH: usize = 64;
pub const MAX_RESUBMITS: usize = MAX_DEPTH * MAX_DEPTH;
/// Bound on datapath actions per packet (a runaway flood/resubmit mix).
pub const MAX_ACTIONS: usize = 1024;
/// Widen partial L4 port masks in megaflows of offloading ports to full
/// ones (see `xlate_hinted` and [`Bridge::widen_l4`]).
pub const OFFLOADABLE_PORT_MASKS: bool = true;

/// Why a translation ended in a drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XlateDrop {
    /// The top-level table had no matching rule.
    NoMatch,
    /// The rules asked for it (an empty or `drop` action list, or outputs
    /// that were all skipped).
    DropAction,
    /// Resubmit nesting deeper than [`MAX_DEPTH`].
    RecursionTooDeep,
    /// More than [`MAX_RESUBMITS`] resubmits, or more than [`MAX_ACTIONS`] actions.
    TooManyResubmits,
}

impl XlateDrop {
    pub fn as_str(self) -> &'static str {
        match self {
            XlateDrop::NoMatch => "no_matching_rule",
            XlateDrop::DropAction => "drop_action",
            XlateDrop::RecursionTooDeep => "resubmit_depth",
            XlateDrop::TooManyResubmits => "too_many_resubmits",
        }
    }
}

/// One step of a trace: a table lookup or a remark about an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceStep {
    /// Lookup in `table` at resubmit depth `depth`; `rule` is the match, if any.
    Lookup {
        depth: usize,
        table: u8,
        in_port: u32,
        rule: Option<RuleId>,
    },
    /// Something the translation skipped or decided, for people.
    Note { depth: usize, text: &'static str },
    /// A group's bucket ran (`None`: the group had no live bucket).
    Group {
        depth: usize,
        group: u32,
        bucket: Option<usize>,
    },
}

/// The result of translating one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xlation {
    /// Datapath actions; empty means drop.
    pub actions: Vec<DpAction>,
    /// The megaflow mask.
    pub mask: FlowKey,
    /// The OpenFlow rules whose actions ran, in order (the xlate cache).
    pub rules: Vec<RuleId>,
    pub trace: Vec<TraceStep>,
    /// The source MAC NORMAL saw, for the caller to learn or refresh.
    pub learn: Option<MacLearn>,
    /// Set when `actions` is empty: why.
    pub drop: Option<XlateDrop>,
    /// What the translation consulted: which changes can alter it.
    pub deps: XlateDeps,
}

/// What a translation depended on beyond its megaflow's own bits, so that
/// revalidation re-translates only the megaflows a change can affect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XlateDeps {
    /// Tables looked up with the packet as it arrived: a rule added there
    /// matters only if it overlaps the megaflow.
    pub tables: TableSet,
    /// Tables looked up after actions changed the packet (set-field,
    /// resubmit to another port, metadata): any rule added there matters.
    pub tables_rewritten: TableSet,
    /// NORMAL's MAC table lookup (destination, VLAN), if it made exactly one.
    pub mac: Option<(u64, u16)>,
    /// NORMAL looked up more than one destination.
    pub mac_any: bool,
    /// The bridge's port list mattered (flooding, or an output skipped
    /// because the port does not exist).
    pub ports: bool,
}

impl XlateDeps {
    /// Depends on everything (a megaflow whose dependencies are unknown).
    pub const ALL: XlateDeps = XlateDeps {
        tables: TableSet::ALL,
        tables_rewritten: TableSet::ALL,
        mac: None,
        mac_any: true,
        ports: true,
    };

    /// True when the MAC table's answer for `(mac, vlan)` can matter.
    pub fn uses_mac(&self, mac: u64, vlan: u16) -> bool {
        self.mac_any || self.mac == Some((mac, vlan))
    }

    pub fn uses_macs(&self) -> bool {
        self.mac_any || self.mac.is_some()
    }
}

/// What xlate needs to know about the bridge.
#[derive(Clone, Copy)]
pub struct Bridge<'a> {
    pub pipeline: &'a Pipeline,
    pub macs: &'a MacTable,
    /// The bridge's OpenFlow port numbers, sorted (FLOOD/NORMAL output to
    /// these; outputs to other numbers are skipped as OVS skips outputs to
    /// nonexistent ports).
    pub ports: &'a [u32],
    /// The ingress ports (sorted) whose megaflows go to a NIC, which takes
    /// L4 ports with a full mask only: their megaflows widen partial port
    /// masks to full ones. `None`: every port's do.
    pub widen_l4: Option<&'a [u32]>,
}

/// Fields a set action may write, in the order they are committed.
const COMMIT_ORDER: [Field; 13] = [
    Field::DlSrc,
    Field::DlDst,
    Field::VlanTci,
    Field::VlanPcp,
    Field::NwSrc,
    Field::NwDst,
    Field::Ipv6Src,
    Field::Ipv6Dst,
    Field::NwTos,
    Field::NwEcn,
    Field::NwTtl,
    Field::TpSrc,
    Field::TpDst,
];

struct Ctx<'a> {
    bridge: Bridge<'a>,
    /// The packet as the actions so far have made it.
    flow: FlowKey,
    wc: FlowKey,
    /// Fields set since the last commit (bit i = COMMIT_ORDER[i]).
    dirty: u16,
    actions: Vec<DpAction>,
    rules: Vec<RuleId>,
    /// Steps are recorded only for `ofproto/trace` ([`xlate_traced`]): an
    /// upcall would allocate and fill a list nobody reads.
    tracing: bool,
    trace: Vec<TraceStep>,
    learn: Option<MacLearn>,
    depth: usize,
    resubmits: usize,
    error: Option<XlateDrop>,
    hint: Option<FlowKey>,
    /// The actions running are a table-miss rule's (priority 0, matching
    /// everything): its `controller` punts say NO_MATCH.
    in_miss_rule: bool,
    /// The OpenFlow 1.3 action set (`write_actions`), run when the
    /// pipeline ends, with the table and cookie of the rule that wrote last.
    action_set: Vec<SetAction>,
    set_origin: (u8, u64),
    /// The packet as it arrived (lookups on anything else are "rewritten").
    arrived: FlowKey,
    deps: XlateDeps,
}

/// Translates `key` through the bridge's pipeline, starting at table 0.
pub fn xlate(bridge: Bridge<'_>, key: &FlowKey) -> Xlation {
    xlate_hinted(bridge, key, None)
}

/// [`xlate`] with the steps recorded in [`Xlation::trace`], for
/// `ofproto/trace`.
pub fn xlate_traced(bridge: Bridge<'_>, key: &FlowKey) -> Xlation {
    let mut ctx = Ctx::new(bridge, key, None, XlateBuffers::default());
    ctx.tracing = true;
    finish(ctx, key)
}

/// [`xlate`] into `bufs`' lists (a PMD's upcalls: no list allocated per
/// translation once they have grown); give them back with
/// [`XlateBuffers::recycle`].
pub fn xlate_reusing(bridge: Bridge<'_>, key: &FlowKey, bufs: &mut XlateBuffers) -> Xlation {
    finish(Ctx::new(bridge, key, None, std::mem::take(bufs)), key)
}

/// The lists a translation fills, kept between translations by a caller
/// that makes many (see [`xlate_reusing`]).
#[derive(Default)]
pub struct XlateBuffers {
    actions: Vec<DpAction>,
    rules: Vec<RuleId>,
}

impl XlateBuffers {
    /// Takes back the lists of a translation made by [`xlate_reusing`],
    /// emptied, for the next one.
    pub fn recycle(&mut self, x: Xlation) {
        let (mut actions, mut rules) = (x.actions, x.rules);
        actions.clear();
        rules.clear();
        self.actions = actions;
        self.rules = rules;
    }
}

/// [`xlate`] for revalidation: `key` is a packet of an existing megaflow and
/// `hint` its mask; rules that do not match are proven not to with bits of
/// the hint where possible, so an unchanged decision gives a mask inside the
/// old one (and the megaflow, with its NIC rule, stays).
pub fn xlate_hinted(bridge: Bridge<'_>, key: &FlowKey, hint: Option<&FlowKey>) -> Xlation {
    finish(
        Ctx::new(bridge, key, hint.copied(), XlateBuffers::default()),
        key,
    )
}

/// Runs the pipeline from table 0 and makes the megaflow's mask and action
/// list of what it consulted and did.
fn finish(mut ctx: Ctx<'_>, key: &FlowKey) -> Xlation {
    let bridge = ctx.bridge;
    ctx.wc.set_exact(Field::InPort);
    ctx.wc.set_exact(Field::DlType);
    if key.is_ip() {
        ctx.wc.set(Field::NwFrag, frag::MASK as u128);
    }

    let matched = ctx.table_lookup(0);
    ctx.run_action_set();
    // Metadata is zero when a packet enters and every write to it follows
    // from bits the mask already holds: not part of the megaflow.
    ctx.wc.set(Field::Metadata, 0);
    let mut wc = ctx.wc;
    if wc.get(Field::VlanTci) != 0 {
        wc.or_field(Field::VlanTci, VLAN_CFI as u128);
    }
    // L4 fields mean nothing without their protocol: as in OVS, a megaflow
    // that matches them matches nw_proto exactly (only narrower, so sound).
    if wc.get(Field::TpSrc) | wc.get(Field::TpDst) | wc.get(Field::TcpFlags) != 0 {
        wc.set_exact(Field::NwProto);
    }
    // A NIC takes L4 ports with a full mask only (DESIGN §2 `translate`):
    // a port prefix (a rule's, or the bits a port trie needed to prove a
    // miss) is widened to the whole port, a narrower and still sound
    // megaflow that can be offloaded.
    // Megaflows of a port without NIC offload (a VM port, a NIC without
    // rte_flow) keep the minimal mask, as in OVS: fewer megaflows.
    let offloaded = bridge
        .widen_l4
        .is_none_or(|ports| ports.binary_search(&key.in_port()).is_ok());
    if OFFLOADABLE_PORT_MASKS && offloaded {
        for f in [Field::TpSrc, Field::TpDst] {
            if wc.get(f) != 0 {
                wc.set_exact(f);
            }
        }
    }
    let no_output = if matched {
        XlateDrop::DropAction
    } else {
        XlateDrop::NoMatch
    };
    ctx.into_xlation(wc, no_output)
}

/// Translates a packet-out: `actions` run on `key` (whose `in_port` is the
/// packet-out's, possibly [`ofport::CONTROLLER`]) as a rule's actions would,
/// with output to TABLE (`resubmit(,0)`) running the pipeline from table 0.
/// `controller` actions punt with table [`PACKET_OUT_TABLE`] and cookie
/// [`PACKET_OUT_COOKIE`], as Open vSwitch reports them. No megaflow is made
/// of it (the mask is not needed), and MAC learning by NORMAL is left to
/// the caller (`learn`).
pub fn xlate_actions(bridge: Bridge<'_>, key: &FlowKey, actions: &[OfAction]) -> Xlation {
    let mut ctx = Ctx::new(bridge, key, None, XlateBuffers::default());
    ctx.do_actions(actions, PACKET_OUT_TABLE, PACKET_OUT_COOKIE);
    // Output to TABLE ran a pipeline: its action set runs at its end.
    ctx.run_action_set();
    let mask = ctx.wc;
    ctx.into_xlation(mask, XlateDrop::DropAction)
}

/// The table and cookie a packet-out's own `controller` action reports.
pub const PACKET_OUT_TABLE: u8 = 0xff;
pub const PACKET_OUT_COOKIE: u64 = u64::MAX;

impl<'a> Ctx<'a> {
    /// A translation of `key` that has consulted nothing yet.
    fn new(bridge: Bridge<'a>, key: &FlowKey, hint: Option<FlowKey>, bufs: XlateBuffers) -> Self {
        // As OVS's default fragment handling ("normal"): the pipeline sees
        // a fragment's L4 ports (ICMP type and code too) as 0, first
        // fragments included; a rule on them matches the ports 0.
        let mut flow = *key;
        if key.is_ip() && key.get(Field::NwFrag) & u128::from(frag::ANY) != 0 {
            flow.set(Field::TpSrc, 0);
            flow.set(Field::TpDst, 0);
        }
        Ctx {
            bridge,
            flow,
            wc: FlowKey::ZERO,
            dirty: 0,
            actions: bufs.actions,
            rules: bufs.rules,
            tracing: false,
            trace: Vec::new(),
            learn: None,
            depth: 0,
            resubmits: 0,
            error: None,
            hint,
            in_miss_rule: false,
            action_set: Vec::new(),
            set_origin: (0, 0),
            // As it arrived: a fragment's lookups count as on a rewritten
            // packet, which revalidation treats conservatively.
            arrived: *key,
            deps: XlateDeps::default(),
        }
    }
}

impl Ctx<'_> {
    /// The translation's result with megaflow mask `mask`; `no_output` is
    /// why it drops if its list never outputs.
    fn into_xlation(self, mask: FlowKey, no_output: XlateDrop) -> Xlation {
        // A list that never outputs drops the packet, even when it pushed or
        // popped a tag on the way (those are emitted before the next output,
        // as sets are committed, but no output came): DESIGN §6 counts such a
        // packet as a drop, not as forwarded.
        let sends = self
            .actions
            .iter()
            .any(|a| matches!(a, DpAction::Output(_) | DpAction::Controller { .. }));
        let drop = match self.error {
            Some(e) => Some(e),
            None if !sends => Some(no_output),
            None => None,
        };
        let mut actions = self.actions;
        if drop.is_some() {
            // Emptied, not replaced: a reused list keeps its room.
            actions.clear();
        }
        Xlation {
            actions,
            mask,
            rules: self.rules,
            trace: self.trace,
            learn: self.learn,
            drop,
            deps: self.deps,
        }
    }

    fn note(&mut self, text: &'static str) {
        if !self.tracing {
            return;
        }
        self.trace.push(TraceStep::Note {
            depth: self.depth,
            text,
        });
    }

    /// Looks `flow` up in `table` and runs the matching rule's actions.
    /// Returns whether a rule matched.
    fn table_lookup(&mut self, table: u8) -> bool {
        let pipeline = self.bridge.pipeline;
        if self.flow == self.arrived {
            self.deps.tables.insert(table);
        } else {
            self.deps.tables_rewritten.insert(table);
        }
        let entry = pipeline.lookup_hinted(table, &self.flow, &mut self.wc, self.hint.as_ref());
        if self.tracing {
            self.trace.push(TraceStep::Lookup {
                depth: self.depth,
                table,
                in_port: self.flow.in_port(),
                rule: entry.map(|e| e.id),
            });
        }
        match entry {
            Some(e) => {
                self.rules.push(e.id);
                let outer = self.in_miss_rule;
                self.in_miss_rule = e.priority() == 0 && *e.mask() == FlowKey::ZERO;
                self.do_actions(e.actions(), table, e.cookie());
                self.in_miss_rule = outer;
                true
            }
            None => false,
        }
    }

    fn do_actions(&mut self, actions: &[OfAction], table: u8, cookie: u64) {
        for a in actions {
            if self.error.is_some() {
                return;
            }
            match *a {
                OfAction::Output(p) => self.output(p, table, cookie),
                OfAction::InPort => {
                    let p = self.flow.in_port();
                    self.emit_output(p);
                }
                OfAction::Flood | OfAction::All => self.flood(),
                OfAction::Normal => self.normal(),
                OfAction::Controller { max_len } => {
                    self.commit();
                    self.push_action(DpAction::Controller {
                        table,
                        cookie,
                        max_len,
                        miss: self.in_miss_rule,
                    });
                }
                OfAction::Mod(f, v) => self.set_field(f, v, true),
                OfAction::SetField(f, v) => self.set_field(f, v, false),
                OfAction::DecTtl => {
                    if !self.flow.is_ip() {
                        continue;
                    }
                    self.wc.set_exact(Field::NwTtl);
                    let ttl = self.flow.get(Field::NwTtl) as u8;
                    if ttl <= 1 {
                        // OVS: the packet would go to the controller as
                        // "invalid TTL"; this action list stops here.
                        self.note("dec_ttl: TTL exceeded, remaining actions skipped");
                        return;
                    }
                    self.flow.set(Field::NwTtl, (ttl - 1) as u128);
                    self.mark_dirty(Field::NwTtl);
                }
                OfAction::StripVlan => {
                    self.wc.or_field(Field::VlanTci, VLAN_CFI as u128);
                    if self.flow.vlan_tci() & VLAN_CFI != 0 {
                        self.commit();
                        self.push_action(DpAction::PopVlan);
                        self.flow.set(Field::VlanTci, 0);
                    }
                }
                OfAction::PushVlan(tpid) => {
                    self.commit();
                    self.push_action(DpAction::PushVlan(tpid));
                    // The new outer tag has VID 0, PCP 0 (the inner one, if
                    // any, is no longer visible to matches).
                    self.flow.set(Field::VlanTci, VLAN_CFI as u128);
                }
                OfAction::Resubmit { port, table: t } => self.resubmit(port, t.unwrap_or(table)),
                OfAction::Write(a) => {
                    SetAction::write(&mut self.action_set, a);
                    self.set_origin = (table, cookie);
                }
                OfAction::ClearActions => self.action_set.clear(),
                OfAction::WriteMetadata { value, mask } => {
                    let cur = self.flow.get(Field::Metadata) as u64;
                    let new = (cur & !mask) | (value & mask);
                    self.flow.set(Field::Metadata, u128::from(new));
                }
                // The pipeline goes on in a later table (a miss there ends it).
                OfAction::GotoTable(t) => self.resubmit(None, t),
                OfAction::Group(g) => self.group(g, table, cookie),
                // The datapath meters the packet here; no pending set needs
                // committing before it (a meter reads only the length).
                OfAction::Meter(m) => self.push_action(DpAction::Meter(m)),
            }
        }
    }

    /// The end of the pipeline: the action set runs, in its order.
    fn run_action_set(&mut self) {
        if self.action_set.is_empty() || self.error.is_some() {
            return;
        }
        let set = SetAction::run_order(&std::mem::take(&mut self.action_set));
        let (table, cookie) = self.set_origin;
        self.do_actions(&set, table, cookie);
    }

    fn resubmit(&mut self, port: Option<u32>, table: u8) {
        self.resubmits += 1;
        if self.depth + 1 >= MAX_DEPTH {
            self.note("resubmit: over the maximum translation depth 64, packet dropped");
            self.error = Some(XlateDrop::RecursionTooDeep);
            return;
        }
        if self.resubmits > MAX_RESUBMITS {
            self.note("resubmit: over the maximum of 4096 resubmits, packet dropped");
            self.error = Some(XlateDrop::TooManyResubmits);
            return;
        }
        let saved_port = self.flow.in_port();
        if let Some(p) = port {
            if p != ofport::IN_PORT {
                self.flow.set(Field::InPort, p as u128);
            }
        }
        self.depth += 1;
        if !self.table_lookup(table) {
            self.note("no match in the resubmitted table: the action list continues");
        }
        self.depth -= 1;
        self.flow.set(Field::InPort, saved_port as u128);
    }

    /// `group:N`: the group's buckets, each on a copy of the packet.
    fn group(&mut self, id: u32, table: u8, cookie: u64) {
        // A group costs what a resubmit does (OVS: a bucket chain that
        // loops ends on the same limits).
        self.resubmits += 1;
        if self.depth + 1 >= MAX_DEPTH || self.resubmits > MAX_RESUBMITS {
            self.note("group: over the translation limits, packet dropped");
            self.error = Some(if self.depth + 1 >= MAX_DEPTH {
                XlateDrop::RecursionTooDeep
            } else {
                XlateDrop::TooManyResubmits
            });
            return;
        }
        let pipeline = self.bridge.pipeline;
        let Some(g) = pipeline.group(id) else {
            self.note("group: no such group, action skipped");
            return;
        };
        self.rules
            .push(group::credit::id(g.serial, group::credit::GROUP_ITSELF));
        match g.kind {
            GroupType::All | GroupType::Indirect => {
                for i in 0..g.buckets.len() {
                    self.bucket(g, i, table, cookie);
                }
            }
            GroupType::Select => match self.select_bucket(g) {
                Some(i) => self.bucket(g, i, table, cookie),
                None => self.trace_group(g.id, None),
            },
            GroupType::FastFailover => {
                match (0..g.buckets.len()).find(|&i| self.bucket_live(g, i, 0)) {
                    Some(i) => self.bucket(g, i, table, cookie),
                    None => self.trace_group(g.id, None),
                }
            }
        }
    }

    /// Runs bucket `i` of `g` on a copy of the packet: afterwards the flow
    /// is as before it, and the datapath actions undo on the packet what the
    /// bucket changed (lazily, as sets are committed).
    fn trace_group(&mut self, group: u32, bucket: Option<usize>) {
        if self.tracing {
            self.trace.push(TraceStep::Group {
                depth: self.depth,
                group,
                bucket,
            });
        }
    }

    fn bucket(&mut self, g: &group::Group, i: usize, table: u8, cookie: u64) {
        self.rules.push(group::credit::id(g.serial, i as u16));
        self.trace_group(g.id, Some(i));
        let Some(exec) = g.exec.get(i).filter(|e| !e.is_empty()) else {
            return;
        };
        self.commit();
        let saved = self.flow;
        let first = self.actions.len();
        self.depth += 1;
        self.do_actions(exec, table, cookie);
        self.depth -= 1;
        if self.error.is_some() {
            return;
        }
        // Sets still pending are written so the packet's state is the
        // flow's; those the restore undoes follow.
        self.commit();
        let pushed = self.actions[first..]
            .iter()
            .map(|a| match a {
                DpAction::PushVlan(_) => 1i32,
                DpAction::PopVlan => -1,
                _ => 0,
            })
            .sum::<i32>();
        for _ in 0..pushed.max(0) {
            self.push_action(DpAction::PopVlan);
        }
        for _ in 0..(-pushed).max(0) {
            self.push_action(DpAction::PushVlan(ethertype::VLAN));
        }
        if pushed < 0 {
            // The re-pushed tag gets the saved TCI written.
            self.flow.set(Field::VlanTci, 0);
        }
        // The fields the bucket wrote are written back with the packet's
        // own values where they differ: whether and what to write depends
        // on those values, so the megaflow matches them exactly (also where
        // the bucket happened to write the value the packet had).
        let mut written = 0u16;
        for a in &self.actions[first..] {
            if let DpAction::Set(f, _) = a {
                if let Some(b) = COMMIT_ORDER.iter().position(|c| c == f) {
                    written |= 1 << b;
                }
            }
        }
        for (b, f) in COMMIT_ORDER.iter().enumerate() {
            // A tag the bucket pushed is gone again with what it set.
            let vlan = matches!(f, Field::VlanTci | Field::VlanPcp);
            if written & (1 << b) == 0 || (vlan && pushed > 0) {
                continue;
            }
            if vlan {
                self.wc.or_field(Field::VlanTci, 0xffff);
            } else {
                self.wc.set_exact(*f);
            }
            if self.flow.get(*f) != saved.get(*f) {
                self.dirty |= 1 << b;
            }
        }
        if pushed < 0 {
            self.mark_dirty(Field::VlanTci);
            self.mark_dirty(Field::VlanPcp);
            self.wc.or_field(Field::VlanTci, 0xffff);
        }
        self.flow = saved;
    }

    /// A select group's bucket: the best-scoring live bucket for a hash of
    /// the flow's addresses, protocol and ports, whose bits the megaflow
    /// keeps (OVS's default selection, symmetric: both directions of a
    /// connection pick the same bucket).
    fn select_bucket(&mut self, g: &group::Group) -> Option<usize> {
        let f = self.flow;
        let v4 = f.dl_type() == ethertype::IPV4;
        let v6 = f.dl_type() == ethertype::IPV6;
        let l4 = f.is_ip() && matches!(f.nw_proto(), ipproto::TCP | ipproto::UDP | ipproto::SCTP);
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut pair = |a: u128, b: u128| {
            // Symmetric: the two ends of a pair mix in one order.
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            for v in [lo, hi] {
                hash = (hash ^ v as u64 ^ (v >> 64) as u64).wrapping_mul(0x0000_0100_0000_01b3);
                hash ^= hash >> 29;
            }
        };
        let vid = f.vlan_tci() & (VLAN_CFI | VLAN_VID_MASK);
        pair(f.get(Field::DlSrc), f.get(Field::DlDst));
        pair(f.get(Field::DlType), u128::from(vid));
        self.wc.set_exact(Field::DlSrc);
        self.wc.set_exact(Field::DlDst);
        self.wc
            .or_field(Field::VlanTci, (VLAN_CFI | VLAN_VID_MASK) as u128);
        let addrs = if v4 {
            Some((Field::NwSrc, Field::NwDst))
        } else if v6 {
            Some((Field::Ipv6Src, Field::Ipv6Dst))
        } else {
            None
        };
        if let Some((src, dst)) = addrs {
            pair(f.get(src), f.get(dst));
            pair(f.get(Field::NwProto), 0);
            self.wc.set_exact(src);
            self.wc.set_exact(dst);
            self.wc.set_exact(Field::NwProto);
        }
        if l4 {
            pair(f.get(Field::TpSrc), f.get(Field::TpDst));
            self.wc.set_exact(Field::TpSrc);
            self.wc.set_exact(Field::TpDst);
        }
        let mut best: Option<(u64, usize)> = None;
        for (i, b) in g.buckets.iter().enumerate() {
            if b.weight == 0 || !self.bucket_live(g, i, 0) {
                continue;
            }
            let mut h = (hash ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 33;
            let score = (h & 0xffff) * u64::from(b.weight);
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// A bucket is live when it watches nothing, or a port the bridge has,
    /// or a group with a live bucket.
    fn bucket_live(&mut self, g: &group::Group, i: usize, depth: usize) -> bool {
        let Some(b) = g.buckets.get(i) else {
            return false;
        };
        if !b.has_liveness() {
            return true;
        }
        if depth >= group::MAX_LIVENESS_DEPTH {
            self.note("group: watched groups chained too deep, bucket not live");
            return false;
        }
        if b.watch_port != ofport::NONE {
            self.deps.ports = true;
            if self.bridge.ports.binary_search(&b.watch_port).is_ok() {
                return true;
            }
        }
        if b.watch_group != group::GROUP_ANY {
            let pipeline = self.bridge.pipeline;
            if let Some(w) = pipeline.group(b.watch_group) {
                if (0..w.buckets.len()).any(|j| self.bucket_live(w, j, depth + 1)) {
                    return true;
                }
            }
        }
        false
    }

    fn push_action(&mut self, a: DpAction) {
        if self.actions.len() >= MAX_ACTIONS {
            self.error = Some(XlateDrop::TooManyResubmits);
            return;
        }
        self.actions.push(a);
    }

    fn mark_dirty(&mut self, f: Field) {
        if let Some(i) = COMMIT_ORDER.iter().position(|c| *c == f) {
            self.dirty |= 1 << i;
        }
    }

    /// Writes the pending set actions before an output.
    fn commit(&mut self) {
        if self.dirty == 0 {
            return;
        }
        for (i, f) in COMMIT_ORDER.iter().enumerate() {
            if self.dirty & (1 << i) == 0 {
                continue;
            }
            let v = match f {
                Field::VlanTci => self.flow.vlan_tci() as u128 & VLAN_VID_MASK as u128,
                Field::NwTos => self.flow.get(Field::NwTos) & 0xfc,
                _ => self.flow.get(*f),
            };
            self.push_action(DpAction::Set(*f, v));
        }
        self.dirty = 0;
    }

    /// `mod_*` (`push_if_absent`: `mod_vlan_vid` adds a tag to an untagged
    /// packet, as in OpenFlow 1.0) and `set_field` (needs the header).
    fn set_field(&mut self, f: Field, v: u128, push_if_absent: bool) {
        let dl_type = self.flow.dl_type();
        let is_ipv4 = dl_type == ethertype::IPV4;
        let applies = match f {
            Field::DlSrc | Field::DlDst => true,
            Field::NwSrc | Field::NwDst => is_ipv4,
            Field::Ipv6Src | Field::Ipv6Dst => dl_type == ethertype::IPV6,
            Field::NwTos | Field::NwEcn | Field::NwTtl => self.flow.is_ip(),
            Field::TpSrc | Field::TpDst => {
                if !self.flow.is_ip() {
                    false
                } else {
                    self.wc.set_exact(Field::NwProto);
                    matches!(
                        self.flow.nw_proto(),
                        ipproto::TCP | ipproto::UDP | ipproto::SCTP
                    )
                }
            }
            Field::VlanTci | Field::VlanPcp => {
                self.wc.or_field(Field::VlanTci, VLAN_CFI as u128);
                if self.flow.vlan_tci() & VLAN_CFI == 0 {
                    if !push_if_absent {
                        false
                    } else {
                        self.commit();
                        self.push_action(DpAction::PushVlan(ethertype::VLAN));
                        self.flow.set(Field::VlanTci, VLAN_CFI as u128);
                        true
                    }
                } else {
                    true
                }
            }
            _ => false,
        };
        if !applies {
            self.note("set action skipped: the packet lacks that header");
            return;
        }
        match f {
            Field::VlanTci => {
                let tci = (self.flow.vlan_tci() & !VLAN_VID_MASK) | (v as u16 & VLAN_VID_MASK);
                self.flow.set(Field::VlanTci, tci as u128);
            }
            Field::NwTos => {
                let tos = (self.flow.get(Field::NwTos) as u8 & 0x03) | (v as u8 & 0xfc);
                self.flow.set(Field::NwTos, tos as u128);
            }
            _ => self.flow.set(f, v),
        }
        self.mark_dirty(f);
    }

    /// `output:N`, with OVS's rules for reserved and unusable ports.
    fn output(&mut self, p: u32, table: u8, cookie: u64) {
        match p {
            ofport::IN_PORT => {
                let ip = self.flow.in_port();
                self.emit_output(ip)
            }
            ofport::FLOOD | ofport::ALL => self.flood(),
            ofport::NORMAL => self.normal(),
            ofport::CONTROLLER => {
                self.commit();
                // OFPCML_NO_BUFFER: the whole packet.
                self.push_action(DpAction::Controller {
                    table,
                    cookie,
                    max_len: 0xffff,
                    miss: self.in_miss_rule,
                });
            }
            _ if p == self.flow.in_port() => {
                self.note("skipping output to input port");
            }
            _ => self.emit_output(p),
        }
    }

    fn emit_output(&mut self, p: u32) {
        if self.bridge.ports.binary_search(&p).is_err() {
            self.deps.ports = true;
            self.note("output to a port the bridge does not have: skipped");
            return;
        }
        self.commit();
        self.push_action(DpAction::Output(p));
    }

    fn flood(&mut self) {
        self.deps.ports = true;
        let in_port = self.flow.in_port();
        for &p in self.bridge.ports {
            if p != in_port {
                self.commit();
                self.push_action(DpAction::Output(p));
            }
        }
    }

    /// NORMAL: an L2 learning switch (all ports trunks).
    fn normal(&mut self) {
        self.wc.set_exact(Field::DlSrc);
        self.wc.set_exact(Field::DlDst);
        self.wc
            .or_field(Field::VlanTci, (VLAN_CFI | VLAN_VID_MASK) as u128);
        let src = self.flow.get(Field::DlSrc) as u64;
        let dst = self.flow.get(Field::DlDst) as u64;
        let vlan = self.flow.vlan_tci() & VLAN_VID_MASK;
        let in_port = self.flow.in_port();
        if is_multicast(src) {
            self.note("NORMAL: source MAC is multicast, dropped");
            return;
        }
        if dst & 0xffff_ffff_fff0 == 0x0180_c200_0000 {
            self.note("NORMAL: reserved multicast destination (STP/LLDP), dropped");
            return;
        }
        // Always reported, learned or not: the megaflow keeps it so that its
        // traffic refreshes the entry (OVS refreshes learning from megaflow
        // statistics, not only on upcalls).
        self.learn = Some(MacLearn {
            mac: src,
            vlan,
            port: in_port,
        });
        if is_multicast(dst) {
            self.flood();
            return;
        }
        if dst == src {
            // OVS learns the source before it looks the destination up: a
            // frame to its own source MAC is for the input port.
            self.note("NORMAL: destination is the source, learned on the input port, dropped");
            return;
        }
        match self.deps.mac {
            None if !self.deps.mac_any => self.deps.mac = Some((dst, vlan)),
            Some(m) if m == (dst, vlan) => {}
            _ => self.deps.mac_any = true,
        }
        match self.bridge.macs.lookup(dst, vlan) {
            Some(p) if p == in_port => {
                self.note("NORMAL: destination learned on the input port, dropped")
            }
            Some(p) => self.emit_output(p),
            None => self.flood(),
        }
    }
}

fn is_multicast(mac: u64) -> bool {
    mac & 0x0100_0000_0000 != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ofproto::{Match, Rule};

    fn rule(table: u8, priority: u16, m: Match, actions: Vec<OfAction>) -> Rule {
        Rule {
            table,
            priority,
            r#match: m,
            actions,
            cookie: 0,
            idle_timeout: 0,
            hard_timeout: 0,
        }
    }

    fn udp_key(in_port: u32, src: u32, dst: u32, sport: u16, dport: u16) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set(Field::InPort, in_port as u128);
        k.set(Field::DlType, 0x0800);
        k.set(Field::NwProto, 17);
        k.set(Field::NwSrc, src as u128);
        k.set(Field::NwDst, dst as u128);
        k.set(Field::TpSrc, sport as u128);
        k.set(Field::TpDst, dport as u128);
        k.set(Field::NwTtl, 64);
        k
    }

    fn udp_match() -> Match {
        let mut m = Match::ANY;
        m.set_exact(Field::DlType, 0x0800);
        m.set_exact(Field::NwProto, 17);
        m
    }

    const PORTS: [u32; 3] = [1, 2, 3];

    fn run(p: &Pipeline, k: &FlowKey) -> Xlation {
        let macs = MacTable::default();
        xlate(test_bridge(p, &macs), k)
    }

    /// [`run`] recording the trace steps.
    fn run_traced(p: &Pipeline, k: &FlowKey) -> Xlation {
        let macs = MacTable::default();
        xlate_traced(test_bridge(p, &macs), k)
    }

    fn test_bridge<'a>(p: &'a Pipeline, macs: &'a MacTable) -> Bridge<'a> {
        Bridge {
            pipeline: p,
            macs,
            ports: &PORTS,
            widen_l4: None,
        }
    }

    #[test]
    fn gtp_rewrite_then_output() {
        let mut p = Pipeline::new();
        let mut m = udp_match();
        m.set_exact(Field::NwDst, 0xc0a8_c803);
        m.set_exact(Field::TpSrc, 2152);
        p.add(rule(
            0,
            1,
            m,
            vec![
                OfAction::Mod(Field::NwSrc, 0xc0a8_c8bc),
                OfAction::Output(2),
            ],
        ));
        p.add(rule(0, 0, Match::ANY, vec![OfAction::Normal]));
        let x = run(&p, &udp_key(1, 0x0a01_0203, 0xc0a8_c803, 2152, 9));
        let s: Vec<String> = x.actions.iter().map(|a| a.to_string()).collect();
        assert_eq!(s, ["mod_nw_src:192.168.200.188", "output:2"]);
        assert_eq!(x.mask.get(Field::TpSrc), 0xffff);
        assert_eq!(x.mask.get(Field::TpDst), 0);
        assert_eq!(x.mask.get(Field::NwFrag), frag::MASK as u128);
        assert_eq!(x.mask.get(Field::InPort), u32::MAX as u128);
        assert_eq!(x.drop, None);
    }

    #[test]
    fn l4_mismatch_unwildcards_the_protocol_too() {
        let mut p = Pipeline::new();
        let mut m = udp_match();
        m.set_exact(Field::TpSrc, 2152);
        p.add(rule(0, 2, m, vec![OfAction::Output(2)]));
        p.add(rule(0, 1, Match::ANY, vec![OfAction::Output(3)]));
        let x = run(&p, &udp_key(1, 1, 2, 2123, 2123));
        assert_eq!(x.actions, vec![DpAction::Output(3)]);
        assert_eq!(x.mask.get(Field::TpSrc), 0xffff);
        assert_eq!(x.mask.get(Field::NwProto), 0xff);
    }

    #[test]
    fn output_to_input_port_is_skipped() {
        let mut p = Pipeline::new();
        p.add(rule(
            0,
            1,
            Match::ANY,
            vec![OfAction::Output(1), OfAction::Output(2)],
        ));
        let x = run(&p, &udp_key(1, 1, 2, 3, 4));
        assert_eq!(x.actions, vec![DpAction::Output(2)]);
        let x = run(&p, &udp_key(2, 1, 2, 3, 4));
        assert_eq!(x.actions, vec![DpAction::Output(1)]);
        p.add(rule(0, 2, Match::ANY, vec![OfAction::InPort]));
        assert_eq!(
            run(&p, &udp_key(2, 1, 2, 3, 4)).actions,
            vec![DpAction::Output(2)]
        );
    }

    #[test]
    fn miss_inside_resubmit_continues() {
        let mut p = Pipeline::new();
        p.add(rule(
            0,
            1,
            Match::ANY,
            vec![
                OfAction::Resubmit {
                    port: None,
                    table: Some(5),
                },
                OfAction::Output(3),
            ],
        ));
        let key = udp_key(1, 1, 2, 3, 4);
        let x = run(&p, &key);
        assert_eq!(x.actions, vec![DpAction::Output(3)]);
        assert!(x.trace.is_empty(), "only xlate_traced records steps");
        let traced = run_traced(&p, &key);
        assert_eq!(traced.trace.len(), 3);
        assert_eq!(
            Xlation {
                trace: Vec::new(),
                ..traced
            },
            x
        );
        // Reused lists give the same translation, and keep their room.
        let mut bufs = XlateBuffers::default();
        let macs = MacTable::default();
        for _ in 0..3 {
            let again = xlate_reusing(test_bridge(&p, &macs), &key, &mut bufs);
            assert_eq!(again, x);
            bufs.recycle(again);
            assert!(bufs.actions.is_empty() && bufs.actions.capacity() >= 1);
            assert!(bufs.rules.is_empty() && bufs.rules.capacity() >= 2);
        }
    }

    #[test]
    fn top_level_miss_and_drop_reasons() {
        let mut p = Pipeline::new();
        assert_eq!(
            run(&p, &udp_key(1, 1, 2, 3, 4)).drop,
            Some(XlateDrop::NoMatch)
        );
        p.add(rule(0, 1, Match::ANY, vec![]));
        assert_eq!(
            run(&p, &udp_key(1, 1, 2, 3, 4)).drop,
            Some(XlateDrop::DropAction)
        );
    }

    fn run_actions(p: &Pipeline, k: &FlowKey, actions: &[OfAction]) -> Xlation {
        let macs = MacTable::default();
        xlate_actions(
            Bridge {
                pipeline: p,
                macs: &macs,
                ports: &PORTS,
                widen_l4: None,
            },
            k,
            actions,
        )
    }

    #[test]
    fn the_action_set_runs_at_the_end_of_the_pipeline() {
        use crate::ofproto::SetAction;
        let mut p = Pipeline::new();
        p.add(rule(
            0,
            1,
            udp_match(),
            vec![
                OfAction::Write(SetAction::Output(3)),
                OfAction::Write(SetAction::Mod(Field::NwTtl, 7)),
                OfAction::GotoTable(1),
            ],
        ));
        let mut m = udp_match();
        m.set_exact(Field::TpDst, 4);
        // Apply output:1 now; the set's output becomes 2 (replaced), and
        // the TTL set runs before it (set-fields before output).
        p.add(rule(
            1,
            1,
            m,
            vec![OfAction::Output(1), OfAction::Write(SetAction::Output(2))],
        ));
        let mut m = udp_match();
        m.set_exact(Field::TpDst, 5);
        p.add(rule(
            1,
            1,
            m,
            vec![OfAction::Output(1), OfAction::ClearActions],
        ));
        let x = run(&p, &udp_key(3, 1, 2, 3, 4));
        assert_eq!(
            x.actions,
            vec![
                DpAction::Output(1),
                DpAction::Set(Field::NwTtl, 7),
                DpAction::Output(2)
            ]
        );
        let x = run(&p, &udp_key(3, 1, 2, 3, 5));
        assert_eq!(x.actions, vec![DpAction::Output(1)], "cleared");
        // A miss in table 1: the set written so far still runs.
        let x = run(&p, &udp_key(2, 1, 2, 3, 6));
        assert_eq!(
            x.actions,
            vec![DpAction::Set(Field::NwTtl, 7), DpAction::Output(3)]
        );
    }

    #[test]
    fn metadata_steers_later_tables_and_stays_out_of_the_megaflow() {
        let mut p = Pipeline::new();
        p.add(rule(
            0,
            1,
            udp_match(),
            vec![
                OfAction::WriteMetadata {
                    value: 0x50,
                    mask: 0xf0,
                },
                OfAction::GotoTable(1),
            ],
        ));
        let mut m = Match::ANY;
        m.set_masked(Field::Metadata, 0x50, 0xf0);
        p.add(rule(1, 5, m, vec![OfAction::Output(2)]));
        let mut m = Match::ANY;
        m.set_masked(Field::Metadata, 0x60, 0xf0);
        p.add(rule(1, 9, m, vec![OfAction::Output(3)]));
        let x = run(&p, &udp_key(1, 1, 2, 3, 4));
        assert_eq!(x.actions, vec![DpAction::Output(2)]);
        assert_eq!(
            x.mask.get(Field::Metadata),
            0,
            "metadata is not in the megaflow"
        );
        // A packet that never had metadata written misses both.
        let mut arp = FlowKey::ZERO;
        arp.set(Field::InPort, 1);
        arp.set(Field::DlType, 0x0806);
        assert!(run(&p, &arp).actions.is_empty());
    }

    #[test]
    fn packet_out_actions_translate_as_a_rules_would() {
        let mut p = Pipeline::new();
        p.add(rule(0, 1, udp_match(), vec![OfAction::Output(3)]));
        let from_controller = udp_key(ofport::CONTROLLER, 1, 2, 3, 4);
        // FLOOD from CONTROLLER: every port; output:TABLE runs table 0.
        let x = run_actions(
            &p,
            &from_controller,
            &[
                OfAction::Flood,
                OfAction::Mod(Field::NwTtl, 9),
                OfAction::Resubmit {
                    port: None,
                    table: Some(0),
                },
            ],
        );
        assert_eq!(
            x.actions,
            vec![
                DpAction::Output(1),
                DpAction::Output(2),
                DpAction::Output(3),
                DpAction::Set(Field::NwTtl, 9),
                DpAction::Output(3),
            ]
        );
        assert_eq!(x.drop, None);
        // From port 2: output to the input port is skipped, IN_PORT sends.
        let from_2 = udp_key(2, 1, 2, 3, 4);
        let x = run_actions(
            &p,
            &from_2,
            &[OfAction::Output(2), OfAction::Flood, OfAction::InPort],
        );
        assert_eq!(
            x.actions,
            vec![
                DpAction::Output(1),
                DpAction::Output(3),
                DpAction::Output(2)
            ]
        );
        // A controller action punts with the packet-out's table and cookie.
        let x = run_actions(&p, &from_2, &[OfAction::Controller { max_len: 64 }]);
        assert_eq!(
            x.actions,
            vec![DpAction::Controller {
                table: PACKET_OUT_TABLE,
                cookie: PACKET_OUT_COOKIE,
                max_len: 64,
                miss: false,
            }]
        );
        // No output: a drop, with its reason.
        let x = run_actions(&p, &from_2, &[OfAction::Output(7)]);
        assert!(x.actions.is_empty());
        assert_eq!(x.drop, Some(XlateDrop::DropAction));
    }

    #[test]
    fn resubmit_loop_is_bounded() {
        let mut p = Pipeline::new();
        p.add(rule(
            0,
            1,
            Match::ANY,
            vec![
                OfAction::Output(2),
                OfAction::Resubmit {
                    port: None,
                    table: Some(0),
                },
            ],
        ));
        let x = run(&p, &udp_key(1, 1, 2, 3, 4));
        assert!(x.actions.is_empty());
        assert_eq!(x.drop, Some(XlateDrop::RecursionTooDeep));
    }

    #[test]
    fn resubmit_fanout_is_bounded() {
        // Each table resubmits twice to the next: 2^63 lookups if unbounded.
        let mut p = Pipeline::new();
        for t in 0..63u8 {
            let r = OfAction::Resubmit {
                port: None,
                table: Some(t + 1),
            };
            p.add(rule(t, 1, Match::ANY, vec![r, r]));
        }
        let x = run(&p, &udp_key(1, 1, 2, 3, 4));
        assert_eq!(x.drop, Some(XlateDrop::TooManyResubmits));
    }

    #[test]
    fn resubmit_with_port_changes_in_port_for_the_lookup() {
        let mut p = Pipeline::new();
        p.add(rule(
            0,
            1,
            {
                let mut m = Match::ANY;
                m.set_exact(Field::InPort, 1);
                m
            },
            vec![OfAction::Resubmit {
                port: Some(3),
                table: Some(1),
            }],
        ));
        let mut m3 = Match::ANY;
        m3.set_exact(Field::InPort, 3);
        p.add(rule(
            1,
            1,
            m3,
            vec![OfAction::Output(3), OfAction::Output(2)],
        ));
        // Output to 3 is the (resubmitted) input port: skipped.
        assert_eq!(
            run(&p, &udp_key(1, 1, 2, 3, 4)).actions,
            vec![DpAction::Output(2)]
        );
    }

    #[test]
    fn sets_are_committed_before_each_output_and_trailing_ones_dropped() {
        let mut p = Pipeline::new();
        p.add(rule(
            0,
            1,
            Match::ANY,
            vec![
                OfAction::Output(2),
                OfAction::Mod(Field::DlDst, 0x0200_0000_0001),
                OfAction::DecTtl,
                OfAction::Output(3),
                OfAction::Mod(Field::NwDst, 7),
            ],
        ));
        let x = run(&p, &udp_key(1, 1, 2, 3, 4));
        assert_eq!(
            x.actions,
            vec![
                DpAction::Output(2),
                DpAction::Set(Field::DlDst, 0x0200_0000_0001),
                DpAction::Set(Field::NwTtl, 63),
                DpAction::Output(3),
            ]
        );
        assert_eq!(x.mask.get(Field::NwTtl), 0xff);
    }

    #[test]
    fn dec_ttl_at_one_stops_the_list() {
        let mut p = Pipeline::new();
        p.add(rule(
            0,
            1,
            Match::ANY,
            vec![OfAction::DecTtl, OfAction::Output(2)],
        ));
        let mut k = udp_key(1, 1, 2, 3, 4);
        k.set(Field::NwTtl, 1);
        assert!(run(&p, &k).actions.is_empty());
    }

    #[test]
    fn set_on_missing_header_is_skipped() {
        let mut p = Pipeline::new();
        p.add(rule(
            0,
            1,
            Match::ANY,
            vec![OfAction::Mod(Field::NwSrc, 5), OfAction::Output(2)],
        ));
        let mut arp = FlowKey::ZERO;
        arp.set(Field::InPort, 1);
        arp.set(Field::DlType, ethertype::ARP as u128);
        assert_eq!(run(&p, &arp).actions, vec![DpAction::Output(2)]);
    }

    #[test]
    fn mod_vlan_vid_pushes_on_untagged() {
        let mut p = Pipeline::new();
        p.add(rule(
            0,
            1,
            Match::ANY,
            vec![OfAction::Mod(Field::VlanTci, 10), OfAction::Output(2)],
        ));
        let x = run(&p, &udp_key(1, 1, 2, 3, 4));
        assert_eq!(
            x.actions,
            vec![
                DpAction::PushVlan(0x8100),
                DpAction::Set(Field::VlanTci, 10),
                DpAction::Output(2)
            ]
        );
        assert_eq!(x.mask.get(Field::VlanTci), VLAN_CFI as u128);
    }

    #[test]
    fn a_tag_pushed_or_popped_without_an_output_is_a_drop() {
        let mut p = Pipeline::new();
        p.add(rule(
            0,
            0,
            Match::ANY,
            vec![OfAction::Mod(Field::VlanTci, 30), OfAction::Output(1)],
        ));
        let macs = MacTable::default();
        let x = xlate(
            Bridge {
                pipeline: &p,
                macs: &macs,
                ports: &[1, 2, 3],
                widen_l4: None,
            },
            &udp_key(1, 1, 2, 3, 4),
        );
        assert_eq!(x.actions, vec![]);
        assert_eq!(x.drop, Some(XlateDrop::DropAction));
        let x = xlate(
            Bridge {
                pipeline: &p,
                macs: &macs,
                ports: &[1, 2, 3],
                widen_l4: None,
            },
            &udp_key(2, 1, 2, 3, 4),
        );
        assert_eq!(
            x.actions,
            vec![
                DpAction::PushVlan(ethertype::VLAN),
                DpAction::Set(Field::VlanTci, 30),
                DpAction::Output(1)
            ]
        );
    }

    #[test]
    fn normal_learns_and_floods_then_forwards() {
        let mut p = Pipeline::new();
        p.add(rule(0, 0, Match::ANY, vec![OfAction::Normal]));
        let mut macs = MacTable::default();
        let mut k = udp_key(1, 1, 2, 3, 4);
        k.set(Field::DlSrc, 0x0200_0000_0001);
        k.set(Field::DlDst, 0x0200_0000_0002);
        let b = |macs: &MacTable, k: &FlowKey| {
            xlate(
                Bridge {
                    pipeline: &p,
                    macs,
                    ports: &PORTS,
                    widen_l4: None,
                },
                k,
            )
        };
        let x = b(&macs, &k);
        assert_eq!(x.actions, vec![DpAction::Output(2), DpAction::Output(3)]);
        let learn = x.learn.expect("NORMAL learns the source");
        assert_eq!(learn.port, 1);
        assert!(macs.learn(learn, 0));
        // Reply from port 3 to the learned MAC: unicast to port 1.
        let mut r = udp_key(3, 2, 1, 4, 3);
        r.set(Field::DlSrc, 0x0200_0000_0002);
        r.set(Field::DlDst, 0x0200_0000_0001);
        let x = b(&macs, &r);
        assert_eq!(x.actions, vec![DpAction::Output(1)]);
        assert_eq!(x.mask.get(Field::DlDst), 0xffff_ffff_ffff);
    }

    /// OVS's default fragment handling: every fragment, the first too, meets
    /// the rules with L4 ports 0; an action that sets a port still does.
    #[test]
    fn fragments_meet_the_rules_with_ports_zero() {
        let mut p = Pipeline::new();
        let mut on_port = udp_match();
        on_port.set_exact(Field::TpDst, 53);
        p.add(rule(0, 20, on_port, vec![OfAction::Output(2)]));
        let mut on_zero = udp_match();
        on_zero.set_exact(Field::TpDst, 0);
        p.add(rule(
            0,
            10,
            on_zero,
            vec![OfAction::SetField(Field::TpDst, 99), OfAction::Output(3)],
        ));
        let whole = udp_key(1, 1, 2, 1000, 53);
        assert_eq!(run(&p, &whole).actions, vec![DpAction::Output(2)]);
        for nw_frag in [frag::ANY, frag::ANY | frag::LATER] {
            let mut k = whole;
            k.set(Field::NwFrag, u128::from(nw_frag));
            assert_eq!(
                run(&p, &k).actions,
                vec![DpAction::Set(Field::TpDst, 99), DpAction::Output(3)],
                "nw_frag {nw_frag}"
            );
        }
    }

    /// As in Open vSwitch (a real upcall, not `ofproto/trace`, which does
    /// not learn): a frame to its own source MAC is learned and dropped,
    /// even while the MAC is unknown.
    #[test]
    fn normal_drops_a_frame_to_its_own_source() {
        let mut p = Pipeline::new();
        p.add(rule(0, 0, Match::ANY, vec![OfAction::Normal]));
        let macs = MacTable::default();
        let mut k = udp_key(1, 1, 2, 3, 4);
        k.set(Field::DlSrc, 0x0200_0000_0009);
        k.set(Field::DlDst, 0x0200_0000_0009);
        let bridge = Bridge {
            pipeline: &p,
            macs: &macs,
            ports: &PORTS,
            widen_l4: None,
        };
        let x = xlate(bridge, &k);
        assert_eq!(x.actions, vec![]);
        assert_eq!(
            x.learn.map(|l| (l.mac, l.port)),
            Some((0x0200_0000_0009, 1))
        );
        assert_eq!(x.mask.get(Field::DlDst), 0xffff_ffff_ffff);
        assert_eq!(x.mask.get(Field::DlSrc), 0xffff_ffff_ffff);
    }

    #[test]
    fn only_offloading_ports_widen_l4_port_masks() {
        // A rule on a port prefix: a packet outside it needs only the
        // prefix bits to prove the miss.
        let mut p = Pipeline::new();
        let mut m = udp_match();
        m.set_masked(Field::TpDst, 0x1000, 0xff00);
        p.add(rule(0, 10, m, vec![OfAction::Output(2)]));
        p.add(rule(0, 0, Match::ANY, vec![OfAction::Output(3)]));
        let macs = MacTable::default();
        let k = udp_key(1, 0x0a00_0001, 0x0a00_0002, 1000, 0x2001);
        let with = |widen: Option<&[u32]>| {
            xlate(
                Bridge {
                    pipeline: &p,
                    macs: &macs,
                    ports: &PORTS,
                    widen_l4: widen,
                },
                &k,
            )
        };
        // Port 1 offloads: its megaflow matches the whole port (a NIC
        // takes full L4 masks only).
        let offloaded = with(Some(&[1]));
        assert_eq!(offloaded.mask.get(Field::TpDst), 0xffff);
        assert_eq!(with(None).mask, offloaded.mask);
        // Port 1 does not: the minimal mask, as OVS makes it.
        let software = with(Some(&[2]));
        assert_ne!(software.mask.get(Field::TpDst), 0xffff);
        assert_ne!(software.mask.get(Field::TpDst), 0);
        assert!(software.mask.is_subset_of(&offloaded.mask));
        assert_eq!(software.actions, offloaded.actions);
    }

    mod groups {
        use super::*;
        use crate::ofproto::group::{credit, Bucket, Group};
        use crate::ofproto::table::{Changes, RuleChange};

        fn strings(x: &Xlation) -> Vec<String> {
            x.actions.iter().map(|a| a.to_string()).collect()
        }

        fn with_group(kind: GroupType, buckets: Vec<Bucket>) -> Pipeline {
            let mut p = Pipeline::new();
            p.group_add(Group::new(1, kind, buckets).unwrap()).unwrap();
            p.add(rule(0, 1, udp_match(), vec![OfAction::Group(1)]));
            p
        }

        #[test]
        fn all_runs_each_bucket_on_a_copy_of_the_packet() {
            let p = with_group(
                GroupType::All,
                vec![
                    Bucket::new(vec![
                        OfAction::SetField(Field::NwDst, 0x0a00_0009),
                        OfAction::Output(2),
                    ]),
                    Bucket::new(vec![OfAction::PushVlan(0x8100), OfAction::Output(3)]),
                    Bucket::new(vec![OfAction::Output(3)]),
                ],
            );
            let x = run(&p, &udp_key(1, 0x0a00_0001, 0x0a00_0002, 5, 6));
            assert_eq!(
                strings(&x),
                [
                    "mod_nw_dst:10.0.0.9",
                    "output:2",
                    // The next buckets see the packet as it arrived.
                    "mod_nw_dst:10.0.0.2",
                    "push_vlan:0x8100",
                    "output:3",
                    "strip_vlan",
                    "output:3"
                ]
            );
            // The restore writes the packet's own address: matched exactly.
            assert_eq!(x.mask.get(Field::NwDst), 0xffff_ffff);
            // The rule, the group and its three buckets are credited.
            assert_eq!(x.rules.len(), 5);
            let serial = p.group(1).unwrap().serial;
            assert_eq!(
                x.rules[1..],
                [
                    credit::id(serial, credit::GROUP_ITSELF),
                    credit::id(serial, 0),
                    credit::id(serial, 1),
                    credit::id(serial, 2)
                ]
            );
        }

        #[test]
        fn select_is_stable_weighted_and_unwildcards_what_it_hashed() {
            let bucket = |port, weight| {
                let mut b = Bucket::new(vec![OfAction::Output(port)]);
                b.weight = weight;
                b
            };
            let p = with_group(
                GroupType::Select,
                vec![bucket(2, 1), bucket(3, 1), bucket(4, 0)],
            );
            let mut chosen = [0usize; 5];
            for sport in 0..200u16 {
                let k = udp_key(1, 0x0a00_0001, 0x0a00_0002, 1000 + sport, 80);
                let x = run(&p, &k);
                assert_eq!(x, run(&p, &k), "the same flow picks the same bucket");
                let [DpAction::Output(o)] = x.actions[..] else {
                    panic!("one output: {:?}", x.actions)
                };
                chosen[o as usize] += 1;
                assert_eq!(x.mask.get(Field::TpSrc), 0xffff);
                assert_eq!(x.mask.get(Field::NwSrc), 0xffff_ffff);
                // Both directions pick the same bucket.
                let mut back = udp_key(1, 0x0a00_0002, 0x0a00_0001, 80, 1000 + sport);
                back.set(Field::DlSrc, k.get(Field::DlDst));
                back.set(Field::DlDst, k.get(Field::DlSrc));
                assert_eq!(run(&p, &back).actions, x.actions);
            }
            assert_eq!(chosen[4], 0, "weight 0 is never chosen");
            assert!(chosen[2] > 50 && chosen[3] > 50, "{chosen:?}");
        }

        #[test]
        fn fast_failover_takes_the_first_live_bucket() {
            let watching = |port, out| {
                let mut b = Bucket::new(vec![OfAction::Output(out)]);
                b.watch_port = port;
                b
            };
            // Port 9 is not on the bridge: the second bucket is used.
            let p = with_group(
                GroupType::FastFailover,
                vec![watching(9, 2), watching(3, 3), watching(2, 2)],
            );
            let x = run(&p, &udp_key(1, 1, 2, 3, 4));
            assert_eq!(strings(&x), ["output:3"]);
            assert!(x.deps.ports, "port changes revalidate it");
            let traced = run_traced(&p, &udp_key(1, 1, 2, 3, 4));
            assert!(
                traced.trace.contains(&TraceStep::Group {
                    depth: 0,
                    group: 1,
                    bucket: Some(1)
                }),
                "{:?}",
                traced.trace
            );
            let dead = with_group(GroupType::FastFailover, vec![watching(9, 2)]);
            let x = run(&dead, &udp_key(1, 1, 2, 3, 4));
            assert_eq!(x.drop, Some(XlateDrop::DropAction));
        }

        #[test]
        fn chained_groups_and_missing_groups() {
            let mut p = with_group(
                GroupType::Indirect,
                vec![Bucket::new(vec![OfAction::Group(2)])],
            );
            p.group_add(
                Group::new(
                    2,
                    GroupType::All,
                    vec![Bucket::new(vec![OfAction::Output(3)])],
                )
                .unwrap(),
            )
            .unwrap();
            assert_eq!(strings(&run(&p, &udp_key(1, 1, 2, 3, 4))), ["output:3"]);
            // A group that loops ends on the translation limits.
            let mut looping = Pipeline::new();
            looping
                .group_add(
                    Group::new(
                        1,
                        GroupType::All,
                        vec![Bucket::new(vec![OfAction::Group(1)])],
                    )
                    .unwrap(),
                )
                .unwrap();
            looping.add(rule(
                0,
                1,
                udp_match(),
                vec![OfAction::Group(1), OfAction::Output(2)],
            ));
            let x = run(&looping, &udp_key(1, 1, 2, 3, 4));
            assert_eq!(x.drop, Some(XlateDrop::RecursionTooDeep));
            // An action naming a group that went is skipped.
            p.group_delete(1);
            assert!(p.is_empty(), "the rule naming group 1 went with it");
            p.add(rule(
                0,
                1,
                udp_match(),
                vec![OfAction::Group(7), OfAction::Output(2)],
            ));
            assert_eq!(strings(&run(&p, &udp_key(1, 1, 2, 3, 4))), ["output:2"]);
        }

        #[test]
        fn a_group_change_journals_the_rules_that_run_it() {
            let mut p = with_group(GroupType::All, vec![Bucket::new(vec![OfAction::Output(2)])]);
            p.add(rule(0, 2, Match::ANY, vec![OfAction::Output(3)]));
            p.group_add(
                Group::new(
                    5,
                    GroupType::Indirect,
                    vec![Bucket::new(vec![OfAction::Group(1)])],
                )
                .unwrap(),
            )
            .unwrap();
            let mut m = udp_match();
            m.set_exact(Field::TpDst, 9);
            p.add(rule(1, 1, m, vec![OfAction::Group(5)]));
            let before = p.publish();
            p.group_modify(
                Group::new(
                    1,
                    GroupType::All,
                    vec![Bucket::new(vec![OfAction::Output(3)])],
                )
                .unwrap(),
            )
            .unwrap();
            let Changes::Rules(changes) = p.changes_since(&before) else {
                panic!("a journal")
            };
            let mut touched: Vec<u8> = changes
                .iter()
                .map(|c| {
                    assert!(matches!(c, RuleChange::Modified { .. }), "{c:?}");
                    c.table()
                })
                .collect();
            touched.sort_unstable();
            // The rule naming group 1, and the one naming group 5 (which runs 1).
            assert_eq!(touched, [0, 1]);
            assert!(p.version() > before.version());
        }
    }
}
