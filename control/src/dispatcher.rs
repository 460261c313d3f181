//! The dispatcher's content (SwarmKit's `manager/dispatcher`): what the manager tells a
//! node — its [`Assignment`] — and what it learns from the node's task reports. Pure
//! functions over the [`Cluster`]; the 2377 service ([`crate::remote`]) carries them and
//! the node's runtime (`daemon::assigned`) acts on them.
//!
//! SwarmKit sends a node its tasks, the networks and secrets they need, and leaves the
//! endpoints of other nodes to libnetwork's gossip (networkdb). So does swarmgate: the
//! assignment carries the node's tasks (each with its addresses and its service's VIP on
//! each network), the networks it has, its own endpoints and the services' VIPs and names
//! ([`Cluster::node_state_for`], [`Cluster::dns_view`]); the other nodes' endpoints, the
//! VIPs' backends and the tasks' names come from the gossiped tables
//! ([`crate::gossip::program`]). A node applies one consistent set, complete each time
//! (SwarmKit's `AssignmentsMessage_COMPLETE`); there are no incremental sets.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::cluster::{bridge_name, now, Cluster, Desired, DnsView, Status, TaskRecord};
use crate::dataplane::NodeState;
use crate::ipam::Subnet;

/// A task's place on one overlay network, as its node needs it to attach the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAttachment {
    /// The network's name.
    pub network: String,
    /// Its ID (names its gossiped tables).
    #[serde(default)]
    pub network_id: String,
    /// Whether it is the ingress network (no service discovery there).
    #[serde(default)]
    pub ingress: bool,
    /// The task's service's VIP on it (VIP endpoint mode), published with the task's
    /// endpoint so every node balances over it.
    #[serde(default)]
    pub vip: Option<Ipv4Addr>,
    /// Its VNI (names the node's bridge for it).
    pub vni: u32,
    /// The task's address.
    pub ip: Ipv4Addr,
    /// The network's subnet.
    pub subnet: Subnet,
    /// Its gateway (the data plane's router address).
    pub gateway: Ipv4Addr,
    /// Its MTU.
    pub mtu: u16,
    /// The UDP target ports of the task's service published through this network (the
    /// ingress network's in ingress mode, the task's first network's in host mode): the
    /// task's replies from them must leave through this network's gateway even from a
    /// socket bound to every address (see `daemon/tasks.rs` `start_task`).
    #[serde(default)]
    pub udp_published: Vec<u16>,
}

impl NetAttachment {
    /// The node's bridge for the network.
    pub fn bridge(&self) -> String {
        bridge_name(self.vni)
    }
}

/// One task as its node runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedTask {
    /// Task ID.
    pub id: String,
    /// Its service (`None`: a standalone container).
    pub service: Option<String>,
    /// Slot.
    pub slot: u32,
    /// Spec version.
    pub version: u64,
    /// Container name (standalone).
    pub name: Option<String>,
    /// The name its DNS entry has (`service.slot.id`, or the container's name).
    #[serde(default)]
    pub full_name: String,
    /// A standalone container run detached (its command runs; otherwise only its
    /// endpoint exists, for `exec`).
    #[serde(default)]
    pub detached: bool,
    /// The command.
    pub command: Vec<String>,
    /// Run it, or stop it.
    pub desired: Desired,
    /// Its networks, in attachment order.
    pub networks: Vec<NetAttachment>,
}

/// A network a node has, as `network ls` on that node shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedNetwork {
    /// Its ID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its subnet.
    pub subnet: Subnet,
    /// Its VNI.
    pub vni: u32,
    /// Whether it is the ingress network.
    #[serde(default)]
    pub ingress: bool,
}

