//! ESP (RFC 4303) transport mode with AES-128-GCM (RFC 4106) for encrypted overlays.
//!
//! What is protected is the outer UDP/VXLAN datagram, exactly as the Linux kernel does for
//! Docker's `--opt encrypted` networks: `IPv4 | ESP | IV | {UDP | VXLAN | inner frame |
//! padding | pad length | next header = 17} | ICV`.
//!
//! Security associations follow Docker's scheme (libnetwork `drivers/overlay/encryption.go`):
//! * the cluster hands out up to three datapath keys, each with a tag (its Lamport time);
//!   the first is the primary;
//! * per pair of nodes and key, the SPI is FNV-1a-32 over `src ‖ be32(tag) ‖ dst` and the SA
//!   key is HMAC-SHA256(master key, `src ‖ dst ‖ be32(tag)`) cut to 16 bytes, with addresses
//!   in Go's 16-byte `net.ParseIP` form; the 4-byte GCM salt is the big-endian SPI;
//! * every key has an inbound SA (all accepted on receive), only the primary an outbound
//!   one. A rotation installs the new inbound SA before the primary switches, so no packet
//!   is lost ([`SaDatabase::set_peer_keys`]).
//!
//! Unlike Docker's SAs, inbound SAs here have an anti-replay window ([`ReplayWindow`]).
//!
//! GCM nonces must never repeat under one key. The explicit IV is `iv_base + seq`, where
//! `seq` is the SA's strictly increasing 32-bit sequence number (shared by all workers
//! through one atomic counter) and `iv_base` is random per SA object, so two SA objects
//! created for the same key (after a restart, say) do not collide either. When `seq`
//! would wrap, the SA refuses to send ([`DropReason::SeqExhausted`]) until it is rekeyed.

pub mod replay;

use core::net::Ipv4Addr;
use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use rustc_hash::FxHashMap;
use sha2::Sha256;
use swarmgate_aead::{AeadError, AesGcm128, IcvLen, NONCE_LEN};

use crate::buf::PacketBuf;
use crate::counters::DropReason;
use crate::hash::fnv1a32;
use crate::wire::esp::{self as esp_wire, EspPacket, Spi, HEADER_LEN, IV_LEN};

pub use replay::{ReplayError, ReplayWindow};

/// Bytes ESP adds in front of the protected datagram: SPI, sequence number and IV.
pub const ESP_PREFIX_LEN: usize = HEADER_LEN + IV_LEN;

/// Docker's MTU overhead for encrypted networks: SPI 4 + seq 4 + IV 8 + pad length 1 +
/// next header 1 + ICV 8 (`pktExpansion` in encryption.go).
pub const DOCKER_ESP_OVERHEAD: u16 = 26;

/// A datagram-path master key as the managers distribute it.
#[derive(Clone, PartialEq, Eq)]
pub struct DatapathKey {
    /// 16 bytes of key material.
    pub key: [u8; 16],
    /// The key's tag (Lamport time); part of the SPI and SA-key derivation.
    pub tag: u32,
}

impl core::fmt::Debug for DatapathKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DatapathKey")
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

/// An IPv4 address as Go's `net.ParseIP` holds it: 16 bytes, IPv4-mapped.
fn go_ip16(a: Ipv4Addr) -> [u8; 16] {
    a.to_ipv6_mapped().octets()
}

/// Docker's SPI for traffic from `src` to `dst` under key tag `tag` (`buildSPI`).
pub fn docker_spi(src: Ipv4Addr, dst: Ipv4Addr, tag: u32) -> u32 {
    fnv1a32(&[&go_ip16(src), &tag.to_be_bytes(), &go_ip16(dst)])
}

/// Docker's per-pair SA key (`buildKey`): HMAC-SHA256(master, src ‖ dst ‖ be32(tag)),
/// truncated to the master key's length.
pub fn docker_sa_key(src: Ipv4Addr, dst: Ipv4Addr, tag: u32, master: &[u8; 16]) -> [u8; 16] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(master).expect("HMAC takes any key length");
    m.update(&go_ip16(src));
    m.update(&go_ip16(dst));
    m.update(&tag.to_be_bytes());
    let out = m.finalize().into_bytes();
    out[..16].try_into().expect("SHA-256 output is 32 bytes")
}

