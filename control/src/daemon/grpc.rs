//! The gRPC adapter: each call of the local API runs on a blocking thread under the
//! daemon's lock, all or nothing.
//!
//! A cluster call typed on a manager that does not lead is forwarded to the leader over
//! mutual TLS on 2377 (SwarmKit's `raftproxy`, which wraps the control API the same way);
//! one that arrives forwarded is never forwarded again. With no leader, the call waits up
//! to [`NO_LEADER_WAIT`] for an election, then gets SwarmKit's no-leader message.

use super::*;

/// The gRPC service: each call runs on a blocking thread under the daemon's lock.
#[derive(Clone)]
pub struct Api {
    pub(super) inner: Arc<Mutex<Daemon>>,
    pub(super) runtime: Arc<tokio::sync::Mutex<crate::runtime::ClusterRuntime>>,
    /// Held through `swarm init`, `join` and `leave`, so that a join — which talks to a
    /// manager between checking and recording — cannot interleave with another.
    pub(super) membership: Arc<tokio::sync::Mutex<()>>,
    /// This manager's Raft member (the same handle the daemon has), reached by the 2377
    /// server without the state lock.
    pub(crate) raft: Arc<arc_swap::ArcSwapOption<crate::raft::Replica>>,
}

/// How long a cluster call waits for a leader to be elected.
const NO_LEADER_WAIT: Duration = Duration::from_secs(5);
/// Marks a call forwarded by another manager.
const FORWARDED: &str = "swarmgate-forwarded";

/// Runs a cluster call here when this node leads or is a worker (whose handler answers
/// with Docker's refusal), else forwards it to the leader. With `caller`, the handler also
/// gets the node that asked (the forwarding manager, or `None` on its own socket), for
/// answers given as that node sees the cluster.
macro_rules! cluster_call {
    ($self:ident, $r:ident, $method:ident, $handler:ident) => {
        cluster_call!(@go $self, $r, $method, |d, inner, _caller| d.$handler(inner))
    };
    ($self:ident, $r:ident, $method:ident, $handler:ident, ()) => {
        cluster_call!(@go $self, $r, $method, |d, inner, _caller| {
            let _ = inner;
            d.$handler()
        })
    };
    ($self:ident, $r:ident, $method:ident, $handler:ident, caller) => {
        cluster_call!(@go $self, $r, $method, |d, inner, caller| d.$handler(inner, caller))
    };
    (@go $self:ident, $r:ident, $method:ident, |$d:ident, $inner:ident, $caller:ident| $local:expr) => {{
        let forwarded = $r.metadata().contains_key(FORWARDED);
        let $caller = remote_caller(&$r);
        let $inner = $r.into_inner();
        let deadline = std::time::Instant::now() + NO_LEADER_WAIT;
        loop {
            let Some(mut leader) = $self.leader_client(forwarded, deadline).await? else {
                break;
            };
            let mut fwd = Request::new($inner.clone());
            fwd.metadata_mut()
                .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
            match leader.$method(fwd).await {
                // The leader this manager knew is gone (the request never reached it):
                // ask again who leads.
                Err(e) if unreached(&e) && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                r => return r,
            }
        }
        // Over 2377 (forwarded by another manager): the caller must still be a manager
        // of the swarm — a certificate outlives a demotion or a removal.
        if let Some(node) = $caller.clone() {
            $self.call(move |d| d.check_manager_member(&node)).await?;
        }
        $self.call(move |$d| $local).await
    }};
}

/// How long a node waits for the leader's attachment to reach it (its assignment) and
/// start, or for a detached container to stop.
const ATTACH_WAIT: Duration = Duration::from_secs(30);

