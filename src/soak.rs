//! `flowmark soak`: the default testbed under churn and faults, with the
//! guarantees of DESIGN §3 and §6 checked throughout.
//!
//! Traffic over 100,000 UDP flows enters nic0, nic1 and vm0 while flow mods
//! change 10% of the rules per second, and NIC resets, full tables, create
//! failures, NIC port removal and re-add and VM port disconnects are
//! injected at random. Every packet carries its flow id, a sequence number
//! and the rule-table version at send time; every packet the switch
//! transmits is captured and checked against [`reference`], an interpreter
//! of the soak's own rule model written apart from `fallback`'s xlate: it is
//! accepted when some rule-table version between send and check gives that
//! output (port and rewritten headers), and counted misforwarded otherwise.

mod reference;

use crate::switch::{NamedPortStats, Switch, SwitchConfig, SwitchError};
use fallback::ofproto::syntax::{parse_flow, parse_match};
use fallback::port::HeapPacket;
use reference::{Observed, RuleSet, SoakRule};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use testbed::traffic::Rng;
use testbed::{Inject, Testbed, TestbedConfig, NIC0_OFPORT, NIC1_OFPORT, VM0_OFPORT};

/// Distinct flows of the soak's traffic.
pub const SOAK_FLOWS: u32 = 100_000;
/// Packets per second offered (all ports): enough to keep every flow alive
/// and the NICs' tables busy, little enough that the checker keeps up on
/// two cores.
const PACKETS_PER_SECOND: u64 = 60_000;
/// Churn and fault decisions are made this often.
const TICK: Duration = Duration::from_millis(100);
/// Transmitted packets each port keeps for the checker between drains.
const CAPTURE_PER_PORT: usize = 16_384;
/// Rule-table versions kept for the checker, 6.4 s at one per tick (a
/// packet older than that is counted unchecked, not misforwarded). Small,
/// so that the soak's own memory does not grow with its length.
const VERSIONS_KEPT: usize = 64;
/// Examples of each kind of failure kept for the report.
const EXAMPLES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    #[error("testbed: {0}")]
    Testbed(String),
    #[error(transparent)]
    Switch(#[from] SwitchError),
    #[error("soak rule {0:?} does not parse: {1} (a bug in the soak's rule model)")]
    Rule(String, String),
    #[error("the {0} thread panicked; see the message above")]
    Thread(&'static str),
    #[error("--seconds {0}: give a positive number of seconds (at least 2)")]
    Seconds(f64),
}

#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub seconds: f64,
    pub seed: u64,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            seconds: 60.0,
            seed: 0x5eed_f10e,
        }
    }
}

/// How many of each fault were injected.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultCounts {
    pub flow_mods: u64,
    pub rule_adds: u64,
    pub rule_deletes: u64,
    pub nic_resets: u64,
    pub tables_full: u64,
    pub create_failures: u64,
    pub port_readds: u64,
    pub vm_disconnects: u64,
}

/// The `--json` document.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    pub seconds: f64,
    pub flows: u32,
    /// Packets sent into the switch.
    pub packets: u64,
    /// Transmitted packets checked against the reference.
    pub checked: u64,
    pub misforwarded: u64,
    /// Transmitted packets not checked: the capture was full, or their
    /// send version had left the history.
    pub unchecked: u64,
    pub invariant_violations: u64,
    pub invariant_checks: u64,
    /// NIC rules left after the final flush.
    pub leaked_rules: usize,
    /// Marks the offload worker still holds after the final flush.
    pub leaked_marks: usize,
    /// Ports whose accounting (DESIGN §6) does not balance at the end.
    pub unbalanced_ports: Vec<String>,
    pub ports: Vec<NamedPortStats>,
    pub rule_versions: u64,
    /// Packets by path over the run: offload must have been exercised.
    pub paths: crate::demo::Paths,
    /// Most megaflows offloaded at one time (sampled each second).
    pub offloaded_peak: usize,
    pub faults: FaultCounts,
    pub rss_kib_after_warmup: u64,
    pub rss_kib_end: u64,
    /// (end - after warm-up) / after warm-up, in percent.
    pub rss_growth_percent: f64,
    /// The first few failures of each kind, for people.
    pub examples: Vec<String>,
    pub passed: bool,
}

