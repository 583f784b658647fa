//! The PMD datapath end to end on in-memory ports: GTP rules, every path
//! (upcall, dpcls, EMC, mark), stale marks, the upcall budget, revalidation
//! and the accounting identities of DESIGN §6.

use fallback::cache::FlowHandle;
use fallback::key::{Field, FlowKey};
use fallback::megaflow::{Megaflow, Ufid};
use fallback::ofproto::syntax::parse_flow;
use fallback::ofproto::table::Pipeline;
use fallback::packet;
use fallback::port::{Burst, HeapPacket, PacketBuf, Port, PortStats};
use flowmark::datapath::{BridgeState, OffloadClient, PmdCore};
use offload::marks::{Mark, PmdUpdate};
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use testbed::build;

/// A port backed by queues: tests push rx packets and read what was sent.
struct QueuePort {
    name: String,
    rx: Mutex<VecDeque<HeapPacket>>,
    tx: Mutex<Vec<HeapPacket>>,
    tx_room: Mutex<usize>,
    /// Frames longer than this are passed over (left in the burst) while
    /// later ones are sent, as the DPDK port does with chained mbufs.
    tx_max_len: Mutex<usize>,
}

impl QueuePort {
    fn new(name: &str) -> Arc<Self> {
        Arc::new(QueuePort {
            name: name.into(),
            rx: Mutex::new(VecDeque::new()),
            tx: Mutex::new(Vec::new()),
            tx_room: Mutex::new(usize::MAX),
            tx_max_len: Mutex::new(usize::MAX),
        })
    }
    fn inject(&self, bytes: &[u8], mark: Option<u32>) {
        let mut p = HeapPacket::from_bytes(bytes);
        p.set_mark(mark);
        self.rx.lock().unwrap().push_back(p);
    }
    fn sent(&self) -> Vec<Vec<u8>> {
        self.tx
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.data().to_vec())
            .collect()
    }
}

impl Port for QueuePort {
    type Buf = HeapPacket;
    fn name(&self) -> &str {
        &self.name
    }
    fn n_rxq(&self) -> u16 {
        1
    }
    fn n_txq(&self) -> u16 {
        1
    }
    fn rx_burst(&self, _q: u16, out: &mut Burst<HeapPacket>) -> usize {
        let mut rx = self.rx.lock().unwrap();
        let mut n = 0;
        while !out.is_full() {
            let Some(p) = rx.pop_front() else { break };
            let _ = out.push(p);
            n += 1;
        }
        n
    }
    fn tx_burst(&self, _q: u16, pkts: &mut Burst<HeapPacket>) -> usize {
        let mut room = self.tx_room.lock().unwrap();
        let max_len = *self.tx_max_len.lock().unwrap();
        let mut tx = self.tx.lock().unwrap();
        let mut kept = Burst::new();
        let before = tx.len();
        for p in pkts.drain() {
            if tx.len() - before < *room && p.len() <= max_len {
                tx.push(p);
            } else {
                let _ = kept.push(p);
            }
        }
        let n = tx.len() - before;
        *room -= n;
        *pkts = kept;
        n
    }
    fn stats(&self) -> PortStats {
        PortStats::default()
    }
}

/// Records offload requests.
#[derive(Default, Clone)]
struct Recorder {
    puts: Arc<Mutex<Vec<(u32, Ufid, FlowHandle)>>>,
    deletes: Arc<Mutex<Vec<(u32, Ufid)>>>,
    full: Arc<Mutex<bool>>,
}

impl OffloadClient for Recorder {
    fn put(&self, _pmd: u32, port: u32, mf: &Megaflow, handle: FlowHandle) -> bool {
        if *self.full.lock().unwrap() {
            return false;
        }
        self.puts.lock().unwrap().push((port, mf.ufid, handle));
        true
    }
    fn delete(&self, _pmd: u32, port: u32, ufid: Ufid) -> bool {
        if *self.full.lock().unwrap() {
            return false;
        }
        self.deletes.lock().unwrap().push((port, ufid));
        true
    }
}

const GTP: &str = "
table=0,priority=1,in_port=2,dl_type=0x0800,nw_proto=17,nw_src=192.168.200.3,udp_src=2152,actions=flood
table=0,priority=1,dl_type=0x0800,nw_proto=17,nw_dst=192.168.200.3,udp_src=2152,actions=mod_nw_src:192.168.200.188,output=2
table=0,priority=1,dl_type=0x0800,nw_proto=17,nw_dst=192.168.200.3,udp_dst=2152,actions=mod_nw_src:192.168.200.188,output=2
table=0,priority=0,actions=drop
";

fn pipeline(text: &str) -> Arc<Pipeline> {
    let mut p = Pipeline::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        p.add(parse_flow(line).expect("valid flow"));
    }
    Arc::new(p)
}

struct Rig {
    pmd: PmdCore<HeapPacket>,
    ports: Vec<Arc<QueuePort>>,
    offload: Recorder,
}

fn rig(rules: &str) -> Rig {
    let offload = Recorder::default();
    let mut pmd = PmdCore::new(
        0,
        pipeline(rules),
        Arc::new(BridgeState::default()),
        Box::new(offload.clone()),
        1,
    );
    let ports: Vec<Arc<QueuePort>> = (1..=3).map(|i| QueuePort::new(&format!("p{i}"))).collect();
    for (i, p) in ports.iter().enumerate() {
        pmd.add_port(i as u32 + 1, p.clone(), i < 2);
    }
    Rig {
        pmd,
        ports,
        offload,
    }
}