/// An outbound SA.
#[derive(Debug)]
pub struct TxSa {
    /// SPI written into each packet.
    pub spi: Spi,
    /// Our VTEP address.
    pub src: Ipv4Addr,
    /// The peer's VTEP address.
    pub dst: Ipv4Addr,
    /// Tag of the key this SA was derived from.
    pub tag: u32,
    key: [u8; 16],
    cipher: AesGcm128,
    salt: [u8; 4],
    iv_base: u64,
    seq: AtomicU64,
}

impl TxSa {
    /// A fresh outbound SA (sequence numbers start at 1).
    pub fn new(
        spi: Spi,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        tag: u32,
        key: [u8; 16],
        icv: IcvLen,
    ) -> Result<TxSa, AeadError> {
        let mut r = [0u8; 8];
        swarmgate_aead::random_bytes(&mut r)?;
        Ok(TxSa {
            spi,
            src,
            dst,
            tag,
            key,
            cipher: AesGcm128::new(&key, icv)?,
            salt: spi.get().to_be_bytes(),
            iv_base: u64::from_be_bytes(r),
            seq: AtomicU64::new(0),
        })
    }

    /// Sequence numbers used so far.
    pub fn packets_sent(&self) -> u64 {
        self.seq.load(Ordering::Relaxed).min(u32::MAX as u64)
    }

    /// Reserves the next sequence number, or `None` once the 32-bit space is used up.
    #[inline]
    fn next_seq(&self) -> Option<u32> {
        let s = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        u32::try_from(s).ok()
    }

    /// ICV length of this SA.
    pub fn icv_len(&self) -> usize {
        self.cipher.icv_len().bytes()
    }
}

/// An inbound SA.
#[derive(Debug)]
pub struct RxSa {
    /// SPI this SA answers to.
    pub spi: Spi,
    /// The peer's VTEP address (outer source).
    pub src: Ipv4Addr,
    /// Our VTEP address (outer destination).
    pub dst: Ipv4Addr,
    /// Tag of the key this SA was derived from.
    pub tag: u32,
    key: [u8; 16],
    cipher: AesGcm128,
    salt: [u8; 4],
}

impl RxSa {
    /// An inbound SA.
    pub fn new(
        spi: Spi,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        tag: u32,
        key: [u8; 16],
        icv: IcvLen,
    ) -> Result<RxSa, AeadError> {
        Ok(RxSa {
            spi,
            src,
            dst,
            tag,
            key,
            cipher: AesGcm128::new(&key, icv)?,
            salt: spi.get().to_be_bytes(),
        })
    }

    /// ICV length of this SA.
    pub fn icv_len(&self) -> usize {
        self.cipher.icv_len().bytes()
    }
}

/// Wraps the datagram in `buf` (which starts at its UDP header) in ESP, in place: prepends
/// SPI, sequence number and IV, appends padding, trailer and ICV, and encrypts.
/// Needs [`ESP_PREFIX_LEN`] bytes of headroom and up to `5 + ICV` bytes of tailroom.
#[inline]
pub fn seal<B: PacketBuf>(buf: &mut B, sa: &TxSa, next_header: u8) -> Result<(), DropReason> {
    let icv = sa.icv_len();
    let payload_len = buf.len();
    let pad = esp_wire::pad_len(payload_len);
    if buf.headroom() < ESP_PREFIX_LEN || buf.tailroom() < pad + esp_wire::TRAILER_LEN + icv {
        return Err(DropReason::NoBufferRoom);
    }
    let seq = sa.next_seq().ok_or(DropReason::SeqExhausted)?;
    let tail = buf
        .append(pad + esp_wire::TRAILER_LEN + icv)
        .ok_or(DropReason::NoBufferRoom)?;
    esp_wire::emit_trailer(&mut tail[..pad + esp_wire::TRAILER_LEN], next_header);
    let data = buf
        .prepend(ESP_PREFIX_LEN)
        .ok_or(DropReason::NoBufferRoom)?;
    let iv = sa.iv_base.wrapping_add(seq as u64).to_be_bytes();
    esp_wire::emit_header(&mut data[..HEADER_LEN], sa.spi, seq);
    data[HEADER_LEN..ESP_PREFIX_LEN].copy_from_slice(&iv);
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..4].copy_from_slice(&sa.salt);
    nonce[4..].copy_from_slice(&iv);
    let (prefix, rest) = data.split_at_mut(ESP_PREFIX_LEN);
    let ct_len = rest.len() - icv;
    let (ct, tag) = rest.split_at_mut(ct_len);
    sa.cipher
        .seal_in_place(&nonce, &prefix[..HEADER_LEN], ct, tag)
        .map_err(|_| DropReason::NoBufferRoom)
}

