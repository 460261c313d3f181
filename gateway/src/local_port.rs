//! The port between the data plane and a network's kernel bridge, behind which the node's
//! local endpoints (tasks, containers) sit.
//!
//! Three kinds, chosen with `[dpdk] local_ports` (see the README's "The DPDK gateway" for the
//! numbers and the choice):
//! * `tap` (the default): DPDK's `net_tap`, one `read`/`write` system call per packet.
//! * `af_xdp`: a veth pair per network, `sg-<vni>` in the bridge and `sgd-<vni>` an XDP
//!   socket (`net_af_xdp`): memory-mapped rings filled before the kernel's stack sees a
//!   frame, 2.9× the TAP's packet rate here, IPv4 fragments crossing one by one. Not the
//!   default because DPDK 22.11's PMD parks 2048 mbufs of the gateway's pool in each
//!   socket's fill ring and never gives them back when the port is removed
//!   (`xdp_umem_destroy` frees only its bookkeeping): a daemon that creates and removes
//!   networks would drain the pool. Needs a virtual underlay device (the packed pool, see
//!   `Mempool::packed`) and `[dpdk] mbufs` of at least 2048 per network and queue beyond
//!   the default's share.
//! * `af_packet`: the same veth polled by `net_af_packet` through
//!   `PACKET_RX_RING`/`PACKET_TX_RING`. DPDK 22.11's PMD always joins its sockets to a fanout
//!   group with `PACKET_FANOUT_FLAG_DEFRAG`: the kernel reassembles the IPv4 fragments a task
//!   sends, and the datagram no longer fits the network's MTU (or the ring's 2048-byte
//!   frames), so fragmented traffic from tasks is lost.
//!
//! On the veth, the bridge's end has no segmentation or checksum offload: the kernel then
//! hands the data plane MTU-sized frames with complete checksums, as it does to a TAP
//! (a packet socket would otherwise see 64 KB GSO frames and partial checksums).

use anyhow::Context;
use serde::Deserialize;
use swarmgate_ffi::{hotplug, Eal};

use crate::kernel;

/// Which kind of local port a gateway gives its networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalPortKind {
    /// A `net_tap` TAP.
    #[default]
    Tap,
    /// A veth pair whose DPDK end is polled with `net_af_packet`.
    AfPacket,
    /// A veth pair whose DPDK end is an XDP socket (`net_af_xdp`).
    AfXdp,
}

impl LocalPortKind {
    /// The largest network MTU whose frames fit: the mbuf's 2048 data bytes for a TAP; for
    /// af_packet, the ring's 2048-byte frame less the PMD's 66-byte frame header; for an
    /// XDP socket, the mbuf's data room less the 256 bytes the kernel keeps in front of a
    /// received frame (`XDP_PACKET_HEADROOM`).
    pub fn max_mtu(self) -> u16 {
        match self {
            LocalPortKind::Tap => 2048 - 14,
            LocalPortKind::AfPacket => 2048 - 66 - 14,
            LocalPortKind::AfXdp => 2048 - 256 - 14,
        }
    }

    /// An error when a network's `mtu` does not fit this kind's frames.
    pub fn check_mtu(self, mtu: u16) -> anyhow::Result<()> {
        if mtu > self.max_mtu() {
            anyhow::bail!(
                "MTU {mtu} does not fit a {:?} local port (at most {})",
                self,
                self.max_mtu()
            );
        }
        Ok(())
    }
}

/// One network's local port: its DPDK device and the kernel interface in its bridge.
#[derive(Debug, Clone)]
pub struct LocalPort {
    kind: LocalPortKind,
    /// The DPDK device's name (find the port with it).
    pub name: String,
    /// The kernel's interface that goes into the bridge.
    pub bridge_iface: String,
    /// The interface DPDK polls (`None` for a TAP: the device is the interface).
    dpdk_iface: Option<String>,
}

