//! The burst pipeline end to end between two simulated nodes: every behaviour of the
//! data-plane core that a packet can observe.

use std::net::Ipv4Addr;

use swarmgate_dataplane::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetFrame, IcmpEchoRepr, IcmpPacket, IpProtocol,
    Ipv4Packet, Ipv4Repr,
};
use swarmgate_dataplane::{DropReason, Next};
use swarmgate_tests::frames::*;
use swarmgate_tests::*;

/// Runs `f` for both directions: (a → b) then (b → a).
fn both_ways(a: &mut Node, b: &mut Node, mut f: impl FnMut(&mut Node, &mut Node, u8, u8)) {
    f(a, b, 1, 2);
    f(b, a, 2, 1);
}

fn plain_frame(from: u8, to: u8, payload: &[u8]) -> Vec<u8> {
    udp(
        mac_of(plain_ep(from)),
        mac_of(plain_ep(to)),
        plain_ep(from),
        plain_ep(to),
        40000,
        5000,
        payload,
    )
}

fn secure_frame(from: u8, to: u8, payload: &[u8]) -> Vec<u8> {
    udp(
        mac_of(secure_ep(from)),
        mac_of(secure_ep(to)),
        secure_ep(from),
        secure_ep(to),
        40000,
        5000,
        payload,
    )
}

#[test]
fn plain_overlay_both_ways_every_byte() {
    let mut a = Node::new(1, &[]);
    let mut b = Node::new(2, &[]);
    for len in [42usize, 64, 512, 1400, 1464] {
        both_ways(&mut a, &mut b, |x, y, from, to| {
            let f = udp_of_len(
                mac_of(plain_ep(from)),
                mac_of(plain_ep(to)),
                plain_ep(from),
                plain_ep(to),
                len,
            );
            let (n, wire) = x.run1(PLAIN_PORT, &f);
            assert_eq!(n, Next::Tx(UNDERLAY_PORT), "len {len}");
            let outer = Ipv4Packet::new_checked(&wire[14..]).unwrap();
            assert_eq!(
                (outer.src_addr(), outer.dst_addr(), outer.protocol()),
                (vtep(from), vtep(to), IpProtocol::UDP)
            );
            assert!(outer.dont_frag() && outer.verify_checksum());
            assert_eq!(
                EthernetFrame::new_checked(&wire[..]).unwrap().dst_addr(),
                underlay_mac(to)
            );
            let (n, inner) = y.run1(UNDERLAY_PORT, &wire);
            assert_eq!(n, Next::Tx(PLAIN_PORT));
            assert_eq!(inner, f);
        });
    }
    assert_eq!(a.counters().network(0).encap_packets.get(), 5);
    assert_eq!(a.counters().network(0).decap_packets.get(), 5);
    assert_eq!(a.counters().port(UNDERLAY_PORT).tx_packets.get(), 5);
    assert_eq!(a.counters().port(PLAIN_PORT).rx_packets.get(), 5);
    assert_eq!(a.counters().total_drops(), 0);
}

#[test]
fn frames_above_the_mtu_are_dropped_and_counted() {
    let mut a = Node::new(1, &[]);
    // 1450-byte inner IP packet fits the plain network, 1451 does not.
    let ok = udp_of_len(
        mac_of(plain_ep(1)),
        mac_of(plain_ep(2)),
        plain_ep(1),
        plain_ep(2),
        14 + 1450,
    );
    let big = udp_of_len(
        mac_of(plain_ep(1)),
        mac_of(plain_ep(2)),
        plain_ep(1),
        plain_ep(2),
        14 + 1451,
    );
    assert_eq!(a.run1(PLAIN_PORT, &ok).0, Next::Tx(UNDERLAY_PORT));
    assert_eq!(
        a.run1(PLAIN_PORT, &big).0,
        Next::Drop(DropReason::MtuExceeded)
    );
    // The encrypted network's MTU is 1424.
    let ok = udp_of_len(
        mac_of(secure_ep(1)),
        mac_of(secure_ep(2)),
        secure_ep(1),
        secure_ep(2),
        14 + 1424,
    );
    let big = udp_of_len(
        mac_of(secure_ep(1)),
        mac_of(secure_ep(2)),
        secure_ep(1),
        secure_ep(2),
        14 + 1425,
    );
    let (k, _, _) = keys();
    let mut a = Node::new(1, &[k]);
    assert_eq!(a.run1(SECURE_PORT, &ok).0, Next::Tx(UNDERLAY_PORT));
    assert_eq!(
        a.run1(SECURE_PORT, &big).0,
        Next::Drop(DropReason::MtuExceeded)
    );
    assert_eq!(a.counters().drops(DropReason::MtuExceeded), 1);
}

