//! Ethernet II frames (IEEE 802.3 with EtherType), with an optional IEEE 802.1Q tag.

use super::{get_u16, put_u16, Result, WireError};
use core::fmt;
use core::net::Ipv4Addr;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl core::hash::Hash for EthernetAddress {
    /// One `u64` write instead of a length-prefixed byte slice: forwarding-table lookups
    /// hash a MAC per packet.
    #[inline]
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.to_u64())
    }
}

impl EthernetAddress {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    /// From the first six bytes of `b`; `None` if shorter.
    pub fn from_bytes(b: &[u8]) -> Option<EthernetAddress> {
        Some(EthernetAddress(b.get(..6)?.try_into().ok()?))
    }

    /// Docker's endpoint MAC: `02:42` followed by the four IPv4 bytes
    /// (libnetwork `netutils.GenerateMACFromIP`).
    pub fn from_ipv4_docker(ip: Ipv4Addr) -> EthernetAddress {
        let o = ip.octets();
        EthernetAddress([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// ff:ff:ff:ff:ff:ff
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Group bit set (broadcast included).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Neither multicast nor broadcast.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// Packs the address into the low 48 bits of a `u64` (a cheap hash-map key).
    pub fn to_u64(&self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl core::str::FromStr for EthernetAddress {
    type Err = WireError;
    fn from_str(s: &str) -> Result<EthernetAddress> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for o in out.iter_mut() {
            let p = parts.next().ok_or(WireError::Malformed)?;
            if p.len() != 2 {
                return Err(WireError::Malformed);
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| WireError::Malformed)?;
        }
        if parts.next().is_some() {
            return Err(WireError::Malformed);
        }
        Ok(EthernetAddress(out))
    }
}

/// An EtherType value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EtherType(pub u16);

impl EtherType {
    /// IPv4, 0x0800.
    pub const IPV4: EtherType = EtherType(0x0800);
    /// ARP, 0x0806.
    pub const ARP: EtherType = EtherType(0x0806);
    /// IEEE 802.1Q VLAN tag, 0x8100.
    pub const VLAN: EtherType = EtherType(0x8100);
    /// IPv6, 0x86dd.
    pub const IPV6: EtherType = EtherType(0x86dd);
}

mod field {
    use core::ops::Range;
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const TCI: usize = 14;
    pub const INNER_ETHERTYPE: usize = 16;
}

/// Length of an untagged Ethernet II header.
pub const HEADER_LEN: usize = 14;
/// Length of an 802.1Q-tagged header.
pub const VLAN_HEADER_LEN: usize = 18;

/// A read/write view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// A view with no checks; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> EthernetFrame<T> {
        EthernetFrame { buffer }
    }

    /// A view after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<EthernetFrame<T>> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// Ensures the header (including an 802.1Q tag when the outer EtherType says so) fits.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if get_u16(b, field::ETHERTYPE) == EtherType::VLAN.0 && b.len() < VLAN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination address.
    pub fn dst_addr(&self) -> EthernetAddress {
        EthernetAddress(self.buffer.as_ref()[field::DESTINATION].try_into().unwrap())
    }

    /// Source address.
    pub fn src_addr(&self) -> EthernetAddress {
        EthernetAddress(self.buffer.as_ref()[field::SOURCE].try_into().unwrap())
    }

    /// True when an 802.1Q tag follows the addresses.
    pub fn is_tagged(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::ETHERTYPE) == EtherType::VLAN.0
    }

    /// The 802.1Q tag control information, if tagged.
    pub fn vlan_tci(&self) -> Option<u16> {
        self.is_tagged()
            .then(|| get_u16(self.buffer.as_ref(), field::TCI))
    }

    /// The EtherType of the payload (after the tag, if any).
    pub fn ethertype(&self) -> EtherType {
        let at = if self.is_tagged() {
            field::INNER_ETHERTYPE
        } else {
            field::ETHERTYPE
        };
        EtherType(get_u16(self.buffer.as_ref(), at))
    }

    /// Header length: 14, or 18 when tagged.
    pub fn header_len(&self) -> usize {
        if self.is_tagged() {
            VLAN_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// The payload after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: EthernetAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&a.0)
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: EthernetAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&a.0)
    }

    /// Sets the outer EtherType field (the tag protocol identifier when tagged).
    pub fn set_outer_ethertype(&mut self, t: EtherType) {
        put_u16(self.buffer.as_mut(), field::ETHERTYPE, t.0)
    }

    /// The payload after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[hl..]
    }
}

