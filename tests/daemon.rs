//! `flowmark run` as operators drive it: each test starts the daemon as a
//! subprocess on a temporary socket, talks to it with the CLI (`--json`)
//! or raw socket lines, and stops it with SIGTERM. Waits are bounded
//! polls of the daemon's state.

#[path = "support/daemon.rs"]
mod harness;

use harness::*;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const GTP_FLOWS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gtp.flows");

fn nic_port(m: &Value) -> bool {
    m["port"] == "nic0" || m["port"] == "nic1"
}

fn offload_port<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no offload line for {name}: {status}"))
}

/// UDP frames `src → dst` for `n` sources.
fn udp_frames(dst: Ipv4Addr, n: u8) -> Vec<Vec<u8>> {
    (1..=n)
        .map(|i| {
            testbed::build::udp4(
                Ipv4Addr::new(172, 16, 0, i),
                dst,
                1000 + u16::from(i),
                4000,
                &[0; 18],
            )
        })
        .collect()
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    testbed::pcap::write_file(path, Duration::ZERO, frames.iter().map(Vec::as_slice))
        .expect("write pcap");
}

#[test]
fn gtp_rules_offload_and_accounting() {
    let d = Daemon::start(None);
    let added = d.json(&["flow", "add", "--file", GTP_FLOWS]);
    assert_eq!(added["added"], 7, "{added}");
    d.inject("nic0", "flows=10000,count=10000,kind=gtp-up");
    d.quiesce();

    let nic_flows: Vec<Value> = d.megaflows().into_iter().filter(nic_port).collect();
    assert!(!nic_flows.is_empty());
    for m in &nic_flows {
        assert_eq!(m["state"], "offloaded", "{m}");
    }
    let status = d.json(&["offload", "status"]);
    for name in ["nic0", "nic1"] {
        let line = offload_port(&status, name);
        let count = nic_flows.iter().filter(|m| m["port"] == name).count() as u64;
        assert_eq!(u(&line["rules_installed"]), count, "{line}");
        assert_eq!(
            u(&line["device_rules"]),
            count,
            "the NIC's own count: {line}"
        );
    }
    let offloaded = arr(&d.json(&["megaflow", "dump", "--state", "offloaded"]));
    assert_eq!(offloaded.len(), nic_flows.len());
    let mut marks: Vec<u64> = offloaded.iter().map(|m| u(&m["mark"])).collect();
    assert!(
        marks.iter().all(|m| *m > 0),
        "every offloaded megaflow has a mark"
    );
    marks.sort_unstable();
    marks.dedup();
    assert_eq!(marks.len(), offloaded.len(), "marks are distinct");

    let mark_hits = |d: &Daemon| -> u64 {
        arr(&d.json(&["pmd", "stats"]))
            .iter()
            .map(|p| u(&p["mark_hits"]))
            .sum()
    };
    let before = mark_hits(&d);
    d.inject("nic0", "flows=10000,count=10000,kind=gtp-up");
    d.inject("nic1", "flows=1000,count=5000,kind=gtp-down");
    let ports = d.quiesce();
    assert!(
        mark_hits(&d) > before,
        "the second injection takes the mark path"
    );
    check_accounting(&ports);
    let nic0 = ports.iter().find(|p| p["name"] == "nic0").unwrap();
    assert_eq!(u(&nic0["rx"]), 20_000);
    d.stop();
}

/// The rules of the revalidation tests: X is deleted; V and Z decide what
/// X's megaflows become.
const REVALIDATION_RULES: &str = "\
priority=100,ip,nw_dst=10.0.0.0/8,actions=output:3
priority=50,in_port=2,ip,nw_dst=10.1.0.0/16,actions=output:1
priority=10,in_port=2,ip,actions=output:1
priority=5,in_port=1,ip,actions=output:2
priority=0,actions=drop
";

