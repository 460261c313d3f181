//! Gossip convergence of a table change (issue #10): N nodes' gossips (the daemon's own
//! `swarmgate_control::gossip`, sockets, sealing, SWIM, broadcasts and full syncs) on
//! loopback, one owner changing one `overlay_peer_table` row at a time; for each change,
//! the time until every other node's view has it. Prints p50/p99/max (hdrhistogram) and
//! one JSON line. Usage: gossip-convergence [nodes=3] [changes=200]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swarmgate_control::gossip::table::{Table, Value};
use swarmgate_control::gossip::{Gossip, Keyring, Member, Own, Settings};
use tokio::sync::watch;

fn row(k: u32) -> Own {
    [(
        (Table::OverlayPeer, "net".to_owned(), format!("t{k}")),
        Value::Peer {
            ip: Ipv4Addr::from(0x0a00_0000 + k),
            mac: [2, 66, 0, 0, 0, 1],
            vtep: Ipv4Addr::LOCALHOST,
        },
    )]
    .into_iter()
    .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: u8 = args.get(1).map_or(Ok(3), |a| a.parse())?;
    let changes: u32 = args.get(2).map_or(Ok(200), |a| a.parse())?;
    anyhow::ensure!((2..=50).contains(&n), "nodes: 2 to 50");
    let base = 37_000u16;
    let member = |i: u8| Member {
        node: format!("n{i}"),
        addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, base + i as u16),
        vtep: Ipv4Addr::LOCALHOST,
        bump: 1,
        start: 1,
    };
    let settings = Settings {
        keyring: Keyring::new(1).map_err(anyhow::Error::msg)?,
        peers: (0..n).map(|i| member(i).addr).collect(),
    };
    let (owner_tx, owner_rx) = watch::channel(Arc::new(row(0)));
    let mut nodes = vec![Gossip::start(member(0), settings.clone(), owner_rx).await?];
    let mut idle = Vec::new();
    for i in 1..n {
        let (tx, rx) = watch::channel(Arc::new(Own::new()));
        nodes.push(Gossip::start(member(i), settings.clone(), rx).await?);
        idle.push(tx);
    }
    let views: Vec<_> = nodes[1..].iter().map(|g| g.view()).collect();
    let seen = |k: u32| {
        views
            .iter()
            .all(|v| v.borrow().keys().any(|key| key.key == format!("t{k}")))
    };
    // Everyone has the first row: the membership is up.
    let t = Instant::now();
    while !seen(0) {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(30),
            "no convergence in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
    for k in 1..=changes {
        let t = Instant::now();
        owner_tx.send_replace(Arc::new(row(k)));
        while !seen(k) {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(30),
                "change {k}: not everywhere in 30 s"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        h.record(t.elapsed().as_micros() as u64)?;
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "gossip convergence, {n} nodes, {changes} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(0.5),
        ms(0.99),
        h.max() as f64 / 1000.0
    );
    println!(
        "{{\"nodes\":{n},\"changes\":{changes},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
        ms(0.5),
        ms(0.99),
        h.max() as f64 / 1000.0
    );
    drop(idle);
    Ok(())
}
