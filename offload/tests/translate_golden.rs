//! Golden tests for megaflow → rte_flow translation: one per translation
//! rule, with the exact testpmd line, the `exact` flag, and every rejection
//! path with its reason text. Megaflows are built field by field (no flow
//! syntax parser).

use fallback::key::{ethertype, frag, ipproto, Field, VLAN_CFI};
use fallback::ofproto::Match;
use offload::device::{Capabilities, Profile};
use offload::translate::translate;

const IN_PORT: u128 = 3;

fn generic() -> Capabilities {
    Profile::Generic.capabilities()
}

/// in_port and dl_type exact, like every megaflow xlate makes.
fn base(dl_type: u16) -> Match {
    let mut m = Match::ANY;
    m.set_exact(Field::InPort, IN_PORT);
    m.set_exact(Field::DlType, dl_type.into());
    m
}

/// An untagged IPv4 megaflow that is not a fragment (the common case).
fn ipv4() -> Match {
    let mut m = base(ethertype::IPV4);
    m.set_masked(Field::VlanTci, 0, VLAN_CFI.into());
    m.set_exact(Field::NwFrag, 0);
    m.mask.set(Field::NwFrag, frag::MASK.into());
    m
}

fn ipv6() -> Match {
    let mut m = base(ethertype::IPV6);
    m.set_masked(Field::VlanTci, 0, VLAN_CFI.into());
    m.set_masked(Field::NwFrag, 0, frag::MASK.into());
    m
}

fn set_frag(m: &mut Match, value: u8, mask: u8) {
    m.set_masked(Field::NwFrag, value.into(), mask.into());
}

fn ip4(a: u8, b: u8, c: u8, d: u8) -> u128 {
    u32::from_be_bytes([a, b, c, d]).into()
}

fn ip6(s: &str) -> u128 {
    u128::from(s.parse::<std::net::Ipv6Addr>().expect("test address"))
}

fn mac(s: &str) -> u128 {
    s.split(':').fold(0u128, |acc, b| {
        (acc << 8) | u128::from_str_radix(b, 16).expect("test mac")
    })
}

/// Translates with mark 7 and two rx queues and renders for DPDK port 0.
fn line(m: &Match, caps: &Capabilities) -> (String, bool) {
    let t = translate(m, caps, 7, 2).unwrap_or_else(|e| panic!("rejected: {e}"));
    assert_eq!(t.port, IN_PORT as u32, "in_port picks the port");
    (t.rule.testpmd_create(0).expect("renders"), t.exact)
}

fn reason(m: &Match, caps: &Capabilities) -> String {
    match translate(m, caps, 7, 2) {
        Ok(t) => panic!("offloaded: {:?}", t.rule.testpmd_create(0)),
        Err(e) => e.to_string(),
    }
}

const HEAD: &str = "flow create 0 ingress priority 0 group 0 pattern ";
const TAIL: &str = " / end actions mark id 7 / rss queues 0 1 end / end";

#[track_caller]
fn golden(m: &Match, caps: &Capabilities, pattern: &str, exact: bool) {
    let (got, got_exact) = line(m, caps);
    assert_eq!(got, format!("{HEAD}{pattern}{TAIL}"));
    assert_eq!(got_exact, exact, "exact flag of {got}");
}

// ---- ETH, has_vlan, dl_type placement ----

#[test]
fn untagged_ipv4_is_ovs_style_and_exact() {
    golden(
        &ipv4(),
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 fragment_offset spec 0x0 fragment_offset mask 0x3fff",
        true,
    );
}

#[test]
fn vlan_unmasked_matches_untagged_only_so_not_exact() {
    let mut m = ipv4();
    m.set_masked(Field::VlanTci, 0, 0);
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 / ipv4 fragment_offset spec 0x0 fragment_offset mask 0x3fff",
        false,
    );
}

#[test]
fn mac_addresses_with_their_masks() {
    let mut m = ipv4();
    m.set_exact(Field::DlSrc, mac("00:11:22:33:44:55"));
    m.set_masked(
        Field::DlDst,
        mac("01:00:5e:7f:00:01"),
        mac("ff:ff:ff:00:00:00"),
    );
    golden(
        &m,
        &generic(),
        "eth dst spec 01:00:5e:00:00:00 dst prefix 24 src is 00:11:22:33:44:55 type is 0x0800 \
         has_vlan is 0 / ipv4 fragment_offset spec 0x0 fragment_offset mask 0x3fff",
        true,
    );
    let mut m = ipv4();
    m.set_masked(
        Field::DlDst,
        mac("01:00:00:00:00:00"),
        mac("01:00:00:00:00:00"),
    );
    golden(
        &m,
        &generic(),
        "eth dst spec 01:00:00:00:00:00 dst mask 01:00:00:00:00:00 type is 0x0800 has_vlan is 0 \
         / ipv4 fragment_offset spec 0x0 fragment_offset mask 0x3fff",
        true,
    );
}

