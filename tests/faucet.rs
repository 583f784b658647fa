//! Faucet (PyPI `faucet`, a production OpenFlow 1.3 controller) runs
//! flowmark: one VLAN over nic0, nic1 and vm0; two emulated hosts exchange
//! ARP and IPv4 through nic0 and nic1. ARP requests are flooded by the
//! switch itself, replies and unicast are forwarded, Faucet's learned flows
//! show in dump-flows, and once learned, frames are forwarded without
//! PACKET_INs. Faucet comes from `$FLOWMARK_FAUCET` (its virtualenv's bin
//! directory; scripts/test makes it) or the PATH; without it the test is
//! skipped, unless FLOWMARK_REQUIRE_ORACLES is set.

use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testbed::build;

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/test_env.rs"]
mod test_env;

/// How long anything asynchronous may take before the test fails (Faucet
/// starts in a few seconds on a loaded two-core machine).
const DEADLINE: Duration = Duration::from_secs(60);
/// flowmark's datapath id, and Faucet's dp_id for it.
const DP_ID: u64 = 0x00f1_0e14;

const HOST_A: [u8; 6] = [0x0e, 0, 0, 0, 0x0a, 0x01];
const HOST_B: [u8; 6] = [0x0e, 0, 0, 0, 0x0a, 0x02];
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The directory holding Faucet's `faucet` and `osken-manager`, if any.
fn faucet_bin() -> Option<PathBuf> {
    let dir = match std::env::var_os("FLOWMARK_FAUCET") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .find(|d| d.join("faucet").is_file())?,
    };
    dir.join("faucet").is_file().then_some(dir)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    build::ethernet(dst, src, ethertype, payload)
}

fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr, dst: [u8; 6]) -> Vec<u8> {
    ethernet(dst, sha, 0x0806, &build::arp(op, sha, spa, tha, tpa))
}

fn udp(src: [u8; 6], dst: [u8; 6], sip: Ipv4Addr, dip: Ipv4Addr, n: u8) -> Vec<u8> {
    let ip = build::Ipv4Header::new(sip, dip, 17);
    let l4 = build::udp(ip.pseudo(), 4000, 5000, &[n; 32]);
    ethernet(dst, src, 0x0800, &build::ipv4(&ip, &l4))
}

struct Rig {
    d: daemon::Daemon,
    target: String,
}

impl Rig {
    fn cli(&self, args: &[&str]) -> Value {
        self.d.json(args)
    }

    fn dump_flows(&self) -> String {
        run(Command::new("ovs-ofctl").args([
            "-O",
            "OpenFlow13",
            "--timeout=10",
            "dump-flows",
            &self.target,
        ]))
    }

    fn inject(&self, port: &str, frames: &[Vec<u8>], name: &str) {
        let path = self.d.path(&format!("{name}.pcap"));
        testbed::pcap::write_file(&path, Duration::ZERO, frames.iter().map(Vec::as_slice))
            .expect("pcap written");
        self.cli(&[
            "port",
            "inject",
            port,
            "--pcap",
            path.to_str().expect("utf-8"),
        ]);
    }

