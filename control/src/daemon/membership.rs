//! Swarm membership on the daemon's state: `swarm init`/`join`/`join-token`/`leave`,
//! `node ls`, and the manager's side of the CA and dispatcher calls on 2377
//! ([`crate::remote`]). The network side of joining is [`crate::agent`]'s.

use std::net::Ipv4Addr;
use std::time::{Instant, SystemTime};

use tonic::Status;

use super::{bad, capital, hostname, ip, Daemon, GWBRIDGE};
use crate::agent::{self, Description, Joined};
use crate::api;
use crate::ca::{self, NodeIdentity, Role, RootCa};
use crate::cluster::{now, random_id, Cluster, Meta, NodeRecord, SwarmInfo};
use crate::cluster_api as capi;
use crate::dispatcher::{apply_reports, assignment, parse_status, Report};
use crate::local::Membership;
use crate::network::CreateNetwork;

impl Default for Want {
    fn default() -> Want {
        Want {
            tls: None,
            listen: None,
            raft: None,
            session: None,
            me: (String::new(), Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED),
        }
    }
}

/// Docker's answer to a cluster command typed on a worker.
pub const NOT_A_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";

/// SwarmKit's answer when no leader can be found (`manager/state/raft/raft.go`,
/// `lostQuorumMessage`).
pub const LOST_QUORUM: &str = "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.";

/// The start of the refusal a manager that does not lead gives calls only the leader
/// serves; the leader's address follows (agents reconnect there).
pub const LEADER_IS_AT: &str = "this manager is not the leader; the leader is at ";

/// How often the leader adds a gossip key (SwarmKit's `keymanager` rotation interval).
pub const GOSSIP_KEY_ROTATION: u64 = 12 * 3600;
/// How long after a gossip key is handed out it becomes the primary: every node has had
/// its assignment by then.
pub const GOSSIP_KEY_GRACE: u64 = 10;

/// Labels a node may carry.
const MAX_LABELS: usize = 64;

/// Task states taken from one heartbeat.
const MAX_REPORTS: usize = 10_000;

/// Heartbeats a node may miss before it is Down (SwarmKit's grace: 3 periods).
const HEARTBEAT_GRACE: u32 = 3;

/// What this node runs for the cluster, as its state asks ([`crate::runtime`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The cluster's root and this node's certificate and key, PEM; `None` outside a swarm.
    pub tls: Option<(String, String, String)>,
    /// A manager: where its 2377 listener listens.
    pub listen: Option<String>,
    /// A manager: its Raft member (itself as the membership knows it; whether it created
    /// the swarm, so makes the first group — one that joined asks to be added; the group's
    /// epoch, raised by `--force-new-cluster`).
    pub raft: Option<(crate::raft::Peer, bool, u64)>,
    /// A node that does not lead: the agent's session with this manager.
    pub session: Option<std::net::SocketAddr>,
    /// How it describes itself in its session: host name, addresses.
    pub me: (String, Ipv4Addr, Ipv4Addr),
}

fn parse_listen(s: &str) -> Result<String, Status> {
    if s.is_empty() {
        return Ok(format!("0.0.0.0:{}", crate::remote::PORT));
    }
    crate::remote::ipv4_port(s)
        .map(|a| a.to_string())
        .ok_or_else(|| bad(format!("invalid --listen-addr {s:?}: expected IPv4[:PORT]")))
}

/// A new key and a manager certificate for it from `root` (this manager's own).
fn manager_certificate(
    root: &RootCa,
    node_id: &str,
    cluster_id: &str,
    now: SystemTime,
    expiry: std::time::Duration,
) -> Result<(String, String), Status> {
    let (key, csr) = ca::new_key_and_csr().map_err(status_of)?;
    let cert = root
        .issue(&csr, node_id, Role::Manager, cluster_id, now, expiry)
        .map_err(status_of)?;
    Ok((key, cert))
}

/// `--data-path-port` as moby's `getDataPathPort` (`daemon/cluster/listen_addr.go`) takes
/// it: 0 is 4789; otherwise 1024–49151.
fn data_path_port(p: u32) -> Result<u16, Status> {
    match p {
        0 => Ok(crate::cluster::DEFAULT_DATA_PATH_PORT),
        1024..=49151 => Ok(p as u16),
        _ => Err(bad(format!(
            "Datapath port number is not in valid range (1024-49151) : {p}"
        ))),
    }
}

fn status_of(e: ca::CaError) -> Status {
    match e {
        ca::CaError::WrongToken | ca::CaError::InvalidToken => {
            Status::invalid_argument(e.to_string())
        }
        _ => Status::internal(e.to_string()),
    }
}

impl Daemon {
    /// The swarm, on a manager; Docker's answer on a worker.
    pub(super) fn require_manager(&self) -> Result<&SwarmInfo, Status> {
        let m = self.me().ok_or_else(Self::not_swarm)?;
        if !m.is_manager() {
            return Err(Status::failed_precondition(NOT_A_MANAGER));
        }
        self.require_leader()?;
        self.cluster.swarm.as_ref().ok_or_else(Self::not_swarm)
    }

    /// Calls only the leader serves: refused with the leader's address (or, with none,
    /// SwarmKit's no-leader message) on any other manager.
    pub(crate) fn require_leader(&self) -> Result<(), Status> {
        if self.leads() {
            return Ok(());
        }
        match self.replica().and_then(|r| r.leader()) {
            Some(l) => Err(Status::unavailable(format!("{LEADER_IS_AT}{}", l.addr))),
            None => Err(Status::unavailable(LOST_QUORUM)),
        }
    }

    fn addr_or_own(&self, s: &str, what: &str) -> Result<Ipv4Addr, Status> {
        if s.is_empty() {
            return Ok(self.dp.address());
        }
        let a = s.split(':').next().unwrap_or(s);
        a.parse()
            .map_err(|_| bad(format!("invalid {what} {s:?}: expected an IPv4 address")))
    }

