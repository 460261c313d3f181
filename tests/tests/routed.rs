//! Routed networks (the control plane's mode): local endpoints reach each other, VIPs and
//! published ports through the data plane's router; connections are tracked so they keep
//! their task when the backend set changes; published-port replies carry the service
//! address and go back to the client's MAC; the task sees the client's own address.

use std::net::Ipv4Addr;
use std::sync::Arc;

use swarmgate_dataplane::flow::{FlowKey, FlowState, FlowTable};
use swarmgate_dataplane::tables::{docker_overlay_mtu, NetworkSpec, Router, Tables, Underlay};
use swarmgate_dataplane::wire::{EthernetAddress, Ipv4Packet, Vni};
use swarmgate_dataplane::{Counters, DropReason, HeapBuf, Next, PacketBuf, Worker};
use swarmgate_tests::frames::{arp_request, l4_checksums_ok, tcp, tcp_syn, tcp_with_flags};
use swarmgate_tests::{mac_of, underlay_mac, vip_service, vtep, PLAIN_PORT, UNDERLAY_PORT};

const R: EthernetAddress = EthernetAddress([2, 0x42, 0xaa, 0, 0, 1]);
const CLIENT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0x99, 0x99]);

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, i)
}
fn vip() -> Ipv4Addr {
    ip(100)
}
fn client() -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, 77)
}

/// Node `me`'s tables with one routed network (VNI 4097, router `R` at 10.0.0.1).
fn routed(me: u8, generation: u64) -> (Tables, Vni) {
    let mut t = Tables::new(Underlay::new(UNDERLAY_PORT, underlay_mac(me), vtep(me)));
    t.generation = generation;
    let vni = Vni::new(4097).unwrap();
    t.add_network(NetworkSpec {
        vni,
        slot: 0,
        local_port: PLAIN_PORT,
        mtu: docker_overlay_mtu(1500, false),
        encrypted: false,
    })
    .unwrap();
    t.set_router(
        vni,
        Router {
            mac: R,
            gateway: ip(1),
        },
    )
    .unwrap();
    (t, vni)
}

/// Node 1 with one routed network: local hosts 10.0.0.2..=4, a VIP on port 80 and the
/// published port 8080, both over `backends`.
fn tables(generation: u64, backends: &[Ipv4Addr]) -> Arc<Tables> {
    let (mut t, vni) = routed(1, generation);
    for i in 2..=5 {
        t.add_local_host(vni, ip(i), mac_of(ip(i))).unwrap();
    }
    t.add_vip(vni, vip_service(vip(), 80, 80, backends), R)
        .unwrap();
    t.add_ingress(vni, vip_service(vtep(1), 8080, 80, backends))
        .unwrap();
    Arc::new(t)
}

fn run1(w: &mut Worker, t: &Tables, port: u16, frame: &[u8]) -> (Next, Vec<u8>) {
    let mut b = [HeapBuf::from_frame(frame, 64)];
    let mut n = [Next::Exception];
    w.process(t, port, &mut b, &mut n);
    (n[0], b[0].data().to_vec())
}

fn ipv4(frame: &[u8]) -> Ipv4Packet<&[u8]> {
    Ipv4Packet::new_checked(&frame[14..]).unwrap()
}

fn ports(frame: &[u8]) -> (u16, u16) {
    let ip = ipv4(frame);
    let p = ip.payload();
    (
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    )
}

#[test]
fn arp_for_local_hosts_and_gateway_is_answered_by_the_router() {
    let t = tables(1, &[ip(3)]);
    let mut w = Worker::new(Arc::new(Counters::default()));
    for target in [ip(1), ip(3), vip()] {
        let (n, reply) = run1(
            &mut w,
            &t,
            PLAIN_PORT,
            &arp_request(mac_of(ip(2)), ip(2), target),
        );
        assert_eq!(n, Next::Tx(PLAIN_PORT));
        assert_eq!(&reply[6..12], R.as_bytes(), "{target}");
    }
}

