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
//! slots. Time is whole seconds supplied by the caller.
//!
//! # Under attack
//! Published ports face the Internet, so the table is built to be flooded:
//! * the slot hash is SipHash-1-3 under a per-table random key (as Rust's `HashMap` defends
//!   against HashDoS): nobody can compute offline which 5-tuples share a window with a
//!   given connection;
//! * the pipeline creates entries for TCP only on a SYN (other TCP without an entry is
//!   still routed by Maglev's consistent choice, without state — what IPVS does with
//!   `sloppy_tcp` off), for UDP on any packet;
//! * entries age by state ([`FlowState`]): a new entry is *embryonic* (10 s for TCP, 30 s
//!   for UDP) until a second packet in its direction proves the flow — for TCP one without
//!   SYN, which a backend answering spoofed SYNs with SYN-ACKs never sends — then
//!   *established* (the configured idle timeout); a FIN or RST makes it *closing* (10 s; an
//!   RST closes the other direction's entry too, a FIN only its own: a half-closed
//!   connection may wait longer for its answer),
//!   and a SYN on a closing entry is a new connection reusing the 5-tuple, tracked afresh;
//! * a full window evicts an embryonic or closing entry before an established one, the
//!   least recently seen of its class, and every eviction of a live entry is counted
//!   ([`FlowTable::evictions`]).
//!
//! A random-source SYN flood therefore churns only embryonic entries, and an established
//! connection is evicted only when its whole window holds established connections that
//! were seen more recently.

use core::net::Ipv4Addr;

use siphasher::sip::SipHasher13;

use crate::wire::EthernetAddress;

/// Slots probed for a key.
pub const WAYS: usize = 8;

/// Default number of slots per worker (two per connection).
pub const DEFAULT_CAPACITY: usize = 1 << 17;

/// Default idle timeout of established entries, seconds (IPVS's TCP default is 900 s
/// established; 300 s keeps the table small and is longer than any keep-alive interval a
/// client would use).
pub const DEFAULT_IDLE_SECS: u32 = 300;

/// Idle timeout of an embryonic TCP entry (a SYN and nothing since), seconds.
pub const EMBRYONIC_TCP_SECS: u32 = 10;
/// Idle timeout of an embryonic UDP entry (one packet one way), seconds.
pub const EMBRYONIC_UDP_SECS: u32 = 30;
/// Idle timeout after a FIN or RST, seconds.
pub const CLOSING_SECS: u32 = 10;

/// A tracked entry's state; it decides how long the entry lives idle and whether it is
/// evicted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    /// Created, not yet confirmed by a second packet in its direction.
    Embryonic,
    /// Confirmed.
    Established,
    /// A FIN or RST went through.
    Closing,
}

/// What a packet says about its connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// UDP (and anything without TCP flags).
    Datagram,
    /// A TCP segment with SYN set and ACK clear: a connection's opening.
    Syn,
    /// A TCP segment with SYN and ACK set: the answer to an opening.
    SynAck,
    /// A TCP segment with FIN set (and not RST): one direction is done.
    Fin,
    /// A TCP segment with RST set: the connection is gone, both ways.
    Rst,
    /// Any other TCP segment.
    Other,
}

impl Segment {
    /// The class of a TCP segment with flags `flags` (the TCP header's byte 13).
    #[inline]
    pub fn tcp(flags: u8) -> Segment {
        const FIN: u8 = 0x01;
        const SYN: u8 = 0x02;
        const RST: u8 = 0x04;
        const ACK: u8 = 0x10;
        if flags & RST != 0 {
            Segment::Rst
        } else if flags & FIN != 0 {
            Segment::Fin
        } else if flags & (SYN | ACK) == SYN | ACK {
            Segment::SynAck
        } else if flags & SYN != 0 {
            Segment::Syn
        } else {
            Segment::Other
        }
    }
}

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

    /// The protocol number.
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.0 as u8
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
    /// Reply direction of a routing-mesh connection another node sent to a local backend:
    /// back over the overlay to that node (the one the client connected to), untranslated.
    Return {
        /// That node's VTEP.
        vtep: Ipv4Addr,
    },
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: FlowKey,
    action: FlowAction,
    seen: u32,
    state: FlowState,
}

/// One worker's flow table.
pub struct FlowTable {
    slots: Box<[Option<Slot>]>,
    mask: usize,
    idle: u32,
    len: usize,
    hasher: SipHasher13,
    evictions: u64,
}

impl core::fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Not the hash key.
        f.debug_struct("FlowTable")
            .field("capacity", &self.slots.len())
            .field("len", &self.len)
            .field("idle", &self.idle)
            .field("evictions", &self.evictions)
            .finish_non_exhaustive()
    }
}

