use super::engine::{Latency, Rate};
use super::*;
use crate::device::{Capabilities, Counters, FlowDevice, Profile};
use crate::marks::PmdRefs;
use crate::marks::{MarkStatus, MarkTable};
use crate::rte::{Action, Rule};
use crate::translate::translate;
use fallback::cache::FlowCache;
use fallback::key::{ethertype, frag, Field, VLAN_CFI};
use fallback::megaflow::Megaflow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// What the test device was asked, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Create { handle: u64, mark: u32 },
    Destroy(u64),
}

#[derive(Default)]
struct DevState {
    rules: BTreeMap<u64, u32>,
    next: u64,
    capacity: usize,
    fail_validate: Option<FlowError>,
    fail_create: VecDeque<FlowError>,
    fail_destroy: Option<FlowError>,
    calls: Vec<Call>,
}

/// A scripted flow device: a capacity and queued refusals.
struct TestDevice {
    caps: Capabilities,
    state: Mutex<DevState>,
}

impl TestDevice {
    fn new(capacity: usize) -> Arc<TestDevice> {
        Arc::new(TestDevice {
            caps: Capabilities {
                max_rules: capacity,
                ..Profile::Generic.capabilities()
            },
            state: Mutex::new(DevState {
                capacity,
                ..DevState::default()
            }),
        })
    }

    fn st(&self) -> std::sync::MutexGuard<'_, DevState> {
        self.state.lock().unwrap()
    }

    /// The marks of the rules on the device.
    fn marks(&self) -> Vec<u32> {
        self.st().rules.values().copied().collect()
    }

    fn reset(&self) {
        self.st().rules.clear();
    }
}

fn mark_of(rule: &Rule) -> u32 {
    rule.actions
        .iter()
        .find_map(|a| match a {
            Action::Mark { id } => Some(*id),
            _ => None,
        })
        .unwrap_or(0)
}

impl FlowDevice for TestDevice {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn validate(&self, rule: &Rule) -> Result<(), FlowError> {
        self.caps.check(rule)?;
        match self.st().fail_validate.clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    fn create(&self, rule: &Rule) -> Result<RuleHandle, FlowError> {
        let mut s = self.st();
        if let Some(e) = s.fail_create.pop_front() {
            return Err(e);
        }
        if s.rules.len() >= s.capacity {
            return Err(FlowError::NoSpace);
        }
        s.next += 1;
        let (handle, mark) = (s.next, mark_of(rule));
        s.rules.insert(handle, mark);
        s.calls.push(Call::Create { handle, mark });
        Ok(RuleHandle(handle))
    }
    fn destroy(&self, handle: RuleHandle) -> Result<(), FlowError> {
        let mut s = self.st();
        if let Some(e) = s.fail_destroy.clone() {
            return Err(e);
        }
        s.calls.push(Call::Destroy(handle.0));
        match s.rules.remove(&handle.0) {
            Some(_) => Ok(()),
            None => Err(FlowError::invalid("rule handle", "unknown")),
        }
    }
    fn query(&self, _: RuleHandle) -> Result<Counters, FlowError> {
        Err(FlowError::unsupported("query", "no COUNT"))
    }
    fn flush(&self) -> Result<(), FlowError> {
        self.reset();
        Ok(())
    }
}

/// An untagged, unfragmented IPv4 megaflow from `nw_src` on `port`.
fn ipv4_match(port: PortId, nw_src: u32) -> Match {
    let mut m = Match::ANY;
    m.set_exact(Field::InPort, port.into());
    m.set_exact(Field::DlType, ethertype::IPV4.into());
    m.set_masked(Field::VlanTci, 0, VLAN_CFI.into());
    m.set_masked(Field::NwFrag, 0, frag::MASK.into());
    m.set_exact(Field::NwSrc, nw_src.into());
    m
}

/// A megaflow no rte_flow item can express (ARP sender hardware address).
fn arp_match(port: PortId) -> Match {
    let mut m = Match::ANY;
    m.set_exact(Field::InPort, port.into());
    m.set_exact(Field::DlType, ethertype::ARP.into());
    m.set_exact(Field::ArpSha, 0x0200_0000_0001);
    m
}

struct Pmd {
    id: PmdId,
    cache: FlowCache,
    table: MarkTable,
}

/// An engine, some PMDs with their caches and tables, and a clock.
struct Harness {
    engine: OffloadEngine,
    now: Instant,
    pmds: Vec<Pmd>,
    out: Vec<(PmdId, PmdUpdate)>,
}

impl Harness {
    fn new(n_pmds: u32, max_marks: u32) -> Harness {
        let config = EngineConfig {
            max_marks,
            min_quarantine: Duration::ZERO,
            latency_window: 16,
            ..EngineConfig::default()
        };
        let mut engine = OffloadEngine::new(config).unwrap();
        let pmds = (0..n_pmds)
            .map(|i| {
                engine.add_pmd(PmdId(i));
                Pmd {
                    id: PmdId(i),
                    cache: FlowCache::new(1),
                    table: MarkTable::new(),
                }
            })
            .collect();
        Harness {
            engine,
            now: Instant::now(),
            pmds,
            out: Vec::new(),
        }
    }

