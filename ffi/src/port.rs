//! Ethernet device ports.

use std::cell::Cell;
use std::ffi::CString;
use std::marker::PhantomData;

use swarmgate_dataplane::wire::EthernetAddress;

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
    id: u16,
    name: String,
    queues: u16,
    started: bool,
}

/// The receive side of one queue: `Send`, not `Sync`, not `Clone` — one poller per queue,
/// as DPDK requires.
#[derive(Debug)]
pub struct RxQueue {
    port: u16,
    queue: u16,
    _single_thread: PhantomData<Cell<()>>,
}

/// The transmit side of one queue; see [`RxQueue`].
#[derive(Debug)]
pub struct TxQueue {
    port: u16,
    queue: u16,
    _single_thread: PhantomData<Cell<()>>,
}

impl Port {
    /// The port DPDK created for device `name` (e.g. `net_af_packet0`).
    pub fn by_name(name: &str) -> Result<Port, DpdkError> {
        let c = CString::new(name).map_err(|_| DpdkError::InvalidArgument(name.to_owned()))?;
        let mut id = 0u16;
        // SAFETY: `c` and `id` are valid for the call.
        check(
            unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) },
            "rte_eth_dev_get_port_by_name",
        )
        .map_err(|_| DpdkError::InvalidArgument(format!("no DPDK port named {name}")))?;
        Ok(Port {
            id,
            name: name.to_owned(),
            queues: 0,
            started: false,
        })
    }

    /// The port id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Most receive and transmit queues the PMD offers.
    pub fn max_queues(&self) -> Result<(u16, u16), DpdkError> {
        let (mut rx, mut tx) = (0u16, 0u16);
        // SAFETY: out-pointers valid for the call.
        check(
            unsafe { sys::sg_port_max_queues(self.id, &mut rx, &mut tx) },
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
                self.name
            )));
        }
        let mut rss = 0;
        // SAFETY: the port id is valid; the pool outlives the port (owners drop ports first).
        check(
            unsafe {
                sys::sg_port_configure(
                    self.id,
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
                        port: self.id,
                        queue: q,
                        _single_thread: PhantomData,
                    },
                    TxQueue {
                        port: self.id,
                        queue: q,
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
            unsafe { sys::rte_eth_dev_start(self.id) },
            "rte_eth_dev_start",
        )?;
        self.started = true;
        Ok(())
    }

    /// Stops the port.
    pub fn stop(&mut self) -> Result<(), DpdkError> {
        if self.started {
            // SAFETY: valid port.
            check(
                unsafe { sys::rte_eth_dev_stop(self.id) },
                "rte_eth_dev_stop",
            )?;
            self.started = false;
        }
        Ok(())
    }

    /// Receives every packet regardless of destination MAC.
    pub fn promiscuous(&self) -> Result<(), DpdkError> {
        // SAFETY: valid port.
        check(
            unsafe { sys::rte_eth_promiscuous_enable(self.id) },
            "rte_eth_promiscuous_enable",
        )
        .map(|_| ())
    }

    /// The port's MAC address.
    pub fn mac(&self) -> Result<EthernetAddress, DpdkError> {
        let mut b = [0u8; 6];
        // SAFETY: `b` is 6 writable bytes.
        check(
            unsafe { sys::sg_port_mac(self.id, b.as_mut_ptr()) },
            "rte_eth_macaddr_get",
        )?;
        Ok(EthernetAddress(b))
    }

    /// Link state without waiting.
    pub fn link_up(&self) -> bool {
        // SAFETY: valid port.
        unsafe { sys::sg_port_link_up(self.id) != 0 }
    }

    /// The driver's counters.
    pub fn stats(&self) -> Result<PortStats, DpdkError> {
        let mut s = sys::sg_port_stats::default();
        // SAFETY: `s` is valid for writes.
        check(
            unsafe { sys::sg_port_stats(self.id, &mut s) },
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

impl Drop for Port {
    fn drop(&mut self) {
        let _ = self.stop();
        // SAFETY: the port is stopped; closing releases its queues and mbufs.
        unsafe { sys::rte_eth_dev_close(self.id) };
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
