//! OpenFlow 1.3 messages: the [`Message`] model and its byte encoding.
//! [`decode`] reads one message and never panics; every refusal carries the
//! OpenFlow error the spec names for it.

use super::action::{
    decode_actions, decode_instructions, encode_actions, encode_instructions, ActionContext,
    ActionUse,
};
use super::error::{
    BadRequestCode as Brc, DecodeError, FlowModFailedCode as Fmfc, GroupModFailedCode,
    MeterModFailedCode, OfpError,
};
use super::oxm::{decode_match, encode_match};
use super::wire::{get_str, Put, Reader};
use fallback::ofproto::meter::{band_type, Band};
use fallback::ofproto::table::recent_first;
use fallback::ofproto::{Match, OfAction};

/// OpenFlow 1.3's wire version.
pub const OFP13_VERSION: u8 = 0x04;
pub const HEADER_LEN: usize = 8;
/// `OFP_NO_BUFFER`.
pub const OFP_NO_BUFFER: u32 = 0xffff_ffff;
/// `OFPTT_ALL`.
pub const OFPTT_ALL: u8 = 0xff;
/// `OFPG_ANY`.
pub const OFPG_ANY: u32 = 0xffff_ffff;
/// `OFPMPF_REPLY_MORE` / `OFPMPF_REQ_MORE`.
pub const OFPMPF_MORE: u16 = 1;
/// The largest OpenFlow message.
pub const MAX_MESSAGE_LEN: usize = 0xffff;

/// `OFPT_*`.
pub mod msg_type {
    pub const HELLO: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const ECHO_REQUEST: u8 = 2;
    pub const ECHO_REPLY: u8 = 3;
    pub const EXPERIMENTER: u8 = 4;
    pub const FEATURES_REQUEST: u8 = 5;
    pub const FEATURES_REPLY: u8 = 6;
    pub const GET_CONFIG_REQUEST: u8 = 7;
    pub const GET_CONFIG_REPLY: u8 = 8;
    pub const SET_CONFIG: u8 = 9;
    pub const PACKET_IN: u8 = 10;
    pub const FLOW_REMOVED: u8 = 11;
    pub const PORT_STATUS: u8 = 12;
    pub const PACKET_OUT: u8 = 13;
    pub const FLOW_MOD: u8 = 14;
    pub const GROUP_MOD: u8 = 15;
    pub const PORT_MOD: u8 = 16;
    pub const TABLE_MOD: u8 = 17;
    pub const MULTIPART_REQUEST: u8 = 18;
    pub const MULTIPART_REPLY: u8 = 19;
    pub const BARRIER_REQUEST: u8 = 20;
    pub const BARRIER_REPLY: u8 = 21;
    pub const ROLE_REQUEST: u8 = 24;
    pub const ROLE_REPLY: u8 = 25;
    pub const GET_ASYNC_REQUEST: u8 = 26;
    pub const GET_ASYNC_REPLY: u8 = 27;
    pub const SET_ASYNC: u8 = 28;
    pub const METER_MOD: u8 = 29;
    pub const QUEUE_GET_CONFIG_REQUEST: u8 = 22;
    pub const QUEUE_GET_CONFIG_REPLY: u8 = 23;
}

/// `OFPMP_*`.
pub mod mp_type {
    pub const DESC: u16 = 0;
    pub const FLOW: u16 = 1;
    pub const AGGREGATE: u16 = 2;
    pub const TABLE: u16 = 3;
    pub const PORT_STATS: u16 = 4;
    pub const QUEUE: u16 = 5;
    pub const GROUP: u16 = 6;
    pub const GROUP_DESC: u16 = 7;
    pub const GROUP_FEATURES: u16 = 8;
    pub const METER: u16 = 9;
    pub const METER_CONFIG: u16 = 10;
    pub const METER_FEATURES: u16 = 11;
    pub const TABLE_FEATURES: u16 = 12;
    pub const PORT_DESC: u16 = 13;
    pub const EXPERIMENTER: u16 = 0xffff;
}

/// `ofp_flow_mod_command`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowModCommand {
    Add = 0,
    Modify = 1,
    ModifyStrict = 2,
    Delete = 3,
    DeleteStrict = 4,
}

impl FlowModCommand {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Add,
            1 => Self::Modify,
            2 => Self::ModifyStrict,
            3 => Self::Delete,
            4 => Self::DeleteStrict,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowMod {
    pub cookie: u64,
    pub cookie_mask: u64,
    pub table_id: u8,
    pub command: FlowModCommand,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    pub priority: u16,
    pub buffer_id: u32,
    /// OpenFlow 1.3 numbering (`OFPP_ANY`: no filter).
    pub out_port: u32,
    pub out_group: u32,
    pub flags: u16,
    pub r#match: Match,
    /// Instructions folded into one list (see [`super::action`]).
    pub actions: Vec<OfAction>,
}

/// `OFPFF_*` flags flowmark honours or tolerates.
pub mod flow_flags {
    pub const SEND_FLOW_REM: u16 = 1 << 0;
    pub const CHECK_OVERLAP: u16 = 1 << 1;
    pub const RESET_COUNTS: u16 = 1 << 2;
    pub const NO_PKT_COUNTS: u16 = 1 << 3;
    pub const NO_BYT_COUNTS: u16 = 1 << 4;
    pub const ALL: u16 = 0x1f;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Features {
    pub datapath_id: u64,
    pub n_buffers: u32,
    pub n_tables: u8,
    pub auxiliary_id: u8,
    pub capabilities: u32,
}

/// `OFPC_*`.
pub mod capabilities {
    pub const FLOW_STATS: u32 = 1 << 0;
    pub const TABLE_STATS: u32 = 1 << 1;
    pub const PORT_STATS: u32 = 1 << 2;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SwitchConfig {
    pub flags: u16,
    pub miss_send_len: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PortDesc {
    /// OpenFlow 1.3 numbering.
    pub port_no: u32,
    pub hw_addr: [u8; 6],
    pub name: String,
    pub config: u32,
    pub state: u32,
    pub curr: u32,
    pub advertised: u32,
    pub supported: u32,
    pub peer: u32,
    pub curr_speed: u32,
    pub max_speed: u32,
}

/// `OFPPS_LINK_DOWN`.
pub const OFPPS_LINK_DOWN: u32 = 1;
/// `OFPPS_LIVE`.
pub const OFPPS_LIVE: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortStats {
    pub port_no: u32,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_frame_err: u64,
    pub rx_over_err: u64,
    pub rx_crc_err: u64,
    pub collisions: u64,
    pub duration_sec: u32,
    pub duration_nsec: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowStats {
    pub table_id: u8,
    pub duration_sec: u32,
    pub duration_nsec: u32,
    pub priority: u16,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    pub flags: u16,
    pub cookie: u64,
    pub packet_count: u64,
    pub byte_count: u64,
    pub r#match: Match,
    pub actions: Vec<OfAction>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TableStats {
    pub table_id: u8,
    pub active_count: u32,
    pub lookup_count: u64,
    pub matched_count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Desc {
    pub mfr_desc: String,
    pub hw_desc: String,
    pub sw_desc: String,
    pub serial_num: String,
    pub dp_desc: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableFeatures {
    pub table_id: u8,
    pub name: String,
    pub max_entries: u32,
}

/// Selection of a flow or aggregate stats request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowStatsRequest {
    pub table_id: u8,
    pub out_port: u32,
    pub out_group: u32,
    pub cookie: u64,
    pub cookie_mask: u64,
    pub r#match: Match,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MultipartRequest {
    Desc,
    Flow(FlowStatsRequest),
    Aggregate(FlowStatsRequest),
    Table,
    /// `OFPP_ANY` for every port.
    PortStats {
        port_no: u32,
    },
    PortDesc,
    /// A table features request with no body (a query, not a change).
    TableFeatures,
    /// Group statistics (`OFPG_ALL` for every group).
    Group {
        group_id: u32,
    },
    GroupDesc,
    GroupFeatures,
    /// Meter statistics (`OFPM_ALL` for every meter).
    Meter {
        meter_id: u32,
    },
    MeterConfig {
        meter_id: u32,
    },
    MeterFeatures,
    /// Queue statistics (`OFPP_ANY`, `OFPQ_ALL` for every one).
    Queue {
        port_no: u32,
        queue_id: u32,
    },
}

/// `ofp_group_features`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupFeatures {
    /// Bitmap of the group types supported (`1 << OFPGT_*`).
    pub types: u32,
    pub capabilities: u32,
    /// Per type (all, select, indirect, fast failover).
    pub max_groups: [u32; 4],
    pub actions: [u32; 4],
}

/// `ofp_meter_features`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeterFeatures {
    pub max_meter: u32,
    pub band_types: u32,
    pub capabilities: u32,
    pub max_bands: u8,
    pub max_color: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MultipartReplyBody {
    Desc(Desc),
    Flow(Vec<FlowStats>),
    Aggregate {
        packet_count: u64,
        byte_count: u64,
        flow_count: u32,
    },
    Table(Vec<TableStats>),
    PortStats(Vec<PortStats>),
    PortDesc(Vec<PortDesc>),
    TableFeatures(Vec<TableFeatures>),
    /// A reply of this `OFPMP_*` type with no entries: the queue lists of
    /// a switch that has none.
    NoEntries(u16),
    GroupStats(Vec<GroupStats>),
    GroupDesc(Vec<GroupDesc>),
    GroupFeatures(GroupFeatures),
    MeterStats(Vec<MeterStats>),
    MeterConfig(Vec<MeterConfigEntry>),
    MeterFeatures(MeterFeatures),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipartReply {
    pub more: bool,
    pub body: MultipartReplyBody,
}

/// `ofp_packet_in_reason`.
pub mod packet_in_reason {
    pub const NO_MATCH: u8 = 0;
    pub const ACTION: u8 = 1;
}

/// `ofp_group_mod_command` and `ofp_meter_mod_command` (the same numbers).
pub mod mod_command {
    pub const ADD: u16 = 0;
    pub const MODIFY: u16 = 1;
    pub const DELETE: u16 = 2;
    /// Open vSwitch's OFPGC11_ADD_OR_MOD (`ovs-ofctl mod-group --may-create`).
    pub const ADD_OR_MOD: u16 = 0x8000;
}

/// `OFPG_MAX`: group ids above it are reserved (`OFPG_ALL`, `OFPG_ANY`).
pub const OFPG_MAX: u32 = 0xffff_ff00;
/// `OFPM_MAX`: meter ids above it are virtual or reserved.
pub const OFPM_MAX: u32 = 0xffff_0000;
/// `OFPM_ALL`.
pub const OFPM_ALL: u32 = 0xffff_ffff;
/// `OFPQ_ALL`.
pub const OFPQ_ALL: u32 = 0xffff_ffff;

/// OFPT_PORT_MOD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortMod {
    pub port_no: u32,
    pub hw_addr: [u8; 6],
    pub config: u32,
    pub mask: u32,
    pub advertise: u32,
}

/// OFPT_GROUP_MOD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMod {
    pub command: u16,
    pub group_type: u8,
    pub group_id: u32,
    pub buckets: Vec<WireBucket>,
}

/// `ofp_bucket`: a group's bucket as the wire carries it (ports in
/// OpenFlow 1.3 numbering).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireBucket {
    pub weight: u16,
    pub watch_port: u32,
    pub watch_group: u32,
    pub actions: Vec<OfAction>,
}

/// `ofp_group_desc`: one group of a GROUP_DESC reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDesc {
    pub group_type: u8,
    pub group_id: u32,
    pub buckets: Vec<WireBucket>,
}

/// `ofp_group_stats`: one group of a GROUP (statistics) reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    pub group_id: u32,
    pub ref_count: u32,
    pub packet_count: u64,
    pub byte_count: u64,
    pub duration_sec: u32,
    pub duration_nsec: u32,
    /// (packets, bytes) per bucket.
    pub buckets: Vec<(u64, u64)>,
}

/// OFPT_METER_MOD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterMod {
    pub command: u16,
    pub flags: u16,
    pub meter_id: u32,
    /// Empty for a delete.
    pub bands: Vec<Band>,
}

/// `ofp_meter_stats`: one meter of a METER (statistics) reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeterStats {
    pub meter_id: u32,
    pub flow_count: u32,
    pub packet_in_count: u64,
    pub byte_in_count: u64,
    pub duration_sec: u32,
    pub duration_nsec: u32,
    /// (packets, bytes) each band dropped.
    pub bands: Vec<(u64, u64)>,
}