    /// `--advertise-addr` and `--datapath-addr` (this node's address when empty); the
    /// data-path address must be the underlay's.
    fn own_addresses(
        &self,
        advertise: &str,
        datapath: &str,
    ) -> Result<(Ipv4Addr, Ipv4Addr), Status> {
        let a = self.addr_or_own(advertise, "--advertise-addr")?;
        let d = self.addr_or_own(datapath, "--datapath-addr")?;
        self.check_datapath(d)?;
        Ok((a, d))
    }

    /// Makes `c` the cluster state and `m` this node's membership, and commits both; on
    /// failure the previous state is back, in memory and on disk.
    fn replace_cluster(&mut self, c: Cluster, m: Option<Membership>) -> Result<(), Status> {
        let old = std::mem::replace(&mut self.cluster, c);
        let old_m = std::mem::replace(&mut self.local.swarm, m);
        if let Err(e) = self.commit() {
            self.cluster = old;
            self.local.swarm = old_m;
            let _ = self.commit();
            return Err(e);
        }
        Ok(())
    }

    fn check_datapath(&self, datapath: Ipv4Addr) -> Result<(), Status> {
        let own = self.dp.address();
        if datapath != own {
            return Err(bad(format!(
                "--datapath-addr {datapath} is not this node's data-path address {own} (the underlay address in the daemon configuration)"
            )));
        }
        Ok(())
    }

    pub(super) fn swarm_init(
        &mut self,
        r: api::SwarmInitRequest,
    ) -> Result<api::SwarmInitReply, Status> {
        if r.force_new_cluster {
            return self.force_new_cluster();
        }
        if self.me().is_some() {
            return Err(Status::already_exists(
                "This node is already part of a swarm. Use \"swarmgate swarm leave --force\" to leave this swarm and join another one.",
            ));
        }
        let (advertise, datapath) = self.own_addresses(&r.advertise_addr, &r.datapath_addr)?;
        let listen = parse_listen(&r.listen_addr)?;
        let data_path_port = data_path_port(r.data_path_port)?;
        let heartbeat = match r.dispatcher_heartbeat_ms {
            0 => agent::HEARTBEAT_PERIOD,
            ms => heartbeat_period(ms)?,
        };
        let snapshot_interval = match r.snapshot_interval {
            0 => crate::raft::DEFAULT_SNAPSHOT_INTERVAL,
            n => snapshot_interval(n)?,
        };
        let mut pools = Vec::new();
        for p in &r.default_addr_pool {
            pools.push(
                p.parse::<crate::ipam::Subnet>()
                    .map_err(|e| bad(format!("invalid base pool {p}: {e}")))?,
            );
        }
        // The listener must be possible before anything is recorded.
        std::net::TcpListener::bind(&listen)
            .map_err(|e| bad(format!("failed to listen on {listen}: {e}")))?;
        Self::ensure_gwbridge().map_err(|e| Status::internal(format!("{e:#}")))?;
        let now_t = SystemTime::now();
        let root = RootCa::create(now_t).map_err(status_of)?;
        let cluster_id = random_id(25);
        let node_id = random_id(25);
        let expiry = ca::DEFAULT_NODE_EXPIRY;
        let (key, cert) = manager_certificate(&root, &node_id, &cluster_id, now_t, expiry)?;
        let mut c = self.cluster.clone();
        let me = Membership {
            cluster_id: cluster_id.clone(),
            node_id: node_id.clone(),
            role: Role::Manager.name().into(),
            advertise_addr: advertise,
            datapath_addr: datapath,
            root_ca_cert: root.cert_pem().to_owned(),
            node_cert: cert,
            node_key: key,
            listen_addr: listen,
            manager_addr: None,
            data_path_port,
            raft_epoch: 0,
        };
        c.swarm = Some(SwarmInfo {
            id: cluster_id,
            worker_token: root.new_join_token().map_err(status_of)?,
            manager_token: root.new_join_token().map_err(status_of)?,
            created: now(),
            root_ca_cert: root.cert_pem().to_owned(),
            root_ca_key: root.key_pem().map(str::to_owned),
            cert_expiry_secs: expiry.as_secs(),
            data_path_port,
            heartbeat_period_ms: heartbeat.as_millis() as u64,
            snapshot_interval,
            gossip: crate::gossip::Keyring::new(now()).map_err(Status::internal)?,
            datapath: {
                let mut k = crate::datapath_keys::DatapathKeys::default();
                k.rotate(now()).map_err(Status::internal)?;
                k
            },
        });
        c.nodes = vec![NodeRecord {
            id: node_id,
            hostname: hostname(),
            role: "manager".into(),
            manager_status: "Leader".into(),
            availability: "active".into(),
            addr: advertise,
            labels: Default::default(),
            datapath_addr: (datapath != advertise).then_some(datapath),
        }];
        c.networks.set_node_reserved(self.node_reserved());
        if !pools.is_empty() {
            let size = match r.default_addr_pool_mask_length {
                0 => 24,
                n => u8::try_from(n).unwrap_or(u8::MAX),
            };
            c.networks.set_pools(&pools, size).map_err(bad)?;
        } else if r.default_addr_pool_mask_length != 0 {
            return Err(bad(
                "--default-addr-pool-mask-length needs --default-addr-pool",
            ));
        }
        c.networks
            .create(&CreateNetwork {
                name: "ingress".into(),
                driver: "overlay".into(),
                ingress: true,
                ..Default::default()
            })
            .map_err(bad)?;
        c.network_meta.insert("ingress".into(), Meta::new());
        self.replace_cluster(c, Some(me))?;
        let s = self.cluster.swarm.as_ref().expect("set");
        Ok(api::SwarmInitReply {
            node_id: node_id_of(self),
            worker_token: s.worker_token.clone(),
            manager_token: s.manager_token.clone(),
            advertise_addr: advertise.to_string(),
        })
    }

