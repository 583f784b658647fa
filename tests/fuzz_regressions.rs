//! Replays every input a fuzz target ever crashed on
//! (`fuzz/regressions/<target>/*`) through the same check the target runs,
//! so that each fixed crash stays fixed without cargo-fuzz installed.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    for path in files {
        let data =
            std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        eprintln!("replaying {}", path.display());
        check(&data);
    }
}

#[test]
fn packet_parse_regressions() {
    replay("packet_parse", checks::packet_parse);
}

#[test]
fn flow_syntax_regressions() {
    replay("flow_syntax", checks::flow_syntax);
}

#[test]
fn nic_matcher_regressions() {
    replay("nic_matcher", checks::nic_matcher);
}

#[test]
fn xlate_regressions() {
    replay("xlate", checks::xlate);
}

#[test]
fn control_request_regressions() {
    replay("control_request", checks::control_request);
}

#[test]
fn config_regressions() {
    replay("config", checks::config);
}

#[test]
fn openflow_regressions() {
    replay("openflow", checks::openflow);
}
