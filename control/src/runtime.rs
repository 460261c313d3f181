//! The node runtime's cluster side: what runs because of this node's place in the swarm —
//! on a manager the 2377 listener and its Raft member (a manager that joined asks the
//! leader to add it), on every node that does not lead the agent's session (heartbeats,
//! task states, assignments) with the leader — started, restarted and stopped to match
//! the state ([`crate::daemon`]'s `want`). Checked after every membership change and on
//! every housekeeping tick, so a listener that could not bind, a session whose manager is
//! away, or a leader that changed is followed within a tick.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::agent::{Description, Session};
use crate::daemon::{Api, Want, LEADER_IS_AT};
use crate::raft::{Peer, Replica};
use crate::remote::Remote;

/// What is running now.
#[derive(Default)]
pub struct ClusterRuntime {
    /// The 2377 listener, for (address, TLS).
    listener: Option<(ListenerKey, Running)>,
    /// The Raft member, for (itself, TLS).
    raft: Option<(RaftKey, Arc<Replica>)>,
    /// A joined manager asking the leader to add it to Raft's membership.
    joining: Option<JoinHandle<()>>,
    /// Tells the daemon at once when Raft's leader changes (not only at the next tick).
    watching: Option<AbortOnDrop>,
    /// On the leader: taking demoted managers out of Raft's membership.
    removing: Option<JoinHandle<()>>,
    /// The certificate and key the Raft member's connections present.
    raft_tls: Option<(String, String)>,
    /// Gossip on 7946, as (itself, the running gossip, the task handing its verdicts to
    /// the daemon).
    gossip: Option<(crate::gossip::Member, crate::gossip::Gossip, AbortOnDrop)>,
    /// The agent's session, for (manager, TLS, description).
    session: Option<(SessionKey, Running)>,
    /// The last start failure logged, so a retry every tick logs it once.
    failed: Option<String>,
}

type Tls = (String, String, String);
type ListenerKey = (String, Tls);
/// A member is restarted only when the manager or its group changes (not when its
/// certificate is renewed: the new one is swapped in).
type RaftKey = (Peer, u64);
type SessionKey = (
    SocketAddr,
    Tls,
    (String, std::net::Ipv4Addr, std::net::Ipv4Addr),
);

struct Running {
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

impl Running {
    async fn stop(mut self) {
        match self.stop.take() {
            Some(tx) => {
                let _ = tx.send(());
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
                self.task.abort();
            }
            None => self.task.abort(),
        }
    }
}

impl ClusterRuntime {
    /// Makes what runs match what the state wants.
    pub async fn ensure(&mut self, api: &Api) {
        let (want, raft_path, gossip) = match api
            .call(|d| {
                d.sync_role();
                Ok((
                    d.want(),
                    d.raft_path(),
                    d.gossip_want().map(|(m, s)| (m, s, d.own_entries())),
                ))
            })
            .await
        {
            Ok(w) => w.into_inner(),
            Err(e) => {
                tracing::error!("cluster runtime: {}", e.message());
                return;
            }
        };
        self.ensure_raft(api, &want, &raft_path).await;
        self.ensure_listener(api, &want).await;
        self.ensure_session(api, &want).await;
        self.ensure_gossip(api, gossip).await;
    }

    async fn ensure_gossip(
        &mut self,
        api: &Api,
        want: Option<(
            crate::gossip::Member,
            crate::gossip::Settings,
            tokio::sync::watch::Receiver<Arc<crate::gossip::Own>>,
        )>,
    ) {
        let Some((me, settings, own)) = want else {
            if self.gossip.take().is_some() {
                // Out of the swarm: no other node's endpoints any more.
                let _ = api
                    .call(|d| Ok(d.set_gossip_view(Default::default())))
                    .await;
            }
            return;
        };
        if let Some((m, g, _)) = &self.gossip {
            if *m == me {
                g.update(settings);
                return;
            }
        }
        self.gossip = None;
        // Every start of the gossip is a new incarnation of this node's tables (a table
        // starts empty; its rows must win over those of the previous start).
        let mut life = me.clone();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        life.start = life.start.max(now_ms);
        life.bump = life.bump.max(life.start);
        match crate::gossip::Gossip::start(life, settings, own).await {
            Ok(g) => {
                tracing::info!(addr = %me.addr, "gossip on UDP and TCP {}", me.addr);
                let mut view = g.view();
                let api = api.clone();
                let watcher = AbortOnDrop(tokio::spawn(async move {
                    while view.changed().await.is_ok() {
                        let v = view.borrow_and_update().clone();
                        if let Err(e) = api.call(move |d| Ok(d.set_gossip_view(v))).await {
                            tracing::error!("gossip: {}", e.message());
                        }
                    }
                }));
                self.gossip = Some((me, g, watcher));
            }
            Err(e) => self.failure(format!("gossip: listening on {}: {e} (retrying)", me.addr)),
        }
    }