#[test]
fn encrypted_overlay_carries_only_esp() {
    let (k, _, _) = keys();
    let mut a = Node::new(1, &[k.clone()]);
    let mut b = Node::new(2, &[k]);
    let secret = b"the payload nobody on the underlay may read";
    both_ways(&mut a, &mut b, |x, y, from, to| {
        let f = secure_frame(from, to, secret);
        let (n, wire) = x.run1(SECURE_PORT, &f);
        assert_eq!(n, Next::Tx(UNDERLAY_PORT));
        let outer = Ipv4Packet::new_checked(&wire[14..]).unwrap();
        assert_eq!(outer.protocol(), IpProtocol::ESP);
        assert!(outer.verify_checksum());
        assert!(
            !wire.windows(secret.len()).any(|w| w == secret),
            "plaintext visible on the underlay"
        );
        assert!(
            !wire.windows(4).any(|w| w == [0x08, 0, 0, 0]),
            "VXLAN header visible on the underlay"
        );
        // SPI is Docker's for (from -> to, tag 1).
        let spi = u32::from_be_bytes(wire[34..38].try_into().unwrap());
        assert_eq!(
            spi,
            swarmgate_dataplane::esp::docker_spi(vtep(from), vtep(to), 1)
        );
        let (n, inner) = y.run1(UNDERLAY_PORT, &wire);
        assert_eq!(n, Next::Tx(SECURE_PORT));
        assert_eq!(inner, f);
    });
    assert_eq!(a.counters().network(1).encap_packets.get(), 1);
    assert_eq!(a.counters().network(1).decap_packets.get(), 1);
}

/// Sequence numbers are reserved once per run of packets to one SA in a burst: across runs
/// broken by packets that are not encapsulated, and across bursts, the wire carries every
/// number once, in order, and the peer opens every packet in order.
#[test]
fn sequence_numbers_reserved_per_run_stay_consecutive_and_open_in_order() {
    let (k, _, _) = keys();
    let mut a = Node::new(1, &[k.clone()]);
    let mut b = Node::new(2, &[k]);
    // 40 frames (a burst of 32, then 8); every third is an ARP request the node answers
    // itself, which breaks the run of encapsulated packets.
    let frames: Vec<Vec<u8>> = (0..40u32)
        .map(|i| {
            if i % 3 == 2 {
                arp_request(mac_of(secure_ep(1)), secure_ep(1), secure_ep(2))
            } else {
                secure_frame(1, 2, &i.to_be_bytes())
            }
        })
        .collect();
    let out = a.run(SECURE_PORT, &frames);
    let mut seqs = Vec::new();
    for ((n, wire), f) in out.iter().zip(&frames) {
        if *n != Next::Tx(UNDERLAY_PORT) {
            continue;
        }
        seqs.push(u32::from_be_bytes(wire[38..42].try_into().unwrap()));
        let (n, inner) = b.run1(UNDERLAY_PORT, wire);
        assert_eq!(n, Next::Tx(SECURE_PORT));
        assert_eq!(&inner, f);
    }
    let encrypted = frames.len() - frames.len() / 3;
    assert_eq!(seqs, (1..=encrypted as u32).collect::<Vec<_>>());
    assert_eq!(
        a.counters().network(1).encap_packets.get(),
        encrypted as u64
    );
}

