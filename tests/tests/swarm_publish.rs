//! Publishing across nodes (issue #11): a custom ingress network replacing the default one
//! on every node (subnet, gateway, MTU option; only one; removable only with no publisher), a UDP
//! port in the long syntax balanced through every node, `--publish mode=host` answering
//! only on the nodes that run a task, each from its own task, and connections that keep
//! their task while the service is scaled up.
//!
//! Needs root (namespaces, DPDK).

use std::collections::BTreeSet;
use std::process::Command;

use swarmgate_tests::netns;
use swarmgate_tests::swarm::{wait_for, wait_until, Host, KeepAlive, Lan};

/// Answers every UDP datagram on port 5300 with the task's ID and the sender's address.
const UDP_ECHO: &str = r#"
import os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5300))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(("%s %s" % (os.environ["SWARMGATE_TASK_ID"], a[0])).encode(), a)
"#;

/// Answers every HTTP request with the task's ID (keep-alive).
const HTTP: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = os.environ["SWARMGATE_TASK_ID"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 80), H).serve_forever()
"#;

/// `n` UDP requests from the client to `addr:port`, each from its own socket; the answers
/// ("task client", or "-" when none came within a second).
fn udp(ns: &str, addr: &str, port: u16, n: usize) -> Vec<String> {
    let script = format!(
        r#"
import socket
for i in range({n}):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    s.sendto(b"?", ("{addr}", {port}))
    try:
        print(s.recv(2048).decode())
    except Exception:
        print("-")
"#
    );
    py(ns, &script)
}

/// One HTTP GET per line from the client to `addr:port`: the task that answered, or "-".
fn http(ns: &str, addr: &str, port: u16, n: usize) -> Vec<String> {
    let script = format!(
        r#"
import urllib.request
for i in range({n}):
    try:
        print(urllib.request.urlopen("http://{addr}:{port}/", timeout=2).read().decode())
    except Exception:
        print("-")
"#
    );
    py(ns, &script)
}