/// `ofp_meter_config`: one meter of a METER_CONFIG reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterConfigEntry {
    pub flags: u16,
    pub meter_id: u32,
    pub bands: Vec<Band>,
}

/// `ofp_flow_removed_reason`.
pub mod flow_removed_reason {
    pub const IDLE_TIMEOUT: u8 = 0;
    pub const HARD_TIMEOUT: u8 = 1;
    pub const DELETE: u8 = 2;
    pub const GROUP_DELETE: u8 = 3;
}

/// OFPT_FLOW_REMOVED.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRemoved {
    pub cookie: u64,
    pub priority: u16,
    pub reason: u8,
    pub table_id: u8,
    pub duration_sec: u32,
    pub duration_nsec: u32,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    pub packet_count: u64,
    pub byte_count: u64,
    pub r#match: Match,
}

/// `ofp_async_config`: which asynchronous messages a connection gets, by
/// reason bit; index 0 for the master/equal role, 1 for slave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncConfig {
    pub packet_in: [u32; 2],
    pub port_status: [u32; 2],
    pub flow_removed: [u32; 2],
}

impl AsyncConfig {
    /// OpenFlow 1.3's defaults (section 6.1.1): a master or equal gets
    /// PACKET_IN for NO_MATCH and ACTION, every PORT_STATUS and every
    /// FLOW_REMOVED; a slave gets PORT_STATUS only.
    pub const OF13_DEFAULT: AsyncConfig = AsyncConfig {
        packet_in: [0b011, 0],
        port_status: [0b111, 0b111],
        flow_removed: [0b1111, 0],
    };
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketIn {
    pub buffer_id: u32,
    pub total_len: u16,
    pub reason: u8,
    pub table_id: u8,
    pub cookie: u64,
    pub r#match: Match,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketOut {
    pub buffer_id: u32,
    /// OpenFlow 1.3 numbering (`OFPP_CONTROLLER` when none).
    pub in_port: u32,
    pub actions: Vec<OfAction>,
    pub data: Vec<u8>,
}

/// `ofp_port_reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortReason {
    Add = 0,
    Delete = 1,
    Modify = 2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStatus {
    pub reason: PortReason,
    pub desc: PortDesc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// `versions`: the version bitmap (bit N = wire version N); a HELLO
    /// without one offers the header's version and everything below it.
    Hello {
        versions: u32,
    },
    Error {
        err_type: u16,
        code: u16,
        data: Vec<u8>,
    },
    EchoRequest(Vec<u8>),
    EchoReply(Vec<u8>),
    FeaturesRequest,
    FeaturesReply(Features),
    GetConfigRequest,
    GetConfigReply(SwitchConfig),
    SetConfig(SwitchConfig),
    PacketIn(PacketIn),
    PortStatus(PortStatus),
    PacketOut(PacketOut),
    FlowMod(FlowMod),
    MultipartRequest(MultipartRequest),
    MultipartReply(MultipartReply),
    PortMod(PortMod),
    /// OFPT_GROUP_MOD with its buckets.
    GroupMod(GroupMod),
    /// OFPT_METER_MOD without its bands: flowmark has no meters, so a meter
    /// mod is only judged (by the session), never installed.
    MeterMod(MeterMod),
    /// OFPT_QUEUE_GET_CONFIG_REQUEST (`OFPP_ANY` for every port).
    QueueGetConfigRequest {
        port: u32,
    },
    /// OFPT_QUEUE_GET_CONFIG_REPLY of a port without queues (flowmark
    /// configures none).
    QueueGetConfigReply {
        port: u32,
    },
    BarrierRequest,
    BarrierReply,
    RoleRequest {
        role: u32,
        generation_id: u64,
    },
    RoleReply {
        role: u32,
        generation_id: u64,
    },
    FlowRemoved(FlowRemoved),
    GetAsyncRequest,
    GetAsyncReply(AsyncConfig),
    SetAsync(AsyncConfig),
    /// ONFT13_ROLE_STATUS: the switch changed this connection's role
    /// (`reason` 0: another controller asked to be master).
    RoleStatus {
        role: u32,
        reason: u8,
        generation_id: u64,
    },
    /// ONFT13_BUNDLE_CONTROL (the ONF bundle extension to OpenFlow 1.3 that
    /// `ovs-ofctl -O OpenFlow13 --bundle` uses).
    BundleControl(BundleControl),
    /// ONFT13_BUNDLE_ADD_MESSAGE: `message` is the whole encapsulated
    /// message (header included), decoded by the session.
    BundleAdd {
        bundle_id: u32,
        flags: u16,
        message: Vec<u8>,
    },
}

/// A bundle's flow mods, decoded once as they arrive (the session refuses
/// one that does not decode then) and applied at the commit. Action lists
/// are kept once per run of equal ones among the last few: a controller's
/// bundle repeats a handful of lists, and a small heap block per message
/// left a million-rule bundle's daemon with a fragmented heap after the
/// commit. The messages as received stay too, back to back in one buffer,
/// for the error that quotes a failed one.
#[derive(Clone, Debug, Default)]
pub struct BundledFlowMods {
    /// Each flow mod with its `actions` left empty, and the index of its
    /// list in `action_lists`.
    mods: Vec<(FlowMod, u32)>,
    action_lists: Vec<Vec<OfAction>>,
    /// Indices of the most recently used lists, most recent first.
    recent: [Option<u32>; 4],
    raw: Vec<u8>,
    /// Where each message ends in `raw`.
    ends: Vec<u32>,
    n_adds: usize,
    /// Group mods, each with its place among the bundle's messages.
    group_mods: Vec<(u32, GroupMod)>,
}

/// One message of a bundle, in order (see [`BundledFlowMods::ops`]).
// A transient iterator item, moved once: boxing the flow mod would cost an
// allocation per mod of a large bundle.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BundledOp<'a> {
    Flow(FlowMod),
    Group(&'a GroupMod),
}

impl BundledFlowMods {
    /// Appends a flow mod: `message` as received, `fm` as it decoded.
    pub fn push(&mut self, message: &[u8], mut fm: FlowMod) {
        let actions = std::mem::take(&mut fm.actions);
        let lists = &mut self.action_lists;
        if !recent_first(&mut self.recent, |&i| {
            lists.get(i as usize) == Some(&actions)
        }) {
            self.recent[0] = Some(lists.len() as u32);
            lists.push(actions);
        }
        let list = self.recent[0].unwrap_or_default();
        if matches!(fm.command, FlowModCommand::Add) {
            self.n_adds += 1;
        }
        self.mods.push((fm, list));
        self.raw.extend_from_slice(message);
        self.ends.push(self.raw.len() as u32);
    }

