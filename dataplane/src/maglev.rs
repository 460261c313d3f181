//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4) and the VIP services built on it.
//!
//! A table of prime size `M` (≥ 65537 here) maps a flow hash to a backend. Each backend
//! has a permutation of the slots given by `offset = h1(name) mod M` and
//! `skip = h2(name) mod (M − 1) + 1`; backends take turns claiming their next free slot.
//! The result spreads slots almost evenly (each backend within a few entries of `M/N`)
//! and moves few flows when the backend set changes.

use core::net::Ipv4Addr;

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
        let mut entries = vec![NO_BACKEND; size].into_boxed_slice();
        let n = names.len();
        if n == 0 {
            return Ok(MaglevTable {
                entries,
                backends: 0,
            });
        }
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
    table: MaglevTable,
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
        let names: Vec<[u8; 4]> = backends.iter().map(|b| b.ip.octets()).collect();
        let table = MaglevTable::new(&names, DEFAULT_TABLE_SIZE)?;
        Ok(VipService {
            vip,
            protocol,
            port,
            target_port,
            backends,
            table,
        })
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
}
