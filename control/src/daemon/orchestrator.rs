//! The orchestrator: the reconcile loop that brings every service to its spec, asking the
//! scheduler ([`crate::scheduler`]) which node each missing task goes to, and the
//! allocator ([`Daemon::allocate`]) for its addresses. Tasks for this node start here;
//! those for other nodes reach them through the dispatcher ([`crate::dispatcher`]).

use super::*;

impl Daemon {
    /// The node the scheduler picks for one more task of `service`
    /// ([`crate::scheduler::place`]) among every node of the swarm; why none if none.
    /// A node's load is its tasks that hold a place there (placed or running, wanted).
    /// `only`: consider that node alone (a global service's task for it).
    pub(super) fn place(
        &self,
        service: &str,
        placement: &crate::scheduler::Placement,
        only: Option<&str>,
    ) -> Result<String, String> {
        let holding = |t: &&TaskRecord| t.active() && t.desired == Desired::Running;
        let cands: Vec<crate::scheduler::Candidate> = self
            .cluster
            .nodes
            .iter()
            .filter(|n| only.is_none_or(|o| o == n.id))
            .map(|n| {
                let tasks: Vec<&TaskRecord> = self
                    .cluster
                    .tasks
                    .values()
                    .filter(holding)
                    .filter(|t| t.node == n.id)
                    .collect();
                crate::scheduler::Candidate {
                    id: &n.id,
                    hostname: &n.hostname,
                    addr: n.addr,
                    role: &n.role,
                    availability: &n.availability,
                    labels: &n.labels,
                    ready: self.node_ready(n),
                    service_tasks: tasks
                        .iter()
                        .filter(|t| t.service.as_deref() == Some(service))
                        .count(),
                    tasks: tasks.iter().filter(|t| t.service.is_some()).count(),
                }
            })
            .collect();
        crate::scheduler::place(&cands, placement).map(|i| cands[i].id.to_owned())
    }

    /// Stops task `id` wherever it runs: here at once ([`Daemon::stop_task`]); on another
    /// node by no longer wanting it — that node stops it when its assignment says so and
    /// reports it, and only then are its addresses free.
    pub(super) fn shutdown_task(&mut self, id: &str) {
        let me = self.my_id().map(str::to_owned);
        let here = self.running.contains_key(id);
        match self.cluster.tasks.get_mut(id) {
            Some(t) if Some(&t.node) != me.as_ref() && !here => {
                if t.desired != Desired::Shutdown {
                    tracing::info!(node = %t.node, task = %id, "task to stop on its node");
                }
                t.desired = Desired::Shutdown;
            }
            Some(_) => self.stop_task(id, TStatus::Shutdown),
            None => {}
        }
    }

    /// Forgets task `id` (its service is removed): stopped where it runs and its record
    /// gone. A task on another node is only told to stop: its record, and its addresses,
    /// stay until that node reports it stopped (or is removed), so no new task gets an
    /// address its old namespace still holds; [`Daemon::reconcile`] drops the record then.
    pub(super) fn forget_task(&mut self, id: &str) {
        let remote_active = self.cluster.tasks.get(id).is_some_and(|t| {
            t.active() && Some(t.node.as_str()) != self.my_id() && !self.running.contains_key(id)
        });
        if remote_active {
            self.shutdown_task(id);
        } else {
            self.stop_task(id, TStatus::Shutdown);
            self.cluster.tasks.remove(id);
        }
    }

    /// Whether a replacement for `service`'s `slot` (a global service's task for `node`)
    /// may start: [`RESTART_DELAY`] after the last one ended.
    fn restart_due(&self, service: &str, slot: u32, node: Option<&str>) -> bool {
        let last_end = self
            .cluster
            .tasks
            .values()
            .filter(|t| t.service.as_deref() == Some(service) && t.slot == slot)
            .filter(|t| node.is_none_or(|n| t.node == n))
            .filter(|t| {
                matches!(
                    t.status,
                    TStatus::Failed | TStatus::Rejected | TStatus::Complete
                )
            })
            .map(|t| t.changed)
            .max();
        !last_end.is_some_and(|e| now() < e + RESTART_DELAY)
    }

