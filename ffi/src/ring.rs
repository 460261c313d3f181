//! `rte_ring`: a lock-free ring of mbufs between cores.

use std::ffi::CString;
use std::ptr::NonNull;

use crate::error::{non_null, DpdkError};
use crate::mbuf::{Mbuf, RxBurst, TxBatch};
use crate::sys;

/// A multi-producer, multi-consumer ring of mbufs (or single-producer/single-consumer with
/// [`Ring::new_spsc`]).
#[derive(Debug)]
pub struct Ring {
    raw: NonNull<sys::rte_ring>,
}

// SAFETY: rte_ring is lock-free and safe for concurrent producers and consumers in the
// mode it was created with; `new_spsc` rings are documented single-producer/consumer and
// the gateway gives each end to one thread.
unsafe impl Send for Ring {}
// SAFETY: see above.
unsafe impl Sync for Ring {}

impl Ring {
    /// A ring of `size` slots (a power of two; one is kept empty).
    pub fn new(name: &str, size: u32) -> Result<Ring, DpdkError> {
        Self::create(name, size, 0)
    }

    /// A single-producer, single-consumer ring.
    pub fn new_spsc(name: &str, size: u32) -> Result<Ring, DpdkError> {
        Self::create(name, size, sys::RING_F_SP_ENQ | sys::RING_F_SC_DEQ)
    }

    fn create(name: &str, size: u32, flags: u32) -> Result<Ring, DpdkError> {
        if !size.is_power_of_two() {
            return Err(DpdkError::InvalidArgument(format!(
                "ring size {size} is not a power of two"
            )));
        }
        let c = CString::new(name).map_err(|_| DpdkError::InvalidArgument(name.to_owned()))?;
        // SAFETY: `c` valid for the call; socket -1 = any.
        let p = unsafe { sys::rte_ring_create(c.as_ptr(), size, -1, flags) };
        Ok(Ring {
            raw: non_null(p, "rte_ring_create")?,
        })
    }

    /// Moves as many of `batch`'s mbufs into the ring as fit; the rest stay in `batch`.
    pub fn enqueue(&self, batch: &mut TxBatch) -> usize {
        let (ptrs, len) = batch.raw();
        // SAFETY: the first `len` pointers are owned mbufs; the ring takes the first `n`.
        let n = unsafe {
            sys::sg_ring_enqueue_burst(self.raw.as_ptr(), ptrs as *const *mut _ as _, len as u32)
        };
        batch.consumed(n as usize);
        n as usize
    }

    /// Moves up to a burst of mbufs from the ring into `burst` (which must be empty).
    pub fn dequeue(&self, burst: &mut RxBurst) -> usize {
        debug_assert!(burst.is_empty());
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

    /// Entries in the ring.
    pub fn len(&self) -> usize {
        // SAFETY: the ring is live.
        unsafe { sys::sg_ring_count(self.raw.as_ptr()) as usize }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let mut b = RxBurst::default();
        while self.dequeue(&mut b) > 0 {
            b.drain().for_each(drop::<Mbuf>);
        }
        // SAFETY: drained; freed once.
        unsafe { sys::rte_ring_free(self.raw.as_ptr()) }
    }
}
