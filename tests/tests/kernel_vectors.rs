//! Wire compatibility with the Linux kernel's vxlan device, from packets it really sent.
//!
//! The two frames below were captured on the underlay veth of a network namespace in
//! which the kernel's vxlan device (`ip link add vxlan0 type vxlan id 4097 dstport 4789
//! local 192.168.50.1 remote 192.168.50.2 dev u1`, endpoint 10.0.0.1 with MAC
//! 02:42:0a:00:00:01) carried `ping -p 6162636465 -s 24 10.0.0.2`: once with `noudpcsum`
//! (how Docker creates its vxlan devices) and once with `udpcsum` (iproute2's default),
//! transmit checksum offload off so the checksum on the wire is complete.

use swarmgate_dataplane::tables::Underlay;
use swarmgate_dataplane::wire::Ipv4Packet;
use swarmgate_dataplane::{DropReason, Next};
use swarmgate_tests::*;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const KERNEL_NOUDPCSUM: &str = "0200c0a832020200c0a8320108004500006652d1000040114262c0a83201c0a83202ebd212b500520000080000000010010002420a00000202420a00000108004500003464da40004001c1ec0a0000010a00000208001367211f00019d930a6b000000008eea0100000000006263646561626364";
const KERNEL_UDPCSUM: &str = "0200c0a832020200c0a8320108004500006637de000040115d55c0a83201c0a83202ebd212b50052f1d6080000000010010002420a00000202420a000001080045000034b722400040016fa40a0000010a0000020800104c216500019d930a6b0000000088bf0a00000000006263646561626364";

const OUTER_LEN: usize = 14 + 20 + 8 + 8;

#[test]
fn kernel_packets_decapsulate_to_the_inner_frame() {
    for hex in [KERNEL_NOUDPCSUM, KERNEL_UDPCSUM] {
        let wire = unhex(hex);
        let mut b = Node::new(2, &[]);
        let (next, out) = b.run1(UNDERLAY_PORT, &wire);
        assert_eq!(next, Next::Tx(PLAIN_PORT));
        assert_eq!(out, wire[OUTER_LEN..]);
        assert_eq!(b.counters().network(0).decap_packets.get(), 1);
    }
}

#[test]
fn corrupted_udp_checksum_is_dropped() {
    let mut wire = unhex(KERNEL_UDPCSUM);
    let last = wire.len() - 1;
    wire[last] ^= 0x01;
    let mut b = Node::new(2, &[]);
    assert_eq!(
        b.run1(UNDERLAY_PORT, &wire).0,
        Next::Drop(DropReason::BadChecksum)
    );
}

#[test]
fn our_encapsulation_matches_the_kernel_byte_for_byte() {
    let wire = unhex(KERNEL_NOUDPCSUM);
    let inner = &wire[OUTER_LEN..];
    let mut a = Node::new(1, &[]);
    // With DF clear, as the kernel sends by default.
    let underlay = Underlay {
        dont_fragment: false,
        ..a.tables.underlay
    };
    a.tables = std::sync::Arc::new({
        let mut t = (*a.tables).clone();
        t.underlay = underlay;
        t.generation += 1;
        t
    });
    let (next, out) = a.run1(PLAIN_PORT, inner);
    assert_eq!(next, Next::Tx(UNDERLAY_PORT));
    assert_eq!(out.len(), wire.len());
    // Identical except the fields each sender picks for itself: the IPv4 identification
    // (and so the header checksum) and the flow-hash UDP source port.
    let masked = |v: &[u8]| {
        let mut v = v.to_vec();
        for i in [18, 19, 24, 25, 34, 35] {
            v[i] = 0;
        }
        v
    };
    assert_eq!(masked(&out), masked(&wire));
    assert!(Ipv4Packet::new_checked(&out[14..])
        .unwrap()
        .verify_checksum());
    let sport = u16::from_be_bytes([out[34], out[35]]);
    assert!((32768..61000).contains(&sport));

    // With DF set (our default) only the flags differ as well.
    let mut a = Node::new(1, &[]);
    let (_, out) = a.run1(PLAIN_PORT, inner);
    assert_eq!(out[20], 0x40);
    let mut m = masked(&out);
    m[20] = 0;
    assert_eq!(m, masked(&wire));
}
