//! The offload worker thread: PMDs never wait for it (a slow device does
//! not slow their enqueues, a full queue answers at once), updates and
//! quiescence travel between threads, deletes are never lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use fallback::cache::FlowCache;
use fallback::key::{ethertype, frag, Field, VLAN_CFI};
use fallback::megaflow::Megaflow;
use fallback::ofproto::Match;
use offload::device::{Capabilities, Counters, FlowDevice, FlowError, Profile, RuleHandle};
use offload::marks::PmdId;
use offload::rte::Rule;
use offload::worker::{
    EngineConfig, Offer, OffloadStatus, OffloadWorker, PmdOffload, WorkerConfig,
};

/// A device that takes `create_time` per create, and whose creates can be
/// held at a gate (a device stuck in a create) until the test opens it.
struct SlowDevice {
    caps: Capabilities,
    create_time: Duration,
    rules: Mutex<BTreeMap<u64, ()>>,
    next: Mutex<u64>,
    gate_open: Mutex<bool>,
    gate: Condvar,
    creates_started: AtomicU64,
}

impl SlowDevice {
    fn new(create_time: Duration) -> Arc<SlowDevice> {
        Arc::new(SlowDevice {
            caps: Profile::Generic.capabilities(),
            create_time,
            rules: Mutex::new(BTreeMap::new()),
            next: Mutex::new(0),
            gate_open: Mutex::new(true),
            gate: Condvar::new(),
            creates_started: AtomicU64::new(0),
        })
    }

    /// Creates wait at the gate until [`SlowDevice::open_gate`].
    fn gated(create_time: Duration) -> Arc<SlowDevice> {
        let d = Self::new(create_time);
        *d.gate_open.lock().unwrap_or_else(|p| p.into_inner()) = false;
        d
    }

    fn open_gate(&self) {
        *self.gate_open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.gate.notify_all();
    }

    fn rules(&self) -> MutexGuard<'_, BTreeMap<u64, ()>> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FlowDevice for SlowDevice {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn validate(&self, rule: &Rule) -> Result<(), FlowError> {
        self.caps.check(rule)
    }
    fn create(&self, _rule: &Rule) -> Result<RuleHandle, FlowError> {
        self.creates_started.fetch_add(1, Ordering::SeqCst);
        let mut open = self.gate_open.lock().unwrap_or_else(|p| p.into_inner());
        while !*open {
            open = self.gate.wait(open).unwrap_or_else(|p| p.into_inner());
        }
        drop(open);
        sleep(self.create_time);
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        *next += 1;
        self.rules().insert(*next, ());
        Ok(RuleHandle(*next))
    }
    fn destroy(&self, handle: RuleHandle) -> Result<(), FlowError> {
        match self.rules().remove(&handle.0) {
            Some(()) => Ok(()),
            None => Err(FlowError::invalid("rule handle", "unknown")),
        }
    }
    fn query(&self, _: RuleHandle) -> Result<Counters, FlowError> {
        Err(FlowError::unsupported("query", "no COUNT action"))
    }
    fn flush(&self) -> Result<(), FlowError> {
        self.rules().clear();
        Ok(())
    }
}

fn megaflow(port: u32, i: u32) -> Megaflow {
    let mut m = Match::ANY;
    m.set_exact(Field::InPort, port.into());
    m.set_exact(Field::DlType, ethertype::IPV4.into());
    m.set_masked(Field::VlanTci, 0, VLAN_CFI.into());
    m.set_masked(Field::NwFrag, 0, frag::MASK.into());
    m.set_exact(Field::NwSrc, 0x0a00_0000 + u128::from(i));
    Megaflow::new(&m.value, &m.mask, vec![], vec![])
}

fn config(queue_capacity: usize) -> WorkerConfig {
    WorkerConfig {
        engine: EngineConfig {
            min_quarantine: Duration::ZERO,
            ..EngineConfig::default()
        },
        queue_capacity,
        batch: 16,
        mark_wait_poll: Duration::from_millis(5),
        threads: 1,
    }
}