impl Rig {
    fn poll_all(&mut self) {
        for i in 0..self.ports.len() {
            while self.pmd.poll(i, 0, 0) > 0 {}
        }
    }
    fn check_accounting(&self) {
        for p in self.pmd.ports() {
            p.stats
                .check()
                .unwrap_or_else(|e| panic!("port {}: {e}", p.ofport));
        }
    }
}

fn gtp_u(src: [u8; 4], sport: u16) -> Vec<u8> {
    // udp4 builds the whole Ethernet frame.
    build::udp4(
        Ipv4Addr::from(src),
        Ipv4Addr::new(192, 168, 200, 3),
        sport,
        2152,
        b"gtp-u payload",
    )
}

#[test]
fn every_path_forwards_and_rewrites() {
    let mut r = rig(GTP);
    // 10 flows (subscribers), 3 packets each, from port 1.
    for round in 0..3 {
        for i in 0..10u8 {
            r.ports[0].inject(&gtp_u([10, 1, 0, i], 4000), None);
        }
        r.poll_all();
        if round == 0 {
            assert_eq!(
                r.pmd.counters.upcalls, 1,
                "one megaflow covers all ten flows"
            );
        }
    }
    let sent = r.ports[1].sent();
    assert_eq!(sent.len(), 30);
    for bytes in &sent {
        let mut k = FlowKey::ZERO;
        let info = packet::parse(bytes, 0, &mut k);
        assert!(info.error.is_none(), "{:?}", info.error);
        assert_eq!(
            k.get(Field::NwSrc),
            u32::from(Ipv4Addr::new(192, 168, 200, 188)) as u128
        );
    }
    let c = r.pmd.counters;
    assert_eq!(c.packets, 30);
    assert_eq!(c.upcalls + c.dpcls_hits + c.emc_hits, 30);
    assert!(c.emc_hits > 0 && c.dpcls_hits > 0);
    assert_eq!(r.offload.puts.lock().unwrap().len(), 1);
    r.check_accounting();
}

/// Simple match: while every megaflow of a port matches only in_port,
/// dl_type, VLAN and fragment bits, its packets skip the key, the EMC and
/// dpcls; a port that gains another megaflow goes back to them; TCP flags
/// still reach the megaflow's stats.
#[test]
fn simple_match_serves_in_port_only_megaflows() {
    let mut r = rig("
table=0,priority=10,in_port=1,actions=output:2
table=0,priority=10,in_port=3,udp,tp_dst=53,actions=output:2
table=0,priority=1,in_port=3,actions=drop
");
    let udp = gtp_u([10, 1, 0, 1], 4000);
    let tcp = build::tcp4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 1, 2);
    let tagged = build::push_tag(&udp, 0x8100, 0x0005);
    for _ in 0..3 {
        for f in [&udp, &tcp, &tagged] {
            r.ports[0].inject(f, None);
        }
        r.poll_all();
    }
    let c = r.pmd.counters;
    // One megaflow for IPv4 (untagged and tagged alike: the rule ignores
    // the VLAN); the rest of the first burst finds it in dpcls (a port's
    // table is read once per burst), later bursts by simple match.
    assert_eq!(c.upcalls, 1, "{c:?}");
    assert_eq!(c.emc_hits + c.dpcls_hits, 2, "{c:?}");
    assert_eq!(c.simple_hits, 6, "{c:?}");
    assert_eq!(r.ports[1].sent().len(), 9);
    let flags: u16 = r
        .pmd
        .megaflows()
        .iter()
        .map(|m| m.megaflow.stats.tcp_flags)
        .fold(0, |a, b| a | b);
    let mut k = FlowKey::ZERO;
    assert_eq!(flags, packet::parse(&tcp, 1, &mut k).tcp_flags);

    // Port 3's megaflows match tp_dst: not simple, EMC and dpcls as before.
    for _ in 0..3 {
        r.ports[2].inject(&udp, None);
        r.ports[2].inject(&tcp, None);
    }
    r.poll_all();
    let c = r.pmd.counters;
    assert_eq!(c.simple_hits, 6, "{c:?}");
    assert!(c.emc_hits + c.dpcls_hits >= 6, "{c:?}");
    r.check_accounting();
}

#[test]
fn mark_path_and_stale_marks() {
    let mut r = rig(GTP);
    r.ports[0].inject(&gtp_u([10, 1, 0, 1], 4000), None);
    r.poll_all();
    let (port, _ufid, handle) = r.offload.puts.lock().unwrap()[0];
    assert_eq!(port, 1);
    let mark = Mark::new(7).expect("non-zero");
    r.pmd
        .apply_offload_update(PmdUpdate::Publish { mark, handle });
    for i in 0..5u8 {
        r.ports[0].inject(&gtp_u([10, 1, 0, i], 4000), Some(7));
    }
    r.poll_all();
    assert_eq!(r.pmd.counters.mark_hits, 5);
    // A mark nobody published, and one unpublished: software path, same result.
    r.ports[0].inject(&gtp_u([10, 1, 0, 9], 4000), Some(99));
    r.pmd.apply_offload_update(PmdUpdate::Unpublish { mark });
    r.ports[0].inject(&gtp_u([10, 1, 0, 9], 4000), Some(7));
    r.poll_all();
    assert_eq!(r.pmd.counters.mark_hits, 5);
    assert_eq!(r.pmd.counters.stale_marks, 2);
    assert_eq!(r.ports[1].sent().len(), 8);
    r.check_accounting();
}

