//! Tasks without container images: a task is a process (the service's command) in its own
//! network namespace, with one veth per attached network into the node's bridge for that
//! network, its address and MAC from IPAM, the network's MTU, and `/etc/resolv.conf`
//! pointing at the embedded DNS (through `ip netns exec`'s `/etc/netns/<ns>/` overlay).
//!
//! Everything a task makes is removed when it is stopped or dropped, and a task that cannot
//! be set up completely leaves nothing behind.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use swarmgate_dataplane::wire::EthernetAddress;

/// One network a task is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The node's bridge for the network.
    pub bridge: String,
    /// The task's address on it.
    pub ip: Ipv4Addr,
    /// The network's prefix length.
    pub prefix: u8,
    /// The task's MAC (Docker's `02:42` + address).
    #[serde(with = "mac_serde")]
    pub mac: EthernetAddress,
    /// The network's MTU.
    pub mtu: u16,
    /// Put the bridge port in isolated mode: the endpoint reaches only the data plane's
    /// port on the bridge (overlay networks, whose traffic the data plane routes).
    #[serde(default)]
    pub isolated: bool,
}

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// A short unique id (letters and digits, at most 8): names the namespace and veths.
    pub id: String,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Networks, in order: `eth0`, `eth1`, ...
    pub attachments: Vec<Attachment>,
    /// The resolver written into the task's `/etc/resolv.conf` (127.0.0.11 for the
    /// embedded DNS).
    pub nameserver: Ipv4Addr,
    /// The namespace holding the bridges (the node), or `None` for the current one.
    pub host_ns: Option<String>,
    /// Where the task's standard output and error go.
    pub log: Option<PathBuf>,
    /// Environment variables for the command.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory of the command (created if missing).
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Extra `ip` commands run in the task's namespace once its interfaces are up (routes,
    /// policy rules), each as its argument list after `ip -n NS`.
    #[serde(default)]
    pub routes: Vec<Vec<String>>,
}

/// Why a task could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The id cannot name kernel objects.
    #[error("invalid task id {0:?}: 1-8 letters or digits")]
    BadId(String),
    /// No command.
    #[error("a task needs a command")]
    NoCommand,
    /// A setup step failed; everything done before it was undone.
    #[error("{step}: {detail}")]
    Setup {
        /// What was being done.
        step: String,
        /// What the tool said.
        detail: String,
    },
}

/// How a task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Still running.
    Running,
    /// Exited with this code (`None`: killed by a signal).
    Exited(Option<i32>),
}

/// A running (or exited, not yet cleaned up) task.
#[derive(Debug)]
pub struct Task {
    spec: TaskSpec,
    ns: String,
    child: Option<Child>,
    /// A process this daemon did not start (adopted after a restart): pid and start time.
    adopted: Option<(u32, u64)>,
    cleaned: bool,
}

/// Marks every descriptor of this process above stderr close-on-exec. DPDK opens its
/// files (flock-ed memory segment lists, TAP devices) without `O_CLOEXEC`; a task started
/// by the daemon would otherwise inherit them, keep their locks after the daemon exits, and
/// stop the next daemon from initialising DPDK.
pub fn close_on_exec_all() {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for e in dir.flatten() {
        if let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
            if fd > 2 {
                let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
            }
        }
    }
}

/// The start time of process `pid` (clock ticks since boot, `/proc/PID/stat` field 22) and
/// whether it is still alive (not a zombie). `None`: no such process.
pub fn process_start_time(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = *f.first()?;
    let start = f.get(19)?.parse().ok()?;
    Some((start, state != "Z" && state != "X"))
}

