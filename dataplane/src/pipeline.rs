//! The burst pipeline: what a worker core does with every burst it receives.
//!
//! In VPP's manner, a burst of up to [`BURST`] packets goes through a few stages, each
//! stage looping over the whole burst before the next one runs, so each stage's code and
//! tables stay hot in cache. A per-packet `Step` array carries each packet's decision from
//! stage to stage; the last stage turns it into the caller's [`Next`] array:
//!
//! 1. **input** — parse, classify and handle what ends at once (proxy ARP, our own ARP and
//!    ICMP echo, drops, the exception path); local-port frames get their VIP translation
//!    and forwarding lookup; underlay packets are stripped to their UDP or ESP header;
//! 2. **esp-decrypt** — SA lookup by SPI, anti-replay check, AES-GCM open;
//! 3. **vxlan-decap** — VNI, encryption policy and inner destination checks;
//!    (2 and 3 run only for bursts from the underlay, the only ones with such steps);
//! 4. **vxlan-encap** — outer headers from a per-burst template (and ESP for encrypted
//!    networks), in one pass with
//! 5. **output** — next-hop decisions and counters (alone, without 4's arm, for a burst
//!    with nothing to encapsulate: most bursts from the underlay).
//!
//! Nothing here allocates, locks or logs per packet: tables are read from an immutable
//! snapshot, replay windows live in the worker and are created when a snapshot arrives,
//! counters are single-writer.

use core::net::Ipv4Addr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::buf::PacketBuf;
use crate::counters::{Counters, DropReason};
use crate::esp::{self, RxWindow, SeqBlock};
use crate::flow::{FlowAction, FlowKey, FlowTable, Segment};
use crate::hash::{flow_hash_v4, fmix64};
use crate::maglev::VipService;
use crate::nat::{self, Side};
use crate::tables::{FdbEntry, Network, PortId, Router, ServiceKey, Tables, Underlay};
use crate::vxlan;
use crate::wire::checksum::update16;
use crate::wire::icmp::{self, IcmpEchoRepr, IcmpPacket};
use crate::wire::{
    ethernet, get_u16, put_u16, ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress,
    EthernetFrame, IpProtocol, Ipv4Packet, Spi, UdpPacket,
};

/// Packets per burst, as DPDK applications conventionally use.
pub const BURST: usize = 32;

/// What the caller does with a packet after the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Free it; counted under this reason.
    Drop(DropReason),
    /// Transmit it on this port.
    Tx(PortId),
    /// Hand it to the kernel through the exception path (control traffic, ARP replies,
    /// anything not overlay data).
    Exception,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Done(Next),
    /// The inner frame is ready; encapsulate it for `vtep` on network index `net`, with
    /// outer UDP source port `sport`.
    Encap {
        net: u16,
        vtep: Ipv4Addr,
        sport: u16,
    },
    /// `buf` starts at an ESP header that arrived from `src`.
    EspOpen {
        src: Ipv4Addr,
    },
    /// `buf` starts at the UDP header of a VXLAN datagram from VTEP `src`.
    Decap {
        via_esp: bool,
        src: Ipv4Addr,
    },
}

/// One worker's pipeline state.
#[derive(Debug)]
pub struct Worker {
    counters: Arc<Counters>,
    replay: FxHashMap<Spi, RxWindow>,
    generation: Option<u64>,
    flows: FlowTable,
    now: u32,
}

impl Worker {
    /// A worker writing into `counters`, with a flow table of the default size.
    pub fn new(counters: Arc<Counters>) -> Worker {
        Worker::with_flow_table(
            counters,
            FlowTable::new(
                crate::flow::DEFAULT_CAPACITY,
                crate::flow::DEFAULT_IDLE_SECS,
            ),
        )
    }

    /// A worker with its own flow table.
    pub fn with_flow_table(counters: Arc<Counters>, flows: FlowTable) -> Worker {
        Worker {
            counters,
            replay: FxHashMap::default(),
            generation: None,
            flows,
            now: 0,
        }
    }

    /// Sets the worker's clock (whole seconds, any origin) used to age tracked flows.
    #[inline]
    pub fn set_now(&mut self, secs: u32) {
        self.now = secs;
    }

    /// The tracked flows (two entries per load-balanced connection).
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// This worker's counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Makes per-SA state match a newly seen snapshot: replay state for every inbound SA, of
    /// its sender's kind (created here, so the packet path never allocates), none for SAs that are gone.
    fn adopt(&mut self, tables: &Tables) {
        if self.generation == Some(tables.generation) {
            return;
        }
        self.replay
            .retain(|spi, w| tables.esp.rx.get(spi).is_some_and(|sa| sa.ivs == w.ivs()));
        for (spi, sa) in &tables.esp.rx {
            self.replay
                .entry(*spi)
                .or_insert_with(|| RxWindow::new(sa.ivs));
        }
        self.generation = Some(tables.generation);
    }

    /// Runs the pipeline over `pkts`, all received on `rx_port`, and writes a decision for
    /// each into `next` (which must be at least as long). Any number of packets is taken;
    /// they are processed in bursts of [`BURST`].
    pub fn process<B: PacketBuf>(
        &mut self,
        tables: &Tables,
        rx_port: PortId,
        pkts: &mut [B],
        next: &mut [Next],
    ) {
        assert!(
            next.len() >= pkts.len(),
            "next array shorter than the burst"
        );
        self.adopt(tables);
        let evictions = self.flows.evictions();
        for (p, n) in pkts.chunks_mut(BURST).zip(next.chunks_mut(BURST)) {
            self.burst(tables, rx_port, p, n);
        }
        let evicted = self.flows.evictions() - evictions;
        if evicted > 0 {
            self.counters.flow_evictions.add(evicted);
        }
    }