/// A burst mixing the mark path and the software path keeps every
/// megaflow's packets in arrival order (the stages sort nothing).
#[test]
fn a_mixed_burst_keeps_arrival_order() {
    let mut r = rig(GTP);
    r.ports[0].inject(&gtp_u([10, 1, 0, 100], 4000), None);
    r.poll_all();
    let (_, _, handle) = r.offload.puts.lock().unwrap()[0];
    let mark = Mark::new(7).expect("non-zero");
    r.pmd
        .apply_offload_update(PmdUpdate::Publish { mark, handle });
    let before = r.ports[1].sent().len();
    for i in 0..20u8 {
        let marked = (i % 3 == 0).then_some(7);
        let frame = build::udp4(
            Ipv4Addr::new(10, 1, 0, 1),
            Ipv4Addr::new(192, 168, 200, 3),
            4000,
            2152,
            &[i; 8],
        );
        r.ports[0].inject(&frame, marked);
    }
    r.poll_all();
    // The payload (UDP data at 42) carries the arrival index.
    let order: Vec<u8> = r.ports[1].sent()[before..].iter().map(|b| b[42]).collect();
    assert_eq!(order, (0..20).collect::<Vec<u8>>());
    assert!(r.pmd.counters.mark_hits >= 7, "{:?}", r.pmd.counters);
    assert!(r.pmd.counters.emc_hits + r.pmd.counters.dpcls_hits >= 13);
    r.check_accounting();
}

/// A modifying action writes at the header offsets of its own packet: a
/// burst that mixes VLAN-tagged and untagged frames, marked (parsed when
/// their actions need it) and unmarked (parsed on receive), all to a
/// megaflow that rewrites `nw_src`, gives every frame its own rewrite.
#[test]
fn modifying_actions_use_each_packets_own_header_offsets() {
    let mut r = rig(GTP);
    let frame = |src: Ipv4Addr, i: u8, tagged: bool| {
        let f = build::udp4(src, Ipv4Addr::new(192, 168, 200, 3), 4000, 2152, &[i; 8]);
        if tagged {
            build::push_tag(&f, 0x8100, 5)
        } else {
            f
        }
    };
    let from = Ipv4Addr::new(10, 1, 0, 1);
    r.ports[0].inject(&frame(from, 0, false), None);
    r.ports[0].inject(&frame(from, 0, true), None);
    r.poll_all();
    // The pipeline reads no VLAN field: one megaflow covers both frames,
    // whose headers sit at different offsets.
    let puts = r.offload.puts.lock().unwrap().clone();
    assert_eq!(puts.len(), 1);
    let mark = Mark::new(7).expect("non-zero");
    r.pmd.apply_offload_update(PmdUpdate::Publish {
        mark,
        handle: puts[0].2,
    });
    let before = r.ports[1].sent().len();
    for i in 0..24u8 {
        let tagged = i % 2 == 1;
        let marked = (i % 3 != 0).then_some(7);
        r.ports[0].inject(&frame(from, i, tagged), marked);
    }
    r.poll_all();
    assert!(r.pmd.counters.mark_hits >= 16, "{:?}", r.pmd.counters);
    let sent = r.ports[1].sent()[before..].to_vec();
    assert_eq!(sent.len(), 24);
    let rewritten = Ipv4Addr::new(192, 168, 200, 188);
    let mut seen = [false; 24];
    for got in &sent {
        // The payload (the arrival index) follows the UDP header.
        let tagged = got[12..14] == [0x81, 0x00];
        let i = got[if tagged { 46 } else { 42 }];
        assert_eq!(got, &frame(rewritten, i, tagged), "packet {i}");
        seen[usize::from(i)] = true;
    }
    assert!(seen.iter().all(|&s| s));
    r.check_accounting();
}

