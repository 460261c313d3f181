//! Mempools and mbufs.

use std::ffi::CString;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use swarmgate_dataplane::PacketBuf;

use std::sync::Arc;

use crate::eal::{Eal, EalGuard};
use crate::error::{non_null, DpdkError};
use crate::sys;

/// Largest burst handled at once.
pub const BURST_MAX: usize = 32;

/// A pool of packet buffers (`rte_pktmbuf_pool_create`).
#[derive(Debug)]
pub struct Mempool {
    raw: NonNull<sys::rte_mempool>,
    size: u32,
    _eal: Arc<EalGuard>,
}

// SAFETY: DPDK mempools are designed for concurrent use from many threads (lock-free ring
// with per-lcore caches); the pointer is only freed on drop.
unsafe impl Send for Mempool {}
// SAFETY: see above.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// A pool of `n` mbufs with `cache` per-lcore cache entries and a data room of
    /// `data_room` bytes (headroom included; DPDK's default is 2048 + 128).
    pub fn new(
        eal: &Eal,
        name: &str,
        n: u32,
        cache: u32,
        data_room: u16,
    ) -> Result<Mempool, DpdkError> {
        Mempool::create(eal, name, n, "rte_pktmbuf_pool_create", |c| {
            // SAFETY: `c` is valid for the call; socket -1 (SOCKET_ID_ANY) lets DPDK choose.
            unsafe { sys::rte_pktmbuf_pool_create(c.as_ptr(), n, cache, 0, data_room, -1) }
        })
    }

    /// The same pool with its mbufs packed back to back in virtual memory, none kept inside
    /// one page and no padding between them (`RTE_MEMPOOL_F_NO_IOVA_CONTIG |
    /// RTE_MEMPOOL_F_NO_SPREAD`).
    ///
    /// DPDK 22.11's `net_af_xdp` registers its XDP socket's UMEM as the pool's first memory
    /// chunk, `populated_size` objects long (`xdp_umem_configure` in
    /// `drivers/net/af_xdp/rte_eth_af_xdp.c`). A default pool without hugepages keeps every
    /// object inside a 4 KiB page, leaving gaps, so the last mbufs lie beyond the UMEM and
    /// the kernel silently refuses the frames that use them. Only for ports nothing DMAs into
    /// with physical addresses (virtual devices): an mbuf may now straddle two pages.
    pub fn packed(
        eal: &Eal,
        name: &str,
        n: u32,
        cache: u32,
        data_room: u16,
    ) -> Result<Mempool, DpdkError> {
        Mempool::create(
            eal,
            name,
            n,
            "rte_mempool_create_empty (packed mbufs)",
            |c| {
                // SAFETY: `c` is valid for the call; socket -1 (SOCKET_ID_ANY) lets DPDK choose.
                unsafe { sys::sg_pktmbuf_pool_create_packed(c.as_ptr(), n, cache, data_room, -1) }
            },
        )
    }

    /// A pool of `n` mbufs that `make` creates from the name (null on failure, the reason in
    /// `rte_errno`).
    fn create(
        eal: &Eal,
        name: &str,
        n: u32,
        what: &'static str,
        make: impl FnOnce(&CString) -> *mut sys::rte_mempool,
    ) -> Result<Mempool, DpdkError> {
        let c = CString::new(name).map_err(|_| DpdkError::InvalidArgument(name.to_owned()))?;
        Ok(Mempool {
            raw: non_null(make(&c), what)?,
            size: n,
            _eal: eal.guard(),
        })
    }

    /// Allocates one mbuf.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is live; the returned mbuf (if any) is ours.
        NonNull::new(unsafe { sys::sg_pktmbuf_alloc(self.raw.as_ptr()) }).map(|raw| Mbuf {
            raw,
            _not_sync: PhantomData,
        })
    }

    /// Mbufs currently free in the pool.
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is live.
        unsafe { sys::rte_mempool_avail_count(self.raw.as_ptr()) }
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.raw.as_ptr()
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // An `Mbuf` does not borrow its pool (a lifetime on every packet would tie the
        // worker threads to the pool's owner). Instead a pool whose mbufs are not all back
        // — held by an `Mbuf`, a burst, a ring or a port's descriptors — is never freed:
        // its memory stays valid for them, and the EAL's memory stays mapped with it.
        if self.available() < self.size {
            crate::eal::POOL_LEAKED.store(true, std::sync::atomic::Ordering::SeqCst);
            return;
        }
        // SAFETY: every mbuf of the pool is back in it; nothing refers to the pool.
        unsafe { sys::rte_mempool_free(self.raw.as_ptr()) }
    }
}

