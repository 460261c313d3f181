//! Multi-core scaling and latency of the full worker loop on in-memory DPDK ports
//! (`net_ring`): the two measurements `dpdk-fwd` (one worker, its harness inline) cannot
//! make.
//!
//! `dpdk-scale scale --workers 1,2 --path vxlan_encap --size 64 --seconds 2`
//!
//! N workers run at once, as the gateway starts them: each a thread pinned to its own CPU
//! (the first N this process may use)
//! and registered with EAL (so it has a per-lcore mempool cache), with its own
//! `WorkerLoop`, flow table and counters, polling queue i of the input port and sending on
//! queue i of the output port (a `net_ring` port has 16 queue pairs; queue i's transmit
//! loops back to its receive). They share what the gateway's workers share: one tables
//! snapshot, one mempool and, on `vxlan_encap_esp`, the outbound SA and its sequence
//! number. Each worker injects into its input queue and drains its output queue outside
//! its timed part, as `dpdk-fwd` does, and times only `WorkerLoop::poll_once`; all run over
//! the same wall-clock window. A worker's rate is its packets over its busy time; the
//! total is their sum, and the scaling is the total over N times the one-worker rate (the
//! first run, `--workers` starts with 1).
//!
//! `dpdk-scale latency --path vxlan_encap --size 64 --load 0.5 --seconds 2`
//!
//! One worker polls on the second allowed CPU as a gateway worker does (`worker::run`, pure
//! poll mode); the main thread, on the first, is generator and sink. It first sends unpaced for `--seconds` to
//! find the rate this pair delivers at saturation, then paced at `--load` times that rate,
//! with a send-time stamp in each frame's last 16 bytes; the sink records each frame's
//! time through the worker (rings in and out included) in an hdrhistogram. With two CPUs
//! the generator, not the worker, may be what saturates: the JSON says both rates.
//!
//! One JSON object per line on stdout; a markdown table row per case on stderr.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use swarmgate_bench::{fill_stamped, latency_json, sink_stamped, Pacer, Path, Workload};
use swarmgate_dataplane::tables::Tables;
use swarmgate_dataplane::{Counters, DropReason, Next, PacketBuf, BURST};
use swarmgate_ffi::{Eal, Mempool, Port, RxBurst, RxQueue, TxBatch, TxQueue};
use swarmgate_gateway::worker::{self, LoopConfig, WorkerLoop, WorkerQueues};
use swarmgate_tests::{PLAIN_PORT, SECURE_PORT, UNDERLAY_PORT};

/// Bursts injected per timed round, per worker.
const BATCH_BURSTS: usize = 4;
/// Queue pairs of a `net_ring` port (`RTE_PMD_RING_MAX_RX_RINGS`).
const RING_QUEUES: usize = 16;