#[test]
fn deleting_a_rule_revalidates_megaflows_and_nic_rules() {
    let d = Daemon::start(None);
    let rules = d.path("rules.flows");
    std::fs::write(&rules, REVALIDATION_RULES).unwrap();
    d.json(&["flow", "add", "--file", rules.to_str().unwrap()]);
    // A: nic0 → 10.2/16 (X's, match still holds after); B: nic1 → 10.1/16
    // (X's, V's /16 will not fit its /8); C: nic1 → 20/8 (never used X).
    let (a, b, c) = (d.path("a.pcap"), d.path("b.pcap"), d.path("c.pcap"));
    write_pcap(&a, &udp_frames(Ipv4Addr::new(10, 2, 0, 1), 20));
    write_pcap(&b, &udp_frames(Ipv4Addr::new(10, 1, 0, 1), 20));
    write_pcap(&c, &udp_frames(Ipv4Addr::new(20, 0, 0, 1), 20));
    d.inject_pcap("nic0", &a);
    d.inject_pcap("nic1", &b);
    d.inject_pcap("nic1", &c);
    d.quiesce();
    let before = d.megaflows();
    assert_eq!(before.len(), 3, "{before:?}");
    let find = |flows: &[Value], port: &str, dst: &str| -> Option<Value> {
        flows
            .iter()
            .find(|m| {
                m["port"] == port
                    && m["megaflow"]
                        .as_str()
                        .unwrap_or_else(|| panic!("megaflow text missing: {m}"))
                        .contains(dst)
            })
            .cloned()
    };
    let mf_a = find(&before, "nic0", "nw_dst=10.0.0.0/8").expect("A");
    let mf_b = find(&before, "nic1", "nw_dst=10.0.0.0/8").expect("B");
    let mf_c = find(&before, "nic1", "nw_dst=16.0.0.0/4").expect("C");
    for m in [&mf_a, &mf_b, &mf_c] {
        assert_eq!(m["state"], "offloaded", "{m}");
    }
    assert_eq!(mf_a["actions"], serde_json::json!(["output:3"]));
    assert_eq!(mf_b["actions"], serde_json::json!(["output:3"]));

    // Revalidation runs on the revalidator thread, and only for the
    // megaflows the change can affect (A and B went through the rule).
    let reval = |d: &Daemon| -> (u64, u64, u64) {
        arr(&d.json(&["pmd", "stats"]))
            .iter()
            .fold((0, 0, 0), |acc, p| {
                let r = &p["revalidator"];
                (
                    acc.0 + u(&r["translated"]),
                    acc.1 + u(&r["skipped"]),
                    acc.2 + u(&r["megaflows"]),
                )
            })
    };
    let (translated, skipped, known) = reval(&d);
    assert_eq!(known, 3, "the revalidator knows every megaflow");
    let del = d.json(&[
        "flow",
        "del",
        "--strict",
        "priority=100,ip,nw_dst=10.0.0.0/8",
    ]);
    assert_eq!(del["deleted"], 1, "{del}");
    // The CLI returns once the revalidator has judged the change.
    let (translated2, skipped2, known2) = reval(&d);
    assert_eq!(translated2 - translated, 2, "A and B re-translated");
    assert_eq!(skipped2 - skipped, 1, "C not: it never used the rule");
    assert_eq!(known2, 2, "B removed");
    d.wait_for("the megaflows to be revalidated", |d| {
        d.megaflows()
            .iter()
            .all(|m| m["actions"] != serde_json::json!(["output:3"]))
    });
    d.quiesce();
    let after = d.megaflows();
    let a2 = after
        .iter()
        .find(|m| m["ufid"] == mf_a["ufid"])
        .expect("A stays");
    assert_eq!(a2["mark"], mf_a["mark"], "A keeps its mark");
    assert_eq!(a2["state"], "offloaded");
    assert_eq!(
        a2["actions"],
        serde_json::json!(["output:2"]),
        "A has Z's actions"
    );
    assert!(after.iter().all(|m| m["ufid"] != mf_b["ufid"]), "B is gone");
    let c2 = after
        .iter()
        .find(|m| m["ufid"] == mf_c["ufid"])
        .expect("C stays");
    assert_eq!(
        (&c2["mark"], &c2["actions"]),
        (&mf_c["mark"], &mf_c["actions"])
    );
    // NIC rules removed = megaflows removed.
    let status = d.json(&["offload", "status"]);
    assert_eq!(u(&offload_port(&status, "nic0")["device_rules"]), 1);
    assert_eq!(u(&offload_port(&status, "nic1")["device_rules"]), 1);
    assert_eq!(u(&offload_port(&status, "nic1")["rules_installed"]), 1);

    // The next packets of A get the new actions: nic1, not vm0.
    let (nic1_tx, vm0_tx) = (
        u(&d.port_stats("nic1")["tx"]),
        u(&d.port_stats("vm0")["tx"]),
    );
    d.inject_pcap("nic0", &a);
    d.quiesce();
    assert_eq!(u(&d.port_stats("nic1")["tx"]), nic1_tx + 20);
    assert_eq!(u(&d.port_stats("vm0")["tx"]), vm0_tx);
    d.stop();
}