#[test]
fn local_hosts_talk_through_the_router_untranslated() {
    let t = tables(1, &[ip(3)]);
    let mut w = Worker::new(Arc::new(Counters::default()));
    let f = tcp(mac_of(ip(2)), R, ip(2), ip(3), 40000, 80, b"direct");
    let (n, out) = run1(&mut w, &t, PLAIN_PORT, &f);
    assert_eq!(n, Next::Tx(PLAIN_PORT));
    assert_eq!(&out[0..6], mac_of(ip(3)).as_bytes());
    assert_eq!(&out[6..12], R.as_bytes());
    assert_eq!(ipv4(&out).dst_addr(), ip(3));
    // The reply of a direct connection is not mistaken for a VIP reply.
    let r = tcp(mac_of(ip(3)), R, ip(3), ip(2), 80, 40000, b"reply");
    let (n, out) = run1(&mut w, &t, PLAIN_PORT, &r);
    assert_eq!(n, Next::Tx(PLAIN_PORT));
    assert_eq!(ipv4(&out).src_addr(), ip(3));
    assert_eq!(ports(&out), (80, 40000));
    // Unknown destinations are counted drops.
    let u = tcp(mac_of(ip(2)), R, ip(2), ip(77), 1, 2, b"");
    assert_eq!(
        run1(&mut w, &t, PLAIN_PORT, &u).0,
        Next::Drop(DropReason::UnknownDestination)
    );
}

#[test]
fn vip_connections_are_translated_both_ways_and_keep_their_task() {
    let mut t = tables(1, &[ip(3), ip(4)]);
    let mut w = Worker::new(Arc::new(Counters::default()));
    let mut chosen = Vec::new();
    for sport in 30000..30100u16 {
        let syn = tcp_syn(mac_of(ip(2)), R, ip(2), vip(), sport, 80, b"GET /");
        let (n, out) = run1(&mut w, &t, PLAIN_PORT, &syn);
        assert_eq!(n, Next::Tx(PLAIN_PORT));
        assert!(l4_checksums_ok(&out));
        let b = ipv4(&out).dst_addr();
        assert!(b == ip(3) || b == ip(4));
        assert_eq!(ipv4(&out).src_addr(), ip(2), "the task sees the client");
        assert_eq!(&out[0..6], mac_of(b).as_bytes());
        // The backend's reply comes back from the VIP.
        let reply = tcp(mac_of(b), R, b, ip(2), 80, sport, b"200 OK");
        let (n, back) = run1(&mut w, &t, PLAIN_PORT, &reply);
        assert_eq!(n, Next::Tx(PLAIN_PORT));
        assert!(l4_checksums_ok(&back));
        assert_eq!(ipv4(&back).src_addr(), vip());
        assert_eq!(ports(&back), (80, sport));
        assert_eq!(&back[0..6], mac_of(ip(2)).as_bytes());
        chosen.push(b);
    }
    assert!(chosen.contains(&ip(3)) && chosen.contains(&ip(4)));
    // Another port of the VIP: same port on a task, and back.
    let syn = tcp_syn(mac_of(ip(2)), R, ip(2), vip(), 999, 5432, b"");
    let (_, out) = run1(&mut w, &t, PLAIN_PORT, &syn);
    let b = ipv4(&out).dst_addr();
    assert_eq!(ports(&out), (999, 5432));
    let (_, back) = run1(
        &mut w,
        &t,
        PLAIN_PORT,
        &tcp(mac_of(b), R, b, ip(2), 5432, 999, b""),
    );
    assert_eq!(ipv4(&back).src_addr(), vip());

    // A task is added: every existing connection stays where it was.
    t = tables(2, &[ip(3), ip(4), ip(5)]);
    for (k, sport) in (30000..30100u16).enumerate() {
        let seg = tcp(mac_of(ip(2)), R, ip(2), vip(), sport, 80, b"more");
        let (_, out) = run1(&mut w, &t, PLAIN_PORT, &seg);
        assert_eq!(ipv4(&out).dst_addr(), chosen[k], "connection {sport} moved");
    }
    // A task is removed: its connections go elsewhere, the others stay.
    t = tables(3, &[ip(4), ip(5)]);
    for (k, sport) in (30000..30100u16).enumerate() {
        let seg = tcp(mac_of(ip(2)), R, ip(2), vip(), sport, 80, b"more");
        let (_, out) = run1(&mut w, &t, PLAIN_PORT, &seg);
        let now = ipv4(&out).dst_addr();
        if chosen[k] == ip(4) {
            assert_eq!(now, ip(4));
        } else {
            assert_ne!(now, ip(3));
        }
    }
}

