//! `flowmark run`: the daemon (DESIGN §4, §5). The main thread owns the
//! [`Switch`] and the port factory; it serves control requests that arrive
//! on a channel (from the control socket's connection threads, or from the
//! OpenFlow endpoint through a [`DaemonHandle`]) and does the housekeeping:
//! OpenFlow rule timeouts, NIC reset events, MAC aging and the shutdown on
//! SIGINT/SIGTERM. OpenFlow's flow-table requests are served in place, on
//! the caller's thread under the daemon's lock (see [`DaemonHandle`]).
//!
//! Parts: [`crate::ports`] (where ports come from), [`inject`] (test traffic),
//! [`views`] (the JSON and table documents), [`server`] (the socket),
//! [`log`] (slog setup and rate limits).

mod clocks;
pub mod events;
pub mod inject;
pub mod log;
pub mod server;
pub mod views;

use self::clocks::RuleClocks;
use crate::config::{Config, PortFamily, PortSpec, PortType, VhostMode};
use crate::control::Request;
use crate::ports::{PortError, PortFactory, TestbedFactory};
use crate::switch::{check_add, AddRefused, NamedPortStats, PortInfo, Switch, SwitchError};
use crossbeam_channel::{Receiver, Sender};
use fallback::ofproto::syntax::{parse_flow, parse_match, FlowParseError};
use fallback::ofproto::table::{Pipeline, RuleId};
use fallback::ofproto::{Match, OfAction, Rule};
use fallback::port::PacketBuf;
use hashbrown::HashMap;
use serde_json::{json, Value};
use slog::{debug, info, warn, Logger};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
pub use views::FlowEntry;

/// How long the main loop waits for a request before housekeeping.
const TICK: Duration = Duration::from_millis(50);
/// How often OpenFlow rule timeouts are checked.
const RULE_TIMEOUT_INTERVAL: Duration = Duration::from_millis(250);
/// How often the MAC table is aged.
const MAC_AGING_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Switch(#[from] SwitchError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Inject(#[from] inject::InjectError),
    #[error("bad flow {flow:?}: {source}")]
    Flow {
        flow: String,
        source: FlowParseError,
    },
    #[error("bad match {text:?}: {source}")]
    Match {
        text: String,
        source: FlowParseError,
    },
    #[error("{file}:{line}: {source}")]
    FlowsFile {
        file: String,
        line: usize,
        source: FlowParseError,
    },
    #[error("bad packet {packet:?}: {source} (give the packet in ovs-ofctl match syntax with in_port, e.g. in_port=1,udp,nw_dst=10.0.0.1,tp_dst=53)")]
    Packet {
        packet: String,
        source: FlowParseError,
    },
    #[error("{0}")]
    BadArgument(String),
    #[error(
        "port type {0:?} needs the DPDK backend: build flowmark with `cargo build --features dpdk`"
    )]
    NeedsDpdk(String),
    #[error("a {kind} port cannot join this daemon's {family} ports: one daemon runs one family of ports (their packet buffers differ)")]
    WrongFamily { kind: String, family: PortFamily },
    #[error("DPDK ports are configured but this build has no DPDK backend: build flowmark with `cargo build --features dpdk`")]
    NoDpdkFactory,
    #[error("control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another daemon is listening on {0}; stop it or give another --socket")]
    SocketInUse(PathBuf),
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the daemon is shutting down")]
    Stopped,
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// A predicate over the pipeline's rules, run on the main thread.
pub type RuleFilter = Box<dyn Fn(&fallback::ofproto::table::RuleEntry) -> bool + Send>;

/// What the OpenFlow endpoint and the control socket ask of the main loop.
#[allow(clippy::large_enum_variant)]
enum Op {
    Control(Request),
    AddRules(Vec<Rule>),
    /// Changes applied to a copy of the pipeline, which replaces it (one
    /// new version, one revalidation) unless the change gives up (`None`).
    Transaction(PipelineChange),
    /// One OpenFlow flow add, checked against the pipeline first.
    AddRuleChecked {
        rule: Rule,
        check_overlap: bool,
        max_flows: usize,
        send_flow_rem: bool,
    },
    DelRules {
        table: Option<u8>,
        selector: Match,
        strict_priority: Option<u16>,
    },
    ModRules {
        table: Option<u8>,
        selector: Match,
        strict_priority: Option<u16>,
        actions: Vec<OfAction>,
    },
    DumpFlows,
    /// Rules the predicate selects, counted in place (OFPMP_AGGREGATE).
    AggregateFlows(RuleFilter),
    /// Every group with its counters (OFPMP_GROUP, OFPMP_GROUP_DESC).
    Groups,
    /// Whether a group exists (a flow mod naming it).
    HasGroup(u32),
    /// Every meter with its flow count (OFPMP_METER, OFPMP_METER_CONFIG).
    Meters,
    /// Whether a meter exists (a flow mod naming it).
    HasMeter(u32),
    ListPorts,
    PortStats,
    /// OFPT_PORT_MOD: config bits under a mask.
    PortMod {
        ofport: u32,
        config: u32,
        mask: u32,
    },
    PacketOut {
        in_port: u32,
        actions: Vec<fallback::ofproto::OfAction>,
        frame: Vec<u8>,
    },
    /// What a `/metrics` scrape reads.
    Metrics,
}

/// An all-or-nothing change of the OpenFlow pipeline (a bundle's commit).
pub type PipelineChange = Box<dyn FnOnce(Pipeline) -> Option<Pipeline> + Send>;

/// The main loop's answer.
enum Reply {
    Json(Value),
    Rules(Vec<RuleId>),
    Added(Result<RuleId, AddRefused>),
    Flows(Vec<FlowEntry>),
    Aggregate((u64, u64, u64)),
    Groups(Vec<crate::openflow::group_table::GroupInfo>),
    Meters(Vec<crate::openflow::meter_table::MeterInfo>),
    Ports(Vec<PortInfo>),
    PortStats(Vec<NamedPortStats>),
    /// A port's config after a PORT_MOD; `None`: no such port.
    PortConfig(Option<u32>),
    PacketOut(crate::switch::PacketOutReport),
    Metrics(Box<crate::metrics::Scrape>),
}