/// Resident memory of this process (`VmRSS`), in KiB; 0 where unknown.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// What the threads share.
struct Shared {
    /// The version the switch has applied on every PMD (senders stamp it).
    applied_version: AtomicU64,
    /// Every version the switch may be using, newest last.
    history: Mutex<VecDeque<(u64, Arc<RuleSet>)>>,
    /// Ports traffic may be sent to (a removed port gets none).
    attached: [AtomicBool; 4],
    stop: AtomicBool,
    sent: AtomicU64,
    checked: AtomicU64,
    misforwarded: AtomicU64,
    unchecked: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Shared {
    fn history(&self) -> MutexGuard<'_, VecDeque<(u64, Arc<RuleSet>)>> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn example(&self, what: String) {
        let mut e = self.examples.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() < EXAMPLES * 3 {
            e.push(what);
        }
    }

    fn is_attached(&self, ofport: u32) -> bool {
        self.attached
            .get(ofport as usize)
            .is_some_and(|a| a.load(Ordering::Acquire))
    }
}

/// Runs the soak; `progress` gets a line per second when given.
pub fn run(
    opts: &SoakOptions,
    mut progress: Option<&mut dyn std::io::Write>,
) -> Result<SoakReport, SoakError> {
    if !(opts.seconds.is_finite() && opts.seconds >= 2.0) {
        return Err(SoakError::Seconds(opts.seconds));
    }
    let bed = Testbed::default_ports(TestbedConfig {
        keep_tx: CAPTURE_PER_PORT,
        ..TestbedConfig::default()
    })
    .map_err(|e| SoakError::Testbed(e.to_string()))?;
    let mut sw: Switch<HeapPacket> = Switch::start(SwitchConfig {
        offload: std::env::var_os("FLOWMARK_SOAK_NO_OFFLOAD").is_none(),
        ..SwitchConfig::default()
    })?;
    for p in bed.ports() {
        sw.add_port(
            p.name(),
            p.kind(),
            Some(p.ofport),
            p.port(),
            p.flow_device(),
        )?;
    }
    let mut rng = Rng::new(opts.seed);
    let mut rules = RuleSet::initial(&mut rng);
    install_all(&mut sw, &rules)?;
    let shared = Shared {
        applied_version: AtomicU64::new(0),
        history: Mutex::new(VecDeque::from([(0, Arc::new(rules.clone()))])),
        attached: std::array::from_fn(|_| AtomicBool::new(true)),
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        checked: AtomicU64::new(0),
        misforwarded: AtomicU64::new(0),
        unchecked: AtomicU64::new(0),
        examples: Mutex::new(Vec::new()),
    };
    let mut faults = FaultCounts::default();
    let mut invariant_checks = 0u64;
    let mut invariant_violations = 0u64;
    let mut rss_after_warmup = 0u64;
    let mut offloaded_peak = 0usize;
    let warmup = Duration::from_secs_f64((opts.seconds * 0.2).clamp(1.0, 10.0));
    let total = Duration::from_secs_f64(opts.seconds);
    let started = Instant::now();

    std::thread::scope(|scope| -> Result<(), SoakError> {
        let generator = scope.spawn(|| generate(&bed, &shared, opts.seed));
        let checker = scope.spawn(|| check_loop(&bed, &shared));
        let mut version = 0u64;
        let mut full_until: Option<(u32, Instant)> = None;
        let mut detached: Option<(u32, Instant)> = None;
        let mut next_second = 1u64;
        let mut result = Ok(());
        while started.elapsed() < total {
            std::thread::sleep(TICK);
            if generator.is_finished() || checker.is_finished() {
                break;
            }
            // Flow mods: 1% of the rules per tick is 10% per second.
            version += 1;
            let changes = rules.churn(&mut rng, version);
            shared
                .history()
                .push_back((version, Arc::new(rules.clone())));
            if let Err(e) = apply_changes(&mut sw, &changes, &mut faults) {
                result = Err(e);
                break;
            }
            // Every PMD has the new pipeline once it answers.
            if let Err(e) = sw.pmd_snapshots() {
                result = Err(e.into());
                break;
            }
            shared.applied_version.store(version, Ordering::Release);
            {
                let mut h = shared.history();
                while h.len() > VERSIONS_KEPT {
                    h.pop_front();
                }
            }

            if let Err(e) = inject_faults(
                &mut sw,
                &bed,
                &shared,
                &mut rng,
                &mut faults,
                &mut full_until,
                &mut detached,
            ) {
                result = Err(e);
                break;
            }
            if started.elapsed() >= Duration::from_secs(next_second) {
                next_second += 1;
                invariant_checks += 1;
                if let Some(Ok(st)) = sw.offload_status() {
                    offloaded_peak = offloaded_peak.max(st.states.offloaded);
                }
                let v = check_invariants(&sw);
                invariant_violations += v.len() as u64;
                for what in v {
                    shared.example(format!("invariant: {what}"));
                }
                if let Some(out) = progress.as_deref_mut() {
                    let _ = writeln!(
                        out,
                        "{:>4}s  sent {:>9}  checked {:>9}  misforwarded {}  invariant violations {}",
                        next_second - 1,
                        shared.sent.load(Ordering::Relaxed),
                        shared.checked.load(Ordering::Relaxed),
                        shared.misforwarded.load(Ordering::Relaxed),
                        invariant_violations
                    );
                }
            }
            if rss_after_warmup == 0 && started.elapsed() >= warmup {
                rss_after_warmup = rss_kib();
            }
        }
        // Faults off, ports back, traffic stopped.
        for p in [NIC0_OFPORT, NIC1_OFPORT] {
            if let Some(nic) = bed.nic(p) {
                nic.flow_device().set_refuse_as_full(false);
                nic.flow_device().fail_nth_create(0);
            }
        }
        if let Some((ofport, _)) = detached.take() {
            reattach(&mut sw, &bed, &shared, ofport)?;
        }
        shared.stop.store(true, Ordering::Release);
        generator
            .join()
            .map_err(|_| SoakError::Thread("generator"))?;
        drain(&sw, &bed)?;
        // The last transmitted packets, then the checker stops.
        std::thread::sleep(Duration::from_millis(50));
        checker.join().map_err(|_| SoakError::Thread("checker"))?;
        result
    })?;

    // Quiescent: both accounting identities must hold exactly.
    let ports = sw.port_stats()?;
    let mut paths = crate::demo::Paths::default();
    for snap in sw.pmd_snapshots()? {
        paths.mark += snap.counters.mark_hits;
        paths.emc += snap.counters.emc_hits;
        paths.dpcls += snap.counters.dpcls_hits;
        paths.upcall += snap.counters.upcalls;
    }
    let unbalanced_ports: Vec<String> = ports
        .iter()
        .filter_map(|p| p.stats.check().err().map(|e| format!("{}: {e}", p.name)))
        .collect();
    invariant_checks += 1;
    for what in check_invariants(&sw) {
        invariant_violations += 1;
        shared.example(format!("invariant (quiescent): {what}"));
    }
    let rss_end = rss_kib();
    if rss_after_warmup == 0 {
        rss_after_warmup = rss_end;
    }

    // The final flush: every rule and mark must go.
    sw.flush_megaflows()?;
    let (leaked_rules, leaked_marks) = wait_for_empty(&sw, &bed);
    sw.shutdown();

    let misforwarded = shared.misforwarded.load(Ordering::Relaxed);
    let growth =
        (rss_end as f64 - rss_after_warmup as f64) / (rss_after_warmup.max(1) as f64) * 100.0;
    let passed = misforwarded == 0
        && invariant_violations == 0
        && leaked_rules == 0
        && leaked_marks == 0
        && unbalanced_ports.is_empty()
        && growth <= 10.0
        && shared.checked.load(Ordering::Relaxed) > 0
        && paths.mark > 0;
    let examples = shared
        .examples
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    let rule_versions = shared.history().back().map_or(0, |(v, _)| *v);
    Ok(SoakReport {
        seconds: started.elapsed().as_secs_f64(),
        flows: SOAK_FLOWS,
        packets: shared.sent.load(Ordering::Relaxed),
        checked: shared.checked.load(Ordering::Relaxed),
        misforwarded,
        unchecked: shared.unchecked.load(Ordering::Relaxed),
        invariant_violations,
        invariant_checks,
        leaked_rules,
        leaked_marks,
        unbalanced_ports,
        ports,
        rule_versions,
        paths,
        offloaded_peak,
        faults,
        rss_kib_after_warmup: rss_after_warmup,
        rss_kib_end: rss_end,
        rss_growth_percent: (growth * 10.0).round() / 10.0,
        examples,
        passed,
    })
}

