//! Where the daemon's ports come from: a [`PortFactory`] per packet-buffer
//! family. The testbed's ([`TestbedFactory`]) makes emulated NICs and VM
//! ports over heap buffers; the DPDK backend (`crate::dpdk::factory`)
//! makes mbuf ports. This module sits below both the daemon, which uses a
//! factory, and the backends, which implement one: neither imports the
//! other (`crate::backend` joins them).

mod emulated;

pub use self::emulated::TestbedFactory;
use crate::config::PortFamily;
use crate::config::PortSpec;
use crossbeam_channel::Receiver;
use fallback::port::{BufferSource, Port};
use offload::device::FlowDevice;
use std::collections::BTreeMap;
use std::sync::Arc;
use testbed::Inject;

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
    /// (testbed ports keep up to 1024, oldest first).
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
    /// Where the PMDs take buffers for multi-output copies (the testbed's
    /// packet pool); `None`: copies are the buffer type's `Clone` (DPDK
    /// mbufs clone from their mempool).
    fn buffer_source(&self) -> Option<Box<dyn BufferSource<B>>> {
        None
    }
    /// Rules on the port's device now, as the device itself counts them
    /// (`None`: the device cannot tell).
    fn device_rules(&self, ofport: u32) -> Option<usize>;
}

/// What happened to a port's device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortEventKind {
    /// The device lost every flow rule but still works (an emulated NIC's
    /// reset): re-offer the port's megaflows.
    RulesLost,
    /// The device must be reset before it works again
    /// (`RTE_ETH_EVENT_INTR_RESET`); its rules are gone.
    ResetNeeded,
    /// The device is gone (`RTE_ETH_EVENT_INTR_RMV`): remove the port.
    Removed,
}

impl PortEventKind {
    pub fn name(self) -> &'static str {
        match self {
            PortEventKind::RulesLost => "rules_lost",
            PortEventKind::ResetNeeded => "reset_needed",
            PortEventKind::Removed => "removed",
        }
    }
}

/// An event on the port with OpenFlow number `ofport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortEvent {
    pub ofport: u32,
    pub kind: PortEventKind,
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