    /// `swarm init --force-new-cluster` (SwarmKit's `ForceNewCluster`, `raft.go`): the
    /// state this manager holds becomes a new Raft group's, this manager its only member;
    /// the other managers stay listed (Unreachable) until demoted or removed.
    fn force_new_cluster(&mut self) -> Result<api::SwarmInitReply, Status> {
        let m = self.me().ok_or_else(Self::not_swarm)?;
        if !m.is_manager() {
            return Err(Status::failed_precondition(NOT_A_MANAGER));
        }
        if !self.leading {
            let state = self
                .replica()
                .map(|r| r.machine.current().state)
                .filter(|s| !s.is_null())
                .ok_or_else(|| {
                    Status::failed_precondition(
                        "this manager holds no replicated state to start a new cluster from",
                    )
                })?;
            self.cluster = serde_json::from_value(state)
                .map_err(|e| Status::internal(format!("the replicated state: {e}")))?;
        }
        self.leading = false;
        self.replicated = serde_json::Value::Null;
        // The old group's member is no longer asked anything (the node runtime stops it);
        // the new group's first leader adopts this state.
        self.raft.store(None);
        self.adopt = Some(self.cluster.clone());
        let m = self.local.swarm.as_mut().expect("checked");
        m.raft_epoch += 1;
        m.manager_addr = None;
        self.commit()?;
        tracing::warn!("starting a new Raft group from this manager's state (--force-new-cluster)");
        let s = self.cluster.swarm.as_ref().ok_or_else(Self::not_swarm)?;
        Ok(api::SwarmInitReply {
            node_id: node_id_of(self),
            worker_token: s.worker_token.clone(),
            manager_token: s.manager_token.clone(),
            advertise_addr: self
                .me()
                .map(|m| m.advertise_addr.to_string())
                .unwrap_or_default(),
        })
    }

    /// A swarm recorded before node certificates existed (a manager whose tokens were
    /// placeholders nothing accepted) gets its root CA, its certificate and SwarmKit-format
    /// tokens. Called once at start, before the state is committed.
    pub(super) fn upgrade_swarm(&mut self) -> Result<(), Status> {
        let (Some(me), Some(_)) = (self.local.swarm.as_ref(), self.cluster.swarm.as_ref()) else {
            return Ok(());
        };
        if !me.node_cert.is_empty() || !me.is_manager() {
            return Ok(());
        }
        let now_t = SystemTime::now();
        let root = RootCa::create(now_t).map_err(status_of)?;
        let (key, cert) = manager_certificate(
            &root,
            &me.node_id,
            &me.cluster_id,
            now_t,
            ca::DEFAULT_NODE_EXPIRY,
        )?;
        let (w, m) = (
            root.new_join_token().map_err(status_of)?,
            root.new_join_token().map_err(status_of)?,
        );
        let s = self.cluster.swarm.as_mut().expect("checked");
        s.root_ca_cert = root.cert_pem().to_owned();
        s.root_ca_key = root.key_pem().map(str::to_owned);
        s.worker_token = w;
        s.manager_token = m;
        let me = self.local.swarm.as_mut().expect("checked");
        me.root_ca_cert = root.cert_pem().to_owned();
        me.node_cert = cert;
        me.node_key = key;
        tracing::warn!("the swarm has a root CA now; its join tokens changed");
        Ok(())
    }

    /// What `swarm join` may do, checked before any network traffic: this node is in no
    /// swarm, and the addresses are its own.
    pub(super) fn join_plan(&self, r: &api::SwarmJoinRequest) -> Result<Description, Status> {
        if self.me().is_some() {
            return Err(Status::already_exists(
                "This node is already part of a swarm. Use \"swarmgate swarm leave\" to leave this swarm and join another one.",
            ));
        }
        let (advertise, datapath) = self.own_addresses(&r.advertise_addr, &r.datapath_addr)?;
        parse_listen(&r.listen_addr)?;
        Ok(Description {
            hostname: hostname(),
            advertise_addr: advertise,
            datapath_addr: datapath,
        })
    }

    /// Records a join that [`agent::join`] completed.
    pub(super) fn finish_join(
        &mut self,
        j: Joined,
        me: Description,
        listen_addr: &str,
    ) -> Result<api::SwarmJoinReply, Status> {
        if self.me().is_some() {
            return Err(Status::already_exists(
                "This node is already part of a swarm.",
            ));
        }
        Self::ensure_gwbridge().map_err(|e| Status::internal(format!("{e:#}")))?;
        // A worker holds no swarm record: its membership, and later the records of
        // its own tasks (as SwarmKit's agent keeps them in its own task store).
        let member = Membership {
            cluster_id: j.identity.cluster_id.clone(),
            node_id: j.identity.node_id.clone(),
            role: j.identity.role.name().into(),
            advertise_addr: me.advertise_addr,
            datapath_addr: me.datapath_addr,
            root_ca_cert: j.root_pem,
            node_cert: j.cert_pem,
            node_key: j.key_pem,
            listen_addr: parse_listen(listen_addr)?,
            manager_addr: Some(j.manager.to_string()),
            data_path_port: j.data_path_port,
            raft_epoch: 0,
        };
        self.replace_cluster(Cluster::default(), Some(member))?;
        Ok(api::SwarmJoinReply {
            node_id: j.identity.node_id,
            role: j.identity.role.name().into(),
        })
    }

