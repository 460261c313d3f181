//! `swarmgate daemon`: owns the cluster state, runs tasks and their DNS servers, programs
//! the data plane, persists everything, and serves the gRPC API on a Unix socket.
//!
//! Every API call takes the daemon's one lock on a blocking thread, validates completely,
//! changes the state, then [`Daemon::commit`]s: the state is written to redb, the data
//! plane gets the new [`NodeState`](crate::dataplane::NodeState) and the DNS its new view.
//! A refused call changes nothing. A reconcile loop (every 500 ms) replaces tasks that
//! exited, so the replica count holds.
//!
//! Stopping the daemon leaves tasks, namespaces and bridges running (Docker's
//! live-restore); the next start adopts them and re-creates the data plane's ports.
//!
//! SwarmKit's pipeline, as modules: the API adapter (`grpc`), the verbs per object kind
//! (`networks`, `services`, `containers`, `membership`), the orchestrator (`orchestrator`,
//! asking [`crate::scheduler`] where tasks go), and the node runtime (`tasks`; the cluster
//! side in [`crate::runtime`]). The store is [`crate::store`]; the data plane is reached
//! only through [`crate::dataplane::NodeState`].

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::api;
use crate::cluster::{
    self, now, ports_summary, random_id, Cluster, Desired, Meta, Status as TStatus, TaskRecord,
    GWBRIDGE, GWBRIDGE_GW, GWBRIDGE_NET, GWBRIDGE_PREFIX,
};
use crate::dataplane::{DataPlane, NodeState};
use crate::dispatcher::NetAttachment;
use crate::dns::{Dns, DNS_ADDR};
use crate::ipam::Subnet;
use crate::local::{LocalTask, NodeLocal};
use crate::network::CreateNetwork;
use crate::publish::{self, PortConfig};
use crate::service::{CreateService, EndpointMode, ServiceMode};
use crate::store::Store;
use crate::task::{process_start_time, Attachment, Task, TaskSpec, TaskState};

mod assigned;
mod containers;
mod grpc;
mod leadership;
mod membership;
mod networks;
mod orchestrator;
mod services;
mod tasks;

use grpc::lock_state;
pub use grpc::Api;
pub use membership::{Want, LEADER_IS_AT, LOST_QUORUM, NOT_A_MANAGER};

/// How long a slot waits after its task ended before a replacement starts.
const RESTART_DELAY: u64 = 1;
/// Ended tasks kept per slot (Docker's task history retention limit).
const HISTORY: usize = 5;
/// Tasks the reconcile loop starts per round (once a second): each start creates a
/// namespace and veths under the state lock, so a large service is brought up over
/// several rounds instead of holding the lock for all of it.
const STARTS_PER_ROUND: usize = 16;

/// Where the daemon keeps things.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The API socket.
    pub socket: PathBuf,
    /// State database, task logs and working directories.
    pub data_root: PathBuf,
    /// Where the embedded DNS forwards names it does not know (default: the resolvers of
    /// the daemon's `/etc/resolv.conf`).
    pub dns_upstream: Option<std::net::SocketAddr>,
}

