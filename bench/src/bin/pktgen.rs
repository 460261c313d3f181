//! A pktgen-style generator and sink on DPDK ports, for `bench/compare.py` and
//! `bench/netns-compare.sh`.
//!
//! It sends one Ethernet/IPv4/UDP frame shape on `--tx` (over `--flows` UDP source ports, so
//! RSS and the outer source port spread them), at `--rate` Mpps or as fast as the port takes
//! frames, for a warm-up and then a measured window. The last 16 bytes of every frame carry a
//! magic number and the time it was sent. With `--rx`, it polls a second port for the frames
//! coming back (encapsulated or not: the stamp is found at the frame's end) and records the
//! one-way latency of each in an hdrhistogram.
//!
//! A received frame counts for the window its stamp says it was sent in, so frames in
//! flight at the window's edges are neither lost nor counted twice; after the window the
//! sink drains for `--drain-ms`.
//!
//! With `--vxlan-vni` the frames leave VXLAN-encapsulated (towards a VTEP, for the
//! decapsulation direction); the stamp is still the frame's last 16 bytes.
//!
//! One JSON object on stdout:
//! `{"size", "flows", "rate_mpps" (asked, 0 = unlimited), "seconds", "sent", "received",
//!   "offered_mpps", "delivered_mpps", "offered_gbps", "delivered_gbps",
//!   "latency_us": {"samples", "min", "p50", "p99", "p999", "max"}}` (Gb/s count the inner
//! frame of `--size` bytes, without the 20 bytes of preamble and gap).
//!
//! One core does both: it alternates a transmit burst and a receive poll. The transports:
//! `net_af_xdp` towards a kernel interface (fastest here; needs the packed mbuf pool),
//! `net_memif` towards another DPDK process, `net_af_packet`, `net_ring` (`--rx` equal to
//! `--tx`: one port that sends and receives, a loopback).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use swarmgate_bench::{fill_stamped, latency_json, sink_stamped, Pacer};
use swarmgate_dataplane::wire::EthernetAddress;
use swarmgate_ffi::{Eal, Mempool, Port, RxBurst, TxBatch, BURST_MAX};

