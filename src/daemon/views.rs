//! The documents the control commands answer with (DESIGN §5): rows of
//! `flow dump` and `megaflow dump`, `offload status`, `trace`.

use super::DaemonError;
use crate::switch::Switch;
use fallback::actions::action_strings;
use fallback::ofproto::syntax::{format_flow, format_match, format_megaflow, parse_packet};
use fallback::ofproto::table::RuleId;
use fallback::ofproto::xlate::{xlate_traced, Bridge};
use fallback::ofproto::{Match, Rule};
use fallback::port::PacketBuf;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Offload states, as `megaflow dump --state` takes them.
pub const STATES: &[&str] = &[
    "software",
    "pending",
    "offloaded",
    "rejected",
    "failed",
    "removing",
];

/// A `flow dump` row.
#[derive(Clone, Debug, Serialize)]
pub struct FlowEntry {
    pub table: u8,
    pub priority: u16,
    pub cookie: u64,
    pub r#match: String,
    pub actions: String,
    pub n_packets: u64,
    pub n_bytes: u64,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    pub duration_s: f64,
    #[serde(skip)]
    pub id: RuleId,
    #[serde(skip)]
    pub rule: Rule,
}

impl FlowEntry {
    pub fn new(id: RuleId, rule: &Rule, n_packets: u64, n_bytes: u64, age: Duration) -> FlowEntry {
        FlowEntry {
            table: rule.table,
            priority: rule.priority,
            cookie: rule.cookie,
            r#match: format_match(&rule.r#match),
            actions: actions_text(rule),
            n_packets,
            n_bytes,
            idle_timeout: rule.idle_timeout,
            hard_timeout: rule.hard_timeout,
            duration_s: (age.as_secs_f64() * 1000.0).round() / 1000.0,
            id,
            rule: rule.clone(),
        }
    }

    /// The `ovs-ofctl dump-flows` line.
    pub fn dump_line(&self) -> String {
        let mut s = format!(
            " cookie={:#x}, duration={:.3}s, table={}, n_packets={}, n_bytes={}, ",
            self.cookie, self.duration_s, self.table, self.n_packets, self.n_bytes
        );
        if self.idle_timeout != 0 {
            s.push_str(&format!("idle_timeout={}, ", self.idle_timeout));
        }
        if self.hard_timeout != 0 {
            s.push_str(&format!("hard_timeout={}, ", self.hard_timeout));
        }
        s.push_str(&match_and_actions(&self.rule));
        s
    }
}

/// `priority=P,MATCH actions=A` as format_flow prints it, without the
/// settings dump-flows shows in its own columns.
fn match_and_actions(rule: &Rule) -> String {
    format_flow(&Rule {
        table: 0,
        cookie: 0,
        idle_timeout: 0,
        hard_timeout: 0,
        ..rule.clone()
    })
}

fn actions_text(rule: &Rule) -> String {
    let text = match_and_actions(rule);
    match text.rfind("actions=") {
        Some(i) => text[i + "actions=".len()..].to_string(),
        None => text,
    }
}

/// A `megaflow dump` row: one per (ingress port, ufid), PMD copies merged.
#[derive(Clone, Debug, Serialize)]
pub struct MegaflowRow {
    pub ufid: String,
    pub megaflow: String,
    pub actions: Vec<String>,
    pub packets: u64,
    pub bytes: u64,
    pub used_ms_ago: u64,
    pub pmds: Vec<u32>,
    pub state: String,
    pub port: String,
    pub mark: Option<u32>,
    pub reason: Option<String>,
}

