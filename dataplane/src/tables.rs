//! The immutable table snapshot the control side publishes and workers read.
//!
//! The control plane builds a [`Tables`] value, wraps it in an `Arc` and publishes it; a
//! worker picks up the current one between bursts and never sees it change. Everything a
//! packet needs — our VTEP, underlay neighbours, per-network forwarding, proxy ARP, VIPs
//! and SAs — is in here, so the pipeline takes no lock.

use core::net::Ipv4Addr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::counters::{MAX_NETWORKS, MAX_PORTS};
use crate::esp::{EspTables, DOCKER_ESP_OVERHEAD};
use crate::maglev::VipService;
use crate::wire::{vxlan, EthernetAddress, Vni};

/// A port number as the driver numbers its ports (a DPDK port id).
pub type PortId = u16;

/// Docker's VXLAN overhead: outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const VXLAN_OVERHEAD: u16 = 50;

/// The MTU Docker gives an overlay network on a `base`-MTU underlay (default 1500):
/// `base − 50`, and for encrypted networks a further 26, rounded down to a multiple of 4
/// (libnetwork `drivers/overlay` `maxMTU`). 1450 plain, 1424 encrypted.
pub const fn docker_overlay_mtu(base: u16, encrypted: bool) -> u16 {
    let mut mtu = base.saturating_sub(VXLAN_OVERHEAD);
    if encrypted {
        mtu = mtu.saturating_sub(DOCKER_ESP_OVERHEAD);
        mtu -= mtu % 4;
    }
    mtu
}

/// This node's underlay identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Underlay {
    /// The port facing the physical network.
    pub port: PortId,
    /// Its MAC.
    pub mac: EthernetAddress,
    /// Our VTEP (data-path) address.
    pub ip: Ipv4Addr,
    /// UDP port for VXLAN, 4789 unless configured (Docker allows 1024–49151).
    pub vxlan_port: u16,
    /// TTL of outer headers.
    pub ttl: u8,
    /// Set DF on outer headers. On by default: the data plane never fragments or
    /// reassembles, and the overlay MTU already leaves room for the encapsulation. The
    /// Linux kernel's vxlan device sends DF clear unless configured with `df set`; both
    /// forms are accepted by either side.
    pub dont_fragment: bool,
    /// The port to the kernel (an exception TAP carrying this node's underlay address, as
    /// VPP's linux-cp does): what the pipeline hands to [`Next::Exception`] goes there, and
    /// what the kernel sends out of it is forwarded to the underlay unchanged.
    ///
    /// [`Next::Exception`]: crate::Next::Exception
    pub exception_port: Option<PortId>,
}

impl Underlay {
    /// An underlay with the default VXLAN port, TTL 64 and DF set.
    pub fn new(port: PortId, mac: EthernetAddress, ip: Ipv4Addr) -> Underlay {
        Underlay {
            port,
            mac,
            ip,
            vxlan_port: vxlan::DEFAULT_PORT,
            ttl: 64,
            dont_fragment: true,
            exception_port: None,
        }
    }
}

/// Why a table change was refused. Nothing is changed when an error is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// The VNI is already used by another network.
    DuplicateVni(Vni),
    /// The port is already the underlay or another network's port.
    PortInUse(PortId),
    /// The network counter slot is already taken.
    SlotInUse(u16),
    /// A port or slot number beyond the counters' capacity.
    OutOfRange,
    /// No network with that VNI.
    UnknownVni(Vni),
    /// That VIP address, protocol and port is already a service.
    DuplicateVip(Ipv4Addr, u16),
    /// MTU outside 68..=9000.
    BadMtu(u16),
    /// The network has no router (routed mode needed).
    NotRouted(Vni),
}

impl core::fmt::Display for TableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TableError::DuplicateVni(v) => write!(f, "VNI {v} is already in use"),
            TableError::PortInUse(p) => write!(f, "port {p} is already in use"),
            TableError::SlotInUse(s) => write!(f, "network slot {s} is already in use"),
            TableError::OutOfRange => write!(f, "port or slot number out of range"),
            TableError::UnknownVni(v) => write!(f, "no network with VNI {v}"),
            TableError::DuplicateVip(ip, p) => write!(f, "{ip}:{p} is already a service address"),
            TableError::BadMtu(m) => write!(f, "MTU {m} is outside 68..=9000"),
            TableError::NotRouted(v) => write!(f, "network with VNI {v} is not in routed mode"),
        }
    }
}