#[test]
fn published_port_keeps_the_client_address_and_replies_go_back_to_its_mac() {
    let t = tables(1, &[ip(3), ip(4)]);
    let mut w = Worker::new(Arc::new(Counters::default()));
    let mut seen = std::collections::BTreeSet::new();
    for sport in 50000..50050u16 {
        let syn = tcp_syn(
            CLIENT_MAC,
            underlay_mac(1),
            client(),
            vtep(1),
            sport,
            8080,
            b"GET /",
        );
        let (n, out) = run1(&mut w, &t, UNDERLAY_PORT, &syn);
        assert_eq!(n, Next::Tx(PLAIN_PORT));
        assert!(l4_checksums_ok(&out));
        let p = ipv4(&out);
        let b = p.dst_addr();
        assert_eq!(p.src_addr(), client(), "client address kept");
        assert_eq!(ports(&out), (sport, 80));
        assert_eq!(&out[0..6], mac_of(b).as_bytes());
        assert_eq!(&out[6..12], R.as_bytes());
        seen.insert(b);

        // The task replies to the client through its gateway (the router).
        let reply = tcp(mac_of(b), R, b, client(), 80, sport, b"200 OK");
        let (n, back) = run1(&mut w, &t, PLAIN_PORT, &reply);
        assert_eq!(n, Next::Tx(UNDERLAY_PORT));
        assert!(l4_checksums_ok(&back));
        assert_eq!(&back[0..6], CLIENT_MAC.as_bytes());
        assert_eq!(&back[6..12], underlay_mac(1).as_bytes());
        assert_eq!(ipv4(&back).src_addr(), vtep(1));
        assert_eq!(ipv4(&back).dst_addr(), client());
        assert_eq!(ports(&back), (8080, sport));
    }
    assert_eq!(seen.len(), 2, "both tasks answer");
    // Other ports to this node still go to the kernel.
    let ssh = tcp(
        CLIENT_MAC,
        underlay_mac(1),
        client(),
        vtep(1),
        5000,
        22,
        b"",
    );
    assert_eq!(run1(&mut w, &t, UNDERLAY_PORT, &ssh).0, Next::Exception);
}

#[test]
fn tracked_flows_expire_when_idle() {
    let t = tables(1, &[ip(3), ip(4)]);
    let mut w = Worker::new(Arc::new(Counters::default()));
    w.set_now(10);
    let syn = tcp_syn(mac_of(ip(2)), R, ip(2), vip(), 1234, 80, b"");
    run1(&mut w, &t, PLAIN_PORT, &syn);
    assert_eq!(w.flows().len(), 2);
    // Long after the idle timeout, the reply entry no longer translates.
    w.set_now(10 + swarmgate_dataplane::flow::DEFAULT_IDLE_SECS + 1);
    let (_, out) = run1(
        &mut w,
        &t,
        PLAIN_PORT,
        &tcp(mac_of(ip(3)), R, ip(3), ip(2), 80, 1234, b""),
    );
    assert_eq!(ipv4(&out).src_addr(), ip(3));
}

#[test]
fn a_task_reaching_its_own_service_is_hairpinned_through_the_gateway() {
    // One backend, which is also the client.
    let t = tables(1, &[ip(2)]);
    let mut w = Worker::new(Arc::new(Counters::default()));
    let syn = tcp_syn(mac_of(ip(2)), R, ip(2), vip(), 41000, 80, b"GET /");
    let (n, out) = run1(&mut w, &t, PLAIN_PORT, &syn);
    assert_eq!(n, Next::Tx(PLAIN_PORT));
    assert!(l4_checksums_ok(&out));
    assert_eq!(&out[0..6], mac_of(ip(2)).as_bytes());
    // It arrives from the gateway address, so the reply comes back through the router.
    assert_eq!(ipv4(&out).src_addr(), ip(1));
    assert_eq!(ipv4(&out).dst_addr(), ip(2));
    assert_eq!(ports(&out), (41000, 80));
    let reply = tcp(mac_of(ip(2)), R, ip(2), ip(1), 80, 41000, b"200 OK");
    let (n, back) = run1(&mut w, &t, PLAIN_PORT, &reply);
    assert_eq!(n, Next::Tx(PLAIN_PORT));
    assert!(l4_checksums_ok(&back));
    assert_eq!(&back[0..6], mac_of(ip(2)).as_bytes());
    assert_eq!(ipv4(&back).src_addr(), vip());
    assert_eq!(ipv4(&back).dst_addr(), ip(2));
    assert_eq!(ports(&back), (80, 41000));
    // Later segments of the connection take the same path.
    let (_, again) = run1(&mut w, &t, PLAIN_PORT, &syn);
    assert_eq!(again, out);
}

