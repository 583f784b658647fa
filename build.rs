//! Build script. It records the git commit for `flowmark --version`
//! (`FLOWMARK_GIT_COMMIT`). With the `dpdk` feature it also generates the
//! DPDK bindings: bindgen over Debian's libdpdk 22.11 headers (found with
//! pkg-config), plus C wrappers for DPDK's static-inline fast-path functions
//! compiled with cc.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    git_commit();
    if std::env::var_os("CARGO_FEATURE_DPDK").is_some() {
        #[cfg(feature = "dpdk")]
        dpdk::generate();
    }
}

/// `FLOWMARK_GIT_COMMIT`: the commit being built, from (in this order) the
/// environment at build time (a source tarball's packager sets it), `git`,
/// else `unknown` (no .git, no git). Rebuilt when HEAD moves.
fn git_commit() {
    use std::process::Command;
    println!("cargo:rerun-if-env-changed=FLOWMARK_GIT_COMMIT");
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    };
    let from_env = std::env::var("FLOWMARK_GIT_COMMIT")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let commit = from_env.or_else(|| {
        let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
        // Rerun when HEAD or the branch it names moves (the paths work in
        // a worktree, where .git is a file).
        for path in [
            git(&["rev-parse", "--git-path", "HEAD"]),
            git(&["rev-parse", "--symbolic-full-name", "HEAD"])
                .and_then(|r| git(&["rev-parse", "--git-path", &r])),
            git(&["rev-parse", "--git-path", "packed-refs"]),
        ]
        .into_iter()
        .flatten()
        {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
        Some(commit)
    });
    println!(
        "cargo:rustc-env=FLOWMARK_GIT_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use bindgen::callbacks::{IntKind, ParseCallbacks};
    use std::env;
    use std::path::PathBuf;
    use std::process::Command;

    const INSTALL: &str = "apt-get install libdpdk-dev pkg-config libclang-dev";

    /// DPDK's 64-bit flag macros (`RTE_BIT64(n)`), which bindgen would type u32.
    #[derive(Debug)]
    struct U64Flags;

    impl ParseCallbacks for U64Flags {
        fn int_macro(&self, name: &str, _value: i64) -> Option<IntKind> {
            const PREFIXES: [&str; 6] = [
                "RTE_MBUF_F_",
                "RTE_ETH_RSS_",
                "RTE_ETH_RX_OFFLOAD_",
                "RTE_ETH_TX_OFFLOAD_",
                "RTE_ETH_RX_METADATA_",
                "RTE_ETH_LINK_SPEED_",
            ];
            PREFIXES
                .iter()
                .any(|p| name.starts_with(p))
                .then_some(IntKind::U64)
        }
    }

    fn pkg_config(args: &[&str]) -> String {
        let out = Command::new("pkg-config").args(args).output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            Ok(o) => panic!(
                "\n\nflowmark's `dpdk` feature needs DPDK 22.11 (libdpdk): `pkg-config {}` failed: {}\n\
                 Install it with: {INSTALL}\n(or build without `--features dpdk`)\n\n",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!(
                "\n\nflowmark's `dpdk` feature needs pkg-config to find libdpdk, and running it \
                 failed: {e}\nInstall them with: {INSTALL}\n(or build without `--features dpdk`)\n\n"
            ),
        }
    }

    pub fn generate() {
        let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
        let header = manifest.join("src/dpdk/wrapper.h");
        println!("cargo:rerun-if-changed={}", header.display());
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

        // Exists check first, for a clear message.
        pkg_config(&["--exists", "--print-errors", "libdpdk"]);
        let version = pkg_config(&["--modversion", "libdpdk"]);
        // The raw cflags: they carry `-include rte_config.h` and
        // `-march=corei7`, which the wrappers need (rte_memcpy: SSSE3).
        let cflags: Vec<String> = pkg_config(&["--cflags", "libdpdk"])
            .split_whitespace()
            .map(str::to_string)
            .chain(["-DALLOW_EXPERIMENTAL_API".to_string()])
            .collect();

        let wrap_path = out.join("dpdk_static_fns");
        let bindings = bindgen::Builder::default()
            .header(header.to_string_lossy())
            .clang_args(&cflags)
            .allowlist_function("rte_.*|flowmark_.*")
            .allowlist_type("rte_.*")
            .allowlist_var("RTE_.*|RING_F_.*")
            .opaque_type("rte_arp_hdr")
            .opaque_type("rte_arp_ipv4")
            .opaque_type("rte_l2tpv2_combined_msg_hdr")
            .no_debug("rte_flow_item_gtp_psc")
            .generate_comments(false)
            .derive_default(true)
            .wrap_static_fns(true)
            .wrap_static_fns_path(&wrap_path)
            .wrap_unsafe_ops(true)
            .clang_macro_fallback()
            .clang_macro_fallback_build_dir(&out)
            .parse_callbacks(Box::new(U64Flags))
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
            .generate()
            .unwrap_or_else(|e| {
                panic!(
                    "\n\nbindgen over the DPDK {version} headers failed: {e}\n\
                     It needs libclang: {INSTALL}\n\n"
                )
            });
        bindings
            .write_to_file(out.join("dpdk_bindings.rs"))
            .expect("write the DPDK bindings into OUT_DIR");

        let mut cc = cc::Build::new();
        cc.file(wrap_path.with_extension("c"))
            .include(&manifest)
            .opt_level(3)
            .flag("-Wno-duplicate-decl-specifier")
            .flag("-Wno-deprecated-declarations")
            .warnings(false);
        for f in &cflags {
            cc.flag(f);
        }
        cc.compile("flowmark_dpdk_static_fns");

        // Link the DPDK libraries pkg-config names (without its
        // `--as-needed`), then the ring PMD by name: `rte_eth_from_rings`
        // lives there and only the static list names it.
        for lib in pkg_config(&["--libs", "libdpdk"]).split_whitespace() {
            if let Some(name) = lib.strip_prefix("-l") {
                println!("cargo:rustc-link-lib=dylib={name}");
            } else if let Some(dir) = lib.strip_prefix("-L") {
                println!("cargo:rustc-link-search=native={dir}");
            }
        }
        println!("cargo:rustc-link-lib=dylib=rte_net_ring");
    }
}
