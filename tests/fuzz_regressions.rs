//! Replays every input a fuzz target ever crashed on
//! (`fuzz/regressions/<target>/*`) through the same check the target runs,
//! so that each fixed crash stays fixed without cargo-fuzz installed.

#[path = "../fuzz/src/checks.rs"]
mod checks;
#[path = "support/pipeline_switch.rs"]
mod pipeline_switch;

use std::path::Path;

/// Every cargo-fuzz target (fuzz/fuzz_targets/<target>.rs), each replayed
/// by a test below.
const TARGETS: &[&str] = &[
    "config",
    "control_request",
    "flow_syntax",
    "nic_matcher",
    "openflow",
    "packet_parse",
    "xlate",
];

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    // A target without inputs to replay would pass without testing
    // anything: a missing or empty folder fails.
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; every fuzz target needs a regression folder with at least one input",
            dir.display()
        )
    });
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "{} holds no input: add the crash inputs (or edge cases) of {target}",
        dir.display()
    );
    for path in files {
        let data =
            std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        eprintln!("replaying {}", path.display());
        check(&data);
    }
}

#[test]
fn every_fuzz_target_is_replayed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    found.sort();
    assert_eq!(
        found, TARGETS,
        "a fuzz target without a replay test here (or a stale entry in TARGETS)"
    );
    for t in TARGETS {
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions")
            .join(t);
        assert!(d.is_dir(), "{} is missing", d.display());
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
