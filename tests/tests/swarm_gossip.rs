//! Gossip on 7946 among a manager and two workers (each a network namespace with its own
//! host name, `swarmgate daemon` and DPDK gateway), with Docker's default heartbeat (a
//! node is Down for the leader only after 15 s): a worker cut off is declared down by the
//! other nodes' gossip within seconds, and its endpoints leave their data planes and DNS
//! before the leader even marks it Down; back, its endpoints return. A rotation of the
//! gossip keys under way drops no node.
//!
//! Needs root.

use swarmgate_tests::netns;
use swarmgate_tests::swarm::{wait_until, Host, Lan};

/// (task ID, node, address) of each running task of `web`.
fn tasks(m: &Host) -> Vec<(String, String, String)> {
    m.rows("service ps web")
        .into_iter()
        .filter(|t| {
            t["DesiredState"] == "Running"
                && t["CurrentState"].as_str().unwrap().starts_with("Running")
        })
        .map(|t| {
            (
                t["ID"].as_str().unwrap().to_owned(),
                t["Node"].as_str().unwrap().to_owned(),
                t["Addresses"][0]
                    .as_str()
                    .and_then(|a| a.split_once('='))
                    .map_or(String::new(), |a| a.1.to_owned()),
            )
        })
        .collect()
}

/// `tasks.web` as task `from` resolves it, sorted.
fn resolve(from: &str) -> Vec<String> {
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &format!("sgt-{from}"), "python3", "-c"])
        .arg(
            "import socket,json\ntry: print(json.dumps(sorted(socket.gethostbyname_ex('tasks.web')[2])))\nexcept Exception: print('[]')",
        )
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

fn status(m: &Host, node: &str) -> String {
    m.rows("node ls")
        .into_iter()
        .find(|n| n["Hostname"] == node)
        .map(|n| n["Status"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

#[test]
fn gossip_withdraws_a_lost_node_before_the_leader_notices() {
    if !netns::root_or_skip("gossip_withdraws_a_lost_node_before_the_leader_notices") {
        return;
    }
    // Docker's default heartbeat: the leader marks a node Down only after 15 s.
    let (lan, _) = Lan::swarm("sgg", 64, &["m", "w1", "w2"], "", "worker");
    let m = &lan.hosts[0];
    m.ok("network create -d overlay --subnet 10.64.0.0/24 net");
    m.ok("service create --name web --replicas 3 --network net -- sleep 100000");
    let mut all = Vec::new();
    wait_until("a task on each node", 60, || {
        all = tasks(m);
        let mut nodes: Vec<&str> = all.iter().map(|t| t.1.as_str()).collect();
        nodes.sort();
        (nodes == ["m", "w1", "w2"])
            .then_some(())
            .ok_or(format!("{all:?}"))
    });
    let on = |n: &str| all.iter().find(|t| t.1 == n).unwrap().clone();
    let (w1_task, w2_task) = (on("w1"), on("w2"));
    let mut ips: Vec<String> = all.iter().map(|t| t.2.clone()).collect();
    ips.sort();
    wait_until("every task resolves every task", 30, || {
        let r = resolve(&w1_task.0);
        (r == ips).then_some(()).ok_or(format!("{r:?}"))
    });
    // Every node gossips with the others (the manager's log names each one up).
    wait_until("gossip among the three", 30, || {
        let log = m.log();
        (log.matches("gossip: node up").count() >= 2)
            .then_some(())
            .ok_or(log)
    });

    // The datagrams on the wire, captured, open with Python's `cryptography` AES-GCM
    // (memberlist's envelope: version 1, 12-byte nonce, ciphertext and tag) under a key of
    // the swarm's ring as the leader stored it: an implementation sharing no code with ours.
    let pcap = m.dir.join("gossip.pcap");
    netns::run(&format!(
        "ip netns exec {} timeout 4 tcpdump -U -q -i eth0 -w {} udp port 7946 || true",
        m.ns,
        pcap.display()
    ));
    let (seen, opened) = open_captured(&pcap, &[m.dir.join("data/state.redb")]);
    println!("gossip: {opened} of {seen} captured datagrams opened by Python's AES-GCM");
    assert!(seen >= 3, "gossip datagrams captured: {seen}");
    assert_eq!(opened, seen, "every captured datagram opens under the ring");

    // A key rotation under way: no node is lost.
    m.ok("swarm update --rotate-gossip-key");
    std::thread::sleep(std::time::Duration::from_secs(13));
    for h in &lan.hosts {
        assert!(!h.log().contains("gossip: node down"), "{}", h.log());
        assert!(!h.log().contains("no key of the ring opens"), "{}", h.log());
    }
    assert!(
        m.log().contains("messages sealed with the newest key"),
        "{}",
        m.log()
    );

    // w2 cut off: gone from w1's DNS (and data plane) within seconds.
    let w2 = &lan.hosts[2];
    netns::run(&format!("ip -n {} link set eth0 down", w2.ns));
    let t = std::time::Instant::now();
    let without: Vec<String> = ips.iter().filter(|i| **i != w2_task.2).cloned().collect();
    wait_until("w2's task withdrawn on w1", 15, || {
        let r = resolve(&w1_task.0);
        (r == without).then_some(()).ok_or(format!("{r:?}"))
    });
    let gone = t.elapsed();
    let leader_view = status(m, "w2");
    println!(
        "gossip: w2 withdrawn on w1 {:.1} s after its link went down (the leader shows it {leader_view})",
        gone.as_secs_f64()
    );
    assert_eq!(
        leader_view, "Ready",
        "withdrawn by gossip, not by the leader"
    );
    assert!(w1_log_has(&lan.hosts[1], "gossip: node down"));

    // Back before the leader gave it up: its endpoint returns.
    netns::run(&format!("ip -n {} link set eth0 up", w2.ns));
    wait_until("w2's task back on w1", 30, || {
        let r = resolve(&w1_task.0);
        (r == ips).then_some(()).ok_or(format!("{r:?}"))
    });
    m.ok("service rm web");
}

/// (datagrams to or from UDP 7946 in `pcap`, those that open under a gossip key found in
/// `stores`), by a Python script using `cryptography`'s AES-GCM.
fn open_captured(pcap: &std::path::Path, stores: &[std::path::PathBuf]) -> (u64, u64) {
    const SCRIPT: &str = r#"
import re, struct, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
keys = set()
for f in sys.argv[2:]:
    keys |= set(re.findall(rb'"key":"([0-9a-f]{32})"', open(f, "rb").read()))
keys = [bytes.fromhex(k.decode()) for k in keys]
data = open(sys.argv[1], "rb").read()
off, seen, opened = 24, 0, 0
while off + 16 <= len(data):
    incl = struct.unpack_from("<I", data, off + 8)[0]
    frame = data[off + 16: off + 16 + incl]
    off += 16 + incl
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        continue
    ihl = (frame[14] & 15) * 4
    udp = frame[14 + ihl:]
    if 7946 not in struct.unpack_from("!HH", udp, 0):
        continue
    payload = udp[8:]
    seen += 1
    if payload[0] != 1:
        continue
    for k in keys:
        try:
            AESGCM(k).decrypt(payload[1:13], payload[13:], None)
            opened += 1
            break
        except Exception:
            pass
print(seen, opened)
"#;
    let o = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(pcap)
        .args(stores)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let mut n = out
        .split_whitespace()
        .map(|x| x.parse::<u64>().unwrap_or(0));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (n.next().unwrap_or(0), n.next().unwrap_or(0))
}

fn w1_log_has(h: &Host, s: &str) -> bool {
    h.log().contains(s)
}
