//! Swarm hosts made of network namespaces: each host has its own network namespace, host
//! name (a UTS namespace) and `swarmgate daemon` with its own DPDK gateway on an
//! af_packet underlay; the hosts share a LAN (a bridge in a namespace of its own).
//! Everything is stopped and removed when the [`Lan`] is dropped. Needs root.

use std::path::PathBuf;
use std::process::{Child, Command};

use crate::netns::{run, try_run};
use std::time::{Duration, Instant};

/// Waits up to `secs` for `f`; how long it took. Panics naming `what` on timeout.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

/// Waits up to `secs` for `f` to return `Ok`; how long it took. Panics naming `what`
/// with `f`'s last explanation on timeout (`SG_DEBUG_WAIT=1` prints each one).
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> Result<(), String>) -> Duration {
    let start = Instant::now();
    loop {
        match f() {
            Ok(()) => return start.elapsed(),
            Err(why) if start.elapsed() >= Duration::from_secs(secs) => {
                panic!("timed out: {what}: {why}")
            }
            Err(why) => {
                if std::env::var("SG_DEBUG_WAIT").is_ok() {
                    eprintln!("waiting: {what}: {}", why.lines().next().unwrap_or(""));
                }
                std::thread::sleep(Duration::from_millis(200))
            }
        }
    }
}

/// One host: a network namespace with `eth0` on the LAN, a host name, a daemon.
pub struct Host {
    /// Its network namespace.
    pub ns: String,
    /// Its host name (what `node ls` shows).
    pub name: String,
    /// Its address on the LAN.
    pub ip: String,
    /// Its files: configuration, data root, socket, log.
    pub dir: PathBuf,
    daemon: Option<Child>,
}

impl Host {
    /// The daemon's API socket.
    pub fn sock(&self) -> PathBuf {
        self.dir.join("sg.sock")
    }

