//! VXLAN (RFC 7348 §5): an 8-byte header carrying a 24-bit VNI, over UDP port 4789.

use super::{get_u32, put_u32, Result, WireError};
use core::fmt;

/// IANA's VXLAN port (RFC 7348 §5), also Docker's default data-path port.
pub const DEFAULT_PORT: u16 = 4789;
/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The I flag: "the VNI is valid" (RFC 7348 §5).
pub const FLAG_I: u8 = 0x08;

/// A VXLAN network identifier: 24 bits, validated at construction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

impl Vni {
    /// Largest VNI, 2^24 − 1.
    pub const MAX: u32 = (1 << 24) - 1;
    /// First VNI Docker allocates to overlay networks (libnetwork `ovmanager.go`).
    pub const DOCKER_FIRST: u32 = 4096;

    /// A VNI if `v` fits in 24 bits.
    pub const fn new(v: u32) -> Option<Vni> {
        if v <= Self::MAX {
            Some(Vni(v))
        } else {
            None
        }
    }

    /// The value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vni({})", self.0)
    }
}

impl TryFrom<u32> for Vni {
    type Error = WireError;
    fn try_from(v: u32) -> Result<Vni> {
        Vni::new(v).ok_or(WireError::Malformed)
    }
}

/// A view of a VXLAN header and the inner frame after it.
#[derive(Debug, Clone)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// A view with no checks.
    pub const fn new_unchecked(buffer: T) -> VxlanPacket<T> {
        VxlanPacket { buffer }
    }
    /// A view of at least the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<VxlanPacket<T>> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self::new_unchecked(buffer))
    }
    /// Flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[0]
    }
    /// The 24-bit VNI field (meaningful only with the I flag).
    pub fn vni(&self) -> Vni {
        Vni(get_u32(self.buffer.as_ref(), 4) >> 8)
    }
    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// A parsed VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    /// The network identifier.
    pub vni: Vni,
}

impl VxlanRepr {
    /// Parses a header. The I flag must be set; the reserved bits are ignored on receipt,
    /// as RFC 7348 §5 requires.
    pub fn parse<T: AsRef<[u8]>>(p: &VxlanPacket<T>) -> Result<VxlanRepr> {
        if p.flags() & FLAG_I == 0 {
            return Err(WireError::Malformed);
        }
        Ok(VxlanRepr { vni: p.vni() })
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: flags `0x08`, reserved bits zero — the bytes the Linux kernel's
    /// vxlan device sends.
    pub fn emit(&self, buf: &mut [u8]) {
        put_u32(buf, 0, (FLAG_I as u32) << 24);
        put_u32(buf, 4, self.vni.0 << 8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The VXLAN header of RFC 7348 / a Linux capture for VNI 4097 (0x001001).
    const HEADER: [u8; 8] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x10, 0x01, 0x00];

    #[test]
    fn parse_emit() {
        let p = VxlanPacket::new_checked(&HEADER[..]).unwrap();
        let r = VxlanRepr::parse(&p).unwrap();
        assert_eq!(r.vni.get(), 4097);
        let mut b = [0xffu8; 8];
        r.emit(&mut b);
        assert_eq!(b, HEADER);
    }

    #[test]
    fn i_flag_required_reserved_ignored() {
        let mut b = HEADER;
        b[0] = 0;
        assert_eq!(
            VxlanRepr::parse(&VxlanPacket::new_checked(&b[..]).unwrap()).unwrap_err(),
            WireError::Malformed
        );
        let mut b = HEADER;
        b[1] = 0xff;
        b[7] = 0xff;
        assert_eq!(
            VxlanRepr::parse(&VxlanPacket::new_checked(&b[..]).unwrap())
                .unwrap()
                .vni
                .get(),
            4097
        );
    }

    #[test]
    fn vni_range() {
        assert!(Vni::new(Vni::MAX).is_some());
        assert!(Vni::new(1 << 24).is_none());
        assert!(Vni::try_from(u32::MAX).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(p) = VxlanPacket::new_checked(&data[..]) {
                let _ = (VxlanRepr::parse(&p), p.payload());
            }
        }

        #[test]
        fn roundtrip(v in 0u32..=Vni::MAX) {
            let r = VxlanRepr { vni: Vni::new(v).unwrap() };
            let mut b = [0u8; 8];
            r.emit(&mut b);
            prop_assert_eq!(VxlanRepr::parse(&VxlanPacket::new_checked(&b[..]).unwrap()).unwrap(), r);
        }
    }
}
