//! What this node has and no other node needs: its tasks as they run here (namespace
//! spec, process, gateway-bridge address), the gateway-bridge addresses in use, and on a
//! worker its last assignment. Persisted next to the cluster state but never part of it:
//! the cluster state ([`crate::cluster::Cluster`]) is what every manager would hold alike,
//! this is one node's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::cluster::{GWBRIDGE_NET, GWBRIDGE_PREFIX};
use crate::dispatcher::Assignment;
use crate::task::TaskSpec;

/// One task as it runs on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalTask {
    /// How it was started (so a restarted daemon can adopt it and clean it up).
    pub spec: TaskSpec,
    /// Process id and start time, while its command runs.
    pub pid: Option<(u32, u64)>,
    /// Its address on the gateway bridge.
    pub gw_ip: Ipv4Addr,
}

/// This node's place in a swarm: who it is, how it proves it and where it talks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The cluster's ID (its certificate's O).
    pub cluster_id: String,
    /// This node's ID (its certificate's CN).
    pub node_id: String,
    /// `manager` or `worker`, as its certificate says.
    pub role: String,
    /// Address the other nodes reach it at (2377).
    pub advertise_addr: Ipv4Addr,
    /// Address for VXLAN traffic.
    pub datapath_addr: Ipv4Addr,
    /// The cluster's root certificate, PEM (what it trusts).
    pub root_ca_cert: String,
    /// Its certificate, PEM.
    pub node_cert: String,
    /// Its key, PEM.
    pub node_key: String,
    /// Where a manager listens (`--listen-addr`, 0.0.0.0:2377 by default).
    pub listen_addr: String,
    /// The manager a worker keeps its session with (`ip:port`).
    pub manager_addr: Option<String>,
    /// The swarm's VXLAN UDP port, as it joined (a manager's is the cluster's).
    pub data_path_port: u16,
    /// Raised by `swarm init --force-new-cluster`: this manager's Raft group starts over
    /// (a new log, itself its only member) from the state it holds.
    #[serde(default)]
    pub raft_epoch: u64,
}

impl Membership {
    /// Whether this node is a manager.
    pub fn is_manager(&self) -> bool {
        self.role == "manager"
    }
}

/// This node's own state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeLocal {
    /// Its place in the swarm, when it is in one.
    #[serde(default)]
    pub swarm: Option<Membership>,
    /// The tasks started here, by task ID, while they hold a namespace.
    pub tasks: BTreeMap<String, LocalTask>,
    /// Gateway-bridge addresses in use.
    pub gw_used: BTreeSet<u32>,
    /// On a worker: what its manager assigned it last.
    pub assignment: Option<Assignment>,
}

impl NodeLocal {
    /// Allocates an address on the gateway bridge.
    pub fn gw_allocate(&mut self) -> Option<Ipv4Addr> {
        let base = u32::from(GWBRIDGE_NET);
        let a = (2..(1u32 << (32 - GWBRIDGE_PREFIX)) - 1)
            .map(|i| base + i)
            .find(|a| !self.gw_used.contains(a))?;
        self.gw_used.insert(a);
        Some(a.into())
    }

    /// Gives a gateway-bridge address back.
    pub fn gw_release(&mut self, a: Ipv4Addr) {
        self.gw_used.remove(&u32::from(a));
    }

