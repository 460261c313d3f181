//! Raft among the managers: the cluster state replicated by openraft 0.9 (storage-v2), its
//! log and state machine in redb ([`storage`]), its messages over mutual TLS on 2377
//! ([`network`]; the server side is [`crate::remote`]). SwarmKit's counterpart is
//! `manager/state/raft` (etcd's raft library).
//!
//! What is replicated is [`command::Command`]s: the object-level changes one accepted
//! request made, computed by the leader, applied identically by every manager. The
//! state machine is the cluster state; a snapshot is that state serialised.
//!
//! Timing: heartbeats every 150 ms; a follower stands for election once the leader's lease
//! (`election_timeout_max`, 1 s) and a random election timeout (0.5–1 s) have passed
//! without one (openraft `raft_core.rs` `handle_tick_election`), so a leader that dies is
//! replaced after 1.5–2 s (SwarmKit's defaults, `ElectionTick` 10 ticks of 1 s, take 10 s
//! or more).

pub mod command;
pub mod network;
pub mod storage;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Raft, ServerState};
use serde::{Deserialize, Serialize};

pub use command::Command;

/// A manager's Raft ID: the first 8 bytes of the SHA-256 of its node ID (node IDs are
/// random 25-character strings, so two managers never share one in practice; a joining
/// manager whose ID collides is refused, see [`Replica::add_manager`]).
pub type NodeId = u64;

/// Raft's ID for node `node`.
pub fn raft_id(node: &str) -> NodeId {
    use sha2::Digest;
    let d = sha2::Sha256::digest(node.as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// A manager as the Raft membership knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its swarm node ID.
    pub node: String,
    /// Where it listens on 2377, `IP:PORT`.
    pub addr: String,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.node, self.addr)
    }
}

openraft::declare_raft_types!(
    /// swarmgate's Raft types.
    pub TypeConfig:
        D = Command,
        R = (),
        Node = Peer,
);

/// Log entries between snapshots unless `--snapshot-interval` says otherwise (SwarmKit's
/// `SnapshotInterval`).
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = 10_000;
/// The fewest `--snapshot-interval` accepts.
pub const MIN_SNAPSHOT_INTERVAL: u64 = 10;
/// The most.
pub const MAX_SNAPSHOT_INTERVAL: u64 = 1_000_000;
/// Entries kept behind a snapshot for followers a little behind (SwarmKit's
/// `LogEntriesForSlowFollowers`, 500); a follower further behind gets the snapshot.
pub const LOG_FOR_SLOW_FOLLOWERS: u64 = 500;
/// How often a manager checks whether a snapshot is due.
const COMPACTION_CHECK: Duration = Duration::from_millis(500);

/// How long a membership change may take (a learner catching up included).
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a write waits for its commit before the request is refused.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// This manager's Raft member: the consensus module and its state machine.
#[derive(Clone)]
pub struct Replica {
    /// openraft's handle.
    pub raft: Raft<TypeConfig>,
    /// The replicated state.
    pub machine: storage::Machine,
    /// This manager's Raft ID.
    pub id: NodeId,
    /// This manager.
    pub me: Peer,
    /// The TLS configuration its messages go out with (swapped when the certificate is
    /// renewed, without restarting the member).
    pub tls: Arc<arc_swap::ArcSwap<rustls::ClientConfig>>,
    /// How long this manager's committed writes took, in microseconds (from the
    /// proposal to applied here, a quorum having logged it).
    commits: Arc<std::sync::Mutex<hdrhistogram::Histogram<u64>>>,
}

/// Why a write was not committed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Another manager leads (or none does right now).
    #[error("this manager is not the leader")]
    NotLeader(Option<Peer>),
    /// No quorum answered in time, or Raft stopped.
    #[error("{0}")]
    Failed(String),
}

/// Takes a snapshot once `--snapshot-interval` entries were applied since the last one,
/// then purges the log behind it but [`LOG_FOR_SLOW_FOLLOWERS`] (at most the interval)
/// entries — every manager on its own, as SwarmKit's `raft.go` `saveSnapshot` does. Ends
/// with Raft.
async fn compact(raft: Raft<TypeConfig>, machine: storage::Machine) {
    let mut metrics = raft.metrics();
    let mut purged_to = 0;
    loop {
        tokio::time::sleep(COMPACTION_CHECK).await;
        let (applied, snapshot) = {
            let m = metrics.borrow_and_update();
            if m.running_state.is_err() {
                return;
            }
            (
                m.last_applied.map_or(0, |l| l.index),
                m.snapshot.map(|l| l.index),
            )
        };
        let interval = machine.snapshot_interval();
        if applied.saturating_sub(snapshot.unwrap_or(0)) >= interval {
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            continue;
        }
        if let Some(s) = snapshot {
            let upto = s.saturating_sub(LOG_FOR_SLOW_FOLLOWERS.min(interval));
            if upto > purged_to {
                if raft.trigger().purge_log(upto).await.is_err() {
                    return;
                }
                purged_to = upto;
            }
        }
        if metrics.has_changed().is_err() {
            return;
        }
    }
}