#[test]
fn l2_only_megaflow_without_type() {
    let mut m = Match::ANY;
    m.set_exact(Field::InPort, IN_PORT);
    m.set_exact(Field::DlDst, mac("aa:bb:cc:dd:ee:ff"));
    // Tagged and untagged frames alike: exact.
    golden(&m, &generic(), "eth dst is aa:bb:cc:dd:ee:ff", true);
}

#[test]
fn non_ip_ethertype_goes_in_eth_type() {
    let mut m = base(ethertype::ARP);
    m.set_masked(Field::VlanTci, 0, VLAN_CFI.into());
    golden(&m, &generic(), "eth type is 0x0806 has_vlan is 0", true);
}

#[test]
fn dl_type_partial_mask_rejected() {
    let mut m = ipv4();
    m.set_masked(Field::DlType, 0x0800, 0xff00);
    assert_eq!(
        reason(&m, &generic()),
        "dl_type: partial mask 0xff00: only an exact EtherType is offloaded"
    );
}

// ---- VLAN ----

#[test]
fn vlan_present_puts_type_in_inner_type_and_strips_cfi() {
    let mut m = ipv4();
    m.set_masked(Field::VlanTci, u128::from(VLAN_CFI | 100), 0x1fff);
    golden(
        &m,
        &generic(),
        "eth / vlan tci spec 0x64 tci mask 0xfff inner_type is 0x0800 / ipv4 \
         fragment_offset spec 0x0 fragment_offset mask 0x3fff",
        true,
    );
}

#[test]
fn vlan_full_tci_clears_dei_in_spec_and_mask() {
    let mut m = ipv4();
    // PCP 5, CFI (VLAN present), VID 100.
    m.set_exact(Field::VlanTci, 0xb064);
    golden(
        &m,
        &generic(),
        "eth / vlan tci spec 0xa064 tci mask 0xefff inner_type is 0x0800 / ipv4 \
         fragment_offset spec 0x0 fragment_offset mask 0x3fff",
        true,
    );
}

#[test]
fn vlan_present_any_vid() {
    let mut m = base(ethertype::IPV6);
    m.set_masked(Field::VlanTci, VLAN_CFI.into(), VLAN_CFI.into());
    golden(
        &m,
        &generic(),
        "eth / vlan inner_type is 0x86dd / ipv6",
        true,
    );
}

#[test]
fn vlan_tagged_non_ip() {
    let mut m = base(0x88cc);
    m.set_masked(Field::VlanTci, u128::from(VLAN_CFI | 7), 0x1fff);
    golden(
        &m,
        &generic(),
        "eth / vlan tci spec 0x7 tci mask 0xfff inner_type is 0x88cc",
        true,
    );
}

#[test]
fn vlan_mask_without_cfi() {
    // Non-zero VID bits: only tagged frames qualify.
    let mut m = ipv4();
    m.set_masked(Field::VlanTci, 5, 0x0fff);
    golden(
        &m,
        &generic(),
        "eth / vlan tci spec 0x5 tci mask 0xfff inner_type is 0x0800 / ipv4 \
         fragment_offset spec 0x0 fragment_offset mask 0x3fff",
        true,
    );
    // Zero VID bits: untagged and VID-0 tagged frames; narrowed to untagged.
    m.set_masked(Field::VlanTci, 0, 0x0fff);
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 fragment_offset spec 0x0 fragment_offset mask 0x3fff",
        false,
    );
}

#[test]
fn vlan_absent_with_tci_bits_rejected() {
    let mut m = ipv4();
    m.set_masked(Field::VlanTci, 5, 0x1fff);
    assert_eq!(
        reason(&m, &generic()),
        "vlan_tci: 0x0005/0x1fff matches no packet (no VLAN, yet TCI bits set)"
    );
}

// ---- xl710: no ETH match on type alone ----

