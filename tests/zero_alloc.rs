//! The hot-path rule "no allocation per packet", checked with a counting
//! global allocator: after a warm-up, many bursts through the PMD on the
//! mark, simple-match, EMC and dpcls paths (single output, a header rewrite, and two
//! outputs, whose copy takes a pooled buffer) allocate nothing; upcalls
//! (translation, megaflow, install) allocate only when a table grows.
//!
//! The allocator is `stats_alloc`'s counting wrapper of the system
//! allocator (the test itself needs no unsafe code); the count covers only
//! the measured polls.

use fallback::actions::DpAction;
use fallback::key::{Field, FlowKey};
use fallback::megaflow::Megaflow;
use fallback::ofproto::syntax::parse_flow;
use fallback::ofproto::table::Pipeline;
use fallback::packet;
use fallback::port::{BufferSource, Burst, HeapPacket, PacketBuf, Port, PortStats};
use flowmark::datapath::{BridgeState, NoOffload, PmdCore};
use offload::marks::Mark;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations (and reallocations) made while `f` runs. The counter is
/// process-wide: this file holds one test, so no other test thread runs.
fn allocations_in(f: impl FnOnce()) -> usize {
    let region = Region::new(GLOBAL);
    f();
    let c = region.change();
    c.allocations + c.reallocations
}

/// Buffers in flight: enough for every flow, and a whole number of bursts.
const IN_FLIGHT: usize = 4096;

/// Port 1 receives what ports 2 and 3 transmit: a closed loop whose queue
/// never grows past its reserved capacity.
struct Loop {
    queue: Mutex<VecDeque<HeapPacket>>,
    /// What the sink transmitted: the buffers multi-output copies reuse
    /// (as the testbed's NIC sinks return theirs to its packet pool).
    spares: Arc<Mutex<Vec<HeapPacket>>>,
}

/// The PMD's source of buffers for copies: the sink's returns.
struct Spares(Arc<Mutex<Vec<HeapPacket>>>);

impl BufferSource<HeapPacket> for Spares {
    fn take(&mut self) -> Option<HeapPacket> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }
}

struct LoopPort {
    name: &'static str,
    shared: Arc<Loop>,
    rx: bool,
    /// Transmitted packets are dropped here (a sink) instead of looping.
    sink: bool,
}

impl Port for LoopPort {
    type Buf = HeapPacket;
    fn name(&self) -> &str {
        self.name
    }
    fn n_rxq(&self) -> u16 {
        1
    }
    fn n_txq(&self) -> u16 {
        1
    }
    fn rx_burst(&self, _q: u16, out: &mut Burst<HeapPacket>) -> usize {
        if !self.rx {
            return 0;
        }
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        while !out.is_full() {
            let Some(p) = q.pop_front() else { break };
            let _ = out.push(p);
            n += 1;
        }
        n
    }
    fn tx_burst(&self, _q: u16, pkts: &mut Burst<HeapPacket>) -> usize {
        let n = pkts.len();
        if self.sink {
            let mut spares = self.shared.spares.lock().unwrap_or_else(|p| p.into_inner());
            spares.extend(pkts.drain());
        } else {
            let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.extend(pkts.drain());
        }
        n
    }
    fn stats(&self) -> PortStats {
        PortStats::default()
    }
}