impl FlowTable {
    /// A table of at least `capacity` slots (rounded up to a power of two, at least
    /// [`WAYS`]) whose established entries expire after `idle_secs`, hashed under a fresh
    /// random key.
    pub fn new(capacity: usize, idle_secs: u32) -> FlowTable {
        // std's RandomState draws its SipHash keys from the OS once per thread (then
        // varies them per instance); two of its outputs make this table's key.
        let rs = std::collections::hash_map::RandomState::new();
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(
            &std::hash::BuildHasher::hash_one(&rs, 0x5157_4152_4d47_5445u64).to_le_bytes(),
        );
        k[8..].copy_from_slice(
            &std::hash::BuildHasher::hash_one(&rs, 0x464c_4f57_5441_424cu64).to_le_bytes(),
        );
        FlowTable::with_key(capacity, idle_secs, k)
    }

    /// As [`FlowTable::new`] with the hash key given (tests, fuzzing).
    pub fn with_key(capacity: usize, idle_secs: u32, key: [u8; 16]) -> FlowTable {
        let n = capacity.max(WAYS).next_power_of_two();
        FlowTable {
            slots: vec![None; n].into_boxed_slice(),
            mask: n - 1,
            idle: idle_secs,
            len: 0,
            hasher: SipHasher13::new_with_key(&key),
            evictions: 0,
        }
    }

