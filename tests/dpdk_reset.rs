//! NIC reset and device events on a DPDK build (issue 15 item 2), end to
//! end over `testbed-nic-dpdk` (the emulated NIC feeding real mbufs through
//! `net_ring`), driven as the daemon drives them (`daemon::events`):
//! 1. the emulated NIC loses its rules (fault injection, as `nic reset`):
//!    the port's megaflows are re-offered and offloaded again (device rule
//!    count = offloaded count), the mark path carries the traffic again;
//! 2. `RTE_ETH_EVENT_INTR_RESET` on the port's ethdev (recorded as DPDK's
//!    interrupt thread would; virtual devices never raise it) while traffic
//!    flows: I/O stopped, the ethdev reset and restarted, re-offered;
//! 3. a stopped port refuses transmits, counted as `port_down`;
//! 4. `RTE_ETH_EVENT_INTR_RMV` on a second NIC: the port is removed.
//!
//! Throughout: forwarding output identical (every packet once, in order,
//! where the rules send it), the accounting identities hold, no mbuf leaks.
//! Its own process (scripts/test-dpdk): the EAL initialises once.
#![cfg(feature = "dpdk")]

mod dpdk_common;
#[path = "support/daemon.rs"]
mod harness;

use dpdk_common::*;
use flowmark::config::{PortSpec, PortType};
use flowmark::daemon::events::{PortEvents, Step};
use flowmark::dpdk::events::{self as eth_events, EthEvent};
use flowmark::dpdk::{DpdkPortFactory, Eal, Mbuf, Mempool};
use flowmark::ports::PortEventKind;
use flowmark::ports::PortFactory;
use flowmark::switch::{Switch, SwitchConfig};
use harness::{arr, check_accounting, u, Daemon};
use serde_json::Value;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testbed::pcap;
use testbed::Inject;

const RULES: &str = "\
priority=10,in_port=1,udp,tp_dst=1000,actions=output:2
priority=10,in_port=1,udp,tp_dst=2000,actions=output:3
priority=10,in_port=4,udp,tp_dst=3000,actions=output:1
priority=0,actions=drop
";

fn frame(dst_port: u16, seq: u32) -> Vec<u8> {
    udp_frame(128, 4000, dst_port, seq)
}

fn spec(name: &str, kind: PortType, ofport: u32, devargs: Option<String>) -> PortSpec {
    PortSpec {
        name: name.into(),
        kind,
        ofport: Some(ofport),
        rxqs: None,
        profile: None,
        devargs,
        socket: None,
        mode: None,
    }
}

fn mark_hits(sw: &Switch<Mbuf>) -> (u64, u64) {
    sw.pmd_snapshots()
        .expect("pmd snapshots")
        .iter()
        .fold((0, 0), |(p, m), x| {
            (p + x.counters.packets, m + x.counters.mark_hits)
        })
}

fn offloaded_on(sw: &Switch<Mbuf>, port: u32) -> usize {
    sw.offload_dump()
        .expect("offload dump")
        .iter()
        .filter(|f| f.port == port && f.state == "offloaded")
        .count()
}

