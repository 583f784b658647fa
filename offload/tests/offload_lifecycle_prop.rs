//! Property test of the offload engine (DESIGN §3 invariants) against a flow
//! device that refuses at random, with several PMDs that apply their table
//! updates and report quiescence whenever the test says so.
//!
//! Random operations: put, actions-only modify, match-changing modify,
//! delete, device work, PMD quiescence, port removal and re-addition, NIC
//! reset, injected create failures, table capacity changes (full tables),
//! PMD removal and re-addition, time passing. After every operation:
//! - marks in use == (port, ufid) pairs whose rule is on the NIC, and the
//!   registry's mark ↔ key maps agree with the engine and the devices;
//! - no mark maps to two different megaflows, in the registry or in any
//!   PMD's MarkTable (a table entry leads to a copy of the mark's own
//!   megaflow, a dead handle, or a quarantined mark, never a free one);
//! - the state counts add up to the number of megaflows, and the engine's
//!   sharers are exactly the PMDs' installed copies;
//! - no mark is handed out again before every PMD alive at its release has
//!   passed a quiescent point;
//! - every Rejected/Failed megaflow has a reason;
//! - after a port's removal none of its rules or marks remain.
//!
//! The same runs also go through a deterministic model of 2 offload
//! threads: two engines, each shard of the marks
//! (`EngineConfig::shard`/`shards`), requests routed by `shard_of(port)`,
//! each `Process` working one shard (the shards progress independently),
//! every PMD reporting its quiescence to each shard, and one update inbox
//! per PMD shared by both (one channel, as with the real threads). On top
//! of the checks above (per shard), across shards: no mark is held by both,
//! each shard holds only its own ports' megaflows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fallback::actions::DpAction;
use fallback::cache::FlowCache;
use fallback::key::{ethertype, frag, Field, VLAN_CFI};
use fallback::megaflow::{Megaflow, Ufid};
use fallback::ofproto::Match;
use offload::device::{Capabilities, Counters, FlowDevice, FlowError, Profile, RuleHandle};
use offload::marks::{Mark, MarkStatus, MarkTable, OffloadKey, PmdId, PmdUpdate, PortId};
use offload::rte::{Action, Rule};
use offload::worker::{
    shard_of, EngineConfig, OffloadEngine, OffloadRequest, OffloadState, PutRequest,
};
use proptest::prelude::*;

const N_PMDS: usize = 3;
/// Ports 1 and 2 start with a flow device; port 3 is a VM port (none).
const PORTS: [PortId; 3] = [1, 2, 3];
const FLOWS_PER_PORT: usize = 10;
/// Fewer marks than megaflows, so marks run out and get reused.
const MAX_MARKS: u32 = 12;

// ---- the random flow device -------------------------------------------------

struct DeviceState {
    rng: u64,
    /// handle → MARK id.
    rules: BTreeMap<u64, u32>,
    next: u64,
    capacity: usize,
    fail_next_create: Option<FlowError>,
}

/// A flow device with a capacity that refuses validate, create and destroy
/// at random (seeded, so runs are reproducible).
struct RandomDevice {
    caps: Capabilities,
    state: Mutex<DeviceState>,
}

impl RandomDevice {
    fn new(seed: u64, capacity: usize) -> Arc<RandomDevice> {
        Arc::new(RandomDevice {
            caps: Capabilities {
                max_rules: capacity,
                ..Profile::Generic.capabilities()
            },
            state: Mutex::new(DeviceState {
                rng: seed | 1,
                rules: BTreeMap::new(),
                next: 0,
                capacity,
                fail_next_create: None,
            }),
        })
    }

    fn st(&self) -> MutexGuard<'_, DeviceState> {
        // A panic elsewhere in the test poisons nothing we rely on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rules(&self) -> BTreeMap<u64, u32> {
        self.st().rules.clone()
    }
}

impl DeviceState {
    /// xorshift64*: per mille.
    fn roll(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % 1000
    }
}

fn mark_of(rule: &Rule) -> u32 {
    rule.actions
        .iter()
        .find_map(|a| match a {
            Action::Mark { id } => Some(*id),
            _ => None,
        })
        .unwrap_or(0)
}