/// Calls the leader's `ResourceAllocator` with `f`, following the leader's address when
/// the manager asked is not the leader (at most three hops).
async fn to_leader<T, F, Fut>(route: &containers::AttachRoute, f: F) -> Result<T, Status>
where
    F: Fn(
        crate::cluster_api::resource_allocator_client::ResourceAllocatorClient<
            tonic::transport::Channel,
        >,
    ) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let cfg = crate::tls::client_config(&route.root, Some((&route.cert, &route.key)))
        .map_err(|e| Status::internal(format!("this node's certificate: {e:#}")))?;
    let mut manager = route.manager.clone();
    for _ in 0..3 {
        let addr = crate::agent::manager_addr(&manager).map_err(Status::internal)?;
        let ch = crate::tls::channel(addr, cfg.clone());
        let client =
            crate::cluster_api::resource_allocator_client::ResourceAllocatorClient::new(ch);
        match f(client).await {
            Err(e) if e.message().starts_with(LEADER_IS_AT) => {
                manager = e.message()[LEADER_IS_AT.len()..].to_owned();
            }
            r => return r,
        }
    }
    Err(Status::unavailable(LOST_QUORUM))
}

/// The node a call came from over 2377 (its certificate's), `None` on the local socket.
fn remote_caller<T>(r: &Request<T>) -> Option<String> {
    let certs = r.peer_certs()?;
    crate::ca::identity(certs.first()?)
        .ok()
        .map(|id| id.node_id)
}

/// A forwarded call that failed before reaching the leader (connecting), so may be sent
/// again without running twice.
fn unreached(e: &Status) -> bool {
    e.code() == tonic::Code::Unavailable && e.message().contains("connect")
}

/// Refuses a call that only this node's own client may make (it acts on this node, not
/// on the cluster) when it arrives over 2377 from another manager.
fn local_only<T>(r: &Request<T>) -> Result<(), Status> {
    if r.peer_certs().is_some() {
        return Err(Status::permission_denied(
            "this call acts on a node and is only accepted on its own API socket",
        ));
    }
    Ok(())
}

/// The daemon's state, even after a panic poisoned its lock: every path that changes it
/// either completes or (through `Api::call`) restores it, so it is consistent to go on.
pub(super) fn lock_state(m: &Mutex<Daemon>) -> std::sync::MutexGuard<'_, Daemon> {
    m.lock().unwrap_or_else(|e| {
        m.clear_poison();
        e.into_inner()
    })
}