/// The direct route (mark path and simple match to a megaflow whose only
/// action is one output): runs of one megaflow count exactly into its
/// stats (packets, bytes, TCP flags), several megaflows interleave, and a
/// marked packet after an unmarked one keeps its place behind it.
#[test]
fn the_direct_route_counts_runs_exactly_and_keeps_order() {
    let mut r = rig("
table=0,priority=10,in_port=1,tcp,actions=output:2
table=0,priority=10,in_port=1,udp,actions=output:3
");
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    // TCP with the given flags and the arrival index as payload (at 54).
    let tcp = |flags: u16, i: u8| {
        let h = build::Ipv4Header::new(a, b, 6);
        let l4 = build::tcp(h.pseudo(), 1, 2, flags, &[], &[i; 4]);
        build::ethernet(
            build::MAC_DST,
            build::MAC_SRC,
            0x0800,
            &build::ipv4(&h, &l4),
        )
    };
    // UDP with the arrival index as payload (at 42).
    let udp = |i: u8| build::udp4(a, b, 1, 2, &[i; 4]);
    r.ports[0].inject(&tcp(0x002, 0), None);
    r.ports[0].inject(&udp(1), None);
    r.poll_all();
    let puts = r.offload.puts.lock().unwrap().clone();
    assert_eq!(puts.len(), 2);
    for (n, (_, _, handle)) in puts.iter().enumerate() {
        let mark = Mark::new(5 + n as u32).expect("non-zero");
        r.pmd.apply_offload_update(PmdUpdate::Publish {
            mark,
            handle: *handle,
        });
    }
    // Marks 5 (TCP) and 6 (UDP) interleaved, then an unmarked TCP packet
    // and marked ones after it (those take the batch, behind it).
    let burst: [(Vec<u8>, Option<u32>); 9] = [
        (tcp(0x010, 2), Some(5)),
        (tcp(0x010, 3), Some(5)),
        (udp(4), Some(6)),
        (tcp(0x001, 5), Some(5)),
        (udp(6), Some(6)),
        (udp(7), Some(6)),
        (tcp(0x010, 8), None),
        (tcp(0x004, 9), Some(5)),
        (udp(10), Some(6)),
    ];
    for (f, m) in &burst {
        r.ports[0].inject(f, *m);
    }
    r.poll_all();
    let c = r.pmd.counters;
    assert_eq!(c.mark_hits, 8, "{c:?}");
    assert_eq!(c.stale_marks, 0, "{c:?}");
    let tcp_order: Vec<u8> = r.ports[1].sent().iter().map(|f| f[54]).collect();
    assert_eq!(tcp_order, [0, 2, 3, 5, 8, 9]);
    let udp_order: Vec<u8> = r.ports[2].sent().iter().map(|f| f[42]).collect();
    assert_eq!(udp_order, [1, 4, 6, 7, 10]);
    let mut by_proto = r.pmd.megaflows();
    by_proto.sort_by_key(|m| m.megaflow.r#match.value.nw_proto());
    let [t, u] = &by_proto[..] else {
        panic!("two megaflows: {}", by_proto.len())
    };
    let sum = |ix: &[usize]| ix.iter().map(|&i| burst[i].0.len() as u64).sum::<u64>();
    assert_eq!(t.megaflow.stats.packets, 6);
    assert_eq!(
        t.megaflow.stats.bytes,
        tcp(0x002, 0).len() as u64 + sum(&[0, 1, 3, 6, 7])
    );
    assert_eq!(t.megaflow.stats.tcp_flags, 0x002 | 0x010 | 0x001 | 0x004);
    assert_eq!(u.megaflow.stats.packets, 5);
    assert_eq!(
        u.megaflow.stats.bytes,
        udp(1).len() as u64 + sum(&[2, 4, 5, 8])
    );
    assert_eq!(u.megaflow.stats.tcp_flags, 0);
    assert_eq!(r.pmd.ports()[0].stats.forwarded, 11);
    r.check_accounting();
}

#[test]
fn a_mark_from_another_ingress_port_is_not_trusted() {
    let mut r = rig(GTP);
    r.ports[0].inject(&gtp_u([10, 1, 0, 1], 4000), None);
    r.poll_all();
    let handle = r.offload.puts.lock().unwrap()[0].2;
    let mark = Mark::new(3).expect("non-zero");
    r.pmd
        .apply_offload_update(PmdUpdate::Publish { mark, handle });
    // Same mark arriving on port 3: the megaflow is port 1's.
    r.ports[2].inject(&gtp_u([10, 1, 0, 1], 4000), Some(3));
    r.poll_all();
    assert_eq!(r.pmd.counters.mark_hits, 0);
    assert_eq!(r.pmd.counters.stale_marks, 1);
    r.check_accounting();
}

#[test]
fn drops_are_counted_with_reasons() {
    let mut r = rig(GTP);
    // Hits the priority-0 drop rule.
    let other = build::udp4(
        Ipv4Addr::new(1, 1, 1, 1),
        Ipv4Addr::new(2, 2, 2, 2),
        1,
        2,
        b"",
    );
    r.ports[0].inject(&other, None);
    r.ports[0].inject(&other, None);
    // Too short to be Ethernet.
    r.ports[0].inject(&[1, 2, 3], None);
    r.poll_all();
    let s = &r.pmd.ports()[0].stats;
    assert_eq!(s.rx, 3);
    assert_eq!(s.forwarded, 0);
    let json = serde_json::to_value(s).unwrap();
    assert_eq!(json["rx_dropped"]["drop_action"], 2);
    assert_eq!(json["rx_dropped"]["parse_error"], 1);
    r.check_accounting();
}

#[test]
fn upcall_budget_drops_and_counts() {
    let mut r = rig("priority=1,udp,actions=output:2");
    r.pmd.set_upcall_budget(4);
    // 32 packets in one burst: exact-match rule on udp → one megaflow, one upcall.
    for i in 0..32u8 {
        r.ports[0].inject(&gtp_u([10, 1, 0, i], 4000 + i as u16), None);
    }
    r.poll_all();
    assert_eq!(r.pmd.counters.upcalls, 1);
    assert_eq!(r.pmd.counters.lost, 0);
    // A rule on the exact source port: every packet needs its own megaflow.
    // Port 1 receives alone: nobody to starve, the whole burst upcalls.
    let rules = "priority=1,udp,tp_src=5000,actions=output:2\npriority=0,actions=output:3";
    let mut r = rig(rules);
    r.pmd.set_upcall_budget(4);
    for i in 0..32u16 {
        r.ports[0].inject(&gtp_u([10, 1, 0, 1], 4000 + i), None);
    }
    r.poll_all();
    assert_eq!(r.pmd.counters.lost, 0);
    assert_eq!(r.pmd.counters.upcalls, 32);
    // Ports 1 and 2 both receive: each gets the budget per burst (both
    // offload ports: their megaflows match the exact L4 port).
    let mut r = rig(rules);
    r.pmd.set_upcall_budget(4);
    let sweep = |r: &mut Rig, now_ms: u64| (0..3).for_each(|i| _ = r.pmd.poll(i, 0, now_ms));
    r.ports[1].inject(&gtp_u([10, 1, 0, 2], 3000), None);
    sweep(&mut r, 10);
    for i in 0..32u16 {
        r.ports[0].inject(&gtp_u([10, 1, 0, 1], 4000 + i), None);
        r.ports[1].inject(&gtp_u([10, 1, 0, 2], 4000 + i), None);
    }
    sweep(&mut r, 11);
    assert_eq!(r.pmd.counters.upcalls, 1 + 4 + 4, "{:?}", r.pmd.counters);
    assert_eq!(r.pmd.counters.lost, 28 + 28);
    // Port 2 has received nothing for 2 ms: port 1 alone again.
    for i in 0..32u16 {
        r.ports[0].inject(&gtp_u([10, 1, 0, 3], 6000 + i), None);
    }
    sweep(&mut r, 13);
    assert_eq!(
        r.pmd.counters.upcalls,
        1 + 4 + 4 + 32,
        "{:?}",
        r.pmd.counters
    );
    r.check_accounting();
}

#[test]
fn full_offload_queue_is_counted_and_reoffered() {
    let mut r = rig(GTP);
    *r.offload.full.lock().unwrap() = true;
    r.ports[0].inject(&gtp_u([10, 1, 0, 1], 4000), None);
    r.poll_all();
    assert_eq!(r.pmd.counters.offload_queue_full, 1);
    assert!(r.offload.puts.lock().unwrap().is_empty());
    *r.offload.full.lock().unwrap() = false;
    assert_eq!(r.pmd.reoffer(), 1);
    assert_eq!(r.offload.puts.lock().unwrap().len(), 1);
    assert_eq!(r.pmd.reoffer(), 0);
}

#[test]
fn refused_nic_rule_deletes_are_retried_a_bounded_number_per_iteration() {
    // 600 host rules, one megaflow each.
    let mut rules = String::from("priority=0,actions=drop\n");
    for i in 0..600u32 {
        rules += &format!(
            "priority=10,ip,nw_src=10.0.{}.{},actions=output:2\n",
            i >> 8,
            i & 255
        );
    }
    let mut r = rig(&rules);
    for i in 0..600u32 {
        r.ports[0].inject(&gtp_u([10, 0, (i >> 8) as u8, i as u8], 4000), None);
        if i % 32 == 31 {
            r.poll_all();
        }
    }
    r.poll_all();
    assert_eq!(r.pmd.megaflow_count(), 600);
    // The worker's queue refuses every delete: all wait, in order.
    *r.offload.full.lock().unwrap() = true;
    r.pmd.flush_megaflows();
    assert_eq!(r.pmd.pending_deletes(), 600);
    assert!(r.offload.deletes.lock().unwrap().is_empty());
    // Room again: one loop iteration retries a bounded number (a queue's
    // worth in one iteration cost milliseconds), the next ones the rest.
    *r.offload.full.lock().unwrap() = false;
    r.pmd.housekeeping();
    let first = r.offload.deletes.lock().unwrap().len();
    assert!(first > 0 && first < 600, "{first} retried in one iteration");
    assert_eq!(r.pmd.pending_deletes(), 600 - first);
    while r.pmd.pending_deletes() > 0 {
        r.pmd.housekeeping();
    }
    let deletes = r.offload.deletes.lock().unwrap().clone();
    assert_eq!(deletes.len(), 600);
    let distinct: std::collections::HashSet<_> = deletes.iter().map(|d| d.1).collect();
    assert_eq!(distinct.len(), 600, "each megaflow's NIC rule deleted once");
}

#[test]
fn revalidation_modifies_in_place_or_removes() {
    let mut r = rig(GTP);
    r.ports[0].inject(&gtp_u([10, 1, 0, 1], 4000), None);
    r.poll_all();
    let before = r.pmd.megaflows();
    assert_eq!(before.len(), 1);
    // Same match, new actions: same ufid, new actions, no NIC delete.
    let changed = GTP.replace("output=2", "output=3");
    r.pmd.set_pipeline(pipeline(&changed));
    let after = r.pmd.megaflows();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].ufid, before[0].ufid);
    assert_eq!(
        fallback::actions::action_strings(after[0].megaflow.actions()),
        ["mod_nw_src:192.168.200.188", "output:3"]
    );
    assert!(r.offload.deletes.lock().unwrap().is_empty());
    r.ports[0].inject(&gtp_u([10, 1, 0, 1], 4000), None);
    r.poll_all();
    assert_eq!(r.ports[2].sent().len(), 1);
    // A higher-priority rule on the source: the old mask no longer covers
    // the decision, so the megaflow goes (and its NIC rule with it).
    let narrower = format!("{changed}\npriority=5,udp,nw_src=10.1.0.1,actions=output:1\n");
    r.pmd.set_pipeline(pipeline(&narrower));
    assert_eq!(r.pmd.megaflow_count(), 0);
    assert_eq!(r.offload.deletes.lock().unwrap().len(), 1);
    // Rule counts survive the megaflow: 2 packets on the udp_dst rule.
    let stats = r.pmd.rule_stats();
    assert_eq!(stats.values().map(|(p, _)| p).sum::<u64>(), 2);
    r.check_accounting();
}