/// With two encrypted peers in one burst, in runs of one and several packets, each SA's
/// sequence numbers on the wire are still 1, 2, 3, … with no gap: a run's reservation
/// covers exactly that run's packets to that VTEP.
#[test]
fn two_peers_interleaved_in_a_burst_each_get_consecutive_numbers() {
    use swarmgate_aead::IcvLen;
    use swarmgate_dataplane::esp::{docker_spi, SaDatabase, SenderIvs};
    use swarmgate_dataplane::wire::Vni;
    let (k, _, _) = keys();
    let mut a = Node::new(1, &[k.clone()]);
    let mut sas = SaDatabase::new(IcvLen::Icv8, node_epochs());
    for peer in [2, 3] {
        sas.set_peer_keys(vtep(1), vtep(peer), &[k.clone()], SenderIvs::Epochs)
            .unwrap();
    }
    a.publish(&[k], |t| {
        t.esp = sas.tables();
        t.set_neighbour(vtep(3), underlay_mac(3));
        let secure = Vni::new(SECURE_VNI).unwrap();
        t.add_remote_endpoint(secure, secure_ep(3), mac_of(secure_ep(3)), vtep(3))
            .unwrap();
    });
    // Runs of 1, 2 and 3 packets, alternating between the peers, over two bursts.
    let pattern = [2u8, 3, 2, 2, 3, 3, 3, 2, 3, 2, 2, 2, 3];
    let frames: Vec<Vec<u8>> = (0..40)
        .map(|i| secure_frame(1, pattern[i % pattern.len()], &(i as u32).to_be_bytes()))
        .collect();
    let out = a.run(SECURE_PORT, &frames);
    let mut seqs: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    for (n, wire) in &out {
        assert_eq!(*n, Next::Tx(UNDERLAY_PORT));
        let spi = u32::from_be_bytes(wire[34..38].try_into().unwrap());
        seqs.entry(spi)
            .or_default()
            .push(u32::from_be_bytes(wire[38..42].try_into().unwrap()));
    }
    for peer in [2u8, 3] {
        let to_peer = (0..40).filter(|i| pattern[i % pattern.len()] == peer).count() as u32;
        let spi = docker_spi(vtep(1), vtep(peer), 1);
        assert_eq!(seqs[&spi], (1..=to_peer).collect::<Vec<_>>(), "peer {peer}");
    }
}

#[test]
fn cleartext_vxlan_for_an_encrypted_vni_is_dropped() {
    let (k, _, _) = keys();
    let mut b = Node::new(2, &[k]);
    // Forge what an attacker (or a misconfigured peer) would send: plain VXLAN for VNI 4098.
    let mut forger = Node::new(1, &[]);
    let mut t = (*forger.tables).clone();
    t.generation += 1;
    let mut spec_tables = swarmgate_dataplane::Tables::new(t.underlay);
    spec_tables.set_neighbour(vtep(2), underlay_mac(2));
    let vni = swarmgate_dataplane::wire::Vni::new(SECURE_VNI).unwrap();
    spec_tables
        .add_network(swarmgate_dataplane::NetworkSpec {
            vni,
            slot: 0,
            local_port: SECURE_PORT,
            mtu: 1450,
            encrypted: false,
        })
        .unwrap();
    spec_tables
        .add_remote_endpoint(vni, secure_ep(2), mac_of(secure_ep(2)), vtep(2))
        .unwrap();
    forger.tables = std::sync::Arc::new(spec_tables);
    let (n, wire) = forger.run1(SECURE_PORT, &secure_frame(1, 2, b"injected"));
    assert_eq!(n, Next::Tx(UNDERLAY_PORT));
    assert_eq!(
        Ipv4Packet::new_checked(&wire[14..]).unwrap().protocol(),
        IpProtocol::UDP
    );
    assert_eq!(
        b.run1(UNDERLAY_PORT, &wire).0,
        Next::Drop(DropReason::CleartextOnEncrypted)
    );
    assert_eq!(b.counters().drops(DropReason::CleartextOnEncrypted), 1);
    assert_eq!(b.counters().port(SECURE_PORT).tx_packets.get(), 0);
}