    fn add_port(&mut self, port: PortId, dev: &Arc<TestDevice>) {
        let dev: Arc<dyn FlowDevice> = dev.clone();
        self.engine
            .add_port(port, dev, 2, self.now, &mut self.out)
            .unwrap();
    }

    fn tick(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
    }

    /// `pmd` installs the megaflow and offers it; returns its ufid.
    fn put(&mut self, pmd: usize, m: Match) -> Ufid {
        let req = self.put_request(pmd, m);
        self.engine
            .handle(OffloadRequest::Put(req), self.now, &mut self.out);
        req.ufid
    }

    fn put_request(&mut self, pmd: usize, m: Match) -> PutRequest {
        let p = &mut self.pmds[pmd];
        let mf = Megaflow::new(&m.value, &m.mask, Vec::new(), Vec::new());
        let ufid = mf.ufid;
        let handle = p
            .cache
            .install(mf)
            .expect("distinct matches: no ufid collision");
        PutRequest {
            pmd: p.id,
            port: m.value.get(Field::InPort) as PortId,
            ufid,
            r#match: m,
            handle,
            enqueued: self.now,
        }
    }

    fn delete(&mut self, pmd: usize, port: PortId, ufid: Ufid) {
        let p = &mut self.pmds[pmd];
        if let Some(h) = p.cache.find(&ufid) {
            p.cache.remove(h);
        }
        let req = OffloadRequest::Delete {
            pmd: p.id,
            port,
            ufid,
        };
        self.engine.handle(req, self.now, &mut self.out);
    }

    fn process(&mut self) -> usize {
        self.engine.process(self.now, usize::MAX, &mut self.out)
    }

    /// Every PMD applies its updates and reports a quiescent point.
    fn quiesce_all(&mut self) {
        for i in 0..self.pmds.len() {
            self.quiesce(i);
        }
    }

    fn quiesce(&mut self, pmd: usize) {
        let id = self.pmds[pmd].id;
        let epoch = self.engine.epoch();
        let (mine, rest): (Vec<_>, Vec<_>) = self.out.drain(..).partition(|(p, _)| *p == id);
        self.out = rest;
        for (_, u) in mine {
            self.pmds[pmd].table.apply(u);
        }
        self.engine.pmd_quiescent(id, epoch);
    }

    fn state(&self, port: PortId, ufid: Ufid) -> OffloadState {
        self.engine.state(port, ufid).cloned().unwrap()
    }

    fn mark(&self, port: PortId, ufid: Ufid) -> Mark {
        self.state(port, ufid).mark().unwrap()
    }

    /// The ufid `pmd`'s table gives for a raw mark (through its cache).
    fn table_ufid(&self, pmd: usize, mark: u32) -> Option<Ufid> {
        let p = &self.pmds[pmd];
        p.cache.get(p.table.lookup(mark)?).map(|mf| mf.ufid)
    }
}

#[test]
fn put_offloads_publishes_and_creates_the_rule() {
    let mut h = Harness::new(1, 100);
    let dev = TestDevice::new(10);
    h.add_port(1, &dev);
    let u = h.put(0, ipv4_match(1, 0x0a00_0001));
    assert_eq!(h.state(1, u), OffloadState::Pending);
    h.tick(3);
    assert_eq!(h.process(), 1);
    let mark = h.mark(1, u);
    assert!(matches!(
        h.state(1, u),
        OffloadState::Offloaded { port: 1, .. }
    ));
    assert_eq!(dev.marks(), vec![mark.get()]);
    assert_eq!(h.engine.marks().owner(mark).map(|k| k.ufid), Some(u));
    h.quiesce_all();
    assert_eq!(h.table_ufid(0, mark.get()), Some(u));
    let s = h.engine.status(h.now);
    assert_eq!(s.states.offloaded, 1);
    assert_eq!(
        h.engine.progress(),
        Progress {
            inserted: 1,
            refused: 0
        }
    );
    let p = &s.ports[0];
    assert_eq!((p.rules_installed, p.marks_in_use, p.inserted), (1, 1, 1));
    assert_eq!(p.capacity, 10);
    assert_eq!(p.latency_us.p99, 3000);
    assert_eq!(p.latency_us.avg, 3000.0);
    let d = h.engine.dump();
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].state, d[0].mark, d[0].pmds.clone()),
        ("offloaded", Some(mark.get()), vec![0])
    );
}

