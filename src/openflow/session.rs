//! One OpenFlow connection as a state machine: bytes in, bytes out, switch
//! calls in between. No I/O and no clock of its own (the caller passes
//! `now`), so that every exchange can be tested deterministically.

use super::error::{
    BadRequestCode as Brc, DecodeError, HelloFailedCode, OfpError, PortModFailedCode,
    QueueOpFailedCode, RoleRequestFailedCode,
};
use super::flow_table::{
    apply_flow_mod, flow_stats, select_flows, table_stats, AggregateCounts, RuleSelector,
};
use super::group_table;
use super::message::OFPPS_LINK_DOWN;
use super::message::{
    self, capabilities, decode, encode, encode_multipart_reply, mp_type, packet_in_reason,
    parse_header, AsyncConfig, BundleControl, BundledFlowMods, Desc, Features, FlowRemoved,
    Message, MultipartReplyBody, MultipartRequest, PacketIn, PortDesc, PortReason, PortStats,
    PortStatus, SwitchConfig, TableFeatures, HEADER_LEN, OFP13_VERSION, OFPPS_LIVE, OFP_NO_BUFFER,
};
use super::meter_table;
use super::port::{ofport_from_of13, ofport_to_of13, OFPP_ANY, OFPP_CONTROLLER};
use super::switch::{OpenFlowSwitch, PortInfo, SwitchEvent};
use crate::datapath::port_config;
use fallback::key::Field;
use fallback::ofproto::{Match, N_TABLES};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of an offending request echoed in an ERROR (the spec's minimum).
const ERROR_DATA_LEN: usize = 64;
/// Send an echo request after this much silence from the peer...
pub const ECHO_INTERVAL: Duration = Duration::from_secs(5);
/// ...and give up after this much.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(15);
/// `OFPCR_ROLE_NOCHANGE` / `OFPCR_ROLE_EQUAL`.
const ROLE_NOCHANGE: u32 = 0;
const ROLE_EQUAL: u32 = 1;
const ROLE_MASTER: u32 = 2;
const ROLE_SLAVE: u32 = 3;

/// The master election the connections of one switch share (OpenFlow 1.3
/// §6.3.5): which connection is master, and the highest generation id a
/// master or slave request carried. A connection that asks to be master
/// makes the master a slave; a request with a generation id older than
/// the last one is stale.
#[derive(Debug, Default)]
pub struct Election {
    state: std::sync::Mutex<ElectionState>,
}

#[derive(Debug, Default)]
struct ElectionState {
    generation: Option<u64>,
    master: Option<u64>,
}

impl Election {
    /// Records `generation` unless it is older than the last one (compared
    /// as OVS does: the wrapping difference read as signed).
    fn claim(&self, session: u64, role: u32, generation: u64) -> Result<(), OfpError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = st.generation {
            if (generation.wrapping_sub(last) as i64) < 0 {
                return Err(OfpError::role_request_failed(
                    RoleRequestFailedCode::Stale,
                    format!("generation id {generation} is older than {last}: a newer master was elected"),
                ));
            }
        }
        st.generation = Some(generation);
        if role == ROLE_MASTER {
            st.master = Some(session);
        } else if st.master == Some(session) {
            st.master = None;
        }
        Ok(())
    }

    /// The last generation id a master or slave request carried.
    fn generation(&self) -> Option<u64> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }

    /// Whether `session` may still act as master.
    fn is_master(&self, session: u64) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.master == Some(session)
    }

    /// `session` left the master role (equal role, or the connection ended).
    pub fn release(&self, session: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.master == Some(session) {
            st.master = None;
        }
    }
}

/// Session ids, unique in the process (the election tells masters apart).
static NEXT_SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Our HELLO is sent; waiting for the peer's.
    AwaitHello,
    Ready,
    Closed,
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionEnd {
    #[error("no common OpenFlow version (peer offers bitmap {0:#x}; flowmark speaks 1.3)")]
    NoCommonVersion(u32),
    #[error("the peer sent {0} before HELLO")]
    NoHello(String),
    #[error("unframeable input: {0}")]
    Unframeable(DecodeError),
    #[error("the peer was silent for {0:?}")]
    PeerTimeout(Duration),
}

/// What the session did, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionNote {
    Negotiated,
    /// A request was refused with this error (the connection stays).
    Refused(OfpError),
    /// The peer sent an ERROR.
    PeerError {
        err_type: u16,
        code: u16,
    },
}