/// `flowmark soak [--seconds S] [--json]`: the report (one JSON document,
/// or lines for people); failure when any check failed.
pub fn main(seconds: f64, json: bool) -> std::process::ExitCode {
    use std::process::ExitCode;
    let opts = SoakOptions {
        seconds,
        ..SoakOptions::default()
    };
    let mut stderr = std::io::stderr();
    let progress: Option<&mut dyn std::io::Write> = if json { None } else { Some(&mut stderr) };
    let report = match run(&opts, progress) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flowmark: soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("flowmark: soak: cannot write JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print_report(&report);
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        eprintln!("flowmark: soak: FAILED (see misforwarded, invariant_violations, leaked_rules, leaked_marks, unbalanced_ports, rss_growth_percent and examples)");
        ExitCode::FAILURE
    }
}

fn print_report(r: &SoakReport) {
    println!(
        "soak {:.1}s: {} flows, {} packets sent, {} checked, {} unchecked",
        r.seconds, r.flows, r.packets, r.checked, r.unchecked
    );
    println!("misforwarded          {}", r.misforwarded);
    println!(
        "invariant violations  {} (in {} checks)",
        r.invariant_violations, r.invariant_checks
    );
    println!(
        "leaked rules / marks  {} / {}",
        r.leaked_rules, r.leaked_marks
    );
    println!(
        "accounting            {}",
        if r.unbalanced_ports.is_empty() {
            "balanced on every port".to_string()
        } else {
            r.unbalanced_ports.join("; ")
        }
    );
    println!(
        "resident memory       {} KiB after warm-up, {} KiB at the end ({:+.1}%)",
        r.rss_kib_after_warmup, r.rss_kib_end, r.rss_growth_percent
    );
    println!(
        "paths                 mark {}  emc {}  dpcls {}  upcall {}  (offloaded peak {})",
        r.paths.mark, r.paths.emc, r.paths.dpcls, r.paths.upcall, r.offloaded_peak
    );
    println!("faults                {:?}", r.faults);
    for e in &r.examples {
        println!("  {e}");
    }
    println!("{}", if r.passed { "PASSED" } else { "FAILED" });
}