#[derive(Parser, Debug)]
#[command(about = "Multi-core scaling and latency of the worker loop on in-memory ports")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// N workers at once, each timed over its own polls.
    Scale {
        /// Worker counts to measure, one run each (at most one per CPU).
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        workers: Vec<usize>,
        /// vxlan_encap, vxlan_decap or vxlan_encap_esp.
        #[arg(long, default_value = "vxlan_encap")]
        path: String,
        /// Inner frame size in bytes (64-1400).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// One polling worker; a generator and sink on another CPU at a fraction of saturation.
    Latency {
        /// vxlan_encap or vxlan_decap (an encrypted frame's stamp cannot be read back).
        #[arg(long, default_value = "vxlan_encap")]
        path: String,
        /// Inner frame size in bytes (64-1400).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// The offered load, as a fraction of the saturation rate (0-1].
        #[arg(long, default_value_t = 0.5)]
        load: f64,
        /// Seconds per run (the saturation run and the paced one).
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
}

fn main() {
    let a = Args::parse();
    if let Err(e) = run(a.cmd) {
        eprintln!("dpdk-scale: {e:#}");
        std::process::exit(2);
    }
}

/// The CPUs this process may run on (`Cpus_allowed_list` of `/proc/self/status`, e.g.
/// `0-3,8`), in order: workers and the generator are pinned to these.
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list in /proc/self/status")?;
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
        cpus.extend(a..=b.min(a + 4096));
    }
    anyhow::ensure!(!cpus.is_empty(), "no CPU allowed");
    Ok(cpus)
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    let allowed = allowed_cpus()?;
    let cpus = allowed.len();
    let (path, size, seconds) = match &cmd {
        Cmd::Scale {
            path,
            size,
            seconds,
            ..
        }
        | Cmd::Latency {
            path,
            size,
            seconds,
            ..
        } => (path.as_str(), *size, *seconds),
    };
    let path = Path::from_name(path)
        .filter(|p| matches!(p, Path::Encap | Path::Decap | Path::EncapEsp))
        .with_context(|| {
            format!("path {path:?}: vxlan_encap, vxlan_decap or vxlan_encap_esp")
        })?;
    if !(64..=1400).contains(&size) {
        bail!("--size {size}: between 64 and 1400 bytes");
    }
    if !(seconds > 0.0 && seconds <= 600.0) {
        bail!("--seconds {seconds}: above 0 and at most 600");
    }
    let queues = match &cmd {
        Cmd::Scale { workers, .. } => {
            let most = workers.iter().copied().max().unwrap_or(0);
            if workers.first() != Some(&1) {
                bail!("--workers {workers:?}: must start with 1, the rate the scaling is measured against");
            }
            if workers.contains(&0) || most > cpus.min(RING_QUEUES) {
                bail!(
                    "--workers {workers:?}: 1 to {} (one per CPU; this machine has {cpus})",
                    cpus.min(RING_QUEUES)
                );
            }
            most
        }
        Cmd::Latency { load, .. } => {
            if !(*load > 0.0 && *load <= 1.0) {
                bail!("--load {load}: a fraction of the saturation rate, above 0 and at most 1");
            }
            if path == Path::EncapEsp {
                bail!("latency: the stamp of an encrypted frame cannot be read back; use vxlan_encap or vxlan_decap");
            }
            if cpus < 2 {
                bail!("latency: needs two CPUs (the worker's and the generator's), this machine has {cpus}");
            }
            1
        }
    };

    let prefix = format!("sg-scale-{}", std::process::id());
    // Port ids follow the fixtures: 0 underlay, 1 plain network, 2 encrypted network.
    let names = ["net_ring0", "net_ring1", "net_ring2"];
    let mut eal_args = swarmgate_bench::eal_args(&prefix, &names);
    if let Some(l) = eal_args.iter().position(|a| a == "-l") {
        // The main lcore (the generator's thread in `latency`) is the first allowed CPU.
        eal_args[l + 1] = allowed[0].to_string();
    }
    let eal = Eal::init(&eal_args)?;
    let pool = Mempool::new(&eal, "scale-pool", 32767, 256, 2048 + 128)?;
    let mut ports = Vec::new();
    // queues[port][q] = (rx, tx)
    let mut qs: Vec<Vec<(Option<RxQueue>, Option<TxQueue>)>> = Vec::new();
    for name in names {
        let mut p = Port::by_name(&eal, name)?;
        p.configure(queues as u16, 1024, &pool)?;
        let q = p
            .queues()
            .into_iter()
            .map(|(r, t)| (Some(r), Some(t)))
            .collect();
        p.start()?;
        assert_eq!(p.id() as usize, qs.len());
        qs.push(q);
        ports.push(p);
    }
    let w = Workload::new(path, size);
    let (input, output) = match path {
        Path::Encap => (PLAIN_PORT, UNDERLAY_PORT),
        Path::EncapEsp => (SECURE_PORT, UNDERLAY_PORT),
        Path::Decap => (UNDERLAY_PORT, PLAIN_PORT),
        _ => unreachable!("refused above"),
    };
    anyhow::ensure!(matches!(w.expect, Next::Tx(p) if p == output));
    let frames = Arc::new(w.pool.clone());
    let tables: Arc<Tables> = w.node.tables.clone();
    // Worker i's queues: it polls input queue i and sends on output queue i; the harness
    // keeps the other ends (input queue i's transmit, output queue i's receive).
    let mut take = |i: usize| Lanes {
        inject: qs[input as usize][i].1.take().expect("once"),
        drain: qs[output as usize][i].0.take().expect("once"),
        wq: WorkerQueues {
            rx: vec![qs[input as usize][i].0.take().expect("once")],
            tx: vec![qs[output as usize][i].1.take().expect("once")],
        },
    };
    let mut lanes: Vec<Lanes> = (0..queues).map(&mut take).collect();

    match cmd {
        Cmd::Scale { workers, .. } => {
            let mut one = None;
            for n in workers {
                let (rates, lanes_back) =
                    scale(&pool, &tables, &frames, lanes, &allowed[..n], seconds)?;
                lanes = lanes_back;
                let total: f64 = rates.iter().sum();
                // The first run is the one-worker run (checked above).
                let base = *one.get_or_insert(total);
                let scaling = total / (base * n as f64);
                eprintln!(
                    "| {} | {size} B | {n} | {total:.2} | {:.2} | {:.2} |",
                    path.name(),
                    total / n as f64,
                    scaling
                );
                println!(
                    "{}",
                    serde_json::json!({
                        "mode": "scale", "path": path.name(), "size": size, "workers": n,
                        "seconds": seconds, "per_worker_mpps": rates, "total_mpps": total,
                        "per_core_mpps": total / n as f64, "scaling": scaling,
                    })
                );
            }
        }
        Cmd::Latency { load, .. } => {
            let lane = lanes.pop().expect("one lane");
            let cpus = (allowed[0], allowed[1]);
            let epoch = Instant::now();
            let run = |lane, rate| latency(&pool, &tables, &frames, lane, cpus, epoch, rate, seconds);
            let (sat, lane) = run(lane, 0.0)?;
            anyhow::ensure!(sat.delivered_mpps > 0.0, "nothing came through at saturation");
            let rate = load * sat.delivered_mpps;
            let (paced, lane) = run(lane, rate)?;
            lanes.push(lane);
            let lat = latency_json(&paced.hist);
            eprintln!(
                "| {} | {size} B | {:.2} | {:.2} | {:.2} | {} |",
                path.name(),
                sat.offered_mpps,
                sat.delivered_mpps,
                paced.delivered_mpps,
                lat
            );
            println!(
                "{}",
                serde_json::json!({
                    "mode": "latency", "path": path.name(), "size": size, "seconds": seconds,
                    "saturation": {"offered_mpps": sat.offered_mpps, "delivered_mpps": sat.delivered_mpps,
                                   "latency_us": latency_json(&sat.hist)},
                    "load": load, "rate_mpps": rate,
                    "paced": {"offered_mpps": paced.offered_mpps, "delivered_mpps": paced.delivered_mpps,
                              "latency_us": lat},
                })
            );
        }
    }
    drop(lanes);
    drop(qs);
    drop(ports);
    drop(pool);
    drop(eal);
    Ok(())
}

