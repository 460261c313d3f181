//! The cluster's state as the daemon persists it, and the views computed from it: the data
//! plane's [`NodeState`], the embedded DNS's [`DnsView`], and docker-shaped `inspect`
//! documents. Pure data and functions; the daemon owns the side effects.
//!
//! Every manager holds the same `Cluster`, replicated with Raft ([`crate::raft`]); only the
//! leader changes it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use swarmgate_dataplane::wire::EthernetAddress;

use crate::dataplane::{Host, NetState, NodeState, Published, VipState};
use crate::network::Networks;
use crate::publish::{Protocol, PublishMode};
use crate::service::{EndpointMode, Service, ServiceMode, Services};

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 time of `secs`.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// "5 seconds ago", docker's way.
pub fn ago(secs: u64) -> String {
    let d = now().saturating_sub(secs);
    match d {
        0 => "Less than a second ago".into(),
        1 => "1 second ago".into(),
        2..=59 => format!("{d} seconds ago"),
        60..=119 => "About a minute ago".into(),
        120..=3599 => format!("{} minutes ago", d / 60),
        _ => format!("{} hours ago", d / 3600),
    }
}

/// A random identifier of `n` characters from `[0-9a-z]`.
pub fn random_id(n: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut bytes = vec![0u8; n];
    // IDs name nodes in certificates: never all zeros because the OS's random source
    // failed (a condition nothing can carry on from; an API call's panic is caught).
    crate::ca::random_bytes(&mut bytes).expect("the system's random source failed");
    bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

/// The swarm as every manager knows it (SwarmKit's `Cluster` object): its identity, join
/// tokens, root CA and settings. Who this node is in it is [`crate::local::Membership`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmInfo {
    /// Cluster id.
    pub id: String,
    /// Join token for workers.
    pub worker_token: String,
    /// Join token for managers.
    pub manager_token: String,
    /// When.
    pub created: u64,
    /// The cluster's root certificate, PEM.
    #[serde(default)]
    pub root_ca_cert: String,
    /// The root's key, PEM.
    #[serde(default)]
    pub root_ca_key: Option<String>,
    /// Node certificates' validity in seconds (`--cert-expiry`; 90 days).
    #[serde(default = "default_cert_expiry")]
    pub cert_expiry_secs: u64,
    /// The swarm's VXLAN UDP port (`--data-path-port`, 4789 by default).
    #[serde(default = "default_data_path_port")]
    pub data_path_port: u16,
    /// How often nodes send heartbeats, in milliseconds (`--dispatcher-heartbeat`).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_period_ms: u64,
    /// Raft log entries between snapshots (`--snapshot-interval`; SwarmKit's
    /// `SnapshotInterval`, 10000). Every manager reads it from the replicated state.
    #[serde(default = "default_snapshot_interval")]
    pub snapshot_interval: u64,
    /// The gossip keys (SwarmKit's `networking:gossip` keys), created and rotated by the
    /// leader, handed to every node in its assignment.
    #[serde(default)]
    pub gossip: crate::gossip::Keyring,
    /// The datapath keys of encrypted overlays (SwarmKit's `networking:ipsec` keys),
    /// created and rotated by the leader.
    #[serde(default)]
    pub datapath: crate::datapath_keys::DatapathKeys,
}

fn default_snapshot_interval() -> u64 {
    crate::raft::DEFAULT_SNAPSHOT_INTERVAL
}

impl SwarmInfo {
    /// The heartbeat period nodes are asked for.
    pub fn heartbeat_period(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.heartbeat_period_ms)
    }
}

fn default_heartbeat_ms() -> u64 {
    crate::agent::HEARTBEAT_PERIOD.as_millis() as u64
}

fn default_data_path_port() -> u16 {
    DEFAULT_DATA_PATH_PORT
}

/// Docker's VXLAN port.
pub const DEFAULT_DATA_PATH_PORT: u16 = 4789;

fn default_cert_expiry() -> u64 {
    crate::ca::DEFAULT_NODE_EXPIRY.as_secs()
}

/// A node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub id: String,
    /// Host name.
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// `Leader`, `Reachable` or empty for workers.
    pub manager_status: String,
    /// `active`, `pause` or `drain`.
    pub availability: String,
    /// Its address.
    pub addr: Ipv4Addr,
    /// Node labels (`node update --label-add`), for placement constraints.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its data-path address (VXLAN), when not `addr` (`--data-path-addr`).
    #[serde(default)]
    pub datapath_addr: Option<Ipv4Addr>,
}

