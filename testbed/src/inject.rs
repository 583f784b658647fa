//! The injection seam shared by the testbed's ports: where generated or
//! captured traffic enters (the NIC's wire, a VM guest's transmit ring).

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InjectError {
    #[error(
        "port {port} has stopped and takes no more traffic; build a new testbed to inject again"
    )]
    Stopped { port: String },
    #[error("no testbed port has OpenFlow port number {ofport}; the default testbed has 1 (nic0), 2 (nic1) and 3 (vm0)")]
    NoSuchPort { ofport: u32 },
}

/// Something frames can be injected into.
pub trait Inject: Send + Sync {
    /// The port the frames arrive on.
    fn port_name(&self) -> &str;

    /// Sends one frame into the port (copied into a pooled buffer). Blocks
    /// while the port's ingress is full when back-pressure is on.
    fn inject(&self, frame: &[u8]) -> Result<(), InjectError>;

    /// Returns once every frame injected before the call has been handled:
    /// placed on an rx ring, or dropped and counted.
    fn sync(&self) -> Result<(), InjectError>;
}