    /// Appends a group mod: `message` as received, `gm` as it decoded.
    pub fn push_group(&mut self, message: &[u8], gm: GroupMod) {
        self.group_mods.push((self.ends.len() as u32, gm));
        self.raw.extend_from_slice(message);
        self.ends.push(self.raw.len() as u32);
    }

    /// Messages held (flow and group mods).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Every message in order: the index of each is its place in the
    /// bundle ([`BundledFlowMods::message`]).
    pub fn ops(&self) -> impl Iterator<Item = BundledOp<'_>> + '_ {
        let mut flows = self.flow_mods();
        let mut groups = self.group_mods.iter().peekable();
        (0..self.ends.len() as u32).filter_map(move |i| match groups.peek() {
            Some((at, _)) if *at == i => groups.next().map(|(_, g)| BundledOp::Group(g)),
            _ => flows.next().map(BundledOp::Flow),
        })
    }

    /// How many distinct action lists are kept.
    pub fn action_lists(&self) -> usize {
        self.action_lists.len()
    }

    /// How many of the flow mods are adds (room to reserve at the commit).
    pub fn n_adds(&self) -> usize {
        self.n_adds
    }

    /// Message `i` as received (header included).
    pub fn message(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        };
        self.raw.get(start..end)
    }

    /// The flow mods in order, each with its own copy of its actions.
    pub fn flow_mods(&self) -> impl Iterator<Item = FlowMod> + '_ {
        self.mods.iter().map(|(fm, list)| FlowMod {
            actions: self
                .action_lists
                .get(*list as usize)
                .cloned()
                .unwrap_or_default(),
            ..fm.clone()
        })
    }
}

/// The ONF experimenter id (`ONF_VENDOR_ID`).
pub const ONF_EXPERIMENTER: u32 = 0x4f4e_4600;
/// ONF experimenter message types of the bundle extension.
pub const ONFT13_BUNDLE_CONTROL: u32 = 2300;
pub const ONFT13_BUNDLE_ADD_MESSAGE: u32 = 2301;
/// ONF experimenter message type of the role status extension (OpenFlow
/// 1.4's ROLE_STATUS, for 1.3).
pub const ONFT13_ROLE_STATUS: u32 = 1911;

/// `ofp14_bundle_ctrl_type`.
pub mod bundle_ctrl {
    pub const OPEN_REQUEST: u16 = 0;
    pub const OPEN_REPLY: u16 = 1;
    pub const CLOSE_REQUEST: u16 = 2;
    pub const CLOSE_REPLY: u16 = 3;
    pub const COMMIT_REQUEST: u16 = 4;
    pub const COMMIT_REPLY: u16 = 5;
    pub const DISCARD_REQUEST: u16 = 6;
    pub const DISCARD_REPLY: u16 = 7;
}

/// `ofp14_bundle_flags`.
pub mod bundle_flags {
    pub const ATOMIC: u16 = 1 << 0;
    pub const ORDERED: u16 = 1 << 1;
}

/// A bundle control message (properties, if any, are ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BundleControl {
    pub bundle_id: u32,
    pub ctrl_type: u16,
    pub flags: u16,
}

/// A message with its header's version and transaction id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub version: u8,
    pub xid: u32,
    pub msg: Message,
}

/// The header fields of a message (whole or not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub msg_type: u8,
    pub length: u16,
    pub xid: u32,
}

/// Reads the 8-byte header at the start of `bytes`.
pub fn parse_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    let mut r = Reader::new(bytes);
    let short = |_| DecodeError::ShortHeader(bytes.len());
    let h = Header {
        version: r.u8().map_err(short)?,
        msg_type: r.u8().map_err(short)?,
        length: r.u16().map_err(short)?,
        xid: r.u32().map_err(short)?,
    };
    if usize::from(h.length) < HEADER_LEN {
        return Err(DecodeError::BadHeaderLength(h.length));
    }
    Ok(h)
}

/// Decodes the message at the start of `bytes` (bytes after its declared
/// length are ignored). Never panics.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let h = parse_header(bytes)?;
    let len = usize::from(h.length);
    let Some(whole) = bytes.get(..len) else {
        return Err(DecodeError::Incomplete {
            declared: len,
            available: bytes.len(),
        });
    };
    let refused = |error: OfpError| DecodeError::Refused { xid: h.xid, error };
    if h.msg_type != msg_type::HELLO && h.version != OFP13_VERSION {
        return Err(refused(OfpError::bad_request(
            Brc::BadVersion,
            format!(
                "version {:#04x}; this connection speaks OpenFlow 1.3 (0x04)",
                h.version
            ),
        )));
    }
    let msg = decode_body(&h, &whole[HEADER_LEN..]).map_err(refused)?;
    Ok(Envelope {
        version: h.version,
        xid: h.xid,
        msg,
    })
}

fn bad_len(what: &str) -> OfpError {
    OfpError::bad_request(Brc::BadLen, format!("{what}: wrong length"))
}

/// `r.$op()` or BAD_LEN naming `$what`.
macro_rules! get {
    ($r:expr, $op:ident, $what:expr) => {
        $r.$op().map_err(|_| bad_len($what))?
    };
    ($r:expr, $op:ident($n:expr), $what:expr) => {
        $r.$op($n).map_err(|_| bad_len($what))?
    };
}

fn expect_empty(r: &Reader<'_>, what: &str) -> Result<(), OfpError> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(bad_len(what))
    }
}

