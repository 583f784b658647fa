//! The `flowmark` binary: the daemon, its control commands and the offline
//! tools (DESIGN §5).

#![forbid(unsafe_code)]

mod bench;
mod cli;
mod error;
mod offline;
mod top;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// glibc's malloc by default; `--features mimalloc` for mimalloc, whose
// thread-local heaps cut an offload insert's instructions by about 8 % but
// held 692 bytes of resident memory per OpenFlow rule against glibc's 378
// at 1,000,000 rules (BENCHMARKS.md, "Memory per rule").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "flowmark",
    version = flowmark::VERSION,
    about = "A hardware-offload-first userspace switch"
)]
struct Cli {
    /// Control socket of a running daemon (default: $FLOWMARK_SOCKET, else
    /// /run/flowmark/flowmark.sock).
    #[arg(long, global = true, env = "FLOWMARK_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded default: the emulated offload NICs nic0/nic1 and VM port
    /// vm0 (OpenFlow ports 1, 2, 3), the sample GTP rules and generated
    /// traffic; a line per second, then the offload status and accounting.
    Demo(DemoArgs),
    /// The daemon: the configured ports (default: the testbed nic0, nic1,
    /// vm0), PMD threads, NIC offload and the control socket.
    Run(cli::RunArgs),
    #[command(flatten)]
    Control(cli::ControlCommand),
    /// OpenFlow rules: `flow parse "FLOW"` (offline) prints the canonical
    /// form; add, del, mod and dump talk to the daemon.
    Flow {
        #[command(subcommand)]
        command: FlowCommand,
    },
    /// Traces a packet (in ovs-ofctl match syntax) through rules read from a
    /// file, or without --flows-file through the running daemon's pipeline
    /// and MAC table (plus the offload verdict): tables and rules visited,
    /// datapath actions, megaflow.
    Trace {
        /// The rules, one ovs-ofctl flow per line (`#` starts a comment).
        #[arg(long)]
        flows_file: Option<PathBuf>,
        /// The bridge's OpenFlow ports, e.g. `1,2,3` (FLOOD and NORMAL output
        /// to these). Default: every port the rules and the packet name.
        #[arg(long, value_delimiter = ',')]
        ports: Option<Vec<u32>>,
        #[arg(long)]
        json: bool,
        /// e.g. `in_port=2,udp,nw_src=192.168.200.3,nw_dst=10.1.0.9,tp_src=4000,tp_dst=2152`
        packet: String,
    },
    /// The testpmd `flow create` line for a megaflow (in `ofproto/trace`'s
    /// `Megaflow:` syntax or plain match syntax), or the rejection reason.
    Translate {
        /// NIC capability profile: generic, xl710, no-mark, tiny.
        #[arg(long, default_value = "generic")]
        profile: String,
        /// DPDK port id written in the rule.
        #[arg(long, default_value_t = 0)]
        port_id: u16,
        /// Rx queues the RSS action spreads over.
        #[arg(long, default_value_t = 1)]
        rxqs: u16,
        #[arg(long)]
        json: bool,
        megaflow: String,
    },
    /// Churn and fault soak on the testbed with misforwarding, mark,
    /// accounting, leak and memory checks; exits non-zero when one fails.
    Soak {
        /// Run time.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        #[arg(long)]
        json: bool,
    },
    /// A live view of a running daemon: per-port rates, path shares,
    /// offload states and failures, top megaflows by packet rate; q quits.
    Top {
        /// Print one frame (rates from two samples --interval apart) and exit.
        #[arg(long)]
        once: bool,
        /// Seconds between samples.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// One frame's document as JSON (implies --once).
        #[arg(long)]
        json: bool,
    },
    /// Microbenchmarks of the datapath stages (figures, not pass/fail).
    Bench {
        /// A reduced set that finishes in seconds.
        #[arg(long)]
        quick: bool,
        /// One JSON object per line, a case each.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum FlowCommand {
    /// Prints a flow in canonical form (as `ovs-ofctl parse-flow` prints it
    /// after `ADD `), or the error.
    Parse {
        #[arg(long)]
        json: bool,
        flow: String,
    },
    #[command(flatten)]
    Control(cli::FlowControl),
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Distinct flows of generated traffic.
    #[arg(long, default_value_t = 10_000)]
    flows: usize,
    /// Run time.
    #[arg(long, conflicts_with = "packets")]
    seconds: Option<f64>,
    /// Send exactly this many packets (lossless), then drain.
    #[arg(long)]
    packets: Option<u64>,
    /// NIC capability profile: generic, xl710, no-mark, tiny.
    #[arg(long, default_value = "generic")]
    profile: String,
    /// Rules to load instead of the sample GTP rules (one flow a line).
    #[arg(long)]
    flows_file: Option<PathBuf>,
    /// Only the GTP traffic on the NIC ports (no VM-port share).
    #[arg(long)]
    nic_only: bool,
    /// Count transmitted packets per flow and report them (`per_flow_tx`).
    #[arg(long)]
    per_flow: bool,
    /// One JSON document (DESIGN §5's `demo` document) instead of lines.
    #[arg(long)]
    json: bool,
}

fn run_demo(args: DemoArgs) -> Result<(), error::CliError> {
    use flowmark::demo::{self, Amount, DemoOptions};
    let DemoArgs {
        flows,
        seconds,
        packets,
        profile,
        flows_file,
        nic_only,
        per_flow,
        json,
    } = args;
    let profile = offload::device::Profile::from_name(&profile)
        .map_err(|e| error::CliError::Usage(e.to_string()))?;
    let rules = match flows_file {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map_err(|source| error::CliError::Read { path, source })?,
        ),
        None => None,
    };
    let amount = match (seconds, packets) {
        (_, Some(n)) => Amount::Packets(n),
        (Some(s), None) if s > 0.0 && s.is_finite() => Amount::Seconds(s),
        (Some(s), None) => {
            return Err(error::CliError::Usage(format!(
                "--seconds {s}: give a positive number of seconds"
            )))
        }
        (None, None) => Amount::Seconds(5.0),
    };
    let opts = DemoOptions {
        flows: flows.max(1),
        amount,
        profile,
        live: !json,
        rules,
        nic_only,
        capture: per_flow,
        ..DemoOptions::default()
    };
    let mut stdout = std::io::stdout();
    let report = demo::run(&opts, &mut stdout).map_err(|e| error::CliError::Demo(e.to_string()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        demo::print_report(&report, &mut stdout)
            .map_err(|e| error::CliError::Demo(e.to_string()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => run_demo(args),
        Command::Run(args) => cli::run(args, cli.socket).map_err(Into::into),
        Command::Control(cmd) => cli::control(cli.socket, cmd).map_err(Into::into),
        Command::Flow {
            command: FlowCommand::Control(cmd),
        } => cli::flow(cli.socket, cmd).map_err(Into::into),
        Command::Flow {
            command: FlowCommand::Parse { json, flow },
        } => offline::flow_parse(&flow, json),
        Command::Trace {
            flows_file: None,
            json,
            packet,
            ..
        } => cli::trace(cli.socket, packet, json).map_err(Into::into),
        Command::Trace {
            flows_file: Some(flows_file),
            ports,
            json,
            packet,
        } => offline::trace(&flows_file, ports.as_deref(), &packet, json),
        Command::Translate {
            profile,
            port_id,
            rxqs,
            json,
            megaflow,
        } => offline::translate(&megaflow, &profile, port_id, rxqs, json),
        Command::Bench { quick, json } => bench::run(quick, json),
        Command::Top {
            once,
            interval,
            json,
        } => top::run(cli::socket_path(cli.socket), once, interval, json).map_err(Into::into),
        Command::Soak { seconds, json } => return flowmark::soak::main(seconds, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowmark: {e}");
            ExitCode::FAILURE
        }
    }
}