#[test]
fn one_rule_and_mark_shared_by_pmds_until_the_last_copy_goes() {
    let mut h = Harness::new(2, 100);
    let dev = TestDevice::new(10);
    h.add_port(1, &dev);
    let m = ipv4_match(1, 0x0a00_0001);
    let u = h.put(0, m);
    h.process();
    h.put(1, m);
    h.process();
    h.quiesce_all();
    let mark = h.mark(1, u);
    assert_eq!(dev.marks(), vec![mark.get()], "one rule for both PMDs");
    assert_eq!(h.table_ufid(0, mark.get()), Some(u));
    assert_eq!(h.table_ufid(1, mark.get()), Some(u));
    assert_eq!(h.engine.sharers(1, u).map(PmdRefs::len), Some(2));

    h.delete(0, 1, u);
    h.quiesce_all();
    assert_eq!(dev.marks(), vec![mark.get()], "PMD 1 still has its copy");
    assert_eq!(h.pmds[0].table.lookup(mark.get()), None);
    assert_eq!(h.table_ufid(1, mark.get()), Some(u));

    h.delete(1, 1, u);
    assert!(dev.marks().is_empty());
    assert!(h.engine.state(1, u).is_none());
    assert_eq!(
        h.engine.marks().pool().status(mark),
        MarkStatus::Quarantined
    );
    assert_eq!(h.engine.status(h.now).ports[0].deleted, 1);
    h.quiesce_all();
    assert!(h.pmds.iter().all(|p| p.table.is_empty()));
}

#[test]
fn translate_refusal_is_rejected_without_touching_the_device() {
    let mut h = Harness::new(1, 100);
    let dev = TestDevice::new(10);
    h.add_port(1, &dev);
    let u = h.put(0, arp_match(1));
    h.process();
    let s = h.state(1, u);
    assert_eq!(s.name(), "rejected");
    assert!(s.reason().unwrap().contains("arp_sha"), "{s:?}");
    assert!(dev.st().calls.is_empty());
    assert_eq!(h.engine.marks().in_use(), 0);
    assert!(h.out.is_empty(), "nothing published");
    let st = h.engine.status(h.now);
    assert_eq!(st.rejected.get("translate:arp_sha"), Some(&1));
    assert_eq!(st.ports[0].failures.get("translate:arp_sha"), Some(&1));
}

#[test]
fn validate_unsupported_and_create_invalid_are_rejected() {
    let mut h = Harness::new(1, 100);
    let dev = TestDevice::new(10);
    h.add_port(1, &dev);
    dev.st().fail_validate = Some(FlowError::unsupported("item IPV4", "no"));
    let a = h.put(0, ipv4_match(1, 1));
    h.process();
    assert!(matches!(
        h.state(1, a),
        OffloadState::Rejected { reason }
            if matches!(*reason, RejectReason::Device(FlowError::Unsupported { .. }))
    ));
    assert_eq!(h.engine.progress().refused, 1);
    dev.st().fail_validate = None;
    dev.st()
        .fail_create
        .push_back(FlowError::invalid("action RSS", "bad"));
    let b = h.put(0, ipv4_match(1, 2));
    h.process();
    assert_eq!(h.state(1, b).name(), "rejected");
    // The mark was published before create: now unpublished and quarantined.
    assert_eq!(h.engine.marks().in_use(), 0);
    assert_eq!(h.engine.marks().pool().quarantined(), 1);
    let kinds: Vec<_> = h.out.iter().map(|(_, u)| u).collect();
    assert!(matches!(
        kinds[..],
        [PmdUpdate::Publish { .. }, PmdUpdate::Unpublish { .. }]
    ));
    // Rejected is permanent: a freed rule does not retry it.
    let c = h.put(0, ipv4_match(1, 3));
    h.process();
    h.delete(0, 1, c);
    h.process();
    assert_eq!(h.state(1, b).name(), "rejected");
}

