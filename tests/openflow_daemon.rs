//! `flowmark run` with `[openflow] listen`: flows added by ovs-ofctl over
//! OpenFlow 1.3 take effect in the datapath (packets counted on them,
//! megaflows installed). Skipped without ovs-ofctl unless
//! FLOWMARK_REQUIRE_ORACLES is set.

#[path = "support/daemon.rs"]
mod harness;
#[path = "support/test_env.rs"]
mod test_env;

use harness::{lines_of, Daemon, KillOnDrop};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running `flowmark run` with an OpenFlow listener.
struct Rig {
    daemon: Daemon,
    dir: PathBuf,
    target: String,
}

impl Rig {
    /// None when ovs-ofctl is missing (and not required).
    fn start() -> Option<Rig> {
        if !test_env::oracle("ovs-ofctl", "--version", "openvswitch-common") {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let daemon = Daemon::start(Some(&format!(
            "pmd_cores = [0]\n[[port]]\nname = \"nic0\"\ntype = \"testbed-nic\"\n[[port]]\nname = \"nic1\"\ntype = \"testbed-nic\"\n[[port]]\nname = \"vm0\"\ntype = \"testbed-vm\"\n[openflow]\nlisten = \"ptcp:{port}\"\n"
        )));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the OpenFlow listener came up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Rig {
            dir: daemon.dir.path().to_path_buf(),
            daemon,
            target: format!("tcp:127.0.0.1:{port}"),
        })
    }

