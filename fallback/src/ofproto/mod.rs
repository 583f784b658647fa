//! The OpenFlow pipeline: tables of prioritised rules, their actions, the
//! ovs-ofctl flow syntax ([`syntax`]) and the translation of a flow key into
//! datapath actions plus a megaflow mask ([`xlate`]).

pub mod classifier;
mod cow;
pub mod group;
pub mod mac;
pub mod meter;
pub mod syntax;
pub mod table;
mod trie;
pub mod xlate;

use crate::key::{Field, FlowKey};

/// Number of OpenFlow tables (0..=254 usable, as in OVS).
pub const N_TABLES: usize = 255;

/// Reserved OpenFlow port numbers (OpenFlow 1.0 16-bit space, as ovs-ofctl
/// prints them; `in_port` values above these are refused).
pub mod ofport {
    pub const MAX: u32 = 0xff00;
    pub const IN_PORT: u32 = 0xfff8;
    pub const TABLE: u32 = 0xfff9;
    pub const NORMAL: u32 = 0xfffa;
    pub const FLOOD: u32 = 0xfffb;
    pub const ALL: u32 = 0xfffc;
    pub const CONTROLLER: u32 = 0xfffd;
    pub const LOCAL: u32 = 0xfffe;
    pub const NONE: u32 = 0xffff;
}

/// A match: values (already masked) and a mask over the flow key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Match {
    pub value: FlowKey,
    pub mask: FlowKey,
}

impl Match {
    /// The match-everything match.
    pub const ANY: Match = Match {
        value: FlowKey::ZERO,
        mask: FlowKey::ZERO,
    };

    /// Matches `field` exactly against `v`.
    pub fn set_exact(&mut self, field: Field, v: u128) {
        self.set_masked(field, v, field.full_mask());
    }

    /// Matches the bits of `mask` in `field` against `v`.
    pub fn set_masked(&mut self, field: Field, v: u128, mask: u128) {
        self.mask.set(field, mask);
        self.value.set(field, v & mask);
    }

    /// True when the key matches.
    #[inline]
    pub fn matches(&self, key: &FlowKey) -> bool {
        key.matches(&self.value, &self.mask)
    }
}

/// An OpenFlow action, as ovs-ofctl parses it. Printing keeps the spelling
/// the user chose where OVS keeps it (`mod_nw_src` versus `set_field`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OfAction {
    /// `output:N` or a bare port number.
    Output(u32),
    /// `in_port`: send back out of the input port.
    InPort,
    /// `flood`: every port but the input port.
    Flood,
    /// `all`: every port but the input port (no STP here, so as FLOOD).
    All,
    /// `normal`: MAC learning L2 switch.
    Normal,
    /// `controller` / `controller:MAX_LEN`: a counted punt.
    Controller { max_len: u16 },
    /// `mod_dl_src:MAC`, `mod_dl_dst:MAC`, `mod_nw_src:IP`, `mod_nw_dst:IP`,
    /// `mod_nw_tos:DSCP<<2`, `mod_nw_ttl:N`, `mod_tp_src:N`, `mod_tp_dst:N`,
    /// `mod_vlan_vid:N`: field and value (`NwTos` holds the TOS byte with
    /// ECN bits zero; `VlanTci` holds the 12-bit VID).
    Mod(Field, u128),
    /// `set_field:VALUE->FIELD` for the same fields (same meaning as `Mod`).
    SetField(Field, u128),
    /// `dec_ttl`.
    DecTtl,
    /// `strip_vlan` (`pop_vlan`).
    StripVlan,
    /// `push_vlan:TPID`.
    PushVlan(u16),
    /// `resubmit(PORT,TABLE)`; `None` means "the current one".
    Resubmit {
        port: Option<u32>,
        table: Option<u8>,
    },
    /// OpenFlow 1.3 `write_actions`: one action written to the packet's
    /// action set, which runs when the pipeline ends.
    Write(SetAction),
    /// OpenFlow 1.3 `clear_actions`: empties the action set.
    ClearActions,
    /// OpenFlow 1.3 `goto_table:N` (always the last of a rule's actions).
    GotoTable(u8),
    /// OpenFlow 1.3 `write_metadata:VALUE/MASK`: the masked bits of the
    /// pipeline metadata take `value`'s (before a `GotoTable`).
    WriteMetadata { value: u64, mask: u64 },
    /// OpenFlow 1.1+ `group:N`: runs group N's buckets (see [`group`]).
    Group(u32),
    /// OpenFlow 1.3 `meter:N` (always the first of a rule's actions):
    /// the packet passes through meter N, which may drop it (see [`meter`]).
    Meter(u32),
}

