//! Issue 4's acceptance, in-process: the demo on the default testbed
//! (emulated offload NICs nic0/nic1, VM port vm0), every profile, and a NIC
//! reset in the middle of traffic.

use fallback::port::RxDropReason;
use flowmark::demo::{self, Amount, DemoOptions, DemoReport};
use offload::device::Profile;
use std::collections::BTreeMap;

/// Rules whose results do not depend on MAC learning (no NORMAL, no FLOOD),
/// so two runs must forward exactly the same packets.
const FIXED_RULES: &str = include_str!("../examples/gtp-fixed.flows");

fn run(opts: DemoOptions) -> DemoReport {
    let mut sink = Vec::new();
    demo::run(&opts, &mut sink).expect("the demo runs")
}

fn check_accounting(r: &DemoReport) {
    for p in &r.ports {
        p.stats
            .check()
            .unwrap_or_else(|e| panic!("{}: {e}", p.name));
    }
    let rx: u64 = r.ports.iter().map(|p| p.stats.rx).sum();
    let paths = r.paths.mark + r.paths.simple + r.paths.emc + r.paths.dpcls + r.paths.upcall;
    let dropped_before_paths: u64 = r
        .ports
        .iter()
        .map(|p| {
            // Dropped before any path was taken (typed: no field can be missing).
            p.stats.rx_dropped.get(RxDropReason::UpcallLimit)
                + p.stats.rx_dropped.get(RxDropReason::ParseError)
                + p.stats.rx_dropped.get(RxDropReason::NotLinear)
        })
        .sum();
    assert_eq!(rx, paths + dropped_before_paths, "every packet took a path");
    assert_eq!(r.offload.total(), r.megaflows, "state counts add up");
    for (reason, n) in r.offload.rejected.iter().chain(r.offload.failed.iter()) {
        assert!(!reason.trim().is_empty() && *n > 0, "a reason for each");
    }
}

#[test]
fn generic_profile_offloads_and_balances() {
    let r = run(DemoOptions {
        flows: 10_000,
        amount: Amount::Seconds(3.0),
        live: false,
        ..DemoOptions::default()
    });
    check_accounting(&r);
    assert!(r.seconds.len() >= 3);
    for s in &r.seconds[1..] {
        assert!(
            s.paths.mark * 100 >= s.nic_packets * 95,
            "second {}: {} of {} NIC packets on the mark path",
            s.second,
            s.paths.mark,
            s.nic_packets
        );
    }
    // VM-port packets never take the mark path: vm0 has no flow device.
    let nic_rx: u64 = r
        .ports
        .iter()
        .filter(|p| p.name != "vm0")
        .map(|p| p.stats.rx)
        .sum();
    let vm = r.ports.iter().find(|p| p.name == "vm0").expect("vm0");
    assert!(vm.stats.rx > 0);
    assert!(r.paths.mark <= nic_rx);
    assert!(r.offload.software > 0, "vm0's megaflows stay in software");
    assert!(r.offload.offloaded > 0);
}

fn fixed_run(profile: Profile, packets: u64) -> DemoReport {
    run(DemoOptions {
        flows: 2_000,
        amount: Amount::Packets(packets),
        profile,
        live: false,
        rules: Some(FIXED_RULES.to_string()),
        nic_only: true,
        capture: true,
        reset_nic_after_packets: None,
    })
}

fn tx_per_port(r: &DemoReport) -> BTreeMap<String, u64> {
    r.ports
        .iter()
        .map(|p| (p.name.clone(), p.stats.tx))
        .collect()
}

#[test]
fn no_mark_changes_speed_never_behaviour() {
    const N: u64 = 200_000;
    let generic = fixed_run(Profile::Generic, N);
    let no_mark = fixed_run(Profile::NoMark, N);
    for r in [&generic, &no_mark] {
        check_accounting(r);
        assert_eq!(r.packets_sent, N);
        let rx: u64 = r.ports.iter().map(|p| p.stats.rx).sum();
        assert_eq!(rx, N, "lossless: every packet sent was received");
        assert!(r.rx_missed.values().all(|m| *m == 0));
    }
    assert!(generic.paths.mark > 0);
    assert_eq!(no_mark.paths.mark, 0);
    assert_eq!(no_mark.offload.offloaded, 0);
    assert!(!no_mark.offload.rejected.is_empty());
    for reason in no_mark.offload.rejected.keys() {
        assert!(reason.contains("MARK"), "{reason}");
    }
    assert_eq!(tx_per_port(&generic), tx_per_port(&no_mark));
    assert_eq!(generic.per_flow_tx, no_mark.per_flow_tx);
    let per_flow = generic.per_flow_tx.as_ref().expect("captured");
    assert!(per_flow.values().map(|m| m.len()).sum::<usize>() > 1000);
}

#[test]
fn tiny_profile_fills_the_table_and_stays_correct() {
    let r = run(DemoOptions {
        flows: 2_000,
        amount: Amount::Seconds(2.0),
        profile: Profile::Tiny,
        live: false,
        ..DemoOptions::default()
    });
    check_accounting(&r);
    // nic0 carries GTP-U plus signalling from 47 eNodeBs: more than 16 megaflows.
    assert_eq!(r.rules_installed.get("nic0"), Some(&16));
    assert!(r.rules_installed.values().all(|n| *n <= 16));
    assert!(!r.offload.failed.is_empty());
    for reason in r.offload.failed.keys() {
        assert!(reason.contains("no space"), "{reason}");
    }
}

#[test]
fn nic_reset_mid_traffic_reoffloads_without_misforwarding() {
    const N: u64 = 400_000;
    let clean = fixed_run(Profile::Generic, N);
    let mut opts = DemoOptions {
        flows: 2_000,
        amount: Amount::Packets(N),
        live: false,
        rules: Some(FIXED_RULES.to_string()),
        nic_only: true,
        capture: true,
        reset_nic_after_packets: Some(N / 3),
        ..DemoOptions::default()
    };
    opts.profile = Profile::Generic;
    let reset = run(opts);
    check_accounting(&reset);
    assert_eq!(reset.nic_resets, 1, "the reset happened during traffic");
    assert_eq!(
        reset.per_flow_tx, clean.per_flow_tx,
        "same packets to the same ports"
    );
    assert_eq!(tx_per_port(&reset), tx_per_port(&clean));
    // Re-offloaded: nic0 has its rules back.
    assert_eq!(
        reset.rules_installed.get("nic0"),
        clean.rules_installed.get("nic0")
    );
}
