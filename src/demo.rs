//! `flowmark demo`: the default testbed (emulated offload NICs `nic0`,
//! `nic1` and VM port `vm0` as OpenFlow ports 1, 2, 3), the sample GTP rules,
//! generated traffic, a line per second and the final accounting.

use crate::switch::{NamedPortStats, Switch, SwitchConfig, SwitchError};
use fallback::port::HeapPacket;
use offload::device::Profile;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testbed::traffic::{GtpSpec, Traffic, TrafficSpec};
use testbed::{Testbed, TestbedConfig};

/// The sample rules: the GTP gateway scenario.
pub const GTP_FLOWS: &str = include_str!("../examples/gtp.flows");

/// Packets the generator sends between checks of the clock.
const CHUNK: u64 = 2048;
/// One VM-port packet per this many NIC packets.
const VM_SHARE: u64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("testbed: {0}")]
    Testbed(String),
    #[error(transparent)]
    Switch(#[from] SwitchError),
    #[error("sample rules: {0}")]
    Rules(String),
    #[error("cannot write the report: {0}")]
    Io(#[from] std::io::Error),
    #[error("traffic generator: {0}")]
    Traffic(String),
}

/// How long the demo runs.
#[derive(Clone, Copy, Debug)]
pub enum Amount {
    Seconds(f64),
    /// Exactly this many packets, lossless (back-pressure), then drain.
    Packets(u64),
}

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub flows: usize,
    pub amount: Amount,
    pub profile: Profile,
    /// Print the per-second lines (to the given writer).
    pub live: bool,
    /// Rules to load instead of the sample GTP rules.
    pub rules: Option<String>,
    /// Use only the GTP traffic (no VM-port share).
    pub nic_only: bool,
    /// Count transmitted packets per flow (no packet is kept) and report it.
    pub capture: bool,
    /// Reset NIC port 1 (all its rules lost) once this many packets are sent.
    pub reset_nic_after_packets: Option<u64>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            flows: 10_000,
            amount: Amount::Seconds(5.0),
            profile: Profile::Generic,
            live: true,
            rules: None,
            nic_only: false,
            capture: false,
            reset_nic_after_packets: None,
        }
    }
}

/// Packets by path (DESIGN §5).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Paths {
    pub mark: u64,
    pub simple: u64,
    pub emc: u64,
    pub dpcls: u64,
    pub upcall: u64,
}

/// One per-second line.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub second: u32,
    pub packets: u64,
    pub mpps: f64,
    pub nic_packets: u64,
    #[serde(flatten)]
    pub paths: Paths,
    pub megaflows: usize,
    pub offloaded: usize,
}

/// Offload state counts; they add up to `megaflows`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OffloadSummary {
    pub software: usize,
    pub pending: usize,
    pub offloaded: usize,
    pub rejected: BTreeMap<String, usize>,
    pub failed: BTreeMap<String, usize>,
    pub removing: usize,
}

impl OffloadSummary {
    pub fn total(&self) -> usize {
        self.software
            + self.pending
            + self.offloaded
            + self.removing
            + self.rejected.values().sum::<usize>()
            + self.failed.values().sum::<usize>()
    }
}

/// The final document (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    pub profile: String,
    pub flows: usize,
    pub packets_sent: u64,
    pub seconds: Vec<Sample>,
    pub ports: Vec<NamedPortStats>,
    pub paths: Paths,
    pub offload: OffloadSummary,
    pub megaflows: usize,
    /// NIC ports: packets the NIC dropped for a full ring (not the switch's).
    pub rx_missed: BTreeMap<String, u64>,
    /// NIC resets seen (and handed to the offload worker).
    pub nic_resets: u64,
    /// Rules on each NIC at the end of traffic.
    pub rules_installed: BTreeMap<String, usize>,
    /// With `capture`: per port, packets transmitted per flow id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_flow_tx: Option<BTreeMap<String, BTreeMap<u32, u64>>>,
}

fn paths_of(snaps: &[crate::pmd::PmdSnapshot]) -> (u64, Paths) {
    let mut p = Paths::default();
    let mut total = 0;
    for s in snaps {
        total += s.counters.packets;
        p.mark += s.counters.mark_hits;
        p.simple += s.counters.simple_hits;
        p.emc += s.counters.emc_hits;
        p.dpcls += s.counters.dpcls_hits;
        p.upcall += s.counters.upcalls;
    }
    (total, p)
}

