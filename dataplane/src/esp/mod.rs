//! ESP (RFC 4303) transport mode with AES-128-GCM (RFC 4106) for encrypted overlays.
//!
//! What is protected is the outer UDP/VXLAN datagram, exactly as the Linux kernel does for
//! Docker's `--opt encrypted` networks: `IPv4 | ESP | IV | {UDP | VXLAN | inner frame |
//! padding | pad length | next header = 17} | ICV`.
//!
//! # Security associations: Docker's, bit for bit
//! Reference: moby/moby `daemon/libnetwork/drivers/overlay/encryption.go` — `setupEncryption`
//! (one SA pair per remote node and key), `programSA` (forward SA `local → remote`, reverse
//! SA `remote → local`), `buildSPI` and `buildAeadAlgo`:
//! * the managers hand out up to three 16-byte datapath keys, each with a tag (its Lamport
//!   time); the first is the primary;
//! * SPI = FNV-1a-32 over `src ‖ be32(tag) ‖ dst`, the addresses in their 16-byte form
//!   (`netip.Addr.As16`, IPv4-mapped) — [`docker_spi`];
//! * every SA, forward and reverse, for every peer, is `rfc4106(gcm(aes))` keyed with the
//!   datapath key **itself** (`k.value`, no derivation) followed by a 4-byte salt = the
//!   big-endian SPI; ICV 64 bits; explicit 8-byte IV;
//! * every key has an inbound SA (all accepted on receive), only the primary an outbound
//!   one. A rotation installs the new inbound SA before the primary switches, so no packet
//!   is lost ([`SaDatabase::set_peer_keys`]).
//!
//! # What swarmgate adds, wire-compatibly
//! The IV is the sender's to choose (RFC 4106 §3.1); a receiver only needs it unique per key
//! and salt. swarmgate's is `be32(epoch) ‖ be32(seq)` with epochs from the node's
//! [`EpochSource`] — strictly increasing across SA objects, sequence-number generations and
//! restarts — so no nonce can repeat under a key (see [`epoch`]). Docker's kernel ignores
//! the IV's structure.
//!
//! * **No SA runs out.** After `seq_limit` packets (2^32 − 1 by default) an outbound SA
//!   starts a new generation: a fresh epoch, sequence numbers from 1 again, same SPI and
//!   key. Docker's kernel SAs have no replay window (`programSA` sets none; the kernel's
//!   `xfrm_replay_check_legacy` accepts every sequence number when `replay_window` is 0),
//!   so a Docker peer accepts the restart of the counter.
//! * **Anti-replay across restarts.** Docker's SAs have no replay protection; ours do, per
//!   inbound SA and per kind of sender ([`receive`]): for a swarmgate peer one
//!   [`ReplayWindow`] over `epoch << 32 | seq`, where a restarted (or rolled-over) sender's
//!   higher epoch moves the window at once and older epochs are
//!   [`DropReason::StaleEpoch`]; for a Docker peer (the Linux kernel's IV, a random salt per
//!   SA object, `crypto/seqiv.c`) a window per SA object, so that Docker re-creating its
//!   SAs — on restarts and on every membership change — is taken at once too.

pub mod epoch;
pub mod receive;
pub mod replay;

use core::fmt;
use core::net::Ipv4Addr;
use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use swarmgate_aead::{AeadError, AesGcm128, IcvLen, NONCE_LEN};

use crate::buf::PacketBuf;
use crate::counters::DropReason;
use crate::hash::fnv1a32;
use crate::wire::esp::{self as esp_wire, EspPacket, Spi, HEADER_LEN, IV_LEN};

pub use epoch::EpochSource;
pub use receive::{RxWindow, SenderIvs};
pub use replay::{ReplayError, ReplayWindow};

/// Bytes ESP adds in front of the protected datagram: SPI, sequence number and IV.
pub const ESP_PREFIX_LEN: usize = HEADER_LEN + IV_LEN;

/// Docker's MTU overhead for encrypted networks: SPI 4 + seq 4 + IV 8 + pad length 1 +
/// next header 1 + ICV 8 (`pktExpansion` in encryption.go).
pub const DOCKER_ESP_OVERHEAD: u16 = 26;

/// Packets an outbound SA sends per generation by default: the whole 32-bit sequence space
/// (RFC 4303 §3.3.3: without ESN the counter must not cycle within one generation).
pub const SEQ_LIMIT: u32 = u32::MAX;

/// The smallest accepted per-generation limit: each generation costs one epoch, and epochs
/// are reserved on disk a block at a time.
pub const MIN_SEQ_LIMIT: u32 = 16;

/// A datapath key as the managers distribute it: used as the SA key as it is.
#[derive(Clone, PartialEq, Eq)]
pub struct DatapathKey {
    /// 16 bytes of key material (Docker's `key.value`).
    pub key: [u8; 16],
    /// The key's tag (Lamport time); part of the SPI.
    pub tag: u32,
}

