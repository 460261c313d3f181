//! What this node's data plane must do: the one interface through which the control plane
//! programs the gateway. The daemon computes a complete [`NodeState`] from the cluster state
//! after every change and hands it to [`DataPlane::apply`]; the gateway turns it into ports,
//! bridges and an immutable table snapshot. Nothing else crosses from control to data plane.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use swarmgate_dataplane::wire::EthernetAddress;

use crate::publish::Protocol;

/// An endpoint on a network: address and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Host {
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    #[serde(with = "mac")]
    pub mac: EthernetAddress,
}

/// An endpoint on another node: where its frames go (Docker's FDB and static ARP entries
/// for a peer, `overlay_peer_table`'s content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RemoteHost {
    /// The endpoint.
    pub host: Host,
    /// Its node's data-path address (VTEP).
    pub vtep: Ipv4Addr,
}

/// A MAC as six bytes in serialised state.
mod mac {
    use super::EthernetAddress;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(m: &EthernetAddress, s: S) -> Result<S::Ok, S::Error> {
        m.0.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EthernetAddress, D::Error> {
        <[u8; 6]>::deserialize(d).map(EthernetAddress)
    }
}

/// A load-balanced address inside a network (a service's VIP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipState {
    /// The VIP.
    pub ip: Ipv4Addr,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port clients use (0: every port, forwarded to the same port on a task).
    pub port: u16,
    /// The port tasks listen on (0 with `port` 0).
    pub target: u16,
    /// The tasks, on this node or another (then among the network's `remote`).
    pub backends: Vec<Host>,
}

/// One overlay network on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// Its name (for port roles and errors).
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// The node's bridge for it, where endpoints attach.
    pub bridge: String,
    /// Overlay MTU.
    pub mtu: u16,
    /// `--opt encrypted`.
    pub encrypted: bool,
    /// The network's gateway address, answered by the data plane.
    pub gateway: Ipv4Addr,
    /// Endpoints on this node.
    pub hosts: Vec<Host>,
    /// Endpoints on other nodes.
    #[serde(default)]
    pub remote: Vec<RemoteHost>,
    /// VIPs.
    pub vips: Vec<VipState>,
}

/// A port published in ingress mode on this node's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The ingress network's VNI.
    pub vni: u32,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The published port.
    pub port: u16,
    /// The target port.
    pub target: u16,
    /// The tasks' addresses on the ingress network.
    pub backends: Vec<Host>,
    /// The service publishing it.
    #[serde(default)]
    pub service: String,
    /// Ingress mode (the routing mesh: every task of the service on every node, from the
    /// gossiped tables); otherwise host mode (this node's tasks only).
    #[serde(default)]
    pub ingress: bool,
}

/// Everything the data plane needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Networks present on this node.
    pub networks: Vec<NetState>,
    /// Published ports.
    pub published: Vec<Published>,
    /// The swarm's VXLAN UDP port (`--data-path-port`; 0: the data plane's configured one).
    pub vxlan_port: u16,
    /// The datapath keys, primary first (given only to a node with an encrypted network):
    /// the SAs with every node behind a remote endpoint of an encrypted network.
    #[serde(default)]
    pub keys: Vec<crate::datapath_keys::SaKey>,
}

/// A data-plane failure the node cannot carry on from: a poll-mode worker died, so some
/// queues are no longer polled. The daemon exits on it (non-zero, loudly) so that its
/// supervisor restarts it; tasks, namespaces and bridges survive that (live-restore).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

/// The data plane as the daemon drives it.
pub trait DataPlane: Send {
    /// Makes the data plane match `state`: creates and removes network ports and bridges,
    /// publishes new tables. Returns an error (and leaves the previous state working)
    /// when a port cannot be created.
    fn apply(&mut self, state: &NodeState) -> anyhow::Result<()>;
    /// Periodic housekeeping (neighbour learning).
    fn tick(&mut self) -> anyhow::Result<()>;
    /// Counters as JSON.
    fn stats(&self) -> serde_json::Value;
    /// `Ok` while the data plane forwards (every worker running); why not otherwise.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    /// This node's underlay address.
    fn address(&self) -> Ipv4Addr;
    /// This node's underlay address and prefix length: the subnet no overlay may use.
    fn underlay(&self) -> (Ipv4Addr, u8) {
        (self.address(), 32)
    }
}