#[test]
fn no_space_fails_and_is_retried_when_a_rule_is_destroyed() {
    let mut h = Harness::new(1, 100);
    let dev = TestDevice::new(1);
    h.add_port(1, &dev);
    let a = h.put(0, ipv4_match(1, 1));
    let b = h.put(0, ipv4_match(1, 2));
    let c = h.put(0, ipv4_match(1, 3));
    h.process();
    assert_eq!(h.state(1, a).name(), "offloaded");
    assert_eq!(
        h.state(1, b),
        OffloadState::Failed {
            error: Box::new(FailReason::Device(FlowError::NoSpace))
        }
    );
    assert_eq!(h.state(1, c).name(), "failed");
    assert_eq!(
        h.engine.marks().in_use(),
        1,
        "failed megaflows hold no mark"
    );
    // Nothing retries on its own.
    assert_eq!(h.process(), 0);
    h.delete(0, 1, a);
    assert_eq!(h.state(1, b), OffloadState::Pending, "oldest failure first");
    assert_eq!(h.state(1, c).name(), "failed", "one retry per freed rule");
    h.process();
    assert_eq!(h.state(1, b).name(), "offloaded");
    assert_eq!(h.engine.counters().retries, 1);
    assert_eq!(
        h.engine.status(h.now).ports[0].failures.get("no_space"),
        Some(&2)
    );
}

#[test]
fn device_error_fails_and_is_retried_on_reset() {
    let mut h = Harness::new(1, 100);
    let dev = TestDevice::new(10);
    h.add_port(1, &dev);
    dev.st()
        .fail_create
        .push_back(FlowError::Device("Function not implemented".into()));
    let a = h.put(0, ipv4_match(1, 1));
    h.process();
    let s = h.state(1, a);
    assert_eq!(s.name(), "failed");
    assert!(s.reason().unwrap().contains("Function not implemented"));
    h.engine.device_reset(1, h.now, &mut h.out);
    assert_eq!(h.state(1, a), OffloadState::Pending);
    h.process();
    assert_eq!(h.state(1, a).name(), "offloaded");
}

#[test]
fn actions_only_modify_keeps_rule_and_mark() {
    let mut h = Harness::new(1, 100);
    let dev = TestDevice::new(10);
    h.add_port(1, &dev);
    let m = ipv4_match(1, 1);
    let req = h.put_request(0, m);
    h.engine.handle(OffloadRequest::Put(req), h.now, &mut h.out);
    h.process();
    h.quiesce_all();
    let mark = h.mark(1, req.ufid);
    let calls = dev.st().calls.len();
    // Same handle (actions swapped in place): nothing at all.
    let modify = OffloadRequest::Modify {
        old: req.ufid,
        new: req,
    };
    h.engine.handle(modify, h.now, &mut h.out);
    h.process();
    assert!(h.out.is_empty());
    assert_eq!(dev.st().calls.len(), calls, "no NIC call");
    assert_eq!(h.mark(1, req.ufid), mark);
    assert_eq!(h.engine.counters().modified_in_place, 1);
    // A new copy of the same megaflow: republished, still no NIC call.
    let old = h.pmds[0].cache.find(&req.ufid).unwrap();
    h.pmds[0].cache.remove(old);
    let req2 = h.put_request(0, m);
    assert_ne!(req2.handle, req.handle);
    let modify = OffloadRequest::Modify {
        old: req.ufid,
        new: req2,
    };
    h.engine.handle(modify, h.now, &mut h.out);
    h.quiesce_all();
    assert_eq!(dev.st().calls.len(), calls);
    assert_eq!(h.pmds[0].table.lookup(mark.get()), Some(req2.handle));
}