    fn burst<B: PacketBuf>(
        &mut self,
        t: &Tables,
        rx_port: PortId,
        pkts: &mut [B],
        next: &mut [Next],
    ) {
        let c = &*self.counters;
        let n = pkts.len();
        let mut steps = [Step::Done(Next::Exception); BURST];

        // 1. input
        let mut rx_bytes = 0u64;
        if Some(rx_port) == t.underlay.exception_port {
            // The kernel's own traffic (ARP, Raft, gossip, SSH replies) leaves through the
            // underlay as it is.
            for i in 0..n {
                rx_bytes += pkts[i].len() as u64;
                steps[i] = Step::Done(Next::Tx(t.underlay.port));
            }
        } else if rx_port == t.underlay.port {
            for i in 0..n {
                rx_bytes += pkts[i].len() as u64;
                steps[i] = input_underlay(t, &mut self.flows, self.now, &mut pkts[i]);
            }
        } else {
            match t.network_index_by_port(rx_port) {
                Some((ni, net)) => {
                    for i in 0..n {
                        rx_bytes += pkts[i].len() as u64;
                        steps[i] = input_local(
                            ni,
                            net,
                            &t.underlay,
                            &mut self.flows,
                            self.now,
                            &mut pkts[i],
                        );
                    }
                }
                None => {
                    for i in 0..n {
                        rx_bytes += pkts[i].len() as u64;
                        steps[i] = Step::Done(Next::Drop(DropReason::UnknownPort));
                    }
                }
            }
        }
        let pc = c.port(rx_port);
        pc.rx_packets.add(n as u64);
        pc.rx_bytes.add(rx_bytes);

        // 2-3 only for bursts from the underlay: only `input_underlay` yields ESP and
        // VXLAN steps (a burst from a local port skips two passes over its steps).
        if rx_port == t.underlay.port {
            // 2. esp-decrypt
            for i in 0..n {
                if let Step::EspOpen { src } = steps[i] {
                    steps[i] = match esp_open(&mut self.replay, t, src, &mut pkts[i]) {
                        Ok(()) => Step::Decap { via_esp: true, src },
                        Err(r) => Step::Done(Next::Drop(r)),
                    };
                }
            }

            // 3. vxlan-decap
            for i in 0..n {
                if let Step::Decap { via_esp, src } = steps[i] {
                    steps[i] = match vxlan::decapsulate(&mut pkts[i], t, via_esp) {
                        Ok(d) => {
                            let net = &t.networks()[d.network];
                            let nc = c.network(net.spec.slot);
                            nc.decap_packets.add(1);
                            nc.decap_bytes.add(d.inner_len as u64);
                            match &net.router {
                                Some(r) => from_remote(
                                    &mut self.flows,
                                    self.now,
                                    net,
                                    r,
                                    &t.underlay,
                                    src,
                                    pkts[i].data_mut(),
                                ),
                                None => Step::Done(Next::Tx(net.spec.local_port)),
                            }
                        }
                        Err(r) => Step::Done(Next::Drop(r)),
                    };
                }
            }
        }

        // 4-5. vxlan-encap and output. A burst from a local port is mostly encapsulated;
        //    one from the underlay rarely (only the routing mesh's forwarded connections),
        //    and then takes the output pass without the encapsulation's arm in it.
        let encaps = rx_port != t.underlay.port
            || steps[..n].iter().any(|s| matches!(s, Step::Encap { .. }));
        if encaps {
            encap_output(c, t, &steps[..n], pkts, next);
        } else {
            output(c, &steps[..n], pkts, next);
        }
    }
}

/// Counts a packet's transmit port once per run of packets to that port.
fn tx_count(c: &Counters) -> impl Fn(PortId, u64, u64) + '_ {
    move |port, pkts, bytes| {
        let pc = c.port(port);
        pc.tx_packets.add(pkts);
        pc.tx_bytes.add(bytes);
    }
}

/// Output: records each packet's decision and counts it (transmit counters per run of
/// packets to one port, written once per run, not once per packet).
#[inline]
fn emit(c: &Counters, tx: &mut Run<PortId>, decision: Next, len: u64, next: &mut Next) {
    match decision {
        Next::Tx(port) => tx.add(port, len, tx_count(c)),
        Next::Drop(r) => c.count_drop(r, 1),
        Next::Exception => c.exception.add(1),
    }
    *next = decision;
}

/// 5. output, for a burst whose every step is resolved.
#[inline(always)]
fn output<B: PacketBuf>(c: &Counters, steps: &[Step], pkts: &[B], next: &mut [Next]) {
    let mut tx = Run::<PortId>::default();
    for (i, step) in steps.iter().enumerate() {
        let decision = match *step {
            Step::Done(x) => x,
            // Every other step was resolved by its stage.
            _ => Next::Drop(DropReason::Unsupported),
        };
        emit(c, &mut tx, decision, pkts[i].len() as u64, &mut next[i]);
    }
    tx.finish(tx_count(c));
}

