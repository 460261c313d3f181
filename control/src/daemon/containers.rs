//! Standalone endpoints on attachable networks: `run`, `rm`, `ps`, and the lookups
//! `exec` uses.

use super::*;

/// Where and as whom a node asks the leader for a network attachment.
pub(crate) struct AttachRoute {
    /// The manager to ask (`ip:port`).
    pub manager: String,
    /// The cluster's root certificate, this node's certificate and key (PEM).
    pub root: String,
    pub cert: String,
    pub key: String,
}

impl Daemon {
    /// `run` on the leader: the container's record, its addresses, and the container
    /// started here. A node that does not lead asks the leader for the addresses instead
    /// ([`Daemon::attach_network`], through `grpc.rs`) and starts it from its assignment.
    pub(super) fn container_run(
        &mut self,
        r: api::ContainerRunRequest,
    ) -> Result<api::EndpointReply, Status> {
        self.require_manager()?;
        let nets = self.check_run(&r.name, &r.networks, r.detach, &r.command)?;
        let node = self.my_id().unwrap_or_default().to_owned();
        let id = self.new_container(&node, &r.name, r.detach, &r.command);
        let started = self.allocate(&id, &nets).and_then(|()| {
            let attach = self.cluster.attachments(&self.cluster.tasks[&id]);
            self.start_task(&id, &attach)
        });
        if let Err(e) = started {
            self.cluster.release_addresses(&id);
            self.cluster.tasks.remove(&id);
            return Err(Status::internal(e));
        }
        self.commit()?;
        self.endpoint_reply(&id)
    }