type ReplyTo = Sender<Result<Reply, DaemonError>>;

struct Envelope {
    op: Op,
    reply: ReplyTo,
}

impl Op {
    /// OpenFlow's flow-table requests run on the caller's thread. `ovs-ofctl
    /// add-flows` waits for a barrier reply after every FLOW_MOD, so the mod's
    /// round trip decides its speed, and a hand-off to the main thread and
    /// back (two thread wake-ups) was most of it. Everything else (the CLI's
    /// requests, ports, packet-outs, metrics: device calls among them) stays
    /// on the main thread.
    fn served_in_place(&self) -> bool {
        matches!(
            self,
            Op::AddRules(_)
                | Op::Transaction(_)
                | Op::AddRuleChecked { .. }
                | Op::DelRules { .. }
                | Op::ModRules { .. }
                | Op::DumpFlows
                | Op::AggregateFlows(_)
                | Op::Groups
                | Op::HasGroup(_)
                | Op::Meters
                | Op::HasMeter(_)
        )
    }
}

/// The daemon's state as a caller serving a request in place sees it.
trait ServeInPlace: Send {
    fn serve_in_place(&mut self, op: Op) -> Result<Reply, DaemonError>;
}

/// A handle on a running daemon, for the control socket and the OpenFlow
/// endpoint. Cheap to clone; every call waits for its answer: requests that
/// [`Op::served_in_place`] take the daemon's lock and run on the caller's
/// thread, the others go to the main loop.
#[derive(Clone)]
pub struct DaemonHandle {
    tx: Sender<Envelope>,
    /// Weak: a handle left in some thread must not keep the daemon (its
    /// ports, its NIC rules) alive past `run_with`.
    in_place: Weak<Mutex<dyn ServeInPlace>>,
}

impl DaemonHandle {
    fn call(&self, op: Op) -> Result<Reply, DaemonError> {
        if op.served_in_place() {
            let daemon = self.in_place.upgrade().ok_or(DaemonError::Stopped)?;
            // Poisoned: a request panicked half-way; the main loop stops.
            let mut daemon = daemon.lock().map_err(|_| DaemonError::Stopped)?;
            return daemon.serve_in_place(op);
        }
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.tx
            .send(Envelope { op, reply })
            .map_err(|_| DaemonError::Stopped)?;
        rx.recv().map_err(|_| DaemonError::Stopped)?
    }

    /// A control request; the result is DESIGN §5's JSON document.
    pub fn request(&self, req: Request) -> Result<Value, DaemonError> {
        match self.call(Op::Control(req))? {
            Reply::Json(v) => Ok(v),
            _ => Ok(Value::Null),
        }
    }

    /// Adds rules (one revalidation for all); a rule with the same table,
    /// priority and match replaces the old one. Returns the new ids.
    pub fn flow_add(&self, rules: Vec<Rule>) -> Result<Vec<RuleId>, DaemonError> {
        match self.call(Op::AddRules(rules))? {
            Reply::Rules(ids) => Ok(ids),
            _ => Ok(Vec::new()),
        }
    }

    /// One OpenFlow flow add: refused (nothing changes) on an overlap with
    /// `check_overlap` or when the switch holds `max_flows` already.
    pub fn flow_add_checked(
        &self,
        rule: Rule,
        check_overlap: bool,
        max_flows: usize,
        send_flow_rem: bool,
    ) -> Result<Result<RuleId, AddRefused>, DaemonError> {
        match self.call(Op::AddRuleChecked {
            rule,
            check_overlap,
            max_flows,
            send_flow_rem,
        })? {
            Reply::Added(r) => Ok(r),
            _ => Err(DaemonError::Stopped),
        }
    }

    /// Applies `change` to a copy of the pipeline; true when it replaced the
    /// pipeline (as one version), false when it gave up (nothing changed).
    pub fn transaction(&self, change: PipelineChange) -> Result<bool, DaemonError> {
        match self.call(Op::Transaction(change))? {
            Reply::Json(Value::Bool(done)) => Ok(done),
            _ => Err(DaemonError::Stopped),
        }
    }

    /// Deletes rules as OFPFC_DELETE (loose: `strict_priority` None) or
    /// OFPFC_DELETE_STRICT; `table` None: every table.
    pub fn flow_del(
        &self,
        table: Option<u8>,
        selector: Match,
        strict_priority: Option<u16>,
    ) -> Result<Vec<RuleId>, DaemonError> {
        match self.call(Op::DelRules {
            table,
            selector,
            strict_priority,
        })? {
            Reply::Rules(ids) => Ok(ids),
            _ => Ok(Vec::new()),
        }
    }

    /// Replaces the actions of the selected rules (OFPFC_MODIFY[_STRICT]);
    /// ids and counters stay.
    pub fn flow_mod(
        &self,
        table: Option<u8>,
        selector: Match,
        strict_priority: Option<u16>,
        actions: Vec<OfAction>,
    ) -> Result<Vec<RuleId>, DaemonError> {
        match self.call(Op::ModRules {
            table,
            selector,
            strict_priority,
            actions,
        })? {
            Reply::Rules(ids) => Ok(ids),
            _ => Ok(Vec::new()),
        }
    }

    /// Every rule with its counters and age (OFPMP_FLOW_STATS).
    /// Rules `select` picks: (count, packets, bytes), counted in place.
    pub fn flow_aggregate(&self, select: RuleFilter) -> Result<(u64, u64, u64), DaemonError> {
        match self.call(Op::AggregateFlows(select))? {
            Reply::Aggregate(c) => Ok(c),
            _ => Ok((0, 0, 0)),
        }
    }

    /// Every group with its counters.
    pub fn groups(&self) -> Result<Vec<crate::openflow::group_table::GroupInfo>, DaemonError> {
        match self.call(Op::Groups)? {
            Reply::Groups(g) => Ok(g),
            _ => Ok(Vec::new()),
        }
    }

    pub fn has_group(&self, id: u32) -> Result<bool, DaemonError> {
        match self.call(Op::HasGroup(id))? {
            Reply::Json(Value::Bool(b)) => Ok(b),
            _ => Err(DaemonError::Stopped),
        }
    }