impl Api {
    /// A client of the leader's control API when this node is a manager that does not
    /// lead; `None` to run the call here. Waits for an election when there is no leader.
    async fn leader_client(
        &self,
        forwarded: bool,
        deadline: std::time::Instant,
    ) -> Result<Option<api::swarmgate_client::SwarmgateClient<tonic::transport::Channel>>, Status>
    {
        loop {
            let (manager, leads, tls) = self
                .call(|d| {
                    d.sync_role();
                    let tls = d.me().map(|m| {
                        (
                            m.root_ca_cert.clone(),
                            m.node_cert.clone(),
                            m.node_key.clone(),
                        )
                    });
                    Ok((d.is_manager(), d.leads(), tls))
                })
                .await?
                .into_inner();
            if !manager || leads {
                return Ok(None);
            }
            let leader = self
                .raft
                .load_full()
                .and_then(|r| r.leader().filter(|l| l.node != r.me.node));
            if let (Some(l), Some((root, cert, key)), false) = (leader, tls, forwarded) {
                let addr: std::net::SocketAddr = l
                    .addr
                    .parse()
                    .map_err(|_| Status::internal(format!("the leader's address {:?}", l.addr)))?;
                let cfg = crate::tls::client_config(&root, Some((&cert, &key)))
                    .map_err(|e| Status::internal(format!("{e:#}")))?;
                // Managers share a LAN: a leader that does not answer within a second
                // is taken for gone and asked about again.
                return Ok(Some(api::swarmgate_client::SwarmgateClient::new(
                    crate::tls::channel_with_timeouts(
                        addr,
                        cfg,
                        Duration::from_secs(1),
                        crate::tls::CALL_TIMEOUT,
                    ),
                )));
            }
            if std::time::Instant::now() >= deadline {
                return Err(Status::unavailable(super::LOST_QUORUM));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A manager leaving: refused without `force`, with Docker's reasons
    /// (`daemon/cluster/swarm.go` `Leave`: whether the managers still reachable after it
    /// would keep a quorum); with it, the leader takes it out of Raft's membership first,
    /// so the managers left count only each other (best effort: a leader that cannot be
    /// reached does not keep a node from leaving).
    async fn leave_managers(&self, force: bool) -> Result<(), Status> {
        let replica = self.raft.load_full();
        if !force {
            let mut msg = String::from(
                "You are attempting to leave the swarm on a node that is participating as a manager. ",
            );
            use api::swarmgate_server::Swarmgate;
            let nodes = self
                .node_list(Request::new(api::Empty {}))
                .await
                .map(|r| r.into_inner().nodes)
                .unwrap_or_default();
            let reachable = nodes
                .iter()
                .filter(|n| n.manager_status == "Leader" || n.manager_status == "Reachable")
                .count();
            let unreachable = nodes
                .iter()
                .filter(|n| n.manager_status == "Unreachable")
                .count();
            // `removingManagerCausesLossOfQuorum`, `isLastManager` (utils.go).
            if !nodes.is_empty() && reachable.saturating_sub(2) <= unreachable {
                if reachable == 1 && unreachable == 0 {
                    msg += "Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. ";
                    return Err(Status::failed_precondition(msg.trim_end().to_owned()));
                }
                msg += &format!(
                    "Removing this node leaves {} managers out of {}. Without a Raft quorum your swarm will be inaccessible. ",
                    reachable.saturating_sub(1),
                    reachable + unreachable
                );
            }
            msg += "The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message.";
            return Err(Status::failed_precondition(msg));
        }
        let Some(r) = replica else { return Ok(()) };
        if r.voters().len() <= 1 {
            return Ok(());
        }
        let res = if r.is_leader() {
            r.remove_manager(&r.me.node).await
        } else {
            let tls = self
                .call(|d| {
                    Ok(d.me().map(|m| {
                        (
                            m.root_ca_cert.clone(),
                            m.node_cert.clone(),
                            m.node_key.clone(),
                        )
                    }))
                })
                .await?
                .into_inner();
            match (r.leader().and_then(|l| l.addr.parse().ok()), tls) {
                (Some(addr), Some((root, cert, key))) => {
                    match crate::tls::client_config(&root, Some((&cert, &key))) {
                        Ok(cfg) => crate::agent::leave_raft(addr, cfg).await,
                        Err(e) => Err(format!("{e:#}")),
                    }
                }
                _ => Err("no leader to ask".into()),
            }
        };
        if let Err(e) = res {
            tracing::warn!("leaving Raft's membership: {e}; leaving anyway (--force)");
        }
        Ok(())
    }

    /// Runs `f` on the daemon's state on a blocking thread, all or nothing.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Daemon) -> Result<T, Status> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        let d = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = lock_state(&d);
            // Every verb is all or nothing: a refusal before the new state is saved leaves
            // memory exactly as it was (and so as on disk and in the data plane), however
            // far the handler got. Handlers validate first anyway; this makes it structural.
            let before = (g.cluster.clone(), g.local.clone());
            let saves = g.saves;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut g)))
                .unwrap_or_else(|p| {
                    let what = p
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| p.downcast_ref::<&str>().copied())
                        .unwrap_or("panic");
                    tracing::error!("a request failed with an internal error: {what}");
                    Err(Status::internal(format!("internal error: {what}")))
                });
            if r.is_err() && g.saves == saves {
                (g.cluster, g.local) = before;
            }
            r
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map(Response::new)
    }
}