#[test]
fn tx_ring_full_is_counted() {
    let mut r = rig(GTP);
    *r.ports[1].tx_room.lock().unwrap() = 3;
    for i in 0..10u8 {
        r.ports[0].inject(&gtp_u([10, 1, 0, i], 4000), None);
    }
    r.poll_all();
    let s = &r.pmd.ports()[1].stats;
    assert_eq!(s.tx_attempted, 10);
    assert_eq!(s.tx, 3);
    r.check_accounting();
}

/// A port that passes over packets it cannot send and sends later ones
/// (the DPDK port with failed copies and chained mbufs) leaves the bytes
/// counted exact: those of the frames that went, not of the burst's first.
#[test]
fn tx_bytes_count_the_frames_sent_whatever_the_port_passed_over() {
    let mut r = rig(GTP);
    *r.ports[1].tx_max_len.lock().unwrap() = 80;
    let short = gtp_u([10, 1, 0, 1], 4000);
    let long = build::udp4(
        Ipv4Addr::new(10, 1, 0, 2),
        Ipv4Addr::new(192, 168, 200, 3),
        4000,
        2152,
        &[7u8; 100],
    );
    assert!(short.len() <= 80 && long.len() > 80);
    for i in 0..12 {
        let frame = if i % 3 == 0 { &long } else { &short };
        r.ports[0].inject(frame, None);
    }
    r.poll_all();
    let s = &r.pmd.ports()[1].stats;
    assert_eq!(s.tx_attempted, 12);
    assert_eq!(s.tx, 8);
    assert_eq!(s.tx_bytes, 8 * short.len() as u64);
    assert_eq!(r.ports[1].sent().len(), 8);
    r.check_accounting();
}

