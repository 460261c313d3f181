//! Services as `docker service create` defines them, with swarmkit's validation: replicated
//! or global mode, networks, published ports (auto-assigned from 30000–32767 when no
//! published port is given), VIP or DNS round-robin endpoints, and a command to run. A
//! refused request changes nothing: no VIP, port or name is taken.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::network::Networks;
use crate::publish::{PortConfig, Protocol, PublishMode};

/// First port of the range published ports are assigned from (swarmkit's dynamic range).
pub const DYNAMIC_PORT_FIRST: u16 = 30000;
/// Last port of that range.
pub const DYNAMIC_PORT_LAST: u16 = 32767;

/// How a service's tasks are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceMode {
    /// A fixed number of tasks.
    Replicated(u32),
    /// One task per node.
    Global,
}

/// How clients find the tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EndpointMode {
    /// A virtual IP per network, load-balanced by the data plane (the default).
    #[default]
    Vip,
    /// DNS returns the task addresses.
    Dnsrr,
}

/// `docker service create` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateService {
    /// `--name`.
    pub name: String,
    /// `--replicas`, if given.
    pub replicas: Option<u32>,
    /// `--mode` (`replicated` or `global`), if given.
    pub mode: Option<String>,
    /// `--network`, in order.
    pub networks: Vec<String>,
    /// `--publish`, parsed.
    pub ports: Vec<PortConfig>,
    /// `--endpoint-mode` (`vip` or `dnsrr`), if given.
    pub endpoint_mode: Option<String>,
    /// The command after `--`.
    pub command: Vec<String>,
    /// `--constraint`, as typed.
    pub constraints: Vec<String>,
    /// `--replicas-max-per-node` (0: no limit).
    pub max_replicas_per_node: u64,
}

/// A service as the cluster stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Placement.
    pub mode: ServiceMode,
    /// Endpoint mode.
    pub endpoint_mode: EndpointMode,
    /// Attached networks (the ingress network included when ports are published in ingress
    /// mode, or in host mode by a service on no other network), with the service's VIP on
    /// each in VIP mode.
    pub networks: Vec<(String, Option<Ipv4Addr>)>,
    /// Published ports, every one with its published port assigned.
    pub ports: Vec<PortConfig>,
    /// The command each task runs.
    pub command: Vec<String>,
    /// Placement constraints (`--constraint`), validated.
    #[serde(default)]
    pub constraints: Vec<String>,
    /// `--replicas-max-per-node` (0: no limit).
    #[serde(default)]
    pub max_replicas_per_node: u64,
}

impl Service {
    /// What its tasks ask of a node ([`crate::scheduler`]).
    pub fn placement(&self) -> crate::scheduler::Placement {
        crate::scheduler::Placement {
            // Validated at create/update: a stored constraint always parses.
            constraints: crate::scheduler::parse_constraints(&self.constraints).unwrap_or_default(),
            max_per_node: self.max_replicas_per_node,
        }
    }
}

/// Why `service create` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Empty or badly formed name.
    #[error("invalid service name {0:?}: use letters, digits, '_', '.', '-', starting with a letter or digit")]
    BadName(String),
    /// Name taken.
    #[error("service {0} already exists")]
    Duplicate(String),
    /// A `--constraint` that does not parse.
    #[error("{0}")]
    Constraint(String),
    /// `--replicas-max-per-node` with `--mode global`.
    #[error("replicas-max-per-node can only be used with replicated mode")]
    MaxPerNodeWithGlobal,
    /// `--mode global --replicas N`.
    #[error("replicas can only be used with replicated mode")]
    ReplicasWithGlobal,
    /// An unknown `--mode`.
    #[error("invalid mode {0:?}: replicated or global")]
    BadMode(String),
    /// An unknown `--endpoint-mode`.
    #[error("invalid endpoint mode {0:?}: vip or dnsrr")]
    BadEndpointMode(String),
    /// No command.
    #[error("a service needs a command to run (after --)")]
    NoCommand,
    /// A network that does not exist.
    #[error("network {0} not found")]
    UnknownNetwork(String),
    /// `--network ingress`.
    #[error("service cannot be explicitly attached to the ingress network {0}")]
    ExplicitIngress(String),
    /// The same network twice.
    #[error("network {0} is given twice")]
    DuplicateNetwork(String),
    /// dnsrr with a port published in ingress mode (swarmkit refuses it too).
    #[error("port published with ingress mode can't be used with dnsrr mode")]
    DnsrrWithIngress,
    /// A published port taken by another service (or twice in this one).
    #[error("port '{0}/{1}' is already in use by service '{2}'")]
    PortInUse(u16, Protocol, String),
    /// Publishing without an ingress network: in ingress mode, or in host mode on no
    /// overlay (the data plane delivers a host-mode port through one of the task's
    /// overlays).
    #[error("no ingress network exists (swarm init creates one; a host-mode port needs it too unless the service is on an overlay network)")]
    NoIngress,
    /// No free port in the dynamic range, or no free VIP.
    #[error("{0}")]
    Exhausted(String),
    /// More replicas than a service may have.
    #[error("invalid replicas {0}: a service has at most {MAX_REPLICAS}")]
    TooManyReplicas(u32),
    /// More published ports than a service may have.
    #[error("a service publishes at most {MAX_PUBLISHED_PORTS} ports ({0} asked)")]
    TooManyPorts(usize),
    /// A port the node itself needs.
    #[error("port {0}/{1} is reserved for the node's own {2} and cannot be published")]
    NodePort(u16, Protocol, &'static str),
}