/// Offload state of every megaflow: what the worker knows, plus megaflows
/// it was never offered (VM ports, offload off, queue full) as `software`.
fn offload_summary(sw: &Switch<HeapPacket>) -> Result<(usize, OffloadSummary), SwitchError> {
    let megaflows = sw.megaflows()?;
    let mut distinct: Vec<(u32, u128)> = megaflows
        .iter()
        .map(|(_, m)| (m.ingress, m.ufid.0))
        .collect();
    distinct.sort_unstable();
    distinct.dedup();
    let dump = sw.offload_dump()?;
    let mut s = OffloadSummary::default();
    let mut known = 0;
    for f in &dump {
        if distinct.binary_search(&(f.port, f.ufid.0)).is_err() {
            // Deleted by its PMD a moment ago; the worker has not seen it yet.
            continue;
        }
        known += 1;
        let reason = || f.reason.clone().unwrap_or_else(|| "unknown".to_string());
        match f.state {
            "software" => s.software += 1,
            "pending" => s.pending += 1,
            "offloaded" => s.offloaded += 1,
            "removing" => s.removing += 1,
            "rejected" => *s.rejected.entry(reason()).or_insert(0) += 1,
            _ => *s.failed.entry(reason()).or_insert(0) += 1,
        }
    }
    s.software += distinct.len() - known;
    Ok((distinct.len(), s))
}

