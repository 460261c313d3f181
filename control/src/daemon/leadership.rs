//! Leading and following: a manager acts on the cluster state only while Raft makes it the
//! leader (SwarmKit's `manager.go` `becomeLeader` / `becomeFollower`: the orchestrators,
//! allocator, scheduler and dispatcher run on the leader alone). Otherwise it is an agent
//! like a worker — it runs the tasks the leader assigns it, reports them, and forwards
//! every cluster request to the leader ([`super::grpc`]).

use super::membership::{GOSSIP_KEY_GRACE, GOSSIP_KEY_ROTATION};
use super::*;
use crate::raft::{Replica, WriteError};

/// How long taking the lead may wait for a quorum and the log to be applied (under the
/// state lock; tried again at the next tick).
const TAKE_LEAD_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Daemon {
    /// Follows Raft's verdict: takes the lead or steps down when it changed. Called on
    /// every housekeeping tick and before a request decides where it runs.
    pub(crate) fn sync_role(&mut self) {
        if !self.is_manager() {
            self.leading = false;
            return;
        }
        let Some(r) = self.replica() else {
            return; // the node runtime starts Raft; until then nothing changes
        };
        match (r.is_leader(), self.leading) {
            (true, false) => self.take_lead(&r),
            (false, true) => self.step_down(),
            _ => {}
        }
    }

    /// Becomes the leader: the replicated state becomes the one this daemon works on,
    /// once every entry committed before this term is applied here.
    fn take_lead(&mut self, r: &Replica) {
        // The state machine must hold every entry of this leader's log first: what the
        // previous leader committed, and any write of this one whose outcome was unknown
        // (a leader's own entries all commit once a quorum answers). `ensure_linearizable`
        // confirms the leadership with a quorum; then the log is applied to its end.
        // Bounded, under the state lock: without a quorum this gives up and tries again.
        let raft = r.raft.clone();
        let machine = r.machine.clone();
        let caught_up = self.rt.block_on(async move {
            tokio::time::timeout(TAKE_LEAD_WAIT, async {
                raft.ensure_linearizable()
                    .await
                    .map_err(|e| e.to_string())?;
                let end = raft.metrics().borrow().last_log_index.unwrap_or(0);
                let mut applied = machine.subscribe();
                while machine.applied_index() < end {
                    if applied.changed().await.is_err() {
                        return Err("raft stopped".to_string());
                    }
                }
                Ok(())
            })
            .await
        });
        if !matches!(caught_up, Ok(Ok(()))) {
            tracing::warn!("raft: elected, but not caught up yet (no quorum?); trying again");
            return;
        }
        let applied = r.machine.current();
        // This node's own tasks' latest states, as it knows them (a task that ended while
        // it followed, not yet reported, must not come back Running).
        let me = self.my_id().unwrap_or_default().to_owned();
        let own: Vec<crate::dispatcher::Report> = self
            .task_reports()
            .iter()
            .filter_map(|t| {
                Some(crate::dispatcher::Report {
                    id: t.id.clone(),
                    status: crate::dispatcher::parse_status(&t.state)?,
                    exit_code: t.exit_code,
                    error: (!t.error.is_empty()).then(|| t.error.clone()),
                })
            })
            .collect();
        if applied.state.is_null() {
            // The first leader of a group: of a swarm just created or created before
            // Raft (the state it has), or after `--force-new-cluster` (the state it held
            // then). It becomes the replicated one with the next commit.
            if let Some(c) = self.adopt.take() {
                self.cluster = c;
            }
            if self.cluster.swarm.is_none() {
                tracing::error!(
                    "raft: elected with no swarm state to start the group from; not leading"
                );
                return;
            }
            self.replicated = serde_json::Value::Null;
        } else {
            match serde_json::from_value::<Cluster>(applied.state.clone()) {
                Ok(mut c) => {
                    crate::dispatcher::apply_reports(&mut c, &me, &own);
                    self.cluster = c;
                    self.replicated = applied.state;
                }
                Err(e) => {
                    tracing::error!("raft: the replicated state is unreadable, not leading: {e}");
                    return;
                }
            }
        }
        self.leading = true;
        self.local.assignment = None;
        self.heartbeats.clear();
        self.down_logged.clear();
        self.leader_since = std::time::Instant::now();
        tracing::info!(
            term = r.raft.metrics().borrow().current_term,
            "raft: this manager leads the swarm"
        );
        if let Err(e) = self.commit() {
            tracing::error!("raft: committing as the new leader: {}", e.message());
        }
    }

    /// Stops leading: keeps running this node's own tasks as an agent, from the
    /// assignment the state it had gives it, until the new leader sends one.
    fn step_down(&mut self) {
        let me = self.my_id().unwrap_or_default().to_owned();
        let mut a = crate::dispatcher::assignment(&self.cluster, &me);
        a.managers = self.manager_addrs();
        let mut view = Cluster::default();
        view.tasks = std::mem::take(&mut self.cluster.tasks);
        view.tasks.retain(|_, t| t.node == me);
        self.cluster = view;
        self.replicated = serde_json::Value::Null;
        self.leading = false;
        self.heartbeats.clear();
        tracing::info!("raft: this manager no longer leads; following");
        if let Err(e) = self.assign(a) {
            tracing::error!("following: {}", e.message());
        }
    }

    /// The Raft member was replaced (restarted, a new group after `--force-new-cluster`):
    /// what this daemon took from the old one does not hold for the new one. A leader
    /// steps down; the next `sync_role` takes the lead again from the new member.
    pub(crate) fn raft_replaced(&mut self) {
        if self.leading {
            self.step_down();
        }
        self.replicated = serde_json::Value::Null;
    }

    /// Commits the difference between the state and what was last replicated.
    pub(super) fn replicate(&mut self) -> Result<(), Status> {
        let Some(r) = self.replica() else {
            return Err(Status::unavailable(
                "this manager's Raft member is not running",
            ));
        };
        let new = serde_json::to_value(&self.cluster)
            .map_err(|e| Status::internal(format!("encoding the state: {e}")))?;
        let cmd = crate::raft::command::diff(&self.replicated, &new);
        if cmd.is_empty() {
            return Ok(());
        }
        let r = match self.rt.block_on(r.write(cmd)) {
            Ok(()) => {
                self.replicated = new;
                return Ok(());
            }
            Err(WriteError::NotLeader(_)) => Status::unavailable(
                "this manager lost the leadership before the change was committed; try again",
            ),
            Err(WriteError::Failed(e)) => Status::unavailable(e),
        };
        // The write may still commit later (or never): this manager stops acting on its
        // copy, and takes the lead again — from the state machine — once Raft says so.
        self.step_down();
        Err(r)
    }

    /// This node's gossip (itself, and the keyring and peers it gossips with), once it is
    /// in a swarm and has keys: the leader's from the state, an agent's from its
    /// assignment.
    pub(crate) fn gossip_want(&self) -> Option<(crate::gossip::Member, crate::gossip::Settings)> {
        let m = self.me()?;
        let (keyring, peers) = if self.leads() {
            (
                self.cluster.swarm.as_ref()?.gossip.clone(),
                crate::dispatcher::gossip_peers(&self.cluster),
            )
        } else {
            let a = self.local.assignment.as_ref()?;
            (a.gossip.clone(), a.gossip_peers.clone())
        };
        if keyring.keys.is_empty() {
            return None;
        }
        let me = crate::gossip::Member {
            node: m.node_id.clone(),
            addr: std::net::SocketAddrV4::new(m.advertise_addr, crate::gossip::PORT),
            vtep: m.datapath_addr,
            bump: self.gossip_bump,
            start: self.gossip_bump,
        };
        let peers = peers.iter().filter_map(|p| p.parse().ok()).collect();
        Some((me, crate::gossip::Settings { keyring, peers }))
    }

    /// The other nodes' gossiped entries changed: the data plane and DNS follow.
    pub(crate) fn set_gossip_view(&mut self, view: Arc<crate::gossip::View>) {
        if *self.gossip_view != *view {
            self.gossip_view = view;
            if let Err(e) = self.push() {
                tracing::error!("{}", e.message());
            }
        }
    }

    /// What the gossip publishes for this node (see [`Daemon::push`]).
    pub(crate) fn own_entries(&self) -> tokio::sync::watch::Receiver<Arc<crate::gossip::Own>> {
        self.own_entries.subscribe()
    }

    /// On the leader: the gossip keyring's rotation (SwarmKit's key manager): a key where
    /// there is none, a new one every [`GOSSIP_KEY_ROTATION`], the newest made primary
    /// [`GOSSIP_KEY_GRACE`] after it was handed out. Returns whether it changed.
    pub(super) fn rotate_gossip_keys(&mut self) -> bool {
        if !self.leads() {
            return false;
        }
        let Some(s) = self.cluster.swarm.as_mut() else {
            return false;
        };
        let t = now();
        if s.gossip.keys.is_empty() || s.gossip.age(t) >= GOSSIP_KEY_ROTATION {
            if let Err(e) = s.gossip.add(t) {
                tracing::error!("gossip: a new key: {e}");
                return false;
            }
            if s.gossip.keys.len() == 1 {
                s.gossip.primary = s.gossip.keys[0].id;
            }
            tracing::info!("gossip: a new key handed out");
            return true;
        }
        if s.gossip.promote(t, GOSSIP_KEY_GRACE) {
            tracing::info!(
                primary = s.gossip.primary,
                "gossip: messages sealed with the newest key"
            );
            return true;
        }
        false
    }

    /// On the leader: the datapath keys' rotation (SwarmKit's key manager, see
    /// [`crate::datapath_keys`]): three keys where there are none, then the oldest
    /// replaced every rotation period. Returns whether they changed.
    pub(super) fn rotate_datapath_keys(&mut self) -> bool {
        if !self.leads() {
            return false;
        }
        let Some(s) = self.cluster.swarm.as_mut() else {
            return false;
        };
        let t = now();
        if !s.datapath.due(t) {
            return false;
        }
        if let Err(e) = s.datapath.rotate(t) {
            tracing::error!("datapath keys: {e}");
            return false;
        }
        let primary = s.datapath.for_node().first().map_or(0, |k| k.tag);
        tracing::info!(primary, "datapath keys rotated");
        true
    }

    /// Where this node's Raft member is stored.
    pub(crate) fn raft_path(&self) -> std::path::PathBuf {
        match self.me().map_or(0, |m| m.raft_epoch) {
            0 => self.cfg.data_root.join("raft.redb"),
            n => self.cfg.data_root.join(format!("raft.{n}.redb")),
        }
    }

    /// Whom a manager that joined asks to be added to Raft: the leader if known, else
    /// the manager it joined through.
    pub(crate) fn join_via(&self) -> Vec<std::net::SocketAddr> {
        let leader = self.replica().and_then(|r| r.leader()).map(|l| l.addr);
        let joined = self.me().and_then(|m| m.manager_addr.clone());
        leader
            .into_iter()
            .chain(joined)
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// The managers' 2377 addresses, as Raft's membership has them.
    pub(crate) fn manager_addrs(&self) -> Vec<String> {
        self.replica()
            .map(|r| r.voters().into_iter().map(|(_, p)| p.addr).collect())
            .unwrap_or_default()
    }
}