impl std::error::Error for TableError {}

/// The settings of one overlay network on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkSpec {
    /// Its VNI.
    pub vni: Vni,
    /// Counter slot, stable for the network's lifetime (`0..MAX_NETWORKS`).
    pub slot: u16,
    /// The local port into this node's bridge for the network.
    pub local_port: PortId,
    /// Largest inner IP packet (frame minus its Ethernet header) accepted for encap.
    pub mtu: u16,
    /// `--opt encrypted`: ESP only, cleartext VXLAN for this VNI dropped.
    pub encrypted: bool,
}

/// An (IPv4 address, IP protocol, port) triple packed into one word: the key of VIP and
/// reverse-translation lookups, hashed as a single `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceKey(u64);

impl ServiceKey {
    /// Packs the triple.
    #[inline]
    pub fn new(addr: Ipv4Addr, protocol: u8, port: u16) -> ServiceKey {
        ServiceKey(((u32::from(addr) as u64) << 24) | ((protocol as u64) << 16) | port as u64)
    }
}

/// Where an inner destination MAC lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdbEntry {
    /// Behind this node's local port for the network.
    Local,
    /// Behind the remote VTEP with this address.
    Remote(Ipv4Addr),
}

/// This node's routing identity on a network whose local endpoints sit on isolated bridge
/// ports, so that everything they send reaches the data plane (the control plane's mode;
/// the static gateway's networks have none and stay plain L2).
///
/// Local endpoints resolve every local address and the gateway address to `mac`; the data
/// plane then delivers by IP: to the local endpoint (source MAC rewritten to `mac`), to a
/// remote endpoint over VXLAN, or — for a reply of a published port — out of the underlay.
/// VIP translation and connection tracking happen on this path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Router {
    /// The data plane's MAC on the network.
    pub mac: EthernetAddress,
    /// The network's gateway address, answered with `mac`.
    pub gateway: Ipv4Addr,
}

/// Forwarding state of one overlay network.
#[derive(Debug, Clone)]
pub struct Network {
    /// The settings.
    pub spec: NetworkSpec,
    /// Routed mode, see [`Router`].
    pub router: Option<Router>,
    /// Local endpoint address → MAC (routed mode).
    pub local: FxHashMap<Ipv4Addr, EthernetAddress>,
    /// Endpoint MAC → where it lives: local, or the remote VTEP (Docker's FDB entries).
    /// One map for both, so forwarding a frame is one lookup.
    pub fdb: FxHashMap<EthernetAddress, FdbEntry>,
    /// Addresses answered by proxy ARP (remote endpoints and VIPs; Docker's static ARP).
    pub arp: FxHashMap<Ipv4Addr, EthernetAddress>,
    /// VIP services by (address, protocol, port).
    pub vips: FxHashMap<ServiceKey, Arc<VipService>>,
    /// Reverse translation for replies of local backends:
    /// (backend address, protocol, target port) → (VIP, published port).
    pub reverse: FxHashMap<ServiceKey, (Ipv4Addr, u16)>,
}

impl Network {
    /// True when `mac` is an endpoint behind this node's local port.
    #[inline]
    pub fn is_local(&self, mac: &EthernetAddress) -> bool {
        self.fdb.get(mac) == Some(&FdbEntry::Local)
    }
}

/// One complete, immutable forwarding state.
#[derive(Debug, Clone)]
pub struct Tables {
    /// Increases with every publish; workers use it to notice a change.
    pub generation: u64,
    /// Our underlay identity.
    pub underlay: Underlay,
    /// Underlay neighbour (VTEP or next hop) → MAC.
    pub neighbours: FxHashMap<Ipv4Addr, EthernetAddress>,
    /// SAs for encrypted networks.
    pub esp: EspTables,
    /// Published ports (ingress mode): (this node's address, protocol, published port) →
    /// the ingress network's index and the service over its tasks there.
    pub ingress: FxHashMap<ServiceKey, (u16, Arc<VipService>)>,
    networks: Vec<Network>,
    by_vni: FxHashMap<Vni, usize>,
    by_port: Vec<Option<u16>>,
}

