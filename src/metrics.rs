//! Prometheus `/metrics` (`[metrics] listen`): the Prometheus text format
//! 0.0.4, written by the `prometheus` crate's encoder and served by
//! tiny_http. Every value is read at scrape time from what the daemon
//! already publishes for `port stats`, `pmd stats` and `offload status`
//! (one main-loop turn gathers a [`Scrape`]): nothing runs on a PMD's fast
//! path for it, and at quiescence the counters equal those documents.

use crate::daemon::DaemonHandle;
use crate::pmd::PmdSnapshot;
use crate::switch::NamedPortStats;
use fallback::port::DropReason;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use serde::Deserialize;
use serde_json::Value;
use slog::{debug, info, warn, Logger};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("[metrics] listen = \"{addr}\": cannot serve /metrics there: {message}; give a free IP:PORT (e.g. 127.0.0.1:9464) or remove [metrics]")]
    Listen { addr: SocketAddr, message: String },
    #[error("cannot start the metrics thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot encode the metrics: {0}")]
    Encode(#[from] prometheus::Error),
    #[error("the offload status document is not what the metrics expect: {0}")]
    Offload(serde_json::Error),
}

/// What one scrape reads, gathered in one turn of the daemon's main loop.
#[derive(Clone, Debug)]
pub struct Scrape {
    /// `port stats`.
    pub ports: Vec<NamedPortStats>,
    /// `pmd stats`.
    pub pmds: Vec<PmdSnapshot>,
    /// `offload status` (its JSON document).
    pub offload: Value,
    /// OpenFlow rules per table.
    pub rules_per_table: BTreeMap<u8, usize>,
    /// MAC-learning entries.
    pub mac_entries: usize,
}

/// The parts of the `offload status` document the metrics use.
#[derive(Debug, Default, Deserialize)]
struct OffloadDoc {
    #[serde(default)]
    ports: Vec<OffloadPortDoc>,
    #[serde(default)]
    states: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize)]
struct OffloadPortDoc {
    name: String,
    rules_installed: u64,
    capacity: u64,
    marks_in_use: u64,
    inserted: u64,
    deleted: u64,
    #[serde(default)]
    failures: BTreeMap<String, u64>,
    latency_histogram: LatencyDoc,
}

#[derive(Debug, Deserialize)]
struct LatencyDoc {
    count: u64,
    sum_us: u64,
    cumulative: Vec<u64>,
}

/// Builds one metric family at a time.
struct Family {
    mf: MetricFamily,
}

/// Label pairs, sorted by name (as the crate's own collectors write them).
fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    let mut pairs = pairs.to_vec();
    pairs.sort_by_key(|(k, _)| *k);
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_string());
        mf.set_help(help.to_string());
        mf.set_field_type(kind);
        Family { mf }
    }

    fn push(&mut self, pairs: &[(&str, &str)], fill: impl FnOnce(&mut Metric)) {
        let mut m = Metric::default();
        m.set_label(labels(pairs));
        fill(&mut m);
        self.mf.mut_metric().push(m);
    }

    fn counter(&mut self, pairs: &[(&str, &str)], v: u64) {
        self.push(pairs, |m| {
            let mut c = Counter::default();
            c.set_value(v as f64);
            m.set_counter(c);
        });
    }

    fn gauge(&mut self, pairs: &[(&str, &str)], v: f64) {
        self.push(pairs, |m| {
            let mut g = Gauge::default();
            g.set_value(v);
            m.set_gauge(g);
        });
    }
}

