//! VXLAN encapsulation and decapsulation (RFC 7348), byte-compatible with the Linux
//! kernel's vxlan device as Docker configures it.
//!
//! Encapsulation writes the outer headers into the buffer's headroom; the inner frame is
//! never copied. The outer packet is what the kernel sends: Ethernet II, IPv4 without
//! options (TTL 64; DF set unless [`Underlay::dont_fragment`] is off), UDP with a zero checksum and a source port from a hash of
//! the inner flow (RFC 7348 §5, in the kernel's 32768–60999 range), VXLAN with only the
//! I flag set. For encrypted networks the UDP datagram is wrapped in ESP
//! ([`crate::esp::seal`]) before the IPv4 header goes on.

use core::net::Ipv4Addr;

use crate::buf::PacketBuf;
use crate::counters::DropReason;
use crate::esp::{self, TxSa, ESP_PREFIX_LEN};
use crate::tables::{Tables, Underlay};
use crate::wire::{
    ethernet, ipv4, udp, vxlan as vxlan_wire, EtherType, EthernetAddress, EthernetFrame,
    EthernetRepr, IpProtocol, Ipv4Repr, UdpPacket, UdpRepr, Vni, VxlanPacket, VxlanRepr,
};

/// Lowest outer UDP source port (the kernel's default `ip_local_port_range`).
pub const SRC_PORT_MIN: u16 = 32768;
/// One past the highest outer UDP source port.
pub const SRC_PORT_MAX: u16 = 61000;

/// Headroom a plain encapsulation needs: Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const ENCAP_HEADROOM: usize =
    ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN + vxlan_wire::HEADER_LEN;
/// Headroom an encrypted encapsulation needs (adds SPI, sequence number and IV).
pub const ENCAP_HEADROOM_ESP: usize = ENCAP_HEADROOM + ESP_PREFIX_LEN;

/// The outer UDP source port for an inner flow's hash (RFC 7348 §5 entropy), scaled into
/// `SRC_PORT_MIN..SRC_PORT_MAX` as the kernel's `udp_flow_src_port` does.
#[inline]
pub fn port_from_hash(h: u64) -> u16 {
    let range = (SRC_PORT_MAX - SRC_PORT_MIN) as u64;
    SRC_PORT_MIN + (((h >> 32) * range) >> 32) as u16
}

/// Where and how to send one encapsulated frame.
#[derive(Debug, Clone, Copy)]
pub struct EncapParams<'a> {
    /// The network's VNI.
    pub vni: Vni,
    /// The remote VTEP.
    pub vtep: Ipv4Addr,
    /// MAC of the underlay next hop toward `vtep`.
    pub next_hop: EthernetAddress,
    /// Outer UDP source port ([`port_from_hash`] of the inner flow).
    pub src_port: u16,
    /// The outbound SA, for encrypted networks.
    pub sa: Option<&'a TxSa>,
}

/// Encapsulates the inner frame in `buf` as `p` says. With an SA, the VXLAN datagram is
/// protected with ESP before the IPv4 header goes on.
#[inline]
pub fn encapsulate<B: PacketBuf>(
    buf: &mut B,
    underlay: &Underlay,
    p: &EncapParams<'_>,
) -> Result<(), DropReason> {
    let (vni, vtep, next_hop, src_port, sa) = (p.vni, p.vtep, p.next_hop, p.src_port, p.sa);
    let need = if sa.is_some() {
        ENCAP_HEADROOM_ESP
    } else {
        ENCAP_HEADROOM
    };
    if buf.headroom() < need {
        return Err(DropReason::NoBufferRoom);
    }
    let inner_len = buf.len();
    let d = buf
        .prepend(udp::HEADER_LEN + vxlan_wire::HEADER_LEN)
        .ok_or(DropReason::NoBufferRoom)?;
    UdpRepr {
        src_port,
        dst_port: underlay.vxlan_port,
        payload_len: vxlan_wire::HEADER_LEN + inner_len,
    }
    .emit(&mut d[..8]);
    VxlanRepr { vni }.emit(&mut d[8..16]);
    let protocol = match sa {
        Some(sa) => {
            esp::seal(buf, sa, IpProtocol::UDP.0)?;
            IpProtocol::ESP
        }
        None => IpProtocol::UDP,
    };
    let payload_len = buf.len();
    let d = buf
        .prepend(ethernet::HEADER_LEN + ipv4::HEADER_LEN)
        .ok_or(DropReason::NoBufferRoom)?;
    EthernetRepr {
        src_addr: underlay.mac,
        dst_addr: next_hop,
        vlan_tci: None,
        ethertype: EtherType::IPV4,
    }
    .emit(&mut d[..ethernet::HEADER_LEN]);
    Ipv4Repr {
        src_addr: underlay.ip,
        dst_addr: vtep,
        protocol,
        payload_len,
        ttl: underlay.ttl,
        dscp_ecn: 0,
        ident: 0,
        dont_frag: underlay.dont_fragment,
    }
    .emit(&mut d[ethernet::HEADER_LEN..]);
    Ok(())
}

/// Result of a successful decapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decapsulated {
    /// Index of the network in [`Tables::networks`].
    pub network: usize,
    /// Inner frame length.
    pub inner_len: usize,
}

/// Decapsulates the VXLAN datagram in `buf` (which starts at its UDP header, outer
/// Ethernet and IPv4 already checked and removed). Validates the port, the I flag, the
/// VNI, that cleartext is not accepted for an encrypted network (`via_esp` says whether
/// the datagram came out of ESP) and that the inner destination is a local endpoint, or
/// broadcast or multicast (delivered to the network's bridge); on success `buf` holds the
/// inner frame.
#[inline]
pub fn decapsulate<B: PacketBuf>(
    buf: &mut B,
    tables: &Tables,
    via_esp: bool,
) -> Result<Decapsulated, DropReason> {
    let d = buf.data();
    let u = UdpPacket::new_checked(d)?;
    if u.dst_port() != tables.underlay.vxlan_port {
        return Err(if via_esp {
            DropReason::EspNotVxlan
        } else {
            DropReason::Unsupported
        });
    }
    let udp_len = u.len() as usize;
    let v = VxlanPacket::new_checked(u.payload())?;
    let vni = VxlanRepr::parse(&v)?.vni;
    let (network, net) = tables
        .network_index_by_vni(vni)
        .ok_or(DropReason::UnknownVni)?;
    if net.spec.encrypted && !via_esp {
        return Err(DropReason::CleartextOnEncrypted);
    }
    let inner = EthernetFrame::new_checked(v.payload())?;
    let dst = inner.dst_addr();
    // A remote broadcast or multicast frame (an ARP request from a Docker host whose vxlan
    // device has no proxy entry yet, say) goes to the network's bridge, which floods it to
    // the local endpoints, as the kernel's vxlan device hands it to Docker's bridge. On a
    // routed network the router's own MAC is a destination too: the routing mesh sends a
    // backend's reply back to the router of the node its client connected to.
    let to_router = net.router.as_ref().is_some_and(|r| r.mac == dst);
    if !(dst.is_multicast() || net.is_local(&dst) || to_router) {
        return Err(DropReason::UnknownDestination);
    }
    let excess = d.len() - udp_len;
    if !(buf.trim(excess) && buf.adj(udp::HEADER_LEN + vxlan_wire::HEADER_LEN)) {
        return Err(DropReason::Truncated);
    }
    Ok(Decapsulated {
        network,
        inner_len: buf.len(),
    })
}
