//! Property tests of the OpenFlow codec: random rules survive encode →
//! decode, and no byte string makes the decoder or a session panic.

#[path = "support/pipeline_switch.rs"]
mod pipeline_switch;
use fallback::ofproto::syntax::parse_flow;
use flowmark::openflow::message::{FlowMod, FlowModCommand, OFPG_ANY, OFP_NO_BUFFER};
use flowmark::openflow::port::OFPP_ANY;
use flowmark::openflow::session::Session;
use flowmark::openflow::switch::PortInfo;
use flowmark::openflow::{decode, encode, Message};
use pipeline_switch::PipelineSwitch;
use proptest::prelude::*;
use std::time::Instant;

/// A protocol shorthand with the match fields and actions valid for it.
fn proto() -> impl Strategy<Value = (&'static str, Vec<&'static str>, Vec<&'static str>)> {
    prop_oneof![
        Just((
            "",
            vec![
                "in_port=3",
                "dl_src=00:11:22:33:44:55",
                "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00",
                "dl_vlan=7",
                "vlan_tci=0x1000/0x1000",
                "dl_vlan=9,dl_vlan_pcp=5"
            ],
            vec![
                "output:2",
                "NORMAL",
                "FLOOD",
                "ALL",
                "IN_PORT",
                "LOCAL",
                "CONTROLLER:128",
                "mod_dl_src:00:00:00:00:00:07",
                "strip_vlan",
                "push_vlan:0x8100",
                "resubmit(,4)",
                "resubmit:2",
                "resubmit(1,3)"
            ]
        )),
        Just((
            "ip",
            vec![
                "nw_src=10.0.0.0/8",
                "nw_dst=192.168.1.1",
                "nw_tos=0x20",
                "nw_ecn=2",
                "nw_ttl=9",
                "nw_frag=later",
                "nw_frag=first",
                "nw_proto=47",
                "in_port=1"
            ],
            vec![
                "output:1",
                "mod_nw_src:1.2.3.4",
                "mod_nw_dst:5.6.7.8",
                "mod_nw_tos:0x10",
                "mod_nw_ttl:3",
                "dec_ttl",
                "resubmit(,9)",
                "mod_dl_dst:52:54:00:00:00:05"
            ]
        )),
        Just((
            "tcp",
            vec![
                "tp_src=80",
                "tp_dst=0x100/0xff00",
                "tcp_flags=+syn-ack",
                "tcp_flags=0x012",
                "nw_src=10.1.0.0/16"
            ],
            vec!["mod_tp_src:81", "mod_tp_dst:443", "output:3", "dec_ttl"]
        )),
        Just((
            "udp",
            vec!["udp_src=2152", "udp_dst=2123", "nw_dst=192.168.200.3"],
            vec![
                "mod_tp_src:1",
                "mod_tp_dst:2",
                "mod_nw_src:192.168.200.188",
                "output:2"
            ]
        )),
        Just((
            "icmp",
            vec!["icmp_type=8", "icmp_code=0"],
            vec!["CONTROLLER:65535", "output:1"]
        )),
        Just((
            "arp",
            vec![
                "arp_spa=10.0.0.1",
                "arp_tpa=10.0.0.0/24",
                "arp_op=2",
                "arp_sha=00:11:22:33:44:55",
                "arp_tha=00:00:00:00:00:00/ff:ff:ff:00:00:00"
            ],
            vec!["FLOOD", "output:4"]
        )),
        Just((
            "ipv6",
            vec![
                "ipv6_src=2001:db8::/32",
                "ipv6_dst=::1",
                "nw_ttl=3",
                "nw_tos=4"
            ],
            vec!["set_field:2001:db8::9->ipv6_src", "dec_ttl", "output:1"]
        )),
        Just((
            "tcp6",
            vec!["tcp_dst=22", "ipv6_dst=fe80::/10"],
            vec!["mod_tp_dst:2222", "output:1"]
        )),
        Just((
            "icmp6",
            vec!["icmpv6_type=135", "icmpv6_code=0"],
            vec!["IN_PORT", "output:2"]
        )),
    ]
}