/// Verifies and decrypts the ESP packet in `buf` (which starts at the ESP header) in place,
/// checking and then updating `window`; on success `buf` holds the protected datagram and
/// the next-header value is returned. Only authenticated packets move the window.
#[inline]
pub fn open<B: PacketBuf>(
    buf: &mut B,
    sa: &RxSa,
    window: &mut ReplayWindow,
) -> Result<u8, DropReason> {
    let icv = sa.icv_len();
    let p = EspPacket::new_checked(buf.data())?;
    p.check_gcm_len(icv)?;
    let seq = p.seq() as u64;
    window.check(seq).map_err(|_| DropReason::Replayed)?;
    let data = buf.data_mut();
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..4].copy_from_slice(&sa.salt);
    nonce[4..].copy_from_slice(&data[HEADER_LEN..ESP_PREFIX_LEN]);
    let (prefix, rest) = data.split_at_mut(ESP_PREFIX_LEN);
    let ct_len = rest.len() - icv;
    let (ct, tag) = rest.split_at_mut(ct_len);
    sa.cipher
        .open_in_place(&nonce, &prefix[..HEADER_LEN], ct, tag)
        .map_err(|_| DropReason::AuthFailed)?;
    window.update(seq).map_err(|_| DropReason::Replayed)?;
    let (payload_len, next) = esp_wire::parse_trailer(ct).map_err(|_| DropReason::BadEspTrailer)?;
    let trailer = ct_len - payload_len + icv;
    if !(buf.adj(ESP_PREFIX_LEN) && buf.trim(trailer)) {
        return Err(DropReason::Truncated);
    }
    Ok(next)
}

/// The SAs of this node, kept by the control side across table snapshots so that an
/// outbound SA — and with it its sequence counter — survives every republish for as long
/// as its key does.
#[derive(Debug, Default)]
pub struct SaDatabase {
    icv: Option<IcvLen>,
    peers: FxHashMap<Ipv4Addr, PeerSas>,
}

#[derive(Debug, Default, Clone)]
struct PeerSas {
    tx: Option<Arc<TxSa>>,
    rx: Vec<Arc<RxSa>>,
}

impl SaDatabase {
    /// An empty database whose SAs use `icv`-byte ICVs (Docker: 8).
    pub fn new(icv: IcvLen) -> SaDatabase {
        SaDatabase {
            icv: Some(icv),
            peers: FxHashMap::default(),
        }
    }

    /// Installs the SAs between `local` and `remote` for `keys`, primary first (at most
    /// three are used, as Docker keeps). Existing SAs whose key is unchanged are kept as
    /// they are, so their sequence numbers continue; an inbound SA for every key is in
    /// place in the same snapshot in which the primary's outbound SA switches, and a
    /// removed key's inbound SA goes only when the key leaves the list.
    pub fn set_peer_keys(
        &mut self,
        local: Ipv4Addr,
        remote: Ipv4Addr,
        keys: &[DatapathKey],
    ) -> Result<(), AeadError> {
        let icv = self.icv.unwrap_or(IcvLen::Icv8);
        let keys = &keys[..keys.len().min(3)];
        let old = self.peers.get(&remote).cloned().unwrap_or_default();
        let mut next = PeerSas::default();
        for (i, k) in keys.iter().enumerate() {
            let in_spi =
                Spi::new(docker_spi(remote, local, k.tag)).ok_or(AeadError::InvalidArgument)?;
            let in_key = docker_sa_key(remote, local, k.tag, &k.key);
            let rx =
                match old.rx.iter().find(|s| {
                    s.spi == in_spi && s.key == in_key && s.src == remote && s.dst == local
                }) {
                    Some(s) => s.clone(),
                    None => Arc::new(RxSa::new(in_spi, remote, local, k.tag, in_key, icv)?),
                };
            next.rx.push(rx);
            if i == 0 {
                let out_spi =
                    Spi::new(docker_spi(local, remote, k.tag)).ok_or(AeadError::InvalidArgument)?;
                let out_key = docker_sa_key(local, remote, k.tag, &k.key);
                let tx = match &old.tx {
                    Some(s) if s.spi == out_spi && s.key == out_key && s.src == local => s.clone(),
                    _ => Arc::new(TxSa::new(out_spi, local, remote, k.tag, out_key, icv)?),
                };
                next.tx = Some(tx);
            }
        }
        if keys.is_empty() {
            self.peers.remove(&remote);
        } else {
            self.peers.insert(remote, next);
        }
        Ok(())
    }