#[test]
fn changed_match_deletes_then_puts() {
    let mut h = Harness::new(1, 100);
    let dev = TestDevice::new(1);
    h.add_port(1, &dev);
    let old = h.put(0, ipv4_match(1, 1));
    h.process();
    let old_rule = h.state(1, old).rule().unwrap();
    let req = h.put_request(0, ipv4_match(1, 2));
    h.engine
        .handle(OffloadRequest::Modify { old, new: req }, h.now, &mut h.out);
    h.process();
    assert!(h.engine.state(1, old).is_none());
    assert_eq!(h.state(1, req.ufid).name(), "offloaded", "room made first");
    let calls = dev.st().calls.clone();
    let n = calls.len();
    assert_eq!(calls[n - 2], Call::Destroy(old_rule.0), "break before make");
    assert!(matches!(calls[n - 1], Call::Create { .. }));
}

#[test]
fn freed_mark_waits_for_every_pmd() {
    let mut h = Harness::new(2, 1);
    let dev = TestDevice::new(10);
    h.add_port(1, &dev);
    let a = h.put(0, ipv4_match(1, 1));
    h.process();
    let mark = h.mark(1, a);
    h.delete(0, 1, a);
    let b = h.put(0, ipv4_match(1, 2));
    h.process();
    assert_eq!(
        h.state(1, b),
        OffloadState::Failed {
            error: Box::new(FailReason::Marks(MarkError::Exhausted { max: 1 }))
        }
    );
    assert_eq!(h.engine.waiting_for_marks(), 1);
    // PMD 0 applied the unpublish; PMD 1 (which never had the mark) has
    // not reported since: still quarantined.
    h.quiesce(0);
    h.process();
    assert_eq!(h.state(1, b).name(), "failed");
    h.quiesce(1);
    h.process();
    assert_eq!(h.state(1, b).name(), "offloaded");
    assert_eq!(h.mark(1, b), mark, "reused only after the quarantine");
    assert_eq!(h.engine.status(h.now).failed.len(), 0);
}

#[test]
fn port_removal_takes_exactly_that_ports_rules_and_marks() {
    let mut h = Harness::new(1, 100);
    let (d1, d2) = (TestDevice::new(10), TestDevice::new(10));
    h.add_port(1, &d1);
    h.add_port(2, &d2);
    let a = h.put(0, ipv4_match(1, 1));
    let b = h.put(0, ipv4_match(2, 1));
    h.process();
    h.quiesce_all();
    let (ma, mb) = (h.mark(1, a), h.mark(2, b));
    h.engine.remove_port(1, h.now, &mut h.out);
    assert!(d1.marks().is_empty());
    assert_eq!(d2.marks(), vec![mb.get()]);
    assert_eq!(h.state(1, a), OffloadState::Software);
    assert_eq!(h.engine.marks().owner(ma), None);
    assert_eq!(h.engine.marks().in_use(), 1);
    h.quiesce_all();
    assert_eq!(h.pmds[0].table.lookup(ma.get()), None);
    assert_eq!(h.table_ufid(0, mb.get()), Some(b));
    assert_eq!(h.engine.status(h.now).ports.len(), 1);
    // The PMD's later delete of the software megaflow just forgets it.
    h.delete(0, 1, a);
    assert!(h.engine.state(1, a).is_none());
}

#[test]
fn nic_reset_reoffers_the_ports_megaflows() {
    let mut h = Harness::new(1, 100);
    let (d1, d2) = (TestDevice::new(10), TestDevice::new(10));
    h.add_port(1, &d1);
    h.add_port(2, &d2);
    let a = h.put(0, ipv4_match(1, 1));
    let r = h.put(0, arp_match(1));
    let b = h.put(0, ipv4_match(2, 1));
    h.process();
    h.quiesce_all();
    let old = h.mark(1, a);
    d1.reset();
    h.engine.device_reset(1, h.now, &mut h.out);
    assert_eq!(h.state(1, a), OffloadState::Pending);
    assert_eq!(h.state(1, r).name(), "rejected", "rejection is permanent");
    assert_eq!(h.state(2, b).name(), "offloaded", "other port untouched");
    assert_eq!(h.engine.marks().pool().status(old), MarkStatus::Quarantined);
    h.process();
    h.quiesce_all();
    let new = h.mark(1, a);
    assert_ne!(new, old);
    assert_eq!(d1.marks(), vec![new.get()]);
    assert_eq!(h.table_ufid(0, new.get()), Some(a));
    assert_eq!(h.pmds[0].table.lookup(old.get()), None);
    assert_eq!(h.engine.status(h.now).ports[0].resets, 1);
}