    async fn ensure_raft(&mut self, api: &Api, want: &Want, path: &std::path::Path) {
        let bootstrap = want.raft.as_ref().is_some_and(|r| r.1);
        let key = want
            .raft
            .clone()
            .filter(|_| want.tls.is_some())
            .map(|(peer, _, epoch)| (peer, epoch));
        if self.raft.as_ref().map(|r| &r.0) != key.as_ref() {
            self.watching = None;
            if let Some((_, r)) = self.raft.take() {
                api.raft.store(None);
                r.shutdown().await;
                // Whatever this daemon took from that member is not the next one's.
                let _ = api.call(|d| Ok(d.raft_replaced())).await;
            }
            if let Some(j) = self.joining.take() {
                j.abort();
            }
        }
        // No Raft log is kept but the current group's: none when not a manager (out of
        // the swarm, demoted), none of a group left by `--force-new-cluster`.
        if self.raft.is_none() {
            remove_old_logs(path, key.is_some());
        }
        let (Some((me, _)), Some((root, cert, key_pem))) = (key.clone(), want.tls.clone()) else {
            return;
        };
        if self.raft.is_none() {
            let tls = match crate::tls::client_config(&root, Some((&cert, &key_pem))) {
                Ok(t) => t,
                Err(e) => return self.failure(format!("raft: TLS configuration: {e:#}")),
            };
            match Replica::start(path, me.clone(), tls, bootstrap).await {
                Ok(r) => {
                    let r = Arc::new(r);
                    api.raft.store(Some(r.clone()));
                    let _ = api.call(|d| Ok(d.raft_replaced())).await;
                    self.watching = Some(AbortOnDrop(tokio::spawn(watch_leader(
                        api.clone(),
                        r.raft.metrics(),
                    ))));
                    self.raft = Some((key.clone().expect("some"), r));
                }
                Err(e) => return self.failure(format!("raft: starting: {e:#}")),
            }
        }
        let r = self.raft.as_ref().expect("started").1.clone();
        // A renewed certificate: new connections present it.
        let presented = (cert.clone(), key_pem.clone());
        if self.raft_tls.as_ref() != Some(&presented) {
            if let Ok(tls) = crate::tls::client_config(&root, Some((&cert, &key_pem))) {
                r.tls.store(tls);
                self.raft_tls = Some(presented);
            }
        }
        // On the leader: voters that are no longer managers leave the membership.
        if r.is_leader() && !self.removing.as_ref().is_some_and(|j| !j.is_finished()) {
            let stale = match api.call(|d| Ok(d.stale_voters())).await {
                Ok(v) => v.into_inner(),
                Err(_) => Vec::new(),
            };
            if !stale.is_empty() {
                let r = r.clone();
                self.removing = Some(tokio::spawn(async move {
                    for node in stale {
                        if let Err(e) = r.remove_manager(&node).await {
                            tracing::warn!(%node, "raft: removing a demoted manager: {e}");
                        }
                    }
                }));
            }
        }
        // A manager that joined asks to be added until it is a voter.
        let voter = r.voters().iter().any(|(id, _)| *id == r.id);
        let busy = self.joining.as_ref().is_some_and(|j| !j.is_finished());
        if !voter && !bootstrap && !busy {
            let via = match api.call(|d| Ok(d.join_via())).await {
                Ok(v) => v.into_inner(),
                Err(_) => return,
            };
            let tls = crate::tls::client_config(&root, Some((&cert, &key_pem)));
            self.joining = Some(tokio::spawn(async move {
                let Ok(tls) = tls else { return };
                for addr in via {
                    match crate::agent::join_raft(addr, tls.clone(), &me.addr).await {
                        Ok(()) => {
                            tracing::info!(via = %addr, "raft: added to the managers' group");
                            return;
                        }
                        Err(e) => tracing::warn!(via = %addr, "raft: asking to be added: {e}"),
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }));
        }
    }

    async fn ensure_listener(&mut self, api: &Api, want: &Want) {
        let key = want.listen.clone().zip(want.tls.clone());
        if let Some((k, r)) = &self.listener {
            if Some(k) == key.as_ref() && !r.task.is_finished() {
                return;
            }
        }
        if let Some((_, r)) = self.listener.take() {
            r.stop().await;
        }
        let Some((listen, (root, cert, key_pem))) = key.clone() else {
            return;
        };
        let tls = match crate::tls::server_config(&root, &cert, &key_pem) {
            Ok(t) => t,
            Err(e) => return self.failure(format!("2377: TLS configuration: {e:#}")),
        };
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                return self.failure(format!(
                    "2377: failed to listen on {listen}: {e} (retrying)"
                ))
            }
        };
        tracing::info!(%listen, "managing the swarm (mutual TLS on 2377)");
        let (tx, rx) = oneshot::channel();
        // Callers are authorised against the cluster this certificate is from.
        let cluster_id = match crate::ca::pem_der(&cert, "node certificate")
            .and_then(|d| crate::ca::identity(&d))
        {
            Ok(id) => id.cluster_id,
            Err(e) => return self.failure(format!("2377: this node's certificate: {e}")),
        };
        let remote = Remote::new(api.clone(), &cluster_id);
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = remote.serve(listener, tls, shutdown).await {
                tracing::error!("2377: {e:#}");
            }
        });
        self.listener = Some((
            key.expect("some"),
            Running {
                task,
                stop: Some(tx),
            },
        ));
        self.failed = None;
    }

    async fn ensure_session(&mut self, api: &Api, want: &Want) {
        let key = want
            .session
            .zip(want.tls.clone())
            .map(|(m, t)| (m, t, want.me.clone()));
        if let Some((k, r)) = &self.session {
            if Some(k) == key.as_ref() && !r.task.is_finished() {
                return;
            }
        }
        if let Some((_, r)) = self.session.take() {
            r.stop().await;
        }
        let Some((manager, (root, cert, key_pem), me)) = key.clone() else {
            return;
        };
        let me = Description {
            hostname: me.0,
            advertise_addr: me.1,
            datapath_addr: me.2,
        };
        let session = match Session::new(manager, &root, &cert, &key_pem, &me) {
            Ok(s) => s,
            Err(e) => return self.failure(format!("session with manager {manager}: {e}")),
        };
        let reported = match api.call(|d| Ok(d.report_signal())).await {
            Ok(n) => n.into_inner(),
            Err(e) => return self.failure(format!("session: {}", e.message())),
        };
        let follow = follow_assignments(
            api.clone(),
            manager,
            (root.clone(), cert.clone(), key_pem.clone()),
            me.clone(),
        );
        let task = tokio::spawn(heartbeats(
            api.clone(),
            session,
            manager,
            (root, cert, key_pem),
            me,
            reported,
            follow,
        ));
        self.session = Some((key.expect("some"), Running { task, stop: None }));
        self.failed = None;
    }

    fn failure(&mut self, why: String) {
        if self.failed.as_ref() != Some(&why) {
            tracing::error!("{why}");
            self.failed = Some(why);
        }
    }

    /// Stops whatever runs.
    pub async fn stop(&mut self) {
        self.gossip = None;
        if let Some((_, r)) = self.session.take() {
            r.stop().await;
        }
        if let Some((_, r)) = self.listener.take() {
            r.stop().await;
        }
        if let Some(j) = self.joining.take() {
            j.abort();
        }
        if let Some((_, r)) = self.raft.take() {
            r.shutdown().await;
        }
    }
}

