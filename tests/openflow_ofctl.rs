//! ovs-ofctl (Open vSwitch 3.1, `-O OpenFlow13`) against flowmark's
//! OpenFlow endpoint over the in-memory [`PipelineSwitch`]: the GTP flows
//! go in, come back out of dump-flows as the same flows with counters,
//! del-flows removes exactly the selected ones, ports and their counters
//! show. Skipped when ovs-ofctl is missing, unless FLOWMARK_REQUIRE_ORACLES
//! is set.

#[path = "support/pipeline_switch.rs"]
mod pipeline_switch;
use fallback::ofproto::syntax::{format_flow, parse_flow};
use fallback::ofproto::Rule;
use flowmark::openflow::net::{Endpoint, EventHub, LogFn};
use flowmark::openflow::switch::{OpenFlowSwitch, PortCounters, PortInfo};
use pipeline_switch::PipelineSwitch;
use std::process::Command;
use std::sync::Arc;

#[path = "support/test_env.rs"]
mod test_env;

fn have_ovs_ofctl() -> bool {
    test_env::oracle("ovs-ofctl", "--version", "openvswitch-common")
}

fn ofctl(target: &str, args: &[&str]) -> String {
    ofctl_with(target, &[], args)
}

/// Runs `ovs-ofctl -O OpenFlow13 [OPTIONS] COMMAND TARGET [ARGS]`.
fn ofctl_output(target: &str, options: &[&str], args: &[&str]) -> std::process::Output {
    Command::new("ovs-ofctl")
        .args(["-O", "OpenFlow13", "--timeout=10"])
        .args(options)
        .args(args.iter().take(1))
        .arg(target)
        .args(args.iter().skip(1))
        .output()
        .expect("ovs-ofctl runs")
}

