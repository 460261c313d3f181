//! Fixtures for swarmgate's integration tests and benchmarks: real-shaped frames, a
//! two-node overlay built from the data plane's public API, and namespace topologies
//! ([`netns`]) for tests that run the gateway on real (virtual) devices.

pub mod netns;
pub mod swarm;

use std::net::Ipv4Addr;
use std::sync::Arc;

use swarmgate_aead::IcvLen;
use swarmgate_dataplane::esp::{DatapathKey, EpochSource, SaDatabase, SenderIvs};
use swarmgate_dataplane::maglev::{Backend, VipService};
use swarmgate_dataplane::tables::{docker_overlay_mtu, NetworkSpec, Tables, Underlay};
use swarmgate_dataplane::wire::checksum;
use swarmgate_dataplane::wire::{
    ArpOperation, ArpRepr, EtherType, EthernetAddress, EthernetRepr, IpProtocol, Ipv4Repr,
    UdpPacket, UdpRepr, Vni,
};
use swarmgate_dataplane::{Counters, HeapBuf, Next, PacketBuf, Worker};

/// Builders of complete Ethernet frames.
pub mod frames {
    use super::*;

    fn eth(src: EthernetAddress, dst: EthernetAddress, et: EtherType, out: &mut [u8]) {
        EthernetRepr {
            src_addr: src,
            dst_addr: dst,
            vlan_tci: None,
            ethertype: et,
        }
        .emit(out);
    }

    /// An Ethernet/IPv4 frame with room for `l4_len` bytes of `protocol` after the headers
    /// (at offset 34), IPv4 checksum filled.
    fn ipv4_frame(
        src_mac: EthernetAddress,
        dst_mac: EthernetAddress,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: IpProtocol,
        l4_len: usize,
    ) -> Vec<u8> {
        let mut v = vec![0u8; 14 + 20 + l4_len];
        eth(src_mac, dst_mac, EtherType::IPV4, &mut v);
        Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            protocol,
            payload_len: l4_len,
            ttl: 64,
            dscp_ecn: 0,
            ident: 0x1234,
            dont_frag: true,
        }
        .emit(&mut v[14..]);
        v
    }

    /// Ethernet/IPv4/UDP with valid IPv4 and UDP checksums.
    #[allow(clippy::too_many_arguments)]
    pub fn udp(
        src_mac: EthernetAddress,
        dst_mac: EthernetAddress,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut v = ipv4_frame(
            src_mac,
            dst_mac,
            src,
            dst,
            IpProtocol::UDP,
            8 + payload.len(),
        );
        UdpRepr {
            src_port: sport,
            dst_port: dport,
            payload_len: payload.len(),
        }
        .emit(&mut v[34..]);
        v[42..].copy_from_slice(payload);
        UdpPacket::new_unchecked(&mut v[34..]).fill_checksum(src, dst);
        v
    }

    /// Ethernet/IPv4/TCP (PSH|ACK, no options) with valid checksums.
    #[allow(clippy::too_many_arguments)]
    pub fn tcp(
        src_mac: EthernetAddress,
        dst_mac: EthernetAddress,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        tcp_with_flags(src_mac, dst_mac, src, dst, sport, dport, 0x18, payload)
    }

    /// A TCP SYN (a connection's first segment) as a full Ethernet frame.
    pub fn tcp_syn(
        src_mac: EthernetAddress,
        dst_mac: EthernetAddress,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        tcp_with_flags(src_mac, dst_mac, src, dst, sport, dport, 0x02, payload)
    }

    /// A TCP segment with the given flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08,
    /// ACK 0x10) as a full Ethernet frame, checksums complete.
    #[allow(clippy::too_many_arguments)]
    pub fn tcp_with_flags(
        src_mac: EthernetAddress,
        dst_mac: EthernetAddress,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut v = ipv4_frame(
            src_mac,
            dst_mac,
            src,
            dst,
            IpProtocol::TCP,
            20 + payload.len(),
        );
        let t = &mut v[34..];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[4..8].copy_from_slice(&1000u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
        t[20..].copy_from_slice(payload);
        let c = !checksum::fold(
            checksum::pseudo_header_sum(src.octets(), dst.octets(), 6, t.len() as u16)
                + checksum::sum(t),
        );
        t[16..18].copy_from_slice(&c.to_be_bytes());
        v
    }

    /// True when the IPv4 header checksum and the TCP or UDP checksum of `frame` verify.
    pub fn l4_checksums_ok(frame: &[u8]) -> bool {
        let ip = swarmgate_dataplane::wire::Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let l4 = ip.payload();
        let proto = ip.protocol().0;
        if proto == 17 && l4[6..8] == [0, 0] {
            return ip.verify_checksum();
        }
        ip.verify_checksum()
            && checksum::fold(
                checksum::pseudo_header_sum(
                    ip.src_addr().octets(),
                    ip.dst_addr().octets(),
                    proto,
                    l4.len() as u16,
                ) + checksum::sum(l4),
            ) == 0xffff
    }

    /// A broadcast ARP request "who has `target`? tell `src`".
    pub fn arp_request(src_mac: EthernetAddress, src: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut v = vec![0u8; 14 + 28];
        eth(src_mac, EthernetAddress::BROADCAST, EtherType::ARP, &mut v);
        ArpRepr {
            operation: ArpOperation::Request,
            sender_hw: src_mac,
            sender_ip: src,
            target_hw: EthernetAddress([0; 6]),
            target_ip: target,
        }
        .emit(&mut v[14..]);
        v
    }

    /// A UDP frame whose total length is exactly `len` bytes (at least 42).
    pub fn udp_of_len(
        src_mac: EthernetAddress,
        dst_mac: EthernetAddress,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        len: usize,
    ) -> Vec<u8> {
        let payload: Vec<u8> = (0..len.saturating_sub(42)).map(|i| (i * 7) as u8).collect();
        udp(src_mac, dst_mac, src, dst, 40000, 5000, &payload)
    }
}