/// Removes the Raft databases next to `path` (all of them but `path` when `keep`).
fn remove_old_logs(path: &std::path::Path, keep: bool) {
    let Some(dir) = path.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let raft = name.starts_with("raft.") && name.ends_with(".redb");
        if raft && !(keep && p == path) {
            match std::fs::remove_file(&p) {
                Ok(()) => tracing::info!(file = %p.display(), "removed an old Raft log"),
                Err(e) => tracing::warn!("removing {}: {e}", p.display()),
            }
        }
    }
}

/// Hands every change of Raft's leader to the daemon as it happens, so a new leader takes
/// over (and a deposed one steps down) without waiting for the housekeeping tick.
async fn watch_leader(
    api: Api,
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, Peer>>,
) {
    let mut last = None;
    loop {
        let now = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.state)
        };
        if last != Some(now) {
            last = Some(now);
            if let Err(e) = api.call(|d| Ok(d.sync_role())).await {
                tracing::error!("raft: following a change of leader: {}", e.message());
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Heartbeats failed in a row before an agent turns to another manager.
const FAILOVER_AFTER: u32 = 2;

/// The agent's heartbeat loop with `manager` (and, alongside, its assignments stream):
/// task states up every period and at once when one changes, certificate renewal. Ends
/// when the manager says another leads or stays unreachable (the node runtime then
/// opens a session with the next manager), or when this node was removed.
async fn heartbeats(
    api: Api,
    mut session: Session,
    manager: SocketAddr,
    (root, cert, key): (String, String, String),
    me: Description,
    reported: Arc<tokio::sync::Notify>,
    follow: impl std::future::Future<Output = ()> + Send + 'static,
) {
    // The assignments stream lives as long as the heartbeat loop.
    let _follow = AbortOnDrop(tokio::spawn(follow));
    let mut failures = 0u32;
    loop {
        let role_change = match api.call(|d| Ok(d.role_change())).await {
            Ok(r) => r.into_inner(),
            Err(_) => None,
        };
        if session.renewal_due() || role_change.is_some() {
            // Stored in the state, the new certificate changes what is wanted: the next
            // `ensure` restarts the session with it.
            match session.renew().await {
                Ok((cert, key)) => {
                    match api.call(move |d| d.store_node_certificate(cert, key)).await {
                        Ok(_) => return, // restarted with the new one
                        Err(e) => {
                            tracing::error!("keeping the renewed certificate: {}", e.message())
                        }
                    }
                }
                Err(e) => tracing::warn!(%manager, "certificate renewal: {e}"),
            }
        }
        let tasks = match api.call(|d| Ok(d.task_reports())).await {
            Ok(t) => t.into_inner(),
            Err(e) => {
                tracing::error!("task states: {}", e.message());
                Vec::new()
            }
        };
        let wait = match session.beat(tasks).await {
            Ok(period) => {
                if failures > 0 {
                    tracing::info!(%manager, "session with the manager restored");
                    failures = 0;
                }
                period
            }
            Err(e) if e.contains("is not a member of this swarm") => {
                if let Err(e) = api.call(|d| d.removed_by_manager()).await {
                    tracing::error!("leaving the swarm: {}", e.message());
                }
                return;
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(%manager, "heartbeat failed: {e}");
                }
                failures += 1;
                // Told who leads: go there. Unreachable for long: the next manager.
                let next = match e.split_once(LEADER_IS_AT) {
                    Some((_, addr)) => addr.trim().parse().ok(),
                    None if failures >= FAILOVER_AFTER => next_manager(&api, manager).await,
                    None => None,
                };
                if let Some(next) = next {
                    if let Err(e) = api.call(move |d| d.set_manager(next)).await {
                        tracing::error!("{}", e.message());
                    }
                    return;
                }
                // A fresh connection next time, rather than waiting out the broken
                // one's reconnect backoff.
                if let Ok(s) = Session::new(manager, &root, &cert, &key, &me) {
                    session = s;
                }
                Duration::from_secs(1)
            }
        };
        // The next beat when the period is over, or at once when a task changes state.
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = reported.notified() => {}
        }
    }
}

