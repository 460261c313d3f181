//! Encrypted overlays across nodes (issue #11): the leader's datapath keys (SwarmKit's
//! `networking:ipsec` keys, replicated and handed out with the nodes' state) become ESP
//! SAs between the two nodes that have tasks on an `--opt encrypted` network; traffic
//! through two key rotations loses no datagram and no byte; every ESP packet captured on
//! the wire decrypts with Docker's SA parameters in an implementation that shares no code
//! with swarmgate (`tests/esp_docker.py`: moby's `buildSPI`, salt and ICV, OpenSSL's
//! AES-GCM); no cleartext VXLAN leaves; the SAs go with the last task.
//!
//! Needs root (namespaces, DPDK).

use std::process::{Command, Stdio};
use std::time::Duration;

use swarmgate_tests::netns;
use swarmgate_tests::swarm::{wait_until, Host, Lan};

/// A UDP echo server in task `id`'s namespace.
const SERVER: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9000))
while True:
    d, a = s.recvfrom(4096)
    s.sendto(d, a)
"#;

/// Sends numbered 1000-byte datagrams (their bytes a function of the number) at 400/s for
/// `secs` seconds, checks every echo byte for byte, and prints what came back.
const CLIENT: &str = r#"
import json, socket, sys, time
dst, secs = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.002)
def body(i):
    return i.to_bytes(4, "big") + bytes((i * 7 + k) & 255 for k in range(996))
sent, got, bad = 0, set(), 0
end = time.time() + secs
nxt = time.time()
def drain():
    global bad
    try:
        while True:
            d = s.recv(4096)
            i = int.from_bytes(d[:4], "big")
            if d != body(i):
                bad += 1
            else:
                got.add(i)
    except socket.timeout:
        pass
while time.time() < end:
    if time.time() >= nxt:
        s.sendto(body(sent), (dst, 9000))
        sent += 1
        nxt += 1 / 400
    drain()
t = time.time() + 2
while time.time() < t and len(got) < sent:
    drain()
missing = [i for i in range(sent) if i not in got]
print(json.dumps({"sent": sent, "echoed": len(got), "bad": bad, "missing": missing[:20]}))
"#;

fn in_task(id: &str, script: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        &format!("sgt-{id}"),
        "python3",
        "-c",
        script,
    ])
    .args(args);
    c
}

fn stats(h: &Host) -> serde_json::Value {
    serde_json::from_str(&h.ok("stats")).unwrap()
}

/// The SA tag this node encrypts with towards `peer`, if it has an SA.
fn tx_tag(h: &Host, peer: &str) -> Option<u64> {
    stats(h)["esp_tx"][peer]["tag"].as_u64()
}

fn esp_drops(h: &Host) -> Vec<(String, u64)> {
    let s = stats(h);
    [
        "unknown_spi",
        "replayed",
        "esp_stale_epoch",
        "auth_failed",
        "bad_esp_trailer",
        "esp_not_vxlan",
        "no_outbound_sa",
    ]
    .iter()
    .filter_map(|r| s["drops"][r].as_u64().map(|n| (r.to_string(), n)))
    .collect()
}

/// Every datapath key (tag, hex) in a manager's store.
fn keys_in(store: &std::path::Path) -> Vec<String> {
    let raw = std::fs::read(store).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let mut out: Vec<String> = Vec::new();
    let mut rest = &text[..];
    while let Some(i) = rest.find("\"tag\":") {
        rest = &rest[i + 6..];
        let tag: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Some(k) = rest.strip_prefix(&format!("{tag},\"key\":\"")) {
            let key: String = k.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
            if key.len() == 32 && !tag.is_empty() {
                let spec = format!("{key}:{tag}");
                if !out.contains(&spec) {
                    out.push(spec);
                }
            }
        }
    }
    out
}

