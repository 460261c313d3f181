//! Overlay networks as `docker network create -d overlay` defines them: names, VNIs from
//! 4096, IPAM, `--attachable`, `--ingress`, `--opt encrypted`,
//! `--opt com.docker.network.driver.mtu=N`, with Docker's rules (one ingress network, which
//! cannot be attachable) and one clear error for everything else. A refused request changes
//! nothing.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use swarmgate_dataplane::tables::docker_overlay_mtu;
use swarmgate_dataplane::wire::Vni;

use crate::ipam::{Ipam, IpamError, NetworkAddressing, Subnet};

/// `docker network create` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateNetwork {
    /// The network's name.
    pub name: String,
    /// `-d`: only `overlay` here.
    pub driver: String,
    /// `--attachable`: standalone endpoints may join.
    pub attachable: bool,
    /// `--ingress`: the routing-mesh network.
    pub ingress: bool,
    /// `--subnet`.
    pub subnet: Option<String>,
    /// `--gateway`.
    pub gateway: Option<String>,
    /// `--opt KEY[=VALUE]`, in order.
    pub options: Vec<(String, Option<String>)>,
}

/// A network as the cluster stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Name.
    pub name: String,
    /// Its VNI.
    #[serde(with = "vni_serde")]
    pub vni: Vni,
    /// Subnet, gateway and allocated addresses.
    pub addressing: NetworkAddressing,
    /// `--attachable`.
    pub attachable: bool,
    /// `--ingress`.
    pub ingress: bool,
    /// `--opt encrypted`.
    pub encrypted: bool,
    /// Overlay MTU (Docker's rule from the base MTU option, 1500 by default).
    pub mtu: u16,
    /// Options as given, for `network inspect`.
    pub options: BTreeMap<String, String>,
}

/// Why `network create` or `network rm` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// Empty or with characters Docker does not allow.
    #[error("invalid network name {0:?}: use letters, digits, '_', '.', '-', starting with a letter or digit")]
    BadName(String),
    /// Name taken.
    #[error("network with name {0} already exists")]
    Duplicate(String),
    /// A driver other than overlay.
    #[error("driver {0:?} is not supported: swarmgate networks use -d overlay")]
    Driver(String),
    /// A second ingress network.
    #[error("an ingress network ({0}) already exists; only one is allowed")]
    SecondIngress(String),
    /// `--ingress --attachable`.
    #[error("an ingress network cannot be attachable")]
    AttachableIngress,
    /// An option key not known.
    #[error("unknown option {0:?} (known: encrypted, com.docker.network.driver.mtu)")]
    UnknownOption(String),
    /// A bad MTU value.
    #[error("invalid com.docker.network.driver.mtu {0:?}: expected 576-9216")]
    BadMtu(String),
    /// A malformed gateway address.
    #[error("invalid gateway {0:?}: expected an IPv4 address")]
    BadGateway(String),
    /// `--gateway` without `--subnet`.
    #[error("--gateway needs --subnet")]
    GatewayWithoutSubnet,
    /// An IPAM refusal.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// All VNIs are taken.
    #[error("no free VNI left")]
    VniExhausted,
    /// No such network.
    #[error("network {0} not found")]
    NotFound(String),
}

/// Every network of the cluster, with the address space and VNIs they use.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Networks {
    ipam: Ipam,
    by_name: BTreeMap<String, Network>,
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && n.len() <= 64
}

impl Networks {
    /// No networks, Docker's default pool.
    pub fn new(ipam: Ipam) -> Networks {
        Networks {
            ipam,
            by_name: BTreeMap::new(),
        }
    }

    /// This node's own ranges, which no network may overlap (see
    /// [`Ipam::set_node_reserved`]).
    pub fn set_node_reserved(&mut self, ranges: Vec<(Subnet, String)>) {
        self.ipam.set_node_reserved(ranges);
    }

    /// The address pools automatic subnets come from ([`Ipam::set_pools`]).
    pub fn set_pools(&mut self, pools: &[Subnet], size: u8) -> Result<(), IpamError> {
        self.ipam.set_pools(pools, size)
    }

    /// The address pools and subnet size ([`Ipam::pools`]).
    pub fn pools(&self) -> (Vec<Subnet>, u8) {
        self.ipam.pools()
    }

