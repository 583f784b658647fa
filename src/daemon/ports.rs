//! Where the daemon's ports come from: a [`PortFactory`] per packet-buffer
//! family. The testbed's ([`TestbedFactory`]) makes emulated NICs and VM
//! ports over heap buffers; the DPDK backend adds one making mbuf ports.

pub use super::events::{PortEvent, PortEventKind};
use crate::config::{PortFamily, PortSpec, PortType};
use crossbeam_channel::Receiver;
use fallback::port::{HeapPacket, Port};
use offload::device::FlowDevice;
use std::collections::BTreeMap;
use std::sync::Arc;
use testbed::{Inject, Testbed, TestbedConfig};

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("cannot create port {name}: {why}")]
    Create { name: String, why: String },
    #[error("port {name} is a {kind} port: {what} works on testbed ports only")]
    NotTestbed {
        name: String,
        kind: String,
        what: &'static str,
    },
    #[error("port {name} has no emulated NIC: `nic reset` works on testbed-nic ports")]
    NotNic { name: String },
    #[error("no port has OpenFlow number {0}")]
    NoSuchOfport(u32),
    #[error("port {ofport} cannot be reset: its device has no reset; remove it with `port del` and add it again")]
    NoReset { ofport: u32 },
    #[error("port {name}: reset failed: {why}; the port stays down: remove it with `port del` (and check the device)")]
    Reset { name: String, why: String },
}

/// How a device reset went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetOutcome {
    /// The device is back up with its configuration.
    Done,
    /// The device is not ready to be reset yet (`-EAGAIN`): try later.
    TryAgain,
}

/// A port made by a factory, ready for [`crate::switch::Switch::add_port`].
pub struct NewPort<B> {
    pub port: Arc<dyn Port<Buf = B>>,
    pub flow_device: Option<Arc<dyn FlowDevice>>,
}

/// Makes and unmakes the ports of one family. The daemon calls it from
/// its main thread only.
pub trait PortFactory<B>: Send {
    /// The port types this factory makes.
    fn family(&self) -> PortFamily;
    /// Creates the port `spec` (its type is of this family) as `ofport`.
    fn create(&mut self, ofport: u32, spec: &PortSpec) -> Result<NewPort<B>, PortError>;
    /// The switch let go of the port: stop it.
    fn remove(&mut self, ofport: u32);
    /// Where test traffic enters the port (testbed ports).
    fn injector(&self, ofport: u32) -> Result<Box<dyn Inject>, PortError>;
    /// Fault injection: the port's NIC loses every rule.
    fn reset_nic(&self, ofport: u32) -> Result<(), PortError>;
    /// Takes the frames the port transmitted and kept since the last call
    /// (testbed ports keep up to [`TX_CAPTURE`], oldest first).
    fn take_captured(&self, ofport: u32) -> Result<Vec<Vec<u8>>, PortError> {
        Err(PortError::NoSuchOfport(ofport))
    }
    /// What happened to the ports' devices since the last call: rules
    /// lost (an emulated NIC's reset), a reset needed, the device gone
    /// (DESIGN §3; the daemon acts on them with [`super::events::plan`]).
    fn poll_events(&mut self) -> Vec<PortEvent>;
    /// Stops (`up` false) or resumes the PMDs' use of the port: while it
    /// is stopped, rx bursts receive nothing, tx bursts are refused (the
    /// datapath counts `port_down`) and its flow device refuses calls.
    /// Ports without such a switch ignore it.
    fn set_io(&self, _ofport: u32, _up: bool) {}
    /// Forgets the port's flow rule handles without destroying them (the
    /// device lost them).
    fn forget_rules(&self, _ofport: u32) {}
    /// Resets the port's device and restarts it with its original
    /// configuration; called between `set_io(false)` and `set_io(true)`.
    fn reset_port(&self, ofport: u32) -> Result<ResetOutcome, PortError> {
        Err(PortError::NoReset { ofport })
    }
    /// Rules on the port's device now, as the device itself counts them
    /// (`None`: the device cannot tell).
    fn device_rules(&self, ofport: u32) -> Option<usize>;
}

/// Transmitted frames a testbed port keeps for `port capture` (later ones
/// are counted, not kept, until a capture takes them).
pub const TX_CAPTURE: usize = 1024;

/// The emulated testbed's ports (`testbed-nic`, `testbed-vm`).
pub struct TestbedFactory {
    bed: Testbed,
    names: BTreeMap<u32, (String, PortType)>,
    resets: BTreeMap<u32, Receiver<u64>>,
}

impl TestbedFactory {
    /// Injection is lossless (back-pressure): a `port inject` waits for the
    /// switch instead of overflowing the NIC's rings, so that injected
    /// counts are exact.
    pub fn new() -> TestbedFactory {
        TestbedFactory {
            bed: Testbed::empty(TestbedConfig {
                backpressure: true,
                keep_tx: TX_CAPTURE,
                ..TestbedConfig::default()
            }),
            names: BTreeMap::new(),
            resets: BTreeMap::new(),
        }
    }

