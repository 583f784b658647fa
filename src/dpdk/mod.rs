//! Everything that touches raw hardware or C: the only place `unsafe` is
//! allowed. The DPDK bindings themselves come with the `dpdk` feature.
//!
//! With `--features dpdk` (DPDK 22.11, Debian's `libdpdk-dev`):
//! - [`sys`]: the bindgen bindings (build.rs);
//! - [`eal`]: EAL initialisation (once per process) and thread registration;
//! - [`mbuf`]: mempools and [`mbuf::Mbuf`], the zero-copy `PacketBuf`;
//! - [`ethdev`]: ethdev ports from devargs (`dpdk`, `vhost`), the `Port`
//!   trait over `rte_eth_rx_burst`/`rte_eth_tx_burst`;
//! - [`flow`]: `FlowDevice` over the real rte_flow API;
//! - [`nic_ring`]: `testbed-nic-dpdk`, the emulated NIC writing real mbufs
//!   into an `rte_ring` read through `rte_eth_from_rings()`;
//! - [`events`]: ethdev reset/removal events, recorded for the daemon;
//! - [`factory`]: builds ports of those types from config entries.

#![allow(unsafe_code)]

pub mod tsc;

#[cfg(feature = "dpdk")]
pub mod sys;

#[cfg(feature = "dpdk")]
pub mod eal;
#[cfg(feature = "dpdk")]
pub mod ethdev;
#[cfg(feature = "dpdk")]
pub mod events;
#[cfg(feature = "dpdk")]
pub mod factory;
#[cfg(feature = "dpdk")]
pub mod flow;
#[cfg(feature = "dpdk")]
pub mod mbuf;
#[cfg(feature = "dpdk")]
pub mod nic_ring;

#[cfg(feature = "dpdk")]
pub use eal::Eal;
#[cfg(feature = "dpdk")]
pub use ethdev::{EthPort, EthPortConfig, LinkState};
#[cfg(feature = "dpdk")]
pub use factory::{DpdkPortFactory, DpdkPortSpec, MadePort};
#[cfg(feature = "dpdk")]
pub use flow::EthFlowDevice;
#[cfg(feature = "dpdk")]
pub use mbuf::{Mbuf, Mempool};
#[cfg(feature = "dpdk")]
pub use nic_ring::{NicDpdk, NicDpdkConfig};

/// What can go wrong in the DPDK backend. Every message says what to do.
#[cfg(feature = "dpdk")]
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error(
        "the DPDK EAL is already initialised in this process: it initialises once per \
         process, so run each DPDK setup in a process of its own"
    )]
    EalTwice,
    #[error("EAL argument {0:?} contains a NUL byte; remove it from [dpdk] eal_args")]
    BadArg(String),
    #[error(
        "EAL initialisation failed with arguments `{args}`: {reason}; check [dpdk] eal_args \
         (e.g. --no-huge -m 512 --no-pci --file-prefix=NAME) and that no other process uses \
         the same --file-prefix"
    )]
    EalInit { args: String, reason: String },
    #[error("the DPDK EAL is not initialised: call flowmark::dpdk::Eal::init first")]
    NoEal,
    #[error("cannot create mempool {name} of {n} mbufs: {reason}; give the EAL more memory (-m) or ask for fewer mbufs")]
    Mempool {
        name: String,
        n: u32,
        reason: String,
    },
    #[error("no ethdev port for devargs {devargs:?}: {reason}; give a vdev (e.g. `net_pcap0,rx_pcap=in.pcap`) or a NIC's PCI address (without --no-pci)")]
    NoDevice { devargs: String, reason: String },
    #[error("port {name}: {what} failed: {reason}")]
    Port {
        name: String,
        what: &'static str,
        reason: String,
    },
    #[error("port {name}: invalid setting: {why}")]
    Config { name: String, why: String },
    #[error("cannot create rte_ring {name}: {reason}; give the EAL more memory (-m) or use smaller rings")]
    Ring { name: String, reason: String },
    #[error("testbed NIC {name}: {reason}")]
    Nic { name: String, reason: String },
    #[error("cannot start thread {name}: {source}; check the process's thread limit")]
    Thread {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// DPDK's text for an errno value (`rte_strerror`, which also knows DPDK's
/// own codes).
#[cfg(feature = "dpdk")]
pub(crate) fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror accepts any value and returns a pointer to a
    // NUL-terminated string (static, or in a per-thread buffer) that stays
    // valid until the next call on this thread; it is copied at once.
    unsafe {
        let s = sys::rte_strerror(errno);
        if s.is_null() {
            return format!("error {errno}");
        }
        std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned()
    }
}

/// The calling thread's `rte_errno`.
#[cfg(feature = "dpdk")]
pub(crate) fn rte_errno() -> i32 {
    // SAFETY: reads a thread-local integer; no preconditions.
    unsafe { sys::flowmark_rte_errno() }
}