impl Replica {
    /// Starts this manager's member over the database at `path`. A manager that created the
    /// swarm (`bootstrap`) and has never been in a Raft group makes a group of itself; one
    /// that joined waits for the leader to add it.
    pub async fn start(
        path: &std::path::Path,
        me: Peer,
        tls: Arc<rustls::ClientConfig>,
        bootstrap: bool,
    ) -> anyhow::Result<Replica> {
        let db = storage::open(path)?;
        let log = storage::LogStore::new(db.clone());
        let pristine = log.is_pristine()?;
        let machine = storage::Machine::load(db)?;
        let config = openraft::Config {
            cluster_name: "swarmgate".into(),
            heartbeat_interval: 150,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            // JSON carries bytes as numbers: chunks small enough for one gRPC message.
            snapshot_max_chunk_size: 256 * 1024,
            // Snapshots and purges follow the swarm's `--snapshot-interval` (see
            // `compact`), a setting of the replicated state that openraft's fixed
            // configuration cannot follow.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            ..Default::default()
        }
        .validate()?;
        let id = raft_id(&me.node);
        let tls = Arc::new(arc_swap::ArcSwap::new(tls));
        let raft = Raft::new(
            id,
            Arc::new(config),
            network::Network::new(tls.clone()),
            log,
            machine.clone(),
        )
        .await?;
        if bootstrap && pristine {
            let mut members = BTreeMap::new();
            members.insert(id, me.clone());
            raft.initialize(members)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::info!(raft_id = id, "raft: a new group of one manager");
        }
        tokio::spawn(compact(raft.clone(), machine.clone()));
        Ok(Replica {
            raft,
            machine,
            id,
            me,
            tls,
            commits: Arc::new(std::sync::Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)?,
            )),
        })
    }

    /// Whether this manager leads now.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// The leader, if one is known.
    pub fn leader(&self) -> Option<Peer> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let l = m.current_leader?;
        m.membership_config.membership().get_node(&l).cloned()
    }

    /// The voting managers.
    pub fn voters(&self) -> Vec<(NodeId, Peer)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let ms = m.membership_config.membership();
        ms.voter_ids()
            .filter_map(|id| Some((id, ms.get_node(&id)?.clone())))
            .collect()
    }

    /// Commits `cmd`: returns once a quorum has it and this manager applied it.
    pub async fn write(&self, cmd: Command) -> Result<(), WriteError> {
        let start = std::time::Instant::now();
        let r = self.propose(cmd).await;
        if r.is_ok() {
            let us = start.elapsed().as_micros().min(60_000_000) as u64;
            let mut h = self.commits.lock().unwrap_or_else(|e| e.into_inner());
            let _ = h.record(us.max(1));
        }
        r
    }

    /// Commit latency so far (count and percentiles in microseconds), the voters and the
    /// leader, for `swarmgate stats`.
    pub fn commit_stats(&self) -> serde_json::Value {
        let voters: Vec<String> = self.voters().into_iter().map(|(_, p)| p.node).collect();
        let leader = self.leader().map(|p| p.node);
        let (last_log, purged, snapshot) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (
                m.last_log_index.unwrap_or(0),
                m.purged.map_or(0, |l| l.index),
                m.snapshot.map_or(0, |l| l.index),
            )
        };
        let h = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "voters": voters,
            "leader": leader,
            "last_log_index": last_log,
            "purged_index": purged,
            "snapshot_index": snapshot,
            "writes": h.len(),
            "p50_us": h.value_at_quantile(0.5),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
        })
    }

    async fn propose(&self, cmd: Command) -> Result<(), WriteError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(cmd)).await {
            Err(_) => Err(WriteError::Failed(
                "the write was not committed in time: too few managers reachable (quorum lost?)"
                    .into(),
            )),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => match e.forward_to_leader() {
                Some(f) => Err(WriteError::NotLeader(f.leader_node.clone())),
                None => Err(WriteError::Failed(e.to_string())),
            },
        }
    }

    /// Adds manager `peer` (on the leader): a learner until it has the log, then a voter.
    /// Bounded by [`MEMBERSHIP_TIMEOUT`].
    pub async fn add_manager(&self, peer: Peer) -> Result<(), String> {
        let id = raft_id(&peer.node);
        let known = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned();
        if known.is_some_and(|p| p.node != peer.node) {
            return Err(format!(
                "manager {} collides with another's Raft ID",
                peer.node
            ));
        }
        let change = async {
            self.raft
                .add_learner(id, peer.clone(), true)
                .await
                .map_err(|e| e.to_string())?;
            // Only this voter added: a change running alongside keeps its own.
            self.raft
                .change_membership(openraft::ChangeMembers::AddVoterIds([id].into()), false)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(MEMBERSHIP_TIMEOUT, change)
            .await
            .map_err(|_| {
                "the membership change was not committed in time (quorum?)".to_string()
            })??;
        tracing::info!(node = %peer.node, addr = %peer.addr, "raft: manager added");
        Ok(())
    }

    /// Removes manager `node` from the voters (on the leader). Bounded by
    /// [`MEMBERSHIP_TIMEOUT`].
    pub async fn remove_manager(&self, node: &str) -> Result<(), String> {
        let id = raft_id(node);
        if self.voters().iter().all(|(i, _)| *i == id) {
            return Err("the last manager cannot be removed".into());
        }
        let change = self
            .raft
            .change_membership(openraft::ChangeMembers::RemoveVoters([id].into()), false);
        tokio::time::timeout(MEMBERSHIP_TIMEOUT, change)
            .await
            .map_err(|_| "the membership change was not committed in time (quorum?)".to_string())?
            .map_err(|e| e.to_string())?;
        tracing::info!(%node, "raft: manager removed");
        Ok(())
    }

    /// Whether `node` may send this member Raft's messages: a member of its group, or
    /// anyone while this member belongs to none yet (a manager being added). A manager of
    /// a group left behind by `--force-new-cluster`, or demoted, is refused.
    pub fn accepts(&self, node: &str) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let ms = m.membership_config.membership();
        let empty = ms.nodes().next().is_none();
        empty || ms.get_node(&raft_id(node)).is_some_and(|p| p.node == node)
    }

    /// Stops the member.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}