/// 4-5. vxlan-encap and output, in one pass. Encapsulation keeps the outer headers (and so
/// the neighbour lookup) of the last destination: consecutive packets mostly go to the same
/// (network, VTEP). For an encrypted network it also keeps the sequence numbers reserved
/// from the SA for that run of packets: one reservation per run, not per packet.
/// Encapsulation counters are summed per run of packets of one network.
#[inline(always)]
fn encap_output<B: PacketBuf>(
    c: &Counters,
    t: &Tables,
    steps: &[Step],
    pkts: &mut [B],
    next: &mut [Next],
) {
    let mut last: Option<(u16, Ipv4Addr, &Network, vxlan::OuterHeaders)> = None;
    let mut seqs = SeqBlock::default();
    let mut tx = Run::<PortId>::default();
    let mut encapsulated = Run::<u16>::default();
    let encap_count = |slot: u16, pkts: u64, bytes: u64| {
        let nc = c.network(slot);
        nc.encap_packets.add(pkts);
        nc.encap_bytes.add(bytes);
    };
    for (i, step) in steps.iter().enumerate() {
        // The frame's length as it leaves (an encapsulated frame's is read again).
        let mut len = pkts[i].len() as u64;
        let decision = match *step {
            Step::Done(x) => x,
            Step::Encap { net, vtep, sport } => {
                if !matches!(&last, Some((n, ip, _, _)) if *n == net && *ip == vtep) {
                    let network = &t.networks()[net as usize];
                    last = t.neighbours.get(&vtep).map(|mac| {
                        let h = vxlan::OuterHeaders::new(
                            &t.underlay,
                            network.spec.vni,
                            vtep,
                            *mac,
                            network.spec.encrypted,
                        );
                        (net, vtep, network, h)
                    });
                    // Numbers left from the previous run are never sent: a gap.
                    seqs = SeqBlock::default();
                }
                match &last {
                    Some((_, _, network, h)) => {
                        // This packet and those after it to the same (network, VTEP).
                        let run = || {
                            steps[i..]
                                .iter()
                                .take_while(|s| {
                                    matches!(s, Step::Encap { net: n, vtep: v, .. }
                                        if *n == net && *v == vtep)
                                })
                                .count()
                        };
                        let pkt = &mut pkts[i];
                        let done = encap(t, network, vtep, h, sport, (&mut seqs, run), pkt);
                        match done {
                            Ok(()) => {
                                encapsulated.add(network.spec.slot, len, encap_count);
                                len = pkts[i].len() as u64;
                                Next::Tx(t.underlay.port)
                            }
                            Err(r) => Next::Drop(r),
                        }
                    }
                    None => Next::Drop(DropReason::NoNeighbour),
                }
            }
            // Every other step was resolved by its stage.
            _ => Next::Drop(DropReason::Unsupported),
        };
        emit(c, &mut tx, decision, len, &mut next[i]);
    }
    tx.finish(tx_count(c));
    encapsulated.finish(encap_count);
}

/// The packets and bytes of a run of packets with one key (a port, a network's counter
/// slot), handed to the shared counters once per run rather than once per packet.
#[derive(Default)]
struct Run<K> {
    key: K,
    pkts: u64,
    bytes: u64,
}

impl<K: Copy + PartialEq> Run<K> {
    /// Counts one packet of `bytes` for `key`, flushing the run before if its key differs.
    #[inline]
    fn add(&mut self, key: K, bytes: u64, flush: impl Fn(K, u64, u64)) {
        if key != self.key && self.pkts > 0 {
            flush(self.key, self.pkts, self.bytes);
            (self.pkts, self.bytes) = (0, 0);
        }
        self.key = key;
        self.pkts += 1;
        self.bytes += bytes;
    }

    /// Flushes what is left.
    #[inline]
    fn finish(&self, flush: impl Fn(K, u64, u64)) {
        if self.pkts > 0 {
            flush(self.key, self.pkts, self.bytes);
        }
    }
}

fn esp_open<B: PacketBuf>(
    replay: &mut FxHashMap<Spi, RxWindow>,
    t: &Tables,
    src: Ipv4Addr,
    buf: &mut B,
) -> Result<(), DropReason> {
    {
        let spi = crate::wire::EspPacket::new_checked(buf.data())?
            .spi()
            .map_err(|_| DropReason::UnknownSpi)?;
        let sa = t.esp.rx.get(&spi).ok_or(DropReason::UnknownSpi)?;
        if sa.src != src || sa.dst != t.underlay.ip {
            return Err(DropReason::UnknownSpi);
        }
        let window = replay.get_mut(&spi).ok_or(DropReason::UnknownSpi)?;
        let next_header = esp::open(buf, sa, window)?;
        if next_header != IpProtocol::UDP.0 {
            return Err(DropReason::EspNotVxlan);
        }
        Ok(())
    }
}

/// Encapsulates one packet behind `headers`; for an encrypted network, with the next
/// sequence number of `seqs`, which is first refilled from the SA for `run()` packets (this
/// one and those after it to the same destination) when empty.
#[inline]
fn encap<B: PacketBuf>(
    t: &Tables,
    net: &Network,
    vtep: Ipv4Addr,
    headers: &vxlan::OuterHeaders,
    src_port: u16,
    (seqs, run): (&mut SeqBlock, impl FnOnce() -> usize),
    buf: &mut B,
) -> Result<(), DropReason> {
    let sa = if net.spec.encrypted {
        let sa = &**t.esp.tx.get(&vtep).ok_or(DropReason::NoOutboundSa)?;
        if seqs.is_empty() {
            *seqs = sa.reserve(run().min(BURST) as u32)?;
        }
        Some((sa, seqs.take().ok_or(DropReason::SeqExhausted)?))
    } else {
        None
    };
    vxlan::encapsulate_with(buf, headers, src_port, sa)
}

