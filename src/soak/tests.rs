use super::check::check_window;
use super::reference::{Action, Pkt};
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

fn flood_rules() -> Arc<RuleSet> {
    Arc::new(RuleSet {
        rules: vec![SoakRule {
            table: 0,
            priority: 10,
            in_port: None,
            proto: reference::Proto::Any,
            vlan: reference::VlanMatch::Any,
            dst_net: 0,
            prefix: 0,
            tp_dst: None,
            actions: vec![Action::Tos(0x20), Action::Flood],
        }],
    })
}

fn shared() -> Shared {
    Shared {
        pause: AtomicBool::new(false),
        gate: Mutex::new(Gate::default()),
        attached: std::array::from_fn(|_| AtomicBool::new(true)),
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        checked: AtomicU64::new(0),
        misforwarded: AtomicU64::new(0),
        determined: AtomicU64::new(0),
        examples: Mutex::new(Vec::new()),
    }
}

/// A window of `n` packets whose transmitted frames are what the
/// reference says, less what `tamper` takes away.
fn window(n: u32, tamper: impl Fn(&mut Vec<(u32, Vec<u8>)>), counts: DropCounters) -> ClosedWindow {
    let rules = flood_rules();
    let ports = vec![1, 2, 3];
    let none = |_: MacKey| None;
    let b = Bridge {
        ports: &ports,
        lookup: &none,
    };
    let packets: Vec<(u64, u32)> = (0..n).map(|i| (u64::from(i) + 1, i * 3)).collect();
    let mut frames = Vec::new();
    for (seq, flow) in &packets {
        frames.extend(rules.outcome(&b, *flow, *seq, 4).frames);
    }
    tamper(&mut frames);
    ClosedWindow {
        id: 4,
        rules,
        ports,
        flushed: Vec::new(),
        packets,
        frames,
        counts: BTreeMap::from([
            (1, counts),
            (2, DropCounters::default()),
            (3, DropCounters::default()),
        ]),
        drained: true,
    }
}

fn check(w: ClosedWindow) -> ExactCheck {
    let mut x = ExactCheck::default();
    check_window(w, &mut MacModel::default(), &mut x, &shared());
    x
}

#[test]
fn exact_flood_passes() {
    let x = check(window(10, |_| {}, DropCounters::default()));
    assert_eq!(
        (x.determined, x.expected_frames, x.matched_frames),
        (10, 20, 20)
    );
    assert_eq!((x.missing, x.extra, x.drop_mismatches), (0, 0, 0));
}

#[test]
fn a_missing_flood_copy_is_caught() {
    let x = check(window(
        10,
        |f| {
            f.remove(3);
        },
        DropCounters::default(),
    ));
    assert_eq!((x.missing, x.extra), (1, 0));
}

#[test]
fn an_extra_or_altered_frame_is_caught() {
    let x = check(window(
        10,
        |f| {
            let dup = f[0].clone();
            f.push(dup);
        },
        DropCounters::default(),
    ));
    assert_eq!(x.extra, 1);
    let x = check(window(
        10,
        |f| {
            f[0].0 = 1;
        },
        DropCounters::default(),
    ));
    assert_eq!((x.missing, x.extra), (1, 1));
    let x = check(window(
        10,
        |f| {
            let l = f[0].1.len();
            f[0].1[l - 30] ^= 1;
        },
        DropCounters::default(),
    ));
    assert_eq!((x.missing, x.extra), (1, 1));
}

#[test]
fn a_packet_lost_whole_needs_a_counted_drop() {
    // Flow 0 enters port 1; its two flood copies are the first frames.
    let lost = |f: &mut Vec<(u32, Vec<u8>)>| {
        f.drain(..2);
    };
    let x = check(window(10, lost, DropCounters::default()));
    assert_eq!(x.missing, 2);
    assert!(x.drop_mismatches > 0);
    let counted = DropCounters {
        lost_rx: 1,
        ..DropCounters::default()
    };
    let x = check(window(10, lost, counted));
    assert_eq!((x.missing, x.excused_packets, x.excused_frames), (0, 1, 2));
    assert_eq!((x.counted_drops, x.drop_mismatches), (1, 0));
    // A drop counted with nothing lost does not balance either.
    let x = check(window(10, |_| {}, counted));
    assert_eq!(x.drop_mismatches, 1);
}

#[test]
fn normal_waits_for_learning_before_it_is_determined() {
    let rules = Arc::new(RuleSet {
        rules: vec![SoakRule {
            actions: vec![Action::Normal],
            ..flood_rules().rules[0].clone()
        }],
    });
    let flow = (0..10_000)
        .find(|f| {
            let p = Pkt::of(*f);
            p.dl_dst >> 16 == 0x0200_0000 && p.dl_dst >> 8 & 0xff != u64::from(p.in_port)
        })
        .unwrap();
    let p = Pkt::of(flow);
    // A packet from the station flow's packet is sent to.
    let back = (0..100_000)
        .find(|f| {
            let q = Pkt::of(*f);
            q.dl_src == p.dl_dst && q.vlan == p.vlan
        })
        .unwrap();
    let ports = vec![1, 2, 3];
    let mut macs = MacModel::default();
    let s = shared();
    for id in 0..3u64 {
        let packets = vec![(1 + id * 2, back), (2 + id * 2, flow)];
        let mut x = ExactCheck::default();
        let w = ClosedWindow {
            id,
            rules: Arc::clone(&rules),
            ports: ports.clone(),
            flushed: Vec::new(),
            packets,
            frames: Vec::new(),
            counts: BTreeMap::new(),
            drained: true,
        };
        check_window(w, &mut macs, &mut x, &s);
        if id == 0 {
            // Learning the station in the same window: not determined.
            assert_eq!(x.undetermined, 1);
        }
    }
    let _ = p;
}