fn xl710() -> Capabilities {
    Profile::Xl710.capabilities()
}

/// With the VLAN wildcarded, the IP item would look past any number of
/// tags (the datapath's key reads one, so a double-tagged frame is outside
/// the megaflow): the rule narrows to untagged frames (fuzz, nic_matcher).
#[test]
fn xl710_vlan_unmasked_narrows_to_untagged() {
    let mut m = ipv4();
    m.set_masked(Field::VlanTci, 0, 0);
    golden(
        &m,
        &xl710(),
        "eth has_vlan is 0 / ipv4 fragment_offset spec 0x0 fragment_offset mask 0x3fff",
        false,
    );
    let mut m = base(ethertype::IPV6);
    golden(&m, &xl710(), "eth has_vlan is 0 / ipv6", false);
    m.set_exact(Field::NwTtl, 1);
    golden(&m, &xl710(), "eth has_vlan is 0 / ipv6 hop is 1", false);
}

#[test]
fn xl710_untagged_keeps_has_vlan_without_type() {
    golden(
        &ipv4(),
        &xl710(),
        "eth has_vlan is 0 / ipv4 fragment_offset spec 0x0 fragment_offset mask 0x3fff",
        true,
    );
}

#[test]
fn xl710_type_with_mac_or_vlan_is_fine() {
    let mut m = ipv4();
    m.set_exact(Field::DlSrc, mac("00:00:00:00:00:01"));
    golden(
        &m,
        &xl710(),
        "eth src is 00:00:00:00:00:01 type is 0x0800 has_vlan is 0 / ipv4 fragment_offset spec \
         0x0 fragment_offset mask 0x3fff",
        true,
    );
    let mut m = base(ethertype::ARP);
    m.set_masked(Field::VlanTci, u128::from(VLAN_CFI), VLAN_CFI.into());
    golden(&m, &xl710(), "eth / vlan inner_type is 0x0806", true);
}

#[test]
fn xl710_type_alone_without_l3_rejected() {
    let m = base(ethertype::ARP);
    assert_eq!(
        reason(&m, &xl710()),
        "dl_type: this NIC (profile xl710) cannot match an Ethernet header on its type alone, \
         and no IPv4/IPv6 item pins EtherType 0x0806"
    );
}

// ---- IPv4 ----

#[test]
fn ipv4_fields_with_masks() {
    let mut m = ipv4();
    m.set_masked(Field::NwSrc, ip4(10, 1, 0, 0), u128::from(0xffff_0000u32));
    m.set_masked(
        Field::NwDst,
        ip4(192, 168, 0, 7),
        u128::from(0xffff_00ffu32),
    );
    m.set_masked(Field::NwTos, 0xb8, 0xfc);
    m.set_exact(Field::NwTtl, 64);
    m.set_exact(Field::NwProto, 47);
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 tos spec 0xb8 tos mask 0xfc fragment_offset spec \
         0x0 fragment_offset mask 0x3fff ttl is 64 proto is 47 src spec 10.1.0.0 src prefix 16 dst \
         spec 192.168.0.7 dst mask 255.255.0.255",
        true,
    );
}

#[test]
fn ipv4_full_tos_and_exact_addresses() {
    let mut m = ipv4();
    m.set_exact(Field::NwSrc, ip4(192, 168, 200, 3));
    m.set_exact(Field::NwDst, ip4(192, 168, 200, 188));
    m.set_exact(Field::NwTos, 0x10);
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 tos is 0x10 fragment_offset spec 0x0 \
         fragment_offset mask 0x3fff src is 192.168.200.3 dst is 192.168.200.188",
        true,
    );
}

#[test]
fn ipv4_first_fragment_is_mf_and_offset_zero() {
    let mut m = ipv4();
    set_frag(&mut m, frag::ANY, frag::MASK);
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 fragment_offset spec 0x2000 fragment_offset mask \
         0x3fff",
        true,
    );
}

#[test]
fn ipv4_later_fragment_is_a_range() {
    let mut m = ipv4();
    set_frag(&mut m, frag::MASK, frag::MASK);
    m.set_exact(Field::NwProto, ipproto::UDP.into());
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 fragment_offset spec 0x1 fragment_offset last \
         0x1fff fragment_offset mask 0x1fff proto is 17",
        true,
    );
    let no_ranges = Capabilities {
        ranges: false,
        ..generic()
    };
    assert_eq!(
        reason(&m, &no_ranges),
        "nw_frag: nw_frag=later needs a fragment_offset range (last), which this NIC (profile \
         generic) cannot match"
    );
}

