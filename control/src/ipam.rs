//! IP address management as Docker does it for overlay networks: subnets come from a default
//! pool (10.0.0.0/8 split into /24s, `--default-addr-pool` in Docker) unless given with
//! `--subnet`; subnets never overlap; the gateway is the subnet's first address unless given
//! with `--gateway`; endpoints get the next free addresses.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 subnet in CIDR form, normalised (host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

/// Why an IPAM request was refused. Each is one line a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// Not `a.b.c.d/len`.
    #[error("invalid subnet {0:?}: expected a.b.c.d/len")]
    Malformed(String),
    /// Host bits set (`10.0.0.1/24`).
    #[error("invalid subnet {0}: host bits are set (did you mean {1}?)")]
    HostBits(String, Subnet),
    /// Prefix too long to hold a gateway and an endpoint.
    #[error("invalid subnet {0}: a /{1} holds no endpoints (use /30 or shorter)")]
    TooSmall(Subnet, u8),
    /// Overlaps a subnet already in use.
    #[error("subnet {0} overlaps subnet {1} in use by another network")]
    Overlap(Subnet, Subnet),
    /// The gateway is not a usable host address of the subnet.
    #[error("gateway {0} is not a usable address of subnet {1}")]
    GatewayOutside(Ipv4Addr, Subnet),
    /// A `--default-addr-pool` request refused (moby's wording).
    #[error("{0}")]
    BadPool(String),
    /// The pool has no free subnet left.
    #[error("no free /{1} left in the address pool {0}")]
    PoolExhausted(Subnet, u8),
    /// Every address of the subnet is in use.
    #[error("no free address left in subnet {0}")]
    SubnetFull(Subnet),
    /// Address not part of the subnet or not allocated.
    #[error("address {0} is not allocated in subnet {1}")]
    NotAllocated(Ipv4Addr, Subnet),
    /// Overlaps a range the node itself routes (loopback, link-local, multicast, the
    /// gateway bridge, the underlay): an overlay there would break routing.
    #[error("invalid pool request: subnet {0} overlaps {1} ({2})")]
    Reserved(Subnet, Subnet, String),
    /// Larger than any overlay needs (a /0 is every address there is).
    #[error("invalid subnet {0}: larger than /{1}")]
    TooLarge(Subnet, u8),
}

/// The largest subnet a network may have (a /8: 16 million addresses).
pub const MAX_SUBNET_PREFIX: u8 = 8;
/// `--default-addr-pool`s a swarm may have.
pub const MAX_POOLS: usize = 16;

/// Ranges no overlay may use, whatever the node: they are routed by every host.
fn always_reserved() -> [(Subnet, &'static str); 5] {
    let s = |a: [u8; 4], p: u8| Subnet::new(Ipv4Addr::from(a), p).expect("valid");
    [
        (s([0, 0, 0, 0], 8), "\"this\" network"),
        (s([127, 0, 0, 0], 8), "loopback"),
        (s([169, 254, 0, 0], 16), "link-local"),
        (s([224, 0, 0, 0], 4), "multicast"),
        (s([240, 0, 0, 0], 4), "reserved, broadcast"),
    ]
}

impl Subnet {
    /// A subnet from a base address and prefix; refuses host bits.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Subnet, IpamError> {
        if prefix > 32 {
            return Err(IpamError::Malformed(format!("{addr}/{prefix}")));
        }
        let a = u32::from(addr);
        let s = Subnet {
            base: a & Self::mask_of(prefix),
            prefix,
        };
        if s.base != a {
            return Err(IpamError::HostBits(format!("{addr}/{prefix}"), s));
        }
        Ok(s)
    }

    fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.base.into()
    }
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    /// Number of addresses, 2^(32 − prefix).
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }
    /// True if `a` is inside.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & Self::mask_of(self.prefix) == self.base
    }
    /// True if the two share any address.
    pub fn overlaps(&self, o: &Subnet) -> bool {
        let p = self.prefix.min(o.prefix);
        self.base & Self::mask_of(p) == o.base & Self::mask_of(p)
    }
    /// True if `a` is a usable host address (not the network or broadcast address).
    pub fn is_host(&self, a: Ipv4Addr) -> bool {
        let v = u32::from(a);
        self.contains(a) && (self.prefix >= 31 || (v != self.base && v != self.broadcast()))
    }
    fn broadcast(&self) -> u32 {
        self.base | !Self::mask_of(self.prefix)
    }
    /// The first usable address: Docker's default gateway.
    pub fn first_host(&self) -> Ipv4Addr {
        (self.base + 1).into()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = IpamError;
    fn from_str(s: &str) -> Result<Subnet, IpamError> {
        let bad = || IpamError::Malformed(s.to_owned());
        let (a, p) = s.trim().split_once('/').ok_or_else(bad)?;
        let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let p: u8 = p.parse().map_err(|_| bad())?;
        if p > 32 {
            return Err(bad());
        }
        Subnet::new(a, p)
    }
}

