//! The checks behind the fuzz targets. Each takes the raw fuzz input and
//! panics on a violation; `tests/fuzz_regressions.rs` in the main package
//! includes the same file and replays `fuzz/regressions/<target>/*`.

#[path = "checks.rs"]
pub mod checks;
/// The tests' in-memory OpenFlow switch (the openflow check drives a session over it).
#[path = "../../tests/support/pipeline_switch.rs"]
mod pipeline_switch;
