//! `swarmgate daemon`: owns the cluster state, runs tasks and their DNS servers, programs
//! the data plane, persists everything, and serves the gRPC API on a Unix socket.
//!
//! Every API call takes the daemon's one lock on a blocking thread, validates completely,
//! changes the state, then [`Daemon::commit`]s: the state is written to redb, the data
//! plane gets the new [`NodeState`](crate::dataplane::NodeState) and the DNS its new view.
//! A refused call changes nothing. A reconcile loop (every 500 ms) replaces tasks that
//! exited, so the replica count holds.
//!
//! Stopping the daemon leaves tasks, namespaces and bridges running (Docker's
//! live-restore); the next start adopts them and re-creates the data plane's ports.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::api;
use crate::cluster::{
    self, bridge_name, now, ports_summary, random_id, Cluster, Desired, Meta, Status as TStatus,
    TaskRecord, GWBRIDGE, GWBRIDGE_GW, GWBRIDGE_NET, GWBRIDGE_PREFIX,
};
use crate::dataplane::{DataPlane, NodeState};
use crate::dns::{Dns, DNS_ADDR};
use crate::ipam::Subnet;
use crate::network::CreateNetwork;
use crate::publish::{self, PortConfig, PublishMode};
use crate::service::{CreateService, EndpointMode, ServiceMode};
use crate::store::Store;
use crate::task::{process_start_time, Attachment, Task, TaskSpec, TaskState};

mod membership;
pub use membership::{Want, NOT_A_MANAGER};

/// How long a slot waits after its task ended before a replacement starts.
const RESTART_DELAY: u64 = 1;
/// Ended tasks kept per slot (Docker's task history retention limit).
const HISTORY: usize = 5;
/// Tasks the reconcile loop starts per round (once a second): each start creates a
/// namespace and veths under the state lock, so a large service is brought up over
/// several rounds instead of holding the lock for all of it.
const STARTS_PER_ROUND: usize = 16;

/// Where the daemon keeps things.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The API socket.
    pub socket: PathBuf,
    /// State database, task logs and working directories.
    pub data_root: PathBuf,
    /// Where the embedded DNS forwards names it does not know (default: the resolvers of
    /// the daemon's `/etc/resolv.conf`).
    pub dns_upstream: Option<std::net::SocketAddr>,
}

/// The daemon's state: the cluster and what runs on this node.
pub struct Daemon {
    cfg: DaemonConfig,
    cluster: Cluster,
    running: HashMap<String, Task>,
    dns_servers: HashMap<String, JoinHandle<()>>,
    dp: Box<dyn DataPlane>,
    store: Store,
    dns: Dns,
    rt: tokio::runtime::Handle,
    applied: Option<NodeState>,
    /// States written to the store so far (see `Api::call`).
    saves: u64,
    /// Tasks being stopped off the state lock, with the addresses they still hold.
    stopping: Vec<(JoinHandle<()>, cluster::Held)>,
    /// On a manager: when each other node's last heartbeat arrived (not persisted: after
    /// a restart every node is Down until it beats again).
    heartbeats: HashMap<String, std::time::Instant>,
}

fn bad(msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(msg.to_string())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let mut v = vec!["ip"];
    v.extend_from_slice(args);
    crate::task::sh(&v).map_err(|(cmd, err)| anyhow::anyhow!("{cmd}: {err}"))
}

impl Daemon {
    fn not_swarm() -> Status {
        Status::failed_precondition(
            "This node is not a swarm manager. Use \"swarmgate swarm init\" to connect this node to swarm and try again.",
        )
    }

    /// The ranges of this node no overlay may overlap: the gateway bridge and the
    /// underlay's subnet.
    fn node_reserved(&self) -> Vec<(Subnet, String)> {
        let mut v = vec![(
            Subnet::new(GWBRIDGE_NET, GWBRIDGE_PREFIX).expect("valid"),
            GWBRIDGE.to_owned(),
        )];
        let (a, p) = self.dp.underlay();
        let masked = u32::from(a) & u32::MAX.checked_shl(32 - p as u32).unwrap_or(0);
        if let Ok(s) = Subnet::new(Ipv4Addr::from(masked), p) {
            v.push((s, "the underlay".to_owned()));
        }
        v
    }

    /// Persists the state and pushes it to the data plane and the DNS.
    fn commit(&mut self) -> Result<(), Status> {
        self.store
            .save(&self.cluster)
            .map_err(|e| Status::internal(format!("saving state: {e:#}")))?;
        self.saves += 1;
        self.push()
    }

    fn push(&mut self) -> Result<(), Status> {
        let st = self.cluster.node_state();
        if self.applied.as_ref() != Some(&st) {
            self.dp
                .apply(&st)
                .map_err(|e| Status::internal(format!("programming the data plane: {e:#}")))?;
            self.applied = Some(st);
        }
        self.dns.set_view(self.cluster.dns_view());
        Ok(())
    }

    fn ensure_gwbridge() -> anyhow::Result<()> {
        // Through `ip`, not /sys: a daemon started with `nsenter --net` sees the /sys of
        // the namespace it came from.
        if ip(&["link", "show", GWBRIDGE]).is_err() {
            ip(&["link", "add", GWBRIDGE, "type", "bridge"])?;
        }
        ip(&[
            "addr",
            "replace",
            &format!("{GWBRIDGE_GW}/{GWBRIDGE_PREFIX}"),
            "dev",
            GWBRIDGE,
        ])?;
        ip(&["link", "set", GWBRIDGE, "up"])?;
        Ok(())
    }

    // ---- networks ----