/// Port numbers of the two-node topology.
pub const UNDERLAY_PORT: u16 = 0;
/// Local port of the plain network.
pub const PLAIN_PORT: u16 = 1;
/// Local port of the encrypted network.
pub const SECURE_PORT: u16 = 2;
/// VNI of the plain network.
pub const PLAIN_VNI: u32 = 4097;
/// VNI of the encrypted network.
pub const SECURE_VNI: u32 = 4098;

/// One simulated swarmgate node.
pub struct Node {
    /// Its current snapshot.
    pub tables: Arc<Tables>,
    /// Its one worker.
    pub worker: Worker,
    /// Its SAs, kept across snapshots.
    pub sas: SaDatabase,
    /// Index 1 or 2.
    pub index: u8,
}

/// One epoch source for every simulated node of the test process: like a node's persisted
/// reservation, it never hands out an epoch twice, even to a node built again ("restarted").
pub fn node_epochs() -> Arc<EpochSource> {
    static EPOCHS: std::sync::OnceLock<Arc<EpochSource>> = std::sync::OnceLock::new();
    EPOCHS
        .get_or_init(|| Arc::new(EpochSource::new(1, u32::MAX)))
        .clone()
}

/// Node `i`'s underlay MAC (the same as the kernel-capture vectors use).
pub fn underlay_mac(i: u8) -> EthernetAddress {
    EthernetAddress([0x02, 0x00, 0xc0, 0xa8, 0x32, i])
}
/// Node `i`'s VTEP address, 192.168.50.i.
pub fn vtep(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, i)
}
/// Endpoint address of node `i` on the plain network, 10.0.0.i.
pub fn plain_ep(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, i)
}
/// Endpoint address of node `i` on the encrypted network, 10.0.1.i.
pub fn secure_ep(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, i)
}
/// Docker's MAC for an endpoint address.
pub fn mac_of(ip: Ipv4Addr) -> EthernetAddress {
    EthernetAddress::from_ipv4_docker(ip)
}