#[test]
fn ipv4_later_fragment_zero_l4_fields_are_consumed() {
    let mut m = ipv4();
    set_frag(&mut m, frag::MASK, frag::MASK);
    m.set_exact(Field::NwProto, ipproto::TCP.into());
    m.set_exact(Field::TpDst, 0);
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 fragment_offset spec 0x1 fragment_offset last \
         0x1fff fragment_offset mask 0x1fff proto is 6",
        true,
    );
    m.set_exact(Field::TpDst, 80);
    assert_eq!(
        reason(&m, &generic()),
        "tp_dst: 0x50: later fragments carry no L4 header (the key holds 0), so this matches no \
         packet"
    );
}

#[test]
fn ipv4_not_later_is_offset_zero() {
    let mut m = ipv4();
    set_frag(&mut m, 0, frag::LATER);
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 fragment_offset spec 0x0 fragment_offset mask 0x1fff",
        true,
    );
}

#[test]
fn ipv4_frag_rejections() {
    let mut m = ipv4();
    set_frag(&mut m, frag::ANY, frag::ANY);
    assert_eq!(
        reason(&m, &generic()),
        "nw_frag: any fragment (first or later) is two rte_flow matches (MF set or offset \
         non-zero); a single rule cannot express it"
    );
    set_frag(&mut m, frag::LATER, frag::MASK);
    assert_eq!(
        reason(&m, &generic()),
        "nw_frag: 0x2/0x3 matches no packet (later fragment bit without fragment bit)"
    );
    set_frag(&mut m, 0x4, 0xff);
    assert_eq!(
        reason(&m, &generic()),
        "nw_frag: 0x4/0xff has bits outside 0x3 set: matches no packet"
    );
}

#[test]
fn ipv4_without_frag_mask() {
    let mut m = base(ethertype::IPV4);
    m.set_masked(Field::VlanTci, 0, VLAN_CFI.into());
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4",
        true,
    );
}

// ---- IPv6 ----

#[test]
fn ipv6_fields_with_masks() {
    let mut m = ipv6();
    m.set_masked(Field::Ipv6Src, ip6("2001:db8::"), u128::MAX << 64);
    m.set_exact(Field::Ipv6Dst, ip6("2001:db8::1"));
    m.set_exact(Field::NwTos, 0x28);
    m.set_exact(Field::NwTtl, 255);
    golden(
        &m,
        &generic(),
        "eth type is 0x86dd has_vlan is 0 / ipv6 tc is 0x28 hop is 255 src spec 2001:db8:: src \
         prefix 64 dst is 2001:db8::1 has_frag_ext is 0",
        false,
    );
    let mut m = ipv6();
    m.set_masked(
        Field::Ipv6Dst,
        ip6("ff02::1:ff00:0"),
        ip6("ffff::ffff:ffff:ff00:0"),
    );
    m.set_masked(Field::NwTos, 0x20, 0xfc);
    golden(
        &m,
        &generic(),
        "eth type is 0x86dd has_vlan is 0 / ipv6 tc spec 0x20 tc mask 0xfc dst spec ff02::1:ff00:0 \
         dst mask ffff::ffff:ffff:ff00:0 has_frag_ext is 0",
        false,
    );
}

/// `has_frag_ext is 1` would also match atomic fragments (a Fragment
/// header with offset 0 and no more-fragments flag), which the datapath keys
/// as no fragment: wider than the megaflow, so refused.
#[test]
fn ipv6_any_fragment_rejected() {
    let mut m = ipv6();
    set_frag(&mut m, frag::ANY, frag::ANY);
    assert_eq!(
        reason(&m, &generic()),
        "nw_frag: IPv6 has_frag_ext also matches atomic fragments (a Fragment header with \
         offset 0 and no more-fragments flag), which are no fragments to the datapath; \
         nw_frag=yes over IPv6 stays in software"
    );
}

#[test]
fn ipv6_first_or_later_fragment_rejected() {
    let mut m = ipv6();
    set_frag(&mut m, frag::ANY, frag::MASK);
    let why = "nw_frag: telling first from later IPv6 fragments needs the IPV6_FRAG_EXT item, \
               which flowmark does not use";
    assert_eq!(reason(&m, &generic()), why);
    set_frag(&mut m, frag::MASK, frag::MASK);
    assert_eq!(reason(&m, &generic()), why);
}