impl fmt::Debug for DatapathKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatapathKey")
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

/// Why an SA could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaError {
    /// The AEAD refused the key or ICV length.
    Crypto(AeadError),
    /// Docker's SPI for this pair and tag is 0, which ESP forbids (RFC 4303 §2.1).
    ZeroSpi {
        /// The key tag.
        tag: u32,
    },
    /// The node's reserved sender epochs are used up (see [`EpochSource`]).
    NoEpoch,
}

impl fmt::Display for SaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaError::Crypto(e) => write!(f, "{e}"),
            SaError::ZeroSpi { tag } => write!(f, "key tag {tag} gives SPI 0 for this pair"),
            SaError::NoEpoch => f.write_str("no sender epoch reserved"),
        }
    }
}

impl std::error::Error for SaError {}

impl From<AeadError> for SaError {
    fn from(e: AeadError) -> SaError {
        SaError::Crypto(e)
    }
}

/// An IPv4 address as `netip.Addr.As16` (and Go's `net.ParseIP`) holds it: 16 bytes,
/// IPv4-mapped.
fn go_ip16(a: Ipv4Addr) -> [u8; 16] {
    a.to_ipv6_mapped().octets()
}

/// Docker's SPI for traffic from `src` to `dst` under key tag `tag`: moby
/// `drivers/overlay/encryption.go` `buildSPI` (FNV-1a-32 over `src.As16() ‖ be32(tag) ‖
/// dst.As16()`).
pub fn docker_spi(src: Ipv4Addr, dst: Ipv4Addr, tag: u32) -> u32 {
    fnv1a32(&[&go_ip16(src), &tag.to_be_bytes(), &go_ip16(dst)])
}

/// Docker's GCM salt for an SA: the big-endian SPI (`buildAeadAlgo`).
pub fn docker_salt(spi: Spi) -> [u8; 4] {
    spi.get().to_be_bytes()
}

#[inline]
fn pack(epoch: u32, seq: u32) -> u64 {
    (epoch as u64) << 32 | seq as u64
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
    key: DatapathKey,
    cipher: AesGcm128,
    salt: [u8; 4],
    /// `epoch << 32 | last sequence number used`.
    position: AtomicU64,
    /// Packets per generation.
    seq_limit: u32,
    epochs: Arc<EpochSource>,
    generations: AtomicU64,
}

impl TxSa {
    /// A fresh outbound SA keyed with `key` (Docker: the datapath key itself), salt = the
    /// big-endian SPI, its first generation under a new epoch from `epochs`; it sends at
    /// most `seq_limit` packets per generation.
    pub fn new(
        spi: Spi,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        key: &DatapathKey,
        icv: IcvLen,
        epochs: Arc<EpochSource>,
        seq_limit: u32,
    ) -> Result<TxSa, SaError> {
        let cipher = AesGcm128::new(&key.key, icv)?;
        let epoch = epochs.take().ok_or(SaError::NoEpoch)?;
        Ok(TxSa {
            spi,
            src,
            dst,
            key: key.clone(),
            cipher,
            salt: docker_salt(spi),
            position: AtomicU64::new(pack(epoch, 0)),
            seq_limit: seq_limit.max(1),
            epochs,
            generations: AtomicU64::new(1),
        })
    }

    /// Tag of the key.
    pub fn tag(&self) -> u32 {
        self.key.tag
    }

    /// The current epoch and the last sequence number reserved under it (0: none yet; a
    /// worker may not have sent the last few of its reserved run yet).
    pub fn position(&self) -> (u32, u32) {
        let p = self.position.load(Ordering::Relaxed);
        ((p >> 32) as u32, p as u32)
    }

    /// Generations started so far (1 + rekeys).
    pub fn generations(&self) -> u64 {
        self.generations.load(Ordering::Relaxed)
    }

