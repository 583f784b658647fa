//! The OpenFlow pipeline: tables of prioritised rules, their actions, the
//! ovs-ofctl flow syntax ([`syntax`]) and the translation of a flow key into
//! datapath actions plus a megaflow mask ([`xlate`]).

pub mod classifier;
mod cow;
pub mod mac;
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
