//! Sender epochs: the upper half of every explicit IV this node sends.
//!
//! Under one Docker datapath key, an SA's GCM nonce is `salt ‖ IV` with salt = the SPI
//! (moby `daemon/libnetwork/drivers/overlay/encryption.go`, `buildAeadAlgo`), and the SPI
//! depends only on the two addresses and the key's tag (`buildSPI`). So the SA between two
//! nodes has the same key and salt after a restart, after the peer is removed and added
//! again, and after its 32-bit sequence space is used up: the IV alone must keep every
//! nonce unique (RFC 4106 §3.1, §8.1). swarmgate's IV is `be32(epoch) ‖ be32(seq)`; every
//! SA object and every sequence-number generation of it takes a fresh epoch from the
//! node's one [`EpochSource`], whose values are strictly increasing for the life of the
//! node — across restarts too, because the control side persists a reservation before any
//! epoch below it is handed out (`swarmgate_gateway::epoch_store`). Two IV ranges can then
//! never overlap, unlike random 64-bit IV bases, whose 2^32-wide ranges can.
//!
//! The same increasing epoch lets a receiver tell a restarted sender's packets (a higher
//! epoch, sequence numbers from 1 again) from replays (see [`super::open`]).
//!
//! Handing out an epoch is one atomic read-modify-write: workers take one when an SA's
//! sequence numbers run out, without locks or I/O. When the reserved range is used up,
//! [`EpochSource::take`] refuses until the control side has persisted a new ceiling.

use core::sync::atomic::{AtomicU32, Ordering};

/// Hands out strictly increasing epochs below a persisted ceiling.
#[derive(Debug)]
pub struct EpochSource {
    next: AtomicU32,
    ceiling: AtomicU32,
}

impl EpochSource {
    /// A source whose next epoch is `first` and that hands out epochs below `ceiling`.
    pub fn new(first: u32, ceiling: u32) -> EpochSource {
        EpochSource {
            next: AtomicU32::new(first),
            ceiling: AtomicU32::new(ceiling),
        }
    }

    /// A source with nothing reserved: every [`take`](Self::take) is refused. For nodes
    /// without encryption keys.
    pub fn empty() -> EpochSource {
        EpochSource::new(0, 0)
    }

    /// The next epoch, or `None` when the reserved range is used up.
    #[inline]
    pub fn take(&self) -> Option<u32> {
        let ceiling = self.ceiling.load(Ordering::Acquire);
        self.next
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < ceiling).then(|| n + 1)
            })
            .ok()
    }

    /// The epoch the next [`take`](Self::take) returns.
    pub fn peek(&self) -> u32 {
        self.next.load(Ordering::Acquire)
    }

    /// The first epoch that is not reserved.
    pub fn ceiling(&self) -> u32 {
        self.ceiling.load(Ordering::Acquire)
    }

    /// Epochs still reserved.
    pub fn remaining(&self) -> u32 {
        self.ceiling().saturating_sub(self.peek())
    }

    /// Raises the ceiling to `c` (never lowers it). Call only once `c` is persisted.
    pub fn raise_ceiling(&self, c: u32) {
        self.ceiling.fetch_max(c, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increasing_and_bounded() {
        let s = EpochSource::new(10, 13);
        assert_eq!(
            (s.take(), s.take(), s.take()),
            (Some(10), Some(11), Some(12))
        );
        assert_eq!(s.take(), None);
        assert_eq!(s.remaining(), 0);
        s.raise_ceiling(12); // never lowers
        assert_eq!(s.ceiling(), 13);
        s.raise_ceiling(14);
        assert_eq!(s.take(), Some(13));
        assert_eq!(EpochSource::empty().take(), None);
    }

    #[test]
    fn the_top_epoch_is_never_wrapped() {
        let s = EpochSource::new(u32::MAX - 1, u32::MAX);
        assert_eq!(s.take(), Some(u32::MAX - 1));
        assert_eq!(s.take(), None);
        assert_eq!(s.peek(), u32::MAX);
    }

    #[test]
    fn concurrent_takers_never_share_an_epoch() {
        let s = std::sync::Arc::new(EpochSource::new(1, 40_001));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || (0..10_000).filter_map(|_| s.take()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u32> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        all.sort_unstable();
        assert_eq!(all, (1..40_001).collect::<Vec<_>>());
    }
}
