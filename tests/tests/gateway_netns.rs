//! The DPDK gateway moving real frames between network namespaces, against the Linux
//! kernel's own VXLAN (Docker's data path) and against itself. Each test builds and removes
//! its own namespaces. Needs root (CI runs as root); skipped with a message otherwise.
//!
//! The tests run one at a time: each starts DPDK processes that poll their cores.

use std::sync::Mutex;
use std::time::Duration;

use swarmgate_tests::netns::{self, Side, Topology};

static SERIAL: Mutex<()> = Mutex::new(());

fn guard() -> Option<std::sync::MutexGuard<'static, ()>> {
    if !netns::root_or_skip("the namespace tests") {
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Captures on a host's underlay interface until the returned closure is called. A packet
/// socket sees every frame that arrives on an interface (DPDK's own transmissions bypass
/// the capture point of the sending side, so each side's capture holds what it received).
fn capture(t: &Topology, host: usize, pcap: &std::path::Path) -> impl FnOnce() {
    swarmgate_tests::netns::capture(&t.host(host), &t.underlay_iface(host), 256, pcap)
}

fn exercise(t: &Topology) {
    // Warm-up (first packets may meet an empty kernel neighbour cache on a kernel side).
    t.ping(1, 2, 1);
    for (a, b) in [(1, 2), (2, 1)] {
        let (sent, got) = t.ping(a, b, 5);
        assert_eq!((sent, got), (5, 5), "ping {a}->{b}");
    }
    for (a, b) in [(1, 2), (2, 1)] {
        t.tcp_stream(a, b, 4 << 20);
        t.udp_echo(a, b, 200, 1200);
    }
}

#[test]
fn kernel_vxlan_and_swarmgate_interoperate() {
    let Some(_g) = guard() else { return };
    let mut t = Topology::new([Side::Kernel, Side::Swarmgate], false);
    exercise(&t);
    // IPv4 fragments from an endpoint cross the (default) TAP local port one by one, both
    // ways (the af_packet local port would reassemble them: README, "The DPDK gateway").
    let (ok, out) = t.exec(
        &t.endpoint(1),
        &format!("ping -c 2 -i 0.2 -s 3000 -W 2 {}", Topology::ep(2)),
    );
    assert!(ok, "fragmented ping through the TAP: {out}");
    // Not overlay data: TCP to the node's own address on the Raft port reaches the kernel
    // through the exception TAP, and the kernel's answers leave through the underlay.
    t.tcp_stream_between(&t.host(1), &t.host(2), Topology::vtep(2), 2377, 1 << 20);
    let s = t.gateways[1].as_mut().unwrap().stop();
    assert!(s["exception"].as_u64().unwrap() > 10, "{s}");
    let net = &s["networks"]["test-overlay"];
    assert!(net["encap_packets"].as_u64().unwrap() > 1000, "{s}");
    assert!(net["decap_packets"].as_u64().unwrap() > 1000, "{s}");
}

#[test]
fn af_xdp_local_port_against_the_kernel() {
    let Some(_g) = guard() else { return };
    let mut t = Topology::new([Side::Kernel, Side::SwarmgateAfXdp], false);
    exercise(&t);
    // An XDP socket sees frames before the stack: IPv4 fragments cross one by one both ways.
    for (a, b) in [(1, 2), (2, 1)] {
        let (ok, out) = t.exec(
            &t.endpoint(a),
            &format!("ping -c 2 -i 0.2 -s 3000 -W 2 {}", Topology::ep(b)),
        );
        assert!(ok, "fragmented ping {a}->{b} through the XDP socket: {out}");
    }
    let s = t.gateways[1].as_mut().unwrap().stop();
    assert!(
        s["ports"]["test-overlay"]["device"]
            .as_str()
            .unwrap()
            .starts_with("net_af_xdp"),
        "{s}"
    );
    let net = &s["networks"]["test-overlay"];
    assert!(net["encap_packets"].as_u64().unwrap() > 1000, "{s}");
}

#[test]
fn swarmgate_on_both_sides() {
    let Some(_g) = guard() else { return };
    // Each kind of local port: a veth polled with af_packet on host 1, a TAP on host 2.
    let mut t = Topology::new([Side::SwarmgateAfPacket, Side::Swarmgate], false);
    exercise(&t);
    // The underlay addresses answer ping from the data plane itself.
    let (ok, out) = t.exec(
        &t.host(1),
        &format!("ping -c 2 -i 0.2 -W 2 {}", Topology::vtep(2)),
    );
    assert!(ok, "{out}");
    for g in t.gateways.iter_mut() {
        let s = g.as_mut().unwrap().stop();
        assert!(
            s["networks"]["test-overlay"]["decap_packets"]
                .as_u64()
                .unwrap()
                > 1000,
            "{s}"
        );
    }
}

#[test]
fn encrypted_overlay_carries_only_esp_and_drops_cleartext() {
    let Some(_g) = guard() else { return };
    let mut t = Topology::new([Side::Swarmgate, Side::Swarmgate], true);
    let pcaps = [
        t.dir().join("underlay1.pcap"),
        t.dir().join("underlay2.pcap"),
    ];
    let stop1 = capture(&t, 1, &pcaps[0]);
    let stop2 = capture(&t, 2, &pcaps[1]);
    exercise(&t);
    stop1();
    stop2();

    let count = |pcap: &std::path::Path, filter: &str| -> usize {
        let out = netns::run(&format!(
            "tshark -r {} -Y '{filter}' -T fields -e frame.number 2>/dev/null",
            pcap.display()
        ));
        out.lines().filter(|l| !l.trim().is_empty()).count()
    };
    for pcap in &pcaps {
        let esp = count(pcap, "esp");
        assert!(esp > 1000, "only {esp} ESP packets in {}", pcap.display());
        assert_eq!(
            count(pcap, "udp.port == 4789"),
            0,
            "cleartext VXLAN on the underlay of an encrypted network"
        );
        assert_eq!(
            count(pcap, "ip.addr == 10.0.0.0/24"),
            0,
            "overlay addresses visible on the underlay"
        );
    }

    // Inject cleartext VXLAN for the encrypted VNI from host 1's kernel (it leaves through
    // host 1's exception path onto the underlay): host 2 must drop and count it.
    let inject = format!(
        "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         hdr=bytes([8,0,0,0,0,0x10,0x01,0]); inner=bytes.fromhex('{dst}{src}0800')+bytes(46); \
         [s.sendto(hdr+inner, ('{to}', 4789)) for _ in range(3)]\"",
        dst = Topology::ep_mac(2).replace(':', ""),
        src = Topology::ep_mac(1).replace(':', ""),
        to = Topology::vtep(2),
    );
    let (ok, out) = t.exec(&t.host(1), &inject);
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let s = t.gateways[1].as_mut().unwrap().stop();
    assert_eq!(
        s["drops"]["cleartext_on_encrypted"].as_u64(),
        Some(3),
        "{s}"
    );
    assert_eq!(s["drops"]["auth_failed"].as_u64(), None, "{s}");
    assert_eq!(s["drops"]["replayed"].as_u64(), None, "{s}");
}

#[test]
fn underlay_capture_decodes_as_vxlan_in_tshark() {
    let Some(_g) = guard() else { return };
    let t = Topology::new([Side::Kernel, Side::Swarmgate], false);
    // Captured on the kernel side, which sees both directions.
    let pcap = t.dir().join("vxlan.pcap");
    let stop = capture(&t, 1, &pcap);
    t.ping(1, 2, 1);
    assert_eq!(t.ping(1, 2, 3), (3, 3));
    stop();
    let out = netns::run(&format!(
        "tshark -r {} -d udp.port==4789,vxlan -Y 'vxlan && icmp' -T fields -e vxlan.vni -e ip.src -e ip.dst -e icmp.type 2>/dev/null",
        pcap.display()
    ));
    // Requests from the kernel side and replies from swarmgate, both decoded with their
    // inner addresses: "4097  192.168.77.1,10.0.0.1  192.168.77.2,10.0.0.2  8".
    assert!(
        out.lines()
            .any(|l| l.starts_with("4097\t192.168.77.1,10.0.0.1\t192.168.77.2,10.0.0.2\t8")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("4097\t192.168.77.2,10.0.0.2\t192.168.77.1,10.0.0.1\t0")),
        "{out}"
    );
}
