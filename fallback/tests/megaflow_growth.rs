//! The megaflow cache's longest single insert while it grows (issue 12,
//! benchmarks b and d: an upcall on the PMD must not stall for a table
//! resize). Speed decides nothing here; run with
//! `cargo test --release -p fallback --test megaflow_growth -- --ignored --nocapture`
//! (`GROWTH_FLOWS` sets the count, default 300,000).

use fallback::actions::DpAction;
use fallback::cache::FlowCache;
use fallback::key::{Field, FlowKey};
use fallback::megaflow::Megaflow;
use std::time::{Duration, Instant};

#[test]
#[ignore]
fn longest_install_while_growing() {
    let n: u32 = std::env::var("GROWTH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let mut mask = FlowKey::ZERO;
    mask.set_exact(Field::InPort);
    mask.set_exact(Field::NwSrc);
    for round in 0..3 {
        let mut cache = FlowCache::new(100);
        // As a PMD with a revalidator thread: emptied tables are handed
        // over (freed here, outside the timed install).
        cache.set_retire_tables(true);
        let (mut longest, mut at) = (Duration::ZERO, 0);
        let t0 = Instant::now();
        for i in 0..n {
            let mut key = FlowKey::ZERO;
            key.set(Field::InPort, 1);
            key.set(Field::NwSrc, u128::from(i));
            let mf = Megaflow::new(&key, &mask, vec![DpAction::Output(2)], Vec::new());
            let t = Instant::now();
            cache.install(mf).expect("distinct ufids");
            let d = t.elapsed();
            drop(cache.take_retired());
            if d > longest {
                (longest, at) = (d, i);
            }
        }
        println!(
            "round {round}: {n} installs in {:?}; longest {:?} at install {at}",
            t0.elapsed(),
            longest
        );
    }
}
