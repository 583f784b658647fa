//! pcap in, pcap out, through a `Switch<Mbuf>` over two `net_pcap` ports
//! (run by scripts/test-dpdk; its own process: the EAL initialises once).
//!
//! Port 1 (access) reads the uplink half of generated GTP traffic from
//! `rx_pcap`, port 2 (core) the downlink half; both write what the switch
//! sends them to `tx_pcap`. With the sample GTP rules, every uplink packet
//! leaves on port 2 (GTP-U with nw_src rewritten to 192.168.200.188,
//! GTP-C unchanged through NORMAL) and every downlink packet leaves on
//! port 1 unchanged (flood). The output files are read back and compared
//! packet by packet; the port counters must agree; every megaflow is
//! `Failed` with net_pcap's own "Function not implemented" (real
//! rte_flow calls); no mbuf leaks.
#![cfg(feature = "dpdk")]

mod dpdk_common;

use dpdk_common::*;
use flowmark::dpdk::{DpdkPortFactory, DpdkPortSpec, Eal, Mempool};
use flowmark::switch::{Switch, SwitchConfig};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use testbed::pcap;
use testbed::traffic::{GtpSpec, Traffic};

const GTP_FLOWS: &str = include_str!("../examples/gtp.flows");
const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 3);
const NAT: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 188);

/// What the rules call for, computed independently of the switch: the
/// uplink frame as it must leave port 2.
fn expected_uplink(f: &[u8]) -> Vec<u8> {
    let mut out = f.to_vec();
    let is_gtpu_to_gw =
        f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 17 && f[30..34] == GW.octets() && {
            let l4 = 14 + usize::from(f[14] & 0x0f) * 4;
            let sport = u16::from_be_bytes([f[l4], f[l4 + 1]]);
            let dport = u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]);
            sport == 2152 || dport == 2152
        };
    if is_gtpu_to_gw {
        out[26..30].copy_from_slice(&NAT.octets());
    }
    out
}

/// Multiset comparison ignoring checksum bytes (checked separately).
fn without_checksums(f: &[u8]) -> Vec<u8> {
    let mut v = f.to_vec();
    if v.len() >= 42 && v[12..14] == [0x08, 0x00] {
        v[24] = 0;
        v[25] = 0;
        let l4 = 14 + usize::from(v[14] & 0x0f) * 4;
        if v[23] == 17 && v.len() >= l4 + 8 {
            v[l4 + 6] = 0;
            v[l4 + 7] = 0;
        }
    }
    v
}

fn count(frames: &[Vec<u8>]) -> BTreeMap<Vec<u8>, usize> {
    let mut m = BTreeMap::new();
    for f in frames {
        *m.entry(without_checksums(f)).or_insert(0) += 1;
    }
    m
}