#[test]
fn esp_replay_tamper_and_unknown_spi() {
    let (k, k2, _) = keys();
    let mut a = Node::new(1, &[k.clone()]);
    let mut b = Node::new(2, &[k]);
    let (_, wire) = a.run1(SECURE_PORT, &secure_frame(1, 2, b"once"));
    assert_eq!(b.run1(UNDERLAY_PORT, &wire).0, Next::Tx(SECURE_PORT));
    assert_eq!(
        b.run1(UNDERLAY_PORT, &wire).0,
        Next::Drop(DropReason::Replayed)
    );

    let (_, mut wire) = a.run1(SECURE_PORT, &secure_frame(1, 2, b"tampered"));
    let last = wire.len() - 20;
    wire[last] ^= 0x80;
    assert_eq!(
        b.run1(UNDERLAY_PORT, &wire).0,
        Next::Drop(DropReason::AuthFailed)
    );

    let mut stranger = Node::new(1, &[k2]);
    let (_, wire) = stranger.run1(SECURE_PORT, &secure_frame(1, 2, b"wrong key"));
    assert_eq!(
        b.run1(UNDERLAY_PORT, &wire).0,
        Next::Drop(DropReason::UnknownSpi)
    );

    // Out of order within the window is fine.
    let w: Vec<Vec<u8>> = (0..40)
        .map(|i| a.run1(SECURE_PORT, &secure_frame(1, 2, &[i as u8; 30])).1)
        .collect();
    let reversed: Vec<Vec<u8>> = w.into_iter().rev().collect();
    for (n, _) in b.run(UNDERLAY_PORT, &reversed) {
        assert_eq!(n, Next::Tx(SECURE_PORT));
    }
    for r in [
        DropReason::Replayed,
        DropReason::AuthFailed,
        DropReason::UnknownSpi,
    ] {
        assert_eq!(b.counters().drops(r), 1, "{r}");
    }
}

/// Docker's three-key rotation, played out over the pipeline with traffic flowing both
/// ways at every step, in the worst order (one node ahead of the other): nothing is lost.
#[test]
fn key_rotation_loses_no_packet() {
    let (k1, k2, k3) = keys();
    let mut a = Node::new(1, &[k1.clone()]);
    let mut b = Node::new(2, &[k1.clone()]);
    let mut sent = 0;
    let mut exchange = |a: &mut Node, b: &mut Node| {
        both_ways(a, b, |x, y, from, to| {
            for i in 0..50u8 {
                let f = secure_frame(from, to, &[i; 100]);
                let (n, wire) = x.run1(SECURE_PORT, &f);
                assert_eq!(n, Next::Tx(UNDERLAY_PORT));
                assert_eq!(y.run1(UNDERLAY_PORT, &wire), (Next::Tx(SECURE_PORT), f));
                sent += 1;
            }
        });
    };
    exchange(&mut a, &mut b);
    // New key arrives as secondary, A first.
    a.publish(&[k1.clone(), k2.clone()], |_| {});
    exchange(&mut a, &mut b);
    b.publish(&[k1.clone(), k2.clone()], |_| {});
    exchange(&mut a, &mut b);
    // The primary switches on A first: A sends with k2, B still with k1.
    a.publish(&[k2.clone(), k1.clone()], |_| {});
    exchange(&mut a, &mut b);
    b.publish(&[k2.clone(), k1.clone()], |_| {});
    exchange(&mut a, &mut b);
    // k3 joins, k1 is pruned.
    a.publish(&[k2.clone(), k3.clone()], |_| {});
    b.publish(&[k2.clone(), k3.clone()], |_| {});
    exchange(&mut a, &mut b);
    assert_eq!(sent, 600);
    assert_eq!(a.counters().total_drops() + b.counters().total_drops(), 0);
}

#[test]
fn proxy_arp_answers_known_endpoints_and_floods_nothing() {
    let mut a = Node::new(1, &[]);
    let req = arp_request(mac_of(plain_ep(1)), plain_ep(1), plain_ep(2));
    let (n, reply) = a.run1(PLAIN_PORT, &req);
    assert_eq!(n, Next::Tx(PLAIN_PORT));
    let f = EthernetFrame::new_checked(&reply[..]).unwrap();
    assert_eq!(
        (f.dst_addr(), f.src_addr()),
        (mac_of(plain_ep(1)), mac_of(plain_ep(2)))
    );
    let r = ArpRepr::parse(&ArpPacket::new_checked(f.payload()).unwrap()).unwrap();
    assert_eq!(r.operation, ArpOperation::Reply);
    assert_eq!(
        (r.sender_ip, r.sender_hw),
        (plain_ep(2), mac_of(plain_ep(2)))
    );
    assert_eq!(
        (r.target_ip, r.target_hw),
        (plain_ep(1), mac_of(plain_ep(1)))
    );

    // Unknown target: not answered, not flooded.
    let req = arp_request(
        mac_of(plain_ep(1)),
        plain_ep(1),
        Ipv4Addr::new(10, 0, 0, 99),
    );
    assert_eq!(
        a.run1(PLAIN_PORT, &req).0,
        Next::Drop(DropReason::ArpNotAnswered)
    );
    // Broadcast IP traffic and unknown unicast are not flooded either.
    let bcast = udp(
        mac_of(plain_ep(1)),
        swarmgate_dataplane::wire::EthernetAddress::BROADCAST,
        plain_ep(1),
        Ipv4Addr::new(10, 0, 0, 255),
        1,
        2,
        b"x",
    );
    assert_eq!(
        a.run1(PLAIN_PORT, &bcast).0,
        Next::Drop(DropReason::UnknownDestination)
    );
    let unknown = plain_frame(1, 77, b"who?");
    assert_eq!(
        a.run1(PLAIN_PORT, &unknown).0,
        Next::Drop(DropReason::UnknownDestination)
    );
    assert_eq!(a.counters().port(UNDERLAY_PORT).tx_packets.get(), 0);
}

