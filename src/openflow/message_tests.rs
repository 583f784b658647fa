//! The message codec, one message type at a time.
//!
//! What a controller sends is anchored on bytes captured from `ovs-ofctl
//! -O OpenFlow13` (Open vSwitch 3.1) talking to a switch: each decodes to
//! the message written out here, and encodes back to the same bytes. What
//! the switch sends round-trips through the decoder, and (where
//! `ovs-ofctl` is installed, required in CI) `ovs-ofctl ofp-print` reads
//! the bytes as the message meant, with no decode error.

use super::*;
use crate::openflow::port::{OFPP_ANY, OFPP_CONTROLLER};
use fallback::ofproto::syntax::parse_match;
use fallback::ofproto::{Match, OfAction};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Decodes captured bytes: the message, then its encoding is the same bytes.
fn captured(bytes_hex: &str, want: Message) {
    let bytes = hex(bytes_hex);
    let env = decode(&bytes).unwrap_or_else(|e| panic!("{bytes_hex}: {e:?}"));
    assert_eq!(env.version, 4, "{bytes_hex}");
    assert_eq!(env.msg, want, "{bytes_hex}");
    let again = encode(env.xid, &env.msg);
    assert_eq!(
        again,
        bytes,
        "{:?} re-encoded as {}",
        env.msg,
        again.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
}

fn m(text: &str) -> Match {
    parse_match(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn all_flows() -> FlowStatsRequest {
    FlowStatsRequest {
        table_id: OFPTT_ALL,
        out_port: OFPP_ANY,
        out_group: OFPG_ANY,
        cookie: 0,
        cookie_mask: 0,
        r#match: Match::ANY,
    }
}

#[test]
fn hello_features_config_echo_barrier_as_ovs_ofctl_sends_them() {
    captured(
        "04000010000000010001000800000010",
        Message::Hello { versions: 1 << 4 },
    );
    captured("0405000800000002", Message::FeaturesRequest);
    captured("0407000800000002", Message::GetConfigRequest);
    captured(
        "0409000c000000030000ffff",
        Message::SetConfig(SwitchConfig {
            flags: 0,
            miss_send_len: 0xffff,
        }),
    );
    captured("0402000800000000", Message::EchoRequest(Vec::new()));
    captured("0414000800000007", Message::BarrierRequest);
}

#[test]
fn flow_mods_as_ovs_ofctl_sends_them() {
    let base = FlowMod {
        cookie: 0,
        cookie_mask: 0,
        table_id: 0,
        command: FlowModCommand::Add,
        idle_timeout: 0,
        hard_timeout: 0,
        priority: 7,
        buffer_id: OFP_NO_BUFFER,
        out_port: OFPP_ANY,
        out_group: OFPG_ANY,
        flags: 0,
        r#match: m("tcp,nw_dst=10.0.0.1,tp_dst=80"),
        actions: vec![OfAction::Output(2)],
    };
    // add-flow "priority=7,tcp,nw_dst=10.0.0.1,tp_dst=80,actions=output:2"
    captured(
        "040e006800000006000000000000000000000000000000000000000000000007ffffffffffffffffffffffff000000000001001d80000a020800800018040a000001800014010680001c020050000000000400180000000000000010000000020000000000000000",
        Message::FlowMod(base.clone()),
    );
    // A meter instruction goes first, as OVS puts it.
    sent(
        Message::FlowMod(FlowMod {
            actions: vec![OfAction::Meter(3), OfAction::Output(2)],
            ..base.clone()
        }),
        &["actions=meter:3,output:2"],
    );
    // del-flows "ip,nw_src=10.0.0.0/8"
    captured(
        "040e00480000000600000000000000000000000000000000ff03000000008000ffffffffffffffffffffffff000000000001001680000a020800800017080a000000ff0000000000",
        Message::FlowMod(FlowMod {
            table_id: OFPTT_ALL,
            command: FlowModCommand::Delete,
            priority: 0x8000,
            r#match: m("ip,nw_src=10.0.0.0/8"),
            actions: Vec::new(),
            ..base.clone()
        }),
    );
    // del-flows --strict "priority=7,tcp,nw_dst=10.0.0.1,tp_dst=80"
    captured(
        "040e00500000000600000000000000000000000000000000ff04000000000007ffffffffffffffffffffffff000000000001001d80000a020800800018040a000001800014010680001c020050000000",
        Message::FlowMod(FlowMod {
            table_id: OFPTT_ALL,
            command: FlowModCommand::DeleteStrict,
            actions: Vec::new(),
            ..base
        }),
    );
}

#[test]
fn packet_out_as_ovs_ofctl_sends_it() {
    // packet-out "in_port=controller packet=<ARP> actions=output:2,FLOOD"
    let frame =
        "ffffffffffff0200000000010806000108000604000102000000000a0a000001000000000000000a000002";
    captured(
        &format!("040d006300000006fffffffffffffffd00200000000000000000001000000002000000000000000000000010fffffffb0000000000000000{frame}"),
        Message::PacketOut(PacketOut {
            buffer_id: OFP_NO_BUFFER,
            in_port: OFPP_CONTROLLER,
            actions: vec![OfAction::Output(2), OfAction::Flood],
            data: hex(frame),
        }),
    );
}

#[test]
fn multipart_requests_as_ovs_ofctl_sends_them() {
    // dump-flows
    captured(
        "04120038000000020001000000000000ff000000ffffffffffffffff00000000000000000000000000000000000000000001000400000000",
        Message::MultipartRequest(MultipartRequest::Flow(all_flows())),
    );
    // dump-flows "table=1,ip"
    captured(
        "0412004000000006000100000000000001000000ffffffffffffffff00000000000000000000000000000000000000000001000a80000a020800000000000000",
        Message::MultipartRequest(MultipartRequest::Flow(FlowStatsRequest {
            table_id: 1,
            r#match: m("ip"),
            ..all_flows()
        })),
    );
    // dump-aggregate
    captured(
        "04120038000000020002000000000000ff000000ffffffffffffffff00000000000000000000000000000000000000000001000400000000",
        Message::MultipartRequest(MultipartRequest::Aggregate(all_flows())),
    );
    // dump-ports, dump-ports 2
    captured(
        "04120018000000020004000000000000ffffffff00000000",
        Message::MultipartRequest(MultipartRequest::PortStats { port_no: OFPP_ANY }),
    );
    captured(
        "041200180000000200040000000000000000000200000000",
        Message::MultipartRequest(MultipartRequest::PortStats { port_no: 2 }),
    );
    // dump-tables, dump-ports-desc, and the table features ovs-ofctl asks
    // for before a flow mod.
    captured(
        "04120010000000020003000000000000",
        Message::MultipartRequest(MultipartRequest::Table),
    );
    captured(
        "0412001000000002000d000000000000",
        Message::MultipartRequest(MultipartRequest::PortDesc),
    );
    captured(
        "0412001000000002000c000000000000",
        Message::MultipartRequest(MultipartRequest::TableFeatures),
    );
}

#[test]
fn bundle_messages_as_ovs_ofctl_sends_them() {
    // --bundle add-flow "ip,actions=drop": open, add, commit.
    captured(
        "04040018000000074f4e4600000008fc0000000000000003",
        Message::BundleControl(BundleControl {
            bundle_id: 0,
            ctrl_type: bundle_ctrl::OPEN_REQUEST,
            flags: bundle_flags::ATOMIC | bundle_flags::ORDERED,
        }),
    );
    let inner = "040e004000000006000000000000000000000000000000000000000000008000ffffffffffffffffffffffff000000000001000a80000a020800000000000000";
    captured(
        &format!("04040058000000064f4e4600000008fd0000000000000003{inner}"),
        Message::BundleAdd {
            bundle_id: 0,
            flags: bundle_flags::ATOMIC | bundle_flags::ORDERED,
            message: hex(inner),
        },
    );
    captured(
        "04040018000000094f4e4600000008fc0000000000040003",
        Message::BundleControl(BundleControl {
            bundle_id: 0,
            ctrl_type: bundle_ctrl::COMMIT_REQUEST,
            flags: bundle_flags::ATOMIC | bundle_flags::ORDERED,
        }),
    );
}

/// What the switch sends: encode, decode back to the same message, and
/// `ovs-ofctl ofp-print` names the message and reports no error.
fn sent(msg: Message, ofp_print_says: &[&str]) {
    let bytes = encode(0x42, &msg);
    let env = decode(&bytes).unwrap_or_else(|e| panic!("{msg:?}: {e:?}"));
    assert_eq!((env.xid, &env.msg), (0x42, &msg));
    if !crate::test_env::oracle("ovs-ofctl", "--version", "openvswitch-common") {
        return;
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let out = std::process::Command::new("ovs-ofctl")
        .args(["ofp-print", &hex])
        .output()
        .expect("run ovs-ofctl ofp-print");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("decode error") && !text.contains("***"),
        "{msg:?} as {hex}: {text}"
    );
    for want in ofp_print_says {
        assert!(text.contains(want), "{msg:?}: no {want:?} in {text}");
    }
}

fn port(n: u32, name: &str) -> PortDesc {
    PortDesc {
        port_no: n,
        hw_addr: [0x02, 0, 0, 0, 0, n as u8],
        name: name.into(),
        config: 0,
        state: 4,
        curr: 0x840,
        advertised: 0,
        supported: 0,
        peer: 0,
        curr_speed: 10_000_000,
        max_speed: 10_000_000,
    }
}

#[test]
fn what_the_switch_sends_round_trips_and_ovs_reads_it() {
    sent(
        Message::FeaturesReply(Features {
            datapath_id: 0xf10e_0000_0000_0001,
            n_buffers: 0,
            n_tables: 254,
            auxiliary_id: 0,
            capabilities: 0x4f,
        }),
        &[
            "OFPT_FEATURES_REPLY",
            "dpid:f10e000000000001",
            "n_buffers:0",
        ],
    );
    sent(
        Message::GetConfigReply(SwitchConfig {
            flags: 0,
            miss_send_len: 128,
        }),
        &["OFPT_GET_CONFIG_REPLY", "miss_send_len=128"],
    );
    sent(Message::EchoReply(vec![1, 2, 3]), &["OFPT_ECHO_REPLY"]);
    sent(Message::BarrierReply, &["OFPT_BARRIER_REPLY"]);
    let frame = hex(
        "ffffffffffff0200000000010806000108000604000102000000000a0a000001000000000000000a000002",
    );
    sent(
        Message::PacketIn(PacketIn {
            buffer_id: OFP_NO_BUFFER,
            total_len: frame.len() as u16,
            reason: 1,
            table_id: 3,
            cookie: 0x1234,
            r#match: m("in_port=2"),
            data: frame,
        }),
        &[
            "OFPT_PACKET_IN",
            "in_port=2",
            "table_id=3",
            "cookie=0x1234",
            "(via action)",
        ],
    );
    sent(
        Message::PortStatus(PortStatus {
            reason: PortReason::Add,
            desc: port(3, "vm0"),
        }),
        &["OFPT_PORT_STATUS", "ADD", "3(vm0)"],
    );
    sent(
        Message::FlowRemoved(FlowRemoved {
            cookie: 7,
            priority: 100,
            reason: 0,
            table_id: 1,
            duration_sec: 5,
            duration_nsec: 0,
            idle_timeout: 3,
            hard_timeout: 0,
            packet_count: 10,
            byte_count: 640,
            r#match: m("udp,tp_dst=53"),
        }),
        &["OFPT_FLOW_REMOVED", "reason=idle", "pkts10", "bytes640"],
    );
    sent(
        Message::Error {
            err_type: 5,
            code: 1,
            data: Vec::new(),
        },
        &["OFPT_ERROR", "OFPFMFC_TABLE_FULL"],
    );
    sent(
        Message::MultipartReply(MultipartReply {
            more: false,
            body: MultipartReplyBody::Aggregate {
                packet_count: 3,
                byte_count: 192,
                flow_count: 2,
            },
        }),
        &[
            "OFPST_AGGREGATE reply",
            "packet_count=3",
            "byte_count=192",
            "flow_count=2",
        ],
    );
    sent(
        Message::MultipartReply(MultipartReply {
            more: false,
            body: MultipartReplyBody::PortDesc(vec![port(1, "nic0"), port(2, "nic1")]),
        }),
        &["OFPST_PORT_DESC reply", "1(nic0)", "2(nic1)"],
    );
    sent(
        Message::MultipartReply(MultipartReply {
            more: false,
            body: MultipartReplyBody::Table(vec![TableStats {
                table_id: 0,
                active_count: 4,
                lookup_count: 10,
                matched_count: 9,
            }]),
        }),
        &["OFPST_TABLE reply", "active=4", "lookup=10", "matched=9"],
    );
    sent(
        Message::GetAsyncReply(AsyncConfig::OF13_DEFAULT),
        &["OFPT_GET_ASYNC_REPLY"],
    );
    sent(
        Message::RoleReply {
            role: 2,
            generation_id: 9,
        },
        &["OFPT_ROLE_REPLY", "role=primary"],
    );
    sent(
        Message::RoleStatus {
            role: 3,
            reason: 0,
            generation_id: 11,
        },
        &[
            "ONFT_ROLE_STATUS (OF1.3)",
            "role=secondary generation_id=11 reason=primary_request",
        ],
    );
}

/// A bundle keeps each message as received, in order, and gives back the
/// flow mod each decoded to; equal action lists are kept once, and each
/// flow mod still gets its own.
#[test]
fn bundled_flow_mods_keep_messages_and_their_flow_mods() {
    // add-flow "priority=7,tcp,nw_dst=10.0.0.1,tp_dst=80,actions=output:2"
    let add = hex("040e006800000006000000000000000000000000000000000000000000000007ffffffffffffffffffffffff000000000001001d80000a020800800018040a000001800014010680001c020050000000000400180000000000000010000000020000000000000000");
    // del-flows "ip,nw_src=10.0.0.0/8"
    let del = hex("040e00480000000600000000000000000000000000000000ff03000000008000ffffffffffffffffffffffff000000000001001680000a020800800017080a000000ff0000000000");
    let flow_mod = |bytes: &[u8]| match decode(bytes) {
        Ok(Envelope {
            msg: Message::FlowMod(fm),
            ..
        }) => fm,
        other => panic!("not a flow mod: {other:?}"),
    };
    let mut b = BundledFlowMods::default();
    assert!(b.is_empty());
    let sequence = [&add, &del, &add, &del, &add];
    for bytes in sequence {
        b.push(bytes, flow_mod(bytes));
    }
    assert_eq!(b.len(), 5);
    assert_eq!(b.n_adds(), 3);
    for (i, bytes) in sequence.iter().enumerate() {
        assert_eq!(b.message(i), Some(&bytes[..]));
    }
    assert_eq!(b.message(5), None);
    let want: Vec<FlowMod> = sequence.iter().map(|bytes| flow_mod(bytes)).collect();
    assert!(!want[0].actions.is_empty());
    let got: Vec<FlowMod> = b.flow_mods().collect();
    assert_eq!(got, want);
    // Two distinct lists (output:2, and the delete's none), each kept once.
    assert_eq!(b.action_lists(), 2);
}

/// Two buckets of a select group, one watching a port, one a group.
fn buckets() -> Vec<WireBucket> {
    vec![
        WireBucket {
            weight: 3,
            watch_port: 2,
            watch_group: 0xffff_ffff,
            actions: vec![
                OfAction::Mod(fallback::key::Field::NwDst, 0x0a00_0001),
                OfAction::Output(2),
            ],
        },
        WireBucket {
            weight: 1,
            watch_port: OFPP_ANY,
            watch_group: 7,
            actions: vec![OfAction::Group(7)],
        },
    ]
}

#[test]
fn port_group_meter_and_queue_messages_round_trip_and_ovs_reads_them() {
    use mod_command::{ADD, DELETE, MODIFY};
    sent(
        Message::GroupMod(GroupMod {
            command: DELETE,
            group_type: 0,
            group_id: 0xffff_fffc,
            buckets: Vec::new(),
        }),
        &["OFPT_GROUP_MOD", "DEL group_id=4294967292"],
    );
    sent(
        Message::GroupMod(GroupMod {
            command: ADD,
            group_type: 1,
            group_id: 5,
            buckets: buckets(),
        }),
        &[
            "ADD group_id=5,type=select",
            "bucket=weight:3,watch_port:2,actions=set_field:10.0.0.1->ip_dst,output:2",
            "bucket=watch_group:7,actions=group:7",
        ],
    );
    sent(
        Message::MeterMod(MeterMod {
            command: MODIFY,
            flags: 1,
            meter_id: 7,
            bands: Vec::new(),
        }),
        &["OFPT_METER_MOD", "MOD meter=7 kbps"],
    );
    sent(
        Message::MeterMod(MeterMod {
            command: ADD,
            flags: 2 | 4 | 8,
            meter_id: 9,
            bands: meter_bands(),
        }),
        &[
            "ADD meter=9 pktps burst stats bands=",
            "type=drop rate=100 burst_size=10",
            "type=dscp_remark rate=300 burst_size=0 prec_level=1",
        ],
    );
    sent(
        Message::PortMod(PortMod {
            port_no: 2,
            hw_addr: [0x02, 0, 0, 0, 0, 2],
            config: 0x21,
            mask: 0x21,
            advertise: 0,
        }),
        &[
            "OFPT_PORT_MOD",
            "port: 2: addr:02:00:00:00:00:02",
            "config: PORT_DOWN NO_FWD",
        ],
    );
    sent(
        Message::QueueGetConfigRequest { port: 2 },
        &["OFPT_QUEUE_GET_CONFIG_REQUEST", "port=2"],
    );
    sent(
        Message::QueueGetConfigReply { port: 2 },
        // ovs-ofctl prints the port with each queue: none here.
        &["OFPT_QUEUE_GET_CONFIG_REPLY"],
    );
    for (q, says) in [
        (
            MultipartRequest::Group {
                group_id: 0xffff_fffc,
            },
            "OFPST_GROUP request",
        ),
        (MultipartRequest::GroupDesc, "OFPST_GROUP_DESC request"),
        (
            MultipartRequest::GroupFeatures,
            "OFPST_GROUP_FEATURES request",
        ),
        (
            MultipartRequest::Meter { meter_id: 3 },
            "OFPST_METER request (OF1.3) (xid=0x42): meter=3",
        ),
        (
            MultipartRequest::MeterConfig {
                meter_id: 0xffff_ffff,
            },
            "OFPST_METER_CONFIG request",
        ),
        (
            MultipartRequest::MeterFeatures,
            "OFPST_METER_FEATURES request",
        ),
        (
            MultipartRequest::Queue {
                port_no: 1,
                queue_id: OFPQ_ALL,
            },
            "port=1 queue=ALL",
        ),
    ] {
        sent(Message::MultipartRequest(q), &[says]);
    }
    for (body, says) in [
        (MultipartReplyBody::GroupStats(Vec::new()), "OFPST_GROUP reply"),
        (
            MultipartReplyBody::GroupStats(vec![GroupStats {
                group_id: 5,
                ref_count: 2,
                packet_count: 10,
                byte_count: 640,
                duration_sec: 3,
                duration_nsec: 5_000_000,
                buckets: vec![(7, 448), (3, 192)],
            }]),
            "group_id=5,duration=3.005s,ref_count=2,packet_count=10,byte_count=640,bucket0:packet_count=7,byte_count=448,bucket1:packet_count=3,byte_count=192",
        ),
        (MultipartReplyBody::GroupDesc(Vec::new()), "OFPST_GROUP_DESC reply"),
        (
            MultipartReplyBody::GroupDesc(vec![GroupDesc {
                group_type: 1,
                group_id: 5,
                buckets: buckets(),
            }]),
            "group_id=5,type=select,bucket=weight:3,watch_port:2,actions=set_field:10.0.0.1->ip_dst,output:2,bucket=watch_group:7,actions=group:7",
        ),
        (MultipartReplyBody::MeterStats(Vec::new()), "OFPST_METER reply"),
        (
            MultipartReplyBody::MeterStats(vec![MeterStats {
                meter_id: 5,
                flow_count: 2,
                packet_in_count: 10,
                byte_in_count: 640,
                duration_sec: 3,
                duration_nsec: 5_000_000,
                bands: vec![(7, 448), (1, 64)],
            }]),
            "meter:5 flow_count:2 packet_in_count:10 byte_in_count:640 duration:3.005s bands:\n0: packet_count:7 byte_count:448\n1: packet_count:1 byte_count:64",
        ),
        (
            MultipartReplyBody::MeterConfig(Vec::new()),
            "OFPST_METER_CONFIG reply",
        ),
        (
            MultipartReplyBody::MeterConfig(vec![MeterConfigEntry {
                flags: 2 | 4,
                meter_id: 5,
                bands: meter_bands(),
            }]),
            "meter=5 pktps burst bands=\ntype=drop rate=100 burst_size=10\ntype=dscp_remark rate=300 burst_size=0 prec_level=1",
        ),
        (
            MultipartReplyBody::NoEntries(mp_type::QUEUE),
            "OFPST_QUEUE reply",
        ),
        (
            MultipartReplyBody::GroupFeatures(GroupFeatures::default()),
            "Types:  0x0",
        ),
        (
            MultipartReplyBody::MeterFeatures(MeterFeatures::default()),
            "max_meter:0 max_bands:0 max_color:0",
        ),
        (
            MultipartReplyBody::MeterFeatures(crate::openflow::meter_table::features()),
            "max_meter:262144 max_bands:8 max_color:0\nband_types: drop\ncapabilities: kbps pktps burst stats",
        ),
    ] {
        sent(
            Message::MultipartReply(MultipartReply { more: false, body }),
            &[says],
        );
    }
}

fn meter_bands() -> Vec<fallback::ofproto::meter::Band> {
    use fallback::ofproto::meter::{band_type, Band};
    vec![
        Band {
            kind: band_type::DROP,
            rate: 100,
            burst: 10,
            prec_level: 0,
        },
        Band {
            kind: band_type::DSCP_REMARK,
            rate: 300,
            burst: 0,
            prec_level: 1,
        },
    ]
}