/// Runs the PMD's poll-loop top until `done` holds (or 30 s pass).
fn poll_until(
    worker: &OffloadWorker,
    pmd: &mut PmdOffload,
    done: impl Fn(&OffloadStatus, &PmdOffload) -> bool,
) -> OffloadStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        pmd.quiesce();
        let status = worker.status().expect("worker alive");
        if done(&status, pmd) {
            return status;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {status:?}");
        sleep(Duration::from_millis(5));
    }
}

#[test]
fn pmd_enqueues_without_waiting_for_a_slow_device() {
    let worker = OffloadWorker::spawn(config(64)).expect("spawn");
    // The device is stuck in its first create until the gate opens: every
    // offer must come back while it is (an offer that waited for the device
    // would never return: after 30 s the gate opens and the test fails).
    let dev = SlowDevice::gated(Duration::from_millis(10));
    worker.add_port(1, dev.clone(), 2).expect("add port");
    let mut pmd = worker.add_pmd(PmdId(0)).expect("add pmd");
    let mut cache = FlowCache::new(1);
    let flows: Vec<_> = (0..200)
        .map(|i| {
            let mf = megaflow(1, i);
            let h = cache
                .install(mf.clone())
                .expect("distinct matches: no ufid collision");
            (mf, h)
        })
        .collect();

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (queued, full) = std::thread::scope(|scope| {
        let pmd = &mut pmd;
        let offers = scope.spawn(move || {
            let mut queued = Vec::new();
            let mut full = 0u64;
            for (mf, h) in &flows {
                match pmd.offer_put(1, mf, *h) {
                    Offer::Queued => queued.push(mf.ufid),
                    Offer::QueueFull => full += 1,
                    Offer::Stopped => panic!("worker stopped"),
                }
            }
            let _ = done_tx.send(());
            (queued, full)
        });
        let returned = done_rx.recv_timeout(Duration::from_secs(30)).is_ok();
        let creates_while_gated = dev.creates_started.load(Ordering::SeqCst);
        dev.open_gate();
        assert!(returned, "offers waited for a device stuck in a create");
        assert!(
            creates_while_gated <= 1,
            "{creates_while_gated} creates started at a closed gate"
        );
        offers.join().expect("offer thread")
    });
    assert!(
        full > 0,
        "a 64-slot queue cannot take 200 offers while the device is stuck"
    );
    assert_eq!(queued.len() as u64 + full, 200);

    // The queued ones all get offloaded; the others stayed in software.
    let want = queued.len();
    let status = poll_until(&worker, &mut pmd, |s, p| {
        s.states.offloaded == want && p.marks().len() == want
    });
    assert_eq!(status.offload_queue_full, full);
    assert_eq!(status.states.total(), want);
    assert_eq!(status.ports[0].inserted as usize, want);
    assert_eq!(dev.rules().len(), want);
    assert!(status.ports[0].latency_us.p99 >= 10_000);
    // Every published mark leads to the PMD's own copy of its megaflow.
    for row in worker.dump().expect("dump") {
        let mark = row.mark.expect("offloaded rows have a mark");
        let h = pmd.lookup(mark).expect("published");
        assert_eq!(cache.get(h).map(|mf| mf.ufid), Some(row.ufid));
    }
    worker.shutdown().expect("clean shutdown");
}

#[test]
fn deletes_refused_by_a_full_queue_are_kept_and_delivered() {
    let worker = OffloadWorker::spawn(config(2)).expect("spawn");
    let dev = SlowDevice::new(Duration::from_millis(5));
    worker.add_port(1, dev.clone(), 1).expect("add port");
    let mut pmd = worker.add_pmd(PmdId(7)).expect("add pmd");
    let mut cache = FlowCache::new(1);
    let mut offered = Vec::new();
    for i in 0..20 {
        let mf = megaflow(1, i);
        let h = cache
            .install(mf.clone())
            .expect("distinct matches: no ufid collision");
        if pmd.offer_put(1, &mf, h) == Offer::Queued {
            offered.push((mf.ufid, h));
        }
    }
    for (ufid, h) in &offered {
        cache.remove(*h);
        pmd.offer_delete(1, *ufid);
    }
    let status = poll_until(&worker, &mut pmd, |s, p| {
        p.backlog_len() == 0
            && s.states.total() == 0
            && s.request_queue_len == 0
            && p.marks().is_empty()
    });
    assert_eq!(status.marks_in_use, 0);
    assert!(dev.rules().is_empty(), "a lost delete would leave a rule");
    assert!(pmd.marks().is_empty());
}

