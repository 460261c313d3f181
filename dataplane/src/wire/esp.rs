//! ESP (RFC 4303) header and trailer, with the AES-GCM layout of RFC 4106.
//!
//! ```text
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |               Security Parameters Index (SPI)                 |
//! |                      Sequence Number                          |
//! |                 Explicit IV (8 bytes, RFC 4106 §3.1)          |
//! ~       Encrypted payload, padding, pad length, next header     ~
//! |               Integrity Check Value (8, 12 or 16 bytes)       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use super::{get_u32, put_u32, Result, WireError};
use core::fmt;

/// Length of the SPI and sequence number.
pub const HEADER_LEN: usize = 8;
/// Length of the explicit IV for AES-GCM (RFC 4106 §3.1).
pub const IV_LEN: usize = 8;
/// Length of the pad-length and next-header bytes.
pub const TRAILER_LEN: usize = 2;

/// A Security Parameters Index. Zero is reserved for local use and never sent
/// (RFC 4303 §2.1), so it is refused here. Values 1–255 are reserved by IANA but accepted,
/// since Docker's FNV-derived SPIs can produce them and the Linux kernel accepts them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spi(u32);

impl Spi {
    /// A SPI if `v` is not zero.
    pub const fn new(v: u32) -> Option<Spi> {
        if v == 0 {
            None
        } else {
            Some(Spi(v))
        }
    }
    /// The value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Spi({:#010x})", self.0)
    }
}

impl fmt::Display for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// A view of an ESP packet (from the SPI to the end of the ICV).
#[derive(Debug, Clone)]
pub struct EspPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EspPacket<T> {
    /// A view with no checks.
    pub const fn new_unchecked(buffer: T) -> EspPacket<T> {
        EspPacket { buffer }
    }

    /// A view of a buffer that holds at least the header. Use
    /// [`check_gcm_len`](Self::check_gcm_len) before splitting out IV and ICV.
    pub fn new_checked(buffer: T) -> Result<EspPacket<T>> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self::new_unchecked(buffer))
    }

    /// Ensures room for the IV, the 2-byte trailer and an `icv_len`-byte ICV, and that the
    /// encrypted part is a multiple of 4 bytes long (RFC 4303 §2.4).
    pub fn check_gcm_len(&self, icv_len: usize) -> Result<()> {
        let len = self.buffer.as_ref().len();
        let min = HEADER_LEN + IV_LEN + TRAILER_LEN + icv_len;
        if len < min {
            return Err(WireError::Truncated);
        }
        if (len - HEADER_LEN - IV_LEN - icv_len) % 4 != 0 {
            return Err(WireError::Malformed);
        }
        Ok(())
    }

    /// The SPI field as it is on the wire (possibly zero).
    pub fn raw_spi(&self) -> u32 {
        get_u32(self.buffer.as_ref(), 0)
    }
    /// The SPI, `Malformed` if zero.
    pub fn spi(&self) -> Result<Spi> {
        Spi::new(self.raw_spi()).ok_or(WireError::Malformed)
    }
    /// The 32-bit sequence number.
    pub fn seq(&self) -> u32 {
        get_u32(self.buffer.as_ref(), 4)
    }
}

/// Writes the SPI and sequence number into `buf[..8]`.
pub fn emit_header(buf: &mut [u8], spi: Spi, seq: u32) {
    put_u32(buf, 0, spi.0);
    put_u32(buf, 4, seq);
}

/// Number of padding bytes for a payload of `payload_len` bytes so that payload, padding
/// and the 2-byte trailer end on a 4-byte boundary (RFC 4303 §2.4; GCM has block size 1).
pub const fn pad_len(payload_len: usize) -> usize {
    (4 - (payload_len + TRAILER_LEN) % 4) % 4
}

/// Writes RFC 4303 §2.4's default padding (1, 2, 3, ...), the pad length and the next
/// header into `buf`, which must be exactly `pad + 2` bytes.
pub fn emit_trailer(buf: &mut [u8], next_header: u8) {
    let pad = buf.len() - TRAILER_LEN;
    for (i, b) in buf[..pad].iter_mut().enumerate() {
        *b = (i + 1) as u8;
    }
    buf[pad] = pad as u8;
    buf[pad + 1] = next_header;
}

/// Parses the trailer at the end of a decrypted payload: returns the payload length and
/// the next header. Checks that the pad length fits and that the padding is the default
/// monotonic sequence (RFC 4303 §2.4: the receiver may check it; we do).
pub fn parse_trailer(plaintext: &[u8]) -> Result<(usize, u8)> {
    let n = plaintext.len();
    if n < TRAILER_LEN {
        return Err(WireError::Truncated);
    }
    let pad = plaintext[n - 2] as usize;
    let next = plaintext[n - 1];
    if pad + TRAILER_LEN > n {
        return Err(WireError::Malformed);
    }
    let start = n - TRAILER_LEN - pad;
    for (i, b) in plaintext[start..n - TRAILER_LEN].iter().enumerate() {
        if *b as usize != i + 1 {
            return Err(WireError::Malformed);
        }
    }
    Ok((start, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header() {
        let mut b = [0u8; 8];
        emit_header(&mut b, Spi::new(0x1234_5678).unwrap(), 7);
        assert_eq!(b, [0x12, 0x34, 0x56, 0x78, 0, 0, 0, 7]);
        let p = EspPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.spi().unwrap().get(), 0x1234_5678);
        assert_eq!(p.seq(), 7);
        assert!(Spi::new(0).is_none());
        assert_eq!(p.check_gcm_len(8).unwrap_err(), WireError::Truncated);
    }

    #[test]
    fn trailer() {
        for len in 0..16 {
            let pad = pad_len(len);
            assert_eq!((len + pad + 2) % 4, 0);
            let mut b = vec![0xaa; len + pad + 2];
            emit_trailer(&mut b[len..], 17);
            assert_eq!(parse_trailer(&b).unwrap(), (len, 17));
        }
        assert_eq!(
            parse_trailer(&[1, 3, 17]).unwrap_err(),
            WireError::Malformed
        );
        assert_eq!(
            parse_trailer(&[9, 9, 1, 17]).unwrap_err(),
            WireError::Malformed
        ); // bad padding bytes? (1 pad byte must be 1)
        assert_eq!(parse_trailer(&[9, 1, 1, 17]).unwrap(), (1, 17));
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64), icv in prop_oneof![Just(8usize), Just(12), Just(16)]) {
            if let Ok(p) = EspPacket::new_checked(&data[..]) {
                let _ = (p.spi(), p.seq(), p.check_gcm_len(icv));
            }
            let _ = parse_trailer(&data);
        }
    }
}