/// A published port flooded with random-source SYNs and non-SYN garbage: an established
/// connection keeps its task and its replies keep going back to the client; garbage without
/// a SYN creates no state; the table never grows past its capacity and evictions are
/// counted.
#[test]
fn a_flooded_published_port_keeps_established_connections() {
    let t = tables(1, &[ip(3), ip(4)]);
    let counters = Arc::new(Counters::default());
    let mut w = Worker::with_flow_table(counters.clone(), FlowTable::new(4096, 300));
    w.set_now(100);
    // An established connection: SYN, the task's SYN-ACK, the client's ACK, data.
    let syn = tcp_syn(
        CLIENT_MAC,
        underlay_mac(1),
        client(),
        vtep(1),
        50000,
        8080,
        b"",
    );
    let (_, out) = run1(&mut w, &t, UNDERLAY_PORT, &syn);
    let task = ipv4(&out).dst_addr();
    let synack = tcp_with_flags(mac_of(task), R, task, client(), 80, 50000, 0x12, b"");
    assert_eq!(
        run1(&mut w, &t, PLAIN_PORT, &synack).0,
        Next::Tx(UNDERLAY_PORT)
    );
    let ack = tcp_with_flags(
        CLIENT_MAC,
        underlay_mac(1),
        client(),
        vtep(1),
        50000,
        8080,
        0x10,
        b"",
    );
    run1(&mut w, &t, UNDERLAY_PORT, &ack);
    let data = tcp(mac_of(task), R, task, client(), 80, 50000, b"200 OK");
    run1(&mut w, &t, PLAIN_PORT, &data);
    let fwd = FlowKey::new(6, client(), 50000, vtep(1), 8080);
    assert_eq!(w.flows().state(&fwd), Some(FlowState::Established));

    // The flood: 40 000 ACK-only segments, then 40 000 SYNs, from random sources.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut random_segment = |flags: u8| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let src = Ipv4Addr::from((x as u32) | 0x0100_0000);
        tcp_with_flags(
            CLIENT_MAC,
            underlay_mac(1),
            src,
            vtep(1),
            (x >> 32) as u16,
            8080,
            flags,
            b"",
        )
    };
    let garbage_before = w.flows().len();
    for _ in 0..40_000 {
        let g = random_segment(0x10);
        assert_eq!(
            run1(&mut w, &t, UNDERLAY_PORT, &g).0,
            Next::Tx(PLAIN_PORT),
            "routed by Maglev"
        );
    }
    assert_eq!(
        w.flows().len(),
        garbage_before,
        "non-SYN segments create no state"
    );
    for i in 0..40_000u32 {
        let s = random_segment(0x02);
        w.set_now(100 + i / 8000);
        run1(&mut w, &t, UNDERLAY_PORT, &s);
        assert!(w.flows().len() <= w.flows().capacity());
    }
    assert!(
        counters.flow_evictions.get() > 30_000,
        "{}",
        counters.flow_evictions.get()
    );

    // The connection still works both ways, on the same task.
    let more = tcp(
        CLIENT_MAC,
        underlay_mac(1),
        client(),
        vtep(1),
        50000,
        8080,
        b"more",
    );
    let (n, out) = run1(&mut w, &t, UNDERLAY_PORT, &more);
    assert_eq!(n, Next::Tx(PLAIN_PORT));
    assert_eq!(ipv4(&out).dst_addr(), task);
    let (n, back) = run1(&mut w, &t, PLAIN_PORT, &data);
    assert_eq!(n, Next::Tx(UNDERLAY_PORT));
    assert_eq!(&back[0..6], CLIENT_MAC.as_bytes());
    assert_eq!(ipv4(&back).src_addr(), vtep(1));
    assert_eq!(w.flows().capacity(), 4096);
}