/// A remote endpoint's broadcast (an ARP request from a Docker host whose vxlan device has
/// no proxy entry yet) reaches the local endpoints, as the kernel's vxlan device hands it to
/// Docker's bridge; the endpoint's ARP reply goes back through the overlay.
#[test]
fn remote_broadcast_reaches_local_endpoints_and_the_reply_goes_back() {
    let mut b = Node::new(2, &[]);
    let req = arp_request(mac_of(plain_ep(1)), plain_ep(1), plain_ep(2));
    let mut vx = vec![0x08, 0, 0, 0];
    vx.extend_from_slice(&(PLAIN_VNI << 8).to_be_bytes());
    vx.extend_from_slice(&req);
    let outer = udp(
        underlay_mac(1),
        underlay_mac(2),
        vtep(1),
        vtep(2),
        40000,
        4789,
        &vx,
    );
    let (n, inner) = b.run1(UNDERLAY_PORT, &outer);
    assert_eq!(n, Next::Tx(PLAIN_PORT));
    assert_eq!(inner, req, "delivered to the bridge byte for byte");
    // A multicast frame is delivered the same way.
    let mut mc = udp(
        mac_of(plain_ep(1)),
        swarmgate_dataplane::wire::EthernetAddress([0x01, 0x00, 0x5e, 0, 0, 0xfb]),
        plain_ep(1),
        Ipv4Addr::new(224, 0, 0, 251),
        5353,
        5353,
        b"mdns",
    );
    let mut vx2 = vx[..8].to_vec();
    vx2.append(&mut mc);
    let outer = udp(
        underlay_mac(1),
        underlay_mac(2),
        vtep(1),
        vtep(2),
        40001,
        4789,
        &vx2,
    );
    assert_eq!(b.run1(UNDERLAY_PORT, &outer).0, Next::Tx(PLAIN_PORT));

    // The endpoint answers with a unicast ARP reply: encapsulated to node 1.
    let r = ArpRepr::parse(&ArpPacket::new_checked(&req[14..]).unwrap())
        .unwrap()
        .reply_from(mac_of(plain_ep(2)));
    let mut reply = vec![0u8; 42];
    reply[..6].copy_from_slice(&mac_of(plain_ep(1)).0);
    reply[6..12].copy_from_slice(&mac_of(plain_ep(2)).0);
    reply[12..14].copy_from_slice(&[0x08, 0x06]);
    r.emit(&mut reply[14..]);
    let (n, wire) = b.run1(PLAIN_PORT, &reply);
    assert_eq!(n, Next::Tx(UNDERLAY_PORT));
    assert_eq!(&wire[50..], &reply[..]);
    let mut a = Node::new(1, &[]);
    assert_eq!(a.run1(UNDERLAY_PORT, &wire), (Next::Tx(PLAIN_PORT), reply));
}