/// One worker's queues and the harness's other ends of them.
struct Lanes {
    inject: TxQueue,
    drain: RxQueue,
    wq: WorkerQueues,
}

/// Runs `n` workers at once for `secs`; returns each one's Mpps (packets over the time spent
/// in `poll_once`) and the lanes back.
fn scale(
    pool: &Mempool,
    tables: &Arc<Tables>,
    frames: &Arc<Vec<Vec<u8>>>,
    mut lanes: Vec<Lanes>,
    cpus: &[usize],
    secs: f64,
) -> anyhow::Result<(Vec<f64>, Vec<Lanes>)> {
    let n = cpus.len();
    let rest = lanes.split_off(n);
    let barrier = Barrier::new(n);
    let results: Vec<anyhow::Result<(f64, Lanes)>> = std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .into_iter()
            .zip(cpus.iter().copied())
            .map(|(lane, cpu)| {
                let barrier = &barrier;
                s.spawn(move || scale_worker(cpu, pool, tables, frames, lane, barrier, secs))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a worker panicked"))))
            .collect()
    });
    let mut rates = Vec::new();
    let mut back = Vec::new();
    for r in results {
        let (rate, lane) = r?;
        rates.push(rate);
        back.push(lane);
    }
    back.extend(rest);
    Ok((rates, back))
}

