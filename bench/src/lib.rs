//! Workloads shared by the criterion benches (`benches/`) and the callgrind driver
//! (`src/bin/dp-profile.rs`): each prepares bursts of real-shaped frames for one data-plane
//! path, and runs them through a [`Worker`](swarmgate_dataplane::Worker) with buffer
//! preparation kept apart from the measured processing.

use std::net::Ipv4Addr;

use swarmgate_dataplane::{HeapBuf, Next, PacketBuf, BURST};
use swarmgate_tests::frames::{tcp, udp_of_len};
use swarmgate_tests::*;

/// The paths the benchmarks measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Local port → VXLAN → underlay.
    Encap,
    /// Underlay VXLAN → local port.
    Decap,
    /// Local port → VXLAN → ESP → underlay.
    EncapEsp,
    /// Underlay ESP → VXLAN → local port.
    EspDecap,
    /// Local port → Maglev → DNAT → VXLAN → underlay.
    MaglevDnatEncap,
    /// Routed network: local port → VIP → tracked connection → DNAT → local port (the
    /// control plane's networks, established connections).
    RoutedVipDnat,
    /// Underlay → published port → tracked connection → DNAT → the ingress network's local
    /// port (established connections).
    PublishedDnat,
}

impl Path {
    /// Every path.
    pub const ALL: [Path; 7] = [
        Path::Encap,
        Path::Decap,
        Path::EncapEsp,
        Path::EspDecap,
        Path::MaglevDnatEncap,
        Path::RoutedVipDnat,
        Path::PublishedDnat,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Path::Encap => "vxlan_encap",
            Path::Decap => "vxlan_decap",
            Path::EncapEsp => "vxlan_encap_esp",
            Path::EspDecap => "esp_vxlan_decap",
            Path::MaglevDnatEncap => "maglev_dnat_encap",
            Path::RoutedVipDnat => "routed_vip_dnat",
            Path::PublishedDnat => "published_dnat",
        }
    }

    /// Parses a name.
    pub fn from_name(s: &str) -> Option<Path> {
        Path::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// The VIP of the Maglev workload.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

/// A prepared workload: the receiving node, its receive port, and a pool of input frames
/// (distinct ESP sequence numbers for the decrypt path, distinct source ports for Maglev).
pub struct Workload {
    /// The node whose worker is measured.
    pub node: Node,
    /// Port the frames arrive on.
    pub port: u16,
    /// Input frames, used round-robin.
    pub pool: Vec<Vec<u8>>,
    /// What the pipeline must decide for every frame.
    pub expect: Next,
    /// Inner frame length.
    pub inner_len: usize,
    path: Path,
    next_frame: usize,
}

impl Workload {
    /// Builds the workload for `path` with `inner_len`-byte inner frames (≥ 64).
    pub fn new(path: Path, inner_len: usize) -> Workload {
        let (k, _, _) = keys();
        let plain = |from: u8, to: u8| {
            udp_of_len(
                mac_of(plain_ep(from)),
                mac_of(plain_ep(to)),
                plain_ep(from),
                plain_ep(to),
                inner_len,
            )
        };
        let secure = |from: u8, to: u8| {
            udp_of_len(
                mac_of(secure_ep(from)),
                mac_of(secure_ep(to)),
                secure_ep(from),
                secure_ep(to),
                inner_len,
            )
        };
        let mut a = Node::new(1, &[k.clone()]);
        let (node, port, pool, expect) = match path {
            Path::Encap => (a, PLAIN_PORT, vec![plain(1, 2)], Next::Tx(UNDERLAY_PORT)),
            Path::EncapEsp => (a, SECURE_PORT, vec![secure(1, 2)], Next::Tx(UNDERLAY_PORT)),
            Path::Decap => {
                let (_, wire) = a.run1(PLAIN_PORT, &plain(1, 2));
                (
                    Node::new(2, &[k]),
                    UNDERLAY_PORT,
                    vec![wire],
                    Next::Tx(PLAIN_PORT),
                )
            }
            Path::EspDecap => {
                // 64 bursts' worth of distinct sequence numbers; the measuring loop swaps in a
                // fresh worker (fresh replay windows) each time the pool wraps.
                let f = secure(1, 2);
                let pool = (0..64 * BURST).map(|_| a.run1(SECURE_PORT, &f).1).collect();
                (
                    Node::new(2, &[k]),
                    UNDERLAY_PORT,
                    pool,
                    Next::Tx(SECURE_PORT),
                )
            }
            Path::MaglevDnatEncap => {
                let backends: Vec<Ipv4Addr> = (2..=9).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
                a.publish(&[k], |t| {
                    let vni = swarmgate_dataplane::wire::Vni::new(PLAIN_VNI).unwrap();
                    for b in &backends[1..] {
                        t.add_remote_endpoint(vni, *b, mac_of(*b), vtep(2)).unwrap();
                    }
                    t.add_vip(vni, vip_service(VIP, 80, 8080, &backends), mac_of(VIP))
                        .unwrap();
                });
                let payload_len = inner_len.saturating_sub(14 + 20 + 20);
                let pool = (0..BURST as u16)
                    .map(|i| {
                        tcp(
                            mac_of(plain_ep(1)),
                            mac_of(VIP),
                            plain_ep(1),
                            VIP,
                            40000 + i,
                            80,
                            &vec![0x61; payload_len],
                        )
                    })
                    .collect();
                (a, PLAIN_PORT, pool, Next::Tx(UNDERLAY_PORT))
            }
            Path::RoutedVipDnat | Path::PublishedDnat => {
                use swarmgate_dataplane::tables::Router;
                let router = Router {
                    mac: mac_of(Ipv4Addr::new(10, 0, 0, 254)),
                    gateway: Ipv4Addr::new(10, 0, 0, 254),
                };
                let backends: Vec<Ipv4Addr> =
                    (10..=17).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
                a.publish(&[k], |t| {
                    let vni = swarmgate_dataplane::wire::Vni::new(PLAIN_VNI).unwrap();
                    t.set_router(vni, router).unwrap();
                    for b in &backends {
                        t.add_local_host(vni, *b, mac_of(*b)).unwrap();
                    }
                    t.add_vip(vni, vip_service(VIP, 80, 80, &backends), router.mac)
                        .unwrap();
                    t.add_ingress(vni, vip_service(vtep(1), 8080, 80, &backends))
                        .unwrap();
                });
                let payload_len = inner_len.saturating_sub(14 + 20 + 20);
                let client = Ipv4Addr::new(192, 168, 50, 77);
                let pool = (0..BURST as u16)
                    .map(|i| {
                        if path == Path::RoutedVipDnat {
                            tcp(
                                mac_of(plain_ep(1)),
                                router.mac,
                                plain_ep(1),
                                VIP,
                                40000 + i,
                                80,
                                &vec![0x61; payload_len],
                            )
                        } else {
                            tcp(
                                underlay_mac(3),
                                underlay_mac(1),
                                client,
                                vtep(1),
                                40000 + i,
                                8080,
                                &vec![0x61; payload_len],
                            )
                        }
                    })
                    .collect();
                let port = if path == Path::RoutedVipDnat {
                    PLAIN_PORT
                } else {
                    UNDERLAY_PORT
                };
                (a, port, pool, Next::Tx(PLAIN_PORT))
            }
        };
        Workload {
            node,
            port,
            pool,
            expect,
            inner_len,
            path,
            next_frame: 0,
        }
    }

    /// `n` buffers sized like DPDK mbufs (2048 bytes of data room after 128 of headroom).
    pub fn buffers(n: usize) -> Vec<HeapBuf> {
        (0..n).map(|_| HeapBuf::new(128 + 2048, 128)).collect()
    }

    /// Fills `bufs` with the next frames of the pool (not part of any measurement). When
    /// the ESP-decrypt pool wraps, the worker is replaced so replay windows start fresh.
    pub fn refill(&mut self, bufs: &mut [HeapBuf]) {
        for b in bufs {
            if self.next_frame == self.pool.len() {
                self.next_frame = 0;
                if self.path == Path::EspDecap {
                    self.node.worker =
                        swarmgate_dataplane::Worker::new(self.node.worker.counters().clone());
                }
            }
            assert!(b.reset(&self.pool[self.next_frame]));
            self.next_frame += 1;
        }
    }

    /// Runs the pipeline over `bufs` in bursts of [`BURST`] (the measured part). Never
    /// inlined, so callgrind can count exactly this function.
    #[inline(never)]
    pub fn process(&mut self, bufs: &mut [HeapBuf], next: &mut [Next]) {
        let n = &mut self.node;
        for (b, x) in bufs.chunks_mut(BURST).zip(next.chunks_mut(BURST)) {
            n.worker.process(&n.tables, self.port, b, x);
        }
    }

    /// Panics unless every decision is the expected one.
    pub fn check(&self, next: &[Next]) {
        assert!(
            next.iter().all(|n| *n == self.expect),
            "unexpected decisions: {:?}",
            &next[..4.min(next.len())]
        );
    }

    /// Bytes the ESP path encrypts per packet for this inner length (UDP + VXLAN + inner
    /// frame + padding + trailer), for the raw-seal comparison.
    pub fn esp_plaintext_len(inner_len: usize) -> usize {
        let l = 16 + inner_len;
        l + (4 - (l + 2) % 4) % 4 + 2
    }
}

/// EAL arguments for a benchmark process: no hugepages, no PCI, one lcore, its own file
/// prefix, and the given virtual devices.
pub fn eal_args(prefix: &str, vdevs: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--no-huge",
        "-m",
        "512",
        "--no-pci",
        "--iova-mode=va",
        "--log-level=lib.eal:error",
        "-l",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(["--file-prefix".to_string(), prefix.to_string()]);
    a.extend(vdevs.iter().map(|v| format!("--vdev={v}")));
    a
}

/// Reads the data of a buffer (keeps the compiler from discarding work).
pub fn touch(bufs: &[HeapBuf]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// Send-time stamps in a frame's last 16 bytes — a magic number ("sgbench!") and the time in
/// nanoseconds — read back wherever the frame comes out, encapsulated or not (VXLAN keeps
/// the inner frame's end at the outer frame's end).
pub mod stamp {
    /// The stamp's magic number ("sgbench!").
    pub const MAGIC: u64 = u64::from_be_bytes(*b"sgbench!");

    /// Writes the stamp `ns` into the last 16 bytes of `frame` (at least 16 bytes long).
    #[inline]
    pub fn write(frame: &mut [u8], ns: u64) {
        let l = frame.len();
        frame[l - 16..l - 8].copy_from_slice(&MAGIC.to_be_bytes());
        frame[l - 8..].copy_from_slice(&ns.to_be_bytes());
    }

    /// The stamp at the end of `frame`, if it carries one.
    #[inline]
    pub fn read(frame: &[u8]) -> Option<u64> {
        let t = frame.get(frame.len().checked_sub(16)?..)?;
        if u64::from_be_bytes(t[..8].try_into().ok()?) != MAGIC {
            return None;
        }
        Some(u64::from_be_bytes(t[8..].try_into().ok()?))
    }
}

/// A rate limiter for generators: how many frames may leave by a given time, at `rate`
/// Mpps from the start. One that fell behind (the port pushed back) does not catch up
/// faster than the rate plus one burst.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    rate_mpps: f64,
    burst: u64,
    paced: u64,
}

impl Pacer {
    /// A pacer at `rate_mpps` (0: unlimited) that lets at most `burst` frames catch up.
    pub fn new(rate_mpps: f64, burst: usize) -> Pacer {
        Pacer {
            rate_mpps,
            burst: burst as u64,
            paced: 0,
        }
    }

    /// How many frames may leave now, `elapsed_secs` after the start.
    #[inline]
    pub fn allowed(&mut self, elapsed_secs: f64) -> usize {
        if self.rate_mpps <= 0.0 {
            return usize::MAX;
        }
        let due = (elapsed_secs * self.rate_mpps * 1e6) as u64;
        self.paced = self.paced.max(due.saturating_sub(self.burst));
        due.saturating_sub(self.paced) as usize
    }

    /// Records `n` frames sent.
    #[inline]
    pub fn sent(&mut self, n: u64) {
        self.paced += n;
    }
}

/// The generator's side of a latency run: adds to `batch` (up to `max` frames, or until it is
/// full or the pool is empty) copies of `frames`, round-robin from `*next`, each stamped with
/// the send time `at_ns`. Returns how many it added. Frames must fit an mbuf of `pool`.
pub fn fill_stamped(
    batch: &mut swarmgate_ffi::TxBatch,
    pool: &swarmgate_ffi::Mempool,
    frames: &[Vec<u8>],
    next: &mut usize,
    max: usize,
    at_ns: u64,
) -> usize {
    let mut added = 0;
    while !batch.is_full() && added < max {
        let Some(mut m) = pool.alloc() else { break };
        let f = &frames[*next % frames.len()];
        *next += 1;
        let Some(buf) = m.append(f.len()) else { break };
        buf.copy_from_slice(f);
        stamp::write(buf, at_ns);
        let _ = batch.push(m);
        added += 1;
    }
    added
}

/// The sink's side: frees the frames of `burst`, recording in `hist` the latency (to
/// `now_ns`) of each stamped inside `window`. Returns how many were.
pub fn sink_stamped(
    burst: &mut swarmgate_ffi::RxBurst,
    window: std::ops::Range<u64>,
    now_ns: u64,
    hist: &mut hdrhistogram::Histogram<u64>,
) -> u64 {
    let mut got = 0;
    for m in burst.drain() {
        if let Some(at) = stamp::read(m.data()).filter(|at| window.contains(at)) {
            got += 1;
            let _ = hist.record(now_ns.saturating_sub(at).max(1));
        }
    }
    got
}

/// A latency histogram (nanoseconds) as JSON, in microseconds: samples, min, p50, p99,
/// p99.9, max; `null` when empty.
pub fn latency_json(hist: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    if hist.is_empty() {
        return serde_json::Value::Null;
    }
    let us = |v: u64| v as f64 / 1e3;
    serde_json::json!({
        "samples": hist.len(),
        "min": us(hist.min()),
        "p50": us(hist.value_at_quantile(0.50)),
        "p99": us(hist.value_at_quantile(0.99)),
        "p999": us(hist.value_at_quantile(0.999)),
        "max": us(hist.max()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_foreign_frames_have_none() {
        let mut f = vec![0u8; 64];
        assert_eq!(stamp::read(&f), None);
        stamp::write(&mut f, 123_456_789);
        assert_eq!(stamp::read(&f), Some(123_456_789));
        assert_eq!(stamp::read(&f[..15]), None);
    }

    #[test]
    fn the_pacer_never_lets_more_than_the_rate_plus_one_burst() {
        let mut p = Pacer::new(1.0, 32);
        // 1 ms at 1 Mpps: 1000 due, of which only one burst may go at once after a stall.
        assert_eq!(p.allowed(0.001), 32);
        p.sent(32);
        assert_eq!(p.allowed(0.001), 0);
        let mut q = Pacer::new(1.0, 32);
        assert_eq!(q.allowed(0.0000101), 10);
        assert_eq!(Pacer::new(0.0, 32).allowed(5.0), usize::MAX);
    }
}