    pub(super) fn join_token(
        &mut self,
        r: api::JoinTokenRequest,
    ) -> Result<api::JoinTokenReply, Status> {
        let role = match r.role.as_str() {
            "worker" => Role::Worker,
            "manager" => Role::Manager,
            other => {
                return Err(bad(format!(
                    "unknown role {other}: expected worker or manager"
                )))
            }
        };
        let s = self.require_manager()?;
        if r.rotate {
            let root = RootCa::from_pem(&s.root_ca_cert, None).map_err(status_of)?;
            let token = root.new_join_token().map_err(status_of)?;
            let s = self.cluster.swarm.as_mut().expect("checked");
            match role {
                Role::Worker => s.worker_token = token,
                Role::Manager => s.manager_token = token,
            }
            self.commit()?;
        }
        let s = self.cluster.swarm.as_ref().expect("checked");
        let me = self.me().expect("a manager");
        Ok(api::JoinTokenReply {
            token: match role {
                Role::Worker => s.worker_token.clone(),
                Role::Manager => s.manager_token.clone(),
            },
            manager_addr: format!(
                "{}:{}",
                me.advertise_addr,
                me.listen_addr.rsplit_once(':').map_or("2377", |p| p.1)
            ),
        })
    }

    pub(super) fn swarm_leave(&mut self, r: api::SwarmLeaveRequest) -> Result<api::Empty, Status> {
        let s = self
            .me()
            .ok_or_else(|| Status::failed_precondition("This node is not part of a swarm"))?;
        if s.is_manager() && !r.force {
            // The API adapter explains why, with the managers' count (see `leave_managers`).
            return Err(Status::failed_precondition(
                "You are attempting to leave the swarm on a node that is participating as a manager. Use `--force` to suppress this message.",
            ));
        }
        let ids: Vec<String> = self.cluster.tasks.keys().cloned().collect();
        for id in &ids {
            self.stop_task(id, crate::cluster::Status::Shutdown);
        }
        self.cluster = Cluster::default();
        self.local = crate::local::NodeLocal::default();
        self.heartbeats.clear();
        self.leading = false;
        self.replicated = serde_json::Value::Null;
        let _ = ip(&["link", "del", GWBRIDGE]);
        self.commit()?;
        Ok(api::Empty {})
    }

    pub(super) fn node_list(&self) -> Result<api::NodeListReply, Status> {
        self.require_manager()?;
        let me = self.my_id();
        // This node is Ready while its data plane forwards; it is the Leader as the one
        // manager holding the state. Other nodes are Ready while their heartbeats arrive
        // within the grace (3 periods), Down otherwise.
        if let Err(why) = self.dp.health() {
            tracing::warn!("this node is down: {why}");
        }
        // A manager is Reachable while it votes in Raft and its agent's heartbeats arrive.
        let voters: Vec<String> = self
            .replica()
            .map(|r| r.voters().into_iter().map(|(_, p)| p.node).collect())
            .unwrap_or_default();
        Ok(api::NodeListReply {
            nodes: self
                .cluster
                .nodes
                .iter()
                .map(|n| api::Node {
                    id: n.id.clone(),
                    hostname: n.hostname.clone(),
                    status: if self.node_ready(n) { "Ready" } else { "Down" }.into(),
                    availability: capital(&n.availability),
                    // Served by the leader only: this node leads; another manager is
                    // Reachable while its agent's heartbeats arrive.
                    manager_status: match (n.role.as_str(), Some(n.id.as_str()) == me) {
                        ("manager", true) => "Leader",
                        ("manager", false) if self.node_ready(n) && voters.contains(&n.id) => {
                            "Reachable"
                        }
                        ("manager", false) => "Unreachable",
                        _ => "",
                    }
                    .into(),
                    engine_version: env!("CARGO_PKG_VERSION").into(),
                    self_: Some(n.id.as_str()) == me,
                    addr: n.addr.to_string(),
                })
                .collect(),
        })
    }

    /// A node by ID, unique ID prefix or host name (as `docker node` takes them).
    fn find_node(&self, name: &str) -> Result<&NodeRecord, Status> {
        let nodes = &self.cluster.nodes;
        let found = nodes.iter().find(|n| n.id == name).or_else(|| {
            let m: Vec<_> = nodes
                .iter()
                .filter(|n| !name.is_empty() && (n.id.starts_with(name) || n.hostname == name))
                .collect();
            (m.len() == 1).then(|| m[0])
        });
        found.ok_or_else(|| Status::not_found(format!("node {name} not found")))
    }

    pub(super) fn node_ready(&self, n: &NodeRecord) -> bool {
        let me = self.my_id();
        Some(n.id.as_str()) == me && self.dp.health().is_ok()
            || self
                .heartbeats
                .get(&n.id)
                .is_some_and(|t| t.elapsed() <= self.down_after())
    }

    pub(super) fn node_inspect(&self, r: api::NamesRequest) -> Result<api::JsonReply, Status> {
        self.require_manager()?;
        let mut out = Vec::new();
        for name in &r.names {
            let n = self.find_node(name)?;
            out.push(serde_json::json!({
                "ID": n.id,
                "Spec": { "Role": n.role, "Availability": n.availability, "Labels": n.labels },
                "Description": { "Hostname": n.hostname },
                "Status": {
                    "State": if self.node_ready(n) { "ready" } else { "down" },
                    "Addr": n.addr.to_string(),
                },
                "ManagerStatus": (n.role == "manager").then(|| serde_json::json!({
                    "Leader": n.manager_status == "Leader",
                    "Reachability": "reachable",
                })),
            }));
        }
        Ok(api::JsonReply {
            json: serde_json::to_string_pretty(&out).expect("json"),
        })
    }