    /// Whether node `node` still satisfies global service `s`'s constraints.
    fn node_may_keep(&self, s: &crate::service::Service, node: &str) -> bool {
        let Some(n) = self.cluster.nodes.iter().find(|n| n.id == node) else {
            return false;
        };
        let c = crate::scheduler::Candidate {
            id: &n.id,
            hostname: &n.hostname,
            addr: n.addr,
            role: &n.role,
            availability: "active",
            labels: &n.labels,
            ready: true,
            service_tasks: 0,
            tasks: 0,
        };
        s.placement().constraints.iter().all(|k| k.matches(&c))
    }

    /// A new task of `s` for `slot` at `version` on node `target`: addresses from the
    /// allocator, then started here or assigned to its node (which starts it when its
    /// assignment arrives). A task that cannot be placed is recorded Rejected.
    fn launch(&mut self, s: &crate::service::Service, slot: u32, version: u64, target: &str) {
        let me = self.my_id().map(str::to_owned);
        let id = random_id(8);
        self.cluster.tasks.insert(
            id.clone(),
            TaskRecord {
                node: target.to_owned(),
                ..TaskRecord::new(id.clone(), &s.name, slot, version, &s.command)
            },
        );
        let nets: Vec<String> = s.networks.iter().map(|(n, _)| n.clone()).collect();
        let placed = self.allocate(&id, &nets).and_then(|()| {
            if Some(target) == me.as_deref() {
                let attach = self.cluster.attachments(&self.cluster.tasks[&id]);
                self.start_task(&id, &attach)
            } else {
                let t = self.cluster.tasks.get_mut(&id).expect("inserted");
                t.status = TStatus::Assigned;
                Ok(())
            }
        });
        match placed {
            Ok(()) => {
                tracing::info!(node = %target, service = %s.name, slot, task = %id, "task placed")
            }
            Err(e) => {
                tracing::warn!(node = %target, service = %s.name, slot, task = %id, "task rejected: {e}");
                self.cluster.release_addresses(&id);
                let t = self.cluster.tasks.get_mut(&id).expect("inserted");
                t.addresses.clear();
                t.desired = Desired::Shutdown;
                t.error = Some(e);
            }
        }
    }