fn scale_worker(
    cpu: usize,
    pool: &Mempool,
    tables: &Tables,
    frames: &[Vec<u8>],
    lane: Lanes,
    barrier: &Barrier,
    secs: f64,
) -> anyhow::Result<(f64, Lanes)> {
    // Every worker reaches the barrier, even one that failed to start (the others would
    // wait for it forever); it reports its failure after.
    let ready = swarmgate_ffi::pin_current_thread(cpu)
        .and_then(|()| swarmgate_ffi::register_thread())
        .with_context(|| format!("starting the worker on CPU {cpu}"));
    let Lanes {
        mut inject,
        mut drain,
        wq,
    } = lane;
    let counters = Arc::new(Counters::default());
    let mut worker = WorkerLoop::new(wq, counters.clone());
    let (mut pkts, mut busy, mut out, mut k) = (0u64, Duration::ZERO, 0u64, 0usize);
    let mut r = RxBurst::default();
    barrier.wait();
    ready?;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        for _ in 0..BATCH_BURSTS {
            let mut b = TxBatch::default();
            for _ in 0..BURST {
                let f = &frames[k % frames.len()];
                k += 1;
                let mut m = pool.alloc().context("mempool empty")?;
                m.append(f.len()).context("mbuf room")?.copy_from_slice(f);
                let _ = b.push(m);
            }
            inject.tx(&mut b);
            anyhow::ensure!(b.is_empty(), "input ring full");
        }
        let t0 = Instant::now();
        for _ in 0..BATCH_BURSTS {
            pkts += worker.poll_once(tables) as u64;
        }
        busy += t0.elapsed();
        while drain.rx(&mut r) > 0 {
            out += r.len() as u64;
            r.drain().for_each(drop);
        }
    }
    anyhow::ensure!(
        out == pkts,
        "worker on CPU {cpu}: {pkts} in, {out} out; drops {:?}",
        counters.nonzero_drops()
    );
    let lane = Lanes {
        inject,
        drain,
        wq: worker.into_queues(),
    };
    Ok((pkts as f64 / busy.as_secs_f64() / 1e6, lane))
}

/// What one generator run measured.
struct Measured {
    offered_mpps: f64,
    delivered_mpps: f64,
    hist: Histogram<u64>,
}

