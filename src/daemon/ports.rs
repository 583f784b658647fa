//! Where the daemon's ports come from: a [`PortFactory`] per packet-buffer
//! family. The testbed's ([`TestbedFactory`]) makes emulated NICs and VM
//! ports over heap buffers; the DPDK backend adds one making mbuf ports.

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
    /// Ports whose NIC was reset since the last call (the daemon re-offers
    /// their megaflows).
    fn poll_resets(&mut self) -> Vec<u32>;
    /// Rules on the port's device now, as the device itself counts them
    /// (`None`: the device cannot tell).
    fn device_rules(&self, ofport: u32) -> Option<usize>;
}

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

    fn poll_resets(&mut self) -> Vec<u32> {
        let mut out = Vec::new();
        for (ofport, rx) in &self.resets {
            let mut reset = false;
            while rx.try_recv().is_ok() {
                reset = true;
            }
            if reset {
                out.push(*ofport);
            }
        }
        out
    }

    fn device_rules(&self, ofport: u32) -> Option<usize> {
        self.bed.nic(ofport).map(|n| n.flow_device().rule_count())
    }
}
