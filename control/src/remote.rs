//! The manager's listener on TCP 2377: the CA, the dispatcher and the health service, over
//! TLS, each call authorised by the caller's cluster certificate.
//!
//! Who may call what (SwarmKit's `ca.AuthorizeOrgAndRole` on each service):
//! * `Ca.GetRootCaCertificate`, `Ca.IssueNodeCertificate` — anyone (the join token is the
//!   credential);
//! * `Ca.RenewNodeCertificate`, `Dispatcher.Heartbeat`, `Dispatcher.Assignments` — a
//!   node of this cluster (its certificate's O is the cluster ID) that has not been
//!   removed (an assignments stream ends when its node is);
//! * `Health.Check`, `Raft.*` and the control API (`Swarmgate`, what another manager
//!   forwards to the leader, SwarmKit's `raftproxy`) — managers only.
//!
//! Every refusal is logged with the caller's address and the reason. A handshake gets
//! [`crate::tls::CONNECT_TIMEOUT`]; connections are served as they complete, so a slow
//! client holds only its own.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use crate::ca::{self, NodeIdentity, Role};
use crate::cluster_api::{
    self as capi, ca_server, dispatcher_server, health_server, raft_server,
    resource_allocator_server,
};
use crate::daemon::Api;

/// The port managers listen on.
pub const PORT: u16 = 2377;
/// `IPv4[:PORT]`, the port [`PORT`] when absent and never 0; `None` if malformed. The one
/// parser of `--listen-addr` and a manager's address.
pub fn ipv4_port(s: &str) -> Option<SocketAddr> {
    let (ip, port) = match s.rsplit_once(':') {
        Some((ip, p)) => (ip, p.parse::<u16>().ok()?),
        None => (s, PORT),
    };
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    (port != 0).then(|| SocketAddr::from((ip, port)))
}

/// At most this many TLS handshakes in flight; further connections wait in the backlog.
const MAX_HANDSHAKES: usize = 64;

