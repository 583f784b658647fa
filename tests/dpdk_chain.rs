//! Chained (multi-segment) mbufs over `net_ring` (issue 15 item 4): a
//! chain whose bytes do not fit its first segment's buffer cannot be
//! linearised; it is dropped whole and counted as `not_linearizable`,
//! never forwarded truncated, and every segment goes back to the pool. A
//! chain that fits is linearised on receive and forwarded whole and
//! byte-exact. Its own process (scripts/test-dpdk): the EAL initialises
//! once.
#![cfg(feature = "dpdk")]

mod dpdk_common;

use dpdk_common::*;
use fallback::port::PacketBuf;
use flowmark::dpdk::{DpdkPortFactory, DpdkPortSpec, Eal, Mbuf, Mempool};
use flowmark::switch::{Switch, SwitchConfig};
use offload::device::Profile;
use std::sync::Arc;
use std::time::Duration;
use testbed::pcap;
use testbed::Inject;

/// A frame of `len` bytes to UDP port 1000.
fn frame(len: usize, seq: u32) -> Vec<u8> {
    udp_frame(len, 4000, 1000, seq)
}

/// `bytes` as a chain of mbufs, one per `split` piece.
fn chain(pool: &Mempool, bytes: &[u8], split: &[usize]) -> Mbuf {
    let mut pieces = Vec::new();
    let mut at = 0;
    for &n in split {
        pieces.push(&bytes[at..at + n]);
        at += n;
    }
    assert_eq!(at, bytes.len(), "the split covers the frame");
    let mut head = pool.mbuf_from(pieces[0]).expect("mbuf");
    for p in &pieces[1..] {
        let seg = pool.mbuf_from(p).expect("mbuf");
        assert!(head.chain(seg).is_ok(), "chain a segment");
    }
    head
}

#[test]
fn chained_mbufs_dropped_or_linearised() {
    let prefix = prefix("chain");
    let _guard = RuntimeDirGuard(prefix.clone());
    let dir = scratch("chain");
    let empty = dir.join("empty.pcap");
    pcap::write_file(&empty, Duration::ZERO, std::iter::empty::<&[u8]>()).expect("empty pcap");

    let eal = Eal::init(&eal_args(&prefix)).expect("EAL init");
    let pool = Arc::new(Mempool::create("chain_test", 4096).expect("mempool"));
    let free_at_start = pool.free_count();

    // The Mbuf API on a chain, before any port is involved.
    {
        let big = frame(3000, 99);
        let mut m = chain(&pool, &big, &[1500, 1500]);
        assert_eq!(m.segments(), 2);
        assert_eq!(m.pkt_len(), 3000);
        assert!(!m.is_contiguous());
        assert!(!m.linearize(), "3000 bytes do not fit one 2 KiB buffer");
        assert_eq!(m.segments(), 2, "a failed linearisation keeps the chain");
        assert_eq!(m.to_vec(), big, "and every byte");
        assert_eq!(m.data(), &big[..1500], "data() is the first segment");
        assert_eq!(m.tailroom(), 0, "no append onto a chain");
        assert!(!m.append(&[1, 2, 3]));
        assert!(!m.trim(10), "no trim of a chain's first segment");
        let c = m.clone();
        assert_eq!(c.segments(), 2, "a clone copies every segment");
        assert_eq!(c.to_vec(), big);
        let mut small = chain(&pool, &frame(200, 98), &[60, 140]);
        assert!(small.linearize());
        assert!(small.is_contiguous());
        assert_eq!(small.data(), frame(200, 98).as_slice());
    }
    assert_eq!(pool.free_count(), free_at_start, "chains freed whole");

    let mut factory = DpdkPortFactory::new(Arc::clone(&pool));
    let mut sw: Switch<Mbuf> = Switch::start(SwitchConfig {
        pmd_cores: vec![None],
        max_idle_ms: 60_000,
        ..SwitchConfig::default()
    })
    .expect("switch");
    load_rules(&mut sw, "priority=10,in_port=1,actions=output:2\n");
    let nic = factory
        .make(&DpdkPortSpec::TestbedNicDpdk {
            name: "nic0".into(),
            rxqs: 1,
            profile: Profile::Generic,
        })
        .expect("testbed-nic-dpdk port");
    assert_eq!(nic.eth.driver(), "net_ring");
    let out = factory
        .make(&DpdkPortSpec::Dpdk {
            name: "out2".into(),
            devargs: format!(
                "net_pcap2,rx_pcap={},tx_pcap={}",
                empty.display(),
                dir.join("out2.pcap").display()
            ),
            rxqs: 1,
        })
        .expect("pcap output");
    sw.add_port(
        "nic0",
        "testbed-nic-dpdk",
        Some(1),
        nic.port.clone(),
        nic.flow_device.clone(),
    )
    .expect("add nic0");
    sw.add_port("out2", "dpdk", Some(2), out.port.clone(), None)
        .expect("add out2");
    let n = nic.nic.as_ref().expect("nic");

    // In order: a normal frame, a chain that cannot be linearised (two
    // segments of 1500 bytes, 2 KiB data room), a chain that can.
    let normal = frame(128, 1);
    let big = frame(3000, 2);
    let small = frame(300, 3);
    n.wire().inject(&normal).expect("inject");
    n.wire().sync().expect("sync");
    wait_stats(&sw, Duration::from_secs(30), "the normal frame in", |s| {
        stats(s, "nic0").rx == 1
    });
    assert!(n.deliver_mbuf(0, chain(&pool, &big, &[1500, 1500])).is_ok());
    assert!(n
        .deliver_mbuf(0, chain(&pool, &small, &[100, 100, 100]))
        .is_ok());
    let s = wait_stats(&sw, Duration::from_secs(30), "3 packets in", |s| {
        stats(s, "nic0").rx == 3 && stats(s, "out2").tx_attempted == 2
    });
    let nic0 = stats(&s, "nic0");
    let out2 = stats(&s, "out2");
    println!("nic0: {nic0:?}\nout2: {out2:?}");
    nic0.check().expect("nic0 books");
    out2.check().expect("out2 books");
    let dropped = serde_json::to_value(nic0.rx_dropped).expect("json");
    assert_eq!(dropped["not_linearizable"], 1, "{dropped}");
    assert_eq!(nic0.rx_dropped.total(), 1, "no other drop: {dropped}");
    assert_eq!(nic0.forwarded, 2);
    assert_eq!(out2.tx, 2);

    sw.shutdown();
    drop(sw);
    drop(nic);
    drop(out);
    drop(factory);
    let frames = pcap::read_file(dir.join("out2.pcap")).expect("out2");
    assert_eq!(frames.len(), 2, "the chain that does not fit is not sent");
    assert_eq!(frames[0], normal, "the normal frame, unchanged");
    assert_eq!(frames[1], small, "the linearised chain, whole and exact");
    assert!(ipv4_udp_checksums_ok(&frames[1]));

    assert_eq!(pool.free_count(), free_at_start, "mbufs leaked");
    drop(pool);
    eal.cleanup();
    let _ = std::fs::remove_dir_all(&dir);
}
