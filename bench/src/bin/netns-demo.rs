//! README quick start, command 1: the gateway moving real traffic. Builds two hosts out of
//! network namespaces, runs Docker's data path (the Linux kernel's vxlan device) on one and
//! swarmgate on DPDK on the other, and sends ping, TCP and UDP between their endpoints; then
//! an encrypted overlay between two swarmgate hosts. Everything it creates is removed at
//! the end. Needs root.

use std::time::Instant;

use swarmgate_tests::netns::{is_root, Side, Topology};

fn show(t: &Topology, from: usize, to: usize) {
    let (sent, got) = t.ping(from, to, 3);
    println!(
        "   ping {} -> {}: {got}/{sent} replies",
        Topology::ep(from),
        Topology::ep(to)
    );
    let start = Instant::now();
    t.tcp_stream(from, to, 16 << 20);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "   TCP 16 MiB {} -> {}: every byte checked (SHA-256), {:.0} Mbit/s",
        Topology::ep(from),
        Topology::ep(to),
        16.0 * 8.0 * 1.048576 / secs
    );
    t.udp_echo(from, to, 100, 1000);
    println!(
        "   UDP 100 x 1000 B {} -> {} and back: all intact",
        Topology::ep(from),
        Topology::ep(to)
    );
}

fn counters(label: &str, s: &serde_json::Value) {
    let n = &s["networks"]["test-overlay"];
    println!(
        "   {label}: encapsulated {} frames, decapsulated {}, exception path {}, drops {}",
        n["encap_packets"], n["decap_packets"], s["exception"], s["drops"]
    );
}

fn main() {
    if !is_root() {
        eprintln!("netns-demo: needs root (it creates network namespaces)");
        std::process::exit(1);
    }
    println!("== host 1: the Linux kernel's vxlan device, as Docker sets it up (VNI 4097, endpoint 10.0.0.1)");
    println!("== host 2: swarmgate on DPDK — af_packet underlay, an af_packet-polled veth into the network's bridge (endpoint 10.0.0.2)");
    let mut t = Topology::new([Side::Kernel, Side::Swarmgate], false);
    println!("   swarmgate up; underlay neighbour 192.168.77.1 resolved through the kernel's exception TAP");
    show(&t, 1, 2);
    show(&t, 2, 1);
    let (ok, _) = t.exec(&t.host(1), "ping -c 2 -i 0.2 -W 2 192.168.77.2");
    println!(
        "   ping from host 1 to swarmgate's own underlay address: {}",
        if ok {
            "answered by the data plane"
        } else {
            "FAILED"
        }
    );
    let s = t.gateways[1].as_mut().unwrap().stop();
    counters("swarmgate on host 2", &s);
    drop(t);

    println!("\n== an encrypted overlay (--opt encrypted) between two swarmgate hosts: ESP AES-128-GCM, Docker's SAs");
    let mut t = Topology::new([Side::Swarmgate, Side::Swarmgate], true);
    show(&t, 1, 2);
    for (i, g) in t.gateways.iter_mut().enumerate() {
        let s = g.as_mut().unwrap().stop();
        counters(&format!("swarmgate on host {}", i + 1), &s);
    }
    drop(t);
    println!("\n== all namespaces removed");
}
