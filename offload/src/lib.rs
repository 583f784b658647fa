//! flowmark's offload engine: the rte_flow model, megaflow → rte_flow
//! translation, the mark pool and the offload worker.

pub mod device;
pub mod rte;
pub mod translate;

pub use device::{Capabilities, Counters, FlowDevice, FlowError, Profile, RuleHandle};
pub use translate::{translate, Rejected, Translation};