/// The daemon's state: the cluster and what runs on this node.
pub struct Daemon {
    cfg: DaemonConfig,
    cluster: Cluster,
    /// What this node has for itself: its tasks' runtime, its last assignment.
    local: NodeLocal,
    running: HashMap<String, Task>,
    dns_servers: HashMap<String, JoinHandle<()>>,
    dp: Box<dyn DataPlane>,
    store: Store,
    dns: Dns,
    rt: tokio::runtime::Handle,
    applied: Option<NodeState>,
    /// States written to the store so far (see `Api::call`).
    saves: u64,
    /// Tasks being stopped off the state lock, with the addresses they still hold.
    stopping: Vec<(JoinHandle<()>, tasks::Held)>,
    /// On a manager: when each other node's last heartbeat arrived (not persisted: after
    /// a restart every node is Down until it beats again).
    heartbeats: HashMap<String, std::time::Instant>,
    /// The last attempt to program the data plane failed (retried every tick).
    push_failed: bool,
    /// The last retry's error, logged once.
    push_error: Option<String>,
    /// Nodes whose going Down was logged (each transition once).
    down_logged: std::collections::HashSet<String>,
    /// When `swarm update --dispatcher-heartbeat` last changed the period, and the period
    /// before (not persisted).
    period_change: Option<(std::time::Instant, std::time::Duration)>,
    /// Raised by every commit: the dispatcher's streams send nodes their new assignments.
    changes: tokio::sync::watch::Sender<u64>,
    /// On a worker: raised when a task's state changes, so the session reports at once.
    reports: Arc<tokio::sync::Notify>,
    /// On a manager: its Raft member, once the node runtime has started it (shared with
    /// the 2377 server, which hands it Raft's messages without taking the state lock).
    raft: Arc<arc_swap::ArcSwapOption<crate::raft::Replica>>,
    /// Whether this daemon acts as the swarm's leader: it holds the replicated state in
    /// `cluster`, orchestrates, and commits through Raft. Otherwise it is an agent, like
    /// a worker (SwarmKit runs an agent on every node, managers included).
    leading: bool,
    /// The cluster state as last committed through Raft (JSON), what the next command is
    /// the difference from.
    replicated: serde_json::Value,
    /// When this manager last took the lead (nodes get the heartbeat grace from then).
    leader_since: std::time::Instant,
    /// The role the leader wants this node to have, when its certificate has the other
    /// (`node promote`/`demote`): the agent renews its certificate for it.
    role_wanted: Option<String>,
    /// The other nodes' gossiped entries (without those of nodes gossip says are down):
    /// where this node's remote endpoints, VIP backends and DNS names come from.
    gossip_view: Arc<crate::gossip::View>,
    /// This node's own entries, as the gossip publishes them.
    own_entries: tokio::sync::watch::Sender<Arc<crate::gossip::Own>>,
    /// The state a new Raft group's first leader adopts (`--force-new-cluster`).
    adopt: Option<Cluster>,
    /// This daemon's gossip incarnation (its start, in milliseconds since the epoch).
    gossip_bump: u64,
}

fn bad(msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(msg.to_string())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let mut v = vec!["ip"];
    v.extend_from_slice(args);
    crate::task::sh(&v).map_err(|(cmd, err)| anyhow::anyhow!("{cmd}: {err}"))
}

impl Daemon {
    /// This node's place in the swarm, if it is in one.
    fn me(&self) -> Option<&crate::local::Membership> {
        self.local.swarm.as_ref()
    }

    /// This node's ID, if it is in a swarm.
    fn my_id(&self) -> Option<&str> {
        self.me().map(|m| m.node_id.as_str())
    }

    /// Whether this node is a manager.
    fn is_manager(&self) -> bool {
        self.me().is_some_and(|m| m.is_manager())
    }

    /// Whether this node leads the swarm now (see [`Daemon::leading`]).
    fn leads(&self) -> bool {
        self.leading && self.is_manager()
    }

    /// This manager's Raft member, if it runs.
    fn replica(&self) -> Option<Arc<crate::raft::Replica>> {
        self.raft.load_full()
    }

    fn not_swarm() -> Status {
        Status::failed_precondition(
            "This node is not a swarm manager. Use \"swarmgate swarm init\" to connect this node to swarm and try again.",
        )
    }

    /// The ranges of this node no overlay may overlap: the gateway bridge and the
    /// underlay's subnet.
    fn node_reserved(&self) -> Vec<(Subnet, String)> {
        let mut v = vec![(
            Subnet::new(GWBRIDGE_NET, GWBRIDGE_PREFIX).expect("valid"),
            GWBRIDGE.to_owned(),
        )];
        let (a, p) = self.dp.underlay();
        let masked = u32::from(a) & u32::MAX.checked_shl(32 - p as u32).unwrap_or(0);
        if let Ok(s) = Subnet::new(Ipv4Addr::from(masked), p) {
            v.push((s, "the underlay".to_owned()));
        }
        v
    }

