//! Datapath actions: what a megaflow does to its packets. FLOOD and NORMAL
//! are already expanded to outputs; `dec_ttl` is already a `set` of the TTL.

use crate::key::{fmt_mac, Field};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// One datapath action. An empty list drops the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DpAction {
    /// Transmit on the OpenFlow port.
    Output(u32),
    /// Rewrite a header field (checksums follow). The field is one of
    /// `DlSrc`, `DlDst`, `NwSrc`, `NwDst`, `Ipv6Src`, `Ipv6Dst`, `NwTos`
    /// (the DSCP bits, `value` already shifted into the TOS byte), `NwEcn`
    /// (the ECN bits), `NwTtl`, `TpSrc`, `TpDst`; `VlanTci` sets the VID of
    /// the outer tag, `VlanPcp` its priority.
    Set(Field, u128),
    /// Push an 802.1Q tag with this TPID (VID 0, PCP 0).
    PushVlan(u16),
    /// Remove the outer 802.1Q tag.
    PopVlan,
    /// Punt a copy to the controller (a PACKET_IN): the table and cookie of
    /// the rule that asked, and how many bytes of the packet to send.
    Controller {
        table: u8,
        cookie: u64,
        max_len: u16,
        /// The rule is a table-miss rule (priority 0, matching everything):
        /// OpenFlow's PACKET_IN reason NO_MATCH instead of ACTION.
        miss: bool,
    },
    /// Pass the packet through OpenFlow meter N: the actions after it run
    /// only if the meter lets the packet through.
    Meter(u32),
}

impl fmt::Display for DpAction {
    /// ovs-ofctl spelling: `output:2`, `mod_nw_src:192.168.200.188`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DpAction::Output(p) => write!(f, "output:{p}"),
            DpAction::PushVlan(tpid) => write!(f, "push_vlan:{tpid:#06x}"),
            DpAction::PopVlan => f.write_str("strip_vlan"),
            DpAction::Controller { .. } => f.write_str("controller"),
            DpAction::Meter(m) => write!(f, "meter:{m}"),
            DpAction::Set(field, v) => match field {
                Field::DlSrc => write!(f, "mod_dl_src:{}", fmt_mac(v as u64)),
                Field::DlDst => write!(f, "mod_dl_dst:{}", fmt_mac(v as u64)),
                Field::NwSrc => write!(f, "mod_nw_src:{}", Ipv4Addr::from(v as u32)),
                Field::NwDst => write!(f, "mod_nw_dst:{}", Ipv4Addr::from(v as u32)),
                Field::Ipv6Src => write!(f, "set_field:{}->ipv6_src", Ipv6Addr::from(v)),
                Field::Ipv6Dst => write!(f, "set_field:{}->ipv6_dst", Ipv6Addr::from(v)),
                Field::NwTos => write!(f, "mod_nw_tos:{}", v as u8 & 0xfc),
                Field::NwTtl => write!(f, "mod_nw_ttl:{}", v as u8),
                Field::TpSrc => write!(f, "mod_tp_src:{}", v as u16),
                Field::TpDst => write!(f, "mod_tp_dst:{}", v as u16),
                Field::VlanTci => write!(f, "mod_vlan_vid:{}", v as u16 & 0x0fff),
                Field::VlanPcp => write!(f, "mod_vlan_pcp:{}", v as u8 & 0x07),
                Field::NwEcn => write!(f, "mod_nw_ecn:{}", v as u8 & 0x03),
                other => write!(f, "set_field:{v:#x}->{other}"),
            },
        }
    }
}

/// Formats an action list the way `--json` and the CLI show it.
pub fn action_strings(actions: &[DpAction]) -> Vec<String> {
    actions.iter().map(|a| a.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelling() {
        assert_eq!(DpAction::Output(2).to_string(), "output:2");
        assert_eq!(
            DpAction::Set(Field::NwSrc, 0xc0a8_c8bc).to_string(),
            "mod_nw_src:192.168.200.188"
        );
        assert_eq!(
            DpAction::Set(Field::DlDst, 0x2ea9_be9e_4d07).to_string(),
            "mod_dl_dst:2e:a9:be:9e:4d:07"
        );
        assert_eq!(DpAction::PushVlan(0x8100).to_string(), "push_vlan:0x8100");
    }
}
