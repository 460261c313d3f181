//! What an inbound SA accepts: the anti-replay state of one SA, which depends on how its
//! sender builds the IV's upper word.
//!
//! The IV is the sender's choice (RFC 4106 §3.1), and the two kinds of sender an overlay
//! meets choose differently:
//! * **swarmgate** sends `be32(epoch) ‖ be32(seq)` with node-wide, strictly increasing
//!   epochs (see [`super::epoch`]). One [`ReplayWindow`] over `epoch << 32 | seq` then
//!   covers restarts and new generations: a higher epoch moves the window at once, an older
//!   one is a replay ([`DropReason::StaleEpoch`]).
//! * **the Linux kernel** — every Docker Engine host — sends `be64(seq) ⊕ salt`, the salt
//!   drawn at random when the SA object is created (`crypto/seqiv.c`, `seqiv_aead_encrypt`;
//!   the sequence number comes from `esp_output_tail` in `net/ipv4/esp4.c`). Without ESN the
//!   upper word is the salt's and constant while the SA lives, and random across
//!   re-creations — which Docker does not only on a restart but whenever two nodes stop and
//!   start sharing an encrypted network (moby `daemon/libnetwork/drivers/overlay/
//!   encryption.go`: `checkEncryption` calls `removeEncryption`/`setupEncryption`). A
//!   re-created SA starts again at sequence number 1 under an unrelated upper word, lower
//!   half the time. [`SenderIvs::KernelSeqiv`] keeps a window per SA object (upper word),
//!   the last [`INSTANCES`] used, and takes an upper word it does not know as a new SA
//!   object only if its sequence number is where a new SA starts (at most
//!   [`NEW_INSTANCE_MAX_SEQ`]); before the first packet any is taken (the peer's SA may be
//!   older than ours).
//!
//! Docker's own SAs have no replay window at all (`programSA` sets none). What the kernel
//! mode still lets through, and a single window would not: a replay of one of the first
//! [`NEW_INSTANCE_MAX_SEQ`] packets of an SA object that is no longer among the last
//! [`INSTANCES`] (the sender's upper word cannot tell an old SA object from a new one).

use super::replay::{ReplayError, ReplayWindow, WINDOW};
use crate::counters::DropReason;

/// How a peer builds the upper 32 bits of its ESP IVs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SenderIvs {
    /// swarmgate: the sender's epoch, strictly increasing across SA objects, generations and
    /// restarts on that node.
    #[default]
    Epochs,
    /// The Linux kernel's seqiv (Docker Engine hosts): a random salt per SA object.
    KernelSeqiv,
}

/// SA objects of a kernel sender whose windows are kept: the current one, and the previous
/// ones whose packets may still be in flight after a re-creation.
pub const INSTANCES: usize = 4;

/// The highest sequence number with which an unknown upper word is taken as a newly
/// created SA object of a kernel sender: one window's worth of packets, enough for those
/// sent before the first one arrives.
pub const NEW_INSTANCE_MAX_SEQ: u32 = WINDOW as u32;

/// The anti-replay state of one inbound SA, per worker. Fixed size; nothing here allocates
/// after [`RxWindow::new`].
// The swarmgate kind is the common one and stays inline (no pointer chase per packet).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum RxWindow {
    /// One window over `epoch << 32 | seq`.
    Epochs(ReplayWindow),
    /// A window per SA object of a kernel sender.
    Instances(Box<Instances>),
}

/// The windows of a kernel sender's last [`INSTANCES`] SA objects, least recently updated
/// replaced first.
#[derive(Debug, Clone, Default)]
pub struct Instances {
    slots: [Option<Instance>; INSTANCES],
    clock: u64,
}

#[derive(Debug, Clone)]
struct Instance {
    upper: u32,
    used: u64,
    window: ReplayWindow,
}

fn replay_reason(e: ReplayError) -> DropReason {
    match e {
        ReplayError::Duplicate | ReplayError::TooOld | ReplayError::Zero => DropReason::Replayed,
    }
}

impl RxWindow {
    /// Fresh state for a sender of the given kind.
    pub fn new(ivs: SenderIvs) -> RxWindow {
        match ivs {
            SenderIvs::Epochs => RxWindow::Epochs(ReplayWindow::default()),
            SenderIvs::KernelSeqiv => RxWindow::Instances(Box::default()),
        }
    }

    /// The kind of sender this state is for.
    pub fn ivs(&self) -> SenderIvs {
        match self {
            RxWindow::Epochs(_) => SenderIvs::Epochs,
            RxWindow::Instances(_) => SenderIvs::KernelSeqiv,
        }
    }

    /// Whether a packet whose IV starts with `upper` and whose ESP sequence number is `seq`
    /// may be new. Call before the integrity check; records nothing.
    #[inline]
    pub fn check(&self, upper: u32, seq: u32) -> Result<(), DropReason> {
        match self {
            RxWindow::Epochs(w) => {
                let ext = (upper as u64) << 32 | seq as u64;
                match w.check(ext) {
                    Ok(()) => Ok(()),
                    Err(_) if ext >> 32 < w.top() >> 32 => Err(DropReason::StaleEpoch),
                    Err(e) => Err(replay_reason(e)),
                }
            }
            RxWindow::Instances(i) => match i.find(upper) {
                Some(s) => s.window.check(seq as u64).map_err(replay_reason),
                None => i.admits_new(seq),
            },
        }
    }