/// One single-segment packet buffer, owned: freed on drop, given back to DPDK when
/// transmitted. `Send` (it may move to another core through a ring) but not `Sync`.
#[repr(transparent)]
#[derive(Debug)]
pub struct Mbuf {
    raw: NonNull<sys::rte_mbuf>,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

// SAFETY: an mbuf is exclusively owned by this value; moving it to another thread moves
// ownership (DPDK allows freeing an mbuf on any thread).
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Gives up ownership, returning the raw pointer (for transmit).
    pub(crate) fn into_raw(self) -> *mut sys::rte_mbuf {
        let p = self.raw.as_ptr();
        std::mem::forget(self);
        p
    }

    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `p` must be a valid mbuf that nobody else owns.
    pub(crate) unsafe fn from_raw(p: *mut sys::rte_mbuf) -> Mbuf {
        Mbuf {
            raw: NonNull::new_unchecked(p),
            _not_sync: PhantomData,
        }
    }

    /// Number of segments; the data plane handles only single-segment packets.
    pub fn segments(&self) -> u16 {
        // SAFETY: the mbuf is live and ours.
        unsafe { sys::sg_mbuf_nb_segs(self.raw.as_ptr()) }
    }

    /// Clears receive offload flags before a buffer is reused for transmit.
    pub fn reset_offloads(&mut self) {
        // SAFETY: the mbuf is live and ours.
        unsafe { sys::sg_mbuf_reset_offloads(self.raw.as_ptr()) }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf; it is freed exactly once.
        unsafe { sys::sg_pktmbuf_free(self.raw.as_ptr()) }
    }
}

impl PacketBuf for Mbuf {
    #[inline]
    fn data(&self) -> &[u8] {
        // SAFETY: the first segment's data region is `data_len` bytes at mtod, valid while
        // we own the mbuf; the borrow ties the slice to `&self`.
        unsafe {
            let m = self.raw.as_ptr();
            std::slice::from_raw_parts(sys::sg_mbuf_data(m), sys::sg_mbuf_data_len(m) as usize)
        }
    }
    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `data`, and `&mut self` makes the access exclusive.
        unsafe {
            let m = self.raw.as_ptr();
            std::slice::from_raw_parts_mut(sys::sg_mbuf_data(m), sys::sg_mbuf_data_len(m) as usize)
        }
    }
    #[inline]
    fn headroom(&self) -> usize {
        // SAFETY: the mbuf is live and ours.
        unsafe { sys::sg_mbuf_headroom(self.raw.as_ptr()) as usize }
    }
    #[inline]
    fn tailroom(&self) -> usize {
        // SAFETY: the mbuf is live and ours.
        unsafe { sys::sg_mbuf_tailroom(self.raw.as_ptr()) as usize }
    }
    #[inline]
    fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        let n = u16::try_from(n).ok()?;
        // SAFETY: rte_pktmbuf_prepend checks the headroom and returns null without change.
        let p = unsafe { sys::sg_pktmbuf_prepend(self.raw.as_ptr(), n) };
        if p.is_null() {
            return None;
        }
        Some(self.data_mut())
    }
    #[inline]
    fn adj(&mut self, n: usize) -> bool {
        let Ok(n) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: rte_pktmbuf_adj checks the length and returns null without change.
        !unsafe { sys::sg_pktmbuf_adj(self.raw.as_ptr(), n) }.is_null()
    }
    #[inline]
    fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        let n16 = u16::try_from(n).ok()?;
        // SAFETY: rte_pktmbuf_append checks the tailroom and returns null without change;
        // otherwise it returns the start of `n` new bytes inside the last segment.
        let p = unsafe { sys::sg_pktmbuf_append(self.raw.as_ptr(), n16) };
        if p.is_null() {
            return None;
        }
        // SAFETY: `p` points at `n` writable bytes inside our mbuf.
        Some(unsafe { std::slice::from_raw_parts_mut(p as *mut u8, n) })
    }
    #[inline]
    fn trim(&mut self, n: usize) -> bool {
        let Ok(n) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: rte_pktmbuf_trim checks the length and returns -1 without change.
        unsafe { sys::sg_pktmbuf_trim(self.raw.as_ptr(), n) == 0 }
    }
}

