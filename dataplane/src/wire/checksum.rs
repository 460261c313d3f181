//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// Ones'-complement sum of `data` as big-endian 16-bit words, not yet folded or inverted.
/// An odd trailing byte is padded with zero (RFC 1071 §4.1).
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Adding 32-bit big-endian halves into a 64-bit accumulator defers the carries; the
        // fold below brings them back (RFC 1071 §2(B), "deferred carries").
        acc += u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64;
        acc += u32::from_be_bytes([c[4], c[5], c[6], c[7]]) as u64;
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        acc += u16::from_be_bytes([rest[0], rest[1]]) as u64;
        rest = &rest[2..];
    }
    if let [b] = rest {
        acc += (*b as u64) << 8;
    }
    acc
}

/// Folds a deferred-carry sum to 16 bits.
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for `data` (with its checksum field zeroed).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// True when `data`, checksum field included, sums to all ones.
#[inline]
pub fn verify(data: &[u8]) -> bool {
    fold(sum(data)) == 0xffff
}

/// Sum of the IPv4 pseudo-header used by UDP and TCP (RFC 768).
#[inline]
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], protocol: u8, length: u16) -> u64 {
    sum(&src) + sum(&dst) + protocol as u64 + length as u64
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word of the covered data changes
/// from `old` to `new`: `HC' = ~(~HC + ~m + m')`.
#[inline]
pub fn update16(hc: u16, old: u16, new: u16) -> u16 {
    let acc = (!hc) as u64 + (!old) as u64 + new as u64;
    !fold(acc)
}

/// [`update16`] for a 32-bit field (an IPv4 address), as two 16-bit words.
#[inline]
pub fn update32(hc: u16, old: u32, new: u32) -> u16 {
    let acc = (!hc) as u64
        + (!(old >> 16) as u16) as u64
        + (!(old as u16)) as u64
        + (new >> 16) as u64
        + (new & 0xffff) as u64;
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 numerical example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length() {
        assert_eq!(fold(sum(&[0xab])), 0xab00);
        assert_eq!(fold(sum(&[0x01, 0x02, 0x03])), 0x0402);
    }

    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for w in data.chunks(2) {
            let v = if w.len() == 2 {
                u16::from_be_bytes([w[0], w[1]])
            } else {
                (w[0] as u16) << 8
            };
            acc += v as u32;
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    proptest! {
        #[test]
        fn matches_reference(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            prop_assert_eq!(checksum(&data), reference(&data));
        }

        #[test]
        fn incremental_equals_full(mut data in proptest::collection::vec(any::<u8>(), 8..200),
                                   at in 0usize..50, new16 in any::<u16>(), new32 in any::<u32>()) {
            let at = (at * 2) % (data.len() - 4);
            let at = at & !1;
            let hc = checksum(&data);
            let old16 = u16::from_be_bytes([data[at], data[at + 1]]);
            data[at..at + 2].copy_from_slice(&new16.to_be_bytes());
            let hc1 = update16(hc, old16, new16);
            prop_assert!(verify_with(&data, hc1));
            let old32 = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
            data[at..at + 4].copy_from_slice(&new32.to_be_bytes());
            let hc2 = update32(hc1, old32, new32);
            prop_assert!(verify_with(&data, hc2));
        }
    }

    fn verify_with(data: &[u8], hc: u16) -> bool {
        // The incremental result may be the other representation of zero (0x0000 vs
        // 0xffff, RFC 1624 §3); both verify.
        fold(sum(data) + hc as u64) == 0xffff
    }
}