fn decode_body(h: &Header, body: &[u8]) -> Result<Message, OfpError> {
    use msg_type as t;
    let mut r = Reader::new(body);
    let msg = match h.msg_type {
        t::HELLO => {
            // Elements: type, length, payload padded to 8. Only the version
            // bitmap matters; others are skipped, as the spec says.
            let mut versions = 0u32;
            let mut have_bitmap = false;
            while r.remaining() >= 4 {
                let ty = get!(r, u16, "hello element");
                let len = usize::from(get!(r, u16, "hello element"));
                if len < 4 {
                    return Err(bad_len("hello element"));
                }
                let payload = get!(r, bytes(len - 4), "hello element");
                let pad = (8 - len % 8) % 8;
                r.skip(pad.min(r.remaining()))
                    .map_err(|_| bad_len("hello"))?;
                if ty == 1 {
                    have_bitmap = true;
                    let mut p = Reader::new(payload);
                    // Only the first 32-bit word covers versions 0..=31.
                    if p.remaining() >= 4 {
                        versions = get!(p, u32, "hello bitmap");
                    }
                }
            }
            if !have_bitmap {
                versions = if h.version >= 31 {
                    u32::MAX
                } else {
                    (1u32 << (h.version + 1)) - 1
                };
            }
            Message::Hello { versions }
        }
        t::ERROR => Message::Error {
            err_type: get!(r, u16, "error"),
            code: get!(r, u16, "error"),
            data: r.rest().to_vec(),
        },
        t::ECHO_REQUEST => Message::EchoRequest(r.rest().to_vec()),
        t::ECHO_REPLY => Message::EchoReply(r.rest().to_vec()),
        t::FEATURES_REQUEST => {
            expect_empty(&r, "features request")?;
            Message::FeaturesRequest
        }
        t::FEATURES_REPLY => {
            let f = Features {
                datapath_id: get!(r, u64, "features reply"),
                n_buffers: get!(r, u32, "features reply"),
                n_tables: get!(r, u8, "features reply"),
                auxiliary_id: get!(r, u8, "features reply"),
                capabilities: {
                    get!(r, skip(2), "features reply");
                    get!(r, u32, "features reply")
                },
            };
            get!(r, skip(4), "features reply");
            Message::FeaturesReply(f)
        }
        t::GET_CONFIG_REQUEST => {
            expect_empty(&r, "get config request")?;
            Message::GetConfigRequest
        }
        t::GET_CONFIG_REPLY | t::SET_CONFIG => {
            let c = SwitchConfig {
                flags: get!(r, u16, "switch config"),
                miss_send_len: get!(r, u16, "switch config"),
            };
            expect_empty(&r, "switch config")?;
            if h.msg_type == t::SET_CONFIG {
                Message::SetConfig(c)
            } else {
                Message::GetConfigReply(c)
            }
        }
        t::BARRIER_REQUEST => {
            expect_empty(&r, "barrier request")?;
            Message::BarrierRequest
        }
        t::BARRIER_REPLY => {
            expect_empty(&r, "barrier reply")?;
            Message::BarrierReply
        }
        t::ROLE_REQUEST | t::ROLE_REPLY => {
            let role = get!(r, u32, "role");
            get!(r, skip(4), "role");
            let generation_id = get!(r, u64, "role");
            if h.msg_type == t::ROLE_REQUEST {
                Message::RoleRequest {
                    role,
                    generation_id,
                }
            } else {
                Message::RoleReply {
                    role,
                    generation_id,
                }
            }
        }
        t::GET_ASYNC_REQUEST => {
            expect_empty(&r, "get async request")?;
            Message::GetAsyncRequest
        }
        t::GET_ASYNC_REPLY | t::SET_ASYNC => {
            let mut w = [0u32; 6];
            for v in &mut w {
                *v = get!(r, u32, "async config");
            }
            expect_empty(&r, "async config")?;
            let c = AsyncConfig {
                packet_in: [w[0], w[1]],
                port_status: [w[2], w[3]],
                flow_removed: [w[4], w[5]],
            };
            if h.msg_type == t::SET_ASYNC {
                Message::SetAsync(c)
            } else {
                Message::GetAsyncReply(c)
            }
        }
        t::FLOW_REMOVED => {
            let cookie = get!(r, u64, "flow removed");
            let priority = get!(r, u16, "flow removed");
            let reason = get!(r, u8, "flow removed");
            let table_id = get!(r, u8, "flow removed");
            let duration_sec = get!(r, u32, "flow removed");
            let duration_nsec = get!(r, u32, "flow removed");
            let idle_timeout = get!(r, u16, "flow removed");
            let hard_timeout = get!(r, u16, "flow removed");
            let packet_count = get!(r, u64, "flow removed");
            let byte_count = get!(r, u64, "flow removed");
            let m = decode_match(&mut r)?;
            Message::FlowRemoved(FlowRemoved {
                cookie,
                priority,
                reason,
                table_id,
                duration_sec,
                duration_nsec,
                idle_timeout,
                hard_timeout,
                packet_count,
                byte_count,
                r#match: m,
            })
        }
        t::FLOW_MOD => Message::FlowMod(decode_flow_mod(&mut r)?),
        t::PACKET_OUT => {
            let buffer_id = get!(r, u32, "packet out");
            let in_port = get!(r, u32, "packet out");
            let actions_len = usize::from(get!(r, u16, "packet out"));
            get!(r, skip(6), "packet out");
            let acts = get!(r, bytes(actions_len), "packet out actions");
            let ctx = ActionContext {
                unchecked: true,
                ..ActionContext::default()
            };
            let actions = decode_actions(acts, &ctx, ActionUse::PacketOut)?;
            Message::PacketOut(PacketOut {
                buffer_id,
                in_port,
                actions,
                data: r.rest().to_vec(),
            })
        }
        t::PACKET_IN => {
            let buffer_id = get!(r, u32, "packet in");
            let total_len = get!(r, u16, "packet in");
            let reason = get!(r, u8, "packet in");
            let table_id = get!(r, u8, "packet in");
            let cookie = get!(r, u64, "packet in");
            let m = decode_match(&mut r)?;
            get!(r, skip(2), "packet in");
            Message::PacketIn(PacketIn {
                buffer_id,
                total_len,
                reason,
                table_id,
                cookie,
                r#match: m,
                data: r.rest().to_vec(),
            })
        }
        t::PORT_STATUS => {
            let reason = match get!(r, u8, "port status") {
                0 => PortReason::Add,
                1 => PortReason::Delete,
                2 => PortReason::Modify,
                _ => return Err(bad_len("port status reason")),
            };
            get!(r, skip(7), "port status");
            let desc = decode_port_desc(&mut r)?;
            expect_empty(&r, "port status")?;
            Message::PortStatus(PortStatus { reason, desc })
        }
        t::MULTIPART_REQUEST => Message::MultipartRequest(decode_mp_request(&mut r)?),
        t::MULTIPART_REPLY => Message::MultipartReply(decode_mp_reply(&mut r)?),
        t::PORT_MOD => {
            let port_no = get!(r, u32, "port mod");
            get!(r, skip(4), "port mod");
            let mut hw_addr = [0u8; 6];
            hw_addr.copy_from_slice(get!(r, bytes(6), "port mod"));
            get!(r, skip(2), "port mod");
            let config = get!(r, u32, "port mod");
            let mask = get!(r, u32, "port mod");
            let advertise = get!(r, u32, "port mod");
            get!(r, skip(4), "port mod");
            expect_empty(&r, "port mod")?;
            Message::PortMod(PortMod {
                port_no,
                hw_addr,
                config,
                mask,
                advertise,
            })
        }
        t::GROUP_MOD => {
            let command = get!(r, u16, "group mod");
            let group_type = get!(r, u8, "group mod");
            get!(r, skip(1), "group mod");
            let group_id = get!(r, u32, "group mod");
            let buckets = decode_buckets(r.rest())?;
            Message::GroupMod(GroupMod {
                command,
                group_type,
                group_id,
                buckets,
            })
        }
        t::METER_MOD => {
            let command = get!(r, u16, "meter mod");
            let flags = get!(r, u16, "meter mod");
            let meter_id = get!(r, u32, "meter mod");
            // A delete's bands, if any, mean nothing (OVS ignores them).
            let bands = if command == mod_command::DELETE {
                Vec::new()
            } else {
                decode_bands(r.rest())?
            };
            Message::MeterMod(MeterMod {
                command,
                flags,
                meter_id,
                bands,
            })
        }
        t::QUEUE_GET_CONFIG_REQUEST => {
            let port = get!(r, u32, "queue get config request");
            get!(r, skip(4), "queue get config request");
            expect_empty(&r, "queue get config request")?;
            Message::QueueGetConfigRequest { port }
        }
        t::QUEUE_GET_CONFIG_REPLY => {
            let port = get!(r, u32, "queue get config reply");
            get!(r, skip(4), "queue get config reply");
            if !r.is_empty() {
                return Err(OfpError::bad_request(
                    Brc::BadLen,
                    "queue descriptions are not decoded (flowmark configures no queues)",
                ));
            }
            Message::QueueGetConfigReply { port }
        }
        t::EXPERIMENTER => {
            let exp = get!(r, u32, "experimenter");
            if exp != ONF_EXPERIMENTER {
                return Err(OfpError::bad_request(
                    Brc::BadExperimenter,
                    format!("experimenter message from {exp:#x}"),
                ));
            }
            let exp_type = get!(r, u32, "experimenter type");
            if exp_type == ONFT13_ROLE_STATUS {
                let role = get!(r, u32, "role status");
                let reason = get!(r, u8, "role status");
                get!(r, skip(3), "role status");
                let generation_id = get!(r, u64, "role status");
                expect_empty(&r, "role status")?;
                return Ok(Message::RoleStatus {
                    role,
                    reason,
                    generation_id,
                });
            }
            let bundle_id = get!(r, u32, "bundle id");
            let ctrl_type = get!(r, u16, "bundle control type");
            let flags = get!(r, u16, "bundle flags");
            match exp_type {
                ONFT13_BUNDLE_CONTROL => Message::BundleControl(BundleControl {
                    bundle_id,
                    ctrl_type,
                    flags,
                }),
                ONFT13_BUNDLE_ADD_MESSAGE => {
                    // The inner message's own length says where it ends;
                    // properties may follow.
                    let rest = r.rest();
                    let inner = parse_header(rest).map_err(|_| bad_len("bundled message"))?;
                    let message = rest
                        .get(..usize::from(inner.length))
                        .ok_or_else(|| bad_len("bundled message"))?
                        .to_vec();
                    Message::BundleAdd {
                        bundle_id,
                        flags,
                        message,
                    }
                }
                other => {
                    return Err(OfpError::bad_request(
                        Brc::BadExpType,
                        format!("ONF experimenter message type {other}"),
                    ))
                }
            }
        }
        other => {
            return Err(OfpError::bad_request(
                Brc::BadType,
                format!("message type {other} is not supported"),
            ))
        }
    };
    Ok(msg)
}

/// A list of `ofp_bucket`s filling `bytes`. Their actions have no match
/// to be checked against (as in OVS, a set-field needs no prerequisite).
fn decode_buckets(bytes: &[u8]) -> Result<Vec<WireBucket>, OfpError> {
    let bad = |d: &str| OfpError::group_mod_failed(GroupModFailedCode::BadBucket, d.to_string());
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while !r.is_empty() {
        let len = usize::from(r.u16().map_err(|_| bad("bucket header cut short"))?);
        if len < 16 || len % 8 != 0 {
            return Err(bad("bucket length is not a multiple of 8 of at least 16"));
        }
        let body = r
            .bytes(len - 2)
            .map_err(|_| bad("bucket runs past the message"))?;
        let mut b = Reader::new(body);
        let weight = b.u16().map_err(|_| bad("bucket"))?;
        let watch_port = b.u32().map_err(|_| bad("bucket"))?;
        let watch_group = b.u32().map_err(|_| bad("bucket"))?;
        b.skip(4).map_err(|_| bad("bucket"))?;
        let ctx = ActionContext {
            unchecked: true,
            ..ActionContext::default()
        };
        let actions = decode_actions(b.rest(), &ctx, ActionUse::Flow)?;
        out.push(WireBucket {
            weight,
            watch_port,
            watch_group,
            actions,
        });
    }
    Ok(out)
}

/// `ofp_meter_band_header`s (16 bytes each, as both band types are), as
/// OVS reads them: another length is OFPBRC_BAD_LEN, another type
/// OFPMMFC_BAD_BAND.
fn decode_bands(bytes: &[u8]) -> Result<Vec<Band>, OfpError> {
    let bad_len = |d: &str| OfpError::bad_request(Brc::BadLen, d.to_string());
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while !r.is_empty() {
        let kind = r.u16().map_err(|_| bad_len("meter band cut short"))?;
        let len = r.u16().map_err(|_| bad_len("meter band cut short"))?;
        if len != 16 {
            return Err(bad_len("a meter band is 16 bytes"));
        }
        let rate = r.u32().map_err(|_| bad_len("meter band cut short"))?;
        let burst = r.u32().map_err(|_| bad_len("meter band cut short"))?;
        let prec_level = r.u8().map_err(|_| bad_len("meter band cut short"))?;
        r.skip(3).map_err(|_| bad_len("meter band cut short"))?;
        if kind != band_type::DROP && kind != band_type::DSCP_REMARK {
            return Err(OfpError::meter_mod_failed(
                MeterModFailedCode::BadBand,
                format!("meter band type {kind}"),
            ));
        }
        out.push(Band {
            kind,
            rate,
            burst,
            prec_level: if kind == band_type::DSCP_REMARK {
                prec_level
            } else {
                0
            },
        });
    }
    Ok(out)
}