impl FlowDevice for RandomDevice {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn validate(&self, rule: &Rule) -> Result<(), FlowError> {
        self.caps.check(rule)?;
        if self.st().roll() < 15 {
            return Err(FlowError::unsupported("item IPV4", "random refusal"));
        }
        Ok(())
    }

    fn create(&self, rule: &Rule) -> Result<RuleHandle, FlowError> {
        let mut s = self.st();
        if let Some(e) = s.fail_next_create.take() {
            return Err(e);
        }
        if s.rules.len() >= s.capacity {
            return Err(FlowError::NoSpace);
        }
        match s.roll() {
            0..=29 => return Err(FlowError::NoSpace),
            30..=59 => return Err(FlowError::Device("random device error".into())),
            60..=69 => return Err(FlowError::invalid("action RSS", "random refusal")),
            70..=79 => return Err(FlowError::unsupported("item ETH", "random refusal")),
            _ => {}
        }
        s.next += 1;
        let handle = s.next;
        s.rules.insert(handle, mark_of(rule));
        Ok(RuleHandle(handle))
    }

    fn destroy(&self, handle: RuleHandle) -> Result<(), FlowError> {
        let mut s = self.st();
        if s.roll() < 40 {
            return Err(FlowError::Device("random destroy failure".into()));
        }
        match s.rules.remove(&handle.0) {
            Some(_) => Ok(()),
            None => Err(FlowError::invalid("rule handle", "unknown to this port")),
        }
    }

    fn query(&self, _: RuleHandle) -> Result<Counters, FlowError> {
        Err(FlowError::unsupported("query", "no COUNT action"))
    }

    fn flush(&self) -> Result<(), FlowError> {
        self.st().rules.clear();
        Ok(())
    }
}

// ---- megaflows ----------------------------------------------------------------

/// Flow `i` of a port: mostly offloadable IPv4 megaflows, every fifth one
/// an ARP megaflow the translator refuses.
fn flow_match(port: PortId, i: usize) -> Match {
    let mut m = Match::ANY;
    m.set_exact(Field::InPort, port.into());
    if i % 5 == 4 {
        m.set_exact(Field::DlType, ethertype::ARP.into());
        m.set_exact(Field::ArpSha, 0x0200_0000_0000 + i as u128);
    } else {
        m.set_exact(Field::DlType, ethertype::IPV4.into());
        m.set_masked(Field::VlanTci, 0, VLAN_CFI.into());
        m.set_masked(Field::NwFrag, 0, frag::MASK.into());
        m.set_exact(Field::NwSrc, 0x0a00_0000 + i as u128);
    }
    m
}

fn port_of(flow: usize) -> PortId {
    PORTS[flow / FLOWS_PER_PORT]
}

// ---- operations -------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum FailKind {
    NoSpace,
    Device,
    Unsupported,
    Invalid,
}

