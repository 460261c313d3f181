//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4) and the VIP services built on it.
//!
//! A table of prime size `M` (≥ 65537 here) maps a flow hash to a backend. Each backend
//! has a permutation of the slots given by `offset = h1(name) mod M` and
//! `skip = h2(name) mod (M − 1) + 1`; backends take turns claiming their next free slot.
//! The result spreads slots almost evenly (each backend within a few entries of `M/N`)
//! and moves few flows when the backend set changes.

use core::net::Ipv4Addr;

use std::collections::HashMap;
use std::sync::Arc;

use crate::hash::stable_hash;
use crate::wire::{EthernetAddress, IpProtocol};

/// The default table size, the paper's own choice: the smallest prime ≥ 65536.
pub const DEFAULT_TABLE_SIZE: usize = 65537;

/// Why a table could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size is not a prime of at least 65537.
    BadTableSize,
    /// More backends than the table (or a `u16` index) can hold.
    TooManyBackends,
}

impl core::fmt::Display for MaglevError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MaglevError::BadTableSize => "Maglev table size must be a prime >= 65537",
            MaglevError::TooManyBackends => "too many backends for the Maglev table",
        })
    }
}

impl std::error::Error for MaglevError {}

const NO_BACKEND: u16 = u16::MAX;

/// A Maglev lookup table.
#[derive(Clone)]
pub struct MaglevTable {
    entries: Box<[u16]>,
    backends: usize,
}

impl core::fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MaglevTable")
            .field("size", &self.entries.len())
            .field("backends", &self.backends)
            .finish()
    }
}

fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