#[test]
fn underlay_arp_and_ping_are_answered_control_traffic_goes_to_the_kernel() {
    let mut b = Node::new(2, &[]);
    let req = arp_request(underlay_mac(1), vtep(1), vtep(2));
    let (n, reply) = b.run1(UNDERLAY_PORT, &req);
    assert_eq!(n, Next::Tx(UNDERLAY_PORT));
    let r = ArpRepr::parse(&ArpPacket::new_checked(&reply[14..]).unwrap()).unwrap();
    assert_eq!(
        (r.operation, r.sender_ip, r.sender_hw),
        (ArpOperation::Reply, vtep(2), underlay_mac(2))
    );
    // ARP for somebody else on the underlay.
    let req = arp_request(underlay_mac(1), vtep(1), Ipv4Addr::new(192, 168, 50, 9));
    assert_eq!(
        b.run1(UNDERLAY_PORT, &req).0,
        Next::Drop(DropReason::NotForUs)
    );

    // ICMP echo request to our VTEP address.
    let mut ping = vec![0u8; 14 + 20 + 8 + 16];
    swarmgate_dataplane::wire::EthernetRepr {
        src_addr: underlay_mac(1),
        dst_addr: underlay_mac(2),
        vlan_tci: None,
        ethertype: swarmgate_dataplane::wire::EtherType::IPV4,
    }
    .emit(&mut ping);
    Ipv4Repr {
        src_addr: vtep(1),
        dst_addr: vtep(2),
        protocol: IpProtocol::ICMP,
        payload_len: 24,
        ttl: 61,
        dscp_ecn: 0,
        ident: 7,
        dont_frag: false,
    }
    .emit(&mut ping[14..]);
    ping[42..].copy_from_slice(b"0123456789abcdef");
    IcmpEchoRepr {
        request: true,
        ident: 99,
        seq: 3,
        data_len: 16,
    }
    .emit(&mut ping[34..]);
    let (n, pong) = b.run1(UNDERLAY_PORT, &ping);
    assert_eq!(n, Next::Tx(UNDERLAY_PORT));
    let ip = Ipv4Packet::new_checked(&pong[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.ttl()),
        (vtep(2), vtep(1), 64)
    );
    let e = IcmpEchoRepr::parse(&IcmpPacket::new_checked(ip.payload()).unwrap()).unwrap();
    assert_eq!((e.request, e.ident, e.seq), (false, 99, 3));
    assert_eq!(&ip.payload()[8..], b"0123456789abcdef");

    // TCP to 2377 (Raft), UDP to 7946 (gossip): the kernel's.
    let raft = tcp(
        underlay_mac(1),
        underlay_mac(2),
        vtep(1),
        vtep(2),
        50000,
        2377,
        b"raft",
    );
    assert_eq!(b.run1(UNDERLAY_PORT, &raft).0, Next::Exception);
    let gossip = udp(
        underlay_mac(1),
        underlay_mac(2),
        vtep(1),
        vtep(2),
        7946,
        7946,
        b"swim",
    );
    assert_eq!(b.run1(UNDERLAY_PORT, &gossip).0, Next::Exception);
    assert_eq!(b.counters().exception.get(), 2);
}

#[test]
fn decap_validates_every_outer_field() {
    let mut a = Node::new(1, &[]);
    let mut b = Node::new(2, &[]);
    let (_, good) = a.run1(PLAIN_PORT, &plain_frame(1, 2, b"payload"));
    let cases: Vec<(&str, Box<dyn Fn(&mut Vec<u8>)>, DropReason)> = vec![
        ("other MAC", Box::new(|w| w[0] = 0x0a), DropReason::NotForUs),
        (
            "other IP",
            Box::new(|w| {
                w[33] = 9;
                fix_ip(w)
            }),
            DropReason::NotForUs,
        ),
        (
            "bad IP checksum",
            Box::new(|w| w[24] ^= 1),
            DropReason::BadChecksum,
        ),
        (
            "fragment",
            Box::new(|w| {
                w[20] = 0x20;
                fix_ip(w)
            }),
            DropReason::IpFragment,
        ),
        ("no I flag", Box::new(|w| w[42] = 0), DropReason::Malformed),
        (
            "unknown VNI",
            Box::new(|w| w[48] = 0x77),
            DropReason::UnknownVni,
        ),
        (
            "unknown inner dst",
            Box::new(|w| w[50 + 5] = 0x99),
            DropReason::UnknownDestination,
        ),
        (
            "truncated",
            Box::new(|w| w.truncate(40)),
            DropReason::Truncated,
        ),
        (
            "IP length beyond frame",
            Box::new(|w| {
                w[17] = w[17].wrapping_add(20);
                fix_ip(w)
            }),
            DropReason::Truncated,
        ),
    ];
    for (what, mutate, reason) in cases {
        let mut w = good.clone();
        mutate(&mut w);
        assert_eq!(b.run1(UNDERLAY_PORT, &w).0, Next::Drop(reason), "{what}");
    }
    // Another UDP port to our address is not overlay data: the kernel's.
    let mut w = good.clone();
    w[36..38].copy_from_slice(&4790u16.to_be_bytes());
    assert_eq!(b.run1(UNDERLAY_PORT, &w).0, Next::Exception);
    // Reserved bits set are ignored (RFC 7348 §5); Ethernet padding after the IP packet is fine.
    let mut w = good.clone();
    w[43] = 0xff;
    w.extend_from_slice(&[0; 6]);
    assert_eq!(b.run1(UNDERLAY_PORT, &w).0, Next::Tx(PLAIN_PORT));
}

