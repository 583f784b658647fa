//! The real mbuf mark path with no hardware: `testbed-nic-dpdk` (the
//! emulated NIC writing mbufs with `RTE_MBUF_F_RX_FDIR_ID` + `hash.fdir.hi`
//! into an rte_ring read by `rte_eth_rx_burst` on a `net_ring` ethdev).
//! After warm-up at least 95% of packets take the mark path; then a rule is
//! deleted while marked packets wait in the ring: the stale marks fall back
//! to software and nothing is misforwarded (every packet leaves where the
//! rules before or after the deletion send it, never elsewhere, none lost).
//! (Once A's rule is gone, A packets consult the nw_src rule, whose field
//! A's megaflow did not match on: the megaflow cannot be modified in place,
//! so it and its mark go, and the marked packets in the ring are stale.)
//! Its own process (scripts/test-dpdk): the EAL initialises once.
#![cfg(feature = "dpdk")]

mod dpdk_common;

use dpdk_common::*;
use flowmark::dpdk::{DpdkPortFactory, DpdkPortSpec, Eal, Mbuf, Mempool};
use flowmark::switch::{Switch, SwitchConfig};
use offload::device::Profile;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testbed::pcap;
use testbed::Inject;

const RULES: &str = "\
priority=10,in_port=1,udp,tp_dst=1000,actions=output:2
priority=10,in_port=1,udp,tp_dst=2000,actions=output:3
priority=5,in_port=1,udp,nw_src=10.0.0.1,actions=output:4
priority=0,actions=drop
";

fn frame(src_port: u16, dst_port: u16, seq: u32) -> Vec<u8> {
    udp_frame(128, src_port, dst_port, seq)
}

fn pmd_totals(sw: &Switch<Mbuf>) -> (u64, u64, u64) {
    sw.pmd_snapshots()
        .expect("pmd snapshots")
        .iter()
        .fold((0, 0, 0), |(p, m, s), x| {
            (
                p + x.counters.packets,
                m + x.counters.mark_hits,
                s + x.counters.stale_marks,
            )
        })
}