/// Most replicas one service may have. Docker sets no limit, but every replica here is a
/// process with its own namespace and an address on each of the service's networks (a
/// default /24 holds 253); the reconcile loop starts a bounded number per round.
pub const MAX_REPLICAS: u32 = 1024;

/// Most ports one service may publish: each published port is a load-balancing entry on
/// every node (Docker sets no limit; `--publish 1-65535:1-65535` is refused here).
pub const MAX_PUBLISHED_PORTS: usize = 256;
/// `--constraint`s a service may have.
pub const MAX_CONSTRAINTS: usize = 32;

/// Ports the node itself listens on, which no service may take from it (the seed's list:
/// 2377 cluster management, 7946 gossip, 4789 the data path; and SSH, to keep the node
/// reachable).
pub const NODE_PORTS: [(u16, Protocol, &str); 5] = [
    (22, Protocol::Tcp, "SSH"),
    (2377, Protocol::Tcp, "cluster management (Raft)"),
    (7946, Protocol::Tcp, "gossip"),
    (7946, Protocol::Udp, "gossip"),
    (4789, Protocol::Udp, "VXLAN data path"),
];

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphanumeric())
        && c.all(|x| x.is_ascii_alphanumeric() || matches!(x, '_' | '.' | '-'))
        && n.len() <= 63
}

/// Every service of the cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Services {
    by_name: BTreeMap<String, Service>,
}

impl Services {
    /// The service `name`.
    pub fn get(&self, name: &str) -> Option<&Service> {
        self.by_name.get(name)
    }

    /// All services by name.
    pub fn iter(&self) -> impl Iterator<Item = &Service> {
        self.by_name.values()
    }

    /// Which service publishes `port`/`proto` in ingress mode, if any.
    fn publisher(&self, port: u16, proto: Protocol) -> Option<&str> {
        self.by_name.values().find_map(|s| {
            s.ports
                .iter()
                .any(|p| {
                    p.mode == PublishMode::Ingress
                        && p.published == Some(port)
                        && p.protocol == proto
                })
                .then_some(s.name.as_str())
        })
    }

