//! Offline commands (no daemon): `flow parse` and `trace --flows-file`.

use crate::error::CliError;
use fallback::key::Field;
use fallback::ofproto::mac::MacTable;
use fallback::ofproto::syntax::{format_flow, format_megaflow, parse_flow, parse_packet};
use fallback::ofproto::table::Pipeline;
use fallback::ofproto::xlate::{xlate_traced, Bridge};
use fallback::ofproto::{ofport, Match, OfAction, Rule};
use flowmark::trace::{print_trace, trace_json};
use serde_json::json;
use std::path::Path;

pub fn flow_parse(flow: &str, json: bool) -> Result<(), CliError> {
    let rule = parse_flow(flow).map_err(CliError::Flow)?;
    let canonical = format_flow(&rule);
    if json {
        println!("{}", json!({ "flow": canonical }));
    } else {
        println!("{canonical}");
    }
    Ok(())
}

/// Reads rules: one ovs-ofctl flow per line, blank lines and `#` comments
/// skipped; an error names the file and line.
pub fn load_flows_file(path: &Path) -> Result<Vec<Rule>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    fallback::ofproto::syntax::parse_flows(&text).map_err(|(line, source)| CliError::FlowsFile {
        path: path.to_path_buf(),
        line,
        source,
    })
}

/// Ports the rules and the packet name: the default bridge for `trace`.
fn ports_named(rules: &[Rule], in_port: u32) -> Vec<u32> {
    let mut ports = vec![in_port];
    for r in rules {
        if r.r#match.mask.get(Field::InPort) != 0 {
            ports.push(r.r#match.value.get(Field::InPort) as u32);
        }
        for a in &r.actions {
            match *a {
                OfAction::Output(p) if p < ofport::MAX => ports.push(p),
                OfAction::Resubmit { port: Some(p), .. } if p < ofport::MAX => ports.push(p),
                _ => {}
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

pub fn trace(
    flows_file: &Path,
    ports: Option<&[u32]>,
    packet: &str,
    json: bool,
) -> Result<(), CliError> {
    let rules = load_flows_file(flows_file)?;
    let key = parse_packet(packet).map_err(CliError::Packet)?;
    let mut pipeline = Pipeline::new();
    for r in &rules {
        pipeline.add(r.clone());
    }
    let mut ports = match ports {
        Some(p) => p.to_vec(),
        None => ports_named(&rules, key.in_port()),
    };
    ports.sort_unstable();
    ports.dedup();
    let macs = MacTable::default();
    let x = xlate_traced(
        Bridge {
            pipeline: &pipeline,
            macs: &macs,
            ports: &ports,
            widen_l4: None,
        },
        &key,
    );
    let megaflow = format_megaflow(&Match {
        value: key.masked(&x.mask),
        mask: x.mask,
    });
    if json {
        let doc = trace_json(&pipeline, &x, &megaflow);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_trace(&pipeline, &x, packet, &megaflow);
    }
    Ok(())
}

/// `flowmark translate`: the testpmd `flow create` line for a megaflow, or
/// the rejection reason.
pub fn translate(
    megaflow: &str,
    profile: &str,
    port_id: u16,
    n_rxq: u16,
    json: bool,
) -> Result<(), CliError> {
    let m = fallback::ofproto::syntax::parse_megaflow(megaflow).map_err(CliError::Flow)?;
    let profile =
        offload::device::Profile::from_name(profile).map_err(|e| CliError::Usage(e.to_string()))?;
    let caps = profile.capabilities();
    // Mark 1 stands for the mark the offload worker would allocate.
    let verdict = offload::translate::translate(&m, &caps, 1, n_rxq.max(1));
    let (rule, reason, exact) = match &verdict {
        Ok(t) => match t.rule.testpmd_create(port_id) {
            Ok(line) => (Some(line), None, t.exact),
            Err(e) => (
                None,
                Some(format!("the rule cannot be written for testpmd: {e}")),
                false,
            ),
        },
        Err(rej) => (None, Some(rej.to_string()), false),
    };
    if json {
        let doc = json!({
            "verdict": if rule.is_some() { "offload" } else { "rejected" },
            "rule": rule,
            "reason": reason,
            "exact": exact,
        });
        println!("{doc}");
    } else {
        match (rule, reason) {
            (Some(line), _) => {
                println!("{line}");
                if !exact {
                    println!("# narrower than the megaflow: the packets it misses take the software path");
                }
            }
            (None, reason) => println!("rejected: {}", reason.unwrap_or_default()),
        }
    }
    Ok(())
}
