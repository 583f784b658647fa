//! The default testbed (DESIGN §2): emulated NIC ports `nic0` and `nic1` as
//! OpenFlow ports 1 and 2, VM port `vm0` as port 3, sharing one buffer pool.
//! Ports can be added and removed by OpenFlow number.

use std::sync::Arc;

use fallback::port::{HeapPacket, Port};
use offload::device::{FlowDevice, Profile};

use crate::inject::{Inject, InjectError};
use crate::nic::{Nic, NicConfig, NicError};
use crate::pool::{PacketPool, DEFAULT_POOL_SIZE};
use crate::vm::{Vm, VmConfig};

pub const NIC0_OFPORT: u32 = 1;
pub const NIC1_OFPORT: u32 = 2;
pub const VM0_OFPORT: u32 = 3;

/// A switch port of the testbed's buffer type, shareable between threads.
pub type SharedPort = Arc<dyn Port<Buf = HeapPacket>>;

/// How the default testbed is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestbedConfig {
    /// The NICs' capability profile.
    pub profile: Profile,
    pub nic_rxqs: u16,
    pub nic_txqs: u16,
    pub rx_ring_size: usize,
    /// Lossless injection (see [`NicConfig::backpressure`]).
    pub backpressure: bool,
    /// Transmitted packets each port keeps (0: none).
    pub keep_tx: usize,
    /// Count transmitted packets per flow id on every port.
    pub count_flows: bool,
    pub pool_size: usize,
}

impl Default for TestbedConfig {
    fn default() -> Self {
        let nic = NicConfig::new("nic");
        TestbedConfig {
            profile: Profile::Generic,
            nic_rxqs: nic.rxqs,
            nic_txqs: nic.txqs,
            rx_ring_size: nic.rx_ring_size,
            backpressure: false,
            keep_tx: 0,
            count_flows: false,
            pool_size: DEFAULT_POOL_SIZE,
        }
    }
}

impl TestbedConfig {
    /// The configuration of NIC port `name`.
    pub fn nic(&self, name: &str) -> NicConfig {
        NicConfig {
            rxqs: self.nic_rxqs,
            txqs: self.nic_txqs,
            rx_ring_size: self.rx_ring_size,
            profile: self.profile,
            backpressure: self.backpressure,
            keep_tx: self.keep_tx,
            count_flows: self.count_flows,
            ..NicConfig::new(name)
        }
    }

    /// The configuration of VM port `name`.
    pub fn vm(&self, name: &str) -> VmConfig {
        VmConfig {
            ring_size: self.rx_ring_size,
            backpressure: self.backpressure,
            keep_tx: self.keep_tx,
            count_flows: self.count_flows,
            ..VmConfig::new(name)
        }
    }
}

/// What kind of testbed port.
#[derive(Debug)]
pub enum TestbedDevice {
    Nic(Nic),
    Vm(Vm),
}

/// One port of the testbed.
#[derive(Debug)]
pub struct TestbedPort {
    pub ofport: u32,
    pub device: TestbedDevice,
}

impl TestbedPort {
    pub fn name(&self) -> &str {
        match &self.device {
            TestbedDevice::Nic(n) => n.name(),
            TestbedDevice::Vm(v) => v.name(),
        }
    }

    /// `testbed-nic` or `testbed-vm` (the config's port types).
    pub fn kind(&self) -> &'static str {
        match &self.device {
            TestbedDevice::Nic(_) => "testbed-nic",
            TestbedDevice::Vm(_) => "testbed-vm",
        }
    }

    /// The switch-facing port.
    pub fn port(&self) -> SharedPort {
        match &self.device {
            TestbedDevice::Nic(n) => Arc::clone(n.port()) as SharedPort,
            TestbedDevice::Vm(v) => Arc::clone(v.port()) as SharedPort,
        }
    }

    /// The flow device, for NIC ports.
    pub fn flow_device(&self) -> Option<Arc<dyn FlowDevice>> {
        match &self.device {
            TestbedDevice::Nic(n) => Some(Arc::clone(n.flow_device()) as Arc<dyn FlowDevice>),
            TestbedDevice::Vm(_) => None,
        }
    }

    /// Where this port's traffic is injected.
    pub fn injector(&self) -> &dyn Inject {
        match &self.device {
            TestbedDevice::Nic(n) => n.wire(),
            TestbedDevice::Vm(v) => v.guest(),
        }
    }

    /// Packets placed on the rx rings and not yet received by the switch.
    pub fn rx_pending(&self) -> usize {
        match &self.device {
            TestbedDevice::Nic(n) => n.port().rx_pending(),
            TestbedDevice::Vm(v) => v.port().rx_pending(),
        }
    }

    pub fn set_backpressure(&self, on: bool) {
        match &self.device {
            TestbedDevice::Nic(n) => n.set_backpressure(on),
            TestbedDevice::Vm(v) => v.set_backpressure(on),
        }
    }

    /// Packets transmitted per flow id (with `count_flows`).
    pub fn tx_flow_counts(&self) -> std::collections::BTreeMap<u32, u64> {
        match &self.device {
            TestbedDevice::Nic(n) => n.port().sink().flow_counts(),
            TestbedDevice::Vm(v) => v.port().sink().flow_counts(),
        }
    }

    /// Takes the bytes of the transmitted packets kept so far.
    pub fn take_transmitted(&self) -> Vec<Vec<u8>> {
        match &self.device {
            TestbedDevice::Nic(n) => n.port().sink().take_captured(),
            TestbedDevice::Vm(v) => v.port().sink().take_captured(),
        }
    }
}

