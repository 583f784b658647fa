//! What an operator watches on a running daemon: Prometheus `/metrics`
//! (linted by `promtool check metrics`, and equal to `port stats`,
//! `pmd stats` and `offload status` once traffic stops) and `flowmark top`.
//! The daemon is a subprocess on a temporary socket; waits are bounded
//! polls.

#[path = "support/daemon.rs"]
mod harness;
#[path = "support/test_env.rs"]
mod test_env;

use harness::{arr, u, Daemon, BIN, WAIT};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Instant;

const GTP_FLOWS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gtp.flows");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The shared daemon harness plus the `/metrics` port.
struct Ops {
    d: Daemon,
    metrics_port: u16,
}

impl std::ops::Deref for Ops {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.d
    }
}

impl Ops {
    /// The default testbed (nic0, nic1, vm0) with one PMD and `/metrics`
    /// (bound before the daemon answers its socket).
    fn start() -> Ops {
        let metrics_port = free_port();
        let d = Daemon::start(Some(&format!(
            "pmd_cores = [0]\n\
             [[port]]\nname = \"nic0\"\ntype = \"testbed-nic\"\n\
             [[port]]\nname = \"nic1\"\ntype = \"testbed-nic\"\n\
             [[port]]\nname = \"vm0\"\ntype = \"testbed-vm\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
        )));
        Ops { d, metrics_port }
    }

    /// Adds the GTP rules and sends known traffic: 4000 GTP-U packets over
    /// 40 flows into nic0, 1000 GTP-D over 10 flows into nic1, then waits
    /// for the datapath to settle.
    fn known_traffic(&self) {
        let added = self.json(&["flow", "add", "--file", GTP_FLOWS]);
        assert_eq!(added["added"], 7, "{added}");
        // nic0's packets in two halves with the offloads settled between,
        // so that the second half meets the NIC rules the first caused: in
        // one injection, a fast machine sent all 4,000 before the first rule
        // existed, and no packet was ever marked.
        self.inject("nic0", "flows=40,count=2000,kind=gtp-up");
        self.inject("nic1", "flows=10,count=1000,kind=gtp-down");
        self.quiesce();
        self.inject("nic0", "flows=40,count=2000,kind=gtp-up");
        self.quiesce();
    }

    /// GET `path` from the metrics endpoint: (status line, headers, body).
    fn get(&self, path: &str) -> (String, String, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("response");
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (status.to_string(), headers.to_string(), body.to_string())
    }
}

/// `name{labels}` → value of every sample in a text-format scrape (labels
/// as written, which the encoder sorts by name).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("sample line");
            (k.to_string(), v.parse().expect("sample value"))
        })
        .collect()
}

fn sample(m: &BTreeMap<String, f64>, key: &str) -> u64 {
    let v = m
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key} in the scrape: {:?}", m.keys()));
    assert!(v.fract() == 0.0 && *v >= 0.0, "{key} = {v}");
    *v as u64
}