impl MaglevTable {
    /// Builds the table for backends named by `names` (stable identities such as the
    /// backend's address bytes: the same names give the same table on every node).
    pub fn new<N: AsRef<[u8]>>(names: &[N], size: usize) -> Result<MaglevTable, MaglevError> {
        if size < DEFAULT_TABLE_SIZE || !is_prime(size) {
            return Err(MaglevError::BadTableSize);
        }
        if names.len() >= NO_BACKEND as usize || names.len() > size {
            return Err(MaglevError::TooManyBackends);
        }
        let n = names.len();
        if n == 0 {
            // No backends, no table: every lookup answers `None` without one.
            return Ok(MaglevTable {
                entries: Box::new([]),
                backends: 0,
            });
        }
        let mut entries = vec![NO_BACKEND; size].into_boxed_slice();
        let m = size as u64;
        let perm: Vec<(u64, u64)> = names
            .iter()
            .map(|name| {
                let offset = stable_hash(name.as_ref(), 0x6d61_676c_6576_3031) % m;
                let skip = stable_hash(name.as_ref(), 0x6d61_676c_6576_3032) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; n];
        let mut filled = 0usize;
        'fill: loop {
            for i in 0..n {
                let (offset, skip) = perm[i];
                let mut c = (offset + next[i] * skip) % m;
                while entries[c as usize] != NO_BACKEND {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                entries[c as usize] = i as u16;
                next[i] += 1;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        Ok(MaglevTable {
            entries,
            backends: n,
        })
    }

    /// Index of the backend for `hash`, `None` without backends.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let e = self.entries[(hash % self.entries.len() as u64) as usize];
        (e != NO_BACKEND).then_some(e as usize)
    }

    /// Table size.
    pub fn size(&self) -> usize {
        self.entries.len()
    }

    /// Slots held by each backend.
    pub fn slots_per_backend(&self) -> Vec<usize> {
        let mut v = vec![0usize; self.backends];
        for e in self.entries.iter() {
            if *e != NO_BACKEND {
                v[*e as usize] += 1;
            }
        }
        v
    }
}

/// The stable names a backend set's table is built from: the addresses, in order.
fn backend_names(backends: &[Backend]) -> Vec<[u8; 4]> {
    backends.iter().map(|b| b.ip.octets()).collect()
}

/// Maglev tables by backend list, kept by the control side across snapshots: a table is
/// built only when a backend list is new, and shared by every service over that list.
#[derive(Debug, Default)]
pub struct MaglevCache {
    tables: HashMap<Vec<[u8; 4]>, Arc<MaglevTable>>,
    built: u64,
}

impl MaglevCache {
    /// The table for `backends` (in this order), built now if no service has it.
    pub fn table(&mut self, backends: &[Backend]) -> Result<Arc<MaglevTable>, MaglevError> {
        let names = backend_names(backends);
        if let Some(t) = self.tables.get(&names) {
            return Ok(t.clone());
        }
        let t = Arc::new(MaglevTable::new(&names, DEFAULT_TABLE_SIZE)?);
        self.built += 1;
        self.tables.insert(names, t.clone());
        Ok(t)
    }

    /// Forgets tables no service holds any more (call after publishing a snapshot; a
    /// table still held by an older snapshot goes at a later call).
    pub fn prune(&mut self) {
        self.tables.retain(|_, t| Arc::strong_count(t) > 1);
    }

    /// Tables built so far.
    pub fn built(&self) -> u64 {
        self.built
    }

    /// Tables held.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// True when no table is held.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

/// One backend (task) of a VIP service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// The task's overlay address.
    pub ip: Ipv4Addr,
    /// The task's MAC on the overlay.
    pub mac: EthernetAddress,
}

/// A load-balanced service address: a VIP inside an overlay, or a published port.
#[derive(Debug, Clone)]
pub struct VipService {
    /// Address clients connect to.
    pub vip: Ipv4Addr,
    /// TCP or UDP.
    pub protocol: IpProtocol,
    /// Port clients connect to (the published port).
    pub port: u16,
    /// Port the tasks listen on (the target port).
    pub target_port: u16,
    backends: Vec<Backend>,
    table: Arc<MaglevTable>,
}

impl VipService {
    /// A service over `backends`, its Maglev table built with the default size.
    pub fn new(
        vip: Ipv4Addr,
        protocol: IpProtocol,
        port: u16,
        target_port: u16,
        backends: Vec<Backend>,
    ) -> Result<VipService, MaglevError> {
        let table = Arc::new(MaglevTable::new(
            &backend_names(&backends),
            DEFAULT_TABLE_SIZE,
        )?);
        Ok(VipService {
            vip,
            protocol,
            port,
            target_port,
            backends,
            table,
        })
    }

    /// As [`VipService::new`], with the table taken from `cache`: services over the same
    /// backends (the published ports of one service, its VIPs on several networks, the
    /// same service in the next snapshot) share one table, built once.
    pub fn cached(
        vip: Ipv4Addr,
        protocol: IpProtocol,
        port: u16,
        target_port: u16,
        backends: Vec<Backend>,
        cache: &mut MaglevCache,
    ) -> Result<VipService, MaglevError> {
        let mut svc = VipService::new(vip, protocol, port, target_port, Vec::new())?;
        svc.table = cache.table(&backends)?;
        svc.backends = backends;
        Ok(svc)
    }

    /// The backend for a flow hash.
    #[inline]
    pub fn pick(&self, flow_hash: u64) -> Option<&Backend> {
        self.table.lookup(flow_hash).map(|i| &self.backends[i])
    }

    /// The backends.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::flow_hash_v4;

    fn names(n: usize) -> Vec<[u8; 4]> {
        (0..n)
            .map(|i| Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250 + 2) as u8).octets())
            .collect()
    }

    #[test]
    fn size_must_be_prime() {
        assert_eq!(
            MaglevTable::new(&names(3), 65536).unwrap_err(),
            MaglevError::BadTableSize
        );
        assert_eq!(
            MaglevTable::new(&names(3), 65521).unwrap_err(),
            MaglevError::BadTableSize
        );
        assert!(MaglevTable::new(&names(3), 65537).is_ok());
        assert!(MaglevTable::new(&names(3), 131071).is_ok());
    }

    #[test]
    fn empty_table_has_no_backend() {
        let t = MaglevTable::new::<[u8; 4]>(&[], DEFAULT_TABLE_SIZE).unwrap();
        assert_eq!(t.lookup(12345), None);
    }