    /// Starts its daemon (in its namespace, under its host name) and waits for the API.
    pub fn start(&mut self) {
        // A killed daemon leaves its socket behind: wait for the new one, not the old.
        let _ = std::fs::remove_file(self.sock());
        let log = std::fs::File::create(self.dir.join("daemon.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args(["unshare", "--uts", "--", "sh", "-c"])
            .arg(format!("hostname {} && exec \"$0\" \"$@\"", self.name))
            .arg(crate::netns::swarmgate_bin())
            .arg("-H")
            .arg(self.sock())
            .args(["daemon", "-c"])
            .arg(self.dir.join("daemon.toml"))
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        while !self.sock().exists() {
            assert!(Instant::now() < end, "daemon did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops its daemon (SIGTERM; SIGKILL after 20 s). Its tasks keep running.
    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &d.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end {
                if d.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    /// Kills its daemon with SIGKILL (a crashed host; its tasks keep running).
    pub fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    /// Its daemon's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Runs the CLI against this host's daemon, `args` split at whitespace: (success,
    /// stdout + stderr).
    pub fn cli(&self, args: &str) -> (bool, String) {
        self.cli_args(&args.split_whitespace().collect::<Vec<_>>())
    }

    /// Runs the CLI against this host's daemon: (success, stdout + stderr).
    pub fn cli_args(&self, args: &[&str]) -> (bool, String) {
        let o = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(crate::netns::swarmgate_bin())
            .arg("-H")
            .arg(self.sock())
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    /// The CLI, which must succeed.
    pub fn ok(&self, args: &str) -> String {
        let (ok, out) = self.cli(args);
        assert!(
            ok,
            "swarmgate {args}: {out}\n--- daemon log:\n{}",
            self.log()
        );
        out
    }

    /// The CLI, which must fail with one line.
    pub fn err(&self, args: &str) -> String {
        let (ok, out) = self.cli(args);
        assert!(!ok, "swarmgate {args} should fail: {out}");
        assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
        out
    }

    /// The tasks of `service` that run and should, as `service ps` on this manager shows
    /// them: (task ID, node host name, first address).
    pub fn running(&self, service: &str) -> Vec<(String, String, String)> {
        self.rows(&format!("service ps {service}"))
            .into_iter()
            .filter(|t| {
                t["DesiredState"] == "Running"
                    && t["CurrentState"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("Running")
            })
            .map(|t| {
                (
                    t["ID"].as_str().unwrap_or("").to_owned(),
                    t["Node"].as_str().unwrap_or("").to_owned(),
                    t["Addresses"][0]
                        .as_str()
                        .and_then(|a| a.split_once('='))
                        .map_or(String::new(), |a| a.1.to_owned()),
                )
            })
            .collect()
    }

    /// `--format json` lines of a listing, parsed.
    pub fn rows(&self, args: &str) -> Vec<serde_json::Value> {
        self.ok(&format!("{args} --format json"))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Hosts on one LAN.
pub struct Lan {
    lan: String,
    /// The hosts, in the order named.
    pub hosts: Vec<Host>,
    /// Plain namespaces on the LAN (clients), removed with it.
    clients: std::cell::RefCell<Vec<String>>,
}

impl Lan {
    /// Hosts `names` on 192.168.`subnet`.0/24 (addresses .1, .2, … in order), each with a
    /// daemon configuration (not started). `tag` keeps names apart between tests.
    pub fn new(tag: &str, subnet: u8, names: &[&str]) -> Lan {
        let id = std::process::id() % 100000;
        let base = std::env::temp_dir().join(format!("sg-{tag}-{id}"));
        let _ = std::fs::remove_dir_all(&base);
        let lan = format!("{tag}{id}lan");
        run(&format!("ip netns add {lan}"));
        run(&format!("ip -n {lan} link add br0 type bridge"));
        run(&format!("ip -n {lan} link set br0 up"));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut hosts = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{tag}{id}{name}");
            let ip = format!("192.168.{subnet}.{}", i + 1);
            let dir = base.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("daemon.toml"),
                format!(
                    "[dpdk]\ncores = [{}]\nfile_prefix = \"{ns}\"\nmemory_mb = 256\nmbufs = 8191\n\n\
                     [underlay]\ndevice = \"net_af_packet0,iface=eth0\"\naddress = \"{ip}/24\"\n\
                     exception_iface = \"sgexc\"\n",
                    i % cores
                ),
            )
            .unwrap();
            let veth = format!("{tag}{id}{i}");
            for cmd in [
                format!("ip netns add {ns}"),
                format!("ip link add {veth}a type veth peer name {veth}b"),
                format!("ip link set {veth}a netns {ns} name eth0"),
                format!("ip link set {veth}b netns {lan}"),
                format!("ip -n {lan} link set {veth}b master br0 up"),
                format!("ip -n {ns} link set lo up"),
                format!("ip -n {ns} link set eth0 up"),
            ] {
                run(&cmd);
            }
            try_run(&format!(
                "ip netns exec {ns} ethtool -K eth0 tx off tso off gso off gro off"
            ));
            hosts.push(Host {
                ns,
                name: name.to_string(),
                ip,
                dir,
                daemon: None,
            });
        }
        Lan {
            lan,
            hosts,
            clients: Default::default(),
        }
    }

    /// A client on the LAN: a namespace with address `ip`/24 and no daemon. Returns its
    /// namespace's name.
    pub fn client(&self, name: &str, ip: &str) -> String {
        let ns = format!("{}{name}", self.lan.trim_end_matches("lan"));
        let veth = format!(
            "{}c{}",
            self.lan.trim_end_matches("lan"),
            self.clients.borrow().len()
        );
        for cmd in [
            format!("ip netns add {ns}"),
            format!("ip link add {veth}a type veth peer name {veth}b"),
            format!("ip link set {veth}a netns {ns} name eth0"),
            format!("ip link set {veth}b netns {}", self.lan),
            format!("ip -n {} link set {veth}b master br0 up", self.lan),
            format!("ip -n {ns} addr add {ip}/24 dev eth0"),
            format!("ip -n {ns} link set lo up"),
            format!("ip -n {ns} link set eth0 up"),
        ] {
            run(&cmd);
        }
        try_run(&format!(
            "ip netns exec {ns} ethtool -K eth0 tx off tso off gso off gro off"
        ));
        self.clients.borrow_mut().push(ns.clone());
        ns
    }
}

impl Lan {
    /// A swarm on hosts `names` (see [`Lan::new`]): every daemon started, the first host
    /// running `swarm init --advertise-addr <its address> <init>`, the others joining it
    /// with the `role` (`worker` or `manager`) token; each join's output returned.
    pub fn swarm(
        tag: &str,
        subnet: u8,
        names: &[&str],
        init: &str,
        role: &str,
    ) -> (Lan, Vec<String>) {
        let mut lan = Lan::new(tag, subnet, names);
        for h in &mut lan.hosts {
            h.start();
        }
        let first = &lan.hosts[0];
        first.ok(&format!("swarm init --advertise-addr {} {init}", first.ip));
        let token = first
            .ok(&format!("swarm join-token -q {role}"))
            .trim()
            .to_owned();
        let joins = lan.hosts[1..]
            .iter()
            .map(|h| h.ok(&format!("swarm join --token {token} {}:2377", first.ip)))
            .collect();
        (lan, joins)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            // Tasks survive their daemon (live-restore): leave the swarm to stop them.
            if h.daemon.is_some() {
                let _ = h.cli("swarm leave --force");
            }
            h.stop();
        }
        for h in &self.hosts {
            try_run(&format!("ip netns del {}", h.ns));
        }
        for c in self.clients.borrow().iter() {
            try_run(&format!("ip netns del {c}"));
        }
        try_run(&format!("ip netns del {}", self.lan));
    }
}

/// Keep-alive HTTP connections from client namespace `ns` to `addr:8080`, `n` of them, from
/// ports `base` + 0.. (0: any): asks once on each, then again each time [`KeepAlive::ask`]
/// is called. An answer is the first word of the body (the task's ID), or "-" where the
/// connection failed.
pub struct KeepAlive {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    stdin: Option<std::process::ChildStdin>,
}

impl KeepAlive {
    /// Opens the connections and returns with the first answers.
    pub fn open(ns: &str, addr: &str, n: usize, base: u16) -> (KeepAlive, Vec<String>) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", KEEPALIVE, addr])
            .arg(n.to_string())
            .arg(base.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        let mut k = KeepAlive { child, out, stdin };
        let first = k.read();
        (k, first)
    }

    /// Asks again on every connection.
    pub fn ask(&mut self) -> Vec<String> {
        use std::io::Write;
        writeln!(self.stdin.as_mut().unwrap()).unwrap();
        self.read()
    }

    fn read(&mut self) -> Vec<String> {
        use std::io::BufRead;
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("keep-alive client: {e}: {line:?}"))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const KEEPALIVE: &str = r#"
import json, socket, sys
addr, n, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def ask(s):
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        d = b""
        while b"\r\n\r\n" not in d:
            c = s.recv(4096)
            if not c:
                return "-"
            d += c
        head, body = d.split(b"\r\n\r\n", 1)
        n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
        while len(body) < n:
            c = s.recv(4096)
            if not c:
                return "-"
            body += c
        return body.decode().split()[0]
    except Exception:
        return "-"
conns = []
for i in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(3)
    if base:
        s.bind(("0.0.0.0", base + i))
    s.connect((addr, 8080))
    conns.append(s)
print(json.dumps([ask(s) for s in conns]), flush=True)
while sys.stdin.readline():
    print(json.dumps([ask(s) for s in conns]), flush=True)
"#;