    /// `node rm [--force]`: a node that is not down needs `--force` (SwarmKit's
    /// `RemoveNode`); a manager must be demoted first. A removed node's certificate stops
    /// working at once: every call on 2377 checks membership.
    pub(super) fn node_remove(&mut self, r: api::NodeRemoveRequest) -> Result<api::Empty, Status> {
        self.require_manager()?;
        let mut ids = Vec::new();
        for name in &r.names {
            let n = self.find_node(name)?;
            if n.role == "manager" {
                return Err(Status::failed_precondition(format!(
                    "node {} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal",
                    n.id
                )));
            }
            if !r.force && self.node_ready(n) {
                return Err(Status::failed_precondition(format!(
                    "node {} is not down and can't be removed",
                    n.id
                )));
            }
            ids.push(n.id.clone());
        }
        self.cluster.nodes.retain(|n| !ids.contains(&n.id));
        for id in &ids {
            self.heartbeats.remove(id);
        }
        // Its tasks are given up: their addresses free, their slots filled elsewhere.
        let orphans: Vec<String> = self
            .cluster
            .tasks
            .values()
            .filter(|t| ids.contains(&t.node) && t.active())
            .map(|t| t.id.clone())
            .collect();
        for id in orphans {
            self.cluster.release_addresses(&id);
            let t = self.cluster.tasks.get_mut(&id).expect("listed");
            t.status = crate::cluster::Status::Shutdown;
            t.desired = crate::cluster::Desired::Shutdown;
            t.error = Some("node removed from the swarm".into());
            t.changed = now();
        }
        self.commit()?;
        Ok(api::Empty {})
    }

    /// `node update`: availability (`active`, `pause`, `drain`) and labels. What changes
    /// for tasks happens in the reconcile loop: a drained node's service tasks stop and
    /// nothing is placed on a paused or drained one.
    pub(super) fn node_update(&mut self, r: api::NodeUpdateRequest) -> Result<api::Empty, Status> {
        self.require_manager()?;
        let id = self.find_node(&r.name)?.id.clone();
        if !r.availability.is_empty()
            && !["active", "pause", "drain"].contains(&r.availability.as_str())
        {
            return Err(bad(format!(
                "invalid availability {:?}: active, pause or drain",
                r.availability
            )));
        }
        let role = match r.role.as_str() {
            "" => None,
            "manager" | "worker" => Some(r.role.clone()),
            other => return Err(bad(format!("invalid role {other:?}: manager or worker"))),
        };
        if role.as_deref() == Some("worker") {
            self.check_demote(&id)?;
        }
        let mut add = Vec::new();
        for l in &r.label_add {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            if k.is_empty() || k.len() > 128 || v.len() > 1024 || k.chars().any(char::is_whitespace)
            {
                return Err(bad(format!("invalid label {l:?}: expected KEY=VALUE")));
            }
            add.push((k.to_owned(), v.to_owned()));
        }
        let n = self
            .cluster
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("found above");
        if n.labels.len() + add.len() > MAX_LABELS {
            return Err(bad(format!("a node has at most {MAX_LABELS} labels")));
        }
        if !r.availability.is_empty() {
            n.availability = r.availability.clone();
        }
        for (k, v) in add {
            n.labels.insert(k, v);
        }
        for k in &r.label_rm {
            n.labels.remove(k);
        }
        if let Some(role) = role {
            if n.role != role {
                tracing::info!(node = %n.id, %role, "node role changed");
            }
            n.role = role;
        }
        self.commit()?;
        Ok(api::Empty {})
    }

    /// Whether manager `id` may be demoted: not the last manager, and not when the
    /// managers left reachable would be too few for a quorum (SwarmKit's
    /// `controlapi/node.go` `UpdateNode` and `raft.go` `CanRemoveMember`).
    fn check_demote(&self, id: &str) -> Result<(), Status> {
        let managers: Vec<&NodeRecord> = self
            .cluster
            .nodes
            .iter()
            .filter(|n| n.role == "manager")
            .collect();
        if !managers.iter().any(|n| n.id == id) {
            return Ok(());
        }
        if managers.len() == 1 {
            return Err(Status::failed_precondition(
                "attempting to demote the last manager of the swarm",
            ));
        }
        let left = managers.len() - 1;
        let reachable = managers
            .iter()
            .filter(|n| n.id != id && self.node_ready(n))
            .count();
        if reachable < left / 2 + 1 {
            return Err(Status::failed_precondition(
                "can't remove member from the raft: this would result in a loss of quorum",
            ));
        }
        Ok(())
    }

    /// `swarm update --cert-expiry`: the validity of certificates issued from now on
    /// (SwarmKit's `validateClusterSpec`: at least an hour); `--dispatcher-heartbeat`:
    /// the period nodes are asked for from their next heartbeat on.
    pub(super) fn swarm_update(
        &mut self,
        r: api::SwarmUpdateRequest,
    ) -> Result<api::Empty, Status> {
        self.require_manager()?;
        let heartbeat = match r.dispatcher_heartbeat_ms {
            0 => None,
            ms => Some(heartbeat_period(ms)?),
        };
        let rotation = match r.datapath_key_rotation_secs {
            0 => None,
            secs => Some(crate::datapath_keys::rotation_period(secs).map_err(bad)?),
        };
        if r.snapshot_interval != 0 {
            let n = snapshot_interval(r.snapshot_interval)?;
            self.cluster
                .swarm
                .as_mut()
                .expect("checked")
                .snapshot_interval = n;
        }
        if let Some(secs) = rotation {
            self.cluster
                .swarm
                .as_mut()
                .expect("checked")
                .datapath
                .rotation_secs = secs;
        }
        if r.rotate_datapath_key {
            let s = self.cluster.swarm.as_mut().expect("checked");
            s.datapath.rotate(now()).map_err(Status::internal)?;
            let primary = s.datapath.for_node().first().map_or(0, |k| k.tag);
            tracing::info!(primary, "datapath keys rotated");
        }
        if r.rotate_gossip_key {
            let s = self.cluster.swarm.as_mut().expect("checked");
            s.gossip.add(now()).map_err(Status::internal)?;
            tracing::info!("a new gossip key: accepted now, the primary in {GOSSIP_KEY_GRACE} s");
        }
        if r.cert_expiry_secs != 0 {
            if r.cert_expiry_secs < ca::MIN_NODE_EXPIRY.as_secs() {
                return Err(bad("minimum certificate expiry time is 1h0m0s"));
            }
            if r.cert_expiry_secs > ca::ROOT_EXPIRY.as_secs() {
                return Err(bad(
                    "certificate expiry cannot exceed the root CA's (20 years)",
                ));
            }
            self.cluster
                .swarm
                .as_mut()
                .expect("checked")
                .cert_expiry_secs = r.cert_expiry_secs;
        }
        if let Some(h) = heartbeat {
            // Nodes learn the new period at their next heartbeat: until then the old
            // one's grace still counts, so a shorter period declares no node Down early.
            self.period_change = Some((std::time::Instant::now(), self.heartbeat_period()));
            self.cluster
                .swarm
                .as_mut()
                .expect("checked")
                .heartbeat_period_ms = h.as_millis() as u64;
        }
        self.commit()?;
        Ok(api::Empty {})
    }

