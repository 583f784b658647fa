//! DESIGN §1's safety rule, checked across two independent parsers: for
//! random megaflows and real packets derived from them (some matching, some
//! with one field changed), every packet the emulated NIC's matcher matches
//! with the translated rule also matches the megaflow in `fallback/`; where
//! translate says `exact`, both match exactly the same packets.
//!
//! `FLOWMARK_LONG=1` runs ten times as many megaflows.

use std::net::{Ipv4Addr, Ipv6Addr};

use fallback::key::{ethertype, frag, ipproto, Field, FlowKey, VLAN_CFI};
use fallback::ofproto::Match;
use fallback::packet;
use offload::device::{Capabilities, Profile};
use offload::translate::translate;
use proptest::prelude::*;
use testbed::build;
use testbed::matcher;
use testbed::traffic::Rng;

const MACS: [u128; 3] = [
    0x02_00_00_00_00_01,
    0x02_00_00_00_00_02,
    0x0a_0b_0c_0d_0e_0f,
];
const V4: [u32; 5] = [
    0x0a01_0001,
    0x0a01_0002,
    0xc0a8_c803,
    0x0a02_0304,
    0x0a01_00ff,
];
const V6: [u128; 3] = [
    0x2001_0db8_0000_0000_0000_0000_0000_0001,
    0x2001_0db8_0000_0000_0000_0000_0000_0002,
    0xfe80_0000_0000_0000_0200_f8ff_fe21_67cf,
];
const PORTS: [u16; 5] = [2152, 2123, 80, 53, 0];
const ICMP_VALUES: [u16; 4] = [8, 0, 128, 3];
const PROTOS4: [u8; 5] = [ipproto::TCP, ipproto::UDP, ipproto::ICMP, ipproto::SCTP, 47];
const PROTOS6: [u8; 5] = [
    ipproto::TCP,
    ipproto::UDP,
    ipproto::ICMPV6,
    ipproto::SCTP,
    47,
];
const EXT_HOP_BY_HOP: u8 = 0;
const EXT_FRAGMENT: u8 = 44;

fn pick<T: Copy>(r: &mut Rng, from: &[T]) -> T {
    from[r.below(from.len() as u64) as usize]
}

fn chance(r: &mut Rng, percent: u64) -> bool {
    r.below(100) < percent
}

/// A mask of the top `len` of `bits` bits.
fn prefix(bits: u32, len: u32) -> u128 {
    let full = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    if len == 0 {
        0
    } else {
        full & !full.checked_shr(len).unwrap_or(0)
    }
}

/// Exact, a prefix, or nothing.
fn addr_mask(r: &mut Rng, bits: u32) -> u128 {
    match r.below(10) {
        0..=3 => 0,
        4..=6 => prefix(bits, bits),
        _ => prefix(bits, 1 + r.below(u64::from(bits) - 1) as u32),
    }
}

fn is_l4(proto: u8, v6: bool) -> bool {
    matches!(proto, ipproto::TCP | ipproto::UDP | ipproto::SCTP)
        || proto == if v6 { ipproto::ICMPV6 } else { ipproto::ICMP }
}