impl NodeRecord {
    /// Where other nodes send its overlay traffic (its VTEP).
    pub fn vtep(&self) -> Ipv4Addr {
        self.datapath_addr.unwrap_or(self.addr)
    }
}

/// Per-object bookkeeping docker shows: id and times.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// 25-character id.
    pub id: String,
    /// Creation time.
    pub created: u64,
    /// Last update.
    pub updated: u64,
    /// Spec version, raised by every update (tasks of older versions are replaced).
    pub version: u64,
}

impl Meta {
    /// A new object's bookkeeping.
    pub fn new() -> Meta {
        let t = now();
        Meta {
            id: random_id(25),
            created: t,
            updated: t,
            version: 1,
        }
    }
}

impl Default for Meta {
    fn default() -> Self {
        Meta::new()
    }
}

/// What a task should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Desired {
    /// Running.
    Running,
    /// Stopped (scaled down, updated, removed).
    Shutdown,
}

/// What a task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Running.
    Running,
    /// Exited with code 0.
    Complete,
    /// Exited otherwise.
    Failed,
    /// Stopped by the daemon.
    Shutdown,
    /// Could not be started.
    Rejected,
    /// Waiting for a suitable node (its error says why, as SwarmKit's scheduler does).
    Pending,
    /// Placed on another node, addresses allocated; that node has not said it runs.
    Assigned,
}

impl Status {
    /// docker's word for it.
    pub fn word(self) -> &'static str {
        match self {
            Status::Running => "Running",
            Status::Complete => "Complete",
            Status::Failed => "Failed",
            Status::Shutdown => "Shutdown",
            Status::Rejected => "Rejected",
            Status::Pending => "Pending",
            Status::Assigned => "Assigned",
        }
    }
}

/// A task of a service, or a standalone endpoint (`run`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Short id (names the namespace).
    pub id: String,
    /// The service, or `None` for a standalone endpoint.
    pub service: Option<String>,
    /// Slot (1-based) for replicated services.
    pub slot: u32,
    /// The service spec version it runs.
    pub version: u64,
    /// Container name (standalone endpoints).
    pub name: Option<String>,
    /// Node it is assigned to.
    pub node: String,
    /// What it should do.
    pub desired: Desired,
    /// What it does.
    pub status: Status,
    /// Exit code when it ended.
    pub exit_code: Option<i32>,
    /// Why it failed or was rejected.
    pub error: Option<String>,
    /// When it was created.
    pub created: u64,
    /// When its status last changed.
    pub changed: u64,
    /// Its address on each network, in attachment order.
    pub addresses: Vec<(String, Ipv4Addr)>,
    /// `run -d` (the daemon runs the command) or a foreground `run`.
    pub detached: bool,
    /// The command.
    pub command: Vec<String>,
}

impl TaskRecord {
    /// A new task of `service` for `slot` at spec `version`, not placed and not started
    /// (status Rejected until it runs). A standalone container overrides `service` (None),
    /// `name`, `node` and `detached`.
    pub fn new(
        id: String,
        service: &str,
        slot: u32,
        version: u64,
        command: &[String],
    ) -> TaskRecord {
        TaskRecord {
            id,
            service: Some(service.to_owned()),
            slot,
            version,
            name: None,
            node: String::new(),
            desired: Desired::Running,
            status: Status::Rejected,
            exit_code: None,
            error: None,
            created: now(),
            changed: now(),
            addresses: Vec::new(),
            detached: true,
            command: command.to_vec(),
        }
    }

    /// docker's task name: `service.slot.id` (`service.node.id` for a global service), or
    /// the container name.
    pub fn full_name(&self) -> String {
        match (&self.service, &self.name) {
            (Some(_), _) => format!("{}.{}", self.slot_name(), self.id),
            (None, Some(n)) => n.clone(),
            (None, None) => self.id.clone(),
        }
    }

    /// `service.slot`, or `service.node` for a global service's task (slot 0), as
    /// SwarmKit names them.
    pub fn slot_name(&self) -> String {
        let s = self.service.as_deref().unwrap_or("");
        match self.slot {
            0 => format!("{s}.{}", self.node),
            n => format!("{s}.{n}"),
        }
    }

    /// True while it runs (holds addresses and, on its node, a namespace).
    pub fn live(&self) -> bool {
        self.status == Status::Running
    }

    /// True while it holds its addresses: placed or running, on any node.
    pub fn active(&self) -> bool {
        matches!(self.status, Status::Running | Status::Assigned)
    }

