//! Between the tables and the node: what this node publishes (its own endpoints, from its
//! assignment and the tasks it runs) and what its data plane and DNS take from the other
//! nodes' entries — libnetwork's overlay driver's `peerAdd` from `overlay_peer_table`
//! (`daemon/libnetwork/drivers/overlay/joinleave.go`, `EventNotify`) and the service
//! discovery and load balancing it builds from `endpoint_table`
//! (`daemon/libnetwork/agent.go`, `handleEpTableEvent`).
//!
//! The assignment brings what only the leader knows: the networks this node has, its own
//! endpoints, the VIPs of the services on those networks and the services' names. The
//! tables bring where every other endpoint is and which service it serves: remote
//! endpoints behind their VTEPs, VIP backends wherever they run, and the DNS names of
//! tasks and containers on every node.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use swarmgate_dataplane::wire::EthernetAddress;

use super::table::{Own, Table, Value, View};
use crate::cluster::DnsView;
use crate::dataplane::{Host, NodeState, RemoteHost};
use crate::dispatcher::{AssignedNetwork, Assignment, NetAttachment};

/// A network's name in the tables: its ID (its name where it has none).
fn table_network(id: &str, name: &str) -> String {
    if id.is_empty() {
        name.to_owned()
    } else {
        id.to_owned()
    }
}

/// This node's entries: for every task it runs and should (`live`), on each of its
/// networks, an `overlay_peer_table` row (address, MAC, this node's VTEP `vtep`) and an
/// `endpoint_table` row (name, service, VIP, address).
pub fn own_entries(a: &Assignment, live: impl Fn(&str) -> bool, vtep: Ipv4Addr) -> Own {
    let mut own = Own::new();
    for t in a
        .tasks
        .iter()
        .filter(|t| t.desired == crate::cluster::Desired::Running && live(&t.id))
    {
        for n in &t.networks {
            let net = table_network(&n.network_id, &n.network);
            own.insert(
                (Table::OverlayPeer, net.clone(), t.id.clone()),
                Value::Peer {
                    ip: n.ip,
                    mac: EthernetAddress::from_ipv4_docker(n.ip).0,
                    vtep,
                },
            );
            // On the ingress network too: the routing mesh balances every published port
            // over the service's rows there (no names are served on it).
            own.insert((Table::Endpoint, net, t.id.clone()), endpoint(t, n));
        }
    }
    own
}

fn endpoint(t: &crate::dispatcher::AssignedTask, n: &NetAttachment) -> Value {
    Value::Endpoint {
        name: if t.full_name.is_empty() {
            t.id.clone()
        } else {
            t.full_name.clone()
        },
        service: t.service.clone(),
        vip: n.vip,
        ip: n.ip,
        alias: t.service.is_some().then(|| t.id.clone()),
    }
}

fn host(ip: Ipv4Addr) -> Host {
    Host {
        ip,
        mac: EthernetAddress::from_ipv4_docker(ip),
    }
}

