//! The emulated NIC as the switch and the offload worker see it: rte_flow
//! behaviour, marks and RSS on received packets, rings and back-pressure,
//! faults, and the default testbed.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use fallback::port::{Burst, HeapPacket, PacketBuf, Port};
use offload::device::{FlowDevice, FlowError, Profile};
use offload::rte::{Action, Attr, Eth, Ipv4, Item, Masked, RssType, Rule, Udp};
use testbed::build;
use testbed::matcher::{Headers, ETHERTYPE_IPV4};
use testbed::nic::rss::Reta;
use testbed::toeplitz::Toeplitz;
use testbed::traffic::{self, Mix, Traffic, TrafficSpec};
use testbed::{Inject, Nic, NicConfig, PacketPool, Testbed, TestbedConfig};

fn nic(config: NicConfig) -> Nic {
    Nic::start(config, PacketPool::new(4096)).unwrap()
}

/// ETH with the destination MAC and IPv4 type (every profile takes it).
fn eth_ipv4() -> Item {
    Item::Eth(Masked::new(
        Eth {
            ether_type: ETHERTYPE_IPV4,
            dst: build::MAC_DST,
            ..Eth::default()
        },
        Eth {
            ether_type: 0xffff,
            dst: [0xff; 6],
            ..Eth::default()
        },
    ))
}

fn ipv4_dst(a: Ipv4Addr) -> Item {
    Item::Ipv4(Masked::new(
        Ipv4 {
            dst_addr: a.into(),
            ..Ipv4::default()
        },
        Ipv4 {
            dst_addr: !0,
            ..Ipv4::default()
        },
    ))
}

fn udp_dst(port: u16) -> Item {
    Item::Udp(Masked::new(
        Udp {
            dst_port: port,
            ..Udp::default()
        },
        Udp {
            dst_port: 0xffff,
            ..Udp::default()
        },
    ))
}

fn rule(pattern: Vec<Item>, actions: Vec<Action>) -> Rule {
    Rule {
        attr: Attr::INGRESS,
        pattern,
        actions,
    }
}

fn rss_all(n: u16) -> Action {
    Action::Rss {
        queues: (0..n).collect(),
        types: vec![],
    }
}

fn udp_to(dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    build::udp4(Ipv4Addr::new(10, 1, 0, 1), dst, sport, dport, &[0; 18])
}

/// Everything waiting on one rx queue.
fn drain(port: &dyn Port<Buf = HeapPacket>, queue: u16) -> Vec<HeapPacket> {
    let mut out = Vec::new();
    let mut b = Burst::new();
    loop {
        b.clear();
        if port.rx_burst(queue, &mut b) == 0 {
            return out;
        }
        out.extend(b.drain());
    }
}

#[test]
fn capacity_no_space_and_room_after_destroy() {
    let n = nic(NicConfig {
        profile: Profile::Tiny,
        ..NicConfig::new("nic0")
    });
    let dev = n.flow_device();
    assert_eq!(dev.capabilities().max_rules, 16);
    let handles: Vec<_> = (0..16u8)
        .map(|i| {
            dev.create(&rule(
                vec![eth_ipv4(), ipv4_dst(Ipv4Addr::new(10, 9, 0, i))],
                vec![Action::Drop],
            ))
            .unwrap()
        })
        .collect();
    let extra = rule(
        vec![eth_ipv4(), ipv4_dst(Ipv4Addr::new(10, 9, 1, 0))],
        vec![Action::Drop],
    );
    let err = dev.create(&extra).unwrap_err();
    assert_eq!(err, FlowError::NoSpace);
    assert!(err.to_string().contains("rule table full"));
    // validate ignores capacity, as rte_flow_validate does.
    assert_eq!(dev.validate(&extra), Ok(()));
    dev.destroy(handles[3]).unwrap();
    assert!(dev.create(&extra).is_ok());
    assert_eq!(n.stats().rules, 16);
    dev.flush().unwrap();
    assert_eq!(dev.rule_count(), 0);
    // A destroyed handle is refused with a reason.
    let e = dev.destroy(handles[0]).unwrap_err();
    assert!(matches!(e, FlowError::Invalid { .. }) && e.to_string().contains("no such rule"));
}