    /// On a manager, renews its own certificate from the local CA once it is due
    /// ([`ca::renewal_due`]); the listener picks the new one up from the state. Returns
    /// whether it did.
    pub(crate) fn renew_own_certificate(&mut self) -> Result<bool, Status> {
        let (Some(m), Some(s)) = (self.me(), &self.cluster.swarm) else {
            return Ok(false);
        };
        let now_t = SystemTime::now();
        let secs = now_t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if !m.is_manager() || m.node_cert.is_empty() || !ca::renewal_due(&m.node_cert, secs) {
            return Ok(false);
        }
        let expiry = std::time::Duration::from_secs(s.cert_expiry_secs);
        let (key, cert) = manager_certificate(&self.root()?, &m.node_id, &s.id, now_t, expiry)?;
        let m = self.local.swarm.as_mut().expect("checked");
        let old = (
            std::mem::replace(&mut m.node_cert, cert),
            std::mem::replace(&mut m.node_key, key),
        );
        if let Err(e) = self.commit() {
            let m = self.local.swarm.as_mut().expect("checked");
            (m.node_cert, m.node_key) = old;
            return Err(e);
        }
        tracing::info!("renewed this manager's certificate");
        Ok(true)
    }

    /// On a worker, keeps the certificate a manager renewed, if it is for this node.
    pub(crate) fn store_node_certificate(
        &mut self,
        cert: String,
        key: String,
    ) -> Result<(), Status> {
        let s = self
            .local
            .swarm
            .as_mut()
            .ok_or_else(|| Status::failed_precondition("not in a swarm"))?;
        let id = ca::check_node_certificate(&s.root_ca_cert, &cert, &key)
            .map_err(|e| bad(e.to_string()))?;
        let role = id.role.name();
        let wanted = self.role_wanted.as_deref() == Some(role);
        if id.node_id != s.node_id || id.cluster_id != s.cluster_id || (role != s.role && !wanted) {
            return Err(bad("the renewed certificate is for another node or role"));
        }
        let changed = role != s.role;
        let s = self.local.swarm.as_mut().expect("checked");
        s.node_cert = cert;
        s.node_key = key;
        if changed {
            s.role = role.to_owned();
            // A manager made a worker keeps a session with the leader.
            let leader = self
                .raft
                .load_full()
                .and_then(|r| r.leader())
                .map(|l| l.addr);
            let s = self.local.swarm.as_mut().expect("checked");
            if s.manager_addr.is_none() {
                s.manager_addr = leader;
            }
            self.role_wanted = None;
            tracing::info!(%role, "this node's role changed");
        } else {
            tracing::info!("renewed this node's certificate");
        }
        self.commit()?;
        Ok(())
    }

    // ---- the manager's side of 2377 ----

    pub(crate) fn root_ca_reply(&self) -> Result<capi::RootCaReply, Status> {
        Ok(capi::RootCaReply {
            certificate: self.require_manager()?.root_ca_cert.clone(),
        })
    }

    fn root(&self) -> Result<RootCa, Status> {
        let s = self.require_manager()?;
        RootCa::from_pem(&s.root_ca_cert, s.root_ca_key.as_deref()).map_err(status_of)
    }

    pub(crate) fn issue_node_certificate(
        &mut self,
        r: capi::IssueRequest,
        seen: Option<Ipv4Addr>,
    ) -> Result<capi::IssueReply, Status> {
        let s = self.require_manager()?;
        let role =
            ca::role_for_token(&r.token, &s.worker_token, &s.manager_token).map_err(status_of)?;
        let addr = node_addr(seen, &r.advertise_addr)?;
        let name = valid_hostname(&r.hostname)?;
        let (cluster_id, expiry) = (s.id.clone(), s.cert_expiry_secs);
        let node_id = random_id(25);
        let cert = self
            .root()?
            .issue(
                &r.csr,
                &node_id,
                role,
                &cluster_id,
                SystemTime::now(),
                std::time::Duration::from_secs(expiry),
            )
            .map_err(|e| bad(e.to_string()))?;
        self.cluster.nodes.push(NodeRecord {
            id: node_id.clone(),
            hostname: name,
            role: role.name().into(),
            manager_status: String::new(),
            availability: "active".into(),
            addr,
            labels: Default::default(),
            datapath_addr: datapath_of(&r.advertise_addr, &r.datapath_addr),
        });
        self.commit()?;
        tracing::info!(node = %node_id, %addr, role = role.name(), "node joined");
        Ok(capi::IssueReply {
            node_id,
            certificate: cert,
            cluster_id,
            role: role.name().into(),
            data_path_port: self.cluster.swarm.as_ref().map_or(0, |s| s.data_path_port) as u32,
        })
    }