pub struct Session {
    state: State,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    next_xid: u32,
    config: SwitchConfig,
    last_heard: Instant,
    echo_sent: bool,
    notes: Vec<SessionNote>,
    end: Option<SessionEnd>,
    /// Open bundles (ONF bundle extension), discarded with the session.
    bundles: BTreeMap<u32, Bundle>,
    /// Which asynchronous messages this connection gets (SET_ASYNC).
    async_config: AsyncConfig,
    /// OFPCR_ROLE_EQUAL, _MASTER or _SLAVE.
    role: u32,
    /// This session's id, and the election it takes part in (none: it is
    /// the switch's only connection as far as roles go).
    id: u64,
    election: Option<std::sync::Arc<Election>>,
    /// Port configs this connection's PORT_MODs set, (ofport, config): the
    /// PORT_STATUS they cause is not sent back to it (OpenFlow before 1.5,
    /// as Open vSwitch does), only to the other connections.
    own_port_mods: Vec<(u32, u32)>,
}

/// Own PORT_MODs a connection remembers until their PORT_STATUS passes.
const OWN_PORT_MODS_MAX: usize = 16;

/// Bundles one connection may keep open at once (more: OUT_OF_BUNDLES).
const MAX_BUNDLES: usize = 64;

/// Messages one bundle may hold beyond twice the flow table's size (a
/// bundle that replaces a full table: its deletes and its adds).
const BUNDLE_SLACK: usize = 1024;

/// A bundle being filled: its flow mods, in order, as received (a failing
/// one's error quotes it).
struct Bundle {
    flags: u16,
    closed: bool,
    mods: BundledFlowMods,
    /// It outgrew the limit (`bundle_add`): its messages are freed, later
    /// adds are refused, and its commit fails.
    too_many: bool,
}

impl Session {
    /// A new session; our HELLO is already queued.
    pub fn new(now: Instant) -> Self {
        let mut s = Session {
            state: State::AwaitHello,
            inbuf: Vec::new(),
            out: Vec::new(),
            next_xid: 1,
            config: SwitchConfig {
                flags: 0,
                miss_send_len: 128,
            },
            last_heard: now,
            echo_sent: false,
            notes: Vec::new(),
            end: None,
            bundles: BTreeMap::new(),
            async_config: AsyncConfig::OF13_DEFAULT,
            role: ROLE_EQUAL,
            id: NEXT_SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            election: None,
            own_port_mods: Vec::new(),
        };
        let hello = Message::Hello {
            versions: 1 << OFP13_VERSION,
        };
        s.send_new(&hello);
        s
    }

    /// Takes part in `election` with the switch's other connections.
    pub fn with_election(mut self, election: std::sync::Arc<Election>) -> Self {
        self.election = Some(election);
        self
    }

    /// Leaves the election (the connection ends): a master no longer is.
    pub fn leave_election(&self) {
        if let Some(e) = &self.election {
            e.release(self.id);
        }
    }

    /// The election's generation id, all ones before any (as OVS reports it).
    fn election_generation(&self) -> u64 {
        self.election
            .as_ref()
            .and_then(|e| e.generation())
            .unwrap_or(u64::MAX)
    }

    /// The role: a master whom another's election replaced is a slave.
    fn effective_role(&self) -> u32 {
        if self.role == ROLE_MASTER
            && self
                .election
                .as_ref()
                .is_some_and(|e| !e.is_master(self.id))
        {
            ROLE_SLAVE
        } else {
            self.role
        }
    }