impl Tables {
    /// Empty tables for `underlay`.
    pub fn new(underlay: Underlay) -> Tables {
        Tables {
            generation: 0,
            underlay,
            neighbours: FxHashMap::default(),
            esp: EspTables::default(),
            ingress: FxHashMap::default(),
            networks: Vec::new(),
            by_vni: FxHashMap::default(),
            by_port: vec![None; MAX_PORTS],
        }
    }

    /// Adds a network.
    pub fn add_network(&mut self, spec: NetworkSpec) -> Result<(), TableError> {
        if spec.local_port as usize >= MAX_PORTS || spec.slot as usize >= MAX_NETWORKS {
            return Err(TableError::OutOfRange);
        }
        if !(68..=9000).contains(&spec.mtu) {
            return Err(TableError::BadMtu(spec.mtu));
        }
        if self.by_vni.contains_key(&spec.vni) {
            return Err(TableError::DuplicateVni(spec.vni));
        }
        if spec.local_port == self.underlay.port
            || Some(spec.local_port) == self.underlay.exception_port
            || self.by_port[spec.local_port as usize].is_some()
        {
            return Err(TableError::PortInUse(spec.local_port));
        }
        if self.networks.iter().any(|n| n.spec.slot == spec.slot) {
            return Err(TableError::SlotInUse(spec.slot));
        }
        let idx = self.networks.len();
        self.networks.push(Network {
            spec,
            router: None,
            local: FxHashMap::default(),
            fdb: FxHashMap::default(),
            arp: FxHashMap::default(),
            vips: FxHashMap::default(),
            reverse: FxHashMap::default(),
        });
        self.by_vni.insert(spec.vni, idx);
        self.by_port[spec.local_port as usize] = Some(idx as u16);
        Ok(())
    }

    fn net_mut(&mut self, vni: Vni) -> Result<&mut Network, TableError> {
        let i = *self.by_vni.get(&vni).ok_or(TableError::UnknownVni(vni))?;
        Ok(&mut self.networks[i])
    }

    /// Adds (or moves) a remote endpoint: proxy-ARP entry and FDB entry, as Docker programs
    /// them from gossip.
    pub fn add_remote_endpoint(
        &mut self,
        vni: Vni,
        ip: Ipv4Addr,
        mac: EthernetAddress,
        vtep: Ipv4Addr,
    ) -> Result<(), TableError> {
        let n = self.net_mut(vni)?;
        n.arp.insert(ip, mac);
        n.fdb.insert(mac, FdbEntry::Remote(vtep));
        Ok(())
    }

    /// Adds an endpoint behind this node's local port for the network.
    pub fn add_local_endpoint(&mut self, vni: Vni, mac: EthernetAddress) -> Result<(), TableError> {
        let n = self.net_mut(vni)?;
        n.fdb.insert(mac, FdbEntry::Local);
        Ok(())
    }

    /// Puts a network in routed mode (see [`Router`]); the gateway address is answered by
    /// proxy ARP with the router's MAC. Call before adding local hosts.
    pub fn set_router(&mut self, vni: Vni, router: Router) -> Result<(), TableError> {
        let n = self.net_mut(vni)?;
        n.arp.insert(router.gateway, router.mac);
        n.router = Some(router);
        Ok(())
    }

    /// Adds a local endpoint of a routed network: FDB entry, address → MAC for delivery,
    /// and proxy ARP answering its address with the router's MAC.
    pub fn add_local_host(
        &mut self,
        vni: Vni,
        ip: Ipv4Addr,
        mac: EthernetAddress,
    ) -> Result<(), TableError> {
        let n = self.net_mut(vni)?;
        let router = n.router.ok_or(TableError::NotRouted(vni))?;
        n.fdb.insert(mac, FdbEntry::Local);
        n.local.insert(ip, mac);
        n.arp.insert(ip, router.mac);
        Ok(())
    }

    /// Publishes a port in ingress mode: `svc.vip` is this node's underlay address,
    /// `svc.port` the published port, the backends the tasks' addresses on the (routed)
    /// ingress network `vni`.
    pub fn add_ingress(&mut self, vni: Vni, svc: VipService) -> Result<(), TableError> {
        let i = *self.by_vni.get(&vni).ok_or(TableError::UnknownVni(vni))?;
        if self.networks[i].router.is_none() {
            return Err(TableError::NotRouted(vni));
        }
        let key = ServiceKey::new(svc.vip, svc.protocol.0, svc.port);
        if self.ingress.contains_key(&key) {
            return Err(TableError::DuplicateVip(svc.vip, svc.port));
        }
        self.ingress.insert(key, (i as u16, Arc::new(svc)));
        Ok(())
    }

