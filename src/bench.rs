//! `flowmark bench`: microbenchmarks of the datapath stages. Figures, not
//! tests: nothing here passes or fails on time.

use crate::error::CliError;
use fallback::dpcls::Dpcls;
use fallback::key::{Field, FlowKey};
use serde_json::json;
use std::hint::black_box;
use std::time::Instant;

/// The masks of `n` distinct subtables: prefixes on nw_src/nw_dst plus an
/// optional L4 port, like the many-mask rule sets of real pipelines.
fn subtable_masks(n: usize) -> Vec<FlowKey> {
    let mut masks = Vec::new();
    'outer: for l4 in [None, Some(Field::TpDst), Some(Field::TpSrc)] {
        for src in [0u32, 8, 16, 24, 32] {
            for dst in [0u32, 8, 16, 24, 32] {
                if masks.len() == n {
                    break 'outer;
                }
                let mut m = FlowKey::ZERO;
                m.set_exact(Field::InPort);
                m.set_exact(Field::DlType);
                m.set_exact(Field::NwProto);
                m.set(Field::NwSrc, prefix(src) as u128);
                m.set(Field::NwDst, prefix(dst) as u128);
                if let Some(f) = l4 {
                    m.set_exact(f);
                }
                masks.push(m);
            }
        }
    }
    masks
}

fn prefix(len: u32) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len)
    }
}

fn key(i: u32) -> FlowKey {
    let mut k = FlowKey::ZERO;
    k.set(Field::InPort, 1);
    k.set(Field::DlType, 0x0800);
    k.set(Field::NwProto, 17);
    k.set(Field::NwSrc, (0x0a00_0000 | (i & 0x00ff_ffff)) as u128);
    k.set(
        Field::NwDst,
        (0xc0a8_0000 | (i.wrapping_mul(7) & 0xffff)) as u128,
    );
    k.set(Field::TpSrc, (i % 50_000) as u128);
    k.set(Field::TpDst, 2152);
    k
}

/// dpcls lookups per second with `n_sub` subtables and `flows` keys, the
/// matching megaflow in the last subtable tried (the worst case before
/// ranking settles, as with a fresh PMD).
fn dpcls_case(n_sub: usize, flows: u32, lookups: u64) -> serde_json::Value {
    let masks = subtable_masks(n_sub);
    let mut cls: Dpcls<u32> = Dpcls::new();
    // Decoy subtables hold other flows; the last mask holds the traffic's.
    for (si, m) in masks.iter().enumerate() {
        let decoy = si + 1 < masks.len();
        for i in 0..flows.min(1000) {
            let mut k = key(i);
            if decoy {
                k.set(Field::InPort, 99);
            }
            let _ = cls.insert(m, &k, i);
        }
    }
    let keys: Vec<FlowKey> = (0..flows).map(key).collect();
    let start = Instant::now();
    let mut found = 0u64;
    let mut i = 0usize;
    for _ in 0..lookups {
        if black_box(cls.peek(&keys[i])).is_some() {
            found += 1;
        }
        i += 1;
        if i == keys.len() {
            i = 0;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    json!({
        "path": "dpcls",
        "subtables": n_sub,
        "flows": flows,
        "lookups": lookups,
        "hit_ratio": found as f64 / lookups as f64,
        "mlookups_per_s": lookups as f64 / secs / 1e6,
        "ns_per_lookup": secs * 1e9 / lookups as f64,
    })
}

pub fn run(quick: bool, json: bool) -> Result<(), CliError> {
    let lookups = if quick { 2_000_000 } else { 20_000_000 };
    for n_sub in [1usize, 10, 50] {
        let flows = 1000;
        let case = dpcls_case(n_sub, flows, lookups / n_sub as u64 + 100_000);
        if json {
            println!("{case}");
        } else {
            println!(
                "dpcls  subtables={:<3} flows={:<6} {:>8.2} M lookups/s  {:>7.1} ns/lookup",
                n_sub,
                flows,
                case["mlookups_per_s"].as_f64().unwrap_or(0.0),
                case["ns_per_lookup"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}
