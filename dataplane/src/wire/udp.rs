//! UDP (RFC 768).

use super::checksum;
use super::{get_u16, put_u16, Result, WireError};
use core::net::Ipv4Addr;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;
/// Offset of the destination port.
pub const DST_PORT_OFFSET: usize = 2;
/// Offset of the source port.
pub const SRC_PORT_OFFSET: usize = 0;
/// Offset of the checksum.
pub const CHECKSUM_OFFSET: usize = 6;

/// A view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// A view with no checks.
    pub const fn new_unchecked(buffer: T) -> UdpPacket<T> {
        UdpPacket { buffer }
    }

    /// A view of a buffer holding the header and as many bytes as the length field says.
    pub fn new_checked(buffer: T) -> Result<UdpPacket<T>> {
        let p = Self::new_unchecked(buffer);
        let b = p.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = p.len() as usize;
        if len < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT)
    }
    /// Length field (header plus payload).
    pub fn len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }
    /// True when the length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        self.len() as usize <= HEADER_LEN
    }
    /// Checksum field (0: none, RFC 768).
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }
    /// The payload, up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.len() as usize]
    }
    /// True when the checksum is absent (zero) or verifies against the pseudo-header.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let data = &self.buffer.as_ref()[..self.len() as usize];
        let acc = checksum::pseudo_header_sum(src.octets(), dst.octets(), 17, self.len())
            + checksum::sum(data);
        checksum::fold(acc) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the destination port (checksum not updated).
    pub fn set_dst_port(&mut self, p: u16) {
        put_u16(self.buffer.as_mut(), field::DST_PORT, p)
    }
    /// Sets the source port (checksum not updated).
    pub fn set_src_port(&mut self, p: u16) {
        put_u16(self.buffer.as_mut(), field::SRC_PORT, p)
    }
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        put_u16(self.buffer.as_mut(), field::CHECKSUM, c)
    }
    /// Computes the checksum over the pseudo-header and datagram and stores it.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let len = self.len();
        let acc = checksum::pseudo_header_sum(src.octets(), dst.octets(), 17, len)
            + checksum::sum(&self.buffer.as_ref()[..len as usize]);
        let c = !checksum::fold(acc);
        // RFC 768: a computed zero is sent as all ones.
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = self.len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..len]
    }
}

/// A parsed UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload length.
    pub payload_len: usize,
}

impl UdpRepr {
    /// Parses a checked datagram (the checksum is not verified here; see
    /// [`UdpPacket::verify_checksum`]).
    pub fn parse<T: AsRef<[u8]>>(p: &UdpPacket<T>) -> Result<UdpRepr> {
        Ok(UdpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            payload_len: (p.len() as usize).saturating_sub(HEADER_LEN),
        })
    }

    /// Header bytes [`emit`](Self::emit) writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 8-byte header with a zero checksum ("no checksum", as the Linux kernel's
    /// vxlan device sends by default over IPv4).
    pub fn emit(&self, buf: &mut [u8]) {
        put_u16(buf, field::SRC_PORT, self.src_port);
        put_u16(buf, field::DST_PORT, self.dst_port);
        put_u16(
            buf,
            field::LENGTH,
            (HEADER_LEN + self.payload_len).min(0xffff) as u16,
        );
        put_u16(buf, field::CHECKSUM, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // A DNS query datagram 10.0.0.2:53000 -> 10.0.0.1:53 with its real checksum.
    fn datagram() -> Vec<u8> {
        let mut v = vec![
            0xcf, 0x08, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef,
        ];
        UdpPacket::new_unchecked(&mut v[..])
            .fill_checksum(Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 1));
        v
    }

    #[test]
    fn parse_and_checksum() {
        let v = datagram();
        let p = UdpPacket::new_checked(&v[..]).unwrap();
        assert_eq!(p.src_port(), 53000);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert!(p.verify_checksum(Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!p.verify_checksum(Ipv4Addr::new(10, 0, 0, 3), Ipv4Addr::new(10, 0, 0, 1)));
        // Reference value computed by hand: pseudo header + header + data.
        let acc: u32 = 0x0a00
            + 0x0002
            + 0x0a00
            + 0x0001
            + 17
            + 12
            + 0xcf08
            + 0x0035
            + 0x000c
            + 0xdead
            + 0xbeef;
        let folded = ((acc & 0xffff) + (acc >> 16)) as u16;
        assert_eq!(p.checksum(), !folded);
    }

    #[test]
    fn length_checks() {
        let mut v = datagram();
        assert_eq!(
            UdpPacket::new_checked(&v[..11]).unwrap_err(),
            WireError::Truncated
        );
        v[5] = 4;
        assert_eq!(
            UdpPacket::new_checked(&v[..]).unwrap_err(),
            WireError::Malformed
        );
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = UdpPacket::new_checked(&data[..]) {
                let _ = (p.payload(), UdpRepr::parse(&p).unwrap(), p.verify_checksum([1,2,3,4].into(), [5,6,7,8].into()));
            }
        }

        #[test]
        fn roundtrip(s in any::<u16>(), d in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let r = UdpRepr { src_port: s, dst_port: d, payload_len: payload.len() };
            let mut b = vec![0u8; 8 + payload.len()];
            r.emit(&mut b);
            b[8..].copy_from_slice(&payload);
            let mut p = UdpPacket::new_checked(&mut b[..]).unwrap();
            prop_assert_eq!(UdpRepr::parse(&p).unwrap(), r);
            p.fill_checksum([10,0,0,1].into(), [10,0,0,2].into());
            prop_assert!(p.verify_checksum([10,0,0,1].into(), [10,0,0,2].into()));
        }
    }
}