#[test]
fn an_encrypted_overlay_across_nodes_survives_two_key_rotations() {
    if !netns::root_or_skip("an_encrypted_overlay_across_nodes_survives_two_key_rotations") {
        return;
    }
    let (lan, _) = Lan::swarm(
        "sge",
        67,
        &["m", "w1"],
        "--dispatcher-heartbeat 1s",
        "worker",
    );
    let (m, w1) = (&lan.hosts[0], &lan.hosts[1]);
    m.ok("network create -d overlay --opt encrypted --subnet 10.67.0.0/24 secret");
    let inspect: serde_json::Value = serde_json::from_str(&m.ok("network inspect secret")).unwrap();
    let vni = inspect[0]["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(stats(m)["esp_tx"].as_object().unwrap().is_empty());

    // The second node joins the network with a task: SAs both ways, under the primary
    // (the second oldest of SwarmKit's three first keys: tag 2).
    m.ok("service create --name web --replicas 2 --network secret -- sleep 100000");
    let mut tasks = Vec::new();
    wait_until("a task on each node, SAs both ways", 60, || {
        tasks = m.running("web");
        let mut nodes: Vec<&str> = tasks.iter().map(|t| t.1.as_str()).collect();
        nodes.sort();
        if nodes != ["m", "w1"] {
            return Err(format!("{tasks:?}"));
        }
        match (tx_tag(m, &w1.ip), tx_tag(w1, &m.ip)) {
            (Some(2), Some(2)) => Ok(()),
            t => Err(format!("SA tags {t:?}")),
        }
    });
    let on = |n: &str| tasks.iter().find(|t| t.1 == n).unwrap().clone();
    let (tm, tw) = (on("m"), on("w1"));

    // Traffic for 14 s, through two rotations, captured on both links (each capture sees
    // what its node receives: the gateways send with af_packet's qdisc bypass).
    let mut server = in_task(&tw.0, SERVER, &[]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pcaps = [m.dir.join("esp.pcap"), w1.dir.join("esp.pcap")];
    let stop_m = netns::capture(&m.ns, "eth0", 0, &pcaps[0]);
    let stop_w1 = netns::capture(&w1.ns, "eth0", 0, &pcaps[1]);
    let client = in_task(&tm.0, CLIENT, &[&tw.2, "14"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    m.ok("swarm update --rotate-datapath-key");
    wait_until("both nodes encrypting with tag 3", 10, || {
        match (tx_tag(m, &w1.ip), tx_tag(w1, &m.ip)) {
            (Some(3), Some(3)) => Ok(()),
            t => Err(format!("{t:?}")),
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    m.ok("swarm update --rotate-datapath-key");
    wait_until("both nodes encrypting with tag 4", 10, || {
        match (tx_tag(m, &w1.ip), tx_tag(w1, &m.ip)) {
            (Some(4), Some(4)) => Ok(()),
            t => Err(format!("{t:?}")),
        }
    });
    let out = client.wait_with_output().unwrap();
    stop_m();
    stop_w1();
    let _ = server.kill();
    let _ = server.wait();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("client: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    println!("encrypted overlay through two rotations: {r}");
    let sent = r["sent"].as_u64().unwrap();
    assert!(sent > 4000, "{r}");
    assert_eq!(
        r["echoed"].as_u64(),
        Some(sent),
        "every datagram echoed: {r}"
    );
    assert_eq!(r["bad"].as_u64(), Some(0), "every byte intact: {r}");
    for h in [m, w1] {
        assert!(esp_drops(h).is_empty(), "{}: {:?}", h.name, esp_drops(h));
    }

    // Every ESP packet on the wire opens with Docker's parameters (OpenSSL), under the
    // keys the leader replicated; not one cleartext VXLAN datagram on either link.
    let keys = keys_in(&m.dir.join("data/state.redb"));
    for tag in [":2", ":3", ":4"] {
        assert!(keys.iter().any(|k| k.ends_with(tag)), "{keys:?}");
    }
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(format!("{}/esp_docker.py", env!("CARGO_MANIFEST_DIR")))
        .arg("decrypt");
    for k in &keys {
        cmd.args(["--key", k]);
    }
    let o = cmd.args(["--vni", &vni]).args(&pcaps).output().unwrap();
    let verdict = String::from_utf8_lossy(&o.stdout).to_string();
    println!("esp_docker.py: {verdict}");
    assert!(
        o.status.success(),
        "{verdict}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(verdict.trim()).unwrap();
    assert!(v["decrypted"].as_u64().unwrap() >= 2 * sent, "{v}");
    assert!(
        v["spis"].as_u64().unwrap() >= 6,
        "three tags, both ways: {v}"
    );
    for pcap in &pcaps {
        let cleartext = Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(pcap)
            .args(["udp", "port", "4789"])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&cleartext.stdout).trim().is_empty(),
            "cleartext VXLAN on the wire: {}",
            String::from_utf8_lossy(&cleartext.stdout)
        );
    }

    // The last task on the network gone: the SAs go.
    m.ok("service rm web");
    wait_until("no SA left", 30, || {
        match (tx_tag(m, &w1.ip), tx_tag(w1, &m.ip)) {
            (None, None) => Ok(()),
            t => Err(format!("{t:?}")),
        }
    });
}