#[test]
fn profiles() {
    let mark_rule = rule(vec![eth_ipv4()], vec![Action::Mark { id: 1 }, rss_all(2)]);
    let type_only = rule(
        vec![Item::Eth(Masked::new(
            Eth {
                ether_type: ETHERTYPE_IPV4,
                ..Eth::default()
            },
            Eth {
                ether_type: 0xffff,
                ..Eth::default()
            },
        ))],
        vec![Action::Mark { id: 1 }, rss_all(2)],
    );
    let generic = nic(NicConfig::new("g"));
    assert_eq!(generic.flow_device().capabilities().max_rules, 1_048_576);
    assert!(generic.flow_device().create(&type_only).is_ok());

    let xl710 = nic(NicConfig {
        profile: Profile::Xl710,
        ..NicConfig::new("x")
    });
    assert_eq!(xl710.flow_device().capabilities().max_rules, 8192);
    let e = xl710.flow_device().create(&type_only).unwrap_err();
    assert!(e.is_permanent());
    assert!(e.to_string().contains("item ETH"), "{e}");
    assert!(
        xl710.flow_device().create(&mark_rule).is_ok(),
        "type with a MAC is fine"
    );

    let no_mark = nic(NicConfig {
        profile: Profile::NoMark,
        ..NicConfig::new("m")
    });
    let e = no_mark.flow_device().validate(&mark_rule).unwrap_err();
    assert!(matches!(e, FlowError::Unsupported { .. }));
    assert!(e.to_string().contains("action MARK unsupported"), "{e}");
    assert!(no_mark
        .flow_device()
        .create(&rule(vec![eth_ipv4()], vec![rss_all(2)]))
        .is_ok());
}

#[test]
fn refusals_name_the_item_or_action() {
    let n = nic(NicConfig::new("nic0"));
    let dev = n.flow_device();
    let e = dev
        .validate(&rule(vec![eth_ipv4()], vec![Action::Queue { index: 2 }]))
        .unwrap_err();
    assert!(
        e.to_string().contains("action QUEUE") && e.to_string().contains("2 rx queues"),
        "{e}"
    );
    let e = dev
        .validate(&rule(
            vec![eth_ipv4()],
            vec![Action::Rss {
                queues: vec![0, 5],
                types: vec![],
            }],
        ))
        .unwrap_err();
    assert!(e.to_string().contains("action RSS"), "{e}");
    let mut low = rule(vec![eth_ipv4()], vec![Action::Drop]);
    low.attr.priority = 99;
    assert!(dev
        .validate(&low)
        .unwrap_err()
        .to_string()
        .contains("priority 99"));
    let e = dev
        .validate(&rule(
            vec![Item::Udp(Masked::any()), eth_ipv4()],
            vec![Action::Drop],
        ))
        .unwrap_err();
    assert!(e.to_string().contains("udp"), "{e}");
    let h = dev
        .create(&rule(vec![eth_ipv4()], vec![Action::Drop]))
        .unwrap();
    let e = dev.query(h).unwrap_err();
    assert!(e.to_string().contains("action COUNT"), "{e}");
}

#[test]
fn marks_hashes_and_counters_on_received_packets() {
    let n = nic(NicConfig::new("nic0"));
    let dev = n.flow_device();
    let gw = Ipv4Addr::new(192, 168, 200, 3);
    let marked = dev
        .create(&rule(
            vec![eth_ipv4(), ipv4_dst(gw), udp_dst(2152)],
            vec![Action::Mark { id: 42 }, Action::Count, rss_all(2)],
        ))
        .unwrap();
    let hit = udp_to(gw, 2152, 2152);
    let miss = udp_to(gw, 2152, 2123);
    for _ in 0..5 {
        n.wire().inject(&hit).unwrap();
        n.wire().inject(&miss).unwrap();
    }
    n.wire().sync().unwrap();
    let mut pkts = drain(n.port().as_ref(), 0);
    pkts.extend(drain(n.port().as_ref(), 1));
    assert_eq!(pkts.len(), 10);
    let t = Toeplitz::default();
    for p in &pkts {
        let udp = Headers::parse(p.data()).udp.unwrap();
        let expect_mark = (udp.dst_port == 2152).then_some(42);
        assert_eq!(p.mark(), expect_mark);
        // Both carry the ipv4-udp hash (the rule's RSS and the default).
        let hash = t.ipv4_ports(Ipv4Addr::new(10, 1, 0, 1), gw, 2152, udp.dst_port);
        assert_eq!(p.rss_hash(), Some(hash));
    }
    let c = dev.query(marked).unwrap();
    assert_eq!((c.hits, c.bytes), (5, 5 * hit.len() as u64));
    let s = n.stats();
    assert_eq!(
        (s.rule_hits, s.marked, s.wire.packets, s.rx.packets),
        (5, 5, 10, 10)
    );
    assert!(s.wire_accounted());
    assert_eq!(n.port().stats().rx, 10);
}