    /// True while it runs and should: it gets traffic (VIP backends, DNS answers, remote
    /// endpoints on other nodes). A task told to stop on another node stops getting
    /// traffic at once, before that node reports it stopped.
    pub fn serving(&self) -> bool {
        self.live() && self.desired == Desired::Running
    }
}

/// The gateway bridge (docker_gwbridge's role): every endpoint gets an address on it and
/// its default route through it.
pub const GWBRIDGE: &str = "sg_gwbridge";
/// Its subnet base (172.18.0.0/16, as docker_gwbridge usually gets).
pub const GWBRIDGE_NET: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 0);
/// Its prefix.
pub const GWBRIDGE_PREFIX: u8 = 16;
/// The node's address on it.
pub const GWBRIDGE_GW: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);

/// The cluster's state: what the cluster wants and what it knows of its nodes and tasks,
/// the same on every manager. What one node has for itself is [`crate::local::NodeLocal`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cluster {
    /// Set by `swarm init`, on managers. A worker has none: its `Cluster` holds only
    /// the records of its own tasks (SwarmKit's agent keeps those in its own store).
    pub swarm: Option<SwarmInfo>,
    /// Nodes.
    pub nodes: Vec<NodeRecord>,
    /// Networks (and IPAM).
    pub networks: Networks,
    /// Network ids and times.
    pub network_meta: BTreeMap<String, Meta>,
    /// Services.
    pub services: Services,
    /// Service ids, times and versions.
    pub service_meta: BTreeMap<String, Meta>,
    /// Tasks and standalone endpoints by id, history included.
    pub tasks: BTreeMap<String, TaskRecord>,
}

/// The bridge of an overlay network on this node.
pub fn bridge_name(vni: u32) -> String {
    format!("sgbr{vni}")
}

/// Per network: name → addresses, for the embedded DNS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsView {
    /// network → (lower-case name → addresses).
    pub names: BTreeMap<String, BTreeMap<String, Vec<Ipv4Addr>>>,
}

impl DnsView {
    /// Addresses of `name` as seen from an endpoint on `networks`.
    pub fn resolve(&self, networks: &[String], name: &str) -> Option<Vec<Ipv4Addr>> {
        let n = name.trim_end_matches('.').to_ascii_lowercase();
        let mut out: Vec<Ipv4Addr> = Vec::new();
        let mut found = false;
        for net in networks {
            if let Some(a) = self.names.get(net).and_then(|m| m.get(&n)) {
                found = true;
                for ip in a {
                    if !out.contains(ip) {
                        out.push(*ip);
                    }
                }
            }
        }
        found.then_some(out)
    }
}

impl Cluster {
    /// Tasks of `service` that run and should, on any node ([`TaskRecord::serving`]).
    pub fn running_tasks<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a TaskRecord> {
        self.tasks
            .values()
            .filter(move |t| t.service.as_deref() == Some(service) && t.serving())
    }

    /// Gives back the addresses task `id` holds on its networks.
    pub fn release_addresses(&mut self, id: &str) {
        let Some(t) = self.tasks.get(id).cloned() else {
            return;
        };
        for (net, ip) in &t.addresses {
            if let Some(n) = self.networks.get_mut(net) {
                let _ = n.addressing.release(*ip);
            }
        }
    }

