//! Address and port rewriting for VIP load balancing, with incremental checksum updates
//! (RFC 1624) of the IPv4 header and the TCP/UDP checksum — the payload is never summed.

use core::net::Ipv4Addr;

use crate::counters::DropReason;
use crate::wire::checksum::{update16, update32};
use crate::wire::ipv4::{CHECKSUM_OFFSET, DST_ADDR_OFFSET, SRC_ADDR_OFFSET};
use crate::wire::{get_u16, get_u32, put_u16, put_u32, IpProtocol, Ipv4Packet};

/// Byte offsets inside TCP (RFC 9293) and UDP (RFC 768) headers that NAT touches.
mod l4 {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const TCP_CHECKSUM: usize = 16;
    pub const TCP_MIN_LEN: usize = 20;
    pub const UDP_CHECKSUM: usize = 6;
    pub const UDP_LEN: usize = 8;
}

/// Which end of the flow to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Destination address and port (DNAT toward a backend).
    Destination,
    /// Source address and port (reverse translation of a backend's reply).
    Source,
}

/// Rewrites one side of the IPv4 TCP/UDP packet in `ip` (starting at its IPv4 header) to
/// `addr:port`, updating both checksums incrementally. The packet must already have passed
/// [`Ipv4Packet::new_checked`]; non-first fragments and other protocols are refused.
pub fn rewrite(ip: &mut [u8], side: Side, addr: Ipv4Addr, port: u16) -> Result<(), DropReason> {
    let p = Ipv4Packet::new_checked(&*ip)?;
    let hl = p.header_len();
    let proto = p.protocol();
    if p.frag_offset() != 0 {
        return Err(DropReason::Unsupported);
    }
    let (csum_at, min_len) = match proto {
        IpProtocol::TCP => (l4::TCP_CHECKSUM, l4::TCP_MIN_LEN),
        IpProtocol::UDP => (l4::UDP_CHECKSUM, l4::UDP_LEN),
        _ => return Err(DropReason::Unsupported),
    };
    if p.total_len() as usize - hl < min_len {
        return Err(DropReason::Truncated);
    }
    let (addr_at, port_at) = match side {
        Side::Destination => (DST_ADDR_OFFSET, l4::DST_PORT),
        Side::Source => (SRC_ADDR_OFFSET, l4::SRC_PORT),
    };
    let old_addr = get_u32(ip, addr_at);
    let new_addr = u32::from(addr);
    let l4 = hl;
    let old_port = get_u16(ip, l4 + port_at);

    put_u32(ip, addr_at, new_addr);
    let hc = update32(get_u16(ip, CHECKSUM_OFFSET), old_addr, new_addr);
    put_u16(ip, CHECKSUM_OFFSET, hc);

    put_u16(ip, l4 + port_at, port);
    let old_sum = get_u16(ip, l4 + csum_at);
    if proto == IpProtocol::UDP && old_sum == 0 {
        // No UDP checksum: stays absent (RFC 768).
        return Ok(());
    }
    // The address is covered through the pseudo-header, the port directly.
    let mut c = update32(old_sum, old_addr, new_addr);
    c = update16(c, old_port, port);
    if proto == IpProtocol::UDP && c == 0 {
        c = 0xffff;
    }
    put_u16(ip, l4 + csum_at, c);
    Ok(())
}

