//! Forged traffic on the underlay against a three-node swarm (issue #11): from a machine on
//! the LAN that spoofs a member node's address,
//! * cleartext VXLAN for an encrypted network's VNI is dropped and counted
//!   (`cleartext_on_encrypted`) — the same frame for a plain network's VNI is delivered,
//!   so the frame itself is good;
//! * genuine ESP captured from a node, replayed once that node has left the swarm, is
//!   dropped as an unknown SPI (its SAs are gone) and reaches no task — replayed while the
//!   node was a member it was refused by the anti-replay window instead.
//!
//! Needs root (namespaces, DPDK).

use std::process::{Command, Stdio};

use swarmgate_tests::netns;
use swarmgate_tests::swarm::{wait_for, wait_until, Host, Lan};

/// Appends every UDP datagram received on port 7000 to `argv[1]-<task ID>`.
const SINK: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7000))
path = "%s-%s" % (sys.argv[1], os.environ["SWARMGATE_TASK_ID"])
while True:
    d, a = s.recvfrom(4096)
    with open(path, "a") as f:
        f.write("%s %s\n" % (a[0], d.decode(errors="replace")))
"#;

/// Sends raw Ethernet frames on `eth0` of the namespace it runs in. `argv[1]`: `vxlan` (then
/// dst MAC, outer src and dst IP, VNI, inner src MAC/IP, inner dst MAC/IP, payload) or
/// `pcap` (a capture whose frames are sent as they are).
const INJECT: &str = r#"
import socket, struct, sys
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def ip(src, dst, proto, payload):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1234, 0, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload
def udp(sport, dport, payload):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
mac = lambda m: bytes.fromhex(m.replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
me = s.getsockname()[4]
if sys.argv[1] == "vxlan":
    dmac, osrc, odst, vni, imac_s, isrc, imac_d, idst, payload = sys.argv[2:]
    inner = mac(imac_d) + mac(imac_s) + b"\x08\x00" + ip(isrc, idst, 17, udp(7001, 7000, payload.encode()))
    vx = struct.pack("!II", 0x08000000, int(vni) << 8) + inner
    s.send(mac(dmac) + me + b"\x08\x00" + ip(osrc, odst, 17, udp(50000, 4789, vx)))
    print(1)
else:
    data = open(sys.argv[2], "rb").read()
    at, n = 24, 0
    while at + 16 <= len(data):
        caplen = struct.unpack("<I", data[at + 8:at + 12])[0]
        s.send(data[at + 16:at + 16 + caplen])
        at += 16 + caplen
        n += 1
    print(n)
"#;

fn inject(client: &str, args: &[&str]) -> usize {
    let o = Command::new("ip")
        .args(["netns", "exec", client, "python3", "-c", INJECT])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

fn drops(h: &Host, reason: &str) -> u64 {
    let s: serde_json::Value = serde_json::from_str(&h.ok("stats")).unwrap();
    s["drops"][reason].as_u64().unwrap_or(0)
}

fn mac_of(ns: &str) -> String {
    let o = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", "eth0"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v[0]["address"].as_str().unwrap().to_owned()
}

/// Docker's MAC for an overlay address (02:42 and the address).
fn docker_mac(ip: &str) -> String {
    let o: Vec<u8> = ip.split('.').map(|b| b.parse().unwrap()).collect();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

fn vni(m: &Host, net: &str) -> String {
    let n: serde_json::Value =
        serde_json::from_str(&m.ok(&format!("network inspect {net}"))).unwrap();
    n[0]["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn forged_cleartext_and_a_departed_nodes_esp_are_dropped() {
    if !netns::root_or_skip("forged_cleartext_and_a_departed_nodes_esp_are_dropped") {
        return;
    }
    let (lan, _) = Lan::swarm(
        "sgf",
        76,
        &["m", "w1", "w2"],
        "--dispatcher-heartbeat 1s",
        "worker",
    );
    let client = lan.client("c", "192.168.76.100");
    let (m, w1, w2) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let sink = std::env::temp_dir().join(format!("sg-forged-{}", std::process::id()));
    let sink = sink.display().to_string();
    m.ok("network create -d overlay --subnet 10.76.0.0/24 plain");
    m.ok("network create -d overlay --opt encrypted --subnet 10.76.1.0/24 secret");
    let (ok, out) = m.cli_args(&[
        "service",
        "create",
        "--name",
        "sink",
        "--replicas",
        "2",
        "--constraint",
        "node.role==worker",
        "--network",
        "plain",
        "--network",
        "secret",
        "--",
        "python3",
        "-c",
        SINK,
        &sink,
    ]);
    assert!(ok, "{out}");
    let mut rows = Vec::new();
    wait_until("a sink on each worker", 60, || {
        rows = m
            .rows("service ps sink")
            .into_iter()
            .filter(|t| {
                t["CurrentState"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Running")
            })
            .collect::<Vec<_>>();
        (rows.len() == 2).then_some(()).ok_or(format!("{rows:?}"))
    });
    // Each task's address on a network.
    let addr = |node: &str, net: &str| -> (String, String) {
        let t = rows.iter().find(|t| t["Node"] == node).unwrap();
        let a = t["Addresses"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str()?.strip_prefix(&format!("{net}=")))
            .next()
            .unwrap()
            .to_owned();
        (t["ID"].as_str().unwrap().to_owned(), a)
    };
    let (w1_task, w1_plain) = addr("w1", "plain");
    let (_, w1_secret) = addr("w1", "secret");
    let (_, w2_plain) = addr("w2", "plain");
    let (w2_task, w2_secret) = addr("w2", "secret");
    let log = format!("{sink}-{w1_task}");
    let received = || std::fs::read_to_string(&log).unwrap_or_default();
    // w2's task reaches w1's on both networks (so the SAs between them exist).
    for (ip, what) in [(&w1_plain, "plain-from-w2"), (&w1_secret, "secret-from-w2")] {
        wait_for(&format!("w2's task reaches {ip}"), 20, || {
            let _ = Command::new("ip")
                .args(["netns", "exec", &format!("sgt-{w2_task}"), "python3", "-c"])
                .arg(format!(
                    "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'{what}', ('{ip}', 7000))"
                ))
                .status();
            std::thread::sleep(std::time::Duration::from_millis(200));
            received().contains(what)
        });
    }
    let w1_mac = mac_of(&w1.ns);
    let (plain_vni, secret_vni) = (vni(m, "plain"), vni(m, "secret"));
    let forge = |vni: &str, src: &str, dst: &str, payload: &str| {
        inject(
            &client,
            &[
                "vxlan",
                &w1_mac,
                &w2.ip,
                &w1.ip,
                vni,
                &docker_mac(src),
                src,
                &docker_mac(dst),
                dst,
                payload,
            ],
        )
    };

    // Cleartext VXLAN claiming to come from w2: delivered on the plain network, dropped
    // and counted on the encrypted one.
    forge(&plain_vni, &w2_plain, &w1_plain, "forged-plain");
    wait_for("the forged plain frame delivered", 10, || {
        received().contains("forged-plain")
    });
    let before = drops(w1, "cleartext_on_encrypted");
    for _ in 0..3 {
        forge(&secret_vni, &w2_secret, &w1_secret, "forged-secret");
    }
    wait_for("three cleartext frames counted", 10, || {
        drops(w1, "cleartext_on_encrypted") == before + 3
    });
    assert!(!received().contains("forged-secret"), "{}", received());
    println!("forged: cleartext VXLAN on the encrypted VNI: 3 of 3 dropped and counted");

    // Genuine ESP from w2 to w1, captured on w1's link: datagrams sent until tcpdump has
    // three (it may start listening late), within 20 s.
    let pcap = format!("{sink}-esp.pcap");
    let mut cap = Command::new("timeout")
        .args([
            "20", "ip", "netns", "exec", &w1.ns, "tcpdump", "-n", "-U", "-i", "eth0", "-c", "3",
            "-w", &pcap,
        ])
        .arg(format!("esp and src host {}", w2.ip))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut sent = 0;
    while cap.try_wait().unwrap().is_none() {
        let _ = Command::new("ip")
            .args(["netns", "exec", &format!("sgt-{w2_task}"), "python3", "-c"])
            .arg(format!(
                "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'captured-{sent}', ('{w1_secret}', 7000))"
            ))
            .status();
        sent += 1;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    wait_for("the captured datagrams delivered", 10, || {
        received().matches("captured-").count() == sent
    });
    // Replayed while w2 is a member: the SA knows them, the anti-replay window refuses.
    let replayed = drops(w1, "replayed");
    assert_eq!(inject(&client, &["pcap", &pcap]), 3);
    wait_for("the replay refused", 10, || {
        drops(w1, "replayed") == replayed + 3
    });
    // w2 leaves: w1 drops its SAs; the same ESP is now an unknown SPI.
    w2.ok("swarm leave");
    wait_for("w1's SA with w2 gone", 30, || {
        let s: serde_json::Value = serde_json::from_str(&w1.ok("stats")).unwrap();
        s["esp_tx"].get(&w2.ip).is_none()
    });
    let lines = received().lines().count();
    let unknown = drops(w1, "unknown_spi");
    assert_eq!(inject(&client, &["pcap", &pcap]), 3);
    wait_for(
        "a departed node's ESP dropped as an unknown SPI",
        10,
        || drops(w1, "unknown_spi") == unknown + 3,
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        received().lines().count(),
        lines,
        "nothing delivered: {}",
        received()
    );
    println!("forged: a departed node's ESP: 3 of 3 dropped as unknown SPIs");
    for f in [log, pcap, format!("{sink}-{w2_task}")] {
        let _ = std::fs::remove_file(f);
    }
}
