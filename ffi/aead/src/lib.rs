//! AES-128-GCM sealed and opened in place, with the ICV lengths RFC 4106 allows
//! (8, 12 or 16 bytes), over AWS-LC's `EVP_AEAD` interface.
//!
//! Why this crate exists: swarmgate's hot-path cipher is AWS-LC, chosen by measurement
//! (BENCHMARKS.md: AWS-LC seals 1400-byte packets faster than ring and far faster than
//! RustCrypto's `aes-gcm` on the machines we measured). `aws-lc-rs` only exposes 16-byte
//! tags, but Docker's ESP security associations use `rfc4106(gcm(aes))` with a 64-bit ICV,
//! so the receive path must verify truncated tags — which AWS-LC itself supports through
//! the `tag_len` argument of `EVP_AEAD_CTX_init`. This is the only non-DPDK `unsafe` code in
//! the project; it sits under `ffi/` with the other foreign-function boundaries.
//!
//! The context is allocated by AWS-LC (`EVP_AEAD_CTX_new`), so its address never moves
//! after initialisation, and freed on drop. A context is immutable after creation; AWS-LC
//! documents `EVP_AEAD_CTX_seal`/`open` as safe to call concurrently on one context, so
//! [`AesGcm128`] is `Send + Sync` and one key can serve several worker cores.

use core::fmt;
use core::ptr::{self, NonNull};

use aws_lc_sys::{
    EVP_AEAD_CTX_free, EVP_AEAD_CTX_new, EVP_AEAD_CTX_open_gather, EVP_AEAD_CTX_seal_scatter,
    EVP_aead_aes_128_gcm, EVP_AEAD_CTX,
};

/// AES-128 key length in bytes.
pub const KEY_LEN: usize = 16;
/// GCM nonce length in bytes (RFC 4106 §4: 4-byte salt followed by the 8-byte explicit IV).
pub const NONCE_LEN: usize = 12;
/// Largest GCM tag in bytes.
pub const MAX_TAG_LEN: usize = 16;

/// Errors of this crate. Both are deliberately uninformative, as AEAD errors should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AeadError {
    /// The key, tag length or buffer sizes were not acceptable.
    InvalidArgument,
    /// Opening failed: the tag did not verify. The buffer contents are unspecified.
    AuthenticationFailed,
}

impl fmt::Display for AeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AeadError::InvalidArgument => f.write_str("invalid AEAD argument"),
            AeadError::AuthenticationFailed => f.write_str("AEAD authentication failed"),
        }
    }
}

impl std::error::Error for AeadError {}

/// Length of the integrity check value, as RFC 4106 §8.1 allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IcvLen {
    /// 8 bytes — what Docker's `rfc4106(gcm(aes))` SAs use (`ip xfrm` `aead ... 64`).
    Icv8 = 8,
    /// 12 bytes.
    Icv12 = 12,
    /// 16 bytes.
    Icv16 = 16,
}

impl IcvLen {
    /// Length in bytes.
    #[inline]
    pub const fn bytes(self) -> usize {
        self as usize
    }

    /// From a byte count, if RFC 4106 allows it.
    pub const fn from_bytes(n: usize) -> Option<IcvLen> {
        match n {
            8 => Some(IcvLen::Icv8),
            12 => Some(IcvLen::Icv12),
            16 => Some(IcvLen::Icv16),
            _ => None,
        }
    }
}

/// One AES-128-GCM key with a fixed tag length.
pub struct AesGcm128 {
    ctx: NonNull<EVP_AEAD_CTX>,
    icv: IcvLen,
}

// SAFETY: the EVP_AEAD_CTX is owned exclusively by this value, never mutated after
// `EVP_AEAD_CTX_new` returns, and AWS-LC's seal/open only read it (they take `*const`).
unsafe impl Send for AesGcm128 {}
// SAFETY: see above — concurrent seal/open calls only read the context.
unsafe impl Sync for AesGcm128 {}