    /// Every meter with its flow count.
    pub fn meters(&self) -> Result<Vec<crate::openflow::meter_table::MeterInfo>, DaemonError> {
        match self.call(Op::Meters)? {
            Reply::Meters(m) => Ok(m),
            _ => Ok(Vec::new()),
        }
    }

    pub fn has_meter(&self, id: u32) -> Result<bool, DaemonError> {
        match self.call(Op::HasMeter(id))? {
            Reply::Json(Value::Bool(b)) => Ok(b),
            _ => Err(DaemonError::Stopped),
        }
    }

    pub fn flow_dump(&self) -> Result<Vec<FlowEntry>, DaemonError> {
        match self.call(Op::DumpFlows)? {
            Reply::Flows(f) => Ok(f),
            _ => Ok(Vec::new()),
        }
    }

    /// OFPMP_PORT_DESC.
    pub fn port_list(&self) -> Result<Vec<PortInfo>, DaemonError> {
        match self.call(Op::ListPorts)? {
            Reply::Ports(p) => Ok(p),
            _ => Ok(Vec::new()),
        }
    }

    /// OFPT_PORT_MOD: `ofport`'s config bits under `mask` set to those of
    /// `config`; the config after, `None` for a port the switch lacks.
    pub fn port_mod(
        &self,
        ofport: u32,
        config: u32,
        mask: u32,
    ) -> Result<Option<u32>, DaemonError> {
        match self.call(Op::PortMod {
            ofport,
            config,
            mask,
        })? {
            Reply::PortConfig(c) => Ok(c),
            _ => Ok(None),
        }
    }

    /// OFPMP_PORT_STATS (DESIGN §6 accounting).
    pub fn port_stats(&self) -> Result<Vec<NamedPortStats>, DaemonError> {
        match self.call(Op::PortStats)? {
            Reply::PortStats(p) => Ok(p),
            _ => Ok(Vec::new()),
        }
    }

    /// What a Prometheus scrape reads: the `port stats`, `pmd stats` and
    /// `offload status` documents, rules per table and MAC entries, all
    /// from one turn of the main loop.
    pub fn metrics(&self) -> Result<crate::metrics::Scrape, DaemonError> {
        match self.call(Op::Metrics)? {
            Reply::Metrics(s) => Ok(*s),
            _ => Err(DaemonError::Stopped),
        }
    }

    /// OFPT_PACKET_OUT: `actions` run on `frame` as if it arrived on
    /// `in_port` (a port or CONTROLLER); its frames leave through the
    /// ports' packet-out queues ([`crate::switch::Switch::packet_out`]).
    pub fn packet_out(
        &self,
        in_port: u32,
        actions: Vec<fallback::ofproto::OfAction>,
        frame: Vec<u8>,
    ) -> Result<crate::switch::PacketOutReport, DaemonError> {
        match self.call(Op::PacketOut {
            in_port,
            actions,
            frame,
        })? {
            Reply::PacketOut(r) => Ok(r),
            _ => Ok(crate::switch::PacketOutReport::default()),
        }
    }
}

/// What the OpenFlow endpoint gets when the daemon is up.
pub struct StartContext {
    pub handle: DaemonHandle,
    pub openflow: crate::config::OpenFlowSection,
    pub log: Logger,
    /// Packets the PMDs punt to the controller (`controller` actions).
    pub punts: crossbeam_channel::Receiver<crate::datapath::Punt>,
    /// Rules added with `send_flow_rem` that went (FLOW_REMOVED).
    pub removed: Receiver<RemovedFlow>,
}

/// Called once the daemon serves requests (e.g. to start the OpenFlow
/// endpoint); an error stops the daemon.
pub type StartHook = Box<dyn FnOnce(StartContext) -> Result<(), String> + Send>;

/// How to run the daemon.
pub struct DaemonOptions {
    pub config: Config,
    /// Where the config came from, for the log.
    pub config_path: Option<PathBuf>,
    pub socket: PathBuf,
    pub log: Logger,
    pub on_start: Option<StartHook>,
}

/// Runs the daemon with a port factory of the configured ports' family.
pub fn run_with<B, F>(opts: DaemonOptions, factory: F) -> Result<(), DaemonError>
where
    B: PacketBuf + Clone + Send + 'static,
    F: PortFactory<B> + 'static,
{
    let log = opts.log.clone();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(DaemonError::Signals)?;
    }
    let listener = server::bind(&opts.socket)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let result = (|| {
        let daemon = Arc::new(Mutex::new(Daemon::start(
            &opts.config,
            factory,
            log.clone(),
        )?));
        let in_place: Arc<Mutex<dyn ServeInPlace>> = daemon.clone();
        let handle = DaemonHandle {
            tx,
            in_place: Arc::downgrade(&in_place),
        };
        drop(in_place);
        let (ports, pmds, punts, removed) = {
            let d = lock_daemon(&daemon);
            (
                d.switch.ports().len(),
                d.switch.config().pmd_cores.len(),
                d.switch.punts(),
                d.removed_rx.clone(),
            )
        };
        server::spawn(listener, handle.clone(), log.clone()).map_err(DaemonError::Thread)?;
        // Dropped (server stopped) when the daemon returns.
        let _metrics = match opts.config.metrics.listen {
            Some(addr) => Some(crate::metrics::serve(addr, handle.clone(), log.clone())?),
            None => None,
        };
        info!(log, "flowmark running";
            "socket" => opts.socket.display().to_string(),
            "config" => opts.config_path.as_ref().map_or_else(|| "(default testbed)".to_string(), |p| p.display().to_string()),
            "ports" => ports,
            "pmds" => pmds);
        if let Some(hook) = opts.on_start {
            hook(StartContext {
                handle: handle.clone(),
                openflow: opts.config.openflow.clone(),
                log: log.clone(),
                punts,
                removed,
            })
            .map_err(DaemonError::BadArgument)?;
        }
        Daemon::run(&daemon, &rx, &stop);
        info!(log, "shutting down: stopping PMDs, removing NIC rules");
        lock_daemon(&daemon).shutdown();
        Ok(())
    })();
    if let Err(e) = std::fs::remove_file(&opts.socket) {
        warn!(log, "cannot remove the control socket"; "path" => opts.socket.display().to_string(), "error" => e.to_string());
    }
    result
}

