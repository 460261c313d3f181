//! Per-core data-plane throughput: each path at 64, 512 and 1400-byte inner frames, and
//! in the same run the raw AES-GCM seal rate of the library the ESP path uses, so the
//! ESP/raw ratio is visible. Buffer preparation is excluded from the timings: each
//! measured iteration runs `BATCH` bursts of 32 already-filled buffers (4 × 32 × 2 KiB
//! buffers stay within a core's L2 cache, as a burst does in a poll-mode worker).
//!
//! `cargo bench -p swarmgate-bench --bench dataplane`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use swarmgate_aead::{AesGcm128, IcvLen};
use swarmgate_bench::{touch, Path, Workload};
use swarmgate_dataplane::{Next, BURST};

const BATCH: usize = 4;
const SIZES: [usize; 3] = [64, 512, 1400];

fn paths(c: &mut Criterion) {
    for path in Path::ALL {
        let mut g = c.benchmark_group(path.name());
        for size in SIZES {
            let mut w = Workload::new(path, size);
            let mut bufs = Workload::buffers(BURST * BATCH);
            let mut next = vec![Next::Exception; BURST * BATCH];
            w.refill(&mut bufs);
            w.process(&mut bufs, &mut next);
            w.check(&next);
            g.throughput(Throughput::Elements((BURST * BATCH) as u64));
            g.bench_function(format!("{size}B"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        w.refill(&mut bufs);
                        let t = Instant::now();
                        w.process(&mut bufs, &mut next);
                        total += t.elapsed();
                        black_box(touch(&bufs));
                    }
                    total
                })
            });
            w.check(&next);
        }
        g.finish();
    }
}

/// The raw seal rate: AES-128-GCM with an 8-byte ICV over exactly the bytes the ESP path
/// encrypts per packet, one packet at a time, in place.
fn raw_seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("aead_seal_raw");
    let key = AesGcm128::new(&[7u8; 16], IcvLen::Icv8).unwrap();
    for size in SIZES {
        let len = Workload::esp_plaintext_len(size);
        let mut buf = vec![0x5au8; len];
        let mut tag = [0u8; 8];
        let mut nonce = [0u8; 12];
        let mut ctr = 0u64;
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                ctr += 1;
                nonce[4..].copy_from_slice(&ctr.to_be_bytes());
                key.seal_in_place(&nonce, &[1, 2, 3, 4, 5, 6, 7, 8], &mut buf, &mut tag)
                    .unwrap();
                black_box(&tag);
            })
        });
    }
    g.finish();

    // The same, over as many 2 KiB buffers as one measured batch of the pipeline touches,
    // so that both sides of the ESP/raw ratio pay the same cache footprint.
    let mut g = c.benchmark_group("aead_seal_raw_batch_footprint");
    for size in SIZES {
        let len = Workload::esp_plaintext_len(size);
        let mut bufs: Vec<Vec<u8>> = (0..BURST * BATCH).map(|_| vec![0x5au8; 2048]).collect();
        let mut tag = [0u8; 8];
        let mut nonce = [0u8; 12];
        let mut ctr = 0u64;
        g.throughput(Throughput::Elements((BURST * BATCH) as u64));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                for buf in bufs.iter_mut() {
                    ctr += 1;
                    nonce[4..].copy_from_slice(&ctr.to_be_bytes());
                    key.seal_in_place(
                        &nonce,
                        &[1, 2, 3, 4, 5, 6, 7, 8],
                        &mut buf[64..64 + len],
                        &mut tag,
                    )
                    .unwrap();
                }
                black_box(&tag);
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = paths, raw_seal
}
criterion_main!(benches);