/// Everything a node is told: its tasks, its networks, its data plane's state, its DNS's
/// names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Tasks placed on the node that hold addresses (to run, or to stop).
    pub tasks: Vec<AssignedTask>,
    /// The networks it has (those of its tasks: Docker creates them lazily).
    #[serde(default)]
    pub networks: Vec<AssignedNetwork>,
    /// The node's data plane.
    pub state: NodeState,
    /// The names its embedded DNS answers, on the networks it has.
    pub dns: DnsView,
    /// Every manager's 2377 address (SwarmKit's session `Managers` list): where the node
    /// turns when its manager goes away.
    #[serde(default)]
    pub managers: Vec<String>,
    /// The role the node should have (`node promote`/`demote`): a node whose certificate
    /// says otherwise renews it (SwarmKit's `DesiredRole`).
    #[serde(default)]
    pub role: String,
    /// The gossip keyring and every node's gossip address.
    #[serde(default)]
    pub gossip: crate::gossip::Keyring,
    /// Every node's gossip address, `ip:7946`.
    #[serde(default)]
    pub gossip_peers: Vec<String>,
}

/// What a node reports about one of its tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Task ID.
    pub id: String,
    /// Its state on the node.
    pub status: Status,
    /// Exit code, when it ended.
    pub exit_code: Option<i32>,
    /// Why it failed or was rejected.
    pub error: Option<String>,
}

impl Cluster {
    /// Where task `t` is attached, from its addresses and the networks' settings.
    pub fn attachments(&self, t: &TaskRecord) -> Vec<NetAttachment> {
        let svc = t.service.as_deref().and_then(|s| self.services.get(s));
        let first = t.addresses.first().map(|(n, _)| n.as_str());
        t.addresses
            .iter()
            .filter_map(|(name, ip)| {
                let n = self.networks.get(name)?;
                let mut udp_published: Vec<u16> = svc
                    .iter()
                    .flat_map(|s| s.ports.iter())
                    .filter(|p| {
                        p.published.is_some() && p.protocol == crate::publish::Protocol::Udp
                    })
                    .filter(|p| match p.mode {
                        crate::publish::PublishMode::Ingress => n.ingress,
                        crate::publish::PublishMode::Host => first == Some(name.as_str()),
                    })
                    .map(|p| p.target)
                    .collect();
                // One rule per port (a second identical rule is refused: EEXIST).
                udp_published.sort_unstable();
                udp_published.dedup();
                let vip = t
                    .service
                    .as_deref()
                    .and_then(|s| self.services.get(s))
                    .filter(|s| s.endpoint_mode == crate::service::EndpointMode::Vip)
                    .and_then(|s| s.networks.iter().find(|(m, _)| m == name))
                    .and_then(|(_, v)| *v);
                Some(NetAttachment {
                    network: name.clone(),
                    network_id: self
                        .network_meta
                        .get(name)
                        .map(|m| m.id.clone())
                        .unwrap_or_default(),
                    ingress: n.ingress,
                    vip,
                    vni: n.vni.get(),
                    ip: *ip,
                    subnet: n.addressing.subnet,
                    gateway: n.addressing.gateway,
                    mtu: n.mtu,
                    udp_published,
                })
            })
            .collect()
    }
}

/// Node `node`'s assignment.
pub fn assignment(c: &Cluster, node: &str) -> Assignment {
    let tasks = c
        .tasks
        .values()
        .filter(|t| t.node == node && t.active())
        .map(|t| AssignedTask {
            id: t.id.clone(),
            service: t.service.clone(),
            slot: t.slot,
            version: t.version,
            name: t.name.clone(),
            full_name: t.full_name(),
            detached: t.detached,
            command: t.command.clone(),
            desired: t.desired,
            networks: c.attachments(t),
        })
        .collect();
    let state = c.node_state_for(node);
    let mut dns = c.dns_view();
    dns.names
        .retain(|net, _| state.networks.iter().any(|n| n.name == *net));
    let networks = state
        .networks
        .iter()
        .filter_map(|n| {
            let net = c.networks.get(&n.name)?;
            Some(AssignedNetwork {
                ingress: net.ingress,
                id: c
                    .network_meta
                    .get(&n.name)
                    .map(|m| m.id.clone())
                    .unwrap_or_default(),
                name: n.name.clone(),
                subnet: net.addressing.subnet,
                vni: n.vni,
            })
        })
        .collect();
    Assignment {
        tasks,
        networks,
        state,
        dns,
        managers: Vec::new(),
        role: c
            .nodes
            .iter()
            .find(|n| n.id == node)
            .map(|n| n.role.clone())
            .unwrap_or_default(),
        gossip: c
            .swarm
            .as_ref()
            .map(|s| s.gossip.clone())
            .unwrap_or_default(),
        gossip_peers: gossip_peers(c),
    }
}