/// Why a rule went (OpenFlow's `ofp_flow_removed_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalReason {
    IdleTimeout = 0,
    HardTimeout = 1,
    Delete = 2,
    /// The group it named was deleted (OpenFlow 1.3's OFPRR_GROUP_DELETE).
    GroupDelete = 3,
}

/// A rule added with `send_flow_rem` that went, with its counts (mark-path
/// packets included: they are counted on the megaflows) and age.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovedFlow {
    pub rule: Rule,
    pub reason: RemovalReason,
    pub age: Duration,
    pub packets: u64,
    pub bytes: u64,
}

/// The pipeline and each rule's (packets, bytes) just before a removal.
type BeforeRemoval = (Pipeline, HashMap<RuleId, (u64, u64)>);

/// Removals waiting for the OpenFlow side before they are dropped (counted
/// in the log).
const REMOVED_QUEUE: usize = 4096;

/// The main loop's state.
struct Daemon<B, F> {
    log: Logger,
    switch: Switch<B>,
    factory: F,
    /// The daemon's clock origin (the PMDs' `used` times are close to it).
    started: Instant,
    /// Per-rule times and flags (a timeout check scans nothing while no
    /// rule has a timeout: a scan of a million rules four times a second
    /// took a third of this thread while a controller loaded them).
    clocks: RuleClocks,
    removed_tx: Sender<RemovedFlow>,
    removed_rx: Receiver<RemovedFlow>,
    /// Set by `shutdown`: in-place requests are refused from then on.
    stopped: bool,
    bad_requests: log::RateLimit,
    events: events::PortEvents,
}