impl FailKind {
    fn error(self) -> FlowError {
        match self {
            FailKind::NoSpace => FlowError::NoSpace,
            FailKind::Device => FlowError::Device("injected".into()),
            FailKind::Unsupported => FlowError::unsupported("action MARK", "injected"),
            FailKind::Invalid => FlowError::invalid("pattern", "injected"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Put {
        pmd: usize,
        flow: usize,
    },
    ModifyActions {
        pmd: usize,
        flow: usize,
    },
    /// Revalidation moved the PMD's megaflow `flow` to another match of
    /// the same port.
    ModifyMatch {
        pmd: usize,
        flow: usize,
        to: usize,
    },
    Delete {
        pmd: usize,
        flow: usize,
    },
    Process {
        budget: usize,
    },
    Quiesce {
        pmd: usize,
    },
    RemovePort {
        port: PortId,
    },
    AddPort {
        port: PortId,
    },
    Reset {
        port: PortId,
    },
    FailNextCreate {
        port: PortId,
        kind: FailKind,
    },
    SetCapacity {
        port: PortId,
        capacity: usize,
    },
    RemovePmd {
        pmd: usize,
    },
    AddPmd {
        pmd: usize,
    },
    Tick {
        ms: u64,
    },
}

fn fail_kind() -> impl Strategy<Value = FailKind> {
    prop_oneof![
        Just(FailKind::NoSpace),
        Just(FailKind::Device),
        Just(FailKind::Unsupported),
        Just(FailKind::Invalid),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let pmd = 0..N_PMDS;
    let flow = 0..PORTS.len() * FLOWS_PER_PORT;
    let port = prop::sample::select(PORTS.to_vec());
    prop_oneof![
        30 => (pmd.clone(), flow.clone()).prop_map(|(pmd, flow)| Op::Put { pmd, flow }),
        4 => (pmd.clone(), flow.clone()).prop_map(|(pmd, flow)| Op::ModifyActions { pmd, flow }),
        4 => (pmd.clone(), flow.clone(), 0..FLOWS_PER_PORT)
            .prop_map(|(pmd, flow, to)| Op::ModifyMatch { pmd, flow, to }),
        14 => (pmd.clone(), flow).prop_map(|(pmd, flow)| Op::Delete { pmd, flow }),
        14 => (1..8usize).prop_map(|budget| Op::Process { budget }),
        14 => pmd.clone().prop_map(|pmd| Op::Quiesce { pmd }),
        1 => port.clone().prop_map(|port| Op::RemovePort { port }),
        2 => port.clone().prop_map(|port| Op::AddPort { port }),
        1 => port.clone().prop_map(|port| Op::Reset { port }),
        2 => (port.clone(), fail_kind()).prop_map(|(port, kind)| Op::FailNextCreate { port, kind }),
        2 => (port, 0..6usize).prop_map(|(port, capacity)| Op::SetCapacity { port, capacity }),
        1 => pmd.clone().prop_map(|pmd| Op::RemovePmd { pmd }),
        1 => pmd.prop_map(|pmd| Op::AddPmd { pmd }),
        2 => (1..4u64).prop_map(|ms| Op::Tick { ms }),
    ]
}

/// The same mix from a seed, for long runs (no shrinking needed there: a
/// failure names its seed and operation index).
fn seeded_ops(seed: u64, n: usize) -> Vec<Op> {
    let mut s = seed | 1;
    let mut next = move |m: u64| {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) % m
    };
    let kinds = [
        FailKind::NoSpace,
        FailKind::Device,
        FailKind::Unsupported,
        FailKind::Invalid,
    ];
    let n_flows = (PORTS.len() * FLOWS_PER_PORT) as u64;
    (0..n)
        .map(|_| {
            let pmd = next(N_PMDS as u64) as usize;
            let flow = next(n_flows) as usize;
            let port = PORTS[next(PORTS.len() as u64) as usize];
            match next(96) {
                0..=29 => Op::Put { pmd, flow },
                30..=33 => Op::ModifyActions { pmd, flow },
                34..=37 => Op::ModifyMatch {
                    pmd,
                    flow,
                    to: next(FLOWS_PER_PORT as u64) as usize,
                },
                38..=51 => Op::Delete { pmd, flow },
                52..=65 => Op::Process {
                    budget: 1 + next(7) as usize,
                },
                66..=79 => Op::Quiesce { pmd },
                80 => Op::RemovePort { port },
                81..=82 => Op::AddPort { port },
                83 => Op::Reset { port },
                84..=85 => Op::FailNextCreate {
                    port,
                    kind: kinds[next(4) as usize],
                },
                86..=87 => Op::SetCapacity {
                    port,
                    capacity: next(6) as usize,
                },
                88 => Op::RemovePmd { pmd },
                89 => Op::AddPmd { pmd },
                _ => Op::Tick { ms: 1 + next(3) },
            }
        })
        .collect()
}

// ---- the world ------------------------------------------------------------------

struct Pmd {
    id: PmdId,
    alive: bool,
    cache: FlowCache,
    table: MarkTable,
    /// Updates sent to this PMD, not yet applied.
    inbox: Vec<PmdUpdate>,
}

struct World {
    /// One engine per offload shard.
    engines: Vec<OffloadEngine>,
    now: Instant,
    seed: u64,
    pmds: Vec<Pmd>,
    devices: BTreeMap<PortId, Arc<RandomDevice>>,
    out: Vec<(PmdId, PmdUpdate)>,
    /// Released marks → the PMDs that must pass a quiescent point before
    /// the mark may be handed out again.
    must_pass: HashMap<Mark, BTreeSet<PmdId>>,
    /// The registry's mark → key map after the previous operation.
    owners: HashMap<Mark, OffloadKey>,
    actions_version: u32,
}

impl World {
    fn new(seed: u64, shards: u32) -> World {
        let mut engines: Vec<OffloadEngine> = (0..shards)
            .map(|shard| {
                let config = EngineConfig {
                    max_marks: MAX_MARKS,
                    min_quarantine: Duration::from_millis(2),
                    latency_window: 64,
                    shard,
                    shards,
                };
                OffloadEngine::new(config).expect("valid engine config")
            })
            .collect();
        let now = Instant::now();
        let mut pmds = Vec::new();
        for i in 0..N_PMDS {
            let id = PmdId(i as u32);
            for engine in &mut engines {
                engine.add_pmd(id);
            }
            pmds.push(Pmd {
                id,
                alive: true,
                cache: FlowCache::new(1),
                table: MarkTable::new(),
                inbox: Vec::new(),
            });
        }
        let mut w = World {
            engines,
            now,
            seed,
            pmds,
            devices: BTreeMap::new(),
            out: Vec::new(),
            must_pass: HashMap::new(),
            owners: HashMap::new(),
            actions_version: 0,
        };
        w.add_port(1);
        w.add_port(2);
        w
    }

    fn add_port(&mut self, port: PortId) {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(port.into());
        let dev = RandomDevice::new(self.seed, 8);
        let shared: Arc<dyn FlowDevice> = dev.clone();
        let now = self.now;
        let (engine, out) = self.shard(port);
        engine
            .add_port(port, shared, 2, now, out)
            .expect("device marks cover the pool");
        self.devices.insert(port, dev);
    }

    fn install(&mut self, pmd: usize, flow: usize) -> PutRequest {
        let port = port_of(flow);
        let m = flow_match(port, flow % FLOWS_PER_PORT);
        let p = &mut self.pmds[pmd];
        let mf = Megaflow::new(&m.value, &m.mask, vec![DpAction::Output(2)], vec![]);
        let ufid = mf.ufid;
        let handle = p
            .cache
            .install(mf)
            .expect("distinct matches: no ufid collision");
        PutRequest {
            pmd: p.id,
            port,
            ufid,
            r#match: m,
            handle,
            enqueued: self.now,
        }
    }

    /// The engine (shard) that owns `port`, and the PMDs' outbox.
    fn shard(&mut self, port: PortId) -> (&mut OffloadEngine, &mut Vec<(PmdId, PmdUpdate)>) {
        let i = shard_of(port, self.engines.len());
        (&mut self.engines[i], &mut self.out)
    }

    /// Routes a PMD's request to its port's shard.
    fn handle(&mut self, req: OffloadRequest) {
        let now = self.now;
        let (engine, out) = self.shard(req.port());
        engine.handle(req, now, out);
    }

    /// Every shard's megaflows.
    fn flows(&self) -> impl Iterator<Item = (OffloadKey, &OffloadState)> + '_ {
        self.engines.iter().flat_map(|e| e.flows())
    }

    fn ufid(flow: usize) -> Ufid {
        Ufid::of(&flow_match(port_of(flow), flow % FLOWS_PER_PORT))
    }

    fn apply(&mut self, op: Op) {
        let now = self.now;
        match op {
            Op::Put { pmd, flow } => {
                if self.pmds[pmd].alive {
                    let put = self.install(pmd, flow);
                    self.handle(OffloadRequest::Put(put));
                }
            }
            Op::ModifyActions { pmd, flow } => {
                let ufid = World::ufid(flow);
                let found = self.pmds[pmd].cache.find(&ufid);
                if let (true, Some(h)) = (self.pmds[pmd].alive, found) {
                    self.actions_version += 1;
                    let actions = vec![DpAction::Output(self.actions_version)];
                    if let Some(mf) = self.pmds[pmd].cache.get_mut(h) {
                        mf.set_actions(Arc::from(actions));
                    }
                    // Same match: install finds the same copy.
                    let put = self.install(pmd, flow);
                    let req = OffloadRequest::Modify {
                        old: ufid,
                        new: put,
                    };
                    self.handle(req);
                }
            }
            Op::ModifyMatch { pmd, flow, to } => {
                let old = World::ufid(flow);
                let found = self.pmds[pmd].cache.find(&old);
                if let (true, Some(h)) = (self.pmds[pmd].alive, found) {
                    self.pmds[pmd].cache.remove(h);
                    let to_flow = flow - flow % FLOWS_PER_PORT + to;
                    let put = self.install(pmd, to_flow);
                    let req = OffloadRequest::Modify { old, new: put };
                    self.handle(req);
                }
            }
            Op::Delete { pmd, flow } => {
                let ufid = World::ufid(flow);
                let p = &mut self.pmds[pmd];
                if p.alive {
                    if let Some(h) = p.cache.find(&ufid) {
                        p.cache.remove(h);
                    }
                    let req = OffloadRequest::Delete {
                        pmd: p.id,
                        port: port_of(flow),
                        ufid,
                    };
                    self.handle(req);
                }
            }
            Op::Process { budget } => {
                // One shard works at a time (threads progress independently).
                let i = budget % self.engines.len();
                self.engines[i].process(now, budget, &mut self.out);
            }
            Op::Quiesce { pmd } => {
                self.route();
                // Every shard's epoch read before the inbox is drained.
                let epochs: Vec<_> = self.engines.iter().map(|e| e.epoch()).collect();
                let p = &mut self.pmds[pmd];
                if p.alive {
                    for u in p.inbox.drain(..) {
                        p.table.apply(u);
                    }
                    for (engine, epoch) in self.engines.iter_mut().zip(epochs) {
                        engine.pmd_quiescent(p.id, epoch);
                    }
                    for waiting in self.must_pass.values_mut() {
                        waiting.remove(&p.id);
                    }
                }
            }
            Op::RemovePort { port } => {
                let (engine, out) = self.shard(port);
                engine.remove_port(port, now, out);
                if let Some(dev) = self.devices.remove(&port) {
                    assert!(
                        dev.rules().is_empty(),
                        "port {port} removed but its device still has rules {:?}",
                        dev.rules()
                    );
                }
                for (key, state) in self.flows() {
                    if key.port == port {
                        assert_eq!(state, &OffloadState::Software, "{key:?} after port removal");
                    }
                }
                assert!(
                    self.engines
                        .iter()
                        .all(|e| e.marks().iter().all(|(k, _)| k.port != port)),
                    "port {port} removed but it still holds marks"
                );
            }
            Op::AddPort { port } => {
                if !self.devices.contains_key(&port) {
                    self.add_port(port);
                }
            }
            Op::Reset { port } => {
                if let Some(dev) = self.devices.get(&port) {
                    dev.st().rules.clear();
                    let (engine, out) = self.shard(port);
                    engine.device_reset(port, now, out);
                }
            }
            Op::FailNextCreate { port, kind } => {
                if let Some(dev) = self.devices.get(&port) {
                    dev.st().fail_next_create = Some(kind.error());
                }
            }
            Op::SetCapacity { port, capacity } => {
                if let Some(dev) = self.devices.get(&port) {
                    dev.st().capacity = capacity;
                }
            }
            Op::RemovePmd { pmd } => {
                self.route();
                let p = &mut self.pmds[pmd];
                if p.alive {
                    p.alive = false;
                    p.cache.clear();
                    p.table = MarkTable::new();
                    p.inbox.clear();
                    let id = p.id;
                    for engine in &mut self.engines {
                        engine.remove_pmd(id, now, &mut self.out);
                    }
                    for waiting in self.must_pass.values_mut() {
                        waiting.remove(&id);
                    }
                }
            }
            Op::AddPmd { pmd } => {
                let p = &mut self.pmds[pmd];
                if !p.alive {
                    p.alive = true;
                    for engine in &mut self.engines {
                        engine.add_pmd(p.id);
                    }
                }
            }
            Op::Tick { ms } => self.now += Duration::from_millis(ms),
        }
        self.route();
    }

    /// Moves the engine's updates into the PMDs' inboxes (their channels).
    fn route(&mut self) {
        for (pmd, u) in self.out.drain(..) {
            let p = &mut self.pmds[pmd.0 as usize];
            assert!(p.alive, "update {u:?} sent to removed {pmd}");
            p.inbox.push(u);
        }
    }

    fn check(&mut self) {
        let live: BTreeSet<PmdId> = self.pmds.iter().filter(|p| p.alive).map(|p| p.id).collect();

        // Across shards: no mark held by two shards (nor by two keys).
        let mut owners: HashMap<Mark, OffloadKey> = HashMap::new();
        for (shard, engine) in self.engines.iter().enumerate() {
            for (k, m) in engine.marks().iter() {
                if let Some(other) = owners.insert(m, k) {
                    panic!("{m:?} held by {other:?} and by {k:?} (shard {shard})");
                }
            }
            for (key, _) in engine.flows() {
                assert_eq!(
                    shard_of(key.port, self.engines.len()),
                    shard,
                    "{key:?} in the wrong shard"
                );
            }
        }

        // Marks handed out (again) only after their quarantine.
        for (mark, key) in &self.owners {
            if owners.get(mark) != Some(key) {
                self.must_pass.insert(*mark, live.clone());
            }
        }
        for (mark, key) in &owners {
            match self.owners.get(mark) {
                Some(prev) if prev == key => {}
                Some(prev) => assert!(
                    live.is_empty(),
                    "{mark:?} went from {prev:?} to {key:?} within one operation"
                ),
                None => {
                    let waiting = self.must_pass.remove(mark).unwrap_or_default();
                    assert!(
                        waiting.is_empty(),
                        "{mark:?} handed to {key:?} before {waiting:?} passed a quiescent point"
                    );
                }
            }
        }
        self.owners = owners;

        for shard in 0..self.engines.len() {
            self.check_shard(shard);
        }
        self.check_pmds();
    }

    /// The engine of the shard that owns `mark` (shards deal marks
    /// round-robin).
    fn mark_shard(&self, mark: Mark) -> &OffloadEngine {
        &self.engines[(mark.get() as usize - 1) % self.engines.len()]
    }

    /// One shard's invariants: its registry, its states, its devices.
    fn check_shard(&self, shard: usize) {
        let engine = &self.engines[shard];
        let registry = engine.marks();
        // Marks in use == pairs with a rule on the NIC; both maps agree.
        let mut holding = 0;
        for (key, state) in engine.flows() {
            if let Some(mark) = state.mark() {
                holding += 1;
                assert_eq!(registry.owner(mark), Some(key), "{mark:?}");
                assert_eq!(registry.pool().status(mark), MarkStatus::InUse);
            }
            match state {
                OffloadState::Rejected { .. } | OffloadState::Failed { .. } => {
                    let reason = state.reason().unwrap_or_default();
                    assert!(!reason.is_empty(), "{key:?} in {state:?} without a reason");
                }
                OffloadState::Software => assert!(
                    !self.devices.contains_key(&key.port),
                    "{key:?} in software although its port has a flow device"
                ),
                _ => {}
            }
        }
        assert_eq!(registry.in_use(), holding, "marks in use");
        // Every mark the registry gives an owner is the one that owner's
        // entry holds: with the count, one mark per key and no key with a
        // mark it does not hold.
        assert_eq!(registry.iter().count(), holding, "registry owners");
        for (key, mark) in registry.iter() {
            assert_eq!(
                engine.state(key.port, key.ufid).and_then(|s| s.mark()),
                Some(mark),
                "{key:?} owns {mark:?} in the registry"
            );
        }
        let c = engine.state_counts();
        assert_eq!(c.total(), engine.len(), "state counts {c:?}");
        assert_eq!(registry.in_use(), c.offloaded + c.removing);

        // The devices hold exactly the rules the engine knows, with their marks.
        for (port, dev) in &self.devices {
            if shard_of(*port, self.engines.len()) != shard {
                continue;
            }
            let expected: BTreeMap<u64, u32> = engine
                .flows()
                .filter(|(k, _)| k.port == *port)
                .filter_map(|(_, s)| Some((s.rule()?.0, s.mark()?.get())))
                .collect();
            assert_eq!(dev.rules(), expected, "rules on port {port}");
        }
    }

    /// The PMDs' copies and MarkTables against every shard.
    fn check_pmds(&self) {
        // Sharers == the PMDs' installed copies.
        let mut copies = 0;
        for p in self.pmds.iter().filter(|p| p.alive) {
            for (h, mf) in p.cache.iter() {
                copies += 1;
                let port = mf.r#match.value.get(Field::InPort) as PortId;
                let refs = self.engines[shard_of(port, self.engines.len())].sharers(port, mf.ufid);
                assert_eq!(
                    refs.and_then(|r| r.get(p.id)),
                    Some(h),
                    "{} copy of {:?} unknown to the engine",
                    p.id,
                    mf.ufid
                );
            }
        }
        let mut refs_total = 0;
        for (key, state) in self.flows() {
            let refs = self.engines[shard_of(key.port, self.engines.len())]
                .sharers(key.port, key.ufid)
                .map(|r| r.len())
                .unwrap_or(0);
            refs_total += refs;
            if refs == 0 {
                assert!(
                    matches!(state, OffloadState::Removing { .. }),
                    "{key:?} in {state:?} has no PMD copy"
                );
            }
        }
        assert_eq!(refs_total, copies, "engine sharers vs PMD copies");

        // Every PMD table entry (applied updates only: what the fast path
        // sees) leads to the mark's own megaflow, a dead handle, or a
        // quarantined mark.
        for p in self.pmds.iter().filter(|p| p.alive) {
            for (mark, h) in p.table.iter() {
                let registry = self.mark_shard(mark).marks();
                let status = registry.pool().status(mark);
                assert_ne!(status, MarkStatus::Free, "{} maps free {mark:?}", p.id);
                if let (Some(owner), Some(mf)) = (registry.owner(mark), p.cache.get(h)) {
                    assert!(
                        mf.ufid == owner.ufid,
                        "{} maps {mark:?} to {:?} but the mark belongs to {owner:?}",
                        p.id,
                        mf.ufid
                    );
                }
            }
        }
    }
}

fn run(seed: u64, ops: &[Op], shards: u32) {
    let mut w = World::new(seed, shards);
    w.check();
    for (i, op) in ops.iter().enumerate() {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            w.apply(*op);
            w.check();
        }));
        if let Err(e) = r {
            eprintln!(
                "seed {seed:#x}, {shards} shard(s): invariant broken at operation {i}: {op:?}"
            );
            std::panic::resume_unwind(e);
        }
    }
}

