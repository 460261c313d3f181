//! A manager and two workers (each a network namespace with its own host name, `swarmgate
//! daemon` and DPDK gateway on an af_packet underlay): a replicated service on a user
//! overlay spread over the three nodes, every task reaching every other one across nodes
//! by address, by the service's VIP and by `tasks.<service>`; a global service on the
//! nodes its constraint allows; scaling, a drained node emptied, and a worker cut off — Down, its tasks placed elsewhere, its endpoints
//! withdrawn from the other nodes' data planes and DNS, and its stale tasks stopped when it
//! comes back.
//!
//! Needs root.

use std::collections::{BTreeMap, BTreeSet};
use swarmgate_tests::netns;
use swarmgate_tests::swarm::{wait_for, wait_until, Host, Lan};

/// Each task serves its own name over HTTP on port 80.
const WEB: &str =
    r#"echo "served by $SWARMGATE_TASK_NAME" > index.html && exec python3 -m http.server 80"#;

/// A task of `web` as `service ps` shows it.
#[derive(Debug, Clone)]
struct WebTask {
    id: String,
    name: String,
    node: String,
    ip: String,
}

fn running(m: &Host) -> Vec<WebTask> {
    running_of(m, "web")
}

fn running_of(m: &Host, service: &str) -> Vec<WebTask> {
    m.rows(&format!("service ps {service}"))
        .into_iter()
        .filter(|t| {
            t["DesiredState"] == "Running"
                && t["CurrentState"].as_str().unwrap().starts_with("Running")
        })
        .map(|t| WebTask {
            id: t["ID"].as_str().unwrap().to_owned(),
            name: format!(
                "{}.{}",
                t["Name"].as_str().unwrap(),
                t["ID"].as_str().unwrap()
            ),
            node: t["Node"].as_str().unwrap().to_owned(),
            ip: t["Addresses"][0]
                .as_str()
                .and_then(|a| a.split_once('='))
                .map_or(String::new(), |a| a.1.to_owned()),
        })
        .collect()
}

fn per_node(tasks: &[WebTask]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in tasks {
        *m.entry(t.node.clone()).or_default() += 1;
    }
    m
}

/// Runs `script` (Python) inside task `id`'s namespace; its stdout, or `None` if it
/// failed.
fn in_task(id: &str, script: &str) -> Option<String> {
    let o = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("sgt-{id}"),
            "python3",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// What task `from` sees: the addresses of `web` and `tasks.web`, the answer of every
/// address in `targets` (its first line, or "-" on failure), and the tasks that answered
/// 12 connections to the VIP.
fn probe(from: &str, targets: &[String]) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
    let script = format!(
        r#"
import json, socket, urllib.request
def get(u):
    try:
        return urllib.request.urlopen(u, timeout=3).read().decode().strip()
    except Exception:
        return "-"
def addrs(n):
    try:
        return sorted(socket.gethostbyname_ex(n)[2])
    except Exception:
        return []
print(json.dumps([addrs("web"), addrs("tasks.web"),
                  [get("http://%s/" % t) for t in {targets:?}],
                  [get("http://web/") for _ in range(12)]]))
"#
    );
    let out = in_task(from, &script).unwrap_or_else(|| panic!("probe in {from} failed"));
    serde_json::from_str(&out).unwrap()
}