    /// `docker network create`. Validates everything before changing anything.
    pub fn create(&mut self, req: &CreateNetwork) -> Result<&Network, NetworkError> {
        if !valid_name(&req.name) {
            return Err(NetworkError::BadName(req.name.clone()));
        }
        if self.by_name.contains_key(&req.name) {
            return Err(NetworkError::Duplicate(req.name.clone()));
        }
        if req.driver != "overlay" {
            return Err(NetworkError::Driver(req.driver.clone()));
        }
        if req.ingress {
            if req.attachable {
                return Err(NetworkError::AttachableIngress);
            }
            if let Some(n) = self.by_name.values().find(|n| n.ingress) {
                return Err(NetworkError::SecondIngress(n.name.clone()));
            }
        }
        let (mut encrypted, mut base_mtu) = (false, 1500u16);
        let mut options = BTreeMap::new();
        for (k, v) in &req.options {
            match k.as_str() {
                "encrypted" => encrypted = !matches!(v.as_deref(), Some("false")),
                "com.docker.network.driver.mtu" => {
                    let raw = v.clone().unwrap_or_default();
                    base_mtu = raw
                        .parse::<u16>()
                        .ok()
                        .filter(|m| (576..=9216).contains(m))
                        .ok_or(NetworkError::BadMtu(raw))?;
                }
                other => return Err(NetworkError::UnknownOption(other.to_owned())),
            }
            options.insert(k.clone(), v.clone().unwrap_or_default());
        }
        let subnet = req
            .subnet
            .as_deref()
            .map(str::parse::<Subnet>)
            .transpose()?;
        let gateway = match req.gateway.as_deref() {
            Some(_) if subnet.is_none() => return Err(NetworkError::GatewayWithoutSubnet),
            Some(g) => Some(
                g.parse::<Ipv4Addr>()
                    .map_err(|_| NetworkError::BadGateway(g.to_owned()))?,
            ),
            None => None,
        };
        let vni = self.next_vni()?;
        let addressing = self.ipam.add_network(subnet, gateway)?;
        let n = Network {
            name: req.name.clone(),
            vni,
            addressing,
            attachable: req.attachable,
            ingress: req.ingress,
            encrypted,
            mtu: docker_overlay_mtu(base_mtu, encrypted),
            options,
        };
        Ok(self.by_name.entry(n.name.clone()).or_insert(n))
    }

    /// The lowest free VNI from 4096 (Docker's `ovmanager`).
    fn next_vni(&self) -> Result<Vni, NetworkError> {
        let used: std::collections::BTreeSet<u32> =
            self.by_name.values().map(|n| n.vni.get()).collect();
        (Vni::DOCKER_FIRST..=Vni::MAX)
            .find(|v| !used.contains(v))
            .and_then(Vni::new)
            .ok_or(NetworkError::VniExhausted)
    }

    /// `docker network rm`: frees the subnet and the VNI.
    pub fn remove(&mut self, name: &str) -> Result<Network, NetworkError> {
        let n = self
            .by_name
            .remove(name)
            .ok_or_else(|| NetworkError::NotFound(name.to_owned()))?;
        self.ipam.remove_network(n.addressing.subnet);
        Ok(n)
    }

    /// A network by name.
    pub fn get(&self, name: &str) -> Option<&Network> {
        self.by_name.get(name)
    }