/// `ovs-ofctl -O OpenFlow13 [OPTIONS] COMMAND TARGET [ARGS]`, which must
/// succeed: its output.
fn ofctl_with(target: &str, options: &[&str], args: &[&str]) -> String {
    let out = ofctl_output(target, options, args);
    assert!(
        out.status.success(),
        "ovs-ofctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn gtp_flows() -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    ["examples/gtp.flows", "examples/gtp-resubmit.flows"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(format!("{root}/{f}"))
                .expect("example flows")
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn start() -> (Arc<PipelineSwitch>, Endpoint, String) {
    serve(PipelineSwitch::new(
        0xf10e,
        ["nic0", "nic1", "vm0"]
            .iter()
            .enumerate()
            .map(|(i, n)| PortInfo {
                ofport: i as u32 + 1,
                name: n.to_string(),
                config: 0,
            })
            .collect(),
    ))
}

/// `sw` behind an OpenFlow listener on a free loopback port.
fn serve(sw: PipelineSwitch) -> (Arc<PipelineSwitch>, Endpoint, String) {
    let sw = Arc::new(sw);
    let log: LogFn = Arc::new(|_| {});
    let ep = Endpoint::start(
        Arc::clone(&sw) as Arc<dyn OpenFlowSwitch>,
        EventHub::default(),
        Some("ptcp:0"),
        None,
        log,
    )
    .expect("endpoint starts");
    let addr = ep.listen_addr.expect("bound");
    let target = format!("tcp:127.0.0.1:{}", addr.port());
    (sw, ep, target)
}

/// A dump-flows line with the counters and age taken out, parsed back into
/// a rule (ovs-ofctl prints OpenFlow 1.3 actions as set_field etc.).
fn rule_of_dump_line(line: &str) -> Rule {
    let kept: Vec<&str> = line
        .trim()
        .split(", ")
        .filter(|kv| {
            ![
                "duration=",
                "n_packets=",
                "n_bytes=",
                "idle_age=",
                "hard_age=",
            ]
            .iter()
            .any(|p| kv.starts_with(p))
        })
        .collect();
    let text = kept.join(",").replace(" actions=", ",actions=");
    parse_flow(&text).unwrap_or_else(|e| panic!("dump line {line:?} ({text}) parses: {e}"))
}

#[test]
fn gtp_flows_round_trip_through_ovs_ofctl() {
    if !have_ovs_ofctl() {
        return;
    }
    let (sw, _ep, target) = start();
    let flows = gtp_flows();
    for f in &flows {
        ofctl(&target, &["add-flow", f]);
    }
    // What went in: the rules as flowmark's own parser reads the files,
    // minus those later lines replaced (same table, priority and match).
    let mut expected = fallback::ofproto::table::Pipeline::new();
    for f in &flows {
        expected.add(parse_flow(f).expect("example flow parses"));
    }
    let want: Vec<String> = expected
        .rules()
        .map(|e| format_flow(&e.to_rule()))
        .collect();
    let got: Vec<String> = sw
        .pipeline()
        .rules()
        .map(|e| format_flow(&e.to_rule()))
        .collect();
    assert_eq!(got, want, "the switch holds what ovs-ofctl sent");

    // Traffic on the GTP-U rule from 192.168.200.3 in table 8.
    let mut sel = fallback::ofproto::Match::ANY;
    sel.set_exact(fallback::key::Field::DlType, 0x0800);
    sel.set_exact(fallback::key::Field::NwSrc, 0xc0a8_c803);
    sw.hit(&sel, 7, 700);
    let dump = ofctl(&target, &["dump-flows"]);
    let lines: Vec<&str> = dump.lines().filter(|l| l.contains("actions=")).collect();
    let mut dumped: Vec<String> = lines
        .iter()
        .map(|l| format_flow(&rule_of_dump_line(l)))
        .collect();
    let mut want_sorted = want.clone();
    dumped.sort();
    want_sorted.sort();
    assert_eq!(dumped, want_sorted, "dump-flows:\n{dump}");
    assert!(
        lines.iter().any(|l| l.contains("table=8")
            && l.contains("n_packets=7")
            && l.contains("n_bytes=700")),
        "counters show:\n{dump}"
    );

    // del-flows with a match removes exactly the rules it selects.
    let before = sw.pipeline().len();
    ofctl(&target, &["del-flows", "table=0,udp,nw_dst=192.168.200.3"]);
    let after = sw.pipeline();
    let gone = before - after.len();
    assert!(gone > 0);
    assert!(after
        .rules()
        .all(|e| !(e.table() == 0 && format_flow(&e.to_rule()).contains("nw_dst=192.168.200.3"))));
    ofctl_with(&target, &["--strict"], &["del-flows", "table=8,priority=0"]);
    assert_eq!(sw.pipeline().len(), after.len() - 1);
    ofctl(&target, &["del-flows"]);
    assert!(sw.pipeline().is_empty());
}

#[test]
fn ports_and_counters_show_in_dump_ports() {
    if !have_ovs_ofctl() {
        return;
    }
    let (sw, _ep, target) = start();
    sw.set_port_counters(
        2,
        PortCounters {
            rx_packets: 1234,
            tx_packets: 99,
            rx_dropped: 5,
            ..PortCounters::default()
        },
    );
    let desc = ofctl(&target, &["dump-ports-desc"]);
    for (n, name) in ["nic0", "nic1", "vm0"].iter().enumerate() {
        assert!(
            desc.contains(&format!(" {}({name}): addr:", n + 1)),
            "{desc}"
        );
    }
    let ports = ofctl(&target, &["dump-ports"]);
    assert!(ports.contains("3 ports"), "{ports}");
    assert!(ports.contains("port  2: rx pkts=1234"), "{ports}");
    assert!(ports.contains("drop=5"), "{ports}");
    let one = ofctl(&target, &["dump-ports", "2"]);
    assert!(one.contains("1 ports"), "{one}");
    let show = ofctl(&target, &["show"]);
    assert!(show.contains("dpid:000000000000f10e"), "{show}");
    let agg = ofctl(&target, &["dump-aggregate"]);
    assert!(agg.contains("flow_count=0"), "{agg}");
    let tables = ofctl(&target, &["dump-tables"]);
    assert!(tables.contains("table 0"), "{tables}");
    let d = ofctl(&target, &["dump-desc"]);
    assert!(d.contains("flowmark"), "{d}");
}

/// `ovs-ofctl --bundle add-flows FILE`, which must fail: its stderr.
fn bundle_refused(target: &str, file: &std::path::Path) -> String {
    let file = file.to_string_lossy();
    let out = ofctl_output(target, &["--bundle"], &["add-flows", &file]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    err
}

/// `ovs-ofctl --bundle` against the session: a bundle lands as a whole; a
/// bundle with a flow refused at commit (an overlap with check_overlap)
/// leaves the switch as it was, and ovs-ofctl reports the flow's error and
/// OFPBFC_MSG_FAILED, as it does against Open vSwitch; a bundle that
/// deletes and adds in one commit is applied in order.
#[test]
fn bundles_commit_whole_or_not_at_all() {
    if !have_ovs_ofctl() {
        return;
    }
    let (sw, _ep, target) = start();
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write flows");
        p
    };
    let flows: String = gtp_flows().iter().map(|f| format!("{f}\n")).collect();
    let all = write("all.flows", &flows);
    ofctl_with(
        &target,
        &["--bundle"],
        &["add-flows", all.to_str().expect("utf-8")],
    );
    let mut expected = fallback::ofproto::table::Pipeline::new();
    for f in gtp_flows() {
        expected.add(parse_flow(&f).expect("example flow parses"));
    }
    let before: Vec<String> = sw
        .pipeline()
        .rules()
        .map(|e| format_flow(&e.to_rule()))
        .collect();
    let want: Vec<String> = expected
        .rules()
        .map(|e| format_flow(&e.to_rule()))
        .collect();
    assert_eq!(before, want);

    let failing = write(
        "failing.flows",
        "priority=7,ip,nw_dst=10.9.0.0/16,actions=drop\n\
         check_overlap,priority=7,ip,nw_dst=10.9.1.0/24,actions=output:2\n",
    );
    let err = bundle_refused(&target, &failing);
    assert!(
        err.contains("OFPFMFC_OVERLAP") && err.contains("OFPBFC_MSG_FAILED"),
        "{err}"
    );
    let after: Vec<String> = sw
        .pipeline()
        .rules()
        .map(|e| format_flow(&e.to_rule()))
        .collect();
    assert_eq!(after, before, "a failed commit changes nothing");

    // Delete everything, then add one rule, in one bundle.
    let replace = write("replace.flows", "priority=3,actions=drop\n");
    ofctl_with(
        &target,
        &["--bundle"],
        &["replace-flows", replace.to_str().expect("utf-8")],
    );
    let now: Vec<String> = sw
        .pipeline()
        .rules()
        .map(|e| format_flow(&e.to_rule()))
        .collect();
    assert_eq!(now, vec!["priority=3 actions=drop".to_string()]);
}

/// A bundle past its limit (twice the flow table, plus 1,024 messages) is
/// refused with OFPBFC_MSG_TOO_MANY and commits nothing, not even the
/// messages it took before the limit; a bundle within it then lands.
#[test]
fn a_bundle_past_its_limit_commits_nothing() {
    if !have_ovs_ofctl() {
        return;
    }
    let (sw, _ep, target) = serve(
        PipelineSwitch::new(
            0xf10e,
            vec![PortInfo {
                ofport: 1,
                name: "nic0".to_string(),
                config: 0,
            }],
        )
        .with_max_flows(10),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let big = dir.path().join("big.flows");
    let flows: String = (0..1100)
        .map(|i| {
            format!(
                "priority=5,ip,nw_dst=10.0.{}.{},actions=drop\n",
                i / 256,
                i % 256
            )
        })
        .collect();
    std::fs::write(&big, flows).expect("write flows");
    let err = bundle_refused(&target, &big);
    assert!(err.contains("OFPBFC_MSG_TOO_MANY"), "{err}");
    assert_eq!(sw.pipeline().rules().count(), 0, "nothing committed");
    let small = dir.path().join("small.flows");
    std::fs::write(
        &small,
        "priority=5,ip,nw_dst=10.1.0.1,actions=drop\npriority=5,ip,nw_dst=10.1.0.2,actions=drop\n",
    )
    .expect("write flows");
    ofctl_with(
        &target,
        &["--bundle"],
        &["add-flows", small.to_str().expect("utf-8")],
    );
    assert_eq!(sw.pipeline().rules().count(), 2);
}

/// Priority and ECN rewrites (`mod_vlan_pcp`, `mod_nw_ecn`, set_field to
/// vlan_pcp and ip_ecn) travel as OpenFlow 1.3 set-fields, land as the
/// rules flowmark's own parser reads, and come back in dump-flows.
#[test]
fn pcp_and_ecn_rewrites_round_trip_through_ovs_ofctl() {
    if !have_ovs_ofctl() {
        return;
    }
    let (sw, _ep, target) = start();
    let flows = [
        "priority=5,dl_vlan=5,actions=mod_vlan_pcp:3,output:1",
        "priority=4,ip,actions=mod_nw_ecn:1,output:2",
        "priority=3,ipv6,actions=set_field:2->ip_ecn,output:2",
        "priority=2,dl_vlan=7,actions=set_field:6->vlan_pcp,mod_vlan_vid:9,output:3",
    ];
    for f in flows {
        ofctl(&target, &["add-flow", f]);
    }
    let mut want: Vec<String> = flows
        .iter()
        .map(|f| format_flow(&parse_flow(f).expect("flow parses")))
        .collect();
    want.sort();
    let mut got: Vec<String> = sw
        .pipeline()
        .rules()
        .map(|e| format_flow(&e.to_rule()))
        .collect();
    got.sort();
    assert_eq!(got, want, "the switch holds what ovs-ofctl sent");
    let dump = ofctl(&target, &["dump-flows"]);
    let mut dumped: Vec<String> = dump
        .lines()
        .filter(|l| l.contains("actions="))
        .map(|l| format_flow(&rule_of_dump_line(l)))
        .collect();
    dumped.sort();
    assert_eq!(dumped, want, "dump-flows:\n{dump}");
}

/// `ovs-ofctl -O OpenFlow13 COMMAND TARGET [ARGS]` answered with an error:
/// what it printed, the error's name included (a mod's error fails the
/// command; a dump's is printed as the reply, as against Open vSwitch).
fn ofctl_error(target: &str, args: &[&str]) -> String {
    let out = ofctl_output(target, &[], args);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("OFPT_ERROR") || !out.status.success(),
        "{args:?}: {text}"
    );
    text
}

/// Queues, which flowmark does not have, and meters and groups before any
/// is added: ovs-ofctl's queries get the answers Open vSwitch 3.1 gives
/// (empty lists; a meter or queue asked for by id is unknown; an unknown
/// port is OFPQOFC_BAD_PORT), deletes succeed with nothing to delete, and
/// modifies and flows naming what does not exist are refused with the
/// spec's codes, which ovs-ofctl names.
#[test]
fn queues_and_empty_meter_and_group_tables_answer_as_ovs() {
    if !have_ovs_ofctl() {
        return;
    }
    let (_sw, _ep, target) = start();
    let t = target.as_str();
    for (args, says) in [
        (&["dump-groups"][..], "OFPST_GROUP_DESC reply"),
        (&["dump-group-stats"], "OFPST_GROUP reply"),
        (&["dump-meters"], "OFPST_METER_CONFIG reply"),
        (&["meter-stats"], "OFPST_METER reply"),
        (&["queue-stats"], "OFPST_QUEUE reply"),
        (&["queue-stats", "2"], "OFPST_QUEUE reply"),
        (&["queue-get-config", "1"], "OFPT_QUEUE_GET_CONFIG_REPLY"),
        (&["queue-get-config", "any"], "OFPT_QUEUE_GET_CONFIG_REPLY"),
    ] {
        let out = ofctl(t, args);
        assert!(out.contains(says), "{args:?}: {out}");
        assert!(
            !out.contains("queue 0") && !out.contains("group_id=") && !out.contains("meter="),
            "{args:?}: {out}"
        );
    }
    // Deletes: nothing to delete, no error.
    for args in [
        &["del-groups"][..],
        &["del-groups", "group_id=5"],
        &["del-meters"],
        &["del-meters", "meter=5"],
    ] {
        ofctl(t, args);
    }
    for (args, says) in [
        (
            &["mod-meter", "meter=5,kbps,band=type=drop,rate=1000"][..],
            "OFPMMFC_UNKNOWN_METER",
        ),
        (&["meter-stats", "meter=5"], "OFPMMFC_UNKNOWN_METER"),
        (&["dump-meters", "meter=5"], "OFPMMFC_UNKNOWN_METER"),
        (&["queue-stats", "1", "5"], "OFPQOFC_BAD_QUEUE"),
        (&["queue-stats", "9"], "OFPQOFC_BAD_PORT"),
        (&["queue-get-config", "9"], "OFPQOFC_BAD_PORT"),
        (&["add-flow", "actions=group:7"], "OFPBAC_BAD_OUT_GROUP"),
        (
            &["add-flow", "actions=meter:5,output:1"],
            "OFPMMFC_INVALID_METER",
        ),
    ] {
        let out = ofctl_error(t, args);
        assert!(out.contains(says), "{args:?}: {out}");
    }
    // The connection is still served.
    assert!(ofctl(t, &["dump-flows"]).contains("OFPST_FLOW reply"));
}

/// Meters through ovs-ofctl, as Open vSwitch 3.1's userspace datapath
/// answers (each reply and error below is what OVS printed for the same
/// commands): features, add, dump, stats with the flows naming a meter,
/// modify, the checks' error codes, and a delete that takes its flows.
#[test]
fn meters_are_added_dumped_modified_and_deleted_with_their_flows() {
    if !have_ovs_ofctl() {
        return;
    }
    let (sw, _ep, target) = start();
    let t = target.as_str();
    let features = ofctl(t, &["meter-features"]);
    for says in [
        "max_meter:262144 max_bands:8 max_color:0",
        "band_types: drop",
        "capabilities: kbps pktps burst stats",
    ] {
        assert!(features.contains(says), "{features}");
    }
    ofctl(t, &["add-meter", "meter=5,kbps,band=type=drop,rate=1000"]);
    ofctl(
        t,
        &[
            "add-meter",
            "meter=6,pktps,burst,stats,band=type=drop,rate=10,burst_size=5,type=drop,rate=20,burst_size=3",
        ],
    );
    ofctl(
        t,
        &["add-meter", "meter=controller,pktps,band=type=drop,rate=10"],
    );
    let dump = ofctl(t, &["dump-meters"]);
    for says in [
        "meter=5 kbps bands=\ntype=drop rate=1000\n",
        "meter=6 pktps burst stats bands=\ntype=drop rate=10 burst_size=5\ntype=drop rate=20 burst_size=3\n",
        "meter=controller pktps bands=\ntype=drop rate=10\n",
    ] {
        assert!(dump.contains(says), "{says} in {dump}");
    }
    ofctl(t, &["add-flow", "in_port=1,actions=meter:5,output:2"]);
    ofctl(t, &["add-flow", "in_port=2,udp,actions=meter:5,output:1"]);
    let flows = ofctl(t, &["dump-flows"]);
    assert!(
        flows.contains("in_port=1 actions=meter:5,output:2"),
        "{flows}"
    );
    let stats = ofctl(t, &["meter-stats", "meter=5"]);
    assert!(
        stats.contains("meter:5 flow_count:2 packet_in_count:0 byte_in_count:0 duration:")
            && stats.contains("bands:\n0: packet_count:0 byte_count:0"),
        "{stats}"
    );
    assert_eq!(ofctl(t, &["meter-stats"]).matches("flow_count:").count(), 3);
    for (args, says) in [
        (
            &["add-meter", "meter=5,kbps,band=type=drop,rate=1000"][..],
            "OFPMMFC_METER_EXISTS",
        ),
        (
            &["add-meter", "meter=7,pktps,band=type=dscp_remark,rate=10,prec_level=1"],
            "OFPMMFC_BAD_BAND",
        ),
        (
            &["add-meter", "meter=7,pktps,stats,band=type=drop,rate=10,type=drop,rate=1,type=drop,rate=2,type=drop,rate=3,type=drop,rate=4,type=drop,rate=5,type=drop,rate=6,type=drop,rate=7,type=drop,rate=8"],
            "OFPMMFC_OUT_OF_BANDS",
        ),
        (
            &["mod-meter", "meter=15,kbps,band=type=drop,rate=1000"],
            "OFPMMFC_UNKNOWN_METER",
        ),
        (
            &["add-flow", "actions=meter:9,output:1"],
            "OFPMMFC_INVALID_METER",
        ),
        (&["meter-stats", "meter=77"], "OFPMMFC_UNKNOWN_METER"),
    ] {
        let out = ofctl_error(t, args);
        assert!(out.contains(says), "{args:?}: {out}");
    }
    // A modify replaces the bands; the flows stay.
    ofctl(t, &["mod-meter", "meter=5,pktps,band=type=drop,rate=7"]);
    assert!(
        ofctl(t, &["dump-meters", "meter=5"]).contains("meter=5 pktps bands=\ntype=drop rate=7")
    );
    assert_eq!(sw.pipeline().len(), 2);
    // Deleting meter 5 deletes the flows naming it.
    ofctl(t, &["del-meter", "meter=5"]);
    assert!(!ofctl(t, &["dump-flows"]).contains("meter:"));
    assert_eq!(sw.pipeline().len(), 0);
    assert!(ofctl_error(t, &["dump-meters", "meter=5"]).contains("OFPMMFC_UNKNOWN_METER"));
    ofctl(t, &["del-meters"]);
    assert!(!ofctl(t, &["dump-meters"]).contains("meter="));
}

/// Groups through ovs-ofctl, as Open vSwitch 3.1 answers: add, dump,
/// modify, statistics and delete; a flow naming a group that does not exist
/// is refused, and deleting a group deletes the flows that name it.
#[test]
fn groups_are_added_dumped_modified_and_deleted_with_their_flows() {
    if !have_ovs_ofctl() {
        return;
    }
    let (sw, _ep, target) = start();
    let t = target.as_str();
    let features = ofctl(t, &["dump-group-features"]);
    for says in [
        "Types:  0xf",
        "Capabilities:  0x7",
        "all group:",
        "max_groups=0x10000",
    ] {
        assert!(features.contains(says), "{features}");
    }
    for g in [
        "group_id=1,type=all,bucket=output:1,bucket=set_field:10.0.0.9->ip_dst,output:2",
        "group_id=2,type=select,bucket=weight:10,actions=output:1,bucket=weight:20,actions=output:2",
        "group_id=3,type=indirect,bucket=actions=group:1",
        "group_id=4,type=ff,bucket=watch_port:1,actions=output:1,bucket=watch_port:2,actions=output:2",
    ] {
        ofctl(t, &["add-group", g]);
    }
    ofctl(t, &["add-flow", "priority=5,udp,actions=group:3"]);
    ofctl(t, &["add-flow", "priority=6,tcp,actions=group:2,group:4"]);
    let dump = ofctl(t, &["dump-groups"]);
    for says in [
        "group_id=1,type=all,bucket=actions=output:1,bucket=actions=set_field:10.0.0.9->ip_dst,output:2",
        "group_id=2,type=select,bucket=weight:10,actions=output:1,bucket=weight:20,actions=output:2",
        "group_id=3,type=indirect,bucket=actions=group:1",
        "group_id=4,type=ff,bucket=watch_port:1,actions=output:1,bucket=watch_port:2,actions=output:2",
    ] {
        assert!(dump.contains(says), "{says} in {dump}");
    }
    let stats = ofctl(t, &["dump-group-stats"]);
    for says in [
        "group_id=1,duration=",
        "ref_count=0,packet_count=0,byte_count=0,bucket0:packet_count=0,byte_count=0,bucket1:",
        "group_id=3,duration=",
    ] {
        assert!(stats.contains(says), "{says} in {stats}");
    }
    assert!(
        ofctl(t, &["dump-group-stats", "group_id=3"]).contains("ref_count=1,"),
        "one flow names group 3"
    );
    for (args, says) in [
        (
            &["add-group", "group_id=1,type=all,bucket=output:3"][..],
            "OFPGMFC_GROUP_EXISTS",
        ),
        (
            &["mod-group", "group_id=9,type=all,bucket=output:1"],
            "OFPGMFC_UNKNOWN_GROUP",
        ),
        (
            &[
                "add-group",
                "group_id=9,type=all,bucket=watch_port:1,actions=output:1",
            ],
            "OFPGMFC_WATCH_UNSUPPORTED",
        ),
        (&["add-flow", "actions=group:9"], "OFPBAC_BAD_OUT_GROUP"),
        (
            &["mod-flows", "udp,actions=group:9"],
            "OFPBAC_BAD_OUT_GROUP",
        ),
    ] {
        let out = ofctl_error(t, args);
        assert!(out.contains(says), "{args:?}: {out}");
    }
    // A modify replaces the buckets (and may change the type).
    ofctl(
        t,
        &["mod-group", "group_id=1,type=indirect,bucket=output:3"],
    );
    assert!(ofctl(t, &["dump-groups"]).contains("group_id=1,type=indirect,bucket=actions=output:3"));
    // A flow filter by group (out_group) sees the flows naming it.
    let flows = ofctl(t, &["dump-flows", "out_group=2"]);
    assert!(
        flows.contains("actions=group:2,group:4") && !flows.contains("group:3"),
        "{flows}"
    );
    // Deleting group 3 deletes the flow naming it; group 4's flow stays.
    ofctl(t, &["del-groups", "group_id=3"]);
    let flows = ofctl(t, &["dump-flows"]);
    assert!(
        !flows.contains("group:3") && flows.contains("group:4"),
        "{flows}"
    );
    assert_eq!(sw.pipeline().len(), 1);
    ofctl(t, &["del-groups"]);
    assert!(!ofctl(t, &["dump-groups"]).contains("group_id="));
    assert!(!ofctl(t, &["dump-flows"]).contains("group:"));
    // Group mods in a bundle land with it, or not at all: the second group
    // exists already, so the bundle fails and the first is not added.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("groups");
    std::fs::write(
        &file,
        "group_id=5,type=all,bucket=output:1\ngroup_id=6,type=all,bucket=output:2\n",
    )
    .expect("write");
    let file = file.to_str().expect("utf-8");
    ofctl_with(t, &["--bundle"], &["add-groups", file]);
    assert_eq!(ofctl(t, &["dump-groups"]).matches("group_id=").count(), 2);
    ofctl(t, &["del-groups", "group_id=5"]);
    let out = ofctl_output(t, &["--bundle"], &["add-groups", file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("OFPGMFC_GROUP_EXISTS"),
        "{err}"
    );
    let dump = ofctl(t, &["dump-groups"]);
    assert!(
        !dump.contains("group_id=5") && dump.contains("group_id=6"),
        "{dump}"
    );
}

/// `ovs-ofctl mod-port` (OFPT_PORT_MOD): each config bit OpenFlow 1.3 can
/// set reaches the switch and comes back in dump-ports-desc as Open
/// vSwitch 3.1 prints it (a port configured down has its link down), and
/// clearing them restores the port; another connection gets the
/// PORT_STATUS (see tests/openflow_session.rs), the one that asked does not.
#[test]
fn mod_port_sets_and_clears_the_config_bits() {
    /// Port 1's three lines of a dump-ports-desc (name, config, state).
    fn nic0_desc(desc: &str) -> Vec<&str> {
        desc.lines()
            .skip_while(|l| !l.contains("1(nic0)"))
            .take(3)
            .collect()
    }
    if !have_ovs_ofctl() {
        return;
    }
    let (sw, _ep, target) = start();
    let t = target.as_str();
    for bit in ["no-forward", "no-receive", "no-packet-in", "down"] {
        ofctl(t, &["mod-port", "1", bit]);
    }
    let desc = ofctl(t, &["dump-ports-desc"]);
    let port1 = nic0_desc(&desc);
    assert!(
        port1[1].contains("config:     PORT_DOWN NO_RECV NO_FWD NO_PACKET_IN"),
        "{desc}"
    );
    assert!(port1[2].contains("state:      LINK_DOWN"), "{desc}");
    let ports = sw.ports().unwrap();
    assert_eq!(ports[0].config, 0x65);
    assert_eq!(ports[1].config, 0, "only port 1 changed");
    for bit in ["forward", "receive", "packet-in", "up"] {
        ofctl(t, &["mod-port", "nic0", bit]);
    }
    let desc = ofctl(t, &["dump-ports-desc"]);
    let port1 = nic0_desc(&desc);
    assert!(port1[1].contains("config:     0"), "{desc}");
    assert!(port1[2].contains("state:      LIVE"), "{desc}");
}
