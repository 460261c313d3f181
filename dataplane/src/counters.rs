//! Per-worker counters: packets and bytes per port and per network, and drops by reason.
//!
//! Each worker owns one [`Counters`] and is its only writer, so an increment is a relaxed
//! load and store — no read-modify-write, no lock. Any thread may read them at any time
//! (`snapshot`) without stopping the worker; readers see each value whole.

use core::sync::atomic::Ordering;

#[cfg(not(loom))]
use core::sync::atomic::AtomicU64;
#[cfg(loom)]
use loom::sync::atomic::AtomicU64;

/// Most ports a worker counts.
pub const MAX_PORTS: usize = 256;
/// Most networks a worker counts (network slots are `0..MAX_NETWORKS`).
pub const MAX_NETWORKS: usize = 4096;

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $name:ident = $label:literal,)*) => {
        /// Why the pipeline dropped a packet. Every variant is a counter.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[$doc])* $name,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// Number of reasons.
            pub const COUNT: usize = DropReason::ALL.len();

            /// A stable snake_case name for metrics and logs.
            pub const fn name(self) -> &'static str {
                match self {
                    $(DropReason::$name => $label,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// A header was cut short.
    Truncated = "truncated",
    /// A header field held a forbidden value.
    Malformed = "malformed",
    /// An IPv4 header or UDP checksum did not verify.
    BadChecksum = "bad_checksum",
    /// A protocol variant the data path does not handle.
    Unsupported = "unsupported",
    /// Received on a port the tables do not know.
    UnknownPort = "unknown_port",
    /// Underlay packet not addressed to this VTEP (MAC or IP).
    NotForUs = "not_for_us",
    /// An IPv4 fragment on the underlay; the data path never reassembles.
    IpFragment = "ip_fragment",
    /// VXLAN for a VNI this node does not serve.
    UnknownVni = "unknown_vni",
    /// Cleartext VXLAN for a VNI marked encrypted (the CVE-2023-28840 class).
    CleartextOnEncrypted = "cleartext_on_encrypted",
    /// ESP with a SPI that matches no SA (or an SA for other addresses).
    UnknownSpi = "unknown_spi",
    /// ESP sequence number already seen or left of the anti-replay window.
    Replayed = "replayed",
    /// ESP whose IV upper word the SA's replay state cannot take: from a swarmgate peer, an
    /// older epoch than the window has moved to (a replay of an earlier generation); from a
    /// Docker peer, an SA object neither recent nor starting (see `esp::receive`).
    StaleEpoch = "esp_stale_epoch",
    /// ESP integrity check failed.
    AuthFailed = "auth_failed",
    /// ESP trailer (padding, pad length) invalid after decryption.
    BadEspTrailer = "bad_esp_trailer",
    /// Decrypted ESP that was not VXLAN over UDP.
    EspNotVxlan = "esp_not_vxlan",
    /// No outbound SA for the remote VTEP of an encrypted network.
    NoOutboundSa = "no_outbound_sa",
    /// An SA's generation is used up and no reserved sender epoch is left for the next one
    /// (the control side tops the reservation up every second).
    SeqExhausted = "seq_exhausted",
    /// Inner destination neither a local endpoint nor a known remote one (no flooding).
    UnknownDestination = "unknown_destination",
    /// ARP request for an address the proxy table does not hold.
    ArpNotAnswered = "arp_not_answered",
    /// Inner frame larger than the network MTU.
    MtuExceeded = "mtu_exceeded",
    /// The underlay neighbour (next hop MAC) of a VTEP is not resolved.
    NoNeighbour = "no_neighbour",
    /// Not enough headroom or tailroom in the buffer.
    NoBufferRoom = "no_buffer_room",
    /// A VIP with no backends.
    NoBackend = "no_backend",
    /// The transmit queue refused the packet (counted by the driver).
    TxQueueFull = "tx_queue_full",
}

impl From<crate::wire::WireError> for DropReason {
    fn from(e: crate::wire::WireError) -> DropReason {
        use crate::wire::WireError;
        match e {
            WireError::Truncated => DropReason::Truncated,
            WireError::Malformed => DropReason::Malformed,
            WireError::Checksum => DropReason::BadChecksum,
            WireError::Unsupported => DropReason::Unsupported,
        }
    }
}

impl core::fmt::Display for DropReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// One single-writer counter.
#[derive(Debug)]
pub struct Counter(AtomicU64);

impl Default for Counter {
    fn default() -> Self {
        Counter(AtomicU64::new(0))
    }
}

impl Counter {
    /// Adds `n`. Only the owning worker calls this.
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: a plain load and store is enough and avoids a locked instruction.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    /// Current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters of one port.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Packets received.
    pub rx_packets: Counter,
    /// Bytes received.
    pub rx_bytes: Counter,
    /// Packets handed to the port's transmit queue.
    pub tx_packets: Counter,
    /// Bytes handed to the port's transmit queue.
    pub tx_bytes: Counter,
}

/// Counters of one overlay network.
#[derive(Debug, Default)]
pub struct NetworkCounters {
    /// Inner frames encapsulated toward remote VTEPs.
    pub encap_packets: Counter,
    /// Inner bytes encapsulated.
    pub encap_bytes: Counter,
    /// Inner frames decapsulated to local endpoints.
    pub decap_packets: Counter,
    /// Inner bytes decapsulated.
    pub decap_bytes: Counter,
}

/// All counters of one worker.
#[derive(Debug)]
pub struct Counters {
    ports: Box<[PortCounters]>,
    networks: Box<[NetworkCounters]>,
    drops: [Counter; DropReason::COUNT],
    /// Packets handed to the exception path (the kernel, via the control side).
    pub exception: Counter,
    /// Live connection-tracking entries evicted to make room (a full flow-table window).
    pub flow_evictions: Counter,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            ports: (0..MAX_PORTS).map(|_| PortCounters::default()).collect(),
            networks: (0..MAX_NETWORKS)
                .map(|_| NetworkCounters::default())
                .collect(),
            drops: core::array::from_fn(|_| Counter::default()),
            exception: Counter::default(),
            flow_evictions: Counter::default(),
        }
    }
}

