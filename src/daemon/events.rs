//! Port events from the devices (DESIGN §3: NIC reset, port removal) and
//! what the daemon does about them.
//!
//! Where events come from: a [`PortFactory`]'s `poll_events` — an emulated
//! NIC that lost its rules (`testbed-nic`, `testbed-nic-dpdk`), and on DPDK
//! ethdev ports `RTE_ETH_EVENT_INTR_RESET` / `RTE_ETH_EVENT_INTR_RMV`
//! (recorded by a callback on DPDK's interrupt thread, drained here on the
//! daemon's main thread).
//!
//! The decision is a pure function, [`plan`], of the event and the port's
//! state; [`PortEvents::handle`] carries the steps out on the switch and
//! the factory. Virtual devices never raise the ethdev events, so `plan`
//! is tested for every (event, state) pair on its own.

use crate::ports::{PortEvent, PortEventKind, PortFactory, ResetOutcome};
use crate::switch::Switch;
use fallback::port::PacketBuf;
use slog::{error, info, warn, Logger};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The port as far as events are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// No such port (never was, or already removed).
    Absent,
    /// In the switch and working.
    Up,
    /// A reset is under way: I/O stopped, the device not restarted yet
    /// (e.g. `rte_eth_dev_reset` said "try again").
    Resetting,
}

/// One thing to do, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do; the reason goes to the log.
    Ignore(&'static str),
    /// PMDs stop polling and transmitting on the port (rx gives nothing,
    /// tx is refused and counted as `port_down`), the flow device refuses
    /// calls; then a round trip with every PMD proves none is inside a
    /// burst on the port.
    StopIo,
    /// Forget the port's flow rule handles without destroying them (the
    /// device no longer holds them).
    ForgetRules,
    /// Reset and restart the device with its original configuration.
    ResetDevice,
    /// PMDs use the port again; the flow device takes calls again.
    ResumeIo,
    /// Every megaflow of the port goes back to Pending and is offered
    /// again (`Switch::nic_reset`).
    Reoffer,
    /// Remove the port as `port del` does (its megaflows and marks go;
    /// its rules are not destroyed: they went with the device).
    RemovePort,
}

/// What to do about `event` on a port in `state`.
pub fn plan(event: PortEventKind, state: PortState) -> Vec<Step> {
    use PortEventKind as E;
    use PortState as S;
    match (event, state) {
        (_, S::Absent) => vec![Step::Ignore("no such port (unknown, or already removed)")],
        (E::RulesLost, S::Up) => vec![Step::Reoffer],
        // The reset under way re-offers everything when it completes.
        (E::RulesLost, S::Resetting) => vec![Step::Ignore(
            "a reset is under way; it re-offers the port's megaflows when done",
        )],
        (E::ResetNeeded, S::Up) => vec![
            Step::StopIo,
            Step::ForgetRules,
            Step::ResetDevice,
            Step::ResumeIo,
            Step::Reoffer,
        ],
        // Joins the reset under way (I/O is already stopped): the device
        // is reset now, once, for both.
        (E::ResetNeeded, S::Resetting) => {
            vec![
                Step::ForgetRules,
                Step::ResetDevice,
                Step::ResumeIo,
                Step::Reoffer,
            ]
        }
        (E::Removed, S::Up) => vec![Step::StopIo, Step::ForgetRules, Step::RemovePort],
        (E::Removed, S::Resetting) => vec![Step::ForgetRules, Step::RemovePort],
    }
}

/// How long a reset that did not complete waits before it is tried again.
pub const RESET_RETRY: Duration = Duration::from_secs(1);

/// The daemon's side of port events: the ports being reset, and the
/// execution of [`plan`]'s steps.
#[derive(Debug, Default)]
pub struct PortEvents {
    /// Ports whose reset has not completed, with the time of the next try.
    resetting: BTreeMap<u32, Instant>,
}

/// What [`PortEvents::handle`] did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// (event, steps carried out).
    pub events: Vec<(PortEvent, Vec<Step>)>,
    /// Ports removed because their device went.
    pub removed: Vec<u32>,
}

impl PortEvents {
    pub fn new() -> Self {
        Self::default()
    }

    /// The port's state for [`plan`].
    pub fn state<B>(&self, switch: &Switch<B>, ofport: u32) -> PortState
    where
        B: PacketBuf + Clone + Send + 'static,
    {
        if !switch.ports().iter().any(|p| p.ofport == ofport) {
            PortState::Absent
        } else if self.resetting.contains_key(&ofport) {
            PortState::Resetting
        } else {
            PortState::Up
        }
    }