fn fix_ip(w: &mut [u8]) {
    Ipv4Packet::new_unchecked(&mut w[14..34]).fill_checksum();
}

#[test]
fn vip_traffic_is_balanced_translated_and_translated_back() {
    let vip = Ipv4Addr::new(10, 0, 0, 100);
    let backends = [plain_ep(2), Ipv4Addr::new(10, 0, 0, 3)];
    let svc = || vip_service(vip, 8080, 80, &backends);
    // Node 1 has the client (10.0.0.1); node 2 runs task 10.0.0.2; 10.0.0.3 runs on a third node.
    let mut a = Node::new(1, &[]);
    a.publish(&[], |t| {
        let vni = swarmgate_dataplane::wire::Vni::new(PLAIN_VNI).unwrap();
        t.add_remote_endpoint(
            vni,
            backends[1],
            mac_of(backends[1]),
            Ipv4Addr::new(192, 168, 50, 3),
        )
        .unwrap();
        t.set_neighbour(Ipv4Addr::new(192, 168, 50, 3), underlay_mac(3));
        t.add_vip(vni, svc(), mac_of(vip)).unwrap();
    });
    let mut b = Node::new(2, &[]);
    b.publish(&[], |t| {
        let vni = swarmgate_dataplane::wire::Vni::new(PLAIN_VNI).unwrap();
        t.add_vip(vni, svc(), mac_of(vip)).unwrap();
    });

    // The client ARPs for the VIP: answered locally.
    let (n, reply) = a.run1(
        PLAIN_PORT,
        &arp_request(mac_of(plain_ep(1)), plain_ep(1), vip),
    );
    assert_eq!(n, Next::Tx(PLAIN_PORT));
    assert_eq!(&reply[6..12], mac_of(vip).as_bytes());

    // Many connections: each goes to a backend, both backends are used, checksums hold.
    let mut per_backend = [0usize; 2];
    for sport in 30000..30200u16 {
        let syn = tcp(
            mac_of(plain_ep(1)),
            mac_of(vip),
            plain_ep(1),
            vip,
            sport,
            8080,
            b"GET /",
        );
        let (n, wire) = a.run1(PLAIN_PORT, &syn);
        assert_eq!(n, Next::Tx(UNDERLAY_PORT));
        let inner = &wire[50..];
        assert!(l4_checksums_ok(inner));
        let ip = Ipv4Packet::new_checked(&inner[14..]).unwrap();
        assert_eq!(
            ip.src_addr(),
            plain_ep(1),
            "the task sees the client's own address"
        );
        assert_eq!(&ip.payload()[2..4], &80u16.to_be_bytes());
        let idx = backends
            .iter()
            .position(|b| *b == ip.dst_addr())
            .expect("a backend");
        assert_eq!(&inner[0..6], mac_of(backends[idx]).as_bytes());
        per_backend[idx] += 1;
        // Same flow, same backend.
        let (_, again) = a.run1(PLAIN_PORT, &syn);
        assert_eq!(again[50..], wire[50..]);
        if idx == 0 {
            // Node 2 delivers it to its task...
            let (n, delivered) = b.run1(UNDERLAY_PORT, &wire);
            assert_eq!(n, Next::Tx(PLAIN_PORT));
            // ...whose reply is translated back to the VIP on the way out.
            let resp = tcp(
                mac_of(plain_ep(2)),
                mac_of(plain_ep(1)),
                plain_ep(2),
                plain_ep(1),
                80,
                sport,
                b"200 OK",
            );
            let (n, wire) = b.run1(PLAIN_PORT, &resp);
            assert_eq!(n, Next::Tx(UNDERLAY_PORT));
            let (n, back) = a.run1(UNDERLAY_PORT, &wire);
            assert_eq!(n, Next::Tx(PLAIN_PORT));
            assert!(l4_checksums_ok(&back));
            let ip = Ipv4Packet::new_checked(&back[14..]).unwrap();
            assert_eq!(ip.src_addr(), vip);
            assert_eq!(
                &ip.payload()[0..4],
                &[&8080u16.to_be_bytes()[..], &sport.to_be_bytes()[..]].concat()[..]
            );
            drop(delivered);
        }
    }
    assert!(
        per_backend[0] > 60 && per_backend[1] > 60,
        "{per_backend:?}"
    );
}

