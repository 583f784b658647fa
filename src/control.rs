//! The control protocol: newline-delimited JSON over a Unix socket. A
//! request is one JSON object with a `cmd` and its arguments, e.g.
//! `{"cmd":"flow_add","flows":["priority=1,ip,actions=drop"]}`; the reply is
//! one object, `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`.
//! The `result` documents are DESIGN §5's.
//!
//! [`decode_request`] never panics: any bytes give a request or a
//! [`DecodeError`] that says what is wrong.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest request line the daemon reads (a large `flow add --file`
/// fits; a runaway client does not exhaust memory).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Every command, as spelt in `cmd`.
pub const COMMANDS: &[&str] = &[
    "port_add",
    "port_del",
    "port_list",
    "port_stats",
    "port_inject",
    "port_capture",
    "flow_add",
    "flow_del",
    "flow_mod",
    "flow_dump",
    "megaflow_dump",
    "offload_status",
    "pmd_stats",
    "pmd_rxqs",
    "trace",
    "nic_reset",
    "version",
];

/// Commands without arguments.
const ARGUMENTLESS: &[&str] = &[
    "port_list",
    "port_stats",
    "offload_status",
    "pmd_rxqs",
    "version",
];

/// A control request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// `port add NAME --type T [--devargs S] [--rxqs N] [--profile P]`.
    PortAdd {
        name: String,
        #[serde(rename = "type")]
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        devargs: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rxqs: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profile: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ofport: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        socket: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<String>,
    },
    PortDel {
        name: String,
    },
    PortList,
    PortStats,
    /// Testbed ports: frames from a pcap file (read by the daemon) or
    /// generated (`flows=N,count=M[,kind=K][,rate=PPS][,size=B][,seed=S]`).
    PortInject {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pcap: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        generate: Option<String>,
    },
    /// Flows in ovs-ofctl syntax; or the text of a flows file (one flow a
    /// line, `#` comments) with its name for the messages.
    FlowAdd {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        flows: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_name: Option<String>,
    },
    /// `flow del ["MATCH"]` as `ovs-ofctl del-flows`: the match may name
    /// `table=` and, with `strict`, `priority=`.
    FlowDel {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#match: Option<String>,
        #[serde(default)]
        strict: bool,
    },
    /// `flow mod "FLOW"` as `ovs-ofctl mod-flows`: the rules selected by the
    /// flow's match get its actions.
    FlowMod {
        flow: String,
        #[serde(default)]
        strict: bool,
    },
    FlowDump {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        table: Option<u8>,
    },
    MegaflowDump {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
    },
    OffloadStatus,
    PmdStats {
        #[serde(default)]
        clear: bool,
    },
    PmdRxqs,
    Trace {
        packet: String,
    },
    /// The frames a testbed port transmitted since the last capture
    /// (`{name, frames: [HEX]}`, oldest first).
    PortCapture {
        name: String,
    },
    /// Fault injection: the testbed NIC loses every rule.
    NicReset {
        name: String,
    },
    Version,
}

impl Request {
    /// The `cmd` of this request.
    pub fn command(&self) -> &'static str {
        match self {
            Request::PortAdd { .. } => "port_add",
            Request::PortDel { .. } => "port_del",
            Request::PortList => "port_list",
            Request::PortStats => "port_stats",
            Request::PortInject { .. } => "port_inject",
            Request::FlowAdd { .. } => "flow_add",
            Request::FlowDel { .. } => "flow_del",
            Request::FlowMod { .. } => "flow_mod",
            Request::FlowDump { .. } => "flow_dump",
            Request::MegaflowDump { .. } => "megaflow_dump",
            Request::OffloadStatus => "offload_status",
            Request::PmdStats { .. } => "pmd_stats",
            Request::PmdRxqs => "pmd_rxqs",
            Request::Trace { .. } => "trace",
            Request::NicReset { .. } => "nic_reset",
            Request::PortCapture { .. } => "port_capture",
            Request::Version => "version",
        }
    }
}

/// A reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: Value) -> Response {
        Response {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(message.into()),
        }
    }

    /// One line of JSON, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"ok":false,"error":"cannot encode the reply: {e}"}}"#)
        });
        s.push('\n');
        s
    }
}

/// Why a request line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "request too long ({0} bytes; at most {MAX_REQUEST_BYTES}): send a flows file in parts"
    )]
    TooLong(usize),
    #[error(
        "malformed request: {0}; send one JSON object per line, e.g. {{\"cmd\":\"port_list\"}}"
    )]
    Malformed(String),
    #[error(
        "a request is a JSON object with a \"cmd\" field, e.g. {{\"cmd\":\"port_list\"}}; got {0}"
    )]
    NotACommand(String),
    #[error("unknown command {0:?}; the commands are: {list}", list = COMMANDS.join(", "))]
    UnknownCommand(String),
    #[error("bad arguments for {cmd}: {message}")]
    BadArguments { cmd: String, message: String },
}