    /// Node `node` is a manager of this swarm (on the leader, before Raft adds it).
    pub(crate) fn check_manager_member(&self, node: &str) -> Result<(), Status> {
        self.require_leader()?;
        match self.cluster.nodes.iter().find(|n| n.id == node) {
            Some(n) if n.role == "manager" => Ok(()),
            Some(_) => Err(Status::permission_denied(format!(
                "node {node} is not a manager"
            ))),
            None => Err(Status::permission_denied(format!(
                "node {node} is not a member of this swarm"
            ))),
        }
    }

    pub(super) fn member(&self, id: &NodeIdentity) -> Result<&NodeRecord, Status> {
        self.cluster
            .nodes
            .iter()
            .find(|n| n.id == id.node_id)
            .ok_or_else(|| {
                tracing::warn!(node = %id.node_id, "2377: refused: not a member (removed?)");
                Status::permission_denied(format!(
                    "node {} is not a member of this swarm",
                    id.node_id
                ))
            })
    }

    pub(crate) fn renew_node_certificate(
        &mut self,
        id: &NodeIdentity,
        csr: &str,
    ) -> Result<capi::IssueReply, Status> {
        // The role is the node record's (what `promote`/`demote` will change), not the old
        // certificate's.
        let role = match self.member(id)?.role.as_str() {
            "manager" => Role::Manager,
            _ => Role::Worker,
        };
        let s = self.require_manager()?;
        let (cluster_id, expiry) = (s.id.clone(), s.cert_expiry_secs);
        let cert = self
            .root()?
            .issue(
                csr,
                &id.node_id,
                role,
                &cluster_id,
                SystemTime::now(),
                std::time::Duration::from_secs(expiry),
            )
            .map_err(|e| bad(e.to_string()))?;
        Ok(capi::IssueReply {
            node_id: id.node_id.clone(),
            certificate: cert,
            cluster_id,
            role: role.name().into(),
            data_path_port: self.cluster.swarm.as_ref().map_or(0, |s| s.data_path_port) as u32,
        })
    }

    pub(crate) fn heartbeat(
        &mut self,
        id: &NodeIdentity,
        r: capi::HeartbeatRequest,
        seen: Option<Ipv4Addr>,
    ) -> Result<capi::HeartbeatReply, Status> {
        self.require_leader()?;
        let n = self.member(id)?;
        let addr = node_addr(seen, &r.advertise_addr).unwrap_or(n.addr);
        let name = valid_hostname(&r.hostname).unwrap_or_else(|_| n.hostname.clone());
        let datapath = datapath_of(&r.advertise_addr, &r.datapath_addr);
        let mut changed = false;
        if n.addr != addr || n.hostname != name || n.datapath_addr != datapath {
            let n = self
                .cluster
                .nodes
                .iter_mut()
                .find(|n| n.id == id.node_id)
                .expect("checked");
            n.addr = addr;
            n.hostname = name;
            n.datapath_addr = datapath;
            changed = true;
        }
        // Its tasks' states (SwarmKit's `UpdateTaskStatus`); a state this node may not
        // report is ignored.
        let reports: Vec<Report> = r
            .tasks
            .iter()
            .take(MAX_REPORTS)
            .filter_map(|t| {
                Some(Report {
                    id: t.id.clone(),
                    status: parse_status(&t.state)?,
                    exit_code: t.exit_code,
                    error: (!t.error.is_empty()).then(|| t.error.chars().take(1024).collect()),
                })
            })
            .collect();
        changed |= apply_reports(&mut self.cluster, &id.node_id, &reports);
        self.heartbeats.insert(id.node_id.clone(), Instant::now());
        if changed {
            self.commit()?;
        }
        Ok(capi::HeartbeatReply {
            period_ms: self.heartbeat_period().as_millis() as u64,
        })
    }

    /// Node `id`'s assignment, JSON, for the dispatcher's stream; refused once the node
    /// is no longer a member.
    pub(crate) fn assignment_for(&self, id: &NodeIdentity) -> Result<Vec<u8>, Status> {
        self.require_leader()?;
        self.member(id)?;
        let mut a = assignment(&self.cluster, &id.node_id);
        a.managers = self.manager_addrs();
        serde_json::to_vec(&a).map_err(|e| Status::internal(format!("encoding an assignment: {e}")))
    }

    /// A receiver that wakes at every commit.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The heartbeat period this swarm asks nodes for.
    pub(super) fn heartbeat_period(&self) -> std::time::Duration {
        self.cluster
            .swarm
            .as_ref()
            .map_or(agent::HEARTBEAT_PERIOD, |s| s.heartbeat_period())
    }

    /// How long without a heartbeat before a node is Down: three periods (SwarmKit's
    /// grace), the previous period's three for as long as nodes may still be on it.
    pub(super) fn down_after(&self) -> std::time::Duration {
        let now = self.heartbeat_period() * HEARTBEAT_GRACE;
        match self.period_change {
            Some((at, old)) if at.elapsed() < old * HEARTBEAT_GRACE => {
                now.max(old * HEARTBEAT_GRACE)
            }
            _ => now,
        }
    }

    /// A manager said this worker is no longer a member (`node rm`): it leaves the swarm,
    /// as a Docker node does, instead of knocking forever.
    pub(crate) fn removed_by_manager(&mut self) -> Result<(), Status> {
        if self.me().is_some_and(|m| !m.is_manager()) {
            tracing::error!("this node was removed from the swarm by a manager; leaving it");
            self.swarm_leave(api::SwarmLeaveRequest { force: true })?;
        }
        Ok(())
    }

