//! Standalone endpoints on attachable networks: `run`, `rm`, `ps`, and the lookups
//! `exec` uses.

use super::*;

impl Daemon {
    pub(super) fn container_run(
        &mut self,
        r: api::ContainerRunRequest,
    ) -> Result<api::EndpointReply, Status> {
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
        self.require_manager()?;
        let node = self.my_id().unwrap_or_default().to_owned();
        let id = random_id(8);
        let t = TaskRecord {
            service: None,
            name: Some(name.clone()),
            node,
            detached: r.detach,
            ..TaskRecord::new(id.clone(), "", 0, 0, &r.command)
        };
        self.cluster.tasks.insert(id.clone(), t);
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