    #[inline]
    fn index(&self, key: &FlowKey) -> usize {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&key.0.to_le_bytes());
        b[8..].copy_from_slice(&key.1.to_le_bytes());
        self.hasher.hash(&b) as usize
    }

    #[inline]
    fn timeout(&self, s: &Slot) -> u32 {
        match s.state {
            FlowState::Established => self.idle,
            FlowState::Closing => CLOSING_SECS.min(self.idle),
            FlowState::Embryonic if s.key.protocol() == 6 => EMBRYONIC_TCP_SECS.min(self.idle),
            FlowState::Embryonic => EMBRYONIC_UDP_SECS.min(self.idle),
        }
    }

    #[inline]
    fn live(&self, s: &Slot, now: u32) -> bool {
        now.wrapping_sub(s.seen) <= self.timeout(s)
    }

    /// The action for `key` seen on a packet of class `seg`, refreshing its timestamp and
    /// moving its state on; `None` if untracked or expired.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, seg: Segment, now: u32) -> Option<FlowAction> {
        let base = self.index(key);
        for i in 0..WAYS {
            let at = (base + i) & self.mask;
            if let Some(s) = self.slots[at] {
                if s.key == *key {
                    if !self.live(&s, now) {
                        self.slots[at] = None;
                        self.len -= 1;
                        return None;
                    }
                    let state = match (s.state, seg) {
                        // A SYN (not a SYN-ACK) on a connection that has closed is a new
                        // connection that reuses the 5-tuple (a client's port comes round
                        // again within the closing timeout): the old entry is forgotten
                        // and the caller tracks the new one afresh. Kept, it would leave
                        // the new connection closing, expiring after 10 s idle. The
                        // kernel's conntrack does the same (`nf_conntrack_proto_tcp.c`
                        // `nf_conntrack_tcp_packet`: a SYN in the original direction in
                        // CLOSE or TIME_WAIT kills the old entry, "Reopened connection"),
                        // as IPVS does (`ip_vs_core.c` `ip_vs_in_hook`,
                        // `conn_reuse_mode`). The pipeline closes both directions' entries
                        // on an RST in either ([`FlowTable::close`]); after FINs, each
                        // direction closes with its own.
                        (FlowState::Closing, Segment::Syn) => {
                            self.slots[at] = None;
                            self.len -= 1;
                            return None;
                        }
                        (_, Segment::Fin | Segment::Rst) => FlowState::Closing,
                        (FlowState::Embryonic, Segment::Other | Segment::Datagram) => {
                            FlowState::Established
                        }
                        (st, _) => st,
                    };
                    self.slots[at] = Some(Slot {
                        seen: now,
                        state,
                        ..s
                    });
                    return Some(s.action);
                }
            }
        }
        None
    }

    /// Marks `key`'s entry closing, if tracked and live: the other direction of a
    /// connection an RST has just ended.
    pub fn close(&mut self, key: &FlowKey, now: u32) {
        let base = self.index(key);
        for i in 0..WAYS {
            let at = (base + i) & self.mask;
            if let Some(s) = self.slots[at].filter(|s| s.key == *key) {
                if self.live(&s, now) {
                    self.slots[at] = Some(Slot {
                        state: FlowState::Closing,
                        seen: now,
                        ..s
                    });
                }
                return;
            }
        }
    }

    /// The state of `key`'s entry, if tracked (expired entries included until reused).
    pub fn state(&self, key: &FlowKey) -> Option<FlowState> {
        let base = self.index(key);
        (0..WAYS)
            .filter_map(|i| self.slots[(base + i) & self.mask])
            .find(|s| s.key == *key)
            .map(|s| s.state)
    }

    /// Tracks `key` with `action` as a new (embryonic) entry, replacing an entry for the
    /// same key, else taking a free or expired slot, else evicting — an embryonic or
    /// closing entry first, the least recently seen of its class. Returns whether a live
    /// entry was evicted (also counted in [`FlowTable::evictions`]).
    pub fn insert(&mut self, key: FlowKey, action: FlowAction, now: u32) -> bool {
        let base = self.index(&key);
        // (rank, age): embryonic/closing before established, then the oldest.
        let mut victim: Option<(usize, (bool, u32))> = None;
        let mut free = None;
        for i in 0..WAYS {
            let at = (base + i) & self.mask;
            match self.slots[at] {
                Some(s) if s.key == key => {
                    free = Some(at);
                    break;
                }
                Some(s) if self.live(&s, now) => {
                    let rank = (s.state != FlowState::Established, now.wrapping_sub(s.seen));
                    if victim.is_none_or(|(_, r)| rank > r) {
                        victim = Some((at, rank));
                    }
                }
                Some(_) | None => {
                    if free.is_none() {
                        free = Some(at);
                    }
                }
            }
        }
        // A window holds either a free/expired slot or live entries to choose from.
        let (at, evicted) = match (free, victim) {
            (Some(at), _) => (at, false),
            (None, Some((at, _))) => (at, true),
            (None, None) => (base & self.mask, false),
        };
        if self.slots[at].is_none() {
            self.len += 1;
        }
        self.slots[at] = Some(Slot {
            key,
            action,
            seen: now,
            state: FlowState::Embryonic,
        });
        self.evictions += evicted as u64;
        evicted
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &FlowKey) {
        let base = self.index(key);
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

    /// Live entries evicted to make room, since the table was made.
    pub fn evictions(&self) -> u64 {
        self.evictions
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

    fn table(capacity: usize, idle: u32) -> FlowTable {
        FlowTable::with_key(capacity, idle, [7; 16])
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
        let mut t = table(64, 100);
        assert_eq!(t.lookup(&key(1), Segment::Other, 0), None);
        assert!(!t.insert(key(1), dnat(1), 0));
        assert_eq!(t.lookup(&key(1), Segment::Other, 5), Some(dnat(1)));
        t.insert(key(1), dnat(2), 5);
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(&key(1), Segment::Other, 6), Some(dnat(2)));
        t.remove(&key(1));
        assert!(t.is_empty());
        assert_eq!(t.lookup(&key(1), Segment::Other, 6), None);
    }

    #[test]
    fn entries_age_by_state() {
        let mut t = table(64, 300);
        // A SYN and nothing else: gone after 10 s.
        t.insert(key(1), dnat(1), 100);
        assert_eq!(t.state(&key(1)), Some(FlowState::Embryonic));
        assert_eq!(
            t.lookup(&key(1), Segment::Syn, 105),
            Some(dnat(1)),
            "SYN retransmit"
        );
        assert_eq!(t.state(&key(1)), Some(FlowState::Embryonic));
        assert_eq!(
            t.lookup(&key(1), Segment::Other, 105 + EMBRYONIC_TCP_SECS + 1),
            None
        );
        // Confirmed by a non-SYN segment: lives for the idle timeout.
        t.insert(key(2), dnat(2), 100);
        t.lookup(&key(2), Segment::Other, 101);
        assert_eq!(t.state(&key(2)), Some(FlowState::Established));
        assert_eq!(t.lookup(&key(2), Segment::Other, 101 + 299), Some(dnat(2)));
        assert_eq!(t.lookup(&key(2), Segment::Other, 400 + 301), None);
        // FIN or RST: closing, 10 s.
        t.insert(key(3), dnat(3), 100);
        t.lookup(&key(3), Segment::Other, 101);
        t.lookup(&key(3), Segment::Fin, 102);
        assert_eq!(t.state(&key(3)), Some(FlowState::Closing));
        assert_eq!(
            t.lookup(&key(3), Segment::Other, 102 + CLOSING_SECS + 1),
            None
        );
        // A SYN on a closed connection's 5-tuple is a new connection: untracked, so the
        // caller tracks it afresh, and it then lives as any other.
        t.insert(key(4), dnat(4), 100);
        t.lookup(&key(4), Segment::Other, 101);
        t.lookup(&key(4), Segment::Fin, 102);
        assert_eq!(t.lookup(&key(4), Segment::Syn, 103), None, "port reused");
        assert_eq!(t.state(&key(4)), None);
        t.insert(key(4), dnat(5), 103);
        t.lookup(&key(4), Segment::Other, 103);
        assert_eq!(t.state(&key(4)), Some(FlowState::Established));
        assert_eq!(
            t.lookup(&key(4), Segment::Other, 103 + CLOSING_SECS + 30),
            Some(dnat(5))
        );
        // A SYN-ACK neither reopens a closing entry nor confirms an embryonic one.
        t.insert(key(6), dnat(6), 100);
        t.lookup(&key(6), Segment::Other, 100);
        t.lookup(&key(6), Segment::Fin, 100);
        assert_eq!(t.lookup(&key(6), Segment::SynAck, 101), Some(dnat(6)));
        assert_eq!(t.state(&key(6)), Some(FlowState::Closing));
        t.insert(key(7), dnat(7), 100);
        t.lookup(&key(7), Segment::SynAck, 100);
        assert_eq!(t.state(&key(7)), Some(FlowState::Embryonic));
        // `close`: the other direction of a closed connection.
        t.insert(key(8), dnat(8), 100);
        t.lookup(&key(8), Segment::Other, 100);
        t.close(&key(8), 101);
        assert_eq!(t.state(&key(8)), Some(FlowState::Closing));
        // UDP: embryonic for 30 s, established by a second datagram.
        let u = FlowKey::new(
            17,
            Ipv4Addr::new(1, 1, 1, 1),
            5000,
            Ipv4Addr::new(2, 2, 2, 2),
            53,
        );
        t.insert(u, dnat(4), 100);
        assert_eq!(t.lookup(&u, Segment::Datagram, 125), Some(dnat(4)));
        assert_eq!(t.state(&u), Some(FlowState::Established));
    }

    #[test]
    fn a_full_table_evicts_and_never_grows() {
        let mut t = table(16, 1000);
        for i in 0..10_000u32 {
            t.insert(key(i), dnat((i % 250) as u8), i / 1000);
            assert!(t.len() <= t.capacity());
            // The newest entry is always found.
            assert_eq!(
                t.lookup(&key(i), Segment::Syn, i / 1000),
                Some(dnat((i % 250) as u8))
            );
        }
        assert_eq!(t.capacity(), 16);
        assert_eq!(t.len(), 16);
        assert!(t.evictions() > 9_000, "{}", t.evictions());
    }

    /// A flood of new entries (random-source SYNs) never evicts established connections
    /// while embryonic entries are there to evict instead.
    #[test]
    fn a_syn_flood_evicts_embryonic_entries_not_established_ones() {
        let mut t = table(1024, 300);
        let established: Vec<FlowKey> = (0..256).map(|i| key(1_000_000 + i)).collect();
        for (i, k) in established.iter().enumerate() {
            t.insert(*k, dnat(i as u8), 0);
            t.lookup(k, Segment::Other, 0);
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for n in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = FlowKey::new(
                6,
                Ipv4Addr::from(x as u32),
                (x >> 32) as u16,
                Ipv4Addr::new(192, 168, 77, 2),
                8080,
            );
            t.insert(k, dnat(0), n / 20_000);
        }
        assert!(t.len() <= t.capacity());
        assert!(t.evictions() > 100_000);
        for (i, k) in established.iter().enumerate() {
            assert_eq!(
                t.lookup(k, Segment::Other, 10),
                Some(dnat(i as u8)),
                "connection {i}"
            );
        }
    }

    /// The slot depends on the table's secret key: colliding 5-tuples cannot be computed
    /// without it.
    #[test]
    fn slots_depend_on_the_secret_key() {
        let a = FlowTable::with_key(1 << 16, 300, [1; 16]);
        let b = FlowTable::with_key(1 << 16, 300, [2; 16]);
        let same = (0..1000u32)
            .filter(|i| a.index(&key(*i)) & a.mask == b.index(&key(*i)) & b.mask)
            .count();
        assert!(
            same < 5,
            "{same} of 1000 keys in the same slot under two keys"
        );
        let (c, d) = (FlowTable::new(64, 300), FlowTable::new(64, 300));
        assert_ne!(
            c.index(&key(1)),
            d.index(&key(1)),
            "fresh tables draw fresh keys"
        );
    }
}