    /// Records the packet after it authenticated (RFC 4303 §3.4.3). Re-checks, so a
    /// duplicate within one burst is still refused.
    #[inline]
    pub fn update(&mut self, upper: u32, seq: u32) -> Result<(), DropReason> {
        match self {
            RxWindow::Epochs(w) => {
                let ext = (upper as u64) << 32 | seq as u64;
                w.update(ext).map_err(|e| match ext >> 32 < w.top() >> 32 {
                    true => DropReason::StaleEpoch,
                    false => replay_reason(e),
                })
            }
            RxWindow::Instances(i) => i.update(upper, seq),
        }
    }
}

impl Instances {
    fn find(&self, upper: u32) -> Option<&Instance> {
        self.slots.iter().flatten().find(|s| s.upper == upper)
    }

    fn admits_new(&self, seq: u32) -> Result<(), DropReason> {
        if seq == 0 {
            Err(DropReason::Replayed)
        } else if self.slots.iter().all(Option::is_none) || seq <= NEW_INSTANCE_MAX_SEQ {
            Ok(())
        } else {
            Err(DropReason::StaleEpoch)
        }
    }

    fn update(&mut self, upper: u32, seq: u32) -> Result<(), DropReason> {
        self.clock += 1;
        let used = self.clock;
        if let Some(s) = self.slots.iter_mut().flatten().find(|s| s.upper == upper) {
            s.window.update(seq as u64).map_err(replay_reason)?;
            s.used = used;
            return Ok(());
        }
        self.admits_new(seq)?;
        let mut window = ReplayWindow::default();
        window.update(seq as u64).map_err(replay_reason)?;
        let slot = self
            .slots
            .iter_mut()
            .min_by_key(|s| s.as_ref().map_or(0, |s| s.used))
            .expect("INSTANCES > 0");
        *slot = Some(Instance {
            upper,
            used,
            window,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_move_forward_and_older_ones_are_stale() {
        let mut w = RxWindow::new(SenderIvs::Epochs);
        for s in 1..100 {
            w.update(7, s).unwrap();
        }
        assert_eq!(w.check(7, 50), Err(DropReason::Replayed));
        assert_eq!(w.check(6, 500), Err(DropReason::StaleEpoch));
        w.update(8, 1).unwrap();
        assert_eq!(w.check(7, 100), Err(DropReason::StaleEpoch));
        assert_eq!(w.update(8, 1), Err(DropReason::Replayed));
    }

    /// A kernel sender re-creates its SA with a lower upper word: taken at once, while the
    /// old SA object's packets still in flight are accepted once and replays are not.
    #[test]
    fn a_re_created_kernel_sa_with_a_lower_upper_word_is_taken() {
        let mut w = RxWindow::new(SenderIvs::KernelSeqiv);
        // Our first packet from a long-lived SA: any sequence number.
        w.update(0x9000_0000, 5_000_000).unwrap();
        w.update(0x9000_0000, 5_000_001).unwrap();
        // Re-created, lower salt, from 1.
        for s in 1..=10 {
            w.update(0x1000_0000, s).unwrap();
        }
        // A straggler of the old SA object, and replays of both.
        w.update(0x9000_0000, 4_999_999).unwrap();
        assert_eq!(w.check(0x9000_0000, 5_000_001), Err(DropReason::Replayed));
        assert_eq!(w.check(0x1000_0000, 3), Err(DropReason::Replayed));
        // An unknown upper word far into its sequence is not a new SA object.
        assert_eq!(
            w.check(0x2000_0000, NEW_INSTANCE_MAX_SEQ + 1),
            Err(DropReason::StaleEpoch)
        );
        assert_eq!(w.check(0x2000_0000, NEW_INSTANCE_MAX_SEQ), Ok(()));
        assert_eq!(w.check(0x2000_0000, 0), Err(DropReason::Replayed));
    }

    /// The least recently used SA object's window is the one replaced; the current one stays
    /// however many re-creations come.
    #[test]
    fn the_least_recently_used_instance_goes_first() {
        let mut w = RxWindow::new(SenderIvs::KernelSeqiv);
        w.update(100, 1).unwrap();
        for upper in 0..(INSTANCES as u32 + 3) {
            w.update(upper, 1).unwrap();
            w.update(100, 2 + upper).unwrap(); // the current SA object keeps sending
        }
        assert_eq!(w.check(100, 2), Err(DropReason::Replayed));
        // The last INSTANCES - 1 re-created ones are still known (their seq 1 is a replay)…
        for upper in 4..(INSTANCES as u32 + 3) {
            assert_eq!(w.check(upper, 1), Err(DropReason::Replayed), "{upper}");
        }
        // …the earliest are not (a new SA object's seq 1 is acceptable again: the limit
        // the module docs name).
        assert_eq!(w.check(0, 1), Ok(()));
    }

    #[test]
    fn modes_are_reported() {
        assert_eq!(RxWindow::new(SenderIvs::Epochs).ivs(), SenderIvs::Epochs);
        assert_eq!(
            RxWindow::new(SenderIvs::KernelSeqiv).ivs(),
            SenderIvs::KernelSeqiv
        );
    }
}