/// A random megaflow, shaped like the ones xlate makes and beyond.
fn megaflow(r: &mut Rng) -> Match {
    let mut m = Match::ANY;
    if chance(r, 97) {
        m.set_exact(Field::InPort, u128::from(1 + r.below(3) as u32));
    }
    let dl_type = pick(
        r,
        &[
            ethertype::IPV4,
            ethertype::IPV4,
            ethertype::IPV4,
            ethertype::IPV6,
            ethertype::IPV6,
            ethertype::ARP,
            0x88cc,
        ],
    );
    if chance(r, 92) {
        m.set_exact(Field::DlType, u128::from(dl_type));
    }
    let vid = r.below(4) as u16 + 100;
    let pcp = (r.below(8) as u16) << 13;
    match r.below(10) {
        0..=3 => {}
        4 | 5 => m.set_masked(Field::VlanTci, 0, u128::from(VLAN_CFI)),
        6 => m.set_masked(Field::VlanTci, u128::from(VLAN_CFI | vid | pcp), 0xffff),
        7 => m.set_masked(Field::VlanTci, u128::from(VLAN_CFI | vid), 0x1fff),
        8 => m.set_masked(Field::VlanTci, u128::from(VLAN_CFI), u128::from(VLAN_CFI)),
        _ => m.set_masked(
            Field::VlanTci,
            r.next_u64().into(),
            (r.next_u64() & 0xffff).into(),
        ),
    }
    for f in [Field::DlSrc, Field::DlDst] {
        match r.below(10) {
            0..=6 => {}
            7 | 8 => m.set_exact(f, pick(r, &MACS)),
            _ => m.set_masked(f, pick(r, &MACS), prefix(48, 24)),
        }
    }
    let v6 = dl_type == ethertype::IPV6;
    if dl_type == ethertype::IPV4 || v6 {
        if v6 {
            for f in [Field::Ipv6Src, Field::Ipv6Dst] {
                let mask = addr_mask(r, 128);
                m.set_masked(f, pick(r, &V6), mask);
            }
        } else {
            for f in [Field::NwSrc, Field::NwDst] {
                let mask = addr_mask(r, 32);
                m.set_masked(f, pick(r, &V4).into(), mask);
            }
        }
        let proto = pick(r, if v6 { &PROTOS6 } else { &PROTOS4 });
        if chance(r, 70) {
            m.set_exact(Field::NwProto, proto.into());
        }
        if chance(r, 20) {
            m.set_masked(Field::NwTos, r.below(256).into(), pick(r, &[0xfc, 0xff]));
        }
        if chance(r, 15) {
            m.set_exact(Field::NwTtl, pick(r, &[64u128, 1, 255]));
        }
        match r.below(10) {
            0..=6 => m.set_masked(Field::NwFrag, pick(r, &[0u128, 0, 0, 1, 3]), 3),
            7 => m.set_masked(Field::NwFrag, pick(r, &[0u128, 1]), 1),
            8 => m.set_masked(Field::NwFrag, pick(r, &[0u128, 2]), 2),
            _ => {}
        }
        if is_l4(proto, v6) && m.mask.get(Field::NwProto) != 0 {
            let values: &[u16] = if matches!(proto, ipproto::ICMP | ipproto::ICMPV6) {
                &ICMP_VALUES
            } else {
                &PORTS
            };
            for f in [Field::TpSrc, Field::TpDst] {
                match r.below(10) {
                    0..=3 => {}
                    4..=8 => m.set_exact(f, pick(r, values).into()),
                    _ => m.set_masked(f, pick(r, values).into(), (r.next_u64() & 0xffff).into()),
                }
            }
            if proto == ipproto::TCP && chance(r, 25) {
                m.set_masked(
                    Field::TcpFlags,
                    r.below(0x1000).into(),
                    r.below(0x1000).into(),
                );
            }
        }
    } else if dl_type == ethertype::ARP && chance(r, 20) {
        m.set_exact(Field::NwSrc, pick(r, &V4).into());
    }
    m
}

/// A packet's header values, before it is built.
#[derive(Clone, Debug)]
struct Desc {
    in_port: u32,
    dl_dst: u128,
    dl_src: u128,
    /// Wire TCI of a tag.
    vlan: Option<u16>,
    dl_type: u16,
    src4: u32,
    dst4: u32,
    src6: u128,
    dst6: u128,
    proto: u8,
    tos: u8,
    ttl: u8,
    /// 0: not a fragment, 1: first fragment, 3: later fragment.
    frag: u8,
    /// An IPv6 hop-by-hop header before the rest.
    hop_by_hop: bool,
    tp_src: u16,
    tp_dst: u16,
    tcp_flags: u16,
}

/// The megaflow's masked bits, random bits elsewhere.
fn fill(m: &Match, f: Field, random: u128) -> u128 {
    let mask = m.mask.get(f);
    (m.value.get(f) & mask) | (random & !mask & f.full_mask())
}

fn desc_from(m: &Match, r: &mut Rng) -> Desc {
    let dl_type = if m.mask.get(Field::DlType) != 0 {
        m.value.get(Field::DlType) as u16
    } else {
        pick(r, &[ethertype::IPV4, ethertype::IPV6, ethertype::ARP])
    };
    let v6 = dl_type == ethertype::IPV6;
    let tci = fill(m, Field::VlanTci, r.next_u64().into()) as u16;
    // The key's CFI bit means "tagged"; the wire's DEI bit is not in it.
    let vlan = (tci & VLAN_CFI != 0).then(|| (tci & !VLAN_CFI) | (r.below(2) as u16 * VLAN_CFI));
    let proto = if m.mask.get(Field::NwProto) != 0 {
        m.value.get(Field::NwProto) as u8
    } else {
        pick(r, if v6 { &PROTOS6 } else { &PROTOS4 })
    };
    let frag = match fill(m, Field::NwFrag, r.below(4).into()) as u8 & frag::MASK {
        2 => 3,
        f => f,
    };
    let icmp = matches!(proto, ipproto::ICMP | ipproto::ICMPV6);
    let l4_value = |r: &mut Rng| -> u128 {
        if icmp {
            pick(r, &ICMP_VALUES).into()
        } else {
            pick(r, &PORTS).into()
        }
    };
    let sp = l4_value(r);
    let dp = l4_value(r);
    let mut tp_src = fill(m, Field::TpSrc, sp) as u16;
    let mut tp_dst = fill(m, Field::TpDst, dp) as u16;
    if icmp {
        tp_src &= 0xff;
        tp_dst &= 0xff;
    }
    Desc {
        in_port: fill(m, Field::InPort, u128::from(1 + r.below(3))) as u32,
        dl_dst: fill(m, Field::DlDst, pick(r, &MACS)),
        dl_src: fill(m, Field::DlSrc, pick(r, &MACS)),
        vlan,
        dl_type,
        src4: fill(m, Field::NwSrc, pick(r, &V4).into()) as u32,
        dst4: fill(m, Field::NwDst, pick(r, &V4).into()) as u32,
        src6: fill(m, Field::Ipv6Src, pick(r, &V6)),
        dst6: fill(m, Field::Ipv6Dst, pick(r, &V6)),
        proto,
        tos: fill(m, Field::NwTos, r.below(256).into()) as u8,
        ttl: fill(m, Field::NwTtl, pick(r, &[64u128, 1, 255])) as u8,
        frag,
        hop_by_hop: v6 && chance(r, 25),
        tp_src,
        tp_dst,
        tcp_flags: fill(m, Field::TcpFlags, r.below(0x1000).into()) as u16,
    }
}

