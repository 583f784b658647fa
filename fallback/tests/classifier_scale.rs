//! Controller-scale figures for the OpenFlow classifier, in process (issue
//! 12, benchmarks a and e): the rule mix of `scripts/bench-scale`, added
//! one by one with a snapshot taken after each add (as the daemon publishes
//! one version per barrier), then bytes per rule. Speed decides nothing
//! here; run with
//! `cargo test --release -p fallback --test classifier_scale -- --ignored --nocapture`
//! (`SCALE_RULES` sets the count, default 1,000,000).

use fallback::ofproto::syntax::parse_flow;
use fallback::ofproto::table::Pipeline;
use fallback::ofproto::Rule;
use std::time::Instant;

/// The rule of `scripts/bench-scale`'s generator with index `i`.
fn bench_rule(i: u32) -> Rule {
    let (k, hi, lo, b) = (i % 4, (i >> 8) & 255, i & 255, 10 + (i >> 16));
    let text = match k {
        0 => format!(
            "priority={},ip,nw_dst={b}.{hi}.{lo}.1,actions=output:2",
            100 + i % 50
        ),
        1 => format!(
            "priority={},ip,nw_src={b}.{hi}.{lo}.0/24,actions=output:3",
            50 + i % 20
        ),
        2 => format!(
            "priority={},tcp,nw_dst={b}.{hi}.{lo}.2,tp_dst={},actions=output:2",
            200 + i % 30,
            1 + i % 60000
        ),
        _ => format!(
            "priority={},in_port=1,dl_dst=02:{b:02x}:00:{hi:02x}:{lo:02x}:01,actions=output:2",
            10 + i % 5
        ),
    };
    match parse_flow(&text) {
        Ok(r) => r,
        Err(e) => panic!("{text}: {e}"),
    }
}

#[test]
#[ignore]
fn bench_scale_rules_in_process() {
    let n: u32 = std::env::var("SCALE_RULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let rules: Vec<Rule> = (0..n).map(bench_rule).collect();
    let mut p = Pipeline::new();
    let t = Instant::now();
    // One snapshot per add, dropped at the next (a PMD holding the last
    // published version): what one FLOW_MOD + barrier costs the pipeline.
    let mut snap = p.clone();
    for r in &rules {
        p.add(r.clone());
        snap = p.clone();
    }
    drop(snap);
    let per_add_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let b = p.heap_bytes();
    let per = |x: usize| x / p.len();
    println!(
        "{n} rules: {per_add_us:.2} us per add + snapshot; ~{} B/rule \
         (rule entries {}, id index {}, subtables {}, tries {})",
        per(b.total()),
        per(b.rules),
        per(b.id_index),
        per(b.subtables),
        per(b.tries),
    );
    // del-flows of everything (loose, every table), as one version.
    let t = Instant::now();
    let gone = p.delete(None, &fallback::ofproto::Match::ANY).len();
    println!("deleting all {gone}: {:.2} s", t.elapsed().as_secs_f64());
    assert!(p.is_empty());
}