#[test]
fn reset_flushes_rules_the_engine_no_longer_tracks() {
    let mut h = Harness::new(1, 100);
    let dev = TestDevice::new(10);
    h.add_port(1, &dev);
    let a = h.put(0, ipv4_match(1, 1));
    h.process();
    h.quiesce_all();
    let old = h.mark(1, a);
    // The NIC resets (its rules are gone) and, before the engine hears
    // of it, a rule lands on it that nothing tracks once the notice
    // arrives: it carries a's mark, which the reset releases for reuse.
    dev.reset();
    let stray = translate(&ipv4_match(1, 2), dev.capabilities(), old.get(), 2)
        .unwrap()
        .rule;
    dev.create(&stray).unwrap();
    assert_eq!(dev.marks(), vec![old.get()]);
    h.engine.device_reset(1, h.now, &mut h.out);
    h.quiesce_all();
    h.process();
    h.quiesce_all();
    assert_eq!(h.state(1, a).name(), "offloaded");
    // Everything goes through the engine: the device ends empty.
    h.delete(0, 1, a);
    h.quiesce_all();
    h.process();
    assert!(h.engine.is_empty());
    assert_eq!(
        dev.marks(),
        Vec::<u32>::new(),
        "rules leaked on the device (the reset must flush it)"
    );
    assert_eq!(h.engine.marks().in_use(), 0, "marks leaked");
    assert_eq!(h.engine.status(h.now).ports[0].rules_installed, 0);
}

#[test]
fn port_without_flow_device_stays_software_until_one_is_added() {
    let mut h = Harness::new(1, 100);
    let u = h.put(0, ipv4_match(3, 1));
    h.process();
    assert_eq!(h.state(3, u), OffloadState::Software);
    let dev = TestDevice::new(10);
    h.add_port(3, &dev);
    assert_eq!(h.state(3, u), OffloadState::Pending);
    h.process();
    assert_eq!(h.state(3, u).name(), "offloaded");
}

#[test]
fn failed_destroy_keeps_the_mark_until_the_device_changes() {
    let mut h = Harness::new(1, 100);
    let dev = TestDevice::new(10);
    h.add_port(1, &dev);
    let a = h.put(0, ipv4_match(1, 1));
    let b = h.put(0, ipv4_match(1, 2));
    h.process();
    dev.st().fail_destroy = Some(FlowError::Device("busy".into()));
    h.delete(0, 1, a);
    let s = h.state(1, a);
    assert_eq!(s.name(), "removing");
    assert!(s.reason().unwrap().contains("busy"));
    assert_eq!(
        h.engine.marks().in_use(),
        2,
        "the rule may still mark packets"
    );
    // Offered again meanwhile: the surviving rule is used again.
    h.put(0, ipv4_match(1, 1));
    assert_eq!(h.state(1, a).name(), "offloaded");
    h.delete(0, 1, a);
    assert_eq!(h.state(1, a).name(), "removing");
    // The device recovers: the next successful destroy finishes it.
    dev.st().fail_destroy = None;
    h.delete(0, 1, b);
    assert!(h.engine.state(1, a).is_none());
    assert!(dev.marks().is_empty());
    assert_eq!(h.engine.marks().in_use(), 0);
}

#[test]
fn reset_finishes_a_stuck_removal() {
    let mut h = Harness::new(1, 100);
    let dev = TestDevice::new(10);
    h.add_port(1, &dev);
    let a = h.put(0, ipv4_match(1, 1));
    h.process();
    dev.st().fail_destroy = Some(FlowError::Device("busy".into()));
    h.delete(0, 1, a);
    assert_eq!(h.state(1, a).name(), "removing");
    dev.reset();
    h.engine.device_reset(1, h.now, &mut h.out);
    assert!(h.engine.state(1, a).is_none());
    assert_eq!(h.engine.marks().in_use(), 0);
    assert!(h.engine.is_empty());
}

#[test]
fn a_ufid_collision_never_shares_the_rule_or_mark() {
    let mut h = Harness::new(2, 100);
    let dev = TestDevice::new(10);
    h.add_port(1, &dev);
    let u = h.put(0, ipv4_match(1, 1));
    h.process();
    h.quiesce_all();
    // PMD 1 offers another match under the same ufid.
    let mut req = h.put_request(1, ipv4_match(1, 2));
    req.ufid = u;
    h.out.clear();
    h.engine.handle(OffloadRequest::Put(req), h.now, &mut h.out);
    h.process();
    assert_eq!(h.engine.counters().ufid_collisions, 1);
    assert!(
        h.out.iter().all(|(p, _)| *p != PmdId(1)),
        "nothing published to PMD 1"
    );
    assert_eq!(h.engine.sharers(1, u).map(PmdRefs::len), Some(1));
    assert_eq!(dev.marks().len(), 1);
}