    /// Commits the state: on the leader through Raft first (refused, and nothing saved,
    /// when no quorum takes it), then persisted here, then pushed to the data plane and
    /// the DNS.
    fn commit(&mut self) -> Result<(), Status> {
        if self.leads() {
            self.replicate()?;
            // Committed: Raft holds it now, whatever happens to the local copy below, so
            // nothing may roll memory back to before it.
            self.saves += 1;
        }
        if let Err(e) = self.store.save(&self.cluster, &self.local) {
            if self.leads() {
                // The replicated state is Raft's; this file is the leader's cache of it
                // (and of this node's own state, written again at the next commit).
                tracing::error!("saving state: {e:#}");
            } else {
                return Err(Status::internal(format!("saving state: {e:#}")));
            }
        }
        self.saves += 1;
        self.changes.send_modify(|v| *v += 1);
        self.push()
    }

    /// Programs the data plane and the DNS: on a manager from the cluster state, on a
    /// worker from its assignment.
    fn push(&mut self) -> Result<(), Status> {
        let me = self.me();
        let leads = self.leads();
        let vtep = me.map_or(Ipv4Addr::UNSPECIFIED, |m| m.datapath_addr);
        let mut a = match (me, &self.local.assignment) {
            (Some(s), Some(a)) if !leads => {
                let mut a = a.clone();
                a.state.vxlan_port = s.data_path_port;
                a
            }
            // A manager between leading and its first assignment keeps what it has.
            (Some(s), None) if s.is_manager() && !leads => return Ok(()),
            (Some(s), _) if !leads => crate::dispatcher::Assignment {
                state: NodeState {
                    vxlan_port: s.data_path_port,
                    ..Default::default()
                },
                ..Default::default()
            },
            (s, _) => {
                crate::dispatcher::assignment(&self.cluster, s.map_or("", |s| s.node_id.as_str()))
            }
        };
        // This node's endpoints go to the gossip; every node's come back from it.
        let own = crate::gossip::program::own_entries(
            &a,
            |id| self.cluster.tasks.get(id).is_some_and(|t| t.live()),
            vtep,
        );
        self.own_entries.send_if_modified(|cur| {
            let changed = **cur != own;
            if changed {
                *cur = Arc::new(own.clone());
            }
            changed
        });
        crate::gossip::program::program(
            &mut a.state,
            &mut a.dns,
            &a.networks,
            &own,
            &self.gossip_view,
        );
        let (st, dns) = (a.state, a.dns);
        if self.applied.as_ref() != Some(&st) {
            // A failure is retried by housekeeping, not only at the next change.
            self.push_failed = true;
            self.dp
                .apply(&st)
                .map_err(|e| Status::internal(format!("programming the data plane: {e:#}")))?;
            self.applied = Some(st);
            self.push_failed = false;
        }
        self.dns.set_view(dns);
        Ok(())
    }

    fn ensure_gwbridge() -> anyhow::Result<()> {
        // Through `ip`, not /sys: a daemon started with `nsenter --net` sees the /sys of
        // the namespace it came from.
        if ip(&["link", "show", GWBRIDGE]).is_err() {
            ip(&["link", "add", GWBRIDGE, "type", "bridge"])?;
        }
        ip(&[
            "addr",
            "replace",
            &format!("{GWBRIDGE_GW}/{GWBRIDGE_PREFIX}"),
            "dev",
            GWBRIDGE,
        ])?;
        ip(&["link", "set", GWBRIDGE, "up"])?;
        Ok(())
    }
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Runs the daemon until SIGINT/SIGTERM: restores the state, serves the API, reconciles.
pub fn run(cfg: DaemonConfig, dp: Box<dyn DataPlane>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg, dp))
}