impl Node {
    /// Node `i` (1 or 2) of a two-node overlay: a plain network (VNI 4097) and an
    /// encrypted one (VNI 4098), one local endpoint on each, the other node's endpoints as
    /// remote, and SAs from `keys` (primary first).
    pub fn new(i: u8, keys: &[DatapathKey]) -> Node {
        let mut n = Node {
            tables: Arc::new(Tables::new(Underlay::new(
                UNDERLAY_PORT,
                underlay_mac(i),
                vtep(i),
            ))),
            worker: Worker::new(Arc::new(Counters::default())),
            sas: SaDatabase::new(IcvLen::Icv8, node_epochs()),
            index: i,
        };
        n.publish(keys, |_| {});
        n
    }

    /// The other node's index.
    pub fn peer(&self) -> u8 {
        3 - self.index
    }

    /// Rebuilds and publishes this node's tables with `keys`, letting `extra` add to them.
    pub fn publish(&mut self, keys: &[DatapathKey], extra: impl FnOnce(&mut Tables)) {
        let (i, o) = (self.index, self.peer());
        self.sas
            .set_peer_keys(vtep(i), vtep(o), keys, SenderIvs::Epochs)
            .unwrap();
        let mut t = Tables::new(self.tables.underlay);
        t.generation = self.tables.generation + 1;
        t.set_neighbour(vtep(o), underlay_mac(o));
        let plain = Vni::new(PLAIN_VNI).unwrap();
        let secure = Vni::new(SECURE_VNI).unwrap();
        t.add_network(NetworkSpec {
            vni: plain,
            slot: 0,
            local_port: PLAIN_PORT,
            mtu: docker_overlay_mtu(1500, false),
            encrypted: false,
        })
        .unwrap();
        t.add_network(NetworkSpec {
            vni: secure,
            slot: 1,
            local_port: SECURE_PORT,
            mtu: docker_overlay_mtu(1500, true),
            encrypted: true,
        })
        .unwrap();
        t.add_local_endpoint(plain, mac_of(plain_ep(i))).unwrap();
        t.add_local_endpoint(secure, mac_of(secure_ep(i))).unwrap();
        t.add_remote_endpoint(plain, plain_ep(o), mac_of(plain_ep(o)), vtep(o))
            .unwrap();
        t.add_remote_endpoint(secure, secure_ep(o), mac_of(secure_ep(o)), vtep(o))
            .unwrap();
        t.esp = self.sas.tables();
        extra(&mut t);
        self.tables = Arc::new(t);
    }

    /// Runs `frames` received on `port` through the pipeline; returns each decision with
    /// the resulting bytes.
    pub fn run(&mut self, port: u16, frames: &[Vec<u8>]) -> Vec<(Next, Vec<u8>)> {
        let mut bufs: Vec<HeapBuf> = frames.iter().map(|f| HeapBuf::from_frame(f, 64)).collect();
        let mut next = vec![Next::Exception; bufs.len()];
        self.worker
            .process(&self.tables, port, &mut bufs, &mut next);
        next.into_iter()
            .zip(bufs.iter().map(|b| b.data().to_vec()))
            .collect()
    }

    /// Runs one frame.
    pub fn run1(&mut self, port: u16, frame: &[u8]) -> (Next, Vec<u8>) {
        self.run(port, &[frame.to_vec()]).pop().unwrap()
    }

    /// This node's counters.
    pub fn counters(&self) -> &Counters {
        self.worker.counters()
    }
}

/// A VIP service on the plain network with backends 10.0.0.{ips}, all with Docker MACs.
pub fn vip_service(vip: Ipv4Addr, port: u16, target: u16, backends: &[Ipv4Addr]) -> VipService {
    VipService::new(
        vip,
        IpProtocol::TCP,
        port,
        target,
        backends
            .iter()
            .map(|ip| Backend {
                ip: *ip,
                mac: mac_of(*ip),
            })
            .collect(),
    )
    .unwrap()
}

/// Two test keys with tags 1 and 2.
pub fn keys() -> (DatapathKey, DatapathKey, DatapathKey) {
    (
        DatapathKey {
            key: *b"swarmgate-key-01",
            tag: 1,
        },
        DatapathKey {
            key: *b"swarmgate-key-02",
            tag: 2,
        },
        DatapathKey {
            key: *b"swarmgate-key-03",
            tag: 3,
        },
    )
}