/// Runs the demo; per-second lines go to `out` when `opts.live`.
pub fn run(opts: &DemoOptions, out: &mut dyn Write) -> Result<DemoReport, DemoError> {
    let lossless = matches!(opts.amount, Amount::Packets(_));
    let bed = Testbed::default_ports(TestbedConfig {
        profile: opts.profile,
        backpressure: lossless,
        count_flows: opts.capture,
        ..TestbedConfig::default()
    })
    .map_err(|e| DemoError::Testbed(e.to_string()))?;
    let mut sw: Switch<HeapPacket> = Switch::start(SwitchConfig::default())?;
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
    let rules_text = opts.rules.as_deref().unwrap_or(GTP_FLOWS);
    let rules = fallback::ofproto::syntax::parse_flows(rules_text)
        .map_err(|(line, e)| DemoError::Rules(format!("line {line}: {e}")))?;
    sw.flow_add_all(rules);

    // Traffic: the GTP scenario on the NICs (2 GTP-U flows per subscriber,
    // a GTP-C pair per 10), and a VM share on vm0.
    let subscribers = (opts.flows * 10 / 22).max(1);
    let gtp = Traffic::gtp(&GtpSpec::new(subscribers));
    let vm = Traffic::generate(&TrafficSpec {
        in_ports: vec![testbed::VM0_OFPORT],
        ..TrafficSpec::new((opts.flows / 100).max(1))
    });
    let n_flows = gtp.flows.len() + if opts.nic_only { 0 } else { vm.flows.len() };

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let resets = AtomicU64::new(0);
    let started = Instant::now();
    let result = std::thread::scope(|scope| -> Result<Vec<Sample>, DemoError> {
        let generator = {
            let (stop, sent, bed, gtp, vm) = (&stop, &sent, &bed, &gtp, &vm);
            let nic_only = opts.nic_only;
            let reset_at = opts.reset_nic_after_packets;
            let limit = match opts.amount {
                Amount::Packets(n) => Some(n),
                Amount::Seconds(_) => None,
            };
            scope.spawn(move || -> Result<(), String> {
                let injectors = bed.injectors();
                let (mut n_gtp, mut n_vm) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let done = sent.load(Ordering::Relaxed);
                    let mut chunk = CHUNK;
                    if let Some(limit) = limit {
                        if done >= limit {
                            break;
                        }
                        chunk = chunk.min(limit - done);
                    }
                    let vm_part = if nic_only { 0 } else { chunk / VM_SHARE };
                    gtp.send(n_gtp, chunk - vm_part, &injectors)
                        .map_err(|e| e.to_string())?;
                    n_gtp += chunk - vm_part;
                    if vm_part > 0 {
                        vm.send(n_vm, vm_part, &injectors)
                            .map_err(|e| e.to_string())?;
                        n_vm += vm_part;
                    }
                    let before = sent.fetch_add(chunk, Ordering::Relaxed);
                    if let Some(at) = reset_at {
                        if before < at && before + chunk >= at {
                            if let Some(nic) = bed.nic(testbed::NIC0_OFPORT) {
                                nic.flow_device().reset();
                            }
                        }
                    }
                }
                Ok(())
            })
        };
        let mut samples = Vec::new();
        let mut last = (0u64, Paths::default(), 0u64);
        let mut second = 0u32;
        let resets = &resets;
        let sw_ref = &sw;
        let bed_ref = &bed;
        // A NIC that lost its rules: every megaflow of it is re-offered.
        let poll_resets = move |seen: &mut Vec<(u32, u64)>| -> Result<(), SwitchError> {
            for (ofport, last) in seen.iter_mut() {
                if let Some(nic) = bed_ref.nic(*ofport) {
                    let now = nic.flow_device().reset_count();
                    if now != *last {
                        *last = now;
                        resets.fetch_add(1, Ordering::Relaxed);
                        sw_ref.nic_reset(*ofport)?;
                    }
                }
            }
            Ok(())
        };
        let mut resets_seen: Vec<(u32, u64)> = bed
            .ports()
            .iter()
            .filter_map(|p| {
                bed.nic(p.ofport)
                    .map(|n| (p.ofport, n.flow_device().reset_count()))
            })
            .collect();
        loop {
            let deadline = started + Duration::from_secs(second as u64 + 1);
            let finished = |sent_now: u64| match opts.amount {
                Amount::Seconds(s) => started.elapsed().as_secs_f64() >= s,
                Amount::Packets(n) => sent_now >= n,
            };
            while Instant::now() < deadline && !finished(sent.load(Ordering::Relaxed)) {
                std::thread::sleep(Duration::from_millis(10));
                poll_resets(&mut resets_seen)?;
            }
            if generator.is_finished() && !finished(sent.load(Ordering::Relaxed)) {
                break;
            }
            poll_resets(&mut resets_seen)?;
            let snaps = sw.pmd_snapshots()?;
            let (total, paths) = paths_of(&snaps);
            let nic_rx: u64 = snaps
                .iter()
                .flat_map(|s| s.ports.iter())
                .filter(|(p, _)| *p != testbed::VM0_OFPORT)
                .map(|(_, st)| st.rx)
                .sum();
            let megaflows: usize = snaps.iter().map(|s| s.megaflows).sum();
            let offloaded = sw
                .offload_status()
                .and_then(|r| r.ok())
                .map_or(0, |s| s.states.offloaded);
            second += 1;
            let d = |a: u64, b: u64| a.saturating_sub(b);
            let sample = Sample {
                second,
                packets: d(total, last.0),
                mpps: d(total, last.0) as f64 / 1e6,
                nic_packets: d(nic_rx, last.2),
                paths: Paths {
                    mark: d(paths.mark, last.1.mark),
                    simple: d(paths.simple, last.1.simple),
                    emc: d(paths.emc, last.1.emc),
                    dpcls: d(paths.dpcls, last.1.dpcls),
                    upcall: d(paths.upcall, last.1.upcall),
                },
                megaflows,
                offloaded,
            };
            last = (total, paths, nic_rx);
            if opts.live {
                let pct = |x: u64| 100.0 * x as f64 / sample.packets.max(1) as f64;
                writeln!(
                    out,
                    "{:>3}s  {:>6.2} Mpps   mark {:>5.1}%  simple {:>5.1}%  emc {:>5.1}%  dpcls {:>5.1}%  upcall {:>5.1}%   megaflows {:>6}  offloaded {:>6}",
                    sample.second,
                    sample.mpps,
                    pct(sample.paths.mark),
                    pct(sample.paths.simple),
                    pct(sample.paths.emc),
                    pct(sample.paths.dpcls),
                    pct(sample.paths.upcall),
                    sample.megaflows,
                    sample.offloaded
                )?;
            }
            samples.push(sample);
            if finished(sent.load(Ordering::Relaxed)) {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        generator
            .join()
            .map_err(|_| DemoError::Traffic("the generator thread panicked".into()))?
            .map_err(DemoError::Traffic)?;
        poll_resets(&mut resets_seen)?;
        Ok(samples)
    });
    let seconds = result?;

    // Drain: wait until the NICs' rings are empty and the PMDs stop counting.
    let drain_start = Instant::now();
    let mut previous = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(30));
        let (total, _) = paths_of(&sw.pmd_snapshots()?);
        let offload_settled = match sw.offload_status() {
            Some(status) => {
                let st = status?;
                st.states.pending == 0 && st.request_queue_len == 0
            }
            None => true,
        };
        if bed.rx_pending() == 0 && total == previous && offload_settled {
            break;
        }
        previous = total;
        if drain_start.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let (_, paths) = paths_of(&sw.pmd_snapshots()?);
    let ports = sw.port_stats()?;
    let per_flow_tx = opts.capture.then(|| {
        bed.ports()
            .iter()
            .map(|p| (p.name().to_string(), p.tx_flow_counts()))
            .collect()
    });
    let (megaflows, offload) = offload_summary(&sw)?;
    let mut rules_installed = BTreeMap::new();
    if let Some(status) = sw.offload_status() {
        for p in status?.ports {
            if let Some(sp) = sw.ports().iter().find(|sp| sp.ofport == p.port) {
                rules_installed.insert(sp.name.clone(), p.rules_installed);
            }
        }
    }
    let mut rx_missed = BTreeMap::new();
    for p in bed.ports() {
        if let Some(nic) = bed.nic(p.ofport) {
            rx_missed.insert(p.name().to_string(), nic.stats().rx_missed.iter().sum());
        }
    }
    sw.shutdown();
    Ok(DemoReport {
        profile: opts.profile.name().to_string(),
        flows: n_flows,
        packets_sent: sent.load(Ordering::Relaxed),
        seconds,
        ports,
        paths,
        offload,
        megaflows,
        rx_missed,
        nic_resets: resets.load(Ordering::Relaxed),
        rules_installed,
        per_flow_tx,
    })
}

