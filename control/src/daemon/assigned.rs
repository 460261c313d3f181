//! A worker's node runtime for its assignment ([`crate::dispatcher::Assignment`]): it
//! starts the tasks its manager placed here, stops those no longer wanted, forgets those
//! the manager no longer lists once they ended, and reports every task's state. Its data
//! plane and DNS follow the assignment ([`Daemon::push`]).

use super::*;
use crate::cluster_api as capi;
use crate::dispatcher::{AssignedTask, Assignment};

impl Daemon {
    /// Takes a new assignment from this worker's manager: keeps it (persisted, so a
    /// restarted worker carries on with it) and runs it.
    pub(crate) fn assign(&mut self, a: Assignment) -> Result<(), Status> {
        if self.me().is_none() || self.leads() {
            return Err(Status::failed_precondition(
                "only a node that does not lead takes assignments from the leader",
            ));
        }
        let mine = self.me().map(|m| m.role.clone()).unwrap_or_default();
        self.role_wanted = (!a.role.is_empty() && a.role != mine).then(|| a.role.clone());
        if self.local.assignment.as_ref() == Some(&a) {
            return Ok(());
        }
        tracing::debug!(
            tasks = a.tasks.len(),
            networks = a.state.networks.len(),
            "new assignment"
        );
        self.local.assignment = Some(a);
        self.run_assigned();
        self.commit()
    }

    /// Makes this worker's tasks match its assignment; true if anything changed. Starts
    /// at most [`STARTS_PER_ROUND`] tasks per call (the reconcile loop calls again).
    pub(super) fn run_assigned(&mut self) -> bool {
        let (Some(a), Some(me)) = (
            self.local.assignment.clone(),
            self.my_id().map(str::to_owned),
        ) else {
            return false;
        };
        let mut changed = false;
        let wanted = |id: &str| {
            a.tasks
                .iter()
                .any(|t| t.id == id && t.desired == Desired::Running)
        };
        // Tasks running here that the manager no longer wants.
        let stop: Vec<String> = self
            .cluster
            .tasks
            .values()
            .filter(|t| t.live() && !wanted(&t.id))
            .map(|t| t.id.clone())
            .collect();
        for id in stop {
            self.stop_task(&id, TStatus::Shutdown);
            changed = true;
        }
        // Ended tasks the manager no longer lists: it has their final state.
        let forget: Vec<String> = self
            .cluster
            .tasks
            .values()
            .filter(|t| !t.live() && !a.tasks.iter().any(|x| x.id == t.id))
            .map(|t| t.id.clone())
            .collect();
        for id in forget {
            self.cluster.tasks.remove(&id);
            crate::logs::remove(&self.log_path(&id));
            let _ = std::fs::remove_dir_all(self.cfg.data_root.join("tasks").join(&id));
            changed = true;
        }
        // Tasks stopped before this node started them: recorded as stopped, so that the
        // manager hears of them and gives their addresses back.
        for t in a.tasks.iter().filter(|t| t.desired == Desired::Shutdown) {
            if !self.cluster.tasks.contains_key(&t.id) {
                let mut rec = record_of(t, &me, TStatus::Shutdown);
                rec.desired = Desired::Shutdown;
                rec.error = Some("stopped before it started".into());
                self.cluster.tasks.insert(t.id.clone(), rec);
                changed = true;
            }
        }
        // New tasks, once the data plane has their networks (it creates the bridges).
        if a.tasks
            .iter()
            .any(|t| t.desired == Desired::Running && !self.cluster.tasks.contains_key(&t.id))
        {
            if let Err(e) = self.push() {
                tracing::error!("{}", e.message());
            }
        }
        let mut starts = 0;
        for t in a.tasks.iter().filter(|t| t.desired == Desired::Running) {
            if self.cluster.tasks.contains_key(&t.id) {
                continue;
            }
            if starts == STARTS_PER_ROUND {
                break;
            }
            starts += 1;
            self.cluster
                .tasks
                .insert(t.id.clone(), record_of(t, &me, TStatus::Assigned));
            match self.start_task(&t.id, &t.networks) {
                Ok(()) => {
                    tracing::info!(task = %t.id, service = t.service.as_deref().unwrap_or(""), "task started")
                }
                Err(e) => {
                    tracing::warn!(task = %t.id, "task rejected: {e}");
                    let r = self.cluster.tasks.get_mut(&t.id).expect("inserted");
                    r.status = TStatus::Rejected;
                    r.desired = Desired::Shutdown;
                    r.error = Some(e);
                    r.changed = now();
                }
            }
            changed = true;
        }
        if changed {
            self.reports.notify_one();
        }
        changed
    }

    /// The state of every task this worker holds, for its manager's dispatcher. A task
    /// being stopped is not reported until its namespace is gone: its manager must not
    /// give its address to another task while the old one still holds it.
    pub(crate) fn task_reports(&self) -> Vec<capi::TaskStatus> {
        let stopping: Vec<&str> = self.stopping.iter().map(|(_, h)| h.id.as_str()).collect();
        self.cluster
            .tasks
            .values()
            .filter(|t| t.status != TStatus::Assigned && t.status != TStatus::Pending)
            .filter(|t| !stopping.contains(&t.id.as_str()))
            .map(|t| capi::TaskStatus {
                id: t.id.clone(),
                state: t.status.word().into(),
                exit_code: t.exit_code,
                error: t.error.clone().unwrap_or_default(),
            })
            .collect()
    }

    /// What the session needs to report at once when a task's state changes.
    pub(crate) fn report_signal(&self) -> Arc<tokio::sync::Notify> {
        self.reports.clone()
    }
}

/// This worker's record of assigned task `t`, in `status`.
fn record_of(t: &AssignedTask, me: &str, status: TStatus) -> TaskRecord {
    TaskRecord {
        service: t.service.clone(),
        name: t.name.clone(),
        detached: t.detached,
        node: me.to_owned(),
        status,
        ..TaskRecord::new(t.id.clone(), "", t.slot, t.version, &t.command)
    }
}