/// The addresses of one network: its subnet, gateway and allocated endpoint addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAddressing {
    /// The subnet.
    pub subnet: Subnet,
    /// The gateway address (reserved).
    pub gateway: Ipv4Addr,
    allocated: BTreeSet<u32>,
}

impl NetworkAddressing {
    /// Allocates the lowest free host address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, IpamError> {
        let first = self.subnet.base + if self.subnet.prefix >= 31 { 0 } else { 1 };
        let last = if self.subnet.prefix >= 31 {
            self.subnet.broadcast()
        } else {
            self.subnet.broadcast() - 1
        };
        let gw = u32::from(self.gateway);
        let mut a = first;
        loop {
            if a != gw && !self.allocated.contains(&a) {
                self.allocated.insert(a);
                return Ok(a.into());
            }
            if a == last {
                return Err(IpamError::SubnetFull(self.subnet));
            }
            a += 1;
        }
    }

    /// Reserves a specific address (a VIP or a static endpoint address).
    pub fn reserve(&mut self, a: Ipv4Addr) -> Result<(), IpamError> {
        if !self.subnet.is_host(a) || a == self.gateway || !self.allocated.insert(a.into()) {
            return Err(IpamError::NotAllocated(a, self.subnet));
        }
        Ok(())
    }

    /// Returns an address to the pool.
    pub fn release(&mut self, a: Ipv4Addr) -> Result<(), IpamError> {
        if self.allocated.remove(&u32::from(a)) {
            Ok(())
        } else {
            Err(IpamError::NotAllocated(a, self.subnet))
        }
    }

    /// Addresses in use, gateway excluded.
    pub fn in_use(&self) -> usize {
        self.allocated.len()
    }
}

/// The cluster's address space: the default pools and every subnet in use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ipam {
    pool: Subnet,
    /// Further `--default-addr-pool`s, used in order after `pool`.
    #[serde(default)]
    more_pools: Vec<Subnet>,
    size: u8,
    used: BTreeSet<Subnet>,
    /// Ranges of this node that no network may overlap (the gateway bridge, the underlay),
    /// set by the daemon at start; not persisted, since they belong to the node.
    #[serde(skip)]
    node_reserved: Vec<(Subnet, String)>,
}

impl Default for Ipam {
    /// Docker's default: 10.0.0.0/8 in /24 networks.
    fn default() -> Self {
        Ipam::new(
            Subnet::new(Ipv4Addr::new(10, 0, 0, 0), 8).expect("valid"),
            24,
        )
    }
}

impl Ipam {
    /// A pool cut into subnets of `/size`.
    pub fn new(pool: Subnet, size: u8) -> Ipam {
        Ipam {
            pool,
            more_pools: Vec::new(),
            size: size.max(pool.prefix),
            used: BTreeSet::new(),
            node_reserved: Vec::new(),
        }
    }

    /// Declares this node's own ranges (its gateway bridge, its underlay subnet): no
    /// network may overlap them, and the pool skips them.
    pub fn set_node_reserved(&mut self, ranges: Vec<(Subnet, String)>) {
        self.node_reserved = ranges;
    }

    /// The reserved range `s` overlaps, if any.
    fn reserved_overlap(&self, s: &Subnet) -> Option<(Subnet, String)> {
        always_reserved()
            .iter()
            .map(|(r, w)| (*r, (*w).to_owned()))
            .chain(self.node_reserved.iter().cloned())
            .find(|(r, _)| r.overlaps(s))
    }

    /// Subnets in use.
    pub fn subnets(&self) -> impl Iterator<Item = &Subnet> {
        self.used.iter()
    }

