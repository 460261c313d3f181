//! The measurement behind the hot-path cipher choice: AES-128-GCM seal, in place, on one
//! core, with AWS-LC (through `swarmgate-aead`, which the data plane uses), ring, and
//! RustCrypto's `aes-gcm`, at the packet sizes the ESP path sees.
//!
//! `cargo bench -p swarmgate-bench --bench aead`

use std::hint::black_box;
use std::time::Duration;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use swarmgate_aead::{AesGcm128, IcvLen};

fn seal(c: &mut Criterion) {
    let key = [9u8; 16];
    for size in [64usize, 512, 1400] {
        let mut g = c.benchmark_group(format!("aes128gcm_seal_{size}B"));
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0x11u8; size];
        let aad = [0u8; 8];

        let aws = AesGcm128::new(&key, IcvLen::Icv16).unwrap();
        let mut n = 0u64;
        g.bench_function("aws-lc", |b| {
            b.iter(|| {
                n += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_be_bytes());
                let mut tag = [0u8; 16];
                aws.seal_in_place(&nonce, &aad, &mut buf, &mut tag).unwrap();
                black_box(tag)
            })
        });

        let rk = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key).unwrap());
        g.bench_function("ring", |b| {
            b.iter(|| {
                n += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_be_bytes());
                let tag = rk
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&aad),
                        &mut buf,
                    )
                    .unwrap();
                black_box(tag)
            })
        });

        let rc = aes_gcm::Aes128Gcm::new_from_slice(&key).unwrap();
        g.bench_function("rustcrypto", |b| {
            b.iter(|| {
                n += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_be_bytes());
                let tag = rc
                    .encrypt_in_place_detached(aes_gcm::Nonce::from_slice(&nonce), &aad, &mut buf)
                    .unwrap();
                black_box(tag)
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = seal
}
criterion_main!(benches);