    /// Adds a VIP service to a network and a proxy-ARP answer for the VIP (`vip_mac`).
    /// Backends on this node (MACs in the local set at call time) get reverse translation.
    pub fn add_vip(
        &mut self,
        vni: Vni,
        svc: VipService,
        vip_mac: EthernetAddress,
    ) -> Result<(), TableError> {
        let n = self.net_mut(vni)?;
        let key = ServiceKey::new(svc.vip, svc.protocol.0, svc.port);
        if n.vips.contains_key(&key) {
            return Err(TableError::DuplicateVip(svc.vip, svc.port));
        }
        for b in svc.backends() {
            if n.is_local(&b.mac) {
                n.reverse.insert(
                    ServiceKey::new(b.ip, svc.protocol.0, svc.target_port),
                    (svc.vip, svc.port),
                );
            }
        }
        n.arp.insert(svc.vip, vip_mac);
        n.vips.insert(key, Arc::new(svc));
        Ok(())
    }

    /// Sets an underlay neighbour's MAC.
    pub fn set_neighbour(&mut self, ip: Ipv4Addr, mac: EthernetAddress) {
        self.neighbours.insert(ip, mac);
    }

    /// The network with `vni` and its index in [`networks`](Self::networks).
    #[inline]
    pub fn network_index_by_vni(&self, vni: Vni) -> Option<(usize, &Network)> {
        self.by_vni.get(&vni).map(|i| (*i, &self.networks[*i]))
    }

    /// The network whose local port is `port`, and its index.
    #[inline]
    pub fn network_index_by_port(&self, port: PortId) -> Option<(usize, &Network)> {
        let i = (*self.by_port.get(port as usize)?)? as usize;
        Some((i, &self.networks[i]))
    }

    /// All networks.
    pub fn networks(&self) -> &[Network] {
        &self.networks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(vni: u32, slot: u16, port: PortId) -> NetworkSpec {
        NetworkSpec {
            vni: Vni::new(vni).unwrap(),
            slot,
            local_port: port,
            mtu: 1450,
            encrypted: false,
        }
    }

    #[test]
    fn docker_mtus() {
        assert_eq!(docker_overlay_mtu(1500, false), 1450);
        assert_eq!(docker_overlay_mtu(1500, true), 1424);
        assert_eq!(docker_overlay_mtu(9000, true), 8924);
        assert_eq!(docker_overlay_mtu(1499, true), 1420);
    }

    #[test]
    fn refuses_conflicts_without_changing_anything() {
        let mut t = Tables::new(Underlay::new(
            0,
            EthernetAddress([2, 0, 0, 0, 0, 1]),
            Ipv4Addr::new(192, 168, 0, 1),
        ));
        t.add_network(spec(4097, 0, 1)).unwrap();
        assert_eq!(
            t.add_network(spec(4097, 1, 2)),
            Err(TableError::DuplicateVni(Vni::new(4097).unwrap()))
        );
        assert_eq!(
            t.add_network(spec(4098, 1, 1)),
            Err(TableError::PortInUse(1))
        );
        assert_eq!(
            t.add_network(spec(4098, 1, 0)),
            Err(TableError::PortInUse(0))
        );
        assert_eq!(
            t.add_network(spec(4098, 0, 2)),
            Err(TableError::SlotInUse(0))
        );
        assert_eq!(
            t.add_network(spec(4098, 1, 999)),
            Err(TableError::OutOfRange)
        );
        assert_eq!(
            t.add_network(NetworkSpec {
                mtu: 20,
                ..spec(4098, 1, 2)
            }),
            Err(TableError::BadMtu(20))
        );
        assert_eq!(t.networks().len(), 1);
        assert!(t.network_index_by_port(2).is_none());
        let unknown = Vni::new(5).unwrap();
        assert_eq!(
            t.add_remote_endpoint(
                unknown,
                Ipv4Addr::new(10, 0, 0, 3),
                EthernetAddress([2, 0x42, 10, 0, 0, 3]),
                Ipv4Addr::new(192, 168, 0, 2)
            ),
            Err(TableError::UnknownVni(unknown))
        );
    }
}