#[derive(Parser, Debug)]
#[command(about = "A DPDK packet generator and latency sink")]
struct Args {
    /// The transmitting port's devargs (`net_af_xdp0,iface=g0`).
    #[arg(long)]
    tx: String,
    /// A receiving port's devargs: counts the frames that come back, with their latency.
    #[arg(long)]
    rx: Option<String>,
    /// DPDK `--file-prefix` (one per process).
    #[arg(long, default_value = "pktgen")]
    file_prefix: String,
    /// The frame's source MAC.
    #[arg(long, default_value = "02:42:0a:00:00:01")]
    src_mac: String,
    /// The frame's destination MAC.
    #[arg(long, default_value = "02:42:0a:00:00:02")]
    dst_mac: String,
    /// The frame's source IPv4 address.
    #[arg(long, default_value = "10.0.0.1")]
    src_ip: Ipv4Addr,
    /// The frame's destination IPv4 address.
    #[arg(long, default_value = "10.0.0.2")]
    dst_ip: Ipv4Addr,
    /// Frame size in bytes, Ethernet header included (60-1514).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Offered rate in Mpps; 0 sends as fast as the port takes frames.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// The measured window, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Sending before the window (queues, caches and neighbour tables settle), in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// How long the sink keeps polling after the window, in milliseconds.
    #[arg(long, default_value_t = 200)]
    drain_ms: u64,
    /// UDP source ports used, one flow each (1-4096).
    #[arg(long, default_value_t = 64)]
    flows: u16,
    /// The CPU to run on.
    #[arg(long, default_value_t = 0)]
    core: usize,
    /// Send the frames VXLAN-encapsulated with this VNI (towards a VTEP: the decapsulation
    /// direction), outer UDP checksum zero as the kernel sends it.
    #[arg(long)]
    vxlan_vni: Option<u32>,
    /// The outer source MAC (with `--vxlan-vni`).
    #[arg(long, default_value = "02:00:c0:a8:58:02")]
    outer_src_mac: String,
    /// The outer destination MAC: the VTEP's (with `--vxlan-vni`).
    #[arg(long, default_value = "02:00:c0:a8:58:01")]
    outer_dst_mac: String,
    /// The outer source IPv4 address (with `--vxlan-vni`).
    #[arg(long, default_value = "192.168.88.2")]
    outer_src_ip: Ipv4Addr,
    /// The outer destination IPv4 address: the VTEP's (with `--vxlan-vni`).
    #[arg(long, default_value = "192.168.88.1")]
    outer_dst_ip: Ipv4Addr,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        (60..=1514).contains(&a.size),
        "--size must be 60-1514 bytes"
    );
    anyhow::ensure!((1..=4096).contains(&a.flows), "--flows must be 1-4096");
    anyhow::ensure!(
        a.rate >= 0.0 && a.rate <= 100.0,
        "--rate must be 0 (unlimited) to 100 Mpps"
    );
    anyhow::ensure!(
        a.seconds > 0.0 && a.seconds <= 3600.0 && a.warmup >= 0.0 && a.warmup <= 60.0,
        "--seconds must be in (0, 3600] and --warmup in [0, 60]"
    );
    anyhow::ensure!(
        a.vxlan_vni.is_none_or(|v| (1..1 << 24).contains(&v)),
        "--vxlan-vni must be 1-16777215"
    );
    anyhow::ensure!(
        a.vxlan_vni.is_none() || a.size <= 1464,
        "--size must be at most 1464 bytes with --vxlan-vni (the outer frame is 50 more)"
    );
    let outer_src_mac: EthernetAddress = a
        .outer_src_mac
        .parse()
        .map_err(|_| anyhow::anyhow!("bad --outer-src-mac"))?;
    let outer_dst_mac: EthernetAddress = a
        .outer_dst_mac
        .parse()
        .map_err(|_| anyhow::anyhow!("bad --outer-dst-mac"))?;
    let src_mac: EthernetAddress = a
        .src_mac
        .parse()
        .map_err(|_| anyhow::anyhow!("bad --src-mac"))?;
    let dst_mac: EthernetAddress = a
        .dst_mac
        .parse()
        .map_err(|_| anyhow::anyhow!("bad --dst-mac"))?;

    // `--rx` the same as `--tx`: one port, sending and receiving (a `net_ring` loopback).
    let loopback = a.rx.as_deref() == Some(a.tx.as_str());
    let mut vdevs = vec![a.tx.as_str()];
    if !loopback {
        vdevs.extend(a.rx.as_deref());
    }
    let mut eal_args = swarmgate_bench::eal_args(&a.file_prefix, &vdevs);
    if let Some(l) = eal_args.iter().position(|x| x == "-l") {
        eal_args[l + 1] = a.core.to_string();
    }
    let eal = Eal::init(&eal_args).context("DPDK EAL")?;
    // Packed: net_af_xdp registers the pool as its UMEM (see `Mempool::packed`).
    let pool = Mempool::packed(&eal, "gen-pool", 16383, 256, 2048 + 128)?;
    let open = |devargs: &str| -> anyhow::Result<Port> {
        let name = devargs.split(',').next().unwrap_or(devargs);
        let mut p = Port::by_name(&eal, name).with_context(|| format!("port {name}"))?;
        p.configure(1, 2048, &pool)?;
        Ok(p)
    };
    let mut tx_port = open(&a.tx)?;
    let (tx_rx, mut txq) = tx_port.queues().pop().expect("one queue");
    tx_port.start()?;
    let mut rx_port = if loopback {
        None
    } else {
        a.rx.as_deref().map(open).transpose()?
    };
    let mut rxq = match rx_port.as_mut() {
        Some(p) => {
            let (rxq, _) = p.queues().pop().expect("one queue");
            p.start()?;
            p.promiscuous()?;
            Some(rxq)
        }
        None if loopback => Some(tx_rx),
        None => None,
    };

    let payload = vec![0x61u8; a.size - 42];
    let frames: Vec<Vec<u8>> = (0..a.flows)
        .map(|i| {
            let inner = swarmgate_tests::frames::udp(
                src_mac,
                dst_mac,
                a.src_ip,
                a.dst_ip,
                40000 + i,
                5000,
                &payload,
            );
            let Some(vni) = a.vxlan_vni else {
                return inner;
            };
            // RFC 7348: flags with I set, the VNI in the upper 24 bits of the second word.
            let mut vxlan = vec![0x08, 0, 0, 0];
            vxlan.extend_from_slice(&(vni << 8).to_be_bytes());
            vxlan.extend_from_slice(&inner);
            let mut outer = swarmgate_tests::frames::udp(
                outer_src_mac,
                outer_dst_mac,
                a.outer_src_ip,
                a.outer_dst_ip,
                49152 + i,
                4789,
                &vxlan,
            );
            // The stamp changes the payload per frame: no UDP checksum (RFC 7348 §5).
            outer[40..42].fill(0);
            outer
        })
        .collect();
    // Ports (XDP programs, links) come up.
    std::thread::sleep(Duration::from_millis(300));

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    let epoch = Instant::now();
    let ns = |t: Instant| t.duration_since(epoch).as_nanos() as u64;
    let win_start = epoch + Duration::from_secs_f64(a.warmup);
    let win_end = win_start + Duration::from_secs_f64(a.seconds);
    let (w0, w1) = (ns(win_start), ns(win_end));
    let (mut sent_win, mut received) = (0u64, 0u64);
    let mut pacer = Pacer::new(a.rate, BURST_MAX);
    let mut k = 0usize;
    let mut batch = TxBatch::default();
    let mut burst = RxBurst::default();
    let mut sink = |rxq: &mut Option<swarmgate_ffi::RxQueue>, hist: &mut Histogram<u64>| {
        let Some(q) = rxq.as_mut() else { return 0 };
        q.rx(&mut burst);
        sink_stamped(&mut burst, w0..w1, ns(Instant::now()), hist)
    };
    loop {
        let now = Instant::now();
        if now >= win_end {
            break;
        }
        // How many the rate allows by now (all of a burst when unlimited).
        let allowed = pacer.allowed(now.duration_since(epoch).as_secs_f64());
        let sent_at = ns(now);
        fill_stamped(&mut batch, &pool, &frames, &mut k, allowed, sent_at);
        let s = txq.tx(&mut batch) as u64;
        pacer.sent(s);
        if sent_at >= w0 {
            sent_win += s;
        }
        // What the port did not take is not offered: freed, so every frame sent carries the
        // stamp of the round it was sent in (and no time queued in the generator).
        batch.free_all();
        received += sink(&mut rxq, &mut hist);
    }
    let drain_end = Instant::now() + Duration::from_millis(a.drain_ms);
    while Instant::now() < drain_end {
        received += sink(&mut rxq, &mut hist);
    }

    let secs = a.seconds;
    let mpps = |n: u64| n as f64 / secs / 1e6;
    // Gb/s of the inner frames, in both directions.
    let gbps = |n: u64| n as f64 * a.size as f64 * 8.0 / secs / 1e9;
    let latency = latency_json(&hist);
    let out = serde_json::json!({
        "size": a.size,
        "flows": a.flows,
        "rate_mpps": a.rate,
        "seconds": secs,
        "sent": sent_win,
        "received": if rxq.is_some() { serde_json::json!(received) } else { serde_json::Value::Null },
        "offered_mpps": mpps(sent_win),
        "delivered_mpps": if rxq.is_some() { serde_json::json!(mpps(received)) } else { serde_json::Value::Null },
        "offered_gbps": gbps(sent_win),
        "delivered_gbps": if rxq.is_some() { serde_json::json!(gbps(received)) } else { serde_json::Value::Null },
        "latency_us": latency,
    });
    eprintln!(
        "pktgen: sent {sent_win} frames of {} B in {secs:.2} s: {:.3} Mpps{}",
        a.size,
        mpps(sent_win),
        if rxq.is_some() {
            format!(", received {received}: {:.3} Mpps", mpps(received))
        } else {
            String::new()
        }
    );
    println!("{out}");
    drop(rxq);
    drop(txq);
    drop(rx_port);
    drop(tx_port);
    drop(pool);
    drop(eal);
    Ok(())
}