/// The scrape in the Prometheus text format 0.0.4.
pub fn encode(s: &Scrape) -> Result<String, MetricsError> {
    use MetricType::{COUNTER, GAUGE, HISTOGRAM};
    let mut out: Vec<Family> = Vec::new();

    let mut info = Family::new(
        "flowmark_build_info",
        "The flowmark build: version and git commit (value 1).",
        GAUGE,
    );
    info.gauge(
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", crate::GIT_COMMIT),
        ],
        1.0,
    );
    out.push(info);

    // Ports (DESIGN §6): both sides of the books.
    let mut rx = Family::new(
        "flowmark_port_rx_packets_total",
        "Packets received on the port.",
        COUNTER,
    );
    let mut fwd = Family::new(
        "flowmark_port_forwarded_packets_total",
        "Received packets sent on to an output or the controller.",
        COUNTER,
    );
    let mut rx_drop = Family::new(
        "flowmark_port_rx_dropped_packets_total",
        "Received packets dropped, by reason (rx = forwarded + dropped).",
        COUNTER,
    );
    let mut tx_att = Family::new(
        "flowmark_port_tx_attempted_packets_total",
        "Packets the datapath tried to send on the port (copies included).",
        COUNTER,
    );
    let mut tx = Family::new(
        "flowmark_port_tx_packets_total",
        "Packets sent on the port.",
        COUNTER,
    );
    let mut tx_drop = Family::new(
        "flowmark_port_tx_dropped_packets_total",
        "Packets not sent, by reason (tx_attempted = tx + dropped).",
        COUNTER,
    );
    let mut rx_bytes = Family::new(
        "flowmark_port_rx_bytes_total",
        "Bytes received on the port (frames without FCS).",
        COUNTER,
    );
    let mut tx_bytes = Family::new(
        "flowmark_port_tx_bytes_total",
        "Bytes sent on the port (frames without FCS).",
        COUNTER,
    );
    for p in &s.ports {
        let port = [("port", p.name.as_str())];
        rx.counter(&port, p.stats.rx);
        fwd.counter(&port, p.stats.forwarded);
        tx_att.counter(&port, p.stats.tx_attempted);
        tx.counter(&port, p.stats.tx);
        rx_bytes.counter(&port, p.stats.rx_bytes);
        tx_bytes.counter(&port, p.stats.tx_bytes);
        for (reason, n) in p.stats.rx_dropped.iter() {
            rx_drop.counter(&[("port", &p.name), ("reason", reason.name())], n);
        }
        for (reason, n) in p.stats.tx_dropped.iter() {
            tx_drop.counter(&[("port", &p.name), ("reason", reason.name())], n);
        }
    }
    out.extend([rx, fwd, rx_drop, tx_att, tx, tx_drop, rx_bytes, tx_bytes]);

    // PMDs: packets by path, cycles per packet.
    let mut pmd_packets = Family::new(
        "flowmark_pmd_packets_total",
        "Packets the PMD received.",
        COUNTER,
    );
    let mut path = Family::new(
        "flowmark_pmd_path_packets_total",
        "Packets by the path that classified them: mark (NIC mark), emc, dpcls, upcall.",
        COUNTER,
    );
    let mut lost = Family::new(
        "flowmark_pmd_lost_packets_total",
        "Packets dropped at the per-burst upcall budget.",
        COUNTER,
    );
    let mut cycles = Family::new(
        "flowmark_pmd_cycles_per_packet",
        "TSC cycles per packet on polls that received packets.",
        GAUGE,
    );
    let mut longest = Family::new(
        "flowmark_pmd_max_iteration_seconds",
        "The PMD's longest poll-loop iteration since start or a counter clear (control work included, idle naps not).",
        GAUGE,
    );
    let mut pmd_megaflows = Family::new(
        "flowmark_pmd_megaflows",
        "Megaflows in the PMD's datapath cache.",
        GAUGE,
    );
    for p in &s.pmds {
        let id = p.pmd.to_string();
        let pmd = [("pmd", id.as_str())];
        let c = &p.counters;
        pmd_packets.counter(&pmd, c.packets);
        for (name, n) in [
            ("mark", c.mark_hits),
            ("simple", c.simple_hits),
            ("emc", c.emc_hits),
            ("dpcls", c.dpcls_hits),
            ("upcall", c.upcalls),
        ] {
            path.counter(&[("pmd", &id), ("path", name)], n);
        }
        lost.counter(&pmd, c.lost);
        cycles.gauge(&pmd, p.cycles_per_packet);
        longest.gauge(&pmd, p.max_iteration_us / 1e6);
        pmd_megaflows.gauge(&pmd, p.megaflows as f64);
    }
    out.extend([pmd_packets, path, lost, cycles, longest, pmd_megaflows]);

    // Offload.
    let doc: OffloadDoc = if s.offload.get("ports").is_some() {
        serde_json::from_value(s.offload.clone()).map_err(MetricsError::Offload)?
    } else {
        OffloadDoc::default()
    };
    let mut states = Family::new(
        "flowmark_megaflows",
        "Megaflows by offload state (they add up to every megaflow).",
        GAUGE,
    );
    for (state, n) in &doc.states {
        states.gauge(&[("state", state)], *n as f64);
    }
    let mut rules = Family::new(
        "flowmark_offload_rules",
        "NIC rules installed on the port.",
        GAUGE,
    );
    let mut capacity = Family::new(
        "flowmark_offload_rule_capacity",
        "NIC rules the port's device holds at most.",
        GAUGE,
    );
    let mut marks = Family::new(
        "flowmark_offload_marks_in_use",
        "Marks in use for the port's rules.",
        GAUGE,
    );
    let mut inserts = Family::new(
        "flowmark_offload_inserts_total",
        "NIC rules created on the port.",
        COUNTER,
    );
    let mut deletes = Family::new(
        "flowmark_offload_deletes_total",
        "NIC rules destroyed on the port.",
        COUNTER,
    );
    let mut failures = Family::new(
        "flowmark_offload_failures_total",
        "Offers the translator or the device refused, by reason.",
        COUNTER,
    );
    let mut latency = Family::new(
        "flowmark_offload_insert_latency_seconds",
        "Time from a PMD's offer to the NIC rule created.",
        HISTOGRAM,
    );
    for p in &doc.ports {
        let port = [("port", p.name.as_str())];
        rules.gauge(&port, p.rules_installed as f64);
        capacity.gauge(&port, p.capacity as f64);
        marks.gauge(&port, p.marks_in_use as f64);
        inserts.counter(&port, p.inserted);
        deletes.counter(&port, p.deleted);
        for (reason, n) in &p.failures {
            failures.counter(&[("port", &p.name), ("reason", reason)], *n);
        }
        let h = &p.latency_histogram;
        latency.push(&port, |m| {
            let mut hist = Histogram::default();
            hist.set_sample_count(h.count);
            hist.set_sample_sum(h.sum_us as f64 / 1e6);
            hist.set_bucket(
                offload::worker::LATENCY_BUCKETS_US
                    .iter()
                    .zip(&h.cumulative)
                    .map(|(le, n)| {
                        let mut b = Bucket::default();
                        b.set_upper_bound(*le as f64 / 1e6);
                        b.set_cumulative_count(*n);
                        b
                    })
                    .collect(),
            );
            m.set_histogram(hist);
        });
    }
    out.extend([
        states, rules, capacity, marks, inserts, deletes, failures, latency,
    ]);

    let mut tables = Family::new(
        "flowmark_openflow_rules",
        "OpenFlow rules per table.",
        GAUGE,
    );
    for (table, n) in &s.rules_per_table {
        tables.gauge(&[("table", &table.to_string())], *n as f64);
    }
    let mut macs = Family::new(
        "flowmark_mac_table_entries",
        "MAC-learning entries (NORMAL).",
        GAUGE,
    );
    macs.gauge(&[], s.mac_entries as f64);
    out.extend([tables, macs]);

    // The encoder refuses a family without metrics (e.g. no port yet).
    let families: Vec<MetricFamily> = out
        .into_iter()
        .map(|f| f.mf)
        .filter(|mf| !mf.get_metric().is_empty())
        .collect();
    Ok(prometheus::TextEncoder::new().encode_to_string(&families)?)
}