    /// What node `node`'s data plane must do, as far as the leader knows it: the networks
    /// it has (a manager all of them; a worker those its tasks are on, Docker's lazy
    /// creation), its tasks there as local endpoints, the services' VIPs, and the ports
    /// published here (host mode: over this node's tasks; ingress mode: filled from the
    /// gossiped tables, over every node's). The other nodes' endpoints and the VIPs' backends come from the gossiped
    /// tables ([`crate::gossip::program`]).
    pub fn node_state_for(&self, node: &str) -> NodeState {
        let mut networks = Vec::new();
        let host = |ip: Ipv4Addr| Host {
            ip,
            mac: EthernetAddress::from_ipv4_docker(ip),
        };
        let everything = self
            .nodes
            .iter()
            .find(|n| n.id == node)
            .is_none_or(|n| n.role == "manager");
        let backends = |svc: &Service, net: &str| -> Vec<Host> {
            let mut v: Vec<Host> = self
                .running_tasks(&svc.name)
                .filter(|t| t.node == node)
                .filter_map(|t| t.addresses.iter().find(|(n, _)| n == net))
                .map(|(_, ip)| host(*ip))
                .collect();
            v.sort();
            v
        };
        let on = |t: &'_ TaskRecord, net: &str| -> Option<Ipv4Addr> {
            t.addresses
                .iter()
                .find(|(m, _)| m == net)
                .map(|(_, ip)| *ip)
        };
        for n in self.networks.iter() {
            let mut hosts: Vec<Host> = self
                .tasks
                .values()
                .filter(|t| t.node == node && t.active())
                .filter_map(|t| on(t, &n.name))
                .map(host)
                .collect();
            // Every node has the ingress network (Docker's ingress sandbox): the routing mesh
            // answers on every node, with or without a task there.
            if hosts.is_empty() && !everything && !n.ingress {
                continue;
            }
            hosts.sort();
            let mut vips = Vec::new();
            for s in self.services.iter() {
                for (net, vip) in &s.networks {
                    if *net != n.name || n.ingress {
                        continue;
                    }
                    if let Some(vip) = vip {
                        for protocol in [Protocol::Tcp, Protocol::Udp] {
                            vips.push(VipState {
                                ip: *vip,
                                protocol,
                                port: 0,
                                target: 0,
                                backends: Vec::new(),
                            });
                        }
                    }
                }
            }
            networks.push(NetState {
                name: n.name.clone(),
                vni: n.vni.get(),
                bridge: bridge_name(n.vni.get()),
                mtu: n.mtu,
                encrypted: n.encrypted,
                gateway: n.addressing.gateway,
                hosts,
                remote: Vec::new(),
                vips,
            });
        }
        // Ingress ports are reserved on every node; a host-mode port is programmed only
        // where a task of its service runs and only if no other publication holds the
        // same port here (Docker would fail that task's port binding), so the data plane
        // is never handed two services for one port.
        let mut published: Vec<Published> = Vec::new();
        let ingress = self
            .networks
            .iter()
            .find(|n| n.ingress)
            .filter(|n| networks.iter().any(|x| x.name == n.name));
        for mode in [PublishMode::Ingress, PublishMode::Host] {
            for s in self.services.iter() {
                for p in s.ports.iter().filter(|p| p.mode == mode) {
                    let Some(port) = p.published else { continue };
                    if published
                        .iter()
                        .any(|x| x.port == port && x.protocol == p.protocol)
                    {
                        continue;
                    }
                    let net = match mode {
                        PublishMode::Ingress => ingress,
                        // Straight to this node's tasks, through the first network they
                        // have.
                        PublishMode::Host => self
                            .running_tasks(&s.name)
                            .find(|t| t.node == node)
                            .and_then(|t| t.addresses.first())
                            .and_then(|(n, _)| self.networks.get(n)),
                    };
                    if let Some(n) = net {
                        published.push(Published {
                            service: s.name.clone(),
                            ingress: mode == PublishMode::Ingress,
                            vni: n.vni.get(),
                            protocol: p.protocol,
                            port,
                            target: p.target,
                            backends: backends(s, &n.name),
                        });
                    }
                }
            }
        }
        let keys = match &self.swarm {
            Some(s) if networks.iter().any(|n| n.encrypted) => s.datapath.for_node(),
            _ => Vec::new(),
        };
        NodeState {
            networks,
            published,
            vxlan_port: self.swarm.as_ref().map_or(0, |s| s.data_path_port),
            keys,
        }
    }

    /// The names the embedded DNS answers that only the leader knows, per network: each
    /// service's name (its VIP; no address yet in dnsrr mode) and `tasks.<service>`, so a
    /// service without running tasks gets an empty answer, not a forward. The tasks' and
    /// containers' names and addresses come from the gossiped tables
    /// ([`crate::gossip::program`]).
    pub fn dns_view(&self) -> DnsView {
        let mut v = DnsView::default();
        for s in self.services.iter() {
            // No service discovery on the ingress network (as in Docker).
            for (net, vip) in s
                .networks
                .iter()
                .filter(|(n, _)| !self.networks.get(n).is_some_and(|n| n.ingress))
            {
                let names = v.names.entry(net.clone()).or_default();
                let e = names.entry(s.name.to_ascii_lowercase()).or_default();
                if let (EndpointMode::Vip, Some(vip)) = (s.endpoint_mode, vip) {
                    if !e.contains(vip) {
                        e.push(*vip);
                    }
                }
                names
                    .entry(format!("tasks.{}", s.name).to_ascii_lowercase())
                    .or_default();
            }
        }
        v
    }

    /// `network inspect`'s document for network `name`, as node `me` (data-path address
    /// `node_addr`) shows it.
    pub fn network_json(&self, name: &str, me: &str, node_addr: Ipv4Addr) -> Option<Value> {
        let n = self.networks.get(name)?;
        let meta = self.network_meta.get(name).cloned().unwrap_or_default();
        let mut containers = serde_json::Map::new();
        // Docker lists the endpoints on this node.
        for t in self.tasks.values().filter(|t| t.live() && t.node == me) {
            if let Some((_, ip)) = t.addresses.iter().find(|(m, _)| *m == n.name) {
                containers.insert(
                    t.id.clone(),
                    json!({
                        "Name": t.full_name(),
                        "EndpointID": format!("ep-{}-{}", t.id, n.vni.get()),
                        "MacAddress": EthernetAddress::from_ipv4_docker(*ip).to_string(),
                        "IPv4Address": format!("{ip}/{}", n.addressing.subnet.prefix()),
                        "IPv6Address": "",
                    }),
                );
            }
        }
        let mut services = serde_json::Map::new();
        for s in self.services.iter() {
            if let Some((_, vip)) = s.networks.iter().find(|(m, _)| *m == n.name) {
                let tasks: Vec<Value> = self
                    .running_tasks(&s.name)
                    .filter_map(|t| {
                        let ip = t.addresses.iter().find(|(m, _)| *m == n.name)?.1;
                        Some(json!({
                            "Name": t.full_name(),
                            "EndpointID": format!("ep-{}-{}", t.id, n.vni.get()),
                            "EndpointIP": ip.to_string(),
                            "Info": {"Host IP": self
                                .nodes
                                .iter()
                                .find(|nd| nd.id == t.node)
                                .map_or(node_addr, |nd| nd.vtep())
                                .to_string()},
                        }))
                    })
                    .collect();
                let ports: Vec<String> = s
                    .ports
                    .iter()
                    .filter_map(|p| {
                        Some(format!("Target: {}, Publish: {}", p.target, p.published?))
                    })
                    .collect();
                services.insert(
                    s.name.clone(),
                    json!({
                        "VIP": vip.map(|v| v.to_string()).unwrap_or_default(),
                        "Ports": ports,
                        "LocalLBIndex": 0,
                        "Tasks": tasks,
                    }),
                );
            }
        }
        let mut options = serde_json::Map::new();
        options.insert(
            "com.docker.network.driver.overlay.vxlanid_list".into(),
            json!(n.vni.get().to_string()),
        );
        for (k, v) in &n.options {
            options.insert(k.clone(), json!(v));
        }
        // The nodes that have the network: this one (a manager has every network) and
        // those with a task on it, by their data-path address.
        let peers: Vec<Value> = self
            .nodes
            .iter()
            .filter(|nd| {
                nd.id == me
                    || self.tasks.values().any(|t| {
                        t.node == nd.id
                            && t.active()
                            && t.addresses.iter().any(|(m, _)| *m == n.name)
                    })
            })
            .map(|nd| json!({"Name": nd.hostname, "IP": nd.vtep().to_string()}))
            .collect();
        Some(json!({
            "Name": n.name,
            "Id": meta.id,
            "Created": rfc3339(meta.created),
            "Scope": "swarm",
            "Driver": "overlay",
            "EnableIPv6": false,
            "IPAM": {
                "Driver": "default",
                "Options": null,
                "Config": [{
                    "Subnet": n.addressing.subnet.to_string(),
                    "Gateway": n.addressing.gateway.to_string(),
                }],
            },
            "Internal": false,
            "Attachable": n.attachable,
            "Ingress": n.ingress,
            "ConfigOnly": false,
            "Containers": containers,
            "Options": options,
            "Labels": {},
            "Peers": peers,
            "Services": services,
            "MTU": n.mtu,
        }))
    }

    /// `service inspect`'s document.
    pub fn service_json(&self, name: &str) -> Option<Value> {
        let s = self.services.get(name)?;
        let meta = self.service_meta.get(name).cloned().unwrap_or_default();
        let mode = match s.mode {
            ServiceMode::Replicated(n) => json!({"Replicated": {"Replicas": n}}),
            ServiceMode::Global => json!({"Global": {}}),
        };
        let ports: Vec<Value> = s
            .ports
            .iter()
            .map(|p| {
                json!({
                    "Protocol": p.protocol.to_string(),
                    "TargetPort": p.target,
                    "PublishedPort": p.published,
                    "PublishMode": p.mode.to_string(),
                })
            })
            .collect();
        let nets: Vec<Value> = s
            .networks
            .iter()
            .filter(|(n, _)| !self.networks.get(n).is_some_and(|x| x.ingress))
            .map(|(n, _)| {
                json!({"Target": self.network_meta.get(n).map(|m| m.id.clone()).unwrap_or_default(), "Name": n})
            })
            .collect();
        let vips: Vec<Value> = s
            .networks
            .iter()
            .filter_map(|(n, vip)| {
                let net = self.networks.get(n)?;
                Some(json!({
                    "NetworkID": self.network_meta.get(n).map(|m| m.id.clone()).unwrap_or_default(),
                    "Addr": format!("{}/{}", (*vip)?, net.addressing.subnet.prefix()),
                }))
            })
            .collect();
        let em = match s.endpoint_mode {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        };
        Some(json!({
            "ID": meta.id,
            "Version": {"Index": meta.version},
            "CreatedAt": rfc3339(meta.created),
            "UpdatedAt": rfc3339(meta.updated),
            "Spec": {
                "Name": s.name,
                "TaskTemplate": {
                    "ContainerSpec": {"Command": s.command},
                    "Networks": nets,
                    "Placement": {
                        "Constraints": s.constraints,
                        "MaxReplicas": s.max_replicas_per_node,
                    },
                },
                "Mode": mode,
                "EndpointSpec": {"Mode": em, "Ports": ports},
            },
            "Endpoint": {
                "Spec": {"Mode": em, "Ports": ports},
                "Ports": ports,
                "VirtualIPs": vips,
            },
        }))
    }
}

