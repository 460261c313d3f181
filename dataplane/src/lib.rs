//! swarmgate's data plane: the packet logic of an overlay gateway, and nothing else.
//!
//! This crate does no I/O and knows nothing of DPDK or tokio. The DPDK workers in `ffi/`,
//! the tests and the benchmarks all drive the same code through [`pipeline::Worker`] over
//! any buffer implementing [`buf::PacketBuf`]; the control plane programs it by publishing
//! immutable [`tables::Tables`] snapshots.
//!
//! * [`wire`] — zero-copy packet views and representations (Ethernet, ARP, IPv4, UDP, ICMP,
//!   VXLAN, ESP). No parser panics on any input.
//! * [`vxlan`] — encapsulation and decapsulation, byte-compatible with Linux's vxlan.
//! * [`esp`] — ESP transport mode with AES-128-GCM, Docker's SA and key-rotation scheme,
//!   anti-replay.
//! * [`maglev`], [`nat`], [`flow`] — VIP load balancing, address rewriting, connection
//!   tracking.
//! * [`pipeline`] — the burst pipeline; [`counters`] — per-worker counters.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod buf;
pub mod counters;
pub mod esp;
pub mod flow;
pub mod hash;
pub mod maglev;
pub mod nat;
pub mod pipeline;
pub mod tables;
pub mod vxlan;
pub mod wire;

pub use buf::{HeapBuf, PacketBuf};
pub use counters::{Counters, DropReason};
pub use pipeline::{Next, Worker, BURST};
pub use tables::{NetworkSpec, PortId, Tables, Underlay};