/// A client that reuses its port for a new connection while the old one's entries are
/// still closing (10 s) gets a new connection: tracked afresh, established, and alive long
/// after the closing timeout (the routing mesh lost keep-alive connections opened on a
/// port that had just been used, once they sat idle for 10 s).
#[test]
fn a_reused_client_port_is_a_new_connection_that_outlives_the_closing_timeout() {
    let t = tables(1, &[ip(3), ip(4)]);
    let mut w = Worker::with_flow_table(Arc::new(Counters::default()), FlowTable::new(4096, 300));
    let from_client = |flags: u8, payload: &[u8]| {
        tcp_with_flags(
            CLIENT_MAC,
            underlay_mac(1),
            client(),
            vtep(1),
            50000,
            8080,
            flags,
            payload,
        )
    };
    let fwd = FlowKey::new(6, client(), 50000, vtep(1), 8080);
    // A connection the client closes, the same 5-tuple again at once, which the task
    // resets this time (its SYN-ACK must still be translated), and the same 5-tuple again.
    let mut task = None;
    for (round, at) in [(0, 100u32), (1, 101), (2, 102)] {
        w.set_now(at);
        let (_, out) = run1(&mut w, &t, UNDERLAY_PORT, &from_client(0x02, b""));
        let to = ipv4(&out).dst_addr();
        assert_eq!(*task.get_or_insert(to), to, "Maglev's pick");
        let synack = tcp_with_flags(mac_of(to), R, to, client(), 80, 50000, 0x12, b"");
        assert_eq!(
            run1(&mut w, &t, PLAIN_PORT, &synack).0,
            Next::Tx(UNDERLAY_PORT)
        );
        run1(&mut w, &t, UNDERLAY_PORT, &from_client(0x18, b"GET"));
        let data = tcp(mac_of(to), R, to, client(), 80, 50000, b"200 OK");
        assert_eq!(
            run1(&mut w, &t, PLAIN_PORT, &data).0,
            Next::Tx(UNDERLAY_PORT)
        );
        assert_eq!(
            w.flows().state(&fwd),
            Some(FlowState::Established),
            "round {round}"
        );
        if round == 0 {
            run1(&mut w, &t, UNDERLAY_PORT, &from_client(0x11, b""));
            assert_eq!(w.flows().state(&fwd), Some(FlowState::Closing));
            // Half-closed: the task may still answer for a while.
            assert_eq!(
                w.flows().state(&FlowKey::new(6, to, 80, client(), 50000)),
                Some(FlowState::Established),
                "a FIN closes only its own direction"
            );
        }
        if round == 1 {
            let rst = tcp_with_flags(mac_of(to), R, to, client(), 80, 50000, 0x14, b"");
            assert_eq!(
                run1(&mut w, &t, PLAIN_PORT, &rst).0,
                Next::Tx(UNDERLAY_PORT)
            );
            assert_eq!(
                w.flows().state(&fwd),
                Some(FlowState::Closing),
                "the task's RST closes the client's direction too"
            );
        }
    }
    // Idle for three times the closing timeout: both directions still tracked.
    let task = task.unwrap();
    w.set_now(102 + 3 * swarmgate_dataplane::flow::CLOSING_SECS);
    let (n, out) = run1(&mut w, &t, UNDERLAY_PORT, &from_client(0x18, b"GET again"));
    assert_eq!((n, ipv4(&out).dst_addr()), (Next::Tx(PLAIN_PORT), task));
    let data = tcp(mac_of(task), R, task, client(), 80, 50000, b"200 OK");
    let (n, back) = run1(&mut w, &t, PLAIN_PORT, &data);
    assert_eq!(
        n,
        Next::Tx(UNDERLAY_PORT),
        "the reply is translated for the client"
    );
    assert_eq!(
        (ipv4(&back).src_addr(), ports(&back)),
        (vtep(1), (8080, 50000))
    );
}

/// Node `me` (1 or 2) of a two-node routed network: its local hosts, the other node's as
/// remote endpoints behind its VTEP, and a VIP over backends on both nodes.
fn node_tables(me: u8, hosts: [&[Ipv4Addr]; 2], backends: &[Ipv4Addr]) -> Arc<Tables> {
    let (mut t, vni) = routed(me, 1);
    let other = 3 - me;
    t.set_neighbour(vtep(other), underlay_mac(other));
    for h in hosts[me as usize - 1] {
        t.add_local_host(vni, *h, mac_of(*h)).unwrap();
    }
    for h in hosts[other as usize - 1] {
        t.add_remote_endpoint(vni, *h, mac_of(*h), vtep(other))
            .unwrap();
    }
    t.add_vip(vni, vip_service(vip(), 80, 80, backends), R)
        .unwrap();
    Arc::new(t)
}

