//! The routing mesh across nodes (issue #11): a port published in ingress mode answers on
//! every node's address, with or without a task there, balanced over the service's tasks
//! on every node; the task sees the client's own address, and its replies leave through
//! the node the client connected to (which holds the connection's translation); every
//! node picks the same task for the same client connection.
//!
//! Needs root (namespaces, DPDK).

use std::process::Command;

use swarmgate_tests::netns;
use swarmgate_tests::swarm::{wait_until, KeepAlive, Lan};

/// Answers every request with the task's ID and the address the client came from.
const SERVER: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("%s %s\n" % (os.environ["SWARMGATE_TASK_ID"], self.client_address[0])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 80), H).serve_forever()
"#;

/// `n` GETs from the client namespace to `addr:8080`, each from source port `port + i`
/// (0: any); the answers ("task client" lines, or "-" for a failure).
fn get(ns: &str, addr: &str, n: usize, port: u16) -> Vec<String> {
    let script = format!(
        r#"
import socket
out = []
for i in range({n}):
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(3)
        if {port}:
            s.bind(("0.0.0.0", {port} + i))
        s.connect(("{addr}", 8080))
        s.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        d = b""
        while True:
            c = s.recv(4096)
            if not c:
                break
            d += c
        s.close()
        out.append(d.split(b"\r\n\r\n", 1)[1].decode().strip())
    except Exception as e:
        out.append("-")
print("\n".join(out))
"#
    );
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_published_port_answers_on_every_node_from_tasks_on_other_nodes() {
    if !netns::root_or_skip("a_published_port_answers_on_every_node_from_tasks_on_other_nodes") {
        return;
    }
    let (lan, _) = Lan::swarm(
        "sgm",
        69,
        &["m", "w1", "w2"],
        "--dispatcher-heartbeat 1s",
        "worker",
    );
    let client = lan.client("c", "192.168.69.100");
    let m = &lan.hosts[0];
    let (ok, out) = m.cli_args(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--constraint",
        "node.role==worker",
        "--publish",
        "8080:80",
        "--",
        "python3",
        "-c",
        SERVER,
    ]);
    assert!(ok, "{out}");
    let mut tasks = Vec::new();
    wait_until("a task on each worker", 60, || {
        tasks = m.running("web");
        let mut nodes: Vec<&str> = tasks.iter().map(|t| t.1.as_str()).collect();
        nodes.sort();
        (nodes == ["w1", "w2"])
            .then_some(())
            .ok_or(format!("{tasks:?}"))
    });
    let ids: Vec<String> = tasks.iter().map(|t| t.0.clone()).collect();
    // Every node's address answers — the manager has no task — from both tasks, and the
    // tasks see the client's own address.
    for h in &lan.hosts {
        let mut answers = Vec::new();
        wait_until(
            &format!("{}:8080 answered by both tasks", h.name),
            30,
            || {
                answers = get(&client, &h.ip, 12, 0);
                let by: std::collections::BTreeSet<&str> = answers
                    .iter()
                    .filter_map(|a| a.split_whitespace().next())
                    .collect();
                (ids.iter().all(|i| by.contains(i.as_str())) && !answers.iter().any(|a| a == "-"))
                    .then_some(())
                    .ok_or_else(|| {
                        let st: serde_json::Value =
                            serde_json::from_str(&h.ok("stats")).unwrap_or_default();
                        let w: serde_json::Value =
                            serde_json::from_str(&lan.hosts[1].ok("stats")).unwrap_or_default();
                        format!(
                            "{answers:?} drops {} exception {} nets {} | w1 drops {} nets {}",
                            st["drops"], st["exception"], st["networks"], w["drops"], w["networks"]
                        )
                    })
            },
        );
        for a in &answers {
            assert!(
                a.ends_with(" 192.168.69.100"),
                "the task saw the client's address through {}: {a}",
                h.name
            );
        }
        println!("mesh: {} answered 12 of 12 from {ids:?}", h.name);
    }
    // The same client connection (address and port) gets the same task on every node.
    let per_node: Vec<Vec<String>> = lan
        .hosts
        .iter()
        .map(|h| {
            get(&client, &h.ip, 8, 41000)
                .into_iter()
                .map(|a| a.split_whitespace().next().unwrap_or("-").to_owned())
                .collect()
        })
        .collect();
    assert!(per_node[0].iter().all(|a| a != "-"), "{per_node:?}");
    assert_eq!(per_node[0], per_node[1], "m and w1 chose alike");
    assert_eq!(per_node[0], per_node[2], "m and w2 chose alike");

    // Requests per second and latency through the mesh, entering on a node without a
    // task (m: one more overlay hop) and on one with (w1), in the same run.
    for h in [&lan.hosts[0], &lan.hosts[1]] {
        println!(
            "mesh: via {} ({}): {}",
            h.name,
            if h.name == "m" {
                "no local task"
            } else {
                "a local task"
            },
            rate(&client, &h.ip)
        );
    }

    // Clients connected through m when w2 dies: the connections on w1's task stay up.
    // They reuse the ports of connections that have just closed (their entries still
    // closing), as a busy client's ports come round again: each must be tracked as a new
    // connection, and so outlive the closing timeout (10 s) idle.
    assert!(get(&client, &m.ip, 8, 42000).iter().all(|a| a != "-"));
    let (mut conns, before) = KeepAlive::open(&client, &m.ip, 8, 42000);
    let on_w1 = tasks.iter().find(|t| t.1 == "w1").unwrap().0.clone();
    assert!(before.contains(&on_w1), "{before:?}");
    let mut lan = lan;
    lan.hosts[2].kill();
    // Gossip withdraws w2's task on m within seconds; the connections sit idle past the
    // closing timeout.
    std::thread::sleep(std::time::Duration::from_secs(12));
    let after = conns.ask();
    drop(conns);
    println!("mesh: connections before w2 died {before:?}, after {after:?}");
    for h in &lan.hosts[..2] {
        let st: serde_json::Value = serde_json::from_str(&h.ok("stats")).unwrap_or_default();
        println!(
            "mesh: {} drops {} exception {}",
            h.name, st["drops"], st["exception"]
        );
    }
    // Every connection on w1's task stays up; every one on w2's task is gone with it.
    for (b, a) in before.iter().zip(&after) {
        if *b == on_w1 {
            assert_eq!(
                a, b,
                "a connection on w1's task survives w2's death: {after:?}"
            );
        } else {
            assert_eq!(a, "-", "a connection on w2's dead task cannot answer");
        }
    }
    // New connections through m all reach a task on w1 (the leader placed w2's task again
    // there once w2 missed its heartbeats).
    wait_until("new connections through m served on w1", 30, || {
        let now: Vec<String> = lan.hosts[0]
            .running("web")
            .into_iter()
            .filter(|t| t.1 == "w1")
            .map(|t| t.0)
            .collect();
        let answers = get(&client, &lan.hosts[0].ip, 6, 0);
        answers
            .iter()
            .all(|a| now.iter().any(|t| a.starts_with(t.as_str())))
            .then_some(())
            .ok_or(format!("{answers:?} (running on w1: {now:?})"))
    });
    // w2 comes back: it stops the task the leader placed elsewhere in the meantime.
    let on_w2 = tasks.iter().find(|t| t.1 == "w2").unwrap().0.clone();
    lan.hosts[2].start();
    swarmgate_tests::swarm::wait_for("w2's stale task stopped", 30, || {
        !std::path::Path::new(&format!("/run/netns/sgt-{on_w2}")).exists()
    });
}

/// Requests per second (one connection each, sequential, 3 s) and latency percentiles
/// from the client to `addr:8080`.
fn rate(ns: &str, addr: &str) -> String {
    let script = format!(
        r#"
import socket, time
lat, failed = [], []
end = time.time() + 3
while time.time() < end:
    t = time.perf_counter()
    try:
        s = socket.create_connection(("{addr}", 8080), timeout=3)
        port = s.getsockname()[1]
        s.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        while s.recv(4096):
            pass
        s.close()
        lat.append(time.perf_counter() - t)
    except Exception as e:
        failed.append("%s" % e)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
print("%.0f req/s, p50 %.2f ms, p99 %.2f ms (%d requests, %d failed %s)" % (len(lat) / 3, q(0.5), q(0.99), len(lat), len(failed), failed[:3]))
"#
    );
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}