fn frame(i: u32) -> Vec<u8> {
    testbed::build::udp4(
        Ipv4Addr::from(0x0a00_0000 | i),
        Ipv4Addr::new(192, 168, 0, 1),
        1000 + (i % 50_000) as u16,
        2152,
        &[0u8; 64],
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Mark,
    /// One megaflow matching in_port, dl_type and nw_frag only.
    Simple,
    Emc,
    Dpcls,
}

/// The loop, and `ports` (OpenFlow number, name, receives, is a sink) on
/// it added to `core`.
fn loop_ports(
    core: &mut PmdCore<HeapPacket>,
    ports: &[(u32, &'static str, bool, bool)],
) -> Arc<Loop> {
    let shared = Arc::new(Loop {
        queue: Mutex::new(VecDeque::with_capacity(IN_FLIGHT * 2)),
        spares: Arc::new(Mutex::new(Vec::with_capacity(IN_FLIGHT))),
    });
    for &(ofport, name, rx, sink) in ports {
        core.add_port(
            ofport,
            Arc::new(LoopPort {
                name,
                shared: Arc::clone(&shared),
                rx,
                sink,
            }),
            false,
        );
    }
    shared
}

/// A PMD with `flows` megaflows (5-tuple masks) doing `actions`, and the
/// loop filled with their packets.
fn rig(path: Path, flows: u32, actions: &[DpAction]) -> (PmdCore<HeapPacket>, Arc<Loop>) {
    // EMC runs insert every dpcls hit; dpcls and mark runs keep the EMC out.
    let inv_prob = if path == Path::Emc { 1 } else { 0 };
    let mut core = PmdCore::new(
        0,
        Arc::new(Pipeline::new()),
        Arc::new(BridgeState::default()),
        Box::new(NoOffload),
        inv_prob,
    );
    let shared = loop_ports(
        &mut core,
        &[
            (1, "rx", true, false),
            (2, "tx", false, false),
            (3, "sink", false, true),
        ],
    );
    core.set_buffer_source(Box::new(Spares(Arc::clone(&shared.spares))));
    let mut mask = FlowKey::ZERO;
    let fields: &[Field] = if path == Path::Simple {
        &[Field::InPort, Field::DlType, Field::NwFrag]
    } else {
        &[
            Field::InPort,
            Field::DlType,
            Field::NwSrc,
            Field::NwDst,
            Field::NwProto,
            Field::NwFrag,
            Field::TpSrc,
            Field::TpDst,
        ]
    };
    for &f in fields {
        mask.set(f, f.full_mask());
    }
    let mut frames = Vec::new();
    for i in 0..flows {
        let f = frame(i);
        let mut key = FlowKey::ZERO;
        packet::parse(&f, 1, &mut key);
        frames.push(f);
        if path == Path::Simple && i > 0 {
            continue;
        }
        let mf = Megaflow::new(&key, &mask, actions.to_vec(), vec![]);
        let h = core.preinstall(1, mf).expect("distinct flows");
        if path == Path::Mark {
            core.publish_mark(Mark::new(i + 1).expect("mark in range"), h);
        }
    }
    {
        let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        for n in 0..IN_FLIGHT {
            let i = n % flows as usize;
            let mut p = HeapPacket::from_bytes(&frames[i]);
            if path == Path::Mark {
                p.set_mark(Some(i as u32 + 1));
            }
            q.push_back(p);
        }
    }
    (core, shared)
}

/// Warm-up (EMC filled, scratch space grown), then counts allocations over
/// many bursts; checks that every packet took `path`.
fn check(path: Path, flows: u32, actions: &[DpAction]) {
    let (mut core, _loop) = rig(path, flows, actions);
    let polls = 3 * IN_FLIGHT / 32;
    for _ in 0..polls {
        core.poll(0, 0, 0);
    }
    core.clear_counters();
    let mut packets = 0;
    let n = allocations_in(|| {
        for _ in 0..polls {
            packets += core.poll(0, 0, 0) as u64;
        }
    });
    let c = core.counters;
    assert!(
        packets > 0,
        "{path:?}, {flows} flows, {actions:?}: no packets: {c:?} {:?}",
        core.ports().iter().map(|p| p.stats).collect::<Vec<_>>()
    );
    let on_path = match path {
        Path::Mark => c.mark_hits == packets,
        Path::Simple => c.simple_hits == packets,
        // EMC collisions send a few packets on to dpcls.
        Path::Emc => c.emc_hits + c.dpcls_hits == packets && c.emc_hits * 100 >= packets * 95,
        Path::Dpcls => c.dpcls_hits == packets,
    };
    assert!(on_path, "{path:?}, {flows} flows: {c:?}");
    if actions
        .iter()
        .filter(|a| matches!(a, DpAction::Output(_)))
        .count()
        > 1
    {
        let copies = core.ports()[2].stats.tx;
        assert!(copies >= packets, "{path:?}: copies sent {copies}");
    }
    assert_eq!(
        n, 0,
        "{path:?}, {flows} flows, actions {actions:?}: {n} allocations over {packets} packets"
    );
}

const OUT: &[DpAction] = &[DpAction::Output(2)];

/// Two outputs: a copy to the sink, the packet itself back to the loop.
const TWO_OUTPUTS: &[DpAction] = &[DpAction::Output(3), DpAction::Output(2)];

/// A header rewrite (with its checksum update) that leaves the packet in
/// its megaflow, so that the loop keeps hitting it.
fn rewrite() -> Vec<DpAction> {
    vec![DpAction::Set(Field::NwTtl, 63), DpAction::Output(2)]
}

/// New flows, one upcall each: the translation's lists are reused, equal
/// action lists shared and short rule lists inline, so what allocates is
/// the flow cache's and revalidation's tables growing (a chunk, a
/// doubling), not each megaflow.
fn check_upcalls() {
    const FLOWS: u32 = 2048;
    let mut pipeline = Pipeline::new();
    for i in 0..2 * FLOWS {
        // Every third flow dropped: a drop's (empty) list is reused too.
        let src = Ipv4Addr::from(0x0a00_0000 | i);
        let out = if i % 3 == 0 { "drop" } else { "output:3" };
        let line = format!("priority=10,ip,nw_src={src},actions={out}");
        pipeline.add(parse_flow(&line).expect("a valid host rule"));
    }
    pipeline.add(parse_flow("priority=20,udp,tp_dst=53,actions=drop").expect("valid"));
    let mut core = PmdCore::new(
        0,
        Arc::new(pipeline),
        Arc::new(BridgeState::default()),
        Box::new(NoOffload),
        0,
    );
    core.set_upcall_budget(usize::MAX);
    let shared = loop_ports(
        &mut core,
        &[(1, "rx", true, false), (3, "sink", false, true)],
    );
    // The first half warms up (lists grown); the second half is counted.
    let mut counted = (0, 0);
    for half in 0..2 {
        {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            for i in half * FLOWS..(half + 1) * FLOWS {
                q.push_back(HeapPacket::from_bytes(&frame(i)));
            }
        }
        shared
            .spares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let upcalls = core.counters.upcalls;
        let n = allocations_in(|| while core.poll(0, 0, 0) > 0 {});
        counted = (n, core.counters.upcalls - upcalls);
    }
    let (n, upcalls) = counted;
    assert_eq!(upcalls, u64::from(FLOWS), "every packet a new flow");
    assert_eq!(core.megaflow_count(), 2 * FLOWS as usize);
    // Growth: a few dozen steps per thousands of megaflows.
    assert!(
        n * 32 <= FLOWS as usize,
        "{n} allocations over {upcalls} upcalls"
    );
}

#[test]
fn hot_paths_allocate_nothing() {
    check_upcalls();
    for path in [Path::Mark, Path::Simple, Path::Emc, Path::Dpcls] {
        for flows in [1, 1_000] {
            check(path, flows, OUT);
            check(path, flows, &rewrite());
            check(path, flows, TWO_OUTPUTS);
        }
    }
}