    fn network_create(&mut self, r: api::NetworkCreateRequest) -> Result<api::IdReply, Status> {
        self.require_manager()?;
        let req = CreateNetwork {
            name: r.name.clone(),
            driver: if r.driver.is_empty() {
                "overlay".into()
            } else {
                r.driver
            },
            attachable: r.attachable,
            ingress: r.ingress,
            subnet: (!r.subnet.is_empty()).then_some(r.subnet),
            gateway: (!r.gateway.is_empty()).then_some(r.gateway),
            options: r
                .options
                .iter()
                .map(|o| match o.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (o.clone(), None),
                })
                .collect(),
        };
        let reserved = self.node_reserved();
        self.cluster.networks.set_node_reserved(reserved);
        self.cluster.networks.create(&req).map_err(bad)?;
        let meta = Meta::new();
        let id = meta.id.clone();
        self.cluster.network_meta.insert(r.name.clone(), meta);
        if let Err(e) = self.commit() {
            // The data plane could not make its port: nothing stays.
            let _ = self.cluster.networks.remove(&r.name);
            self.cluster.network_meta.remove(&r.name);
            let _ = self.commit();
            return Err(e);
        }
        Ok(api::IdReply {
            id,
            warnings: Vec::new(),
        })
    }

    fn network_list(&self) -> Result<api::NetworkListReply, Status> {
        self.require_manager()?;
        Ok(api::NetworkListReply {
            networks: self
                .cluster
                .networks
                .iter()
                .map(|n| api::Network {
                    id: self
                        .cluster
                        .network_meta
                        .get(&n.name)
                        .map(|m| m.id.clone())
                        .unwrap_or_default(),
                    name: n.name.clone(),
                    driver: "overlay".into(),
                    scope: "swarm".into(),
                    subnet: n.addressing.subnet.to_string(),
                    vni: n.vni.get(),
                })
                .collect(),
        })
    }

    /// A network by name or id (prefix).
    fn network_name(&self, key: &str) -> Option<String> {
        if self.cluster.networks.get(key).is_some() {
            return Some(key.to_owned());
        }
        let m: Vec<&String> = self
            .cluster
            .network_meta
            .iter()
            .filter(|(_, m)| !key.is_empty() && m.id.starts_with(key))
            .map(|(n, _)| n)
            .collect();
        (m.len() == 1).then(|| m[0].clone())
    }

    fn network_inspect(&self, r: api::NamesRequest) -> Result<api::JsonReply, Status> {
        let s = self.require_manager()?;
        let mut docs = Vec::new();
        for n in &r.names {
            let name = self
                .network_name(n)
                .ok_or_else(|| Status::not_found(format!("network {n} not found")))?;
            docs.push(
                self.cluster
                    .network_json(&name, s.datapath_addr)
                    .expect("exists"),
            );
        }
        Ok(api::JsonReply {
            json: serde_json::to_string_pretty(&docs).expect("json"),
        })
    }

    fn network_remove(&mut self, r: api::NamesRequest) -> Result<api::Empty, Status> {
        self.require_manager()?;
        // All checked before anything is removed.
        let mut names = Vec::new();
        for n in &r.names {
            let name = self
                .network_name(n)
                .ok_or_else(|| Status::not_found(format!("network {n} not found")))?;
            if names.contains(&name) {
                return Err(bad(format!("network {n} is named twice")));
            }
            let net = self.cluster.networks.get(&name).expect("exists");
            if net.ingress {
                if let Some(s) = self
                    .cluster
                    .services
                    .iter()
                    .find(|s| s.ports.iter().any(|p| p.mode == PublishMode::Ingress))
                {
                    return Err(Status::failed_precondition(format!(
                        "ingress network cannot be removed because service {} depends on it",
                        s.name
                    )));
                }
            }
            if let Some(s) = self
                .cluster
                .services
                .iter()
                .find(|s| !net.ingress && s.networks.iter().any(|(m, _)| *m == name))
            {
                return Err(Status::failed_precondition(format!(
                    "network {name} is in use by service {}",
                    s.name
                )));
            }
            if let Some(t) = self.cluster.tasks.values().find(|t| {
                t.service.is_none() && t.live() && t.addresses.iter().any(|(m, _)| *m == name)
            }) {
                return Err(Status::failed_precondition(format!(
                    "error while removing network: network {name} has active endpoints ({})",
                    t.full_name()
                )));
            }
            names.push(name);
        }
        for name in names {
            // Stopped standalone endpoints that were on it are forgotten with it.
            let stale: Vec<String> = self
                .cluster
                .tasks
                .values()
                .filter(|t| t.addresses.iter().any(|(m, _)| *m == name))
                .map(|t| t.id.clone())
                .collect();
            for id in stale {
                self.cluster.tasks.remove(&id);
            }
            self.cluster.networks.remove(&name).map_err(bad)?;
            self.cluster.network_meta.remove(&name);
        }
        self.commit()?;
        Ok(api::Empty {})
    }

    // ---- services ----

    fn parse_ports(specs: &[String]) -> Result<Vec<PortConfig>, Status> {
        let mut v = Vec::new();
        for s in specs {
            v.extend(publish::parse(s).map_err(bad)?);
        }
        Ok(v)
    }

    fn service_create(&mut self, r: api::ServiceCreateRequest) -> Result<api::IdReply, Status> {
        self.require_manager()?;
        let mut networks = Vec::new();
        for n in &r.networks {
            networks.push(self.network_name(n).unwrap_or_else(|| n.clone()));
        }
        let req = CreateService {
            name: r.name.clone(),
            replicas: r.replicas_set.then_some(r.replicas),
            mode: (!r.mode.is_empty()).then_some(r.mode),
            networks,
            ports: Self::parse_ports(&r.publish)?,
            endpoint_mode: (!r.endpoint_mode.is_empty()).then_some(r.endpoint_mode),
            command: r.command,
            constraints: r.constraints,
            max_replicas_per_node: r.replicas_max_per_node,
        };
        self.cluster
            .services
            .create(&req, &mut self.cluster.networks)
            .map_err(bad)?;
        let meta = Meta::new();
        let id = meta.id.clone();
        self.cluster.service_meta.insert(r.name.clone(), meta);
        self.reconcile();
        self.commit()?;
        Ok(api::IdReply {
            id,
            warnings: Vec::new(),
        })
    }

    fn service_update(&mut self, r: api::ServiceUpdateRequest) -> Result<api::IdReply, Status> {
        self.require_manager()?;
        let old = self
            .cluster
            .services
            .get(&r.name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("service {} not found", r.name)))?;
        let ingress = self
            .cluster
            .networks
            .iter()
            .find(|n| n.ingress)
            .map(|n| n.name.clone());
        let mut networks: Vec<String> = old
            .networks
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| Some(n) != ingress.as_ref())
            .collect();
        for n in &r.network_rm {
            let name = self.network_name(n).unwrap_or_else(|| n.clone());
            if !networks.contains(&name) {
                return Err(bad(format!(
                    "service {} is not attached to network {n}",
                    r.name
                )));
            }
            networks.retain(|m| *m != name);
        }
        for n in &r.network_add {
            networks.push(self.network_name(n).unwrap_or_else(|| n.clone()));
        }
        let mut ports = old.ports.clone();
        for spec in &r.publish_rm {
            let (num, proto) = match spec.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (spec.as_str(), None),
            };
            let rm: Vec<PortConfig> = match num.parse::<u16>() {
                Ok(p) => ports
                    .iter()
                    .filter(|c| {
                        c.published == Some(p)
                            && proto.is_none_or(|x| x.eq_ignore_ascii_case(&c.protocol.to_string()))
                    })
                    .copied()
                    .collect(),
                Err(_) => Self::parse_ports(std::slice::from_ref(spec))?,
            };
            let before = ports.len();
            ports.retain(|c| {
                !rm.iter()
                    .any(|x| x.published == c.published && x.protocol == c.protocol)
            });
            if ports.len() == before {
                return Err(bad(format!("service {} does not publish {spec}", r.name)));
            }
        }
        ports.extend(Self::parse_ports(&r.publish_add)?);
        let mode = match old.mode {
            ServiceMode::Global if r.replicas_set => {
                return Err(bad("replicas can only be used with replicated mode"))
            }
            ServiceMode::Global => None,
            ServiceMode::Replicated(n) => Some(if r.replicas_set { r.replicas } else { n }),
        };
        let req = CreateService {
            name: old.name.clone(),
            replicas: mode,
            mode: Some(
                match old.mode {
                    ServiceMode::Global => "global",
                    ServiceMode::Replicated(_) => "replicated",
                }
                .into(),
            ),
            networks,
            ports,
            endpoint_mode: Some(
                match old.endpoint_mode {
                    EndpointMode::Vip => "vip",
                    EndpointMode::Dnsrr => "dnsrr",
                }
                .into(),
            ),
            command: old.command.clone(),
            constraints: old.constraints.clone(),
            max_replicas_per_node: old.max_replicas_per_node,
        };
        // Validate on copies: the old service's VIPs and ports are free while the new spec
        // is checked; a refusal leaves the real state untouched.
        let mut nets = self.cluster.networks.clone();
        let mut svcs = self.cluster.services.clone();
        svcs.remove(&old.name, &mut nets);
        svcs.create(&req, &mut nets).map_err(bad)?;
        let new = svcs.get(&old.name).expect("created").clone();
        self.cluster.networks = nets;
        self.cluster.services = svcs;
        let meta = self
            .cluster
            .service_meta
            .entry(old.name.clone())
            .or_default();
        meta.updated = now();
        if new.networks != old.networks || new.command != old.command {
            // Tasks of the old spec are replaced (their networks changed).
            meta.version += 1;
        }
        let id = meta.id.clone();
        self.reconcile();
        self.commit()?;
        Ok(api::IdReply {
            id,
            warnings: Vec::new(),
        })
    }

    fn service_remove(&mut self, r: api::NamesRequest) -> Result<api::Empty, Status> {
        self.require_manager()?;
        for n in &r.names {
            if self.cluster.services.get(n).is_none() {
                return Err(Status::not_found(format!("service {n} not found")));
            }
        }
        for n in &r.names {
            let ids: Vec<String> = self
                .cluster
                .tasks
                .values()
                .filter(|t| t.service.as_deref() == Some(n))
                .map(|t| t.id.clone())
                .collect();
            for id in &ids {
                self.stop_task(id, TStatus::Shutdown);
                self.cluster.tasks.remove(id);
            }
            self.cluster.services.remove(n, &mut self.cluster.networks);
            self.cluster.service_meta.remove(n);
            // Its logs and working directories go with it.
            for id in &ids {
                crate::logs::remove(&self.log_path(id));
                let _ = std::fs::remove_dir_all(self.cfg.data_root.join("tasks").join(id));
            }
        }
        self.commit()?;
        Ok(api::Empty {})
    }

    fn service_list(&self) -> Result<api::ServiceListReply, Status> {
        self.require_manager()?;
        Ok(api::ServiceListReply {
            services: self
                .cluster
                .services
                .iter()
                .map(|s| api::Service {
                    id: self
                        .cluster
                        .service_meta
                        .get(&s.name)
                        .map(|m| m.id.clone())
                        .unwrap_or_default(),
                    name: s.name.clone(),
                    mode: match s.mode {
                        ServiceMode::Global => "global".into(),
                        ServiceMode::Replicated(_) => "replicated".into(),
                    },
                    running: self.cluster.running_tasks(&s.name).count() as u32,
                    desired: self.desired_replicas(s.mode),
                    command: s.command.join(" "),
                    ports: ports_summary(s),
                })
                .collect(),
        })
    }

    fn desired_replicas(&self, m: ServiceMode) -> u32 {
        match m {
            ServiceMode::Replicated(n) => n,
            ServiceMode::Global => self.cluster.nodes.len() as u32,
        }
    }

    fn task_row(&self, t: &TaskRecord, history: bool) -> api::Task {
        let node = self
            .cluster
            .nodes
            .iter()
            .find(|n| n.id == t.node)
            .map(|n| n.hostname.clone())
            .unwrap_or_default();
        let error = match (t.status, t.exit_code, &t.error) {
            (_, _, Some(e)) => e.clone(),
            (TStatus::Failed, Some(c), _) => format!("task: non-zero exit ({c})"),
            _ => String::new(),
        };
        let name = match &t.service {
            Some(s) => format!("{s}.{}", t.slot),
            None => t.full_name(),
        };
        api::Task {
            id: t.id.clone(),
            name,
            node,
            desired_state: match t.desired {
                Desired::Running => "Running".into(),
                Desired::Shutdown => "Shutdown".into(),
            },
            current_state: format!("{} {}", t.status.word(), cluster::ago(t.changed)),
            error,
            ports: Vec::new(),
            history,
            namespace: if t.live() {
                Task::namespace_of(&t.id)
            } else {
                String::new()
            },
            addresses: t
                .addresses
                .iter()
                .map(|(n, ip)| format!("{n}={ip}"))
                .collect(),
        }
    }

    fn service_ps(&self, r: api::NamesRequest) -> Result<api::TaskListReply, Status> {
        self.require_manager()?;
        let mut tasks = Vec::new();
        for n in &r.names {
            if self.cluster.services.get(n).is_none() {
                return Err(Status::not_found(format!("service {n} not found")));
            }
            let mut v: Vec<&TaskRecord> = self
                .cluster
                .tasks
                .values()
                .filter(|t| t.service.as_deref() == Some(n))
                .collect();
            // By slot, newest first within a slot (docker's `\_` history rows).
            v.sort_by(|a, b| a.slot.cmp(&b.slot).then(b.created.cmp(&a.created)));
            let mut last_slot = None;
            for t in v {
                let history = last_slot == Some(t.slot);
                last_slot = Some(t.slot);
                tasks.push(self.task_row(t, history));
            }
        }
        Ok(api::TaskListReply { tasks })
    }

    fn service_inspect(&self, r: api::NamesRequest) -> Result<api::JsonReply, Status> {
        self.require_manager()?;
        let mut docs = Vec::new();
        for n in &r.names {
            docs.push(
                self.cluster
                    .service_json(n)
                    .ok_or_else(|| Status::not_found(format!("service {n} not found")))?,
            );
        }
        Ok(api::JsonReply {
            json: serde_json::to_string_pretty(&docs).expect("json"),
        })
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.cfg.data_root.join("logs").join(format!("{id}.log"))
    }

    /// What `service logs` reads: each task's line prefix and log file. Only this is done
    /// under the state lock; the files are read (and streamed) after it is released.
    fn service_log_sources(&self, r: api::NamesRequest) -> Result<Vec<(String, PathBuf)>, Status> {
        self.require_manager()?;
        let mut sources = Vec::new();
        for n in &r.names {
            if self.cluster.services.get(n).is_none() {
                return Err(Status::not_found(format!("service {n} not found")));
            }
            let host = self
                .cluster
                .nodes
                .first()
                .map(|n| n.hostname.clone())
                .unwrap_or_default();
            for t in self
                .cluster
                .tasks
                .values()
                .filter(|t| t.service.as_deref() == Some(n))
            {
                sources.push((format!("{}@{host}", t.full_name()), self.log_path(&t.id)));
            }
        }
        Ok(sources)
    }

    /// Every task's log file (for rotation, outside the lock).
    fn log_paths(&self) -> Vec<PathBuf> {
        self.cluster
            .tasks
            .keys()
            .map(|id| self.log_path(id))
            .collect()
    }

    // ---- standalone endpoints ----

    fn container_run(&mut self, r: api::ContainerRunRequest) -> Result<api::EndpointReply, Status> {
        self.require_manager()?;
        let name = r.name.clone();
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid {
            return Err(bad(format!(
                "invalid container name {name:?}: use letters, digits, '_', '.', '-'"
            )));
        }
        if self
            .cluster
            .tasks
            .values()
            .any(|t| t.name.as_deref() == Some(&name))
        {
            return Err(Status::already_exists(format!(
                "Conflict. The container name \"{name}\" is already in use. Remove it first."
            )));
        }
        if r.networks.is_empty() {
            return Err(bad("a standalone endpoint needs --network"));
        }
        if r.detach && r.command.is_empty() {
            return Err(bad("run -d needs a command after --"));
        }
        let mut nets = Vec::new();
        for n in &r.networks {
            let net_name = self
                .network_name(n)
                .ok_or_else(|| Status::not_found(format!("network {n} not found")))?;
            let net = self.cluster.networks.get(&net_name).expect("exists");
            if !net.attachable {
                return Err(Status::failed_precondition(format!(
                    "Could not attach to network {n}: rpc error: code = PermissionDenied desc = network {n} not manually attachable"
                )));
            }
            nets.push(net_name);
        }
        let node = self.require_manager()?.node_id.clone();
        let id = random_id(8);
        let t = TaskRecord {
            id: id.clone(),
            service: None,
            slot: 0,
            version: 0,
            name: Some(name.clone()),
            node,
            desired: Desired::Running,
            status: TStatus::Rejected,
            exit_code: None,
            error: None,
            created: now(),
            changed: now(),
            addresses: Vec::new(),
            gw_ip: None,
            spec: None,
            pid: None,
            detached: r.detach,
            command: r.command.clone(),
        };
        self.cluster.tasks.insert(id.clone(), t);
        if let Err(e) = self.start_task(&id, &nets) {
            self.cluster.tasks.remove(&id);
            return Err(Status::internal(e));
        }
        self.commit()?;
        self.endpoint_reply(&id)
    }

    fn endpoint_reply(&self, id: &str) -> Result<api::EndpointReply, Status> {
        let t = &self.cluster.tasks[id];
        Ok(api::EndpointReply {
            id: t.id.clone(),
            name: t.full_name(),
            namespace: Task::namespace_of(&t.id),
            addresses: t
                .addresses
                .iter()
                .map(|(n, ip)| format!("{n}={ip}"))
                .collect(),
        })
    }

    /// A live endpoint by container name, task id, task name, or `service.slot`.
    fn find_endpoint(&self, key: &str) -> Option<String> {
        self.cluster
            .tasks
            .values()
            .filter(|t| t.live())
            .find(|t| {
                t.name.as_deref() == Some(key)
                    || t.id == key
                    || t.full_name() == key
                    || t.service
                        .as_ref()
                        .is_some_and(|s| format!("{s}.{}", t.slot) == key)
            })
            .map(|t| t.id.clone())
    }

    fn endpoint_lookup(&self, r: api::NamesRequest) -> Result<api::EndpointReply, Status> {
        let key = r.names.first().cloned().unwrap_or_default();
        let id = self
            .find_endpoint(&key)
            .ok_or_else(|| Status::not_found(format!("No such container: {key}")))?;
        self.endpoint_reply(&id)
    }

    fn container_exited(&mut self, r: api::ContainerExitedRequest) -> Result<api::Empty, Status> {
        let id = self
            .cluster
            .tasks
            .values()
            .find(|t| t.name.as_deref() == Some(&r.name) && t.live())
            .map(|t| t.id.clone())
            .ok_or_else(|| Status::not_found(format!("No such container: {}", r.name)))?;
        let st = if r.code == 0 {
            TStatus::Complete
        } else {
            TStatus::Failed
        };
        self.stop_task(&id, st);
        if let Some(t) = self.cluster.tasks.get_mut(&id) {
            t.exit_code = Some(r.code);
        }
        self.commit()?;
        Ok(api::Empty {})
    }

    fn container_remove(&mut self, r: api::ContainerRemoveRequest) -> Result<api::Empty, Status> {
        let mut ids = Vec::new();
        for n in &r.names {
            let t = self
                .cluster
                .tasks
                .values()
                .find(|t| t.service.is_none() && (t.name.as_deref() == Some(n) || t.id == *n))
                .ok_or_else(|| Status::not_found(format!("No such container: {n}")))?;
            if t.live() && !r.force {
                return Err(Status::failed_precondition(format!(
                    "You cannot remove a running container {n}. Stop the container before attempting removal or force remove"
                )));
            }
            ids.push(t.id.clone());
        }
        for id in ids {
            self.stop_task(&id, TStatus::Shutdown);
            self.cluster.tasks.remove(&id);
            crate::logs::remove(&self.log_path(&id));
        }
        self.commit()?;
        Ok(api::Empty {})
    }

    fn container_list(&self) -> Result<api::ContainerListReply, Status> {
        Ok(api::ContainerListReply {
            containers: self
                .cluster
                .tasks
                .values()
                .filter(|t| t.service.is_none())
                .map(|t| api::Container {
                    id: t.id.clone(),
                    name: t.full_name(),
                    command: t.command.join(" "),
                    status: match (t.status, t.exit_code) {
                        (TStatus::Running, _) => format!("Up since {}", cluster::ago(t.changed)),
                        (_, Some(c)) => format!("Exited ({c}) {}", cluster::ago(t.changed)),
                        (s, None) => s.word().into(),
                    },
                    networks: t.addresses.iter().map(|(n, _)| n.clone()).collect(),
                })
                .collect(),
        })
    }

    // ---- tasks ----

    /// Allocates addresses for task `id` on `nets`, creates its namespace and starts its
    /// command and DNS server. On failure everything it took is given back.
    fn start_task(&mut self, id: &str, nets: &[String]) -> Result<(), String> {
        let mut addresses = Vec::new();
        let release = |c: &mut Cluster, a: &[(String, Ipv4Addr)], gw: Option<Ipv4Addr>| {
            for (n, ip) in a {
                if let Some(net) = c.networks.get_mut(n) {
                    let _ = net.addressing.release(*ip);
                }
            }
            if let Some(g) = gw {
                c.gw_used.remove(&u32::from(g));
            }
        };
        for n in nets {
            let net = self
                .cluster
                .networks
                .get_mut(n)
                .ok_or_else(|| format!("network {n} not found"))?;
            match net.addressing.allocate() {
                Ok(ip) => addresses.push((n.clone(), ip)),
                Err(e) => {
                    release(&mut self.cluster, &addresses, None);
                    return Err(e.to_string());
                }
            }
        }
        let Some(gw_ip) = self.cluster.gw_allocate() else {
            release(&mut self.cluster, &addresses, None);
            return Err("no address left on the gateway bridge".into());
        };
        let rec = self.cluster.tasks[id].clone();
        let mut attachments = Vec::new();
        let mut routes: Vec<Vec<String>> = Vec::new();
        for (i, (n, ip)) in addresses.iter().enumerate() {
            let net = self.cluster.networks.get(n).expect("allocated above");
            attachments.push(Attachment {
                bridge: bridge_name(net.vni.get()),
                ip: *ip,
                prefix: net.addressing.subnet.prefix(),
                mac: swarmgate_dataplane::wire::EthernetAddress::from_ipv4_docker(*ip),
                mtu: net.mtu,
                isolated: true,
            });
            // Traffic from the task's address on an overlay leaves through that overlay's
            // gateway (the data plane): replies to published-port clients keep their path.
            let table = (100 + i).to_string();
            let dev = format!("eth{i}");
            routes.push(
                [
                    "rule",
                    "add",
                    "from",
                    &ip.to_string(),
                    "table",
                    &table,
                    "priority",
                    &table,
                ]
                .map(String::from)
                .to_vec(),
            );
            routes.push(
                [
                    "route",
                    "add",
                    &net.addressing.subnet.to_string(),
                    "dev",
                    &dev,
                    "table",
                    &table,
                ]
                .map(String::from)
                .to_vec(),
            );
            routes.push(
                [
                    "route",
                    "add",
                    "default",
                    "via",
                    &net.addressing.gateway.to_string(),
                    "dev",
                    &dev,
                    "table",
                    &table,
                ]
                .map(String::from)
                .to_vec(),
            );
        }
        let gw_dev = format!("eth{}", attachments.len());
        attachments.push(Attachment {
            bridge: GWBRIDGE.into(),
            ip: gw_ip,
            prefix: GWBRIDGE_PREFIX,
            mac: swarmgate_dataplane::wire::EthernetAddress::from_ipv4_docker(gw_ip),
            mtu: 1500,
            isolated: false,
        });
        routes.push(
            [
                "route",
                "add",
                "default",
                "via",
                &GWBRIDGE_GW.to_string(),
                "dev",
                &gw_dev,
            ]
            .map(String::from)
            .to_vec(),
        );
        let full_name = rec.full_name();
        let mut env = vec![
            ("SWARMGATE_TASK_ID".to_string(), rec.id.clone()),
            ("SWARMGATE_TASK_NAME".to_string(), full_name.clone()),
            ("HOSTNAME".to_string(), full_name.clone()),
        ];
        if let Some(s) = &rec.service {
            env.push(("SWARMGATE_SERVICE_NAME".into(), s.clone()));
            env.push(("SWARMGATE_TASK_SLOT".into(), rec.slot.to_string()));
        }
        let _ = std::fs::create_dir_all(self.cfg.data_root.join("logs"));
        let spec = TaskSpec {
            id: rec.id.clone(),
            command: if rec.service.is_some() || rec.detached {
                rec.command.clone()
            } else {
                Vec::new()
            },
            attachments,
            nameserver: DNS_ADDR,
            host_ns: None,
            log: Some(self.log_path(&rec.id)),
            env,
            workdir: Some(self.cfg.data_root.join("tasks").join(&rec.id)),
            routes,
        };
        let task = match Task::start(spec.clone()) {
            Ok(t) => t,
            Err(e) => {
                release(&mut self.cluster, &addresses, Some(gw_ip));
                return Err(e.to_string());
            }
        };
        let ns = task.namespace().to_owned();
        let pid = task
            .pid()
            .and_then(|p| process_start_time(p).map(|(s, _)| (p, s)));
        self.running.insert(rec.id.clone(), task);
        let dns_nets: Vec<String> = addresses.iter().map(|(n, _)| n.clone()).collect();
        self.start_dns(&rec.id, &ns, dns_nets);
        let t = self.cluster.tasks.get_mut(id).expect("exists");
        t.addresses = addresses;
        t.gw_ip = Some(gw_ip);
        t.spec = Some(spec);
        t.pid = pid;
        t.status = TStatus::Running;
        t.changed = now();
        Ok(())
    }

    fn start_dns(&mut self, id: &str, ns: &str, nets: Vec<String>) {
        let _g = self.rt.enter();
        match self.dns.serve(ns, nets) {
            Ok(h) => {
                self.dns_servers.insert(id.to_owned(), h);
            }
            Err(e) => tracing::warn!(endpoint = %id, "DNS server: {e:#}"),
        }
    }

    /// Records `status` for task `id` and stops it: SIGTERM, up to 3 s, SIGKILL, then its
    /// namespace and veths go — all of that on a blocking thread, never under the state
    /// lock. Its addresses stay taken until then (so no new task gets an address its old
    /// namespace still holds) and are given back by [`Daemon::reap_stopped`].
    fn stop_task(&mut self, id: &str, status: TStatus) {
        if let Some(t) = self.cluster.tasks.get(id).filter(|t| t.live()) {
            tracing::info!(
                service = t.service.as_deref().unwrap_or(""),
                task = %id,
                status = status.word(),
                "task stopping"
            );
        }
        if let Some(h) = self.dns_servers.remove(id) {
            h.abort();
        }
        let was_live = self.cluster.tasks.get(id).is_some_and(|t| t.live());
        let held = if was_live {
            self.cluster.held_addresses(id)
        } else {
            cluster::Held::default()
        };
        match self.running.remove(id) {
            Some(t) => {
                let h = self.rt.spawn_blocking(move || {
                    t.stop(Duration::from_secs(3));
                });
                self.stopping.push((h, held));
            }
            None => self.cluster.release_held(&held),
        }
        if let Some(t) = self.cluster.tasks.get_mut(id) {
            t.desired = Desired::Shutdown;
            if t.live() {
                t.status = status;
                t.changed = now();
            }
            t.pid = None;
        }
    }

    /// Gives back the addresses of tasks whose stop has finished; true if any did.
    fn reap_stopped(&mut self) -> bool {
        let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stopping)
            .into_iter()
            .partition(|(h, _)| h.is_finished());
        self.stopping = pending;
        for (_, held) in &done {
            self.cluster.release_held(held);
        }
        !done.is_empty()
    }

    /// Whether the scheduler would place one more task of `service` on this node, the
    /// only one that runs tasks so far ([`crate::scheduler::place`]); why not if not.
    fn place_here(
        &self,
        node: &str,
        service: &str,
        placement: &crate::scheduler::Placement,
    ) -> Result<(), String> {
        let Some(n) = self.cluster.nodes.iter().find(|n| n.id == node) else {
            return Err("no suitable node".into());
        };
        let live = |t: &&TaskRecord| t.live() && t.node == node;
        let tasks: Vec<&TaskRecord> = self.cluster.tasks.values().filter(live).collect();
        let me = crate::scheduler::Candidate {
            id: &n.id,
            hostname: &n.hostname,
            addr: n.addr,
            role: &n.role,
            availability: &n.availability,
            labels: &n.labels,
            ready: self.dp.health().is_ok(),
            service_tasks: tasks
                .iter()
                .filter(|t| t.service.as_deref() == Some(service))
                .count(),
            tasks: tasks.iter().filter(|t| t.service.is_some()).count(),
        };
        crate::scheduler::place(&[me], placement).map(|_| ())
    }

    /// Brings every service to its spec: records tasks that exited, replaces them (after
    /// [`RESTART_DELAY`]), starts missing replicas where the scheduler allows (else records
    /// them Pending with its reason), stops the tasks of a drained node, extra ones and
    /// those of an older spec, and trims history. Returns true if anything changed.
    pub fn reconcile(&mut self) -> bool {
        let mut changed = self.reap_stopped();
        // 1. Exits.
        let mut exited = Vec::new();
        for (id, t) in self.running.iter_mut() {
            if let TaskState::Exited(code) = t.state() {
                exited.push((id.clone(), code));
            }
        }
        for (id, code) in exited {
            let st = if code == Some(0) {
                TStatus::Complete
            } else {
                TStatus::Failed
            };
            self.stop_task(&id, st);
            if let Some(t) = self.cluster.tasks.get_mut(&id) {
                t.exit_code = code;
                t.desired = if t.service.is_some() {
                    Desired::Shutdown
                } else {
                    t.desired
                };
            }
            changed = true;
        }
        // 2. Services.
        let Some(node) = self.cluster.swarm.as_ref().map(|s| s.node_id.clone()) else {
            return changed;
        };
        let services: Vec<_> = self.cluster.services.iter().cloned().collect();
        // A drained node runs no service tasks (standalone containers stay, as Docker's).
        let drained = self
            .cluster
            .nodes
            .iter()
            .any(|n| n.id == node && n.availability == "drain");
        if drained {
            let ids: Vec<String> = self
                .cluster
                .tasks
                .values()
                .filter(|t| t.service.is_some() && t.live() && t.node == node)
                .map(|t| t.id.clone())
                .collect();
            for id in ids {
                self.stop_task(&id, TStatus::Shutdown);
                changed = true;
            }
        }
        let mut starts = 0usize;
        for s in services {
            let want = self.desired_replicas(s.mode);
            let version = self
                .cluster
                .service_meta
                .get(&s.name)
                .map(|m| m.version)
                .unwrap_or(1);
            let old: Vec<String> = self
                .cluster
                .running_tasks(&s.name)
                .filter(|t| t.version != version || t.slot > want)
                .map(|t| t.id.clone())
                .collect();
            for id in old {
                self.stop_task(&id, TStatus::Shutdown);
                changed = true;
            }
            // Pending tasks of slots no longer wanted, or of an older spec, just go.
            let before = self.cluster.tasks.len();
            self.cluster.tasks.retain(|_, t| {
                !(t.service.as_deref() == Some(&s.name)
                    && t.status == TStatus::Pending
                    && (t.version != version || t.slot > want))
            });
            changed |= self.cluster.tasks.len() != before;
            let placement = s.placement();
            for slot in 1..=want {
                let live = self.cluster.running_tasks(&s.name).any(|t| t.slot == slot);
                if live {
                    continue;
                }
                let pending = self
                    .cluster
                    .tasks
                    .values()
                    .find(|t| {
                        t.service.as_deref() == Some(&s.name)
                            && t.slot == slot
                            && t.status == TStatus::Pending
                    })
                    .map(|t| t.id.clone());
                // The scheduler's choice among the nodes that run tasks — this one, until
                // workers get a task runtime; its answer is SwarmKit's.
                if let Err(why) = self.place_here(&node, &s.name, &placement) {
                    match pending.and_then(|id| self.cluster.tasks.get_mut(&id)) {
                        Some(t) if t.error.as_deref() == Some(&why) => {}
                        Some(t) => {
                            t.error = Some(why);
                            t.changed = now();
                            changed = true;
                        }
                        None => {
                            let id = random_id(8);
                            self.cluster.tasks.insert(
                                id.clone(),
                                TaskRecord {
                                    node: String::new(),
                                    status: TStatus::Pending,
                                    error: Some(why.clone()),
                                    ..TaskRecord::new(id, &s.name, slot, version, &s.command)
                                },
                            );
                            tracing::info!(service = %s.name, slot, "task pending: {why}");
                            changed = true;
                        }
                    }
                    continue;
                }
                if let Some(id) = pending {
                    self.cluster.tasks.remove(&id);
                    changed = true;
                }
                if starts == STARTS_PER_ROUND {
                    changed = true; // more to do: the next round goes on
                    break;
                }
                let last_end = self
                    .cluster
                    .tasks
                    .values()
                    .filter(|t| t.service.as_deref() == Some(&s.name) && t.slot == slot)
                    .filter(|t| {
                        matches!(
                            t.status,
                            TStatus::Failed | TStatus::Rejected | TStatus::Complete
                        )
                    })
                    .map(|t| t.changed)
                    .max();
                if last_end.is_some_and(|e| now() < e + RESTART_DELAY) {
                    continue;
                }
                let id = random_id(8);
                self.cluster.tasks.insert(
                    id.clone(),
                    TaskRecord {
                        node: node.clone(),
                        ..TaskRecord::new(id.clone(), &s.name, slot, version, &s.command)
                    },
                );
                let nets: Vec<String> = s.networks.iter().map(|(n, _)| n.clone()).collect();
                starts += 1;
                match self.start_task(&id, &nets) {
                    Ok(()) => {
                        tracing::info!(node = %node, service = %s.name, slot, task = %id, "task started")
                    }
                    Err(e) => {
                        tracing::warn!(node = %node, service = %s.name, slot, task = %id, "task rejected: {e}");
                        let t = self.cluster.tasks.get_mut(&id).expect("inserted");
                        t.desired = Desired::Shutdown;
                        t.error = Some(e);
                    }
                }
                changed = true;
            }
            // History: at most HISTORY ended tasks per slot.
            let mut ended: Vec<(u32, u64, String)> = self
                .cluster
                .tasks
                .values()
                .filter(|t| {
                    t.service.as_deref() == Some(&s.name)
                        && !t.live()
                        && t.status != TStatus::Pending
                })
                .map(|t| (t.slot, t.created, t.id.clone()))
                .collect();
            ended.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            let mut per_slot: HashMap<u32, usize> = HashMap::new();
            for (slot, _, id) in ended {
                let k = per_slot.entry(slot).or_default();
                *k += 1;
                if *k > HISTORY || slot > want {
                    self.cluster.tasks.remove(&id);
                    crate::logs::remove(&self.log_path(&id));
                    let _ = std::fs::remove_dir_all(self.cfg.data_root.join("tasks").join(&id));
                    changed = true;
                }
            }
        }
        changed
    }

    /// After a restart: adopts every task whose process still runs (and endpoint whose
    /// namespace is still there), restarts their DNS servers; the others are recorded as
    /// failed, cleaned up, and replaced by the reconcile loop.
    fn restore(&mut self) -> anyhow::Result<()> {
        if self.cluster.swarm.is_some() {
            Self::ensure_gwbridge()?;
        }
        let live: Vec<TaskRecord> = self
            .cluster
            .tasks
            .values()
            .filter(|t| t.live())
            .cloned()
            .collect();
        for t in live {
            let Some(spec) = t.spec.clone() else { continue };
            let ns_exists = std::path::Path::new("/run/netns")
                .join(Task::namespace_of(&t.id))
                .exists();
            let alive = match (spec.command.is_empty(), t.pid) {
                (true, _) => ns_exists,
                (false, Some((pid, start))) => {
                    ns_exists && matches!(process_start_time(pid), Some((s, true)) if s == start)
                }
                (false, None) => false,
            };
            let task = Task::adopt(spec, t.pid);
            if alive {
                self.running.insert(t.id.clone(), task);
                let nets = t.addresses.iter().map(|(n, _)| n.clone()).collect();
                self.start_dns(&t.id, &Task::namespace_of(&t.id), nets);
            } else {
                task.stop(Duration::from_millis(100));
                self.cluster.release_addresses(&t.id);
                let r = self.cluster.tasks.get_mut(&t.id).expect("exists");
                r.status = TStatus::Failed;
                r.desired = Desired::Shutdown;
                r.error = Some("task ended while the daemon was stopped".into());
                r.changed = now();
                r.pid = None;
            }
        }
        Ok(())
    }

    /// Leaves every task running for the next daemon and saves the state; tasks being
    /// stopped are waited for (3 s at most each, in parallel) and their addresses freed.
    fn shutdown(&mut self) {
        for (h, held) in std::mem::take(&mut self.stopping) {
            let _ = self.rt.block_on(h);
            self.cluster.release_held(&held);
        }
        for (_, h) in self.dns_servers.drain() {
            h.abort();
        }
        for (id, t) in self.running.drain() {
            let p = t.detach();
            if let Some(r) = self.cluster.tasks.get_mut(&id) {
                if p.is_some() {
                    r.pid = p;
                }
            }
        }
        if let Err(e) = self.store.save(&self.cluster) {
            tracing::error!("saving state at exit: {e:#}");
        }
    }
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// The gRPC service: each call runs on a blocking thread under the daemon's lock.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Mutex<Daemon>>,
    runtime: Arc<tokio::sync::Mutex<crate::runtime::ClusterRuntime>>,
}