impl Counters {
    /// Counters of `port`; ports beyond [`MAX_PORTS`] share the last slot.
    #[inline]
    pub fn port(&self, port: u16) -> &PortCounters {
        &self.ports[(port as usize).min(MAX_PORTS - 1)]
    }
    /// Counters of the network in `slot`; slots beyond [`MAX_NETWORKS`] share the last.
    #[inline]
    pub fn network(&self, slot: u16) -> &NetworkCounters {
        &self.networks[(slot as usize).min(MAX_NETWORKS - 1)]
    }
    /// Counts `n` drops for `reason`.
    #[inline]
    pub fn count_drop(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].add(n)
    }
    /// Drops so far for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].get()
    }
    /// Every non-zero drop counter, by name.
    pub fn nonzero_drops(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.drops(*r)))
            .filter(|(_, n)| *n != 0)
            .collect()
    }
    /// Sum of all drop counters.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(Counter::get).sum()
    }
}

/// The single-writer counter is the one concurrency primitive written here (everything else
/// comes from arc-swap or `std`): model-checked with loom.
/// `RUSTFLAGS="--cfg loom" cargo test -p swarmgate-dataplane --lib loom`
#[cfg(all(test, loom))]
mod loom_tests {
    use super::Counter;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn reader_sees_monotonic_whole_values() {
        loom::model(|| {
            let c = Arc::new(Counter::default());
            let w = c.clone();
            let writer = thread::spawn(move || {
                w.add(1);
                w.add(2);
                w.add(3);
            });
            let a = c.get();
            let b = c.get();
            assert!(b >= a, "went backwards: {a} then {b}");
            assert!(
                [0, 1, 3, 6].contains(&a) && [0, 1, 3, 6].contains(&b),
                "torn value {a} / {b}"
            );
            writer.join().unwrap();
            assert_eq!(c.get(), 6);
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_own_counter() {
        let c = Counters::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            c.count_drop(*r, i as u64 + 1);
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(c.drops(*r), i as u64 + 1);
        }
        let names: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), DropReason::COUNT);
    }

    #[test]
    fn readers_see_progress_from_other_threads() {
        let c = std::sync::Arc::new(Counters::default());
        let w = c.clone();
        let t = std::thread::spawn(move || {
            for _ in 0..10_000 {
                w.port(3).rx_packets.add(1);
            }
        });
        t.join().unwrap();
        assert_eq!(c.port(3).rx_packets.get(), 10_000);
    }
}