impl AesGcm128 {
    /// A key for AES-128-GCM producing and checking `icv`-byte tags.
    pub fn new(key: &[u8; KEY_LEN], icv: IcvLen) -> Result<AesGcm128, AeadError> {
        // SAFETY: EVP_aead_aes_128_gcm returns a pointer to a static descriptor; `key` is a
        // valid 16-byte buffer; EVP_AEAD_CTX_new copies what it needs and returns either
        // null or a heap context we now own.
        let raw = unsafe {
            EVP_AEAD_CTX_new(EVP_aead_aes_128_gcm(), key.as_ptr(), key.len(), icv.bytes())
        };
        let ctx = NonNull::new(raw).ok_or(AeadError::InvalidArgument)?;
        Ok(AesGcm128 { ctx, icv })
    }

    /// The tag length this key produces and checks.
    #[inline]
    pub fn icv_len(&self) -> IcvLen {
        self.icv
    }

    /// Encrypts `in_out` in place and writes the tag to `tag`, which must be exactly
    /// [`icv_len`](Self::icv_len) bytes long. `aad` is authenticated, not encrypted.
    ///
    /// The caller must never use one `nonce` twice with this key: GCM's confidentiality and
    /// integrity both fail on nonce reuse.
    #[inline]
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), AeadError> {
        if tag.len() != self.icv.bytes() {
            return Err(AeadError::InvalidArgument);
        }
        let mut out_tag_len = 0usize;
        let data = in_out.as_mut_ptr();
        // SAFETY: `ctx` is a live context; `data` is valid for reads and writes of
        // `in_out.len()` bytes and EVP_AEAD_CTX_seal_scatter allows `out == in` exactly;
        // `tag` is valid for `tag.len()` bytes, which is the maximum it may write; `nonce`
        // and `aad` are valid for their lengths; no extra input is passed (null, 0).
        let ok = unsafe {
            EVP_AEAD_CTX_seal_scatter(
                self.ctx.as_ptr(),
                data,
                tag.as_mut_ptr(),
                &mut out_tag_len,
                tag.len(),
                nonce.as_ptr(),
                NONCE_LEN,
                data,
                in_out.len(),
                ptr::null(),
                0,
                aad.as_ptr(),
                aad.len(),
            )
        };
        if ok == 1 && out_tag_len == tag.len() {
            Ok(())
        } else {
            Err(AeadError::InvalidArgument)
        }
    }

    /// Verifies `tag` over `aad` and the ciphertext `in_out`, decrypting it in place.
    /// On failure the contents of `in_out` are unspecified and must be dropped.
    #[inline]
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8],
    ) -> Result<(), AeadError> {
        if tag.len() != self.icv.bytes() {
            return Err(AeadError::InvalidArgument);
        }
        let data = in_out.as_mut_ptr();
        // SAFETY: `ctx` is a live context; `data` is valid for reads and writes of
        // `in_out.len()` bytes and EVP_AEAD_CTX_open_gather allows `out == in` exactly;
        // `tag`, `nonce` and `aad` are valid for their lengths.
        let ok = unsafe {
            EVP_AEAD_CTX_open_gather(
                self.ctx.as_ptr(),
                data,
                nonce.as_ptr(),
                NONCE_LEN,
                data,
                in_out.len(),
                tag.as_ptr(),
                tag.len(),
                aad.as_ptr(),
                aad.len(),
            )
        };
        if ok == 1 {
            Ok(())
        } else {
            Err(AeadError::AuthenticationFailed)
        }
    }
}

impl Drop for AesGcm128 {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from EVP_AEAD_CTX_new, is owned by us and freed exactly once.
        unsafe { EVP_AEAD_CTX_free(self.ctx.as_ptr()) }
    }
}