#[test]
fn pmd_removal_drops_its_copies() {
    let mut h = Harness::new(2, 100);
    let dev = TestDevice::new(10);
    h.add_port(1, &dev);
    let m = ipv4_match(1, 1);
    let u = h.put(0, m);
    h.put(1, m);
    let only0 = h.put(0, ipv4_match(1, 2));
    h.process();
    h.engine.remove_pmd(PmdId(0), h.now, &mut h.out);
    assert_eq!(h.engine.sharers(1, u).map(PmdRefs::len), Some(1));
    assert!(h.engine.state(1, only0).is_none());
    assert_eq!(dev.marks().len(), 1);
    assert!(h
        .out
        .iter()
        .all(|(p, _)| *p != PmdId(0) || h.engine.marks().pmd_epoch(*p).is_none()));
    // Requests from the removed PMD are ignored.
    h.put(0, ipv4_match(1, 9));
    assert_eq!(h.engine.counters().unknown_pmd, 1);
    h.delete(0, 1, Ufid(1234));
    assert_eq!(h.engine.counters().unknown_deletes, 1);
}

#[test]
fn device_with_fewer_marks_than_the_pool_is_refused() {
    let mut h = Harness::new(1, 1000);
    let mut dev = TestDevice {
        caps: Profile::Generic.capabilities(),
        state: Mutex::new(DevState::default()),
    };
    dev.caps.max_mark = 999;
    let dev: Arc<dyn FlowDevice> = Arc::new(dev);
    let err = h.engine.add_port(1, dev, 1, h.now, &mut h.out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "port 1's NIC carries marks up to 999 but the mark pool goes to 1000; \
         set the offload max-marks setting to at most 999"
    );
}

#[test]
fn status_serialises_with_the_cli_field_names() {
    let mut h = Harness::new(1, 100);
    let dev = TestDevice::new(10);
    h.add_port(1, &dev);
    let u = h.put(0, ipv4_match(1, 1));
    h.process();
    let s = h.engine.status(h.now);
    let port = &s.ports[0];
    assert_eq!(port.inserts_per_s, 0.0);
    let row = &h.engine.dump()[0];
    assert_eq!(row.ufid, u);
    assert_eq!(row.reason, None);
    assert_eq!(row.rule, h.state(1, u).rule().map(|r| r.0));
}

#[test]
fn latency_p99_and_rate() {
    let mut l = Latency::default();
    for ms in 1..=100u64 {
        l.record(Duration::from_millis(ms), 1000);
    }
    let s = l.summary();
    assert_eq!(s.p99, 99_000);
    assert_eq!(s.avg, 50_500.0);
    // 1..=100 ms: 10 ms is the 10th insert, 25 ms the 25th, 50 ms the
    // 50th, 100 ms the last; nothing at or under 5 ms but 1..=5.
    let h = l.histogram();
    assert_eq!(h.count, 100);
    assert_eq!(h.sum_us, 5_050_000);
    let at = |le: u64| h.cumulative[LATENCY_BUCKETS_US.iter().position(|b| *b == le).unwrap()];
    assert_eq!(at(1_000), 1);
    assert_eq!(at(5_000), 5);
    assert_eq!(at(10_000), 10);
    assert_eq!(at(50_000), 50);
    assert_eq!(at(100_000), 100);
    assert_eq!(at(1_000_000), 100);
    assert_eq!(at(500), 0);
    let mut big = Latency::default();
    big.record(Duration::from_secs(3), 10);
    assert_eq!(
        big.histogram().cumulative.last(),
        Some(&0),
        "above every bound: only +Inf"
    );
    assert_eq!(big.histogram().count, 1);
    let t0 = Instant::now();
    let mut r = Rate::default();
    for i in 0..10 {
        r.record(t0 + Duration::from_millis(i * 100));
    }
    r.record(t0 + Duration::from_millis(1000));
    assert_eq!(r.per_second(t0 + Duration::from_millis(1000)), 10.0);
    assert_eq!(r.per_second(t0 + Duration::from_millis(3000)), 0.5);
}
