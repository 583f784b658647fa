//! Megaflows through groups stay sound: for random rule sets whose rules
//! also run groups (all, select, indirect, fast failover, a chain), every
//! packet a cached megaflow matches gets from it exactly what a full
//! translation gives it, and no two megaflows overlap with different
//! actions. This checks what the groups add to a megaflow's mask: the
//! fields a select group hashed, and those a bucket's rewrite restores.
//!
//! (The linear reference of `megaflow_equivalence` does not model groups:
//! a select group's choice is flowmark's own hash.)

use fallback::cache::FlowCache;
use fallback::key::Field;
use fallback::megaflow::Megaflow;
use fallback::ofproto::group::{Bucket, Group, GroupType};
use fallback::ofproto::xlate::xlate;
use fallback::ofproto::{OfAction, Rule};
use proptest::prelude::*;
use testbed::traffic::Rng;

mod common;
use common::*;

#[path = "../../tests/support/test_env.rs"]
mod test_env;

fn groups() -> Vec<Group> {
    let out = |p| OfAction::Output(p);
    let weighted = |w, actions| {
        let mut b = Bucket::new(actions);
        b.weight = w;
        b
    };
    let watching = |port, actions| {
        let mut b = Bucket::new(actions);
        b.watch_port = port;
        b
    };
    vec![
        Group::new(
            1,
            GroupType::All,
            vec![
                // Values the packets often have already: whether the
                // restore writes depends on the packet's own.
                Bucket::new(vec![
                    OfAction::SetField(Field::NwDst, u128::from(NETS[1])),
                    out(2),
                ]),
                Bucket::new(vec![
                    OfAction::Mod(Field::DlDst, u128::from(MACS[0])),
                    out(4),
                ]),
                Bucket::new(vec![OfAction::PushVlan(0x8100), out(3)]),
                Bucket::new(vec![OfAction::Mod(Field::TpDst, 53), out(4)]),
                Bucket::new(vec![out(1)]),
            ],
        ),
        Group::new(
            2,
            GroupType::Select,
            vec![
                weighted(1, vec![out(1)]),
                weighted(
                    2,
                    vec![OfAction::Mod(Field::DlSrc, 0x0200_0000_0009), out(2)],
                ),
                weighted(1, vec![OfAction::StripVlan, out(3)]),
                weighted(0, vec![out(4)]),
            ],
        ),
        Group::new(
            3,
            GroupType::Indirect,
            vec![Bucket::new(vec![OfAction::Group(2)])],
        ),
        Group::new(
            4,
            GroupType::FastFailover,
            vec![
                watching(9, vec![out(1)]),
                watching(3, vec![OfAction::DecTtl, out(3)]),
            ],
        ),
    ]
    .into_iter()
    .map(|g| g.expect("a valid group"))
    .collect()
}

fn check(seed: u64) -> usize {
    let mut r = Rng::new(seed);
    let mut rules: Vec<Rule> = random_rules(&mut r);
    for rule in &mut rules {
        if r.chance(40) {
            let g = OfAction::Group(1 + r.below(4) as u32);
            let at = r.below(rule.actions.len() as u64 + 1) as usize;
            rule.actions.insert(at, g);
        }
    }
    let (mut pipeline, macs) = pipeline_and_macs(&rules, 3);
    for g in groups() {
        pipeline.group_add(g).expect("a new group");
    }
    let bridge = bridge(&pipeline, &macs);
    let mut cache = FlowCache::new(1);
    let mut hits = 0;
    for _ in 0..600 {
        let src = &rules[r.below(rules.len() as u64) as usize];
        let k = packet_from(&mut r, &src.r#match);
        let full = xlate(bridge, &k);
        match cache.lookup(&k, k.hash64() as u32) {
            Some((h, _)) => {
                hits += 1;
                let mf = cache.get(h).expect("a live handle");
                assert_eq!(
                    **mf.actions(),
                    *full.actions,
                    "seed {seed}: a megaflow through groups gives {k:?} other actions than its translation"
                );
            }
            None => {
                let mf = Megaflow::new(&k, &full.mask, full.actions.clone(), full.rules.clone());
                assert!(mf.matches(&k));
                cache
                    .install(mf)
                    .expect("distinct matches: no ufid collision");
            }
        }
    }
    let flows: Vec<&Megaflow> = cache.iter().map(|(_, f)| f).collect();
    for (i, a) in flows.iter().enumerate() {
        for b in &flows[i + 1..] {
            if a.overlaps(b) {
                assert_eq!(
                    a.actions(),
                    b.actions(),
                    "seed {seed}: overlapping megaflows"
                );
            }
        }
    }
    hits
}

proptest! {
    #![proptest_config(ProptestConfig { cases: test_env::cases(100), ..ProptestConfig::default() })]

    #[test]
    fn megaflows_through_groups_are_sound(seed in any::<u64>()) {
        check(seed);
    }
}

#[test]
fn fixed_seeds_hit_megaflows_through_groups() {
    let hits: usize = (1..=10u64)
        .map(|s| check(s.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .sum();
    // Packets came back to megaflows (the property was exercised).
    assert!(hits > 1000, "{hits} cache hits");
}