    /// [`Session::effective_role`], kept. A master replaced by another's
    /// election learns it here: a ROLE_STATUS (reason: master request),
    /// unsolicited (xid 0), as Open vSwitch sends it.
    fn current_role(&mut self) -> u32 {
        let role = self.effective_role();
        if role != self.role {
            self.role = role;
            if self.is_ready() {
                let generation_id = self.election_generation();
                self.send(
                    0,
                    &Message::RoleStatus {
                        role,
                        reason: 0,
                        generation_id,
                    },
                );
            }
        }
        self.role
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Why the session closed.
    pub fn end(&self) -> Option<&SessionEnd> {
        self.end.as_ref()
    }

    /// Bytes to write to the peer (drained).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// What happened since the last call (drained).
    pub fn take_notes(&mut self) -> Vec<SessionNote> {
        std::mem::take(&mut self.notes)
    }

    fn send(&mut self, xid: u32, msg: &Message) {
        self.out.extend_from_slice(&encode(xid, msg));
    }

    fn send_new(&mut self, msg: &Message) {
        let xid = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(1);
        self.send(xid, msg);
    }

    fn send_error(&mut self, xid: u32, error: &OfpError, request: &[u8]) {
        let (err_type, code) = error.type_code();
        let mut data = Vec::new();
        if let Some(exp) = error.experimenter() {
            data.extend_from_slice(&exp.to_be_bytes());
        }
        data.extend_from_slice(&request[..request.len().min(ERROR_DATA_LEN)]);
        self.send(
            xid,
            &Message::Error {
                err_type,
                code,
                data,
            },
        );
    }

    fn close(&mut self, why: SessionEnd) {
        self.state = State::Closed;
        self.end = Some(why);
    }

    /// Feeds bytes from the peer; handles every complete message.
    pub fn receive(&mut self, bytes: &[u8], sw: &dyn OpenFlowSwitch, now: Instant) {
        if self.is_closed() {
            return;
        }
        self.last_heard = now;
        self.echo_sent = false;
        self.inbuf.extend_from_slice(bytes);
        // Taken out while its messages are handled in place (no copy of
        // each message), and put back with what is left of it.
        let inbuf = std::mem::take(&mut self.inbuf);
        let mut at = 0;
        while !self.is_closed() {
            let rest = &inbuf[at..];
            if rest.len() < HEADER_LEN {
                break;
            }
            let h = match parse_header(rest) {
                Ok(h) => h,
                Err(e) => {
                    // A length below 8 leaves no way to find the next message.
                    let err = e.ofp_error();
                    let req = rest[..HEADER_LEN].to_vec();
                    self.send_error(0, &err, &req);
                    self.close(SessionEnd::Unframeable(e));
                    break;
                }
            };
            let len = usize::from(h.length);
            if rest.len() < len {
                break;
            }
            at += len;
            self.handle(&rest[..len], sw);
        }
        self.inbuf = inbuf;
        self.inbuf.drain(..at.min(self.inbuf.len()));
    }

    fn handle(&mut self, bytes: &[u8], sw: &dyn OpenFlowSwitch) {
        let decoded = message::decode(bytes);
        if self.state == State::AwaitHello {
            match decoded {
                Ok(message::Envelope {
                    msg: Message::Hello { versions },
                    xid,
                    ..
                }) => {
                    if versions & (1 << OFP13_VERSION) != 0 {
                        self.state = State::Ready;
                        self.notes.push(SessionNote::Negotiated);
                    } else {
                        let err = OfpError::HelloFailed {
                            code: HelloFailedCode::Incompatible,
                            detail: "flowmark speaks OpenFlow 1.3 (0x04) only".into(),
                        };
                        self.send_error(xid, &err, bytes);
                        self.close(SessionEnd::NoCommonVersion(versions));
                    }
                }
                other => {
                    let xid = parse_header(bytes).map_or(0, |h| h.xid);
                    let err = OfpError::HelloFailed {
                        code: HelloFailedCode::Eperm,
                        detail: "the first message must be HELLO".into(),
                    };
                    self.send_error(xid, &err, bytes);
                    let what = match other {
                        Ok(e) => format!("{:?}", std::mem::discriminant(&e.msg)),
                        Err(e) => e.to_string(),
                    };
                    self.close(SessionEnd::NoHello(what));
                }
            }
            return;
        }
        let env = match decoded {
            Ok(env) => env,
            Err(e) => {
                let xid = match &e {
                    DecodeError::Refused { xid, .. } => *xid,
                    _ => 0,
                };
                let err = e.ofp_error();
                self.send_error(xid, &err, bytes);
                self.notes.push(SessionNote::Refused(err));
                return;
            }
        };
        if let Err(err) = self.dispatch(env.xid, env.msg, sw) {
            self.send_error(env.xid, &err, bytes);
            self.notes.push(SessionNote::Refused(err));
        }
    }

    fn dispatch(
        &mut self,
        xid: u32,
        msg: Message,
        sw: &dyn OpenFlowSwitch,
    ) -> Result<(), OfpError> {
        // A slave reads the switch but does not change it (OpenFlow 1.3
        // §6.3.5): Open vSwitch refuses these messages from one.
        if self.current_role() == ROLE_SLAVE
            && matches!(
                msg,
                Message::FlowMod(_)
                    | Message::GroupMod(_)
                    | Message::MeterMod(_)
                    | Message::PortMod(_)
                    | Message::PacketOut(_)
                    | Message::BundleControl(_)
                    | Message::BundleAdd { .. }
            )
        {
            return Err(OfpError::bad_request(
                Brc::IsSlave,
                "this connection has the slave role: ask for the master or equal role to change the switch",
            ));
        }
        match msg {
            // A second HELLO changes nothing.
            Message::Hello { .. } => {}
            Message::Error { err_type, code, .. } => {
                self.notes.push(SessionNote::PeerError { err_type, code })
            }
            Message::EchoRequest(d) => self.send(xid, &Message::EchoReply(d)),
            Message::EchoReply(_) => {}
            Message::FeaturesRequest => {
                let f = Features {
                    datapath_id: sw.datapath_id(),
                    n_buffers: 0,
                    n_tables: N_TABLES as u8,
                    auxiliary_id: 0,
                    capabilities: capabilities::FLOW_STATS
                        | capabilities::TABLE_STATS
                        | capabilities::PORT_STATS,
                };
                self.send(xid, &Message::FeaturesReply(f));
            }
            Message::GetConfigRequest => self.send(xid, &Message::GetConfigReply(self.config)),
            Message::SetConfig(c) => self.config = c,
            Message::BarrierRequest => self.send(xid, &Message::BarrierReply),
            Message::RoleRequest {
                role,
                generation_id,
            } => {
                if role > ROLE_SLAVE {
                    return Err(OfpError::role_request_failed(
                        RoleRequestFailedCode::BadRole,
                        format!("role {role}: roles are 0 (no change) to 3 (slave)"),
                    ));
                }
                if role != ROLE_NOCHANGE {
                    // Equal asks for no election (and carries no id).
                    if let Some(e) = &self.election {
                        if role == ROLE_EQUAL {
                            e.release(self.id);
                        } else {
                            e.claim(self.id, role, generation_id)?;
                        }
                    }
                    self.role = role;
                }
                let role = self.current_role();
                let generation_id = self.election_generation();
                self.send(
                    xid,
                    &Message::RoleReply {
                        role,
                        generation_id,
                    },
                );
            }
            Message::GetAsyncRequest => self.send(xid, &Message::GetAsyncReply(self.async_config)),
            Message::SetAsync(c) => self.async_config = c,
            Message::FlowMod(fm) => apply_flow_mod(sw, fm)?,
            Message::BundleControl(bc) => self.bundle_control(xid, bc, sw)?,
            Message::BundleAdd {
                bundle_id,
                flags,
                message,
            } => {
                let limit = sw
                    .max_flows()
                    .saturating_mul(2)
                    .saturating_add(BUNDLE_SLACK);
                self.bundle_add(xid, bundle_id, flags, message, limit)?
            }
            Message::PacketOut(po) => {
                if po.buffer_id != OFP_NO_BUFFER {
                    return Err(OfpError::bad_request(
                        Brc::BufferUnknown,
                        format!("buffer {:#x}: flowmark buffers no packets", po.buffer_id),
                    ));
                }
                if po.data.is_empty() {
                    return Err(OfpError::bad_request(Brc::BadPacket, "no packet"));
                }
                let in_port = match po.in_port {
                    OFPP_CONTROLLER | OFPP_ANY => fallback::ofproto::ofport::CONTROLLER,
                    p => ofport_from_of13(p).ok_or_else(|| {
                        OfpError::bad_request(Brc::BadPort, format!("in_port {p:#x}"))
                    })?,
                };
                group_table::check_groups(&po.actions, |g| sw.has_group(g))?;
                sw.packet_out(in_port, &po.actions, &po.data)?;
            }
            Message::MultipartRequest(q) => self.multipart(xid, q, sw)?,
            Message::PortMod(pm) => self.port_mod(&pm, sw)?,
            Message::GroupMod(g) => sw.group_mod(&g)?,
            Message::MeterMod(m) => sw.meter_mod(&m)?,
            Message::QueueGetConfigRequest { port } => {
                check_queue_port(sw, port)?;
                self.send(xid, &Message::QueueGetConfigReply { port });
            }
            Message::FeaturesReply(_)
            | Message::QueueGetConfigReply { .. }
            | Message::GetConfigReply(_)
            | Message::PacketIn(_)
            | Message::PortStatus(_)
            | Message::RoleStatus { .. }
            | Message::MultipartReply(_)
            | Message::BarrierReply
            | Message::FlowRemoved(_)
            | Message::GetAsyncReply(_)
            | Message::RoleReply { .. } => {
                return Err(OfpError::bad_request(
                    Brc::BadType,
                    "a switch does not accept this message",
                ))
            }
        }
        Ok(())
    }

    /// ONFT13_BUNDLE_CONTROL, as Open vSwitch handles it: open, close,
    /// discard, and commit, which applies every flow mod of the bundle as
    /// one new version or, if one fails, none of them (its error quoting
    /// it is sent first, then OFPBFC_MSG_FAILED for the commit).
    fn bundle_control(
        &mut self,
        xid: u32,
        bc: BundleControl,
        sw: &dyn OpenFlowSwitch,
    ) -> Result<(), OfpError> {
        use super::error::BundleFailedCode as Bfc;
        use super::message::bundle_ctrl as c;
        let id = bc.bundle_id;
        let reply = match bc.ctrl_type {
            c::OPEN_REQUEST => {
                if self.bundles.remove(&id).is_some() {
                    return Err(OfpError::bundle_failed(
                        Bfc::BadId,
                        format!("bundle {id} is open already"),
                    ));
                }
                self.open_bundle(id, bc.flags)?;
                c::OPEN_REPLY
            }
            c::CLOSE_REQUEST => {
                let b = self.bundle_checked(id, bc.flags)?;
                b.closed = true;
                c::CLOSE_REPLY
            }
            c::DISCARD_REQUEST => {
                self.bundles.remove(&id).ok_or_else(|| {
                    OfpError::bundle_failed(Bfc::BadId, format!("no bundle {id}"))
                })?;
                c::DISCARD_REPLY
            }
            c::COMMIT_REQUEST => {
                let b = self.bundles.remove(&id).ok_or_else(|| {
                    OfpError::bundle_failed(Bfc::BadId, format!("no bundle {id}"))
                })?;
                if b.flags != bc.flags {
                    return Err(OfpError::bundle_failed(
                        Bfc::BadFlags,
                        format!(
                            "flags {:#x}, the bundle was opened with {:#x}",
                            bc.flags, b.flags
                        ),
                    ));
                }
                if b.too_many {
                    return Err(OfpError::bundle_failed(
                        Bfc::MsgTooMany,
                        format!("bundle {id} had too many messages; nothing changed"),
                    ));
                }
                let mods = Arc::new(b.mods);
                if let Err((i, err)) = sw.commit_flow_mods(Arc::clone(&mods)) {
                    if let Some(raw) = mods.message(i) {
                        // The bundled message's own xid.
                        let mxid = raw
                            .get(4..8)
                            .map_or(xid, |x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]));
                        self.send_error(mxid, &err, raw);
                    }
                    return Err(OfpError::bundle_failed(
                        Bfc::MsgFailed,
                        format!("message {i} of bundle {id} failed ({err}); nothing changed"),
                    ));
                }
                c::COMMIT_REPLY
            }
            other => {
                return Err(OfpError::bundle_failed(
                    Bfc::BadType,
                    format!("bundle control type {other}"),
                ))
            }
        };
        self.send(
            xid,
            &Message::BundleControl(BundleControl {
                bundle_id: id,
                ctrl_type: reply,
                flags: bc.flags,
            }),
        );
        Ok(())
    }

    /// The open bundle `id`; a closed one or one with other flags is
    /// discarded with the error, as Open vSwitch does.
    fn bundle_checked(&mut self, id: u32, flags: u16) -> Result<&mut Bundle, OfpError> {
        use super::error::BundleFailedCode as Bfc;
        let Some(b) = self.bundles.get(&id) else {
            return Err(OfpError::bundle_failed(
                Bfc::BadId,
                format!("no bundle {id}"),
            ));
        };
        let refusal = if b.closed {
            Some(OfpError::bundle_failed(
                Bfc::BundleClosed,
                format!("bundle {id} is closed"),
            ))
        } else if b.flags != flags {
            Some(OfpError::bundle_failed(
                Bfc::BadFlags,
                format!(
                    "flags {flags:#x}, the bundle was opened with {:#x}",
                    b.flags
                ),
            ))
        } else {
            None
        };
        if let Some(e) = refusal {
            self.bundles.remove(&id);
            return Err(e);
        }
        self.bundles
            .get_mut(&id)
            .ok_or_else(|| OfpError::bundle_failed(Bfc::BadId, format!("no bundle {id}")))
    }

    /// ONFT13_BUNDLE_ADD_MESSAGE: a flow mod joins the bundle (opened on
    /// first use); anything else is refused, and a flow mod that does not
    /// decode is refused now, not at commit. A bundle holds at most `limit`
    /// messages: past it, MSG_TOO_MANY, and the bundle cannot commit.
    fn bundle_add(
        &mut self,
        xid: u32,
        id: u32,
        flags: u16,
        message: Vec<u8>,
        limit: usize,
    ) -> Result<(), OfpError> {
        use super::error::BundleFailedCode as Bfc;
        let inner = decode(&message).map_err(|e| e.ofp_error())?;
        if inner.xid != xid {
            return Err(OfpError::bundle_failed(
                Bfc::MsgBadXid,
                format!("bundled message xid {:#x}, outer xid {xid:#x}", inner.xid),
            ));
        }
        // Decoded now, once: a bad one is refused now, a good one kept
        // decoded for the commit (see `BundledFlowMods`).
        let op = match inner.msg {
            Message::FlowMod(fm) => Ok(fm),
            Message::GroupMod(gm) => Err(gm),
            _ => {
                return Err(OfpError::bundle_failed(
                    Bfc::MsgUnsup,
                    "flowmark bundles flow and group mods only",
                ))
            }
        };
        if !self.bundles.contains_key(&id) {
            self.open_bundle(id, flags)?;
        }
        let b = self.bundle_checked(id, flags)?;
        if b.too_many || b.mods.len() >= limit {
            // Kept (a discarded bundle would be opened afresh by the next
            // add, and its commit would apply only the rest), but emptied.
            b.too_many = true;
            b.mods = BundledFlowMods::default();
            return Err(OfpError::bundle_failed(
                Bfc::MsgTooMany,
                format!(
                    "bundle {id} holds at most {limit} messages (twice the flow table); \
                     nothing of it will be committed: discard it and send smaller bundles"
                ),
            ));
        }
        match op {
            Ok(fm) => b.mods.push(&message, fm),
            Err(gm) => b.mods.push_group(&message, gm),
        }
        Ok(())
    }

    /// A new, empty bundle (the caller made sure `id` is free).
    fn open_bundle(&mut self, id: u32, flags: u16) -> Result<(), OfpError> {
        if self.bundles.len() >= MAX_BUNDLES {
            return Err(OfpError::bundle_failed(
                super::error::BundleFailedCode::OutOfBundles,
                format!("at most {MAX_BUNDLES} bundles per connection"),
            ));
        }
        self.bundles.insert(
            id,
            Bundle {
                flags,
                closed: false,
                mods: BundledFlowMods::default(),
                too_many: false,
            },
        );
        Ok(())
    }

    fn multipart(
        &mut self,
        xid: u32,
        q: MultipartRequest,
        sw: &dyn OpenFlowSwitch,
    ) -> Result<(), OfpError> {
        let body = match q {
            MultipartRequest::Desc => MultipartReplyBody::Desc(Desc {
                mfr_desc: "flowmark".into(),
                hw_desc: "flowmark userspace switch".into(),
                sw_desc: env!("CARGO_PKG_VERSION").into(),
                serial_num: "None".into(),
                dp_desc: "flowmark bridge".into(),
            }),
            MultipartRequest::Flow(f) => {
                MultipartReplyBody::Flow(select_flows(sw, &f)?.iter().map(flow_stats).collect())
            }
            MultipartRequest::Aggregate(f) => {
                let c = match RuleSelector::of_request(&f)? {
                    Some(sel) => sw.aggregate(sel)?,
                    None => AggregateCounts::default(),
                };
                MultipartReplyBody::Aggregate {
                    packet_count: c.packets,
                    byte_count: c.bytes,
                    flow_count: c.flows.min(u64::from(u32::MAX)) as u32,
                }
            }
            MultipartRequest::Table => MultipartReplyBody::Table(table_stats(&sw.flows()?)),
            MultipartRequest::PortStats { port_no } => {
                let want = match port_no {
                    OFPP_ANY => None,
                    p => Some(ofport_from_of13(p).ok_or_else(|| {
                        OfpError::bad_request(Brc::BadPort, format!("port {p:#x}"))
                    })?),
                };
                let stats: Vec<PortStats> = sw
                    .port_counters()?
                    .into_iter()
                    .filter(|(p, _)| want.is_none_or(|w| w == *p))
                    .map(|(p, c)| PortStats {
                        port_no: ofport_to_of13(p),
                        rx_packets: c.rx_packets,
                        tx_packets: c.tx_packets,
                        rx_bytes: c.rx_bytes,
                        tx_bytes: c.tx_bytes,
                        rx_dropped: c.rx_dropped,
                        tx_dropped: c.tx_dropped,
                        rx_errors: c.rx_errors,
                        ..PortStats::default()
                    })
                    .collect();
                if want.is_some() && stats.is_empty() {
                    return Err(OfpError::bad_request(
                        Brc::BadPort,
                        format!("no port {port_no}"),
                    ));
                }
                MultipartReplyBody::PortStats(stats)
            }
            MultipartRequest::PortDesc => {
                MultipartReplyBody::PortDesc(sw.ports()?.iter().map(port_desc).collect())
            }
            // A group that does not exist has no entry (as in OVS).
            MultipartRequest::Group { group_id } => {
                MultipartReplyBody::GroupStats(group_table::group_stats(&sw.groups()?, group_id))
            }
            MultipartRequest::GroupDesc => {
                MultipartReplyBody::GroupDesc(group_table::group_descs(&sw.groups()?))
            }
            MultipartRequest::GroupFeatures => {
                MultipartReplyBody::GroupFeatures(group_table::features())
            }
            MultipartRequest::Meter { meter_id } => {
                let infos = sw.meters()?;
                MultipartReplyBody::MeterStats(meter_table::meter_stats(
                    &infos,
                    meter_id,
                    std::time::Instant::now(),
                )?)
            }
            MultipartRequest::MeterConfig { meter_id } => {
                let infos = sw.meters()?;
                MultipartReplyBody::MeterConfig(meter_table::meter_configs(&infos, meter_id)?)
            }
            MultipartRequest::MeterFeatures => {
                MultipartReplyBody::MeterFeatures(meter_table::features())
            }
            // No queues exist: the list is empty, as Open vSwitch's is
            // before any is configured.
            MultipartRequest::Queue { port_no, queue_id } => {
                check_queue_port(sw, port_no)?;
                if queue_id != message::OFPQ_ALL {
                    return Err(OfpError::queue_op_failed(
                        QueueOpFailedCode::BadQueue,
                        format!("no queue {queue_id}: flowmark configures no queues"),
                    ));
                }
                MultipartReplyBody::NoEntries(mp_type::QUEUE)
            }
            MultipartRequest::TableFeatures => MultipartReplyBody::TableFeatures(
                (0..N_TABLES)
                    .map(|t| TableFeatures {
                        table_id: t as u8,
                        name: format!("table{t}"),
                        max_entries: sw.max_flows().min(u32::MAX as usize) as u32,
                    })
                    .collect(),
            ),
        };
        for m in encode_multipart_reply(xid, &body) {
            self.out.extend_from_slice(&m);
        }
        Ok(())
    }

    /// OFPT_PORT_MOD, as Open vSwitch checks it: the port must exist and
    /// the hardware address be the port's; config bits OpenFlow 1.3 cannot
    /// set are ignored, and so is `advertise` (no port here negotiates).
    fn port_mod(&mut self, pm: &message::PortMod, sw: &dyn OpenFlowSwitch) -> Result<(), OfpError> {
        let no_port = || {
            OfpError::port_mod_failed(
                PortModFailedCode::BadPort,
                format!("no port {}", pm.port_no),
            )
        };
        let port = find_port(sw, pm.port_no)?.ok_or_else(no_port)?;
        let ofport = port.ofport;
        if port_desc(&port).hw_addr != pm.hw_addr {
            return Err(OfpError::port_mod_failed(
                PortModFailedCode::BadHwAddr,
                format!(
                    "port {ofport}'s hardware address is not {:02x?}",
                    pm.hw_addr
                ),
            ));
        }
        let after = sw.port_mod(ofport, pm.config, pm.mask)?;
        if after != port.config {
            // The watcher reports a port's latest config only.
            self.own_port_mods.retain(|&(p, _)| p != ofport);
            if self.own_port_mods.len() >= OWN_PORT_MODS_MAX {
                self.own_port_mods.remove(0);
            }
            self.own_port_mods.push((ofport, after));
        }
        Ok(())
    }

    /// True when this connection's async configuration asks for `reason`
    /// of a message kind (`masks`: master/equal, slave).
    fn wants(&self, masks: [u32; 2], reason: u8) -> bool {
        let m = masks[usize::from(self.effective_role() == ROLE_SLAVE)];
        reason < 32 && m & (1 << reason) != 0
    }

    /// Tells the peer about a switch event (once negotiated), as its async
    /// configuration (SET_ASYNC, OpenFlow 1.3 defaults) asks.
    pub fn event(&mut self, ev: &SwitchEvent) {
        if !self.is_ready() {
            return;
        }
        let a = self.async_config;
        let msg = match ev {
            SwitchEvent::PortAdded(p) => {
                if !self.wants(a.port_status, PortReason::Add as u8) {
                    return;
                }
                Message::PortStatus(PortStatus {
                    reason: PortReason::Add,
                    desc: port_desc(p),
                })
            }
            SwitchEvent::PortDeleted(p) => {
                if !self.wants(a.port_status, PortReason::Delete as u8) {
                    return;
                }
                Message::PortStatus(PortStatus {
                    reason: PortReason::Delete,
                    desc: port_desc(p),
                })
            }
            SwitchEvent::PortModified(p) => {
                if let Some(at) = self
                    .own_port_mods
                    .iter()
                    .position(|&(port, config)| port == p.ofport && config == p.config)
                {
                    self.own_port_mods.remove(at);
                    return;
                }
                if !self.wants(a.port_status, PortReason::Modify as u8) {
                    return;
                }
                Message::PortStatus(PortStatus {
                    reason: PortReason::Modify,
                    desc: port_desc(p),
                })
            }
            SwitchEvent::PacketIn {
                in_port,
                table,
                cookie,
                miss,
                total_len,
                frame,
            } => {
                let reason = if *miss {
                    packet_in_reason::NO_MATCH
                } else {
                    packet_in_reason::ACTION
                };
                if !self.wants(a.packet_in, reason) {
                    return;
                }
                let mut m = Match::ANY;
                m.set_exact(Field::InPort, u128::from(*in_port));
                // Buffer-less (OFP_NO_BUFFER): a table miss sends
                // miss_send_len bytes (OFPCML_NO_BUFFER: all), an action
                // its max_len (the datapath cut the frame to it already).
                let mut keep = frame.len().min(0xffff - 64);
                if *miss && self.config.miss_send_len != 0xffff {
                    keep = keep.min(usize::from(self.config.miss_send_len));
                }
                Message::PacketIn(PacketIn {
                    buffer_id: OFP_NO_BUFFER,
                    total_len: (*total_len).min(0xffff) as u16,
                    reason,
                    table_id: *table,
                    cookie: *cookie,
                    r#match: m,
                    data: frame[..keep].to_vec(),
                })
            }
            SwitchEvent::FlowRemoved {
                rule,
                reason,
                age,
                packets,
                bytes,
            } => {
                if !self.wants(a.flow_removed, *reason) {
                    return;
                }
                Message::FlowRemoved(FlowRemoved {
                    cookie: rule.cookie,
                    priority: rule.priority,
                    reason: *reason,
                    table_id: rule.table,
                    duration_sec: age.as_secs().min(u64::from(u32::MAX)) as u32,
                    duration_nsec: age.subsec_nanos(),
                    idle_timeout: rule.idle_timeout,
                    hard_timeout: rule.hard_timeout,
                    packet_count: *packets,
                    byte_count: *bytes,
                    r#match: rule.r#match,
                })
            }
        };
        // Unsolicited: xid 0, as Open vSwitch sends them. A numbered one
        // can equal the xid of a request the peer is waiting on (ovs-ofctl
        // numbers its requests from 1), which takes it for a bad reply.
        self.send(0, &msg);
    }

    /// Keepalive: an echo request after [`ECHO_INTERVAL`] of silence, and
    /// the end after [`PEER_TIMEOUT`].
    pub fn tick(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        // A master another connection replaced hears of it at once.
        self.current_role();
        let silent = now.saturating_duration_since(self.last_heard);
        if silent >= PEER_TIMEOUT {
            self.close(SessionEnd::PeerTimeout(silent));
        } else if silent >= ECHO_INTERVAL && !self.echo_sent && self.is_ready() {
            self.echo_sent = true;
            self.send_new(&Message::EchoRequest(Vec::new()));
        }
    }
}