#[test]
fn ipv6_proto_without_l4_item_rejected() {
    let mut m = ipv6();
    m.set_exact(Field::NwProto, 47);
    assert_eq!(
        reason(&m, &generic()),
        "nw_proto: IPv6 next header 47 (mask 0xff) has no L4 item to pin it: rte_flow's ipv6 \
         proto is the first next header, and extension headers cannot be excluded"
    );
    // ICMP (1) is not an IPv6 L4 item either.
    m.set_exact(Field::NwProto, ipproto::ICMP.into());
    assert!(reason(&m, &generic()).starts_with("nw_proto: IPv6 next header 1 "));
}

#[test]
fn ipv6_l4_item_pins_proto() {
    let mut m = ipv6();
    m.set_exact(Field::NwProto, ipproto::TCP.into());
    m.set_exact(Field::TpDst, 443);
    golden(
        &m,
        &generic(),
        "eth type is 0x86dd has_vlan is 0 / ipv6 has_frag_ext is 0 / tcp dst is 443",
        false,
    );
}

#[test]
fn icmpv6_type_and_code() {
    let mut m = ipv6();
    m.set_exact(Field::NwProto, ipproto::ICMPV6.into());
    m.set_exact(Field::TpSrc, 135);
    m.set_exact(Field::TpDst, 0);
    golden(
        &m,
        &generic(),
        "eth type is 0x86dd has_vlan is 0 / ipv6 has_frag_ext is 0 / icmp6 type is 135 code is 0",
        false,
    );
}

// ---- L4 ----

fn l4(proto: u8) -> Match {
    let mut m = ipv4();
    m.set_exact(Field::NwProto, proto.into());
    m
}

#[test]
fn tcp_ports_and_flags() {
    let mut m = l4(ipproto::TCP);
    m.set_exact(Field::TpSrc, 1024);
    m.set_exact(Field::TpDst, 80);
    m.set_masked(Field::TcpFlags, 0x02, 0x12);
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 fragment_offset spec 0x0 fragment_offset mask \
         0x3fff / tcp src is 1024 dst is 80 flags spec 0x2 flags mask 0x12",
        true,
    );
    m.set_exact(Field::TcpFlags, 0x10);
    assert_eq!(
        reason(&m, &generic()),
        "tcp_flags: mask 0xffff covers bits above 0xff (NS, reserved): the TCP item's flags field \
         has 8 bits"
    );
    m.set_masked(Field::TcpFlags, 0x10, 0xff);
    let (got, _) = line(&m, &generic());
    assert!(
        got.contains("/ tcp src is 1024 dst is 80 flags is 0x10 /"),
        "{got}"
    );
}

#[test]
fn tcp_item_alone_drops_proto_mask() {
    golden(
        &l4(ipproto::TCP),
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 fragment_offset spec 0x0 fragment_offset mask \
         0x3fff / tcp",
        true,
    );
}

#[test]
fn udp_and_sctp_ports() {
    let mut m = l4(ipproto::UDP);
    m.set_exact(Field::TpSrc, 2152);
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 fragment_offset spec 0x0 fragment_offset mask \
         0x3fff / udp src is 2152",
        true,
    );
    let mut m = l4(ipproto::SCTP);
    m.set_exact(Field::TpDst, 38412);
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 fragment_offset spec 0x0 fragment_offset mask \
         0x3fff / sctp dst is 38412",
        true,
    );
}

#[test]
fn partial_port_mask_rejected() {
    let mut m = l4(ipproto::UDP);
    m.set_masked(Field::TpDst, 0x1000, 0xf000);
    assert_eq!(
        reason(&m, &generic()),
        "tp_dst: partial mask 0xf000: L4 ports are offloaded with a full mask only"
    );
    let mut m = l4(ipproto::TCP);
    m.set_masked(Field::TpSrc, 0, 0xfc00);
    assert_eq!(
        reason(&m, &generic()),
        "tp_src: partial mask 0xfc00: L4 ports are offloaded with a full mask only"
    );
}

