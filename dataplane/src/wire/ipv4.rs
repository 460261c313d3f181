//! IPv4 (RFC 791): header checksum, options and fragments recognised.

use super::checksum;
use super::{get_u16, put_u16, Result, WireError};
use core::net::Ipv4Addr;

/// An IP protocol number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    /// ICMP, 1.
    pub const ICMP: IpProtocol = IpProtocol(1);
    /// TCP, 6.
    pub const TCP: IpProtocol = IpProtocol(6);
    /// UDP, 17.
    pub const UDP: IpProtocol = IpProtocol(17);
    /// ESP, 50 (RFC 4303).
    pub const ESP: IpProtocol = IpProtocol(50);
}

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;
/// Offset of the source address (for incremental checksum updates by callers).
pub const SRC_ADDR_OFFSET: usize = 12;
/// Offset of the destination address.
pub const DST_ADDR_OFFSET: usize = 16;
/// Offset of the header checksum.
pub const CHECKSUM_OFFSET: usize = 10;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;

/// A view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// A view with no checks.
    pub const fn new_unchecked(buffer: T) -> Ipv4Packet<T> {
        Ipv4Packet { buffer }
    }

    /// A view after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Ipv4Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ensures version 4, a header length of at least 20 bytes that fits, and a total length
    /// between the header length and the buffer length. Trailing bytes past the total length
    /// (Ethernet padding) are allowed and ignored by [`payload`](Self::payload).
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(WireError::Malformed);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        let tl = self.total_len() as usize;
        if tl < hl {
            return Err(WireError::Malformed);
        }
        if b.len() < hl || b.len() < tl {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::VER_IHL] & 0x0f) as usize) * 4
    }
    /// DSCP and ECN byte.
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }
    /// Total length field.
    pub fn total_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }
    /// Identification.
    pub fn ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::IDENT)
    }
    /// Don't-fragment flag.
    pub fn dont_frag(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }
    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (get_u16(self.buffer.as_ref(), field::FLG_OFF) & 0x1fff) << 3
    }
    /// True for any fragment of a fragmented datagram (MF set or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & (FLAG_MF | 0x1fff) != 0
    }
    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }
    /// Protocol.
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::PROTOCOL])
    }
    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }
    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        let b: [u8; 4] = self.buffer.as_ref()[field::SRC_ADDR].try_into().unwrap();
        b.into()
    }
    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b: [u8; 4] = self.buffer.as_ref()[field::DST_ADDR].try_into().unwrap();
        b.into()
    }
    /// Options bytes (empty without options).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
    /// True when the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(&self.buffer.as_ref()[..self.header_len()])
    }
    /// The payload: from the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the source address (checksum not updated).
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets())
    }
    /// Sets the destination address (checksum not updated).
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets())
    }
    /// Sets the TTL (checksum not updated).
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl
    }
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        put_u16(self.buffer.as_mut(), field::CHECKSUM, c)
    }
    /// Computes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.buffer.as_ref()[..hl]);
        self.set_checksum(c);
    }
    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, tl) = (self.header_len(), self.total_len() as usize);
        &mut self.buffer.as_mut()[hl..tl]
    }
}

/// A parsed IPv4 header (options are not represented; `emit` writes none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Protocol of the payload.
    pub protocol: IpProtocol,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// DSCP and ECN.
    pub dscp_ecn: u8,
    /// Identification.
    pub ident: u16,
    /// Don't-fragment flag.
    pub dont_frag: bool,
}

impl Ipv4Repr {
    /// Parses a checked packet, verifying its header checksum. Fragments are refused
    /// (`Unsupported`): swarmgate never reassembles on the data path; callers that want
    /// fragments check [`Ipv4Packet::is_fragment`] first.
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Result<Ipv4Repr> {
        p.check_len()?;
        if !p.verify_checksum() {
            return Err(WireError::Checksum);
        }
        if p.is_fragment() {
            return Err(WireError::Unsupported);
        }
        Ok(Ipv4Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: p.total_len() as usize - p.header_len(),
            ttl: p.ttl(),
            dscp_ecn: p.dscp_ecn(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
        })
    }

