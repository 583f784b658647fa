//! The `flowmark` switch: PMD datapath, daemon, control socket, the DPDK
//! backend (feature `dpdk`) and the demo. The CLI lives in `main.rs`.

// `unsafe` only in `dpdk` (which allows it, with a SAFETY note per block).
#![deny(unsafe_code)]

pub mod backend;
pub mod config;
pub mod control;
pub mod cycle_histogram;
pub mod daemon;
pub mod datapath;
pub mod demo;
pub mod dpdk;
pub mod metrics;
pub mod openflow;
pub mod pmd;
pub mod ports;
pub mod revalidator;
pub mod soak;
pub mod switch;
pub mod trace;

/// The git commit this binary was built from (`unknown` when built without
/// git metadata; build.rs).
pub const GIT_COMMIT: &str = env!("FLOWMARK_GIT_COMMIT");

/// `flowmark --version`: the crate version, the git commit and whether the
/// DPDK backend is built in.
#[cfg(feature = "dpdk")]
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FLOWMARK_GIT_COMMIT"),
    ", dpdk)"
);
#[cfg(not(feature = "dpdk"))]
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FLOWMARK_GIT_COMMIT"),
    ")"
);

/// What the environment asks of the tests (one file shared by every crate).
#[cfg(test)]
#[path = "../tests/support/test_env.rs"]
pub(crate) mod test_env;