/// The L4 ports of an IPv4 TCP/UDP packet (`None` for other protocols or fragments).
#[inline]
pub fn ports<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Option<(u16, u16)> {
    let proto = p.protocol();
    if (proto != IpProtocol::TCP && proto != IpProtocol::UDP) || p.is_fragment() {
        return None;
    }
    let pl = p.payload();
    if pl.len() < 4 {
        return None;
    }
    Some((get_u16(pl, l4::SRC_PORT), get_u16(pl, l4::DST_PORT)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum;
    use crate::wire::{Ipv4Repr, UdpPacket, UdpRepr};
    use proptest::prelude::*;

    fn tcp_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 20 + 20 + payload.len()];
        Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            protocol: IpProtocol::TCP,
            payload_len: 20 + payload.len(),
            ttl: 64,
            dscp_ecn: 0,
            ident: 1,
            dont_frag: true,
        }
        .emit(&mut v);
        let t = &mut v[20..];
        put_u16(t, 0, sport);
        put_u16(t, 2, dport);
        put_u32(t, 4, 1000);
        t[12] = 5 << 4;
        t[13] = 0x18;
        put_u16(t, 14, 64240);
        t[20..].copy_from_slice(payload);
        let c = !checksum::fold(
            checksum::pseudo_header_sum(src.octets(), dst.octets(), 6, t.len() as u16)
                + checksum::sum(t),
        );
        put_u16(t, 16, c);
        v
    }

    fn tcp_ok(v: &[u8]) -> bool {
        let p = Ipv4Packet::new_checked(v).unwrap();
        let t = p.payload();
        p.verify_checksum()
            && checksum::fold(
                checksum::pseudo_header_sum(
                    p.src_addr().octets(),
                    p.dst_addr().octets(),
                    6,
                    t.len() as u16,
                ) + checksum::sum(t),
            ) == 0xffff
    }

    #[test]
    fn dnat_then_reverse_tcp() {
        let client = Ipv4Addr::new(172, 18, 0, 5);
        let vip = Ipv4Addr::new(10, 0, 0, 2);
        let task = Ipv4Addr::new(10, 0, 0, 7);
        let mut v = tcp_packet(client, vip, 40000, 8080, b"GET / HTTP/1.0\r\n\r\n");
        assert!(tcp_ok(&v));
        rewrite(&mut v, Side::Destination, task, 80).unwrap();
        assert!(tcp_ok(&v));
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.dst_addr(), task);
        assert_eq!(ports(&p), Some((40000, 80)));
        // The reply from the task, translated back to the VIP.
        let mut r = tcp_packet(task, client, 80, 40000, b"HTTP/1.0 200 OK\r\n");
        rewrite(&mut r, Side::Source, vip, 8080).unwrap();
        assert!(tcp_ok(&r));
        let p = Ipv4Packet::new_checked(&r[..]).unwrap();
        assert_eq!((p.src_addr(), ports(&p)), (vip, Some((8080, 40000))));
    }

    #[test]
    fn udp_with_and_without_checksum() {
        let (src, dst) = (Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::new(10, 0, 0, 2));
        let mut v = vec![0u8; 20 + 8 + 5];
        Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            protocol: IpProtocol::UDP,
            payload_len: 13,
            ttl: 64,
            dscp_ecn: 0,
            ident: 0,
            dont_frag: false,
        }
        .emit(&mut v);
        UdpRepr {
            src_port: 5000,
            dst_port: 53,
            payload_len: 5,
        }
        .emit(&mut v[20..]);
        v[28..].copy_from_slice(b"hello");
        let mut no_sum = v.clone();
        UdpPacket::new_unchecked(&mut v[20..]).fill_checksum(src, dst);
        let new = Ipv4Addr::new(10, 0, 0, 44);
        rewrite(&mut v, Side::Destination, new, 5353).unwrap();
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert!(p.verify_checksum());
        assert!(UdpPacket::new_checked(p.payload())
            .unwrap()
            .verify_checksum(src, new));
        rewrite(&mut no_sum, Side::Destination, new, 5353).unwrap();
        assert_eq!(UdpPacket::new_checked(&no_sum[20..]).unwrap().checksum(), 0);
    }

    #[test]
    fn refuses_other_protocols_and_short_headers() {
        let mut v = vec![0u8; 28];
        Ipv4Repr {
            src_addr: [1, 1, 1, 1].into(),
            dst_addr: [2, 2, 2, 2].into(),
            protocol: IpProtocol::ICMP,
            payload_len: 8,
            ttl: 1,
            dscp_ecn: 0,
            ident: 0,
            dont_frag: false,
        }
        .emit(&mut v);
        assert_eq!(
            rewrite(&mut v, Side::Destination, [3, 3, 3, 3].into(), 1),
            Err(DropReason::Unsupported)
        );
        let mut v = vec![0u8; 30];
        Ipv4Repr {
            src_addr: [1, 1, 1, 1].into(),
            dst_addr: [2, 2, 2, 2].into(),
            protocol: IpProtocol::TCP,
            payload_len: 10,
            ttl: 1,
            dscp_ecn: 0,
            ident: 0,
            dont_frag: false,
        }
        .emit(&mut v);
        assert_eq!(
            rewrite(&mut v, Side::Destination, [3, 3, 3, 3].into(), 1),
            Err(DropReason::Truncated)
        );
    }

    proptest! {
        #[test]
        fn incremental_matches_full(src in any::<[u8;4]>(), dst in any::<[u8;4]>(), new in any::<[u8;4]>(),
                                    sp in any::<u16>(), dp in any::<u16>(), np in any::<u16>(),
                                    payload in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut v = tcp_packet(src.into(), dst.into(), sp, dp, &payload);
            rewrite(&mut v, Side::Destination, new.into(), np).unwrap();
            prop_assert!(tcp_ok(&v));
            rewrite(&mut v, Side::Source, dst.into(), dp).unwrap();
            prop_assert!(tcp_ok(&v));
        }
    }
}