/// Runs a command; on failure, the command line and what it wrote to stderr.
pub(crate) fn sh(args: &[&str]) -> Result<(), (String, String)> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| (args.join(" "), e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err((
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

impl Task {
    /// The namespace name for a task id.
    pub fn namespace_of(id: &str) -> String {
        format!("sgt-{id}")
    }

    fn host_veth(&self, i: usize) -> String {
        format!("sgv{}{}", self.spec.id, i)
    }

    /// Runs `ip ARGS` in the host namespace.
    fn host_ip(&self, args: &[&str]) -> Result<(), (String, String)> {
        let mut v = vec!["ip"];
        if let Some(h) = &self.spec.host_ns {
            v.extend(["-n", h.as_str()]);
        }
        v.extend_from_slice(args);
        sh(&v)
    }

    /// The task's `/etc/hosts`: loopback, then its first address with the host name it
    /// sees (the node's: tasks share its UTS namespace) and its task name.
    fn hosts_file(&self) -> String {
        let mut h =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let mut names: Vec<&str> = vec![node.trim()];
        if let Some((_, n)) = self.spec.env.iter().find(|(k, _)| k == "HOSTNAME") {
            names.push(n);
        }
        names.retain(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_graphic()));
        if let (Some(a), false) = (self.spec.attachments.first(), names.is_empty()) {
            h.push_str(&format!("{}\t{}\n", a.ip, names.join(" ")));
        }
        h
    }

    fn resolv_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.ns)
    }

    /// Takes over a task a previous daemon started (after a restart): the process with
    /// this pid and start time. Nothing is changed; the task is watched through `/proc`.
    /// `process` is `None` for an endpoint without a command.
    pub fn adopt(spec: TaskSpec, process: Option<(u32, u64)>) -> Task {
        let ns = Self::namespace_of(&spec.id);
        Task {
            spec,
            ns,
            child: None,
            adopted: process,
            cleaned: false,
        }
    }

    /// Leaves the task running when this handle goes (the daemon stops but its tasks do
    /// not, as with Docker's live-restore). Returns the process id and start time to adopt
    /// it by later.
    pub fn detach(mut self) -> Option<(u32, u64)> {
        self.cleaned = true;
        let pid = self.pid()?;
        // Dropping the `Child` neither kills nor waits for it: the next daemon adopts the
        // process, init reaps it.
        process_start_time(pid).map(|(s, _)| (pid, s))
    }

    /// The spec it was started with.
    pub fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    /// Creates the namespace and attachments and starts the command (none for an empty
    /// command: an endpoint whose processes are started with `exec`).
    pub fn start(spec: TaskSpec) -> Result<Task, TaskError> {
        if spec.id.is_empty()
            || spec.id.len() > 8
            || !spec.id.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(TaskError::BadId(spec.id));
        }
        if spec.command.first().is_some_and(|c| c.is_empty()) {
            return Err(TaskError::NoCommand);
        }
        let ns = Self::namespace_of(&spec.id);
        let mut t = Task {
            spec,
            ns,
            child: None,
            adopted: None,
            cleaned: false,
        };
        match t.setup() {
            Ok(()) => Ok(t),
            Err((step, detail)) => {
                t.cleanup();
                Err(TaskError::Setup { step, detail })
            }
        }
    }

    fn setup(&mut self) -> Result<(), (String, String)> {
        let ns = self.ns.clone();
        sh(&["ip", "netns", "add", &ns])?;
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        for (i, a) in self.spec.attachments.clone().iter().enumerate() {
            let (hv, inner) = (self.host_veth(i), format!("eth{i}"));
            let mtu = a.mtu.to_string();
            self.host_ip(&[
                "link", "add", &hv, "mtu", &mtu, "type", "veth", "peer", "name", &inner, "netns",
                &ns,
            ])?;
            self.host_ip(&["link", "set", &hv, "master", &a.bridge])?;
            if a.isolated {
                self.host_ip(&["link", "set", &hv, "type", "bridge_slave", "isolated", "on"])?;
            }
            self.host_ip(&["link", "set", &hv, "up"])?;
            sh(&[
                "ip",
                "-n",
                &ns,
                "link",
                "set",
                &inner,
                "address",
                &a.mac.to_string(),
                "mtu",
                &mtu,
            ])?;
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/{}", a.ip, a.prefix),
                "dev",
                &inner,
            ])?;
            sh(&["ip", "-n", &ns, "link", "set", &inner, "up"])?;
            if a.isolated {
                // The data plane sees these frames through a TAP and forwards them as they
                // are: the checksums must be complete, not left to an offload.
                let _ = Command::new("ip")
                    .args(["netns", "exec", &ns, "ethtool", "-K", &inner, "tx", "off"])
                    .output();
            }
        }
        for r in self.spec.routes.clone() {
            let mut v = vec!["ip", "-n", ns.as_str()];
            v.extend(r.iter().map(String::as_str));
            sh(&v)?;
        }
        let dir = self.resolv_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| (format!("creating {}", dir.display()), e.to_string()))?;
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {}\noptions ndots:0\n", self.spec.nameserver),
        )
        .map_err(|e| ("writing resolv.conf".to_string(), e.to_string()))?;
        // Its own /etc/hosts, as Docker writes one for each container: its host name
        // resolves to its address without a DNS query (a server calling `getfqdn()` at
        // start would otherwise wait on the resolver).
        std::fs::write(dir.join("hosts"), self.hosts_file())
            .map_err(|e| ("writing hosts".to_string(), e.to_string()))?;
        let (out, err) = match &self.spec.log {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| (format!("opening {}", p.display()), e.to_string()))?;
                let f2 = f
                    .try_clone()
                    .map_err(|e| ("log file".to_string(), e.to_string()))?;
                (Stdio::from(f), Stdio::from(f2))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        if self.spec.command.is_empty() {
            return Ok(());
        }
        close_on_exec_all();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .args(&self.spec.command)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(d) = &self.spec.workdir {
            std::fs::create_dir_all(d)
                .map_err(|e| (format!("creating {}", d.display()), e.to_string()))?;
            cmd.current_dir(d);
        }
        // Its own process group: a signal to the daemon's terminal does not reach tasks.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .map_err(|e| (format!("starting {:?}", self.spec.command), e.to_string()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The task's namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The process id of the command.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .or(self.adopted.map(|(p, _)| p))
    }

    /// Running or exited (with the exit code; `None` when unknown or killed by a signal).
    /// An endpoint without a command counts as running until it is stopped.
    pub fn state(&mut self) -> TaskState {
        if let Some((pid, start)) = self.adopted {
            return match process_start_time(pid) {
                Some((s, true)) if s == start => TaskState::Running,
                _ => TaskState::Exited(None),
            };
        }
        if self.child.is_none() && self.spec.command.is_empty() && !self.cleaned {
            return TaskState::Running;
        }
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => TaskState::Running,
            Some(Ok(Some(s))) => TaskState::Exited(s.code()),
            _ => TaskState::Exited(None),
        }
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILL; removes everything the task made.
    pub fn stop(mut self, grace: Duration) -> TaskState {
        let st = self.terminate(grace);
        self.cleanup();
        st
    }

    fn terminate(&mut self, grace: Duration) -> TaskState {
        if let Some((pid, _)) = self.adopted {
            if self.state() == TaskState::Running {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
                let end = Instant::now() + grace;
                while Instant::now() < end && self.state() == TaskState::Running {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        if let Some(c) = self.child.as_mut() {
            if let Ok(None) = c.try_wait() {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
                let end = Instant::now() + grace;
                while Instant::now() < end {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.state()
    }

    fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        // Any process still inside the namespace goes with it.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        for i in 0..self.spec.attachments.len() {
            let _ = self.host_ip(&["link", "del", &self.host_veth(i)]);
        }
        let _ = sh(&["ip", "netns", "del", &self.ns]);
        let _ = std::fs::remove_dir_all(self.resolv_dir());
        self.cleaned = true;
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if !self.cleaned {
            self.terminate(Duration::from_millis(500));
            self.cleanup();
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_task_resolves_its_own_host_name_from_its_hosts_file() {
        let ip = Ipv4Addr::new(10, 0, 1, 7);
        let t = Task::adopt(
            TaskSpec {
                id: "abc".into(),
                command: vec![],
                attachments: vec![Attachment {
                    bridge: "sgbr4097".into(),
                    ip,
                    prefix: 24,
                    mac: EthernetAddress::from_ipv4_docker(ip),
                    mtu: 1450,
                    isolated: true,
                }],
                nameserver: Ipv4Addr::new(127, 0, 0, 11),
                host_ns: None,
                log: None,
                env: vec![("HOSTNAME".into(), "web.1.abc".into())],
                workdir: None,
                routes: vec![],
            },
            None,
        );
        let h = t.hosts_file();
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"), "{h}");
        let last = h.lines().last().unwrap();
        assert!(last.starts_with("10.0.1.7\t"), "{h}");
        assert!(last.ends_with(" web.1.abc"), "{h}");
        let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert!(last.contains(node.trim()), "{h}");
    }

    use super::*;

    fn root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    }

    fn exists(ns: &str) -> bool {
        std::path::Path::new("/run/netns").join(ns).exists()
    }

    fn att(bridge: &str, last: u8) -> Attachment {
        let ip = Ipv4Addr::new(10, 9, 0, last);
        Attachment {
            bridge: bridge.into(),
            ip,
            prefix: 24,
            mac: EthernetAddress::from_ipv4_docker(ip),
            mtu: 1450,
            isolated: false,
        }
    }

    fn spec(id: &str, host: &str, cmd: &[&str], atts: Vec<Attachment>) -> TaskSpec {
        TaskSpec {
            id: id.into(),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            attachments: atts,
            nameserver: Ipv4Addr::new(127, 0, 0, 11),
            host_ns: Some(host.into()),
            log: None,
            env: Vec::new(),
            workdir: None,
            routes: Vec::new(),
        }
    }

    #[test]
    fn bad_specs_are_refused_before_anything_is_made() {
        let s = spec("", "h", &["sleep", "1"], vec![]);
        assert!(matches!(Task::start(s), Err(TaskError::BadId(_))));
        let s = spec("has-dash", "h", &["sleep", "1"], vec![]);
        assert!(matches!(Task::start(s), Err(TaskError::BadId(_))));
        let s = spec("ok1", "h", &[""], vec![]);
        assert!(matches!(Task::start(s), Err(TaskError::NoCommand)));
    }

    /// Needs root: two tasks on one bridge reach each other, see the embedded DNS in their
    /// resolv.conf, exits are observed, and stopping removes everything.
    #[test]
    fn tasks_in_namespaces() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let id = std::process::id() % 10000;
        let host = format!("sgth{id}");
        let _ = sh(&["ip", "netns", "del", &host]);
        sh(&["ip", "netns", "add", &host]).unwrap();
        sh(&["ip", "-n", &host, "link", "add", "br-t", "type", "bridge"]).unwrap();
        sh(&["ip", "-n", &host, "link", "set", "br-t", "up"]).unwrap();

        let a = Task::start(spec(
            &format!("a{id}"),
            &host,
            &["sleep", "30"],
            vec![att("br-t", 2)],
        ))
        .unwrap();
        let mut b = Task::start(spec(
            &format!("b{id}"),
            &host,
            &["sleep", "30"],
            vec![att("br-t", 3)],
        ))
        .unwrap();
        assert_eq!(b.state(), TaskState::Running);
        let ping = Command::new("ip")
            .args([
                "netns",
                "exec",
                a.namespace(),
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                "10.9.0.3",
            ])
            .output()
            .unwrap();
        assert!(
            ping.status.success(),
            "{}",
            String::from_utf8_lossy(&ping.stdout)
        );
        let resolv = Command::new("ip")
            .args(["netns", "exec", a.namespace(), "cat", "/etc/resolv.conf"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&resolv.stdout).contains("nameserver 127.0.0.11"));
        let link = Command::new("ip")
            .args(["-n", a.namespace(), "-o", "link", "show", "eth0"])
            .output()
            .unwrap();
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(
            link.contains("mtu 1450") && link.contains("02:42:0a:09:00:02"),
            "{link}"
        );

        let mut c = Task::start(spec(
            &format!("c{id}"),
            &host,
            &["sh", "-c", "exit 3"],
            vec![att("br-t", 4)],
        ))
        .unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        while c.state() == TaskState::Running && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(c.state(), TaskState::Exited(Some(3)));

        // A failure half-way (no such bridge) leaves nothing behind.
        let bad = Task::start(spec(
            &format!("d{id}"),
            &host,
            &["sleep", "1"],
            vec![att("no-such-br", 5)],
        ));
        assert!(matches!(bad, Err(TaskError::Setup { .. })), "{bad:?}");
        assert!(!exists(&Task::namespace_of(&format!("d{id}"))));

        let (na, nb, nc) = (
            a.namespace().to_owned(),
            b.namespace().to_owned(),
            c.namespace().to_owned(),
        );
        assert_eq!(b.stop(Duration::from_secs(2)), TaskState::Exited(None));
        drop(a);
        drop(c);
        for ns in [na, nb, nc] {
            assert!(!exists(&ns), "{ns} left behind");
        }
        let links = Command::new("ip")
            .args(["-n", &host, "-o", "link"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&links.stdout).contains("sgv"),
            "veths left behind"
        );
        sh(&["ip", "netns", "del", &host]).unwrap();
    }
}

mod mac_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use swarmgate_dataplane::wire::EthernetAddress;

    pub fn serialize<S: Serializer>(m: &EthernetAddress, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&m.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EthernetAddress, D::Error> {
        let t = String::deserialize(d)?;
        t.parse()
            .map_err(|_| serde::de::Error::custom(format!("bad MAC {t:?}")))
    }
}
