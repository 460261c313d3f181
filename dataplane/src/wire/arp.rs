//! ARP (RFC 826) for the Ethernet/IPv4 pair, the only one an overlay carries.

use super::ethernet::EthernetAddress;
use super::{get_u16, put_u16, Result, WireError};
use core::net::Ipv4Addr;

mod field {
    use core::ops::Range;
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOperation {
    /// 1
    Request,
    /// 2
    Reply,
    /// Anything else.
    Unknown(u16),
}

impl From<u16> for ArpOperation {
    fn from(v: u16) -> Self {
        match v {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            v => ArpOperation::Unknown(v),
        }
    }
}

impl From<ArpOperation> for u16 {
    fn from(v: ArpOperation) -> u16 {
        match v {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(v) => v,
        }
    }
}

/// A view of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// A view with no checks.
    pub const fn new_unchecked(buffer: T) -> ArpPacket<T> {
        ArpPacket { buffer }
    }

    /// A view of a buffer holding at least an Ethernet/IPv4 ARP packet.
    pub fn new_checked(buffer: T) -> Result<ArpPacket<T>> {
        let p = Self::new_unchecked(buffer);
        let b = p.buffer.as_ref();
        if b.len() < PACKET_LEN {
            return Err(WireError::Truncated);
        }
        if get_u16(b, field::HTYPE) != 1
            || get_u16(b, field::PTYPE) != 0x0800
            || b[field::HLEN] != 6
            || b[field::PLEN] != 4
        {
            return Err(WireError::Unsupported);
        }
        Ok(p)
    }

    /// Operation.
    pub fn operation(&self) -> ArpOperation {
        get_u16(self.buffer.as_ref(), field::OPER).into()
    }
    /// Sender hardware address.
    pub fn sender_hw(&self) -> EthernetAddress {
        EthernetAddress(self.buffer.as_ref()[field::SHA].try_into().unwrap())
    }
    /// Sender protocol address.
    pub fn sender_ip(&self) -> Ipv4Addr {
        let b: [u8; 4] = self.buffer.as_ref()[field::SPA].try_into().unwrap();
        b.into()
    }
    /// Target hardware address.
    pub fn target_hw(&self) -> EthernetAddress {
        EthernetAddress(self.buffer.as_ref()[field::THA].try_into().unwrap())
    }
    /// Target protocol address.
    pub fn target_ip(&self) -> Ipv4Addr {
        let b: [u8; 4] = self.buffer.as_ref()[field::TPA].try_into().unwrap();
        b.into()
    }
}

/// A parsed Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    /// Operation.
    pub operation: ArpOperation,
    /// Sender hardware address.
    pub sender_hw: EthernetAddress,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_hw: EthernetAddress,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Parses a checked packet.
    pub fn parse<T: AsRef<[u8]>>(p: &ArpPacket<T>) -> Result<ArpRepr> {
        Ok(ArpRepr {
            operation: p.operation(),
            sender_hw: p.sender_hw(),
            sender_ip: p.sender_ip(),
            target_hw: p.target_hw(),
            target_ip: p.target_ip(),
        })
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet into the first 28 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        put_u16(buf, field::HTYPE, 1);
        put_u16(buf, field::PTYPE, 0x0800);
        buf[field::HLEN] = 6;
        buf[field::PLEN] = 4;
        put_u16(buf, field::OPER, self.operation.into());
        buf[field::SHA].copy_from_slice(&self.sender_hw.0);
        buf[field::SPA].copy_from_slice(&self.sender_ip.octets());
        buf[field::THA].copy_from_slice(&self.target_hw.0);
        buf[field::TPA].copy_from_slice(&self.target_ip.octets());
    }

    /// The reply to this request, answering that `target_ip` is at `hw`.
    pub fn reply_from(&self, hw: EthernetAddress) -> ArpRepr {
        ArpRepr {
            operation: ArpOperation::Reply,
            sender_hw: hw,
            sender_ip: self.target_ip,
            target_hw: self.sender_hw,
            target_ip: self.sender_ip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ARP request "who has 10.0.1.3? tell 10.0.1.2" as sent by a Linux endpoint.
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x42, 0x0a, 0x00, 0x01, 0x02, 0x0a,
        0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x01, 0x03,
    ];

    #[test]
    fn parse_request() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        let r = ArpRepr::parse(&p).unwrap();
        assert_eq!(r.operation, ArpOperation::Request);
        assert_eq!(r.sender_ip, Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(r.target_ip, Ipv4Addr::new(10, 0, 1, 3));
        let mut out = [0u8; 28];
        r.emit(&mut out);
        assert_eq!(out, REQUEST);
    }

    #[test]
    fn reply() {
        let r = ArpRepr::parse(&ArpPacket::new_checked(&REQUEST[..]).unwrap()).unwrap();
        let mac = EthernetAddress::from_ipv4_docker(Ipv4Addr::new(10, 0, 1, 3));
        let rep = r.reply_from(mac);
        assert_eq!(rep.operation, ArpOperation::Reply);
        assert_eq!(rep.sender_hw, mac);
        assert_eq!(rep.sender_ip, Ipv4Addr::new(10, 0, 1, 3));
        assert_eq!(rep.target_hw, r.sender_hw);
    }

    #[test]
    fn rejects_other_pairs() {
        let mut b = REQUEST;
        b[5] = 16; // IPv6-sized protocol address
        assert_eq!(
            ArpPacket::new_checked(&b[..]).unwrap_err(),
            WireError::Unsupported
        );
        assert_eq!(
            ArpPacket::new_checked(&REQUEST[..27]).unwrap_err(),
            WireError::Truncated
        );
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = ArpPacket::new_checked(&data[..]) {
                let r = ArpRepr::parse(&p).unwrap();
                let mut out = [0u8; 28];
                r.emit(&mut out);
                prop_assert_eq!(&out[..], &data[..28]);
            }
        }
    }
}
