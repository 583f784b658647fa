//! flowmark's software datapath: pure logic, no threads, no I/O.
//!
//! packet parse → [`FlowKey`] → [`emc::Emc`] → [`dpcls::Dpcls`] → upcall into
//! the OpenFlow pipeline ([`ofproto`]), whose translation ([`ofproto::xlate`])
//! yields a [`megaflow::Megaflow`]: datapath actions plus a wildcard mask.

#![forbid(unsafe_code)]

pub mod actions;
pub mod cache;
pub mod dpcls;
pub mod emc;
pub mod exec;
pub mod growing;
pub mod key;
pub mod megaflow;
pub mod ofproto;
pub mod packet;
pub mod port;
pub mod revalidate;
pub mod simple;
/// The one shared helper for the crates above: taking a lock whose holder
/// panicked (fallback itself holds no locks), and the queue a PMD takes
/// from without waiting.
pub mod sync;

pub use key::{Field, FlowKey};

/// What the environment asks of the tests (one file shared by every crate).
#[cfg(test)]
#[path = "../../tests/support/test_env.rs"]
pub(crate) mod test_env;
