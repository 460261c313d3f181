//! `rte_ring`: a lock-free ring of mbufs between cores.
//!
//! Two kinds, and the type system keeps them apart:
//! * [`Ring`] is multi-producer/multi-consumer: any number of threads may enqueue and
//!   dequeue at once through `&Ring`, so it is `Send + Sync`;
//! * [`spsc`] makes a single-producer/single-consumer ring (DPDK's faster mode, which is
//!   undefined behaviour with two producers or two consumers) and hands out its two ends,
//!   [`SpscProducer`] and [`SpscConsumer`]: each moves to one thread, and its operations
//!   take `&mut self`, so a second producer or consumer cannot exist in safe code.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::eal::{Eal, EalGuard};
use crate::error::{non_null, DpdkError};
use crate::mbuf::{Mbuf, RxBurst, TxBatch};
use crate::sys;

/// The ring itself: created once, freed (drained first) when its last owner drops.
#[derive(Debug)]
struct RawRing {
    raw: NonNull<sys::rte_ring>,
    _eal: Arc<EalGuard>,
}

// SAFETY: an rte_ring may be used from any thread; which operations may run concurrently
// is decided by the handle types built on it (see the module docs).
unsafe impl Send for RawRing {}
// SAFETY: shared only as `Ring` (MP/MC, safe concurrently) or inside the SPSC handles,
// whose enqueue/dequeue need `&mut` of the one handle per end.
unsafe impl Sync for RawRing {}

impl RawRing {
    fn create(eal: &Eal, name: &str, size: u32, flags: u32) -> Result<RawRing, DpdkError> {
        if !size.is_power_of_two() {
            return Err(DpdkError::InvalidArgument(format!(
                "ring size {size} is not a power of two"
            )));
        }
        let c = CString::new(name).map_err(|_| DpdkError::InvalidArgument(name.to_owned()))?;
        // SAFETY: `c` valid for the call; socket -1 = any.
        let p = unsafe { sys::rte_ring_create(c.as_ptr(), size, -1, flags) };
        Ok(RawRing {
            raw: non_null(p, "rte_ring_create")?,
            _eal: eal.guard(),
        })
    }

    /// Caller guarantees the ring's producer mode allows this call to run now.
    fn enqueue(&self, batch: &mut TxBatch) -> usize {
        let (ptrs, len) = batch.raw();
        // SAFETY: the first `len` pointers are owned mbufs; the ring takes the first `n`.
        let n = unsafe {
            sys::sg_ring_enqueue_burst(self.raw.as_ptr(), ptrs as *const *mut _ as _, len as u32)
        };
        batch.consumed(n as usize);
        n as usize
    }

    /// Caller guarantees the ring's consumer mode allows this call to run now.
    fn dequeue(&self, burst: &mut RxBurst) -> usize {
        // Packets still in the burst would be overwritten (leaked): free them first.
        if !burst.is_empty() {
            burst.drain().for_each(drop::<Mbuf>);
        }
        // SAFETY: the slots have room for BURST_MAX pointers; every pointer in the ring is an
        // owned mbuf put there by `enqueue`.
        unsafe {
            let n = sys::sg_ring_dequeue_burst(
                self.raw.as_ptr(),
                burst.raw_slots() as _,
                crate::BURST_MAX as u32,
            ) as usize;
            burst.set_len(n);
            n
        }
    }

    fn len(&self) -> usize {
        // SAFETY: the ring is live; the count is a read of two indices, safe concurrently.
        unsafe { sys::sg_ring_count(self.raw.as_ptr()) as usize }
    }
}

impl Drop for RawRing {
    fn drop(&mut self) {
        // Last owner: nobody else enqueues or dequeues any more.
        let mut b = RxBurst::default();
        while self.dequeue(&mut b) > 0 {
            b.drain().for_each(drop::<Mbuf>);
        }
        // SAFETY: drained; freed once.
        unsafe { sys::rte_ring_free(self.raw.as_ptr()) }
    }
}

/// A multi-producer, multi-consumer ring of mbufs, usable from any number of threads.
#[derive(Debug)]
pub struct Ring {
    raw: RawRing,
}

impl Ring {
    /// A ring of `size` slots (a power of two; one is kept empty).
    pub fn new(eal: &Eal, name: &str, size: u32) -> Result<Ring, DpdkError> {
        Ok(Ring {
            raw: RawRing::create(eal, name, size, 0)?,
        })
    }

    /// Moves as many of `batch`'s mbufs into the ring as fit; the rest stay in `batch`.
    pub fn enqueue(&self, batch: &mut TxBatch) -> usize {
        // MP/MC ring: concurrent enqueues are what it is made for.
        self.raw.enqueue(batch)
    }

    /// Moves up to a burst of mbufs from the ring into `burst` (packets still in `burst`
    /// are freed first).
    pub fn dequeue(&self, burst: &mut RxBurst) -> usize {
        self.raw.dequeue(burst)
    }

    /// Entries in the ring.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The one producing end of a single-producer/single-consumer ring.
#[derive(Debug)]
pub struct SpscProducer {
    raw: Arc<RawRing>,
}

/// The one consuming end of a single-producer/single-consumer ring.
#[derive(Debug)]
pub struct SpscConsumer {
    raw: Arc<RawRing>,
}

/// A single-producer, single-consumer ring of `size` slots, as its two ends.
pub fn spsc(eal: &Eal, name: &str, size: u32) -> Result<(SpscProducer, SpscConsumer), DpdkError> {
    let raw = Arc::new(RawRing::create(
        eal,
        name,
        size,
        sys::RING_F_SP_ENQ | sys::RING_F_SC_DEQ,
    )?);
    Ok((SpscProducer { raw: raw.clone() }, SpscConsumer { raw }))
}

impl SpscProducer {
    /// Moves as many of `batch`'s mbufs into the ring as fit; the rest stay in `batch`.
    pub fn enqueue(&mut self, batch: &mut TxBatch) -> usize {
        // `&mut` of the only producer handle: no other enqueue can run.
        self.raw.enqueue(batch)
    }

    /// Entries in the ring.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SpscConsumer {
    /// Moves up to a burst of mbufs from the ring into `burst` (packets still in `burst`
    /// are freed first).
    pub fn dequeue(&mut self, burst: &mut RxBurst) -> usize {
        // `&mut` of the only consumer handle: no other dequeue can run.
        self.raw.dequeue(burst)
    }

    /// Entries in the ring.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