fn wait_offloaded(sw: &Switch<Mbuf>, n: usize) {
    let start = Instant::now();
    loop {
        let d = sw.offload_dump().expect("offload dump");
        if d.iter().filter(|f| f.state == "offloaded").count() >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not offloaded: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pcap_out(id: u32, dir: &Path, empty: &Path) -> DpdkPortSpec {
    DpdkPortSpec::Dpdk {
        name: format!("out{id}"),
        devargs: format!(
            "net_pcap{id},rx_pcap={},tx_pcap={}",
            empty.display(),
            dir.join(format!("out{id}.pcap")).display()
        ),
        rxqs: 1,
    }
}

#[test]
fn mark_path_and_stale_marks() {
    let prefix = prefix("mark");
    let _guard = RuntimeDirGuard(prefix.clone());
    let dir = scratch("mark");
    let empty = dir.join("empty.pcap");
    pcap::write_file(&empty, Duration::ZERO, std::iter::empty::<&[u8]>()).expect("empty pcap");

    let eal = Eal::init(&eal_args(&prefix)).expect("EAL init");
    let pool = Arc::new(Mempool::create("mark_test", 16384).expect("mempool"));
    let free_at_start = pool.free_count();
    let mut factory = DpdkPortFactory::new(Arc::clone(&pool));
    let mut sw: Switch<Mbuf> = Switch::start(SwitchConfig {
        pmd_cores: vec![None],
        max_idle_ms: 60_000,
        ..SwitchConfig::default()
    })
    .expect("switch");
    load_rules(&mut sw, RULES);
    let nic = factory
        .make(&DpdkPortSpec::TestbedNicDpdk {
            name: "nic0".into(),
            rxqs: 1,
            profile: Profile::Generic,
        })
        .expect("testbed-nic-dpdk port");
    assert_eq!(nic.eth.driver(), "net_ring");
    let outs: Vec<_> = (2..=4)
        .map(|id| {
            factory
                .make(&pcap_out(id, &dir, &empty))
                .expect("pcap output")
        })
        .collect();
    sw.add_port(
        "nic0",
        "testbed-nic-dpdk",
        Some(1),
        nic.port.clone(),
        nic.flow_device.clone(),
    )
    .expect("add nic0");
    for (i, o) in outs.iter().enumerate() {
        let id = i as u32 + 2;
        sw.add_port(
            &format!("out{id}"),
            "dpdk",
            Some(id),
            o.port.clone(),
            o.flow_device.clone(),
        )
        .expect("add output");
    }
    let wire = nic.nic.as_ref().expect("nic").wire().clone();
    let mut seq = 0u32;
    let mut sent_a = 0u64;
    let mut sent_b = 0u64;
    let mut send = |n: u64, a_share: u64, sent_a: &mut u64, sent_b: &mut u64| {
        for i in 0..n {
            seq += 1;
            let a = i % 100 < a_share;
            let f = frame(4000 + (i % 64) as u16, if a { 1000 } else { 2000 }, seq);
            wire.inject(&f).expect("inject");
            if a {
                *sent_a += 1;
            } else {
                *sent_b += 1;
            }
        }
        wire.sync().expect("sync");
    };
    let all_in = |sw: &Switch<Mbuf>, total: u64| {
        wait_stats(sw, Duration::from_secs(60), "packets through", |s| {
            stats(s, "nic0").rx == total
        })
    };

    // Warm-up: both megaflows offloaded to the emulated NIC.
    send(1000, 50, &mut sent_a, &mut sent_b);
    all_in(&sw, sent_a + sent_b);
    wait_offloaded(&sw, 2);
    // Measured: packets after warm-up.
    let (p0, m0, _) = pmd_totals(&sw);
    send(20_000, 50, &mut sent_a, &mut sent_b);
    all_in(&sw, sent_a + sent_b);
    let (p1, m1, stale1) = pmd_totals(&sw);
    let share = (m1 - m0) as f64 / (p1 - p0) as f64;
    println!(
        "mark path after warm-up: {} of {} packets ({:.1}%); NIC marked {}",
        m1 - m0,
        p1 - p0,
        share * 100.0,
        nic.nic
            .as_ref()
            .expect("nic")
            .dma_stats()
            .marked
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(share >= 0.95, "mark path share {share}");

    // Stale marks: fill the ring with marked A packets, delete A's rule
    // while they wait. A packets now go to port 4 (the nw_src rule).
    let before_a = sent_a;
    // With nic0's ethdev down the PMD receives nothing: the A packets wait
    // in the ring, marked by the NIC, while A's rule is deleted; once the
    // port is up again the PMD meets marks whose megaflow is gone. (Waiting
    // for the ring to fill while the PMD polled raced the deletion: the PMD
    // could drain the ring before the deletion reached it.)
    const HELD: u32 = 512;
    nic.eth.set_down(true);
    for i in 0..HELD {
        let f = frame(4000 + (i % 64) as u16, 1000, 1_000_000 + i);
        wire.inject(&f).expect("inject");
    }
    wire.sync().expect("sync");
    let pending = nic.nic.as_ref().expect("nic").rx_pending();
    let sel = fallback::ofproto::syntax::parse_match("in_port=1,udp,tp_dst=1000").expect("match");
    let deleted = sw.flow_del(Some(0), &sel, Some(10));
    assert_eq!(deleted.len(), 1);
    // The deletion in the datapath (revalidated, verdicts applied) before
    // the PMD sees the held packets.
    assert!(sw.settle(), "the deletion did not settle");
    nic.eth.set_down(false);
    sent_a += u64::from(HELD);
    // After the deletion: B still marked, A in software to port 4.
    send(2000, 50, &mut sent_a, &mut sent_b);
    let s = all_in(&sw, sent_a + sent_b);
    let (_, _, stale2) = pmd_totals(&sw);
    println!(
        "stale marks seen: {} (ring held {pending} packets at the deletion)",
        stale2 - stale1
    );
    let n = stats(&s, "nic0");
    n.check().expect("nic0 books");
    assert_eq!(n.forwarded, sent_a + sent_b, "nothing dropped: {n:?}");

    sw.shutdown();
    drop(sw);
    drop(nic);
    drop(outs);
    drop(factory);
    let out2 = pcap::read_file(dir.join("out2.pcap")).expect("out2");
    let out3 = pcap::read_file(dir.join("out3.pcap")).expect("out3");
    let out4 = pcap::read_file(dir.join("out4.pcap")).expect("out4");
    println!(
        "port 2 (A before): {}, port 3 (B): {}, port 4 (A after): {}",
        out2.len(),
        out3.len(),
        out4.len()
    );
    assert!(
        out2.iter().all(|f| dst_port_of(f) == 1000),
        "only A on port 2"
    );
    assert!(
        out3.iter().all(|f| dst_port_of(f) == 2000),
        "only B on port 3"
    );
    assert!(
        out4.iter().all(|f| dst_port_of(f) == 1000),
        "only A on port 4"
    );
    assert_eq!(out3.len() as u64, sent_b);
    assert_eq!(
        (out2.len() + out4.len()) as u64,
        sent_a,
        "every A packet once"
    );
    assert!(
        out2.len() as u64 >= before_a,
        "A before the deletion went to port 2"
    );
    assert!(!out4.is_empty());
    // Every held packet met a stale mark (but for one burst a PMD may have
    // been inside when the port went down).
    assert!(
        stale2 - stale1 + 32 >= u64::from(HELD),
        "the deletion left {} stale marks of {HELD} held",
        stale2 - stale1
    );
    // A packets sent after the deletion had finished (sequence numbers
    // 21001.. of the last `send`) never reach port 2.
    let late = out2
        .iter()
        .map(|f| u32::from_be_bytes([f[42], f[43], f[44], f[45]]))
        .filter(|s| (21_001..1_000_000).contains(s))
        .count();
    assert_eq!(late, 0);

    assert_eq!(pool.free_count(), free_at_start, "mbufs leaked");
    drop(pool);
    eal.cleanup();
    let _ = std::fs::remove_dir_all(&dir);
}