#[test]
fn a_vip_backend_on_another_node_answers_from_the_vip() {
    // The client 10.0.0.2 is on node 1; the only backend, 10.0.0.9, on node 2.
    let hosts: [&[Ipv4Addr]; 2] = [&[ip(2)], &[ip(9)]];
    let (t1, t2) = (
        node_tables(1, hosts, &[ip(9)]),
        node_tables(2, hosts, &[ip(9)]),
    );
    let (mut w1, mut w2) = (
        Worker::new(Arc::new(Counters::default())),
        Worker::new(Arc::new(Counters::default())),
    );
    for sport in [40000u16, 40001] {
        // Node 1 translates the client's SYN to the remote backend and encapsulates it.
        let syn = tcp_syn(mac_of(ip(2)), R, ip(2), vip(), sport, 80, b"GET /");
        let (n, wire) = run1(&mut w1, &t1, PLAIN_PORT, &syn);
        assert_eq!(n, Next::Tx(UNDERLAY_PORT));
        // Node 2 delivers it to the backend, the client's address kept.
        let (n, at_backend) = run1(&mut w2, &t2, UNDERLAY_PORT, &wire);
        assert_eq!(n, Next::Tx(PLAIN_PORT));
        assert_eq!(ipv4(&at_backend).src_addr(), ip(2));
        assert_eq!(ipv4(&at_backend).dst_addr(), ip(9));
        // The backend answers the client; node 2 sends it back untranslated (it did not
        // choose the backend) and node 1 puts the VIP back, as the client expects.
        let reply = tcp(mac_of(ip(9)), R, ip(9), ip(2), 80, sport, b"200 OK");
        let (n, wire) = run1(&mut w2, &t2, PLAIN_PORT, &reply);
        assert_eq!(n, Next::Tx(UNDERLAY_PORT));
        let (n, back) = run1(&mut w1, &t1, UNDERLAY_PORT, &wire);
        assert_eq!(n, Next::Tx(PLAIN_PORT));
        assert!(l4_checksums_ok(&back));
        assert_eq!(ipv4(&back).src_addr(), vip());
        assert_eq!(ports(&back), (80, sport));
        assert_eq!(&back[0..6], mac_of(ip(2)).as_bytes());
        assert_eq!(&back[6..12], R.as_bytes(), "from the router");
    }
    // The remote endpoint's address is answered with the router's MAC, as every address
    // of a routed network is (its own MAC would be useless on an isolated bridge port
    // once the address moves to this node).
    let (n, reply) = run1(
        &mut w1,
        &t1,
        PLAIN_PORT,
        &arp_request(mac_of(ip(2)), ip(2), ip(9)),
    );
    assert_eq!(n, Next::Tx(PLAIN_PORT));
    assert_eq!(&reply[6..12], R.as_bytes());
    // Direct traffic between the nodes' endpoints is not translated.
    let direct = tcp(mac_of(ip(9)), R, ip(9), ip(2), 5000, 6000, b"hi");
    let (_, wire) = run1(&mut w2, &t2, PLAIN_PORT, &direct);
    let (n, back) = run1(&mut w1, &t1, UNDERLAY_PORT, &wire);
    assert_eq!(n, Next::Tx(PLAIN_PORT));
    assert_eq!(ipv4(&back).src_addr(), ip(9));
    assert_eq!(ports(&back), (5000, 6000));
    assert_eq!(&back[6..12], R.as_bytes(), "from the router");
}

#[test]
fn frames_to_a_local_endpoints_own_mac_still_leave_from_the_router() {
    // A sender that kept an endpoint's real MAC (learnt while it was remote, say): the
    // frame is routed, and its source is the router's, so the node's bridge never learns
    // the sender's MAC on the data plane's port.
    let t = tables(1, &[ip(3)]);
    let mut w = Worker::new(Arc::new(Counters::default()));
    let f = tcp(
        mac_of(ip(2)),
        mac_of(ip(3)),
        ip(2),
        ip(3),
        40000,
        80,
        b"direct",
    );
    let (n, out) = run1(&mut w, &t, PLAIN_PORT, &f);
    assert_eq!(n, Next::Tx(PLAIN_PORT));
    assert_eq!(&out[0..6], mac_of(ip(3)).as_bytes());
    assert_eq!(&out[6..12], R.as_bytes());
    // To a VIP by a stale MAC: translated all the same.
    let syn = tcp_syn(mac_of(ip(2)), mac_of(ip(4)), ip(2), vip(), 41000, 80, b"");
    let (n, out) = run1(&mut w, &t, PLAIN_PORT, &syn);
    assert_eq!(n, Next::Tx(PLAIN_PORT));
    assert_eq!(ipv4(&out).dst_addr(), ip(3));
    assert_eq!(&out[6..12], R.as_bytes());
}