/// A set of testbed ports sharing one pool.
#[derive(Debug)]
pub struct Testbed {
    pool: PacketPool,
    config: TestbedConfig,
    ports: Vec<TestbedPort>,
}

impl Testbed {
    /// No ports yet.
    pub fn empty(config: TestbedConfig) -> Testbed {
        // Allocated up front, as a DPDK mempool is.
        let pool = PacketPool::new(config.pool_size);
        pool.prefill(config.pool_size);
        Testbed {
            pool,
            config,
            ports: Vec::new(),
        }
    }

    /// The default testbed: nic0 (port 1), nic1 (port 2), vm0 (port 3).
    pub fn default_ports(config: TestbedConfig) -> Result<Testbed, NicError> {
        let mut t = Testbed::empty(config);
        t.add_nic(NIC0_OFPORT, t.config.nic("nic0"))?;
        t.add_nic(NIC1_OFPORT, t.config.nic("nic1"))?;
        t.add_vm(VM0_OFPORT, t.config.vm("vm0"));
        Ok(t)
    }

    pub fn config(&self) -> &TestbedConfig {
        &self.config
    }

    /// The buffer pool (the switch takes buffers for packet copies here).
    pub fn pool(&self) -> &PacketPool {
        &self.pool
    }

    /// Adds an emulated NIC port (replacing any port with that number).
    pub fn add_nic(&mut self, ofport: u32, config: NicConfig) -> Result<&TestbedPort, NicError> {
        let nic = Nic::start(config, self.pool.clone())?;
        Ok(self.insert(ofport, TestbedDevice::Nic(nic)))
    }

    /// Adds a VM port (replacing any port with that number).
    pub fn add_vm(&mut self, ofport: u32, config: VmConfig) -> &TestbedPort {
        let vm = Vm::new(config, self.pool.clone());
        self.insert(ofport, TestbedDevice::Vm(vm))
    }

    fn insert(&mut self, ofport: u32, device: TestbedDevice) -> &TestbedPort {
        self.ports.retain(|p| p.ofport != ofport);
        let at = self.ports.partition_point(|p| p.ofport < ofport);
        self.ports.insert(at, TestbedPort { ofport, device });
        &self.ports[at]
    }

    /// Removes a port (its NIC thread stops).
    pub fn remove(&mut self, ofport: u32) -> Option<TestbedPort> {
        let i = self.ports.iter().position(|p| p.ofport == ofport)?;
        Some(self.ports.remove(i))
    }

    /// Every port, by OpenFlow number.
    pub fn ports(&self) -> &[TestbedPort] {
        &self.ports
    }

    pub fn port(&self, ofport: u32) -> Option<&TestbedPort> {
        self.ports.iter().find(|p| p.ofport == ofport)
    }

    pub fn by_name(&self, name: &str) -> Option<&TestbedPort> {
        self.ports.iter().find(|p| p.name() == name)
    }

    /// The NIC behind an OpenFlow port.
    pub fn nic(&self, ofport: u32) -> Option<&Nic> {
        match &self.port(ofport)?.device {
            TestbedDevice::Nic(n) => Some(n),
            TestbedDevice::Vm(_) => None,
        }
    }

    /// The VM behind an OpenFlow port.
    pub fn vm(&self, ofport: u32) -> Option<&Vm> {
        match &self.port(ofport)?.device {
            TestbedDevice::Vm(v) => Some(v),
            TestbedDevice::Nic(_) => None,
        }
    }

    /// `(ofport, injector)` for every port, as [`crate::traffic::Traffic::send`]
    /// takes them.
    pub fn injectors(&self) -> Vec<(u32, &dyn Inject)> {
        self.ports
            .iter()
            .map(|p| (p.ofport, p.injector()))
            .collect()
    }

    pub fn set_backpressure(&self, on: bool) {
        for p in &self.ports {
            p.set_backpressure(on);
        }
    }

    /// Waits until every injected frame is on a ring (or counted dropped).
    pub fn sync(&self) -> Result<(), InjectError> {
        self.ports.iter().try_for_each(|p| p.injector().sync())
    }

    /// Packets on rx rings not yet received by the switch, all ports.
    pub fn rx_pending(&self) -> usize {
        self.ports.iter().map(TestbedPort::rx_pending).sum()
    }
}