/// The daemon behind its lock, even when a request panicked holding it:
/// the shutdown must still stop the PMDs and remove the NIC rules.
fn lock_daemon<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B, F> ServeInPlace for Daemon<B, F>
where
    B: PacketBuf + Clone + Send + 'static,
    F: PortFactory<B>,
{
    fn serve_in_place(&mut self, op: Op) -> Result<Reply, DaemonError> {
        if self.stopped {
            return Err(DaemonError::Stopped);
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.serve(Envelope { op, reply });
        answer.try_recv().map_err(|_| DaemonError::Stopped)?
    }
}

impl<B, F> Daemon<B, F>
where
    B: PacketBuf + Clone + Send + 'static,
    F: PortFactory<B>,
{
    fn start(config: &Config, factory: F, log: Logger) -> Result<Self, DaemonError> {
        let started = Instant::now();
        let switch = Switch::start(config.switch_config())?;
        switch.set_buffer_sources(|| factory.buffer_source());
        let (removed_tx, removed_rx) = crossbeam_channel::bounded(REMOVED_QUEUE);
        let mut d = Daemon {
            log,
            switch,
            factory,
            started,
            clocks: RuleClocks::default(),
            removed_tx,
            removed_rx,
            stopped: false,
            bad_requests: log::RateLimit::new(10),
            events: events::PortEvents::new(),
        };
        let specs = match &config.ports {
            Some(p) => p.clone(),
            None => TestbedFactory::default_ports(),
        };
        for spec in specs {
            d.add_port(&spec)?;
        }
        Ok(d)
    }

    /// The main loop: requests from `requests`, then housekeeping, each
    /// under the lock, until `stop` (or a request panicked in place).
    fn run(shared: &Mutex<Self>, requests: &Receiver<Envelope>, stop: &AtomicBool) {
        let mut last_rule_check = Instant::now();
        let mut last_aging = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let first = match requests.recv_timeout(TICK) {
                Ok(env) => Some(env),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            };
            let Ok(mut daemon) = shared.lock() else {
                break;
            };
            if let Some(env) = first {
                daemon.serve(env);
                // Serve what queued up before housekeeping.
                while let Ok(env) = requests.try_recv() {
                    daemon.serve(env);
                }
            }
            daemon.poll_resets();
            if last_rule_check.elapsed() >= RULE_TIMEOUT_INTERVAL {
                last_rule_check = Instant::now();
                daemon.expire_rules();
            }
            if last_aging.elapsed() >= MAC_AGING_INTERVAL {
                last_aging = Instant::now();
                daemon.switch.age_macs();
            }
        }
    }

    fn shutdown(&mut self) {
        self.stopped = true;
        let ofports: Vec<u32> = self.switch.ports().iter().map(|p| p.ofport).collect();
        self.switch.shutdown();
        let left: usize = ofports
            .iter()
            .filter_map(|p| self.factory.device_rules(*p))
            .sum();
        if left > 0 {
            warn!(self.log, "NIC rules left after shutdown"; "rules" => left);
        } else {
            info!(self.log, "PMDs stopped, NIC rules removed");
        }
        for p in ofports {
            self.factory.remove(p);
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn serve(&mut self, env: Envelope) {
        let Envelope { op, reply } = env;
        let what = match &op {
            Op::Control(r) => r.command(),
            Op::AddRules(_) | Op::AddRuleChecked { .. } => "openflow flow_add",
            Op::Transaction(_) => "openflow bundle_commit",
            Op::DelRules { .. } => "openflow flow_del",
            Op::ModRules { .. } => "openflow flow_mod",
            Op::DumpFlows => "openflow flow_dump",
            Op::AggregateFlows(_) => "openflow flow_aggregate",
            Op::Groups => "openflow groups",
            Op::HasGroup(_) => "openflow group_exists",
            Op::Meters => "openflow meters",
            Op::HasMeter(_) => "openflow meter_exists",
            Op::ListPorts => "openflow port_list",
            Op::PortStats => "openflow port_stats",
            Op::PortMod { .. } => "openflow port_mod",
            Op::PacketOut { .. } => "openflow packet_out",
            Op::Metrics => "metrics",
        };
        debug!(self.log, "request"; "cmd" => what);
        let result = match op {
            Op::Control(Request::PortInject {
                name,
                pcap,
                generate,
            }) => match self.start_inject(&name, pcap, generate, reply.clone()) {
                // The injection thread answers.
                Ok(()) => return,
                Err(e) => Err(e),
            },
            Op::Control(req) => {
                // The CLI's changes take effect before it returns: the
                // revalidator's verdicts are with the PMDs by then.
                let settle = matches!(
                    req,
                    Request::FlowAdd { .. }
                        | Request::FlowDel { .. }
                        | Request::FlowMod { .. }
                        | Request::PortAdd { .. }
                        | Request::PortDel { .. }
                );
                let r = self.control(req).map(Reply::Json);
                if settle && !self.switch.settle() {
                    warn!(self.log, "revalidator did not settle in time");
                }
                r
            }
            Op::AddRules(rules) => Ok(Reply::Rules(self.add_rules(rules))),
            Op::Transaction(change) => {
                let copy = self.switch.pipeline().clone();
                let before = self.before_removal();
                let done = match change(copy) {
                    Some(new) => {
                        if let Some(before) = &before {
                            // Rules the bundle deleted (not those an add
                            // replaced: same table, priority and match);
                            // a rule naming a group that went went with it.
                            let gone: Vec<(RuleId, RemovalReason)> = before
                                .0
                                .entries()
                                .filter(|e| new.get(e.id).is_none())
                                .filter(|e| {
                                    new.classifier(e.table())
                                        .and_then(|c| c.find_exact(&e.r#match(), e.priority()))
                                        .is_none()
                                })
                                .map(|e| {
                                    let group_went =
                                        fallback::ofproto::group::groups_in(e.actions())
                                            .any(|g| new.group(g).is_none());
                                    let reason = if group_went {
                                        RemovalReason::GroupDelete
                                    } else {
                                        RemovalReason::Delete
                                    };
                                    (e.id, reason)
                                })
                                .collect();
                            self.announce_removed(before, &gone);
                        }
                        self.switch.set_pipeline(new);
                        self.sync_rule_clocks();
                        info!(self.log, "bundle committed"; "rules" => self.switch.pipeline().len());
                        true
                    }
                    None => false,
                };
                Ok(Reply::Json(Value::Bool(done)))
            }
            Op::AddRuleChecked {
                rule,
                check_overlap,
                max_flows,
                send_flow_rem,
            } => Ok(Reply::Added(self.add_rule_checked(
                rule,
                check_overlap,
                max_flows,
                send_flow_rem,
            ))),
            Op::DelRules {
                table,
                selector,
                strict_priority,
            } => Ok(Reply::Rules(self.del_rules(
                table,
                &selector,
                strict_priority,
            ))),
            Op::ModRules {
                table,
                selector,
                strict_priority,
                actions,
            } => Ok(Reply::Rules(self.mod_rules(
                table,
                &selector,
                strict_priority,
                &actions,
            ))),
            Op::DumpFlows => self.flow_entries(None).map(Reply::Flows),
            Op::AggregateFlows(select) => self.flow_aggregate(&select).map(Reply::Aggregate),
            Op::Groups => self
                .switch
                .rule_stats()
                .map(|stats| {
                    Reply::Groups(crate::openflow::group_table::group_infos(
                        self.switch.pipeline(),
                        stats,
                        Instant::now(),
                    ))
                })
                .map_err(DaemonError::from),
            Op::HasGroup(id) => Ok(Reply::Json(Value::Bool(
                self.switch.pipeline().group(id).is_some(),
            ))),
            Op::Meters => Ok(Reply::Meters(crate::openflow::meter_table::meter_infos(
                self.switch.pipeline(),
            ))),
            Op::HasMeter(id) => Ok(Reply::Json(Value::Bool(
                self.switch.pipeline().meter(id).is_some(),
            ))),
            Op::ListPorts => Ok(Reply::Ports(self.switch.port_list())),
            Op::PortMod {
                ofport,
                config,
                mask,
            } => Ok(Reply::PortConfig(
                self.switch.port_mod(ofport, config, mask),
            )),
            Op::PortStats => self
                .switch
                .port_stats()
                .map(Reply::PortStats)
                .map_err(Into::into),
            Op::PacketOut {
                in_port,
                actions,
                frame,
            } => self
                .switch
                .packet_out(in_port, &actions, &frame)
                .map(Reply::PacketOut)
                .map_err(Into::into),
            Op::Metrics => self.scrape().map(|s| Reply::Metrics(Box::new(s))),
        };
        if let Err(e) = &result {
            if let Some(suppressed) = self.bad_requests.allow() {
                warn!(self.log, "request refused"; "cmd" => what, "error" => e.to_string(), "suppressed" => suppressed);
            }
        }
        let _ = reply.send(result);
    }

    fn scrape(&mut self) -> Result<crate::metrics::Scrape, DaemonError> {
        let mut rules_per_table = std::collections::BTreeMap::new();
        for e in self.switch.pipeline().entries() {
            *rules_per_table.entry(e.table()).or_insert(0) += 1;
        }
        Ok(crate::metrics::Scrape {
            ports: self.switch.port_stats()?,
            pmds: self.switch.pmd_snapshots()?,
            offload: views::offload_status(&self.switch, |p| self.factory.device_rules(p))?,
            rules_per_table,
            mac_entries: self.switch.mac_entries(),
        })
    }

    fn control(&mut self, req: Request) -> Result<Value, DaemonError> {
        match req {
            Request::PortAdd {
                name,
                kind,
                devargs,
                rxqs,
                profile,
                ofport,
                socket,
                mode,
            } => {
                let kind: PortType = kind.parse().map_err(DaemonError::BadArgument)?;
                let profile = profile
                    .map(|p| offload::device::Profile::from_name(&p))
                    .transpose()
                    .map_err(|e| DaemonError::BadArgument(e.to_string()))?;
                let mode: Option<VhostMode> = mode
                    .map(|m| m.parse())
                    .transpose()
                    .map_err(DaemonError::BadArgument)?;
                let spec = PortSpec {
                    name,
                    kind,
                    ofport,
                    rxqs,
                    profile,
                    devargs,
                    socket: socket.map(PathBuf::from),
                    mode,
                };
                let ofport = self.add_port(&spec)?;
                Ok(json!({"name": spec.name, "ofport": ofport}))
            }
            Request::PortDel { name } => {
                let removed = self.switch.del_port(&name)?;
                self.factory.remove(removed.ofport);
                info!(self.log, "port removed"; "name" => &name, "ofport" => removed.ofport);
                Ok(json!({"name": name, "ofport": removed.ofport}))
            }
            Request::PortList => {
                Ok(serde_json::to_value(self.switch.port_list()).unwrap_or(Value::Null))
            }
            Request::PortStats => {
                Ok(serde_json::to_value(self.switch.port_stats()?).unwrap_or(Value::Null))
            }
            Request::PortInject { .. } => Err(DaemonError::BadArgument(
                "port_inject is answered by its injection thread".into(),
            )),
            Request::FlowAdd {
                flows,
                file_text,
                file_name,
            } => {
                let mut rules = Vec::new();
                for f in &flows {
                    rules.push(parse_flow(f).map_err(|source| DaemonError::Flow {
                        flow: f.clone(),
                        source,
                    })?);
                }
                if let Some(text) = &file_text {
                    let file = file_name.unwrap_or_else(|| "(flows file)".into());
                    let from_file = fallback::ofproto::syntax::parse_flows(text).map_err(
                        |(line, source)| DaemonError::FlowsFile {
                            file: file.clone(),
                            line,
                            source,
                        },
                    )?;
                    rules.extend(from_file);
                }
                if rules.is_empty() {
                    return Err(DaemonError::BadArgument(
                        "no flows given: name a flow or a flows file".into(),
                    ));
                }
                self.check_references_exist(&rules)?;
                let ids = self.add_rules(rules);
                Ok(json!({"added": ids.len()}))
            }
            Request::FlowDel { r#match, strict } => {
                let (table, priority, selector) = parse_selector(r#match.as_deref().unwrap_or(""))?;
                let strict_priority =
                    match (strict, priority) {
                        (true, p) => Some(p.unwrap_or(Rule::DEFAULT_PRIORITY)),
                        (false, Some(_)) => return Err(DaemonError::BadArgument(
                            "priority= selects a rule only with --strict (as ovs-ofctl del-flows)"
                                .into(),
                        )),
                        (false, None) => None,
                    };
                let ids = self.del_rules(table, &selector, strict_priority);
                Ok(json!({"deleted": ids.len()}))
            }
            Request::FlowMod { flow, strict } => {
                let rule = parse_flow(&flow).map_err(|source| DaemonError::Flow {
                    flow: flow.clone(),
                    source,
                })?;
                self.check_references_exist(std::slice::from_ref(&rule))?;
                let ids = self.mod_rules(
                    Some(rule.table),
                    &rule.r#match,
                    strict.then_some(rule.priority),
                    &rule.actions,
                );
                Ok(json!({"modified": ids.len()}))
            }
            Request::FlowDump { table } => {
                Ok(serde_json::to_value(self.flow_entries(table)?).unwrap_or(Value::Null))
            }
            Request::MegaflowDump { state } => {
                if let Some(s) = &state {
                    if !views::STATES.contains(&s.as_str()) {
                        return Err(DaemonError::BadArgument(format!(
                            "unknown state {s:?}; give one of {}",
                            views::STATES.join(", ")
                        )));
                    }
                }
                let rows = views::megaflows(&self.switch, self.now_ms())?;
                let rows: Vec<_> = rows
                    .into_iter()
                    .filter(|r| state.as_deref().is_none_or(|s| r.state == s))
                    .collect();
                Ok(serde_json::to_value(rows).unwrap_or(Value::Null))
            }
            Request::OffloadStatus => {
                views::offload_status(&self.switch, |p| self.factory.device_rules(p))
            }
            Request::PmdStats { clear } => {
                let snaps = self.switch.pmd_snapshots()?;
                if clear {
                    self.switch.clear_pmd_counters();
                }
                Ok(serde_json::to_value(snaps).unwrap_or(Value::Null))
            }
            Request::PmdRxqs => Ok(serde_json::to_value(self.switch.rxqs()).unwrap_or(Value::Null)),
            Request::Trace { packet } => views::trace(&self.switch, &packet),
            Request::PortCapture { name } => {
                let ofport = self
                    .switch
                    .port_by_name(&name)
                    .map(|p| p.ofport)
                    .ok_or_else(|| SwitchError::NoSuchPort(name.clone()))?;
                let frames: Vec<String> = self
                    .factory
                    .take_captured(ofport)?
                    .iter()
                    .map(|f| f.iter().map(|b| format!("{b:02x}")).collect())
                    .collect();
                Ok(json!({"name": name, "frames": frames}))
            }
            Request::NicReset { name } => {
                let ofport = self
                    .switch
                    .port_by_name(&name)
                    .map(|p| p.ofport)
                    .ok_or_else(|| SwitchError::NoSuchPort(name.clone()))?;
                self.factory.reset_nic(ofport)?;
                // Re-offer at once rather than at the next tick.
                self.poll_resets();
                Ok(json!({"name": name, "reset": true}))
            }
            Request::Version => Ok(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "commit": crate::GIT_COMMIT,
                "dpdk": cfg!(feature = "dpdk"),
            })),
        }
    }

    fn add_port(&mut self, spec: &PortSpec) -> Result<u32, DaemonError> {
        if let Err((key, why)) = spec.check() {
            return Err(DaemonError::BadArgument(format!("{key}: {why}")));
        }
        if !cfg!(feature = "dpdk") && spec.kind.family() == PortFamily::Dpdk {
            return Err(DaemonError::NeedsDpdk(spec.kind.name().to_string()));
        }
        if spec.kind.family() != self.factory.family() {
            return Err(DaemonError::WrongFamily {
                kind: spec.kind.name().to_string(),
                family: self.factory.family(),
            });
        }
        if self.switch.port_by_name(&spec.name).is_some() {
            return Err(SwitchError::DuplicatePort(spec.name.clone()).into());
        }
        let ofport = match spec.ofport {
            Some(n) if self.switch.ports().iter().any(|p| p.ofport == n) => {
                return Err(SwitchError::DuplicateOfport(n).into())
            }
            Some(n) => n,
            None => self.switch.free_ofport(),
        };
        let new = self.factory.create(ofport, spec)?;
        if let Err(e) = self.switch.add_port(
            &spec.name,
            spec.kind.name(),
            Some(ofport),
            new.port,
            new.flow_device,
        ) {
            self.factory.remove(ofport);
            return Err(e.into());
        }
        info!(self.log, "port added"; "name" => &spec.name, "type" => spec.kind.name(), "ofport" => ofport);
        Ok(ofport)
    }

    fn start_inject(
        &mut self,
        name: &str,
        pcap: Option<PathBuf>,
        generate: Option<String>,
        reply: ReplyTo,
    ) -> Result<(), DaemonError> {
        let ofport = self
            .switch
            .port_by_name(name)
            .map(|p| p.ofport)
            .ok_or_else(|| SwitchError::NoSuchPort(name.to_string()))?;
        let into = self.factory.injector(ofport).map_err(|e| match e {
            PortError::NoSuchOfport(_) => PortError::NotTestbed {
                name: name.to_string(),
                kind: self
                    .switch
                    .port_by_name(name)
                    .map_or_else(String::new, |p| p.kind.clone()),
                what: "port inject",
            },
            e => e,
        })?;
        enum Source {
            Pcap(PathBuf),
            Generate(inject::GenerateSpec),
        }
        let source = match (pcap, generate) {
            (Some(p), None) => Source::Pcap(p),
            (None, Some(g)) => Source::Generate(inject::GenerateSpec::parse(&g)?),
            _ => {
                return Err(DaemonError::BadArgument(
                    "port inject takes one of --pcap FILE or --generate flows=N,count=M".into(),
                ))
            }
        };
        let name = name.to_string();
        let log = self.log.clone();
        std::thread::Builder::new()
            .name(format!("inject-{name}"))
            .spawn(move || {
                let result = (|| {
                    let (frames, count, rate) = match source {
                        Source::Pcap(p) => {
                            let f = inject::pcap_frames(&p)?;
                            let n = f.len() as u64;
                            (f, n, None)
                        }
                        Source::Generate(g) => (g.frames(), g.count, g.rate),
                    };
                    inject::send(&name, into.as_ref(), &frames, count, rate)
                })();
                let result = match result {
                    Ok(r) => {
                        debug!(log, "injected"; "port" => &r.port, "packets" => r.packets, "seconds" => r.seconds);
                        Ok(Reply::Json(serde_json::to_value(r).unwrap_or(Value::Null)))
                    }
                    Err(e) => Err(DaemonError::Inject(e)),
                };
                let _ = reply.send(result);
            })
            .map_err(DaemonError::Thread)?;
        Ok(())
    }

    // ---- OpenFlow rules ----

    /// Keeps the per-rule clocks in step with the pipeline.
    fn sync_rule_clocks(&mut self) {
        self.clocks.sync(self.switch.pipeline(), Instant::now());
    }

    /// The pipeline and per-rule counts before a removal, when a rule that
    /// asked for FLOW_REMOVED may be among the removed (else `None`: the
    /// removal costs no PMD round trip).
    fn before_removal(&self) -> Option<BeforeRemoval> {
        if self.clocks.n_flagged() == 0 {
            return None;
        }
        let stats = match self.switch.rule_stats() {
            Ok(s) => s,
            Err(e) => {
                warn!(self.log, "flow removal counts unknown"; "error" => e.to_string());
                HashMap::new()
            }
        };
        Some((self.switch.pipeline().clone(), stats))
    }

    /// Announces the removed rules that asked for it (FLOW_REMOVED).
    fn announce_removed(&self, before: &BeforeRemoval, removed: &[(RuleId, RemovalReason)]) {
        let now = Instant::now();
        for (id, reason) in removed {
            if !self.clocks.is_flagged(*id) {
                continue;
            }
            let Some(entry) = before.0.get(*id) else {
                continue;
            };
            let (packets, bytes) = before.1.get(id).copied().unwrap_or((0, 0));
            let gone = RemovedFlow {
                rule: entry.to_rule(),
                reason: *reason,
                age: self
                    .clocks
                    .added(*id)
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
                packets,
                bytes,
            };
            if self.removed_tx.try_send(gone).is_err() {
                warn!(self.log, "FLOW_REMOVED dropped: the OpenFlow side is behind"; "rule" => id.0);
            }
        }
    }

    /// A flow naming a meter or group that does not exist is refused, as
    /// OpenFlow refuses it (OFPMMFC_INVALID_METER, OFPBAC_BAD_OUT_GROUP):
    /// the pipeline relies on it.
    fn check_references_exist(&self, rules: &[Rule]) -> Result<(), DaemonError> {
        let pipeline = self.switch.pipeline();
        for r in rules {
            if let Some(m) = fallback::ofproto::meter::meters_in(&r.actions)
                .find(|m| pipeline.meter(*m).is_none())
            {
                return Err(DaemonError::BadArgument(format!(
                    "a flow names meter {m}, which does not exist: add the meter first (ovs-ofctl -O OpenFlow13 add-meter)"
                )));
            }
            if let Some(g) = fallback::ofproto::group::groups_in(&r.actions)
                .find(|g| pipeline.group(*g).is_none())
            {
                return Err(DaemonError::BadArgument(format!(
                    "a flow names group {g}, which does not exist: add the group first (ovs-ofctl add-group)"
                )));
            }
        }
        Ok(())
    }

    fn add_rules(&mut self, rules: Vec<Rule>) -> Vec<RuleId> {
        let ids = self.switch.flow_add_all(rules);
        self.sync_rule_clocks();
        info!(self.log, "flows added"; "count" => ids.len());
        ids
    }

    fn add_rule_checked(
        &mut self,
        rule: Rule,
        check_overlap: bool,
        max_flows: usize,
        send_flow_rem: bool,
    ) -> Result<RuleId, AddRefused> {
        let replaced = check_add(self.switch.pipeline(), &rule, check_overlap, max_flows)?;
        let timed = rule.idle_timeout > 0 || rule.hard_timeout > 0;
        let added = self.switch.flow_add_replacing(rule, replaced);
        // O(1) bookkeeping: a full resync per OpenFlow add would make a
        // controller's table load quadratic.
        self.clocks.add(
            self.switch.pipeline(),
            added.id,
            added.replaced,
            timed,
            send_flow_rem,
            Instant::now(),
        );
        debug!(self.log, "flow added"; "id" => added.id.0);
        Ok(added.id)
    }

    fn del_rules(&mut self, table: Option<u8>, sel: &Match, strict: Option<u16>) -> Vec<RuleId> {
        let before = self.before_removal();
        let ids = self.switch.flow_del(table, sel, strict);
        if let Some(before) = &before {
            let removed: Vec<_> = ids.iter().map(|id| (*id, RemovalReason::Delete)).collect();
            self.announce_removed(before, &removed);
        }
        self.sync_rule_clocks();
        info!(self.log, "flows deleted"; "count" => ids.len());
        ids
    }

    fn mod_rules(
        &mut self,
        table: Option<u8>,
        sel: &Match,
        strict: Option<u16>,
        actions: &[OfAction],
    ) -> Vec<RuleId> {
        // Table 255 (OFPTT_ALL) selects every table.
        let table = table.filter(|t| *t != 255);
        let ids = self.switch.flow_mod(table, sel, strict, actions);
        info!(self.log, "flows modified"; "count" => ids.len());
        ids
    }

    fn flow_aggregate(&mut self, select: &RuleFilter) -> Result<(u64, u64, u64), DaemonError> {
        let stats = self.switch.rule_stats()?;
        let mut c = (0, 0, 0);
        // Counting needs no lookup order: `entries`, not the sorting `rules`.
        for e in self.switch.pipeline().entries().filter(|e| select(e)) {
            let (packets, bytes) = stats.get(&e.id).copied().unwrap_or((0, 0));
            c = (c.0 + 1, c.1 + packets, c.2 + bytes);
        }
        Ok(c)
    }

    fn flow_entries(&mut self, table: Option<u8>) -> Result<Vec<FlowEntry>, DaemonError> {
        self.sync_rule_clocks();
        let stats = self.switch.rule_stats()?;
        let now = Instant::now();
        Ok(self
            .switch
            .pipeline()
            .rules()
            .filter(|e| table.is_none_or(|t| e.table() == t))
            .map(|e| {
                let (packets, bytes) = stats.get(&e.id).copied().unwrap_or((0, 0));
                let age = self
                    .clocks
                    .added(e.id)
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                FlowEntry::new(e.id, &e.to_rule(), packets, bytes, age)
            })
            .collect())
    }

    /// Deletes rules past their hard timeout, or whose packet count has not
    /// grown for their idle timeout.
    fn expire_rules(&mut self) {
        if self.clocks.n_timed() == 0 {
            return;
        }
        let timed: Vec<(RuleId, u16, u16)> = self
            .switch
            .pipeline()
            .entries()
            .filter(|e| e.idle_timeout() > 0 || e.hard_timeout() > 0)
            .map(|e| (e.id, e.idle_timeout(), e.hard_timeout()))
            .collect();
        if timed.is_empty() {
            return;
        }
        self.sync_rule_clocks();
        let stats = if self.clocks.n_flagged() > 0 || timed.iter().any(|(_, idle, _)| *idle > 0) {
            match self.switch.rule_stats() {
                Ok(s) => s,
                Err(e) => {
                    warn!(self.log, "rule timeouts skipped"; "error" => e.to_string());
                    return;
                }
            }
        } else {
            HashMap::new()
        };
        let now = Instant::now();
        let mut doomed = Vec::new();
        for (id, idle, hard) in timed {
            let added = self.clocks.added(id);
            let Some(clock) = self.clocks.activity_mut(id) else {
                continue;
            };
            let age = added.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            if hard > 0 && age >= Duration::from_secs(hard.into()) {
                doomed.push((id, RemovalReason::HardTimeout));
                continue;
            }
            if idle > 0 {
                let packets = stats.get(&id).map_or(0, |s| s.0);
                if packets != clock.last_packets {
                    clock.last_packets = packets;
                    clock.last_active = now;
                } else if now.duration_since(clock.last_active) >= Duration::from_secs(idle.into())
                {
                    doomed.push((id, RemovalReason::IdleTimeout));
                }
            }
        }
        if doomed.is_empty() {
            return;
        }
        if self.clocks.n_flagged() > 0 {
            self.announce_removed(&(self.switch.pipeline().clone(), stats), &doomed);
        }
        let ids: Vec<RuleId> = doomed.iter().map(|d| d.0).collect();
        let mut pipeline = self.switch.pipeline().clone();
        pipeline.remove_ids(&ids);
        self.switch.set_pipeline(pipeline);
        self.sync_rule_clocks();
        info!(self.log, "flows timed out"; "count" => doomed.len());
    }

    /// Device events (NIC reset, port removal): DESIGN §3.
    fn poll_resets(&mut self) {
        let handled = self
            .events
            .handle(&mut self.switch, &mut self.factory, &self.log);
        for ofport in handled.removed {
            debug!(self.log, "port removed by a device event"; "ofport" => ofport);
        }
    }
}

/// `flow del`'s match: ovs-ofctl's, where `table=` and `priority=` may
/// appear among the fields.
fn parse_selector(text: &str) -> Result<(Option<u8>, Option<u16>, Match), DaemonError> {
    let mut table = None;
    let mut priority = None;
    let mut fields = Vec::new();
    for tok in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
    {
        let bad =
            |what: &str| DaemonError::BadArgument(format!("bad match {text:?}: {tok:?}: {what}"));
        if let Some(v) = tok.strip_prefix("table=") {
            let t: u8 = v
                .parse()
                .map_err(|_| bad("table is 0 to 254, or 255 for all"))?;
            table = (t != 255).then_some(t);
        } else if let Some(v) = tok.strip_prefix("priority=") {
            priority = Some(v.parse().map_err(|_| bad("priority is 0 to 65535"))?);
        } else {
            fields.push(tok);
        }
    }
    let joined = fields.join(",");
    let m = parse_match(&joined).map_err(|source| DaemonError::Match {
        text: text.to_string(),
        source,
    })?;
    Ok((table, priority, m))
}
