//! The node's side of the cluster (SwarmKit's agent): joining with a token, and the
//! heartbeat session with a manager.
//!
//! Joining (`ca/certificates.go` `GetRemoteCA`, `ca/config.go` `DownloadRootCA`,
//! `GetRemoteSignedCertificate`): fetch the root over unverified TLS, trust it only if
//! its digest is the token's, send a CSR with the token over TLS verified against that
//! root, get the certificate, then prove it with a first heartbeat over mutual TLS. Only
//! then does the daemon record that it joined; a refusal at any step leaves this node as it
//! was.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::ca::{self, RootCa};
use crate::cluster_api::{self as capi, ca_client::CaClient, dispatcher_client::DispatcherClient};
use crate::tls;

/// SwarmKit's default heartbeat period (`DefaultHeartBeatPeriod`).
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);
/// The shortest heartbeat period a swarm may set (`--dispatcher-heartbeat`).
pub const MIN_HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);
/// The longest.
pub const MAX_HEARTBEAT_PERIOD: Duration = Duration::from_secs(3600);

/// What a successful join hands back to the daemon.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The manager's address, `ip:port`.
    pub manager: SocketAddr,
    /// The cluster root, PEM (no key).
    pub root_pem: String,
    /// This node's key, PEM.
    pub key_pem: String,
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// Its identity as the certificate says.
    pub identity: ca::NodeIdentity,
    /// The swarm's VXLAN UDP port.
    pub data_path_port: u16,
}

/// This node, as it describes itself to managers.
#[derive(Debug, Clone)]
pub struct Description {
    /// Host name.
    pub hostname: String,
    /// Address for 2377/7946.
    pub advertise_addr: Ipv4Addr,
    /// Address for VXLAN/ESP.
    pub datapath_addr: Ipv4Addr,
}

impl Description {
    fn heartbeat(&self, tasks: Vec<capi::TaskStatus>) -> capi::HeartbeatRequest {
        capi::HeartbeatRequest {
            hostname: self.hostname.clone(),
            advertise_addr: self.advertise_addr.to_string(),
            datapath_addr: self.datapath_addr.to_string(),
            tasks,
        }
    }
}

/// `HOST[:PORT]` of a manager, the port 2377 by default.
pub fn manager_addr(s: &str) -> Result<SocketAddr, String> {
    let bad = || format!("invalid manager address {s:?}: expected IPv4[:PORT]");
    let a = crate::remote::ipv4_port(s).ok_or_else(bad)?;
    match a.ip() {
        std::net::IpAddr::V4(ip)
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() =>
        {
            Err(bad())
        }
        _ => Ok(a),
    }
}

fn status_line(e: tonic::Status) -> String {
    match e.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
            format!("could not reach the manager: {}", e.message())
        }
        _ => e.message().to_owned(),
    }
}

/// Joins the swarm whose manager is at `manager` with `token`. Every failure is one line.
pub async fn join(manager: SocketAddr, token: &str, me: &Description) -> Result<Joined, String> {
    let parsed = ca::parse_token(token).map_err(|e| e.to_string())?;
    let boot = tls::bootstrap_config().map_err(|e| e.to_string())?;
    let pem = CaClient::new(tls::channel(manager, boot))
        .get_root_ca_certificate(capi::Empty {})
        .await
        .map_err(status_line)?
        .into_inner()
        .certificate;
    let root = RootCa::from_pem(&pem, None).map_err(|e| e.to_string())?;
    root.check_against(&parsed).map_err(|e| e.to_string())?;

    let (key_pem, csr) = ca::new_key_and_csr().map_err(|e| e.to_string())?;
    let verified = tls::client_config(root.cert_pem(), None).map_err(|e| e.to_string())?;
    let reply = CaClient::new(tls::channel(manager, verified))
        .issue_node_certificate(capi::IssueRequest {
            csr,
            token: token.to_owned(),
            hostname: me.hostname.clone(),
            advertise_addr: me.advertise_addr.to_string(),
            datapath_addr: me.datapath_addr.to_string(),
        })
        .await
        .map_err(status_line)?
        .into_inner();
    let identity = ca::check_node_certificate(root.cert_pem(), &reply.certificate, &key_pem)
        .map_err(|e| e.to_string())?;
    if identity.node_id != reply.node_id || identity.cluster_id != reply.cluster_id {
        return Err("the manager's certificate does not match its answer".into());
    }
    let data_path_port = match reply.data_path_port {
        0 => crate::cluster::DEFAULT_DATA_PATH_PORT,
        p => u16::try_from(p).map_err(|_| format!("the manager sent data-path port {p}"))?,
    };
    let joined = Joined {
        manager,
        root_pem: root.cert_pem().to_owned(),
        key_pem,
        cert_pem: reply.certificate,
        identity,
        data_path_port,
    };
    // The certificate works: the first heartbeat over mutual TLS is accepted.
    Session::new(
        joined.manager,
        &joined.root_pem,
        &joined.cert_pem,
        &joined.key_pem,
        me,
    )?
    .beat(Vec::new())
    .await
    .map_err(|e| format!("the manager refused the new certificate: {e}"))?;
    Ok(joined)
}