#[test]
fn flow_mod_keeps_marks_and_counts_add_up() {
    let d = Daemon::start(None);
    d.json(&["flow", "add", "priority=10,in_port=1,ip,actions=output:2"]);
    d.json(&["flow", "add", "priority=10,in_port=2,ip,actions=output:1"]);
    d.json(&["flow", "add", "priority=0,actions=drop"]);
    d.inject("nic0", "flows=200,count=3000");
    d.quiesce();
    let before: Vec<Value> = d.megaflows();
    assert!(!before.is_empty());
    assert!(
        before.iter().all(|m| m["state"] == "offloaded"),
        "{before:?}"
    );

    let r = d.json(&["flow", "mod", "in_port=1,ip,actions=output:3"]);
    assert_eq!(r["modified"], 1, "{r}");
    d.wait_for("the new actions", |d| {
        d.megaflows()
            .iter()
            .all(|m| m["actions"] == serde_json::json!(["output:3"]))
    });
    let after = d.megaflows();
    assert_eq!(after.len(), before.len());
    for m in &before {
        let m2 = after
            .iter()
            .find(|x| x["ufid"] == m["ufid"])
            .expect("same megaflow");
        assert_eq!(m2["mark"], m["mark"], "mark kept: {m2}");
    }
    let vm0_tx = u(&d.port_stats("vm0")["tx"]);
    let nic1_tx = u(&d.port_stats("nic1")["tx"]);
    d.inject("nic0", "flows=200,count=2000");
    d.quiesce();
    assert_eq!(u(&d.port_stats("vm0")["tx"]), vm0_tx + 2000, "new actions");
    assert_eq!(
        u(&d.port_stats("nic1")["tx"]),
        nic1_tx,
        "old actions no more"
    );

    let flows = arr(&d.json(&["flow", "dump"]));
    let total: u64 = flows.iter().map(|f| u(&f["n_packets"])).sum();
    assert_eq!(total, 5000, "{flows:?}");
    let modified = flows
        .iter()
        .find(|f| f["actions"] == "output:3")
        .expect("the modified rule");
    assert_eq!(u(&modified["n_packets"]), 5000);
    let text = d.try_cli(&["flow", "dump"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(" cookie=0x0, duration=") && text.contains("n_packets=5000, n_bytes="),
        "{text}"
    );
    d.stop();
}

#[test]
fn idle_megaflows_and_their_nic_rules_expire() {
    let d = Daemon::start(Some("max_idle_ms = 500\n"));
    d.json(&["flow", "add", "--file", GTP_FLOWS]);
    d.inject("nic0", "flows=1000,count=3000,kind=gtp-up");
    d.quiesce();
    let status = d.json(&["offload", "status"]);
    assert!(
        u(&offload_port(&status, "nic0")["device_rules"]) > 0,
        "{status}"
    );
    d.wait_for("megaflows and NIC rules to go", |d| {
        let status = d.json(&["offload", "status"]);
        let rules: u64 = ["nic0", "nic1"]
            .iter()
            .map(|n| {
                u(&offload_port(&status, n)["device_rules"])
                    + u(&offload_port(&status, n)["rules_installed"])
            })
            .sum();
        rules == 0 && u(&status["megaflows"]) == 0
    });
    // Counts, not time: every megaflow went by expiry, and every NIC rule
    // inserted for them was deleted.
    let pmds = arr(&d.json(&["pmd", "stats"]));
    let installed: u64 = pmds.iter().map(|p| u(&p["megaflows_installed"])).sum();
    let removed: u64 = pmds.iter().map(|p| u(&p["megaflows_removed"])).sum();
    assert!(installed > 0);
    assert_eq!(removed, installed, "{pmds:?}");
    // The longest poll-loop iteration is reported (it ran upcalls).
    for p in &pmds {
        assert!(u(&p["max_iteration_cycles"]) > 0, "{p}");
        let us = p["max_iteration_us"]
            .as_f64()
            .unwrap_or_else(|| panic!("max_iteration_us: {p}"));
        assert!(us > 0.0, "{p}");
        // Every upcall's cycles are in the histogram, its quantiles ordered.
        let up = &p["upcall_cycles"];
        assert_eq!(u(&up["count"]), u(&p["upcalls"]), "{p}");
        assert!(u(&p["upcalls"]) > 0, "{p}");
        let (p50, p99, max) = (
            u(&up["p50_cycles"]),
            u(&up["p99_cycles"]),
            u(&up["max_cycles"]),
        );
        assert!(0 < p50 && p50 <= p99 && p99 <= max, "{up}");
        let in_buckets: u64 = arr(&up["buckets"]).iter().map(|b| u(&b[1])).sum();
        assert_eq!(in_buckets, u(&up["count"]), "{up}");
    }
    let status = d.json(&["offload", "status"]);
    for n in ["nic0", "nic1"] {
        let p = offload_port(&status, n);
        assert_eq!(u(&p["inserted"]), u(&p["deleted"]), "{p}");
    }
    d.stop();
}

#[test]
fn bad_input_is_answered_and_forwarding_goes_on() {
    let d = Daemon::start(None);
    d.json(&["flow", "add", "priority=10,in_port=1,ip,actions=output:2"]);
    d.inject("nic0", "flows=10,count=100");

    let r = d.raw(b"{\"cmd\": \"port_list\"");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"].as_str().unwrap().contains("malformed request"),
        "{r}"
    );
    let r = d.raw(b"\xff\xfe garbage");
    assert!(
        r["error"].as_str().unwrap().contains("malformed request"),
        "{r}"
    );
    let r = d.raw(br#"{"cmd":"reboot"}"#);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("unknown command \"reboot\""),
        "{r}"
    );
    let r = d.raw(br#"{"cmd":"port_del","nme":"x"}"#);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("bad arguments for port_del"),
        "{r}"
    );

    let e = d.fails(&["flow", "add", "in_port=1,ip,nw_dst=10.0.0.300,actions=drop"]);
    assert!(e.contains("bad flow") && e.contains("10.0.0.300"), "{e}");
    let e = d.fails(&["port", "del", "nope"]);
    assert!(e.contains("no port named \"nope\""), "{e}");
    let e = d.fails(&["port", "inject", "nope", "--generate", "flows=1,count=1"]);
    assert!(e.contains("no port named \"nope\""), "{e}");
    let e = d.fails(&["port", "add", "nic0", "--type", "testbed-vm"]);
    assert!(e.contains("a port named \"nic0\" exists already"), "{e}");
    let e = d.fails(&["port", "add", "x", "--type", "testbed-nix"]);
    assert!(e.contains("unknown port type"), "{e}");
    let e = d.fails(&["trace", "in_port=1,nw_dst=1.2.3.4"]);
    assert!(e.contains("bad packet"), "{e}");
    let e = d.fails(&["megaflow", "dump", "--state", "gone"]);
    assert!(e.contains("unknown state"), "{e}");

    // A config with a typo: the file, the line and the key.
    let config = d.path("typo.toml");
    std::fs::write(&config, "offload = true\nmax_idel_ms = 500\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--socket"])
        .arg(d.path("other.sock"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains(&format!("{}:2: key `max_idel_ms`", config.display())),
        "{e}"
    );

    // Still forwarding.
    let before = d.port_stats("nic0");
    d.inject("nic0", "flows=10,count=100");
    d.quiesce();
    let after = d.port_stats("nic0");
    assert_eq!(u(&after["forwarded"]), u(&before["forwarded"]) + 100);
    d.stop();
}