// ---- rules ----

fn to_rule(r: &SoakRule) -> Result<fallback::ofproto::Rule, SoakError> {
    let text = r.to_flow();
    parse_flow(&text).map_err(|e| SoakError::Rule(text, e.to_string()))
}

fn install_all(sw: &mut Switch<HeapPacket>, rules: &RuleSet) -> Result<(), SoakError> {
    let parsed = rules
        .rules
        .iter()
        .map(to_rule)
        .collect::<Result<Vec<_>, _>>()?;
    sw.flow_add_all(parsed);
    Ok(())
}

fn apply_changes(
    sw: &mut Switch<HeapPacket>,
    changes: &[reference::Change],
    faults: &mut FaultCounts,
) -> Result<(), SoakError> {
    for c in changes {
        match c {
            reference::Change::Modify(r) => {
                let parsed = to_rule(r)?;
                let sel = parse_match(&r.match_text())
                    .map_err(|e| SoakError::Rule(r.match_text(), e.to_string()))?;
                sw.flow_mod(Some(r.table), &sel, Some(r.priority), &parsed.actions);
                faults.flow_mods += 1;
            }
            reference::Change::Add(r) => {
                sw.flow_add(to_rule(r)?);
                faults.rule_adds += 1;
            }
            reference::Change::Delete(r) => {
                let sel = parse_match(&r.match_text())
                    .map_err(|e| SoakError::Rule(r.match_text(), e.to_string()))?;
                sw.flow_del(Some(r.table), &sel, Some(r.priority));
                faults.rule_deletes += 1;
            }
        }
    }
    Ok(())
}