impl LocalPort {
    /// Creates network `vni`'s local port with `queues` queue pairs for a network MTU of `mtu`
    /// (refused first if it does not fit the kind): the kernel side, then
    /// the DPDK device (hot-plugged). A veth pair of ours left behind by a gateway that was
    /// killed is replaced; another interface of the name is an error.
    pub fn create(
        eal: &Eal,
        kind: LocalPortKind,
        vni: u32,
        queues: usize,
        mtu: u16,
    ) -> anyhow::Result<LocalPort> {
        // Before anything is made: a refused network must leave nothing behind (an XDP
        // socket's port keeps 2048 mbufs of the pool for good once probed).
        kind.check_mtu(mtu)?;
        let bridge_iface = format!("sg-{vni}");
        // A veth of ours left behind by a gateway that was killed (a TAP goes with its
        // process); any other interface of that name is not ours to delete.
        if kernel::link_exists(&bridge_iface) {
            if !kernel::is_veth_to(&bridge_iface, &format!("sgd-{vni}")) {
                anyhow::bail!(
                    "an interface {bridge_iface} already exists (another gateway's local port?)"
                );
            }
            kernel::ip(&["link", "del", &bridge_iface])?;
        }
        let port = match kind {
            LocalPortKind::Tap => LocalPort {
                kind,
                name: format!("net_tap_sg{vni}"),
                bridge_iface,
                dpdk_iface: None,
            },
            LocalPortKind::AfPacket | LocalPortKind::AfXdp => {
                let dpdk_iface = format!("sgd-{vni}");
                // As many queues on the veth as the DPDK device polls (an XDP socket binds
                // one queue each).
                let q = queues.max(1).to_string();
                kernel::ip(&[
                    "link",
                    "add",
                    &bridge_iface,
                    "numtxqueues",
                    &q,
                    "numrxqueues",
                    &q,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &dpdk_iface,
                    "numtxqueues",
                    &q,
                    "numrxqueues",
                    &q,
                ])
                .with_context(|| format!("creating the veth pair {bridge_iface}/{dpdk_iface}"))?;
                let setup = kernel::offloads_off(&bridge_iface)
                    .and_then(|()| kernel::isolate_from_kernel(&dpdk_iface))
                    .and_then(|()| kernel::no_ipv6(&bridge_iface));
                if let Err(e) = setup {
                    let _ = kernel::ip(&["link", "del", &bridge_iface]);
                    return Err(e);
                }
                let driver = if kind == LocalPortKind::AfXdp {
                    "net_af_xdp"
                } else {
                    "net_af_packet"
                };
                LocalPort {
                    kind,
                    name: format!("{driver}_sg{vni}"),
                    bridge_iface,
                    dpdk_iface: Some(dpdk_iface),
                }
            }
        };
        let devargs = match kind {
            LocalPortKind::Tap => format!("{},iface={}", port.name, port.bridge_iface),
            // Rings of 2048 frames of 2048 bytes (a frame never exceeds an mbuf's data
            // room), in blocks of a page (the PMD's default block size).
            LocalPortKind::AfPacket => format!(
                "{},iface={},framesz=2048,framecnt=2048",
                port.name,
                port.dpdk_iface.as_deref().expect("a veth")
            ),
            // One XDP socket per queue, from queue 0; the PMD loads libxdp's default
            // program, which redirects every frame of a bound queue to its socket.
            LocalPortKind::AfXdp => format!(
                "{},iface={},start_queue=0,queue_count={},busy_budget=0",
                port.name,
                port.dpdk_iface.as_deref().expect("a veth"),
                queues.max(1)
            ),
        };
        if let Err(e) = hotplug::probe(eal, &crate::with_queues(&devargs, queues)) {
            port.remove_kernel_side();
            return Err(
                anyhow::Error::from(e).context(format!("creating the DPDK device {devargs}"))
            );
        }
        Ok(port)
    }

    /// Once its DPDK port has started: the bridge's end into `bridge` (created if
    /// missing) with `mtu`, and up.
    pub fn attach(&self, bridge: &str, mtu: u16) -> anyhow::Result<()> {
        self.kind.check_mtu(mtu)?;
        if let Some(d) = &self.dpdk_iface {
            kernel::ip(&["link", "set", "dev", d, "mtu", &mtu.to_string()])?;
        }
        kernel::attach_to_bridge(&self.bridge_iface, bridge, mtu)
            .with_context(|| format!("attaching {} to bridge {bridge}", self.bridge_iface))
    }

    /// Removes the DPDK device (its port must be closed) and the kernel side.
    pub fn remove(&self, eal: &Eal) {
        if let Err(e) = hotplug::remove(eal, &self.name) {
            tracing::warn!(port = %self.name, "removing the port: {e}");
        }
        self.remove_kernel_side();
    }

    /// A TAP goes with its device; a veth pair is deleted (both ends).
    pub(crate) fn remove_kernel_side(&self) {
        if self.kind != LocalPortKind::Tap {
            let _ = kernel::ip(&["link", "del", &self.bridge_iface]);
        }
    }
}

/// Local ports made while a gateway starts: their kernel sides are deleted if the start
/// fails before the gateway owns them.
#[derive(Default)]
pub(crate) struct Unfinished(pub(crate) Vec<LocalPort>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        for l in &self.0 {
            l.remove_kernel_side();
        }
    }
}
