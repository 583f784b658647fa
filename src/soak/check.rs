//! The soak's checker: every closed window's packets against the
//! reference interpreter (see the module documentation of `soak`).

use super::*;

/// Checks windows as the main thread closes them; returns the figures and
/// the number of frames left unchecked.
pub(super) fn check_loop(
    windows: crossbeam_channel::Receiver<ClosedWindow>,
    shared: &Shared,
) -> (ExactCheck, u64) {
    let mut x = ExactCheck::default();
    let mut macs = MacModel::default();
    let mut unchecked = 0u64;
    for w in windows {
        unchecked += check_window(w, &mut macs, &mut x, shared);
    }
    let all = x.determined + x.undetermined;
    x.determined_percent = if all == 0 {
        0.0
    } else {
        (x.determined as f64 / all as f64 * 1000.0).round() / 10.0
    };
    x.excused_equals_counted = x.drop_mismatches == 0;
    (x, unchecked)
}

/// Per ingress port, over one window.
#[derive(Default)]
struct IngressTally {
    packets: u64,
    undetermined: u64,
    /// Determined packets the reference says the pipeline drops.
    silent: u64,
    /// Determined packets with frames expected and none transmitted: the
    /// number of frames of each.
    whole_missing: Vec<u64>,
}

/// Sorted multiset difference: (in `a` not in `b`, in `b` not in `a`).
fn difference<T: Ord + Clone>(a: &[T], b: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut i, mut j) = (0, 0);
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                only_a.push(x.clone());
                i += 1;
            }
            (Some(_), Some(y)) => {
                only_b.push(y.clone());
                j += 1;
            }
            (Some(x), None) => {
                only_a.push(x.clone());
                i += 1;
            }
            (None, Some(y)) => {
                only_b.push(y.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (only_a, only_b)
}

fn short(frame: &[u8]) -> String {
    frame
        .iter()
        .take(80)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// Checks one window (see the module comment); returns the frames left
/// unchecked.
pub(super) fn check_window(
    mut w: ClosedWindow,
    macs: &mut MacModel,
    x: &mut ExactCheck,
    shared: &Shared,
) -> u64 {
    x.windows += 1;
    for p in &w.flushed {
        macs.flush_port(*p);
    }
    // What each packet becomes with the entries the switch certainly has.
    let certain = |k: MacKey| macs.certain(k);
    let bridge = Bridge {
        ports: &w.ports,
        lookup: &certain,
    };
    let outcomes: Vec<Outcome> = w
        .packets
        .iter()
        .map(|(seq, flow)| w.rules.outcome(&bridge, *flow, *seq, w.id))
        .collect();
    // Entries some packet of this window teaches: in flux.
    let mut flux: HashMap<MacKey, u32> = HashMap::new();
    for o in &outcomes {
        for (k, port) in &o.learns {
            if macs.certain(*k) != Some(*port) {
                flux.insert(*k, *port);
            }
        }
    }
    let determined: Vec<bool> = outcomes
        .iter()
        .map(|o| {
            w.drained
                && o.lookups
                    .iter()
                    .all(|k| !flux.contains_key(k) && macs.is_certain(*k))
        })
        .collect();

    // The transmitted frames, by packet.
    let index: HashMap<u64, usize> = w
        .packets
        .iter()
        .enumerate()
        .map(|(i, (seq, _))| (*seq, i))
        .collect();
    let mut observed: Vec<Vec<(u32, Vec<u8>)>> = vec![Vec::new(); w.packets.len()];
    let bad_before = x.missing + x.extra + x.extra_undetermined + x.unknown_frames;
    let mut checked = 0u64;
    for (port, frame) in std::mem::take(&mut w.frames) {
        checked += 1;
        match Tag::parse(&frame)
            .filter(|t| t.window == w.id)
            .and_then(|t| index.get(&t.seq))
        {
            Some(i) => observed[*i].push((port, frame)),
            None => {
                x.unknown_frames += 1;
                shared.example(format!(
                    "unknown frame: port {port} sent in window {} a frame not of this window's packets: {}",
                    w.id,
                    short(&frame)
                ));
            }
        }
    }

    // A packet went through the pipeline when any of its frames was seen.
    let went_through: Vec<bool> = observed.iter().map(|o| !o.is_empty()).collect();
    let mut ingress: BTreeMap<u32, IngressTally> = BTreeMap::new();
    let mut tx_missing: BTreeMap<u32, u64> = BTreeMap::new();
    for (i, (seq, flow)) in w.packets.iter().enumerate() {
        let in_port = reference::Pkt::of(*flow).in_port;
        let t = ingress.entry(in_port).or_default();
        t.packets += 1;
        let mut expected = outcomes[i].frames.clone();
        let mut seen = std::mem::take(&mut observed[i]);
        if !determined[i] {
            x.undetermined += 1;
            t.undetermined += 1;
            // One-sided: each frame must be one that the table before or
            // after this window's learning gives.
            let after = |k: MacKey| flux.get(&k).copied().or_else(|| macs.maybe(k));
            let bridge_after = Bridge {
                ports: &w.ports,
                lookup: &after,
            };
            let other = w.rules.outcome(&bridge_after, *flow, *seq, w.id);
            for f in &seen {
                if !expected.contains(f) && !other.frames.contains(f) {
                    x.extra_undetermined += 1;
                    shared.example(format!(
                        "misforwarded (undetermined): flow {flow} seq {seq} window {} in_port {in_port} came out on port {}: {}; the reference gives {:?} or {:?}",
                        w.id,
                        f.0,
                        short(&f.1),
                        outcomes[i].frames.iter().map(|f| f.0).collect::<Vec<_>>(),
                        other.frames.iter().map(|f| f.0).collect::<Vec<_>>(),
                    ));
                }
            }
        } else {
            x.determined += 1;
            x.expected_frames += expected.len() as u64;
            if expected.is_empty() {
                t.silent += 1;
            }
            expected.sort();
            seen.sort();
            let (missing, extra) = difference(&expected, &seen);
            if !expected.is_empty() && seen.is_empty() {
                // Lost whole: excused below if a drop was counted for it.
                t.whole_missing.push(expected.len() as u64);
                continue;
            }
            x.matched_frames += (expected.len() - missing.len()) as u64;
            for (port, _) in &missing {
                *tx_missing.entry(*port).or_insert(0) += 1;
            }
            if !extra.is_empty() {
                x.extra += extra.len() as u64;
            }
            if !missing.is_empty() || !extra.is_empty() {
                shared.example(format!(
                    "misforwarded: flow {flow} seq {seq} window {} in_port {in_port}: expected frames on ports {:?}, transmitted on {:?}; missing {:?}, extra {:?}",
                    w.id,
                    expected.iter().map(|f| f.0).collect::<Vec<_>>(),
                    seen.iter().map(|f| f.0).collect::<Vec<_>>(),
                    missing.iter().map(|(p, f)| format!("{p}:{}", short(f))).collect::<Vec<_>>(),
                    extra.iter().map(|(p, f)| format!("{p}:{}", short(f))).collect::<Vec<_>>(),
                ));
            }
        }
    }

    // Whole packets lost before the pipeline: excused by counted drops.
    for (port, t) in &mut ingress {
        let c = w.counts.get(port).copied().unwrap_or_default();
        let whole = t.whole_missing.len() as u64;
        // Drops counted on drop-action packets: the reference's drops the
        // datapath did not count as such.
        let silent_lost = t.silent as i64 - c.silent as i64;
        let excusable = if t.undetermined == 0 {
            (c.lost_rx as i64 - silent_lost.max(0)).max(0) as u64
        } else {
            c.lost_rx
        };
        let excused = whole.min(excusable);
        // Smallest losses are excused first: the rest count in full.
        t.whole_missing.sort_unstable();
        let exact_unit = t.undetermined == 0 && w.drained;
        if exact_unit {
            x.excused_packets += excused;
            x.excused_frames += t.whole_missing[..excused as usize].iter().sum::<u64>();
        } else {
            x.excused_packets_undetermined += excused;
            x.counted_drops_undetermined += c.lost_rx;
        }
        let unexcused: u64 = t.whole_missing[excused as usize..].iter().sum();
        if unexcused > 0 {
            x.missing += unexcused;
            shared.example(format!(
                "misforwarded: window {} in_port {port}: {} determined packets sent nothing ({unexcused} frames), only {} excused by counted drops ({} counted)",
                w.id, whole, excused, c.lost_rx
            ));
        }
        if exact_unit {
            x.counted_drops += c.lost_rx;
            x.counted_drops_silent += silent_lost.max(0) as u64;
            if silent_lost < 0 || whole as i64 + silent_lost != c.lost_rx as i64 {
                x.drop_mismatches += 1;
                shared.example(format!(
                    "drops: window {} in_port {port}: {whole} packets lost whole + {silent_lost} drop-action packets lost != {} drops counted before the pipeline",
                    w.id, c.lost_rx
                ));
            }
        }
    }
    // Single frames lost on transmit: excused by counted tx drops.
    let mut unchecked = 0u64;
    for (port, c) in &w.counts {
        x.tx_dropped += c.tx_dropped;
        unchecked += c.capture_overflow;
        let missing = tx_missing.get(port).copied().unwrap_or(0);
        let excused = missing.min(c.tx_dropped + c.capture_overflow);
        x.tx_excused += excused;
        if missing > excused {
            x.missing += missing - excused;
        }
    }
    for (port, missing) in &tx_missing {
        if !w.counts.contains_key(port) {
            x.missing += missing;
        }
    }
    if ingress.values().all(|t| t.undetermined == 0) && w.drained {
        x.windows_determined += 1;
    }
    if !w.drained {
        x.windows_undrained += 1;
    }

    // What the switch has learned now: certainly, when a packet that
    // teaches an entry was seen to go through; maybe, otherwise.
    let mut taught: HashSet<MacKey> = HashSet::new();
    for (o, went) in outcomes.iter().zip(&went_through) {
        for (k, port) in &o.learns {
            if *went {
                macs.learned(*k, *port);
                taught.insert(*k);
            }
        }
    }
    for (k, port) in &flux {
        if !taught.contains(k) {
            macs.maybe_learned(*k, *port);
        }
    }

    shared.checked.fetch_add(checked, Ordering::Relaxed);
    shared.determined.fetch_add(
        determined.iter().filter(|d| **d).count() as u64,
        Ordering::Relaxed,
    );
    let bad = x.missing + x.extra + x.extra_undetermined + x.unknown_frames - bad_before;
    shared.misforwarded.fetch_add(bad, Ordering::Relaxed);
    unchecked
}