// ---- faults ----

#[allow(clippy::too_many_arguments)]
fn inject_faults(
    sw: &mut Switch<HeapPacket>,
    bed: &Testbed,
    shared: &Shared,
    rng: &mut Rng,
    faults: &mut FaultCounts,
    full_until: &mut Option<(u32, Instant)>,
    detached: &mut Option<(u32, Instant)>,
) -> Result<(), SoakError> {
    let now = Instant::now();
    let nic_port = |rng: &mut Rng| {
        if rng.below(2) == 0 {
            NIC0_OFPORT
        } else {
            NIC1_OFPORT
        }
    };
    // A table stays "full" for half a second.
    if let Some((p, until)) = *full_until {
        if now >= until {
            if let Some(nic) = bed.nic(p) {
                nic.flow_device().set_refuse_as_full(false);
            }
            *full_until = None;
        }
    } else if rng.below(40) == 0 {
        let p = nic_port(rng);
        if let Some(nic) = bed.nic(p) {
            nic.flow_device().set_refuse_as_full(true);
            *full_until = Some((p, now + Duration::from_millis(500)));
            faults.tables_full += 1;
        }
    }
    if rng.below(30) == 0 {
        let p = nic_port(rng);
        if shared.is_attached(p) {
            if let Some(nic) = bed.nic(p) {
                nic.flow_device().reset();
                sw.nic_reset(p)?;
                faults.nic_resets += 1;
            }
        }
    }
    if rng.below(10) == 0 {
        if let Some(nic) = bed.nic(nic_port(rng)) {
            nic.flow_device().fail_nth_create(1 + rng.below(20));
            faults.create_failures += 1;
        }
    }
    // One port away at a time, for 300 ms.
    match *detached {
        Some((p, since)) if now.duration_since(since) >= Duration::from_millis(300) => {
            reattach(sw, bed, shared, p)?;
            *detached = None;
        }
        Some(_) => {}
        None => {
            let which = rng.below(50);
            let p = match which {
                0 => Some(NIC1_OFPORT),
                1 => Some(VM0_OFPORT),
                _ => None,
            };
            if let Some(p) = p {
                detach(sw, bed, shared, p)?;
                if p == VM0_OFPORT {
                    faults.vm_disconnects += 1;
                } else {
                    faults.port_readds += 1;
                }
                *detached = Some((p, now));
            }
        }
    }
    Ok(())
}

/// Takes a port out of the switch as its device goes away: no more traffic
/// into it, the switch removes it, and what was still on its rx rings is
/// lost with the device (a re-added DPDK port starts with empty rings).
fn detach(
    sw: &mut Switch<HeapPacket>,
    bed: &Testbed,
    shared: &Shared,
    ofport: u32,
) -> Result<(), SoakError> {
    let Some(tp) = bed.port(ofport) else {
        return Ok(());
    };
    if let Some(a) = shared.attached.get(ofport as usize) {
        a.store(false, Ordering::Release);
    }
    // The generator may be inside a send to this port: let it finish.
    std::thread::sleep(Duration::from_millis(2));
    let _ = tp.injector().sync();
    sw.del_port(tp.name())?;
    let port = tp.port();
    let mut burst = fallback::port::Burst::new();
    for q in 0..port.n_rxq() {
        while port.rx_burst(q, &mut burst) > 0 {
            for p in burst.drain() {
                bed.pool().put(p);
            }
        }
    }
    Ok(())
}