/// Every node's gossip address.
pub fn gossip_peers(c: &Cluster) -> Vec<String> {
    c.nodes
        .iter()
        .map(|n| format!("{}:{}", n.addr, crate::gossip::PORT))
        .collect()
}

/// Applies node `node`'s reports to its tasks: a placed task that runs becomes Running;
/// one that ended, failed to start or was stopped records that, stops being wanted (the
/// orchestrator replaces it) and gives its addresses back. Reports about another node's
/// tasks, or tasks the manager no longer counts as running, change nothing. Returns true
/// if anything changed.
pub fn apply_reports(c: &mut Cluster, node: &str, reports: &[Report]) -> bool {
    let mut changed = false;
    for r in reports {
        let Some(t) = c.tasks.get_mut(&r.id) else {
            continue;
        };
        if t.node != node || !t.active() {
            continue;
        }
        match r.status {
            Status::Running if t.status == Status::Assigned => {
                t.status = Status::Running;
                t.changed = now();
                changed = true;
            }
            Status::Complete | Status::Failed | Status::Shutdown | Status::Rejected => {
                t.status = r.status;
                t.exit_code = r.exit_code;
                if r.error.is_some() {
                    t.error = r.error.clone();
                }
                t.changed = now();
                if t.service.is_some() {
                    t.desired = Desired::Shutdown;
                }
                let removed = t.service.is_none() && t.desired == Desired::Shutdown;
                let id = t.id.clone();
                c.release_addresses(&id);
                // A standalone container removed (`DetachNetwork`) is gone once stopped.
                if removed {
                    c.tasks.remove(&id);
                }
                changed = true;
            }
            _ => {}
        }
    }
    changed
}

