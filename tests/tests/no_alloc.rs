//! The burst pipeline allocates nothing per packet: a counting global allocator watches
//! this thread while steady-state bursts go through every path (plain and encrypted encap
//! and decap, VIP DNAT, proxy ARP, drops).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::Ipv4Addr;

use swarmgate_dataplane::{HeapBuf, Next, PacketBuf, BURST};
use swarmgate_tests::frames::*;
use swarmgate_tests::*;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(|c| c.get())
}

fn burst_of(frame: &[u8]) -> Vec<HeapBuf> {
    (0..BURST).map(|_| HeapBuf::from_frame(frame, 64)).collect()
}

fn refill(bufs: &mut [HeapBuf], frame: &[u8]) {
    for b in bufs {
        assert!(b.reset(frame));
    }
}

#[test]
fn steady_state_bursts_allocate_nothing() {
    let (k, _, _) = keys();
    let vip = Ipv4Addr::new(10, 0, 0, 100);
    let mut a = Node::new(1, &[k.clone()]);
    a.publish(&[k.clone()], |t| {
        let vni = swarmgate_dataplane::wire::Vni::new(PLAIN_VNI).unwrap();
        t.add_vip(vni, vip_service(vip, 80, 8080, &[plain_ep(2)]), mac_of(vip))
            .unwrap();
    });
    let mut b = Node::new(2, &[k]);

    let plain = udp_of_len(
        mac_of(plain_ep(1)),
        mac_of(plain_ep(2)),
        plain_ep(1),
        plain_ep(2),
        512,
    );
    let secure = udp_of_len(
        mac_of(secure_ep(1)),
        mac_of(secure_ep(2)),
        secure_ep(1),
        secure_ep(2),
        512,
    );
    let to_vip = tcp(
        mac_of(plain_ep(1)),
        mac_of(vip),
        plain_ep(1),
        vip,
        4000,
        80,
        b"GET /",
    );
    let arp = arp_request(mac_of(plain_ep(1)), plain_ep(1), plain_ep(2));
    let garbage = vec![0xffu8; 20];
    let (_, plain_wire) = a.run1(PLAIN_PORT, &plain);

    let mut bufs = burst_of(&secure);
    let mut next = [Next::Exception; BURST];
    // Warm-up: first snapshot adoption creates the replay windows.
    a.worker
        .process(&a.tables, SECURE_PORT, &mut bufs, &mut next);
    let esp_wire: Vec<Vec<u8>> = bufs.iter().map(|b| b.data().to_vec()).collect();
    b.worker
        .process(&b.tables, UNDERLAY_PORT, &mut bufs, &mut next);

    let mut esp_bufs: Vec<HeapBuf> = (0..BURST).map(|_| HeapBuf::new(2048, 128)).collect();
    let mut esp_fresh: Vec<Vec<u8>> = Vec::new();
    for _ in 0..20 {
        refill(&mut bufs, &secure);
        a.worker
            .process(&a.tables, SECURE_PORT, &mut bufs, &mut next);
        for b in &bufs {
            esp_fresh.push(b.data().to_vec());
        }
    }
    drop(esp_wire);

    let before = allocations();
    for round in 0..20 {
        for (port, frame, node) in [
            (PLAIN_PORT, &plain, 0),
            (SECURE_PORT, &secure, 0),
            (PLAIN_PORT, &to_vip, 0),
            (PLAIN_PORT, &arp, 0),
            (PLAIN_PORT, &garbage, 0),
            (UNDERLAY_PORT, &plain_wire, 1),
        ] {
            refill(&mut bufs, frame);
            let n = if node == 0 { &mut a } else { &mut b };
            n.worker.process(&n.tables, port, &mut bufs, &mut next);
        }
        // Fresh ESP packets (new sequence numbers) through B's decrypt path.
        for (i, buf) in esp_bufs.iter_mut().enumerate() {
            assert!(buf.reset(&esp_fresh[round * BURST + i]));
        }
        b.worker
            .process(&b.tables, UNDERLAY_PORT, &mut esp_bufs, &mut next);
        assert!(next.iter().all(|n| *n == Next::Tx(SECURE_PORT)), "{next:?}");
    }
    let during = allocations() - before;
    assert_eq!(
        during, 0,
        "the pipeline allocated {during} times in steady state"
    );
    assert!(a.counters().network(0).encap_packets.get() >= 20 * BURST as u64);
}