#[test]
fn nic_reset_reoffers_and_ports_come_and_go() {
    let d = Daemon::start(None);
    d.json(&["flow", "add", "priority=10,in_port=1,ip,actions=output:2"]);
    d.inject("nic0", "flows=10,count=100");
    d.quiesce();
    d.json(&["nic", "reset", "nic0"]);
    d.wait_for("the megaflow to be offloaded again", |d| {
        let status = d.json(&["offload", "status"]);
        u(&offload_port(&status, "nic0")["device_rules"]) == 1
            && u(&offload_port(&status, "nic0")["resets"]) == 1
    });
    let added = d.json(&[
        "port",
        "add",
        "nic2",
        "--type",
        "testbed-nic",
        "--profile",
        "tiny",
        "--rxqs",
        "1",
    ]);
    assert_eq!(added["ofport"], 4);
    let rxqs = arr(&d.json(&["pmd", "rxqs"]));
    assert!(rxqs.iter().any(|r| r["port"] == "nic2"), "{rxqs:?}");
    d.json(&["port", "del", "nic2"]);
    let list = arr(&d.json(&["port", "list"]));
    assert_eq!(list.len(), 3);
    let trace = d.json(&["trace", "in_port=1,udp,nw_dst=10.0.0.1,tp_src=1,tp_dst=2"]);
    assert_eq!(trace["actions"], serde_json::json!(["output:2"]));
    assert_eq!(trace["offload"]["verdict"], "offload", "{trace}");
    assert!(trace["offload"]["rule"]
        .as_str()
        .unwrap()
        .starts_with("flow create"));
    d.stop();
}

