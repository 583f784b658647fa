//! Random rule sets and packets inside their matches, shared by the
//! megaflow and revalidation property tests.

#![allow(dead_code)]

use fallback::key::{ethertype, frag, ipproto, Field, FlowKey, VLAN_CFI, VLAN_VID_MASK};
use fallback::ofproto::mac::{MacLearn, MacTable};
use fallback::ofproto::table::Pipeline;
use fallback::ofproto::{Match, OfAction, Rule};
use testbed::traffic::Rng;

pub const PORTS: [u32; 4] = [1, 2, 3, 4];
pub const TABLES: [u8; 3] = [0, 1, 5];

pub const MACS: [u64; 4] = [
    0x0200_0000_0001,
    0x0200_0000_0002,
    0x0200_0000_0003,
    0xffff_ffff_ffff,
];
pub const NETS: [u32; 4] = [0x0a00_0000, 0x0a01_0000, 0xc0a8_c800, 0xc0a8_c803];

pub fn random_match(r: &mut Rng) -> Match {
    let mut m = Match::ANY;
    if r.chance(30) {
        m.set_exact(Field::InPort, r.pick(&PORTS) as u128);
    }
    if r.chance(15) {
        m.set_exact(Field::DlDst, r.pick(&MACS) as u128);
    }
    if r.chance(10) {
        m.set_masked(
            Field::VlanTci,
            (VLAN_CFI | r.below(3) as u16) as u128,
            (VLAN_CFI | VLAN_VID_MASK) as u128,
        );
    }
    match r.below(10) {
        0..=6 => {
            m.set_exact(Field::DlType, ethertype::IPV4 as u128);
            if r.chance(60) {
                let prefix = r.pick(&[8u32, 12, 16, 20, 24, 28, 30, 32]);
                let mask = u32::MAX << (32 - prefix);
                let f = if r.chance(50) {
                    Field::NwSrc
                } else {
                    Field::NwDst
                };
                m.set_masked(f, r.pick(&NETS) as u128, mask as u128);
            }
            if r.chance(20) {
                m.set_masked(Field::NwTos, r.pick(&[0u128, 0x10, 0xb8]), 0xfc);
            }
            if r.chance(10) {
                m.set_masked(Field::NwFrag, r.pick(&[0u128, 1, 3]), frag::MASK as u128);
            }
            if r.chance(60) {
                let proto = r.pick(&[ipproto::UDP, ipproto::TCP, ipproto::ICMP]);
                m.set_exact(Field::NwProto, proto as u128);
                if proto != ipproto::ICMP && r.chance(70) {
                    let f = if r.chance(50) {
                        Field::TpSrc
                    } else {
                        Field::TpDst
                    };
                    let port = r.pick(&[2152u128, 2123, 80, 0x1000]);
                    let mask = match r.below(10) {
                        0 | 1 => 0xff00,
                        2 => 0xfff0,
                        _ => 0xffff,
                    };
                    m.set_masked(f, port, mask);
                }
                if proto == ipproto::TCP && r.chance(15) {
                    m.set_masked(Field::TcpFlags, 0x002, 0x012);
                }
            }
        }
        7 => {
            m.set_exact(Field::DlType, ethertype::ARP as u128);
            if r.chance(50) {
                m.set_exact(Field::NwDst, r.pick(&NETS) as u128);
            }
        }
        8 => {
            m.set_exact(Field::DlType, ethertype::IPV6 as u128);
            if r.chance(50) {
                m.set_masked(Field::Ipv6Dst, 0x2001_0db8 << 96, u128::MAX << 96);
            }
            if r.chance(40) {
                let prefix = r.pick(&[16u32, 48, 64, 128]);
                let v = r.pick(&[
                    0x2001_0db8u128 << 96,
                    (0x2001_0db8 << 96) | 1,
                    0xfe80 << 112,
                ]);
                m.set_masked(Field::Ipv6Src, v, u128::MAX << (128 - prefix));
            }
        }
        _ => {}
    }
    m
}

pub fn random_actions(r: &mut Rng, table: u8) -> Vec<OfAction> {
    let mut acts = Vec::new();
    for _ in 0..r.below(4) {
        let a = match r.below(18) {
            0..=4 => OfAction::Output(r.pick(&PORTS)),
            5 => OfAction::Flood,
            6 => OfAction::Normal,
            7 => OfAction::Mod(Field::NwSrc, 0xc0a8_c8bc),
            8 => OfAction::Mod(Field::DlDst, 0x5254_0000_0005),
            9 => OfAction::DecTtl,
            10 => OfAction::Mod(Field::TpDst, 4000),
            11 => OfAction::Mod(Field::VlanTci, 7),
            12 => OfAction::StripVlan,
            13 => OfAction::InPort,
            14 => OfAction::Mod(Field::VlanPcp, 5),
            15 => OfAction::Mod(Field::NwEcn, 2),
            _ => {
                let later: Vec<u8> = TABLES.iter().copied().filter(|t| *t > table).collect();
                if later.is_empty() || r.chance(10) {
                    // Occasionally a resubmit to the same table (a loop the
                    // depth limit must stop) or with a changed in_port.
                    OfAction::Resubmit {
                        port: Some(r.pick(&PORTS)),
                        table: Some(table),
                    }
                } else {
                    OfAction::Resubmit {
                        port: None,
                        table: Some(r.pick(&later)),
                    }
                }
            }
        };
        acts.push(a);
    }
    // A meter instruction (first, as OpenFlow 1.3 orders it) now and then:
    // it must reach the megaflow's actions where the translation met it.
    if r.chance(8) {
        acts.insert(0, OfAction::Meter(1 + r.below(2) as u32));
    }
    acts
}

