//! Connection tracking for load-balanced flows: which backend a connection was given, and
//! how its replies are translated back.
//!
//! Maglev alone moves a few connections when the backend set changes; a flow table keeps
//! every existing connection on the task it started with (what Docker's IPVS conntrack
//! gives, and what users of published ports expect). Each load-balanced connection gets two
//! entries, inserted together: the forward one (client → service address) says which
//! backend to rewrite to, the reply one (backend → client) says which service address to
//! rewrite the source back to and, for published ports, which MAC the client's packets came
//! from so the reply can leave through the underlay without a neighbour lookup.
//!
//! The table is owned by one worker (no locks, no atomics), has a fixed capacity allocated
//! up front, and never allocates afterwards: open addressing over a window of [`WAYS`]
//! slots; a full window evicts its least recently seen entry. Entries idle for longer than
//! the configured timeout are dead and their slots reused. Time is whole seconds supplied
//! by the caller, so the table is as deterministic as its input.

use core::net::Ipv4Addr;

use crate::hash::fmix64;
use crate::wire::EthernetAddress;

/// Slots probed for a key.
pub const WAYS: usize = 8;

/// Default number of slots per worker (two per connection).
pub const DEFAULT_CAPACITY: usize = 1 << 17;

/// Default idle timeout, seconds (IPVS's TCP default is 900 s established; 300 s keeps the
/// table small and is longer than any keep-alive interval a client would use).
pub const DEFAULT_IDLE_SECS: u32 = 300;

/// A 5-tuple in the direction the packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey(u64, u64);

impl FlowKey {
    /// The key of a packet from `src:sport` to `dst:dport` with IP protocol `proto`.
    #[inline]
    pub fn new(proto: u8, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> FlowKey {
        FlowKey(
            ((u32::from(src) as u64) << 32) | ((sport as u64) << 16) | proto as u64,
            ((u32::from(dst) as u64) << 16) | dport as u64,
        )
    }

    #[inline]
    fn hash(&self) -> u64 {
        fmix64(self.0 ^ self.1.rotate_left(29))
    }
}

/// What to do with a tracked packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowAction {
    /// Forward direction: rewrite the destination to this backend.
    Dnat {
        /// Backend address.
        ip: Ipv4Addr,
        /// Backend (target) port.
        port: u16,
        /// Hairpin (the client is the backend it was given): also rewrite the source
        /// address to this one (the network's gateway), so that the backend's reply comes
        /// back through the data plane instead of staying inside its own stack.
        snat: Option<Ipv4Addr>,
    },
    /// Reply direction: rewrite the source back to the service address.
    Snat {
        /// Service address (VIP, or this node's address for a published port).
        ip: Ipv4Addr,
        /// Service port.
        port: u16,
        /// For published ports: the MAC the client's packets came from; the reply goes out
        /// of the underlay to it. `None`: the reply is routed inside the network.
        via: Option<EthernetAddress>,
        /// Hairpin: also rewrite the destination address back to the client's.
        dnat: Option<Ipv4Addr>,
    },
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: FlowKey,
    action: FlowAction,
    seen: u32,
}

/// One worker's flow table.
#[derive(Debug)]
pub struct FlowTable {
    slots: Box<[Option<Slot>]>,
    mask: usize,
    idle: u32,
    len: usize,
}

impl FlowTable {
    /// A table of at least `capacity` slots (rounded up to a power of two, at least
    /// [`WAYS`]); entries idle for `idle_secs` expire.
    pub fn new(capacity: usize, idle_secs: u32) -> FlowTable {
        let n = capacity.max(WAYS).next_power_of_two();
        FlowTable {
            slots: vec![None; n].into_boxed_slice(),
            mask: n - 1,
            idle: idle_secs,
            len: 0,
        }
    }

    #[inline]
    fn live(&self, s: &Slot, now: u32) -> bool {
        now.wrapping_sub(s.seen) <= self.idle
    }