async fn serve(cfg: DaemonConfig, dp: Box<dyn DataPlane>) -> anyhow::Result<()> {
    let store = Store::open(&cfg.data_root.join("state.redb"))?;
    let (cluster, local) = store.load()?.unwrap_or_default();
    let dns = Dns::new(cfg.dns_upstream);
    let mut d = Daemon {
        cfg: cfg.clone(),
        cluster,
        local,
        running: HashMap::new(),
        dns_servers: HashMap::new(),
        dp,
        store,
        dns,
        rt: tokio::runtime::Handle::current(),
        applied: None,
        saves: 0,
        stopping: Vec::new(),
        heartbeats: HashMap::new(),
        push_failed: false,
        push_error: None,
        down_logged: Default::default(),
        period_change: None,
        changes: tokio::sync::watch::channel(0).0,
        reports: Arc::new(tokio::sync::Notify::new()),
        raft: Default::default(),
        leading: false,
        replicated: serde_json::Value::Null,
        leader_since: std::time::Instant::now(),
        role_wanted: None,
        gossip_view: Default::default(),
        own_entries: tokio::sync::watch::channel(Default::default()).0,
        adopt: None,
        gossip_bump: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let raft = d.raft.clone();
    let d = tokio::task::spawn_blocking(move || -> anyhow::Result<Daemon> {
        d.upgrade_swarm()
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        d.restore().context("restoring tasks")?;
        d.reconcile();
        d.commit().map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        Ok(d)
    })
    .await??;
    let inner = Arc::new(Mutex::new(d));
    let api = Api {
        inner: inner.clone(),
        runtime: Default::default(),
        membership: Default::default(),
        raft,
    };

    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    let listener = tokio::net::UnixListener::bind(&cfg.socket)
        .with_context(|| format!("listening on {}", cfg.socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o660))?;
    }
    tracing::info!(socket = %cfg.socket.display(), "daemon listening");

    // Reconcile, data-plane housekeeping, and the cluster runtime.
    let bg = inner.clone();
    let bg_api = api.clone();
    let housekeeping = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            bg_api.runtime.lock().await.ensure(&bg_api).await;
            let d = bg.clone();
            let r = tokio::task::spawn_blocking(move || {
                let logs = {
                    let mut d = lock_state(&d);
                    d.sync_role();
                    if let Err(e) = d.renew_own_certificate() {
                        tracing::error!("renewing this manager's certificate: {}", e.message());
                    }
                    if d.rotate_gossip_keys() | d.rotate_datapath_keys() | d.reconcile() {
                        if let Err(e) = d.commit() {
                            tracing::error!("{}", e.message());
                        }
                    } else if d.push_failed {
                        // Retried every tick; logged once per distinct error.
                        match d.push() {
                            Err(e) if d.push_error.as_deref() != Some(e.message()) => {
                                tracing::error!("{}", e.message());
                                d.push_error = Some(e.message().to_owned());
                            }
                            Err(_) => {}
                            Ok(()) => d.push_error = None,
                        }
                    }
                    if let Err(e) = d.dp.tick() {
                        tracing::error!("data plane: {e:#}");
                        if e.downcast_ref::<crate::dataplane::Fatal>().is_some() {
                            // Never a silent half-dead node: exit so the supervisor
                            // restarts the daemon, which adopts the running tasks.
                            tracing::error!("exiting on a fatal data-plane error");
                            std::process::exit(70);
                        }
                    }
                    d.log_paths()
                };
                // Log rotation is file I/O: done with the state lock released.
                for p in logs {
                    if let Err(e) =
                        crate::logs::rotate(&p, crate::logs::MAX_SIZE, crate::logs::MAX_FILES)
                    {
                        tracing::warn!(file = %p.display(), "rotating a task log: {e}");
                    }
                }
            })
            .await;
            if let Err(e) = r {
                // A panic in housekeeping is logged and survived: the next round runs on
                // the recovered state.
                tracing::error!("housekeeping failed, continuing: {e}");
            }
        }
    });

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    tonic::transport::Server::builder()
        .add_service(api::swarmgate_server::SwarmgateServer::new(api.clone()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await?;
    housekeeping.abort();
    api.runtime.lock().await.stop().await;
    let _ = std::fs::remove_file(&cfg.socket);
    let d = inner.clone();
    tokio::task::spawn_blocking(move || {
        lock_state(&d).shutdown();
    })
    .await?;
    tracing::info!("daemon stopped (tasks keep running)");
    Ok(())
}
