//! `flowmark run`: picks the port backend for the configured ports and runs
//! the daemon over it. The one place that knows both the daemon (which uses
//! a [`crate::ports::PortFactory`]) and the backends that implement one
//! (the emulated testbed, and DPDK with the `dpdk` feature).

use crate::config::PortFamily;
use crate::daemon::{run_with, DaemonError, DaemonOptions};
use crate::ports::TestbedFactory;
use slog::warn;

/// Runs the daemon until SIGINT/SIGTERM.
pub fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    for w in &opts.config.warnings {
        warn!(opts.log, "config: {w}");
    }
    match opts.config.family() {
        PortFamily::Testbed => run_with(opts, TestbedFactory::new()),
        #[cfg(feature = "dpdk")]
        PortFamily::Dpdk => run_dpdk(opts),
        #[cfg(not(feature = "dpdk"))]
        PortFamily::Dpdk => Err(DaemonError::NoDpdkFactory),
    }
}

/// The DPDK backend: EAL, mempool and its mbuf port factory around the
/// daemon; the pool's free mbufs are printed at start and at shutdown
/// (equal when no mbuf leaked).
#[cfg(feature = "dpdk")]
fn run_dpdk(opts: DaemonOptions) -> Result<(), DaemonError> {
    use crate::dpdk::factory::DpdkBackend;
    let backend = DpdkBackend::init(&opts.config.dpdk)
        .map_err(|e| DaemonError::BadArgument(e.to_string()))?;
    let result = run_with(opts, backend.port_factory());
    backend.shutdown();
    result
}