/// Completes this node's data-plane state `st` and DNS names `dns` (both from its
/// assignment: its networks, its own endpoints, the services' VIPs) with the entries of
/// this node (`own`) and of the other nodes that are up (`view`), on the networks
/// `networks` it has.
pub fn program(
    st: &mut NodeState,
    dns: &mut DnsView,
    networks: &[AssignedNetwork],
    own: &Own,
    view: &View,
) {
    let ids: BTreeMap<&str, String> = networks
        .iter()
        .map(|n| (n.name.as_str(), table_network(&n.id, &n.name)))
        .collect();
    // Every endpoint row of every node, this one's included, per network.
    let mut endpoints: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for ((table, net, _), v) in own {
        if *table == Table::Endpoint {
            endpoints.entry(net.as_str()).or_default().push(v);
        }
    }
    for (k, s) in view {
        if k.table == Table::Endpoint {
            endpoints
                .entry(k.network.as_str())
                .or_default()
                .push(&s.value);
        }
    }
    mesh(st, networks, &endpoints);
    for n in &mut st.networks {
        let Some(id) = ids.get(n.name.as_str()) else {
            continue;
        };
        // Remote endpoints: the latest row for each address, none that is local here.
        let mut remote: BTreeMap<Ipv4Addr, (RemoteHost, (u64, u64))> = BTreeMap::new();
        for (_, s) in view.range(range_of(Table::OverlayPeer, id)) {
            let Value::Peer { ip, mac, vtep } = &s.value else {
                continue;
            };
            if n.hosts.iter().any(|h| h.ip == *ip) {
                continue;
            }
            let r = RemoteHost {
                host: Host {
                    ip: *ip,
                    mac: EthernetAddress(*mac),
                },
                vtep: *vtep,
            };
            if remote.get(ip).is_none_or(|(_, v)| s.version > *v) {
                remote.insert(*ip, (r, s.version));
            }
        }
        n.remote = remote.into_values().map(|(r, _)| r).collect();
        // VIP backends: every endpoint of the service, on any node.
        let rows = endpoints.get(id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        for v in &mut n.vips {
            let mut b: Vec<Host> = rows
                .iter()
                .filter_map(|r| match r {
                    Value::Endpoint {
                        vip: Some(x), ip, ..
                    } if *x == v.ip => Some(host(*ip)),
                    _ => None,
                })
                .collect();
            b.sort();
            b.dedup();
            v.backends = b;
        }
        // Names (none on the ingress network, as in Docker).
        if networks.iter().any(|x| x.name == n.name && x.ingress) {
            continue;
        }
        let names = dns.names.entry(n.name.clone()).or_default();
        let mut add = |name: &str, ip: Ipv4Addr| {
            let e = names.entry(name.to_ascii_lowercase()).or_default();
            if !e.contains(&ip) {
                e.push(ip);
            }
        };
        for r in rows {
            let Value::Endpoint {
                name,
                service,
                vip,
                ip,
                alias,
            } = r
            else {
                continue;
            };
            add(name, *ip);
            if let Some(a) = alias {
                add(a, *ip);
            }
            if let Some(s) = service {
                add(&format!("tasks.{s}"), *ip);
                match vip {
                    Some(v) => add(s, *v),
                    None => add(s, *ip),
                }
            }
        }
        for addrs in names.values_mut() {
            addrs.sort();
        }
        if names.is_empty() {
            dns.names.remove(&n.name);
        }
    }
}

/// The routing mesh: each port published in ingress mode balances over every task of its
/// service on the ingress network, wherever it runs (its `endpoint_table` rows there), the
/// same sorted list on every node, so every node computes the same Maglev table.
fn mesh(st: &mut NodeState, networks: &[AssignedNetwork], endpoints: &BTreeMap<&str, Vec<&Value>>) {
    for p in st.published.iter_mut().filter(|p| p.ingress) {
        let Some(n) = networks.iter().find(|n| n.ingress && n.vni == p.vni) else {
            continue;
        };
        let id = table_network(&n.id, &n.name);
        let rows = endpoints.get(id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let mut b: Vec<Host> = rows
            .iter()
            .filter_map(|r| match r {
                Value::Endpoint {
                    service: Some(s),
                    ip,
                    ..
                } if *s == p.service => Some(host(*ip)),
                _ => None,
            })
            .collect();
        b.sort();
        b.dedup();
        p.backends = b;
    }
}

/// The keys of `table` on network `id` (every owner, every key).
fn range_of(table: Table, id: &str) -> std::ops::RangeInclusive<super::table::Key> {
    let lo = super::table::Key {
        table,
        network: id.to_owned(),
        owner: String::new(),
        key: String::new(),
    };
    let hi = super::table::Key {
        table,
        network: format!("{id}\u{0}"),
        owner: String::new(),
        key: String::new(),
    };
    lo..=hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{NetState, VipState};
    use crate::dispatcher::AssignedTask;
    use crate::gossip::table::{Db, Key};

    fn attach(ip: [u8; 4], vip: Option<[u8; 4]>) -> NetAttachment {
        NetAttachment {
            network: "web-net".into(),
            network_id: "n1".into(),
            ingress: false,
            vip: vip.map(Ipv4Addr::from),
            vni: 4097,
            ip: Ipv4Addr::from(ip),
            subnet: "10.0.1.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            mtu: 1450,
            udp_published: Vec::new(),
        }
    }

    fn assignment(tasks: &[(&str, [u8; 4])]) -> Assignment {
        Assignment {
            tasks: tasks
                .iter()
                .map(|(id, ip)| AssignedTask {
                    id: id.to_string(),
                    service: Some("web".into()),
                    slot: 1,
                    version: 1,
                    name: None,
                    full_name: format!("web.1.{id}"),
                    detached: false,
                    command: vec![],
                    desired: crate::cluster::Desired::Running,
                    networks: vec![attach(*ip, Some([10, 0, 1, 2]))],
                })
                .collect(),
            networks: vec![AssignedNetwork {
                ingress: false,
                id: "n1".into(),
                name: "web-net".into(),
                subnet: "10.0.1.0/24".parse().unwrap(),
                vni: 4097,
            }],
            ..Default::default()
        }
    }

    fn state(local: &[[u8; 4]]) -> NodeState {
        NodeState {
            networks: vec![NetState {
                name: "web-net".into(),
                vni: 4097,
                bridge: "sgbr4097".into(),
                mtu: 1450,
                encrypted: false,
                gateway: Ipv4Addr::new(10, 0, 1, 1),
                hosts: local.iter().map(|ip| host(Ipv4Addr::from(*ip))).collect(),
                remote: vec![],
                vips: vec![VipState {
                    ip: Ipv4Addr::new(10, 0, 1, 2),
                    protocol: crate::publish::Protocol::Tcp,
                    port: 0,
                    target: 0,
                    backends: vec![],
                }],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn another_nodes_entries_program_remote_endpoints_vips_and_names() {
        let vtep_a = Ipv4Addr::new(192, 168, 0, 1);
        // Node a runs t1 and t2 (t2 not yet started); node b runs t3.
        let a = assignment(&[("t1", [10, 0, 1, 3]), ("t2", [10, 0, 1, 4])]);
        let own_a = own_entries(&a, |id| id == "t1", vtep_a);
        assert_eq!(own_a.len(), 2, "a peer and an endpoint row for t1 only");
        let mut da = Db::new("a", 1);
        let mut db = Db::new("b", 1);
        db.member_up("a", 1, vtep_a);
        for e in da.publish(&own_a, 0) {
            db.apply(&e, 0);
        }
        let b = assignment(&[("t3", [10, 0, 1, 5])]);
        let own_b = own_entries(&b, |_| true, Ipv4Addr::new(192, 168, 0, 2));
        let mut st = state(&[[10, 0, 1, 5]]);
        let mut dns = DnsView::default();
        program(&mut st, &mut dns, &b.networks, &own_b, &db.view());
        let n = &st.networks[0];
        assert_eq!(n.remote.len(), 1);
        assert_eq!(n.remote[0].host.ip, Ipv4Addr::new(10, 0, 1, 3));
        assert_eq!(n.remote[0].vtep, vtep_a);
        assert_eq!(
            n.vips[0].backends.iter().map(|h| h.ip).collect::<Vec<_>>(),
            [Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 5)]
        );
        let r = |name: &str| dns.resolve(&["web-net".into()], name);
        assert_eq!(r("web"), Some(vec![Ipv4Addr::new(10, 0, 1, 2)]));
        assert_eq!(
            r("tasks.web"),
            Some(vec![Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 5)])
        );
        assert_eq!(r("web.1.t1"), Some(vec![Ipv4Addr::new(10, 0, 1, 3)]));
        assert_eq!(r("t3"), Some(vec![Ipv4Addr::new(10, 0, 1, 5)]));
        // a goes down: only b's own endpoint is left.
        db.member_down("a", 1, 5);
        let (mut st, mut dns) = (state(&[[10, 0, 1, 5]]), DnsView::default());
        program(&mut st, &mut dns, &b.networks, &own_b, &db.view());
        assert!(st.networks[0].remote.is_empty());
        assert_eq!(st.networks[0].vips[0].backends.len(), 1);
        assert_eq!(
            dns.resolve(&["web-net".into()], "tasks.web"),
            Some(vec![Ipv4Addr::new(10, 0, 1, 5)])
        );
    }

    #[test]
    fn a_remote_row_never_shadows_a_local_endpoint_and_the_latest_row_wins() {
        let b = assignment(&[("t3", [10, 0, 1, 5])]);
        let mut view = View::new();
        let row = |owner: &str, ip: [u8; 4], vtep: u8, v: (u64, u64)| {
            (
                Key {
                    table: Table::OverlayPeer,
                    network: "n1".into(),
                    owner: owner.into(),
                    key: format!("{owner}-{vtep}"),
                },
                crate::gossip::table::Seen {
                    value: Value::Peer {
                        ip: Ipv4Addr::from(ip),
                        mac: [0; 6],
                        vtep: Ipv4Addr::new(192, 168, 0, vtep),
                    },
                    version: v,
                },
            )
        };
        // A stale row for b's own address, and two rows for one address.
        view.extend([
            row("x", [10, 0, 1, 5], 9, (1, 1)),
            row("x", [10, 0, 1, 7], 8, (1, 2)),
            row("y", [10, 0, 1, 7], 7, (5, 1)),
        ]);
        let (mut st, mut dns) = (state(&[[10, 0, 1, 5]]), DnsView::default());
        program(&mut st, &mut dns, &b.networks, &Own::new(), &view);
        let r = &st.networks[0].remote;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].vtep, Ipv4Addr::new(192, 168, 0, 7));
    }
}
