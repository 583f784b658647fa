//! The `flowmark` switch: PMD datapath, daemon, control socket, the DPDK
//! backend (feature `dpdk`) and the demo. The CLI lives in `main.rs`.

// `unsafe` only in `dpdk` (which allows it, with a SAFETY note per block).
#![deny(unsafe_code)]

pub mod backend;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod demo;
pub mod dpdk;
pub mod openflow;
pub mod pmd;
pub mod ports;
pub mod soak;
pub mod switch;
pub mod sync;
pub mod trace;

/// What the environment asks of the tests (one file shared by every crate).
#[cfg(test)]
#[path = "../tests/support/test_env.rs"]
pub(crate) mod test_env;
