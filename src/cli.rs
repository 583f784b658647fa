//! `flowmark run` and the control commands that talk to it over the
//! control socket: argument parsing, the request each sends, and the
//! tables printed for people (`--json` prints the reply's document).

use clap::{Args, Subcommand};
use flowmark::config::Config;
use flowmark::control::{self, ClientError, Request};
use flowmark::daemon::{self, DaemonOptions};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The control socket when neither --socket nor $FLOWMARK_SOCKET is given.
pub const DEFAULT_SOCKET: &str = "/run/flowmark/flowmark.sock";

#[derive(Debug, thiserror::Error)]
pub enum ControlCliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Config(#[from] flowmark::config::ConfigError),
    #[error(transparent)]
    Daemon(#[from] daemon::DaemonError),
    #[error("{0}")]
    Log(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

type Result<T> = std::result::Result<T, ControlCliError>;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// TOML config (DESIGN §5); without it, the default testbed: nic0,
    /// nic1 (emulated offload NICs) and vm0 as OpenFlow ports 1, 2, 3.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// critical, error, warning, info, debug or trace.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Log JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

/// Control commands (they need a running `flowmark run`).
#[derive(Subcommand, Debug)]
pub enum ControlCommand {
    /// Ports: add, del, list, stats, inject.
    Port {
        #[command(subcommand)]
        command: PortCommand,
    },
    /// Datapath megaflows.
    Megaflow {
        #[command(subcommand)]
        command: MegaflowCommand,
    },
    /// NIC offload.
    Offload {
        #[command(subcommand)]
        command: OffloadCommand,
    },
    /// PMD threads.
    Pmd {
        #[command(subcommand)]
        command: PmdCommand,
    },
    /// Emulated NIC fault injection.
    Nic {
        #[command(subcommand)]
        command: NicCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum PortCommand {
    /// Adds a port.
    Add {
        name: String,
        /// testbed-nic, testbed-vm; with --features dpdk also dpdk, vhost,
        /// testbed-nic-dpdk.
        #[arg(long = "type")]
        kind: String,
        /// DPDK device arguments (type dpdk).
        #[arg(long)]
        devargs: Option<String>,
        #[arg(long)]
        rxqs: Option<u16>,
        /// NIC capability profile (testbed-nic): generic, xl710, no-mark, tiny.
        #[arg(long)]
        profile: Option<String>,
        /// OpenFlow port number (default: the lowest free one).
        #[arg(long)]
        ofport: Option<u32>,
        /// vhost-user socket path (type vhost).
        #[arg(long)]
        vhost_socket: Option<String>,
        /// vhost-user mode: server or client (type vhost).
        #[arg(long)]
        vhost_mode: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Removes a port (its megaflows and NIC rules go with it).
    Del {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// `[{name, ofport, type, rxqs, flow_device}]`.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Per-port accounting (DESIGN §6).
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Sends test traffic into a testbed port.
    Inject {
        name: String,
        /// Frames from a pcap file.
        #[arg(
            long,
            conflicts_with = "generate",
            required_unless_present = "generate"
        )]
        pcap: Option<PathBuf>,
        /// flows=N,count=M[,kind=udp|tcp|mix|gtp-up|gtp-down][,rate=PPS][,size=B][,seed=S]
        #[arg(long)]
        generate: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Takes the frames a testbed port transmitted since the last capture
    /// (up to 1024 are kept): one hex line each, oldest first.
    Capture {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

/// The OpenFlow rule commands that need the daemon (`flow parse` is offline).
#[derive(Subcommand, Debug)]
pub enum FlowControl {
    /// Adds a flow, or every flow of a file (`--file`).
    Add {
        /// e.g. "priority=1,in_port=1,udp,actions=output:2"
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        flow: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Deletes the flows the match selects (all flows without one), as
    /// `ovs-ofctl del-flows`.
    Del {
        /// e.g. "table=0,in_port=2,udp"; with --strict also "priority=N".
        r#match: Option<String>,
        /// Only the flow with exactly this match and priority.
        #[arg(long)]
        strict: bool,
        #[arg(long)]
        json: bool,
    },
    /// Gives the flows the match selects the flow's actions, as
    /// `ovs-ofctl mod-flows`.
    Mod {
        /// e.g. "in_port=2,udp actions=output:3"
        flow: String,
        #[arg(long)]
        strict: bool,
        #[arg(long)]
        json: bool,
    },
    /// The flows with their counters, as `ovs-ofctl dump-flows`.
    Dump {
        #[arg(long)]
        table: Option<u8>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum MegaflowCommand {
    /// Every megaflow with its offload state.
    Dump {
        /// software, pending, offloaded, rejected, failed or removing.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum OffloadCommand {
    /// Per-port rules, marks, insert rate and latency; megaflows by state.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PmdCommand {
    /// Per-PMD counters (`--clear` zeroes them after printing).
    Stats {
        #[arg(long)]
        clear: bool,
        #[arg(long)]
        json: bool,
    },
    /// Which PMD polls which rx queue.
    Rxqs {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum NicCommand {
    /// The emulated NIC loses every rule, as on a device reset.
    Reset {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

/// The socket to use: --socket, else $FLOWMARK_SOCKET (clap reads both),
/// else the default.
pub fn socket_path(socket: Option<PathBuf>) -> PathBuf {
    socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// `flowmark run`.
pub fn run(args: RunArgs, socket: Option<PathBuf>) -> Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let (log, _guard) =
        daemon::log::logger(&args.log_level, args.log_json).map_err(ControlCliError::Log)?;
    flowmark::backend::run(DaemonOptions {
        config,
        config_path: args.config,
        socket: socket_path(socket),
        log,
        // The OpenFlow endpoint (`[openflow] listen` / `controller`).
        on_start: Some(flowmark::openflow::daemon::start_hook()),
    })?;
    Ok(())
}

fn call(socket: &Path, req: &Request) -> Result<Value> {
    Ok(control::call(socket, req, None)?)
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// `flowmark trace "PACKET"` against the daemon.
pub fn trace(socket: Option<PathBuf>, packet: String, json: bool) -> Result<()> {
    let v = call(&socket_path(socket), &Request::Trace { packet })?;
    if json {
        print_json(&v);
    } else {
        print!("{}", trace_text(&v));
    }
    Ok(())
}

pub fn flow(socket: Option<PathBuf>, cmd: FlowControl) -> Result<()> {
    let socket = socket_path(socket);
    match cmd {
        FlowControl::Add { flow, file, json } => {
            let req = match (flow, file) {
                (Some(f), None) => Request::FlowAdd {
                    flows: vec![f],
                    file_text: None,
                    file_name: None,
                },
                (None, Some(path)) => {
                    let text =
                        std::fs::read_to_string(&path).map_err(|source| ControlCliError::Read {
                            path: path.clone(),
                            source,
                        })?;
                    Request::FlowAdd {
                        flows: Vec::new(),
                        file_text: Some(text),
                        file_name: Some(path.display().to_string()),
                    }
                }
                _ => return Err(ControlCliError::Usage("give a flow or --file FILE".into())),
            };
            done(&call(&socket, &req)?, json);
        }
        FlowControl::Del {
            r#match,
            strict,
            json,
        } => done(&call(&socket, &Request::FlowDel { r#match, strict })?, json),
        FlowControl::Mod { flow, strict, json } => {
            done(&call(&socket, &Request::FlowMod { flow, strict })?, json)
        }
        FlowControl::Dump { table, json } => {
            let v = call(&socket, &Request::FlowDump { table })?;
            if json {
                print_json(&v);
            } else {
                for row in rows(&v) {
                    println!("{}", flow_line(row));
                }
            }
        }
    }
    Ok(())
}

pub fn control(socket: Option<PathBuf>, cmd: ControlCommand) -> Result<()> {
    let socket = socket_path(socket);
    let (req, json, text): (Request, bool, fn(&Value) -> String) = match cmd {
        ControlCommand::Port { command } => match command {
            PortCommand::Add {
                name,
                kind,
                devargs,
                rxqs,
                profile,
                ofport,
                vhost_socket,
                vhost_mode,
                json,
            } => (
                Request::PortAdd {
                    name,
                    kind,
                    devargs,
                    rxqs,
                    profile,
                    ofport,
                    socket: vhost_socket,
                    mode: vhost_mode,
                },
                json,
                |v| format!("added {} as OpenFlow port {}\n", s(&v["name"]), v["ofport"]),
            ),
            PortCommand::Del { name, json } => (Request::PortDel { name }, json, |v| {
                format!(
                    "removed {} (OpenFlow port {})\n",
                    s(&v["name"]),
                    v["ofport"]
                )
            }),
            PortCommand::List { json } => (Request::PortList, json, port_list_text),
            PortCommand::Stats { json } => (Request::PortStats, json, port_stats_text),
            PortCommand::Capture { name, json } => (Request::PortCapture { name }, json, |v| {
                v["frames"]
                    .as_array()
                    .map(|a| a.iter().map(|f| format!("{}\n", s(f))).collect())
                    .unwrap_or_default()
            }),
            PortCommand::Inject {
                name,
                pcap,
                generate,
                json,
            } => {
                // The daemon reads the file: give it a path it can resolve.
                let pcap = pcap.map(|p| std::path::absolute(&p).unwrap_or(p));
                (
                    Request::PortInject {
                        name,
                        pcap,
                        generate,
                    },
                    json,
                    |v| {
                        format!(
                            "injected {} packets ({} flows) into {} in {:.3} s\n",
                            v["packets"],
                            v["flows"],
                            s(&v["port"]),
                            v["seconds"].as_f64().unwrap_or(0.0)
                        )
                    },
                )
            }
        },
        ControlCommand::Megaflow {
            command: MegaflowCommand::Dump { state, json },
        } => (Request::MegaflowDump { state }, json, megaflow_text),
        ControlCommand::Offload {
            command: OffloadCommand::Status { json },
        } => (Request::OffloadStatus, json, offload_text),
        ControlCommand::Pmd { command } => match command {
            PmdCommand::Stats { clear, json } => {
                (Request::PmdStats { clear }, json, pmd_stats_text)
            }
            PmdCommand::Rxqs { json } => (Request::PmdRxqs, json, rxqs_text),
        },
        ControlCommand::Nic {
            command: NicCommand::Reset { name, json },
        } => (Request::NicReset { name }, json, |v| {
            format!(
                "{}: reset; its megaflows are offered again\n",
                s(&v["name"])
            )
        }),
    };
    let v = call(&socket, &req)?;
    if json {
        print_json(&v);
    } else {
        print!("{}", text(&v));
    }
    Ok(())
}

/// Replies of commands that change things: the document, or a short line.
fn done(v: &Value, json: bool) {
    if json {
        print_json(v);
    } else if let Some(obj) = v.as_object() {
        let parts: Vec<String> = obj.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("{}", parts.join(", "));
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn rows(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn flow_line(r: &Value) -> String {
    let mut line = format!(
        " cookie={:#x}, duration={:.3}s, table={}, n_packets={}, n_bytes={}, ",
        u(&r["cookie"]),
        r["duration_s"].as_f64().unwrap_or(0.0),
        u(&r["table"]),
        u(&r["n_packets"]),
        u(&r["n_bytes"])
    );
    for t in ["idle_timeout", "hard_timeout"] {
        if u(&r[t]) != 0 {
            let _ = write!(line, "{t}={}, ", u(&r[t]));
        }
    }
    let prio = u(&r["priority"]);
    let m = s(&r["match"]);
    let m = if m == "-" { String::new() } else { m };
    let mut head = Vec::new();
    if prio != u64::from(fallback::ofproto::Rule::DEFAULT_PRIORITY) {
        head.push(format!("priority={prio}"));
    }
    if !m.is_empty() {
        head.push(m);
    }
    if !head.is_empty() {
        line.push_str(&head.join(","));
        line.push(' ');
    }
    let _ = write!(line, "actions={}", s(&r["actions"]));
    line
}

fn reasons(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .filter(|(_, n)| u(n) > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    }
}

fn port_list_text(v: &Value) -> String {
    let mut out = format!(
        "{:<12} {:>6} {:<18} {:>4} {}\n",
        "NAME", "OFPORT", "TYPE", "RXQS", "FLOW_DEVICE"
    );
    for r in rows(v) {
        let _ = writeln!(
            out,
            "{:<12} {:>6} {:<18} {:>4} {}",
            s(&r["name"]),
            u(&r["ofport"]),
            s(&r["type"]),
            u(&r["rxqs"]),
            if r["flow_device"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            }
        );
    }
    out
}

fn port_stats_text(v: &Value) -> String {
    let mut out = format!(
        "{:<12} {:>12} {:>12} {:>10} {:>12} {:>12} {:>10}  DROP REASONS\n",
        "PORT", "RX", "FORWARDED", "RX_DROP", "TX_ATTEMPTED", "TX", "TX_DROP"
    );
    for r in rows(v) {
        let sum = |d: &Value| d.as_object().map_or(0, |m| m.values().map(u).sum::<u64>());
        let (rxd, txd) = (sum(&r["rx_dropped"]), sum(&r["tx_dropped"]));
        let _ = writeln!(
            out,
            "{:<12} {:>12} {:>12} {:>10} {:>12} {:>12} {:>10}  {} {}",
            s(&r["name"]),
            u(&r["rx"]),
            u(&r["forwarded"]),
            rxd,
            u(&r["tx_attempted"]),
            u(&r["tx"]),
            txd,
            reasons(&r["rx_dropped"]),
            reasons(&r["tx_dropped"]),
        );
    }
    out
}

fn megaflow_text(v: &Value) -> String {
    let mut out = String::new();
    for r in rows(v) {
        let actions: Vec<String> = rows(&r["actions"]).iter().map(s).collect();
        let actions = if actions.is_empty() {
            "drop".to_string()
        } else {
            actions.join(",")
        };
        let _ = write!(
            out,
            "ufid:{}, {}, packets:{}, bytes:{}, used:{:.3}s, port:{}, pmds:{}, offload:{}",
            s(&r["ufid"]),
            s(&r["megaflow"]),
            u(&r["packets"]),
            u(&r["bytes"]),
            u(&r["used_ms_ago"]) as f64 / 1000.0,
            s(&r["port"]),
            rows(&r["pmds"]).iter().map(s).collect::<Vec<_>>().join("+"),
            s(&r["state"]),
        );
        if !r["mark"].is_null() {
            let _ = write!(out, ", mark:{}", r["mark"]);
        }
        if !r["reason"].is_null() {
            let _ = write!(out, ", reason:{}", s(&r["reason"]));
        }
        let _ = writeln!(out, ", actions:{actions}");
    }
    out
}

fn offload_text(v: &Value) -> String {
    let mut out = format!(
        "{:<12} {:>8} {:>8} {:>9} {:>6} {:>10} {:>9} {:>9} {:>9} {:>8}  FAILURES\n",
        "PORT",
        "RULES",
        "ON_NIC",
        "CAPACITY",
        "MARKS",
        "INSERTS/S",
        "INSERTED",
        "DELETED",
        "LAT_AVG",
        "LAT_P99"
    );
    for p in rows(&v["ports"]) {
        let _ = writeln!(
            out,
            "{:<12} {:>8} {:>8} {:>9} {:>6} {:>10.1} {:>9} {:>9} {:>8.1}us {:>6}us  {}",
            s(&p["name"]),
            u(&p["rules_installed"]),
            s(&p["device_rules"]),
            u(&p["capacity"]),
            u(&p["marks_in_use"]),
            p["inserts_per_s"].as_f64().unwrap_or(0.0),
            u(&p["inserted"]),
            u(&p["deleted"]),
            p["latency_us"]["avg"].as_f64().unwrap_or(0.0),
            u(&p["latency_us"]["p99"]),
            reasons(&p["failures"]),
        );
    }
    let states = v["states"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let _ = writeln!(out, "megaflows {}: {states}", u(&v["megaflows"]));
    for (title, key) in [("rejected", "rejected"), ("failed", "failed")] {
        if let Some(m) = v[key].as_object() {
            for (reason, n) in m {
                let _ = writeln!(out, "  {title} {n}: {reason}");
            }
        }
    }
    out
}

/// "core N", or "unpinned" for a PMD without a configured core.
fn core_text(core: &Value) -> String {
    if core.is_null() {
        "unpinned".to_string()
    } else {
        format!("core {core}")
    }
}

fn pmd_stats_text(v: &Value) -> String {
    let mut out = String::new();
    for p in rows(v) {
        let core = core_text(&p["core"]);
        let _ = writeln!(out, "pmd {} ({core}):", p["pmd"]);
        for (label, key) in [
            ("packets received", "packets"),
            ("mark hits", "mark_hits"),
            ("stale marks", "stale_marks"),
            ("simple match hits", "simple_hits"),
            ("emc hits", "emc_hits"),
            ("dpcls hits", "dpcls_hits"),
            ("upcalls", "upcalls"),
            ("lost (upcall budget)", "lost"),
            ("megaflows", "megaflows"),
            ("offload queue full", "offload_queue_full"),
        ] {
            let _ = writeln!(out, "  {label}: {}", u(&p[key]));
        }
        let _ = writeln!(
            out,
            "  cycles/packet: {:.1}\n  subtables/dpcls hit: {:.2}",
            p["cycles_per_packet"].as_f64().unwrap_or(0.0),
            p["subtables_per_dpcls_hit"].as_f64().unwrap_or(0.0)
        );
        let up = &p["upcall_cycles"];
        let us = |k: &str| up[k].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "  upcall cycles p50/p99/max: {} / {} / {} ({:.1} / {:.1} / {:.1} us)",
            u(&up["p50_cycles"]),
            u(&up["p99_cycles"]),
            u(&up["max_cycles"]),
            us("p50_us"),
            us("p99_us"),
            us("max_us")
        );
    }
    out
}

fn rxqs_text(v: &Value) -> String {
    let mut out = String::new();
    for r in rows(v) {
        let core = core_text(&r["core"]);
        let _ = writeln!(
            out,
            "pmd {} ({core}): port {:<12} queue {}",
            r["pmd"],
            s(&r["port"]),
            r["queue"]
        );
    }
    out
}

fn trace_text(v: &Value) -> String {
    let mut out = format!("Flow: {}\n\n", s(&v["packet"]));
    for t in rows(&v["tables"]) {
        let indent = "    ".repeat(u(&t["depth"]) as usize);
        match &t["rule"] {
            Value::Null => {
                let _ = writeln!(out, "{indent}{:>2}. No match.", u(&t["table"]));
            }
            rule => {
                let _ = writeln!(out, "{indent}{:>2}. {}", u(&t["table"]), s(rule));
            }
        }
    }
    for n in rows(&v["notes"]) {
        let _ = writeln!(
            out,
            "{}    >> {}",
            "    ".repeat(u(&n["depth"]) as usize),
            s(&n["note"])
        );
    }
    let _ = writeln!(out, "\nMegaflow: {}", s(&v["megaflow"]));
    let actions: Vec<String> = rows(&v["actions"]).iter().map(s).collect();
    if actions.is_empty() {
        let why = v["drop_reason"].as_str().unwrap_or("drop_action");
        let _ = writeln!(out, "Datapath actions: drop ({why})");
    } else {
        let _ = writeln!(out, "Datapath actions: {}", actions.join(","));
    }
    let o = &v["offload"];
    match o["verdict"].as_str() {
        Some("offload") => {
            let _ = writeln!(out, "Offload: {}", s(&o["rule"]));
            if o["exact"].as_bool() == Some(false) {
                let _ = writeln!(
                    out,
                    "  (narrower than the megaflow: the packets it misses take the software path)"
                );
            }
        }
        Some(verdict) => {
            let _ = writeln!(out, "Offload: {verdict}: {}", s(&o["reason"]));
        }
        None => {}
    }
    out
}