#[test]
fn the_sweep_expires_idle_megaflows_a_slice_at_a_time() {
    let mut r = rig(GTP);
    for i in 0..5u8 {
        r.ports[0].inject(&gtp_u([10, 1, 0, i], 4000 + u16::from(i)), None);
        r.pmd.poll(0, 0, u64::from(i) * 1000);
    }
    let n = r.pmd.megaflow_count();
    assert!(n >= 1);
    // At 4.5 s with 2 s of idle allowed, the megaflows used at 0..=2 s go.
    let mut slices = 1;
    while !r.pmd.sweep_slice(4_500, 2_000, false, 1) {
        slices += 1;
    }
    assert!(
        slices >= n,
        "one slot per slice: {slices} slices for {n} megaflows"
    );
    let left = r.pmd.megaflow_count();
    while !r.pmd.sweep_slice(60_000, 2_000, false, 2) {}
    assert_eq!(r.pmd.megaflow_count(), 0, "a later sweep expires the rest");
    assert!(left <= n);
    assert_eq!(
        r.offload.deletes.lock().unwrap().len(),
        n,
        "their NIC rules go too"
    );
    r.check_accounting();
}

#[test]
fn port_removal_removes_its_megaflows() {
    let mut r = rig(GTP);
    r.ports[0].inject(&gtp_u([10, 1, 0, 1], 4000), None);
    r.poll_all();
    assert_eq!(r.pmd.megaflow_count(), 1);
    // The megaflow outputs to port 2: removing port 2 removes it.
    r.pmd.del_port(2);
    assert_eq!(r.pmd.megaflow_count(), 0);
    assert_eq!(r.offload.deletes.lock().unwrap().len(), 1);
}

#[test]
fn controller_action_punts_the_frame_with_rule_identity() {
    let mut r = rig("table=0,priority=1,udp,actions=resubmit(,3)\ntable=3,cookie=0x2a,priority=1,udp,actions=controller:32,output:2");
    let (tx, rx) = crossbeam_channel::bounded(4);
    r.pmd.set_punt_channel(tx);
    let frame = gtp_u([10, 1, 0, 1], 4000);
    assert!(frame.len() > 32);
    for _ in 0..6 {
        r.ports[0].inject(&frame, None);
    }
    r.poll_all();
    let punts: Vec<_> = rx.try_iter().collect();
    assert_eq!(punts.len(), 4, "the channel holds 4; the rest are counted");
    assert_eq!(r.pmd.counters.controller_punts, 6);
    assert_eq!(r.pmd.counters.punts_dropped, 2);
    for p in &punts {
        assert_eq!(p.in_port, 1);
        assert_eq!(p.table, 3);
        assert_eq!(p.cookie, 0x2a);
        assert_eq!(p.frame, frame[..32]);
    }
    // The punt does not stop the output after it.
    assert_eq!(r.ports[1].sent().len(), 6);
    r.check_accounting();
}

/// An L2 frame from `src` to `dst` (MACs ending in the given byte).
fn l2(dst: u8, src: u8) -> Vec<u8> {
    build::ethernet(
        [0x02, 0, 0, 0, 0, dst],
        [0x02, 0, 0, 0, 0, src],
        0x88b5,
        &[0u8; 46],
    )
}