    /// What `run` must satisfy: a valid, unused name, at least one network, each
    /// attachable (Docker's refusal otherwise), a command to run detached. Returns the
    /// networks' names.
    fn check_run(
        &self,
        name: &str,
        networks: &[String],
        detach: bool,
        command: &[String],
    ) -> Result<Vec<String>, Status> {
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && name.len() <= 128
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
            .any(|t| t.name.as_deref() == Some(name))
        {
            return Err(Status::already_exists(format!(
                "Conflict. The container name \"{name}\" is already in use. Remove it first."
            )));
        }
        if networks.is_empty() {
            return Err(bad("a standalone endpoint needs --network"));
        }
        if detach && command.is_empty() {
            return Err(bad("run -d needs a command after --"));
        }
        let mut nets = Vec::new();
        for n in networks {
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
        Ok(nets)
    }

    /// A standalone container's record on `node` (SwarmKit's network attachment task).
    fn new_container(
        &mut self,
        node: &str,
        name: &str,
        detach: bool,
        command: &[String],
    ) -> String {
        let id = random_id(8);
        let t = TaskRecord {
            service: None,
            name: Some(name.to_owned()),
            node: node.to_owned(),
            detached: detach,
            ..TaskRecord::new(id.clone(), "", 0, 0, command)
        };
        self.cluster.tasks.insert(id.clone(), t);
        id
    }

    /// On the leader, for node `id` (SwarmKit's `ResourceAllocator.AttachNetwork`): a
    /// standalone container placed on that node with its addresses; the node starts it
    /// when its assignment lists it.
    pub(crate) fn attach_network(
        &mut self,
        id: &crate::ca::NodeIdentity,
        r: crate::cluster_api::AttachNetworkRequest,
    ) -> Result<crate::cluster_api::AttachNetworkReply, Status> {
        self.require_leader()?;
        self.member(id)?;
        let nets = self.check_run(&r.name, &r.networks, r.detach, &r.command)?;
        let task = self.new_container(&id.node_id, &r.name, r.detach, &r.command);
        if let Err(e) = self.allocate(&task, &nets) {
            self.cluster.release_addresses(&task);
            self.cluster.tasks.remove(&task);
            return Err(Status::internal(e));
        }
        if let Some(t) = self.cluster.tasks.get_mut(&task) {
            t.status = TStatus::Assigned;
        }
        tracing::info!(node = %id.node_id, container = %r.name, task = %task, "network attachment");
        self.commit()?;
        Ok(crate::cluster_api::AttachNetworkReply { id: task })
    }

    /// On the leader, for node `id` (`DetachNetwork`): its standalone container removed —
    /// a running one (only with `force`) told to stop, its addresses held until the node
    /// reports it stopped, its record gone then.
    pub(crate) fn detach_network(
        &mut self,
        id: &crate::ca::NodeIdentity,
        r: crate::cluster_api::DetachNetworkRequest,
    ) -> Result<crate::cluster_api::Empty, Status> {
        self.require_leader()?;
        self.member(id)?;
        let t = self
            .cluster
            .tasks
            .values()
            .find(|t| {
                t.service.is_none()
                    && t.node == id.node_id
                    && (t.name.as_deref() == Some(&r.name) || t.id == r.name)
            })
            .ok_or_else(|| Status::not_found(format!("No such container: {}", r.name)))?;
        if t.active() && !r.force {
            return Err(Status::failed_precondition(format!(
                "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                r.name
            )));
        }
        let task = t.id.clone();
        self.forget_task(&task);
        self.commit()?;
        Ok(crate::cluster_api::Empty {})
    }

    /// Where a node that does not lead sends its network attachments: the leader as this
    /// node knows it (a manager's Raft leader, a worker's manager, which redirects), with
    /// this node's certificate. `None` on the leader or outside a swarm.
    pub(super) fn attach_route(&self) -> Option<AttachRoute> {
        let m = self.me()?;
        if self.leads() {
            return None;
        }
        let manager = self
            .replica()
            .and_then(|r| r.leader())
            .map(|l| l.addr.to_string())
            .or_else(|| m.manager_addr.clone())?;
        Some(AttachRoute {
            manager,
            root: m.root_ca_cert.clone(),
            cert: m.node_cert.clone(),
            key: m.node_key.clone(),
        })
    }

    /// Attachment `id` once this node runs it: its endpoint; `None` until then; an error
    /// if it could not start here.
    pub(super) fn attached(&self, id: &str) -> Result<Option<api::EndpointReply>, Status> {
        match self.cluster.tasks.get(id) {
            Some(t) if t.live() => self.endpoint_reply(id).map(Some),
            Some(t) if matches!(t.status, TStatus::Failed | TStatus::Rejected) => {
                Err(Status::internal(t.error.clone().unwrap_or_else(|| {
                    format!("container {} failed to start", t.full_name())
                })))
            }
            _ => Ok(None),
        }
    }

    /// Whether this node has standalone container `name` (name or ID), running or not.
    pub(super) fn container_here(&self, name: &str) -> bool {
        self.cluster
            .tasks
            .values()
            .any(|t| t.service.is_none() && (t.name.as_deref() == Some(name) || t.id == name))
    }

    /// Whether standalone container `name` (name or ID) still runs on this node.
    pub(super) fn container_live(&self, name: &str) -> bool {
        self.cluster.tasks.values().any(|t| {
            t.service.is_none() && t.live() && (t.name.as_deref() == Some(name) || t.id == name)
        })
    }

    pub(super) fn endpoint_reply(&self, id: &str) -> Result<api::EndpointReply, Status> {
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
    pub(super) fn find_endpoint(&self, key: &str) -> Option<String> {
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

    pub(super) fn endpoint_lookup(
        &self,
        r: api::NamesRequest,
    ) -> Result<api::EndpointReply, Status> {
        let key = r.names.first().cloned().unwrap_or_default();
        let id = self
            .find_endpoint(&key)
            .ok_or_else(|| Status::not_found(format!("No such container: {key}")))?;
        self.endpoint_reply(&id)
    }

    pub(super) fn container_exited(
        &mut self,
        r: api::ContainerExitedRequest,
    ) -> Result<api::Empty, Status> {
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

    pub(super) fn container_remove(
        &mut self,
        r: api::ContainerRemoveRequest,
    ) -> Result<api::Empty, Status> {
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
            self.forget_task(&id);
            crate::logs::remove(&self.log_path(&id));
        }
        self.commit()?;
        Ok(api::Empty {})
    }

    pub(super) fn container_list(&self) -> Result<api::ContainerListReply, Status> {
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
}
