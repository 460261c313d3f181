//! ESP interoperability without a kernel ESP implementation to talk to (this machine's
//! kernel has `CONFIG_INET_ESP` off): our packets are checked against an independent
//! AES-GCM implementation (RustCrypto's `aes-gcm`) and the GCM specification's published
//! vectors, and packets built entirely by that independent code are accepted by our
//! pipeline.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce, Tag};
use swarmgate_aead::{AesGcm128, IcvLen};
use swarmgate_dataplane::wire::{EtherType, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr};
use swarmgate_dataplane::Next;
use swarmgate_tests::frames::*;
use swarmgate_tests::*;

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Docker's SA parameters, written out here from their definition (moby
/// `daemon/libnetwork/drivers/overlay/encryption.go`: `buildAeadAlgo`, `buildSPI`) rather
/// than calling ours: key = the datapath key itself, SPI = FNV-1a-32(src16 ‖ be32 tag ‖
/// dst16), salt = be32 SPI.
fn docker_sa(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    tag: u32,
    master: &[u8; 16],
) -> ([u8; 16], u32) {
    let (s, d) = (src.to_ipv6_mapped().octets(), dst.to_ipv6_mapped().octets());
    let mut h: u32 = 0x811c9dc5;
    for b in s.iter().chain(tag.to_be_bytes().iter()).chain(d.iter()) {
        h = (h ^ *b as u32).wrapping_mul(0x01000193);
    }
    (*master, h)
}

#[test]
fn gcm_spec_test_case_3_both_implementations() {
    let key = unhex("feffe9928665731c6d6a8f9467308308");
    let iv: [u8; 12] = unhex("cafebabefacedbaddecaf888").try_into().unwrap();
    let pt = unhex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
         1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
    );
    let ct = unhex(
        "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
         21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
    );
    let tag = unhex("4d5c2af327cd64a62cf35abd2ba6fab4");
    let ours = AesGcm128::new(&key.clone().try_into().unwrap(), IcvLen::Icv16).unwrap();
    let mut b = pt.clone();
    let mut t = [0u8; 16];
    ours.seal_in_place(&iv, &[], &mut b, &mut t).unwrap();
    assert_eq!((b.clone(), t.to_vec()), (ct.clone(), tag.clone()));
    let theirs = Aes128Gcm::new_from_slice(&key).unwrap();
    let mut b2 = pt.clone();
    let t2 = theirs
        .encrypt_in_place_detached(Nonce::from_slice(&iv), &[], &mut b2)
        .unwrap();
    assert_eq!((b2, t2.to_vec()), (ct, tag));
}

/// Our ESP packet, re-encrypted independently from its plaintext with the same nonce and
/// AAD, gives the same ciphertext, and its 8-byte ICV is the leading half of the full tag.
#[test]
fn our_esp_matches_an_independent_implementation() {
    let (k, _, _) = keys();
    let mut a = Node::new(1, &[k.clone()]);
    let mut b = Node::new(2, &[k.clone()]);
    for len in [42usize, 64, 100, 512, 1400] {
        let inner = udp_of_len(
            mac_of(secure_ep(1)),
            mac_of(secure_ep(2)),
            secure_ep(1),
            secure_ep(2),
            len,
        );
        let (_, wire) = a.run1(SECURE_PORT, &inner);
        let (n, _) = b.run1(UNDERLAY_PORT, &wire);
        assert_eq!(n, Next::Tx(SECURE_PORT));

        let esp = &wire[34..];
        let (spi, seq, iv) = (&esp[0..4], &esp[4..8], &esp[8..16]);
        let (sa_key, want_spi) = docker_sa(vtep(1), vtep(2), k.tag, &k.key);
        assert_eq!(u32::from_be_bytes(spi.try_into().unwrap()), want_spi);
        let icv = &esp[esp.len() - 8..];
        let ct = &esp[16..esp.len() - 8];
        // Plaintext = UDP | VXLAN | inner frame | padding | pad length | next header.
        let udp_len = 16 + inner.len();
        let pad = (4 - (udp_len + 2) % 4) % 4;
        assert_eq!(ct.len(), udp_len + pad + 2);
        let plaintext = {
            // Decrypting with the independent implementation gives the headers back.
            let c = Aes128Gcm::new_from_slice(&sa_key).unwrap();
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(spi);
            nonce[4..].copy_from_slice(iv);
            let mut aad = spi.to_vec();
            aad.extend_from_slice(seq);
            // Recover the plaintext: encrypting the ciphertext under CTR is its own inverse,
            // so seal(ct) yields pt (its tag is meaningless and ignored).
            let mut p = ct.to_vec();
            c.encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut p)
                .unwrap();
            // Now seal the recovered plaintext properly and compare everything.
            let mut again = p.clone();
            let full: Tag = c
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut again)
                .unwrap();
            assert_eq!(again, ct, "ciphertext");
            assert_eq!(&full[..8], icv, "ICV is the truncated GCM tag");
            p
        };
        assert_eq!(&plaintext[8..16], &[0x08, 0, 0, 0, 0, 0x10, 0x02, 0]);
        assert_eq!(&plaintext[16..16 + inner.len()], &inner[..]);
        let trailer = &plaintext[16 + inner.len()..];
        assert_eq!(trailer[pad], pad as u8);
        assert_eq!(trailer[pad + 1], 17);
        assert!(trailer[..pad]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == i as u8 + 1));
    }
}

