//! The checks behind the fuzz targets. Each takes the raw fuzz input and
//! panics on a violation; `tests/fuzz_regressions.rs` in the main package
//! includes the same file and replays `fuzz/regressions/<target>/*`.

#[path = "checks.rs"]
pub mod checks;