#[path = "../../tests/support/test_env.rs"]
mod test_env;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(test_env::cases(64)))]

    /// Shrinkable sequences of a few hundred operations.
    #[test]
    fn invariants_hold_after_every_operation(
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..300),
        shards in 1u32..=2,
    ) {
        run(seed, &ops, shards);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(test_env::cases(4)))]

    /// 10,000 operations per case from a seeded generator.
    #[test]
    fn invariants_hold_over_ten_thousand_operations(seed in any::<u64>()) {
        run(seed, &seeded_ops(seed, 10_000), 1);
        run(seed, &seeded_ops(seed, 10_000), 2);
    }
}

/// A fixed seed, so one long run is the same on every machine; it also
/// checks that the run exercised every state and the mark reuse path.
#[test]
fn fixed_seed_long_run_reaches_every_state() {
    long_run_reaches_every_state(1);
}

/// The same with the 2-shard model: both shards reach every state and
/// every mark of both shares is used and reused.
#[test]
fn fixed_seed_long_run_reaches_every_state_with_two_shards() {
    long_run_reaches_every_state(2);
}

fn long_run_reaches_every_state(shards: u32) {
    let seed = 0x5eed_f10a_d000_0001;
    let mut w = World::new(seed, shards);
    let mut seen = BTreeSet::new();
    let mut ever: BTreeSet<Mark> = BTreeSet::new();
    let mut reused = 0;
    for op in seeded_ops(seed, 10_000) {
        let before = w.owners.clone();
        w.apply(op);
        w.check();
        for (m, k) in &w.owners {
            if before.get(m) != Some(k) && !ever.insert(*m) {
                reused += 1;
            }
        }
        for (_, s) in w.flows() {
            seen.insert(s.name());
        }
    }
    let expected: BTreeSet<&str> = [
        "software",
        "pending",
        "offloaded",
        "rejected",
        "failed",
        "removing",
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, expected);
    assert_eq!(ever.len(), MAX_MARKS as usize, "every mark was used");
    assert!(reused > 100, "marks were reused only {reused} times");
    for (i, e) in w.engines.iter().enumerate() {
        assert!(e.counters().retries > 0, "shard {i} never retried");
    }
}