/// An upcall storm on nic0 (every packet a new megaflow, as fast as the
/// generator goes) leaves nic1's established flows alone: the PMD spends at
/// most `upcall_budget` upcalls per nic0 burst and drops the rest of the
/// storm, counted, while every nic1 packet that arrives during the storm is
/// forwarded. Decided on counts, never on rates.
#[test]
fn upcall_storm_does_not_starve_established_flows() {
    let d = Daemon::start(Some("upcall_budget = 8\n"));
    // nic0: tp_src is un-wildcarded (to prove the mismatch with the first
    // rule), so each new source port is a new megaflow.
    d.json(&[
        "flow",
        "add",
        "priority=20,in_port=1,udp,tp_src=1,actions=output:3",
    ]);
    d.json(&["flow", "add", "priority=10,in_port=1,ip,actions=drop"]);
    d.json(&["flow", "add", "priority=10,in_port=2,ip,actions=output:3"]);
    // The established flows' megaflows exist before the storm.
    d.inject("nic1", "flows=100,count=1000,seed=2");
    let upcalls = |d: &Daemon| -> u64 {
        arr(&d.json(&["pmd", "stats"]))
            .iter()
            .map(|p| u(&p["upcalls"]))
            .sum()
    };
    let upcalls_before = upcalls(&d);
    let mut storm = d.spawn_cli(&[
        "port",
        "inject",
        "nic0",
        "--generate",
        "flows=300000,count=3000000",
    ]);
    d.wait_for("the storm", |d| upcalls(d) > upcalls_before + 1000);
    let during_from = upcalls(&d);
    const ESTABLISHED: u64 = 20_000;
    d.inject(
        "nic1",
        &format!("flows=100,count={ESTABLISHED},rate=20000,seed=2"),
    );
    let during_to = upcalls(&d);
    // (Killing the client does not stop the daemon's injection thread: the
    // storm goes on until the daemon stops, so nothing below waits for the
    // whole switch to settle.)
    let _ = storm.kill();
    let _ = storm.wait();
    assert!(
        during_to > during_from,
        "the storm overlapped the established traffic ({during_from} → {during_to} upcalls)"
    );
    d.wait_for("nic1's packets to be processed", |d| {
        u(&d.port_stats("nic1")["rx"]) >= 1000 + ESTABLISHED
    });
    let nic1 = d.port_stats("nic1");
    assert_eq!(u(&nic1["rx"]), 1000 + ESTABLISHED, "{nic1}");
    assert_eq!(u(&nic1["forwarded"]), 1000 + ESTABLISHED, "{nic1}");
    assert_eq!(sum_reasons(&nic1["rx_dropped"]), 0, "{nic1}");
    let nic0 = d.port_stats("nic0");
    assert!(
        u(&nic0["rx_dropped"]["upcall_limit"]) > 0,
        "the budget limited the storm: {nic0}"
    );
    d.stop();
}