    /// The default testbed's ports (DESIGN §2): nic0, nic1, vm0 as 1, 2, 3.
    pub fn default_ports() -> Vec<PortSpec> {
        let spec = |name: &str, kind, ofport| PortSpec {
            name: name.to_string(),
            kind,
            ofport: Some(ofport),
            rxqs: None,
            profile: None,
            devargs: None,
            socket: None,
            mode: None,
        };
        vec![
            spec("nic0", PortType::TestbedNic, testbed::NIC0_OFPORT),
            spec("nic1", PortType::TestbedNic, testbed::NIC1_OFPORT),
            spec("vm0", PortType::TestbedVm, testbed::VM0_OFPORT),
        ]
    }

    fn name(&self, ofport: u32) -> String {
        self.names
            .get(&ofport)
            .map_or_else(|| ofport.to_string(), |(n, _)| n.clone())
    }
}

impl Default for TestbedFactory {
    fn default() -> Self {
        Self::new()
    }
}

impl PortFactory<HeapPacket> for TestbedFactory {
    fn family(&self) -> PortFamily {
        PortFamily::Testbed
    }

    fn create(&mut self, ofport: u32, spec: &PortSpec) -> Result<NewPort<HeapPacket>, PortError> {
        let created = match spec.kind {
            PortType::TestbedNic => {
                let mut cfg = self.bed.config().nic(&spec.name);
                if let Some(p) = spec.profile {
                    cfg.profile = p;
                }
                if let Some(n) = spec.rxqs {
                    cfg.rxqs = n;
                }
                self.bed
                    .add_nic(ofport, cfg)
                    .map_err(|e| PortError::Create {
                        name: spec.name.clone(),
                        why: e.to_string(),
                    })?;
                if let Some(nic) = self.bed.nic(ofport) {
                    self.resets
                        .insert(ofport, nic.flow_device().subscribe_resets());
                }
                self.bed.port(ofport)
            }
            PortType::TestbedVm => {
                let mut cfg = self.bed.config().vm(&spec.name);
                if let Some(n) = spec.rxqs {
                    cfg.rxqs = n;
                }
                Some(self.bed.add_vm(ofport, cfg))
            }
            other => {
                return Err(PortError::Create {
                    name: spec.name.clone(),
                    why: format!(
                        "a {} port is not a testbed port; this daemon runs testbed ports",
                        other.name()
                    ),
                })
            }
        };
        let p = created.ok_or_else(|| PortError::Create {
            name: spec.name.clone(),
            why: "the testbed lost the port it just made".into(),
        })?;
        self.names.insert(ofport, (spec.name.clone(), spec.kind));
        Ok(NewPort {
            port: p.port(),
            flow_device: p.flow_device(),
        })
    }

    fn remove(&mut self, ofport: u32) {
        self.resets.remove(&ofport);
        self.names.remove(&ofport);
        // Dropping the testbed port stops its NIC thread.
        drop(self.bed.remove(ofport));
    }

    fn injector(&self, ofport: u32) -> Result<Box<dyn Inject>, PortError> {
        if let Some(nic) = self.bed.nic(ofport) {
            return Ok(Box::new(nic.wire().clone()));
        }
        if let Some(vm) = self.bed.vm(ofport) {
            return Ok(Box::new(vm.guest().clone()));
        }
        Err(PortError::NoSuchOfport(ofport))
    }

    fn take_captured(&self, ofport: u32) -> Result<Vec<Vec<u8>>, PortError> {
        self.bed
            .port(ofport)
            .map(|p| p.take_transmitted())
            .ok_or(PortError::NoSuchOfport(ofport))
    }

    fn reset_nic(&self, ofport: u32) -> Result<(), PortError> {
        match self.bed.nic(ofport) {
            Some(nic) => {
                nic.flow_device().reset();
                Ok(())
            }
            None => Err(PortError::NotNic {
                name: self.name(ofport),
            }),
        }
    }

    fn poll_events(&mut self) -> Vec<PortEvent> {
        drain_resets(&self.resets)
    }

    fn device_rules(&self, ofport: u32) -> Option<usize> {
        self.bed.nic(ofport).map(|n| n.flow_device().rule_count())
    }
}

/// One `RulesLost` per emulated NIC that was reset since the last call
/// (however many resets).
pub fn drain_resets(resets: &BTreeMap<u32, Receiver<u64>>) -> Vec<PortEvent> {
    let mut out = Vec::new();
    for (ofport, rx) in resets {
        let mut reset = false;
        while rx.try_recv().is_ok() {
            reset = true;
        }
        if reset {
            out.push(PortEvent {
                ofport: *ofport,
                kind: PortEventKind::RulesLost,
            });
        }
    }
    out
}