/// A burst of received mbufs in a fixed array (never a `Vec`).
pub struct RxBurst {
    bufs: [MaybeUninit<Mbuf>; BURST_MAX],
    len: usize,
}

impl Default for RxBurst {
    fn default() -> Self {
        RxBurst {
            bufs: [const { MaybeUninit::uninit() }; BURST_MAX],
            len: 0,
        }
    }
}

impl RxBurst {
    /// Number of packets held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The packets, for the pipeline.
    pub fn as_mut_slice(&mut self) -> &mut [Mbuf] {
        // SAFETY: the first `len` entries are initialised; Mbuf is repr(transparent) so
        // MaybeUninit<Mbuf> has its layout.
        unsafe { std::slice::from_raw_parts_mut(self.bufs.as_mut_ptr() as *mut Mbuf, self.len) }
    }

    /// Adds a packet; gives it back if full.
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.len == BURST_MAX {
            return Err(m);
        }
        self.bufs[self.len].write(m);
        self.len += 1;
        Ok(())
    }

    /// Takes every packet out, in order.
    pub fn drain(&mut self) -> impl Iterator<Item = Mbuf> + '_ {
        let n = std::mem::take(&mut self.len);
        // SAFETY: the first `n` entries are initialised and, with len reset to 0, each is
        // read exactly once here.
        (0..n).map(move |i| unsafe { self.bufs[i].assume_init_read() })
    }

    pub(crate) fn raw_slots(&mut self) -> *mut *mut sys::rte_mbuf {
        self.bufs.as_mut_ptr() as *mut *mut sys::rte_mbuf
    }

    /// # Safety
    /// The first `n` slots must hold owned mbufs.
    pub(crate) unsafe fn set_len(&mut self, n: usize) {
        self.len = n;
    }
}

impl Drop for RxBurst {
    fn drop(&mut self) {
        for m in self.drain() {
            drop(m);
        }
    }
}

/// Mbufs queued for one transmit call; what the queue does not take stays here.
pub struct TxBatch {
    ptrs: [*mut sys::rte_mbuf; BURST_MAX],
    len: usize,
}

// SAFETY: holds owned mbufs only (see Mbuf's Send).
unsafe impl Send for TxBatch {}

impl Default for TxBatch {
    fn default() -> Self {
        TxBatch {
            ptrs: [std::ptr::null_mut(); BURST_MAX],
            len: 0,
        }
    }
}

impl TxBatch {
    /// Adds a packet; gives it back if full.
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.len == BURST_MAX {
            return Err(m);
        }
        self.ptrs[self.len] = m.into_raw();
        self.len += 1;
        Ok(())
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when full.
    pub fn is_full(&self) -> bool {
        self.len == BURST_MAX
    }

    pub(crate) fn raw(&mut self) -> (*mut *mut sys::rte_mbuf, usize) {
        (self.ptrs.as_mut_ptr(), self.len)
    }

    /// Forgets the first `sent` packets (now DPDK's) and keeps the rest in order.
    pub(crate) fn consumed(&mut self, sent: usize) {
        let sent = sent.min(self.len);
        self.ptrs.copy_within(sent..self.len, 0);
        self.len -= sent;
    }

    /// Frees every packet still held; returns how many.
    pub fn free_all(&mut self) -> usize {
        let n = self.len;
        for i in 0..n {
            // SAFETY: the first `len` pointers are owned mbufs, each freed once here.
            drop(unsafe { Mbuf::from_raw(self.ptrs[i]) });
        }
        self.len = 0;
        n
    }
}

impl Drop for TxBatch {
    fn drop(&mut self) {
        self.free_all();
    }
}
