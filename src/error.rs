//! The CLI's errors: each says what went wrong and, where it can, what to do.

use fallback::ofproto::syntax::FlowParseError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("bad flow: {0}")]
    Flow(FlowParseError),
    #[error("bad packet: {0} (give the packet in ovs-ofctl match syntax, e.g. in_port=1,udp,nw_dst=10.0.0.1,tp_dst=53)")]
    Packet(FlowParseError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {source}")]
    FlowsFile {
        path: PathBuf,
        line: usize,
        source: FlowParseError,
    },
    #[error("{0}")]
    Usage(String),
    #[error("demo: {0}")]
    Demo(String),
    #[error("bench: {0}")]
    Bench(String),
    #[error(transparent)]
    Control(#[from] crate::cli::ControlCliError),
    #[error(transparent)]
    Top(#[from] crate::top::TopError),
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
}