fn py(ns: &str, script: &str) -> Vec<String> {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn networks(h: &Host) -> Vec<String> {
    h.ok("network ls")
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

#[test]
fn custom_ingress_udp_host_mode_and_scaling_across_nodes() {
    if !netns::root_or_skip("custom_ingress_udp_host_mode_and_scaling_across_nodes") {
        return;
    }
    let (lan, _) = Lan::swarm(
        "sgp",
        72,
        &["m", "w1", "w2"],
        "--dispatcher-heartbeat 1s",
        "worker",
    );
    let client = lan.client("c", "192.168.72.100");
    let m = &lan.hosts[0];

    // The default ingress replaced by a custom one, on every node.
    m.ok("network rm ingress");
    for h in &lan.hosts {
        wait_for(&format!("ingress gone from {}", h.name), 20, || {
            !networks(h).contains(&"ingress".to_owned())
        });
    }
    m.ok(
        "network create --driver overlay --ingress --subnet 10.99.0.0/24 --gateway 10.99.0.254 \
         --opt com.docker.network.driver.mtu=1400 my-ingress",
    );
    let out = m.err("network create --driver overlay --ingress --subnet 10.98.0.0/24 second");
    assert!(out.contains("only one is allowed"), "{out}");
    for h in &lan.hosts {
        wait_for(&format!("my-ingress on {}", h.name), 20, || {
            networks(h).contains(&"my-ingress".to_owned())
        });
    }

    // A UDP port in the long syntax, two tasks on the workers, answered through every node
    // by both tasks, which see the client's own address. The service is on an overlay of
    // its own too, whose clients its replies must still reach.
    m.ok("network create -d overlay --attachable --subnet 10.72.0.0/24 app");
    let (ok, out) = m.cli_args(&[
        "service",
        "create",
        "--name",
        "dns",
        "--replicas",
        "2",
        "--constraint",
        "node.role==worker",
        "--network",
        "app",
        "--publish",
        "published=5353,target=5300,protocol=udp",
        "--",
        "python3",
        "-c",
        UDP_ECHO,
    ]);
    assert!(ok, "{out}");
    let mut tasks = Vec::new();
    wait_until("a dns task on each worker", 60, || {
        tasks = m.running("dns");
        let nodes: BTreeSet<&str> = tasks.iter().map(|t| t.1.as_str()).collect();
        (nodes == BTreeSet::from(["w1", "w2"]))
            .then_some(())
            .ok_or(format!("{tasks:?}"))
    });
    // Their ingress addresses are in the custom subnet, their interface has its MTU.
    let ps: Vec<serde_json::Value> = m.rows("service ps dns");
    for t in &ps {
        let addrs = t["Addresses"].to_string();
        assert!(addrs.contains("my-ingress=10.99.0."), "{addrs}");
    }
    let w1_task = tasks.iter().find(|t| t.1 == "w1").unwrap().0.clone();
    let (ok, mtu) = lan.hosts[1].cli_args(&[
        "exec",
        &w1_task,
        "--",
        "sh",
        "-c",
        "cat /sys/class/net/$(ip -o -4 addr show | grep ' 10.99.0.' | cut -d' ' -f2)/mtu",
    ]);
    assert!(ok, "{mtu}");
    // Docker's rule (libnetwork `drivers/overlay/encryption.go` `maxMTU`): the option is
    // the underlay's MTU, less the 50 bytes of VXLAN.
    assert_eq!(mtu.trim(), "1350", "the ingress MTU inside the task");
    let ids: BTreeSet<String> = tasks.iter().map(|t| t.0.clone()).collect();
    for h in &lan.hosts {
        let mut answers = Vec::new();
        wait_until(
            &format!("{}:5353/udp answered by both tasks", h.name),
            30,
            || {
                answers = udp(&client, &h.ip, 5353, 16);
                let by: BTreeSet<String> = answers
                    .iter()
                    .filter_map(|a| a.split_whitespace().next().map(str::to_owned))
                    .collect();
                (by == ids).then_some(()).ok_or(format!("{answers:?}"))
            },
        );
        assert!(
            answers.iter().all(|a| a.ends_with(" 192.168.72.100")),
            "the task saw the client's address through {}: {answers:?}",
            h.name
        );
        println!("publish: {}:5353/udp answered by {ids:?}", h.name);
    }

    // Inside the overlay, the same port through the service's VIP, from a container.
    m.ok("run -d --name probe --network app -- sleep 100000");
    wait_until("the VIP answers UDP inside the overlay", 30, || {
        let (ok, out) = m.cli_args(&[
            "exec",
            "probe",
            "--",
            "python3",
            "-c",
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(1)\n\
             s.sendto(b'?', ('dns', 5300))\nprint(s.recv(2048).decode())",
        ]);
        (ok && ids.iter().any(|i| out.starts_with(i.as_str())))
            .then_some(())
            .ok_or(out)
    });
    m.ok("rm -f probe");

    // The ingress network is removable only once nothing publishes on it.
    let out = m.err("network rm my-ingress");
    assert!(out.contains("depends on it"), "{out}");

    // Host mode: only the nodes with a task answer, each from its own task.
    let (ok, out) = m.cli_args(&[
        "service",
        "create",
        "--name",
        "local",
        "--mode",
        "global",
        "--constraint",
        "node.role==worker",
        "--publish",
        "mode=host,published=8082,target=80",
        "--",
        "python3",
        "-c",
        HTTP,
    ]);
    assert!(ok, "{out}");
    let mut local = Vec::new();
    wait_until("a local task on each worker", 60, || {
        local = m.running("local");
        (local.len() == 2).then_some(()).ok_or(format!("{local:?}"))
    });
    for h in &lan.hosts[1..] {
        let own = local.iter().find(|t| t.1 == h.name).unwrap().0.clone();
        wait_until(
            &format!("{}:8082 answered by its own task", h.name),
            30,
            || {
                let a = http(&client, &h.ip, 8082, 6);
                a.iter()
                    .all(|x| *x == own)
                    .then_some(())
                    .ok_or(format!("{a:?} (own task {own})"))
            },
        );
    }
    assert_eq!(
        http(&client, &m.ip, 8082, 2),
        ["-", "-"],
        "no task on m: nothing answers its host-mode port"
    );

    // Connections through the mesh keep their task while the service is scaled up.
    let (ok, out) = m.cli_args(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--publish",
        "8080:80",
        "--",
        "python3",
        "-c",
        HTTP,
    ]);
    assert!(ok, "{out}");
    wait_for("two web tasks", 60, || m.running("web").len() == 2);
    wait_for("web answers through m", 30, || {
        http(&client, &m.ip, 8080, 1) != ["-"]
    });
    let (mut conns, before) = KeepAlive::open(&client, &m.ip, 12, 0);
    m.ok("service scale web=6");
    wait_for("six web tasks", 60, || m.running("web").len() == 6);
    // Every node's routing mesh now knows the new tasks: new connections reach them.
    let all: BTreeSet<String> = m.running("web").into_iter().map(|t| t.0).collect();
    wait_until("new connections reach the new tasks", 30, || {
        let got: BTreeSet<String> = http(&client, &m.ip, 8080, 24).into_iter().collect();
        got.iter()
            .filter(|t| !all.contains(*t))
            .count()
            .eq(&0)
            .then_some(())
            .filter(|_| got.len() > 2)
            .ok_or(format!("{got:?} of {all:?}"))
    });
    let after = conns.ask();
    drop(conns);
    println!("publish: keep-alive connections before scaling {before:?}, after {after:?}");
    assert!(before.iter().all(|t| t != "-"), "{before:?}");
    assert_eq!(
        before, after,
        "every connection kept its task while tasks were added"
    );
}
