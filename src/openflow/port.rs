//! Port numbers: flowmark keeps OpenFlow 1.0's 16-bit space (reserved ports
//! at 0xfff8..=0xffff, as ovs-ofctl prints them); OpenFlow 1.3 puts the
//! same reserved ports at 0xfffffff8..=0xffffffff.

use fallback::ofproto::ofport;

/// OpenFlow 1.3 `OFPP_*`.
pub const OFPP_MAX: u32 = 0xffff_ff00;
pub const OFPP_IN_PORT: u32 = 0xffff_fff8;
pub const OFPP_TABLE: u32 = 0xffff_fff9;
pub const OFPP_NORMAL: u32 = 0xffff_fffa;
pub const OFPP_FLOOD: u32 = 0xffff_fffb;
pub const OFPP_ALL: u32 = 0xffff_fffc;
pub const OFPP_CONTROLLER: u32 = 0xffff_fffd;
pub const OFPP_LOCAL: u32 = 0xffff_fffe;
pub const OFPP_ANY: u32 = 0xffff_ffff;

/// A flowmark port number on the OpenFlow 1.3 wire.
pub fn ofport_to_of13(p: u32) -> u32 {
    if (ofport::MAX..=ofport::NONE).contains(&p) {
        p | 0xffff_0000
    } else {
        p
    }
}

/// A port on the OpenFlow 1.3 wire as flowmark numbers it; `None` for
/// numbers flowmark's 16-bit space cannot hold.
pub fn ofport_from_of13(p: u32) -> Option<u32> {
    if p < ofport::MAX {
        Some(p)
    } else if p >= 0xffff_ff00 {
        Some(p & 0xffff)
    } else {
        None
    }
}