    /// `docker service create`: validates everything, then assigns published ports and VIPs.
    pub fn create(
        &mut self,
        req: &CreateService,
        nets: &mut Networks,
    ) -> Result<&Service, ServiceError> {
        if !valid_name(&req.name) {
            return Err(ServiceError::BadName(req.name.clone()));
        }
        if self.by_name.contains_key(&req.name) {
            return Err(ServiceError::Duplicate(req.name.clone()));
        }
        if let Some(n) = req.replicas.filter(|n| *n > MAX_REPLICAS) {
            return Err(ServiceError::TooManyReplicas(n));
        }
        if req.ports.len() > MAX_PUBLISHED_PORTS {
            return Err(ServiceError::TooManyPorts(req.ports.len()));
        }
        for p in &req.ports {
            if let Some((port, proto, what)) = NODE_PORTS
                .iter()
                .find(|(n, pr, _)| p.published == Some(*n) && p.protocol == *pr)
            {
                return Err(ServiceError::NodePort(*port, *proto, what));
            }
        }
        let mode = match (req.mode.as_deref(), req.replicas) {
            (None | Some("replicated"), r) => ServiceMode::Replicated(r.unwrap_or(1)),
            (Some("global"), None) => ServiceMode::Global,
            (Some("global"), Some(_)) => return Err(ServiceError::ReplicasWithGlobal),
            (Some(other), _) => return Err(ServiceError::BadMode(other.to_owned())),
        };
        let endpoint_mode = match req.endpoint_mode.as_deref() {
            None | Some("vip") => EndpointMode::Vip,
            Some("dnsrr") => EndpointMode::Dnsrr,
            Some(other) => return Err(ServiceError::BadEndpointMode(other.to_owned())),
        };
        if req.command.is_empty() || req.command[0].trim().is_empty() {
            return Err(ServiceError::NoCommand);
        }
        if req.constraints.len() > MAX_CONSTRAINTS {
            return Err(ServiceError::Constraint(format!(
                "at most {MAX_CONSTRAINTS} constraints"
            )));
        }
        crate::scheduler::parse_constraints(&req.constraints).map_err(ServiceError::Constraint)?;
        if req.max_replicas_per_node > 0 && mode == ServiceMode::Global {
            return Err(ServiceError::MaxPerNodeWithGlobal);
        }
        let mut attach: Vec<String> = Vec::new();
        for n in &req.networks {
            let net = nets
                .get(n)
                .ok_or_else(|| ServiceError::UnknownNetwork(n.clone()))?;
            if net.ingress {
                return Err(ServiceError::ExplicitIngress(n.clone()));
            }
            if attach.contains(n) {
                return Err(ServiceError::DuplicateNetwork(n.clone()));
            }
            attach.push(n.clone());
        }
        let ingress_ports = req.ports.iter().any(|p| p.mode == PublishMode::Ingress);
        if ingress_ports && endpoint_mode == EndpointMode::Dnsrr {
            return Err(ServiceError::DnsrrWithIngress);
        }
        // Published ports: explicit ones must be free (in this request too), the others are
        // assigned from the dynamic range.
        let mut ports = req.ports.clone();
        let mut taken: Vec<(u16, Protocol)> = Vec::new();
        for p in ports.iter().filter(|p| p.mode == PublishMode::Ingress) {
            if let Some(pp) = p.published {
                if let Some(owner) = self.publisher(pp, p.protocol) {
                    return Err(ServiceError::PortInUse(pp, p.protocol, owner.to_owned()));
                }
                if taken.contains(&(pp, p.protocol)) {
                    return Err(ServiceError::PortInUse(pp, p.protocol, req.name.clone()));
                }
                taken.push((pp, p.protocol));
            }
        }
        for p in ports.iter_mut().filter(|p| p.published.is_none()) {
            let free = (DYNAMIC_PORT_FIRST..=DYNAMIC_PORT_LAST)
                .find(|c| {
                    self.publisher(*c, p.protocol).is_none() && !taken.contains(&(*c, p.protocol))
                })
                .ok_or_else(|| {
                    ServiceError::Exhausted("no free port left in 30000-32767".into())
                })?;
            p.published = Some(free);
            taken.push((free, p.protocol));
        }
        // A host-mode port is delivered by the data plane through one of the task's
        // overlays (Docker's goes through the gateway bridge and the kernel's NAT): a
        // service on no overlay gets the ingress network for it.
        let host_ports_alone =
            attach.is_empty() && req.ports.iter().any(|p| p.mode == PublishMode::Host);
        if ingress_ports || host_ports_alone {
            let ingress = nets
                .iter()
                .find(|n| n.ingress)
                .ok_or(ServiceError::NoIngress)?;
            attach.insert(0, ingress.name.clone());
        }
        // VIPs last, so that nothing above can leave one allocated.
        let mut networks: Vec<(String, Option<Ipv4Addr>)> = Vec::new();
        for n in &attach {
            let vip = match endpoint_mode {
                EndpointMode::Dnsrr => None,
                EndpointMode::Vip => {
                    let net = nets.get_mut(n).expect("checked above");
                    match net.addressing.allocate() {
                        Ok(a) => Some(a),
                        Err(e) => {
                            for (m, v) in &networks {
                                if let (Some(v), Some(net)) = (v, nets.get_mut(m)) {
                                    let _ = net.addressing.release(*v);
                                }
                            }
                            return Err(ServiceError::Exhausted(e.to_string()));
                        }
                    }
                }
            };
            networks.push((n.clone(), vip));
        }
        let svc = Service {
            name: req.name.clone(),
            mode,
            endpoint_mode,
            networks,
            ports,
            command: req.command.clone(),
            constraints: req.constraints.clone(),
            max_replicas_per_node: req.max_replicas_per_node,
        };
        Ok(self.by_name.entry(svc.name.clone()).or_insert(svc))
    }

