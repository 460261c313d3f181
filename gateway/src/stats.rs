//! Counters of all workers, summed, with the drivers' own port statistics, as JSON.

use serde_json::{json, Map, Value};
use swarmgate_dataplane::tables::Tables;
use swarmgate_dataplane::{Counters, DropReason};
use swarmgate_ffi::Port;

use crate::PortInfo;

/// A network whose counters are reported: its name, VNI, whether encrypted, and its
/// counter slot — the static configuration's networks and those the control plane
/// programmed alike.
#[derive(Debug, Clone)]
pub struct NetworkSlot {
    /// Name.
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// `--opt encrypted`.
    pub encrypted: bool,
    /// Counter slot.
    pub slot: u16,
}

/// Sums the per-worker counters (read while the workers run) and adds DPDK's port stats.
pub fn collect(
    counters: &[std::sync::Arc<Counters>],
    ports: &[Port],
    info: &[PortInfo],
    networks: &[NetworkSlot],
    tables: &Tables,
) -> Value {
    let sum = |f: &dyn Fn(&Counters) -> u64| counters.iter().map(|c| f(c)).sum::<u64>();
    let mut ps = Map::new();
    for (p, i) in ports.iter().zip(info) {
        let id = p.id();
        let d = p.stats().unwrap_or_default();
        ps.insert(
            i.role.clone(),
            json!({
                "port": id,
                "iface": i.iface,
                "device": i.device,
                "rx_packets": sum(&|c| c.port(id).rx_packets.get()),
                "rx_bytes": sum(&|c| c.port(id).rx_bytes.get()),
                "tx_packets": sum(&|c| c.port(id).tx_packets.get()),
                "tx_bytes": sum(&|c| c.port(id).tx_bytes.get()),
                "driver": {
                    "ipackets": d.ipackets, "opackets": d.opackets, "ibytes": d.ibytes, "obytes": d.obytes,
                    "imissed": d.imissed, "ierrors": d.ierrors, "oerrors": d.oerrors, "rx_nombuf": d.rx_nombuf,
                },
            }),
        );
    }
    let mut nets = Map::new();
    for n in networks {
        let s = n.slot;
        nets.insert(
            n.name.clone(),
            json!({
                "vni": n.vni,
                "encrypted": n.encrypted,
                "encap_packets": sum(&|c| c.network(s).encap_packets.get()),
                "encap_bytes": sum(&|c| c.network(s).encap_bytes.get()),
                "decap_packets": sum(&|c| c.network(s).decap_packets.get()),
                "decap_bytes": sum(&|c| c.network(s).decap_bytes.get()),
            }),
        );
    }
    let mut drops = Map::new();
    for r in DropReason::ALL {
        let n = sum(&|c| c.drops(*r));
        if n > 0 {
            drops.insert(r.name().to_owned(), json!(n));
        }
    }
    let mut esp_tx = Map::new();
    for (peer, sa) in &tables.esp.tx {
        let (epoch, seq) = sa.position();
        esp_tx.insert(
            peer.to_string(),
            json!({
                "spi": sa.spi.get(),
                "tag": sa.tag(),
                "epoch": epoch,
                "seq": seq,
                "generations": sa.generations(),
            }),
        );
    }
    json!({
        "generation": tables.generation,
        "vxlan_port": tables.underlay.vxlan_port,
        "esp_tx": esp_tx,
        "neighbours": tables.neighbours.iter().map(|(ip, mac)| (ip.to_string(), json!(mac.to_string()))).collect::<Map<_, _>>(),
        "ports": ps,
        "networks": nets,
        "drops": drops,
        "exception": sum(&|c| c.exception.get()),
        "flow_evictions": sum(&|c| c.flow_evictions.get()),
    })
}
