use super::*;

fn flow_err(s: &str) -> String {
    parse_flow(s).expect_err(s).to_string()
}

#[test]
fn unknown_field_names_the_token() {
    assert_eq!(
        flow_err("nw_sorc=1.2.3.4,actions=1"),
        "unknown field \"nw_sorc\" in \"nw_sorc=1.2.3.4\" (expected a match field such as nw_src, or an action list after \"actions=\")"
    );
}

#[test]
fn missing_value() {
    assert_eq!(
        flow_err("ip,nw_src,actions=1"),
        "field \"nw_src\" has no value in \"nw_src\" (write nw_src=VALUE)"
    );
}

#[test]
fn bad_value() {
    assert_eq!(
        flow_err("ip,nw_src=1.2.3.4/33,actions=1"),
        "bad value \"1.2.3.4/33\" for nw_src: expected a prefix length from 0 to 32"
    );
    assert_eq!(
        flow_err("tcp,tp_src=65536,actions=1"),
        "bad value \"65536\" for tp_src: expected a value that fits the 2-byte field tp_src (at most 65535)"
    );
    assert_eq!(
        flow_err("priority=65536,actions=1"),
        "bad value \"65536\" for priority: expected a priority from 0 to 65535"
    );
}

#[test]
fn mask_not_allowed() {
    assert_eq!(
        flow_err("ip,nw_tos=4/0xfc,actions=1"),
        "nw_tos cannot be masked in \"nw_tos=4/0xfc\" (give an exact value, or a mask of all ones)"
    );
}

#[test]
fn missing_actions() {
    assert_eq!(
        flow_err("priority=1,ip"),
        "no actions in \"priority=1,ip\": a flow ends with \"actions=...\" (\"actions=drop\" drops)"
    );
}

#[test]
fn unknown_action() {
    assert!(flow_err("ip,actions=foo").starts_with(
        "unknown action \"foo\" in \"foo\" (expected output:PORT, a port number, in_port"
    ));
}

#[test]
fn bad_action_arg() {
    assert_eq!(
        flow_err("ip,actions=mod_nw_tos:5"),
        "bad argument \"5\" for action mod_nw_tos: expected a TOS value with the two ECN bits zero (a multiple of 4)"
    );
    assert_eq!(
        flow_err("actions=resubmit(,255)"),
        "bad argument \",255\" for action resubmit: expected a port or a table: resubmit(,TABLE), resubmit(PORT,TABLE) or resubmit:PORT"
    );
}

#[test]
fn drop_not_alone() {
    assert_eq!(
        flow_err("actions=output:2,drop"),
        "\"drop\" must be the only action, but \"output:2\" is there too: remove one of them"
    );
}

#[test]
fn action_prerequisite() {
    assert_eq!(
        flow_err("actions=set_field:1.2.3.4->nw_src"),
        "action \"set_field:1.2.3.4->nw_src\" needs the match to select IPv4 (add \"ip\" to the match)"
    );
    assert_eq!(
        flow_err("actions=set_field:5->vlan_vid"),
        "action \"set_field:5->vlan_vid\" needs the match to select packets with a VLAN header (add \"dl_vlan=VID\" to the match)"
    );
}

#[test]
fn field_prerequisite() {
    assert_eq!(
        parse_packet("udp,tcp_src=1").unwrap_err().to_string(),
        "tcp_src in \"tcp_src=1\" needs TCP first (name \"tcp\" before it)"
    );
    assert_eq!(
        flow_err("tcp,nw_frag=later,tp_src=1,actions=1"),
        "tp_src in \"nw_frag=later\" needs a packet that is not a later fragment first (name \"nw_frag=not_later\" before it)"
    );
}

#[test]
fn not_allowed() {
    assert_eq!(
        flow_err("cookie=0x10/0xff,actions=1"),
        "\"cookie=0x10/0xff\" is not allowed in a flow to add: a cookie mask only selects flows to delete or modify; give a plain cookie"
    );
    assert_eq!(
        parse_match("table=1,ip").unwrap_err().to_string(),
        "\"table\" is not allowed in a match: table, priority, cookie and timeouts belong to a flow, not to its match"
    );
}