#[test]
fn rss_spreads_flows_over_queues_by_the_reta() {
    let n = nic(NicConfig {
        rxqs: 4,
        rx_ring_size: 4096,
        ..NicConfig::new("nic0")
    });
    let traffic = Traffic::generate(&TrafficSpec {
        mix: Mix::UDP,
        ..TrafficSpec::new(400)
    });
    for f in &traffic.flows {
        n.wire().inject(&f.frame).unwrap();
    }
    n.wire().sync().unwrap();
    let reta = Reta::over_queues(4);
    let mut per_queue = [0usize; 4];
    for q in 0..4u16 {
        for p in drain(n.port().as_ref(), q) {
            let hash = p.rss_hash().expect("IPv4/UDP is hashed");
            assert_eq!(reta.queue(Some(hash)), q);
            assert_eq!(hash as usize % 128 % 4, usize::from(q));
            per_queue[usize::from(q)] += 1;
        }
    }
    assert_eq!(per_queue.iter().sum::<usize>(), 400);
    // 400 flows over 4 queues: every queue gets a fair share.
    assert!(per_queue.iter().all(|n| *n > 50), "{per_queue:?}");

    // An RSS action over queues 2 and 3 with ipv4 (addresses only).
    n.flow_device()
        .create(&rule(
            vec![eth_ipv4()],
            vec![Action::Rss {
                queues: vec![2, 3],
                types: vec![RssType::Ipv4],
            }],
        ))
        .unwrap();
    for f in &traffic.flows {
        n.wire().inject(&f.frame).unwrap();
    }
    n.wire().sync().unwrap();
    assert!(drain(n.port().as_ref(), 0).is_empty());
    assert!(drain(n.port().as_ref(), 1).is_empty());
    let t = Toeplitz::default();
    let mut got = 0;
    for q in [2u16, 3] {
        for p in drain(n.port().as_ref(), q) {
            let ip = Headers::parse(p.data()).ipv4.unwrap();
            let hash = t.ipv4(ip.src_addr.into(), ip.dst_addr.into());
            assert_eq!(p.rss_hash(), Some(hash));
            assert_eq!(Reta::spread(&[2, 3]).queue(Some(hash)), q);
            got += 1;
        }
    }
    assert_eq!(got, 400);
}

#[test]
fn queue_and_drop_fates() {
    let n = nic(NicConfig {
        rxqs: 4,
        ..NicConfig::new("nic0")
    });
    let dev = n.flow_device();
    let a = Ipv4Addr::new(10, 0, 0, 1);
    let b = Ipv4Addr::new(10, 0, 0, 2);
    dev.create(&rule(
        vec![eth_ipv4(), ipv4_dst(a)],
        vec![Action::Queue { index: 3 }, Action::Mark { id: 1 }],
    ))
    .unwrap();
    let drop = dev
        .create(&rule(
            vec![eth_ipv4(), ipv4_dst(b)],
            vec![Action::Drop, Action::Count],
        ))
        .unwrap();
    for i in 0..20 {
        n.wire().inject(&udp_to(a, 1000 + i, 53)).unwrap();
        n.wire().inject(&udp_to(b, 1000 + i, 53)).unwrap();
    }
    n.wire().sync().unwrap();
    let q3 = drain(n.port().as_ref(), 3);
    assert_eq!(q3.len(), 20);
    assert!(q3
        .iter()
        .all(|p| p.mark() == Some(1) && p.rss_hash().is_none()));
    assert_eq!(
        n.port().rx_pending(),
        0,
        "the dropped ones never reach a ring"
    );
    let s = n.stats();
    assert_eq!(s.rule_dropped, 20);
    assert_eq!(dev.query(drop).unwrap().hits, 20);
    assert!(s.wire_accounted());
}

#[test]
fn full_rings_count_rx_missed() {
    let n = nic(NicConfig {
        rxqs: 1,
        rx_ring_size: 8,
        ..NicConfig::new("nic0")
    });
    let f = udp_to(Ipv4Addr::new(10, 0, 0, 1), 1, 2);
    for _ in 0..100 {
        n.wire().inject(&f).unwrap();
    }
    n.wire().sync().unwrap();
    let s = n.stats();
    assert_eq!(s.placed.packets, 8);
    assert_eq!(s.rx_missed, vec![92]);
    assert_eq!(n.port().rx_missed(0), 92);
    assert!(s.wire_accounted());
    assert_eq!(drain(n.port().as_ref(), 0).len(), 8);
}