/// A parsed Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    /// Source address.
    pub src_addr: EthernetAddress,
    /// Destination address.
    pub dst_addr: EthernetAddress,
    /// 802.1Q tag control information, when tagged.
    pub vlan_tci: Option<u16>,
    /// EtherType of the payload.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Parses a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<EthernetRepr> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            vlan_tci: frame.vlan_tci(),
            ethertype: frame.ethertype(),
        })
    }

    /// Header length this representation emits.
    pub const fn buffer_len(&self) -> usize {
        if self.vlan_tci.is_some() {
            VLAN_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Writes the header into the first [`buffer_len`](Self::buffer_len) bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[field::DESTINATION].copy_from_slice(&self.dst_addr.0);
        buf[field::SOURCE].copy_from_slice(&self.src_addr.0);
        match self.vlan_tci {
            Some(tci) => {
                put_u16(buf, field::ETHERTYPE, EtherType::VLAN.0);
                put_u16(buf, field::TCI, tci);
                put_u16(buf, field::INNER_ETHERTYPE, self.ethertype.0);
            }
            None => put_u16(buf, field::ETHERTYPE, self.ethertype.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // A real ARP request frame (as captured from a Linux host), truncated to the header.
    const FRAME: [u8; 14] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0x0a, 0x00, 0x01, 0x02, 0x08, 0x06,
    ];

    #[test]
    fn parse_untagged() {
        let f = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert!(f.dst_addr().is_broadcast());
        assert_eq!(
            f.src_addr(),
            EthernetAddress::from_ipv4_docker(Ipv4Addr::new(10, 0, 1, 2))
        );
        assert_eq!(f.ethertype(), EtherType::ARP);
        assert_eq!(f.vlan_tci(), None);
        assert_eq!(f.payload(), &[] as &[u8]);
    }

    #[test]
    fn parse_tagged() {
        let mut b = [0u8; 20];
        let r = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            vlan_tci: Some(100),
            ethertype: EtherType::IPV4,
        };
        r.emit(&mut b);
        assert_eq!(&b[12..18], &[0x81, 0x00, 0x00, 100, 0x08, 0x00]);
        let f = EthernetFrame::new_checked(&b[..]).unwrap();
        assert_eq!(EthernetRepr::parse(&f).unwrap(), r);
        assert_eq!(f.payload().len(), 2);
        assert_eq!(
            EthernetFrame::new_checked(&b[..17]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn mac_parse_display() {
        let m: EthernetAddress = "02:42:0a:00:00:05".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:0a:00:00:05");
        assert!("02:42:0a:00:00".parse::<EthernetAddress>().is_err());
        assert!("02:42:0a:00:00:05:06".parse::<EthernetAddress>().is_err());
        assert!("zz:42:0a:00:00:05".parse::<EthernetAddress>().is_err());
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(f) = EthernetFrame::new_checked(&data[..]) {
                let r = EthernetRepr::parse(&f).unwrap();
                let _ = f.payload();
                prop_assert_eq!(r.buffer_len(), f.header_len());
            }
        }

        #[test]
        fn roundtrip(src in any::<[u8; 6]>(), dst in any::<[u8; 6]>(), tci in proptest::option::of(any::<u16>()), et in any::<u16>()) {
            prop_assume!(et != EtherType::VLAN.0);
            let r = EthernetRepr { src_addr: EthernetAddress(src), dst_addr: EthernetAddress(dst), vlan_tci: tci, ethertype: EtherType(et) };
            let mut b = vec![0u8; r.buffer_len()];
            r.emit(&mut b);
            prop_assert_eq!(EthernetRepr::parse(&EthernetFrame::new_checked(&b[..]).unwrap()).unwrap(), r);
        }
    }
}