/// A port's description: a locally administered MAC derived from its
/// number; live, or with its link down when configured down.
pub fn port_desc(p: &PortInfo) -> PortDesc {
    let n = p.ofport.to_be_bytes();
    PortDesc {
        port_no: ofport_to_of13(p.ofport),
        hw_addr: [0x02, 0x00, n[0], n[1], n[2], n[3]],
        name: p.name.clone(),
        config: p.config & port_config::ALL,
        // A port configured down has its link down, as Open vSwitch says.
        state: if p.config & port_config::PORT_DOWN != 0 {
            OFPPS_LINK_DOWN
        } else {
            OFPPS_LIVE
        },
        // 10 Gb/s full duplex, copper.
        curr: (1 << 6) | (1 << 11),
        advertised: 0,
        supported: 0,
        peer: 0,
        curr_speed: 10_000_000,
        max_speed: 10_000_000,
    }
}

/// The switch's port OpenFlow port number `p` names, if any.
fn find_port(sw: &dyn OpenFlowSwitch, p: u32) -> Result<Option<PortInfo>, OfpError> {
    let Some(ofport) = ofport_from_of13(p) else {
        return Ok(None);
    };
    Ok(sw.ports()?.into_iter().find(|i| i.ofport == ofport))
}

/// A queue request's port: one of the switch's, or `OFPP_ANY` (every
/// port); else OFPQOFC_BAD_PORT.
fn check_queue_port(sw: &dyn OpenFlowSwitch, p: u32) -> Result<(), OfpError> {
    if p == OFPP_ANY || find_port(sw, p)?.is_some() {
        return Ok(());
    }
    Err(OfpError::queue_op_failed(
        QueueOpFailedCode::BadPort,
        format!("no port {p}"),
    ))
}