#[test]
fn two_pmds_share_one_nic_rule_per_megaflow() {
    let d = Daemon::start(Some(
        "pmd_cores = [0, 1]\n\
         [[port]]\nname = \"nic0\"\ntype = \"testbed-nic\"\n\
         [[port]]\nname = \"nic1\"\ntype = \"testbed-nic\"\n\
         [[port]]\nname = \"vm0\"\ntype = \"testbed-vm\"\n",
    ));
    // Each NIC's two rx queues are spread over both PMDs.
    let rxqs = arr(&d.json(&["pmd", "rxqs"]));
    for pmd in [0, 1] {
        assert!(
            rxqs.iter().any(|r| r["pmd"] == pmd && r["port"] == "nic0"),
            "pmd {pmd} polls a queue of nic0: {rxqs:?}"
        );
    }
    d.json(&["flow", "add", "--file", GTP_FLOWS]);
    d.inject("nic0", "flows=5000,count=20000,kind=gtp-up");
    d.quiesce();
    // RSS sent the same megaflow to both PMDs; the NIC holds one rule for it.
    let flows: Vec<Value> = d.megaflows().into_iter().filter(nic_port).collect();
    let mut distinct: Vec<(String, String)> = flows
        .iter()
        .map(|m| (m["port"].to_string(), m["ufid"].to_string()))
        .collect();
    distinct.sort();
    distinct.dedup();
    let status = d.json(&["offload", "status"]);
    let nic0 = distinct.iter().filter(|(p, _)| p == "\"nic0\"").count() as u64;
    assert!(nic0 > 0);
    assert_eq!(u(&offload_port(&status, "nic0")["rules_installed"]), nic0);
    assert_eq!(u(&offload_port(&status, "nic0")["device_rules"]), nic0);
    d.inject("nic0", "flows=5000,count=20000,kind=gtp-up");
    let ports = d.quiesce();
    let pmds = arr(&d.json(&["pmd", "stats"]));
    assert_eq!(pmds.len(), 2);
    for p in &pmds {
        assert!(u(&p["mark_hits"]) > 0, "both PMDs take the mark path: {p}");
    }
    check_accounting(&ports);
    d.stop();
}