/// Waits until `n` megaflows of `port` are offloaded and the device holds
/// exactly that many rules.
fn wait_offloaded(sw: &Switch<Mbuf>, f: &DpdkPortFactory, port: u32, n: usize) {
    let start = Instant::now();
    loop {
        let off = offloaded_on(sw, port);
        let rules = f.device_rules(port);
        if off == n && rules == Some(n) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "port {port}: {off} offloaded, device rules {rules:?}, want {n}: {:?}",
            sw.offload_dump()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn port_status(sw: &Switch<Mbuf>, port: u32) -> offload::worker::PortOffloadStatus {
    sw.offload_status()
        .expect("offload on")
        .expect("offload status")
        .ports
        .into_iter()
        .find(|p| p.port == port)
        .expect("port in offload status")
}

#[test]
fn nic_reset_and_device_events() {
    let prefix = prefix("reset");
    let _guard = RuntimeDirGuard(prefix.clone());
    let dir = scratch("reset");
    let empty = dir.join("empty.pcap");
    pcap::write_file(&empty, Duration::ZERO, std::iter::empty::<&[u8]>()).expect("empty pcap");
    let log = slog::Logger::root(slog::Discard, slog::o!());

    let eal = Eal::init(&eal_args(&prefix)).expect("EAL init");
    let pool = Arc::new(Mempool::create("reset_test", 16384).expect("mempool"));
    let free_at_start = pool.free_count();
    let mut factory = DpdkPortFactory::new(Arc::clone(&pool));
    let mut sw: Switch<Mbuf> = Switch::start(SwitchConfig {
        pmd_cores: vec![None],
        max_idle_ms: 60_000,
        ..SwitchConfig::default()
    })
    .expect("switch");
    load_rules(&mut sw, RULES);
    let pcap_out = |id: u32| {
        Some(format!(
            "net_pcap{id},rx_pcap={},tx_pcap={}",
            empty.display(),
            dir.join(format!("out{id}.pcap")).display()
        ))
    };
    let specs = [
        spec("nic0", PortType::TestbedNicDpdk, 1, None),
        spec("out2", PortType::Dpdk, 2, pcap_out(2)),
        spec("out3", PortType::Dpdk, 3, pcap_out(3)),
        spec("nic1", PortType::TestbedNicDpdk, 4, None),
    ];
    for s in &specs {
        let ofport = s.ofport.expect("ofport");
        let new = factory.create(ofport, s).expect("port");
        sw.add_port(
            &s.name,
            s.kind.name(),
            Some(ofport),
            new.port,
            new.flow_device,
        )
        .expect("add port");
    }
    let nic0 = factory.made(1).expect("nic0");
    let wire0 = nic0.nic.as_ref().expect("nic").wire().clone();
    let nic0_eth_id = nic0.eth.port_id();
    let mut events = PortEvents::new();

    let mut seq = 0u32;
    let (mut sent_a, mut sent_b) = (Vec::new(), Vec::new());
    let send = |n: u32, seq: &mut u32, sent_a: &mut Vec<u32>, sent_b: &mut Vec<u32>| {
        for i in 0..n {
            *seq += 1;
            let seq = *seq;
            let a = i % 2 == 0;
            wire0
                .inject(&frame(if a { 1000 } else { 2000 }, seq))
                .expect("inject");
            if a {
                sent_a.push(seq);
            } else {
                sent_b.push(seq);
            }
        }
        wire0.sync().expect("sync");
    };
    let all_in = |sw: &Switch<Mbuf>, total: usize| {
        wait_stats(sw, Duration::from_secs(60), "packets through", |s| {
            stats(s, "nic0").rx == total as u64
        })
    };

    // Warm-up: both megaflows of nic0 offloaded, the mark path used.
    send(1000, &mut seq, &mut sent_a, &mut sent_b);
    all_in(&sw, sent_a.len() + sent_b.len());
    wait_offloaded(&sw, &factory, 1, 2);
    let (p0, m0) = mark_hits(&sw);
    send(5000, &mut seq, &mut sent_a, &mut sent_b);
    all_in(&sw, sent_a.len() + sent_b.len());
    let (p1, m1) = mark_hits(&sw);
    assert!(
        (m1 - m0) as f64 >= 0.95 * (p1 - p0) as f64,
        "mark path before the reset: {} of {}",
        m1 - m0,
        p1 - p0
    );
    let before = port_status(&sw, 1);

    // 1. The emulated NIC loses every rule (what `nic reset` does).
    factory.reset_nic(1).expect("nic reset");
    assert_eq!(factory.device_rules(1), Some(0), "the NIC holds no rule");
    let h = events.handle(&mut sw, &mut factory, &log);
    assert_eq!(h.events.len(), 1, "{h:?}");
    assert_eq!(h.events[0].0.ofport, 1);
    assert_eq!(h.events[0].0.kind, PortEventKind::RulesLost);
    assert_eq!(h.events[0].1, vec![Step::Reoffer]);
    wait_offloaded(&sw, &factory, 1, 2);
    let after = port_status(&sw, 1);
    assert_eq!(after.resets, before.resets + 1, "one reset seen");
    assert_eq!(
        after.inserted,
        before.inserted + 2,
        "both megaflows went back to pending and were offloaded again"
    );
    let (p2, m2) = mark_hits(&sw);
    send(5000, &mut seq, &mut sent_a, &mut sent_b);
    all_in(&sw, sent_a.len() + sent_b.len());
    let (p3, m3) = mark_hits(&sw);
    assert!(
        (m3 - m2) as f64 >= 0.95 * (p3 - p2) as f64,
        "mark path after the reset: {} of {}",
        m3 - m2,
        p3 - p2
    );
    // Nothing left to handle.
    assert!(events.handle(&mut sw, &mut factory, &log).events.is_empty());

    // 2. RTE_ETH_EVENT_INTR_RESET on nic0's ethdev while traffic flows.
    let injector = {
        let wire = wire0.clone();
        let first = seq + 1;
        std::thread::spawn(move || {
            for i in 0..20_000u32 {
                let s = first + i;
                let a = i % 2 == 0;
                wire.inject(&frame(if a { 1000 } else { 2000 }, s))
                    .expect("inject");
            }
            wire.sync().expect("sync");
        })
    };
    for i in 0..20_000u32 {
        let s = seq + 1 + i;
        if i % 2 == 0 {
            sent_a.push(s);
        } else {
            sent_b.push(s);
        }
    }
    seq += 20_000;
    // Let traffic start, then the event.
    let start = Instant::now();
    let rx_before = stats(&sw.port_stats().expect("stats"), "nic0").rx;
    while stats(&sw.port_stats().expect("stats"), "nic0").rx < rx_before + 2000
        && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let before = port_status(&sw, 1);
    eth_events::record(nic0_eth_id, EthEvent::IntrReset);
    let h = events.handle(&mut sw, &mut factory, &log);
    assert_eq!(h.events.len(), 1, "{h:?}");
    assert_eq!(h.events[0].0.kind, PortEventKind::ResetNeeded);
    assert_eq!(
        h.events[0].1,
        vec![
            Step::StopIo,
            Step::ForgetRules,
            Step::ResetDevice,
            Step::ResumeIo,
            Step::Reoffer
        ],
        "every step carried out"
    );
    assert_eq!(events.resetting().count(), 0, "the reset completed");
    let nic0 = factory.made(1).expect("nic0");
    assert!(!nic0.eth.is_down(), "the port is up again");
    injector.join().expect("injector");
    all_in(&sw, sent_a.len() + sent_b.len());
    wait_offloaded(&sw, &factory, 1, 2);
    assert_eq!(port_status(&sw, 1).resets, before.resets + 1);
    let (p4, m4) = mark_hits(&sw);
    send(5000, &mut seq, &mut sent_a, &mut sent_b);
    all_in(&sw, sent_a.len() + sent_b.len());
    let (p5, m5) = mark_hits(&sw);
    assert!(
        (m5 - m4) as f64 >= 0.95 * (p5 - p4) as f64,
        "mark path after the ethdev reset: {} of {}",
        m5 - m4,
        p5 - p4
    );

    // 3. While a port is stopped, what the PMDs send to it is refused and
    // counted as port_down (nic1's traffic goes out on nic0).
    let wire1 = factory
        .made(4)
        .expect("nic1")
        .nic
        .as_ref()
        .expect("nic")
        .wire()
        .clone();
    factory.set_io(1, false);
    sw.pmd_snapshots().expect("round trip");
    for i in 0..100 {
        wire1.inject(&frame(3000, 900_000 + i)).expect("inject");
    }
    wire1.sync().expect("sync");
    let s = wait_stats(&sw, Duration::from_secs(30), "nic1's packets", |s| {
        stats(s, "nic1").rx == 100 && stats(s, "nic0").tx_attempted == 100
    });
    let down = serde_json::to_value(stats(&s, "nic0").tx_dropped).expect("json");
    assert_eq!(down["port_down"], 100, "{down}");
    assert_eq!(stats(&s, "nic0").tx, 0);
    factory.set_io(1, true);
    for i in 0..100 {
        wire1.inject(&frame(3000, 900_100 + i)).expect("inject");
    }
    wire1.sync().expect("sync");
    let s = wait_stats(&sw, Duration::from_secs(30), "nic1's packets", |s| {
        stats(s, "nic0").tx == 100
    });
    for p in &s {
        p.stats
            .check()
            .unwrap_or_else(|e| panic!("{}: {e}", p.name));
    }

    // 4. RTE_ETH_EVENT_INTR_RMV on nic1: the port goes as `port del`.
    let nic1_eth_id = factory.made(4).expect("nic1").eth.port_id();
    eth_events::record(nic1_eth_id, EthEvent::IntrRmv);
    let h = events.handle(&mut sw, &mut factory, &log);
    assert_eq!(h.removed, vec![4], "{h:?}");
    assert_eq!(
        h.events[0].1,
        vec![Step::StopIo, Step::ForgetRules, Step::RemovePort]
    );
    assert!(sw.port_by_name("nic1").is_none());
    assert!(factory.made(4).is_none());
    assert!(sw.offload_dump().expect("dump").iter().all(|f| f.port != 4));
    // A late event for the removed port is ignored.
    eth_events::record(nic1_eth_id, EthEvent::IntrReset);
    let h = events.handle(&mut sw, &mut factory, &log);
    assert!(h.events.is_empty(), "not ours any more: {h:?}");
    let status = sw.offload_status().expect("on").expect("status");
    assert_eq!(status.marks_in_use, status.states.offloaded);

    // The books.
    let s = sw.port_stats().expect("stats");
    for p in &s {
        p.stats
            .check()
            .unwrap_or_else(|e| panic!("{}: {e}", p.name));
    }
    let n0 = stats(&s, "nic0");
    assert_eq!(n0.rx as usize, sent_a.len() + sent_b.len());
    assert_eq!(n0.forwarded, n0.rx, "nothing dropped: {n0:?}");

    sw.shutdown();
    drop(sw);
    drop(factory);
    let out2 = pcap::read_file(dir.join("out2.pcap")).expect("out2");
    let out3 = pcap::read_file(dir.join("out3.pcap")).expect("out3");
    assert!(out2.iter().all(|f| dst_port_of(f) == 1000));
    assert!(out3.iter().all(|f| dst_port_of(f) == 2000));
    let got_a: Vec<u32> = out2.iter().map(|f| seq_of(f)).collect();
    let got_b: Vec<u32> = out3.iter().map(|f| seq_of(f)).collect();
    assert_eq!(got_a, sent_a, "port 2: every A packet once, in order");
    assert_eq!(got_b, sent_b, "port 3: every B packet once, in order");
    assert!(out2.iter().chain(&out3).all(|f| ipv4_udp_checksums_ok(f)));

    assert_eq!(pool.free_count(), free_at_start, "mbufs leaked");
    drop(pool);
    eal.cleanup();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The symptom at the CLI: `flowmark run` (DPDK build) with
/// `testbed-nic-dpdk` ports, `nic reset nic0`: the megaflows are offloaded
/// again (device rules = offloaded), the books add up, and the mempool's
/// free count at shutdown equals the one at start.
#[test]
fn daemon_nic_reset_reoffers() {
    let prefix = prefix("resetd");
    let _guard = RuntimeDirGuard(prefix.clone());
    let dir = scratch("resetd");
    let d = Daemon::start_with(
        Some(&format!(
            "pmd_cores = [1]\noffload = true\n\n[dpdk]\neal_args = {:?}\nmbufs = 4096\n\n\
             [[port]]\nname = \"nic0\"\ntype = \"testbed-nic-dpdk\"\nofport = 1\n\n\
             [[port]]\nname = \"nic1\"\ntype = \"testbed-nic-dpdk\"\nofport = 2\n",
            eal_args(&prefix)
        )),
        Stdio::piped(),
    );
    d.json(&[
        "flow",
        "add",
        "priority=10,in_port=1,udp,tp_dst=1000,actions=output:2",
    ]);
    d.json(&[
        "flow",
        "add",
        "priority=10,in_port=1,udp,tp_dst=2000,actions=output:2",
    ]);
    // (device rules, resets) of nic0 and the megaflows offloaded.
    let nic0 = |status: &Value| -> (u64, u64, u64) {
        let p = status["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "nic0").cloned())
            .unwrap_or_else(|| panic!("no offload line for nic0: {status}"));
        (
            u(&p["device_rules"]),
            u(&p["resets"]),
            u(&status["states"]["offloaded"]),
        )
    };
    let pcap_file = dir.join("in.pcap");
    let frames: Vec<Vec<u8>> = (0..400u32)
        .map(|i| frame(if i % 2 == 0 { 1000 } else { 2000 }, i))
        .collect();
    pcap::write_file(
        &pcap_file,
        Duration::ZERO,
        frames.iter().map(|f| f.as_slice()),
    )
    .expect("pcap");
    d.inject_pcap("nic0", &pcap_file);
    d.wait_for("2 megaflows offloaded", |d| {
        let (rules, _, off) = nic0(&d.json(&["offload", "status"]));
        off == 2 && rules == 2
    });
    d.json(&["nic", "reset", "nic0"]);
    d.wait_for("the megaflows offloaded again", |d| {
        let (rules, resets, off) = nic0(&d.json(&["offload", "status"]));
        resets == 1 && off == 2 && rules == 2
    });
    d.inject_pcap("nic0", &pcap_file);
    d.wait_for("800 packets through", |d| {
        u(&d.port_stats("nic1")["tx"]) == 800
    });
    let mf = d.megaflows();
    assert_eq!(mf.len(), 2, "{mf:?}");
    assert!(mf.iter().all(|m| m["state"] == "offloaded"), "{mf:?}");
    check_accounting(&arr(&d.json(&["port", "stats"])));

    let text = d.stop_output();
    let free: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("free mbufs at"))
        .filter_map(|l| l.split(": ").last())
        .collect();
    assert_eq!(free.len(), 2, "{text}");
    assert_eq!(free[0], free[1], "mbufs leaked: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}