    /// `port stats --json`'s entry for port `name`.
    fn port_stats(&self, name: &str) -> serde_json::Value {
        let stats: serde_json::Value =
            serde_json::from_str(&self.flowmark(&["port", "stats", "--json"])).expect("json");
        stats
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name).cloned())
            .expect("port stats")
    }

    /// The CLI refuses `args`, saying `why`.
    fn cli_refuses(&self, args: &[&str], why: &str) {
        let out = self.daemon.try_cli(args);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && said.contains(why), "{said}");
    }

    fn ofctl(&self, args: &[&str]) -> String {
        run(Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow13", "--timeout=10", args[0], &self.target])
            .args(&args[1..]))
    }

    /// `ovs-ofctl --bundle add-flows FILE` (one ONF bundle), not yet run.
    fn bundle_add_flows(&self, file: &Path) -> Command {
        let mut c = Command::new("ovs-ofctl");
        c.args([
            "-O",
            "OpenFlow13",
            "--timeout=60",
            "--bundle",
            "add-flows",
            &self.target,
        ])
        .arg(file);
        c
    }

    /// A control command that must succeed; its output.
    fn flowmark(&self, args: &[&str]) -> String {
        let out = self.daemon.try_cli(args);
        assert!(
            out.status.success(),
            "flowmark {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn openflow_flows_take_effect_in_the_datapath() {
    let Some(rig) = Rig::start() else {
        return;
    };
    let ofctl = |args: &[&str]| rig.ofctl(args);
    let flows = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gtp.flows"))
        .expect("gtp flows");
    let flows: Vec<&str> = flows
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    for f in &flows {
        ofctl(&["add-flow", f]);
    }
    let fm = |args: &[&str]| rig.flowmark(args);
    fm(&[
        "port",
        "inject",
        "nic1",
        "--generate",
        "flows=8,count=200,kind=gtp-up",
    ]);
    // Counters reach dump-flows once the PMD has processed the packets:
    // poll for them (no fixed sleep decides the outcome).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (dump, total) = loop {
        let dump = ofctl(&["dump-flows"]);
        let total: u64 = dump
            .split("n_packets=")
            .skip(1)
            .filter_map(|s| s.split(',').next()?.parse::<u64>().ok())
            .sum();
        if total >= 200 || Instant::now() > deadline {
            break (dump, total);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        total, 200,
        "every injected packet counted on an OpenFlow rule:\n{dump}"
    );
    assert_eq!(
        dump.lines().filter(|l| l.contains("actions=")).count(),
        flows.len()
    );
    let megaflows = fm(&["megaflow", "dump"]);
    assert!(
        megaflows.contains("ufid:"),
        "megaflows installed:\n{megaflows}"
    );
}

#[test]
fn controller_action_sends_packet_in() {
    let Some(rig) = Rig::start() else {
        return;
    };
    rig.ofctl(&["add-flow", "priority=10,in_port=2,udp,actions=controller"]);
    // A monitoring controller connection prints every asynchronous message.
    let mut monitor = KillOnDrop(
        // Line-buffered: ovs-ofctl's stdio buffers a pipe fully.
        Command::new("stdbuf")
            .args(["-oL", "ovs-ofctl"])
            .arg("-O")
            .arg("OpenFlow13")
            // Its control socket would go under /var/run/openvswitch.
            .arg(format!("--unixctl={}", rig.dir.join("ofctl.ctl").display()))
            .args(["monitor", &rig.target])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ovs-ofctl monitor starts"),
    );
    let rx = lines_of(&mut monitor.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut packet_ins = 0;
    while packet_ins < 3 && Instant::now() < deadline {
        // Inject until the monitor has registered and seen packets.
        rig.flowmark(&[
            "port",
            "inject",
            "nic1",
            "--generate",
            "flows=2,count=2,kind=gtp-up",
        ]);
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            if line.contains("OFPT_PACKET_IN") {
                packet_ins += 1;
                assert!(line.contains("in_port=2"), "{line}");
            }
            seen.push(line);
        }
    }
    assert!(
        packet_ins >= 3,
        "PACKET_INs reached the controller:\n{}",
        seen.join("\n")
    );
    let stats = rig.flowmark(&["pmd", "stats", "--json"]);
    assert!(stats.contains("controller_punts"), "{stats}");
}

/// Controller-like rules: host /32s, prefixes, L4 ports, MACs, over many
/// masks and priorities.
fn controller_rules(n: usize, base: u8) -> String {
    let mut out = String::new();
    for i in 0..n {
        let (hi, lo) = ((i >> 8) & 0xff, i & 0xff);
        let line = match i % 4 {
            0 => format!("priority={},ip,nw_dst={base}.{hi}.{lo}.1,actions=output:2", 100 + i % 50),
            1 => format!("priority={},ip,nw_src={base}.{hi}.{lo}.0/24,actions=output:3", 50 + i % 20),
            2 => format!(
                "priority={},tcp,nw_dst={base}.{hi}.{lo}.2,tp_dst={},actions=output:2",
                200 + i % 30,
                1 + i % 60000
            ),
            _ => format!(
                "priority={},in_port=1,dl_dst=02:{base:02x}:00:{hi:02x}:{lo:02x}:01,actions=output:2",
                10 + i % 5
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn flow_count(rig: &Rig) -> u64 {
    let agg = rig.ofctl(&["dump-aggregate"]);
    agg.split("flow_count=")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no flow_count in {agg:?}"))
}

/// `ovs-ofctl add-flows` (a FLOW_MOD and a barrier round trip per flow) and
/// `--bundle add-flows` (one ONF bundle, one commit) of 20,000 rules land
/// whole; a bundle whose commit fails (an overlap refused at commit)
/// changes nothing and reports both errors as Open vSwitch does.
#[test]
fn controller_scale_add_flows_and_bundles() {
    let Some(rig) = Rig::start() else {
        return;
    };
    const N: usize = 20_000;
    let plain = rig.dir.join("plain.flows");
    std::fs::write(&plain, controller_rules(N, 10)).expect("write flows");
    run(Command::new("ovs-ofctl")
        .args([
            "-O",
            "OpenFlow13",
            "--timeout=300",
            "add-flows",
            &rig.target,
        ])
        .arg(&plain));
    assert_eq!(flow_count(&rig), N as u64);

    let bundled = rig.dir.join("bundle.flows");
    std::fs::write(&bundled, controller_rules(N, 20)).expect("write flows");
    run(&mut rig.bundle_add_flows(&bundled));
    assert_eq!(flow_count(&rig), 2 * N as u64);

    // The last flow of this bundle overlaps an installed one at the same
    // priority with check_overlap: the commit fails, nothing lands.
    let failing = rig.dir.join("failing.flows");
    let mut text = controller_rules(100, 30);
    text.push_str("check_overlap,priority=100,ip,nw_dst=10.0.0.0/8,actions=drop\n");
    std::fs::write(&failing, text).expect("write flows");
    let out = rig
        .bundle_add_flows(&failing)
        .output()
        .expect("ovs-ofctl runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the commit must fail: {err}");
    assert!(err.contains("OFPFMFC_OVERLAP"), "{err}");
    assert!(err.contains("OFPBFC_MSG_FAILED"), "{err}");
    assert_eq!(
        flow_count(&rig),
        2 * N as u64,
        "a failed bundle changes nothing"
    );
    let dump = rig.ofctl(&["dump-flows"]);
    assert!(!dump.contains("nw_dst=30."), "no flow of the failed bundle");
}

/// OFPMP_AGGREGATE is counted in place on the daemon's main thread; its
/// counts must equal the flows `dump-flows` lists for the same selection
/// (a separate path: the whole dump, filtered on the session).
#[test]
fn aggregate_counts_what_dump_flows_lists() {
    let Some(rig) = Rig::start() else {
        return;
    };
    let mut text = controller_rules(200, 10);
    for i in 0..40 {
        text.push_str(&format!(
            "table=1,cookie={:#x},priority={},ip,nw_src=192.168.{i}.0/24,actions=output:3\n",
            i % 6,
            10 + i
        ));
    }
    let file = rig.dir.join("agg.flows");
    std::fs::write(&file, text).expect("write flows");
    rig.ofctl(&["add-flows", file.to_str().expect("utf-8 path")]);
    for filter in [
        "",
        "table=1",
        "out_port=3",
        "cookie=0x2/0x3",
        "ip,nw_dst=10.0.0.0/16",
        "tcp",
        "table=0,in_port=1",
        "ip,nw_src=192.168.3.0/24",
    ] {
        let mut agg_args = vec!["dump-aggregate"];
        let mut dump_args = vec!["dump-flows"];
        if !filter.is_empty() {
            agg_args.push(filter);
            dump_args.push(filter);
        }
        let agg = rig.ofctl(&agg_args);
        let count: u64 = agg
            .split("flow_count=")
            .nth(1)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no flow_count in {agg:?}"));
        let listed = rig
            .ofctl(&dump_args)
            .lines()
            .filter(|l| l.contains("actions="))
            .count() as u64;
        assert_eq!(count, listed, "filter {filter:?}: {agg}");
        assert!(count > 0, "filter {filter:?} selects something");
    }
}

/// `ovs-ofctl mod-port` against the daemon: the PMD sees the config at its
/// next burst. A port that does not forward counts what it was given as
/// transmit drops (`no_fwd`); `port list` shows the bits while set; clearing
/// them forwards again.
#[test]
fn mod_port_no_forward_reaches_the_datapath() {
    let Some(rig) = Rig::start() else {
        return;
    };
    rig.ofctl(&["add-flow", "in_port=2,actions=output:1"]);
    rig.ofctl(&["mod-port", "nic0", "no-forward"]);
    let list: serde_json::Value =
        serde_json::from_str(&rig.flowmark(&["port", "list", "--json"])).expect("json");
    assert_eq!(list[0]["name"], "nic0", "{list}");
    assert_eq!(list[0]["config"], 0x20, "{list}");
    assert!(list[1].get("config").is_none(), "{list}");
    let nic0 = |want_tx: u64, want_dropped: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stats: serde_json::Value =
                serde_json::from_str(&rig.flowmark(&["port", "stats", "--json"])).expect("json");
            let s = stats
                .as_array()
                .and_then(|a| a.iter().find(|p| p["name"] == "nic0"))
                .cloned()
                .expect("nic0 stats");
            let got = (s["tx"].as_u64(), s["tx_dropped"]["no_fwd"].as_u64());
            if got == (Some(want_tx), Some(want_dropped)) {
                return;
            }
            assert!(Instant::now() < deadline, "nic0: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    rig.flowmark(&["port", "inject", "nic1", "--generate", "flows=4,count=100"]);
    nic0(0, 100);
    rig.ofctl(&["mod-port", "nic0", "forward"]);
    rig.flowmark(&["port", "inject", "nic1", "--generate", "flows=4,count=50"]);
    nic0(50, 100);
}

/// Groups against the daemon: an `all` group copies each packet to every
/// bucket's port and counts it under the group and each bucket; a `select`
/// group spreads flows over its buckets; deleting the group deletes the
/// flow that named it, and the traffic stops.
#[test]
fn groups_forward_count_and_go_with_their_flows() {
    let Some(rig) = Rig::start() else {
        return;
    };
    let tx = |name: &str| rig.port_stats(name)["tx"].as_u64().expect("tx");
    // The CLI refuses a flow naming a group that does not exist, as
    // OpenFlow does.
    rig.cli_refuses(
        &["flow", "add", "in_port=2,actions=group:1"],
        "group 1, which does not exist",
    );
    rig.ofctl(&[
        "add-group",
        "group_id=1,type=all,bucket=output:1,bucket=output:3",
    ]);
    rig.flowmark(&["flow", "add", "in_port=2,actions=group:1"]);
    assert!(rig
        .ofctl(&["dump-flows"])
        .contains("in_port=2 actions=group:1"));
    rig.flowmark(&["port", "inject", "nic1", "--generate", "flows=4,count=100"]);
    wait_for("both buckets sent every packet", &|| {
        tx("nic0") == 100 && tx("vm0") == 100
    });
    wait_for("the group counted them", &|| {
        rig.ofctl(&["dump-group-stats"]).contains(
            "packet_count=100,byte_count=6400,bucket0:packet_count=100,byte_count=6400,bucket1:packet_count=100,byte_count=6400",
        )
    });
    // The flow goes, and with it its megaflows; the group keeps what they
    // counted, and counts on when a flow names it again.
    rig.ofctl(&["del-flows", "in_port=2"]);
    rig.ofctl(&["add-flow", "in_port=3,actions=drop"]);
    // The PMD's sweeps (every 100 ms) forget what removed rules counted
    // once the pipeline changed; not what a group's buckets did.
    std::thread::sleep(Duration::from_millis(400));
    rig.ofctl(&["add-flow", "in_port=2,actions=group:1"]);
    rig.flowmark(&["port", "inject", "nic1", "--generate", "flows=4,count=100"]);
    wait_for("both buckets sent every packet again", &|| {
        tx("nic0") == 200 && tx("vm0") == 200
    });
    wait_for("the group counted them all", &|| {
        rig.ofctl(&["dump-group-stats"]).contains(
            "packet_count=200,byte_count=12800,bucket0:packet_count=200,byte_count=12800,bucket1:packet_count=200,byte_count=12800",
        )
    });
    // A select group: each flow goes one way, and both ways get flows.
    rig.ofctl(&[
        "mod-group",
        "group_id=1,type=select,bucket=weight:1,actions=output:1,bucket=weight:1,actions=output:3",
    ]);
    rig.flowmark(&["port", "inject", "nic1", "--generate", "flows=64,count=640"]);
    wait_for("every packet went one way", &|| {
        tx("nic0") + tx("vm0") == 1040
    });
    assert!(
        tx("nic0") > 350 && tx("vm0") > 350,
        "{} {}",
        tx("nic0"),
        tx("vm0")
    );
    // The modified group counts afresh.
    wait_for("the select group counted them", &|| {
        rig.ofctl(&["dump-group-stats"])
            .contains("ref_count=1,packet_count=640,")
    });
    rig.ofctl(&["del-groups", "group_id=1"]);
    assert!(!rig.ofctl(&["dump-flows"]).contains("group:1"));
    rig.flowmark(&["port", "inject", "nic1", "--generate", "flows=4,count=100"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tx("nic0") + tx("vm0"), 1040, "no flow, no forwarding");
}

/// A meter through the daemon: the CLI refuses a flow naming a meter that
/// does not exist; a flow through a 1-packet/s meter with a burst of 10
/// forwards about ten packets of a burst of 200 and drops the rest, each
/// counted on the ingress port as dropped by the meter and in the meter's
/// band; deleting the meter takes its flow.
#[test]
fn meters_limit_count_and_go_with_their_flows() {
    let Some(rig) = Rig::start() else {
        return;
    };
    let port = |name: &str| rig.port_stats(name);
    rig.cli_refuses(
        &["flow", "add", "in_port=2,actions=meter:1,output:1"],
        "meter 1, which does not exist",
    );
    rig.ofctl(&[
        "add-meter",
        "meter=1,pktps,burst,band=type=drop,rate=1,burst_size=10",
    ]);
    rig.flowmark(&["flow", "add", "in_port=2,actions=meter:1,output:1"]);
    rig.flowmark(&["port", "inject", "nic1", "--generate", "flows=4,count=200"]);
    wait_for("every packet forwarded or dropped", &|| {
        let p = port("nic1");
        p["rx"] == 200
            && p["forwarded"].as_u64().unwrap_or(0) + p["rx_dropped"]["meter"].as_u64().unwrap_or(0)
                == 200
    });
    let nic1 = port("nic1");
    let forwarded = nic1["forwarded"].as_u64().expect("forwarded");
    // The bucket held 10 packets; a packet a second refills it.
    assert!((10..=15).contains(&forwarded), "{nic1}");
    wait_for("the packets left", &|| port("nic0")["tx"] == forwarded);
    let dropped = 200 - forwarded;
    let stats = rig.ofctl(&["meter-stats"]);
    assert!(
        stats.contains("meter:1 flow_count:1 packet_in_count:200 byte_in_count:12800 ")
            && stats.contains(&format!(
                "0: packet_count:{dropped} byte_count:{}",
                dropped * 64
            )),
        "{stats}"
    );
    // Packet-outs through the pipeline (output to TABLE) meet the meter
    // too: a fresh bucket of one packet lets the first of three through
    // (a second only if a second passed between them).
    rig.ofctl(&[
        "mod-meter",
        "meter=1,pktps,burst,band=type=drop,rate=1,burst_size=1",
    ]);
    let frame = testbed::build::udp4(
        std::net::Ipv4Addr::new(10, 0, 0, 1),
        std::net::Ipv4Addr::new(10, 0, 0, 2),
        1234,
        5678,
        b"metered packet-out",
    );
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    let tx_before = port("nic0")["tx"].as_u64().expect("tx");
    for _ in 0..3 {
        rig.ofctl(&[
            "packet-out",
            &format!("in_port=2 packet={hex} actions=table"),
        ]);
    }
    let stats = rig.ofctl(&["meter-stats"]);
    assert!(stats.contains("packet_in_count:3 "), "{stats}");
    let dropped: u64 = stats
        .split("0: packet_count:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("band count");
    assert!((1..=2).contains(&dropped), "{stats}");
    wait_for("the packet-outs the meter passed left", &|| {
        port("nic0")["tx"].as_u64() == Some(tx_before + 3 - dropped)
    });
    // A modified meter reaches the PMD at once (no rule changed) and
    // counts afresh, as OVS's userspace datapath replaces it.
    rig.ofctl(&["mod-meter", "meter=1,pktps,band=type=drop,rate=1000000"]);
    rig.flowmark(&["port", "inject", "nic1", "--generate", "flows=4,count=100"]);
    wait_for("the faster meter let all through", &|| {
        port("nic1")["forwarded"].as_u64() == Some(forwarded + 100)
    });
    assert!(
        rig.ofctl(&["meter-stats"])
            .contains("meter:1 flow_count:1 packet_in_count:100 byte_in_count:6400 "),
        "counted afresh"
    );
    rig.ofctl(&["del-meter", "meter=1"]);
    assert!(!rig.ofctl(&["dump-flows"]).contains("meter:1"));
    // The controller meter limits punts (PACKET_INs) as OVS's does.
    rig.ofctl(&[
        "add-meter",
        "meter=controller,pktps,burst,band=type=drop,rate=1,burst_size=5",
    ]);
    rig.ofctl(&["add-flow", "in_port=2,actions=controller"]);
    rig.flowmark(&["port", "inject", "nic1", "--generate", "flows=4,count=50"]);
    let counter = |name: &str| -> u64 {
        let stats: serde_json::Value =
            serde_json::from_str(&rig.flowmark(&["pmd", "stats", "--json"])).expect("json");
        let mut n = 0;
        find_counts(&stats, name, &mut n);
        n
    };
    wait_for("every punt counted", &|| counter("controller_punts") == 50);
    let metered = counter("punts_metered");
    assert!((35..=45).contains(&metered), "{metered} punts metered");
}

/// Sums every number named `name` anywhere in `v`.
fn find_counts(v: &serde_json::Value, name: &str, n: &mut u64) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == name {
                    *n += x.as_u64().unwrap_or(0);
                } else {
                    find_counts(x, name, n);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| find_counts(x, name, n)),
        _ => {}
    }
}

/// Waits up to 20 s for `ok`.
fn wait_for(what: &str, ok: &dyn Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