fn task_namespaces() -> BTreeSet<String> {
    netns::run("ip netns list")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|n| n.strip_prefix("sgt-"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_service_spreads_over_three_nodes_and_its_tasks_reach_each_other() {
    if !netns::root_or_skip("the three-node overlay test") {
        return;
    }
    // Heartbeats every second (Docker's `--dispatcher-heartbeat`; 5 s by default): a node
    // is Down after 3 s without one.
    let (lan, _) = Lan::swarm(
        "sgo",
        84,
        &["m", "w1", "w2"],
        "--dispatcher-heartbeat 1s",
        "worker",
    );
    let m = &lan.hosts[0];
    wait_for("three nodes Ready", 30, || {
        let rows = m.rows("node ls");
        rows.len() == 3 && rows.iter().all(|n| n["Status"] == "Ready")
    });
    let hostnames: BTreeSet<String> = m
        .rows("node ls")
        .iter()
        .map(|n| n["Hostname"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        hostnames,
        ["m", "w1", "w2"].map(String::from).into_iter().collect()
    );

    // Six replicas spread two per node (SwarmKit's ranking: fewest of the service).
    m.ok("network create -d overlay my-overlay");
    let since = std::time::Instant::now();
    let (ok, out) = m.cli_args(&[
        "service",
        "create",
        "--name",
        "web",
        "--network",
        "my-overlay",
        "--replicas",
        "6",
        "--",
        "sh",
        "-c",
        WEB,
    ]);
    assert!(ok, "{out}");
    wait_for("six tasks running", 60, || running(m).len() == 6);
    let tasks = running(m);
    assert_eq!(
        per_node(&tasks),
        [("m", 2), ("w1", 2), ("w2", 2)]
            .map(|(n, k)| (n.to_owned(), k))
            .into_iter()
            .collect(),
        "{tasks:?}"
    );
    // The workers were told by the dispatcher and started them; lazily, the network
    // exists on a worker once a task there needs it.
    for w in &lan.hosts[1..] {
        assert_eq!(w.log().matches("task started").count(), 2, "{}", w.log());
        let nets: Vec<String> = w
            .rows("network ls")
            .iter()
            .map(|n| n["Name"].as_str().unwrap().to_owned())
            .collect();
        // The ingress network is on every node (the routing mesh), the others lazily.
        assert_eq!(nets, ["ingress", "my-overlay"], "network ls on {}", w.name);
    }
    let inspect: serde_json::Value =
        serde_json::from_str(&m.ok("network inspect my-overlay")).unwrap();
    let peers: BTreeSet<String> = inspect[0]["Peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["IP"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        peers,
        lan.hosts.iter().map(|h| h.ip.clone()).collect(),
        "{inspect}"
    );

    // From one task on each node: every task by address, the VIP, tasks.web.
    let all_ips: Vec<String> = tasks.iter().map(|t| t.ip.clone()).collect();
    let mut sorted_ips = all_ips.clone();
    sorted_ips.sort();
    wait_for("every task reachable from every node", 60, || {
        ["m", "w1", "w2"].iter().all(|node| {
            let from = tasks.iter().find(|t| t.node == *node).unwrap();
            let (_, _, answers, _) = probe(&from.id, &all_ips);
            answers.iter().all(|a| a.starts_with("served by"))
        })
    });
    eprintln!(
        "service create to six tasks reachable from every node: {:.1} s",
        since.elapsed().as_secs_f64()
    );
    for node in ["m", "w1", "w2"] {
        let from = tasks.iter().find(|t| t.node == node).unwrap();
        let (vip, by_name, answers, via_vip) = probe(&from.id, &all_ips);
        assert_eq!(vip.len(), 1, "web is one VIP from {node}: {vip:?}");
        assert!(!all_ips.contains(&vip[0]));
        assert_eq!(by_name, sorted_ips, "tasks.web from {node}");
        for (t, a) in tasks.iter().zip(&answers) {
            assert_eq!(a, &format!("served by {}", t.name), "{} from {node}", t.ip);
        }
        // The VIP spreads connections over tasks, on other nodes too.
        let served: BTreeSet<&String> = via_vip.iter().collect();
        assert!(
            via_vip.iter().all(|a| a.starts_with("served by")),
            "{via_vip:?}"
        );
        assert!(
            served.len() >= 2,
            "12 connections to the VIP from {node} all went to {served:?}"
        );
        let remote = tasks
            .iter()
            .filter(|t| t.node != node)
            .any(|t| served.contains(&format!("served by {}", t.name)));
        assert!(
            remote,
            "no VIP connection from {node} reached another node: {served:?}"
        );
    }

    // A global service: one task on every node that satisfies its constraints, named
    // after the node.
    m.ok("service create --name agent --mode global --constraint node.role==worker -- sleep 1000");
    wait_for("agent on both workers", 30, || {
        let r = running_of(m, "agent");
        r.len() == 2 && per_node(&r).keys().map(String::as_str).eq(["w1", "w2"])
    });
    let node_ids: BTreeMap<String, String> = m
        .rows("node ls")
        .iter()
        .map(|n| {
            (
                n["Hostname"].as_str().unwrap().to_owned(),
                n["ID"].as_str().unwrap().trim_end_matches(" *").to_owned(),
            )
        })
        .collect();
    for t in running_of(m, "agent") {
        assert!(
            t.name.starts_with(&format!("agent.{}.", node_ids[&t.node])),
            "{t:?}"
        );
    }

    // Scale up and at once down, before the workers have started everything: the tasks
    // stopped before they started are reported as such and hold nothing; the tasks gone
    // stop on their nodes and leave every DNS.
    m.ok("service scale web=40");
    m.ok("service scale web=3");
    wait_for("three tasks", 30, || running(m).len() == 3);
    wait_until("every task told to stop has stopped", 30, || {
        let held: Vec<serde_json::Value> = m
            .rows("service ps web")
            .into_iter()
            .filter(|t| t["DesiredState"] == "Shutdown")
            .filter(|t| {
                let st = t["CurrentState"].as_str().unwrap();
                st.starts_with("Running") || st.starts_with("Assigned")
            })
            .collect();
        if held.is_empty() {
            Ok(())
        } else {
            Err(format!("{held:?}"))
        }
    });
    let three = running(m);
    let gone: Vec<&WebTask> = tasks
        .iter()
        .filter(|t| !three.iter().any(|x| x.id == t.id))
        .collect();
    wait_for("the scaled-down tasks' namespaces removed", 30, || {
        let ns = task_namespaces();
        gone.iter().all(|t| !ns.contains(&t.id))
    });
    let mut three_ips: Vec<String> = three.iter().map(|t| t.ip.clone()).collect();
    three_ips.sort();
    wait_for("tasks.web is the three everywhere", 20, || {
        three.iter().all(|t| probe(&t.id, &[]).1 == three_ips)
    });

    // Drain a worker: its tasks go elsewhere; nothing of it stays in the others' tables.
    let w2_id = m
        .rows("node ls")
        .into_iter()
        .find(|n| n["Hostname"] == "w2")
        .unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    m.ok(&format!("node update --availability drain {w2_id}"));
    wait_for("w2 emptied, three running elsewhere", 30, || {
        let r = running(m);
        r.len() == 3 && r.iter().all(|t| t.node != "w2")
    });
    let drained = running(m);
    wait_for("agent only on w1 while w2 is drained", 30, || {
        let r = running_of(m, "agent");
        r.len() == 1 && r[0].node == "w1"
    });
    wait_for("w2's task namespaces removed", 30, || {
        let ns = task_namespaces();
        three
            .iter()
            .filter(|t| t.node == "w2")
            .all(|t| !ns.contains(&t.id))
    });
    let mut drained_ips: Vec<String> = drained.iter().map(|t| t.ip.clone()).collect();
    drained_ips.sort();
    wait_for("tasks.web without w2's tasks", 20, || {
        drained.iter().all(|t| probe(&t.id, &[]).1 == drained_ips)
    });
    m.ok(&format!("node update --availability active {w2_id}"));
    wait_for("agent back on w2", 30, || running_of(m, "agent").len() == 2);
    m.ok("service rm agent");

    // A worker cut off (its link down): Down, its tasks placed on the other nodes, its
    // endpoints withdrawn; back, it stops the tasks it should no longer run.
    let on_w1: Vec<WebTask> = drained.iter().filter(|t| t.node == "w1").cloned().collect();
    assert!(!on_w1.is_empty(), "{drained:?}");
    let w1 = &lan.hosts[1];
    netns::run(&format!("ip -n {} link set eth0 down", w1.ns));
    let moved = wait_for("w1's tasks placed elsewhere", 60, || {
        let r = running(m);
        r.len() == 3 && r.iter().all(|t| t.node != "w1")
    });
    // Every survivor sees exactly the running tasks (recomputed each round: a task that
    // moved again meanwhile is waited for too).
    let withdrawn = wait_until("w1's endpoints withdrawn everywhere", 30, || {
        let after = running(m);
        let mut after_ips: Vec<String> = after.iter().map(|t| t.ip.clone()).collect();
        after_ips.sort();
        if after.len() != 3 || after.iter().any(|t| t.node == "w1") {
            return Err(format!("running: {after:?}"));
        }
        for t in &after {
            let (_, by_name, answers, _) = probe(&t.id, &after_ips);
            if by_name != after_ips || !answers.iter().all(|a| a.starts_with("served by")) {
                return Err(format!(
                    "from {} on {}: tasks.web {by_name:?} (want {after_ips:?}), {answers:?} running {after:?}\n--- manager log:\n{}",
                    t.id,
                    t.node,
                    m.log()
                ));
            }
        }
        Ok(())
    });
    eprintln!(
        "cut-off worker: tasks running elsewhere after {:.1} s, endpoints withdrawn {:.1} s later",
        moved.as_secs_f64(),
        withdrawn.as_secs_f64()
    );
    netns::run(&format!("ip -n {} link set eth0 up", w1.ns));
    wait_for("w1 Ready again", 30, || {
        m.rows("node ls")
            .iter()
            .any(|n| n["Hostname"] == "w1" && n["Status"] == "Ready")
    });
    wait_for("w1's stale tasks stopped", 30, || {
        let ns = task_namespaces();
        on_w1.iter().all(|t| !ns.contains(&t.id))
    });
    assert!(w1.log().contains("task stopping"), "{}", w1.log());
    // Nothing stale: the survivors still see exactly the running tasks.
    let fin = running(m);
    let mut fin_ips: Vec<String> = fin.iter().map(|t| t.ip.clone()).collect();
    fin_ips.sort();
    for t in &fin {
        assert_eq!(probe(&t.id, &[]).1, fin_ips, "tasks.web from {}", t.node);
    }
    m.ok("service rm web");
    wait_for("every web task stopped", 30, || {
        let ns = task_namespaces();
        tasks.iter().chain(&fin).all(|t| !ns.contains(&t.id))
    });
}
