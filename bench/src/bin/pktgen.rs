//! A pktgen-style traffic generator on a DPDK port: sends one UDP frame shape as fast as the
//! port takes it for a fixed time, then prints the rate. Used by `bench/netns-compare.sh`.
//!
//! `pktgen <devargs> <file-prefix> <src-mac> <dst-mac> <src-ip> <dst-ip> <frame-bytes> <seconds>`

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use swarmgate_dataplane::wire::EthernetAddress;
use swarmgate_dataplane::PacketBuf;
use swarmgate_ffi::{Eal, Mempool, Port, TxBatch, BURST_MAX};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 9 {
        anyhow::bail!("usage: pktgen <devargs> <file-prefix> <src-mac> <dst-mac> <src-ip> <dst-ip> <frame-bytes> <seconds>");
    }
    let (devargs, prefix) = (&a[1], &a[2]);
    let src_mac: EthernetAddress = a[3].parse().map_err(|_| anyhow::anyhow!("bad src MAC"))?;
    let dst_mac: EthernetAddress = a[4].parse().map_err(|_| anyhow::anyhow!("bad dst MAC"))?;
    let (src, dst): (Ipv4Addr, Ipv4Addr) = (a[5].parse()?, a[6].parse()?);
    let len: usize = a[7].parse()?;
    let secs: f64 = a[8].parse()?;
    anyhow::ensure!((60..=1514).contains(&len), "frame bytes must be 60..=1514");
    let eal = Eal::init(&swarmgate_bench::eal_args(prefix, &[devargs]))?;
    let pool = Mempool::new(&eal, "gen-pool", 8191, 256, 2048 + 128)?;
    let name = devargs.split(',').next().unwrap_or(devargs);
    let mut port = Port::by_name(&eal, name)?;
    port.configure(1, 1024, &pool)?;
    let (_rx, mut tx) = port.queues().pop().expect("queue");
    port.start()?;
    // Varying source ports spread the flows (outer UDP source port entropy, RSS).
    let payload = vec![0x61u8; len - 42];
    let frames: Vec<Vec<u8>> = (0..64u16)
        .map(|i| {
            swarmgate_tests::frames::udp(src_mac, dst_mac, src, dst, 40000 + i, 5000, &payload)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut sent, mut k) = (0u64, 0usize);
    let mut batch = TxBatch::default();
    while Instant::now() < end {
        while !batch.is_full() {
            let Some(mut m) = pool.alloc() else { break };
            let f = &frames[k % frames.len()];
            k += 1;
            m.append(f.len()).expect("room").copy_from_slice(f);
            let _ = batch.push(m);
        }
        sent += tx.tx(&mut batch) as u64;
        if batch.len() == BURST_MAX {
            std::hint::spin_loop();
        }
    }
    let el = start.elapsed().as_secs_f64();
    batch.free_all();
    println!(
        "pktgen: sent {sent} frames of {len} B in {el:.2} s: {:.3} Mpps",
        sent as f64 / el / 1e6
    );
    drop(tx);
    drop(port);
    drop(pool);
    drop(eal);
    Ok(())
}