    /// Reads the node-local parts out of a state stored before they were split from the
    /// cluster state (tasks' `spec`, `pid`, `gw_ip`; `gw_used`; `assignment`).
    pub fn from_legacy(cluster: &serde_json::Value) -> NodeLocal {
        let mut l = NodeLocal::default();
        if let Some(tasks) = cluster.get("tasks").and_then(|t| t.as_object()) {
            for (id, t) in tasks {
                let spec = t
                    .get("spec")
                    .and_then(|s| serde_json::from_value::<TaskSpec>(s.clone()).ok());
                let gw_ip = t
                    .get("gw_ip")
                    .and_then(|g| serde_json::from_value::<Ipv4Addr>(g.clone()).ok());
                let pid = t
                    .get("pid")
                    .and_then(|p| serde_json::from_value::<Option<(u32, u64)>>(p.clone()).ok())
                    .flatten();
                if let (Some(spec), Some(gw_ip)) = (spec, gw_ip) {
                    l.tasks.insert(id.clone(), LocalTask { spec, pid, gw_ip });
                }
            }
        }
        if let Some(u) = cluster
            .get("gw_used")
            .and_then(|u| serde_json::from_value::<BTreeSet<u32>>(u.clone()).ok())
        {
            l.gw_used = u;
        }
        l.assignment = cluster
            .get("assignment")
            .and_then(|a| serde_json::from_value::<Option<Assignment>>(a.clone()).ok())
            .flatten();
        l.swarm = legacy_membership(cluster);
        l
    }
}

/// The membership inside a cluster state stored before it was split out (the swarm
/// record held this node's ID, role, addresses, certificate and key).
pub fn legacy_membership(cluster: &serde_json::Value) -> Option<Membership> {
    #[derive(Deserialize)]
    struct Legacy {
        id: String,
        node_id: String,
        advertise_addr: Ipv4Addr,
        datapath_addr: Ipv4Addr,
        #[serde(default = "manager")]
        role: String,
        #[serde(default)]
        root_ca_cert: String,
        #[serde(default)]
        node_cert: String,
        #[serde(default)]
        node_key: String,
        #[serde(default = "listen")]
        listen_addr: String,
        #[serde(default)]
        manager_addr: Option<String>,
        #[serde(default = "port")]
        data_path_port: u16,
    }
    fn manager() -> String {
        "manager".into()
    }
    fn listen() -> String {
        format!("0.0.0.0:{}", crate::remote::PORT)
    }
    fn port() -> u16 {
        crate::cluster::DEFAULT_DATA_PATH_PORT
    }
    let l: Legacy = serde_json::from_value(cluster.get("swarm")?.clone()).ok()?;
    Some(Membership {
        cluster_id: l.id,
        node_id: l.node_id,
        role: l.role,
        advertise_addr: l.advertise_addr,
        datapath_addr: l.datapath_addr,
        root_ca_cert: l.root_ca_cert,
        node_cert: l.node_cert,
        node_key: l.node_key,
        listen_addr: l.listen_addr,
        manager_addr: l.manager_addr,
        data_path_port: l.data_path_port,
        raft_epoch: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_addresses_are_unique_and_reused_after_release() {
        let mut l = NodeLocal::default();
        let a = l.gw_allocate().unwrap();
        let b = l.gw_allocate().unwrap();
        assert_eq!(a, Ipv4Addr::new(172, 18, 0, 2));
        assert_ne!(a, b);
        l.gw_release(a);
        assert_eq!(l.gw_allocate().unwrap(), a);
    }

    #[test]
    fn a_state_from_before_the_split_keeps_its_running_tasks() {
        let legacy = serde_json::json!({
            "tasks": {
                "t1": {"id": "t1", "gw_ip": "172.18.0.2", "pid": [42, 7],
                        "spec": serde_json::to_value(TaskSpec {
                            id: "t1".into(),
                            command: vec!["sleep".into()],
                            attachments: vec![],
                            nameserver: Ipv4Addr::new(127, 0, 0, 11),
                            host_ns: None,
                            log: None,
                            env: vec![],
                            workdir: None,
                            routes: vec![],
                        }).unwrap()},
                "t2": {"id": "t2", "gw_ip": null, "pid": null, "spec": null}
            },
            "gw_used": [2886860802u32]
        });
        let l = NodeLocal::from_legacy(&legacy);
        assert_eq!(l.tasks.len(), 1);
        assert_eq!(l.tasks["t1"].pid, Some((42, 7)));
        assert_eq!(l.tasks["t1"].gw_ip, Ipv4Addr::new(172, 18, 0, 2));
        assert_eq!(l.gw_used.len(), 1);
        assert!(l.assignment.is_none());
    }
}