#[test]
fn pcap_in_pcap_out() {
    let prefix = prefix("pcap");
    let _guard = RuntimeDirGuard(prefix.clone());
    let dir = scratch("pcap");
    let packets: usize = std::env::var("FLOWMARK_PCAP_PACKETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);

    // Generated GTP traffic, split by ingress port.
    let traffic = Traffic::gtp(&GtpSpec::new(200));
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for n in 0..packets as u64 {
        let Some(f) = traffic.flow_of_packet(n) else {
            continue;
        };
        match f.in_port {
            1 => up.push(f.frame.clone()),
            _ => down.push(f.frame.clone()),
        }
    }
    assert!(!up.is_empty() && !down.is_empty());
    let up_in = dir.join("up_in.pcap");
    let down_in = dir.join("down_in.pcap");
    let (p1_out, p2_out) = (dir.join("port1_out.pcap"), dir.join("port2_out.pcap"));
    pcap::write_file(&up_in, Duration::ZERO, up.iter().map(Vec::as_slice)).expect("write up pcap");
    pcap::write_file(&down_in, Duration::ZERO, down.iter().map(Vec::as_slice))
        .expect("write down pcap");

    let eal = Eal::init(&eal_args(&prefix)).expect("EAL init");
    assert!(matches!(
        Eal::init(&eal_args(&prefix)),
        Err(flowmark::dpdk::DpdkError::EalTwice)
    ));
    let pool = Arc::new(Mempool::create("pcap_test", 8192).expect("mempool"));
    let free_at_start = pool.free_count();
    println!("mempool free mbufs at start: {free_at_start}");
    assert_eq!(free_at_start, pool.size());

    let mut factory = DpdkPortFactory::new(Arc::clone(&pool));
    let mut sw: Switch<flowmark::dpdk::Mbuf> = Switch::start(SwitchConfig {
        pmd_cores: vec![None],
        max_idle_ms: 60_000,
        ..SwitchConfig::default()
    })
    .expect("switch");
    load_rules(&mut sw, GTP_FLOWS);
    let mk = |name: &str, rx: &std::path::Path, tx: &std::path::Path, id: u32| DpdkPortSpec::Dpdk {
        name: name.to_string(),
        devargs: format!(
            "net_pcap{id},rx_pcap={},tx_pcap={}",
            rx.display(),
            tx.display()
        ),
        rxqs: 1,
    };
    let core = factory
        .make(&mk("core", &down_in, &p2_out, 2))
        .expect("core port");
    assert_eq!(core.eth.driver(), "net_pcap");
    println!("core: link {:?}", core.eth.link());
    let access = factory
        .make(&mk("access", &up_in, &p1_out, 1))
        .expect("access port");
    // Traffic starts once both ports are in the switch.
    let gate = Gate::default();
    let gated = |p: &flowmark::dpdk::MadePort| -> Arc<dyn fallback::port::Port<Buf = flowmark::dpdk::Mbuf>> {
        Arc::new(Gated {
            inner: p.port.clone(),
            gate: gate.clone(),
        })
    };
    sw.add_port(
        "access",
        "dpdk",
        Some(1),
        gated(&access),
        access.flow_device.clone(),
    )
    .expect("add access");
    sw.add_port(
        "core",
        "dpdk",
        Some(2),
        gated(&core),
        core.flow_device.clone(),
    )
    .expect("add core");
    gate.open();

    let (n_up, n_down) = (up.len() as u64, down.len() as u64);
    let s = wait_stats(&sw, Duration::from_secs(60), "all packets through", |s| {
        let a = stats(s, "access");
        let c = stats(s, "core");
        a.rx == n_up
            && c.rx == n_down
            && a.tx + c.tx + a.tx_dropped.total() + c.tx_dropped.total() >= n_up + n_down
    });
    std::thread::sleep(Duration::from_millis(200));
    let s2 = sw.port_stats().expect("stats");
    assert_eq!(
        format!("{s:?}"),
        format!("{s2:?}"),
        "traffic should have stopped"
    );
    let (a, c) = (stats(&s, "access"), stats(&s, "core"));
    println!("access: {a:?}\ncore: {c:?}");
    a.check().expect("access books");
    c.check().expect("core books");
    assert_eq!(a.forwarded, n_up);
    assert_eq!(c.forwarded, n_down);
    assert_eq!(c.tx, n_up, "every uplink packet leaves on the core port");
    assert_eq!(
        a.tx, n_down,
        "every downlink packet leaves on the access port"
    );
    assert_eq!(a.tx_dropped.total() + c.tx_dropped.total(), 0);
    // The PMDs' own counters agree.
    let (ea, ec) = (access.eth.eth_stats(), core.eth.eth_stats());
    assert_eq!((ea.ipackets, ea.opackets), (n_up, n_down), "{ea:?}");
    assert_eq!((ec.ipackets, ec.opackets), (n_down, n_up), "{ec:?}");
    assert_eq!(access.eth.rx_count(), n_up);
    assert_eq!(core.eth.tx_count(), n_up);

    // Real rte_flow calls: every megaflow Failed with the PMD's message.
    let dump = {
        let start = std::time::Instant::now();
        loop {
            let d = sw.offload_dump().expect("offload dump");
            if !d.is_empty() && d.iter().all(|f| f.state != "pending") {
                break d;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "offload still pending: {d:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    println!("megaflows: {}", dump.len());
    for f in &dump {
        let reason = f.reason.as_deref().unwrap_or("");
        assert_eq!(f.state, "failed", "{f:?}");
        assert!(reason.contains("Function not implemented"), "{f:?}");
    }
    println!(
        "offload reason: {}",
        dump[0].reason.as_deref().unwrap_or("")
    );

    sw.shutdown();
    drop(sw);
    drop(access);
    drop(core);
    drop(factory);

    // Read back, packet by packet.
    let out2 = pcap::read_file(&p2_out).expect("read port 2 output");
    let out1 = pcap::read_file(&p1_out).expect("read port 1 output");
    assert_eq!(out2.len() as u64, n_up);
    assert_eq!(out1.len() as u64, n_down);
    for f in out2.iter().chain(out1.iter()) {
        assert!(ipv4_udp_checksums_ok(f), "bad checksum in {f:02x?}");
    }
    let want2: Vec<Vec<u8>> = up.iter().map(|f| expected_uplink(f)).collect();
    assert_eq!(
        count(&out2),
        count(&want2),
        "port 2 output differs from the rules' verdict"
    );
    assert_eq!(
        count(&out1),
        count(&down),
        "port 1 output differs from the rules' verdict"
    );
    let rewritten = out2.iter().filter(|f| f[26..30] == NAT.octets()).count();
    println!(
        "port 2: {} packets ({} rewritten), port 1: {} packets",
        out2.len(),
        rewritten,
        out1.len()
    );
    assert!(rewritten > 0);

    let free_at_end = pool.free_count();
    println!("mempool free mbufs at shutdown: {free_at_end}");
    assert_eq!(free_at_end, free_at_start, "mbufs leaked");
    drop(pool);
    eal.cleanup();
    let _ = std::fs::remove_dir_all(&dir);
}
