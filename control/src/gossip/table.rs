//! The gossiped tables (libnetwork's networkdb, `daemon/libnetwork/networkdb/networkdb.go`
//! and `delegate.go`): per network, an `overlay_peer_table` (each endpoint's address, MAC
//! and its node's VTEP) and the service-discovery `endpoint_table` (its name, service,
//! VIP and address). Pure state: the gossip task ([`super`]) carries the events and the
//! full syncs ([`super::sync`]); the node programs its data plane from [`Db::view`].
//!
//! As in networkdb:
//! * only an entry's owner creates, updates and deletes it; every change carries a Lamport
//!   time (`tableClock`: incremented by each local change, witnessing every received one);
//! * a delete leaves a tombstone that is reaped 30 minutes later (`reapEntryInterval`) and
//!   travels with its residual reap time;
//! * a node gossip declares down has its entries left out of everyone's view at once
//!   (`deleteNodeTableEntries`) and reaped if it stays away 30 minutes; so are the
//!   entries of a node gossip has not seen up at all (a full sync from a node that still
//!   holds a dead node's rows cannot bring them back into anyone's view).
//!
//! Where networkdb has known failures, this differs:
//! * An entry is keyed by its owner as well as its key, and versioned by the owner's
//!   incarnation (the start of its daemon) before its Lamport time. networkdb compares
//!   Lamport times of one key across owners and lifetimes (`handleTableEvent` ignores an
//!   event unless its `LTime` is above the entry's), so a restarted node whose clock is behind, or a
//!   node that missed one broadcast, can reject an owner's entries for good; here a later
//!   change of the owner always wins and a full sync always repairs a missed one.
//! * A node's new incarnation replaces everything of its previous one at once: the
//!   endpoints of a node that left and rejoined, or restarted, are never served stale
//!   (moby#47728), whichever node relays the old ones.
//! * Every node keeps every network's entries (a few dozen bytes each), not only those of
//!   the networks it has, so a network a node creates lazily has its peers at once and no
//!   node depends on a per-network join sync (names that stop resolving on one node,
//!   moby#33721).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A tombstone's life, and a down node's entries' (networkdb's `reapEntryInterval`).
pub const REAP_MS: u64 = 30 * 60 * 1000;
/// The most entries of other nodes one node keeps (tombstones included): beyond it, new
/// keys are counted drops. A node's own entries are not counted (they are bounded by its
/// tasks). With events of at most [`MAX_EVENT_FIELD`]-byte fields, a full sync of them
/// all fits in one frame ([`super::sync::MAX_STATE`]).
pub const MAX_ENTRIES: usize = 60_000;
/// The longest text field an event may carry (IDs, names); longer is refused.
pub const MAX_EVENT_FIELD: usize = 128;
/// How far ahead of this node's clock an event's Lamport time may be: further is refused,
/// so one bad peer cannot push every clock to its end.
pub const MAX_CLOCK_LEAP: u64 = 1 << 32;

/// Which table (networkdb's table names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Table {
    /// `overlay_peer_table`: where an endpoint is.
    OverlayPeer,
    /// `endpoint_table`: what the embedded DNS and the VIPs need of it.
    Endpoint,
}

impl Table {
    /// Docker's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Table::OverlayPeer => "overlay_peer_table",
            Table::Endpoint => "endpoint_table",
        }
    }
}

/// An entry's content.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Value {
    /// An `overlay_peer_table` row (libnetwork overlay `PeerRecord`).
    Peer {
        /// The endpoint's address.
        ip: Ipv4Addr,
        /// Its MAC.
        mac: [u8; 6],
        /// Its node's data-path address.
        vtep: Ipv4Addr,
    },
    /// An `endpoint_table` row (libnetwork `EndpointRecord`).
    Endpoint {
        /// The task's or container's name.
        name: String,
        /// Its service, if it is a service's task.
        service: Option<String>,
        /// The service's VIP on this network (`None`: dnsrr, or no service).
        vip: Option<Ipv4Addr>,
        /// The endpoint's address.
        ip: Ipv4Addr,
        /// Another name it answers to (a service task's ID).
        alias: Option<String>,
    },
}

/// An entry's identity: one owner's key in one table of one network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    /// The table.
    pub table: Table,
    /// The network's ID.
    pub network: String,
    /// The node that owns it.
    pub owner: String,
    /// Its key in the table (the endpoint's ID).
    pub key: String,
}

