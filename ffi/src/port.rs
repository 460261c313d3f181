//! Ethernet device ports.

use std::cell::Cell;
use std::ffi::CString;
use std::marker::PhantomData;

use swarmgate_dataplane::wire::EthernetAddress;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::eal::{Eal, EalGuard};
use crate::error::{check, DpdkError};
use crate::mbuf::{Mempool, RxBurst, TxBatch, BURST_MAX};
use crate::sys;

/// Counters kept by the port's driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Packets received.
    pub ipackets: u64,
    /// Packets sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Packets dropped by the hardware (receive queues full).
    pub imissed: u64,
    /// Receive errors.
    pub ierrors: u64,
    /// Transmit errors.
    pub oerrors: u64,
    /// Receive failures for lack of mbufs.
    pub rx_nombuf: u64,
}

/// An ethdev port. Control operations take `&self`; the data path goes through the
/// per-queue handles from [`Port::queues`], each of which only one thread can hold.
#[derive(Debug)]
pub struct Port {
    dev: Arc<Device>,
    queues: u16,
}

/// An open ethdev: stopped and closed when the last of its [`Port`] and queues is gone,
/// so a queue never polls a closed (or detached, or re-used) port id.
#[derive(Debug)]
struct Device {
    id: u16,
    name: String,
    started: AtomicBool,
    _eal: Arc<EalGuard>,
}

/// Names of the devices with a live [`Device`]: one `Port` per device, and no hot-unplug
/// under one.
static OPEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Whether a port or queue of device `name` is alive.
pub(crate) fn is_open(name: &str) -> bool {
    OPEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|n| n == name)
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.started.load(Ordering::SeqCst) {
            // SAFETY: valid port; no queue is left to poll it (this is the last owner).
            unsafe { sys::rte_eth_dev_stop(self.id) };
        }
        // SAFETY: stopped; closing releases its queues and mbufs.
        unsafe { sys::rte_eth_dev_close(self.id) };
        OPEN.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|n| *n != self.name);
    }
}

/// The receive side of one queue: `Send`, not `Sync`, not `Clone` — one poller per queue,
/// as DPDK requires.
#[derive(Debug)]
pub struct RxQueue {
    port: u16,
    queue: u16,
    _dev: Arc<Device>,
    _single_thread: PhantomData<Cell<()>>,
}

/// The transmit side of one queue; see [`RxQueue`].
#[derive(Debug)]
pub struct TxQueue {
    port: u16,
    queue: u16,
    _dev: Arc<Device>,
    _single_thread: PhantomData<Cell<()>>,
}