#[test]
fn icmp_type_and_code_from_tp_fields() {
    let mut m = l4(ipproto::ICMP);
    m.set_exact(Field::TpSrc, 8);
    m.set_exact(Field::TpDst, 0);
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 fragment_offset spec 0x0 fragment_offset mask \
         0x3fff / icmp type is 8 code is 0",
        true,
    );
    // A byte mask works the same; a value over 0xff matches nothing.
    m.set_masked(Field::TpSrc, 3, 0xff);
    m.set_masked(Field::TpDst, 0, 0);
    let (got, _) = line(&m, &generic());
    assert!(got.ends_with("/ icmp type is 3 / end actions mark id 7 / rss queues 0 1 end / end"));
    m.set_exact(Field::TpSrc, 0x100);
    assert_eq!(
        reason(&m, &generic()),
        "tp_src: ICMP type/code 0x100 is over 0xff: matches no packet"
    );
}

#[test]
fn l4_item_without_frag_mask_is_not_exact() {
    // Later fragments of the megaflow carry no L4 header for the item.
    let mut m = base(ethertype::IPV4);
    m.set_masked(Field::VlanTci, 0, VLAN_CFI.into());
    m.set_exact(Field::NwProto, ipproto::UDP.into());
    m.set_exact(Field::TpDst, 53);
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 / udp dst is 53",
        false,
    );
    // First fragments do carry it.
    set_frag(&mut m, frag::ANY, frag::MASK);
    golden(
        &m,
        &generic(),
        "eth type is 0x0800 has_vlan is 0 / ipv4 fragment_offset spec 0x2000 fragment_offset mask \
         0x3fff / udp dst is 53",
        true,
    );
}

#[test]
fn l4_masks_on_other_protocols_rejected() {
    let mut m = l4(47);
    m.set_exact(Field::TpSrc, 1);
    assert_eq!(
        reason(&m, &generic()),
        "tp_src: L4 fields are offloaded for tcp, udp, sctp, icmp and icmp6 only (nw_proto=47)"
    );
    let mut m = ipv4();
    m.set_exact(Field::TpDst, 80);
    assert_eq!(
        reason(&m, &generic()),
        "tp_dst: L4 fields need an exact nw_proto"
    );
    let mut m = l4(ipproto::UDP);
    m.set_masked(Field::TcpFlags, 0x2, 0x2);
    assert_eq!(
        reason(&m, &generic()),
        "tcp_flags: only TCP has flags (nw_proto=17)"
    );
}

// ---- fields without items ----

#[test]
fn arp_fields_rejected() {
    let mut m = base(ethertype::ARP);
    m.set_exact(Field::NwSrc, ip4(10, 0, 0, 1));
    assert_eq!(
        reason(&m, &generic()),
        "nw_src: no rte_flow item matches ARP fields (dl_type=0x0806)"
    );
    let mut m = base(ethertype::ARP);
    m.set_exact(Field::ArpSha, mac("00:11:22:33:44:55"));
    assert_eq!(
        reason(&m, &generic()),
        "arp_sha: no rte_flow item matches ARP fields"
    );
    let mut m = base(ethertype::ARP);
    m.set_exact(Field::ArpTha, 0);
    assert_eq!(
        reason(&m, &generic()),
        "arp_tha: no rte_flow item matches ARP fields"
    );
}

#[test]
fn ip_fields_need_an_ip_dl_type() {
    let mut m = Match::ANY;
    m.set_exact(Field::InPort, IN_PORT);
    m.set_exact(Field::NwDst, ip4(10, 0, 0, 1));
    assert_eq!(
        reason(&m, &generic()),
        "nw_dst: IP and L4 fields need an exact dl_type (0x0800 or 0x86dd)"
    );
    let mut m = base(0x88cc);
    m.set_exact(Field::NwTtl, 1);
    assert_eq!(
        reason(&m, &generic()),
        "nw_ttl: no rte_flow item for this field with dl_type=0x88cc"
    );
}

#[test]
fn field_of_the_other_ip_version_is_left_over() {
    let mut m = ipv4();
    m.set_exact(Field::Ipv6Src, 1);
    assert_eq!(
        reason(&m, &generic()),
        "ipv6_src: no rte_flow item expresses this field"
    );
    let mut m = ipv6();
    m.set_exact(Field::NwSrc, 1);
    assert_eq!(
        reason(&m, &generic()),
        "nw_src: no rte_flow item expresses this field"
    );
}

// ---- in_port, actions, profiles ----