/// A packet built only by independent code — headers by hand, AES-GCM by RustCrypto —
/// is accepted and delivered by our pipeline.
#[test]
fn independent_esp_is_accepted() {
    let (k, _, _) = keys();
    let mut b = Node::new(2, &[k.clone()]);
    let inner = udp(
        mac_of(secure_ep(1)),
        mac_of(secure_ep(2)),
        secure_ep(1),
        secure_ep(2),
        1111,
        2222,
        b"from elsewhere",
    );
    let (sa_key, spi) = docker_sa(vtep(1), vtep(2), k.tag, &k.key);
    let mut pt = Vec::new();
    pt.extend_from_slice(&55555u16.to_be_bytes());
    pt.extend_from_slice(&4789u16.to_be_bytes());
    pt.extend_from_slice(&((16 + inner.len()) as u16).to_be_bytes());
    pt.extend_from_slice(&[0, 0]);
    pt.extend_from_slice(&[0x08, 0, 0, 0, 0, 0x10, 0x02, 0]);
    pt.extend_from_slice(&inner);
    let pad = (4 - (pt.len() + 2) % 4) % 4;
    pt.extend((1..=pad).map(|i| i as u8));
    pt.extend_from_slice(&[pad as u8, 17]);
    let seq = 1u32;
    let iv = 0x0102_0304_0506_0708u64.to_be_bytes();
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&spi.to_be_bytes());
    nonce[4..].copy_from_slice(&iv);
    let mut aad = spi.to_be_bytes().to_vec();
    aad.extend_from_slice(&seq.to_be_bytes());
    let c = Aes128Gcm::new_from_slice(&sa_key).unwrap();
    let tag = c
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut pt)
        .unwrap();
    let esp_len = 16 + pt.len() + 8;
    let mut wire = vec![0u8; 34];
    EthernetRepr {
        src_addr: underlay_mac(1),
        dst_addr: underlay_mac(2),
        vlan_tci: None,
        ethertype: EtherType::IPV4,
    }
    .emit(&mut wire);
    Ipv4Repr {
        src_addr: vtep(1),
        dst_addr: vtep(2),
        protocol: IpProtocol::ESP,
        payload_len: esp_len,
        ttl: 64,
        dscp_ecn: 0,
        ident: 9,
        dont_frag: false,
    }
    .emit(&mut wire[14..]);
    wire.extend_from_slice(&aad);
    wire.extend_from_slice(&iv);
    wire.extend_from_slice(&pt);
    wire.extend_from_slice(&tag[..8]);
    assert!(Ipv4Packet::new_checked(&wire[14..])
        .unwrap()
        .verify_checksum());
    let (n, out) = b.run1(UNDERLAY_PORT, &wire);
    assert_eq!(n, Next::Tx(SECURE_PORT));
    assert_eq!(out, inner);
}