    /// Nodes whose tasks are given up and placed elsewhere: not this one, and missing
    /// their heartbeats — after a grace of three periods from this daemon's start too, so
    /// that a restarted manager does not move every task before the nodes beat again.
    fn nodes_down(&self) -> Vec<String> {
        let me = self.my_id();
        let settled = self.leader_since.elapsed() > self.down_after();
        self.cluster
            .nodes
            .iter()
            .filter(|n| Some(n.id.as_str()) != me && !self.node_ready(n))
            .filter(|n| settled || self.heartbeats.contains_key(&n.id))
            .map(|n| n.id.clone())
            .collect()
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
        if self.me().is_none() {
            return changed;
        }
        if !self.leads() {
            // A worker runs what it is assigned and reports exits at once.
            if changed {
                self.reports.notify_one();
            }
            return self.run_assigned() | changed;
        }
        let services: Vec<_> = self.cluster.services.iter().cloned().collect();
        // A drained node runs no service tasks (standalone containers stay, as Docker's);
        // a node that is down has its tasks placed elsewhere (SwarmKit's
        // `restartTasksByNodeID`).
        let down = self.nodes_down();
        // Each transition logged once, with how long the node has been silent.
        for id in &down {
            if self.down_logged.insert(id.clone()) {
                let silent = self.heartbeats.get(id).map(|t| t.elapsed().as_secs_f64());
                tracing::warn!(node = %id, silent_s = ?silent, "node down: its tasks go elsewhere");
            }
        }
        let back: Vec<String> = self
            .down_logged
            .iter()
            .filter(|id| !down.contains(id))
            .cloned()
            .collect();
        for id in back {
            self.down_logged.remove(&id);
            if self.cluster.nodes.iter().any(|n| n.id == id) {
                tracing::info!(node = %id, "node ready again");
            }
        }
        let mut gone: Vec<String> = down;
        gone.extend(
            self.cluster
                .nodes
                .iter()
                .filter(|n| n.availability == "drain")
                .map(|n| n.id.clone()),
        );
        let ids: Vec<String> = self
            .cluster
            .tasks
            .values()
            .filter(|t| t.service.is_some() && t.active() && t.desired == Desired::Running)
            .filter(|t| gone.contains(&t.node))
            .map(|t| t.id.clone())
            .collect();
        for id in ids {
            self.shutdown_task(&id);
            changed = true;
        }
        // Ended tasks of removed services (kept until their node reported them stopped).
        let gone_services: Vec<String> = self
            .cluster
            .tasks
            .values()
            .filter(|t| !t.active())
            .filter(|t| {
                t.service
                    .as_ref()
                    .is_some_and(|s| self.cluster.services.get(s).is_none())
            })
            .map(|t| t.id.clone())
            .collect();
        for id in gone_services {
            self.cluster.tasks.remove(&id);
            changed = true;
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
            let holding = |t: &TaskRecord| {
                t.service.as_deref() == Some(&s.name) && t.active() && t.desired == Desired::Running
            };
            let old: Vec<String> = self
                .cluster
                .tasks
                .values()
                .filter(|t| holding(t) && (t.version != version || t.slot > want))
                .map(|t| t.id.clone())
                .collect();
            for id in old {
                self.shutdown_task(&id);
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
            let mut placement = s.placement();
            if s.mode == ServiceMode::Global {
                placement.max_per_node = 1; // one task per node
            }
            if s.mode == ServiceMode::Global {
                // SwarmKit's global orchestrator: one task on every node that may run
                // it; none elsewhere (a drained or down node's are stopped above).
                for n in self.cluster.nodes.clone() {
                    let has = self
                        .cluster
                        .tasks
                        .values()
                        .any(|t| holding(t) && t.node == n.id);
                    let fits = self.place(&s.name, &placement, Some(&n.id)).is_ok();
                    if has && !self.node_may_keep(&s, &n.id) {
                        let ids: Vec<String> = self
                            .cluster
                            .tasks
                            .values()
                            .filter(|t| holding(t) && t.node == n.id)
                            .map(|t| t.id.clone())
                            .collect();
                        for id in ids {
                            self.shutdown_task(&id);
                        }
                        changed = true;
                    } else if !has && fits && starts < STARTS_PER_ROUND {
                        if self.restart_due(&s.name, 0, Some(&n.id)) {
                            starts += 1;
                            self.launch(&s, 0, version, &n.id);
                            changed = true;
                        }
                    } else if !has && fits {
                        changed = true; // more to do: the next round goes on
                    }
                }
            }
            let mut no_node: Option<String> = None;
            for slot in (s.mode != ServiceMode::Global)
                .then_some(1..=want)
                .into_iter()
                .flatten()
            {
                if self
                    .cluster
                    .tasks
                    .values()
                    .any(|t| holding(t) && t.slot == slot)
                {
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
                // The scheduler's choice; its answer is SwarmKit's. Once it has found no
                // node for a slot it finds none for the next ones either (nothing changed
                // in between): its answer is reused rather than asked again per slot.
                let placed = match &no_node {
                    Some(why) => Err(why.clone()),
                    None => self.place(&s.name, &placement, None),
                };
                if let Err(why) = &placed {
                    no_node = Some(why.clone());
                }
                let target = match placed {
                    Ok(n) => n,
                    Err(why) => {
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
                };
                if let Some(id) = pending {
                    self.cluster.tasks.remove(&id);
                    changed = true;
                }
                if starts == STARTS_PER_ROUND {
                    changed = true; // more to do: the next round goes on
                    break;
                }
                if !self.restart_due(&s.name, slot, None) {
                    continue;
                }
                starts += 1;
                self.launch(&s, slot, version, &target);
                changed = true;
            }
            // History: at most HISTORY ended tasks per slot (per node for a global
            // service).
            let global = s.mode == ServiceMode::Global;
            let mut ended: Vec<((u32, String), u64, String)> = self
                .cluster
                .tasks
                .values()
                .filter(|t| {
                    t.service.as_deref() == Some(&s.name)
                        && !t.active()
                        && t.status != TStatus::Pending
                })
                .map(|t| {
                    let node = if global {
                        t.node.clone()
                    } else {
                        String::new()
                    };
                    ((t.slot, node), t.created, t.id.clone())
                })
                .collect();
            ended.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            let mut per_slot: HashMap<(u32, String), usize> = HashMap::new();
            for (key, _, id) in ended {
                let slot = key.0;
                let k = per_slot.entry(key).or_default();
                *k += 1;
                if *k > HISTORY || (!global && slot > want) {
                    self.cluster.tasks.remove(&id);
                    crate::logs::remove(&self.log_path(&id));
                    let _ = std::fs::remove_dir_all(self.cfg.data_root.join("tasks").join(&id));
                    changed = true;
                }
            }
        }
        changed
    }
}