/// An action of the OpenFlow 1.3 action set (`write_actions`). The set
/// holds one action per kind (one output, one set per field, ...), and
/// runs in the specification's order: pop VLAN, push VLAN, decrement TTL,
/// set-fields, output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetAction {
    Output(u32),
    InPort,
    Flood,
    All,
    Normal,
    Controller {
        max_len: u16,
    },
    Mod(Field, u128),
    DecTtl,
    StripVlan,
    PushVlan(u16),
    /// Takes precedence over an output in the same set.
    Group(u32),
}

impl SetAction {
    /// The action-set form of `a`, if it can be in an action set.
    pub fn from_action(a: OfAction) -> Option<SetAction> {
        Some(match a {
            OfAction::Output(p) => SetAction::Output(p),
            OfAction::InPort => SetAction::InPort,
            OfAction::Flood => SetAction::Flood,
            OfAction::All => SetAction::All,
            OfAction::Normal => SetAction::Normal,
            OfAction::Controller { max_len } => SetAction::Controller { max_len },
            OfAction::Mod(f, v) | OfAction::SetField(f, v) => SetAction::Mod(f, v),
            OfAction::DecTtl => SetAction::DecTtl,
            OfAction::StripVlan => SetAction::StripVlan,
            OfAction::PushVlan(t) => SetAction::PushVlan(t),
            OfAction::Group(g) => SetAction::Group(g),
            _ => return None,
        })
    }

    /// The action it runs as.
    pub fn action(self) -> OfAction {
        match self {
            SetAction::Output(p) => OfAction::Output(p),
            SetAction::InPort => OfAction::InPort,
            SetAction::Flood => OfAction::Flood,
            SetAction::All => OfAction::All,
            SetAction::Normal => OfAction::Normal,
            SetAction::Controller { max_len } => OfAction::Controller { max_len },
            SetAction::Mod(f, v) => OfAction::SetField(f, v),
            SetAction::DecTtl => OfAction::DecTtl,
            SetAction::StripVlan => OfAction::StripVlan,
            SetAction::PushVlan(t) => OfAction::PushVlan(t),
            SetAction::Group(g) => OfAction::Group(g),
        }
    }

    /// Its place in the execution order; actions of one kind replace each
    /// other (set-fields per field).
    fn order(self) -> (u8, Option<Field>) {
        match self {
            SetAction::StripVlan => (0, None),
            SetAction::PushVlan(_) => (1, None),
            SetAction::DecTtl => (2, None),
            SetAction::Mod(f, _) => (3, Some(f)),
            SetAction::Group(_) => (5, None),
            _ => (4, None),
        }
    }

    /// The actions `set` runs, in order: none when it has no output or
    /// group (as OVS's `ofpacts_execute_action_set`), and a group's
    /// without the output.
    pub fn run_order(set: &[SetAction]) -> Vec<OfAction> {
        let has_group = set.iter().any(|s| matches!(s, SetAction::Group(_)));
        if !has_group && !set.iter().any(|s| s.order().0 == 4) {
            return Vec::new();
        }
        set.iter()
            .filter(|s| !(has_group && s.order().0 == 4))
            .map(|s| s.action())
            .collect()
    }

    /// Writes `a` into `set`: it replaces the action of its kind.
    pub fn write(set: &mut Vec<SetAction>, a: SetAction) {
        let key = a.order();
        set.retain(|s| s.order() != key);
        let at = set
            .iter()
            .position(|s| s.order() > key)
            .unwrap_or(set.len());
        set.insert(at, a);
    }
}

/// An OpenFlow rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub table: u8,
    pub priority: u16,
    pub r#match: Match,
    /// An empty list is `drop`.
    pub actions: Vec<OfAction>,
    pub cookie: u64,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
}

impl Rule {
    /// OVS's default priority when a flow does not name one.
    pub const DEFAULT_PRIORITY: u16 = 0x8000;
}