/// What an entry's owner publishes: (table, network ID, key) → value.
pub type Own = BTreeMap<(Table, String, String), Value>;

/// One change, as broadcast and as carried by a full sync (networkdb's `TableEvent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Which entry.
    pub key: Key,
    /// The owner's incarnation.
    pub incarnation: u64,
    /// The owner's Lamport time of the change.
    pub ltime: u64,
    /// The content; `None`: deleted.
    pub value: Option<Value>,
    /// For a deletion: seconds left before the tombstone is reaped.
    pub reap_in_s: u32,
}

impl Event {
    /// The version the event carries.
    pub fn version(&self) -> (u64, u64) {
        (self.incarnation, self.ltime)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    incarnation: u64,
    ltime: u64,
    value: Option<Value>,
    /// When a tombstone is reaped (ms, the caller's monotonic clock).
    reap_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    incarnation: u64,
    /// Since when it is down (ms): since gossip said so, or since its rows arrived before
    /// gossip said it is up. Its rows are left out of the view while it is.
    down_since: Option<u64>,
    /// Its VTEP as gossip announced it: the only one its peer rows may name.
    vtep: Option<Ipv4Addr>,
}

/// An entry as the data plane uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its content.
    pub value: Value,
    /// (owner incarnation, Lamport time): a later one wins where two rows conflict.
    pub version: (u64, u64),
}

/// The entries of the other nodes that are up, keyed by [`Key`].
pub type View = BTreeMap<Key, Seen>;

/// One node's tables.
#[derive(Debug, Clone)]
pub struct Db {
    me: String,
    incarnation: u64,
    clock: u64,
    entries: BTreeMap<Key, Entry>,
    owners: BTreeMap<String, Owner>,
    /// Keys refused because the table was full.
    pub dropped: u64,
    /// Raised by every change of what [`Db::view`] may return.
    generation: u64,
    /// How many of the entries are this node's own.
    own: usize,
}

impl Db {
    /// The tables of node `me` in its incarnation `incarnation`.
    pub fn new(me: &str, incarnation: u64) -> Db {
        Db {
            me: me.to_owned(),
            incarnation,
            clock: 0,
            entries: BTreeMap::new(),
            owners: BTreeMap::new(),
            dropped: 0,
            generation: 0,
            own: 0,
        }
    }

