//! flowmark's testbed: the emulated offload NIC, VM ports, traffic generators
//! and pcap files.
//!
//! - [`nic`]: an emulated rte_flow NIC port ([`nic::Nic`]): a wire to inject
//!   into, a thread that classifies like hardware, a `Port` and a
//!   `FlowDevice`;
//! - [`vm`]: a VM port (software path only);
//! - [`traffic`]: flow generators, the GTP gateway scenario; [`pcap`]: files;
//!   [`build`]: well-formed packet builders;
//! - [`matcher`]: the NIC's own rte_flow matcher over raw bytes;
//! - [`toeplitz`]: the RSS hash;
//! - [`pool`], [`sink`]: buffer recycling and transmit accounting.

#![forbid(unsafe_code)]

pub mod build;
pub mod inject;
pub mod matcher;
pub mod nic;
pub mod pcap;
pub mod pool;
pub mod setup;
pub mod sink;
pub mod toeplitz;
pub mod traffic;
pub mod vm;

pub use inject::{Inject, InjectError};
pub use nic::{Nic, NicConfig, NicFlowDevice, NicPort, NicStats, Wire};
pub use pool::PacketPool;
pub use setup::{
    SharedPort, Testbed, TestbedConfig, TestbedPort, NIC0_OFPORT, NIC1_OFPORT, VM0_OFPORT,
};
pub use vm::{Guest, Vm, VmConfig, VmPort};

/// What the environment asks of the tests (one file shared by every crate).
#[cfg(test)]
#[path = "../../tests/support/test_env.rs"]
pub(crate) mod test_env;
