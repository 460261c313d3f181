//! swarmgate's control plane: it owns the cluster's state and programs the data plane
//! through table snapshots. This crate grows with issue #4; what is here is the state
//! model's foundation, pure logic with no I/O:
//!
//! * [`ipam`] — address pools and subnets as Docker allocates them (10.0.0.0/8 in /24s,
//!   no overlap, gateway = first address, endpoints the next free ones);
//! * [`network`] — `docker network create -d overlay` semantics: VNIs from 4096, options,
//!   the ingress rules;
//! * [`publish`] — docker's `--publish` syntax, short and long forms;
//! * [`service`] — `docker service create` validation as swarmkit does it, published-port
//!   assignment and VIPs;
//! * [`task`] — tasks as processes in network namespaces attached to the node's bridges.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod ca;
pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod datapath_keys;
pub mod dataplane;
pub mod dispatcher;
pub mod dns;
pub mod gossip;
pub mod ipam;
pub mod local;
pub mod logs;
pub mod network;
pub mod publish;
pub mod raft;
pub mod remote;
pub mod runtime;
pub mod scheduler;
pub mod service;
pub mod store;
pub mod task;
pub mod tls;

/// The daemon API (gRPC, generated from `proto/swarmgate.proto`).
#[allow(missing_docs, clippy::all)]
pub mod api {
    tonic::include_proto!("swarmgate.v1");
}

/// What nodes and managers say on TCP 2377 (gRPC, generated from `proto/cluster.proto`).
#[allow(missing_docs, clippy::all)]
pub mod cluster_api {
    tonic::include_proto!("swarmgate.cluster.v1");
}