    /// The action for `key`, refreshing its timestamp; `None` if untracked or expired.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, now: u32) -> Option<FlowAction> {
        let base = key.hash() as usize;
        for i in 0..WAYS {
            let at = (base + i) & self.mask;
            if let Some(s) = self.slots[at] {
                if s.key == *key {
                    if !self.live(&s, now) {
                        self.slots[at] = None;
                        self.len -= 1;
                        return None;
                    }
                    if let Some(s) = self.slots[at].as_mut() {
                        s.seen = now;
                    }
                    return Some(s.action);
                }
            }
        }
        None
    }

    /// Tracks `key` with `action`, replacing an entry for the same key, else taking a free
    /// or expired slot, else evicting the least recently seen entry of the window.
    pub fn insert(&mut self, key: FlowKey, action: FlowAction, now: u32) {
        let base = key.hash() as usize;
        let mut victim = base & self.mask;
        let mut victim_age = 0u32;
        let mut free = None;
        for i in 0..WAYS {
            let at = (base + i) & self.mask;
            match self.slots[at] {
                Some(s) if s.key == key => {
                    self.slots[at] = Some(Slot {
                        key,
                        action,
                        seen: now,
                    });
                    return;
                }
                Some(s) if self.live(&s, now) => {
                    let age = now.wrapping_sub(s.seen);
                    if free.is_none() && age >= victim_age {
                        victim = at;
                        victim_age = age;
                    }
                }
                Some(_) | None => {
                    if free.is_none() {
                        free = Some(at);
                    }
                }
            }
        }
        let at = free.unwrap_or(victim);
        if self.slots[at].is_none() {
            self.len += 1;
        }
        self.slots[at] = Some(Slot {
            key,
            action,
            seen: now,
        });
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &FlowKey) {
        let base = key.hash() as usize;
        for i in 0..WAYS {
            let at = (base + i) & self.mask;
            if matches!(self.slots[at], Some(s) if s.key == *key) {
                self.slots[at] = None;
                self.len -= 1;
                return;
            }
        }
    }

    /// Occupied slots (expired entries count until their slot is reused).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no slot is occupied.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots in the table.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> FlowKey {
        FlowKey::new(
            6,
            Ipv4Addr::from(0x0a00_0000 + i),
            (i % 60000) as u16,
            Ipv4Addr::new(10, 0, 0, 2),
            80,
        )
    }

    fn dnat(i: u8) -> FlowAction {
        FlowAction::Dnat {
            ip: Ipv4Addr::new(10, 0, 1, i),
            port: 80,
            snat: None,
        }
    }

    #[test]
    fn keys_are_directional() {
        let a = Ipv4Addr::new(1, 2, 3, 4);
        let b = Ipv4Addr::new(5, 6, 7, 8);
        assert_ne!(FlowKey::new(6, a, 1, b, 2), FlowKey::new(6, b, 2, a, 1));
        assert_ne!(FlowKey::new(6, a, 1, b, 2), FlowKey::new(17, a, 1, b, 2));
    }

    #[test]
    fn insert_lookup_replace_remove() {
        let mut t = FlowTable::new(64, 10);
        assert_eq!(t.lookup(&key(1), 0), None);
        t.insert(key(1), dnat(1), 0);
        assert_eq!(t.lookup(&key(1), 5), Some(dnat(1)));
        t.insert(key(1), dnat(2), 5);
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(&key(1), 6), Some(dnat(2)));
        t.remove(&key(1));
        assert!(t.is_empty());
        assert_eq!(t.lookup(&key(1), 6), None);
    }

    #[test]
    fn idle_entries_expire_and_lookups_keep_them_alive() {
        let mut t = FlowTable::new(64, 10);
        t.insert(key(1), dnat(1), 100);
        t.insert(key(2), dnat(2), 100);
        // key 1 is used every 6 s, key 2 never.
        for now in [106, 112, 118] {
            assert_eq!(t.lookup(&key(1), now), Some(dnat(1)));
        }
        assert_eq!(t.lookup(&key(2), 118), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_seen_and_never_grows() {
        let mut t = FlowTable::new(16, 1000);
        for i in 0..10_000u32 {
            t.insert(key(i), dnat((i % 250) as u8), i);
            assert!(t.len() <= t.capacity());
            // The newest entry is always found.
            assert_eq!(t.lookup(&key(i), i), Some(dnat((i % 250) as u8)));
        }
        assert_eq!(t.capacity(), 16);
        assert_eq!(t.len(), 16);
    }
}
