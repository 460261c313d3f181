//! Stable hashes for flows and Maglev.
//!
//! These are specified here, not taken from `std`, because every node must compute the
//! same value: a Maglev table built on two gateways must send the same flow to the same
//! backend, whatever Rust version built them.

/// MurmurHash3's 64-bit finaliser: a fast, well-mixing bijection.
#[inline]
pub const fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Hash of an IPv4 5-tuple.
#[inline]
pub const fn flow_hash_v4(src: u32, dst: u32, protocol: u8, src_port: u16, dst_port: u16) -> u64 {
    let a = ((src as u64) << 32) | dst as u64;
    let b = ((protocol as u64) << 32) | ((src_port as u64) << 16) | dst_port as u64;
    fmix64(a ^ fmix64(b ^ 0x9e37_79b9_7f4a_7c15))
}

/// FNV-1a 64 over `data` from a seeded basis, finished with [`fmix64`].
pub fn stable_hash(data: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ fmix64(seed);
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

/// FNV-1a 32 (used by Docker's SPI derivation).
pub fn fnv1a32(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in *p {
            h ^= *b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_reference() {
        // Reference values of the FNV test suite (isthe.com/chongo/tech/comp/fnv).
        assert_eq!(fnv1a32(&[b""]), 0x811c9dc5);
        assert_eq!(fnv1a32(&[b"a"]), 0xe40c292c);
        assert_eq!(fnv1a32(&[b"foo"]), 0xa9f37ed7);
        assert_eq!(fnv1a32(&[b"fo", b"o"]), 0xa9f37ed7);
    }

    #[test]
    fn stable_values() {
        // Pinned so a change of the function (which would reshuffle every Maglev table in
        // a mixed-version cluster) cannot go unnoticed.
        assert_eq!(fmix64(1), 0xb456_bcfc_34c2_cb2c);
        assert_ne!(stable_hash(b"10.0.0.2", 0), stable_hash(b"10.0.0.2", 1));
        assert_eq!(stable_hash(b"x", 7), stable_hash(b"x", 7));
    }
}