/// The manager after `current` in the list the last assignment gave.
async fn next_manager(api: &Api, current: SocketAddr) -> Option<SocketAddr> {
    let all: Vec<SocketAddr> = api
        .call(|d| Ok(d.known_managers()))
        .await
        .ok()?
        .into_inner()
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let i = all.iter().position(|a| *a == current);
    let next = match i {
        Some(i) => all.get((i + 1) % all.len()),
        None => all.first(),
    };
    next.copied().filter(|n| *n != current)
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows this worker's assignments from its manager: every set received is handed to
/// the daemon ([`crate::daemon::Api`]'s `assign`); a broken stream is opened again after
/// a second. Runs until aborted.
async fn follow_assignments(
    api: Api,
    manager: std::net::SocketAddr,
    (root, cert, key): (String, String, String),
    me: Description,
) {
    let mut failing: Option<String> = None;
    loop {
        let r: Result<(), String> = async {
            let mut session = Session::new(manager, &root, &cert, &key, &me)?;
            let mut stream = session.assignments().await?;
            while let Some(m) = stream.message().await.map_err(|e| e.message().to_owned())? {
                let a: crate::dispatcher::Assignment = serde_json::from_slice(&m.assignment)
                    .map_err(|e| format!("assignment {} unreadable: {e}", m.version))?;
                if failing.take().is_some() {
                    tracing::info!(%manager, "assignments from the manager again");
                }
                api.call(move |d| d.assign(a))
                    .await
                    .map_err(|e| e.message().to_owned())?;
            }
            Err("the manager ended the stream".into())
        }
        .await;
        if let Err(e) = r {
            if failing.as_ref() != Some(&e) {
                tracing::warn!(%manager, "assignments: {e}");
                failing = Some(e);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