#[test]
fn unsupported() {
    assert_eq!(
        flow_err("ip,actions=note:ab"),
        "\"note:ab\" is Open vSwitch syntax that flowmark does not support: flowmark implements output, flood, all, normal, in_port, controller, drop, mod_*, set_field, dec_ttl, strip_vlan, push_vlan, group, meter and resubmit"
    );
}

#[test]
fn normalisation_warnings() {
    let (rule, warnings) = parse_flow_with_warnings("tp_dst=80,actions=1").unwrap();
    assert_eq!(rule.r#match, Match::ANY);
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].starts_with("tp_dst ignored"));
}

#[test]
fn push_vlan_prints_as_openflow13_does() {
    // ovs-ofctl's OpenFlow 1.0 default refuses push_vlan; with -O
    // OpenFlow13 it prints this.
    let rule = parse_flow("actions=push_vlan:0x8100,output:1").unwrap();
    assert_eq!(format_flow(&rule), "actions=push_vlan:0x8100,output:1");
}

#[test]
fn openflow13_refusals() {
    assert_eq!(
        flow_err("ipv6,actions=mod_nw_src:1.2.3.4,push_vlan:0x8100"),
        "action \"mod_nw_src:1.2.3.4\" needs the match to select IPv4, and \"push_vlan:0x8100\" needs OpenFlow 1.1 or later, which checks that (OFPBAC_MATCH_INCONSISTENT): add \"ip\" to the match, or remove one of the two actions"
    );
    assert_eq!(
        flow_err("actions=push_vlan:0x8100,push_vlan:0x8100,push_vlan:0x8100"),
        "\"push_vlan:0x8100\" would push a third VLAN header (OFPBAC_BAD_TAG): OVS keeps at most two; remove a push_vlan or pop one first"
    );
    assert!(flow_err("vlan_tci=0x0005,actions=push_vlan:0x8100")
        .starts_with("\"vlan_tci=0x0005/0xffff\" cannot be carried by OpenFlow 1.3"));
    assert!(flow_err("actions=push_vlan:0x8100,set_field:5->vlan_vid")
        .starts_with("\"set_field:5->vlan_vid\" cannot be carried by OpenFlow 1.3"));
    // The same flows without push_vlan are OpenFlow 1.0 flows.
    assert!(parse_flow("ipv6,actions=mod_nw_src:1.2.3.4").is_ok());
    assert!(parse_flow("vlan_tci=0x0005,actions=1").is_ok());
}

#[test]
fn protocol_decides_icmp_width_and_spelling() {
    let canon = |s: &str| format_flow(&parse_flow(s).unwrap());
    // OpenFlow 1.0 carries 16 bits; NXM and OpenFlow 1.3 8 bits.
    assert_eq!(
        canon("icmp,tp_dst=0xeb51,actions=1"),
        "icmp,icmp_code=60241 actions=output:1"
    );
    assert_eq!(
        canon("icmp,tp_dst=0xeb51/0xffff,actions=push_vlan:0x8100"),
        "icmp,icmp_code=81 actions=push_vlan:0x8100"
    );
    assert_eq!(
        canon("icmp,tp_dst=0xeb51/0xff0f,actions=1"),
        "icmp,icmp_code=1 actions=output:1"
    );
    assert_eq!(
        canon("ip,actions=mod_nw_ttl:9,mod_nw_tos:8,mod_nw_src:1.2.3.4,push_vlan:0x8100,strip_vlan,mod_vlan_vid:5"),
        "ip actions=mod_nw_ttl:9,set_field:2->ip_dscp,set_field:1.2.3.4->ip_src,push_vlan:0x8100,pop_vlan,push_vlan:0x8100,set_field:4101->vlan_vid"
    );
    assert_eq!(
        canon("icmp,nw_frag=later,icmp_type=3,actions=1"),
        "icmp,nw_frag=later,icmp_type=3 actions=output:1"
    );
}

#[test]
fn ipv6_text_as_glibc_prints_it() {
    for s in [
        "::",
        "::1",
        "::2",
        "1::",
        "1:0:0:1::1",
        "1:0:1:0:1:0:1:0",
        "::ffff:1.2.3.4",
        "::1.2.3.4",
        "2001:db8::1",
    ] {
        assert_eq!(fmt_ipv6(parse_ipv6(s).unwrap()), s);
    }
}