    /// A network by name, for allocating endpoint addresses.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Network> {
        self.by_name.get_mut(name)
    }

    /// All networks by name.
    pub fn iter(&self) -> impl Iterator<Item = &Network> {
        self.by_name.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str) -> CreateNetwork {
        CreateNetwork {
            name: name.into(),
            driver: "overlay".into(),
            ..Default::default()
        }
    }

    #[test]
    fn docker_defaults() {
        let mut ns = Networks::default();
        let n = ns.create(&req("my-overlay")).unwrap().clone();
        assert_eq!(n.vni.get(), 4096);
        assert_eq!(n.addressing.subnet.to_string(), "10.0.0.0/24");
        assert_eq!(n.addressing.gateway, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!((n.mtu, n.encrypted, n.attachable), (1450, false, false));
        let mut r = req("secure");
        r.attachable = true;
        r.options = vec![("encrypted".into(), None)];
        let s = ns.create(&r).unwrap();
        assert_eq!((s.vni.get(), s.mtu, s.encrypted), (4097, 1424, true));
        assert_eq!(s.addressing.subnet.to_string(), "10.0.1.0/24");
        let mut r = req("jumbo");
        r.options = vec![("com.docker.network.driver.mtu".into(), Some("9000".into()))];
        assert_eq!(ns.create(&r).unwrap().mtu, 8950);
        // Removing frees the VNI and the subnet for the next network.
        ns.remove("my-overlay").unwrap();
        let again = ns.create(&req("again")).unwrap();
        assert_eq!(
            (
                again.vni.get(),
                again.addressing.subnet.to_string().as_str()
            ),
            (4096, "10.0.0.0/24")
        );
    }

    #[test]
    fn ingress_rules() {
        let mut ns = Networks::default();
        let mut r = req("ingress");
        r.ingress = true;
        r.attachable = true;
        assert_eq!(ns.create(&r).unwrap_err(), NetworkError::AttachableIngress);
        r.attachable = false;
        ns.create(&r).unwrap();
        let mut r2 = req("ingress2");
        r2.ingress = true;
        assert_eq!(
            ns.create(&r2).unwrap_err(),
            NetworkError::SecondIngress("ingress".into())
        );
    }

    #[test]
    fn bad_requests_change_nothing() {
        let mut ns = Networks::default();
        ns.create(&CreateNetwork {
            subnet: Some("10.20.0.0/16".into()),
            ..req("big")
        })
        .unwrap();
        let cases: Vec<(CreateNetwork, &str)> = vec![
            (req(""), "invalid network name"),
            (req("-x"), "invalid network name"),
            (req("has space"), "invalid network name"),
            (req("big"), "already exists"),
            (
                CreateNetwork {
                    driver: "bridge".into(),
                    ..req("b")
                },
                "not supported",
            ),
            (
                CreateNetwork {
                    subnet: Some("10.20.3.0/24".into()),
                    ..req("o")
                },
                "overlaps",
            ),
            (
                CreateNetwork {
                    subnet: Some("10.30.0.1/24".into()),
                    ..req("h")
                },
                "host bits",
            ),
            (
                CreateNetwork {
                    subnet: Some("10.30.0.0".into()),
                    ..req("m")
                },
                "invalid subnet",
            ),
            (
                CreateNetwork {
                    subnet: Some("10.30.0.0/24".into()),
                    gateway: Some("10.31.0.1".into()),
                    ..req("g")
                },
                "not a usable address",
            ),
            (
                CreateNetwork {
                    subnet: Some("10.30.0.0/24".into()),
                    gateway: Some("ten".into()),
                    ..req("g2")
                },
                "invalid gateway",
            ),
            (
                CreateNetwork {
                    gateway: Some("10.0.0.1".into()),
                    ..req("g3")
                },
                "--gateway needs --subnet",
            ),
            (
                CreateNetwork {
                    options: vec![("color".into(), Some("red".into()))],
                    ..req("c")
                },
                "unknown option",
            ),
            (
                CreateNetwork {
                    options: vec![("com.docker.network.driver.mtu".into(), Some("70000".into()))],
                    ..req("c2")
                },
                "invalid com.docker.network.driver.mtu",
            ),
        ];
        for (r, says) in cases {
            let e = ns.create(&r).unwrap_err().to_string();
            assert!(e.contains(says), "{r:?}: {e}");
            assert!(!e.contains('\n'));
        }
        assert_eq!(ns.iter().count(), 1);
        // The failed attempts consumed neither VNIs nor subnets.
        let n = ns.create(&req("next")).unwrap();
        assert_eq!(
            (n.vni.get(), n.addressing.subnet.to_string().as_str()),
            (4097, "10.0.0.0/24")
        );
        assert_eq!(
            ns.remove("nope").unwrap_err(),
            NetworkError::NotFound("nope".into())
        );
    }
}

mod vni_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use swarmgate_dataplane::wire::Vni;

    pub fn serialize<S: Serializer>(v: &Vni, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(v.get())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vni, D::Error> {
        let n = u32::deserialize(d)?;
        Vni::new(n).ok_or_else(|| serde::de::Error::custom(format!("VNI {n} out of range")))
    }
}