fn put_bands(bands: &[Band], out: &mut Vec<u8>) {
    for b in bands {
        out.put_u16(b.kind);
        out.put_u16(16);
        out.put_u32(b.rate);
        out.put_u32(b.burst);
        out.put_u8(b.prec_level);
        out.put_zeros(3);
    }
}

fn put_buckets(buckets: &[WireBucket], out: &mut Vec<u8>) {
    for b in buckets {
        let start = out.len();
        out.put_u16(0);
        out.put_u16(b.weight);
        out.put_u32(b.watch_port);
        out.put_u32(b.watch_group);
        out.put_zeros(4);
        encode_actions(&b.actions, &ActionContext::default(), out);
        let len = out.len() - start;
        out.set_u16(start, len as u16);
    }
}

fn decode_flow_mod(r: &mut Reader<'_>) -> Result<FlowMod, OfpError> {
    let cookie = get!(r, u64, "flow mod");
    let cookie_mask = get!(r, u64, "flow mod");
    let table_id = get!(r, u8, "flow mod");
    let command_raw = get!(r, u8, "flow mod");
    let idle_timeout = get!(r, u16, "flow mod");
    let hard_timeout = get!(r, u16, "flow mod");
    let priority = get!(r, u16, "flow mod");
    let buffer_id = get!(r, u32, "flow mod");
    let out_port = get!(r, u32, "flow mod");
    let out_group = get!(r, u32, "flow mod");
    let flags = get!(r, u16, "flow mod");
    get!(r, skip(2), "flow mod");
    let command = FlowModCommand::from_u8(command_raw).ok_or_else(|| {
        OfpError::flow_mod_failed(Fmfc::BadCommand, format!("command {command_raw}"))
    })?;
    let m = decode_match(r)?;
    let actions = decode_instructions(r.rest(), table_id, &ActionContext::of_match(&m))?;
    Ok(FlowMod {
        cookie,
        cookie_mask,
        table_id,
        command,
        idle_timeout,
        hard_timeout,
        priority,
        buffer_id,
        out_port,
        out_group,
        flags,
        r#match: m,
        actions,
    })
}

fn decode_flow_stats_request(r: &mut Reader<'_>) -> Result<FlowStatsRequest, OfpError> {
    let table_id = get!(r, u8, "flow stats request");
    get!(r, skip(3), "flow stats request");
    let out_port = get!(r, u32, "flow stats request");
    let out_group = get!(r, u32, "flow stats request");
    get!(r, skip(4), "flow stats request");
    let cookie = get!(r, u64, "flow stats request");
    let cookie_mask = get!(r, u64, "flow stats request");
    let m = decode_match(r)?;
    expect_empty(r, "flow stats request")?;
    Ok(FlowStatsRequest {
        table_id,
        out_port,
        out_group,
        cookie,
        cookie_mask,
        r#match: m,
    })
}

/// A multipart request body that is one id (port, group, meter) and 4 pad
/// bytes.
fn id_request(r: &mut Reader<'_>, what: &str) -> Result<u32, OfpError> {
    let id = get!(r, u32, what);
    get!(r, skip(4), what);
    expect_empty(r, what)?;
    Ok(id)
}

fn decode_mp_request(r: &mut Reader<'_>) -> Result<MultipartRequest, OfpError> {
    use mp_type as m;
    let ty = get!(r, u16, "multipart request");
    let _flags = get!(r, u16, "multipart request");
    get!(r, skip(4), "multipart request");
    Ok(match ty {
        m::DESC => {
            expect_empty(r, "desc request")?;
            MultipartRequest::Desc
        }
        m::FLOW => MultipartRequest::Flow(decode_flow_stats_request(r)?),
        m::AGGREGATE => MultipartRequest::Aggregate(decode_flow_stats_request(r)?),
        m::TABLE => {
            expect_empty(r, "table stats request")?;
            MultipartRequest::Table
        }
        m::PORT_STATS => MultipartRequest::PortStats {
            port_no: id_request(r, "port stats request")?,
        },
        m::PORT_DESC => {
            expect_empty(r, "port desc request")?;
            MultipartRequest::PortDesc
        }
        m::TABLE_FEATURES => {
            if !r.is_empty() {
                return Err(OfpError::TableFeaturesEperm);
            }
            MultipartRequest::TableFeatures
        }
        m::GROUP => MultipartRequest::Group {
            group_id: id_request(r, "group stats request")?,
        },
        m::GROUP_DESC => {
            expect_empty(r, "group desc request")?;
            MultipartRequest::GroupDesc
        }
        m::GROUP_FEATURES => {
            expect_empty(r, "group features request")?;
            MultipartRequest::GroupFeatures
        }
        m::METER => MultipartRequest::Meter {
            meter_id: id_request(r, "meter stats request")?,
        },
        m::METER_CONFIG => MultipartRequest::MeterConfig {
            meter_id: id_request(r, "meter config request")?,
        },
        m::METER_FEATURES => {
            expect_empty(r, "meter features request")?;
            MultipartRequest::MeterFeatures
        }
        m::QUEUE => {
            let port_no = get!(r, u32, "queue stats request");
            let queue_id = get!(r, u32, "queue stats request");
            expect_empty(r, "queue stats request")?;
            MultipartRequest::Queue { port_no, queue_id }
        }
        m::EXPERIMENTER => {
            return Err(OfpError::bad_request(
                Brc::BadExperimenter,
                "experimenter multipart requests are not supported",
            ))
        }
        other => {
            return Err(OfpError::bad_request(
                Brc::BadMultipart,
                format!("multipart type {other} is not supported"),
            ))
        }
    })
}

fn decode_port_desc(r: &mut Reader<'_>) -> Result<PortDesc, OfpError> {
    let port_no = get!(r, u32, "port");
    get!(r, skip(4), "port");
    let mut hw_addr = [0u8; 6];
    hw_addr.copy_from_slice(get!(r, bytes(6), "port"));
    get!(r, skip(2), "port");
    let name = get_str(get!(r, bytes(16), "port"));
    Ok(PortDesc {
        port_no,
        hw_addr,
        name,
        config: get!(r, u32, "port"),
        state: get!(r, u32, "port"),
        curr: get!(r, u32, "port"),
        advertised: get!(r, u32, "port"),
        supported: get!(r, u32, "port"),
        peer: get!(r, u32, "port"),
        curr_speed: get!(r, u32, "port"),
        max_speed: get!(r, u32, "port"),
    })
}