/// Changes one header value.
fn mutate(d: &mut Desc, r: &mut Rng) {
    match r.below(16) {
        0 => d.in_port = 1 + r.below(3) as u32,
        1 => d.dl_dst = pick(r, &MACS),
        2 => d.dl_src = pick(r, &MACS) ^ (1 << r.below(48)),
        3 => {
            d.vlan = if d.vlan.is_some() {
                None
            } else {
                Some(r.below(0x10000) as u16)
            }
        }
        4 => d.vlan = d.vlan.map(|t| t ^ (1 << r.below(16))),
        5 => {
            d.dl_type = pick(
                r,
                &[ethertype::IPV4, ethertype::IPV6, ethertype::ARP, 0x88cc],
            )
        }
        6 => {
            d.src4 ^= 1 << r.below(32);
            d.src6 ^= 1 << r.below(128);
        }
        7 => {
            d.dst4 = pick(r, &V4);
            d.dst6 = pick(r, &V6);
        }
        8 => {
            d.proto = pick(
                r,
                &[
                    ipproto::TCP,
                    ipproto::UDP,
                    ipproto::ICMP,
                    ipproto::ICMPV6,
                    ipproto::SCTP,
                    47,
                ],
            )
        }
        9 => d.tos ^= 1 << r.below(8),
        10 => d.ttl = d.ttl.wrapping_add(1),
        11 => d.frag = pick(r, &[0, 1, 3]),
        12 => d.hop_by_hop = !d.hop_by_hop,
        13 => d.tp_src ^= 1 << r.below(16),
        14 => d.tp_dst = pick(r, &PORTS),
        _ => d.tcp_flags ^= 1 << r.below(12),
    }
}

fn mac(v: u128) -> [u8; 6] {
    let b = v.to_be_bytes();
    [b[10], b[11], b[12], b[13], b[14], b[15]]
}

/// The L4 header for the description (a payload for other protocols).
fn l4_bytes(d: &Desc, ph: build::Pseudo, v6: bool) -> Vec<u8> {
    match d.proto {
        ipproto::TCP => build::tcp(ph, d.tp_src, d.tp_dst, d.tcp_flags, &[], &[1, 2]),
        ipproto::UDP => build::udp(ph, d.tp_src, d.tp_dst, &[1, 2]),
        ipproto::SCTP => build::sctp(d.tp_src, d.tp_dst, &[]),
        ipproto::ICMP if !v6 => build::icmp(d.tp_src as u8, d.tp_dst as u8, &[0; 4]),
        ipproto::ICMPV6 if v6 => build::icmpv6(ph, d.tp_src as u8, d.tp_dst as u8, &[0; 4]),
        _ => vec![0x5a; 12],
    }
}

