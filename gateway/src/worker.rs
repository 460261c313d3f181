//! One poll-mode worker: run to completion, rx burst → data-plane pipeline → tx burst.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// One worker's loop state: its queues, tx batches, and the pipeline.
pub struct WorkerLoop {
    rx: Vec<RxQueue>,
    tx: Vec<(TxQueue, TxBatch)>,
    slot: [u8; 256],
    worker: Worker,
    counters: Arc<Counters>,
    burst: RxBurst,
    single: RxBurst,
    next: [Next; BURST],
}

impl WorkerLoop {
    /// A loop over `q`, counting into `counters`.
    pub fn new(mut q: WorkerQueues, counters: Arc<Counters>) -> WorkerLoop {
        let mut slot = [NO_SLOT; 256];
        let mut tx = Vec::with_capacity(q.tx.len());
        for t in q.tx.drain(..) {
            // Port ids are checked below MAX_PORTS (256) when the gateway opens its ports.
            if let Some(s) = slot.get_mut(t.port() as usize) {
                *s = tx.len() as u8;
                tx.push((t, TxBatch::default()));
            }
        }
        WorkerLoop {
            rx: q.rx,
            tx,
            slot,
            worker: Worker::new(counters.clone()),
            counters,
            burst: RxBurst::default(),
            single: RxBurst::default(),
            next: [Next::Exception; BURST],
        }
    }

    /// Adds the queues of a newly created port (the loop must not be running).
    pub fn add_queues(&mut self, rx: RxQueue, tx: TxQueue) {
        if let Some(s) = self.slot.get_mut(tx.port() as usize) {
            *s = self.tx.len() as u8;
            self.tx.push((tx, TxBatch::default()));
            self.rx.push(rx);
        }
    }

    /// Drops the queues of `port`, which is about to be closed.
    pub fn remove_port(&mut self, port: u16) {
        self.rx.retain(|q| q.port() != port);
        if let Some(i) = self.tx.iter().position(|(q, _)| q.port() == port) {
            self.tx.remove(i);
        }
        self.slot = [NO_SLOT; 256];
        for (i, (q, _)) in self.tx.iter().enumerate() {
            self.slot[q.port() as usize] = i as u8;
        }
    }

    /// Sets the pipeline's clock (seconds since the gateway started).
    #[inline]
    pub fn set_now(&mut self, secs: u32) {
        self.worker.set_now(secs);
    }

    /// Gives the queues back (dropping anything still batched for transmit).
    pub fn into_queues(self) -> WorkerQueues {
        WorkerQueues {
            rx: self.rx,
            tx: self.tx.into_iter().map(|(q, _)| q).collect(),
        }
    }

    /// One round: a burst from every receive queue through the pipeline, then every
    /// transmit batch flushed. Returns the packets received.
    #[inline]
    pub fn poll_once(&mut self, t: &Tables) -> usize {
        let exception = t.underlay.exception_port;
        let mut got = 0;
        for rxq in self.rx.iter_mut() {
            if rxq.rx(&mut self.burst) == 0 {
                continue;
            }
            // The pipeline handles single-segment packets; chained mbufs are counted drops.
            for m in self.burst.drain() {
                if m.segments() == 1 {
                    let _ = self.single.push(m);
                } else {
                    self.counters.count_drop(DropReason::Unsupported, 1);
                }
            }
            let n = self.single.len();
            got += n;
            self.worker.process(
                t,
                rxq.port(),
                self.single.as_mut_slice(),
                &mut self.next[..n],
            );
            for (m, d) in self.single.drain().zip(self.next[..n].iter()) {
                let port = match *d {
                    Next::Tx(p) => p,
                    Next::Exception => match exception {
                        Some(p) => p,
                        None => continue,
                    },
                    Next::Drop(_) => continue,
                };
                let s = self.slot.get(port as usize).copied().unwrap_or(NO_SLOT);
                if s == NO_SLOT {
                    self.counters.count_drop(DropReason::UnknownPort, 1);
                    continue;
                }
                let (txq, batch) = &mut self.tx[s as usize];
                if let Err(m) = batch.push(m) {
                    flush(txq, batch, &self.counters);
                    let _ = batch.push(m);
                }
            }
        }
        for (txq, batch) in self.tx.iter_mut() {
            flush(txq, batch, &self.counters);
        }
        got
    }
}

/// Runs `w` until `stop` is set, then hands it back (queues, flow table and all, so the
/// gateway can add or remove ports and start it again). Tables are read from `tables` once
/// per round of polls; a new snapshot is picked up between bursts without a lock, and
/// arc-swap frees an old one only after every worker has let go of it. `epoch` is the
/// origin of the pipeline's clock.
pub fn run(
    mut w: WorkerLoop,
    tables: Arc<ArcSwap<Tables>>,
    stop: Arc<AtomicBool>,
    cfg: LoopConfig,
    epoch: Instant,
) -> WorkerLoop {
    let mut idle = 0u32;
    let mut round = 0u32;
    while !stop.load(Ordering::Relaxed) {
        // The clock ages tracked flows in whole seconds: reading it every 256 rounds (well
        // under a second even when idle) keeps the time call off most rounds.
        if round % 256 == 0 {
            w.set_now(epoch.elapsed().as_secs() as u32);
        }
        round = round.wrapping_add(1);
        let t = tables.load();
        if w.poll_once(&t) == 0 {
            idle = idle.saturating_add(1);
            if cfg.idle_polls > 0 && idle >= cfg.idle_polls {
                std::thread::sleep(cfg.idle_sleep);
            }
        } else {
            idle = 0;
        }
    }
    w
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