pub fn random_rules(r: &mut Rng) -> Vec<Rule> {
    let mut rules = Vec::new();
    let n_tables = 2 + r.below(2) as usize;
    for &table in &TABLES[..n_tables] {
        let n = 3 + r.below(12) as usize;
        // Distinct priorities within a table.
        let mut prios: Vec<u16> = Vec::new();
        while prios.len() < n {
            let p = 1 + r.below(1000) as u16;
            if !prios.contains(&p) {
                prios.push(p);
            }
        }
        for p in prios {
            rules.push(Rule {
                table,
                priority: p,
                r#match: random_match(r),
                actions: random_actions(r, table),
                cookie: 0,
                idle_timeout: 0,
                hard_timeout: 0,
            });
        }
        if r.chance(50) {
            rules.push(Rule {
                table,
                priority: 0,
                r#match: Match::ANY,
                actions: if r.chance(50) {
                    vec![]
                } else {
                    vec![OfAction::Normal]
                },
                cookie: 0,
                idle_timeout: 0,
                hard_timeout: 0,
            });
        }
    }
    rules
}

/// A packet inside `m`: wildcarded bits random, then maybe one field mutated.
pub fn packet_from(r: &mut Rng, m: &Match) -> FlowKey {
    let mut k = FlowKey::ZERO;
    k.set(Field::InPort, r.pick(&PORTS) as u128);
    k.set(Field::DlSrc, r.pick(&MACS[..3]) as u128);
    k.set(Field::DlDst, r.pick(&MACS) as u128);
    match r.below(4) {
        0 => k.set(Field::DlType, ethertype::ARP as u128),
        1 => k.set(Field::DlType, ethertype::IPV6 as u128),
        _ => k.set(Field::DlType, ethertype::IPV4 as u128),
    }
    if r.chance(20) {
        k.set(Field::VlanTci, (VLAN_CFI | r.below(3) as u16) as u128);
    }
    k.set(Field::NwSrc, (r.pick(&NETS) | r.below(4) as u32) as u128);
    k.set(Field::NwDst, (r.pick(&NETS) | r.below(4) as u32) as u128);
    k.set(
        Field::NwProto,
        r.pick(&[ipproto::UDP, ipproto::TCP, ipproto::ICMP]) as u128,
    );
    k.set(Field::NwTos, r.pick(&[0u128, 0x10, 0xb9]));
    k.set(Field::NwTtl, r.pick(&[1u128, 2, 64]));
    k.set(Field::NwFrag, r.pick(&[0u128, 0, 0, 1, 3]));
    k.set(Field::TpSrc, r.pick(&[2152u128, 2123, 80, 0x10ab, 9]));
    k.set(Field::TpDst, r.pick(&[2152u128, 2123, 80, 0x10ab, 9]));
    k.set(Field::TcpFlags, r.pick(&[0u128, 0x002, 0x012, 0x010]));
    k.set(
        Field::Ipv6Dst,
        r.pick(&[0x2001_0db8u128 << 96, 0xfe80 << 112]) | 1,
    );
    k.set(
        Field::Ipv6Src,
        r.pick(&[0x2001_0db8u128 << 96, 0xfe80 << 112]) | r.below(2) as u128,
    );
    // Inside the match.
    for i in 0..k.words.len() {
        k.words[i] = (k.words[i] & !m.mask.words[i]) | m.value.words[i];
    }
    if r.chance(50) {
        let f = r.pick(&Field::ALL);
        let bits = r.next_u64() as u128 | ((r.next_u64() as u128) << 64);
        k.set(f, (k.get(f) ^ (bits & f.full_mask())) | 1);
    }
    // A parsed packet has a TCI only with the VLAN-present bit.
    if k.vlan_tci() & VLAN_CFI == 0 {
        k.set(Field::VlanTci, 0);
    }
    k
}

/// A pipeline of `rules`, and a MAC table that knows the first `known` of
/// [`MACS`] on the matching [`PORTS`].
/// The bridge of the tests' ports over `pipeline` and `macs` (every port's
/// megaflows as they are, none widened for a NIC).
pub fn bridge<'a>(
    pipeline: &'a Pipeline,
    macs: &'a MacTable,
) -> fallback::ofproto::xlate::Bridge<'a> {
    fallback::ofproto::xlate::Bridge {
        pipeline,
        macs,
        ports: &PORTS,
        widen_l4: None,
    }
}

pub fn pipeline_and_macs(rules: &[Rule], known: usize) -> (Pipeline, MacTable) {
    let mut pipeline = Pipeline::new();
    for rule in rules {
        pipeline.add(rule.clone());
    }
    let mut macs = MacTable::default();
    for (i, mac) in MACS[..known].iter().enumerate() {
        macs.learn(
            MacLearn {
                mac: *mac,
                vlan: 0,
                port: PORTS[i],
            },
            0,
        );
    }
    (pipeline, macs)
}