#[test]
fn in_port_must_be_exact() {
    let mut m = ipv4();
    m.set_masked(Field::InPort, 0, 0);
    assert_eq!(
        reason(&m, &generic()),
        "in_port: must be matched exactly (mask 0x0): a rule is installed on one ingress port"
    );
    m.set_masked(Field::InPort, 2, 0xfe);
    assert_eq!(
        reason(&m, &generic()),
        "in_port: must be matched exactly (mask 0xfe): a rule is installed on one ingress port"
    );
}

#[test]
fn no_mark_profile_rejected() {
    let caps = Profile::NoMark.capabilities();
    assert_eq!(
        reason(&ipv4(), &caps),
        "MARK unsupported by this NIC (profile no-mark)"
    );
}

#[test]
fn no_rx_queue_rejected() {
    let err = translate(&ipv4(), &generic(), 1, 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "RSS: the port has no rx queue to spread marked packets over"
    );
    assert_eq!(err.field, None);
}

#[test]
fn rejection_names_the_field() {
    let mut m = l4(ipproto::UDP);
    m.set_masked(Field::TpDst, 0x1000, 0xf000);
    let err = translate(&m, &generic(), 1, 1).unwrap_err();
    assert_eq!(err.field, Some(Field::TpDst));
}

#[test]
fn actions_mark_then_rss_over_every_queue() {
    let mut t = translate(&ipv4(), &generic(), 0, 4).expect("offloads");
    t.set_mark(123_456);
    let got = t.rule.testpmd_create(5).expect("renders");
    assert_eq!(
        got,
        "flow create 5 ingress priority 0 group 0 pattern eth type is 0x0800 has_vlan is 0 / ipv4 \
         fragment_offset spec 0x0 fragment_offset mask 0x3fff / end actions mark id 123456 / rss \
         queues 0 1 2 3 end / end"
    );
    assert_eq!(t.rule.mark(), Some(123_456));
    let tiny = Profile::Tiny.capabilities();
    assert!(translate(&ipv4(), &tiny, 1, 1).is_ok());
}

/// Every field of a tagged IPv6/TCP megaflow, with prefix masks.
fn widest_megaflow(odd_masks: bool) -> Match {
    let mut m = base(ethertype::IPV6);
    m.set_masked(Field::VlanTci, 0xffff, 0xffff);
    let (mac_mask, ip_mask) = if odd_masks {
        (
            mac("ff:0f:ff:0f:ff:0f"),
            ip6("ffff:fff:ffff:fff:ffff:fff:ffff:fff"),
        )
    } else {
        (mac("ff:ff:ff:ff:ff:ff"), u128::MAX << 8)
    };
    m.set_masked(Field::DlSrc, mac("12:34:56:78:9a:bc"), mac_mask);
    m.set_masked(Field::DlDst, mac("12:34:56:78:9a:bc"), mac_mask);
    let addr = ip6("1234:5678:9abc:def0:1234:5678:9abc:def0");
    m.set_masked(Field::Ipv6Src, addr, ip_mask);
    m.set_masked(Field::Ipv6Dst, addr, ip_mask);
    m.set_masked(Field::NwTos, 0x14, 0x3c);
    m.set_exact(Field::NwTtl, 200);
    m.set_masked(Field::NwFrag, 0, frag::MASK.into());
    m.set_exact(Field::NwProto, ipproto::TCP.into());
    m.set_exact(Field::TpSrc, 65535);
    m.set_exact(Field::TpDst, 65535);
    m.set_masked(Field::TcpFlags, 0x12, 0x3f);
    m
}

#[test]
fn widest_prefix_rule_fits_a_testpmd_line() {
    let t = translate(
        &widest_megaflow(false),
        &generic(),
        Capabilities::MAX_MARK,
        16,
    )
    .expect("offloads");
    let got = t
        .rule
        .testpmd_create(0)
        .unwrap_or_else(|e| panic!("{e}: {:?}", t.rule));
    assert!(got.len() <= 511, "{} characters", got.len());
}

#[test]
fn odd_masks_everywhere_overflow_testpmd_but_still_translate() {
    // The rule is fine for rte_flow; only its testpmd rendering is too long.
    let t = translate(&widest_megaflow(true), &generic(), 1, 16).expect("offloads");
    // Not exact: `nw_frag=no` over IPv6 leaves atomic fragments to software.
    assert!(!t.exact);
    assert!(matches!(
        t.rule.testpmd_create(0),
        Err(offload::rte::RenderError::TooLong { max: 511, .. })
    ));
}
