//! Gossip on 7946 among a manager and two workers (each a network namespace with its own
//! host name, `swarmgate daemon` and DPDK gateway), with Docker's default heartbeat (a
//! node is Down for the leader only after 15 s): a worker cut off is declared down by the
//! other nodes' gossip within seconds, and its endpoints leave their data planes and DNS
//! before the leader even marks it Down; back, its endpoints return. A rotation of the
//! gossip keys under way drops no node.
//!
//! Needs root.

use swarmgate_tests::netns;
use swarmgate_tests::swarm::{wait_for, wait_until, Host, Lan};

/// (task ID, node, address) of each running task of `web`.
fn tasks(m: &Host) -> Vec<(String, String, String)> {
    m.running("web")
}

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
/// Whether task `from` gets an answer from `ip` (one ICMP echo, in its namespace).
fn pings(from: &str, ip: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("sgt-{from}"),
            "ping",
            "-c1",
            "-W1",
            ip,
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn sorted_ips(tasks: &[(String, String, String)]) -> Vec<String> {
    let mut v: Vec<String> = tasks.iter().map(|t| t.2.clone()).collect();
    v.sort();
    v
}

/// The gossiped tables (networkdb's `overlay_peer_table` and `endpoint_table`) are what
/// every node's remote endpoints and names come from: a restarted node (a new
/// incarnation) and a node that left and joined again leave nothing stale on the others
/// (moby#47728), and a worker withdraws the endpoints of a dead leader by itself.
#[test]
fn the_tables_leave_nothing_stale_and_outlive_the_leader() {
    if !netns::root_or_skip("the_tables_leave_nothing_stale_and_outlive_the_leader") {
        return;
    }
    let (mut lan, _) = Lan::swarm(
        "sgn",
        65,
        &["m", "w1", "w2"],
        "--dispatcher-heartbeat 1s",
        "worker",
    );
    let m = &lan.hosts[0];
    m.ok("network create -d overlay --subnet 10.65.0.0/24 net");
    let t0 = std::time::Instant::now();
    m.ok("service create --name web --replicas 3 --network net -- sleep 100000");
    let mut all = Vec::new();
    wait_until(
        "a task on each node, each name and address reached from w1",
        60,
        || {
            all = tasks(m);
            let mut nodes: Vec<&str> = all.iter().map(|t| t.1.as_str()).collect();
            nodes.sort();
            if nodes != ["m", "w1", "w2"] {
                return Err(format!("{all:?}"));
            }
            let from = &all.iter().find(|t| t.1 == "w1").unwrap().0;
            let r = resolve(from);
            if r != sorted_ips(&all) {
                return Err(format!("w1 resolves {r:?}"));
            }
            match all.iter().find(|t| !pings(from, &t.2)) {
                Some(t) => Err(format!("{} not reached from w1", t.2)),
                None => Ok(()),
            }
        },
    );
    println!(
        "tables: service create → 3 tasks on 3 nodes resolved and reached from another node in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let w1_task = all.iter().find(|t| t.1 == "w1").unwrap().0.clone();

    // w2's daemon crashes and restarts: a new incarnation of the same node, its task
    // adopted; its rows come back once, under the new incarnation.
    // The full syncs it does with the others when it is back are captured on w1's link:
    // each one memberlist's encrypted stream frame, opened by Python's AES-GCM.
    let w1 = &lan.hosts[1];
    let pcap = w1.dir.join("sync.pcap");
    let mut dump = std::process::Command::new("ip")
        .args([
            "netns", "exec", &w1.ns, "timeout", "10", "tcpdump", "-U", "-q", "-i", "eth0", "-w",
        ])
        .arg(&pcap)
        .args(["tcp", "port", "7946"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    lan.hosts[2].kill();
    lan.hosts[2].start();
    wait_until("w2's rows back after its restart", 30, || {
        let r = resolve(&w1_task);
        (r == sorted_ips(&all))
            .then_some(())
            .ok_or(format!("{r:?}"))
    });
    let _ = dump.wait();
    let (frames, opened) = open_sync_frames(&pcap, &[lan.hosts[0].dir.join("data/state.redb")]);
    println!(
        "tables: {opened} of {frames} full-sync frames captured on w1 opened by Python's AES-GCM"
    );
    assert!(frames >= 2, "full syncs captured: {frames}");
    assert_eq!(opened, frames);

    // w2 leaves (its task stops, the leader places it again) and joins again as a new
    // node: none of its old rows survives on w1.
    let m = &lan.hosts[0];
    let token = m.ok("swarm join-token -q worker").trim().to_owned();
    lan.hosts[2].ok("swarm leave");
    let old_w2 = all.iter().find(|t| t.1 == "w2").unwrap().2.clone();
    wait_until(
        "w2's task placed again, w1 resolving exactly the running tasks",
        60,
        || {
            all = tasks(m);
            let r = resolve(&w1_task);
            if all.len() != 3 || all.iter().any(|t| t.2 == old_w2) {
                return Err(format!("{all:?}"));
            }
            (r == sorted_ips(&all))
                .then_some(())
                .ok_or(format!("w1 resolves {r:?}, running {all:?}"))
        },
    );
    lan.hosts[2].ok(&format!("swarm join --token {token} {}:2377", m.ip));
    m.ok("service scale web=4");
    wait_until(
        "a task on the rejoined w2, w1 resolving exactly the running tasks",
        60,
        || {
            all = tasks(m);
            let r = resolve(&w1_task);
            if all.len() != 4 || !all.iter().any(|t| t.1 == "w2") {
                return Err(format!("{all:?}"));
            }
            (r == sorted_ips(&all))
                .then_some(())
                .ok_or(format!("w1 resolves {r:?}, running {all:?}"))
        },
    );
    assert!(!resolve(&w1_task).contains(&old_w2));
    let w2_task = all.iter().find(|t| t.1 == "w2").unwrap().2.clone();
    wait_for("w1 reaching the rejoined w2's task", 20, || {
        pings(&w1_task, &w2_task)
    });

    // The leader dies (its task's process lives on, unreachable behind a dead gateway):
    // w1 withdraws the leader's rows by itself, with no manager to tell it, and still
    // reaches w2.
    let on_m: Vec<String> = all
        .iter()
        .filter(|t| t.1 == "m")
        .map(|t| t.2.clone())
        .collect();
    assert!(!on_m.is_empty(), "{all:?}");
    let left: Vec<String> = sorted_ips(&all)
        .into_iter()
        .filter(|i| !on_m.contains(i))
        .collect();
    lan.hosts[0].kill();
    let t = std::time::Instant::now();
    wait_until("the dead leader's rows withdrawn on w1", 20, || {
        let r = resolve(&w1_task);
        (r == left).then_some(()).ok_or(format!("{r:?}"))
    });
    println!(
        "tables: the dead leader's endpoints withdrawn on w1 in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        pings(&w1_task, &w2_task),
        "w1 still reaches w2 without a leader"
    );
    // Back, so that the hosts leave the swarm and stop their tasks.
    lan.hosts[0].start();
}

/// What both captures' checks start with: the ring's keys from the stores, and
/// `packets(proto)`, each IPv4 packet of protocol `proto` in the pcap as (IP header,
/// transport segment).
const PCAP_PREAMBLE: &str = r#"
import re, struct, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
keys = set()
for f in sys.argv[2:]:
    keys |= set(re.findall(rb'"key":"([0-9a-f]{32})"', open(f, "rb").read()))
keys = [bytes.fromhex(k.decode()) for k in keys]
def opens(sealed, aad):
    if len(sealed) < 29 or sealed[0] != 1:
        return False
    for k in keys:
        try:
            AESGCM(k).decrypt(sealed[1:13], sealed[13:], aad)
            return True
        except Exception:
            pass
    return False
def packets(proto):
    data = open(sys.argv[1], "rb").read()
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        frame = data[off + 16: off + 16 + incl]
        off += 16 + incl
        if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != proto:
            continue
        ihl = (frame[14] & 15) * 4
        yield frame[14:14 + ihl], frame[14 + ihl:]
"#;

/// Runs `PCAP_PREAMBLE` + `script` over `pcap` with the keys in `stores`; the two numbers
/// it prints.
fn python_over_capture(
    script: &str,
    pcap: &std::path::Path,
    stores: &[std::path::PathBuf],
) -> (u64, u64) {
    let o = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!("{PCAP_PREAMBLE}{script}"))
        .arg(pcap)
        .args(stores)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let mut n = out
        .split_whitespace()
        .map(|x| x.parse::<u64>().unwrap_or(0));
    (n.next().unwrap_or(0), n.next().unwrap_or(0))
}

/// Reassembles each TCP flow of `pcap` and opens every memberlist stream frame in it
/// (type 10, big-endian length, then version 1, nonce, ciphertext and tag, with the five
/// header bytes authenticated): (frames, opened).
fn open_sync_frames(pcap: &std::path::Path, stores: &[std::path::PathBuf]) -> (u64, u64) {
    const SCRIPT: &str = r#"
flows = {}
for ip, tcp in packets(6):
    thl = (tcp[12] >> 4) * 4
    flows.setdefault((ip[12:20], tcp[0:4]), bytearray()).extend(tcp[thl:])
frames = opened = 0
for stream in flows.values():
    i = 0
    while i + 5 <= len(stream) and stream[i] == 10:
        n = struct.unpack_from("!I", stream, i + 1)[0]
        if i + 5 + n > len(stream):
            break
        frames += 1
        opened += opens(bytes(stream[i + 5:i + 5 + n]), bytes(stream[i:i + 5]))
        i += 5 + n
print(frames, opened)
"#;
    python_over_capture(SCRIPT, pcap, stores)
}

/// Opens every gossip datagram of `pcap` (memberlist's envelope): (seen, opened).
fn open_captured(pcap: &std::path::Path, stores: &[std::path::PathBuf]) -> (u64, u64) {
    const SCRIPT: &str = r#"
seen = opened = 0
for ip, udp in packets(17):
    if 7946 not in struct.unpack_from("!HH", udp, 0):
        continue
    seen += 1
    opened += opens(udp[8:], None)
print(seen, opened)
"#;
    python_over_capture(SCRIPT, pcap, stores)
}

fn w1_log_has(h: &Host, s: &str) -> bool {
    h.log().contains(s)
}