/// `--packets N`: with back-pressure, N frames through rings of 16 with a
/// slow reader, none lost, every flow counted.
#[test]
fn backpressure_loses_nothing() {
    let pool = PacketPool::new(4096);
    let n = Nic::start(
        NicConfig {
            rxqs: 2,
            rx_ring_size: 16,
            wire_ring_size: 16,
            backpressure: true,
            ..NicConfig::new("nic0")
        },
        pool.clone(),
    )
    .unwrap();
    let traffic = Traffic::generate(&TrafficSpec::new(37));
    const N: u64 = 5000;
    let wire = n.wire().clone();
    let sender = {
        let traffic = traffic.clone();
        thread::spawn(move || traffic.send(0, N, &[(1, &wire as &dyn Inject)]))
    };
    let port = Arc::clone(n.port());
    let mut per_flow: HashMap<u32, u64> = HashMap::new();
    let mut received = 0u64;
    let mut b = Burst::new();
    while received < N {
        let mut got = 0;
        for q in 0..2 {
            b.clear();
            got += port.rx_burst(q, &mut b);
            for p in b.drain() {
                *per_flow
                    .entry(traffic::flow_id(p.data()).unwrap())
                    .or_default() += 1;
                pool.put(p);
            }
        }
        received += got as u64;
        if got == 0 {
            // Poll like a PMD, but without burning the second core.
            thread::sleep(Duration::from_millis(1));
        }
    }
    sender.join().unwrap().unwrap();
    let s = n.stats();
    assert_eq!(received, N);
    assert_eq!(s.rx_missed.iter().sum::<u64>(), 0);
    assert_eq!(s.wire.packets, N);
    let expected = traffic.expected_per_flow(N);
    for f in &traffic.flows {
        assert_eq!(
            per_flow.get(&f.id).copied().unwrap_or(0),
            expected[f.id as usize],
            "flow {}",
            f.id
        );
    }
    // Buffers were recycled: far fewer allocated than packets sent.
    assert!(pool.stats().allocated < 200, "{:?}", pool.stats());
}

#[test]
fn faults_fail_nth_create_refuse_and_reset() {
    let n = nic(NicConfig::new("nic0"));
    let dev = n.flow_device();
    let r = |i: u8| {
        rule(
            vec![eth_ipv4(), ipv4_dst(Ipv4Addr::new(10, 0, 0, i))],
            vec![Action::Mark { id: u32::from(i) }, rss_all(2)],
        )
    };
    dev.fail_nth_create(3);
    assert!(dev.create(&r(1)).is_ok());
    assert!(dev.create(&r(2)).is_ok());
    let e = dev.create(&r(3)).unwrap_err();
    assert!(
        matches!(e, FlowError::Device(_)) && !e.is_permanent(),
        "{e}"
    );
    assert!(dev.create(&r(3)).is_ok(), "only the third call fails");
    dev.set_refuse_as_full(true);
    assert_eq!(dev.create(&r(4)), Err(FlowError::NoSpace));
    dev.set_refuse_as_full(false);
    assert!(dev.create(&r(4)).is_ok());

    let events = dev.subscribe_resets();
    n.wire()
        .inject(&udp_to(Ipv4Addr::new(10, 0, 0, 1), 1, 2))
        .unwrap();
    n.wire().sync().unwrap();
    dev.reset();
    assert_eq!(dev.reset_count(), 1);
    assert_eq!(events.recv_timeout(Duration::from_secs(5)), Ok(1));
    assert_eq!(dev.rule_count(), 0);
    n.wire()
        .inject(&udp_to(Ipv4Addr::new(10, 0, 0, 1), 1, 2))
        .unwrap();
    n.wire().sync().unwrap();
    let mut pkts = drain(n.port().as_ref(), 0);
    pkts.extend(drain(n.port().as_ref(), 1));
    let marks: Vec<_> = pkts.iter().map(|p| p.mark()).collect();
    assert_eq!(
        marks,
        vec![Some(1), None],
        "marked before the reset, not after"
    );
    assert_eq!(n.stats().resets, 1);
}

