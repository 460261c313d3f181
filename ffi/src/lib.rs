//! Safe wrappers over the system DPDK — the only `unsafe` DPDK code in swarmgate.
//!
//! Bindings are generated at build time by bindgen against the installed DPDK (22.11 or
//! newer, found with pkg-config); DPDK's `static inline` fast-path functions are reached
//! through a small C shim (`src/shim.c`, capsule-style). Every `unsafe` block carries a
//! `// SAFETY:` comment. Error codes and null pointers become [`DpdkError`] in one place.
//!
//! * [`Eal`] — EAL initialisation (once per process) and cleanup;
//! * [`Mempool`], [`Mbuf`] — packet buffers; `Mbuf` implements the data plane's
//!   [`PacketBuf`](swarmgate_dataplane::PacketBuf), is freed on drop and given back to DPDK
//!   on transmit;
//! * [`Port`] — ethdev ports: configure, start/stop, link, stats, promiscuous, burst rx/tx
//!   into fixed arrays ([`RxBurst`]);
//! * [`Ring`] — `rte_ring` of mbufs;
//! * [`hotplug`] — run-time probing of virtual devices (`rte_dev_probe`).

mod sys {
    #![allow(
        non_upper_case_globals,
        non_camel_case_types,
        non_snake_case,
        dead_code,
        missing_docs
    )]
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/dpdk.rs"));
}

mod eal;
mod error;
mod mbuf;
mod port;
mod ring;

pub use eal::{hotplug, pin_current_thread, register_thread, Eal};
pub use error::DpdkError;
pub use mbuf::{Mbuf, Mempool, RxBurst, TxBatch, BURST_MAX};
pub use port::{Port, PortStats, RxQueue, TxQueue};
pub use ring::{spsc, Ring, SpscConsumer, SpscProducer};
