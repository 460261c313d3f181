//! Raft's messages between managers: openraft's requests as JSON in the `Raft` service on
//! TCP 2377 (`proto/cluster.proto`), over the same mutual TLS as every manager call, so only
//! a manager of this cluster can take part (SwarmKit's `raft/transport`).

use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use super::{NodeId, Peer, TypeConfig};
use crate::cluster_api::{raft_client::RaftClient, RaftMessage};

/// The largest Raft message accepted or sent (a snapshot chunk or a batch of entries).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Makes a client per peer.
pub struct Network {
    tls: Arc<arc_swap::ArcSwap<rustls::ClientConfig>>,
}

impl Network {
    /// Clients that present this manager's certificate (`tls`, the current one when a
    /// client is made).
    pub fn new(tls: Arc<arc_swap::ArcSwap<rustls::ClientConfig>>) -> Network {
        Network { tls }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Client;

    async fn new_client(&mut self, target: NodeId, node: &Peer) -> Client {
        let client = node.addr.parse().ok().map(|a| {
            RaftClient::new(crate::tls::channel(a, self.tls.load_full()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE)
        });
        Client {
            target,
            addr: node.addr.clone(),
            client,
        }
    }
}

/// The client of one peer.
pub struct Client {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
}

type Rpc<T, E> = Result<T, RPCError<NodeId, Peer, E>>;

impl Client {
    async fn call<Req, Resp, E>(
        &mut self,
        which: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Rpc<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(c) = self.client.as_mut() else {
            let e = std::io::Error::other(format!("bad peer address {:?}", self.addr));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        let payload =
            serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let msg = RaftMessage { payload };
        let fut = async {
            match which {
                "append" => c.append_entries(msg).await,
                "vote" => c.vote(msg).await,
                _ => c.install_snapshot(msg).await,
            }
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), fut).await {
            Err(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            Ok(Err(s)) => return Err(RPCError::Unreachable(Unreachable::new(&s))),
            Ok(Ok(r)) => r.into_inner(),
        };
        let r: Result<Resp, E> = serde_json::from_slice(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call("vote", &rpc, &option).await
    }
}

/// Decodes a request (server side).
pub fn decode<T: DeserializeOwned>(m: &RaftMessage) -> Result<T, tonic::Status> {
    serde_json::from_slice(&m.payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("raft message: {e}")))
}

/// Encodes a reply (server side): the result, error included, for the caller to decode.
pub fn encode<T: Serialize, E: Serialize>(r: &Result<T, E>) -> Result<RaftMessage, tonic::Status> {
    serde_json::to_vec(r)
        .map(|payload| RaftMessage { payload })
        .map_err(|e| tonic::Status::internal(format!("raft reply: {e}")))
}
