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
use crate::esp::{self, Reserved, TxSa, ESP_PREFIX_LEN};
use crate::tables::{Tables, Underlay};
use crate::wire::{
    checksum, ethernet, ipv4, udp, vxlan as vxlan_wire, EtherType, EthernetAddress, EthernetFrame,
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

/// The outer headers toward one (network, VTEP, next hop), written once and copied in front
/// of each packet, with only the lengths, the IPv4 checksum and the UDP source port filled
/// in per packet: VPP's rewrite strings (`vnet/adj/rewrite.h`, applied by
/// `vnet/vxlan/encap.c` `vxlan_encap_inline`, which also adds the length to a checksum
/// computed without it).
#[derive(Debug, Clone, Copy)]
pub struct OuterHeaders {
    /// Ethernet and IPv4, the IPv4 total length and checksum zero.
    eth_ip: [u8; ethernet::HEADER_LEN + ipv4::HEADER_LEN],
    /// The ones'-complement sum of that IPv4 header, folded to 16 bits (RFC 1071).
    ip_sum: u32,
    /// UDP (source port, length and checksum zero) and VXLAN.
    udp_vxlan: [u8; udp::HEADER_LEN + vxlan_wire::HEADER_LEN],
}

impl OuterHeaders {
    /// The headers as the kernel writes them (see the module's documentation); `esp` puts
    /// ESP rather than UDP in the IPv4 protocol field.
    pub fn new(
        underlay: &Underlay,
        vni: Vni,
        vtep: Ipv4Addr,
        next_hop: EthernetAddress,
        esp: bool,
    ) -> OuterHeaders {
        let mut eth_ip = [0u8; ethernet::HEADER_LEN + ipv4::HEADER_LEN];
        EthernetRepr {
            src_addr: underlay.mac,
            dst_addr: next_hop,
            vlan_tci: None,
            ethertype: EtherType::IPV4,
        }
        .emit(&mut eth_ip[..ethernet::HEADER_LEN]);
        Ipv4Repr {
            src_addr: underlay.ip,
            dst_addr: vtep,
            protocol: if esp {
                IpProtocol::ESP
            } else {
                IpProtocol::UDP
            },
            payload_len: 0,
            ttl: underlay.ttl,
            dscp_ecn: 0,
            ident: 0,
            dont_frag: underlay.dont_fragment,
        }
        .emit(&mut eth_ip[ethernet::HEADER_LEN..]);
        let ip = &mut eth_ip[ethernet::HEADER_LEN..];
        ip[IP_LENGTH..IP_LENGTH + 2].fill(0);
        ip[IP_CHECKSUM..IP_CHECKSUM + 2].fill(0);
        let ip_sum = checksum::fold(checksum::sum(ip)) as u32;
        let mut udp_vxlan = [0u8; udp::HEADER_LEN + vxlan_wire::HEADER_LEN];
        UdpRepr {
            src_port: 0,
            dst_port: underlay.vxlan_port,
            payload_len: 0,
        }
        .emit(&mut udp_vxlan[..udp::HEADER_LEN]);
        udp_vxlan[UDP_LENGTH..UDP_LENGTH + 2].fill(0);
        VxlanRepr { vni }.emit(&mut udp_vxlan[udp::HEADER_LEN..]);
        OuterHeaders {
            eth_ip,
            ip_sum,
            udp_vxlan,
        }
    }
}

/// Offsets of the fields filled in per packet (RFC 791, RFC 768).
const IP_LENGTH: usize = 2;
const IP_CHECKSUM: usize = 10;
const UDP_LENGTH: usize = 4;

/// Encapsulates the inner frame in `buf` behind `h`, with `src_port` as the outer UDP
/// source port; with `sa` (which `h` must have been made for) and a sequence number
/// reserved from it, the VXLAN datagram is protected with ESP before the IPv4 header goes
/// on.
#[inline]
pub fn encapsulate_with<B: PacketBuf>(
    buf: &mut B,
    h: &OuterHeaders,
    src_port: u16,
    sa: Option<(&TxSa, Reserved)>,
) -> Result<(), DropReason> {
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
    d[..h.udp_vxlan.len()].copy_from_slice(&h.udp_vxlan);
    d[..2].copy_from_slice(&src_port.to_be_bytes());
    let udp_len = (udp::HEADER_LEN + vxlan_wire::HEADER_LEN + inner_len).min(0xffff) as u16;
    d[UDP_LENGTH..UDP_LENGTH + 2].copy_from_slice(&udp_len.to_be_bytes());
    if let Some((sa, seq)) = sa {
        esp::seal_reserved(buf, sa, IpProtocol::UDP.0, seq)?;
    }
    let total = (ipv4::HEADER_LEN + buf.len()).min(0xffff) as u16;
    let d = buf
        .prepend(ethernet::HEADER_LEN + ipv4::HEADER_LEN)
        .ok_or(DropReason::NoBufferRoom)?;
    d[..h.eth_ip.len()].copy_from_slice(&h.eth_ip);
    let ip = &mut d[ethernet::HEADER_LEN..];
    ip[IP_LENGTH..IP_LENGTH + 2].copy_from_slice(&total.to_be_bytes());
    // Two 16-bit words add up to at most 0x1fffe: two folds always suffice.
    let sum = h.ip_sum + total as u32;
    let sum = (sum & 0xffff) + (sum >> 16);
    let c = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[IP_CHECKSUM..IP_CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::HeapBuf;
    use proptest::prelude::*;

    proptest! {
        /// The outer headers copied from the template, with the length added to a checksum
        /// computed without it, are the headers written field by field for that packet.
        #[test]
        fn template_headers_are_the_emitted_headers(
            inner_len in 0usize..4000,
            src_port in any::<u16>(),
            vni in 1u32..(1 << 24),
            ttl in any::<u8>(),
            df in any::<bool>(),
            vxlan_port in 1024u16..49152,
            src in any::<u32>(),
            dst in any::<u32>(),
        ) {
            let mut u = Underlay::new(0, EthernetAddress([2, 0, 0, 0, 0, 1]), Ipv4Addr::from(src));
            (u.ttl, u.dont_fragment, u.vxlan_port) = (ttl, df, vxlan_port);
            let vtep = Ipv4Addr::from(dst);
            let next_hop = EthernetAddress([2, 0, 0, 0, 0, 2]);
            let vni = Vni::new(vni).unwrap();
            let h = OuterHeaders::new(&u, vni, vtep, next_hop, false);
            let mut buf = HeapBuf::new(128 + inner_len, 128);
            prop_assert!(buf.append(inner_len).is_some());
            encapsulate_with(&mut buf, &h, src_port, None).unwrap();

            let mut want = [0u8; ENCAP_HEADROOM];
            EthernetRepr { src_addr: u.mac, dst_addr: next_hop, vlan_tci: None, ethertype: EtherType::IPV4 }
                .emit(&mut want[..14]);
            Ipv4Repr {
                src_addr: u.ip, dst_addr: vtep, protocol: IpProtocol::UDP,
                payload_len: 16 + inner_len, ttl, dscp_ecn: 0, ident: 0, dont_frag: df,
            }
            .emit(&mut want[14..34]);
            UdpRepr { src_port, dst_port: vxlan_port, payload_len: 8 + inner_len }.emit(&mut want[34..42]);
            VxlanRepr { vni }.emit(&mut want[42..50]);
            prop_assert_eq!(&buf.data()[..ENCAP_HEADROOM], &want[..]);
            prop_assert!(checksum::verify(&buf.data()[14..34]));
        }
    }
}