/// How `service ls` shows a service's ports: `*:8080->80/tcp`.
pub fn ports_summary(s: &Service) -> Vec<String> {
    s.ports
        .iter()
        .filter_map(|p| {
            let pub_ = p.published?;
            Some(match p.mode {
                PublishMode::Ingress => format!("*:{pub_}->{}/{}", p.target, p.protocol),
                PublishMode::Host => format!("{pub_}->{}/{} (host)", p.target, p.protocol),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::CreateNetwork;
    use crate::publish;
    use crate::service::CreateService;

    fn task(id: &str, service: &str, net: &str, ip: Ipv4Addr) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            service: Some(service.into()),
            slot: 1,
            version: 1,
            name: None,
            node: "n".into(),
            desired: Desired::Running,
            status: Status::Running,
            exit_code: None,
            error: None,
            created: 0,
            changed: 0,
            addresses: vec![(net.into(), ip)],
            detached: true,
            command: vec!["x".into()],
        }
    }

    #[test]
    fn node_state_never_publishes_one_port_twice() {
        let mut c = Cluster::default();
        for (name, ingress) in [("ingress", true), ("my-overlay", false)] {
            c.networks
                .create(&CreateNetwork {
                    name: name.into(),
                    driver: "overlay".into(),
                    ingress,
                    ..Default::default()
                })
                .unwrap();
        }
        let svc = |name: &str, publish: &str, em: &str| CreateService {
            name: name.into(),
            networks: vec!["my-overlay".into()],
            ports: publish::parse(publish).unwrap(),
            endpoint_mode: Some(em.into()),
            command: vec!["x".into()],
            ..Default::default()
        };
        // swarmkit lets a host-mode port share a number with an ingress port cluster-wide.
        c.services
            .create(&svc("web", "8080:80", "vip"), &mut c.networks)
            .unwrap();
        c.services
            .create(
                &svc("h", "published=8080,target=80,mode=host", "dnsrr"),
                &mut c.networks,
            )
            .unwrap();
        c.services
            .create(
                &svc("h2", "published=9090,target=80,mode=host", "dnsrr"),
                &mut c.networks,
            )
            .unwrap();
        let ip = |d| Ipv4Addr::new(10, 0, 1, d);
        c.tasks.insert(
            "a".into(),
            task("a", "web", "ingress", Ipv4Addr::new(10, 0, 0, 5)),
        );
        c.tasks
            .insert("b".into(), task("b", "h", "my-overlay", ip(7)));
        c.tasks
            .insert("c".into(), task("c", "h2", "my-overlay", ip(8)));
        let st = c.node_state_for("n");
        let ports: Vec<u16> = st.published.iter().map(|p| p.port).collect();
        assert_eq!(ports, vec![8080, 9090]);
        assert_eq!(st.published[0].backends[0].ip, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(st.published[1].backends[0].ip, ip(8));
    }
}