fn frame(d: &Desc) -> Vec<u8> {
    let l3 = match d.dl_type {
        ethertype::IPV4 => {
            let mut h =
                build::Ipv4Header::new(Ipv4Addr::from(d.src4), Ipv4Addr::from(d.dst4), d.proto);
            h.tos = d.tos;
            h.ttl = d.ttl;
            h.flags_frag = match d.frag {
                0 => 0x4000,
                1 => 0x2000,
                _ => 0x2000 | 37,
            };
            let payload = if d.frag == 3 {
                vec![0x33; 24]
            } else {
                l4_bytes(d, h.pseudo(), false)
            };
            build::ipv4(&h, &payload)
        }
        ethertype::IPV6 => {
            let (src, dst) = (Ipv6Addr::from(d.src6), Ipv6Addr::from(d.dst6));
            let mut chain = Vec::new();
            let mut headers = Vec::new();
            if d.hop_by_hop {
                chain.push(EXT_HOP_BY_HOP);
            }
            if d.frag != 0 {
                chain.push(EXT_FRAGMENT);
            }
            chain.push(d.proto);
            let mut h = build::Ipv6Header::new(src, dst, chain[0]);
            h.traffic_class = d.tos;
            h.hop_limit = d.ttl;
            for w in chain.windows(2) {
                match w[0] {
                    EXT_FRAGMENT => {
                        let offset = if d.frag == 3 { 37 } else { 0 };
                        headers.extend(build::ipv6_frag(w[1], offset, d.frag == 1, 7));
                    }
                    kind => headers.extend(build::ipv6_ext(kind, w[1])),
                }
            }
            if d.frag == 3 {
                headers.extend([0x33; 24]);
            } else {
                headers.extend(l4_bytes(d, h.pseudo(), true));
            }
            build::ipv6(&h, &headers)
        }
        ethertype::ARP => build::arp(
            1,
            mac(d.dl_src),
            Ipv4Addr::from(d.src4),
            [0; 6],
            Ipv4Addr::from(d.dst4),
        ),
        _ => vec![0x77; 46],
    };
    let f = build::ethernet(mac(d.dl_dst), mac(d.dl_src), d.dl_type, &l3);
    match d.vlan {
        Some(tci) => build::push_tag(&f, ethertype::VLAN, tci),
        None => f,
    }
}

#[derive(Debug, Default)]
struct Tally {
    offloaded: u64,
    exact: u64,
    packets: u64,
    megaflow_matches: u64,
    nic_matches: u64,
}

/// One megaflow and its packets on one profile; an error describes the
/// first violation.
fn check(seed: u64, caps: &Capabilities, tally: &mut Tally) -> Result<(), String> {
    let mut r = Rng::new(seed);
    let m = megaflow(&mut r);
    let Ok(t) = translate(&m, caps, 1, 2) else {
        return Ok(());
    };
    tally.offloaded += 1;
    tally.exact += u64::from(t.exact);
    let mut key = FlowKey::ZERO;
    for i in 0..24 {
        let mut d = desc_from(&m, &mut r);
        // A third of the packets keep every megaflow value; the others get
        // one change.
        if i % 3 != 0 {
            mutate(&mut d, &mut r);
        }
        let bytes = frame(&d);
        packet::parse(&bytes, d.in_port, &mut key);
        let sw = m.matches(&key);
        let nic = d.in_port == t.port && matcher::pattern_matches(&t.rule.pattern, &bytes);
        tally.packets += 1;
        tally.megaflow_matches += u64::from(sw);
        tally.nic_matches += u64::from(nic);
        let rule = t.rule.testpmd_create(0).unwrap_or_else(|e| e.to_string());
        if nic && !sw {
            return Err(format!(
                "safety rule broken (profile {}, seed {seed}): the NIC rule matches a packet \
                 outside the megaflow\nmegaflow {m:?}\nrule {rule}\npacket {d:?}\nkey {key:?}",
                caps.profile
            ));
        }
        if t.exact && sw && !nic {
            return Err(format!(
                "translate said exact (profile {}, seed {seed}), but the NIC rule misses a packet \
                 of the megaflow\nmegaflow {m:?}\nrule {rule}\npacket {d:?}",
                caps.profile
            ));
        }
    }
    Ok(())
}

#[path = "../../tests/support/test_env.rs"]
mod test_env;

/// Ten times the work under `FLOWMARK_LONG=1`.
fn scale(n: u32) -> u32 {
    test_env::cases(n)
}

#[test]
fn nic_rule_never_matches_outside_its_megaflow() {
    for profile in [Profile::Generic, Profile::Xl710] {
        let caps = profile.capabilities();
        let mut tally = Tally::default();
        for seed in 0..u64::from(scale(3000)) {
            if let Err(e) = check(seed, &caps, &mut tally) {
                panic!("{e}");
            }
        }
        eprintln!("{profile}: {tally:?}");
        // The test must have exercised something on both sides.
        assert!(tally.offloaded > 600, "{profile}: {tally:?}");
        assert!(tally.exact > 100, "{profile}: {tally:?}");
        let matching = tally.megaflow_matches as f64 / tally.packets as f64;
        assert!(
            matching >= 0.3,
            "{profile}: only {matching:.2} of the packets match: {tally:?}"
        );
        assert!(
            tally.nic_matches > tally.packets / 5,
            "{profile}: {tally:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(scale(2000)))]

    /// The same property over seeds proptest picks (and remembers when
    /// one fails).
    #[test]
    fn safety_rule_random_seeds(seed in any::<u64>()) {
        let mut tally = Tally::default();
        for profile in [Profile::Generic, Profile::Xl710] {
            let caps = profile.capabilities();
            if let Err(e) = check(seed, &caps, &mut tally) {
                prop_assert!(false, "{}", e);
            }
        }
    }
}