#[test]
fn traffic_keeps_mac_entries_alive_and_idle_ones_age_out() {
    // NORMAL with OVS's 300 s aging; the clock is the test's (poll's
    // now_ms and the aging sweep), advanced well past the aging time.
    let mut r = rig("actions=NORMAL");
    let bridge = Arc::clone(r.pmd.bridge());
    let (a, b) = (0x0a, 0x0b);
    r.ports[0].inject(&l2(b, a), None); // A on port 1: learned, flooded
    r.pmd.poll(0, 0, 0);
    r.ports[1].inject(&l2(a, b), None); // B on port 2: learned, unicast to A
    r.pmd.poll(1, 0, 0);
    assert_eq!(r.ports[0].sent().len(), 1, "B→A unicast to port 1");
    r.pmd.housekeeping(); // B learned: A→B becomes unicast in place
                          // A keeps sending through its megaflow's NIC mark: no upcall again.
    let (_, _, handle) = *r.offload.puts.lock().unwrap().first().expect("A→B offered");
    let mark = Mark::new(5).expect("non-zero");
    r.pmd
        .apply_offload_update(PmdUpdate::Publish { mark, handle });
    let upcalls = r.pmd.counters.upcalls;
    let mut t = 0;
    while t <= 400_000 {
        t += 5_000;
        r.ports[0].inject(&l2(b, a), Some(5));
        r.pmd.poll(0, 0, t);
        // The PMD loop's sweep, one slot per slice, refreshing.
        while !r.pmd.sweep_slice(t, u64::MAX, true, 1) {}
        bridge.age_macs(t);
        r.pmd.housekeeping();
    }
    assert_eq!(
        r.pmd.counters.upcalls, upcalls,
        "A's packets never upcalled"
    );
    assert!(r.pmd.counters.mark_hits >= 80);
    let macs = bridge.macs.read().unwrap();
    assert_eq!(macs.lookup(0x0200_0000_000a, 0), Some(1), "A kept alive");
    assert_eq!(macs.lookup(0x0200_0000_000b, 0), None, "B aged out");
    drop(macs);
    // B→A is still unicast to port 1 after 400 s.
    let to_a = r.ports[0].sent().len();
    let to_vm = r.ports[2].sent().len();
    r.ports[1].inject(&l2(a, b), None);
    r.pmd.poll(1, 0, t);
    assert_eq!(r.ports[0].sent().len(), to_a + 1);
    assert_eq!(r.ports[2].sent().len(), to_vm, "not flooded");
    r.check_accounting();
}

#[test]
fn without_traffic_a_mac_entry_ages_out_and_return_traffic_floods() {
    let mut r = rig("actions=NORMAL");
    let bridge = Arc::clone(r.pmd.bridge());
    let (a, b) = (0x0a, 0x0b);
    r.ports[0].inject(&l2(b, a), None);
    r.pmd.poll(0, 0, 0);
    // A stays silent past the aging time; refresh sweeps find no hits.
    for t in [100_000, 200_000, 300_001] {
        r.pmd.refresh_macs();
        bridge.age_macs(t);
        r.pmd.housekeeping();
    }
    assert_eq!(
        bridge.macs.read().unwrap().lookup(0x0200_0000_000a, 0),
        None
    );
    r.ports[1].inject(&l2(a, b), None);
    r.pmd.poll(1, 0, 300_002);
    assert_eq!(r.ports[0].sent().len(), 1, "flooded to port 1");
    assert_eq!(r.ports[2].sent().len(), 2, "and to port 3 (with A's flood)");
    r.check_accounting();
}

/// A flow mod that turns a megaflow's actions into NORMAL gives it a MAC to
/// learn; the packets it counted before were not switched by NORMAL, so the
/// refresh teaches nothing until one is.
#[test]
fn a_megaflow_that_learns_only_after_a_flow_mod_teaches_nothing_before_its_next_packet() {
    let m = "dl_src=02:00:00:00:00:0a,dl_dst=02:00:00:00:00:0b,vlan_tci=0/0x1fff";
    let mut r = rig(&format!("{m},actions=output:2"));
    let bridge = Arc::clone(r.pmd.bridge());
    r.ports[0].inject(&l2(0x0b, 0x0a), None);
    r.pmd.poll(0, 0, 10);
    assert_eq!(r.ports[1].sent().len(), 1);
    let before = r.pmd.megaflows();
    r.pmd.set_pipeline(pipeline(&format!("{m},actions=NORMAL")));
    let after = r.pmd.megaflows();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].ufid, before[0].ufid, "modified in place");
    while !r.pmd.sweep_slice(20, u64::MAX, true, 1) {}
    r.pmd.refresh_macs();
    let learned = || bridge.macs.read().unwrap().lookup(0x0200_0000_000a, 0);
    assert_eq!(learned(), None, "no packet went through NORMAL yet");
    r.ports[0].inject(&l2(0x0b, 0x0a), None);
    r.pmd.poll(0, 0, 30);
    assert_eq!(r.ports[1].sent().len(), 2, "B unknown: flooded");
    assert_eq!(r.ports[2].sent().len(), 1);
    while !r.pmd.sweep_slice(40, u64::MAX, true, 1) {}
    assert_eq!(learned(), Some(1));
    r.check_accounting();
}

#[test]
fn emc_insert_inv_prob_zero_never_uses_the_emc() {
    let offload = Recorder::default();
    let mut pmd = PmdCore::new(
        0,
        pipeline(GTP),
        Arc::new(BridgeState::default()),
        Box::new(offload),
        0,
    );
    let p1 = QueuePort::new("p1");
    let p2 = QueuePort::new("p2");
    pmd.add_port(1, p1.clone(), false);
    pmd.add_port(2, p2.clone(), false);
    for _ in 0..50 {
        p1.inject(&gtp_u([10, 1, 0, 1], 4000), None);
    }
    while pmd.poll(0, 0, 0) > 0 {}
    assert_eq!(p2.sent().len(), 50);
    assert_eq!(pmd.counters.emc_hits, 0);
    assert_eq!(pmd.counters.dpcls_hits, 49);
}