    /// With 100 backends no backend gets more than 1.1× its fair share — both of table
    /// slots and of a million real flow hashes.
    #[test]
    fn balance_with_100_backends() {
        let t = MaglevTable::new(&names(100), DEFAULT_TABLE_SIZE).unwrap();
        let slots = t.slots_per_backend();
        let fair = DEFAULT_TABLE_SIZE as f64 / 100.0;
        let max = *slots.iter().max().unwrap() as f64;
        assert!(max <= 1.1 * fair, "max slots {max} vs fair {fair}");

        let mut flows = vec![0usize; 100];
        let n = 1_000_000u32;
        for i in 0..n {
            let h = flow_hash_v4(
                0xc0a8_0000 | (i >> 16),
                0x0a00_0002,
                6,
                (i & 0xffff) as u16,
                80,
            );
            flows[t.lookup(h).unwrap()] += 1;
        }
        let fair = n as f64 / 100.0;
        let max = *flows.iter().max().unwrap() as f64;
        assert!(max <= 1.1 * fair, "max flows {max} vs fair {fair}");
    }

    /// Removing one backend of 100 moves only a small share of the other backends' flows
    /// (the paper measures a few percent; we require under 5 % and print the value).
    #[test]
    fn minimal_disruption() {
        let all = names(100);
        let t1 = MaglevTable::new(&all, DEFAULT_TABLE_SIZE).unwrap();
        let removed = 37;
        let fewer: Vec<[u8; 4]> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != removed)
            .map(|(_, n)| *n)
            .collect();
        let t2 = MaglevTable::new(&fewer, DEFAULT_TABLE_SIZE).unwrap();
        let (mut others, mut moved) = (0u32, 0u32);
        for i in 0..200_000u32 {
            let h = flow_hash_v4(0x0b00_0000 | i, 0x0a00_0002, 17, (i % 50000) as u16, 53);
            let b1 = all[t1.lookup(h).unwrap()];
            let b2 = fewer[t2.lookup(h).unwrap()];
            if b1 != all[removed] {
                others += 1;
                if b1 != b2 {
                    moved += 1;
                }
            } else {
                assert_ne!(b2, all[removed]);
            }
        }
        let share = moved as f64 / others as f64;
        println!(
            "maglev: removing 1 of 100 backends moved {:.2}% of other backends' flows",
            share * 100.0
        );
        assert!(share < 0.05, "moved {share}");
    }

    #[test]
    fn same_names_same_table() {
        let a = MaglevTable::new(&names(7), DEFAULT_TABLE_SIZE).unwrap();
        let b = MaglevTable::new(&names(7), DEFAULT_TABLE_SIZE).unwrap();
        assert_eq!(a.entries, b.entries);
    }

    #[test]
    fn the_cache_builds_a_table_once_per_backend_list() {
        let b = |i: u8| Backend {
            ip: Ipv4Addr::new(10, 0, 0, i),
            mac: EthernetAddress([2, 0x42, 10, 0, 0, i]),
        };
        let mut c = MaglevCache::default();
        let vip = Ipv4Addr::new(192, 168, 1, 1);
        // 200 published ports of one service: one table.
        let ports: Vec<VipService> = (0..200u16)
            .map(|p| {
                VipService::cached(vip, IpProtocol::TCP, 8000 + p, 80, vec![b(2), b(3)], &mut c)
                    .unwrap()
            })
            .collect();
        assert_eq!((c.built(), c.len()), (1, 1));
        assert!(Arc::ptr_eq(&ports[0].table, &ports[199].table));
        // The next snapshot with the same backends builds nothing.
        let again =
            VipService::cached(vip, IpProtocol::TCP, 8000, 80, vec![b(2), b(3)], &mut c).unwrap();
        assert_eq!(c.built(), 1);
        assert_eq!(again.pick(42), ports[0].pick(42));
        // A new backend list builds one more; a service without backends has no table.
        let three = VipService::cached(
            vip,
            IpProtocol::TCP,
            8000,
            80,
            vec![b(2), b(3), b(4)],
            &mut c,
        )
        .unwrap();
        let none = VipService::cached(vip, IpProtocol::TCP, 9000, 80, vec![], &mut c).unwrap();
        assert_eq!(c.built(), 3);
        assert_eq!(none.table.size(), 0, "no table without backends");
        assert_eq!(none.pick(7), None);
        // Tables nobody holds are pruned.
        drop((ports, again, none));
        c.prune();
        assert_eq!(c.len(), 1);
        drop(three);
        c.prune();
        assert!(c.is_empty());
    }
}
