//! OpenFlow 1.3 on the wire, so that ovs-ofctl and SDN controllers can
//! drive flowmark (issue 8).
//!
//! * [`message`], [`oxm`], [`action`]: the codec — pure, no I/O. [`decode`]
//!   reads one message and never panics.
//! * [`flow_table`]: flow mods and stats requests applied to a
//!   [`fallback::ofproto::table::Pipeline`] with OVS semantics.
//! * [`session`]: the per-connection state machine (bytes in, bytes out).
//! * [`switch`]: the [`switch::OpenFlowSwitch`] trait the sessions drive
//!   (the tests have an in-memory implementation).
//! * [`net`]: the thin socket layer — a passive listener and an active
//!   connection to a controller with back-off, over TCP or [`tls`].

pub mod action;
pub mod error;
pub mod message;
pub mod oxm;
pub mod port;
pub mod wire;

pub use error::{DecodeError, OfpError};
pub use message::{decode, encode, Envelope, Message};
pub mod daemon;
pub mod flow_table;
pub mod group_table;
pub mod meter_table;
pub mod net;
pub mod session;
pub mod switch;
pub mod tls;
