//! Finds the system DPDK with pkg-config, compiles the inline-function shim with `cc`, and
//! generates bindings with bindgen, allowlisted to the API families swarmgate uses.

use std::env;
use std::path::PathBuf;

fn main() {
    let dpdk = pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
        .expect("DPDK 22.11+ not found by pkg-config: install libdpdk-dev (deploy/install-deps.sh does)");

    // Debian's libdpdk.pc puts `-include rte_config.h` and `-march=...` in Cflags; pkg-config
    // the crate splits them into include paths and "defines", so read the raw flags again.
    let cflags = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .expect("pkg-config runs");
    let cflags: Vec<String> = String::from_utf8_lossy(&cflags.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();

    let mut build = cc::Build::new();
    build.file("src/shim.c").opt_level(3).warnings(false);
    let mut it = cflags.iter();
    while let Some(f) = it.next() {
        if f == "-include" {
            if let Some(h) = it.next() {
                build.flag("-include").flag(h);
            }
        } else {
            build.flag(f);
        }
    }
    build.compile("swarmgate_shim");
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rerun-if-changed=src/shim.h");

    let mut clang_args: Vec<String> = dpdk
        .include_paths
        .iter()
        .map(|p| format!("-I{}", p.display()))
        .collect();
    let mut it = cflags.iter();
    while let Some(f) = it.next() {
        if f == "-include" {
            if let Some(h) = it.next() {
                clang_args.push("-include".into());
                clang_args.push(h.clone());
            }
        } else if f.starts_with("-march") || f.starts_with("-I") {
            clang_args.push(f.clone());
        }
    }

    let bindings = bindgen::Builder::default()
        .header("src/shim.h")
        .clang_args(&clang_args)
        // Only the API families used: EAL, mempool/mbuf pools, ethdev control, rings,
        // device hot-plug, and the shim.
        .allowlist_function("sg_.*")
        .allowlist_function("rte_eal_(init|cleanup|process_type)")
        .allowlist_function("rte_thread_(register|unregister)")
        .allowlist_function("rte_lcore_id")
        .allowlist_function("rte_socket_id")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_pktmbuf_pool_create")
        .allowlist_function("rte_mempool_(free|avail_count|in_use_count)")
        .allowlist_function(
            "rte_eth_dev_(start|stop|close|count_avail|get_port_by_name|is_valid_port|set_mtu)",
        )
        .allowlist_function("rte_eth_promiscuous_enable")
        .allowlist_function("rte_ring_(create|free)")
        .allowlist_function("rte_dev_(probe|remove)")
        .allowlist_function("rte_eal_hotplug_(add|remove)")
        .allowlist_function("rte_pktmbuf_free_bulk")
        .allowlist_type("sg_port_stats")
        .allowlist_var("RING_F_.*")
        .allowlist_var("RTE_MBUF_DEFAULT_BUF_SIZE|RTE_PKTMBUF_HEADROOM|RTE_MAX_LCORE")
        // Packed protocol-header and flow types pulled in transitively stay opaque.
        .opaque_type("rte_gtp_.*")
        .opaque_type("rte_l2tpv2_.*")
        .opaque_type("rte_arp_.*")
        .opaque_type("rte_flow_.*")
        .opaque_type("rte_mbuf")
        .opaque_type("rte_mempool")
        .opaque_type("rte_ring")
        .layout_tests(false)
        .generate_comments(false)
        .derive_default(true)
        .generate()
        .expect("bindgen generates DPDK bindings");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("dpdk.rs");
    bindings.write_to_file(out).expect("write bindings");
}