#[test]
fn vip_without_backends_is_a_counted_drop() {
    let vip = Ipv4Addr::new(10, 0, 0, 100);
    let mut a = Node::new(1, &[]);
    a.publish(&[], |t| {
        let vni = swarmgate_dataplane::wire::Vni::new(PLAIN_VNI).unwrap();
        t.add_vip(vni, vip_service(vip, 80, 80, &[]), mac_of(vip))
            .unwrap();
    });
    let syn = tcp(
        mac_of(plain_ep(1)),
        mac_of(vip),
        plain_ep(1),
        vip,
        1234,
        80,
        b"",
    );
    assert_eq!(
        a.run1(PLAIN_PORT, &syn).0,
        Next::Drop(DropReason::NoBackend)
    );
}

#[test]
fn garbage_never_panics_and_is_always_accounted() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let (k, _, _) = keys();
    let mut a = Node::new(1, &[k.clone()]);
    let b = std::cell::RefCell::new(Node::new(2, &[k]));
    let (_, seed_plain) = a.run1(PLAIN_PORT, &plain_frame(1, 2, b"seed"));
    let (_, seed_esp) = a.run1(SECURE_PORT, &secure_frame(1, 2, b"seed"));
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        ..Config::default()
    });
    let strategy = (
        prop_oneof![
            Just(seed_plain),
            Just(seed_esp),
            proptest::collection::vec(any::<u8>(), 0..200)
        ],
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        any::<usize>(),
        0u16..3,
    );
    runner
        .run(&strategy, |(mut frame, flips, cut, port)| {
            for (at, v) in flips {
                if !frame.is_empty() {
                    let i = at % frame.len();
                    frame[i] = v;
                }
            }
            if !frame.is_empty() && cut % 3 == 0 {
                frame.truncate(cut % frame.len());
            }
            let mut b = b.borrow_mut();
            let before = b.counters().port(port).rx_packets.get();
            let _ = b.run1(port, &frame);
            prop_assert_eq!(b.counters().port(port).rx_packets.get(), before + 1);
            Ok(())
        })
        .unwrap();
    let b = b.borrow();
    let c = b.counters();
    let rx: u64 = (0..3).map(|p| c.port(p).rx_packets.get()).sum();
    let tx: u64 = (0..3).map(|p| c.port(p).tx_packets.get()).sum();
    assert_eq!(rx, tx + c.total_drops() + c.exception.get());
}

#[test]
fn the_kernels_own_traffic_leaves_through_the_underlay() {
    let mut a = Node::new(1, &[]);
    a.publish(&[], |_| {});
    let mut t = (*a.tables).clone();
    t.underlay.exception_port = Some(9);
    t.generation += 1;
    a.tables = std::sync::Arc::new(t);
    // A TCP segment the kernel sends from the exception TAP goes out unchanged.
    let seg = tcp(
        underlay_mac(1),
        underlay_mac(2),
        vtep(1),
        vtep(2),
        2377,
        50000,
        b"raft reply",
    );
    assert_eq!(a.run1(9, &seg), (Next::Tx(UNDERLAY_PORT), seg));
    // And a network cannot take the exception port as its local port.
    let mut t = (*a.tables).clone();
    let spec = swarmgate_dataplane::NetworkSpec {
        vni: swarmgate_dataplane::wire::Vni::new(4200).unwrap(),
        slot: 7,
        local_port: 9,
        mtu: 1450,
        encrypted: false,
    };
    assert_eq!(
        t.add_network(spec),
        Err(swarmgate_dataplane::tables::TableError::PortInUse(9))
    );
}