/// Checks the caller's certificate: issued to a node of `cluster_id` with one of `roles`.
pub fn authorize<T>(
    req: &Request<T>,
    cluster_id: &str,
    roles: &[Role],
    what: &str,
) -> Result<NodeIdentity, Status> {
    let from = req
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "?".into());
    let refuse = |why: String| {
        tracing::warn!(call = what, peer = %from, "2377: refused {what}: {why}");
        Status::permission_denied(format!("{what}: {why}"))
    };
    let certs = req
        .peer_certs()
        .ok_or_else(|| refuse("no client certificate".into()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| refuse("no client certificate".into()))?;
    let id = ca::identity(leaf).map_err(|e| refuse(e.to_string()))?;
    if id.cluster_id != cluster_id {
        return Err(refuse(format!(
            "certificate of another cluster ({})",
            id.cluster_id
        )));
    }
    if !roles.contains(&id.role) {
        return Err(refuse(format!(
            "a {} may not call this (needs {})",
            id.role.name(),
            roles
                .iter()
                .map(|r| r.name())
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    Ok(id)
}

/// The services, all sharing the daemon.
#[derive(Clone)]
pub struct Remote {
    api: Api,
    /// This cluster's ID (the O of the manager's own certificate): callers are authorised
    /// against it before anything touches the daemon's state.
    cluster_id: Arc<str>,
    /// The newest assignments stream of each node (one per node: a node that opens
    /// another ends its previous one, so no node holds more than one).
    streams: Arc<std::sync::Mutex<(u64, std::collections::HashMap<String, u64>)>>,
}

/// Aborts a task when dropped: the accept loop dies with the server future, however that
/// ends (returned, or aborted after a shutdown that took too long), so the port is freed.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TLS connection that holds one of the listener's connection permits for as long as it
/// is open: at most [`MAX_CONNECTIONS`] at a time, whoever they are.
struct Permitted {
    inner: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Permitted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Permitted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for Permitted {
    type ConnectInfo =
        <tokio_rustls::server::TlsStream<tokio::net::TcpStream> as Connected>::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Connections open at once (established or handshaking).
const MAX_CONNECTIONS: usize = 1024;
/// A silent peer is dropped after this: HTTP/2 pings every 10 s, answered within 5 s.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

impl Remote {
    /// Services over the daemon behind `api`, for the cluster `cluster_id`.
    pub fn new(api: Api, cluster_id: &str) -> Remote {
        Remote {
            api,
            cluster_id: cluster_id.into(),
            streams: Default::default(),
        }
    }

    /// Serves on `listener` with `tls` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_HANDSHAKES);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let _accept = AbortOnDrop(tokio::spawn(async move {
            loop {
                let Ok(conn) = connections.clone().acquire_owned().await else {
                    return;
                };
                let Ok(handshake) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => {
                        // See `tls::channel`: no Nagle delay on small messages.
                        let _ = c.0.set_nodelay(true);
                        c
                    }
                    Err(e) => {
                        tracing::warn!("2377: accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let r = tokio::time::timeout(crate::tls::CONNECT_TIMEOUT, acceptor.accept(tcp))
                        .await;
                    drop(handshake);
                    match r {
                        Ok(Ok(s)) => {
                            let s = Permitted {
                                inner: s,
                                _permit: conn,
                            };
                            let _ = tx.send(Ok::<_, std::io::Error>(s)).await;
                        }
                        Ok(Err(e)) => log_handshake(peer, &e.to_string()),
                        Err(_) => log_handshake(peer, "handshake timed out"),
                    }
                });
            }
        }));
        let r = tonic::transport::Server::builder()
            .timeout(crate::tls::CALL_TIMEOUT)
            .http2_keepalive_interval(Some(KEEPALIVE))
            .http2_keepalive_timeout(Some(crate::tls::CONNECT_TIMEOUT))
            .max_concurrent_streams(Some(16))
            .add_service(ca_server::CaServer::new(self.clone()))
            .add_service(dispatcher_server::DispatcherServer::new(self.clone()))
            .add_service(health_server::HealthServer::new(self.clone()))
            .add_service(resource_allocator_server::ResourceAllocatorServer::new(
                self.clone(),
            ))
            .add_service(
                raft_server::RaftServer::new(self.clone())
                    .max_decoding_message_size(crate::raft::network::MAX_MESSAGE)
                    .max_encoding_message_size(crate::raft::network::MAX_MESSAGE),
            )
            .add_service(
                crate::api::swarmgate_server::SwarmgateServer::with_interceptor(
                    self.api.clone(),
                    {
                        let cluster_id = self.cluster_id.clone();
                        move |r: Request<()>| {
                            authorize(&r, &cluster_id, &[Role::Manager], "the control API")?;
                            Ok(r)
                        }
                    },
                ),
            )
            .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), shutdown)
            .await;
        Ok(r?)
    }
}

/// The caller's IPv4 address as the connection shows it.
fn observed<T>(r: &Request<T>) -> Option<std::net::Ipv4Addr> {
    match r.remote_addr()?.ip() {
        std::net::IpAddr::V4(a) => Some(a),
        std::net::IpAddr::V6(a) => a.to_ipv4_mapped(),
    }
}

fn log_handshake(peer: SocketAddr, why: &str) {
    tracing::info!(%peer, "2377: TLS handshake failed: {why}");
}

#[tonic::async_trait]
impl ca_server::Ca for Remote {
    async fn get_root_ca_certificate(
        &self,
        _: Request<capi::Empty>,
    ) -> Result<Response<capi::RootCaReply>, Status> {
        self.api.call(|d| d.root_ca_reply()).await
    }

    async fn issue_node_certificate(
        &self,
        r: Request<capi::IssueRequest>,
    ) -> Result<Response<capi::IssueReply>, Status> {
        let from = r.remote_addr();
        let seen = observed(&r);
        let r = r.into_inner();
        let res = self
            .api
            .call(move |d| d.issue_node_certificate(r, seen))
            .await;
        if let Err(e) = &res {
            tracing::warn!(
                peer = %from.map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
                "2377: refused a join: {}",
                e.message()
            );
        }
        res
    }

    async fn renew_node_certificate(
        &self,
        r: Request<capi::RenewRequest>,
    ) -> Result<Response<capi::IssueReply>, Status> {
        let id = authorize(
            &r,
            &self.cluster_id,
            &[Role::Manager, Role::Worker],
            "certificate renewal",
        )?;
        let csr = r.into_inner().csr;
        self.api
            .call(move |d| d.renew_node_certificate(&id, &csr))
            .await
    }
}

