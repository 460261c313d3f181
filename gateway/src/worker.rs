//! One poll-mode worker: run to completion, rx burst → data-plane pipeline → tx burst.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use swarmgate_dataplane::tables::Tables;
use swarmgate_dataplane::{Counters, DropReason, Next, Worker, BURST};
use swarmgate_ffi::{RxBurst, RxQueue, TxBatch, TxQueue};

const NO_SLOT: u8 = u8::MAX;

/// What one worker core polls and sends on.
pub struct WorkerQueues {
    /// One receive queue per port.
    pub rx: Vec<RxQueue>,
    /// One transmit queue per port.
    pub tx: Vec<TxQueue>,
}

/// Settings of the loop.
#[derive(Debug, Clone, Copy)]
pub struct LoopConfig {
    /// After this many empty polls in a row, sleep `idle_sleep` (0: never sleep — pure
    /// poll mode, for dedicated cores).
    pub idle_polls: u32,
    /// How long to sleep when idle.
    pub idle_sleep: Duration,
}

/// Runs until `stop` is set. Tables are read from `tables` once per round of polls; a new
/// snapshot is picked up between bursts without a lock, and arc-swap frees an old one only
/// after every worker has let go of it.
pub fn run(
    mut q: WorkerQueues,
    tables: Arc<ArcSwap<Tables>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    cfg: LoopConfig,
) {
    let mut worker = Worker::new(counters.clone());
    let mut slot = [NO_SLOT; 256];
    let mut tx: Vec<(TxQueue, TxBatch)> = Vec::with_capacity(q.tx.len());
    for t in q.tx.drain(..) {
        slot[t.port() as usize] = tx.len() as u8;
        tx.push((t, TxBatch::default()));
    }
    let mut burst = RxBurst::default();
    let mut single = RxBurst::default();
    let mut next = [Next::Exception; BURST];
    let mut idle = 0u32;

    while !stop.load(Ordering::Relaxed) {
        let t = tables.load();
        let exception = t.underlay.exception_port;
        let mut got = 0;
        for rxq in q.rx.iter_mut() {
            if rxq.rx(&mut burst) == 0 {
                continue;
            }
            // The pipeline handles single-segment packets; chained mbufs are counted drops.
            for m in burst.drain() {
                if m.segments() == 1 {
                    let _ = single.push(m);
                } else {
                    counters.count_drop(DropReason::Unsupported, 1);
                }
            }
            let n = single.len();
            got += n;
            worker.process(&t, rxq.port(), single.as_mut_slice(), &mut next[..n]);
            for (m, d) in single.drain().zip(next[..n].iter()) {
                let port = match *d {
                    Next::Tx(p) => p,
                    Next::Exception => match exception {
                        Some(p) => p,
                        None => continue,
                    },
                    Next::Drop(_) => continue,
                };
                let s = slot[port as usize];
                if s == NO_SLOT {
                    counters.count_drop(DropReason::UnknownPort, 1);
                    continue;
                }
                let (txq, batch) = &mut tx[s as usize];
                if let Err(m) = batch.push(m) {
                    flush(txq, batch, &counters);
                    let _ = batch.push(m);
                }
            }
        }
        for (txq, batch) in tx.iter_mut() {
            flush(txq, batch, &counters);
        }
        if got == 0 {
            idle = idle.saturating_add(1);
            if cfg.idle_polls > 0 && idle >= cfg.idle_polls {
                std::thread::sleep(cfg.idle_sleep);
            }
        } else {
            idle = 0;
        }
    }
}

#[inline]
fn flush(txq: &mut TxQueue, batch: &mut TxBatch, counters: &Counters) {
    if batch.is_empty() {
        return;
    }
    txq.tx(batch);
    let left = batch.free_all();
    if left > 0 {
        counters.count_drop(DropReason::TxQueueFull, left as u64);
    }
}
