//! The emulated testbed's port factory: `testbed-nic` and `testbed-vm`
//! ports over heap buffers.

use super::{drain_resets, NewPort, PortError, PortEvent, PortFactory};
use crate::config::{PortFamily, PortSpec, PortType};
use crossbeam_channel::Receiver;
use fallback::port::{BufferSource, HeapPacket};
use std::collections::BTreeMap;
use testbed::{Inject, Testbed, TestbedConfig};

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

    fn buffer_source(&self) -> Option<Box<dyn BufferSource<HeapPacket>>> {
        Some(Box::new(self.bed.pool().clone()))
    }

    fn device_rules(&self, ofport: u32) -> Option<usize> {
        self.bed.nic(ofport).map(|n| n.flow_device().rule_count())
    }
}
