//! Docker's tutorial "Use an overlay network for standalone containers" on two hosts
//! (issue #11): standalone containers on an `--attachable` overlay, one on the manager and
//! one on a worker (whose daemon asks the leader for the attachment, SwarmKit's
//! `ResourceAllocator.AttachNetwork`), pinging each other by name across the hosts; the
//! worker has the network only while a container uses it; a non-attachable network refuses
//! `run` with Docker's message; a removed container is withdrawn on every node.
//!
//! Needs root (namespaces, DPDK).

use swarmgate_tests::netns;
use swarmgate_tests::swarm::{wait_until, Host, Lan};

fn networks(h: &Host) -> Vec<(String, String)> {
    h.rows("network ls")
        .into_iter()
        .map(|n| {
            (
                n["Name"].as_str().unwrap_or("").to_owned(),
                n["ID"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn has_network(h: &Host, name: &str) -> Option<String> {
    networks(h)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, id)| id)
}

#[test]
fn standalone_containers_on_two_hosts_ping_each_other_by_name() {
    if !netns::root_or_skip("standalone_containers_on_two_hosts_ping_each_other_by_name") {
        return;
    }
    let (lan, _) = Lan::swarm(
        "sga",
        68,
        &["host1", "host2"],
        "--dispatcher-heartbeat 1s",
        "worker",
    );
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    h1.ok("network create --driver=overlay --attachable --subnet 10.68.0.0/24 test-net");
    h1.ok("network create --driver=overlay --subnet 10.68.1.0/24 closed");
    let net_id = has_network(h1, "test-net").expect("test-net on host1");

    // A network that is not attachable refuses a container, on a worker too.
    let e = h2.err("run -d --name x --network closed -- sleep 100000");
    assert!(
        e.contains("Could not attach to network closed") && e.contains("not manually attachable"),
        "{e}"
    );

    h1.ok("run -d --name alpine1 --network test-net -- sleep 100000");
    assert_eq!(has_network(h2, "test-net"), None, "not on host2 yet");
    h2.ok("run -d --name alpine2 --network test-net -- sleep 100000");
    assert_eq!(
        has_network(h2, "test-net").as_deref(),
        Some(net_id.as_str()),
        "test-net on host2, the same network"
    );

    // Each pings the other by name, across the hosts.
    wait_until("alpine1 pings alpine2", 20, || {
        let (ok, out) = h1.cli("exec alpine1 -- ping -c 2 -W 1 alpine2");
        ok.then_some(()).ok_or(out)
    });
    let out = h1.ok("exec alpine1 -- ping -c 2 alpine2");
    assert!(out.contains("2 packets transmitted, 2 received"), "{out}");
    let out = h2.ok("exec alpine2 -- ping -c 2 alpine1");
    assert!(out.contains("2 packets transmitted, 2 received"), "{out}");
    // A container in the foreground on host2, as the tutorial's alpine3.
    let out = h2.ok("run --name alpine3 --network test-net -- ping -c 2 alpine1");
    assert!(out.contains("2 packets transmitted, 2 received"), "{out}");
    h2.ok("rm alpine3");

    // alpine2 removed on host2: gone from host1's names and host2's networks.
    h2.ok("rm -f alpine2");
    wait_until("alpine2 withdrawn on host1", 20, || {
        let (ok, out) = h1.cli("exec alpine1 -- getent hosts alpine2");
        (!ok).then_some(()).ok_or(out)
    });
    wait_until("test-net gone from host2", 20, || {
        match has_network(h2, "test-net") {
            None => Ok(()),
            Some(id) => Err(id),
        }
    });
    // The name is free again, on either host.
    h2.ok("run -d --name alpine2 --network test-net -- sleep 100000");
    wait_until("the new alpine2 pinged from alpine1", 20, || {
        let (ok, out) = h1.cli("exec alpine1 -- ping -c 1 -W 1 alpine2");
        ok.then_some(()).ok_or(out)
    });
    h2.ok("rm -f alpine2");
    h1.ok("rm -f alpine1");
    h1.ok("network rm test-net");
}