/// The heartbeat session with a manager over mutual TLS (one connection, re-established
/// by the channel when it breaks).
pub struct Session {
    client: DispatcherClient<tonic::transport::Channel>,
    ca: CaClient<tonic::transport::Channel>,
    root_pem: String,
    cert_pem: String,
    me: Description,
}

impl Session {
    /// A session with the manager at `manager`, verified against `root_pem`, as the node
    /// whose certificate and key these are.
    pub fn new(
        manager: SocketAddr,
        root_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        me: &Description,
    ) -> Result<Session, String> {
        let cfg =
            tls::client_config(root_pem, Some((cert_pem, key_pem))).map_err(|e| e.to_string())?;
        let ch = tls::channel(manager, cfg);
        Ok(Session {
            client: DispatcherClient::new(ch.clone()),
            ca: CaClient::new(ch),
            root_pem: root_pem.to_owned(),
            cert_pem: cert_pem.to_owned(),
            me: me.clone(),
        })
    }

    /// Whether this node's certificate is due for renewal ([`ca::renewal_due`]).
    pub fn renewal_due(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        ca::renewal_due(&self.cert_pem, now)
    }

    /// Renews the certificate over mutual TLS with the current one: a new key, the same
    /// node ID, the role the node's record has. Returns (certificate, key), PEM.
    pub async fn renew(&mut self) -> Result<(String, String), String> {
        let (key_pem, csr) = ca::new_key_and_csr().map_err(|e| e.to_string())?;
        let r = self
            .ca
            .renew_node_certificate(capi::RenewRequest { csr })
            .await
            .map_err(status_line)?
            .into_inner();
        // Kept only if it chains to the root, is for the new key and is the same node and
        // role as the one it replaces.
        let new = ca::check_node_certificate(&self.root_pem, &r.certificate, &key_pem)
            .map_err(|e| e.to_string())?;
        let old = ca::pem_der(&self.cert_pem, "node certificate")
            .and_then(|d| ca::identity(&d))
            .map_err(|e| e.to_string())?;
        // The role may change (`node promote`/`demote`); the daemon keeps it only if it
        // is the role the leader assigned.
        if (new.node_id, new.cluster_id) != (old.node_id, old.cluster_id) {
            return Err("the renewed certificate is for another node".into());
        }
        Ok((r.certificate, key_pem))
    }

    /// One heartbeat with the state of this node's `tasks`; returns the period the
    /// manager asks for.
    pub async fn beat(&mut self, tasks: Vec<capi::TaskStatus>) -> Result<Duration, String> {
        let r = self
            .client
            .heartbeat(self.me.heartbeat(tasks))
            .await
            .map_err(status_line)?
            .into_inner();
        Ok(Duration::from_millis(r.period_ms).clamp(MIN_HEARTBEAT_PERIOD, MAX_HEARTBEAT_PERIOD))
    }

    /// Opens the stream of this node's assignments.
    pub async fn assignments(
        &mut self,
    ) -> Result<tonic::Streaming<capi::AssignmentsMessage>, String> {
        Ok(self
            .client
            .assignments(capi::Empty {})
            .await
            .map_err(status_line)?
            .into_inner())
    }
}

/// A manager that joined asks the leader at `leader` to add it to Raft's membership as
/// listening on `addr` (SwarmKit's `raft.go` `Join`, called by a new manager on the
/// manager it joined through). Returns once it is a voter.
pub async fn join_raft(
    leader: SocketAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
    addr: &str,
) -> Result<(), String> {
    let mut c = crate::cluster_api::raft_client::RaftClient::new(tls::channel_with_timeout(
        leader,
        tls,
        // Adding a learner waits for it to take the log.
        Duration::from_secs(60),
    ));
    c.join(capi::RaftJoinRequest { addr: addr.into() })
        .await
        .map_err(status_line)?;
    Ok(())
}

/// A manager leaving the swarm asks the leader at `leader` to take it out of Raft's
/// membership (SwarmKit's `raft.go` `Leave`).
pub async fn leave_raft(
    leader: SocketAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    let mut c = crate::cluster_api::raft_client::RaftClient::new(tls::channel(leader, tls));
    c.leave(capi::Empty {}).await.map_err(status_line)?;
    Ok(())
}