#[test]
fn delete_unpublishes_and_the_mark_returns_after_quiescence() {
    let worker = OffloadWorker::spawn(config(16)).expect("spawn");
    let dev = SlowDevice::new(Duration::ZERO);
    worker.add_port(1, dev.clone(), 1).expect("add port");
    let mut pmd = worker.add_pmd(PmdId(0)).expect("add pmd");
    let mut cache = FlowCache::new(1);
    let mf = megaflow(1, 1);
    let h = cache
        .install(mf.clone())
        .expect("distinct matches: no ufid collision");
    assert_eq!(pmd.offer_put(1, &mf, h), Offer::Queued);
    poll_until(&worker, &mut pmd, |s, p| {
        s.states.offloaded == 1 && p.marks().len() == 1
    });
    cache.remove(h);
    pmd.offer_delete(1, mf.ufid);
    let s = poll_until(&worker, &mut pmd, |s, p| {
        s.states.total() == 0 && p.marks().is_empty()
    });
    assert!(dev.rules().is_empty());
    assert_eq!(s.marks_in_use, 0);
    // Status answered after the delete's epoch was stored: this report is
    // past the unpublish, so the next round of work frees the mark.
    pmd.quiesce();
    let mf2 = megaflow(1, 2);
    let h2 = cache
        .install(mf2.clone())
        .expect("distinct matches: no ufid collision");
    assert_eq!(pmd.offer_put(1, &mf2, h2), Offer::Queued);
    let s = poll_until(&worker, &mut pmd, |s, _| s.states.offloaded == 1);
    assert_eq!(s.marks_quarantined, 0);
    let row = &worker.dump().expect("dump")[0];
    assert_eq!(row.mark, Some(1), "mark 1 came back from quarantine");
}

#[test]
fn port_removal_and_reset_through_the_thread() {
    let worker = OffloadWorker::spawn(config(16)).expect("spawn");
    let (d1, d2) = (
        SlowDevice::new(Duration::ZERO),
        SlowDevice::new(Duration::ZERO),
    );
    worker.add_port(1, d1.clone(), 1).expect("add port 1");
    worker.add_port(2, d2.clone(), 1).expect("add port 2");
    let mut pmd = worker.add_pmd(PmdId(0)).expect("add pmd");
    let mut cache = FlowCache::new(1);
    for (port, i) in [(1, 1), (1, 2), (2, 3)] {
        let mf = megaflow(port, i);
        let h = cache
            .install(mf.clone())
            .expect("distinct matches: no ufid collision");
        assert_eq!(pmd.offer_put(port, &mf, h), Offer::Queued);
    }
    poll_until(&worker, &mut pmd, |s, _| s.states.offloaded == 3);
    d2.rules().clear();
    worker.device_reset(2).expect("reset");
    poll_until(&worker, &mut pmd, |s, _| s.states.offloaded == 3);
    assert_eq!(d2.rules().len(), 1, "re-offered after the reset");
    worker.remove_port(1).expect("remove port");
    assert!(d1.rules().is_empty());
    let s = poll_until(&worker, &mut pmd, |_, p| p.marks().len() == 1);
    assert_eq!(s.states.software, 2);
    assert_eq!(s.marks_in_use, 1);
    assert_eq!(s.ports.len(), 1);
}

#[test]
fn a_stopped_worker_says_so() {
    let worker = OffloadWorker::spawn(config(4)).expect("spawn");
    let mut pmd = worker.add_pmd(PmdId(0)).expect("add pmd");
    worker.shutdown().expect("clean shutdown");
    let mut cache = FlowCache::new(1);
    let mf = megaflow(1, 1);
    let h = cache
        .install(mf.clone())
        .expect("distinct matches: no ufid collision");
    assert_eq!(pmd.offer_put(1, &mf, h), Offer::Stopped);
    pmd.offer_delete(1, mf.ufid);
    assert_eq!(
        pmd.backlog_len(),
        0,
        "nothing kept for a worker that is gone"
    );
    assert_eq!(pmd.quiesce(), 0);
}