fn decode_mp_reply(r: &mut Reader<'_>) -> Result<MultipartReply, OfpError> {
    use mp_type as m;
    let ty = get!(r, u16, "multipart reply");
    let flags = get!(r, u16, "multipart reply");
    get!(r, skip(4), "multipart reply");
    let body = match ty {
        m::DESC => {
            let mut s =
                |n| -> Result<String, OfpError> { Ok(get_str(get!(r, bytes(n), "desc reply"))) };
            MultipartReplyBody::Desc(Desc {
                mfr_desc: s(256)?,
                hw_desc: s(256)?,
                sw_desc: s(256)?,
                serial_num: s(32)?,
                dp_desc: s(256)?,
            })
        }
        m::FLOW => {
            let mut flows = Vec::new();
            while !r.is_empty() {
                let len = usize::from(get!(r, u16, "flow stats"));
                if len < 2 {
                    return Err(bad_len("flow stats"));
                }
                let mut e = Reader::new(get!(r, bytes(len - 2), "flow stats"));
                let table_id = get!(e, u8, "flow stats");
                get!(e, skip(1), "flow stats");
                let duration_sec = get!(e, u32, "flow stats");
                let duration_nsec = get!(e, u32, "flow stats");
                let priority = get!(e, u16, "flow stats");
                let idle_timeout = get!(e, u16, "flow stats");
                let hard_timeout = get!(e, u16, "flow stats");
                let flags = get!(e, u16, "flow stats");
                get!(e, skip(4), "flow stats");
                let cookie = get!(e, u64, "flow stats");
                let packet_count = get!(e, u64, "flow stats");
                let byte_count = get!(e, u64, "flow stats");
                let mt = decode_match(&mut e)?;
                let actions =
                    decode_instructions(e.rest(), table_id, &ActionContext::of_match(&mt))?;
                flows.push(FlowStats {
                    table_id,
                    duration_sec,
                    duration_nsec,
                    priority,
                    idle_timeout,
                    hard_timeout,
                    flags,
                    cookie,
                    packet_count,
                    byte_count,
                    r#match: mt,
                    actions,
                });
            }
            MultipartReplyBody::Flow(flows)
        }
        m::AGGREGATE => {
            let packet_count = get!(r, u64, "aggregate reply");
            let byte_count = get!(r, u64, "aggregate reply");
            let flow_count = get!(r, u32, "aggregate reply");
            get!(r, skip(4), "aggregate reply");
            MultipartReplyBody::Aggregate {
                packet_count,
                byte_count,
                flow_count,
            }
        }
        m::TABLE => {
            let mut tables = Vec::new();
            while !r.is_empty() {
                let table_id = get!(r, u8, "table stats");
                get!(r, skip(3), "table stats");
                tables.push(TableStats {
                    table_id,
                    active_count: get!(r, u32, "table stats"),
                    lookup_count: get!(r, u64, "table stats"),
                    matched_count: get!(r, u64, "table stats"),
                });
            }
            MultipartReplyBody::Table(tables)
        }
        m::PORT_STATS => {
            let mut ports = Vec::new();
            while !r.is_empty() {
                let port_no = get!(r, u32, "port stats");
                get!(r, skip(4), "port stats");
                let mut c = [0u64; 12];
                for x in &mut c {
                    *x = get!(r, u64, "port stats");
                }
                ports.push(PortStats {
                    port_no,
                    rx_packets: c[0],
                    tx_packets: c[1],
                    rx_bytes: c[2],
                    tx_bytes: c[3],
                    rx_dropped: c[4],
                    tx_dropped: c[5],
                    rx_errors: c[6],
                    tx_errors: c[7],
                    rx_frame_err: c[8],
                    rx_over_err: c[9],
                    rx_crc_err: c[10],
                    collisions: c[11],
                    duration_sec: get!(r, u32, "port stats"),
                    duration_nsec: get!(r, u32, "port stats"),
                });
            }
            MultipartReplyBody::PortStats(ports)
        }
        m::PORT_DESC => {
            let mut ports = Vec::new();
            while !r.is_empty() {
                ports.push(decode_port_desc(r)?);
            }
            MultipartReplyBody::PortDesc(ports)
        }
        m::TABLE_FEATURES => {
            let mut tables = Vec::new();
            while !r.is_empty() {
                let len = usize::from(get!(r, u16, "table features"));
                if len < 64 {
                    return Err(bad_len("table features"));
                }
                let mut e = Reader::new(get!(r, bytes(len - 2), "table features"));
                let table_id = get!(e, u8, "table features");
                get!(e, skip(5), "table features");
                let name = get_str(get!(e, bytes(32), "table features"));
                get!(e, skip(20), "table features");
                let max_entries = get!(e, u32, "table features");
                tables.push(TableFeatures {
                    table_id,
                    name,
                    max_entries,
                });
            }
            MultipartReplyBody::TableFeatures(tables)
        }
        m::GROUP => {
            let mut stats = Vec::new();
            while !r.is_empty() {
                let len = usize::from(get!(r, u16, "group stats"));
                if len < 40 || (len - 40) % 16 != 0 {
                    return Err(bad_len("group stats entry"));
                }
                get!(r, skip(2), "group stats");
                let mut g = GroupStats {
                    group_id: get!(r, u32, "group stats"),
                    ref_count: get!(r, u32, "group stats"),
                    ..GroupStats::default()
                };
                get!(r, skip(4), "group stats");
                g.packet_count = get!(r, u64, "group stats");
                g.byte_count = get!(r, u64, "group stats");
                g.duration_sec = get!(r, u32, "group stats");
                g.duration_nsec = get!(r, u32, "group stats");
                for _ in 0..(len - 40) / 16 {
                    g.buckets
                        .push((get!(r, u64, "bucket stats"), get!(r, u64, "bucket stats")));
                }
                stats.push(g);
            }
            MultipartReplyBody::GroupStats(stats)
        }
        m::GROUP_DESC => {
            let mut descs = Vec::new();
            while !r.is_empty() {
                let len = usize::from(get!(r, u16, "group desc"));
                let group_type = get!(r, u8, "group desc");
                get!(r, skip(1), "group desc");
                let group_id = get!(r, u32, "group desc");
                let rest = get!(r, bytes(len.saturating_sub(8)), "group desc");
                descs.push(GroupDesc {
                    group_type,
                    group_id,
                    buckets: decode_buckets(rest)?,
                });
            }
            MultipartReplyBody::GroupDesc(descs)
        }
        m::METER => {
            let mut stats = Vec::new();
            while !r.is_empty() {
                let meter_id = get!(r, u32, "meter stats");
                let len = usize::from(get!(r, u16, "meter stats"));
                if len < 40 || (len - 40) % 16 != 0 {
                    return Err(bad_len("meter stats entry"));
                }
                get!(r, skip(6), "meter stats");
                let mut m = MeterStats {
                    meter_id,
                    flow_count: get!(r, u32, "meter stats"),
                    packet_in_count: get!(r, u64, "meter stats"),
                    byte_in_count: get!(r, u64, "meter stats"),
                    duration_sec: get!(r, u32, "meter stats"),
                    duration_nsec: get!(r, u32, "meter stats"),
                    bands: Vec::new(),
                };
                for _ in 0..(len - 40) / 16 {
                    m.bands
                        .push((get!(r, u64, "band stats"), get!(r, u64, "band stats")));
                }
                stats.push(m);
            }
            MultipartReplyBody::MeterStats(stats)
        }
        m::METER_CONFIG => {
            let mut configs = Vec::new();
            while !r.is_empty() {
                let len = usize::from(get!(r, u16, "meter config"));
                if len < 8 || (len - 8) % 16 != 0 {
                    return Err(bad_len("meter config entry"));
                }
                let flags = get!(r, u16, "meter config");
                let meter_id = get!(r, u32, "meter config");
                let bands = get!(r, bytes(len - 8), "meter config");
                configs.push(MeterConfigEntry {
                    flags,
                    meter_id,
                    bands: decode_bands(bands)?,
                });
            }
            MultipartReplyBody::MeterConfig(configs)
        }
        m::QUEUE => {
            if !r.is_empty() {
                return Err(OfpError::bad_request(
                    Brc::BadMultipart,
                    format!("multipart reply type {ty}: its entries are not decoded"),
                ));
            }
            MultipartReplyBody::NoEntries(ty)
        }
        m::GROUP_FEATURES => {
            let mut f = GroupFeatures {
                types: get!(r, u32, "group features"),
                capabilities: get!(r, u32, "group features"),
                ..GroupFeatures::default()
            };
            for g in &mut f.max_groups {
                *g = get!(r, u32, "group features");
            }
            for a in &mut f.actions {
                *a = get!(r, u32, "group features");
            }
            expect_empty(r, "group features")?;
            MultipartReplyBody::GroupFeatures(f)
        }
        m::METER_FEATURES => {
            let f = MeterFeatures {
                max_meter: get!(r, u32, "meter features"),
                band_types: get!(r, u32, "meter features"),
                capabilities: get!(r, u32, "meter features"),
                max_bands: get!(r, u8, "meter features"),
                max_color: get!(r, u8, "meter features"),
            };
            get!(r, skip(2), "meter features");
            expect_empty(r, "meter features")?;
            MultipartReplyBody::MeterFeatures(f)
        }
        other => {
            return Err(OfpError::bad_request(
                Brc::BadMultipart,
                format!("multipart reply type {other}"),
            ))
        }
    };
    Ok(MultipartReply {
        more: flags & OFPMPF_MORE != 0,
        body,
    })
}

// ---------------------------------------------------------------------------
// Encoding

fn msg_type_of(m: &Message) -> u8 {
    use msg_type as t;
    match m {
        Message::Hello { .. } => t::HELLO,
        Message::Error { .. } => t::ERROR,
        Message::EchoRequest(_) => t::ECHO_REQUEST,
        Message::EchoReply(_) => t::ECHO_REPLY,
        Message::FeaturesRequest => t::FEATURES_REQUEST,
        Message::FeaturesReply(_) => t::FEATURES_REPLY,
        Message::GetConfigRequest => t::GET_CONFIG_REQUEST,
        Message::GetConfigReply(_) => t::GET_CONFIG_REPLY,
        Message::SetConfig(_) => t::SET_CONFIG,
        Message::PacketIn(_) => t::PACKET_IN,
        Message::PortStatus(_) => t::PORT_STATUS,
        Message::PacketOut(_) => t::PACKET_OUT,
        Message::FlowMod(_) => t::FLOW_MOD,
        Message::MultipartRequest(_) => t::MULTIPART_REQUEST,
        Message::MultipartReply(_) => t::MULTIPART_REPLY,
        Message::PortMod(_) => t::PORT_MOD,
        Message::GroupMod(_) => t::GROUP_MOD,
        Message::MeterMod(_) => t::METER_MOD,
        Message::QueueGetConfigRequest { .. } => t::QUEUE_GET_CONFIG_REQUEST,
        Message::QueueGetConfigReply { .. } => t::QUEUE_GET_CONFIG_REPLY,
        Message::BarrierRequest => t::BARRIER_REQUEST,
        Message::BarrierReply => t::BARRIER_REPLY,
        Message::RoleRequest { .. } => t::ROLE_REQUEST,
        Message::RoleReply { .. } => t::ROLE_REPLY,
        Message::FlowRemoved(_) => t::FLOW_REMOVED,
        Message::GetAsyncRequest => t::GET_ASYNC_REQUEST,
        Message::GetAsyncReply(_) => t::GET_ASYNC_REPLY,
        Message::SetAsync(_) => t::SET_ASYNC,
        Message::BundleControl(_) | Message::BundleAdd { .. } | Message::RoleStatus { .. } => {
            t::EXPERIMENTER
        }
    }
}

