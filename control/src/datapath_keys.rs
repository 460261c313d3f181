//! The datapath keys of encrypted overlays: SwarmKit's `networking:ipsec` keys, created and
//! rotated by the leader, replicated with Raft, handed to every node in its data plane's
//! state, and turned into ESP SAs with every node that shares an encrypted network
//! (`gateway`, Docker's SA parameters in `swarmgate_dataplane::esp`).
//!
//! As SwarmKit's key manager (moby/swarmkit `manager/keymanager/keymanager.go`): three
//! 16-byte keys at the start (`Run`, `keyringSize`), and at every rotation (12 h by
//! default, `DefaultKeyRotationInterval`) the oldest dropped and a new one added with the
//! next Lamport time (`rotateKey`). As Docker's agent (moby/moby `daemon/libnetwork/
//! agent.go`, `getKeys` and `getPrimaryKeyTag`): the keys sorted by Lamport time, the
//! *second* oldest is the primary a node encrypts with, every key is accepted. So a new
//! key is accepted everywhere a whole rotation before anyone encrypts with it, and the
//! key dropped at a rotation was the primary only until the rotation before: a rotation
//! under load loses no packet, whichever node applies it first.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Keys kept (SwarmKit's `keyringSize`).
pub const KEYRING_SIZE: usize = 3;
/// Key length (SwarmKit's `DefaultKeyLen`).
pub const KEY_LEN: usize = 16;
/// Between two rotations by default (SwarmKit's `DefaultKeyRotationInterval`), seconds.
pub const DEFAULT_ROTATION: u64 = 12 * 3600;
/// The shortest rotation period `swarm update --datapath-key-rotation` accepts.
pub const MIN_ROTATION: u64 = 10;
/// The longest (a year).
pub const MAX_ROTATION: u64 = 365 * 24 * 3600;

/// One key as the managers replicate it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// Its Lamport time: the SA's key tag (part of Docker's SPI).
    pub tag: u32,
    /// The key, hex.
    pub key: String,
    /// When the leader created it (seconds since the epoch).
    pub created: u64,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("tag", &self.tag)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// The swarm's datapath keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathKeys {
    /// Oldest first, at most [`KEYRING_SIZE`].
    pub keys: Vec<Key>,
    /// The last Lamport time given to a key.
    pub clock: u32,
    /// Seconds between rotations (`swarm update --datapath-key-rotation`).
    #[serde(default = "default_rotation")]
    pub rotation_secs: u64,
}

fn default_rotation() -> u64 {
    DEFAULT_ROTATION
}

impl Default for DatapathKeys {
    fn default() -> DatapathKeys {
        DatapathKeys {
            keys: Vec::new(),
            clock: 0,
            rotation_secs: DEFAULT_ROTATION,
        }
    }
}

/// A key as a node's data plane takes it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SaKey {
    /// The key tag.
    pub tag: u32,
    /// The key.
    #[serde(with = "hex16")]
    pub key: [u8; KEY_LEN],
}

impl fmt::Debug for SaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaKey")
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

mod hex16 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(k))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let s = String::deserialize(d)?;
        super::unhex(&s).ok_or_else(|| serde::de::Error::custom("a key is 32 hex digits"))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; KEY_LEN]> {
    if s.len() != 2 * KEY_LEN {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl DatapathKeys {
    fn new_key(&mut self, now: u64) -> Result<Key, String> {
        let mut k = [0u8; KEY_LEN];
        crate::ca::random_bytes(&mut k).map_err(|e| format!("random key: {e}"))?;
        self.clock = self
            .clock
            .checked_add(1)
            .ok_or("the key clock is exhausted")?;
        Ok(Key {
            tag: self.clock,
            key: hex(&k),
            created: now,
        })
    }

    /// A rotation: three new keys where there are none (SwarmKit's `Run`), otherwise the
    /// oldest dropped once three are kept and a new one added (`rotateKey`).
    pub fn rotate(&mut self, now: u64) -> Result<(), String> {
        let mut next = self.clone();
        if next.keys.is_empty() {
            for _ in 0..KEYRING_SIZE {
                let k = next.new_key(now)?;
                next.keys.push(k);
            }
        } else {
            next.keys.sort_by_key(|k| k.tag);
            if next.keys.len() >= KEYRING_SIZE {
                next.keys.remove(0);
            }
            let k = next.new_key(now)?;
            next.keys.push(k);
        }
        *self = next;
        Ok(())
    }

    /// Whether a rotation is due at `now`.
    pub fn due(&self, now: u64) -> bool {
        self.keys
            .iter()
            .map(|k| k.created)
            .max()
            .is_none_or(|newest| now >= newest.saturating_add(self.rotation_secs))
    }

    /// The keys as a node's data plane takes them, the primary first: Docker's agent order
    /// (sorted by Lamport time, the first two swapped: the second oldest encrypts).
    pub fn for_node(&self) -> Vec<SaKey> {
        let mut v: Vec<SaKey> = self
            .keys
            .iter()
            .filter_map(|k| {
                Some(SaKey {
                    tag: k.tag,
                    key: unhex(&k.key)?,
                })
            })
            .collect();
        v.sort_by_key(|k| k.tag);
        if v.len() > 1 {
            v.swap(0, 1);
        }
        v
    }
}

/// `--datapath-key-rotation`, checked.
pub fn rotation_period(secs: u64) -> Result<u64, String> {
    if !(MIN_ROTATION..=MAX_ROTATION).contains(&secs) {
        return Err(format!(
            "the datapath key rotation period must be between {MIN_ROTATION}s and {}h",
            MAX_ROTATION / 3600
        ));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_rotate_in_swarmkits_order_and_encrypt_with_the_second_oldest() {
        let mut k = DatapathKeys::default();
        assert!(k.due(0));
        k.rotate(100).unwrap();
        assert_eq!(k.keys.iter().map(|k| k.tag).collect::<Vec<_>>(), [1, 2, 3]);
        let tags = |k: &DatapathKeys| k.for_node().iter().map(|s| s.tag).collect::<Vec<_>>();
        assert_eq!(tags(&k), [2, 1, 3], "the second oldest is the primary");
        assert!(!k.due(100 + DEFAULT_ROTATION - 1));
        assert!(k.due(100 + DEFAULT_ROTATION));
        let before = k.for_node();
        k.rotate(200).unwrap();
        assert_eq!(k.keys.iter().map(|k| k.tag).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(tags(&k), [3, 2, 4]);
        // The new primary was accepted since the previous rotation; the dropped key was
        // not the primary any more: a node a rotation behind still talks to this one.
        let after = k.for_node();
        assert!(before.contains(&after[0]));
        assert!(after.contains(&before[0]));
        // Distinct random keys.
        let mut ks: Vec<&String> = k.keys.iter().map(|k| &k.key).collect();
        ks.dedup();
        assert_eq!(ks.len(), 3);
    }

    #[test]
    fn keys_never_show_in_debug_output_and_survive_serialisation() {
        let mut k = DatapathKeys::default();
        k.rotate(1).unwrap();
        let dbg = format!("{k:?} {:?}", k.for_node());
        for key in &k.keys {
            assert!(!dbg.contains(&key.key), "{dbg}");
        }
        let sa = k.for_node();
        let back: Vec<SaKey> = serde_json::from_str(&serde_json::to_string(&sa).unwrap()).unwrap();
        assert_eq!(back, sa);
        assert!(serde_json::from_str::<SaKey>(r#"{"tag":1,"key":"zz"}"#).is_err());
        assert!(rotation_period(5).is_err());
        assert!(rotation_period(10).is_ok());
    }
}