/// One worker polling on CPU `cpus.1` while this thread (pinned to `cpus.0`) sends at
/// `rate` Mpps (0: as fast as the input ring takes frames) for `secs` after half a second
/// of warm-up, stamping each frame with its time since `epoch`, and sinks what comes out.
/// Runs with one `epoch` have disjoint windows, so a frame left in a ring by one run is
/// never counted by the next.
#[allow(clippy::too_many_arguments)]
fn latency(
    pool: &Mempool,
    tables: &Arc<Tables>,
    frames: &[Vec<u8>],
    lane: Lanes,
    cpus: (usize, usize),
    epoch: Instant,
    rate: f64,
    secs: f64,
) -> anyhow::Result<(Measured, Lanes)> {
    swarmgate_ffi::pin_current_thread(cpus.0)
        .with_context(|| format!("pinning the generator to CPU {}", cpus.0))?;
    let Lanes {
        mut inject,
        mut drain,
        wq,
    } = lane;
    let stop = Arc::new(AtomicBool::new(false));
    let snapshot = Arc::new(ArcSwap::new(tables.clone()));
    let counters = Arc::new(Counters::default());
    let w = WorkerLoop::new(wq, counters.clone());
    let cfg = LoopConfig {
        idle_polls: 0,
        idle_sleep: Duration::ZERO,
    };
    let (started_tx, started) = std::sync::mpsc::channel();
    let worker = {
        let (snapshot, stop) = (snapshot.clone(), stop.clone());
        std::thread::Builder::new()
            .name("sg-worker-0".into())
            .spawn(move || {
                let ready = swarmgate_ffi::pin_current_thread(cpus.1)
                    .and_then(|()| swarmgate_ffi::register_thread().map(|_| ()))
                    .map_err(|e| format!("starting the worker on CPU {}: {e}", cpus.1));
                let ok = ready.is_ok();
                let _ = started_tx.send(ready);
                // A worker that could not start hands its loop back without polling.
                if !ok {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                worker::run(w, snapshot, stop, cfg, epoch)
            })?
    };
    let ready = started
        .recv()
        .unwrap_or_else(|_| Err("the worker ended before it started".into()));
    if let Err(e) = ready {
        let _ = worker.join();
        bail!(e);
    }
    let ns = |t: Instant| t.duration_since(epoch).as_nanos() as u64;
    let start = Instant::now();
    // Half a second of warm-up (caches, the worker's first polls), then the window.
    let w0 = ns(start + Duration::from_millis(500));
    let w1 = w0 + (secs * 1e9) as u64;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut pacer = Pacer::new(rate, BURST);
    let (mut sent, mut received, mut k) = (0u64, 0u64, 0usize);
    let mut batch = TxBatch::default();
    let mut burst = RxBurst::default();
    // The sink empties the output ring each round (a round may come late: the generator's
    // thread shares its CPU with whatever else runs).
    let mut sink = |drain: &mut RxQueue, hist: &mut Histogram<u64>| {
        let mut got = 0;
        while drain.rx(&mut burst) > 0 {
            got += sink_stamped(&mut burst, w0..w1, ns(Instant::now()), hist);
        }
        got
    };
    loop {
        let now = Instant::now();
        let at = ns(now);
        if at >= w1 {
            break;
        }
        let allowed = pacer.allowed(now.duration_since(start).as_secs_f64());
        fill_stamped(&mut batch, pool, frames, &mut k, allowed.min(BURST), at);
        let s = inject.tx(&mut batch) as u64;
        pacer.sent(s);
        if at >= w0 {
            sent += s;
        }
        // What the ring did not take is not offered.
        batch.free_all();
        received += sink(&mut drain, &mut hist);
    }
    let drain_end = Instant::now() + Duration::from_millis(200);
    while Instant::now() < drain_end {
        received += sink(&mut drain, &mut hist);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let w = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the worker panicked"))?;
    // What is still in the output ring goes back to the pool (its stamps are this run's).
    let mut rest = RxBurst::default();
    while drain.rx(&mut rest) > 0 {
        rest.drain().for_each(drop);
    }
    // At saturation a full output ring (the sink fell behind) is a drop the sink's rate
    // already shows; any other drop, or that one when paced, is a loss.
    let drops: Vec<_> = counters
        .nonzero_drops()
        .into_iter()
        .filter(|(r, _)| !(rate == 0.0 && *r == DropReason::TxQueueFull.name()))
        .collect();
    anyhow::ensure!(drops.is_empty(), "the worker dropped frames: {drops:?}");
    let lane = Lanes {
        inject,
        drain,
        wq: w.into_queues(),
    };
    Ok((
        Measured {
            offered_mpps: sent as f64 / secs / 1e6,
            delivered_mpps: received as f64 / secs / 1e6,
            hist,
        },
        lane,
    ))
}
