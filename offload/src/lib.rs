//! flowmark's offload engine: the rte_flow model, megaflow → rte_flow
//! translation, the mark pool and the offload worker.

#![forbid(unsafe_code)]

pub mod device;
pub mod marks;
pub mod rte;
pub mod translate;
pub mod worker;

pub use device::{Capabilities, Counters, FlowDevice, FlowError, Profile, RuleHandle};
pub use translate::{translate, Rejected, Translation};
