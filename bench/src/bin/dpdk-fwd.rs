//! The forwarding ceiling of the full worker loop on DPDK ports, per core: `rx_burst` from
//! an in-memory `net_ring` port → the data-plane pipeline → `tx_burst` to another, with real
//! mbufs from a mempool — everything a worker does, minus a NIC. Frames are injected into
//! the input ring and drained from the output ring outside the measured time; only
//! `WorkerLoop::poll_once` is timed.
//!
//! `cargo run --release -p swarmgate-bench --bin dpdk-fwd [seconds-per-case]`

use std::time::{Duration, Instant};

use swarmgate_bench::{Path, Workload};
use swarmgate_dataplane::{Counters, Next, PacketBuf, BURST};
use swarmgate_ffi::{Eal, Mempool, Port, RxBurst, RxQueue, TxBatch, TxQueue};
use swarmgate_gateway::worker::{WorkerLoop, WorkerQueues};
use swarmgate_tests::{PLAIN_PORT, SECURE_PORT, UNDERLAY_PORT};

const BATCH_BURSTS: usize = 4;

struct Q {
    rx: Option<RxQueue>,
    tx: Option<TxQueue>,
}

fn main() -> anyhow::Result<()> {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let prefix = format!("sg-fwd-{}", std::process::id());
    // Port ids follow the fixtures: 0 underlay, 1 plain network, 2 encrypted network.
    let eal = Eal::init(&swarmgate_bench::eal_args(
        &prefix,
        &["net_ring0", "net_ring1", "net_ring2"],
    ))?;
    let pool = Mempool::new(&eal, "fwd-pool", 16383, 256, 2048 + 128)?;
    let mut ports = Vec::new();
    let mut queues: Vec<Q> = Vec::new();
    for name in ["net_ring0", "net_ring1", "net_ring2"] {
        let mut p = Port::by_name(&eal, name)?;
        p.configure(1, 1024, &pool)?;
        let (rx, tx) = p.queues().pop().expect("one queue");
        p.start()?;
        assert_eq!(p.id() as usize, queues.len());
        queues.push(Q {
            rx: Some(rx),
            tx: Some(tx),
        });
        ports.push(p);
    }
    println!("| path | inner frame | Mpps | inner Gb/s | ns/packet |");
    println!("|---|---|---|---|---|");
    for path in [Path::Encap, Path::Decap, Path::EncapEsp, Path::EspDecap] {
        for size in [64usize, 512, 1400] {
            let w = Workload::new(path, size);
            let (input, output) = match path {
                Path::Encap => (PLAIN_PORT, UNDERLAY_PORT),
                Path::EncapEsp => (SECURE_PORT, UNDERLAY_PORT),
                Path::Decap => (UNDERLAY_PORT, PLAIN_PORT),
                Path::EspDecap => (UNDERLAY_PORT, SECURE_PORT),
                Path::MaglevDnatEncap | Path::RoutedVipDnat | Path::PublishedDnat => {
                    unreachable!("not in the list above")
                }
            };
            assert!(matches!(w.expect, Next::Tx(p) if p == output));
            // The worker polls the input port and sends on the output port; the harness keeps
            // the other ends: it injects through the input's tx queue (net_ring loops a port's
            // tx back to its rx) and drains the output's rx queue.
            let mut inject = queues[input as usize].tx.take().unwrap();
            let mut drain = queues[output as usize].rx.take().unwrap();
            let wq = WorkerQueues {
                rx: vec![queues[input as usize].rx.take().unwrap()],
                tx: vec![queues[output as usize].tx.take().unwrap()],
            };
            let counters = std::sync::Arc::new(Counters::default());
            let mut worker = WorkerLoop::new(wq, counters.clone());
            let tables = w.node.tables.clone();
            let mut next_frame = 0usize;
            let (mut pkts, mut busy, mut out) = (0u64, Duration::ZERO, 0u64);
            let end = Instant::now() + Duration::from_secs_f64(secs);
            while Instant::now() < end {
                // Inject BATCH_BURSTS bursts (not timed).
                for _ in 0..BATCH_BURSTS {
                    let mut b = TxBatch::default();
                    for _ in 0..BURST {
                        if next_frame == w.pool.len() {
                            next_frame = 0;
                            if path == Path::EspDecap {
                                // Fresh replay windows for the reused sequence numbers.
                                let q = worker.into_queues();
                                worker = WorkerLoop::new(q, counters.clone());
                            }
                        }
                        let mut m = pool.alloc().expect("mbuf");
                        m.append(w.pool[next_frame].len())
                            .unwrap()
                            .copy_from_slice(&w.pool[next_frame]);
                        next_frame += 1;
                        let _ = b.push(m);
                    }
                    inject.tx(&mut b);
                    assert!(b.is_empty(), "input ring full");
                }
                let t0 = Instant::now();
                for _ in 0..BATCH_BURSTS {
                    pkts += worker.poll_once(&tables) as u64;
                }
                busy += t0.elapsed();
                let mut r = RxBurst::default();
                while drain.rx(&mut r) > 0 {
                    out += r.len() as u64;
                    r.drain().for_each(drop);
                }
            }
            assert_eq!(
                out,
                pkts,
                "{} {size}: {} in, {} out; drops {:?}",
                path.name(),
                pkts,
                out,
                counters.nonzero_drops()
            );
            let mpps = pkts as f64 / busy.as_secs_f64() / 1e6;
            println!(
                "| {} | {size} B | {mpps:.2} | {:.1} | {:.1} |",
                path.name(),
                mpps * size as f64 * 8.0 / 1e3,
                1e3 / mpps
            );
            let back = worker.into_queues();
            let mut rx = back.rx.into_iter();
            let mut tx = back.tx.into_iter();
            queues[input as usize].rx = rx.next();
            queues[output as usize].tx = tx.next();
            queues[input as usize].tx = Some(inject);
            queues[output as usize].rx = Some(drain);
        }
    }
    drop(queues);
    drop(ports);
    drop(pool);
    drop(eal);
    Ok(())
}
