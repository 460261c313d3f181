//! Hosts made of network namespaces, for tests that move real frames: two "hosts" joined
//! by a veth underlay, each running either the Linux kernel's vxlan device (Docker's data
//! path) or a `swarmgate` gateway process, each with one endpoint namespace behind its
//! bridge. Everything a test creates is removed when its [`Topology`] is dropped. Needs
//! root, iproute2, ethtool, python3; traffic only ever goes to addresses inside these
//! namespaces.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// True when running as root (the namespace tests need it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Whether a test that needs root can run: `true` as root. Otherwise the test is skipped
/// with a message — except under `CI=true`, where a skipped test would hide that nothing
/// was checked, so it panics instead.
pub fn root_or_skip(what: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} needs root, and CI=true: refusing to pass without running");
    }
    eprintln!("skipped: {what} needs root");
    false
}

/// Path of the `swarmgate` binary built next to the running test.
pub fn swarmgate_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SWARMGATE_BIN") {
        return p.into();
    }
    // A test runs from target/<profile>/deps/, a binary from target/<profile>/.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    let bin = [
        dir.join("swarmgate"),
        dir.parent()
            .map(|d| d.join("swarmgate"))
            .unwrap_or_default(),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| dir.join("swarmgate"));
    assert!(bin.exists(), "{} missing: build it with `cargo build -p swarmgate-gateway` (cargo test --workspace does)", bin.display());
    bin
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    if !out.status.success() {
        panic!(
            "`{cmd}` failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, returning (success, stdout+stderr).
pub fn try_run(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

/// What runs the overlay on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The Linux kernel's vxlan device, as Docker sets it up.
    Kernel,
    /// A swarmgate gateway on a DPDK `net_af_packet` port (its local port a TAP, the
    /// default).
    Swarmgate,
    /// The same with a veth polled with `net_af_packet` as its local port
    /// (`[dpdk] local_ports = "af_packet"`).
    SwarmgateAfPacket,
    /// The same with an XDP socket on a veth as its local port (`local_ports = "af_xdp"`).
    SwarmgateAfXdp,
    /// Nothing but the VTEP address on the underlay interface: the test itself plays the
    /// host, sending what an independent implementation builds.
    Bare,
}

/// The VNI of the test network.
pub const VNI: u32 = 4097;

/// A test key (tag 1).
pub const KEY_HEX: &str = "5377b52e7a3c0f1d2e4b6a8c9d0e1f20";

/// A running gateway process.
pub struct GatewayProcess {
    child: Child,
    /// Where it writes its counters every second.
    pub stats_path: PathBuf,
    /// Its configuration file.
    pub config_path: PathBuf,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl GatewayProcess {
    /// Its latest counters.
    pub fn stats(&self) -> serde_json::Value {
        std::fs::read(&self.stats_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, wait, and the final counters.
    pub fn stop(&mut self) -> serde_json::Value {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "gateway exited with {status}:\n{}",
                    self.log()
                );
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("gateway did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(100));
        self.stats()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_millis(500));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Two hosts, two endpoints, one overlay network.
pub struct Topology {
    id: String,
    /// What runs on host 1 and host 2.
    pub sides: [Side; 2],
    /// Whether the network is `--opt encrypted`.
    pub encrypted: bool,
    /// Gateway processes, for swarmgate sides.
    pub gateways: [Option<GatewayProcess>; 2],
    dir: PathBuf,
    encryption_toml: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// Namespace of host `i` (1 or 2).
    pub fn host(&self, i: usize) -> String {
        format!("sg{}h{i}", self.id)
    }
    /// Namespace of the endpoint behind host `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("sg{}e{i}", self.id)
    }
    /// Host `i`'s underlay interface.
    pub fn underlay_iface(&self, i: usize) -> String {
        format!("u{}{}", self.id, if i == 1 { "a" } else { "b" })
    }
    /// Host `i`'s VTEP address.
    pub fn vtep(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 77, i as u8)
    }
    /// Endpoint `i`'s overlay address.
    pub fn ep(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, i as u8)
    }
    /// Docker's MAC for endpoint `i`.
    pub fn ep_mac(i: usize) -> String {
        format!("02:42:0a:00:00:{:02x}", i)
    }
    /// A scratch directory for this topology's files.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Builds the topology and starts the gateways; returns once every swarmgate side has
    /// resolved its peer.
    pub fn new(sides: [Side; 2], encrypted: bool) -> Topology {
        Topology::with_encryption(
            sides,
            encrypted,
            &format!("keys = [{{ key = \"{KEY_HEX}\", tag = 1 }}]"),
        )
    }

    /// As [`Topology::new`], with `encryption` as the body of the gateways' `[encryption]`
    /// table (each gateway adds its own `epoch_file` in the topology's directory, which
    /// survives [`Topology::restart_gateway`]).
    pub fn with_encryption(sides: [Side; 2], encrypted: bool, encryption: &str) -> Topology {
        let id = format!(
            "{}{}",
            std::process::id() % 1000,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("swarmgate-topo-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut t = Topology {
            id,
            sides,
            encrypted,
            gateways: [None, None],
            dir,
            encryption_toml: encryption.to_owned(),
        };
        for i in 1..=2 {
            for ns in [t.host(i), t.endpoint(i)] {
                let _ = try_run(&format!("ip netns del {ns}"));
                run(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
            }
        }
        let (h1, h2, u1, u2) = (
            t.host(1),
            t.host(2),
            t.underlay_iface(1),
            t.underlay_iface(2),
        );
        run(&format!(
            "ip link add {u1} netns {h1} address 02:00:c0:a8:4d:01 type veth peer name {u2} netns {h2} address 02:00:c0:a8:4d:02"
        ));
        for i in 1..=2 {
            let (h, u, e) = (t.host(i), t.underlay_iface(i), t.endpoint(i));
            // Frames on these veths must carry complete checksums, as from a real NIC:
            // checksum offload would leave partial sums that a packet socket passes on.
            run(&format!("ip netns exec {h} ethtool -K {u} tx off tso off gso off gro off >/dev/null 2>&1 || true"));
            run(&format!("ip -n {h} link set {u} up"));
            let (br, mtu) = match sides[i - 1] {
                Side::Kernel => ("br0".to_string(), 1450),
                Side::Swarmgate | Side::SwarmgateAfPacket | Side::SwarmgateAfXdp | Side::Bare => {
                    (format!("br-{VNI}"), if encrypted { 1424 } else { 1450 })
                }
            };
            run(&format!(
                "ip -n {h} link add {br} type bridge && ip -n {h} link set {br} up"
            ));
            run(&format!(
                "ip link add ve{id}{i} netns {h} type veth peer name eth0 netns {e} address {mac}",
                id = t.id,
                mac = Self::ep_mac(i)
            ));
            run(&format!(
                "ip -n {h} link set ve{id}{i} master {br} mtu {mtu} up",
                id = t.id
            ));
            run(&format!(
                "ip -n {e} addr add {ip}/24 dev eth0 && ip -n {e} link set eth0 mtu {mtu} up",
                ip = Self::ep(i)
            ));
            run(&format!(
                "ip netns exec {e} ethtool -K eth0 tx off tso off gso off >/dev/null 2>&1 || true"
            ));
        }
        for i in 1..=2 {
            match sides[i - 1] {
                Side::Kernel => t.setup_kernel(i),
                Side::Swarmgate | Side::SwarmgateAfPacket | Side::SwarmgateAfXdp => {
                    t.start_gateway(i)
                }
                Side::Bare => {
                    run(&format!(
                        "ip -n {} addr add {}/24 dev {}",
                        t.host(i),
                        Self::vtep(i),
                        t.underlay_iface(i)
                    ));
                }
            }
        }
        t.wait_ready();
        t
    }

    fn setup_kernel(&self, i: usize) {
        assert!(
            !self.encrypted,
            "this machine's kernel has no ESP: kernel sides are plain only"
        );
        let (h, u, o) = (self.host(i), self.underlay_iface(i), 3 - i);
        run(&format!("ip -n {h} addr add {}/24 dev {u}", Self::vtep(i)));
        // Docker's vxlan device: proxy ARP, no learning, no UDP checksum, static FDB and ARP
        // entries for remote endpoints (libnetwork drivers/overlay).
        run(&format!(
            "ip -n {h} link add vxlan0 type vxlan id {VNI} dstport 4789 local {} dev {u} nolearning proxy noudpcsum",
            Self::vtep(i)
        ));
        run(&format!("ip -n {h} link set vxlan0 master br0 mtu 1450 up"));
        run(&format!(
            "ip netns exec {h} bridge fdb add {} dev vxlan0 dst {}",
            Self::ep_mac(o),
            Self::vtep(o)
        ));
        run(&format!(
            "ip -n {h} neigh add {} lladdr {} dev vxlan0 nud permanent",
            Self::ep(o),
            Self::ep_mac(o)
        ));
    }

    fn start_gateway(&mut self, i: usize) {
        let (h, u, o) = (self.host(i), self.underlay_iface(i), 3 - i);
        let keys = if self.encrypted {
            format!(
                "\n[encryption]\n{}\nepoch_file = \"{}\"\n",
                self.encryption_toml,
                self.dir.join(format!("gw{i}.epoch")).display()
            )
        } else {
            String::new()
        };
        let cfg = format!(
            r#"[dpdk]
cores = [{core}]
file_prefix = "sg-{id}-{i}"
memory_mb = 192
mbufs = 4095
local_ports = "{local_ports}"

[underlay]
device = "net_af_packet0,iface={u}"
address = "{vtep}/24"

[[network]]
name = "test-overlay"
vni = {VNI}
encrypted = {enc}
bridge = "br-{VNI}"
local = [{{ ip = "{ep}" }}]

[[peer]]
vtep = "{peer}"
endpoints = [{{ network = "test-overlay", ip = "{pep}" }}]
docker = {docker}
{keys}"#,
            core = i - 1,
            id = self.id,
            vtep = Self::vtep(i),
            enc = self.encrypted,
            ep = Self::ep(i),
            peer = Self::vtep(o),
            pep = Self::ep(o),
            // The kernel and bare sides stand for Docker hosts (the bare one sends the
            // kernel's IVs).
            docker = !matches!(
                self.sides[o - 1],
                Side::Swarmgate | Side::SwarmgateAfPacket | Side::SwarmgateAfXdp
            ),
            local_ports = match self.sides[i - 1] {
                Side::SwarmgateAfPacket => "af_packet",
                Side::SwarmgateAfXdp => "af_xdp",
                _ => "tap",
            },
        );
        let config_path = self.dir.join(format!("gw{i}.toml"));
        let stats_path = self.dir.join(format!("gw{i}.json"));
        std::fs::write(&config_path, cfg).unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &h])
            .arg(swarmgate_bin())
            .args(["gateway", "-c"])
            .arg(&config_path)
            .arg("--stats")
            .arg(&stats_path)
            .args(["--idle-sleep-us", "50"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn swarmgate");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        self.gateways[i - 1] = Some(GatewayProcess {
            child,
            stats_path,
            config_path,
            log,
        });
    }

    /// Stops gateway `i` (SIGTERM) and starts it again with the same configuration and
    /// epoch reservation, as a node restart would; returns its final counters from before
    /// the restart once the new process has resolved its peer.
    pub fn restart_gateway(&mut self, i: usize) -> serde_json::Value {
        let before = self.gateways[i - 1]
            .as_mut()
            .expect("a swarmgate side")
            .stop();
        if let Some(g) = self.gateways[i - 1].take() {
            // The new process is ready once it has written counters of its own.
            let _ = std::fs::remove_file(&g.stats_path);
        }
        self.start_gateway(i);
        self.wait_ready();
        before
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for i in 1..=2 {
            if let Some(g) = &mut self.gateways[i - 1] {
                let peer = Self::vtep(3 - i).to_string();
                loop {
                    if let Ok(Some(status)) = g.child.try_wait() {
                        panic!("gateway {i} exited with {status}:\n{}", g.log());
                    }
                    if g.stats()["neighbours"].get(&peer).is_some() {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "gateway {i} did not resolve {peer}:\n{}",
                        g.log()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Runs `cmd` inside namespace `ns`.
    pub fn exec(&self, ns: &str, cmd: &str) -> (bool, String) {
        try_run(&format!("ip netns exec {ns} {cmd}"))
    }

    /// Pings from endpoint `from` to endpoint `to`; returns (sent, received).
    pub fn ping(&self, from: usize, to: usize, count: u32) -> (u32, u32) {
        let (_, out) = self.exec(
            &self.endpoint(from),
            &format!("ping -c {count} -i 0.2 -W 2 {}", Self::ep(to)),
        );
        let line = out
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_default()
            .to_owned();
        let nums: Vec<u32> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|s| s.parse().ok())
            .collect();
        (
            nums.first().copied().unwrap_or(0),
            nums.get(1).copied().unwrap_or(0),
        )
    }

    /// A TCP stream of `bytes` random bytes from endpoint `from` to endpoint `to`, checked by
    /// SHA-256 on the receiving side. Panics unless every byte arrived intact.
    pub fn tcp_stream(&self, from: usize, to: usize, bytes: usize) {
        self.tcp_stream_between(
            &self.endpoint(from),
            &self.endpoint(to),
            Self::ep(to),
            5000 + from as u16,
            bytes,
        );
    }

    /// A TCP stream from namespace `from_ns` to `to_addr:port` served in namespace `to_ns`,
    /// checked by SHA-256. Panics unless every byte arrived intact.
    pub fn tcp_stream_between(
        &self,
        from_ns: &str,
        to_ns: &str,
        to_addr: Ipv4Addr,
        port: u16,
        bytes: usize,
    ) {
        let script = self.script();
        let server = self.serve(
            to_ns,
            &["tcp-server", &to_addr.to_string(), &port.to_string()],
        );
        let (ok, out) = self.exec(
            from_ns,
            &format!(
                "python3 {} tcp-client {to_addr} {port} {bytes}",
                script.display()
            ),
        );
        let server_out = server.wait_with_output().unwrap();
        assert!(
            ok,
            "TCP {from_ns}->{to_ns}: {out}\nserver: {}",
            String::from_utf8_lossy(&server_out.stderr)
        );
        assert!(
            out.contains("digest match True"),
            "TCP {from_ns}->{to_ns}: {out}"
        );
    }

    /// `count` UDP datagrams of `size` bytes from endpoint `from`, each echoed back by
    /// endpoint `to` and compared byte for byte. Panics on any loss or difference.
    pub fn udp_echo(&self, from: usize, to: usize, count: usize, size: usize) {
        let script = self.script();
        let port = 6000 + from as u16;
        let server = Command::new("ip")
            .args(["netns", "exec", &self.endpoint(to), "python3"])
            .arg(&script)
            .args([
                "udp-server",
                &Self::ep(to).to_string(),
                &port.to_string(),
                &count.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let (ok, out) = self.exec(
            &self.endpoint(from),
            &format!(
                "python3 {} udp-client {} {port} {count} {size}",
                script.display(),
                Self::ep(to)
            ),
        );
        let _ = server.wait_with_output();
        assert!(
            ok && out.contains(&format!("echoed {count} of {count} intact")),
            "UDP {from}->{to}: {out}"
        );
    }

    /// Starts the traffic script as a server in `ns` and gives it time to bind.
    fn serve(&self, ns: &str, args: &[&str]) -> Child {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "python3"])
            .arg(self.script())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        std::thread::sleep(Duration::from_millis(300));
        child
    }

    fn script(&self) -> PathBuf {
        let p = self.dir.join("traffic.py");
        if !p.exists() {
            std::fs::write(&p, TRAFFIC_PY).unwrap();
        }
        p
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for g in self.gateways.iter_mut() {
            drop(g.take());
        }
        for i in 1..=2 {
            let _ = try_run(&format!("ip netns del {}", self.endpoint(i)));
            let _ = try_run(&format!("ip netns del {}", self.host(i)));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const TRAFFIC_PY: &str = r#"
import hashlib, os, socket, sys
mode = sys.argv[1]
if mode == "tcp-server":
    host, port = sys.argv[2], int(sys.argv[3])
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(1); s.settimeout(30)
    c, _ = s.accept(); c.settimeout(30); h = hashlib.sha256()
    while True:
        d = c.recv(65536)
        if not d: break
        h.update(d)
    c.sendall(h.hexdigest().encode()); c.close()
elif mode == "tcp-client":
    host, port, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    data = os.urandom(size)
    c = socket.create_connection((host, port), timeout=30)
    c.sendall(data); c.shutdown(socket.SHUT_WR)
    got = c.recv(100).decode()
    print("digest match", got == hashlib.sha256(data).hexdigest())
elif mode == "udp-server":
    host, port, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((host, port)); s.settimeout(30)
    for _ in range(count):
        d, a = s.recvfrom(65536); s.sendto(d, a)
elif mode == "udp-client":
    host, port, count, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    ok = 0
    for i in range(count):
        d = os.urandom(size); s.sendto(d, (host, port))
        try:
            r, _ = s.recvfrom(65536)
            ok += r == d
        except socket.timeout:
            pass
    print("echoed %d of %d intact" % (ok, count))
"#;

/// Starts tcpdump on `iface` in namespace `ns` (`snaplen` bytes per frame, 0 for all),
/// writing to `pcap` until the returned closure is called. Returns once tcpdump says it
/// is listening (on a loaded machine that can take longer than any fixed sleep), and
/// 800 ms more.
pub fn capture(ns: &str, iface: &str, snaplen: u32, pcap: &std::path::Path) -> impl FnOnce() {
    let mut cap = Command::new("ip")
        .args(["netns", "exec", ns, "tcpdump", "-i", iface, "-U", "-s"])
        .arg(snaplen.to_string())
        .arg("-w")
        .arg(pcap)
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    let (tx, rx) = std::sync::mpsc::channel();
    let err = cap.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("tcpdump did not start listening within 20 s");
    // Measured: frames sent right after "listening on" can still be missed (a capture
    // of a kernel vxlan peer's underlay got none at all), so give it the time the fixed
    // delay used to.
    std::thread::sleep(Duration::from_millis(800));
    move || {
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-INT", &cap.id().to_string()])
            .status();
        let _ = cap.wait();
    }
}