#[tonic::async_trait]
impl api::swarmgate_server::Swarmgate for Api {
    async fn swarm_init(
        &self,
        r: Request<api::SwarmInitRequest>,
    ) -> Result<Response<api::SwarmInitReply>, Status> {
        local_only(&r)?;
        let _one = self.membership.lock().await;
        let reply = self.call(move |d| d.swarm_init(r.into_inner())).await?;
        self.runtime.lock().await.ensure(self).await;
        Ok(reply)
    }
    async fn swarm_join(
        &self,
        r: Request<api::SwarmJoinRequest>,
    ) -> Result<Response<api::SwarmJoinReply>, Status> {
        local_only(&r)?;
        let r = r.into_inner();
        let manager = crate::agent::manager_addr(&r.remote_addr).map_err(bad)?;
        let _one = self.membership.lock().await;
        let plan = r.clone();
        let me = self.call(move |d| d.join_plan(&plan)).await?.into_inner();
        let joined = crate::agent::join(manager, &r.token, &me)
            .await
            .map_err(Status::failed_precondition)?;
        let reply = self
            .call(move |d| d.finish_join(joined, me, &r.listen_addr))
            .await?;
        self.runtime.lock().await.ensure(self).await;
        Ok(reply)
    }
    async fn swarm_join_token(
        &self,
        r: Request<api::JoinTokenRequest>,
    ) -> Result<Response<api::JoinTokenReply>, Status> {
        cluster_call!(self, r, swarm_join_token, join_token)
    }
    async fn swarm_leave(
        &self,
        r: Request<api::SwarmLeaveRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        local_only(&r)?;
        let _one = self.membership.lock().await;
        let r = r.into_inner();
        let manager = self.call(|d| Ok(d.is_manager())).await?.into_inner();
        if manager {
            self.leave_managers(r.force).await?;
        }
        let reply = self.call(move |d| d.swarm_leave(r)).await?;
        self.runtime.lock().await.ensure(self).await;
        Ok(reply)
    }
    async fn node_list(
        &self,
        r: Request<api::Empty>,
    ) -> Result<Response<api::NodeListReply>, Status> {
        cluster_call!(self, r, node_list, node_list, ())
    }
    async fn node_inspect(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::JsonReply>, Status> {
        cluster_call!(self, r, node_inspect, node_inspect)
    }
    async fn node_update(
        &self,
        r: Request<api::NodeUpdateRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        cluster_call!(self, r, node_update, node_update)
    }
    async fn node_remove(
        &self,
        r: Request<api::NodeRemoveRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        cluster_call!(self, r, node_remove, node_remove)
    }
    async fn swarm_update(
        &self,
        r: Request<api::SwarmUpdateRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        cluster_call!(self, r, swarm_update, swarm_update)
    }
    async fn network_create(
        &self,
        r: Request<api::NetworkCreateRequest>,
    ) -> Result<Response<api::IdReply>, Status> {
        cluster_call!(self, r, network_create, network_create)
    }
    async fn network_list(
        &self,
        r: Request<api::Empty>,
    ) -> Result<Response<api::NetworkListReply>, Status> {
        cluster_call!(self, r, network_list, network_list, ())
    }
    async fn network_inspect(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::JsonReply>, Status> {
        // Answered by the leader (read-your-writes), as the asking node sees the network.
        cluster_call!(self, r, network_inspect, network_inspect, caller)
    }
    async fn network_remove(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        cluster_call!(self, r, network_remove, network_remove)
    }
    async fn service_create(
        &self,
        r: Request<api::ServiceCreateRequest>,
    ) -> Result<Response<api::IdReply>, Status> {
        cluster_call!(self, r, service_create, service_create)
    }
    async fn service_list(
        &self,
        r: Request<api::Empty>,
    ) -> Result<Response<api::ServiceListReply>, Status> {
        cluster_call!(self, r, service_list, service_list, ())
    }
    async fn service_ps(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::TaskListReply>, Status> {
        cluster_call!(self, r, service_ps, service_ps)
    }
    async fn service_inspect(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::JsonReply>, Status> {
        cluster_call!(self, r, service_inspect, service_inspect)
    }
    async fn service_update(
        &self,
        r: Request<api::ServiceUpdateRequest>,
    ) -> Result<Response<api::IdReply>, Status> {
        cluster_call!(self, r, service_update, service_update)
    }
    async fn service_remove(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        cluster_call!(self, r, service_remove, service_remove)
    }
    type ServiceLogsStream = tokio_stream::wrappers::ReceiverStream<Result<api::LogsReply, Status>>;

    async fn service_logs(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        local_only(&r)?;
        let sources = self
            .call(move |d| d.service_log_sources(r.into_inner()))
            .await?
            .into_inner();
        // Streamed in batches of lines, a line at a time from disk: memory stays bounded
        // whatever the logs hold, and the state lock is not held while reading.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut batch = Vec::new();
            let mut open = true;
            for (prefix, path) in sources {
                crate::logs::for_each_line(&path, crate::logs::MAX_FILES, |l| {
                    batch.push(format!("{prefix}    | {l}"));
                    if batch.len() == 512 {
                        let lines = std::mem::take(&mut batch);
                        open = tx.blocking_send(Ok(api::LogsReply { lines })).is_ok();
                    }
                    open
                });
                if !open {
                    return; // the client went away
                }
            }
            if !batch.is_empty() {
                let _ = tx.blocking_send(Ok(api::LogsReply { lines: batch }));
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
    async fn container_run(
        &self,
        r: Request<api::ContainerRunRequest>,
    ) -> Result<Response<api::EndpointReply>, Status> {
        local_only(&r)?;
        let r = r.into_inner();
        let Some(route) = self.call(|d| Ok(d.attach_route())).await?.into_inner() else {
            return self.call(move |d| d.container_run(r)).await;
        };
        // Not the leader: the leader places the container here with its addresses, and
        // this node starts it from its assignment (SwarmKit's `AttachNetwork`).
        let req = crate::cluster_api::AttachNetworkRequest {
            name: r.name,
            networks: r.networks,
            command: r.command,
            detach: r.detach,
        };
        let id = to_leader(&route, move |mut c| {
            let req = req.clone();
            async move { c.attach_network(req).await.map(|r| r.into_inner().id) }
        })
        .await?;
        let deadline = std::time::Instant::now() + ATTACH_WAIT;
        loop {
            let task = id.clone();
            if let Some(e) = self.call(move |d| d.attached(&task)).await?.into_inner() {
                return Ok(Response::new(e));
            }
            if std::time::Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "container {id} was attached but did not start on this node within {} s",
                    ATTACH_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    async fn container_exited(
        &self,
        r: Request<api::ContainerExitedRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        local_only(&r)?;
        self.call(move |d| d.container_exited(r.into_inner())).await
    }
    async fn container_remove(
        &self,
        r: Request<api::ContainerRemoveRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        local_only(&r)?;
        let r = r.into_inner();
        let Some(route) = self.call(|d| Ok(d.attach_route())).await?.into_inner() else {
            return self.call(move |d| d.container_remove(r)).await;
        };
        for name in r.names {
            // Whether it runs is this node's to say (the leader hears of an exit at the
            // next report): a stopped one is removed, a running one only with --force.
            let n = name.clone();
            let live = self
                .call(move |d| Ok(d.container_live(&n)))
                .await?
                .into_inner();
            if live && !r.force {
                return Err(Status::failed_precondition(format!(
                    "You cannot remove a running container {name}. Stop the container before attempting removal or force remove"
                )));
            }
            let here = self
                .call({
                    let n = name.clone();
                    move |d| Ok(d.container_here(&n))
                })
                .await?
                .into_inner();
            let req = crate::cluster_api::DetachNetworkRequest {
                name: name.clone(),
                force: r.force || here,
            };
            to_leader(&route, move |mut c| {
                let req = req.clone();
                async move { c.detach_network(req).await.map(|_| ()) }
            })
            .await?;
            // Done once the leader let it go: stopped here, reported, and no longer in this
            // node's assignment (so its addresses and name are free when `rm` returns).
            let deadline = std::time::Instant::now() + ATTACH_WAIT;
            loop {
                let n = name.clone();
                let here = self
                    .call(move |d| Ok(d.container_here(&n)))
                    .await?
                    .into_inner();
                if !here {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(Status::deadline_exceeded(format!(
                        "container {name} was detached but is still on this node after {} s",
                        ATTACH_WAIT.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(Response::new(api::Empty {}))
    }
    async fn container_list(
        &self,
        r: Request<api::Empty>,
    ) -> Result<Response<api::ContainerListReply>, Status> {
        local_only(&r)?;
        self.call(|d| d.container_list()).await
    }
    async fn endpoint_lookup(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::EndpointReply>, Status> {
        cluster_call!(self, r, endpoint_lookup, endpoint_lookup)
    }
    async fn stats(&self, r: Request<api::Empty>) -> Result<Response<api::JsonReply>, Status> {
        local_only(&r)?;
        self.call(|d| {
            let mut v = d.dp.stats();
            if let (Some(r), Some(o)) = (d.replica(), v.as_object_mut()) {
                o.insert("raft".into(), r.commit_stats());
            }
            Ok(api::JsonReply {
                json: serde_json::to_string_pretty(&v).expect("json"),
            })
        })
        .await
    }
}
