//! Everything that touches raw hardware or C: the only place `unsafe` is
//! allowed. The DPDK bindings themselves come with the `dpdk` feature.

pub mod tsc;