impl Port {
    /// The port DPDK created for device `name` (e.g. `net_af_packet0`).
    pub fn by_name(eal: &Eal, name: &str) -> Result<Port, DpdkError> {
        let c = CString::new(name).map_err(|_| DpdkError::InvalidArgument(name.to_owned()))?;
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        if open.iter().any(|n| n == name) {
            return Err(DpdkError::InvalidArgument(format!(
                "port {name} is already open"
            )));
        }
        let mut id = 0u16;
        // SAFETY: `c` and `id` are valid for the call.
        check(
            unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) },
            "rte_eth_dev_get_port_by_name",
        )
        .map_err(|_| DpdkError::InvalidArgument(format!("no DPDK port named {name}")))?;
        open.push(name.to_owned());
        Ok(Port {
            dev: Arc::new(Device {
                id,
                name: name.to_owned(),
                started: AtomicBool::new(false),
                _eal: eal.guard(),
            }),
            queues: 0,
        })
    }

    /// The port id.
    pub fn id(&self) -> u16 {
        self.dev.id
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.dev.name
    }

    /// Most receive and transmit queues the PMD offers.
    pub fn max_queues(&self) -> Result<(u16, u16), DpdkError> {
        let (mut rx, mut tx) = (0u16, 0u16);
        // SAFETY: out-pointers valid for the call.
        check(
            unsafe { sys::sg_port_max_queues(self.dev.id, &mut rx, &mut tx) },
            "rte_eth_dev_info_get",
        )?;
        Ok((rx, tx))
    }

    /// Configures `queues` receive and transmit queue pairs with `descriptors` each, receive
    /// buffers from `pool`; RSS over IP/UDP/TCP when `queues > 1` and the PMD supports it.
    /// Returns whether RSS is on.
    pub fn configure(
        &mut self,
        queues: u16,
        descriptors: u16,
        pool: &Mempool,
    ) -> Result<bool, DpdkError> {
        let (mrx, mtx) = self.max_queues()?;
        if queues == 0 || queues > mrx || queues > mtx {
            return Err(DpdkError::InvalidArgument(format!(
                "port {} offers {mrx} rx / {mtx} tx queues, {queues} asked",
                self.dev.name
            )));
        }
        let mut rss = 0;
        // SAFETY: the port id is valid; the pool outlives the port (owners drop ports first).
        check(
            unsafe {
                sys::sg_port_configure(
                    self.dev.id,
                    queues,
                    queues,
                    descriptors,
                    pool.as_ptr(),
                    &mut rss,
                )
            },
            "port configure",
        )?;
        self.queues = queues;
        Ok(rss != 0)
    }

    /// The per-queue handles, once, after [`configure`](Self::configure).
    pub fn queues(&mut self) -> Vec<(RxQueue, TxQueue)> {
        let n = std::mem::take(&mut self.queues);
        (0..n)
            .map(|q| {
                (
                    RxQueue {
                        port: self.dev.id,
                        queue: q,
                        _dev: self.dev.clone(),
                        _single_thread: PhantomData,
                    },
                    TxQueue {
                        port: self.dev.id,
                        queue: q,
                        _dev: self.dev.clone(),
                        _single_thread: PhantomData,
                    },
                )
            })
            .collect()
    }

    /// Starts the port.
    pub fn start(&mut self) -> Result<(), DpdkError> {
        // SAFETY: valid, configured port.
        check(
            unsafe { sys::rte_eth_dev_start(self.dev.id) },
            "rte_eth_dev_start",
        )?;
        self.dev.started.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Stops the port. Refused while its queues are out: a worker may be polling them.
    /// (Dropping the port and its queues stops it too, once the last of them is gone.)
    pub fn stop(&mut self) -> Result<(), DpdkError> {
        if Arc::strong_count(&self.dev) > 1 {
            return Err(DpdkError::InvalidArgument(format!(
                "port {} still has queues in use",
                self.dev.name
            )));
        }
        if self.dev.started.load(Ordering::SeqCst) {
            // SAFETY: valid port; no queue exists to poll it.
            check(
                unsafe { sys::rte_eth_dev_stop(self.dev.id) },
                "rte_eth_dev_stop",
            )?;
            self.dev.started.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Receives every packet regardless of destination MAC.
    pub fn promiscuous(&self) -> Result<(), DpdkError> {
        // SAFETY: valid port.
        check(
            unsafe { sys::rte_eth_promiscuous_enable(self.dev.id) },
            "rte_eth_promiscuous_enable",
        )
        .map(|_| ())
    }

    /// The port's MAC address.
    pub fn mac(&self) -> Result<EthernetAddress, DpdkError> {
        let mut b = [0u8; 6];
        // SAFETY: `b` is 6 writable bytes.
        check(
            unsafe { sys::sg_port_mac(self.dev.id, b.as_mut_ptr()) },
            "rte_eth_macaddr_get",
        )?;
        Ok(EthernetAddress(b))
    }

    /// Link state without waiting.
    pub fn link_up(&self) -> bool {
        // SAFETY: valid port.
        unsafe { sys::sg_port_link_up(self.dev.id) != 0 }
    }

    /// The driver's counters.
    pub fn stats(&self) -> Result<PortStats, DpdkError> {
        let mut s = sys::sg_port_stats::default();
        // SAFETY: `s` is valid for writes.
        check(
            unsafe { sys::sg_port_stats(self.dev.id, &mut s) },
            "rte_eth_stats_get",
        )?;
        Ok(PortStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }
}

impl RxQueue {
    /// Port id.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Receives up to a burst into `burst`; returns the count. Packets still in `burst`
    /// are freed first (overwriting their slots would leak them), in every build.
    #[inline]
    pub fn rx(&mut self, burst: &mut RxBurst) -> usize {
        if !burst.is_empty() {
            burst.drain().for_each(drop);
        }
        // SAFETY: the slots array has room for BURST_MAX pointers; rx_burst writes `n` owned
        // mbufs into its first `n` slots, which set_len then records.
        unsafe {
            let n = sys::sg_rx_burst(self.port, self.queue, burst.raw_slots(), BURST_MAX as u16)
                as usize;
            burst.set_len(n);
            n
        }
    }
}

impl TxQueue {
    /// Port id.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Hands `batch` to the queue; what the queue takes is DPDK's from now on, the rest stays
    /// in `batch`. Returns how many were sent.
    #[inline]
    pub fn tx(&mut self, batch: &mut TxBatch) -> usize {
        let (ptrs, len) = batch.raw();
        if len == 0 {
            return 0;
        }
        // SAFETY: the first `len` pointers are owned mbufs; tx_burst takes ownership of the
        // first `sent` of them and leaves the rest to us.
        let sent = unsafe { sys::sg_tx_burst(self.port, self.queue, ptrs, len as u16) } as usize;
        batch.consumed(sent);
        sent
    }
}