fn reattach(
    sw: &mut Switch<HeapPacket>,
    bed: &Testbed,
    shared: &Shared,
    ofport: u32,
) -> Result<(), SoakError> {
    let Some(tp) = bed.port(ofport) else {
        return Ok(());
    };
    sw.add_port(
        tp.name(),
        tp.kind(),
        Some(ofport),
        tp.port(),
        tp.flow_device(),
    )?;
    if let Some(a) = shared.attached.get(ofport as usize) {
        a.store(true, Ordering::Release);
    }
    Ok(())
}

// ---- invariants ----

/// DESIGN §3 from the offload worker's status and dump (one consistent
/// status; the dump is checked on its own).
fn check_invariants(sw: &Switch<HeapPacket>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(status) = sw.offload_status() else {
        return out;
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => return vec![format!("offload status: {e}")],
    };
    let holding = status.states.offloaded + status.states.removing;
    if status.marks_in_use != holding {
        out.push(format!(
            "marks in use {} != offloaded+removing megaflows {holding}",
            status.marks_in_use
        ));
    }
    let dump = match sw.offload_dump() {
        Ok(d) => d,
        Err(e) => return vec![format!("offload dump: {e}")],
    };
    let mut by_mark: BTreeMap<u32, usize> = BTreeMap::new();
    for f in &dump {
        if let Some(m) = f.mark {
            *by_mark.entry(m).or_insert(0) += 1;
        }
        let needs_mark = matches!(f.state, "offloaded" | "removing");
        if needs_mark != f.mark.is_some() {
            out.push(format!(
                "{} megaflow {} with mark {:?}",
                f.state, f.ufid, f.mark
            ));
        }
        if matches!(f.state, "rejected" | "failed") && f.reason.is_none() {
            out.push(format!("{} megaflow {} without a reason", f.state, f.ufid));
        }
    }
    for (mark, n) in by_mark {
        if n > 1 {
            out.push(format!("mark {mark} maps {n} megaflows"));
        }
    }
    out
}

/// Waits (up to 5 s) for the worker to destroy every rule after a flush;
/// returns (rules left on the NICs, marks the worker still holds).
fn wait_for_empty(sw: &Switch<HeapPacket>, bed: &Testbed) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rules: usize = [NIC0_OFPORT, NIC1_OFPORT]
            .iter()
            .filter_map(|p| bed.nic(*p))
            .map(|n| n.flow_device().rule_count())
            .sum();
        let marks = sw
            .offload_status()
            .and_then(|s| s.ok())
            .map_or(0, |s| s.marks_in_use);
        if (rules == 0 && marks == 0) || Instant::now() >= deadline {
            return (rules, marks);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the rx rings are empty and the PMDs stop counting.
fn drain(sw: &Switch<HeapPacket>, bed: &Testbed) -> Result<(), SoakError> {
    let _ = bed.sync();
    let start = Instant::now();
    let mut previous = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(30));
        let total: u64 = sw.pmd_snapshots()?.iter().map(|s| s.counters.packets).sum();
        if bed.rx_pending() == 0 && total == previous {
            return Ok(());
        }
        previous = total;
        if start.elapsed() > Duration::from_secs(10) {
            return Ok(());
        }
    }
}

// ---- traffic ----