/// A frame from a network's local port (the node's bridge for that network).
#[inline]
fn input_local<B: PacketBuf>(
    ni: usize,
    net: &Network,
    u: &Underlay,
    flows: &mut FlowTable,
    now: u32,
    buf: &mut B,
) -> Step {
    let drop = |r: DropReason| Step::Done(Next::Drop(r));
    let data = buf.data_mut();
    let (hl, ethertype, src, mut dst) = match EthernetFrame::new_checked(&*data) {
        Ok(f) => (f.header_len(), f.ethertype(), f.src_addr(), f.dst_addr()),
        Err(e) => return drop(e.into()),
    };
    let tagged = hl != ethernet::HEADER_LEN;
    if ethertype == EtherType::ARP && !tagged && !is_arp_reply(data, hl) {
        // A routed network's endpoints learn only the router's MAC, for every address
        // (local, remote, VIP): their bridge ports are isolated from each other, so a
        // remote endpoint's own MAC, cached while it was remote, would cut them off from
        // it the moment its address belonged to a local endpoint.
        let answer = |ip| match &net.router {
            Some(r) => net.arp.get(&ip).map(|_| r.mac),
            None => net.arp.get(&ip).copied(),
        };
        return match arp_reply(data, hl, answer) {
            Ok(()) => Step::Done(Next::Tx(net.spec.local_port)),
            Err(r) => drop(r),
        };
    }
    // ARP replies (a local endpoint answering a remote broadcast request) are forwarded
    // like any unicast frame below.
    if dst.is_multicast() {
        // No flooding: broadcast and multicast stop here, as on Docker's vxlan devices.
        return drop(DropReason::UnknownDestination);
    }
    if let Some(r) = &net.router {
        // Every IPv4 packet of a routed network goes through the router, whatever MAC its
        // sender put on it (a remote endpoint's, from proxy ARP, or a stale one): frames
        // reach local endpoints only with the router's MAC as their source, so the
        // node's bridge never learns an endpoint's MAC on the data plane's port (which
        // would cut that endpoint off until it spoke again).
        if dst == r.mac || (ethertype == EtherType::IPV4 && !tagged) {
            if ethertype != EtherType::IPV4 || tagged {
                return drop(DropReason::Unsupported);
            }
            return route(ni, net, r, u, flows, now, data, hl);
        }
    }
    // One parse of the IPv4 5-tuple serves both VIP translation and the outer source port.
    let mut hash = None;
    if ethertype == EtherType::IPV4 && !tagged {
        if let Ok(p) = Ipv4Packet::new_checked(&data[hl..]) {
            let flow = Flow::with_ports(&p, nat::ports(&p).unwrap_or((0, 0)));
            let h = flow.hash();
            hash = Some(h);
            if !(net.vips.is_empty() && net.reverse.is_empty()) && !p.is_fragment() {
                match translate(net, &mut data[hl..], &flow, h) {
                    Ok(Some(mac)) => {
                        EthernetFrame::new_unchecked(&mut *data).set_dst_addr(mac);
                        dst = mac;
                    }
                    Ok(None) => {}
                    Err(r) => return drop(r),
                }
            }
        }
    }
    let hash = hash.unwrap_or_else(|| {
        fmix64(src.to_u64() ^ dst.to_u64().rotate_left(17) ^ ethertype.0 as u64)
    });
    match net.fdb.get(&dst) {
        Some(FdbEntry::Local) => Step::Done(Next::Tx(net.spec.local_port)),
        Some(FdbEntry::Remote(vtep)) => {
            if data.len() - hl > net.spec.mtu as usize {
                return drop(DropReason::MtuExceeded);
            }
            Step::Encap {
                net: ni as u16,
                vtep: *vtep,
                sport: vxlan::port_from_hash(hash),
            }
        }
        None => drop(DropReason::UnknownDestination),
    }
}

/// A frame that came over VXLAN from VTEP `vtep` on a routed network. Anything but unicast
/// IPv4 is dropped, and its source MAC becomes the router's. Then, by its connection:
/// * the reply of a connection this node load-balanced to a backend on another node: for a
///   VIP its source goes back to the VIP (and port) the client used (the client's node
///   tracked the connection when it chose the backend, as Docker's IPVS does in the
///   client's sandbox), and it goes to the client; for a published port (the routing mesh)
///   its source goes back to this node's address and port and it leaves through the
///   underlay to the client, from this node, which the client connected to;
/// * a new connection from outside the network (a published port's client, whose address
///   the network does not have) that another node's routing mesh sent to a local backend:
///   its reply path is remembered — the backend's replies go back to that node over the
///   overlay, not out of this node, which the client never spoke to;
/// * anything else is delivered to the local endpoint unchanged.
#[inline]
fn from_remote(
    flows: &mut FlowTable,
    now: u32,
    net: &Network,
    router: &Router,
    u: &Underlay,
    vtep: Ipv4Addr,
    data: &mut [u8],
) -> Step {
    let drop = |r: DropReason| Step::Done(Next::Drop(r));
    let local = Step::Done(Next::Tx(net.spec.local_port));
    let f = match EthernetFrame::new_checked(&*data) {
        Ok(f) => f,
        Err(e) => return drop(e.into()),
    };
    let hl = f.header_len();
    // Only routed unicast IPv4 crosses between the nodes of a routed network (ARP is
    // answered on each node): anything else could teach the bridge a MAC on the data
    // plane's port.
    if f.ethertype() != EtherType::IPV4 || hl != ethernet::HEADER_LEN || f.dst_addr().is_multicast()
    {
        return drop(DropReason::Unsupported);
    }
    // A frame for the router itself is a routing-mesh reply; one this node no longer
    // tracks has nowhere to go.
    let for_router = f.dst_addr() == router.mac;
    let local = if for_router {
        drop(DropReason::UnknownDestination)
    } else {
        local
    };
    // From the router, as everything a local endpoint receives (see `input_local`).
    EthernetFrame::new_unchecked(&mut *data).set_src_addr(router.mac);
    let (flow, seg) = match Ipv4Packet::new_checked(&data[hl..]) {
        Ok(p) if !p.is_fragment() => match nat::ports(&p) {
            Some(ports) => (Flow::with_ports(&p, ports), segment(&p)),
            None => return local,
        },
        _ => return local,
    };
    let found = flows.lookup(&flow.key(), seg, now);
    if let (Some(action), Segment::Rst) = (&found, seg) {
        close_pair(flows, &flow, action, now);
    }
    match found {
        Some(FlowAction::Snat {
            ip,
            port,
            via,
            dnat: None,
        }) => {
            if let Err(e) = nat::rewrite(&mut data[hl..], Side::Source, ip, port) {
                return drop(e);
            }
            if let Some(mac) = via {
                let mut f = EthernetFrame::new_unchecked(&mut *data);
                f.set_dst_addr(mac);
                f.set_src_addr(u.mac);
                return Step::Done(Next::Tx(u.port));
            }
            local
        }
        Some(_) => local,
        None => {
            // A client the network does not know, to a local endpoint: the routing mesh of
            // the node `vtep` sent it here.
            if opens(seg) && net.local.contains_key(&flow.dst) && !net.arp.contains_key(&flow.src) {
                flows.insert(
                    FlowKey::new(flow.proto, flow.dst, flow.dport, flow.src, flow.sport),
                    FlowAction::Return { vtep },
                    now,
                );
            }
            local
        }
    }
}

