//! The offline commands as an operator runs them: `trace` on the seed
//! scenarios gives the results the issue lists, `translate` and `flow parse`
//! answer in JSON, and bad input is an error with a non-zero exit.

use serde_json::Value;
use std::process::Command;

fn flowmark(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowmark"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("flowmark runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn trace(file: &str, packet: &str) -> Value {
    let (ok, out, err) = flowmark(&[
        "trace",
        "--json",
        "--flows-file",
        file,
        "--ports",
        "1,2,3",
        packet,
    ]);
    assert!(ok, "trace {packet}: {err}");
    serde_json::from_str(&out).expect("one JSON document")
}

fn actions(v: &Value) -> Vec<String> {
    v["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| a.as_str().expect("string").to_string())
        .collect()
}

#[test]
fn gtp_seed_scenario() {
    // GTP-U towards the gateway: source rewritten, out of port 2.
    let v = trace(
        "examples/gtp.flows",
        "in_port=1,udp,nw_src=10.1.0.9,nw_dst=192.168.200.3,tp_src=2152,tp_dst=2152",
    );
    assert_eq!(actions(&v), ["mod_nw_src:192.168.200.188", "output:2"]);
    assert_eq!(
        v["megaflow"],
        "recirc_id=0,eth,udp,in_port=1,nw_dst=192.168.200.3,nw_frag=no,tp_src=2152"
    );
    // From the gateway on port 2: flooded to the other ports.
    let v = trace(
        "examples/gtp.flows",
        "in_port=2,udp,nw_src=192.168.200.3,nw_dst=10.1.0.9,tp_src=2152,tp_dst=2152",
    );
    assert_eq!(actions(&v), ["output:1", "output:3"]);
    assert_eq!(
        v["megaflow"],
        "recirc_id=0,eth,udp,in_port=2,nw_src=192.168.200.3,nw_frag=no,tp_src=2152"
    );
}

#[test]
fn resubmit_seed_scenario() {
    let f = "examples/gtp-resubmit.flows";
    let v = trace(
        f,
        "in_port=2,udp,nw_src=192.168.200.3,nw_dst=10.1.0.7,tp_src=2152,tp_dst=2152",
    );
    assert_eq!(actions(&v), ["output:1"]);
    let tables: Vec<u64> = v["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| t["table"].as_u64().expect("table"))
        .collect();
    assert_eq!(tables, [0, 8], "table 0 resubmits to table 8");
    let v = trace(f, "in_port=1,ip,nw_src=10.1.2.3,nw_dst=8.8.8.8");
    assert_eq!(actions(&v), ["mod_dl_dst:52:54:00:00:00:05", "output:3"]);
    let v = trace(f, "in_port=1,ip,nw_src=10.9.9.9,nw_dst=8.8.8.8");
    assert!(actions(&v).is_empty(), "dropped: {v}");
    assert_eq!(v["drop_reason"], "drop_action");
}

#[test]
fn translate_json() {
    let (ok, out, err) = flowmark(&[
        "translate",
        "--json",
        "recirc_id=0,eth,udp,in_port=2,nw_src=192.168.200.3,nw_frag=no,tp_src=2152",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["verdict"], "offload");
    assert_eq!(
        v["rule"],
        "flow create 0 ingress priority 0 group 0 pattern eth type is 0x0800 / ipv4 fragment_offset spec 0x0 fragment_offset mask 0x3fff src is 192.168.200.3 / udp src is 2152 / end actions mark id 1 / rss queues 0 end / end"
    );
    let (ok, out, _) = flowmark(&["translate", "--json", "in_port=1,udp,tp_dst=0x800/0xf00"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["verdict"], "rejected");
    assert!(v["reason"].as_str().expect("reason").contains("tp_dst"));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    for args in [
        &["flow", "parse", "nw_sorc=1.2.3.4,actions=drop"][..],
        &[
            "trace",
            "--flows-file",
            "examples/gtp.flows",
            "in_port=1,udp,tp_dst=99999",
        ],
        &["trace", "--flows-file", "/nonexistent.flows", "in_port=1"],
        &["translate", "--profile", "nosuch", "in_port=1,udp"],
        &["translate", "in_port=1,udp,bogus=1"],
    ] {
        let (ok, _, err) = flowmark(args);
        assert!(!ok, "{args:?} must fail");
        assert!(err.starts_with("flowmark: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let (_, _, err) = flowmark(&["flow", "parse", "nw_sorc=1.2.3.4,actions=drop"]);
    assert!(err.contains("nw_sorc"), "names the bad token: {err}");
}

/// `flowmark --version` names the crate version and the git commit the
/// binary was built from (the checkout's HEAD when git can read it).
#[test]
fn version_names_version_and_commit() {
    let (ok, out, err) = flowmark(&["--version"]);
    assert!(ok, "{err}");
    let line = out.trim();
    let prefix = format!("flowmark {} (commit ", env!("CARGO_PKG_VERSION"));
    let commit = line
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split([',', ')']).next())
        .unwrap_or_else(|| panic!("{line:?} does not start with {prefix:?}"));
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) => assert_eq!(commit, head, "{line}"),
        None => assert_eq!(commit, "unknown", "{line}"),
    }
}