fn generate(bed: &Testbed, shared: &Shared, seed: u64) {
    let injectors: Vec<(u32, &dyn Inject)> = bed.injectors();
    let started = Instant::now();
    let mut n = 0u64;
    // A permutation of the flows (a prime multiplier, coprime with the flow
    // count), so consecutive packets come from distant flows.
    let stride = [7919u64, 7927, 7933][(seed % 3) as usize];
    while !shared.stop.load(Ordering::Acquire) {
        // Pace: never ahead of PACKETS_PER_SECOND.
        let due = (started.elapsed().as_secs_f64() * PACKETS_PER_SECOND as f64) as u64;
        if n >= due {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let version = shared.applied_version.load(Ordering::Acquire);
        for _ in 0..(due - n).min(256) {
            let flow = ((n.wrapping_mul(stride)) % u64::from(SOAK_FLOWS)) as u32;
            let f = reference::FlowHeaders::of(flow);
            n += 1;
            if !shared.is_attached(f.in_port) {
                continue;
            }
            let Some((_, inj)) = injectors.iter().find(|(p, _)| *p == f.in_port) else {
                continue;
            };
            let frame = f.frame(n, version);
            if inj.inject(&frame).is_ok() {
                shared.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn check_loop(bed: &Testbed, shared: &Shared) {
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        std::thread::sleep(Duration::from_millis(5));
        let newest = shared.history().back().map_or(0, |(v, _)| *v);
        let history: Vec<(u64, Arc<RuleSet>)> = shared.history().iter().cloned().collect();
        let mut any = false;
        for tp in bed.ports() {
            let frames = tp.take_transmitted();
            any |= !frames.is_empty();
            for frame in frames {
                check_frame(shared, &history, newest, tp.ofport, &frame);
            }
        }
        if stopping && !any {
            // One more round after the stop flag: the drain has finished.
            let mut overflow = 0;
            for tp in bed.ports() {
                if let Some(nic) = bed.nic(tp.ofport) {
                    overflow += nic.port().sink().capture_overflow();
                } else if let Some(vm) = bed.vm(tp.ofport) {
                    overflow += vm.port().sink().capture_overflow();
                }
            }
            shared.unchecked.fetch_add(overflow, Ordering::Relaxed);
            return;
        }
    }
}

fn check_frame(
    shared: &Shared,
    history: &[(u64, Arc<RuleSet>)],
    newest: u64,
    out_port: u32,
    frame: &[u8],
) {
    let Some(obs) = Observed::parse(out_port, frame) else {
        shared.misforwarded.fetch_add(1, Ordering::Relaxed);
        shared.example(format!(
            "misforwarded: port {out_port} sent a frame the soak never made: {:02x?}",
            &frame[..frame.len().min(64)]
        ));
        return;
    };
    let from = history.partition_point(|(v, _)| *v < obs.version);
    if history.first().is_none_or(|(v, _)| *v > obs.version) {
        shared.unchecked.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let flow = reference::FlowHeaders::of(obs.flow);
    let ok = history[from..]
        .iter()
        .take_while(|(v, _)| *v <= newest)
        .any(|(_, rules)| rules.outputs(&flow).contains(&obs.output));
    shared.checked.fetch_add(1, Ordering::Relaxed);
    if !ok {
        shared.misforwarded.fetch_add(1, Ordering::Relaxed);
        let expected = history
            .get(from)
            .map(|(_, r)| r.outputs(&flow))
            .unwrap_or_default();
        shared.example(format!(
            "misforwarded: flow {} seq {} sent at version {} (newest {newest}) came out as \
             {:?}; version {} gives {:?}",
            obs.flow, obs.seq, obs.version, obs.output, obs.version, expected
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::reference::Action;
    use super::*;

    #[test]
    fn every_soak_rule_parses_and_prints_back() {
        let mut rng = Rng::new(7);
        let mut rules = RuleSet::initial(&mut rng);
        for v in 1..50 {
            rules.churn(&mut rng, v);
        }
        for r in &rules.rules {
            to_rule(r).unwrap();
            parse_match(&r.match_text()).unwrap();
        }
    }

    #[test]
    fn rss_is_read() {
        assert!(rss_kib() > 0);
    }

    #[test]
    fn action_outputs_skip_the_input_port() {
        let flow = reference::FlowHeaders::of(0);
        let rules = RuleSet {
            rules: vec![SoakRule {
                table: 0,
                priority: 10,
                in_port: None,
                dst_net: 0,
                prefix: 0,
                tp_dst: None,
                actions: vec![Action::Output(flow.in_port), Action::Output(9)],
            }],
        };
        let outs = rules.outputs(&flow);
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].port, 9);
    }
}