#[test]
fn metrics_lint_and_equal_the_cli_documents_at_quiescence() {
    let d = Ops::start();
    d.known_traffic();
    let ports = d.json(&["port", "stats"]);
    let pmds = d.json(&["pmd", "stats"]);
    let offload = d.json(&["offload", "status"]);
    let flows = d.json(&["flow", "dump"]);
    let (status, headers, body) = d.get("/metrics");
    assert!(status.contains(" 200 "), "{status}\n{body}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    // Nothing moved while we read: the documents still say the same.
    assert_eq!(ports, d.json(&["port", "stats"]), "not quiescent");
    assert_eq!(offload["states"], d.json(&["offload", "status"])["states"]);

    if test_env::oracle("promtool", "--version", "prometheus") {
        let mut lint = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool runs");
        lint.stdin
            .take()
            .expect("stdin")
            .write_all(body.as_bytes())
            .expect("feed promtool");
        let out = lint.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{body}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let m = samples(&body);
    // Ports: both sides of the books, every drop reason.
    assert_eq!(arr(&ports).len(), 3);
    for p in arr(&ports) {
        let name = p["name"].as_str().expect("name");
        let l = format!("{{port=\"{name}\"}}");
        assert_eq!(
            sample(&m, &format!("flowmark_port_rx_packets_total{l}")),
            u(&p["rx"])
        );
        assert_eq!(
            sample(&m, &format!("flowmark_port_forwarded_packets_total{l}")),
            u(&p["forwarded"])
        );
        assert_eq!(
            sample(&m, &format!("flowmark_port_tx_attempted_packets_total{l}")),
            u(&p["tx_attempted"])
        );
        assert_eq!(
            sample(&m, &format!("flowmark_port_tx_packets_total{l}")),
            u(&p["tx"])
        );
        assert_eq!(
            sample(&m, &format!("flowmark_port_rx_bytes_total{l}")),
            u(&p["rx_bytes"])
        );
        assert_eq!(
            sample(&m, &format!("flowmark_port_tx_bytes_total{l}")),
            u(&p["tx_bytes"])
        );
        for (side, key) in [("rx", "rx_dropped"), ("tx", "tx_dropped")] {
            let reasons = p[key].as_object().expect("reasons");
            assert!(!reasons.is_empty());
            for (reason, n) in reasons {
                assert_eq!(
                    sample(
                        &m,
                        &format!(
                            "flowmark_port_{side}_dropped_packets_total{{port=\"{name}\",reason=\"{reason}\"}}"
                        )
                    ),
                    u(n),
                    "{name} {key} {reason}"
                );
            }
        }
    }
    assert_eq!(
        sample(&m, "flowmark_port_rx_packets_total{port=\"nic0\"}"),
        4000
    );
    assert_eq!(
        sample(&m, "flowmark_port_rx_packets_total{port=\"nic1\"}"),
        1000
    );

    // PMDs: packets by path.
    let mut path_total = 0;
    for p in arr(&pmds) {
        let id = u(&p["pmd"]);
        assert_eq!(
            sample(&m, &format!("flowmark_pmd_packets_total{{pmd=\"{id}\"}}")),
            u(&p["packets"])
        );
        assert_eq!(
            sample(
                &m,
                &format!("flowmark_pmd_lost_packets_total{{pmd=\"{id}\"}}")
            ),
            u(&p["lost"])
        );
        for (path, key) in [
            ("mark", "mark_hits"),
            ("simple", "simple_hits"),
            ("emc", "emc_hits"),
            ("dpcls", "dpcls_hits"),
            ("upcall", "upcalls"),
        ] {
            let n = sample(
                &m,
                &format!("flowmark_pmd_path_packets_total{{path=\"{path}\",pmd=\"{id}\"}}"),
            );
            assert_eq!(n, u(&p[key]), "pmd {id} {path}");
            path_total += n;
        }
        assert!(m.contains_key(&format!("flowmark_pmd_cycles_per_packet{{pmd=\"{id}\"}}")));
    }
    assert_eq!(path_total, 5000, "every packet took one path");

    // Offload: states, rules, capacity, inserts, deletes, failures, latency.
    let states = offload["states"].as_object().expect("states");
    for (state, n) in states {
        assert_eq!(
            sample(&m, &format!("flowmark_megaflows{{state=\"{state}\"}}")),
            u(n),
            "{state}"
        );
    }
    assert!(u(&offload["states"]["offloaded"]) > 0, "{offload}");
    for p in arr(&offload["ports"]) {
        let name = p["name"].as_str().expect("name");
        let l = format!("{{port=\"{name}\"}}");
        assert_eq!(
            sample(&m, &format!("flowmark_offload_rules{l}")),
            u(&p["rules_installed"])
        );
        assert_eq!(
            sample(&m, &format!("flowmark_offload_rule_capacity{l}")),
            u(&p["capacity"])
        );
        assert_eq!(
            sample(&m, &format!("flowmark_offload_inserts_total{l}")),
            u(&p["inserted"])
        );
        assert_eq!(
            sample(&m, &format!("flowmark_offload_deletes_total{l}")),
            u(&p["deleted"])
        );
        for (reason, n) in p["failures"].as_object().expect("failures") {
            assert_eq!(
                sample(
                    &m,
                    &format!(
                        "flowmark_offload_failures_total{{port=\"{name}\",reason=\"{reason}\"}}"
                    )
                ),
                u(n)
            );
        }
        assert_eq!(
            sample(
                &m,
                &format!("flowmark_offload_insert_latency_seconds_count{l}")
            ),
            u(&p["inserted"]),
            "one latency sample per insert"
        );
        assert_eq!(
            sample(
                &m,
                &format!(
                    "flowmark_offload_insert_latency_seconds_bucket{{port=\"{name}\",le=\"+Inf\"}}"
                )
            ),
            u(&p["inserted"])
        );
    }

    // OpenFlow rules per table, MAC table.
    let mut per_table: BTreeMap<u64, u64> = BTreeMap::new();
    for f in arr(&flows) {
        *per_table.entry(u(&f["table"])).or_default() += 1;
    }
    for (table, n) in per_table {
        assert_eq!(
            sample(&m, &format!("flowmark_openflow_rules{{table=\"{table}\"}}")),
            n
        );
    }
    assert!(m.contains_key("flowmark_mac_table_entries"));

    // Other pages say where the metrics are.
    let (status, _, body) = d.get("/nope");
    assert!(status.contains(" 404 "), "{status}");
    assert!(body.contains("/metrics"), "{body}");
}

/// `flowmark top --once` (and its `--json` document) against known traffic:
/// the three ports with their totals, the cumulative path shares `pmd stats`
/// gives, the megaflows by state, and the top megaflows (all of them here)
/// with their state and mark or reason, busiest first. Then a paced
/// injection shows up as a rate on its port.
#[test]
fn top_once_shows_ports_shares_and_top_megaflows() {
    let d = Ops::start();
    // A VM-port flow too: it stays in software for want of a flow device.
    d.inject("vm0", "flows=1,count=300,kind=udp");
    d.known_traffic();
    let top = |args: &[&str]| -> String {
        let out = d.try_cli(&[&["top", "--interval", "0.2"], args].concat());
        assert!(
            out.status.success(),
            "top {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let frame = top(&["--once"]);
    let pmds = d.json(&["pmd", "stats"]);
    let megaflows = d.json(&["megaflow", "dump"]);
    let offload = d.json(&["offload", "status"]);

    // Ports: name, rx total.
    let port_line = |name: &str| -> Vec<String> {
        frame
            .lines()
            .find(|l| l.trim_start_matches('│').starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for {name}:\n{frame}"))
            .trim_matches('│')
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    // port, rx pps, tx pps, rx drop/s, tx drop/s, rx, tx, ...
    assert_eq!(port_line("nic0")[5], "4000", "{frame}");
    assert_eq!(port_line("nic1")[5], "1000", "{frame}");
    assert_eq!(port_line("vm0")[5], "300", "{frame}");
    for name in ["nic0", "nic1", "vm0"] {
        assert_eq!(port_line(name)[1], "0", "quiescent: no rx rate\n{frame}");
    }

    // Shares: the cumulative ones pmd stats gives.
    let sum = |k: &str| arr(&pmds).iter().map(|p| u(&p[k])).sum::<u64>();
    let (mark, simple, emc, dpcls, upcall) = (
        sum("mark_hits"),
        sum("simple_hits"),
        sum("emc_hits"),
        sum("dpcls_hits"),
        sum("upcalls"),
    );
    let total = mark + simple + emc + dpcls + upcall;
    assert_eq!(total, 5300);
    let pct = |n: u64| (n as f64 * 1000.0 / total as f64).round() / 10.0;
    let shares = format!(
        "mark {:5.1}%  simple {:5.1}%  emc {:5.1}%  dpcls {:5.1}%  upcall {:5.1}%   of {total} packets",
        pct(mark),
        pct(simple),
        pct(emc),
        pct(dpcls),
        pct(upcall)
    );
    assert!(frame.contains(&shares), "expected {shares:?} in\n{frame}");
    assert!(mark > 0, "the GTP flows were offloaded and hit by mark");

    // States.
    let states = offload["states"].as_object().expect("states");
    for (state, n) in states {
        assert!(
            frame.contains(&format!("{state} {n}")),
            "{state} {n} in\n{frame}"
        );
    }

    // Top megaflows: every one (fewer than ten), busiest first, with its
    // state and mark, or why it stays in software.
    let rows = arr(&megaflows);
    assert!(!rows.is_empty() && rows.len() <= 10, "{megaflows}");
    let listed: Vec<&str> = frame
        .lines()
        .skip_while(|l| !l.contains("top megaflows by packet rate"))
        .skip(2)
        .take_while(|l| !l.starts_with('└'))
        .collect();
    assert_eq!(listed.len(), rows.len(), "{frame}");
    let mut by_packets: Vec<&Value> = rows.iter().collect();
    by_packets.sort_by_key(|m| std::cmp::Reverse(u(&m["packets"])));
    assert!(
        listed[0].contains(by_packets[0]["megaflow"].as_str().expect("megaflow")),
        "busiest first:\n{frame}"
    );
    for m in &rows {
        let text = m["megaflow"].as_str().expect("megaflow");
        let line = listed
            .iter()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("{text} not listed:\n{frame}"));
        let state = m["state"].as_str().expect("state");
        assert!(line.contains(state), "{line}");
        match state {
            "offloaded" => assert!(line.contains(&format!("mark {}", u(&m["mark"]))), "{line}"),
            "software" => assert!(line.contains("vm0 has no flow device"), "{line}"),
            other => panic!("unexpected state {other}: {m}"),
        }
        assert!(line.contains(&format!(" {} ", u(&m["packets"]))), "{line}");
    }

    // The JSON frame says the same.
    let v: Value = serde_json::from_str(&top(&["--json"])).expect("top --json");
    assert_eq!(v["paths"]["packets"], total);
    assert_eq!(v["megaflows"], rows.len());
    assert_eq!(v["states"], offload["states"]);

    // A paced injection (5,000 pps for up to 40 s) shows up as nic1's rx
    // rate and as the busiest megaflow's rate.
    let mut paced = Command::new(BIN)
        .arg("--socket")
        .arg(&d.socket)
        .args([
            "port",
            "inject",
            "nic1",
            "--generate",
            "flows=1,count=200000,kind=gtp-down,rate=5000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("inject");
    let start = Instant::now();
    loop {
        let v: Value = serde_json::from_str(&top(&["--json"])).expect("top --json");
        let nic1 = arr(&v["ports"])
            .iter()
            .find(|p| p["name"] == "nic1")
            .expect("nic1")
            .clone();
        let busiest = &v["top"][0];
        if nic1["rx_pps"].as_f64().unwrap_or(0.0) > 0.0
            && busiest["pps"].as_f64().unwrap_or(0.0) > 0.0
        {
            assert_eq!(busiest["port"], "nic1", "{v}");
            break;
        }
        assert!(start.elapsed() < WAIT, "no rate seen: {v}");
    }
    let _ = paced.kill();
    let _ = paced.wait();
}