/// Decodes one request line (without its newline).
pub fn decode_request(line: &[u8]) -> Result<Request, DecodeError> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(DecodeError::TooLong(line.len()));
    }
    let value: Value =
        serde_json::from_slice(line).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let cmd = match value.get("cmd") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(DecodeError::NotACommand(format!("cmd = {other}"))),
        None => {
            let kind = match &value {
                Value::Object(_) => "an object without \"cmd\"".to_string(),
                Value::Array(_) => "an array".to_string(),
                other => format!("{other}"),
            };
            return Err(DecodeError::NotACommand(kind));
        }
    };
    if !COMMANDS.contains(&cmd.as_str()) {
        return Err(DecodeError::UnknownCommand(cmd));
    }
    // serde's deny_unknown_fields does not reach the argument-less variants.
    if ARGUMENTLESS.contains(&cmd.as_str()) {
        if let Some(extra) = value
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "cmd"))
        {
            return Err(DecodeError::BadArguments {
                message: format!("unknown field `{extra}`: {cmd} takes no arguments"),
                cmd,
            });
        }
    }
    serde_json::from_value(value).map_err(|e| DecodeError::BadArguments {
        cmd,
        message: e.to_string(),
    })
}

/// Errors of the client side (the CLI's control commands).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {path}: {source}; is `flowmark run` running with this --socket (or $FLOWMARK_SOCKET)?")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lost the connection to the daemon at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon closed the connection without answering (see its log)")]
    NoReply,
    #[error("unreadable reply from the daemon: {0}")]
    BadReply(String),
    /// The daemon's error message.
    #[error("{0}")]
    Daemon(String),
}

/// Sends one request and waits for its reply's `result`.
pub fn call(
    socket: &Path,
    request: &Request,
    timeout: Option<Duration>,
) -> Result<Value, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let io = |source| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    stream.set_read_timeout(timeout).map_err(io)?;
    let mut line =
        serde_json::to_string(request).map_err(|e| ClientError::BadReply(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut reply = String::new();
    let n = reader.read_line(&mut reply).map_err(io)?;
    if n == 0 {
        return Err(ClientError::NoReply);
    }
    let resp: Response =
        serde_json::from_str(&reply).map_err(|e| ClientError::BadReply(e.to_string()))?;
    if resp.ok {
        Ok(resp.result.unwrap_or(Value::Null))
    } else {
        Err(ClientError::Daemon(
            resp.error
                .unwrap_or_else(|| "the daemon refused the request".into()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let reqs = vec![
            Request::PortList,
            Request::PortAdd {
                name: "p".into(),
                kind: "testbed-vm".into(),
                devargs: None,
                rxqs: Some(2),
                profile: None,
                ofport: None,
                socket: None,
                mode: None,
            },
            Request::FlowAdd {
                flows: vec!["actions=drop".into()],
                file_text: None,
                file_name: None,
            },
            Request::FlowDel {
                r#match: Some("ip".into()),
                strict: false,
            },
            Request::PmdStats { clear: true },
        ];
        for r in reqs {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(decode_request(line.as_bytes()).unwrap(), r, "{line}");
        }
        assert_eq!(
            decode_request(br#"{"cmd":"port_list"}"#).unwrap(),
            Request::PortList
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = decode_request(b"{not json").unwrap_err().to_string();
        assert!(e.starts_with("malformed request"), "{e}");
        let e = decode_request(br#"{"cmd":"frobnicate"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown command \"frobnicate\""), "{e}");
        let e = decode_request(br#"{"cmd":"port_del"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad arguments for port_del") && e.contains("name"),
            "{e}"
        );
        let e = decode_request(br#"{"cmd":"port_list","bogus":1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = decode_request(b"[1,2]").unwrap_err().to_string();
        assert!(e.contains("an array"), "{e}");
        let e = decode_request(br#"{"cmd":7}"#).unwrap_err().to_string();
        assert!(e.contains("cmd = 7"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::test_env::cases(256)))]
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&bytes);
        }

        #[test]
        fn decoder_never_panics_on_near_requests(
            cmd in proptest::sample::select(COMMANDS.to_vec()),
            key in "[a-z_]{1,8}",
            val in prop_oneof![Just("1".to_string()), Just("\"x\"".to_string()), Just("null".to_string()), Just("[]".to_string()), Just("{}".to_string()), Just("-1".to_string()), Just("1e99".to_string())],
        ) {
            let line = format!(r#"{{"cmd":"{cmd}","{key}":{val}}}"#);
            let _ = decode_request(line.as_bytes());
        }
    }
}
