//! The gossip keyring and the sealing of each datagram.
//!
//! Keys are SwarmKit's `networking:gossip` keys (`manager/keymanager/keymanager.go`: 16
//! random bytes, up to three kept, a new one every 12 h). Rotation keeps Docker's order so
//! no node drops a message: the new key is handed out first (accepted by every node), the
//! primary — the key messages are sealed with — switches to it a grace period later, and
//! the oldest goes when a fourth arrives.
//!
//! A datagram is sealed as memberlist's encryption version 1 (hashicorp/memberlist
//! `security.go` `encryptPayload`, no label): one version byte (1), a 12-byte random
//! nonce, the AES-GCM ciphertext and its 16-byte tag. A receiver tries every key of its
//! ring (`decryptPayload`). Only the envelope is memberlist's; the SWIM messages inside are
//! foca's, so swarmgate's gossip does not interoperate with Docker's. Checked against
//! Python's `cryptography` AES-GCM on datagrams captured from a three-node run
//! (`tests/tests/swarm_gossip.rs`).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use serde::{Deserialize, Serialize};

/// Key length (SwarmKit's `DefaultKeyLen`).
pub const KEY_LEN: usize = 16;
/// Keys kept at once.
pub const MAX_KEYS: usize = 3;
/// memberlist's encryption version 1.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// One key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// Its number (a Lamport clock the leader raises).
    pub id: u64,
    /// The key, hex.
    pub key: String,
    /// When the leader created it (seconds since the epoch).
    pub created: u64,
}

/// The swarm's gossip keys, as the managers replicate them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    /// Oldest first, at most [`MAX_KEYS`].
    pub keys: Vec<Key>,
    /// The ID of the key messages are sealed with.
    pub primary: u64,
}

impl Keyring {
    /// A ring with one new key.
    pub fn new(now: u64) -> Result<Keyring, String> {
        let mut k = Keyring::default();
        k.add(now)?;
        k.primary = k.keys[0].id;
        Ok(k)
    }

    /// Step 1 of a rotation: a new key every node accepts; the oldest goes beyond
    /// [`MAX_KEYS`] (never the primary).
    pub fn add(&mut self, now: u64) -> Result<(), String> {
        let mut b = [0u8; KEY_LEN];
        crate::ca::random_bytes(&mut b).map_err(|e| e.to_string())?;
        let id = self.keys.iter().map(|k| k.id).max().unwrap_or(0) + 1;
        self.keys.push(Key {
            id,
            key: hex(&b),
            created: now,
        });
        while self.keys.len() > MAX_KEYS {
            let oldest = self
                .keys
                .iter()
                .position(|k| k.id != self.primary)
                .unwrap_or(0);
            self.keys.remove(oldest);
        }
        Ok(())
    }

    /// Step 2: the newest key becomes the primary once it is `grace` seconds old (every
    /// node has had it by then). Returns whether it changed.
    pub fn promote(&mut self, now: u64, grace: u64) -> bool {
        match self.keys.last() {
            Some(k) if k.id != self.primary && now >= k.created + grace => {
                self.primary = k.id;
                true
            }
            _ => false,
        }
    }

    /// The newest key's age in seconds.
    pub fn age(&self, now: u64) -> u64 {
        self.keys
            .last()
            .map_or(u64::MAX, |k| now.saturating_sub(k.created))
    }

    /// The keys as bytes, the primary first; malformed ones left out.
    pub fn material(&self) -> Vec<[u8; KEY_LEN]> {
        let mut v: Vec<(bool, [u8; KEY_LEN])> = self
            .keys
            .iter()
            .filter_map(|k| Some((k.id == self.primary, unhex(&k.key)?)))
            .collect();
        v.sort_by_key(|(p, _)| !*p);
        v.into_iter().map(|(_, k)| k).collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; KEY_LEN]> {
    if s.len() != KEY_LEN * 2 {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Seals `plain` with `key`.
pub fn seal(key: &[u8; KEY_LEN], plain: &[u8]) -> Option<Vec<u8>> {
    seal_with(key, plain, &[])
}

/// Opens a sealed datagram with the first of `keys` that authenticates it.
pub fn open(keys: &[[u8; KEY_LEN]], data: &[u8]) -> Option<Vec<u8>> {
    open_with(keys, data, &[])
}

/// The sealed length of `n` plaintext bytes (memberlist's `encryptedLength`, version 1).
pub fn sealed_len(n: usize) -> usize {
    1 + NONCE_LEN + n + TAG_LEN
}

/// Seals `plain` with `key`, authenticating `aad` as well (memberlist's stream messages
/// authenticate their 5-byte header).
pub fn seal_with(key: &[u8; KEY_LEN], plain: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let k = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).ok()?);
    let mut nonce = [0u8; NONCE_LEN];
    crate::ca::random_bytes(&mut nonce).ok()?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len() + TAG_LEN);
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    let mut body = plain.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut body,
    )
    .ok()?;
    out.extend_from_slice(&body);
    Some(out)
}

/// Opens sealed bytes (and `aad`) with the first of `keys` that authenticates them.
pub fn open_with(keys: &[[u8; KEY_LEN]], data: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if data.len() < 1 + NONCE_LEN + TAG_LEN || data[0] != VERSION {
        return None;
    }
    let nonce: [u8; NONCE_LEN] = data[1..1 + NONCE_LEN].try_into().ok()?;
    for key in keys {
        let k = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).ok()?);
        let mut body = data[1 + NONCE_LEN..].to_vec();
        if let Ok(p) = k.open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        ) {
            let n = p.len();
            body.truncate(n);
            return Some(body);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_accepts_the_new_key_before_sealing_with_it() {
        let mut r = Keyring::new(100).unwrap();
        let old = r.material()[0];
        let msg = seal(&old, b"ping").unwrap();
        assert_eq!(open(&r.material(), &msg).as_deref(), Some(&b"ping"[..]));
        r.add(200).unwrap();
        // Accepted at once, not yet the one messages are sealed with.
        assert_eq!(r.material()[0], old);
        assert!(!r.promote(205, 10));
        assert!(r.promote(210, 10));
        let new = r.material()[0];
        assert_ne!(new, old);
        // A node still sealing with the old key is understood.
        assert!(open(&r.material(), &msg).is_some());
        r.add(300).unwrap();
        r.add(400).unwrap();
        assert_eq!(r.keys.len(), MAX_KEYS);
        assert!(
            r.keys.iter().any(|k| k.id == r.primary),
            "the primary is never dropped"
        );
        assert!(open(&r.material(), &msg).is_none(), "the oldest key went");
    }

    #[test]
    fn forged_or_truncated_datagrams_are_refused() {
        let r = Keyring::new(1).unwrap();
        let k = r.material();
        let mut msg = seal(&k[0], b"hello").unwrap();
        assert!(open(&k, &msg[..10]).is_none());
        let last = msg.len() - 1;
        msg[last] ^= 1;
        assert!(open(&k, &msg).is_none());
        let other = Keyring::new(1).unwrap();
        let msg = seal(&other.material()[0], b"hello").unwrap();
        assert!(open(&k, &msg).is_none());
        assert!(open(&k, &[]).is_none());
    }
}