    /// `docker service rm`: frees its VIPs and published ports.
    pub fn remove(&mut self, name: &str, nets: &mut Networks) -> Option<Service> {
        let s = self.by_name.remove(name)?;
        for (n, vip) in &s.networks {
            if let (Some(v), Some(net)) = (vip, nets.get_mut(n)) {
                let _ = net.addressing.release(*v);
            }
        }
        Some(s)
    }

    /// True if some service publishes a port in ingress mode (the ingress network cannot be
    /// removed then).
    pub fn any_ingress_ports(&self) -> bool {
        self.by_name
            .values()
            .any(|s| s.ports.iter().any(|p| p.mode == PublishMode::Ingress))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::CreateNetwork;
    use crate::publish;

    fn cluster() -> (Services, Networks) {
        let mut nets = Networks::default();
        nets.create(&CreateNetwork {
            name: "ingress".into(),
            driver: "overlay".into(),
            ingress: true,
            ..Default::default()
        })
        .unwrap();
        nets.create(&CreateNetwork {
            name: "my-overlay".into(),
            driver: "overlay".into(),
            ..Default::default()
        })
        .unwrap();
        (Services::default(), nets)
    }

    fn web() -> CreateService {
        CreateService {
            name: "web".into(),
            replicas: Some(3),
            networks: vec!["my-overlay".into()],
            ports: publish::parse("8080:80").unwrap(),
            command: vec![
                "python3".into(),
                "-m".into(),
                "http.server".into(),
                "80".into(),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_tutorial_service() {
        let (mut svcs, mut nets) = cluster();
        let s = svcs.create(&web(), &mut nets).unwrap().clone();
        assert_eq!(s.mode, ServiceMode::Replicated(3));
        assert_eq!(s.endpoint_mode, EndpointMode::Vip);
        // Attached to ingress (for the published port) and my-overlay, a VIP on each.
        assert_eq!(s.networks[0].0, "ingress");
        assert_eq!(
            s.networks[1],
            ("my-overlay".to_string(), Some(Ipv4Addr::new(10, 0, 1, 2)))
        );
        assert!(svcs.any_ingress_ports());
        // An auto-assigned published port comes from 30000.
        let s2 = svcs
            .create(
                &CreateService {
                    name: "api".into(),
                    ports: publish::parse("80").unwrap(),
                    ..web()
                },
                &mut nets,
            )
            .unwrap();
        assert_eq!(s2.ports[0].published, Some(30000));
        // Removing frees the VIPs.
        svcs.remove("web", &mut nets).unwrap();
        assert_eq!(nets.get("my-overlay").unwrap().addressing.in_use(), 1);
    }

    #[test]
    fn swarmkit_refusals_change_nothing() {
        let (mut svcs, mut nets) = cluster();
        svcs.create(&web(), &mut nets).unwrap();
        let in_use = nets.get("my-overlay").unwrap().addressing.in_use();
        let cases: Vec<(CreateService, &str)> = vec![
            (
                CreateService {
                    name: "".into(),
                    ..web()
                },
                "invalid service name",
            ),
            (web(), "already exists"),
            (
                CreateService {
                    name: "g".into(),
                    mode: Some("global".into()),
                    ..web()
                },
                "replicas can only be used with replicated mode",
            ),
            (
                CreateService {
                    name: "m".into(),
                    mode: Some("daemonset".into()),
                    ..web()
                },
                "invalid mode",
            ),
            (
                CreateService {
                    name: "e".into(),
                    endpoint_mode: Some("dns".into()),
                    ..web()
                },
                "invalid endpoint mode",
            ),
            (
                CreateService {
                    name: "c".into(),
                    command: vec![],
                    ..web()
                },
                "needs a command",
            ),
            (
                CreateService {
                    name: "n".into(),
                    networks: vec!["nope".into()],
                    ..web()
                },
                "network nope not found",
            ),
            (
                CreateService {
                    name: "i".into(),
                    networks: vec!["ingress".into()],
                    ..web()
                },
                "explicitly attached to the ingress",
            ),
            (
                CreateService {
                    name: "d".into(),
                    networks: vec!["my-overlay".into(), "my-overlay".into()],
                    ..web()
                },
                "given twice",
            ),
            (
                CreateService {
                    name: "r".into(),
                    endpoint_mode: Some("dnsrr".into()),
                    ..web()
                },
                "can't be used with dnsrr",
            ),
            (
                CreateService {
                    name: "p".into(),
                    ..web()
                },
                "port '8080/tcp' is already in use by service 'web'",
            ),
            (
                CreateService {
                    name: "q".into(),
                    ports: publish::parse("9000:80")
                        .unwrap()
                        .into_iter()
                        .chain(publish::parse("9000:81").unwrap())
                        .collect(),
                    ..web()
                },
                "port '9000/tcp' is already in use",
            ),
        ];
        for (req, says) in cases {
            let e = svcs.create(&req, &mut nets).unwrap_err().to_string();
            assert!(e.contains(says), "{}: {e}", req.name);
        }
        assert_eq!(svcs.iter().count(), 1);
        assert_eq!(nets.get("my-overlay").unwrap().addressing.in_use(), in_use);
        // Host-mode publishing and UDP on the same number do not collide with 8080/tcp.
        let ok = CreateService {
            name: "dns".into(),
            ports: publish::parse("8080:53/udp").unwrap(),
            endpoint_mode: Some("vip".into()),
            ..web()
        };
        svcs.create(&ok, &mut nets).unwrap();
        let host = CreateService {
            name: "h".into(),
            ports: publish::parse("published=8080,target=80,mode=host").unwrap(),
            endpoint_mode: Some("dnsrr".into()),
            ..web()
        };
        let h = svcs.create(&host, &mut nets).unwrap();
        assert_eq!(h.networks, vec![("my-overlay".to_string(), None)]);
    }

    #[test]
    fn publishing_needs_an_ingress_network() {
        let mut nets = Networks::default();
        nets.create(&CreateNetwork {
            name: "my-overlay".into(),
            driver: "overlay".into(),
            ..Default::default()
        })
        .unwrap();
        let mut svcs = Services::default();
        assert_eq!(
            svcs.create(&web(), &mut nets).unwrap_err(),
            ServiceError::NoIngress
        );
        assert_eq!(nets.get("my-overlay").unwrap().addressing.in_use(), 0);
    }

    #[test]
    fn absurd_requests_are_bounded_and_node_ports_refused() {
        let (mut svcs, mut nets) = cluster();
        let mut r = web();
        r.replicas = Some(4_000_000_000);
        assert_eq!(
            svcs.create(&r, &mut nets).unwrap_err().to_string(),
            "invalid replicas 4000000000: a service has at most 1024"
        );
        assert!(crate::publish::parse("1-65535:1-65535")
            .unwrap_err()
            .to_string()
            .contains("a range publishes at most 256 ports"));
        let mut r = web();
        r.ports.clear();
        for spec in [
            "40000-40099:1-100",
            "40100-40199:101-200",
            "40200-40299:201-300",
        ] {
            r.ports.extend(crate::publish::parse(spec).unwrap());
        }
        assert!(svcs
            .create(&r, &mut nets)
            .unwrap_err()
            .to_string()
            .contains("at most 256 ports"));
        for (spec, want) in [
            ("22:22", "port 22/tcp is reserved for the node's own SSH"),
            (
                "2377:80",
                "port 2377/tcp is reserved for the node's own cluster management",
            ),
            (
                "7946:80/udp",
                "port 7946/udp is reserved for the node's own gossip",
            ),
            ("published=4789,target=53,protocol=udp", "VXLAN data path"),
        ] {
            let mut r = web();
            r.ports = crate::publish::parse(spec).unwrap();
            let e = svcs.create(&r, &mut nets).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
        }
        assert!(svcs.get("web").is_none(), "nothing created by a refusal");
        // 7946/tcp is the node's, 7946/udp too, but 4789/tcp is anybody's.
        let mut r = web();
        r.ports = crate::publish::parse("4789:80").unwrap();
        svcs.create(&r, &mut nets).unwrap();
    }

    #[test]
    fn placement_is_validated_and_kept() {
        let (mut svcs, mut nets) = cluster();
        let bad = CreateService {
            constraints: vec!["node.role=manager".into()],
            ..web()
        };
        assert_eq!(
            svcs.create(&bad, &mut nets).unwrap_err().to_string(),
            "constraint expected one operator from ==, !="
        );
        let global = CreateService {
            mode: Some("global".into()),
            replicas: None,
            max_replicas_per_node: 1,
            ..web()
        };
        assert_eq!(
            svcs.create(&global, &mut nets).unwrap_err(),
            ServiceError::MaxPerNodeWithGlobal
        );
        let ok = CreateService {
            constraints: vec!["node.labels.zone==east".into()],
            max_replicas_per_node: 2,
            ..web()
        };
        let s = svcs.create(&ok, &mut nets).unwrap().clone();
        let p = s.placement();
        assert_eq!(p.constraints.len(), 1);
        assert_eq!(p.max_per_node, 2);
    }
}