/// A packet addressed to the router of a routed network: connection tracking and VIP
/// translation, then delivery by destination address.
#[allow(clippy::too_many_arguments)]
#[inline]
fn route(
    ni: usize,
    net: &Network,
    r: &Router,
    u: &Underlay,
    flows: &mut FlowTable,
    now: u32,
    data: &mut [u8],
    hl: usize,
) -> Step {
    let drop = |r: DropReason| Step::Done(Next::Drop(r));
    let (flow, frag, seg) = match Ipv4Packet::new_checked(&data[hl..]) {
        Ok(p) => (
            Flow::with_ports(&p, nat::ports(&p).unwrap_or((0, 0))),
            p.is_fragment(),
            segment(&p),
        ),
        Err(e) => return drop(e.into()),
    };
    let hash = flow.hash();
    let mut dst_ip = flow.dst;
    let l4 = flow.proto == IpProtocol::TCP.0 || flow.proto == IpProtocol::UDP.0;
    if l4 && !frag {
        // A VIP of a service with a published port, else the VIP's any-port entry (port
        // 0, Docker's VIPs forward every port).
        let svc = net
            .vips
            .get(&ServiceKey::new(flow.dst, flow.proto, flow.dport))
            .or_else(|| net.vips.get(&ServiceKey::new(flow.dst, flow.proto, 0)));
        match tracked(flows, &flow, seg, now, svc.map(|s| &**s)) {
            Some(FlowAction::Dnat { ip, port, snat }) => {
                if let Err(e) = dnat(&mut data[hl..], &flow, ip, port, snat) {
                    return drop(e);
                }
                dst_ip = ip;
            }
            Some(FlowAction::Snat {
                ip,
                port,
                via,
                dnat,
            }) => {
                if let Err(e) = nat::rewrite(&mut data[hl..], Side::Source, ip, port) {
                    return drop(e);
                }
                if let Some(client) = dnat {
                    // A hairpin reply: back to the client, which is this backend itself.
                    if let Err(e) =
                        nat::rewrite(&mut data[hl..], Side::Destination, client, flow.dport)
                    {
                        return drop(e);
                    }
                    dst_ip = client;
                }
                if let Some(mac) = via {
                    // A published port's reply: straight back to where the client's
                    // packets came from.
                    let mut f = EthernetFrame::new_unchecked(&mut *data);
                    f.set_dst_addr(mac);
                    f.set_src_addr(u.mac);
                    return Step::Done(Next::Tx(u.port));
                }
            }
            Some(FlowAction::Return { vtep }) => {
                // The reply of a routing-mesh connection another node sent here: back over
                // the overlay to that node, which translates it for the client.
                if data.len() - ethernet::HEADER_LEN > net.spec.mtu as usize {
                    return drop(DropReason::MtuExceeded);
                }
                let mut f = EthernetFrame::new_unchecked(&mut *data);
                f.set_dst_addr(r.mac);
                f.set_src_addr(r.mac);
                return Step::Encap {
                    net: ni as u16,
                    vtep,
                    sport: vxlan::port_from_hash(hash),
                };
            }
            None => {
                if let Some(svc) = svc {
                    let b = match svc.pick(hash) {
                        Some(b) => *b,
                        None => return drop(DropReason::NoBackend),
                    };
                    let target = match svc.target_port {
                        0 => flow.dport,
                        p => p,
                    };
                    // A client given itself as backend would see its own address as the
                    // source and answer inside its own stack: it is hairpinned through the
                    // gateway address instead.
                    let snat = (b.ip == flow.src).then_some(r.gateway);
                    if let Err(e) = dnat(&mut data[hl..], &flow, b.ip, target, snat) {
                        return drop(e);
                    }
                    if opens(seg) {
                        track(flows, &flow, &b, target, snat, None, now);
                    }
                    dst_ip = b.ip;
                }
            }
        }
    }
    deliver(ni, net, r, data, dst_ip, hash)
}