    /// Adds a network's addressing: `subnet` and `gateway` as given by the user, or the
    /// next free subnet of the pool and its first address. Nothing changes on error.
    pub fn add_network(
        &mut self,
        subnet: Option<Subnet>,
        gateway: Option<Ipv4Addr>,
    ) -> Result<NetworkAddressing, IpamError> {
        let subnet = match subnet {
            Some(s) => {
                if s.prefix > 30 {
                    return Err(IpamError::TooSmall(s, s.prefix));
                }
                if s.prefix < MAX_SUBNET_PREFIX {
                    return Err(IpamError::TooLarge(s, MAX_SUBNET_PREFIX));
                }
                if let Some((r, what)) = self.reserved_overlap(&s) {
                    return Err(IpamError::Reserved(s, r, what));
                }
                if let Some(o) = self.used.iter().find(|o| o.overlaps(&s)) {
                    return Err(IpamError::Overlap(s, *o));
                }
                s
            }
            None => self.next_free()?,
        };
        let gateway = match gateway {
            Some(g) if !subnet.is_host(g) => return Err(IpamError::GatewayOutside(g, subnet)),
            Some(g) => g,
            None => subnet.first_host(),
        };
        self.used.insert(subnet);
        Ok(NetworkAddressing {
            subnet,
            gateway,
            allocated: BTreeSet::new(),
        })
    }

    /// Gives a network's subnet back.
    pub fn remove_network(&mut self, subnet: Subnet) {
        self.used.remove(&subnet);
    }

    /// `swarm init --default-addr-pool P... --default-addr-pool-mask-length N`: the pools
    /// automatic subnets come from, in order, cut into `/size`. Validated as moby's
    /// `validateDefaultAddrPool` (`daemon/cluster/listen_addr.go`) does — size at most 29
    /// and no larger than any pool — and, so that a search stays bounded, at most
    /// [`MAX_POOLS`] pools of at most a /8 each. Only before any network exists.
    pub fn set_pools(&mut self, pools: &[Subnet], size: u8) -> Result<(), IpamError> {
        if size > 29 {
            return Err(IpamError::BadPool(format!(
                "subnet size is out of range: {size}"
            )));
        }
        if pools.is_empty() || pools.len() > MAX_POOLS {
            return Err(IpamError::BadPool(format!(
                "between 1 and {MAX_POOLS} default address pools"
            )));
        }
        for p in pools {
            if size < p.prefix {
                return Err(IpamError::BadPool(format!(
                    "invalid CIDR: \"{p}\". Subnet size is too small for pool: {size}"
                )));
            }
            if p.prefix < MAX_SUBNET_PREFIX {
                return Err(IpamError::TooLarge(*p, MAX_SUBNET_PREFIX));
            }
        }
        if !self.used.is_empty() {
            return Err(IpamError::BadPool(
                "the default address pools are set before any network exists".into(),
            ));
        }
        self.pool = pools[0];
        self.more_pools = pools[1..].to_vec();
        self.size = size;
        Ok(())
    }

    /// The default pools, in order, and the size of the subnets cut from them.
    pub fn pools(&self) -> (Vec<Subnet>, u8) {
        let mut v = vec![self.pool];
        v.extend(&self.more_pools);
        (v, self.size)
    }

