//! The `flowmark` binary.
fn main() {}
