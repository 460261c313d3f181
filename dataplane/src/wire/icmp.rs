//! ICMP echo request and reply (RFC 792).

use super::checksum;
use super::{get_u16, put_u16, Result, WireError};

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const IDENT: usize = 4;
    pub const SEQ: usize = 6;
}

/// Length of the echo header.
pub const HEADER_LEN: usize = 8;
/// Type of an echo request.
pub const TYPE_ECHO_REQUEST: u8 = 8;
/// Type of an echo reply.
pub const TYPE_ECHO_REPLY: u8 = 0;

/// A view of an ICMP message.
#[derive(Debug, Clone)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// A view with no checks.
    pub const fn new_unchecked(buffer: T) -> IcmpPacket<T> {
        IcmpPacket { buffer }
    }
    /// A view of at least the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<IcmpPacket<T>> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self::new_unchecked(buffer))
    }
    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    /// Message code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }
    /// Echo identifier.
    pub fn ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::IDENT)
    }
    /// Echo sequence number.
    pub fn seq(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SEQ)
    }
    /// Data after the header.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
    /// True when the checksum over the whole message verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// Sets the type and updates the checksum incrementally (RFC 1624).
    pub fn set_msg_type_update_checksum(&mut self, t: u8) {
        let b = self.buffer.as_mut();
        let old = get_u16(b, field::TYPE);
        b[field::TYPE] = t;
        let new = get_u16(b, field::TYPE);
        let c = checksum::update16(get_u16(b, field::CHECKSUM), old, new);
        put_u16(b, field::CHECKSUM, c);
    }
    /// Computes and stores the checksum.
    pub fn fill_checksum(&mut self) {
        put_u16(self.buffer.as_mut(), field::CHECKSUM, 0);
        let c = checksum::checksum(self.buffer.as_ref());
        put_u16(self.buffer.as_mut(), field::CHECKSUM, c);
    }
}

/// A parsed echo request or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpEchoRepr {
    /// True for a request (type 8), false for a reply (type 0).
    pub request: bool,
    /// Identifier.
    pub ident: u16,
    /// Sequence number.
    pub seq: u16,
    /// Length of the data after the header.
    pub data_len: usize,
}

impl IcmpEchoRepr {
    /// Parses an echo request or reply, verifying the checksum. Other ICMP messages are
    /// `Unsupported`.
    pub fn parse<T: AsRef<[u8]>>(p: &IcmpPacket<T>) -> Result<IcmpEchoRepr> {
        let request = match (p.msg_type(), p.code()) {
            (TYPE_ECHO_REQUEST, 0) => true,
            (TYPE_ECHO_REPLY, 0) => false,
            _ => return Err(WireError::Unsupported),
        };
        if !p.verify_checksum() {
            return Err(WireError::Checksum);
        }
        Ok(IcmpEchoRepr {
            request,
            ident: p.ident(),
            seq: p.seq(),
            data_len: p.data().len(),
        })
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.data_len
    }

    /// Writes the header over `buf[..buffer_len()]`, whose data part the caller has filled,
    /// and computes the checksum.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..HEADER_LEN + self.data_len];
        b[field::TYPE] = if self.request {
            TYPE_ECHO_REQUEST
        } else {
            TYPE_ECHO_REPLY
        };
        b[field::CODE] = 0;
        put_u16(b, field::IDENT, self.ident);
        put_u16(b, field::SEQ, self.seq);
        IcmpPacket::new_unchecked(b).fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // "ping -c1 -p 61" style echo request: id 0x1234 seq 1, 4 data bytes.
    const REQUEST: [u8; 12] = [
        0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x00, 0x01, 0x61, 0x61, 0x61, 0x61,
    ];

    #[test]
    fn request_then_reply() {
        let mut b = REQUEST;
        IcmpPacket::new_unchecked(&mut b[..]).fill_checksum();
        let r = IcmpEchoRepr::parse(&IcmpPacket::new_checked(&b[..]).unwrap()).unwrap();
        assert!(r.request);
        assert_eq!((r.ident, r.seq, r.data_len), (0x1234, 1, 4));
        let mut p = IcmpPacket::new_unchecked(&mut b[..]);
        p.set_msg_type_update_checksum(TYPE_ECHO_REPLY);
        let p = IcmpPacket::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert!(!IcmpEchoRepr::parse(&p).unwrap().request);
        b[9] ^= 0xff;
        assert_eq!(
            IcmpEchoRepr::parse(&IcmpPacket::new_checked(&b[..]).unwrap()).unwrap_err(),
            WireError::Checksum
        );
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = IcmpPacket::new_checked(&data[..]) {
                let _ = (IcmpEchoRepr::parse(&p), p.data());
            }
        }

        #[test]
        fn roundtrip(req in any::<bool>(), id in any::<u16>(), seq in any::<u16>(), data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let r = IcmpEchoRepr { request: req, ident: id, seq, data_len: data.len() };
            let mut b = vec![0u8; r.buffer_len()];
            b[8..].copy_from_slice(&data);
            r.emit(&mut b);
            prop_assert_eq!(IcmpEchoRepr::parse(&IcmpPacket::new_checked(&b[..]).unwrap()).unwrap(), r);
        }
    }
}