#[test]
fn reports_to_the_revalidator_go_a_loop_iteration_at_a_time_and_their_lists_come_back() {
    use flowmark::datapath::{FlowEvent, ReturnedEvents};
    let mut r = rig(GTP);
    let (tx, rx) = crossbeam_channel::unbounded();
    let returned = Arc::new(ReturnedEvents::default());
    r.pmd.set_revalidator(
        tx,
        Arc::new(fallback::revalidate::VerdictQueues::default()),
        Arc::clone(&returned),
    );
    // One burst of three new flows: one message holding three installs.
    for sport in 4000..4003 {
        r.ports[0].inject(&gtp_u([10, 1, 0, 1], sport), None);
    }
    r.poll_all();
    let batches: Vec<FlowEvent> = rx.try_iter().collect();
    assert_eq!(batches.len(), 1, "{batches:?}");
    let Some(FlowEvent::Batch(0, list)) = batches.into_iter().next() else {
        panic!("not a batch of PMD 0");
    };
    assert_eq!(list.len(), 3);
    assert!(list
        .iter()
        .all(|ev| matches!(ev, FlowEvent::Installed { pmd: 0, .. })));
    // Given back emptied, the list carries the PMD's next reports.
    let mut list = list;
    list.clear();
    let at = list.as_ptr();
    returned.push(list);
    r.ports[0].inject(&gtp_u([10, 1, 0, 1], 4003), None);
    r.poll_all();
    let next: Vec<FlowEvent> = rx.try_iter().collect();
    assert_eq!(next.len(), 1);
    match &next[0] {
        FlowEvent::Batch(0, list) => {
            assert_eq!(list.len(), 1);
            // The PMD sent the list it held, and now holds the one given
            // back: the one after this is that allocation.
            assert_ne!(list.as_ptr(), at);
        }
        other => panic!("{other:?}"),
    }
    r.ports[0].inject(&gtp_u([10, 1, 0, 1], 4004), None);
    r.poll_all();
    let third: Vec<FlowEvent> = rx.try_iter().collect();
    match &third[..] {
        [FlowEvent::Batch(0, list)] => assert_eq!(list.as_ptr(), at),
        other => panic!("{other:?}"),
    }
    assert!(returned.try_pop().ok().flatten().is_none());
}

/// PORT_MOD's config bits in the datapath, as Open vSwitch acts on them: a
/// port that does not receive drops what arrives but STP frames; one that
/// does not forward sends nothing; one that is down does neither. Every
/// packet is counted with its reason (DESIGN §6), and clearing the bits
/// restores both directions.
#[test]
fn port_config_bits_stop_receiving_and_forwarding_and_count_it() {
    use flowmark::datapath::port_config::{ALL, NO_FWD, NO_RECV, PORT_DOWN, STP_DST};
    let mut r = rig("table=0,priority=1,in_port=1,actions=output:2\n");
    let bridge = Arc::clone(r.pmd.bridge());
    let frame = gtp_u([10, 1, 0, 1], 4000);
    let mut stp = frame.clone();
    stp[..6].copy_from_slice(&STP_DST);
    let stats = |r: &Rig, i: usize| serde_json::to_value(r.pmd.ports()[i].stats).unwrap();

    assert_eq!(
        bridge.set_port_config(1, NO_RECV | 0x10, NO_RECV | 0x10),
        (0, NO_RECV)
    );
    r.ports[0].inject(&frame, None);
    r.ports[0].inject(&stp, None);
    r.poll_all();
    let (p1, p2) = (stats(&r, 0), stats(&r, 1));
    assert_eq!(
        (p1["rx"].as_u64(), p1["forwarded"].as_u64()),
        (Some(2), Some(1)),
        "{p1}"
    );
    assert_eq!(p1["rx_dropped"]["no_recv"], 1, "{p1}");
    assert_eq!(p2["tx"], 1, "{p2}");

    bridge.set_port_config(1, 0, ALL);
    bridge.set_port_config(2, NO_FWD, NO_FWD);
    r.ports[0].inject(&frame, None);
    r.ports[0].inject(&frame, None);
    r.poll_all();
    let (p1, p2) = (stats(&r, 0), stats(&r, 1));
    assert_eq!(p1["forwarded"], 3, "{p1}");
    assert_eq!(
        (p2["tx_attempted"].as_u64(), p2["tx"].as_u64()),
        (Some(3), Some(1)),
        "{p2}"
    );
    assert_eq!(p2["tx_dropped"]["no_fwd"], 2, "{p2}");

    bridge.set_port_config(2, 0, ALL);
    bridge.set_port_config(1, PORT_DOWN, PORT_DOWN);
    r.ports[0].inject(&frame, None);
    r.ports[0].inject(&stp, None);
    r.poll_all();
    let p1 = stats(&r, 0);
    assert_eq!(p1["rx_dropped"]["port_down"], 2, "{p1}");

    bridge.set_port_config(1, 0, ALL);
    r.ports[0].inject(&frame, None);
    r.poll_all();
    let (p1, p2) = (stats(&r, 0), stats(&r, 1));
    assert_eq!(
        (p1["rx"].as_u64(), p1["forwarded"].as_u64()),
        (Some(7), Some(4)),
        "{p1}"
    );
    assert_eq!(p2["tx"], 2, "{p2}");
    r.check_accounting();
}