fn flow_text() -> impl Strategy<Value = String> {
    (
        proto(),
        0u8..3,
        any::<u16>(),
        any::<u64>(),
        0u16..100,
        0u16..100,
        any::<u64>(),
        any::<u64>(),
    )
        .prop_flat_map(
            |((p, fields, actions), table, prio, cookie, idle, hard, fsel, asel)| {
                let nf = fields.len();
                let na = actions.len();
                let picked_fields: Vec<&str> = (0..nf)
                    .filter(|i| fsel >> i & 1 == 1)
                    .map(|i| fields[i])
                    .collect();
                let mut picked_actions: Vec<&str> = (0..na)
                    .filter(|i| asel >> i & 1 == 1)
                    .map(|i| actions[i])
                    .collect();
                if picked_actions.is_empty() {
                    picked_actions.push("drop");
                }
                let mut items = vec![format!("table={}", table * 4), format!("priority={prio}")];
                if cookie % 3 != 0 {
                    items.push(format!("cookie={cookie:#x}"));
                }
                items.push(format!("idle_timeout={idle},hard_timeout={hard}"));
                if !p.is_empty() {
                    items.push(p.to_string());
                }
                // Some field pairs conflict (two dl_vlan settings): the parser
                // decides, and refused combinations are skipped.
                items.extend(picked_fields.iter().map(|s| s.to_string()));
                Just(format!(
                    "{},actions={}",
                    items.join(","),
                    picked_actions.join(",")
                ))
            },
        )
}

#[path = "support/test_env.rs"]
mod test_env;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(test_env::cases(512)))]

    #[test]
    fn rules_survive_flow_mod_encode_decode(text in flow_text()) {
        let rule = match parse_flow(&text) {
            Ok(r) => r,
            Err(_) => return Ok(()),
        };
        let fm = FlowMod {
            cookie: rule.cookie,
            cookie_mask: 0,
            table_id: rule.table,
            command: FlowModCommand::Add,
            idle_timeout: rule.idle_timeout,
            hard_timeout: rule.hard_timeout,
            priority: rule.priority,
            buffer_id: OFP_NO_BUFFER,
            out_port: OFPP_ANY,
            out_group: OFPG_ANY,
            flags: 0,
            r#match: rule.r#match,
            actions: rule.actions.clone(),
        };
        let bytes = encode(42, &Message::FlowMod(fm.clone()));
        let env = decode(&bytes).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(env.xid, 42);
        prop_assert_eq!(env.msg, Message::FlowMod(fm), "{}", text);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        text in flow_text(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let Ok(rule) = parse_flow(&text) else { return Ok(()) };
        let fm = FlowMod {
            cookie: 0, cookie_mask: 0, table_id: rule.table, command: FlowModCommand::Add,
            idle_timeout: 0, hard_timeout: 0, priority: rule.priority, buffer_id: OFP_NO_BUFFER,
            out_port: OFPP_ANY, out_group: OFPG_ANY, flags: 0, r#match: rule.r#match,
            actions: rule.actions,
        };
        let mut bytes = encode(1, &Message::FlowMod(fm));
        for (at, v) in flips {
            let n = bytes.len();
            // Keep the header's version and type sometimes, so the body
            // decoders see the damage.
            let i = 4 + at % (n - 4);
            bytes[i] ^= v;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        let _ = decode(&bytes);
        // A session fed the same bytes after a good HELLO answers or
        // closes, but does not panic.
        let sw = PipelineSwitch::new(1, vec![PortInfo { ofport: 1, name: "p1".into(), config: 0 }]);
        let mut s = Session::new(Instant::now());
        s.receive(&encode(0, &Message::Hello { versions: 1 << 4 }), &sw, Instant::now());
        s.receive(&bytes, &sw, Instant::now());
        let _ = s.take_output();
    }
}