/// The state a node reported, by name ([`Status::word`]); `None` for one a node may not
/// report.
pub fn parse_status(s: &str) -> Option<Status> {
    Some(match s {
        "Running" => Status::Running,
        "Complete" => Status::Complete,
        "Failed" => Status::Failed,
        "Shutdown" => Status::Shutdown,
        "Rejected" => Status::Rejected,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeRecord;
    use crate::network::CreateNetwork;

    fn node(id: &str, role: &str, addr: [u8; 4]) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            hostname: id.into(),
            role: role.into(),
            manager_status: String::new(),
            availability: "active".into(),
            addr: addr.into(),
            labels: Default::default(),
            datapath_addr: None,
        }
    }

    fn cluster() -> Cluster {
        let mut c = Cluster::default();
        c.networks
            .create(&CreateNetwork {
                name: "net".into(),
                driver: "overlay".into(),
                ..Default::default()
            })
            .unwrap();
        c.nodes = vec![
            node("m", "manager", [192, 168, 1, 1]),
            node("w", "worker", [192, 168, 1, 2]),
            node("x", "worker", [192, 168, 1, 3]),
        ];
        c.nodes[1].datapath_addr = Some([10, 9, 9, 2].into());
        for (id, n) in [("a", "m"), ("b", "w")] {
            let ip = c
                .networks
                .get_mut("net")
                .unwrap()
                .addressing
                .allocate()
                .unwrap();
            let mut t = TaskRecord::new(id.into(), "web", 1, 1, &["x".into()]);
            t.node = n.into();
            t.status = Status::Running;
            t.addresses = vec![("net".into(), ip)];
            c.tasks.insert(id.into(), t);
        }
        c
    }

    #[test]
    fn each_node_sees_its_tasks_as_local_and_the_others_behind_their_vtep() {
        let c = cluster();
        let a = c.tasks["a"].addresses[0].1;
        let b = c.tasks["b"].addresses[0].1;
        let w = assignment(&c, "w");
        assert_eq!(w.tasks.len(), 1);
        assert_eq!(w.tasks[0].id, "b");
        assert_eq!(w.tasks[0].networks[0].ip, b);
        let net = &w.state.networks[0];
        assert_eq!(net.hosts.iter().map(|h| h.ip).collect::<Vec<_>>(), vec![b]);
        // The others' endpoints come from the gossiped tables, behind the VTEP each node
        // publishes (the worker's data-path address, the manager's address).
        assert!(net.remote.is_empty());
        use crate::gossip::{program, table::Db};
        let m = assignment(&c, "m");
        let vtep = |n: &str| c.nodes.iter().find(|x| x.id == n).unwrap().vtep();
        let own_m = program::own_entries(&m, |_| true, vtep("m"));
        let own_w = program::own_entries(&w, |_| true, vtep("w"));
        let (mut dm, mut dw) = (Db::new("m", 1), Db::new("w", 1));
        dw.member_up("m", 1, vtep("m"));
        dm.member_up("w", 1, vtep("w"));
        for e in dm.publish(&own_m, 0) {
            dw.apply(&e, 0);
        }
        for e in dw.publish(&own_w, 0) {
            dm.apply(&e, 0);
        }
        let mut w2 = w.clone();
        program::program(&mut w2.state, &mut w2.dns, &w.networks, &own_w, &dw.view());
        let net = &w2.state.networks[0];
        assert_eq!(net.remote.len(), 1);
        assert_eq!(net.remote[0].host.ip, a);
        assert_eq!(net.remote[0].vtep, Ipv4Addr::new(192, 168, 1, 1));
        let mut m2 = m.clone();
        program::program(&mut m2.state, &mut m2.dns, &m.networks, &own_m, &dm.view());
        assert_eq!(
            m2.state.networks[0].remote[0].vtep,
            Ipv4Addr::new(10, 9, 9, 2)
        );
        assert_eq!(
            m2.dns
                .resolve(&["net".into()], "tasks.web")
                .map(|v| v.len()),
            Some(2)
        );
        assert_eq!(w.networks.len(), 1);
        assert_eq!(w.networks[0].name, "net");
        // A worker without a task on the network does not have it.
        assert!(assignment(&c, "x").state.networks.is_empty());
        assert!(assignment(&c, "x").networks.is_empty());
        assert!(assignment(&c, "x").dns.names.is_empty());
    }

    #[test]
    fn a_task_told_to_stop_leaves_the_others_tables_at_once() {
        let mut c = cluster();
        c.tasks.get_mut("b").unwrap().desired = Desired::Shutdown;
        // Its node still has it, to stop it, and no longer publishes its endpoint.
        let w = assignment(&c, "w");
        assert_eq!(w.tasks[0].desired, Desired::Shutdown);
        assert!(crate::gossip::program::own_entries(&w, |_| true, Ipv4Addr::LOCALHOST).is_empty());
    }

    #[test]
    fn reports_move_only_the_reporting_nodes_tasks() {
        let mut c = cluster();
        let b = c.tasks["b"].addresses[0].1;
        let failed = Report {
            id: "b".into(),
            status: Status::Failed,
            exit_code: Some(3),
            error: None,
        };
        // Another node cannot end the worker's task.
        assert!(!apply_reports(&mut c, "x", std::slice::from_ref(&failed)));
        assert_eq!(c.tasks["b"].status, Status::Running);
        assert!(apply_reports(&mut c, "w", &[failed]));
        let t = &c.tasks["b"];
        assert_eq!(
            (t.status, t.exit_code, t.desired),
            (Status::Failed, Some(3), Desired::Shutdown)
        );
        // Its address is free again.
        let n = c.networks.get_mut("net").unwrap();
        assert_eq!(n.addressing.allocate().unwrap(), b);
        // Reports about ended tasks change nothing.
        let again = Report {
            id: "b".into(),
            status: Status::Running,
            exit_code: None,
            error: None,
        };
        assert!(!apply_reports(&mut c, "w", &[again]));
        assert_eq!(parse_status("Assigned"), None);
        assert_eq!(
            parse_status(Status::Complete.word()),
            Some(Status::Complete)
        );
    }
}
