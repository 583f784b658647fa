//! Trace rendering shared by the offline `trace --flows-file` and the
//! daemon's `trace`: the tables and rules a packet visited, its datapath
//! actions and megaflow, as JSON and as text for people.

use fallback::actions::action_strings;
use fallback::ofproto::syntax::format_flow;
use fallback::ofproto::table::{Pipeline, RuleId};
use fallback::ofproto::xlate::{TraceStep, Xlation};
use serde_json::json;

/// A rule as `ovs-ofctl dump-flows` would show it (or a note that it went).
pub fn rule_text(pipeline: &Pipeline, id: RuleId) -> String {
    pipeline
        .get(id)
        .map(|e| format_flow(&e.to_rule()))
        .unwrap_or_else(|| format!("{id} (gone)"))
}

/// `{actions, megaflow, tables, notes, drop_reason}` (DESIGN §5's trace).
pub fn trace_json(pipeline: &Pipeline, x: &Xlation, megaflow: &str) -> serde_json::Value {
    let mut tables = Vec::new();
    let mut notes = Vec::new();
    for step in &x.trace {
        match step {
            TraceStep::Lookup {
                depth,
                table,
                in_port,
                rule,
            } => tables.push(json!({
                "table": table,
                "depth": depth,
                "in_port": in_port,
                "rule": rule.map(|id| rule_text(pipeline, id)),
            })),
            TraceStep::Note { depth, text } => notes.push(json!({"depth": depth, "note": text})),
            TraceStep::Group {
                depth,
                group,
                bucket,
            } => notes.push(json!({"depth": depth, "note": group_note(*group, *bucket)})),
        }
    }
    json!({
        "actions": action_strings(&x.actions),
        "megaflow": megaflow,
        "tables": tables,
        "notes": notes,
        "drop_reason": x.drop.map(|d| d.as_str()),
    })
}

/// "group 3: bucket 1" (as OVS's trace reports the bucket a group used),
/// or that no bucket was live.
fn group_note(group: u32, bucket: Option<usize>) -> String {
    match bucket {
        Some(b) => format!("group {group}: bucket {b}"),
        None => format!("group {group}: no live bucket, nothing done"),
    }
}

pub fn print_trace(pipeline: &Pipeline, x: &Xlation, packet: &str, megaflow: &str) {
    println!("Flow: {packet}\n");
    for step in &x.trace {
        match step {
            TraceStep::Lookup {
                depth, table, rule, ..
            } => {
                let indent = "    ".repeat(*depth);
                match rule {
                    Some(id) => println!("{indent}{table:>2}. {}", rule_text(pipeline, *id)),
                    None => println!("{indent}{table:>2}. No match."),
                }
            }
            TraceStep::Note { depth, text } => {
                println!("{}    >> {text}", "    ".repeat(*depth));
            }
            TraceStep::Group {
                depth,
                group,
                bucket,
            } => println!(
                "{}    >> {}",
                "    ".repeat(*depth),
                group_note(*group, *bucket)
            ),
        }
    }
    println!();
    println!("Megaflow: {megaflow}");
    if x.actions.is_empty() {
        let why = x.drop.map(|d| d.as_str()).unwrap_or("drop_action");
        println!("Datapath actions: drop ({why})");
    } else {
        println!("Datapath actions: {}", action_strings(&x.actions).join(","));
    }
}
