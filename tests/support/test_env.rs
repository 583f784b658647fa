//! What the environment asks of the tests, with one meaning each. Every
//! crate's tests include this one file (`#[path = ...] mod test_env;`), so
//! that `FLOWMARK_LONG` and `FLOWMARK_REQUIRE_ORACLES` mean the same thing
//! everywhere.
#![allow(dead_code)]

use std::process::Command;

/// `FLOWMARK_LONG=1`: property tests do ten times the work.
pub fn long() -> bool {
    std::env::var("FLOWMARK_LONG").is_ok_and(|v| v == "1")
}

/// `n` cases, or ten times as many under `FLOWMARK_LONG=1`.
pub fn cases(n: u32) -> u32 {
    if long() {
        n.saturating_mul(10)
    } else {
        n
    }
}

/// `FLOWMARK_REQUIRE_ORACLES=1` (scripts/test sets it): an oracle tool that
/// is missing fails the test instead of skipping it.
pub fn oracles_required() -> bool {
    std::env::var("FLOWMARK_REQUIRE_ORACLES").is_ok_and(|v| v == "1")
}

/// True when `tool` runs (`tool ARG` starts). When it does not: a panic
/// naming the package to install if oracles are required, else a notice
/// and false (the caller skips its oracle check).
pub fn oracle(tool: &str, probe_arg: &str, package: &str) -> bool {
    if Command::new(tool).arg(probe_arg).output().is_ok() {
        return true;
    }
    assert!(
        !oracles_required(),
        "{tool} not found and FLOWMARK_REQUIRE_ORACLES=1: install it (apt-get install -y {package})"
    );
    eprintln!(
        "notice: {tool} not found; its oracle check is skipped (apt-get install -y {package})"
    );
    false
}