/// The `/metrics` server; stops when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `/metrics` on `addr` from `handle`'s daemon.
pub fn serve(
    addr: SocketAddr,
    handle: DaemonHandle,
    log: Logger,
) -> Result<MetricsServer, MetricsError> {
    let server = tiny_http::Server::http(addr)
        .map(Arc::new)
        .map_err(|e| MetricsError::Listen {
            addr,
            message: e.to_string(),
        })?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    info!(log, "metrics: serving /metrics"; "listen" => bound.to_string());
    let srv = Arc::clone(&server);
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for req in srv.incoming_requests() {
                let url = req.url().split('?').next().unwrap_or("").to_string();
                let response = match (req.method(), url.as_str()) {
                    (tiny_http::Method::Get, "/metrics") => match scrape(&handle) {
                        Ok(text) => text_response(200, text, prometheus::TEXT_FORMAT),
                        Err(e) => {
                            warn!(log, "metrics scrape failed"; "error" => e.clone());
                            text_response(503, format!("{e}\n"), "text/plain")
                        }
                    },
                    (tiny_http::Method::Get, "/") => text_response(
                        200,
                        "flowmark: the Prometheus metrics are at /metrics\n".into(),
                        "text/plain",
                    ),
                    (tiny_http::Method::Get, _) => text_response(
                        404,
                        format!("no page {url:?}: the metrics are at /metrics\n"),
                        "text/plain",
                    ),
                    _ => text_response(
                        405,
                        "only GET is served (GET /metrics)\n".into(),
                        "text/plain",
                    ),
                };
                if let Err(e) = req.respond(response) {
                    debug!(log, "metrics: cannot answer"; "error" => e.to_string());
                }
            }
        })
        .map_err(MetricsError::Thread)?;
    Ok(MetricsServer {
        server,
        thread: Some(thread),
        addr: bound,
    })
}