    /// Reserves up to `n` (at least 1) consecutive sequence numbers of the current
    /// generation with one compare-and-swap on one word, fewer when the generation has
    /// fewer left; starts a new generation under a fresh epoch when it has none. Shared by
    /// all workers: every (epoch, sequence number) is handed out once. An epoch taken by a
    /// worker that then loses the race is simply never used.
    ///
    /// A worker reserves for a run of packets of one burst to this SA, so the counter's
    /// cache line moves between cores once per run rather than once per packet. The
    /// packets of concurrent workers interleave on the wire by up to a burst, as they did
    /// with one number at a time (a burst is sealed before it is sent); numbers reserved
    /// for packets that are then dropped are never sent, a gap that receivers accept
    /// (RFC 4303 §3.4.3; Docker's SAs have no replay window at all).
    #[inline]
    pub fn reserve(&self, n: u32) -> Result<SeqBlock, DropReason> {
        let n = n.max(1);
        let mut cur = self.position.load(Ordering::Relaxed);
        loop {
            let (epoch, seq) = ((cur >> 32) as u32, cur as u32);
            let (block, rekey) = if seq < self.seq_limit {
                let last = seq + n.min(self.seq_limit - seq);
                (SeqBlock::new(epoch, seq + 1, last), false)
            } else {
                let e = self.epochs.take().ok_or(DropReason::SeqExhausted)?;
                (SeqBlock::new(e, 1, n.min(self.seq_limit)), true)
            };
            match self.position.compare_exchange_weak(
                cur,
                pack(block.epoch, block.last),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    if rekey {
                        self.generations.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(block);
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Reserves the next (epoch, sequence number) alone.
    #[inline]
    fn next(&self) -> Result<Reserved, DropReason> {
        self.reserve(1)?.take().ok_or(DropReason::SeqExhausted)
    }

    /// ICV length of this SA.
    pub fn icv_len(&self) -> usize {
        self.cipher.icv_len().bytes()
    }

    #[cfg(test)]
    fn set_position(&self, epoch: u32, seq: u32) {
        self.position.store(pack(epoch, seq), Ordering::Relaxed);
    }
}

/// Sequence numbers reserved from a [`TxSa`] ([`TxSa::reserve`]): `next..=last` under
/// `epoch`, handed out one at a time. Neither it nor its numbers can be copied, so each
/// is used once.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeqBlock {
    epoch: u32,
    next: u32,
    last: u32,
}

impl SeqBlock {
    fn new(epoch: u32, next: u32, last: u32) -> SeqBlock {
        SeqBlock { epoch, next, last }
    }

    /// Whether every number has been taken (a default block has none).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.next == 0 || self.next > self.last
    }

    /// The next reserved number.
    #[inline]
    pub fn take(&mut self) -> Option<Reserved> {
        if self.is_empty() {
            return None;
        }
        let r = Reserved {
            epoch: self.epoch,
            seq: self.next,
        };
        // `last` ≤ `seq_limit` ≤ u32::MAX: past the last, `next` wraps to 0, which is empty.
        self.next = self.next.wrapping_add(1);
        Some(r)
    }
}

/// One reserved (epoch, sequence number), only made by [`SeqBlock::take`] and used up by
/// [`seal_reserved`]. Epochs never repeat on a node across SAs, so a number reserved from
/// one SA cannot repeat a nonce even if sealed with another.
#[derive(Debug, PartialEq, Eq)]
pub struct Reserved {
    epoch: u32,
    seq: u32,
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
    /// How the peer builds its IVs, which decides its anti-replay state ([`RxWindow`]).
    pub ivs: SenderIvs,
    key: DatapathKey,
    cipher: AesGcm128,
    salt: [u8; 4],
}

impl RxSa {
    /// An inbound SA keyed with `key`, salt = the big-endian SPI, from a sender whose IVs
    /// are built as `ivs` says.
    pub fn new(
        spi: Spi,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        key: &DatapathKey,
        icv: IcvLen,
        ivs: SenderIvs,
    ) -> Result<RxSa, SaError> {
        Ok(RxSa {
            spi,
            src,
            dst,
            ivs,
            key: key.clone(),
            cipher: AesGcm128::new(&key.key, icv)?,
            salt: docker_salt(spi),
        })
    }

    /// Tag of the key.
    pub fn tag(&self) -> u32 {
        self.key.tag
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
    seal_reserved(buf, sa, next_header, sa.next()?)
}

/// [`seal`] with a sequence number reserved beforehand from `sa` ([`TxSa::reserve`]).
#[inline]
pub fn seal_reserved<B: PacketBuf>(
    buf: &mut B,
    sa: &TxSa,
    next_header: u8,
    reserved: Reserved,
) -> Result<(), DropReason> {
    let icv = sa.icv_len();
    let payload_len = buf.len();
    let pad = esp_wire::pad_len(payload_len);
    if buf.headroom() < ESP_PREFIX_LEN || buf.tailroom() < pad + esp_wire::TRAILER_LEN + icv {
        return Err(DropReason::NoBufferRoom);
    }
    // A GCM nonce must never repeat under one key: `reserve` hands out each (epoch, seq)
    // once and epochs never repeat on this node (see `epoch`).
    let Reserved { epoch, seq } = reserved;
    let tail = buf
        .append(pad + esp_wire::TRAILER_LEN + icv)
        .ok_or(DropReason::NoBufferRoom)?;
    esp_wire::emit_trailer(&mut tail[..pad + esp_wire::TRAILER_LEN], next_header);
    let data = buf
        .prepend(ESP_PREFIX_LEN)
        .ok_or(DropReason::NoBufferRoom)?;
    esp_wire::emit_header(&mut data[..HEADER_LEN], sa.spi, seq);
    data[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&epoch.to_be_bytes());
    data[HEADER_LEN + 4..ESP_PREFIX_LEN].copy_from_slice(&seq.to_be_bytes());
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..4].copy_from_slice(&sa.salt);
    nonce[4..].copy_from_slice(&data[HEADER_LEN..ESP_PREFIX_LEN]);
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
///
/// `window` judges the IV's upper word and the sequence number as the sender's kind
/// requires ([`receive`]); it must have been made for `sa.ivs`.
#[inline]
pub fn open<B: PacketBuf>(buf: &mut B, sa: &RxSa, window: &mut RxWindow) -> Result<u8, DropReason> {
    let icv = sa.icv_len();
    let p = EspPacket::new_checked(buf.data())?;
    p.check_gcm_len(icv)?;
    let seq = p.seq();
    if seq == 0 {
        // RFC 4303 §3.3.3: the first packet of an SA has sequence number 1.
        return Err(DropReason::Replayed);
    }
    let data = buf.data_mut();
    let upper = u32::from_be_bytes([
        data[HEADER_LEN],
        data[HEADER_LEN + 1],
        data[HEADER_LEN + 2],
        data[HEADER_LEN + 3],
    ]);
    window.check(upper, seq)?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..4].copy_from_slice(&sa.salt);
    nonce[4..].copy_from_slice(&data[HEADER_LEN..ESP_PREFIX_LEN]);
    let (prefix, rest) = data.split_at_mut(ESP_PREFIX_LEN);
    let ct_len = rest.len() - icv;
    let (ct, tag) = rest.split_at_mut(ct_len);
    sa.cipher
        .open_in_place(&nonce, &prefix[..HEADER_LEN], ct, tag)
        .map_err(|_| DropReason::AuthFailed)?;
    window.update(upper, seq)?;
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
#[derive(Debug)]
pub struct SaDatabase {
    icv: IcvLen,
    epochs: Arc<EpochSource>,
    seq_limit: u32,
    peers: FxHashMap<Ipv4Addr, PeerSas>,
}

#[derive(Debug, Default, Clone)]
struct PeerSas {
    tx: Option<Arc<TxSa>>,
    rx: Vec<Arc<RxSa>>,
}

impl SaDatabase {
    /// An empty database whose SAs use `icv`-byte ICVs (Docker: 8) and take their sender
    /// epochs from `epochs`, which must be this node's only source (see [`epoch`]).
    pub fn new(icv: IcvLen, epochs: Arc<EpochSource>) -> SaDatabase {
        SaDatabase {
            icv,
            epochs,
            seq_limit: SEQ_LIMIT,
            peers: FxHashMap::default(),
        }
    }

    /// Outbound SAs created from now on start a new generation every `limit` packets
    /// (at least [`MIN_SEQ_LIMIT`]; [`SEQ_LIMIT`] by default).
    pub fn with_seq_limit(mut self, limit: u32) -> SaDatabase {
        self.seq_limit = limit.max(MIN_SEQ_LIMIT);
        self
    }

    /// The node's epoch source.
    pub fn epochs(&self) -> &Arc<EpochSource> {
        &self.epochs
    }

    /// Installs the SAs between `local` and `remote` for `keys`, primary first (at most
    /// three are used, as Docker keeps). Existing SAs whose key is unchanged are kept as
    /// they are, so their sequence numbers continue; an inbound SA for every key is in
    /// place in the same snapshot in which the primary's outbound SA switches, and a
    /// removed key's inbound SA goes only when the key leaves the list. `ivs` says how the
    /// peer builds its IVs (a swarmgate node, or a Docker host's kernel). On error nothing
    /// changes.
    pub fn set_peer_keys(
        &mut self,
        local: Ipv4Addr,
        remote: Ipv4Addr,
        keys: &[DatapathKey],
        ivs: SenderIvs,
    ) -> Result<(), SaError> {
        let keys = &keys[..keys.len().min(3)];
        let old = self.peers.get(&remote).cloned().unwrap_or_default();
        let mut next = PeerSas::default();
        for (i, k) in keys.iter().enumerate() {
            let spi = |src, dst| {
                Spi::new(docker_spi(src, dst, k.tag)).ok_or(SaError::ZeroSpi { tag: k.tag })
            };
            let in_spi = spi(remote, local)?;
            let rx = match old.rx.iter().find(|s| {
                s.spi == in_spi && s.key == *k && s.src == remote && s.dst == local && s.ivs == ivs
            }) {
                Some(s) => s.clone(),
                None => Arc::new(RxSa::new(in_spi, remote, local, k, self.icv, ivs)?),
            };
            next.rx.push(rx);
            if i == 0 {
                let out_spi = spi(local, remote)?;
                let tx = match &old.tx {
                    Some(s) if s.spi == out_spi && s.key == *k && s.src == local => s.clone(),
                    _ => Arc::new(TxSa::new(
                        out_spi,
                        local,
                        remote,
                        k,
                        self.icv,
                        self.epochs.clone(),
                        self.seq_limit,
                    )?),
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

    fn epochs() -> Arc<EpochSource> {
        Arc::new(EpochSource::new(1000, 1_000_000))
    }

    fn db() -> SaDatabase {
        SaDatabase::new(IcvLen::Icv8, epochs())
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

    /// The SA key is the datapath key as it is and the salt the big-endian SPI
    /// (`buildAeadAlgo`): RustCrypto's AES-GCM, given only those, opens our packet.
    #[test]
    fn sa_key_is_the_datapath_key_and_salt_the_spi() {
        use aes_gcm::aead::{AeadInPlace, KeyInit};
        let mut da = db();
        let k = key(7, 0x5a);
        da.set_peer_keys(A, B, &[k.clone()], SenderIvs::Epochs)
            .unwrap();
        let t = da.tables();
        let mut buf = HeapBuf::from_frame(b"0123456789abcdef-payload", 64);
        seal(&mut buf, &t.tx[&B], 17).unwrap();
        let esp = buf.data();
        let spi = docker_spi(A, B, 7);
        assert_eq!(esp[..4], spi.to_be_bytes());
        let mut nonce = spi.to_be_bytes().to_vec();
        nonce.extend_from_slice(&esp[8..16]);
        let (ct, icv) = esp[16..].split_at(esp.len() - 16 - 8);
        // Recompute the full 16-byte tag over the recovered plaintext and compare its
        // leading 8 bytes with the ICV (RustCrypto has no 8-byte-tag type).
        let c = aes_gcm::Aes128Gcm::new_from_slice(&k.key).unwrap();
        let mut pt = ct.to_vec();
        c.encrypt_in_place_detached(aes_gcm::Nonce::from_slice(&nonce), &esp[..8], &mut pt)
            .unwrap(); // CTR is its own inverse: this recovers the plaintext
        let mut again = pt.clone();
        let tag = c
            .encrypt_in_place_detached(aes_gcm::Nonce::from_slice(&nonce), &esp[..8], &mut again)
            .unwrap();
        assert_eq!(again, ct);
        assert_eq!(&tag[..8], icv);
        assert!(pt.starts_with(b"0123456789abcdef-payload"));
    }

    fn pair(
        keys_a: &[DatapathKey],
        keys_b: &[DatapathKey],
        da: &mut SaDatabase,
        db: &mut SaDatabase,
    ) -> (EspTables, EspTables) {
        da.set_peer_keys(A, B, keys_a, SenderIvs::Epochs).unwrap();
        db.set_peer_keys(B, A, keys_b, SenderIvs::Epochs).unwrap();
        (da.tables(), db.tables())
    }

    fn roundtrip(
        ta: &EspTables,
        tb: &EspTables,
        w: &mut FxHashMap<Spi, RxWindow>,
        payload: &[u8],
    ) -> Result<Vec<u8>, DropReason> {
        let tx = ta.tx.get(&B).unwrap();
        let mut buf = HeapBuf::from_frame(payload, 64);
        seal(&mut buf, tx, 17)?;
        let spi = EspPacket::new_checked(buf.data()).unwrap().spi().unwrap();
        let rx = tb.rx.get(&spi).ok_or(DropReason::UnknownSpi)?;
        let next = open(
            &mut buf,
            rx,
            w.entry(spi).or_insert_with(|| RxWindow::new(rx.ivs)),
        )?;
        assert_eq!(next, 17);
        Ok(buf.data().to_vec())
    }

    #[test]
    fn seal_open_and_replay() {
        let (mut da, mut db) = (db(), db());
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
        let top = format!("{:?}", w[&spi]);
        assert_eq!(
            open(&mut bad, rx, w.get_mut(&spi).unwrap()),
            Err(DropReason::AuthFailed)
        );
        assert_eq!(format!("{:?}", w[&spi]), top);
        // A forged epoch (IV) is authenticated as part of the nonce.
        let mut forged = HeapBuf::from_frame(b"forged epoch", 64);
        seal(&mut forged, tx, 17).unwrap();
        forged.data_mut()[8] ^= 0x80;
        assert_eq!(
            open(&mut forged, rx, w.get_mut(&spi).unwrap()),
            Err(DropReason::AuthFailed)
        );
        assert_eq!(format!("{:?}", w[&spi]), top);
    }

    #[test]
    fn rotation_loses_nothing_and_keeps_sequence() {
        let (mut da, mut db) = (db(), db());
        let k1 = key(1, 1);
        let k2 = key(2, 2);
        let k3 = key(3, 3);
        let k4 = key(4, 4);
        let (ta, tb) = pair(&[k1.clone()], &[k1.clone()], &mut da, &mut db);
        let mut w = FxHashMap::default();
        roundtrip(&ta, &tb, &mut w, b"before").unwrap();
        let sent_before = ta.tx[&B].position().1;

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
        assert_eq!(ta1.tx[&B].position().1, sent_before + 1);

        // Step 2: A switches its primary to k2 before B does; B accepts k2 already, and
        // B's packets under k1 are still accepted by A.
        da.set_peer_keys(
            A,
            B,
            &[k2.clone(), k1.clone(), k3.clone()],
            SenderIvs::Epochs,
        )
        .unwrap();
        let ta2 = da.tables();
        assert_eq!(ta2.tx[&B].tag(), 2);
        roundtrip(&ta2, &tb1, &mut w, b"a on k2").unwrap();
        let mut b_sends = EspTables::default();
        b_sends.tx.insert(B, tb1.tx[&A].clone());
        roundtrip(&b_sends, &ta2, &mut w, b"b on k1").unwrap();

        // Step 3: k1 pruned everywhere.
        let (ta3, tb3) = pair(
            &[k2.clone(), k3.clone(), k4.clone()],
            &[k2.clone(), k3.clone()],
            &mut da,
            &mut db,
        );
        assert_eq!(ta3.rx.len(), 3);
        assert!(ta3.rx.values().all(|s| s.tag() != 1));
        roundtrip(&ta3, &tb3, &mut w, b"after").unwrap();
    }

    fn sa_with_limit(epochs: Arc<EpochSource>, limit: u32) -> TxSa {
        TxSa::new(
            Spi::new(9).unwrap(),
            A,
            B,
            &key(1, 1),
            IcvLen::Icv8,
            epochs,
            limit,
        )
        .unwrap()
    }

    /// A block of sequence numbers is cut at the generation's end; the next one starts a
    /// new generation; every number of a block is taken once, in order.
    #[test]
    fn a_reserved_block_stays_inside_its_generation() {
        let sa = sa_with_limit(Arc::new(EpochSource::new(5, 9)), 16);
        let mut b = sa.reserve(10).unwrap();
        let e = b.epoch;
        let got: Vec<u32> = std::iter::from_fn(|| b.take()).map(|r| r.seq).collect();
        assert_eq!(got, (1..=10).collect::<Vec<_>>());
        assert!(b.is_empty());
        let b = sa.reserve(10).unwrap();
        assert_eq!((b.epoch, b.next, b.last), (e, 11, 16));
        let b = sa.reserve(32).unwrap();
        assert!(b.epoch > e);
        assert_eq!((b.next, b.last), (1, 16));
        assert_eq!(sa.generations(), 2);
        // Zero asks for one.
        let b = sa.reserve(0).unwrap();
        assert_eq!((b.next, b.last), (1, 1));
        assert!(SeqBlock::default().is_empty());
        // The last number of a 32-bit generation does not wrap into a full block.
        let big = sa_with_limit(Arc::new(EpochSource::new(1, 3)), SEQ_LIMIT);
        big.set_position(1, u32::MAX - 2);
        let mut b = big.reserve(32).unwrap();
        let got: Vec<u32> = std::iter::from_fn(|| b.take())
            .take(4)
            .map(|r| r.seq)
            .collect();
        assert_eq!(got, vec![u32::MAX - 1, u32::MAX]);
    }

    /// Workers reserving blocks of any size at once from one SA, across generations, are
    /// never handed the same (epoch, sequence number).
    #[test]
    fn concurrent_reservations_never_share_a_number() {
        let sa = Arc::new(sa_with_limit(Arc::new(EpochSource::new(1, 1 << 20)), 1000));
        let taken: Vec<Vec<(u32, u32)>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2u32)
                .map(|t| {
                    let sa = sa.clone();
                    s.spawn(move || {
                        let mut got = Vec::new();
                        for i in 0..20_000u32 {
                            let mut b = sa.reserve((i * 7 + t) % 33).unwrap();
                            while let Some(r) = b.take() {
                                got.push((r.epoch, r.seq));
                            }
                        }
                        got
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total: usize = taken.iter().map(Vec::len).sum();
        let all: std::collections::HashSet<_> = taken.into_iter().flatten().collect();
        assert_eq!(all.len(), total);
        assert!(all.iter().all(|&(_, q)| (1..=1000).contains(&q)));
    }

    /// With a small limit, the SA moves to a new epoch every `limit` packets and starts its
    /// sequence numbers again; the receiver follows, every IV differs, nothing is lost.
    #[test]
    fn generations_roll_over_without_loss_or_repeated_iv() {
        let src = epochs();
        let mut da = SaDatabase::new(IcvLen::Icv8, src.clone()).with_seq_limit(16);
        let mut db = db();
        let (ta, tb) = pair(&[key(1, 1)], &[key(1, 1)], &mut da, &mut db);
        let mut w = FxHashMap::default();
        let mut ivs = std::collections::HashSet::new();
        for i in 0..100u32 {
            let tx = &ta.tx[&B];
            let mut buf = HeapBuf::from_frame(&i.to_be_bytes(), 64);
            seal(&mut buf, tx, 17).unwrap();
            let d = buf.data();
            assert!(ivs.insert(d[8..16].to_vec()), "IV repeated at packet {i}");
            let seq = u32::from_be_bytes(d[4..8].try_into().unwrap());
            assert_eq!(seq, i % 16 + 1);
            let rx = &tb.rx[&tx.spi];
            open(
                &mut buf,
                rx,
                w.entry(tx.spi).or_insert_with(|| RxWindow::new(rx.ivs)),
            )
            .unwrap();
            assert_eq!(buf.data(), &i.to_be_bytes());
        }
        assert_eq!(ta.tx[&B].generations(), 7);
        assert_eq!(src.peek(), 1000 + 7);
    }

    /// A restarted sender (a new SA object for the same key, hence the same SPI, salt and
    /// key) is accepted at once although its sequence numbers start at 1 again; packets of
    /// the old generation replayed afterwards are dropped.
    #[test]
    fn a_restarted_sender_is_accepted_and_old_generations_are_not() {
        let src = epochs();
        let mut rx_db = db();
        rx_db
            .set_peer_keys(B, A, &[key(1, 1)], SenderIvs::Epochs)
            .unwrap();
        let tb = rx_db.tables();
        let mut w = RxWindow::new(SenderIvs::Epochs);
        let before = TxSa::new(
            Spi::new(docker_spi(A, B, 1)).unwrap(),
            A,
            B,
            &key(1, 1),
            IcvLen::Icv8,
            src.clone(),
            SEQ_LIMIT,
        )
        .unwrap();
        let rx = &tb.rx[&before.spi];
        let mut old = Vec::new();
        for _ in 0..5000 {
            let mut buf = HeapBuf::from_frame(b"old life", 64);
            seal(&mut buf, &before, 17).unwrap();
            old.push(buf.clone());
            open(&mut buf, rx, &mut w).unwrap();
        }
        // "Restart": same key, same SPI, a new SA object from the (persisted) source.
        let after = TxSa::new(before.spi, A, B, &key(1, 1), IcvLen::Icv8, src, SEQ_LIMIT).unwrap();
        assert_eq!(after.position(), (before.position().0 + 1, 0));
        for _ in 0..3 {
            let mut buf = HeapBuf::from_frame(b"new life", 64);
            seal(&mut buf, &after, 17).unwrap();
            assert_eq!(open(&mut buf, rx, &mut w), Ok(17));
        }
        let mut replay = old[4990].clone();
        assert_eq!(open(&mut replay, rx, &mut w), Err(DropReason::StaleEpoch));
        let mut replay = old[0].clone();
        assert_eq!(open(&mut replay, rx, &mut w), Err(DropReason::StaleEpoch));
    }

    #[test]
    fn no_reserved_epoch_left_refuses_until_the_ceiling_rises() {
        let src = Arc::new(EpochSource::new(5, 6));
        let sa = TxSa::new(
            Spi::new(9).unwrap(),
            A,
            B,
            &key(1, 1),
            IcvLen::Icv8,
            src.clone(),
            16,
        )
        .unwrap();
        sa.set_position(5, 15);
        let mut buf = HeapBuf::from_frame(b"x", 64);
        seal(&mut buf, &sa, 17).unwrap();
        let mut buf = HeapBuf::from_frame(b"x", 64);
        assert_eq!(seal(&mut buf, &sa, 17), Err(DropReason::SeqExhausted));
        src.raise_ceiling(7);
        let mut buf = HeapBuf::from_frame(b"x", 64);
        seal(&mut buf, &sa, 17).unwrap();
        assert_eq!(sa.position(), (6, 1));
        // And the default limit uses every 32-bit sequence number before moving on.
        let big = Arc::new(EpochSource::new(1, 3));
        let sa = TxSa::new(
            Spi::new(9).unwrap(),
            A,
            B,
            &key(1, 1),
            IcvLen::Icv8,
            big,
            SEQ_LIMIT,
        )
        .unwrap();
        sa.set_position(1, u32::MAX - 1);
        assert_eq!(sa.next(), Ok(Reserved { epoch: 1, seq: u32::MAX }));
        assert_eq!(sa.next(), Ok(Reserved { epoch: 2, seq: 1 }));
        assert_eq!(
            TxSa::new(
                Spi::new(9).unwrap(),
                A,
                B,
                &key(1, 1),
                IcvLen::Icv8,
                Arc::new(EpochSource::empty()),
                16
            )
            .err(),
            Some(SaError::NoEpoch)
        );
    }

    /// ESP as the Linux kernel sends it for Docker (`crypto/seqiv.c`: IV = be64(seq) ⊕ a
    /// per-SA-object salt), sealed with RustCrypto's AES-GCM and the ICV cut to 8 bytes.
    fn kernel_esp(k: &DatapathKey, spi: u32, seq: u32, salt: u64, payload: &[u8]) -> HeapBuf {
        use aes_gcm::aead::{AeadInPlace, KeyInit};
        let pad = esp_wire::pad_len(payload.len());
        let mut pt = payload.to_vec();
        pt.extend((1..=pad as u8).chain([pad as u8, 17]));
        let iv = ((seq as u64) ^ salt).to_be_bytes();
        let mut hdr = spi.to_be_bytes().to_vec();
        hdr.extend_from_slice(&seq.to_be_bytes());
        let mut nonce = spi.to_be_bytes().to_vec();
        nonce.extend_from_slice(&iv);
        let c = aes_gcm::Aes128Gcm::new_from_slice(&k.key).unwrap();
        let tag = c
            .encrypt_in_place_detached(aes_gcm::Nonce::from_slice(&nonce), &hdr, &mut pt)
            .unwrap();
        let mut pkt = hdr;
        pkt.extend_from_slice(&iv);
        pkt.extend_from_slice(&pt);
        pkt.extend_from_slice(&tag[..8]);
        HeapBuf::from_frame(&pkt, 0)
    }

    /// A Docker host re-creates its SA (same key and SPI, a new random salt — here a lower
    /// one — and sequence numbers from 1): a peer marked as a kernel sender takes it at once
    /// and still refuses replays; an epoch-ordered window would drop it until the next key.
    #[test]
    fn a_docker_sa_re_created_with_a_lower_salt_is_taken_from_a_kernel_peer() {
        let k = key(3, 0x33);
        let spi = docker_spi(A, B, 3);
        let run = |ivs: SenderIvs| {
            let mut rx_db = db();
            rx_db
                .set_peer_keys(B, A, std::slice::from_ref(&k), ivs)
                .unwrap();
            let t = rx_db.tables();
            let rx = &t.rx[&Spi::new(spi).unwrap()];
            assert_eq!(rx.ivs, ivs);
            let mut w = RxWindow::new(ivs);
            let mut results = Vec::new();
            for (salt, seqs) in [
                (0xC000_0000_1234_5678u64, 1..=50u32),
                (0x4000_0000_8765_4321, 1..=50),
                (0x0100_0000_0000_0001, 1..=50),
            ] {
                for seq in seqs {
                    let mut p = kernel_esp(&k, spi, seq, salt, b"inner frame");
                    results.push(open(&mut p, rx, &mut w).map(|_| p.data().to_vec()));
                }
            }
            // Replays: a packet of the current SA object and one of the first.
            let mut p = kernel_esp(&k, spi, 7, 0x0100_0000_0000_0001, b"inner frame");
            let replay_current = open(&mut p, rx, &mut w);
            let mut p = kernel_esp(&k, spi, 9, 0xC000_0000_1234_5678, b"inner frame");
            let replay_first = open(&mut p, rx, &mut w);
            (results, replay_current, replay_first)
        };
        let (ok, current, first) = run(SenderIvs::KernelSeqiv);
        assert!(
            ok.iter().all(|r| r.as_deref() == Ok(&b"inner frame"[..])),
            "{ok:?}"
        );
        assert_eq!(current, Err(DropReason::Replayed));
        assert_eq!(first, Err(DropReason::Replayed));
        let (strict, _, _) = run(SenderIvs::Epochs);
        assert_eq!(
            strict
                .iter()
                .filter(|r| **r == Err(DropReason::StaleEpoch))
                .count(),
            100,
            "the epoch window drops both lower-salt re-creations"
        );
    }

    #[test]
    fn short_or_misaligned_esp_is_refused() {
        let sa = RxSa::new(
            Spi::new(9).unwrap(),
            B,
            A,
            &key(1, 1),
            IcvLen::Icv8,
            SenderIvs::Epochs,
        )
        .unwrap();
        let mut w = RxWindow::new(SenderIvs::Epochs);
        let mut buf = HeapBuf::from_frame(&[0, 0, 0, 9, 0, 0, 0, 1, 1, 2, 3], 0);
        assert_eq!(open(&mut buf, &sa, &mut w), Err(DropReason::Truncated));
        let mut buf = HeapBuf::from_frame(&[0u8; 8 + 8 + 3 + 8], 0);
        buf.data_mut()[3] = 9;
        buf.data_mut()[7] = 1;
        assert_eq!(open(&mut buf, &sa, &mut w), Err(DropReason::Malformed));
    }
}