    fn next_free(&self) -> Result<Subnet, IpamError> {
        let step = 1u64 << (32 - self.size);
        for pool in std::iter::once(&self.pool).chain(&self.more_pools) {
            let count = pool.size() / step;
            for i in 0..count {
                let s = Subnet {
                    base: (pool.base as u64 + i * step) as u32,
                    prefix: self.size,
                };
                if !self.used.iter().any(|o| o.overlaps(&s)) && self.reserved_overlap(&s).is_none()
                {
                    return Ok(s);
                }
            }
        }
        Err(IpamError::PoolExhausted(self.pool, self.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sn(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(sn("10.0.9.0/24").to_string(), "10.0.9.0/24");
        for bad in [
            "10.0.9.0",
            "10.0.9.0/",
            "10.0.9.0/33",
            "10.0.9/24",
            "x/24",
            "10.0.9.0/2a",
            "10.0.9.0/+8",
        ] {
            assert!(
                matches!(bad.parse::<Subnet>(), Err(IpamError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(
            "10.0.9.1/24".parse::<Subnet>().unwrap_err(),
            IpamError::HostBits("10.0.9.1/24".into(), sn("10.0.9.0/24"))
        );
    }

    /// `--default-addr-pool 10.20.0.0/16 --default-addr-pool 10.30.0.0/24
    /// --default-addr-pool-mask-length 25`: subnets come from the first pool, then the
    /// next; moby's refusals word for word.
    #[test]
    fn default_addr_pools_in_order_with_moby_validation() {
        let mut ipam = Ipam::default();
        ipam.set_pools(&[sn("10.20.0.0/16"), sn("10.30.0.0/24")], 25)
            .unwrap();
        assert_eq!(
            ipam.add_network(None, None).unwrap().subnet,
            sn("10.20.0.0/25")
        );
        assert_eq!(
            ipam.add_network(None, None).unwrap().subnet,
            sn("10.20.0.128/25")
        );
        let mut small = Ipam::default();
        small
            .set_pools(&[sn("10.30.0.0/24"), sn("10.40.0.0/25")], 25)
            .unwrap();
        let got: Vec<Subnet> = (0..3)
            .map(|_| small.add_network(None, None).unwrap().subnet)
            .collect();
        assert_eq!(
            got,
            vec![sn("10.30.0.0/25"), sn("10.30.0.128/25"), sn("10.40.0.0/25")]
        );
        assert!(matches!(
            small.add_network(None, None),
            Err(IpamError::PoolExhausted(..))
        ));
        let mut fresh = Ipam::default();
        assert_eq!(
            fresh
                .set_pools(&[sn("10.0.0.0/16")], 30)
                .unwrap_err()
                .to_string(),
            "subnet size is out of range: 30"
        );
        assert_eq!(
            fresh
                .set_pools(&[sn("10.0.0.0/16")], 12)
                .unwrap_err()
                .to_string(),
            "invalid CIDR: \"10.0.0.0/16\". Subnet size is too small for pool: 12"
        );
        assert!(matches!(
            fresh.set_pools(&[sn("0.0.0.0/0")], 24),
            Err(IpamError::TooLarge(..))
        ));
        assert!(fresh.set_pools(&[], 24).is_err());
        assert!(
            ipam.set_pools(&[sn("10.50.0.0/16")], 24).is_err(),
            "networks exist"
        );
    }

    #[test]
    fn default_pool_hands_out_24s_in_order_without_overlap() {
        let mut ipam = Ipam::default();
        let a = ipam.add_network(None, None).unwrap();
        assert_eq!(
            (a.subnet, a.gateway),
            (sn("10.0.0.0/24"), Ipv4Addr::new(10, 0, 0, 1))
        );
        let b = ipam.add_network(None, None).unwrap();
        assert_eq!(b.subnet, sn("10.0.1.0/24"));
        // A user subnet inside the pool is skipped by later automatic ones.
        ipam.add_network(Some(sn("10.0.2.0/23")), None).unwrap();
        assert_eq!(
            ipam.add_network(None, None).unwrap().subnet,
            sn("10.0.4.0/24")
        );
        ipam.remove_network(sn("10.0.1.0/24"));
        assert_eq!(
            ipam.add_network(None, None).unwrap().subnet,
            sn("10.0.1.0/24")
        );
    }

    #[test]
    fn refusals_change_nothing() {
        let mut ipam = Ipam::default();
        ipam.add_network(Some(sn("10.10.0.0/16")), None).unwrap();
        let before: Vec<_> = ipam.subnets().copied().collect();
        assert_eq!(
            ipam.add_network(Some(sn("10.10.5.0/24")), None)
                .unwrap_err(),
            IpamError::Overlap(sn("10.10.5.0/24"), sn("10.10.0.0/16"))
        );
        assert!(matches!(
            ipam.add_network(Some(sn("10.0.0.0/8")), None),
            Err(IpamError::Overlap(..))
        ));
        assert_eq!(
            ipam.add_network(
                Some(sn("192.168.5.0/24")),
                Some(Ipv4Addr::new(192, 168, 6, 1))
            )
            .unwrap_err(),
            IpamError::GatewayOutside(Ipv4Addr::new(192, 168, 6, 1), sn("192.168.5.0/24"))
        );
        assert!(matches!(
            ipam.add_network(
                Some(sn("192.168.5.0/24")),
                Some(Ipv4Addr::new(192, 168, 5, 255))
            ),
            Err(IpamError::GatewayOutside(..))
        ));
        assert!(matches!(
            ipam.add_network(Some(sn("192.168.5.0/31")), None),
            Err(IpamError::TooSmall(..))
        ));
        assert_eq!(ipam.subnets().copied().collect::<Vec<_>>(), before);
        let g = ipam
            .add_network(
                Some(sn("192.168.5.0/24")),
                Some(Ipv4Addr::new(192, 168, 5, 254)),
            )
            .unwrap();
        assert_eq!(g.gateway, Ipv4Addr::new(192, 168, 5, 254));
    }

    #[test]
    fn small_pool_exhausts() {
        let mut ipam = Ipam::new(sn("10.1.0.0/23"), 24);
        ipam.add_network(None, None).unwrap();
        ipam.add_network(None, None).unwrap();
        assert_eq!(
            ipam.add_network(None, None).unwrap_err(),
            IpamError::PoolExhausted(sn("10.1.0.0/23"), 24)
        );
    }

    #[test]
    fn endpoint_addresses() {
        let mut ipam = Ipam::default();
        let mut n = ipam.add_network(Some(sn("10.5.0.0/29")), None).unwrap();
        // .1 is the gateway; .2-.6 for endpoints; .0 and .7 never.
        let got: Vec<Ipv4Addr> = (0..5).map(|_| n.allocate().unwrap()).collect();
        assert_eq!(
            got,
            (2..=6)
                .map(|i| Ipv4Addr::new(10, 5, 0, i))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            n.allocate().unwrap_err(),
            IpamError::SubnetFull(sn("10.5.0.0/29"))
        );
        n.release(Ipv4Addr::new(10, 5, 0, 4)).unwrap();
        assert_eq!(n.allocate().unwrap(), Ipv4Addr::new(10, 5, 0, 4));
        assert!(n.release(Ipv4Addr::new(10, 5, 0, 1)).is_err());
        assert!(n.reserve(Ipv4Addr::new(10, 5, 0, 7)).is_err());
        assert_eq!(n.in_use(), 5);
    }

    proptest! {
        /// Whatever is asked, subnets in use never overlap and refusals leave state as it was.
        #[test]
        fn never_overlapping(reqs in proptest::collection::vec((any::<u32>(), 8u8..=30, any::<bool>()), 1..40)) {
            let mut ipam = Ipam::default();
            for (a, p, auto) in reqs {
                let before: Vec<Subnet> = ipam.subnets().copied().collect();
                let req = if auto { None } else { Some(Subnet::new(Ipv4Addr::from(a & Subnet::mask_of(p)), p).unwrap()) };
                if ipam.add_network(req, None).is_err() {
                    prop_assert_eq!(ipam.subnets().copied().collect::<Vec<_>>(), before);
                }
                let v: Vec<Subnet> = ipam.subnets().copied().collect();
                for i in 0..v.len() {
                    for j in i + 1..v.len() {
                        prop_assert!(!v[i].overlaps(&v[j]), "{} overlaps {}", v[i], v[j]);
                    }
                }
            }
        }
    }

    #[test]
    fn subnets_that_would_break_routing_are_refused() {
        let mut ipam = Ipam::default();
        ipam.set_node_reserved(vec![
            (sn("172.18.0.0/16"), "sg_gwbridge".into()),
            (sn("10.0.1.0/24"), "the underlay".into()),
        ]);
        for (bad, want) in [
            ("0.0.0.0/0", "larger than /8"),
            ("10.0.0.0/7", "larger than /8"),
            ("127.0.0.0/24", "loopback"),
            ("169.254.3.0/24", "link-local"),
            ("224.1.0.0/16", "multicast"),
            ("172.18.5.0/24", "sg_gwbridge"),
            ("172.16.0.0/12", "sg_gwbridge"),
            ("10.0.0.0/16", "the underlay"),
        ] {
            let e = ipam
                .add_network(Some(sn(bad)), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert_eq!(ipam.subnets().count(), 0, "nothing taken by a refusal");
        // The pool skips the underlay's subnet.
        let a = ipam.add_network(None, None).unwrap();
        let b = ipam.add_network(None, None).unwrap();
        assert_eq!((a.subnet, b.subnet), (sn("10.0.0.0/24"), sn("10.0.2.0/24")));
    }
}