/// Every megaflow, PMD copies merged with the offload worker's view; one
/// the worker never saw (VM port, offload off, queue full) is `software`.
pub fn megaflows<B: PacketBuf + Clone + Send + 'static>(
    sw: &Switch<B>,
    now_ms: u64,
) -> Result<Vec<MegaflowRow>, DaemonError> {
    let names: HashMap<u32, String> = sw
        .ports()
        .iter()
        .map(|p| (p.ofport, p.name.clone()))
        .collect();
    let mut rows: BTreeMap<(u32, u128), (MegaflowRow, u64)> = BTreeMap::new();
    for (pmd, info) in sw.megaflows()? {
        let mf = &info.megaflow;
        let entry = rows.entry((info.ingress, info.ufid.0)).or_insert_with(|| {
            (
                MegaflowRow {
                    ufid: info.ufid.to_string(),
                    megaflow: format_megaflow(&mf.r#match),
                    actions: action_strings(mf.actions()),
                    packets: 0,
                    bytes: 0,
                    used_ms_ago: 0,
                    pmds: Vec::new(),
                    state: "software".into(),
                    port: names
                        .get(&info.ingress)
                        .cloned()
                        .unwrap_or_else(|| info.ingress.to_string()),
                    mark: None,
                    reason: None,
                },
                0,
            )
        });
        entry.0.packets += mf.stats.packets;
        entry.0.bytes += mf.stats.bytes;
        entry.0.pmds.push(pmd);
        entry.1 = entry.1.max(mf.stats.used);
    }
    for f in sw.offload_dump()? {
        if let Some((row, _)) = rows.get_mut(&(f.port, f.ufid.0)) {
            row.state = f.state.to_string();
            row.mark = f.mark;
            row.reason = f.reason;
        }
    }
    Ok(rows
        .into_values()
        .map(|(mut row, used)| {
            row.used_ms_ago = now_ms.saturating_sub(used);
            row.pmds.sort_unstable();
            row
        })
        .collect())
}

/// `offload status`: the worker's per-port figures with port names and the
/// device's own rule count, and the state of every megaflow (they add up
/// to the number of megaflows).
pub fn offload_status<B: PacketBuf + Clone + Send + 'static>(
    sw: &Switch<B>,
    device_rules: impl Fn(u32) -> Option<usize>,
) -> Result<Value, DaemonError> {
    let rows = megaflows(sw, 0)?;
    let mut states: BTreeMap<&str, usize> = STATES.iter().map(|s| (*s, 0)).collect();
    let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        if let Some(n) = states.get_mut(r.state.as_str()) {
            *n += 1;
        }
        let reason = || r.reason.clone().unwrap_or_else(|| "unknown".into());
        match r.state.as_str() {
            "rejected" => *rejected.entry(reason()).or_insert(0) += 1,
            "failed" => *failed.entry(reason()).or_insert(0) += 1,
            _ => {}
        }
    }
    let name_of = |ofport: u32| {
        sw.ports()
            .iter()
            .find(|p| p.ofport == ofport)
            .map_or_else(|| ofport.to_string(), |p| p.name.clone())
    };
    let (ports, extra) = match sw.offload_status() {
        None => (Vec::new(), json!({"enabled": false})),
        Some(status) => {
            let status = status?;
            let ports = status
                .ports
                .iter()
                .map(|p| {
                    json!({
                        "name": name_of(p.port),
                        "ofport": p.port,
                        "rules_installed": p.rules_installed,
                        "device_rules": device_rules(p.port),
                        "capacity": p.capacity,
                        "marks_in_use": p.marks_in_use,
                        "queue_depth": p.queue_depth,
                        "inserts_per_s": p.inserts_per_s,
                        "inserted": p.inserted,
                        "deleted": p.deleted,
                        "resets": p.resets,
                        "failures": p.failures,
                        "latency_us": p.latency_us,
                        "latency_histogram": p.latency_histogram,
                    })
                })
                .collect();
            (
                ports,
                json!({
                    "enabled": true,
                    "marks_in_use": status.marks_in_use,
                    "marks_quarantined": status.marks_quarantined,
                    "offload_queue_full": status.offload_queue_full,
                    "request_queue_len": status.request_queue_len,
                }),
            )
        }
    };
    Ok(json!({
        "ports": ports,
        "states": states,
        "megaflows": rows.len(),
        "rejected": rejected,
        "failed": failed,
        "worker": extra,
    }))
}

/// `trace "PACKET"` against the live pipeline and MAC table, with the
/// offload verdict for the megaflow it would make.
pub fn trace<B: PacketBuf + Clone + Send + 'static>(
    sw: &Switch<B>,
    packet: &str,
) -> Result<Value, DaemonError> {
    let key = parse_packet(packet).map_err(|source| DaemonError::Packet {
        packet: packet.to_string(),
        source,
    })?;
    let in_port = key.in_port();
    let mut ofports: Vec<u32> = sw.ports().iter().map(|p| p.ofport).collect();
    ofports.sort_unstable();
    let macs = sw.mac_table();
    let pipeline = sw.pipeline();
    let offloading = sw.offload_ofports();
    let x = xlate_traced(
        Bridge {
            pipeline,
            macs: &macs,
            ports: &ofports,
            widen_l4: Some(&offloading),
        },
        &key,
    );
    let m = Match {
        value: key.masked(&x.mask),
        mask: x.mask,
    };
    let software = |reason: String| json!({"verdict": "software", "rule": null, "reason": reason});
    let offload = match sw.ports().iter().find(|p| p.ofport == in_port) {
        None => software(format!(
            "no port has OpenFlow number {in_port}; give in_port of a port in `port list`"
        )),
        Some(p) => match (&p.flow_device, sw.config().offload) {
            (_, false) => software("offload is off (offload = false in the config)".into()),
            (None, true) => software(format!(
                "port {} has no flow device: its megaflows stay in software",
                p.name
            )),
            (Some(dev), true) => {
                let caps = dev.capabilities();
                match offload::translate::translate(&m, caps, 1, p.port.n_rxq().max(1)) {
                    Err(rej) => {
                        json!({"verdict": "rejected", "rule": null, "reason": rej.to_string()})
                    }
                    Ok(t) => match dev.validate(&t.rule) {
                        Err(e) => {
                            json!({"verdict": "rejected", "rule": null, "reason": e.to_string()})
                        }
                        Ok(()) => {
                            let port_id = u16::try_from(p.ofport).unwrap_or(u16::MAX);
                            match t.rule.testpmd_create(port_id) {
                                Ok(line) => {
                                    json!({"verdict": "offload", "rule": line, "reason": null, "exact": t.exact})
                                }
                                Err(e) => {
                                    json!({"verdict": "rejected", "rule": null, "reason": format!("the rule cannot be written for testpmd: {e}")})
                                }
                            }
                        }
                    },
                }
            }
        },
    };
    let mut doc = crate::trace::trace_json(pipeline, &x, &format_megaflow(&m));
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("packet".into(), json!(packet));
        obj.insert("offload".into(), offload);
    }
    Ok(doc)
}
