#![no_main]
//! Whole-pipeline fuzzing over every path the daemon uses: the first byte picks the
//! receive port (underlay, plain network, encrypted network with real SAs, a routed
//! network with a router, local hosts, a VIP and a published port, or an unknown port) and
//! how far the worker's clock moves (so tracked connections age and expire); the rest is
//! the frame. One worker and its flow table live for the whole process, as on a gateway, so
//! inputs build on the connections earlier inputs opened. The pipeline must decide every
//! packet without panicking, and count it exactly once.
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use swarmgate_dataplane::esp::{DatapathKey, EpochSource, SaDatabase, SenderIvs};
use swarmgate_dataplane::flow::FlowTable;
use swarmgate_dataplane::maglev::{Backend, VipService};
use swarmgate_dataplane::tables::{NetworkSpec, Router, Tables, Underlay};
use swarmgate_dataplane::wire::{EthernetAddress, IpProtocol, Vni};
use swarmgate_dataplane::{Counters, HeapBuf, Next, Worker};

const PORTS: u8 = 5;

fn mac(ip: Ipv4Addr) -> EthernetAddress {
    EthernetAddress::from_ipv4_docker(ip)
}

fn backends(ips: &[Ipv4Addr]) -> Vec<Backend> {
    ips.iter().map(|ip| Backend { ip: *ip, mac: mac(*ip) }).collect()
}

fn tables() -> &'static Arc<Tables> {
    static T: OnceLock<Arc<Tables>> = OnceLock::new();
    T.get_or_init(|| {
        let me = Ipv4Addr::new(192, 168, 50, 2);
        let peer = Ipv4Addr::new(192, 168, 50, 1);
        let mut t = Tables::new(Underlay::new(0, EthernetAddress([2, 0, 0xc0, 0xa8, 0x32, 2]), me));
        t.set_neighbour(peer, EthernetAddress([2, 0, 0xc0, 0xa8, 0x32, 1]));
        let mut sas = SaDatabase::new(swarmgate_aead::IcvLen::Icv8, Arc::new(EpochSource::new(1, u32::MAX)));
        sas.set_peer_keys(me, peer, &[DatapathKey { key: [1; 16], tag: 1 }, DatapathKey { key: [2; 16], tag: 2 }], SenderIvs::KernelSeqiv)
            .unwrap();
        t.esp = sas.tables();
        for (vni, port, enc) in [(4097u32, 1u16, false), (4098, 2, true)] {
            let vni = Vni::new(vni).unwrap();
            t.add_network(NetworkSpec { vni, slot: port, local_port: port, mtu: 1450, encrypted: enc }).unwrap();
            let base = if enc { 1 } else { 0 };
            let local = Ipv4Addr::new(10, 0, base, 2);
            let remote = Ipv4Addr::new(10, 0, base, 1);
            t.add_local_endpoint(vni, mac(local)).unwrap();
            t.add_remote_endpoint(vni, remote, mac(remote), peer).unwrap();
            let vip = Ipv4Addr::new(10, 0, base, 100);
            let svc = VipService::new(vip, IpProtocol::TCP, 80, 8080, backends(&[local, remote])).unwrap();
            t.add_vip(vni, svc, mac(vip)).unwrap();
        }
        // The daemon's kind of network: routed, with local hosts, a remote one, a VIP
        // (any port and port 80) and published TCP and UDP ports.
        let vni = Vni::new(4099).unwrap();
        t.add_network(NetworkSpec { vni, slot: 3, local_port: 3, mtu: 1450, encrypted: false }).unwrap();
        let gw = Ipv4Addr::new(10, 0, 2, 1);
        let router = Router { mac: mac(gw), gateway: gw };
        t.set_router(vni, router).unwrap();
        let (h2, h3, h9) = (Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(10, 0, 2, 9));
        t.add_local_host(vni, h2, mac(h2)).unwrap();
        t.add_local_host(vni, h3, mac(h3)).unwrap();
        t.add_remote_endpoint(vni, h9, mac(h9), peer).unwrap();
        let vip = Ipv4Addr::new(10, 0, 2, 100);
        t.add_vip(vni, VipService::new(vip, IpProtocol::TCP, 80, 8080, backends(&[h2, h3, h9])).unwrap(), router.mac)
            .unwrap();
        t.add_vip(vni, VipService::new(vip, IpProtocol::UDP, 0, 0, backends(&[h2, h9])).unwrap(), router.mac)
            .unwrap();
        t.add_ingress(vni, VipService::new(me, IpProtocol::TCP, 8080, 80, backends(&[h2, h3, h9])).unwrap())
            .unwrap();
        t.add_ingress(vni, VipService::new(me, IpProtocol::UDP, 5353, 53, backends(&[h3])).unwrap())
            .unwrap();
        Arc::new(t)
    })
}

struct State {
    worker: Worker,
    counters: Arc<Counters>,
    now: u32,
}

fn state() -> &'static Mutex<State> {
    static S: OnceLock<Mutex<State>> = OnceLock::new();
    S.get_or_init(|| {
        let counters = Arc::new(Counters::default());
        // A small table, so that inputs fill windows and exercise eviction.
        let worker = Worker::with_flow_table(counters.clone(), FlowTable::with_key(256, 300, [9; 16]));
        Mutex::new(State { worker, counters, now: 0 })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else { return };
    let port = (sel % PORTS) as u16;
    let t = tables();
    let mut s = state().lock().unwrap_or_else(|e| e.into_inner());
    s.now = s.now.wrapping_add((sel / PORTS) as u32 % 16);
    let now = s.now;
    s.worker.set_now(now);
    let c = s.counters.clone();
    let total = |c: &Counters| {
        let tx: u64 = (0..PORTS as u16).map(|p| c.port(p).tx_packets.get()).sum();
        (c.port(port).rx_packets.get(), tx + c.total_drops() + c.exception.get())
    };
    let (rx0, out0) = total(&c);
    let mut bufs = [HeapBuf::from_frame(frame, 64)];
    let mut next = [Next::Exception];
    s.worker.process(t, port, &mut bufs, &mut next);
    let (rx1, out1) = total(&c);
    assert_eq!(rx1 - rx0, 1);
    assert_eq!(out1 - out0, 1, "every packet is counted once: {:?}", next[0]);
    assert!(s.worker.flows().len() <= s.worker.flows().capacity());
});
