//! The control plane end to end (root; own namespaces): the daemon with its DPDK gateway in
//! a namespace playing the host, a client namespace on its LAN, and every CLI verb of the
//! issue — swarm init, node ls, network create/ls/inspect/rm, service
//! create/ls/ps/inspect/update/logs/rm, run/exec/rm/ps — with the published-port path
//! (client address checked), VIP load balancing inside the overlay, the embedded DNS
//! (service, tasks., endpoint names, forwarding), task replacement, a connection kept on
//! its task while tasks are added, restart persistence, and the bad-input refusals.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use swarmgate_tests::netns::swarmgate_bin;

fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

struct Env {
    host: String,
    client: String,
    dir: PathBuf,
    sock: PathBuf,
    daemon: Option<Child>,
    upstream: Option<Child>,
}

const HOST_IP: &str = "192.168.79.1";
const CLIENT_IP: &str = "192.168.79.100";

impl Env {
    fn new() -> Env {
        let id = std::process::id() % 100000;
        let dir = std::env::temp_dir().join(format!("sg-cp-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let e = Env {
            host: format!("sgcph{id}"),
            client: format!("sgcpc{id}"),
            sock: dir.join("sg.sock"),
            dir,
            daemon: None,
            upstream: None,
        };
        let (h, c) = (&e.host, &e.client);
        for cmd in [
            format!("ip netns add {h}"),
            format!("ip netns add {c}"),
            format!("ip link add sgcpa{id} type veth peer name sgcpb{id}"),
            format!("ip link set sgcpa{id} netns {h} name eth0"),
            format!("ip link set sgcpb{id} netns {c} name eth0"),
            format!("ip -n {h} link set lo up"),
            format!("ip -n {c} link set lo up"),
            format!("ip -n {h} link set eth0 up"),
            format!("ip -n {c} addr add {CLIENT_IP}/24 dev eth0"),
            format!("ip -n {c} link set eth0 up"),
        ] {
            let o = sh(&cmd);
            assert!(
                o.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        sh(&format!(
            "ip netns exec {c} ethtool -K eth0 tx off tso off gso off"
        ));
        sh(&format!(
            "ip netns exec {h} ethtool -K eth0 tx off tso off gso off gro off"
        ));
        std::fs::write(
            e.dir.join("daemon.toml"),
            format!(
                "[dpdk]\ncores = [{}]\nfile_prefix = \"sgcp{id}\"\nmemory_mb = 256\nmbufs = 8191\n\n\
                 [underlay]\ndevice = \"net_af_packet0,iface=eth0\"\naddress = \"{HOST_IP}/24\"\n\
                 exception_iface = \"sgcpexc\"\n",
                if num_cpus() > 1 { 1 } else { 0 }
            ),
        )
        .unwrap();
        e
    }

    /// A DNS server for forwarded names, in the host namespace on 127.0.0.1:5354: answers
    /// `upstream.test` with 192.0.2.7, everything else NXDOMAIN.
    fn start_upstream(&mut self) {
        let script = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 5354))
while True:
    q, a = s.recvfrom(512)
    i, name = 12, []
    while q[i]:
        name.append(q[i+1:i+1+q[i]].decode()); i += q[i] + 1
    qend = i + 5
    known = ".".join(name).lower() == "upstream.test" and q[i+1:i+3] == b"\x00\x01"
    flags = b"\x81\x80" if known else b"\x81\x83"
    r = q[:2] + flags + b"\x00\x01" + (b"\x00\x01" if known else b"\x00\x00") + b"\x00\x00\x00\x00" + q[12:qend]
    if known:
        r += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([192, 0, 2, 7])
    s.sendto(r, a)
"#;
        self.upstream = Some(
            Command::new("ip")
                .args(["netns", "exec", &self.host, "python3", "-c", script])
                .spawn()
                .unwrap(),
        );
    }

    fn start_daemon(&mut self) {
        let log = std::fs::File::create(self.dir.join("daemon.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host))
            .arg(swarmgate_bin())
            .arg("-H")
            .arg(&self.sock)
            .args(["daemon", "-c"])
            .arg(self.dir.join("daemon.toml"))
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .args(["--dns-upstream", "127.0.0.1:5354"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        while !self.sock.exists() {
            assert!(Instant::now() < end, "daemon did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &d.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end {
                if let Ok(Some(_)) = d.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = d.kill();
            let _ = d.wait();
            panic!("daemon did not stop on SIGTERM: {}", self.log());
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// `swarmgate ARGS` → (exit code, stdout, stderr).
    fn sg(&self, args: &[&str]) -> (i32, String, String) {
        let o = Command::new(swarmgate_bin())
            .arg("-H")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (c, out, err) = self.sg(args);
        assert_eq!(c, 0, "swarmgate {args:?}: {err}\n{}", self.log());
        out
    }

    /// Asserts a refusal: non-zero exit, one error line containing `needle`.
    fn refused(&self, args: &[&str], needle: &str) {
        let (c, out, err) = self.sg(args);
        assert_ne!(c, 0, "swarmgate {args:?} was accepted: {out}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "swarmgate {args:?}: not one line: {err}");
        assert!(
            err.contains(needle),
            "swarmgate {args:?}: {err:?} lacks {needle:?}"
        );
    }

    /// One HTTP GET from the client namespace; the body, or None.
    fn fetch(&self, url: &str) -> Option<String> {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.client, "python3", "-c"])
            .arg(format!(
                "import urllib.request; print(urllib.request.urlopen('{url}', timeout=3).read().decode().strip())"
            ))
            .output()
            .unwrap();
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    }

    fn exec_py(&self, endpoint: &str, code: &str) -> String {
        self.ok(&["exec", endpoint, "--", "python3", "-c", code])
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            let _ = self.sg(&["swarm", "leave", "--force"]);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop_daemon()));
        }
        if let Some(mut u) = self.upstream.take() {
            let _ = u.kill();
            let _ = u.wait();
        }
        sh(&format!("ip netns del {}", self.host));
        sh(&format!("ip netns del {}", self.client));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines().filter(|l| !l.is_empty()).map(json).collect()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn running_tasks(e: &Env, svc: &str) -> Vec<serde_json::Value> {
    json_lines(&e.ok(&["service", "ps", "--format", "json", svc]))
        .into_iter()
        .filter(|t| {
            t["DesiredState"] == "Running"
                && t["CurrentState"].as_str().unwrap().starts_with("Running")
        })
        .collect()
}

const HTTP: &str =
    r#"echo "served by $SWARMGATE_TASK_NAME" > index.html && exec python3 -m http.server 80"#;

#[test]
fn control_plane_end_to_end() {
    if !swarmgate_tests::netns::root_or_skip("the control-plane test") {
        return;
    }
    let mut e = Env::new();
    e.start_upstream();
    e.start_daemon();

    // Before swarm init, overlay verbs are refused.
    e.refused(&["network", "ls"], "not a swarm manager");

    // swarm init, node ls.
    let out = e.ok(&["swarm", "init", "--advertise-addr", HOST_IP]);
    assert!(
        out.contains("swarmgate swarm join --token SWMTKN-1-"),
        "{out}"
    );
    assert!(out.contains(&format!("{HOST_IP}:2377")), "{out}");
    e.refused(&["swarm", "init"], "already part of a swarm");
    let nodes = e.ok(&["node", "ls"]);
    assert!(
        nodes.contains(" *") && nodes.contains("Leader") && nodes.contains("Ready"),
        "{nodes}"
    );
    // `node ls --filter`: the only node is a manager.
    assert!(e
        .ok(&["node", "ls", "--filter", "role=manager"])
        .contains(" *"));
    assert!(!e.ok(&["node", "ls", "-f", "role=worker"]).contains(" *"));
    assert!(
        e.ok(&["node", "ls", "-f", "role=worker", "-f", "role=manager"])
            .contains(" *"),
        "values of one key are alternatives"
    );
    e.refused(
        &["node", "ls", "--filter", "role=boss"],
        "Invalid role 'boss'",
    );
    e.refused(
        &["node", "ls", "--filter", "colour=red"],
        "Invalid filter 'colour'",
    );
    let ingress = json(&e.ok(&["network", "inspect", "ingress"]));
    assert_eq!(ingress[0]["Ingress"], true);
    assert_eq!(ingress[0]["IPAM"]["Config"][0]["Subnet"], "10.0.0.0/24");

    // network create and the refusals, each leaving nothing behind.
    e.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "my-overlay",
    ]);
    let before = e.ok(&["network", "ls"]);
    e.refused(
        &["network", "create", "-d", "overlay", "my-overlay"],
        "already exists",
    );
    e.refused(
        &["network", "create", "--subnet", "10.0.1.0/25", "clash"],
        "overlap",
    );
    e.refused(
        &["network", "create", "--subnet", "10.0.300.0/24", "bad"],
        "invalid",
    );
    e.refused(
        &[
            "network",
            "create",
            "--subnet",
            "10.9.0.0/24",
            "--gateway",
            "10.8.0.1",
            "gwout",
        ],
        "10.8.0.1",
    );
    e.refused(
        &["network", "create", "--ingress", "--attachable", "in2"],
        "cannot be attachable",
    );
    e.refused(
        &["network", "create", "--ingress", "in3"],
        "only one is allowed",
    );
    e.refused(
        &["network", "create", "-o", "bogus=1", "o1"],
        "unknown option",
    );
    e.refused(
        &["network", "create", "-d", "bridge", "b1"],
        "not supported",
    );
    e.refused(
        &["network", "create", "--subnet", "0.0.0.0/0", "everything"],
        "larger than /8",
    );
    e.refused(
        &["network", "create", "--subnet", "172.18.5.0/24", "ongw"],
        "sg_gwbridge",
    );
    e.refused(
        &["network", "create", "--subnet", "127.0.0.0/16", "lo"],
        "loopback",
    );
    assert_eq!(
        e.ok(&["network", "ls"]),
        before,
        "a refused create changed the networks"
    );
    // Every argument is checked before anything changes: `rm a a` removes nothing.
    e.ok(&["network", "create", "-d", "overlay", "dup-net"]);
    let with_dup = e.ok(&["network", "ls"]);
    e.refused(&["network", "rm", "dup-net", "dup-net"], "named twice");
    e.refused(&["network", "rm", "dup-net", "no-such-net"], "not found");
    assert_eq!(
        e.ok(&["network", "ls"]),
        with_dup,
        "a refused rm changed the networks"
    );
    e.ok(&["network", "rm", "dup-net"]);
    assert_eq!(e.ok(&["network", "ls"]), before);

    e.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "--opt",
        "encrypted",
        "--subnet",
        "10.20.0.0/24",
        "--gateway",
        "10.20.0.254",
        "secure-net",
    ]);
    let n = json(&e.ok(&["network", "inspect", "secure-net"]));
    assert_eq!(n[0]["IPAM"]["Config"][0]["Subnet"], "10.20.0.0/24");
    assert_eq!(n[0]["IPAM"]["Config"][0]["Gateway"], "10.20.0.254");
    assert_eq!(n[0]["MTU"], 1424);
    assert_eq!(n[0]["Attachable"], true);
    assert!(n[0]["Options"].get("encrypted").is_some(), "{n}");
    assert_eq!(n[0]["Peers"][0]["IP"], HOST_IP);
    let ls = json_lines(&e.ok(&["network", "ls", "--format", "json"]));
    assert_eq!(ls.len(), 3);

    // service create refusals.
    e.refused(
        &[
            "service",
            "create",
            "--name",
            "g",
            "--mode",
            "global",
            "--replicas",
            "2",
            "--",
            "sleep",
            "9",
        ],
        "replicated mode",
    );
    e.refused(&["service", "create", "--name", "nocmd"], "command");
    e.refused(
        &[
            "service",
            "create",
            "--name",
            "huge",
            "--replicas",
            "4000000000",
            "--",
            "sleep",
            "9",
        ],
        "at most 1024",
    );
    e.refused(
        &[
            "service",
            "create",
            "--name",
            "allports",
            "-p",
            "1-65535:1-65535",
            "--",
            "sleep",
            "9",
        ],
        "at most 256 ports",
    );
    e.refused(
        &[
            "service", "create", "--name", "raft", "-p", "2377:80", "--", "sleep", "9",
        ],
        "reserved for the node's own cluster management",
    );
    e.refused(
        &[
            "service",
            "create",
            "--name",
            "ssh",
            "-p",
            "mode=host,published=22,target=22",
            "--",
            "sleep",
            "9",
        ],
        "reserved for the node's own SSH",
    );
    e.refused(
        &[
            "service",
            "create",
            "--name",
            "u",
            "--network",
            "nope",
            "--",
            "sleep",
            "9",
        ],
        "not found",
    );
    e.refused(
        &[
            "service",
            "create",
            "--name",
            "d",
            "--endpoint-mode",
            "dnsrr",
            "-p",
            "81:80",
            "--",
            "sleep",
            "9",
        ],
        "dnsrr",
    );
    e.refused(
        &[
            "service",
            "create",
            "--name",
            "i",
            "--network",
            "ingress",
            "--",
            "sleep",
            "9",
        ],
        "ingress",
    );

    // Stopping tasks never holds the state lock: tasks that ignore SIGTERM take their 3 s
    // grace in the background — right after `service rm` their namespaces are still
    // there, and other verbs answer meanwhile.
    e.ok(&[
        "service",
        "create",
        "--name",
        "stubborn",
        "--replicas",
        "2",
        "--",
        "sh",
        "-c",
        "trap '' TERM; while true; do sleep 1; done",
    ]);
    wait_for("stubborn tasks", 20, || {
        running_tasks(&e, "stubborn").len() == 2
    });
    let stubborn: Vec<String> = running_tasks(&e, "stubborn")
        .iter()
        .map(|t| t["ID"].as_str().unwrap().to_owned())
        .collect();
    e.ok(&["service", "rm", "stubborn"]);
    assert!(
        stubborn
            .iter()
            .any(|id| std::fs::metadata(format!("/run/netns/sgt-{id}")).is_ok()),
        "service rm waited for its tasks' grace period"
    );
    e.ok(&["network", "ls"]);
    for id in &stubborn {
        wait_for(&format!("{id}'s namespace to go"), 15, || {
            std::fs::metadata(format!("/run/netns/sgt-{id}")).is_err()
        });
    }

    // The tutorial's service.
    e.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--network",
        "my-overlay",
        "--replicas",
        "3",
        "--publish",
        "8080:80",
        "--",
        "sh",
        "-c",
        HTTP,
    ]);
    e.refused(
        &[
            "service", "create", "--name", "web2", "-p", "8080:80", "--", "sleep", "9",
        ],
        "already in use",
    );
    e.refused(
        &["service", "create", "--name", "web", "--", "sleep", "9"],
        "already exists",
    );
    let ls = e.ok(&["service", "ls"]);
    assert!(ls.contains("3/3") && ls.contains("*:8080->80/tcp"), "{ls}");
    assert_eq!(running_tasks(&e, "web").len(), 3);
    let svc = json(&e.ok(&["service", "inspect", "web"]));
    let vip_overlay = svc[0]["Endpoint"]["VirtualIPs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["Addr"].as_str().unwrap().starts_with("10.0.1."))
        .map(|v| {
            v["Addr"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_owned()
        })
        .expect("a VIP on my-overlay");

    // Published port: every fetch answered, by more than one task, and the tasks log the
    // client's own address.
    // (The tasks' HTTP servers take a moment to listen.)
    wait_for("every task listening", 20, || {
        running_tasks(&e, "web").iter().all(|t| {
            let id = t["ID"].as_str().unwrap();
            sh(&format!("ip netns exec sgt-{id} python3 -c \"import socket; socket.create_connection(('127.0.0.1', 80), timeout=1)\""))
                .status
                .success()
        })
    });
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let body = e
            .fetch(&format!("http://{HOST_IP}:8080/"))
            .unwrap_or_else(|| panic!("fetch failed: {}", e.log()));
        answered.insert(body);
    }
    assert!(answered.len() >= 2, "{answered:?}");
    let logs = e.ok(&["service", "logs", "web"]);
    assert!(logs.contains(&format!("{CLIENT_IP} - - ")), "{logs}");

    // network inspect lists the tasks.
    let n = json(&e.ok(&["network", "inspect", "my-overlay"]));
    let containers = n[0]["Containers"].as_object().unwrap();
    assert_eq!(containers.len(), 3);
    let mut task_ips: Vec<String> = containers
        .values()
        .map(|c| {
            c["IPv4Address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    task_ips.sort();
    for c in containers.values() {
        let ip: std::net::Ipv4Addr = c["IPv4Address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let o = ip.octets();
        assert_eq!(
            c["MacAddress"],
            format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
        );
    }

    // A standalone endpoint, DNS from inside the overlay, VIP load balancing.
    e.ok(&[
        "run",
        "-d",
        "--name",
        "probe",
        "--network",
        "my-overlay",
        "--",
        "sleep",
        "600",
    ]);
    e.refused(
        &[
            "run",
            "-d",
            "--name",
            "probe",
            "--network",
            "my-overlay",
            "--",
            "sleep",
            "1",
        ],
        "already in use",
    );
    e.refused(
        &[
            "run",
            "-d",
            "--name",
            "p2",
            "--network",
            "ingress",
            "--",
            "sleep",
            "1",
        ],
        "attachable",
    );
    let dns = e.exec_py(
        "probe",
        r#"import socket
print(socket.gethostbyname("web"))
print(",".join(sorted(socket.gethostbyname_ex("tasks.web")[2])))
print(socket.gethostbyname("probe"))
print(socket.gethostbyname("upstream.test"))
try:
    socket.gethostbyname("nothing.test"); print("resolved")
except socket.gaierror:
    print("nxdomain")"#,
    );
    let lines: Vec<&str> = dns.lines().collect();
    assert_eq!(lines[0], vip_overlay, "service name → its VIP");
    assert_eq!(
        lines[1],
        task_ips.join(","),
        "tasks.web → the task addresses"
    );
    assert!(
        lines[2].starts_with("10.0.1."),
        "endpoint name → its address: {dns}"
    );
    assert_eq!(lines[3], "192.0.2.7", "other names forwarded: {dns}");
    assert_eq!(lines[4], "nxdomain");
    let resolv = e.ok(&["exec", "probe", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 127.0.0.11"), "{resolv}");
    let via_vip = e.exec_py(
        "probe",
        r#"import urllib.request
for i in range(16):
    print(urllib.request.urlopen("http://web/", timeout=3).read().decode().strip())"#,
    );
    let distinct: std::collections::BTreeSet<&str> = via_vip.lines().collect();
    assert!(distinct.len() >= 2, "VIP spread: {via_vip}");
    // A task reaching its own service (and sometimes itself, hairpinned) always gets an
    // answer.
    let own = e.exec_py(
        "web.1",
        r#"import urllib.request
for i in range(30):
    print(urllib.request.urlopen("http://web/", timeout=3).read().decode().strip())"#,
    );
    assert_eq!(own.lines().count(), 30, "{own}");
    assert!(
        own.contains("served by web.1."),
        "never hairpinned to itself: {own}"
    );

    // exec exit codes pass through; a foreground run reports its exit.
    let (c, _, _) = e.sg(&["exec", "probe", "--", "sh", "-c", "exit 7"]);
    assert_eq!(c, 7);
    let (c, _, _) = e.sg(&[
        "run",
        "--name",
        "fg",
        "--network",
        "my-overlay",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(c, 3);
    let ps = json_lines(&e.ok(&["ps", "--format", "json"]));
    assert!(
        ps.iter()
            .any(|p| p["Names"] == "fg" && p["Status"].as_str().unwrap().starts_with("Exited (3)")),
        "{ps:?}"
    );
    e.ok(&["rm", "fg"]);
    e.refused(&["rm", "probe"], "running container");

    // A connection stays on its task while tasks are added.
    let mut conn = Command::new("ip")
        .args(["netns", "exec", &e.client, "python3", "-u", "-c"])
        .arg(format!(
            r#"import socket, sys
s = socket.create_connection(("{HOST_IP}", 8080), timeout=5)
print("connected", flush=True)
sys.stdin.readline()
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while True:
    b = s.recv(4096)
    if not b: break
    data += b
print(data.split(b"\r\n\r\n", 1)[1].decode().strip())"#
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(conn.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    e.ok(&["service", "update", "--replicas", "5", "web"]);
    wait_for("5 running tasks", 20, || {
        running_tasks(&e, "web").len() == 5
    });
    conn.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut body = String::new();
    out.read_line(&mut body).unwrap();
    assert!(
        body.starts_with("served by web."),
        "connection broken after scaling: {body:?}"
    );
    conn.wait().unwrap();
    assert!(e.ok(&["service", "ls"]).contains("5/5"));
    e.ok(&["service", "update", "--replicas", "3", "web"]);
    wait_for("3 running tasks", 20, || {
        running_tasks(&e, "web").len() == 3
    });

    // Task replacement: kill a task's process; a new task takes its slot.
    let victim = running_tasks(&e, "web")[0].clone();
    let vid = victim["ID"].as_str().unwrap().to_owned();
    let slot = victim["Name"].as_str().unwrap().to_owned();
    sh(&format!("ip netns pids sgt-{vid} | xargs -r kill -9"));
    wait_for("a replacement task", 20, || {
        let t = running_tasks(&e, "web");
        t.len() == 3 && t.iter().all(|x| x["ID"] != vid.as_str())
    });
    let ps = json_lines(&e.ok(&["service", "ps", "--format", "json", "web"]));
    let old = ps
        .iter()
        .find(|t| t["ID"] == vid.as_str())
        .expect("history row");
    assert_eq!(old["Name"], slot);
    assert!(
        old["CurrentState"].as_str().unwrap().starts_with("Failed"),
        "{old}"
    );
    // Stopping happens off the state lock: the namespace goes within the stop grace.
    wait_for("the failed task's namespace to go", 10, || {
        std::fs::metadata(format!("/run/netns/sgt-{vid}")).is_err()
    });
    assert!(
        e.ok(&["service", "ps", "web"]).contains("\\_ web."),
        "history shown"
    );

    // The data plane reports the networks the daemon programmed.
    let st = json(&e.ok(&["stats"]));
    assert!(
        st["networks"]["ingress"]["vni"].as_u64().is_some(),
        "ingress missing from the data plane's counters: {st}"
    );

    // Publish another port, then remove it.
    e.ok(&["service", "update", "--publish-add", "9090:80", "web"]);
    assert!(e.fetch(&format!("http://{HOST_IP}:9090/")).is_some());
    e.ok(&["service", "update", "--publish-rm", "9090", "web"]);
    assert!(e.fetch(&format!("http://{HOST_IP}:9090/")).is_none());
    e.refused(
        &["service", "update", "--publish-rm", "7777", "web"],
        "does not publish",
    );

    // Attach another network: tasks are replaced and appear on it.
    e.ok(&["service", "update", "--network-add", "secure-net", "web"]);
    wait_for("tasks on secure-net", 30, || {
        let n = json(&e.ok(&["network", "inspect", "secure-net"]));
        n[0]["Containers"].as_object().unwrap().len() == 3 && running_tasks(&e, "web").len() == 3
    });
    e.refused(&["network", "rm", "secure-net"], "in use");
    e.refused(&["network", "rm", "ingress"], "depends on it");

    // Restart: networks, services and the running tasks survive; traffic flows again.
    let ids_before: Vec<String> = running_tasks(&e, "web")
        .iter()
        .map(|t| t["ID"].as_str().unwrap().to_owned())
        .collect();
    let nets_before = e.ok(&["network", "ls"]);
    e.stop_daemon();
    e.start_daemon();
    let ids_after: Vec<String> = running_tasks(&e, "web")
        .iter()
        .map(|t| t["ID"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids_before, ids_after, "tasks not restored: {}", e.log());
    assert_eq!(e.ok(&["network", "ls"]), nets_before);
    let mut ok = false;
    for _ in 0..20 {
        if e.fetch(&format!("http://{HOST_IP}:8080/")).is_some() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(ok, "published port dead after restart: {}", e.log());
    let again = e.exec_py(
        "probe",
        r#"import socket; print(socket.gethostbyname("web"))"#,
    );
    assert_eq!(again.trim(), vip_overlay);

    // Removal cleans up every namespace, veth and bridge.
    e.ok(&["rm", "-f", "probe"]);
    e.ok(&["service", "rm", "web"]);
    e.refused(&["service", "ps", "web"], "not found");
    for id in &ids_after {
        wait_for(&format!("{id}'s namespace to go"), 10, || {
            std::fs::metadata(format!("/run/netns/sgt-{id}")).is_err()
        });
    }
    let secure_vni = json(&e.ok(&["network", "inspect", "secure-net"]))[0]["Options"]
        ["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .unwrap()
        .to_owned();
    e.ok(&["network", "rm", "my-overlay", "secure-net"]);
    let links = sh(&format!("ip -n {} -o link", e.host));
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains(&format!("sgbr{secure_vni}")),
        "bridge left: {links}"
    );
    assert!(
        !links.contains(&format!("sg-{secure_vni}")),
        "TAP left: {links}"
    );
    assert!(!links.contains("sgv"), "veth left: {links}");
    e.ok(&["swarm", "leave", "--force"]);
}
