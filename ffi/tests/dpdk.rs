//! The safe wrappers against a real EAL with virtual devices. EAL initialises once per
//! process, so this file is one test binary with one EAL, and every check runs in one test.

use swarmgate_dataplane::PacketBuf;
use swarmgate_ffi::{hotplug, spsc, Eal, Mempool, Port, Ring, RxBurst, TxBatch};

fn eal_args() -> Vec<String> {
    let prefix = format!("sg-ffi-test-{}", std::process::id());
    [
        "--no-huge",
        "-m",
        "128",
        "--no-pci",
        "--iova-mode=va",
        "--log-level=lib.eal:error",
        "--file-prefix",
        &prefix,
        "--vdev=net_ring0",
        "-l",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn wrappers_on_a_real_eal() {
    let eal = Eal::init(&eal_args()).expect("EAL init");
    assert!(matches!(
        Eal::init(&eal_args()),
        Err(swarmgate_ffi::DpdkError::AlreadyInitialised)
    ));
    let pool = Mempool::new(&eal, "test-pool", 1023, 32, 2048 + 128).expect("mempool");
    let free0 = pool.available();

    // Mbuf as a PacketBuf: DPDK's default 128 bytes of headroom, bounds enforced.
    {
        let mut m = pool.alloc().expect("mbuf");
        assert_eq!(m.len(), 0);
        assert_eq!(m.headroom(), 128);
        m.append(4).unwrap().copy_from_slice(b"data");
        m.prepend(3).unwrap()[..3].copy_from_slice(b"hdr");
        assert_eq!(m.data(), b"hdrdata");
        assert!(m.adj(3) && m.trim(2));
        assert_eq!(m.data(), b"da");
        assert!(m.prepend(126).is_some() && m.prepend(3).is_none());
        assert!(!m.adj(1000) && !m.trim(1000));
        assert_eq!(pool.available(), free0 - 1);
    }
    assert_eq!(pool.available(), free0, "dropping an Mbuf frees it");

    // net_ring0 loops transmitted packets back to its receive queue.
    let mut port = Port::by_name(&eal, "net_ring0").expect("port");
    port.configure(1, 256, &pool).expect("configure");
    let (mut rxq, mut txq) = port.queues().pop().unwrap();
    port.start().expect("start");
    let mac = port.mac().unwrap();
    let mut batch = TxBatch::default();
    for i in 0..5u8 {
        let mut m = pool.alloc().unwrap();
        m.append(60).unwrap().fill(i);
        batch.push(m).unwrap();
    }
    assert_eq!(txq.tx(&mut batch), 5);
    assert!(batch.is_empty());
    let mut burst = RxBurst::default();
    assert_eq!(rxq.rx(&mut burst), 5);
    for (i, m) in burst.drain().enumerate() {
        assert_eq!(m.data(), &[i as u8; 60][..]);
    }
    let stats = port.stats().unwrap();
    assert_eq!((stats.opackets, stats.ipackets), (5, 5));
    // Receiving into a burst that still holds packets frees them, never leaks them.
    let mut full = RxBurst::default();
    for _ in 0..4 {
        full.push(pool.alloc().unwrap()).unwrap();
    }
    let held = pool.available();
    assert_eq!(rxq.rx(&mut full), 0);
    assert!(full.is_empty());
    assert_eq!(
        pool.available(),
        held + 4,
        "the burst's old packets went back to the pool"
    );
    let _ = mac; // net_ring ports have an all-zero MAC; mac() succeeding is the check

    // rte_ring of mbufs.
    let ring = Ring::new(&eal, "test-ring", 64).unwrap();
    assert!(Ring::new(&eal, "bad", 100).is_err());
    let mut batch = TxBatch::default();
    for _ in 0..3 {
        batch.push(pool.alloc().unwrap()).unwrap();
    }
    assert_eq!(ring.enqueue(&mut batch), 3);
    assert_eq!(ring.len(), 3);
    let mut burst = RxBurst::default();
    assert_eq!(ring.dequeue(&mut burst), 3);
    drop(burst);

    // A single-producer/single-consumer ring: its two ends on two threads.
    let (mut tx_end, mut rx_end) = spsc(&eal, "test-spsc", 256).unwrap();
    let mut to_send: Vec<TxBatch> = Vec::new();
    for _ in 0..20 {
        let mut b = TxBatch::default();
        for _ in 0..16 {
            b.push(pool.alloc().unwrap()).unwrap();
        }
        to_send.push(b);
    }
    let producer = std::thread::spawn(move || {
        for mut b in to_send {
            while !b.is_empty() {
                tx_end.enqueue(&mut b);
            }
        }
    });
    let mut got = 0;
    let mut burst = RxBurst::default();
    while got < 320 {
        got += rx_end.dequeue(&mut burst);
        burst.drain().for_each(drop);
    }
    producer.join().unwrap();
    assert!(rx_end.is_empty());
    drop(rx_end);

    // Hot-plug: a device added while running becomes a port.
    hotplug::probe(&eal, "net_null7").expect("probe net_null7");
    let mut null = Port::by_name(&eal, "net_null7").expect("hot-plugged port");
    assert_ne!(null.id(), port.id());
    assert!(Port::by_name(&eal, "net_nonexistent").is_err());
    assert!(
        Port::by_name(&eal, "net_null7").is_err(),
        "one Port per device: two would close it twice"
    );
    // Its queues keep the device open after the Port is gone; unplugging it under them,
    // or stopping it while they are out, is refused.
    null.configure(1, 64, &pool).unwrap();
    null.start().unwrap();
    let (mut nrx, ntx) = null.queues().pop().unwrap();
    assert!(null.stop().is_err(), "stop with queues out");
    drop(null);
    assert!(
        hotplug::remove(&eal, "net_null7").is_err(),
        "unplug under live queues"
    );
    let mut b = RxBurst::default();
    let _ = nrx.rx(&mut b); // still a valid, open port
    drop(b);
    drop((nrx, ntx));
    hotplug::remove(&eal, "net_null7").expect("unplugged once nothing refers to it");

    drop(ring);
    drop(port);
    assert_eq!(pool.available(), free0, "every mbuf came back");
    drop(pool);

    // A pool dropped while one of its mbufs is alive is not freed under it.
    let small = Mempool::new(&eal, "test-pool-2", 63, 0, 2048 + 128).unwrap();
    let mut m = small.alloc().unwrap();
    drop(small);
    m.append(8).unwrap().copy_from_slice(b"still ok");
    assert_eq!(m.data(), b"still ok");
    drop(m);
    drop(eal);
}