/// Two offload threads, two ports (one per shard): every megaflow of both
/// gets its rule on its own port's device and a mark no other megaflow
/// holds; the status adds up both shards; removing one port leaves the
/// other's offloads alone.
#[test]
fn two_offload_threads_share_nothing_but_the_pmds() {
    let worker = OffloadWorker::spawn(WorkerConfig {
        threads: 2,
        ..config(1024)
    })
    .expect("spawn");
    assert_eq!(worker.threads(), 2);
    let devs = [
        SlowDevice::new(Duration::ZERO),
        SlowDevice::new(Duration::ZERO),
    ];
    worker.add_port(1, devs[0].clone(), 2).expect("add port 1");
    worker.add_port(2, devs[1].clone(), 2).expect("add port 2");
    let mut pmd = worker.add_pmd(PmdId(0)).expect("add pmd");
    let mut cache = FlowCache::new(1);
    let per_port = 50;
    for port in [1, 2] {
        for i in 0..per_port {
            let mf = megaflow(port, i);
            let h = cache.install(mf.clone()).expect("no ufid collision");
            assert_eq!(pmd.offer_put(port, &mf, h), Offer::Queued);
        }
    }
    let all = 2 * per_port as usize;
    let status = poll_until(&worker, &mut pmd, |s, p| {
        s.states.offloaded == all && p.marks().len() == all
    });
    assert_eq!(status.ports.len(), 2);
    assert_eq!(status.marks_in_use, all);
    assert_eq!(devs[0].rules().len(), per_port as usize);
    assert_eq!(devs[1].rules().len(), per_port as usize);
    let dump = worker.dump().expect("dump");
    let marks: std::collections::BTreeSet<u32> = dump.iter().filter_map(|i| i.mark).collect();
    assert_eq!(marks.len(), all, "a mark held twice: {dump:?}");
    for i in &dump {
        let m = i.mark.expect("offloaded");
        // Port p's shard is p % 2; shard s deals marks s + 1, s + 3, ...
        assert_eq!((m - 1) % 2, i.port % 2, "{i:?} has another shard's mark");
    }

    worker.remove_port(1).expect("remove port 1");
    let status = poll_until(&worker, &mut pmd, |s, p| {
        s.states.offloaded == per_port as usize && p.marks().len() == per_port as usize
    });
    assert!(devs[0].rules().is_empty());
    assert_eq!(devs[1].rules().len(), per_port as usize);
    assert_eq!(status.states.software, per_port as usize);
}

#[test]
fn a_bounded_drain_spreads_a_flood_of_updates_and_loses_none() {
    let worker = OffloadWorker::spawn(WorkerConfig {
        batch: 256,
        ..config(1024)
    })
    .expect("spawn");
    let dev = SlowDevice::new(Duration::ZERO);
    worker.add_port(1, dev.clone(), 1).expect("add port");
    let (requests, mut updates) = worker.add_pmd(PmdId(0)).expect("add pmd").into_parts();
    let mut cache = FlowCache::new(1);
    for i in 0..300 {
        let mf = megaflow(1, i);
        let h = cache.install(mf.clone()).expect("distinct matches");
        assert_eq!(requests.put(1, &mf, h), Offer::Queued);
    }
    let mut table = offload::marks::MarkTable::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut calls = 0;
    while table.len() < 300 {
        let n = updates.apply_at_most(&mut table, 7);
        assert!(n <= 7, "at most the bound per call: {n}");
        calls += 1;
        assert!(
            Instant::now() < deadline,
            "gave up at {} marks",
            table.len()
        );
        if n == 0 {
            sleep(Duration::from_millis(1));
        }
    }
    assert!(calls >= 300 / 7, "{calls} calls");
    // Every published mark leads to its megaflow.
    for (h, _) in cache.iter() {
        assert!(
            (1..=300u32).any(|m| table.lookup(m) == Some(h)),
            "{h:?} has no mark"
        );
    }
}