impl fmt::Debug for AesGcm128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("AesGcm128")
            .field("icv", &self.icv)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The GCM specification (McGrew & Viega, "The Galois/Counter Mode of Operation",
    /// Appendix B), test case 4: AES-128, 60-byte plaintext, 20-byte AAD, 96-bit IV.
    #[test]
    fn gcm_spec_test_case_4() {
        let key: [u8; 16] = hex("feffe9928665731c6d6a8f9467308308").try_into().unwrap();
        let iv: [u8; 12] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
        let pt = hex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let ct = hex(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
        );
        let full_tag = hex("5bc94fbc3221a5db94fae95ae7121a47");

        for icv in [IcvLen::Icv8, IcvLen::Icv12, IcvLen::Icv16] {
            let k = AesGcm128::new(&key, icv).unwrap();
            let mut buf = pt.clone();
            let mut tag = vec![0u8; icv.bytes()];
            k.seal_in_place(&iv, &aad, &mut buf, &mut tag).unwrap();
            assert_eq!(buf, ct);
            // A truncated GCM tag is the leading bytes of the full tag (SP 800-38D §5.2.1.2).
            assert_eq!(tag[..], full_tag[..icv.bytes()]);
            k.open_in_place(&iv, &aad, &mut buf, &tag).unwrap();
            assert_eq!(buf, pt);
        }
    }

    /// GCM specification test case 2: zero key, zero IV, one zero block, no AAD.
    #[test]
    fn gcm_spec_test_case_2() {
        let k = AesGcm128::new(&[0u8; 16], IcvLen::Icv16).unwrap();
        let mut buf = [0u8; 16];
        let mut tag = [0u8; 16];
        k.seal_in_place(&[0u8; 12], &[], &mut buf, &mut tag)
            .unwrap();
        assert_eq!(buf.to_vec(), hex("0388dace60b6a392f328c2b971b2fe78"));
        assert_eq!(tag.to_vec(), hex("ab6e47d42cec13bdf53a67b21257bddf"));
    }

    #[test]
    fn tampering_is_detected() {
        let k = AesGcm128::new(&[7u8; 16], IcvLen::Icv8).unwrap();
        let nonce = [1u8; 12];
        let mut buf = *b"swarmgate overlay payload";
        let mut tag = [0u8; 8];
        k.seal_in_place(&nonce, b"spi+seq!", &mut buf, &mut tag)
            .unwrap();
        let sealed = buf;
        for i in 0..buf.len() {
            let mut b = sealed;
            b[i] ^= 0x01;
            assert_eq!(
                k.open_in_place(&nonce, b"spi+seq!", &mut b, &tag),
                Err(AeadError::AuthenticationFailed)
            );
        }
        let mut b = sealed;
        assert!(k.open_in_place(&nonce, b"spi+seq?", &mut b, &tag).is_err());
        let mut b = sealed;
        let mut bad = tag;
        bad[7] ^= 0x80;
        assert!(k.open_in_place(&nonce, b"spi+seq!", &mut b, &bad).is_err());
        let mut b = sealed;
        assert!(k
            .open_in_place(&nonce, b"spi+seq!", &mut b, &tag[..4])
            .is_err());
    }

    #[test]
    fn wrong_tag_buffer_is_rejected() {
        let k = AesGcm128::new(&[0u8; 16], IcvLen::Icv8).unwrap();
        let mut buf = [0u8; 4];
        let mut tag = [0u8; 16];
        assert_eq!(
            k.seal_in_place(&[0; 12], &[], &mut buf, &mut tag),
            Err(AeadError::InvalidArgument)
        );
    }
}

/// Fills `out` from AWS-LC's CSPRNG (`RAND_bytes`).
pub fn random_bytes(out: &mut [u8]) -> Result<(), AeadError> {
    // SAFETY: `out` is valid for writes of `out.len()` bytes.
    let ok = unsafe { aws_lc_sys::RAND_bytes(out.as_mut_ptr(), out.len()) };
    if ok == 1 {
        Ok(())
    } else {
        Err(AeadError::InvalidArgument)
    }
}
