//! The orchestrator: the reconcile loop that brings every service to its spec, asking the
//! scheduler ([`crate::scheduler`]) where each missing task may go.

use super::*;

impl Daemon {
    /// Whether the scheduler would place one more task of `service` on this node, the
    /// only one that runs tasks so far ([`crate::scheduler::place`]); why not if not.
    pub(super) fn place_here(
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
}