/// The tracked action for `flow`'s packet, unless it sends the flow to a backend `svc` no
/// longer has (the task is gone: the connection is given a new one). An RST closes both
/// directions' entries.
#[inline]
fn tracked(
    flows: &mut FlowTable,
    flow: &Flow,
    seg: Segment,
    now: u32,
    svc: Option<&VipService>,
) -> Option<FlowAction> {
    let key = flow.key();
    match flows.lookup(&key, seg, now) {
        Some(FlowAction::Dnat { ip, .. })
            if svc.is_some_and(|s| !s.backends().iter().any(|b| b.ip == ip)) =>
        {
            flows.remove(&key);
            None
        }
        Some(action) => {
            if seg == Segment::Rst {
                close_pair(flows, flow, &action, now);
            }
            Some(action)
        }
        None => None,
    }
}

/// After an RST in `flow`'s direction: the entry of the connection's other direction closes
/// too (a conntrack entry covers both; here they are two), so a new connection on the same
/// 5-tuple finds a closing entry whichever side reset the old one. A FIN closes only its
/// own direction: the other may still be sending (a half-closed connection).
#[inline]
fn close_pair(flows: &mut FlowTable, flow: &Flow, action: &FlowAction, now: u32) {
    let pair = match *action {
        // Forward (client → service): the reply entry, as `track` keys it.
        FlowAction::Dnat { ip, port, snat } => {
            FlowKey::new(flow.proto, ip, port, snat.unwrap_or(flow.src), flow.sport)
        }
        // Reply (backend → client, or → the gateway for a hairpin): the forward entry.
        FlowAction::Snat { ip, port, dnat, .. } => {
            FlowKey::new(flow.proto, dnat.unwrap_or(flow.dst), flow.dport, ip, port)
        }
        FlowAction::Return { .. } => return,
    };
    flows.close(&pair, now);
}

/// Rewrites the destination of `f`'s packet in `ip` to the backend, and for a hairpin its
/// source address to `snat` (the port is kept).
#[inline]
fn dnat(
    ip: &mut [u8],
    f: &Flow,
    backend: Ipv4Addr,
    port: u16,
    snat: Option<Ipv4Addr>,
) -> Result<(), DropReason> {
    nat::rewrite(ip, Side::Destination, backend, port)?;
    if let Some(s) = snat {
        nat::rewrite(ip, Side::Source, s, f.sport)?;
    }
    Ok(())
}

/// Tracks a new load-balanced connection `f` given to backend `b`: the forward entry and
/// the reply entry (keyed by the reply's addresses: from the backend to the client, or to
/// `snat` for a hairpin).
#[allow(clippy::too_many_arguments)]
#[inline]
fn track(
    flows: &mut FlowTable,
    f: &Flow,
    b: &crate::maglev::Backend,
    target_port: u16,
    snat: Option<Ipv4Addr>,
    via: Option<EthernetAddress>,
    now: u32,
) {
    flows.insert(
        f.key(),
        FlowAction::Dnat {
            ip: b.ip,
            port: target_port,
            snat,
        },
        now,
    );
    flows.insert(
        FlowKey::new(f.proto, b.ip, target_port, snat.unwrap_or(f.src), f.sport),
        FlowAction::Snat {
            ip: f.dst,
            port: f.dport,
            via,
            dnat: snat.map(|_| f.src),
        },
        now,
    );
}

/// Delivers a routed packet to `dst_ip` on network `ni`: a local endpoint (through the
/// local port, from the router's MAC) or a remote one (VXLAN to its VTEP).
#[inline]
fn deliver(
    ni: usize,
    net: &Network,
    r: &Router,
    data: &mut [u8],
    dst_ip: Ipv4Addr,
    hash: u64,
) -> Step {
    if let Some(mac) = net.local.get(&dst_ip) {
        let mut f = EthernetFrame::new_unchecked(&mut *data);
        f.set_dst_addr(*mac);
        f.set_src_addr(r.mac);
        return Step::Done(Next::Tx(net.spec.local_port));
    }
    let remote = net.arp.get(&dst_ip).and_then(|mac| match net.fdb.get(mac) {
        Some(FdbEntry::Remote(vtep)) => Some((*mac, *vtep)),
        _ => None,
    });
    match remote {
        Some((mac, vtep)) => {
            if data.len() - ethernet::HEADER_LEN > net.spec.mtu as usize {
                return Step::Done(Next::Drop(DropReason::MtuExceeded));
            }
            let mut f = EthernetFrame::new_unchecked(&mut *data);
            f.set_dst_addr(mac);
            f.set_src_addr(r.mac);
            Step::Encap {
                net: ni as u16,
                vtep,
                sport: vxlan::port_from_hash(hash),
            }
        }
        None => Step::Done(Next::Drop(DropReason::UnknownDestination)),
    }
}

/// A TCP or UDP packet to this node's address that is not VXLAN (`end`: where its IP
/// packet ends, `excess`: Ethernet padding after it): a published port's, or the kernel's.
/// VXLAN never comes here, so published ports cost the overlay path nothing.
#[inline]
fn published<B: PacketBuf>(
    t: &Tables,
    flows: &mut FlowTable,
    now: u32,
    buf: &mut B,
    end: usize,
    hl: usize,
    excess: usize,
) -> Step {
    if t.ingress.is_empty() {
        return Step::Done(Next::Exception);
    }
    match ingress(t, flows, now, &mut buf.data_mut()[..end], hl) {
        Some(step) => {
            buf.trim(excess);
            step
        }
        None => Step::Done(Next::Exception),
    }
}