/// How often an assignments stream re-checks the node's assignment without a change
/// (a safety net: every commit wakes it anyway).
const ASSIGNMENT_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// The stream of a node's assignments.
type AssignmentStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<capi::AssignmentsMessage, Status>> + Send>,
>;

#[tonic::async_trait]
impl dispatcher_server::Dispatcher for Remote {
    type AssignmentsStream = AssignmentStream;

    async fn assignments(
        &self,
        r: Request<capi::Empty>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let id = authorize(
            &r,
            &self.cluster_id,
            &[Role::Manager, Role::Worker],
            "assignments",
        )?;
        let who = id.clone();
        let mut changes = self
            .api
            .call(move |d| d.assignment_for(&who).map(|_| d.subscribe()))
            .await?
            .into_inner();
        let api = self.api.clone();
        let streams = self.streams.clone();
        let generation = {
            let mut s = streams.lock().unwrap_or_else(|e| e.into_inner());
            s.0 += 1;
            let g = s.0;
            s.1.insert(id.node_id.clone(), g);
            g
        };
        let node = id.node_id.clone();
        let current = move || {
            let s = streams.lock().unwrap_or_else(|e| e.into_inner());
            s.1.get(&node).copied() == Some(generation)
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut last: Option<Vec<u8>> = None;
            let mut version = 0u64;
            loop {
                if !current() {
                    return; // replaced by the node's newer stream
                }
                let who = id.clone();
                match api.call(move |d| d.assignment_for(&who)).await {
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Ok(a) => {
                        let a = a.into_inner();
                        if last.as_ref() != Some(&a) {
                            version += 1;
                            let msg = capi::AssignmentsMessage {
                                version,
                                assignment: a.clone(),
                            };
                            if tx.send(Ok(msg)).await.is_err() {
                                return;
                            }
                            last = Some(a);
                        }
                    }
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(ASSIGNMENT_RECHECK) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn heartbeat(
        &self,
        r: Request<capi::HeartbeatRequest>,
    ) -> Result<Response<capi::HeartbeatReply>, Status> {
        let id = authorize(
            &r,
            &self.cluster_id,
            &[Role::Manager, Role::Worker],
            "heartbeat",
        )?;
        // The address the manager sees, as SwarmKit's dispatcher records it, not what the
        // node claims.
        let seen = observed(&r);
        let r = r.into_inner();
        self.api.call(move |d| d.heartbeat(&id, r, seen)).await
    }
}

#[tonic::async_trait]
impl resource_allocator_server::ResourceAllocator for Remote {
    async fn attach_network(
        &self,
        r: Request<capi::AttachNetworkRequest>,
    ) -> Result<Response<capi::AttachNetworkReply>, Status> {
        let id = authorize(
            &r,
            &self.cluster_id,
            &[Role::Manager, Role::Worker],
            "network attachment",
        )?;
        let r = r.into_inner();
        self.api.call(move |d| d.attach_network(&id, r)).await
    }

    async fn detach_network(
        &self,
        r: Request<capi::DetachNetworkRequest>,
    ) -> Result<Response<capi::Empty>, Status> {
        let id = authorize(
            &r,
            &self.cluster_id,
            &[Role::Manager, Role::Worker],
            "network detachment",
        )?;
        let r = r.into_inner();
        self.api.call(move |d| d.detach_network(&id, r)).await
    }
}

#[tonic::async_trait]
impl health_server::Health for Remote {
    async fn check(&self, r: Request<capi::Empty>) -> Result<Response<capi::HealthReply>, Status> {
        authorize(&r, &self.cluster_id, &[Role::Manager], "health check")?;
        Ok(Response::new(capi::HealthReply {
            status: "SERVING".into(),
        }))
    }
}

impl Remote {
    /// This manager's Raft member, for a caller authorised as a manager.
    fn replica<T>(
        &self,
        r: &Request<T>,
        what: &str,
    ) -> Result<(NodeIdentity, Arc<crate::raft::Replica>), Status> {
        let id = authorize(r, &self.cluster_id, &[Role::Manager], what)?;
        let raft = self
            .api
            .raft
            .load_full()
            .ok_or_else(|| Status::unavailable("this manager's Raft member is not running"))?;
        Ok((id, raft))
    }

    /// A consensus message: from a member of this manager's group (a manager outside it
    /// — demoted, or of a group `--force-new-cluster` left behind — is refused), sent in
    /// its own name (the vote's node is the certificate's).
    fn consensus<T: serde::de::DeserializeOwned>(
        &self,
        r: &Request<capi::RaftMessage>,
        vote_of: impl Fn(&T) -> crate::raft::NodeId,
    ) -> Result<(T, Arc<crate::raft::Replica>), Status> {
        let (id, raft) = self.replica(r, "raft")?;
        let req: T = crate::raft::network::decode(r.get_ref())?;
        let refuse = |why: &str| {
            tracing::warn!(node = %id.node_id, "2377: refused a raft message: {why}");
            Status::permission_denied(format!("raft: {why}"))
        };
        if vote_of(&req) != crate::raft::raft_id(&id.node_id) {
            return Err(refuse("sent in another manager's name"));
        }
        if !raft.accepts(&id.node_id) {
            return Err(refuse("not a member of this manager's Raft group"));
        }
        Ok((req, raft))
    }
}

#[tonic::async_trait]
impl raft_server::Raft for Remote {
    async fn append_entries(
        &self,
        r: Request<capi::RaftMessage>,
    ) -> Result<Response<capi::RaftMessage>, Status> {
        let (req, raft) = self.consensus(
            &r,
            |q: &openraft::raft::AppendEntriesRequest<crate::raft::TypeConfig>| {
                q.vote.leader_id.node_id
            },
        )?;
        let res = raft.raft.append_entries(req).await;
        crate::raft::network::encode(&res).map(Response::new)
    }

    async fn vote(
        &self,
        r: Request<capi::RaftMessage>,
    ) -> Result<Response<capi::RaftMessage>, Status> {
        let (req, raft) = self.consensus(
            &r,
            |q: &openraft::raft::VoteRequest<crate::raft::NodeId>| q.vote.leader_id.node_id,
        )?;
        let res = raft.raft.vote(req).await;
        crate::raft::network::encode(&res).map(Response::new)
    }

    async fn install_snapshot(
        &self,
        r: Request<capi::RaftMessage>,
    ) -> Result<Response<capi::RaftMessage>, Status> {
        let (req, raft) = self.consensus(
            &r,
            |q: &openraft::raft::InstallSnapshotRequest<crate::raft::TypeConfig>| {
                q.vote.leader_id.node_id
            },
        )?;
        let res = raft.raft.install_snapshot(req).await;
        crate::raft::network::encode(&res).map(Response::new)
    }

    /// A manager of this cluster asks to be added (on the leader): it must be a node the
    /// CA issued a manager certificate to; it is reached at the address its connection
    /// comes from, on the port it names.
    async fn join(
        &self,
        r: Request<capi::RaftJoinRequest>,
    ) -> Result<Response<capi::Empty>, Status> {
        let (id, raft) = self.replica(&r, "raft join")?;
        let seen = observed(&r);
        let port = ipv4_port(&r.get_ref().addr)
            .map(|a| a.port())
            .ok_or_else(|| Status::invalid_argument("raft join: the address must be IPv4:PORT"))?;
        let node = id.node_id.clone();
        self.api
            .call(move |d| d.check_manager_member(&node))
            .await?;
        let addr = seen
            .map(|a| format!("{a}:{port}"))
            .unwrap_or_else(|| r.get_ref().addr.clone());
        raft.add_manager(crate::raft::Peer {
            node: id.node_id,
            addr,
        })
        .await
        .map_err(Status::unavailable)?;
        Ok(Response::new(capi::Empty {}))
    }

    async fn leave(&self, r: Request<capi::Empty>) -> Result<Response<capi::Empty>, Status> {
        let (id, raft) = self.replica(&r, "raft leave")?;
        if !raft.is_leader() {
            let at = raft.leader().map(|l| l.addr).unwrap_or_default();
            return Err(Status::unavailable(format!(
                "{}{at}",
                crate::daemon::LEADER_IS_AT
            )));
        }
        raft.remove_manager(&id.node_id)
            .await
            .map_err(Status::unavailable)?;
        Ok(Response::new(capi::Empty {}))
    }
}