    fn take(&self, port: &str) -> Vec<Vec<u8>> {
        daemon::arr(&self.cli(&["port", "capture", port])["frames"])
            .iter()
            .map(|f| {
                let s = f.as_str().expect("hex");
                (0..s.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
                    .collect()
            })
            .collect()
    }

    fn punts(&self) -> u64 {
        self.cli(&["pmd", "stats"]).as_array().map_or(0, |a| {
            a.iter()
                .filter_map(|p| p["controller_punts"].as_u64())
                .sum()
        })
    }

    /// Sends `frames` into `port` and waits until `want` (per port: nic0,
    /// nic1, vm0) has left, then checks nothing else did.
    fn exchange(&self, port: &str, frames: &[Vec<u8>], want: [Vec<Vec<u8>>; 3], what: &str) {
        let names = ["nic0", "nic1", "vm0"];
        for n in names {
            self.take(n);
        }
        self.inject(port, frames, what);
        let mut got: [Vec<Vec<u8>>; 3] = Default::default();
        let deadline = Instant::now() + DEADLINE;
        loop {
            for (g, n) in got.iter_mut().zip(names) {
                g.extend(self.take(n));
            }
            if got.iter().zip(&want).all(|(g, w)| g.len() >= w.len()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: want {:?} frames per port, got {:?}",
                want.iter().map(Vec::len).collect::<Vec<_>>(),
                got.iter().map(Vec::len).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(got, want, "{what}");
    }
}

fn wait_listening(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} listens on {port}; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn faucet_runs_flowmark() {
    faucet_switches_with(Variant::Plain);
}

/// Faucet with `group_table: True` floods through groups (one `all` group
/// per VLAN, a bucket per port) and learns as before.
#[test]
fn faucet_runs_flowmark_with_group_tables() {
    faucet_switches_with(Variant::GroupTables);
}

/// Faucet with meters: an ACL on nic0 meters UDP through a 1 packet/s
/// meter, and `packetin_pps` puts a meter on PACKET_INs. Faucet adds both;
/// a burst of UDP from A mostly drops at the meter, counted as such, and
/// everything else switches as before.
#[test]
fn faucet_runs_flowmark_with_meters() {
    faucet_switches_with(Variant::Meters);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Plain,
    GroupTables,
    Meters,
}

fn faucet_switches_with(variant: Variant) {
    let group_table = variant == Variant::GroupTables;
    let meters = variant == Variant::Meters;
    let Some(bin) = faucet_bin() else {
        assert!(
            !test_env::oracles_required(),
            "Faucet not found and FLOWMARK_REQUIRE_ORACLES=1: scripts/test installs it in a venv \
             (python3 -m venv DIR && DIR/bin/pip install faucet) and sets FLOWMARK_FAUCET=DIR/bin"
        );
        eprintln!("notice: Faucet not found (set FLOWMARK_FAUCET); the Faucet test is skipped");
        return;
    };
    if !test_env::oracle("ovs-ofctl", "--version", "openvswitch-common") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();

    // Faucet: its OpenFlow listener, Prometheus exporter and logs are the
    // test's own.
    let of_port = free_port();
    let prom_port = free_port();
    let config = dir.join("faucet.yaml");
    let (meter_conf, packetin, nic0_acl) = if meters {
        (
            "meters:\n  slow:\n    meter_id: 1\n    entry:\n      flags: \"PKTPS\"\n      bands: [{type: \"DROP\", rate: 1}]\nacls:\n  metered:\n    - rule:\n        dl_type: 0x800\n        nw_proto: 17\n        actions:\n          meter: slow\n          allow: 1\n    - rule:\n        actions:\n          allow: 1\n",
            "    packetin_pps: 1000\n",
            "        acls_in: [metered]\n",
        )
    } else {
        ("", "", "")
    };
    std::fs::write(
        &config,
        format!(
            "{meter_conf}vlans:\n  office:\n    vid: 100\ndps:\n  flowmark:\n    dp_id: {DP_ID}\n    hardware: \"Open vSwitch\"\n    ignore_learn_ins: 0\n    group_table: {}\n{packetin}    interfaces:\n      1:\n        name: \"nic0\"\n        native_vlan: office\n{nic0_acl}      2:\n        name: \"nic1\"\n        native_vlan: office\n      3:\n        name: \"vm0\"\n        native_vlan: office\n",
            if group_table { "True" } else { "False" }
        ),
    )
    .expect("faucet config");
    let path = std::env::join_paths(
        std::iter::once(bin.clone()).chain(
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default(),
        ),
    )
    .expect("PATH");
    let faucet_log = dir.join("faucet.log");
    let _faucet = daemon::KillOnDrop(
        Command::new(bin.join("faucet"))
            .arg(format!("--ryu-ofp-tcp-listen-port={of_port}"))
            .arg("--ryu-ofp-listen-host=127.0.0.1")
            .env("PATH", path)
            .env("FAUCET_CONFIG", &config)
            .env("FAUCET_LOG", &faucet_log)
            .env("FAUCET_EXCEPTION_LOG", dir.join("faucet-exception.log"))
            .env("FAUCET_PROMETHEUS_ADDR", "127.0.0.1")
            .env("FAUCET_PROMETHEUS_PORT", prom_port.to_string())
            .stdout(std::fs::File::create(dir.join("faucet.out")).expect("file"))
            .stderr(std::fs::File::create(dir.join("faucet.err")).expect("file"))
            .spawn()
            .expect("faucet starts"),
    );
    wait_listening(of_port, "Faucet", &dir.join("faucet.err"));

    // flowmark connects to Faucet and listens for ovs-ofctl.
    let listen = free_port();
    let d = daemon::Daemon::start(Some(&format!(
        "pmd_cores = [0]\n[[port]]\nname = \"nic0\"\ntype = \"testbed-nic\"\n[[port]]\nname = \"nic1\"\ntype = \"testbed-nic\"\n[[port]]\nname = \"vm0\"\ntype = \"testbed-vm\"\n[openflow]\ncontroller = \"tcp:127.0.0.1:{of_port}\"\nlisten = \"ptcp:{listen}:127.0.0.1\"\ndatapath_id = {DP_ID}\n"
    )));
    wait_listening(listen, "flowmark", &faucet_log);
    let rig = Rig {
        d,
        target: format!("tcp:127.0.0.1:{listen}"),
    };
    let logs = || {
        format!(
            "faucet.log:\n{}\nfaucet-exception.log:\n{}",
            std::fs::read_to_string(&faucet_log).unwrap_or_default(),
            std::fs::read_to_string(dir.join("faucet-exception.log")).unwrap_or_default(),
        )
    };

    // Faucet's pipeline is in: its broadcast flood rule (table 3), which
    // runs the VLAN's flood group with group tables.
    let flood = if group_table {
        "dl_dst=ff:ff:ff:ff:ff:ff actions=group:"
    } else {
        "dl_dst=ff:ff:ff:ff:ff:ff actions=pop_vlan"
    };
    let deadline = Instant::now() + DEADLINE;
    while !rig.dump_flows().contains(flood) {
        assert!(
            Instant::now() < deadline,
            "Faucet programmed flowmark:\n{}\n{}",
            rig.dump_flows(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    if meters {
        let dump = run(Command::new("ovs-ofctl").args([
            "-O",
            "OpenFlow13",
            "--timeout=10",
            "dump-meters",
            &rig.target,
        ]));
        for want in [
            "meter=1 pktps bands=\ntype=drop rate=1",
            "meter=controller pktps bands=\ntype=drop rate=1000",
        ] {
            assert!(
                dump.contains(want),
                "Faucet added {want}:\n{dump}\n{}",
                logs()
            );
        }
        assert!(
            rig.dump_flows().contains("actions=meter:1,"),
            "the ACL's flow meters:\n{}",
            rig.dump_flows()
        );
    }

    // A asks for B: flooded by the switch to nic1 and vm0, not back to nic0.
    let request = arp(1, HOST_A, IP_A, [0; 6], IP_B, [0xff; 6]);
    rig.exchange(
        "nic0",
        std::slice::from_ref(&request),
        [vec![], vec![request.clone()], vec![request.clone()]],
        "ARP request flooded",
    );
    // B answers A: forwarded to nic0 only (A was learned).
    let reply = arp(2, HOST_B, IP_B, HOST_A, IP_A, HOST_A);
    let deadline = Instant::now() + DEADLINE;
    while !rig.dump_flows().contains("dl_dst=0e:00:00:00:0a:01") {
        assert!(Instant::now() < deadline, "Faucet learned A:\n{}", logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    rig.exchange(
        "nic1",
        std::slice::from_ref(&reply),
        [vec![reply.clone()], vec![], vec![]],
        "ARP reply forwarded",
    );
    // Both learned: Faucet's flows for both hosts are in the switch.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let dump = rig.dump_flows();
        let learned = ["0e:00:00:00:0a:01", "0e:00:00:00:0a:02"].iter().all(|m| {
            dump.contains(&format!("dl_src={m}")) && dump.contains(&format!("dl_dst={m}"))
        });
        if learned {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "learned flows in dump-flows:\n{dump}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // `flowmark flow dump` shows them too, with Faucet's instructions.
    let dump = rig.cli(&["flow", "dump"]).to_string();
    for want in [
        "dl_src=0e:00:00:00:0a:01",
        "dl_dst=0e:00:00:00:0a:02",
        "goto_table:",
    ] {
        assert!(dump.contains(want), "flow dump shows {want}: {dump}");
    }
    // Unicast both ways, forwarded by the switch alone: no PACKET_IN.
    let punts = rig.punts();
    assert!(punts >= 2, "Faucet learned from PACKET_INs ({punts} punts)");
    let a_to_b: Vec<Vec<u8>> = (0..5).map(|i| udp(HOST_A, HOST_B, IP_A, IP_B, i)).collect();
    let b_to_a: Vec<Vec<u8>> = (0..5).map(|i| udp(HOST_B, HOST_A, IP_B, IP_A, i)).collect();
    if meters {
        // The meter's bucket holds one packet and gains one a second: of a
        // burst of 5, one or two pass; the rest are counted as dropped by it.
        rig.take("nic1");
        rig.inject("nic0", &a_to_b, "metered");
        let nic0 = || -> Value {
            daemon::arr(&rig.cli(&["port", "stats"]))
                .iter()
                .find(|p| p["name"] == "nic0")
                .cloned()
                .expect("nic0 stats")
        };
        let deadline = Instant::now() + DEADLINE;
        let mut got = Vec::new();
        loop {
            got.extend(rig.take("nic1"));
            let metered = nic0()["rx_dropped"]["meter"].as_u64().unwrap_or(0);
            if got.len() as u64 + metered == 5 {
                assert!(
                    (1..=2).contains(&got.len()),
                    "{} passed the meter",
                    got.len()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "A's UDP forwarded or metered: {} and {metered}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        rig.exchange(
            "nic0",
            &a_to_b,
            [vec![], a_to_b.clone(), vec![]],
            "IPv4 A to B",
        );
    }
    rig.exchange(
        "nic1",
        &b_to_a,
        [b_to_a.clone(), vec![], vec![]],
        "IPv4 B to A",
    );
    assert_eq!(rig.punts(), punts, "learned traffic makes no PACKET_IN");
    assert!(
        std::fs::read_to_string(dir.join("faucet-exception.log"))
            .unwrap_or_default()
            .trim()
            .is_empty(),
        "Faucet raised no exception:\n{}",
        logs()
    );
}