    /// Header bytes [`emit`](Self::emit) writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header with a correct checksum. `payload_len` must be at most
    /// 65515; larger values are clamped so the total-length field stays meaningful.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..HEADER_LEN];
        b[field::VER_IHL] = 0x45;
        b[field::DSCP_ECN] = self.dscp_ecn;
        put_u16(
            b,
            field::LENGTH,
            (HEADER_LEN + self.payload_len).min(0xffff) as u16,
        );
        put_u16(b, field::IDENT, self.ident);
        put_u16(b, field::FLG_OFF, if self.dont_frag { FLAG_DF } else { 0 });
        b[field::TTL] = self.ttl;
        b[field::PROTOCOL] = self.protocol.0;
        put_u16(b, field::CHECKSUM, 0);
        b[field::SRC_ADDR].copy_from_slice(&self.src_addr.octets());
        b[field::DST_ADDR].copy_from_slice(&self.dst_addr.octets());
        let c = checksum::checksum(b);
        put_u16(b, field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Outer IPv4 header of a VXLAN packet sent by the Linux kernel (192.168.0.1 ->
    // 192.168.0.2, UDP, TTL 64, DF).
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x6e, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0xa6, 0xd3, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0x02,
    ];

    fn packet() -> Vec<u8> {
        let mut v = HEADER.to_vec();
        v.resize(0x6e, 0xaa);
        Ipv4Packet::new_unchecked(&mut v[..]).fill_checksum();
        v
    }

    #[test]
    fn parse_real_header() {
        let v = packet();
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert!(p.verify_checksum());
        let r = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(r.src_addr, Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(r.protocol, IpProtocol::UDP);
        assert_eq!(r.payload_len, 0x6e - 20);
        assert!(r.dont_frag);
        assert_eq!(p.payload().len(), 0x6e - 20);
        let mut out = v.clone();
        r.emit(&mut out);
        assert_eq!(out, v);
    }

    #[test]
    fn known_checksum() {
        // Wikipedia's "IPv4 header checksum" example: 4500 0073 0000 4000 4011 ____ c0a8 0001 c0a8 00c7 -> b861
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum::checksum(&h), 0xb861);
    }

    #[test]
    fn bad_checksum_options_fragments() {
        let mut v = packet();
        v[10] ^= 1;
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&p).unwrap_err(), WireError::Checksum);

        // With 4 bytes of options (IHL 6).
        let mut v = packet();
        v[0] = 0x46;
        v[20..24].copy_from_slice(&[0x01, 0x01, 0x01, 0x00]); // NOP NOP NOP EOL
        Ipv4Packet::new_unchecked(&mut v[..]).fill_checksum();
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(Ipv4Repr::parse(&p).unwrap().payload_len, 0x6e - 24);

        // A middle fragment.
        let mut v = packet();
        v[6] = 0x20; // MF
        v[7] = 0x10; // offset 16 * 8
        Ipv4Packet::new_unchecked(&mut v[..]).fill_checksum();
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert!(p.is_fragment() && p.more_frags());
        assert_eq!(p.frag_offset(), 128);
        assert_eq!(Ipv4Repr::parse(&p).unwrap_err(), WireError::Unsupported);
    }

    #[test]
    fn length_checks() {
        let v = packet();
        assert_eq!(
            Ipv4Packet::new_checked(&v[..19]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            Ipv4Packet::new_checked(&v[..50]).unwrap_err(),
            WireError::Truncated
        );
        let mut w = v.clone();
        w[0] = 0x44; // IHL 4 < 5
        assert_eq!(
            Ipv4Packet::new_checked(&w[..]).unwrap_err(),
            WireError::Malformed
        );
        let mut w = v.clone();
        w[0] = 0x65; // version 6
        assert_eq!(
            Ipv4Packet::new_checked(&w[..]).unwrap_err(),
            WireError::Malformed
        );
        let mut w = v;
        w[2] = 0;
        w[3] = 10; // total length below header length
        assert_eq!(
            Ipv4Packet::new_checked(&w[..]).unwrap_err(),
            WireError::Malformed
        );
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(p) = Ipv4Packet::new_checked(&data[..]) {
                let _ = (p.options(), p.payload(), p.is_fragment(), p.frag_offset(), p.src_addr(), p.dst_addr());
                let _ = Ipv4Repr::parse(&p);
            }
        }

        #[test]
        fn roundtrip(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), proto in any::<u8>(),
                     len in 0usize..200, ttl in any::<u8>(), tos in any::<u8>(), id in any::<u16>(), df in any::<bool>()) {
            let r = Ipv4Repr { src_addr: src.into(), dst_addr: dst.into(), protocol: IpProtocol(proto),
                               payload_len: len, ttl, dscp_ecn: tos, ident: id, dont_frag: df };
            let mut b = vec![0u8; 20 + len];
            r.emit(&mut b);
            let p = Ipv4Packet::new_checked(&b[..]).unwrap();
            prop_assert_eq!(Ipv4Repr::parse(&p).unwrap(), r);
        }
    }
}