/// A TCP/UDP packet to this node's address: if it is for a published port, the Maglev
/// choice (or the connection's tracked backend), the destination rewrite and delivery on the
/// ingress network. `None`: not a published port.
#[inline]
fn ingress(
    t: &Tables,
    flows: &mut FlowTable,
    now: u32,
    data: &mut [u8],
    hl: usize,
) -> Option<Step> {
    let drop = |r: DropReason| Some(Step::Done(Next::Drop(r)));
    let (flow, frag, seg) = {
        let p = Ipv4Packet::new_checked(&data[hl..]).ok()?;
        (
            Flow::with_ports(&p, nat::ports(&p)?),
            p.is_fragment(),
            segment(&p),
        )
    };
    let (ni, svc) = t
        .ingress
        .get(&ServiceKey::new(flow.dst, flow.proto, flow.dport))?;
    if frag {
        return drop(DropReason::IpFragment);
    }
    let net = &t.networks()[*ni as usize];
    let r = net.router.as_ref()?;
    // Without the node's own address: every node has the same Maglev table for the
    // service and picks the same task for a connection, whichever node it reaches.
    let hash = flow_hash_v4(u32::from(flow.src), 0, flow.proto, flow.sport, flow.dport);
    let (ip, port) = match tracked(flows, &flow, seg, now, Some(svc)) {
        Some(FlowAction::Dnat { ip, port, .. }) => (ip, port),
        _ => {
            let b = match svc.pick(hash) {
                Some(b) => *b,
                None => return drop(DropReason::NoBackend),
            };
            if opens(seg) {
                let client_mac = EthernetFrame::new_unchecked(&*data).src_addr();
                track(
                    flows,
                    &flow,
                    &b,
                    svc.target_port,
                    None,
                    Some(client_mac),
                    now,
                );
            }
            (b.ip, svc.target_port)
        }
    };
    if let Err(e) = nat::rewrite(&mut data[hl..], Side::Destination, ip, port) {
        return drop(e);
    }
    Some(deliver(*ni as usize, net, r, data, ip, hash))
}

/// An IPv4 TCP/UDP 5-tuple.
#[derive(Debug, Clone, Copy)]
struct Flow {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    sport: u16,
    dport: u16,
}

/// What a packet says about its connection (read only on the load-balancing paths).
#[inline]
fn segment<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Segment {
    if p.protocol() == IpProtocol::TCP && !p.is_fragment() {
        // Byte 13 of the TCP header holds the flags; a header cut short has none.
        p.payload()
            .get(13)
            .map_or(Segment::Other, |f| Segment::tcp(*f))
    } else {
        Segment::Datagram
    }
}

/// Whether a packet of class `seg` without a tracked entry may create one: a TCP SYN or
/// any UDP datagram. Other TCP is routed by Maglev's consistent choice, untracked.
#[inline]
fn opens(seg: Segment) -> bool {
    matches!(seg, Segment::Syn | Segment::Datagram)
}

impl Flow {
    /// The addresses and protocol of `p` with the given L4 ports.
    #[inline]
    fn with_ports<T: AsRef<[u8]>>(p: &Ipv4Packet<T>, (sport, dport): (u16, u16)) -> Flow {
        Flow {
            src: p.src_addr(),
            dst: p.dst_addr(),
            proto: p.protocol().0,
            sport,
            dport,
        }
    }

    /// Its flow hash (Maglev choice and outer source port).
    #[inline]
    fn hash(&self) -> u64 {
        flow_hash_v4(
            u32::from(self.src),
            u32::from(self.dst),
            self.proto,
            self.sport,
            self.dport,
        )
    }

    /// Its connection-tracking key, in the direction it travels.
    #[inline]
    fn key(&self) -> FlowKey {
        FlowKey::new(self.proto, self.src, self.sport, self.dst, self.dport)
    }
}

/// VIP load balancing: a packet to a VIP service is DNATed to the backend Maglev picks for
/// its flow hash, and a local backend's reply is translated back to the VIP. Returns the
/// new destination MAC after a DNAT.
#[inline]
fn translate(
    net: &Network,
    ip: &mut [u8],
    f: &Flow,
    hash: u64,
) -> Result<Option<EthernetAddress>, DropReason> {
    if let Some(svc) = net.vips.get(&ServiceKey::new(f.dst, f.proto, f.dport)) {
        let b = svc.pick(hash).ok_or(DropReason::NoBackend)?;
        nat::rewrite(ip, Side::Destination, b.ip, svc.target_port)?;
        return Ok(Some(b.mac));
    }
    if let Some((vip, port)) = net.reverse.get(&ServiceKey::new(f.src, f.proto, f.sport)) {
        nat::rewrite(ip, Side::Source, *vip, *port)?;
    }
    Ok(None)
}

/// Whether the frame's ARP payload is a reply (malformed ARP is not: it goes to
/// [`arp_reply`], which counts it).
#[inline]
fn is_arp_reply(data: &[u8], hl: usize) -> bool {
    ArpPacket::new_checked(&data[hl..])
        .and_then(|p| ArpRepr::parse(&p))
        .is_ok_and(|r| r.operation == ArpOperation::Reply)
}

/// Turns the ARP request in `data` (Ethernet header of `hl` bytes) into the reply, in
/// place, if `answer` knows the target address.
#[inline]
fn arp_reply(
    data: &mut [u8],
    hl: usize,
    answer: impl Fn(Ipv4Addr) -> Option<EthernetAddress>,
) -> Result<(), DropReason> {
    let req = ArpRepr::parse(&ArpPacket::new_checked(&data[hl..])?)?;
    if req.operation != ArpOperation::Request {
        return Err(DropReason::UnknownDestination);
    }
    let mac = answer(req.target_ip).ok_or(DropReason::ArpNotAnswered)?;
    req.reply_from(mac).emit(&mut data[hl..]);
    let mut f = EthernetFrame::new_unchecked(data);
    f.set_dst_addr(req.sender_hw);
    f.set_src_addr(mac);
    Ok(())
}

