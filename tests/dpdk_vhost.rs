//! VM traffic over vhost-user: `dpdk-testpmd` with `net_virtio_user0`
//! (the VM, pinned to core 0) sends in txonly mode into a flowmark `vhost`
//! port (server mode; flowmark's PMD on core 1), forwarded to `net_null`.
//! The VM's TX-packets equal flowmark's rx on the port; killing the VM side
//! and starting it again resumes traffic without restarting flowmark.
//! Needs `dpdk-testpmd` (Debian's dpdk-dev). Its own process.
#![cfg(feature = "dpdk")]

mod dpdk_common;

use dpdk_common::*;
use flowmark::dpdk::{DpdkPortFactory, DpdkPortSpec, Eal, Mbuf, Mempool};
use flowmark::switch::{Switch, SwitchConfig};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs testpmd as the VM: txonly for `secs` seconds, `stop` (its final
/// statistics), a pause so flowmark drains the virtqueue, then `quit` (the
/// VM side goes away). Returns its port's TX-packets.
fn run_vm(sock: &Path, prefix: &str, secs: u64) -> u64 {
    let _guard = RuntimeDirGuard(prefix.to_string());
    let mut child = Command::new("dpdk-testpmd")
        .args([
            "--lcores",
            "0@0,1@0",
            "--no-huge",
            "-m",
            "512",
            "--no-pci",
            "--no-telemetry",
            "--file-prefix",
            prefix,
            "--vdev",
            &format!("net_virtio_user0,path={},queues=1", sock.display()),
            "--",
            "-i",
            "--total-num-mbufs=8192",
            "--nb-cores=1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dpdk-testpmd (apt-get install dpdk-dev)");
    let mut stdin = child.stdin.take().expect("testpmd stdin");
    let mut say = |cmd: &str| {
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .expect("write to testpmd");
        stdin.flush().expect("flush");
    };
    std::thread::sleep(Duration::from_secs(1));
    say("set fwd txonly");
    say("start");
    std::thread::sleep(Duration::from_secs(secs));
    say("stop");
    std::thread::sleep(Duration::from_secs(1));
    say("quit");
    drop(stdin);
    let out = child.wait_with_output().expect("testpmd output");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    // The "Forward statistics for port 0" block printed by `stop`.
    let block = text
        .rfind("Forward statistics for port 0")
        .map(|i| &text[i..])
        .unwrap_or_else(|| panic!("no final statistics from testpmd:\n{text}\n{err}"));
    let tx = block
        .split("TX-packets:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no TX-packets in:\n{block}"));
    println!("VM (testpmd) TX-packets: {tx}");
    tx
}

fn rx_settled(sw: &Switch<Mbuf>) -> u64 {
    let mut last = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let s = sw.port_stats().expect("stats");
        let rx = stats(&s, "vm0").rx;
        if rx == last {
            return rx;
        }
        last = rx;
    }
}

#[test]
fn vhost_vm_traffic_and_reconnect() {
    let prefix = prefix("vhost");
    let _guard = RuntimeDirGuard(prefix.clone());
    let dir = scratch("vhost");
    let sock = dir.join("vm0.sock");
    let mut args = eal_args(&prefix);
    args.extend(["-l".to_string(), "1".to_string()]);
    let eal = Eal::init(&args).expect("EAL init");
    let pool = Arc::new(Mempool::create("vhost_test", 16384).expect("mempool"));
    let free_at_start = pool.free_count();
    let mut factory = DpdkPortFactory::new(Arc::clone(&pool));
    let mut sw: Switch<Mbuf> = Switch::start(SwitchConfig {
        pmd_cores: vec![Some(1)],
        ..SwitchConfig::default()
    })
    .expect("switch");
    load_rules(&mut sw, "priority=1,in_port=1,actions=output:2\n");
    let vm = factory
        .make(&DpdkPortSpec::Vhost {
            name: "vm0".into(),
            socket: sock.clone(),
            server: true,
            rxqs: 1,
        })
        .expect("vhost port");
    assert_eq!(vm.eth.driver(), "net_vhost");
    assert!(vm.flow_device.is_none());
    let null = factory
        .make(&DpdkPortSpec::Dpdk {
            name: "null0".into(),
            devargs: "net_null0,no-rx=1".into(),
            rxqs: 1,
        })
        .expect("net_null port");
    sw.add_port("vm0", "vhost", Some(1), vm.port.clone(), None)
        .expect("add vm0");
    sw.add_port(
        "null0",
        "dpdk",
        Some(2),
        null.port.clone(),
        null.flow_device.clone(),
    )
    .expect("add null0");
    println!("vm0 link before the VM: {:?}", vm.eth.link());

    let mut total_tx = 0;
    for round in 0..2 {
        let vm_prefix = format!("{prefix}_vm{round}");
        let before = rx_settled(&sw);
        let tx = run_vm(&sock, &vm_prefix, 3);
        let after = rx_settled(&sw);
        println!(
            "round {round}: VM sent {tx}, flowmark received {} on vm0; link now {:?}",
            after - before,
            vm.eth.link()
        );
        assert!(tx > 0, "the VM sent nothing in round {round}");
        assert_eq!(
            after - before,
            tx,
            "round {round}: rx on vm0 != VM TX-packets"
        );
        total_tx += tx;
    }
    let s = sw.port_stats().expect("stats");
    let (v, n) = (stats(&s, "vm0"), stats(&s, "null0"));
    v.check().expect("vm0 books");
    n.check().expect("null0 books");
    assert_eq!(v.rx, total_tx);
    assert_eq!(v.forwarded, total_tx);
    assert_eq!(n.tx_attempted, total_tx);
    let es = vm.eth.eth_stats();
    println!("vm0 PMD stats: {es:?}; null0 tx {}", n.tx);
    assert_eq!(es.ipackets, total_tx);

    sw.shutdown();
    drop(sw);
    drop(vm);
    drop(null);
    drop(factory);
    let start = Instant::now();
    while pool.free_count() != free_at_start && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pool.free_count(), free_at_start, "mbufs leaked");
    drop(pool);
    eal.cleanup();
    let _ = std::fs::remove_dir_all(&dir);
}