fn scrape(handle: &DaemonHandle) -> Result<String, String> {
    let s = handle.metrics().map_err(|e| e.to_string())?;
    encode(&s).map_err(|e| e.to_string())
}

fn text_response(
    code: u16,
    body: String,
    content_type: &str,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut r = tiny_http::Response::from_string(body).with_status_code(code);
    let value = format!("{content_type}; charset=utf-8");
    if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], value.as_bytes()) {
        r.add_header(h);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> Scrape {
        Scrape {
            ports: Vec::new(),
            pmds: Vec::new(),
            offload: serde_json::json!({"ports": [], "states": {"software": 0}}),
            rules_per_table: BTreeMap::new(),
            mac_entries: 3,
        }
    }

    #[test]
    fn a_switch_without_ports_still_scrapes() {
        let text = encode(&empty()).expect("encodes");
        assert!(text.contains("flowmark_build_info{commit="), "{text}");
        assert!(text.contains("flowmark_mac_table_entries 3"), "{text}");
        assert!(
            text.contains("flowmark_megaflows{state=\"software\"} 0"),
            "{text}"
        );
        // Families without samples are left out (the encoder refuses them).
        assert!(!text.contains("flowmark_port_rx_packets_total"), "{text}");
    }

    #[test]
    fn offload_off_and_odd_documents() {
        let mut s = empty();
        // Offload disabled: the document has no port lines.
        s.offload = serde_json::json!({"ports": [], "states": {}, "worker": {"enabled": false}});
        assert!(encode(&s).is_ok());
        s.offload = Value::Null;
        assert!(encode(&s).is_ok());
        // A port line missing its histogram is an error, not a panic.
        s.offload = serde_json::json!({"ports": [{"name": "p"}], "states": {}});
        let e = encode(&s).expect_err("refused").to_string();
        assert!(e.contains("offload status"), "{e}");
    }

    #[test]
    fn latency_histogram_in_seconds() {
        let mut s = empty();
        let mut cumulative = vec![0u64; offload::worker::LATENCY_BUCKETS_US.len()];
        for (i, c) in cumulative.iter_mut().enumerate() {
            *c = if i >= 3 { 2 } else { 0 };
        }
        s.offload = serde_json::json!({"ports": [{
            "name": "nic0", "rules_installed": 2, "capacity": 16, "marks_in_use": 2,
            "inserted": 2, "deleted": 0, "failures": {"no_space": 1},
            "latency_histogram": {"count": 2, "sum_us": 150, "cumulative": cumulative},
        }], "states": {"offloaded": 2}});
        let text = encode(&s).expect("encodes");
        for line in [
            "flowmark_offload_insert_latency_seconds_bucket{port=\"nic0\",le=\"0.00005\"} 0",
            "flowmark_offload_insert_latency_seconds_bucket{port=\"nic0\",le=\"0.0001\"} 2",
            "flowmark_offload_insert_latency_seconds_bucket{port=\"nic0\",le=\"+Inf\"} 2",
            "flowmark_offload_insert_latency_seconds_sum{port=\"nic0\"} 0.00015",
            "flowmark_offload_insert_latency_seconds_count{port=\"nic0\"} 2",
            "flowmark_offload_failures_total{port=\"nic0\",reason=\"no_space\"} 1",
            "flowmark_offload_rule_capacity{port=\"nic0\"} 16",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
