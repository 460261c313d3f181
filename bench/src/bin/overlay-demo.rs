//! A narrated walk through swarmgate's data-plane core: two simulated nodes exchange real
//! frames through the same pipeline the DPDK workers run, on a plain and an encrypted
//! overlay, through a key rotation and a load-balanced VIP, then a short per-core
//! traffic-generation run of every path. README quick start, command 1.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use swarmgate_bench::{Path, Workload};
use swarmgate_dataplane::wire::{ArpPacket, ArpRepr, Ipv4Packet, Vni};
use swarmgate_dataplane::{DropReason, Next, BURST};
use swarmgate_tests::frames::*;
use swarmgate_tests::*;

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let (k1, k2, k3) = keys();
    println!("== two nodes: VTEPs {} and {}", vtep(1), vtep(2));
    println!("   plain overlay  VNI {PLAIN_VNI}  10.0.0.0/24  MTU 1450");
    println!("   secure overlay VNI {SECURE_VNI}  10.0.1.0/24  MTU 1424  (--opt encrypted)");
    let mut a = Node::new(1, &[k1.clone()]);
    let mut b = Node::new(2, &[k1.clone()]);

    println!("\n== 10.0.0.1 asks ARP for 10.0.0.2: answered by node 1 itself (no flooding)");
    let (n, reply) = a.run1(
        PLAIN_PORT,
        &arp_request(mac_of(plain_ep(1)), plain_ep(1), plain_ep(2)),
    );
    let r = ArpRepr::parse(&ArpPacket::new_checked(&reply[14..]).unwrap()).unwrap();
    println!("   {:?}: {} is at {}", n, r.sender_ip, r.sender_hw);

    println!("\n== 10.0.0.1 -> 10.0.0.2, UDP 'hello overlay'");
    let f = udp(
        mac_of(plain_ep(1)),
        mac_of(plain_ep(2)),
        plain_ep(1),
        plain_ep(2),
        40000,
        5000,
        b"hello overlay",
    );
    let (n, wire) = a.run1(PLAIN_PORT, &f);
    let ip = Ipv4Packet::new_checked(&wire[14..]).unwrap();
    println!(
        "   node 1 {:?}: outer {} -> {} UDP {} -> 4789, {} bytes",
        n,
        ip.src_addr(),
        ip.dst_addr(),
        u16::from_be_bytes([wire[34], wire[35]]),
        wire.len()
    );
    println!("   VXLAN header: {}", hex(&wire[42..50]));
    let (n, inner) = b.run1(UNDERLAY_PORT, &wire);
    println!(
        "   node 2 {:?}: inner frame delivered, identical to what was sent: {}",
        n,
        inner == f
    );

    println!("\n== 10.0.1.1 -> 10.0.1.2 on the encrypted overlay");
    let f = udp(
        mac_of(secure_ep(1)),
        mac_of(secure_ep(2)),
        secure_ep(1),
        secure_ep(2),
        40000,
        5000,
        b"top secret",
    );
    let (_, wire) = a.run1(SECURE_PORT, &f);
    let ip = Ipv4Packet::new_checked(&wire[14..]).unwrap();
    println!(
        "   on the underlay: IP protocol {} (ESP), SPI {:#010x}, seq {}",
        ip.protocol().0,
        u32::from_be_bytes(wire[34..38].try_into().unwrap()),
        u32::from_be_bytes(wire[38..42].try_into().unwrap())
    );
    println!(
        "   plaintext visible on the wire: {}",
        wire.windows(10).any(|w| w == b"top secret")
    );
    let (n, inner) = b.run1(UNDERLAY_PORT, &wire);
    println!(
        "   node 2 {:?}: decrypted and delivered intact: {}",
        n,
        inner == f
    );
    let (n, _) = b.run1(UNDERLAY_PORT, &wire);
    println!("   the same packet replayed: {:?}", n);

    println!(
        "\n== key rotation (Docker's scheme: new key added, primary switched, old key pruned)"
    );
    let mut lost = 0;
    for (step, keys_a, keys_b) in [
        (
            "k2 learnt as secondary",
            vec![k1.clone(), k2.clone()],
            vec![k1.clone(), k2.clone()],
        ),
        (
            "node 1 switches primary to k2 first",
            vec![k2.clone(), k1.clone()],
            vec![k1.clone(), k2.clone()],
        ),
        (
            "node 2 switches too",
            vec![k2.clone(), k1.clone()],
            vec![k2.clone(), k1.clone()],
        ),
        (
            "k3 added, k1 pruned",
            vec![k2.clone(), k3.clone()],
            vec![k2.clone(), k3.clone()],
        ),
    ] {
        a.publish(&keys_a, |_| {});
        b.publish(&keys_b, |_| {});
        for i in 0..100u8 {
            let f = udp(
                mac_of(secure_ep(1)),
                mac_of(secure_ep(2)),
                secure_ep(1),
                secure_ep(2),
                1,
                2,
                &[i; 64],
            );
            let (_, w) = a.run1(SECURE_PORT, &f);
            if b.run1(UNDERLAY_PORT, &w) != (Next::Tx(SECURE_PORT), f) {
                lost += 1;
            }
            let g = udp(
                mac_of(secure_ep(2)),
                mac_of(secure_ep(1)),
                secure_ep(2),
                secure_ep(1),
                2,
                1,
                &[i; 64],
            );
            let (_, w) = b.run1(SECURE_PORT, &g);
            if a.run1(UNDERLAY_PORT, &w) != (Next::Tx(SECURE_PORT), g) {
                lost += 1;
            }
        }
        println!("   {step}: 200 packets exchanged");
    }
    println!("   packets lost across the rotation: {lost}");

    println!("\n== an attacker sends cleartext VXLAN for the encrypted VNI");
    let mut plain_copy = a
        .run1(
            PLAIN_PORT,
            &udp(
                mac_of(plain_ep(1)),
                mac_of(plain_ep(2)),
                plain_ep(1),
                plain_ep(2),
                1,
                2,
                b"x",
            ),
        )
        .1;
    plain_copy[48] = 0x02; // VNI 4097 -> 4098
    plain_copy[50..56].copy_from_slice(mac_of(secure_ep(2)).as_bytes());
    let (n, _) = b.run1(UNDERLAY_PORT, &plain_copy);
    println!(
        "   node 2: {:?} (counter cleartext_on_encrypted = {})",
        n,
        b.counters().drops(DropReason::CleartextOnEncrypted)
    );

    println!("\n== VIP 10.0.0.100:8080 -> 3 tasks on :80, Maglev hashing");
    let vip = Ipv4Addr::new(10, 0, 0, 100);
    let tasks = [
        plain_ep(2),
        Ipv4Addr::new(10, 0, 0, 3),
        Ipv4Addr::new(10, 0, 0, 4),
    ];
    a.publish(&[k2.clone(), k3.clone()], |t| {
        let vni = Vni::new(PLAIN_VNI).unwrap();
        for task in &tasks[1..] {
            t.add_remote_endpoint(vni, *task, mac_of(*task), vtep(2))
                .unwrap();
        }
        t.add_vip(vni, vip_service(vip, 8080, 80, &tasks), mac_of(vip))
            .unwrap();
    });
    let mut per_task = [0usize; 3];
    let mut client_kept = 0;
    for sport in 0..3000u16 {
        let syn = tcp(
            mac_of(plain_ep(1)),
            mac_of(vip),
            plain_ep(1),
            vip,
            20000 + sport,
            8080,
            b"GET /",
        );
        let (_, w) = a.run1(PLAIN_PORT, &syn);
        let ip = Ipv4Packet::new_checked(&w[64..]).unwrap();
        per_task[tasks.iter().position(|t| *t == ip.dst_addr()).unwrap()] += 1;
        if ip.src_addr() == plain_ep(1) {
            client_kept += 1;
        }
    }
    for (t, n) in tasks.iter().zip(per_task) {
        println!("   {t}: {n} of 3000 connections");
    }
    println!(
        "   connections whose task sees the client's own address 10.0.0.1: {client_kept} of 3000"
    );

    println!("\n== per-core traffic generation through the pipeline (1 s per path, this machine)");
    for path in Path::ALL {
        for size in [64usize, 1400] {
            let mut w = Workload::new(path, size);
            let mut bufs = Workload::buffers(BURST * 4);
            let mut next = vec![Next::Exception; BURST * 4];
            let (mut pkts, mut busy) = (0u64, Duration::ZERO);
            let end = Instant::now() + Duration::from_secs(1);
            while Instant::now() < end {
                w.refill(&mut bufs);
                let t = Instant::now();
                w.process(&mut bufs, &mut next);
                busy += t.elapsed();
                w.check(&next);
                pkts += bufs.len() as u64;
            }
            let mpps = pkts as f64 / busy.as_secs_f64() / 1e6;
            println!(
                "   {:<18} {:>5} B: {:>6.2} Mpps  {:>6.1} Gb/s of inner frames",
                path.name(),
                size,
                mpps,
                mpps * size as f64 * 8.0 / 1e3
            );
        }
    }
    println!(
        "\n== node 1 drop counters: {:?}",
        a.counters().nonzero_drops()
    );
    println!(
        "== node 2 drop counters: {:?}",
        b.counters().nonzero_drops()
    );
}