/// The daemon's state, even after a panic poisoned its lock: every path that changes it
/// either completes or (through `Api::call`) restores it, so it is consistent to go on.
fn lock_state(m: &Mutex<Daemon>) -> std::sync::MutexGuard<'_, Daemon> {
    m.lock().unwrap_or_else(|e| {
        m.clear_poison();
        e.into_inner()
    })
}

impl Api {
    /// Runs `f` on the daemon's state on a blocking thread, all or nothing.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Daemon) -> Result<T, Status> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        let d = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = lock_state(&d);
            // Every verb is all or nothing: a refusal before the new state is saved leaves
            // memory exactly as it was (and so as on disk and in the data plane), however
            // far the handler got. Handlers validate first anyway; this makes it structural.
            let before = g.cluster.clone();
            let saves = g.saves;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut g)))
                .unwrap_or_else(|p| {
                    let what = p
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| p.downcast_ref::<&str>().copied())
                        .unwrap_or("panic");
                    tracing::error!("a request failed with an internal error: {what}");
                    Err(Status::internal(format!("internal error: {what}")))
                });
            if r.is_err() && g.saves == saves {
                g.cluster = before;
            }
            r
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map(Response::new)
    }
}

#[tonic::async_trait]
impl api::swarmgate_server::Swarmgate for Api {
    async fn swarm_init(
        &self,
        r: Request<api::SwarmInitRequest>,
    ) -> Result<Response<api::SwarmInitReply>, Status> {
        let reply = self.call(move |d| d.swarm_init(r.into_inner())).await?;
        self.runtime.lock().await.ensure(self).await;
        Ok(reply)
    }
    async fn swarm_join(
        &self,
        r: Request<api::SwarmJoinRequest>,
    ) -> Result<Response<api::SwarmJoinReply>, Status> {
        let r = r.into_inner();
        let manager = crate::agent::manager_addr(&r.remote_addr).map_err(bad)?;
        let plan = r.clone();
        let me = self.call(move |d| d.join_plan(&plan)).await?.into_inner();
        let joined = crate::agent::join(manager, &r.token, &me)
            .await
            .map_err(Status::failed_precondition)?;
        let reply = self
            .call(move |d| d.finish_join(joined, me, &r.listen_addr))
            .await?;
        self.runtime.lock().await.ensure(self).await;
        Ok(reply)
    }
    async fn swarm_join_token(
        &self,
        r: Request<api::JoinTokenRequest>,
    ) -> Result<Response<api::JoinTokenReply>, Status> {
        self.call(move |d| d.join_token(r.into_inner())).await
    }
    async fn swarm_leave(
        &self,
        r: Request<api::SwarmLeaveRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        let reply = self.call(move |d| d.swarm_leave(r.into_inner())).await?;
        self.runtime.lock().await.ensure(self).await;
        Ok(reply)
    }
    async fn node_list(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<api::NodeListReply>, Status> {
        self.call(|d| d.node_list()).await
    }
    async fn node_inspect(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::JsonReply>, Status> {
        self.call(move |d| d.node_inspect(r.into_inner())).await
    }
    async fn node_update(
        &self,
        r: Request<api::NodeUpdateRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        self.call(move |d| d.node_update(r.into_inner())).await
    }
    async fn node_remove(
        &self,
        r: Request<api::NodeRemoveRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        self.call(move |d| d.node_remove(r.into_inner())).await
    }
    async fn swarm_update(
        &self,
        r: Request<api::SwarmUpdateRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        self.call(move |d| d.swarm_update(r.into_inner())).await
    }
    async fn network_create(
        &self,
        r: Request<api::NetworkCreateRequest>,
    ) -> Result<Response<api::IdReply>, Status> {
        self.call(move |d| d.network_create(r.into_inner())).await
    }
    async fn network_list(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<api::NetworkListReply>, Status> {
        self.call(|d| d.network_list()).await
    }
    async fn network_inspect(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::JsonReply>, Status> {
        self.call(move |d| d.network_inspect(r.into_inner())).await
    }
    async fn network_remove(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        self.call(move |d| d.network_remove(r.into_inner())).await
    }
    async fn service_create(
        &self,
        r: Request<api::ServiceCreateRequest>,
    ) -> Result<Response<api::IdReply>, Status> {
        self.call(move |d| d.service_create(r.into_inner())).await
    }
    async fn service_list(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<api::ServiceListReply>, Status> {
        self.call(|d| d.service_list()).await
    }
    async fn service_ps(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::TaskListReply>, Status> {
        self.call(move |d| d.service_ps(r.into_inner())).await
    }
    async fn service_inspect(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::JsonReply>, Status> {
        self.call(move |d| d.service_inspect(r.into_inner())).await
    }
    async fn service_update(
        &self,
        r: Request<api::ServiceUpdateRequest>,
    ) -> Result<Response<api::IdReply>, Status> {
        self.call(move |d| d.service_update(r.into_inner())).await
    }
    async fn service_remove(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        self.call(move |d| d.service_remove(r.into_inner())).await
    }
    type ServiceLogsStream = tokio_stream::wrappers::ReceiverStream<Result<api::LogsReply, Status>>;

    async fn service_logs(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        let sources = self
            .call(move |d| d.service_log_sources(r.into_inner()))
            .await?
            .into_inner();
        // Streamed in batches of lines, a line at a time from disk: memory stays bounded
        // whatever the logs hold, and the state lock is not held while reading.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut batch = Vec::new();
            let mut open = true;
            for (prefix, path) in sources {
                crate::logs::for_each_line(&path, crate::logs::MAX_FILES, |l| {
                    batch.push(format!("{prefix}    | {l}"));
                    if batch.len() == 512 {
                        let lines = std::mem::take(&mut batch);
                        open = tx.blocking_send(Ok(api::LogsReply { lines })).is_ok();
                    }
                    open
                });
                if !open {
                    return; // the client went away
                }
            }
            if !batch.is_empty() {
                let _ = tx.blocking_send(Ok(api::LogsReply { lines: batch }));
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
    async fn container_run(
        &self,
        r: Request<api::ContainerRunRequest>,
    ) -> Result<Response<api::EndpointReply>, Status> {
        self.call(move |d| d.container_run(r.into_inner())).await
    }
    async fn container_exited(
        &self,
        r: Request<api::ContainerExitedRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        self.call(move |d| d.container_exited(r.into_inner())).await
    }
    async fn container_remove(
        &self,
        r: Request<api::ContainerRemoveRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        self.call(move |d| d.container_remove(r.into_inner())).await
    }
    async fn container_list(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<api::ContainerListReply>, Status> {
        self.call(|d| d.container_list()).await
    }
    async fn endpoint_lookup(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::EndpointReply>, Status> {
        self.call(move |d| d.endpoint_lookup(r.into_inner())).await
    }
    async fn stats(&self, _: Request<api::Empty>) -> Result<Response<api::JsonReply>, Status> {
        self.call(|d| {
            Ok(api::JsonReply {
                json: serde_json::to_string_pretty(&d.dp.stats()).expect("json"),
            })
        })
        .await
    }
}

/// Runs the daemon until SIGINT/SIGTERM: restores the state, serves the API, reconciles.
pub fn run(cfg: DaemonConfig, dp: Box<dyn DataPlane>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg, dp))
}

async fn serve(cfg: DaemonConfig, dp: Box<dyn DataPlane>) -> anyhow::Result<()> {
    let store = Store::open(&cfg.data_root.join("state.redb"))?;
    let cluster = store.load()?.unwrap_or_default();
    let dns = Dns::new(cfg.dns_upstream);
    let mut d = Daemon {
        cfg: cfg.clone(),
        cluster,
        running: HashMap::new(),
        dns_servers: HashMap::new(),
        dp,
        store,
        dns,
        rt: tokio::runtime::Handle::current(),
        applied: None,
        saves: 0,
        stopping: Vec::new(),
        heartbeats: HashMap::new(),
    };
    let d = tokio::task::spawn_blocking(move || -> anyhow::Result<Daemon> {
        d.upgrade_swarm()
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        d.restore().context("restoring tasks")?;
        d.reconcile();
        d.commit().map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        Ok(d)
    })
    .await??;
    let inner = Arc::new(Mutex::new(d));
    let api = Api {
        inner: inner.clone(),
        runtime: Default::default(),
    };

    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    let listener = tokio::net::UnixListener::bind(&cfg.socket)
        .with_context(|| format!("listening on {}", cfg.socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o660))?;
    }
    tracing::info!(socket = %cfg.socket.display(), "daemon listening");

    // Reconcile, data-plane housekeeping, and the cluster runtime.
    let bg = inner.clone();
    let bg_api = api.clone();
    let housekeeping = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            bg_api.runtime.lock().await.ensure(&bg_api).await;
            let d = bg.clone();
            let r = tokio::task::spawn_blocking(move || {
                let logs = {
                    let mut d = lock_state(&d);
                    if let Err(e) = d.renew_own_certificate() {
                        tracing::error!("renewing this manager's certificate: {}", e.message());
                    }
                    if d.reconcile() {
                        if let Err(e) = d.commit() {
                            tracing::error!("{}", e.message());
                        }
                    }
                    if let Err(e) = d.dp.tick() {
                        tracing::error!("data plane: {e:#}");
                        if e.downcast_ref::<crate::dataplane::Fatal>().is_some() {
                            // Never a silent half-dead node: exit so the supervisor
                            // restarts the daemon, which adopts the running tasks.
                            tracing::error!("exiting on a fatal data-plane error");
                            std::process::exit(70);
                        }
                    }
                    d.log_paths()
                };
                // Log rotation is file I/O: done with the state lock released.
                for p in logs {
                    if let Err(e) =
                        crate::logs::rotate(&p, crate::logs::MAX_SIZE, crate::logs::MAX_FILES)
                    {
                        tracing::warn!(file = %p.display(), "rotating a task log: {e}");
                    }
                }
            })
            .await;
            if let Err(e) = r {
                // A panic in housekeeping is logged and survived: the next round runs on
                // the recovered state.
                tracing::error!("housekeeping failed, continuing: {e}");
            }
        }
    });

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    tonic::transport::Server::builder()
        .add_service(api::swarmgate_server::SwarmgateServer::new(api.clone()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await?;
    housekeeping.abort();
    api.runtime.lock().await.stop().await;
    let _ = std::fs::remove_file(&cfg.socket);
    let d = inner.clone();
    tokio::task::spawn_blocking(move || {
        lock_state(&d).shutdown();
    })
    .await?;
    tracing::info!("daemon stopped (tasks keep running)");
    Ok(())
}