/// A packet from the underlay port.
#[inline]
fn input_underlay<B: PacketBuf>(t: &Tables, flows: &mut FlowTable, now: u32, buf: &mut B) -> Step {
    let drop = |r: DropReason| Step::Done(Next::Drop(r));
    let u = &t.underlay;
    let data = buf.data_mut();
    let (hl, ethertype, dst) = match EthernetFrame::new_checked(&*data) {
        Ok(f) => (f.header_len(), f.ethertype(), f.dst_addr()),
        Err(e) => return drop(e.into()),
    };
    if dst != u.mac && !dst.is_broadcast() {
        return drop(DropReason::NotForUs);
    }
    if hl != ethernet::HEADER_LEN {
        // The underlay is untagged; a tagged frame is somebody else's business.
        return Step::Done(Next::Exception);
    }
    match ethertype {
        EtherType::ARP => {
            let req = match ArpPacket::new_checked(&data[hl..]).and_then(|p| ArpRepr::parse(&p)) {
                Ok(r) => r,
                Err(e) => return drop(e.into()),
            };
            match req.operation {
                ArpOperation::Request if req.target_ip == u.ip => {
                    match arp_reply(data, hl, |_| Some(u.mac)) {
                        Ok(()) => Step::Done(Next::Tx(u.port)),
                        Err(r) => drop(r),
                    }
                }
                // Replies and announcements teach the control side our neighbours.
                ArpOperation::Reply => Step::Done(Next::Exception),
                _ => drop(DropReason::NotForUs),
            }
        }
        EtherType::IPV4 => {
            let (ip_hl, total, proto, src, ipdst, frag) = match Ipv4Packet::new_checked(&data[hl..])
            {
                Ok(p) => {
                    if !p.verify_checksum() {
                        return drop(DropReason::BadChecksum);
                    }
                    (
                        p.header_len(),
                        p.total_len() as usize,
                        p.protocol(),
                        p.src_addr(),
                        p.dst_addr(),
                        p.is_fragment(),
                    )
                }
                Err(e) => return drop(e.into()),
            };
            if ipdst != u.ip {
                return drop(DropReason::NotForUs);
            }
            if frag {
                return drop(DropReason::IpFragment);
            }
            let l4 = hl + ip_hl;
            let excess = data.len() - (hl + total);
            match proto {
                IpProtocol::UDP => {
                    let udp = match UdpPacket::new_checked(&data[l4..hl + total]) {
                        Ok(u) => u,
                        Err(e) => return drop(e.into()),
                    };
                    if udp.dst_port() != u.vxlan_port {
                        return published(t, flows, now, buf, hl + total, hl, excess);
                    }
                    if !udp.verify_checksum(src, ipdst) {
                        return drop(DropReason::BadChecksum);
                    }
                    if !(buf.trim(excess) && buf.adj(l4)) {
                        return drop(DropReason::Truncated);
                    }
                    Step::Decap {
                        via_esp: false,
                        src,
                    }
                }
                IpProtocol::TCP => published(t, flows, now, buf, hl + total, hl, excess),
                IpProtocol::ESP => {
                    if !(buf.trim(excess) && buf.adj(l4)) {
                        return drop(DropReason::Truncated);
                    }
                    Step::EspOpen { src }
                }
                IpProtocol::ICMP => match echo_reply(&mut data[..hl + total], hl, u.mac, u.ttl) {
                    Ok(true) => {
                        buf.trim(excess);
                        Step::Done(Next::Tx(u.port))
                    }
                    Ok(false) => Step::Done(Next::Exception),
                    Err(r) => drop(r),
                },
                _ => Step::Done(Next::Exception),
            }
        }
        _ => Step::Done(Next::Exception),
    }
}

/// Answers an ICMP echo request to our address in place. `Ok(false)` for other ICMP.
fn echo_reply(
    data: &mut [u8],
    hl: usize,
    our_mac: EthernetAddress,
    ttl: u8,
) -> Result<bool, DropReason> {
    let ip_hl = Ipv4Packet::new_checked(&data[hl..])?.header_len();
    let icmp_at = hl + ip_hl;
    let req = match IcmpEchoRepr::parse(&IcmpPacket::new_checked(&data[icmp_at..])?) {
        Ok(r) if r.request => r,
        Ok(_) | Err(crate::wire::WireError::Unsupported) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let _ = req;
    IcmpPacket::new_unchecked(&mut data[icmp_at..])
        .set_msg_type_update_checksum(icmp::TYPE_ECHO_REPLY);
    // Swap the addresses (the header checksum is unchanged by a swap) and reset the TTL.
    let ip = &mut data[hl..];
    let mut p = Ipv4Packet::new_unchecked(&mut *ip);
    let (s, d) = (p.src_addr(), p.dst_addr());
    p.set_src_addr(d);
    p.set_dst_addr(s);
    let old = get_u16(ip, 8);
    ip[8] = ttl;
    let new = get_u16(ip, 8);
    let c = update16(get_u16(ip, 10), old, new);
    put_u16(ip, 10, c);
    let mut f = EthernetFrame::new_unchecked(data);
    let src_mac = f.src_addr();
    f.set_dst_addr(src_mac);
    f.set_src_addr(our_mac);
    Ok(true)
}