/// The end-of-run summary for people.
pub fn print_report(r: &DemoReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "profile {}  flows {}  packets sent {}",
        r.profile, r.flows, r.packets_sent
    )?;
    let total = r.paths.mark + r.paths.simple + r.paths.emc + r.paths.dpcls + r.paths.upcall;
    let pct = |x: u64| 100.0 * x as f64 / total.max(1) as f64;
    writeln!(
        out,
        "paths: mark {} ({:.1}%)  simple {} ({:.1}%)  emc {} ({:.1}%)  dpcls {} ({:.1}%)  upcall {} ({:.1}%)",
        r.paths.mark,
        pct(r.paths.mark),
        r.paths.simple,
        pct(r.paths.simple),
        r.paths.emc,
        pct(r.paths.emc),
        r.paths.dpcls,
        pct(r.paths.dpcls),
        r.paths.upcall,
        pct(r.paths.upcall)
    )?;
    let o = &r.offload;
    writeln!(
        out,
        "megaflows {}: offloaded {}  pending {}  software {}  removing {}",
        r.megaflows, o.offloaded, o.pending, o.software, o.removing
    )?;
    for (reason, n) in &o.rejected {
        writeln!(out, "  rejected {n}: {reason}")?;
    }
    for (reason, n) in &o.failed {
        writeln!(out, "  failed {n}: {reason}")?;
    }
    writeln!(
        out,
        "{:<6} {:>10} {:>10} {:>9} {:>12} {:>10} {:>9}",
        "port", "rx", "forwarded", "rx_drop", "tx_attempted", "tx", "tx_drop"
    )?;
    for p in &r.ports {
        let s = &p.stats;
        writeln!(
            out,
            "{:<6} {:>10} {:>10} {:>9} {:>12} {:>10} {:>9}  {}",
            p.name,
            s.rx,
            s.forwarded,
            s.rx_dropped.total(),
            s.tx_attempted,
            s.tx,
            s.tx_dropped.total(),
            if s.check().is_ok() {
                "balanced"
            } else {
                "UNBALANCED"
            }
        )?;
    }
    Ok(())
}
