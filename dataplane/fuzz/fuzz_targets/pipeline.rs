#![no_main]
//! Whole-pipeline fuzzing: the first byte picks the receive port (underlay, plain
//! network, encrypted network, unknown), the rest is the frame. The pipeline must decide
//! every packet without panicking, and count it.
use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use swarmgate_dataplane::esp::{DatapathKey, SaDatabase};
use swarmgate_dataplane::maglev::{Backend, VipService};
use swarmgate_dataplane::tables::{NetworkSpec, Tables, Underlay};
use swarmgate_dataplane::wire::{EthernetAddress, IpProtocol, Vni};
use swarmgate_dataplane::{Counters, HeapBuf, Next, Worker};

fn tables() -> &'static Arc<Tables> {
    static T: OnceLock<Arc<Tables>> = OnceLock::new();
    T.get_or_init(|| {
        let me = Ipv4Addr::new(192, 168, 50, 2);
        let peer = Ipv4Addr::new(192, 168, 50, 1);
        let mut t = Tables::new(Underlay::new(0, EthernetAddress([2, 0, 0xc0, 0xa8, 0x32, 2]), me));
        t.set_neighbour(peer, EthernetAddress([2, 0, 0xc0, 0xa8, 0x32, 1]));
        let mut sas = SaDatabase::new(
            swarmgate_aead::IcvLen::Icv8,
            std::sync::Arc::new(swarmgate_dataplane::esp::EpochSource::new(1, u32::MAX)),
        );
        sas.set_peer_keys(me, peer, &[DatapathKey { key: [1; 16], tag: 1 }]).unwrap();
        t.esp = sas.tables();
        for (vni, port, enc) in [(4097u32, 1u16, false), (4098, 2, true)] {
            let vni = Vni::new(vni).unwrap();
            t.add_network(NetworkSpec { vni, slot: port, local_port: port, mtu: 1450, encrypted: enc }).unwrap();
            let base = if enc { 1 } else { 0 };
            let local = Ipv4Addr::new(10, 0, base, 2);
            let remote = Ipv4Addr::new(10, 0, base, 1);
            t.add_local_endpoint(vni, EthernetAddress::from_ipv4_docker(local)).unwrap();
            t.add_remote_endpoint(vni, remote, EthernetAddress::from_ipv4_docker(remote), peer).unwrap();
            let vip = Ipv4Addr::new(10, 0, base, 100);
            let svc = VipService::new(vip, IpProtocol::TCP, 80, 8080, vec![
                Backend { ip: local, mac: EthernetAddress::from_ipv4_docker(local) },
                Backend { ip: remote, mac: EthernetAddress::from_ipv4_docker(remote) },
            ]).unwrap();
            t.add_vip(vni, svc, EthernetAddress::from_ipv4_docker(vip)).unwrap();
        }
        Arc::new(t)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else { return };
    let port = (sel % 4) as u16;
    let t = tables();
    let counters = Arc::new(Counters::default());
    let mut w = Worker::new(counters.clone());
    let mut bufs = [HeapBuf::from_frame(frame, 64)];
    let mut next = [Next::Exception];
    w.process(t, port, &mut bufs, &mut next);
    let c = &counters;
    let rx = c.port(port).rx_packets.get();
    let tx: u64 = (0..4).map(|p| c.port(p).tx_packets.get()).sum();
    assert_eq!(rx, 1);
    assert_eq!(tx + c.total_drops() + c.exception.get(), 1);
});