    /// Forgets every SA with `remote`.
    pub fn remove_peer(&mut self, remote: Ipv4Addr) {
        self.peers.remove(&remote);
    }

    /// The lookup tables a snapshot carries.
    pub fn tables(&self) -> EspTables {
        let mut t = EspTables::default();
        for (peer, sas) in &self.peers {
            if let Some(tx) = &sas.tx {
                t.tx.insert(*peer, tx.clone());
            }
            for rx in &sas.rx {
                t.rx.insert(rx.spi, rx.clone());
            }
        }
        t
    }
}

/// SA lookup tables inside a table snapshot.
#[derive(Debug, Default, Clone)]
pub struct EspTables {
    /// Outbound SA by remote VTEP address.
    pub tx: FxHashMap<Ipv4Addr, Arc<TxSa>>,
    /// Inbound SA by SPI.
    pub rx: FxHashMap<Spi, Arc<RxSa>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::HeapBuf;

    const A: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 1);
    const B: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 2);

    fn key(tag: u32, b: u8) -> DatapathKey {
        DatapathKey { key: [b; 16], tag }
    }

    #[test]
    fn docker_spi_is_fnv_over_go_ip_forms() {
        // Computed independently: FNV-1a-32 of 00*10 ff ff c0 a8 0a 01 | 00 00 00 05 | 00*10 ff ff c0 a8 0a 02.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend_from_slice(&[0xff, 0xff, 192, 168, 10, 1]);
        bytes.extend_from_slice(&5u32.to_be_bytes());
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend_from_slice(&[0xff, 0xff, 192, 168, 10, 2]);
        let mut h: u32 = 0x811c9dc5;
        for b in bytes {
            h = (h ^ b as u32).wrapping_mul(16777619);
        }
        assert_eq!(docker_spi(A, B, 5), h);
        assert_ne!(docker_spi(A, B, 5), docker_spi(B, A, 5));
        assert_ne!(docker_spi(A, B, 5), docker_spi(A, B, 6));
    }

    #[test]
    fn sa_keys_differ_per_direction_and_tag() {
        let m = [7u8; 16];
        assert_ne!(docker_sa_key(A, B, 1, &m), docker_sa_key(B, A, 1, &m));
        assert_ne!(docker_sa_key(A, B, 1, &m), docker_sa_key(A, B, 2, &m));
    }

    fn pair(
        keys_a: &[DatapathKey],
        keys_b: &[DatapathKey],
        da: &mut SaDatabase,
        db: &mut SaDatabase,
    ) -> (EspTables, EspTables) {
        da.set_peer_keys(A, B, keys_a).unwrap();
        db.set_peer_keys(B, A, keys_b).unwrap();
        (da.tables(), db.tables())
    }

    fn roundtrip(
        ta: &EspTables,
        tb: &EspTables,
        w: &mut FxHashMap<Spi, ReplayWindow>,
        payload: &[u8],
    ) -> Result<Vec<u8>, DropReason> {
        let tx = ta.tx.get(&B).unwrap();
        let mut buf = HeapBuf::from_frame(payload, 64);
        seal(&mut buf, tx, 17)?;
        let spi = EspPacket::new_checked(buf.data()).unwrap().spi().unwrap();
        let rx = tb.rx.get(&spi).ok_or(DropReason::UnknownSpi)?;
        let next = open(&mut buf, rx, w.entry(spi).or_default())?;
        assert_eq!(next, 17);
        Ok(buf.data().to_vec())
    }

    #[test]
    fn seal_open_and_replay() {
        let (mut da, mut db) = (SaDatabase::new(IcvLen::Icv8), SaDatabase::new(IcvLen::Icv8));
        let (ta, tb) = pair(&[key(1, 1)], &[key(1, 1)], &mut da, &mut db);
        let mut w = FxHashMap::default();
        for len in [0usize, 1, 2, 3, 4, 63, 1400] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(roundtrip(&ta, &tb, &mut w, &payload).unwrap(), payload);
        }
        // Replay the same packet: refused.
        let tx = ta.tx.get(&B).unwrap();
        let mut buf = HeapBuf::from_frame(b"once only", 64);
        seal(&mut buf, tx, 17).unwrap();
        let copy = buf.clone();
        let spi = tx.spi;
        let rx = tb.rx.get(&spi).unwrap();
        open(&mut buf, rx, w.get_mut(&spi).unwrap()).unwrap();
        let mut again = copy.clone();
        assert_eq!(
            open(&mut again, rx, w.get_mut(&spi).unwrap()),
            Err(DropReason::Replayed)
        );
        // A tampered packet fails authentication and does not move the window.
        let mut bad = HeapBuf::from_frame(b"tamper", 64);
        seal(&mut bad, tx, 17).unwrap();
        bad.data_mut()[20] ^= 1;
        let top = w[&spi].top();
        assert_eq!(
            open(&mut bad, rx, w.get_mut(&spi).unwrap()),
            Err(DropReason::AuthFailed)
        );
        assert_eq!(w[&spi].top(), top);
    }

    #[test]
    fn rotation_loses_nothing_and_keeps_sequence() {
        let (mut da, mut db) = (SaDatabase::new(IcvLen::Icv8), SaDatabase::new(IcvLen::Icv8));
        let k1 = key(1, 1);
        let k2 = key(2, 2);
        let k3 = key(3, 3);
        let k4 = key(4, 4);
        let (ta, tb) = pair(&[k1.clone()], &[k1.clone()], &mut da, &mut db);
        let mut w = FxHashMap::default();
        roundtrip(&ta, &tb, &mut w, b"before").unwrap();
        let sent_before = ta.tx[&B].packets_sent();

        // Step 1: everybody learns the new key k2 as a secondary. A still sends with k1.
        let (ta1, tb1) = pair(
            &[k1.clone(), k2.clone()],
            &[k1.clone(), k2.clone()],
            &mut da,
            &mut db,
        );
        assert!(
            Arc::ptr_eq(&ta.tx[&B], &ta1.tx[&B]),
            "unchanged primary keeps its SA object"
        );
        roundtrip(&ta1, &tb1, &mut w, b"k1 still primary").unwrap();
        assert_eq!(ta1.tx[&B].packets_sent(), sent_before + 1);

        // Step 2: A switches its primary to k2 before B does; B accepts k2 already, and
        // B's packets under k1 are still accepted by A.
        da.set_peer_keys(A, B, &[k2.clone(), k1.clone(), k3.clone()])
            .unwrap();
        let ta2 = da.tables();
        assert_eq!(ta2.tx[&B].tag, 2);
        roundtrip(&ta2, &tb1, &mut w, b"a on k2").unwrap();
        roundtrip(
            &tb1_as_sender(&tb1),
            &ta2_as_receiver(&ta2),
            &mut w,
            b"b on k1",
        )
        .unwrap();

        // Step 3: k1 pruned everywhere.
        let (ta3, tb3) = pair(
            &[k2.clone(), k3.clone(), k4.clone()],
            &[k2.clone(), k3.clone()],
            &mut da,
            &mut db,
        );
        assert_eq!(ta3.rx.len(), 3);
        assert!(ta3.rx.values().all(|s| s.tag != 1));
        roundtrip(&ta3, &tb3, &mut w, b"after").unwrap();
    }

    // Views of B's tables with the roles swapped, for sending B -> A.
    fn tb1_as_sender(tb: &EspTables) -> EspTables {
        let mut t = EspTables::default();
        t.tx.insert(B, tb.tx[&A].clone());
        t
    }
    fn ta2_as_receiver(ta: &EspTables) -> EspTables {
        ta.clone()
    }

    #[test]
    fn sequence_exhaustion_refuses_to_send() {
        let sa = TxSa::new(Spi::new(9).unwrap(), A, B, 1, [1; 16], IcvLen::Icv8).unwrap();
        sa.seq.store(u32::MAX as u64 - 1, Ordering::Relaxed);
        let mut buf = HeapBuf::from_frame(b"x", 64);
        seal(&mut buf, &sa, 17).unwrap();
        let mut buf = HeapBuf::from_frame(b"x", 64);
        assert_eq!(seal(&mut buf, &sa, 17), Err(DropReason::SeqExhausted));
    }

    #[test]
    fn short_or_misaligned_esp_is_refused() {
        let sa = RxSa::new(Spi::new(9).unwrap(), B, A, 1, [1; 16], IcvLen::Icv8).unwrap();
        let mut w = ReplayWindow::default();
        let mut buf = HeapBuf::from_frame(&[0, 0, 0, 9, 0, 0, 0, 1, 1, 2, 3], 0);
        assert_eq!(open(&mut buf, &sa, &mut w), Err(DropReason::Truncated));
        let mut buf = HeapBuf::from_frame(&[0u8; 8 + 8 + 3 + 8], 0);
        buf.data_mut()[3] = 9;
        buf.data_mut()[7] = 1;
        assert_eq!(open(&mut buf, &sa, &mut w), Err(DropReason::Malformed));
    }
}