    /// Ports whose reset has not completed.
    pub fn resetting(&self) -> impl Iterator<Item = u32> + '_ {
        self.resetting.keys().copied()
    }

    /// Takes the factory's events (plus the retries of resets that did not
    /// complete and are due) and carries out their plans.
    pub fn handle<B, F>(&mut self, switch: &mut Switch<B>, factory: &mut F, log: &Logger) -> Handled
    where
        B: PacketBuf + Clone + Send + 'static,
        F: PortFactory<B> + ?Sized,
    {
        let mut events = factory.poll_events();
        // A port removed (e.g. `port del`) while its reset waited.
        self.resetting
            .retain(|p, _| switch.ports().iter().any(|sp| sp.ofport == *p));
        let now = Instant::now();
        for (&ofport, &due) in &self.resetting {
            if due <= now {
                events.push(PortEvent {
                    ofport,
                    kind: PortEventKind::ResetNeeded,
                });
            }
        }
        // The same event twice in one poll is one event.
        let mut seen = std::collections::BTreeSet::new();
        events.retain(|e| seen.insert(*e));
        let mut done = Handled::default();
        for ev in events {
            let steps = plan(ev.kind, self.state(switch, ev.ofport));
            let carried = self.execute(ev, &steps, switch, factory, log, &mut done);
            done.events.push((ev, carried));
        }
        done
    }

    /// Carries out `steps` in order; stops early when a reset must wait.
    /// Returns the steps carried out.
    fn execute<B, F>(
        &mut self,
        ev: PortEvent,
        steps: &[Step],
        switch: &mut Switch<B>,
        factory: &mut F,
        log: &Logger,
        done: &mut Handled,
    ) -> Vec<Step>
    where
        B: PacketBuf + Clone + Send + 'static,
        F: PortFactory<B> + ?Sized,
    {
        let ofport = ev.ofport;
        let name = switch
            .ports()
            .iter()
            .find(|p| p.ofport == ofport)
            .map_or_else(|| ofport.to_string(), |p| p.name.clone());
        let mut carried = Vec::new();
        for &step in steps {
            carried.push(step);
            match step {
                Step::Ignore(why) => {
                    info!(log, "port event ignored"; "ofport" => ofport, "event" => ev.kind.name(), "why" => why);
                }
                Step::StopIo => {
                    factory.set_io(ofport, false);
                    // A round trip with every PMD: none is inside a burst
                    // on the port any more, and every later burst sees it
                    // down.
                    if let Err(e) = switch.pmd_snapshots() {
                        error!(log, "port event: PMDs did not answer; the device is not touched";
                            "port" => &name, "event" => ev.kind.name(), "error" => e.to_string());
                        if ev.kind == PortEventKind::ResetNeeded {
                            self.resetting.insert(ofport, Instant::now() + RESET_RETRY);
                        }
                        return carried;
                    }
                }
                Step::ForgetRules => factory.forget_rules(ofport),
                Step::ResetDevice => match factory.reset_port(ofport) {
                    Ok(ResetOutcome::Done) => {
                        self.resetting.remove(&ofport);
                    }
                    Ok(ResetOutcome::TryAgain) => {
                        warn!(log, "port reset not complete; trying again"; "port" => &name,
                            "in_ms" => RESET_RETRY.as_millis() as u64);
                        self.resetting.insert(ofport, Instant::now() + RESET_RETRY);
                        return carried;
                    }
                    Err(e) => {
                        error!(log, "port reset failed; the port stays down and the reset is tried again (or `port del` it)";
                            "port" => &name, "error" => e.to_string(), "in_ms" => RESET_RETRY.as_millis() as u64);
                        self.resetting.insert(ofport, Instant::now() + RESET_RETRY);
                        return carried;
                    }
                },
                Step::ResumeIo => factory.set_io(ofport, true),
                Step::Reoffer => match switch.nic_reset(ofport) {
                    Ok(()) => {
                        warn!(log, "NIC rules lost: re-offering the port's megaflows"; "port" => &name, "event" => ev.kind.name())
                    }
                    Err(e) => {
                        error!(log, "NIC reset not handled"; "port" => &name, "error" => e.to_string())
                    }
                },
                Step::RemovePort => {
                    self.resetting.remove(&ofport);
                    match switch.del_port(&name) {
                        Ok(_) => {
                            factory.remove(ofport);
                            done.removed.push(ofport);
                            warn!(log, "port removed: its device is gone"; "port" => &name, "ofport" => ofport);
                        }
                        Err(e) => {
                            error!(log, "cannot remove the port whose device is gone"; "port" => &name, "error" => e.to_string())
                        }
                    }
                }
            }
        }
        carried
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PortEventKind as E;
    use PortState as S;

    #[test]
    fn every_event_on_an_absent_port_is_ignored() {
        for e in [E::RulesLost, E::ResetNeeded, E::Removed] {
            let p = plan(e, S::Absent);
            assert_eq!(p.len(), 1, "{e:?}");
            assert!(matches!(p[0], Step::Ignore(_)), "{e:?}: {p:?}");
        }
    }

    #[test]
    fn rules_lost_reoffers_unless_a_reset_will() {
        assert_eq!(plan(E::RulesLost, S::Up), vec![Step::Reoffer]);
        let p = plan(E::RulesLost, S::Resetting);
        assert!(matches!(p[..], [Step::Ignore(_)]), "{p:?}");
    }

    #[test]
    fn reset_stops_io_before_touching_the_device_and_reoffers_last() {
        let p = plan(E::ResetNeeded, S::Up);
        assert_eq!(
            p,
            vec![
                Step::StopIo,
                Step::ForgetRules,
                Step::ResetDevice,
                Step::ResumeIo,
                Step::Reoffer
            ]
        );
    }

    #[test]
    fn a_reset_during_a_reset_joins_it() {
        let p = plan(E::ResetNeeded, S::Resetting);
        assert_eq!(
            p,
            vec![
                Step::ForgetRules,
                Step::ResetDevice,
                Step::ResumeIo,
                Step::Reoffer
            ]
        );
        assert!(!p.contains(&Step::StopIo), "I/O is already stopped");
    }

    #[test]
    fn removal_never_destroys_rules_on_the_gone_device() {
        assert_eq!(
            plan(E::Removed, S::Up),
            vec![Step::StopIo, Step::ForgetRules, Step::RemovePort]
        );
        assert_eq!(
            plan(E::Removed, S::Resetting),
            vec![Step::ForgetRules, Step::RemovePort]
        );
    }

    #[test]
    fn invariants_over_every_pair() {
        for e in [E::RulesLost, E::ResetNeeded, E::Removed] {
            for s in [S::Absent, S::Up, S::Resetting] {
                let p = plan(e, s);
                assert!(!p.is_empty(), "{e:?} {s:?}");
                let at = |x: Step| p.iter().position(|y| *y == x);
                // The device is reset only while no PMD uses the port.
                if let Some(r) = at(Step::ResetDevice) {
                    assert!(s == S::Resetting || at(Step::StopIo) < Some(r));
                    assert!(at(Step::ForgetRules) < Some(r));
                    assert!(at(Step::ResumeIo) > Some(r));
                }
                // Re-offer only once the port works.
                if let Some(o) = at(Step::Reoffer) {
                    assert!(at(Step::ResetDevice).is_none_or(|r| r < o));
                    assert!(at(Step::ResumeIo).is_none_or(|r| r < o));
                }
                // A removed port never comes back up.
                if at(Step::RemovePort).is_some() {
                    assert_eq!(at(Step::ResumeIo), None);
                    assert_eq!(at(Step::Reoffer), None);
                    assert!(at(Step::ForgetRules) < at(Step::RemovePort));
                }
                if s == S::Resetting {
                    assert_eq!(at(Step::StopIo), None, "stopped once");
                }
            }
        }
    }

    use crate::config::{PortFamily, PortSpec, PortType};
    use crate::ports::{NewPort, PortError, TestbedFactory};
    use crate::switch::SwitchConfig;
    use fallback::port::HeapPacket;
    use std::sync::Mutex;
    use testbed::Inject;

    /// A testbed factory whose device events and reset outcomes are
    /// scripted, recording what the daemon asked of it.
    struct Scripted {
        inner: TestbedFactory,
        events: Vec<PortEvent>,
        outcomes: Vec<Result<ResetOutcome, ()>>,
        calls: Mutex<Vec<String>>,
    }

    impl PortFactory<HeapPacket> for Scripted {
        fn family(&self) -> PortFamily {
            self.inner.family()
        }
        fn create(&mut self, o: u32, s: &PortSpec) -> Result<NewPort<HeapPacket>, PortError> {
            self.inner.create(o, s)
        }
        fn remove(&mut self, o: u32) {
            self.calls.lock().unwrap().push(format!("remove {o}"));
            self.inner.remove(o)
        }
        fn injector(&self, o: u32) -> Result<Box<dyn Inject>, PortError> {
            self.inner.injector(o)
        }
        fn reset_nic(&self, o: u32) -> Result<(), PortError> {
            self.inner.reset_nic(o)
        }
        fn take_captured(&self, o: u32) -> Result<Vec<Vec<u8>>, PortError> {
            self.inner.take_captured(o)
        }
        fn poll_events(&mut self) -> Vec<PortEvent> {
            std::mem::take(&mut self.events)
        }
        fn set_io(&self, o: u32, up: bool) {
            self.calls.lock().unwrap().push(format!("io {o} {up}"));
        }
        fn forget_rules(&self, o: u32) {
            self.calls.lock().unwrap().push(format!("forget {o}"));
        }
        fn reset_port(&self, o: u32) -> Result<ResetOutcome, PortError> {
            let n = {
                let mut c = self.calls.lock().unwrap();
                c.push(format!("reset {o}"));
                c.iter().filter(|x| x.starts_with("reset")).count()
            };
            match self
                .outcomes
                .get(n - 1)
                .copied()
                .unwrap_or(Ok(ResetOutcome::Done))
            {
                Ok(o) => Ok(o),
                Err(()) => Err(PortError::Reset {
                    name: "nic0".into(),
                    why: "scripted".into(),
                }),
            }
        }
        fn device_rules(&self, o: u32) -> Option<usize> {
            self.inner.device_rules(o)
        }
    }

    fn setup(outcomes: Vec<Result<ResetOutcome, ()>>) -> (Switch<HeapPacket>, Scripted) {
        let mut sw = Switch::start(SwitchConfig {
            pmd_cores: vec![None],
            ..SwitchConfig::default()
        })
        .unwrap();
        let mut f = Scripted {
            inner: TestbedFactory::new(),
            events: Vec::new(),
            outcomes,
            calls: Mutex::new(Vec::new()),
        };
        let spec = PortSpec {
            name: "nic0".into(),
            kind: PortType::TestbedNic,
            ofport: Some(1),
            rxqs: None,
            profile: None,
            devargs: None,
            socket: None,
            mode: None,
        };
        let new = f.create(1, &spec).unwrap();
        sw.add_port("nic0", "testbed-nic", Some(1), new.port, new.flow_device)
            .unwrap();
        (sw, f)
    }

    fn ev(ofport: u32, kind: PortEventKind) -> PortEvent {
        PortEvent { ofport, kind }
    }

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    #[test]
    fn a_reset_that_must_wait_keeps_the_port_down_and_is_retried() {
        let (mut sw, mut f) = setup(vec![Ok(ResetOutcome::TryAgain), Err(())]);
        let mut pe = PortEvents::new();
        f.events = vec![ev(1, E::ResetNeeded), ev(1, E::ResetNeeded)];
        let h = pe.handle(&mut sw, &mut f, &log());
        // The duplicate in one poll is one event; the reset must wait.
        assert_eq!(h.events.len(), 1, "{h:?}");
        assert_eq!(
            h.events[0].1,
            vec![Step::StopIo, Step::ForgetRules, Step::ResetDevice]
        );
        assert_eq!(pe.state(&sw, 1), S::Resetting);
        assert_eq!(
            *f.calls.lock().unwrap(),
            vec!["io 1 false", "forget 1", "reset 1"]
        );
        // Rules lost meanwhile: the reset will re-offer.
        f.events = vec![ev(1, E::RulesLost)];
        let h = pe.handle(&mut sw, &mut f, &log());
        assert!(matches!(h.events[0].1[..], [Step::Ignore(_)]), "{h:?}");
        // A new reset event joins the one in progress (no second stop);
        // this attempt fails: still down, tried again later.
        f.events = vec![ev(1, E::ResetNeeded)];
        let h = pe.handle(&mut sw, &mut f, &log());
        assert_eq!(h.events[0].1, vec![Step::ForgetRules, Step::ResetDevice]);
        assert_eq!(pe.state(&sw, 1), S::Resetting);
        // Not due yet: nothing happens.
        assert!(pe.handle(&mut sw, &mut f, &log()).events.is_empty());
        // Due: the retry completes, the port comes up and is re-offered.
        pe.resetting.insert(1, Instant::now());
        let h = pe.handle(&mut sw, &mut f, &log());
        assert_eq!(
            h.events[0].1,
            vec![
                Step::ForgetRules,
                Step::ResetDevice,
                Step::ResumeIo,
                Step::Reoffer
            ]
        );
        assert_eq!(pe.state(&sw, 1), S::Up);
        assert_eq!(f.calls.lock().unwrap().last().unwrap(), "io 1 true");
        sw.shutdown();
    }

    #[test]
    fn removal_and_events_for_unknown_ports() {
        let (mut sw, mut f) = setup(Vec::new());
        let mut pe = PortEvents::new();
        f.events = vec![
            ev(7, E::ResetNeeded),
            ev(1, E::Removed),
            ev(1, E::RulesLost),
        ];
        let h = pe.handle(&mut sw, &mut f, &log());
        assert!(matches!(h.events[0].1[..], [Step::Ignore(_)]), "{h:?}");
        assert_eq!(
            h.events[1].1,
            vec![Step::StopIo, Step::ForgetRules, Step::RemovePort]
        );
        assert!(
            matches!(h.events[2].1[..], [Step::Ignore(_)]),
            "removed: {h:?}"
        );
        assert_eq!(h.removed, vec![1]);
        assert!(sw.port_by_name("nic0").is_none());
        assert!(f.calls.lock().unwrap().contains(&"remove 1".to_string()));
        assert!(!f
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("reset")));
        sw.shutdown();
    }
}