/// The offload worker's calls while the NIC thread classifies traffic.
#[test]
fn flow_device_used_from_another_thread() {
    let n = nic(NicConfig {
        rx_ring_size: 8192,
        ..NicConfig::new("nic0")
    });
    let dev = Arc::clone(n.flow_device());
    let worker = thread::spawn(move || {
        let mut handles = Vec::new();
        for i in 0..200u32 {
            let dst = Ipv4Addr::from(0x0a00_0000 + i);
            handles.push(
                dev.create(&rule(
                    vec![eth_ipv4(), ipv4_dst(dst)],
                    vec![Action::Mark { id: i + 1 }, Action::Count, rss_all(2)],
                ))
                .unwrap(),
            );
        }
        for h in handles.iter().step_by(2) {
            dev.destroy(*h).unwrap();
        }
        handles
    });
    for i in 0..2000u32 {
        n.wire()
            .inject(&udp_to(Ipv4Addr::from(0x0a00_0000 + i % 200), 7, 7))
            .unwrap();
    }
    let handles = worker.join().unwrap();
    n.wire().sync().unwrap();
    let dev = n.flow_device();
    assert_eq!(dev.rule_count(), 100);
    // After the worker is done, the table is what it left and matches
    // exactly: the odd rules' destinations are marked, the even ones' not.
    for i in 0..200u32 {
        n.wire()
            .inject(&udp_to(Ipv4Addr::from(0x0a00_0000 + i), 7, 7))
            .unwrap();
    }
    n.wire().sync().unwrap();
    let mut late: Vec<HeapPacket> = drain(n.port().as_ref(), 0);
    late.extend(drain(n.port().as_ref(), 1));
    assert_eq!(late.len(), 2200);
    let tail: HashMap<u32, Option<u32>> = late
        .iter()
        .filter_map(|p| {
            let ip = Headers::parse(p.data()).ipv4?;
            Some((ip.dst_addr - 0x0a00_0000, p.mark()))
        })
        .collect();
    for i in 0..200u32 {
        // The last packet to each destination was sent after the worker.
        let expect = (i % 2 == 1).then_some(i + 1);
        assert_eq!(tail[&i], expect, "destination {i}");
    }
    for h in handles.iter().skip(1).step_by(2) {
        assert!(dev.query(*h).unwrap().hits >= 1);
    }
    assert!(n.stats().wire_accounted());
}

#[test]
fn default_testbed_ports_traffic_and_recycling() {
    let bed = Testbed::default_ports(TestbedConfig {
        keep_tx: 64,
        ..TestbedConfig::default()
    })
    .unwrap();
    let names: Vec<_> = bed
        .ports()
        .iter()
        .map(|p| (p.ofport, p.name().to_string(), p.kind()))
        .collect();
    assert_eq!(
        names,
        vec![
            (1, "nic0".to_string(), "testbed-nic"),
            (2, "nic1".to_string(), "testbed-nic"),
            (3, "vm0".to_string(), "testbed-vm")
        ]
    );
    assert!(bed.port(1).unwrap().flow_device().is_some());
    assert!(bed.port(3).unwrap().flow_device().is_none());
    let traffic = Traffic::generate(&TrafficSpec {
        in_ports: vec![1, 2, 3],
        ..TrafficSpec::new(30)
    });
    // A switch that sends everything from port p out of port p % 3 + 1.
    let ports: Vec<_> = bed.ports().iter().map(|p| p.port()).collect();
    for round in 0..20u64 {
        traffic.send(round * 30, 30, &bed.injectors()).unwrap();
        for (i, port) in ports.iter().enumerate() {
            for q in 0..port.n_rxq() {
                let mut b = Burst::new();
                while port.rx_burst(q, &mut b) > 0 {
                    let out = &ports[(i + 1) % 3];
                    let n = b.len();
                    assert_eq!(out.tx_burst(0, &mut b), n);
                    assert!(b.is_empty());
                }
            }
        }
    }
    assert_eq!(bed.rx_pending(), 0);
    let mut total_rx = 0;
    let mut total_tx = 0;
    for p in bed.ports() {
        let s = p.port().stats();
        total_rx += s.rx;
        total_tx += s.tx;
    }
    assert_eq!((total_rx, total_tx), (600, 600));
    let kept = bed.port(2).unwrap().take_transmitted();
    assert_eq!(
        kept.len(),
        64,
        "nic1 keeps up to 64 of the 200 packets from nic0"
    );
    assert!(kept
        .iter()
        .all(|f| traffic::flow_id(f).is_some_and(|id| id % 3 == 0)));
    // 600 packets through a prefilled pool: buffers are reused, nothing is
    // allocated beyond the pool (as with a DPDK mempool).
    assert_eq!(
        bed.pool().stats().allocated,
        testbed::pool::DEFAULT_POOL_SIZE as u64,
        "{:?}",
        bed.pool().stats()
    );
    assert!(matches!(
        traffic.send(0, 1, &[]),
        Err(testbed::InjectError::NoSuchPort { ofport: 1 })
    ));
}
