//! Separate control and data traffic (issue #11), as Docker's `--advertise-addr` and
//! `--data-path-addr` allow: each host has a control interface (kernel, 192.168.75.0/24)
//! and a data interface (the DPDK gateway's underlay, 192.168.74.0/24). Raft, the
//! dispatcher and gossip (2377, 7946) stay on the control network, VXLAN on the data
//! network, on the port `swarm init --data-path-port` chose for the whole swarm (4790 here,
//! none on 4789); tasks on three hosts reach each other; `network inspect` lists the peers
//! by their data-path addresses.
//!
//! Needs root (namespaces, DPDK).

use std::process::{Child, Command, Stdio};

use swarmgate_tests::netns::{self, run, try_run};
use swarmgate_tests::swarm::{wait_for, wait_until, Host, Lan};

const DATA: &str = "192.168.74";
const CONTROL: &str = "192.168.75";

/// The control network: a bridge in its own namespace, an `eth1` on it in every host.
struct ControlLan(String);

impl ControlLan {
    fn new(hosts: &[Host]) -> ControlLan {
        let ns = format!("sgctl{}", std::process::id() % 100000);
        run(&format!("ip netns add {ns}"));
        run(&format!("ip -n {ns} link add br0 type bridge"));
        run(&format!("ip -n {ns} link set br0 up"));
        for (i, h) in hosts.iter().enumerate() {
            let v = format!("{ns}v{i}");
            for cmd in [
                format!("ip link add {v}a type veth peer name {v}b"),
                format!("ip link set {v}a netns {} name eth1", h.ns),
                format!("ip link set {v}b netns {ns}"),
                format!("ip -n {ns} link set {v}b master br0 up"),
                format!("ip -n {} addr add {CONTROL}.{}/24 dev eth1", h.ns, i + 1),
                format!("ip -n {} link set eth1 up", h.ns),
            ] {
                run(&cmd);
            }
        }
        ControlLan(ns)
    }
}

impl Drop for ControlLan {
    fn drop(&mut self) {
        try_run(&format!("ip netns del {}", self.0));
    }
}

/// A running tcpdump, stopped when dropped (also when the test fails).
struct Capture(Child);

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tcpdump on `iface` of host namespace `ns`, into `pcap`.
fn capture(ns: &str, iface: &str, pcap: &std::path::Path) -> Capture {
    Capture(
        Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-n", "-U", "-i", iface, "-w",
            ])
            .arg(pcap)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Packets in `pcap` that match the tcpdump filter `filter`.
fn count(pcap: &std::path::Path, filter: &str) -> usize {
    let o = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(pcap)
        .arg(filter)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).lines().count()
}

#[test]
fn control_and_data_traffic_on_separate_interfaces() {
    if !netns::root_or_skip("control_and_data_traffic_on_separate_interfaces") {
        return;
    }
    let mut lan = Lan::new("sgs", 74, &["m", "w1", "w2"]);
    let _ctl = ControlLan::new(&lan.hosts);
    for h in &mut lan.hosts {
        h.start();
    }
    let m = &lan.hosts[0];
    m.ok(&format!(
        "swarm init --advertise-addr {CONTROL}.1 --data-path-addr {DATA}.1 --data-path-port 4790 \
         --dispatcher-heartbeat 1s"
    ));
    let token = m.ok("swarm join-token -q worker").trim().to_owned();
    for (i, h) in lan.hosts.iter().enumerate().skip(1) {
        h.ok(&format!(
            "swarm join --token {token} --advertise-addr {CONTROL}.{n} --data-path-addr {DATA}.{n} {CONTROL}.1:2377",
            n = i + 1
        ));
    }
    wait_for("three nodes ready", 30, || {
        m.rows("node ls")
            .iter()
            .filter(|n| n["Status"] == "Ready")
            .count()
            == 3
    });
    // Node addresses are the advertised (control) ones.
    let addrs: Vec<String> = m
        .rows("node ls")
        .iter()
        .map(|n| n["Addr"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        addrs.iter().all(|a| a.starts_with(CONTROL)),
        "node addresses {addrs:?}"
    );

    let dir = std::env::temp_dir().join(format!("sg-datapath-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let caps: Vec<(String, &str, Capture)> = lan.hosts[1..]
        .iter()
        .flat_map(|h| {
            ["eth0", "eth1"].map(|i| {
                let pcap = dir.join(format!("{}-{i}.pcap", h.name));
                (pcap.display().to_string(), i, capture(&h.ns, i, &pcap))
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(1));

    m.ok("network create -d overlay --subnet 10.74.0.0/24 data-net");
    m.ok("service create --name web --replicas 3 --network data-net -- sleep 100000");
    let mut tasks = Vec::new();
    wait_until("a task on every node", 60, || {
        tasks = m.running("web");
        let mut nodes: Vec<&str> = tasks.iter().map(|t| t.1.as_str()).collect();
        nodes.sort();
        (nodes == ["m", "w1", "w2"])
            .then_some(())
            .ok_or(format!("{tasks:?}"))
    });
    // Every task reaches every other over the data network.
    for (id, node, _) in &tasks {
        for (_, other, ip) in &tasks {
            if other == node {
                continue;
            }
            wait_for(&format!("{node}'s task pings {other}'s ({ip})"), 20, || {
                Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &format!("sgt-{id}"),
                        "ping",
                        "-c",
                        "1",
                        "-W",
                        "1",
                        ip,
                    ])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
        }
    }
    // network inspect: the peers by their data-path addresses, on a manager and a worker.
    for h in [&lan.hosts[0], &lan.hosts[1]] {
        let n: serde_json::Value = serde_json::from_str(&h.ok("network inspect data-net")).unwrap();
        let mut peers: Vec<String> = n[0]["Peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["IP"].as_str().unwrap().to_owned())
            .collect();
        peers.sort();
        assert_eq!(
            peers,
            [
                format!("{DATA}.1"),
                format!("{DATA}.2"),
                format!("{DATA}.3")
            ],
            "Peers on {}: {n}",
            h.name
        );
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    for (pcap, iface, c) in caps {
        drop(c);
        let pcap = std::path::Path::new(&pcap);
        let control = count(pcap, "tcp port 2377 or port 7946");
        let vxlan = count(pcap, "udp port 4790");
        assert_eq!(
            count(pcap, "udp port 4789"),
            0,
            "VXLAN on 4789 ({})",
            pcap.display()
        );
        println!(
            "datapath: {} {iface}: {control} control packets, {vxlan} VXLAN",
            pcap.display()
        );
        let _ = std::fs::remove_file(pcap);
        if iface == "eth0" {
            assert_eq!(
                control,
                0,
                "no control traffic on the data interface ({})",
                pcap.display()
            );
            assert!(
                vxlan > 0,
                "VXLAN on the data interface ({})",
                pcap.display()
            );
        } else {
            assert!(
                control > 0,
                "control traffic on the control interface ({})",
                pcap.display()
            );
            assert_eq!(
                vxlan,
                0,
                "no VXLAN on the control interface ({})",
                pcap.display()
            );
        }
    }
    let _ = std::fs::remove_dir(&dir);
}