    /// This node's ID.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The Lamport clock.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Raised by every change (compare it to know whether the view changed).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many entries are kept (tombstones included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn tick(&mut self) -> u64 {
        self.clock = self.clock.saturating_add(1);
        self.clock
    }

    fn event(&self, key: &Key, e: &Entry, now: u64) -> Event {
        Event {
            key: key.clone(),
            incarnation: e.incarnation,
            ltime: e.ltime,
            value: e.value.clone(),
            // Rounded up, and at least 1: 0 would read as a whole reap interval.
            reap_in_s: if e.value.is_none() {
                e.reap_at
                    .saturating_sub(now)
                    .div_ceil(1000)
                    .clamp(1, u32::MAX as u64) as u32
            } else {
                0
            },
        }
    }

    /// Makes this node's entries `own`: what is new or changed is put, what is gone is
    /// deleted (a tombstone). Returns the events to broadcast.
    pub fn publish(&mut self, own: &Own, now: u64) -> Vec<Event> {
        let mut out = Vec::new();
        let mine: Vec<Key> = self
            .entries
            .iter()
            .filter(|(k, e)| k.owner == self.me && e.value.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for k in mine {
            if !own.contains_key(&(k.table, k.network.clone(), k.key.clone())) {
                let ltime = self.tick();
                let e = Entry {
                    incarnation: self.incarnation,
                    ltime,
                    value: None,
                    reap_at: now + REAP_MS,
                };
                out.push(self.event(&k, &e, now));
                self.entries.insert(k, e);
            }
        }
        for ((table, network, key), v) in own {
            let k = Key {
                table: *table,
                network: network.clone(),
                owner: self.me.clone(),
                key: key.clone(),
            };
            if self
                .entries
                .get(&k)
                .is_some_and(|e| e.incarnation == self.incarnation && e.value.as_ref() == Some(v))
            {
                continue;
            }
            let ltime = self.tick();
            let e = Entry {
                incarnation: self.incarnation,
                ltime,
                value: Some(v.clone()),
                reap_at: 0,
            };
            out.push(self.event(&k, &e, now));
            if self.entries.insert(k, e).is_none() {
                self.own += 1;
            }
        }
        if !out.is_empty() {
            self.generation += 1;
        }
        out
    }

    /// Whether an event's fields are within bounds.
    fn well_formed(&self, ev: &Event) -> bool {
        let short = |s: &str| s.len() <= MAX_EVENT_FIELD;
        let k = &ev.key;
        let fields = short(&k.network) && short(&k.owner) && short(&k.key);
        let value = match &ev.value {
            Some(Value::Endpoint {
                name,
                service,
                alias,
                ..
            }) => {
                short(name)
                    && service.as_deref().is_none_or(short)
                    && alias.as_deref().is_none_or(short)
            }
            _ => true,
        };
        fields && value && ev.ltime <= self.clock.saturating_add(MAX_CLOCK_LEAP)
    }

    /// Takes a change heard from another node; true if it was news (to pass on).
    pub fn apply(&mut self, ev: &Event, now: u64) -> bool {
        // Only this node speaks for its own entries; nobody for nobody's.
        if ev.key.owner == self.me || ev.key.owner.is_empty() || !self.well_formed(ev) {
            return false;
        }
        let owner = self.owners.get(&ev.key.owner).copied();
        if owner.is_some_and(|o| ev.incarnation < o.incarnation) {
            return false;
        }
        let known = self.entries.get(&ev.key);
        if let Some(cur) = known {
            if (cur.incarnation, cur.ltime) >= ev.version() {
                return false;
            }
        } else {
            if self.entries.len() - self.own >= MAX_ENTRIES {
                self.dropped += 1;
                return false;
            }
        }
        match owner {
            Some(o) if ev.incarnation > o.incarnation => {
                self.new_life(&ev.key.owner, ev.incarnation, Some(now))
            }
            Some(_) => {}
            // Rows of a node gossip has not said is up (it may be down, or gone for
            // good): kept, out of the view until it is, reaped if it never is.
            None => {
                self.owners.insert(
                    ev.key.owner.clone(),
                    Owner {
                        incarnation: ev.incarnation,
                        down_since: Some(now),
                        vtep: None,
                    },
                );
            }
        }
        self.clock = self.clock.max(ev.ltime);
        let reap_in = if ev.reap_in_s == 0 {
            REAP_MS
        } else {
            (ev.reap_in_s as u64 * 1000).min(REAP_MS)
        };
        self.entries.insert(
            ev.key.clone(),
            Entry {
                incarnation: ev.incarnation,
                ltime: ev.ltime,
                value: ev.value.clone(),
                reap_at: if ev.value.is_none() { now + reap_in } else { 0 },
            },
        );
        self.generation += 1;
        true
    }

    /// A node's new incarnation: everything of its previous one goes. `down_since`: as
    /// for a node not yet seen up (`None`: gossip says it is up).
    fn new_life(&mut self, node: &str, incarnation: u64, down_since: Option<u64>) {
        self.entries
            .retain(|k, e| k.owner != node || e.incarnation >= incarnation);
        self.generation += 1;
        let vtep = self.owners.get(node).and_then(|o| o.vtep);
        self.owners.insert(
            node.to_owned(),
            Owner {
                incarnation,
                down_since,
                vtep,
            },
        );
    }

    /// Gossip says `node` (in incarnation `incarnation`, its VTEP `vtep`) is up.
    pub fn member_up(&mut self, node: &str, incarnation: u64, vtep: Ipv4Addr) {
        if node == self.me || node.is_empty() {
            return;
        }
        match self.owners.get_mut(node) {
            Some(o) if incarnation < o.incarnation => {}
            Some(o) if incarnation == o.incarnation => {
                if o.down_since.take().is_some() || o.vtep != Some(vtep) {
                    self.generation += 1;
                }
                o.vtep = Some(vtep);
            }
            _ => {
                self.new_life(node, incarnation, None);
                if let Some(o) = self.owners.get_mut(node) {
                    o.vtep = Some(vtep);
                }
            }
        }
    }

    /// Gossip says `node` (in incarnation `incarnation`) is down: its entries leave the
    /// view now and are reaped after [`REAP_MS`] unless it comes back.
    pub fn member_down(&mut self, node: &str, incarnation: u64, now: u64) {
        if node == self.me || node.is_empty() {
            return;
        }
        let o = self.owners.entry(node.to_owned()).or_insert(Owner {
            incarnation,
            down_since: None,
            vtep: None,
        });
        if incarnation >= o.incarnation && o.down_since.is_none() {
            o.down_since = Some(now);
            self.generation += 1;
        }
    }

    /// Whether gossip says `node` is down.
    pub fn is_down(&self, node: &str) -> bool {
        self.owners
            .get(node)
            .is_some_and(|o| o.down_since.is_some())
    }

    /// Reaps tombstones whose time has come and the entries of nodes down for
    /// [`REAP_MS`] (networkdb's `reapState`); true if anything went.
    pub fn reap(&mut self, now: u64) -> bool {
        let gone: BTreeSet<String> = self
            .owners
            .iter()
            .filter(|(_, o)| o.down_since.is_some_and(|t| now >= t + REAP_MS))
            .map(|(n, _)| n.clone())
            .collect();
        let before = self.entries.len();
        let me = self.me.clone();
        let mut own_gone = 0;
        self.entries.retain(|k, e| {
            let keep = !gone.contains(&k.owner) && (e.value.is_some() || e.reap_at > now);
            if !keep && k.owner == me {
                own_gone += 1;
            }
            keep
        });
        self.own -= own_gone;
        for n in &gone {
            self.owners.remove(n);
        }
        let reaped = before != self.entries.len();
        if reaped {
            self.generation += 1;
        }
        reaped
    }

    /// Every entry this node knows (tombstones included) as events: a full sync's content
    /// (networkdb's `bulkSyncNode`).
    pub fn export(&self, now: u64) -> Vec<Event> {
        self.entries
            .iter()
            .map(|(k, e)| self.event(k, e, now))
            .collect()
    }

    /// This node's own entries (every one, tombstones included) as events.
    pub fn export_own(&self, now: u64) -> Vec<Event> {
        self.entries
            .iter()
            .filter(|(k, _)| k.owner == self.me)
            .map(|(k, e)| self.event(k, e, now))
            .collect()
    }

    /// The live entries of the other nodes gossip says are up; a peer row only if it names
    /// its owner's own VTEP.
    pub fn view(&self) -> View {
        self.entries
            .iter()
            .filter(|(k, e)| {
                let Some(o) = self.owners.get(&k.owner) else {
                    return false;
                };
                let vtep_ok = match &e.value {
                    Some(Value::Peer { vtep, .. }) => o.vtep == Some(*vtep),
                    _ => true,
                };
                k.owner != self.me && o.down_since.is_none() && vtep_ok
            })
            .filter_map(|(k, e)| {
                Some((
                    k.clone(),
                    Seen {
                        value: e.value.clone()?,
                        version: (e.incarnation, e.ltime),
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(ip: u8) -> Value {
        Value::Peer {
            ip: Ipv4Addr::new(10, 0, 0, ip),
            mac: [2, 66, 10, 0, 0, ip],
            vtep: Ipv4Addr::new(192, 168, 0, 1),
        }
    }

    fn own(items: &[(&str, u8)]) -> Own {
        items
            .iter()
            .map(|(k, ip)| {
                (
                    (Table::OverlayPeer, "net".to_owned(), k.to_string()),
                    peer(*ip),
                )
            })
            .collect()
    }

    const VTEP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

    fn keys(v: &View) -> Vec<(String, String)> {
        v.keys().map(|k| (k.owner.clone(), k.key.clone())).collect()
    }

    #[test]
    fn puts_and_deletes_reach_another_node() {
        let (mut a, mut b) = (Db::new("a", 1), Db::new("b", 1));
        b.member_up("a", 1, VTEP);
        for e in a.publish(&own(&[("t1", 2), ("t2", 3)]), 0) {
            assert!(b.apply(&e, 0));
        }
        assert_eq!(
            keys(&b.view()),
            [("a".into(), "t1".into()), ("a".into(), "t2".into())]
        );
        // The same state again is not news.
        assert!(a.publish(&own(&[("t1", 2), ("t2", 3)]), 0).is_empty());
        let evs = a.publish(&own(&[("t2", 3)]), 10);
        assert_eq!(evs.len(), 1);
        assert!(evs[0].value.is_none());
        assert!(b.apply(&evs[0], 10));
        assert_eq!(keys(&b.view()), [("a".into(), "t2".into())]);
        // The tombstone is kept, and an older put of the deleted key is refused.
        assert_eq!(b.len(), 2);
        let mut stale = evs[0].clone();
        stale.ltime -= 1;
        stale.value = Some(peer(2));
        assert!(!b.apply(&stale, 10));
        assert_eq!(keys(&b.view()), [("a".into(), "t2".into())]);
        // Reaped in time.
        assert!(!b.reap(10 + REAP_MS - 1));
        assert!(b.reap(10 + REAP_MS + 1));
        assert_eq!(b.len(), 1);
        assert!(b.clock() >= a.clock());
    }

    #[test]
    fn older_versions_and_foreign_claims_are_refused() {
        let (mut a, mut b) = (Db::new("a", 1), Db::new("b", 1));
        b.member_up("a", 1, VTEP);
        let first = a.publish(&own(&[("t1", 2)]), 0);
        let second = a.publish(&own(&[("t1", 4)]), 0);
        assert!(b.apply(&second[0], 0));
        assert!(!b.apply(&first[0], 0), "an older change of the same entry");
        assert_eq!(b.view().values().next().unwrap().value, peer(4));
        // Nobody else speaks for b's entries, nor for nobody's.
        let mut forged = second[0].clone();
        forged.key.owner = "b".into();
        assert!(!b.apply(&forged, 0));
        forged.key.owner.clear();
        assert!(!b.apply(&forged, 0));
    }

    #[test]
    fn a_missed_broadcast_never_makes_later_ones_rejected() {
        let (mut a, mut b) = (Db::new("a", 1), Db::new("b", 1));
        b.member_up("a", 1, VTEP);
        let _missed = a.publish(&own(&[("t1", 2)]), 0);
        for e in a.publish(&own(&[("t1", 2), ("t2", 3)]), 0) {
            b.apply(&e, 0);
        }
        // t1's put was missed: the next change of t1 is still taken...
        let evs = a.publish(&own(&[("t1", 5), ("t2", 3)]), 0);
        assert!(b.apply(&evs[0], 0));
        // ...and a full sync repairs whatever else was missed.
        let _missed = a.publish(&own(&[("t1", 5), ("t2", 3), ("t3", 6)]), 0);
        for e in a.export(0) {
            b.apply(&e, 0);
        }
        assert_eq!(keys(&b.view()).len(), 3);
    }

    #[test]
    fn a_node_down_is_withdrawn_and_back_when_up() {
        let (mut a, mut b) = (Db::new("a", 1), Db::new("b", 1));
        b.member_up("a", 1, VTEP);
        for e in a.publish(&own(&[("t1", 2)]), 0) {
            b.apply(&e, 0);
        }
        b.member_down("a", 1, 100);
        assert!(b.view().is_empty());
        b.member_up("a", 1, VTEP);
        assert_eq!(b.view().len(), 1);
        // Down for the whole reap interval: gone for good.
        b.member_down("a", 1, 200);
        assert!(b.reap(200 + REAP_MS));
        assert!(b.is_empty());
    }

    #[test]
    fn a_restarted_node_replaces_its_previous_life() {
        let (mut a, mut b, mut c) = (Db::new("a", 1), Db::new("b", 1), Db::new("c", 1));
        b.member_up("a", 1, VTEP);
        c.member_up("a", 1, VTEP);
        let old = a.publish(&own(&[("t1", 2), ("t2", 3)]), 0);
        for e in &old {
            b.apply(e, 0);
            c.apply(e, 0);
        }
        // a restarts (a new incarnation, a clock from zero) with one task only.
        let mut a2 = Db::new("a", 2);
        let new = a2.publish(&own(&[("t3", 4)]), 0);
        for e in &new {
            assert!(b.apply(e, 0));
        }
        // Out of the view until gossip says the new life is up.
        assert!(b.view().is_empty());
        b.member_up("a", 2, VTEP);
        assert_eq!(keys(&b.view()), [("a".into(), "t3".into())]);
        // c relays a's old entries to b: refused.
        for e in c.export(0) {
            assert!(!b.apply(&e, 0));
        }
        assert_eq!(keys(&b.view()), [("a".into(), "t3".into())]);
        // Gossip's word alone (no entry yet) also ends the previous life.
        c.member_up("a", 2, VTEP);
        assert!(c.view().is_empty());
        let _ = a;
    }

    #[test]
    fn the_table_is_bounded() {
        let mut b = Db::new("b", 1);
        let (mut a, mut c) = (Db::new("a", 1), Db::new("c", 1));
        let rows = |n: usize| -> Own {
            (0..n)
                .map(|i| {
                    (
                        (Table::OverlayPeer, "n".to_owned(), i.to_string()),
                        peer((i % 250) as u8),
                    )
                })
                .collect()
        };
        // What a node takes from others is bounded...
        for e in a.publish(&rows(MAX_ENTRIES), 0) {
            b.apply(&e, 0);
        }
        for e in c.publish(&rows(10), 0) {
            assert!(!b.apply(&e, 0));
        }
        assert_eq!((b.len(), b.dropped), (MAX_ENTRIES, 10));
        // ...but never crowds out its own rows.
        assert_eq!(b.publish(&rows(5), 0).len(), 5);
        assert_eq!(b.len(), MAX_ENTRIES + 5);
    }

    #[test]
    fn rows_of_a_node_never_seen_up_stay_out_of_the_view_and_are_reaped() {
        let (mut a, mut b) = (Db::new("a", 1), Db::new("b", 1));
        // A full sync brings the rows of a node that died before b started.
        for e in a.publish(&own(&[("t1", 2)]), 0) {
            assert!(b.apply(&e, 50));
        }
        assert!(b.view().is_empty());
        assert!(b.reap(50 + REAP_MS));
        assert!(b.is_empty());
    }

    #[test]
    fn a_peer_row_naming_another_vtep_and_absurd_events_are_refused() {
        let mut b = Db::new("b", 1);
        b.member_up("a", 1, Ipv4Addr::new(192, 168, 0, 9));
        let mut a = Db::new("a", 1);
        for e in a.publish(&own(&[("t1", 2)]), 0) {
            assert!(b.apply(&e, 0));
        }
        // The row names 192.168.0.1, gossip says a is 192.168.0.9: not used.
        assert!(b.view().is_empty());
        // A Lamport time far ahead, or an oversized field, is refused (no clock jump).
        let mut e = a.publish(&own(&[("t2", 3)]), 0).remove(0);
        e.ltime = u64::MAX;
        assert!(!b.apply(&e, 0));
        assert!(b.clock() < 1 << 33);
        e.ltime = 5;
        e.key.key = "x".repeat(MAX_EVENT_FIELD + 1);
        assert!(!b.apply(&e, 0));
    }

    proptest! {
        /// Whatever order, duplication or loss the broadcasts suffer, two nodes that then
        /// exchange full syncs hold the owner's last state.
        #[test]
        fn any_delivery_converges_after_a_full_sync(
            states in proptest::collection::vec(proptest::collection::btree_set(0u8..6, 0..6), 1..8),
            order in proptest::collection::vec(any::<u16>(), 0..40),
        ) {
            let mut a = Db::new("a", 7);
            let mut events = Vec::new();
            let mut last = Own::new();
            for s in &states {
                last = s.iter().map(|i| ((Table::OverlayPeer, "n".to_owned(), i.to_string()), peer(*i))).collect();
                events.extend(a.publish(&last, 0));
            }
            let (mut b, mut c) = (Db::new("b", 1), Db::new("c", 1));
            b.member_up("a", 7, VTEP);
            c.member_up("a", 7, VTEP);
            for (i, o) in order.iter().enumerate() {
                if let Some(e) = events.get(*o as usize % (events.len().max(1))) {
                    if i % 2 == 0 { b.apply(e, 0); } else { c.apply(e, 0); }
                }
            }
            // b and c sync with each other, then one of them with the owner.
            for e in c.export(0) { b.apply(&e, 0); }
            for e in b.export(0) { c.apply(&e, 0); }
            for e in a.export_own(0) { b.apply(&e, 0); }
            for e in b.export(0) { c.apply(&e, 0); }
            let want: Vec<String> = last.keys().map(|k| k.2.clone()).collect();
            for db in [&b, &c] {
                let got: Vec<String> = db.view().keys().map(|k| k.key.clone()).collect();
                prop_assert_eq!(&got, &want);
            }
        }
    }
}
