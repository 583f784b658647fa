//! `flowmark soak`: the default testbed under churn and faults, with the
//! guarantees of DESIGN §3 and §6 checked throughout.
//!
//! Traffic over 100,000 flows (UDP, TCP and ICMP over IPv4 and IPv6, VLAN
//! tagged and not, to a router MAC, to broadcast and to other ports'
//! stations) enters nic0, nic1 and vm0 while flow mods change 1% of the
//! rules every tick, and NIC resets, full tables, create failures, NIC port
//! removal and re-add and VM port disconnects are injected at random.
//!
//! The check is two-sided and runs in windows. Every change (flow mods,
//! port removal and re-add, faults) is made at a barrier: the generator is
//! paused, the NIC wires are synced, the rx rings drain and every PMD
//! answers (so every burst taken has been executed and flushed), then the
//! transmitted frames are collected and the counters read. Between two
//! barriers the rules and the port set are fixed. Every packet carries its
//! flow, a sequence number and its window in a trailer, and the checker runs
//! [`reference`], an interpreter written apart from `fallback`'s xlate, over
//! every packet the window sent. A packet is *determined* when nothing its
//! outputs depend on changed in its window: the only state that can change
//! between barriers is the MAC learning table (NORMAL learns from traffic),
//! so a packet whose NORMAL looked up an entry that some packet of the same
//! window teaches, or one the checker is not sure the switch has, is not.
//! For determined packets the exact multiset of (port, frame bytes) must
//! match: a missing or an extra frame is misforwarded. A determined packet
//! with every frame missing is excused when the datapath counted a drop for
//! it (upcall limit, port down, rx ring full, a NIC drop rule); per window
//! and ingress port, excused packets plus the drop-action packets lost
//! before the pipeline must equal those counted drops exactly. For the
//! others each transmitted frame must be one that some state of the table
//! gives.

mod check;
mod reference;
#[cfg(test)]
mod tests;

use check::check_loop;
use fallback::sync::Recover;

use crate::switch::{NamedPortStats, Switch, SwitchConfig, SwitchError};
use fallback::ofproto::syntax::{parse_flow, parse_match};
use fallback::port::{HeapPacket, RxDropReason};
use reference::{Bridge, MacKey, MacModel, Outcome, RuleSet, SoakRule, Tag};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
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
/// Churn and fault decisions are made this often; a window is one tick.
const TICK: Duration = Duration::from_millis(100);
/// Transmitted packets each port keeps for the checker between barriers
/// (a window sends about 6,000 packets; floods copy them).
const CAPTURE_PER_PORT: usize = 65_536;
/// Closed windows waiting for the checker before the main thread waits.
const WINDOWS_QUEUED: usize = 4;
/// How long a barrier waits for the rx rings to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
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

/// The two-sided check's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExactCheck {
    /// Windows checked (one per tick).
    pub windows: u64,
    /// Windows whose every packet was determined.
    pub windows_determined: u64,
    /// Barriers whose rx rings did not drain in time (their window is
    /// checked one-sided only).
    pub windows_undrained: u64,
    /// Packets whose outputs the reference determines exactly.
    pub determined: u64,
    pub undetermined: u64,
    pub determined_percent: f64,
    /// Frames the reference expects for determined packets, and how many
    /// of them were transmitted byte for byte.
    pub expected_frames: u64,
    pub matched_frames: u64,
    /// Exact mismatches: expected frames not transmitted (and not excused
    /// by a counted drop), transmitted frames not expected.
    pub missing: u64,
    pub extra: u64,
    /// Frames of undetermined packets that no state of the learning table
    /// gives (one-sided check).
    pub extra_undetermined: u64,
    /// Transmitted frames that carry no soak trailer or another window's.
    pub unknown_frames: u64,
    /// Determined packets whose every frame was missing, excused by a drop
    /// the datapath counted (and their frames), in windows and ports whose
    /// packets were all determined.
    pub excused_packets: u64,
    pub excused_frames: u64,
    /// Drops counted before the pipeline (upcall limit, port down, rx ring
    /// full, NIC drop rules) in windows and ports whose packets were all
    /// determined; of those, the ones that hit drop-action packets.
    pub counted_drops: u64,
    pub counted_drops_silent: u64,
    /// Whole-packet losses excused in windows and ports with undetermined
    /// packets (there the counted drops only bound them: excused <=
    /// counted), and the drops counted there.
    pub excused_packets_undetermined: u64,
    pub counted_drops_undetermined: u64,
    /// Windows and ports where excused + silent != counted.
    pub drop_mismatches: u64,
    pub excused_equals_counted: bool,
    /// Frames the datapath counted dropped on transmit (ring full, too big,
    /// no headroom, port down) and missing frames they excused.
    pub tx_dropped: u64,
    pub tx_excused: u64,
}

