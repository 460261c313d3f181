//! Service verbs: `service create`, `update`, `rm`, `ls`, `ps`, `inspect`, `logs`.

use super::*;

impl Daemon {
    pub(super) fn parse_ports(&self, specs: &[String]) -> Result<Vec<PortConfig>, Status> {
        let mut v = Vec::new();
        for s in specs {
            v.extend(publish::parse(s).map_err(bad)?);
        }
        // The swarm's own data-path port, when it is not 4789 (which `service` refuses
        // among the node's ports already).
        let dp = self.cluster.swarm.as_ref().map(|s| s.data_path_port);
        if let Some(p) = v.iter().find(|p| {
            p.published.is_some()
                && p.published == dp
                && p.protocol == crate::publish::Protocol::Udp
        }) {
            return Err(bad(crate::service::ServiceError::NodePort(
                p.published.expect("checked"),
                p.protocol,
                "VXLAN data path (--data-path-port)",
            )));
        }
        Ok(v)
    }

    pub(super) fn service_create(
        &mut self,
        r: api::ServiceCreateRequest,
    ) -> Result<api::IdReply, Status> {
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
            ports: self.parse_ports(&r.publish)?,
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

    pub(super) fn service_update(
        &mut self,
        r: api::ServiceUpdateRequest,
    ) -> Result<api::IdReply, Status> {
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
                Err(_) => self.parse_ports(std::slice::from_ref(spec))?,
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
        ports.extend(self.parse_ports(&r.publish_add)?);
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
        let udp_ports = |s: &crate::service::Service| -> Vec<(u16, bool)> {
            let mut v: Vec<(u16, bool)> = s
                .ports
                .iter()
                .filter(|p| p.published.is_some() && p.protocol == crate::publish::Protocol::Udp)
                .map(|p| (p.target, p.mode == crate::publish::PublishMode::Host))
                .collect();
            v.sort_unstable();
            v
        };
        if new.networks != old.networks
            || new.command != old.command
            || udp_ports(&new) != udp_ports(&old)
        {
            // Tasks of the old spec are replaced (their networks changed, or the published
            // UDP ports their routing rules are made for).
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

    pub(super) fn service_remove(&mut self, r: api::NamesRequest) -> Result<api::Empty, Status> {
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
                self.forget_task(id);
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

    pub(super) fn service_list(&self) -> Result<api::ServiceListReply, Status> {
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

    pub(super) fn desired_replicas(&self, m: ServiceMode) -> u32 {
        match m {
            ServiceMode::Replicated(n) => n,
            ServiceMode::Global => self.cluster.nodes.len() as u32,
        }
    }

    pub(super) fn task_row(&self, t: &TaskRecord, history: bool) -> api::Task {
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
            Some(_) => t.slot_name(),
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

    pub(super) fn service_ps(&self, r: api::NamesRequest) -> Result<api::TaskListReply, Status> {
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

    pub(super) fn service_inspect(&self, r: api::NamesRequest) -> Result<api::JsonReply, Status> {
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

    pub(super) fn log_path(&self, id: &str) -> PathBuf {
        self.cfg.data_root.join("logs").join(format!("{id}.log"))
    }

    /// What `service logs` reads: each task's line prefix and log file. Only this is done
    /// under the state lock; the files are read (and streamed) after it is released.
    pub(super) fn service_log_sources(
        &self,
        r: api::NamesRequest,
    ) -> Result<Vec<(String, PathBuf)>, Status> {
        self.require_manager()?;
        let mut sources = Vec::new();
        for n in &r.names {
            if self.cluster.services.get(n).is_none() {
                return Err(Status::not_found(format!("service {n} not found")));
            }
            // Each task's log is kept by the node that runs it; this node has its own
            // tasks' (no log broker across nodes yet).
            let me = self.my_id().unwrap_or_default();
            for t in self
                .cluster
                .tasks
                .values()
                .filter(|t| t.service.as_deref() == Some(n) && t.node == me)
            {
                let host = self
                    .cluster
                    .nodes
                    .iter()
                    .find(|nd| nd.id == t.node)
                    .map(|nd| nd.hostname.as_str())
                    .unwrap_or_default();
                sources.push((format!("{}@{host}", t.full_name()), self.log_path(&t.id)));
            }
        }
        Ok(sources)
    }

    /// Every task's log file (for rotation, outside the lock).
    pub(super) fn log_paths(&self) -> Vec<PathBuf> {
        self.cluster
            .tasks
            .keys()
            .map(|id| self.log_path(id))
            .collect()
    }
}
