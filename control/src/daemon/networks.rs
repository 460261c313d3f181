//! Network verbs: `network create`, `ls`, `inspect`, `rm`.

use super::*;

impl Daemon {
    pub(super) fn network_create(
        &mut self,
        r: api::NetworkCreateRequest,
    ) -> Result<api::IdReply, Status> {
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

    pub(super) fn network_list(&self) -> Result<api::NetworkListReply, Status> {
        // A worker lists the networks it has (those its tasks are on), as Docker's does.
        if let Some(m) = self.me() {
            if !m.is_manager() {
                return Ok(api::NetworkListReply {
                    networks: self
                        .local
                        .assignment
                        .iter()
                        .flat_map(|a| &a.networks)
                        .map(|n| api::Network {
                            id: n.id.clone(),
                            name: n.name.clone(),
                            driver: "overlay".into(),
                            scope: "swarm".into(),
                            subnet: n.subnet.to_string(),
                            vni: n.vni,
                        })
                        .collect(),
                });
            }
        }
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
    pub(super) fn network_name(&self, key: &str) -> Option<String> {
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

    /// `network inspect` as node `caller` (a manager that forwarded the call; this node
    /// when `None`) sees the networks: on the leader from the store, on a worker from its
    /// assignment and the gossiped tables (Docker answers on a worker for the networks it
    /// has). `Containers` are that node's endpoints.
    pub(super) fn network_inspect(
        &self,
        r: api::NamesRequest,
        caller: Option<String>,
    ) -> Result<api::JsonReply, Status> {
        let me = self.me().ok_or_else(|| {
            Status::failed_precondition(
                "This node is not part of a swarm: it has no overlay networks",
            )
        })?;
        let (node, addr) = match caller {
            Some(id) => {
                let addr = self
                    .cluster
                    .nodes
                    .iter()
                    .find(|n| n.id == id)
                    .map_or(me.datapath_addr, |n| n.vtep());
                (id, addr)
            }
            None => (me.node_id.clone(), me.datapath_addr),
        };
        let mut docs = Vec::new();
        for n in &r.names {
            if !me.is_manager() {
                docs.push(self.worker_network_json(n)?);
                continue;
            }
            let name = self
                .network_name(n)
                .ok_or_else(|| Status::not_found(format!("network {n} not found")))?;
            docs.push(
                self.cluster
                    .network_json(&name, &node, addr)
                    .expect("exists"),
            );
        }
        Ok(api::JsonReply {
            json: serde_json::to_string_pretty(&docs).expect("json"),
        })
    }

    /// A worker's `network inspect` document for `key` (name or ID prefix), one of the
    /// networks its assignment gives it: its endpoints here, and its peers — this node
    /// and every node that gossips an `overlay_peer_table` row on it, by data-path address
    /// (networkdb's `Peers`, named by node ID as networkdb names them).
    fn worker_network_json(&self, key: &str) -> Result<serde_json::Value, Status> {
        let a = self.local.assignment.as_ref();
        let nets: Vec<&crate::dispatcher::AssignedNetwork> =
            a.into_iter().flat_map(|a| &a.networks).collect();
        // By name, else by a unique ID prefix (as a manager resolves it).
        let by_prefix: Vec<_> = nets
            .iter()
            .filter(|n| !key.is_empty() && n.id.starts_with(key))
            .collect();
        let net = nets
            .iter()
            .find(|n| n.name == key)
            .or((by_prefix.len() == 1).then(|| by_prefix[0]))
            .copied()
            .ok_or_else(|| Status::not_found(format!("network {key} not found")))?;
        let me = self.me().expect("in a swarm");
        let mut containers = serde_json::Map::new();
        let mut gateway = None;
        for t in a.into_iter().flat_map(|a| &a.tasks) {
            let Some(at) = t.networks.iter().find(|at| at.network == net.name) else {
                continue;
            };
            gateway = Some(at.gateway);
            if t.desired != Desired::Running
                || !self.cluster.tasks.get(&t.id).is_some_and(|t| t.live())
            {
                continue;
            }
            containers.insert(
                t.id.clone(),
                serde_json::json!({
                    "Name": t.full_name,
                    "EndpointID": format!("ep-{}-{}", t.id, net.vni),
                    "MacAddress": swarmgate_dataplane::wire::EthernetAddress::from_ipv4_docker(at.ip).to_string(),
                    "IPv4Address": format!("{}/{}", at.ip, net.subnet.prefix()),
                    "IPv6Address": "",
                }),
            );
        }
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let mut peers = vec![serde_json::json!({
            "Name": hostname.trim(), "IP": me.datapath_addr.to_string(),
        })];
        let table = if net.id.is_empty() {
            &net.name
        } else {
            &net.id
        };
        let mut seen = std::collections::BTreeSet::new();
        for (k, v) in self.gossip_view.iter() {
            if let crate::gossip::table::Value::Peer { vtep, .. } = v.value {
                if k.network == *table && seen.insert(k.owner.clone()) {
                    peers.push(serde_json::json!({"Name": k.owner, "IP": vtep.to_string()}));
                }
            }
        }
        Ok(serde_json::json!({
            "Name": net.name,
            "Id": net.id,
            "Scope": "swarm",
            "Driver": "overlay",
            "EnableIPv6": false,
            "IPAM": {
                "Driver": "default",
                "Options": null,
                "Config": [{
                    "Subnet": net.subnet.to_string(),
                    "Gateway": gateway.map(|g| g.to_string()).unwrap_or_default(),
                }],
            },
            "Internal": false,
            "Ingress": net.ingress,
            "Containers": containers,
            "Options": {"com.docker.network.driver.overlay.vxlanid_list": net.vni.to_string()},
            "Labels": {},
            "Peers": peers,
        }))
    }

    pub(super) fn network_remove(&mut self, r: api::NamesRequest) -> Result<api::Empty, Status> {
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
                    .find(|s| s.networks.iter().any(|(m, _)| *m == name))
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
            // Any task that still holds an address on it: a standalone endpoint, or a task
            // of a removed or changed service that its node has not stopped yet.
            if let Some(t) = self
                .cluster
                .tasks
                .values()
                .find(|t| t.active() && t.addresses.iter().any(|(m, _)| *m == name))
            {
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
}