/// Encodes one OpenFlow 1.3 message. A message longer than 65535 bytes
/// cannot exist; the caller splits multipart replies (see
/// [`encode_multipart_reply`]).
pub fn encode(xid: u32, msg: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.put_u8(OFP13_VERSION);
    out.put_u8(msg_type_of(msg));
    out.put_u16(0);
    out.put_u32(xid);
    encode_body(msg, &mut out);
    let len = out.len().min(MAX_MESSAGE_LEN);
    out.set_u16(2, len as u16);
    out
}

fn put_flow_stats_request(q: &FlowStatsRequest, out: &mut Vec<u8>) {
    out.put_u8(q.table_id);
    out.put_zeros(3);
    out.put_u32(q.out_port);
    out.put_u32(q.out_group);
    out.put_zeros(4);
    out.put_u64(q.cookie);
    out.put_u64(q.cookie_mask);
    encode_match(&q.r#match, out);
}

fn put_port_desc(p: &PortDesc, out: &mut Vec<u8>) {
    out.put_u32(p.port_no);
    out.put_zeros(4);
    out.extend_from_slice(&p.hw_addr);
    out.put_zeros(2);
    out.put_str(&p.name, 16);
    for v in [
        p.config,
        p.state,
        p.curr,
        p.advertised,
        p.supported,
        p.peer,
        p.curr_speed,
        p.max_speed,
    ] {
        out.put_u32(v);
    }
}

/// One flow stats entry.
pub fn put_flow_stats(f: &FlowStats, out: &mut Vec<u8>) {
    let start = out.len();
    out.put_u16(0);
    out.put_u8(f.table_id);
    out.put_zeros(1);
    out.put_u32(f.duration_sec);
    out.put_u32(f.duration_nsec);
    out.put_u16(f.priority);
    out.put_u16(f.idle_timeout);
    out.put_u16(f.hard_timeout);
    out.put_u16(f.flags);
    out.put_zeros(4);
    out.put_u64(f.cookie);
    out.put_u64(f.packet_count);
    out.put_u64(f.byte_count);
    encode_match(&f.r#match, out);
    encode_instructions(&f.actions, &ActionContext::of_match(&f.r#match), out);
    let len = out.len() - start;
    out.set_u16(start, len as u16);
}

fn put_port_stats(p: &PortStats, out: &mut Vec<u8>) {
    out.put_u32(p.port_no);
    out.put_zeros(4);
    for v in [
        p.rx_packets,
        p.tx_packets,
        p.rx_bytes,
        p.tx_bytes,
        p.rx_dropped,
        p.tx_dropped,
        p.rx_errors,
        p.tx_errors,
        p.rx_frame_err,
        p.rx_over_err,
        p.rx_crc_err,
        p.collisions,
    ] {
        out.put_u64(v);
    }
    out.put_u32(p.duration_sec);
    out.put_u32(p.duration_nsec);
}

/// The properties every table features entry must carry (OVS refuses
/// entries without them): instructions, next tables, write/apply actions,
/// match, wildcards, write/apply set-field — listed empty.
const TABLE_FEATURE_PROPS: [u16; 8] = [0, 2, 4, 6, 8, 10, 12, 14];

fn put_table_features(t: &TableFeatures, out: &mut Vec<u8>) {
    let start = out.len();
    out.put_u16(0);
    out.put_u8(t.table_id);
    out.put_zeros(5);
    out.put_str(&t.name, 32);
    out.put_u64(0); // metadata_match
    out.put_u64(0); // metadata_write
    out.put_u32(0); // config
    out.put_u32(t.max_entries);
    for p in TABLE_FEATURE_PROPS {
        out.put_u16(p);
        out.put_u16(4);
        out.put_zeros(4);
    }
    let len = out.len() - start;
    out.set_u16(start, len as u16);
}

fn mp_reply_type(b: &MultipartReplyBody) -> u16 {
    match b {
        MultipartReplyBody::Desc(_) => mp_type::DESC,
        MultipartReplyBody::Flow(_) => mp_type::FLOW,
        MultipartReplyBody::Aggregate { .. } => mp_type::AGGREGATE,
        MultipartReplyBody::Table(_) => mp_type::TABLE,
        MultipartReplyBody::PortStats(_) => mp_type::PORT_STATS,
        MultipartReplyBody::PortDesc(_) => mp_type::PORT_DESC,
        MultipartReplyBody::TableFeatures(_) => mp_type::TABLE_FEATURES,
        MultipartReplyBody::NoEntries(ty) => *ty,
        MultipartReplyBody::GroupStats(_) => mp_type::GROUP,
        MultipartReplyBody::GroupDesc(_) => mp_type::GROUP_DESC,
        MultipartReplyBody::GroupFeatures(_) => mp_type::GROUP_FEATURES,
        MultipartReplyBody::MeterFeatures(_) => mp_type::METER_FEATURES,
        MultipartReplyBody::MeterStats(_) => mp_type::METER,
        MultipartReplyBody::MeterConfig(_) => mp_type::METER_CONFIG,
    }
}

/// The entries of a multipart reply body, each encoded on its own (so that
/// a long reply can be split between entries).
fn mp_reply_entries(b: &MultipartReplyBody) -> Vec<Vec<u8>> {
    let each = |n: usize, f: &dyn Fn(usize, &mut Vec<u8>)| {
        (0..n)
            .map(|i| {
                let mut v = Vec::new();
                f(i, &mut v);
                v
            })
            .collect::<Vec<_>>()
    };
    match b {
        MultipartReplyBody::Desc(d) => {
            let mut v = Vec::new();
            v.put_str(&d.mfr_desc, 256);
            v.put_str(&d.hw_desc, 256);
            v.put_str(&d.sw_desc, 256);
            v.put_str(&d.serial_num, 32);
            v.put_str(&d.dp_desc, 256);
            vec![v]
        }
        MultipartReplyBody::Flow(fs) => each(fs.len(), &|i, v| put_flow_stats(&fs[i], v)),
        MultipartReplyBody::Aggregate {
            packet_count,
            byte_count,
            flow_count,
        } => {
            let mut v = Vec::new();
            v.put_u64(*packet_count);
            v.put_u64(*byte_count);
            v.put_u32(*flow_count);
            v.put_zeros(4);
            vec![v]
        }
        MultipartReplyBody::Table(ts) => each(ts.len(), &|i, v| {
            let t = &ts[i];
            v.put_u8(t.table_id);
            v.put_zeros(3);
            v.put_u32(t.active_count);
            v.put_u64(t.lookup_count);
            v.put_u64(t.matched_count);
        }),
        MultipartReplyBody::PortStats(ps) => each(ps.len(), &|i, v| put_port_stats(&ps[i], v)),
        MultipartReplyBody::PortDesc(ps) => each(ps.len(), &|i, v| put_port_desc(&ps[i], v)),
        MultipartReplyBody::TableFeatures(ts) => {
            each(ts.len(), &|i, v| put_table_features(&ts[i], v))
        }
        MultipartReplyBody::NoEntries(_) => Vec::new(),
        MultipartReplyBody::GroupStats(gs) => each(gs.len(), &|i, v| {
            let g = &gs[i];
            v.put_u16((40 + 16 * g.buckets.len()) as u16);
            v.put_zeros(2);
            v.put_u32(g.group_id);
            v.put_u32(g.ref_count);
            v.put_zeros(4);
            v.put_u64(g.packet_count);
            v.put_u64(g.byte_count);
            v.put_u32(g.duration_sec);
            v.put_u32(g.duration_nsec);
            for (p, b) in &g.buckets {
                v.put_u64(*p);
                v.put_u64(*b);
            }
        }),
        MultipartReplyBody::GroupDesc(gs) => each(gs.len(), &|i, v| {
            let g = &gs[i];
            let start = v.len();
            v.put_u16(0);
            v.put_u8(g.group_type);
            v.put_zeros(1);
            v.put_u32(g.group_id);
            put_buckets(&g.buckets, v);
            let len = v.len() - start;
            v.set_u16(start, len as u16);
        }),
        MultipartReplyBody::GroupFeatures(f) => {
            let mut v = Vec::new();
            v.put_u32(f.types);
            v.put_u32(f.capabilities);
            for n in f.max_groups.iter().chain(&f.actions) {
                v.put_u32(*n);
            }
            vec![v]
        }
        MultipartReplyBody::MeterStats(ms) => each(ms.len(), &|i, v| {
            let m = &ms[i];
            v.put_u32(m.meter_id);
            v.put_u16((40 + 16 * m.bands.len()) as u16);
            v.put_zeros(6);
            v.put_u32(m.flow_count);
            v.put_u64(m.packet_in_count);
            v.put_u64(m.byte_in_count);
            v.put_u32(m.duration_sec);
            v.put_u32(m.duration_nsec);
            for (p, b) in &m.bands {
                v.put_u64(*p);
                v.put_u64(*b);
            }
        }),
        MultipartReplyBody::MeterConfig(ms) => each(ms.len(), &|i, v| {
            let m = &ms[i];
            v.put_u16((8 + 16 * m.bands.len()) as u16);
            v.put_u16(m.flags);
            v.put_u32(m.meter_id);
            put_bands(&m.bands, v);
        }),
        MultipartReplyBody::MeterFeatures(f) => {
            let mut v = Vec::new();
            v.put_u32(f.max_meter);
            v.put_u32(f.band_types);
            v.put_u32(f.capabilities);
            v.put_u8(f.max_bands);
            v.put_u8(f.max_color);
            v.put_zeros(2);
            vec![v]
        }
    }
}

/// Encodes a multipart reply as as many messages as it takes (all but the
/// last flagged `OFPMPF_REPLY_MORE`), splitting between entries.
pub fn encode_multipart_reply(xid: u32, body: &MultipartReplyBody) -> Vec<Vec<u8>> {
    const FIXED: usize = HEADER_LEN + 8;
    let ty = mp_reply_type(body);
    let start_msg = || {
        let mut m = Vec::with_capacity(256);
        m.put_u8(OFP13_VERSION);
        m.put_u8(msg_type::MULTIPART_REPLY);
        m.put_u16(0);
        m.put_u32(xid);
        m.put_u16(ty);
        m.put_u16(0);
        m.put_zeros(4);
        m
    };
    let mut msgs = vec![start_msg()];
    for e in mp_reply_entries(body) {
        let cur_len = msgs.last().map_or(0, Vec::len);
        if cur_len > FIXED && cur_len + e.len() > MAX_MESSAGE_LEN {
            msgs.push(start_msg());
        }
        if let Some(m) = msgs.last_mut() {
            m.extend_from_slice(&e);
        }
    }
    let n = msgs.len();
    for (i, m) in msgs.iter_mut().enumerate() {
        let len = m.len().min(MAX_MESSAGE_LEN) as u16;
        m.set_u16(2, len);
        if i + 1 < n {
            m.set_u16(10, OFPMPF_MORE);
        }
    }
    msgs
}

fn encode_body(msg: &Message, out: &mut Vec<u8>) {
    match msg {
        Message::Hello { versions } => {
            out.put_u16(1);
            out.put_u16(8);
            out.put_u32(*versions);
        }
        Message::Error {
            err_type,
            code,
            data,
        } => {
            out.put_u16(*err_type);
            out.put_u16(*code);
            out.extend_from_slice(&data[..data.len().min(MAX_MESSAGE_LEN - 12)]);
        }
        Message::EchoRequest(d) | Message::EchoReply(d) => {
            out.extend_from_slice(&d[..d.len().min(MAX_MESSAGE_LEN - 8)])
        }
        Message::FeaturesRequest
        | Message::GetConfigRequest
        | Message::GetAsyncRequest
        | Message::BarrierRequest
        | Message::BarrierReply => {}
        Message::GetAsyncReply(c) | Message::SetAsync(c) => {
            for v in c
                .packet_in
                .iter()
                .chain(&c.port_status)
                .chain(&c.flow_removed)
            {
                out.put_u32(*v);
            }
        }
        Message::FlowRemoved(f) => {
            out.put_u64(f.cookie);
            out.put_u16(f.priority);
            out.put_u8(f.reason);
            out.put_u8(f.table_id);
            out.put_u32(f.duration_sec);
            out.put_u32(f.duration_nsec);
            out.put_u16(f.idle_timeout);
            out.put_u16(f.hard_timeout);
            out.put_u64(f.packet_count);
            out.put_u64(f.byte_count);
            encode_match(&f.r#match, out);
        }
        Message::FeaturesReply(f) => {
            out.put_u64(f.datapath_id);
            out.put_u32(f.n_buffers);
            out.put_u8(f.n_tables);
            out.put_u8(f.auxiliary_id);
            out.put_zeros(2);
            out.put_u32(f.capabilities);
            out.put_u32(0);
        }
        Message::GetConfigReply(c) | Message::SetConfig(c) => {
            out.put_u16(c.flags);
            out.put_u16(c.miss_send_len);
        }
        Message::RoleRequest {
            role,
            generation_id,
        }
        | Message::RoleReply {
            role,
            generation_id,
        } => {
            out.put_u32(*role);
            out.put_zeros(4);
            out.put_u64(*generation_id);
        }
        Message::RoleStatus {
            role,
            reason,
            generation_id,
        } => {
            out.put_u32(ONF_EXPERIMENTER);
            out.put_u32(ONFT13_ROLE_STATUS);
            out.put_u32(*role);
            out.put_u8(*reason);
            out.put_zeros(3);
            out.put_u64(*generation_id);
        }
        Message::BundleControl(b) => {
            out.put_u32(ONF_EXPERIMENTER);
            out.put_u32(ONFT13_BUNDLE_CONTROL);
            out.put_u32(b.bundle_id);
            out.put_u16(b.ctrl_type);
            out.put_u16(b.flags);
        }
        Message::BundleAdd {
            bundle_id,
            flags,
            message,
        } => {
            out.put_u32(ONF_EXPERIMENTER);
            out.put_u32(ONFT13_BUNDLE_ADD_MESSAGE);
            out.put_u32(*bundle_id);
            out.put_u16(0);
            out.put_u16(*flags);
            out.extend_from_slice(message);
        }
        Message::FlowMod(f) => {
            out.put_u64(f.cookie);
            out.put_u64(f.cookie_mask);
            out.put_u8(f.table_id);
            out.put_u8(f.command as u8);
            out.put_u16(f.idle_timeout);
            out.put_u16(f.hard_timeout);
            out.put_u16(f.priority);
            out.put_u32(f.buffer_id);
            out.put_u32(f.out_port);
            out.put_u32(f.out_group);
            out.put_u16(f.flags);
            out.put_zeros(2);
            encode_match(&f.r#match, out);
            encode_instructions(&f.actions, &ActionContext::of_match(&f.r#match), out);
        }
        Message::PacketOut(p) => {
            out.put_u32(p.buffer_id);
            out.put_u32(p.in_port);
            let at = out.len();
            out.put_u16(0);
            out.put_zeros(6);
            let start = out.len();
            encode_actions(&p.actions, &ActionContext::default(), out);
            let alen = out.len() - start;
            out.set_u16(at, alen as u16);
            out.extend_from_slice(&p.data);
        }
        Message::PacketIn(p) => {
            out.put_u32(p.buffer_id);
            out.put_u16(p.total_len);
            out.put_u8(p.reason);
            out.put_u8(p.table_id);
            out.put_u64(p.cookie);
            encode_match(&p.r#match, out);
            out.put_zeros(2);
            let room = MAX_MESSAGE_LEN.saturating_sub(out.len());
            out.extend_from_slice(&p.data[..p.data.len().min(room)]);
        }
        Message::PortStatus(s) => {
            out.put_u8(s.reason as u8);
            out.put_zeros(7);
            put_port_desc(&s.desc, out);
        }
        Message::MultipartRequest(q) => {
            let ty = match q {
                MultipartRequest::Desc => mp_type::DESC,
                MultipartRequest::Flow(_) => mp_type::FLOW,
                MultipartRequest::Aggregate(_) => mp_type::AGGREGATE,
                MultipartRequest::Table => mp_type::TABLE,
                MultipartRequest::PortStats { .. } => mp_type::PORT_STATS,
                MultipartRequest::PortDesc => mp_type::PORT_DESC,
                MultipartRequest::TableFeatures => mp_type::TABLE_FEATURES,
                MultipartRequest::Group { .. } => mp_type::GROUP,
                MultipartRequest::GroupDesc => mp_type::GROUP_DESC,
                MultipartRequest::GroupFeatures => mp_type::GROUP_FEATURES,
                MultipartRequest::Meter { .. } => mp_type::METER,
                MultipartRequest::MeterConfig { .. } => mp_type::METER_CONFIG,
                MultipartRequest::MeterFeatures => mp_type::METER_FEATURES,
                MultipartRequest::Queue { .. } => mp_type::QUEUE,
            };
            out.put_u16(ty);
            out.put_u16(0);
            out.put_zeros(4);
            match q {
                MultipartRequest::Flow(f) | MultipartRequest::Aggregate(f) => {
                    put_flow_stats_request(f, out)
                }
                MultipartRequest::PortStats { port_no: id }
                | MultipartRequest::Group { group_id: id }
                | MultipartRequest::Meter { meter_id: id }
                | MultipartRequest::MeterConfig { meter_id: id } => {
                    out.put_u32(*id);
                    out.put_zeros(4);
                }
                MultipartRequest::Queue { port_no, queue_id } => {
                    out.put_u32(*port_no);
                    out.put_u32(*queue_id);
                }
                MultipartRequest::Desc
                | MultipartRequest::Table
                | MultipartRequest::PortDesc
                | MultipartRequest::TableFeatures
                | MultipartRequest::GroupDesc
                | MultipartRequest::GroupFeatures
                | MultipartRequest::MeterFeatures => {}
            }
        }
        Message::PortMod(p) => {
            out.put_u32(p.port_no);
            out.put_zeros(4);
            out.extend_from_slice(&p.hw_addr);
            out.put_zeros(2);
            out.put_u32(p.config);
            out.put_u32(p.mask);
            out.put_u32(p.advertise);
            out.put_zeros(4);
        }
        Message::GroupMod(g) => {
            out.put_u16(g.command);
            out.put_u8(g.group_type);
            out.put_zeros(1);
            out.put_u32(g.group_id);
            put_buckets(&g.buckets, out);
        }
        Message::MeterMod(m) => {
            out.put_u16(m.command);
            out.put_u16(m.flags);
            out.put_u32(m.meter_id);
            put_bands(&m.bands, out);
        }
        Message::QueueGetConfigRequest { port } | Message::QueueGetConfigReply { port } => {
            out.put_u32(*port);
            out.put_zeros(4);
        }
        Message::MultipartReply(r) => {
            out.put_u16(mp_reply_type(&r.body));
            out.put_u16(if r.more { OFPMPF_MORE } else { 0 });
            out.put_zeros(4);
            for e in mp_reply_entries(&r.body) {
                out.extend_from_slice(&e);
            }
        }
    }
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