/// The `--json` document.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    pub seconds: f64,
    pub flows: u32,
    /// Packets sent into the switch.
    pub packets: u64,
    /// Transmitted frames checked against the reference.
    pub checked: u64,
    /// missing + extra + extra_undetermined + unknown frames.
    pub misforwarded: u64,
    /// Transmitted frames not checked (the capture was full).
    pub unchecked: u64,
    pub exact: ExactCheck,
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

/// The packets of the open window, as the generator sent them.
#[derive(Default)]
struct Gate {
    window: u64,
    /// (seq, flow) of every packet injected in this window.
    packets: Vec<(u64, u32)>,
}

/// What the threads share.
struct Shared {
    /// The generator waits while this is set (a barrier is coming).
    pause: AtomicBool,
    gate: Mutex<Gate>,
    /// Ports traffic may be sent to (a removed port gets none).
    attached: [AtomicBool; 4],
    stop: AtomicBool,
    sent: AtomicU64,
    checked: AtomicU64,
    misforwarded: AtomicU64,
    determined: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Shared {
    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().recover()
    }

    fn example(&self, what: String) {
        let mut e = self.examples.lock().recover();
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

/// A port's counters that excuse missing frames, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DropCounters {
    /// Received packets lost before the pipeline ran: upcall limit, port
    /// down, not linearizable, rx ring full (rx_missed), NIC drop rules.
    lost_rx: u64,
    /// Received packets the pipeline dropped (drop action, no match,
    /// translation or parse error).
    silent: u64,
    /// Frames dropped on transmit, every reason.
    tx_dropped: u64,
    /// Transmitted frames the testbed did not keep.
    capture_overflow: u64,
}

impl DropCounters {
    fn since(self, base: DropCounters) -> DropCounters {
        DropCounters {
            lost_rx: self.lost_rx.saturating_sub(base.lost_rx),
            silent: self.silent.saturating_sub(base.silent),
            tx_dropped: self.tx_dropped.saturating_sub(base.tx_dropped),
            capture_overflow: self.capture_overflow.saturating_sub(base.capture_overflow),
        }
    }
}

/// Reads every attached port's [`DropCounters`]. Asking for the switch's
/// port stats is also a barrier: every PMD answers between two polls.
fn read_counters(
    sw: &Switch<HeapPacket>,
    bed: &Testbed,
) -> Result<BTreeMap<u32, DropCounters>, SoakError> {
    let stats = sw.port_stats()?;
    let mut out = BTreeMap::new();
    for tp in bed.ports() {
        let Some(s) = stats.iter().find(|s| s.name == tp.name()) else {
            continue;
        };
        let s = &s.stats;
        let (missed, rule_dropped, overflow) = if let Some(nic) = bed.nic(tp.ofport) {
            let st = nic.stats();
            (
                st.rx_missed.iter().sum::<u64>(),
                st.rule_dropped,
                nic.port().sink().capture_overflow(),
            )
        } else if let Some(vm) = bed.vm(tp.ofport) {
            let p = vm.port();
            (
                (0..fallback::port::Port::n_rxq(p.as_ref()))
                    .map(|q| p.rx_missed(q))
                    .sum(),
                0,
                p.sink().capture_overflow(),
            )
        } else {
            (0, 0, 0)
        };
        let rx = |r| s.rx_dropped.get(r);
        out.insert(
            tp.ofport,
            DropCounters {
                lost_rx: rx(RxDropReason::UpcallLimit)
                    + rx(RxDropReason::PortDown)
                    + rx(RxDropReason::NotLinear)
                    + missed
                    + rule_dropped,
                silent: rx(RxDropReason::DropAction)
                    + rx(RxDropReason::NoMatch)
                    + rx(RxDropReason::XlateError)
                    + rx(RxDropReason::ParseError),
                tx_dropped: s.tx_dropped.total(),
                capture_overflow: overflow,
            },
        );
    }
    Ok(out)
}

/// A window closed at a barrier, for the checker.
struct ClosedWindow {
    id: u64,
    rules: Arc<RuleSet>,
    /// The bridge's ports during the window, sorted.
    ports: Vec<u32>,
    /// Ports removed at the barrier that opened the window (their learned
    /// MACs went with them).
    flushed: Vec<u32>,
    packets: Vec<(u64, u32)>,
    /// (port, bytes) of every frame transmitted during the window.
    frames: Vec<(u32, Vec<u8>)>,
    /// Counters over the window, per port attached during it.
    counts: BTreeMap<u32, DropCounters>,
    drained: bool,
}

/// The open window's state on the main thread.
struct OpenWindow {
    id: u64,
    rules: Arc<RuleSet>,
    ports: Vec<u32>,
    flushed: Vec<u32>,
    base: BTreeMap<u32, DropCounters>,
    /// Frames taken from the ports so far (as bytes: the buffers go back
    /// to the pool at once, so a window's frames do not hold buffers).
    frames: Vec<(u32, Vec<u8>)>,
}

impl OpenWindow {
    fn collect(&mut self, bed: &Testbed) {
        for tp in bed.ports() {
            for f in tp.take_transmitted() {
                self.frames.push((tp.ofport, f));
            }
        }
    }
}

/// Waits until every injected frame is on an rx ring or counted lost and
/// the rings are empty; false if they did not drain in time.
fn drain_rings(bed: &Testbed) -> bool {
    let _ = bed.sync();
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while bed.rx_pending() > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

fn attached_ports(shared: &Shared) -> Vec<u32> {
    [NIC0_OFPORT, NIC1_OFPORT, VM0_OFPORT]
        .into_iter()
        .filter(|p| shared.is_attached(*p))
        .collect()
}

/// Closes the open window: the generator is paused (the caller holds the
/// gate), the rings drain, every PMD answers, the frames are collected.
fn close_window(
    sw: &Switch<HeapPacket>,
    bed: &Testbed,
    gate: &mut Gate,
    open: &mut OpenWindow,
) -> Result<ClosedWindow, SoakError> {
    let drained = drain_rings(bed);
    let now = read_counters(sw, bed)?;
    let counts = open
        .base
        .iter()
        .map(|(p, base)| (*p, now.get(p).copied().unwrap_or(*base).since(*base)))
        .collect();
    open.collect(bed);
    let frames = std::mem::take(&mut open.frames);
    Ok(ClosedWindow {
        id: open.id,
        rules: Arc::clone(&open.rules),
        ports: open.ports.clone(),
        flushed: open.flushed.clone(),
        packets: std::mem::take(&mut gate.packets),
        frames,
        counts,
        drained,
    })
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
    sw.set_buffer_sources(|| Some(Box::new(bed.pool().clone())));
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
    sw.pmd_snapshots()?;
    let shared = Shared {
        pause: AtomicBool::new(false),
        gate: Mutex::new(Gate::default()),
        attached: std::array::from_fn(|_| AtomicBool::new(true)),
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        checked: AtomicU64::new(0),
        misforwarded: AtomicU64::new(0),
        determined: AtomicU64::new(0),
        examples: Mutex::new(Vec::new()),
    };
    let mut faults = FaultCounts::default();
    let mut invariant_checks = 0u64;
    let mut invariant_violations = 0u64;
    let mut rss_after_warmup = 0u64;
    let mut offloaded_peak = 0usize;
    // Resident memory is compared from the end of the warm-up: by then the
    // megaflow population has reached its steady state, which takes every
    // flow seen and one idle-expiry period (max_idle_ms, 10 s): churn keeps
    // making megaflows and the ones it made obsolete live until they idle
    // out. The rest of the run (60%) shows a leak.
    let warmup = Duration::from_secs_f64((opts.seconds * 0.4).clamp(1.0, 15.0));
    let total = Duration::from_secs_f64(opts.seconds);
    let started = Instant::now();
    let (window_tx, window_rx) = crossbeam_channel::bounded::<ClosedWindow>(WINDOWS_QUEUED);
    let mut open = OpenWindow {
        id: 0,
        rules: Arc::new(rules.clone()),
        ports: attached_ports(&shared),
        flushed: Vec::new(),
        base: read_counters(&sw, &bed)?,
        frames: Vec::new(),
    };

    let (exact, unchecked) = std::thread::scope(|scope| -> Result<(ExactCheck, u64), SoakError> {
        let generator = scope.spawn(|| generate(&bed, &shared, opts.seed));
        let checker = scope.spawn(|| check_loop(window_rx, &shared));
        let mut version = 0u64;
        let mut full_until: Option<(u32, Instant)> = None;
        let mut detached: Option<(u32, Instant)> = None;
        let mut next_second = 1u64;
        let mut result = Ok(());
        let mut last = false;
        loop {
            // The window: traffic flows; its frames are collected as they
            // come.
            let opened = Instant::now();
            while !last && opened.elapsed() < TICK {
                std::thread::sleep(Duration::from_millis(5));
                open.collect(&bed);
            }
            if generator.is_finished() || checker.is_finished() {
                break;
            }
            last |= started.elapsed() >= total;
            // The barrier: no traffic, everything sent so far executed.
            shared.pause.store(true, Ordering::Release);
            let mut gate = shared.gate();
            let closed = match close_window(&sw, &bed, &mut gate, &mut open) {
                Ok(c) => c,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            if window_tx.send(closed).is_err() {
                break;
            }
            let mut flushed = Vec::new();
            if last {
                // Faults off, ports back; one more (empty) window.
                for p in [NIC0_OFPORT, NIC1_OFPORT] {
                    if let Some(nic) = bed.nic(p) {
                        nic.flow_device().set_refuse_as_full(false);
                        nic.flow_device().fail_nth_create(0);
                    }
                }
                if let Some((ofport, _)) = detached.take() {
                    if let Err(e) = reattach(&mut sw, &bed, &shared, ofport) {
                        result = Err(e);
                        break;
                    }
                }
            } else {
                // Flow mods: 1% of the rules per tick is 10% per second.
                version += 1;
                let changes = rules.churn(&mut rng, version);
                if let Err(e) = apply_changes(&mut sw, &changes, &mut faults) {
                    result = Err(e);
                    break;
                }
                if let Err(e) = inject_faults(
                    &mut sw,
                    &bed,
                    &shared,
                    &mut rng,
                    &mut faults,
                    &mut full_until,
                    &mut detached,
                    &mut flushed,
                ) {
                    result = Err(e);
                    break;
                }
            }
            // Every PMD has the new pipeline and ports once it answers.
            let base = match sw
                .pmd_snapshots()
                .map_err(SoakError::from)
                .and_then(|_| read_counters(&sw, &bed))
            {
                Ok(b) => b,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            open = OpenWindow {
                id: open.id + 1,
                rules: Arc::new(rules.clone()),
                ports: attached_ports(&shared),
                flushed,
                base,
                frames: Vec::new(),
            };
            gate.window = open.id;
            drop(gate);
            shared.pause.store(false, Ordering::Release);
            if last {
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
                        "{:>4}s  sent {:>9}  determined {:>9}  checked frames {:>9}  misforwarded {}  invariant violations {}  rss {} KiB",
                        next_second - 1,
                        shared.sent.load(Ordering::Relaxed),
                        shared.determined.load(Ordering::Relaxed),
                        shared.checked.load(Ordering::Relaxed),
                        shared.misforwarded.load(Ordering::Relaxed),
                        invariant_violations,
                        rss_kib()
                    );
                }
            }
            if rss_after_warmup == 0 && started.elapsed() >= warmup {
                rss_after_warmup = rss_kib();
            }
        }
        shared.pause.store(false, Ordering::Release);
        shared.stop.store(true, Ordering::Release);
        drop(window_tx);
        generator
            .join()
            .map_err(|_| SoakError::Thread("generator"))?;
        drain(&sw, &bed)?;
        let checked = checker.join().map_err(|_| SoakError::Thread("checker"))?;
        result.map(|()| checked)
    })?;

    // Quiescent: both accounting identities must hold exactly.
    let ports = sw.port_stats()?;
    let mut paths = crate::demo::Paths::default();
    for snap in sw.pmd_snapshots()? {
        paths.mark += snap.counters.mark_hits;
        paths.simple += snap.counters.simple_hits;
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

    let misforwarded =
        exact.missing + exact.extra + exact.extra_undetermined + exact.unknown_frames;
    let growth =
        (rss_end as f64 - rss_after_warmup as f64) / (rss_after_warmup.max(1) as f64) * 100.0;
    let checked = shared.checked.load(Ordering::Relaxed);
    let passed = misforwarded == 0
        && exact.excused_equals_counted
        && exact.determined > 0
        && invariant_violations == 0
        && leaked_rules == 0
        && leaked_marks == 0
        && unbalanced_ports.is_empty()
        && growth <= 10.0
        && checked > 0
        && paths.mark > 0;
    let examples = shared
        .examples
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    Ok(SoakReport {
        seconds: started.elapsed().as_secs_f64(),
        flows: SOAK_FLOWS,
        packets: shared.sent.load(Ordering::Relaxed),
        checked,
        misforwarded,
        unchecked,
        exact,
        invariant_violations,
        invariant_checks,
        leaked_rules,
        leaked_marks,
        unbalanced_ports,
        ports,
        rule_versions: open.id,
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
        eprintln!("flowmark: soak: FAILED (see misforwarded, exact, invariant_violations, leaked_rules, leaked_marks, unbalanced_ports, rss_growth_percent and examples)");
        ExitCode::FAILURE
    }
}

fn print_report(r: &SoakReport) {
    let x = &r.exact;
    println!(
        "soak {:.1}s: {} flows, {} packets sent, {} frames checked, {} unchecked",
        r.seconds, r.flows, r.packets, r.checked, r.unchecked
    );
    println!(
        "determined            {} packets ({}%), {} undetermined; {} of {} windows fully determined",
        x.determined, x.determined_percent, x.undetermined, x.windows_determined, x.windows
    );
    println!(
        "exact check           {} of {} expected frames matched; missing {}  extra {}  extra (undetermined) {}  unknown {}",
        x.matched_frames, x.expected_frames, x.missing, x.extra, x.extra_undetermined, x.unknown_frames
    );
    println!(
        "excused               {} packets ({} frames) by counted drops; counted {} (+{} on drop-action packets): {}",
        x.excused_packets,
        x.excused_frames,
        x.counted_drops,
        x.counted_drops_silent,
        if x.excused_equals_counted { "equal" } else { "NOT equal" }
    );
    println!(
        "                      where undetermined: {} packets excused, {} drops counted",
        x.excused_packets_undetermined, x.counted_drops_undetermined
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
        "paths                 mark {}  simple {}  emc {}  dpcls {}  upcall {}  (offloaded peak {})",
        r.paths.mark, r.paths.simple, r.paths.emc, r.paths.dpcls, r.paths.upcall, r.offloaded_peak
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
    // The reference expects a change in the datapath once made.
    sw.settle();
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
    sw.settle();
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
    flushed: &mut Vec<u32>,
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
                flushed.push(p);
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
    sw.settle();
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
    sw.settle();
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
    let mut paced = 0u64;
    // A permutation of the flows (a prime multiplier, coprime with the flow
    // count), so consecutive packets come from distant flows.
    let stride = [7919u64, 7927, 7933][(seed % 3) as usize];
    while !shared.stop.load(Ordering::Acquire) {
        if shared.pause.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        // Pace: never ahead of PACKETS_PER_SECOND, and no catching up on
        // the time spent at barriers.
        let due = (started.elapsed().as_secs_f64() * PACKETS_PER_SECOND as f64) as u64;
        paced = paced.max(due.saturating_sub(512));
        if paced >= due {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let mut gate = shared.gate();
        let window = gate.window;
        for _ in 0..(due - paced).min(256) {
            let flow = ((n.wrapping_mul(stride)) % u64::from(SOAK_FLOWS)) as u32;
            let f = reference::Pkt::of(flow);
            n += 1;
            paced += 1;
            if !shared.is_attached(f.in_port) {
                continue;
            }
            let Some((_, inj)) = injectors.iter().find(|(p, _)| *p == f.in_port) else {
                continue;
            };
            let frame = f.frame(n, window);
            if inj.inject(&frame).is_ok() {
                gate.packets.push((n, flow));
                shared.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