    /// What the node runtime should run for the current state.
    pub(crate) fn want(&self) -> Want {
        let Some(s) = self.me() else {
            return Want::default();
        };
        if s.node_cert.is_empty() {
            return Want::default(); // a state from before certificates: see `restore`
        }
        let port = s.listen_addr.rsplit_once(':').map_or("2377", |p| p.1);
        let manager = s.is_manager().then(|| crate::raft::Peer {
            node: s.node_id.clone(),
            addr: format!("{}:{port}", s.advertise_addr),
        });
        // The agent's session: a worker's with its manager; a manager's that does not
        // lead with the leader, once one is known.
        let session = if self.leads() {
            None
        } else if s.is_manager() {
            // Raft's leader; when Raft knows none (a manager not yet added, or just
            // taken out), the manager it was last sent to, else another it knows of.
            let own = format!("{}:{port}", s.advertise_addr);
            self.replica()
                .and_then(|r| r.leader())
                .filter(|l| l.node != s.node_id)
                .map(|l| l.addr)
                .or_else(|| s.manager_addr.clone())
                .or_else(|| self.known_managers().into_iter().find(|a| *a != own))
                .and_then(|a| a.parse().ok())
        } else {
            s.manager_addr.as_deref().and_then(|a| a.parse().ok())
        };
        Want {
            tls: Some((
                s.root_ca_cert.clone(),
                s.node_cert.clone(),
                s.node_key.clone(),
            )),
            listen: s.is_manager().then(|| s.listen_addr.clone()),
            raft: manager.map(|p| (p, s.manager_addr.is_none(), s.raft_epoch)),
            session,
            me: (hostname(), s.advertise_addr, s.datapath_addr),
        }
    }

    /// An agent's session goes to `addr` from now on (its manager went away, or said
    /// who leads).
    pub(crate) fn set_manager(&mut self, addr: std::net::SocketAddr) -> Result<(), Status> {
        let Some(m) = self.local.swarm.as_mut() else {
            return Ok(());
        };
        if m.manager_addr.as_deref() == Some(&addr.to_string()) {
            return Ok(());
        }
        tracing::info!(manager = %addr, "the session moves to another manager");
        m.manager_addr = Some(addr.to_string());
        self.commit()
    }

    /// The role this node's certificate should be renewed for, if it changed.
    pub(crate) fn role_change(&self) -> Option<String> {
        self.role_wanted.clone()
    }

    /// On the leader: Raft voters that are no longer managers (demoted or removed), for
    /// the node runtime to take out of the membership (SwarmKit's `role_manager.go`).
    pub(crate) fn stale_voters(&self) -> Vec<String> {
        let Some(r) = self.replica().filter(|_| self.leads()) else {
            return Vec::new();
        };
        r.voters()
            .into_iter()
            .map(|(_, p)| p.node)
            .filter(|id| {
                !self
                    .cluster
                    .nodes
                    .iter()
                    .any(|n| &n.id == id && n.role == "manager")
            })
            .collect()
    }

    /// Where an agent may turn when its manager is gone: the managers its last
    /// assignment listed.
    pub(crate) fn known_managers(&self) -> Vec<String> {
        self.local
            .assignment
            .as_ref()
            .map(|a| a.managers.clone())
            .unwrap_or_default()
    }
}

/// A node's address: the one its connection comes from (SwarmKit's dispatcher records
/// that), else the one it advertises; never unspecified, loopback, multicast or broadcast.
fn node_addr(seen: Option<Ipv4Addr>, advertised: &str) -> Result<Ipv4Addr, Status> {
    let a = match seen {
        Some(a) => a,
        None => advertised
            .parse()
            .map_err(|_| bad(format!("invalid advertise address {advertised:?}")))?,
    };
    if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() {
        return Err(bad(format!("{a} cannot be a node's address")));
    }
    Ok(a)
}

/// `--dispatcher-heartbeat`, checked: SwarmKit refuses only a negative period
/// (`controlapi/cluster.go` `validateClusterSpec`); swarmgate also bounds it to 1 s – 1 h,
/// so that neither a busy loop of heartbeats nor a node never declared Down can be asked for.
fn heartbeat_period(ms: u64) -> Result<std::time::Duration, Status> {
    let d = std::time::Duration::from_millis(ms);
    if !(agent::MIN_HEARTBEAT_PERIOD..=agent::MAX_HEARTBEAT_PERIOD).contains(&d) {
        return Err(bad(format!(
            "invalid dispatcher heartbeat {}: it must be between 1s and 1h",
            humantime::format_duration(d)
        )));
    }
    Ok(d)
}

/// `--snapshot-interval`, checked: SwarmKit takes any count; swarmgate bounds it so that a
/// snapshot (the whole state, serialised) is neither taken at every write nor never.
fn snapshot_interval(n: u64) -> Result<u64, Status> {
    if !(crate::raft::MIN_SNAPSHOT_INTERVAL..=crate::raft::MAX_SNAPSHOT_INTERVAL).contains(&n) {
        return Err(bad(format!(
            "invalid snapshot interval {n}: it must be between {} and {}",
            crate::raft::MIN_SNAPSHOT_INTERVAL,
            crate::raft::MAX_SNAPSHOT_INTERVAL
        )));
    }
    Ok(n)
}

/// A node's data-path address when it names one of its own apart from its advertised
/// address (`--data-path-addr`); `None`: the address its connection comes from.
fn datapath_of(advertised: &str, datapath: &str) -> Option<Ipv4Addr> {
    let d: Ipv4Addr = datapath.parse().ok()?;
    let usable = !(d.is_unspecified() || d.is_loopback() || d.is_multicast() || d.is_broadcast());
    (usable && datapath != advertised).then_some(d)
}

/// A host name as a node may report it: 1–255 printable characters.
fn valid_hostname(s: &str) -> Result<String, Status> {
    if s.is_empty() || s.len() > 255 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad(format!("invalid host name {s:?}")));
    }
    Ok(s.to_owned())
}

/// This node's ID, once it is in a swarm.
fn node_id_of(d: &Daemon) -> String {
    d.my_id().unwrap_or_default().to_owned()
}
