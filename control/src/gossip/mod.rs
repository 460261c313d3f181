//! Gossip on 7946: a SWIM membership of every node of the swarm (the `foca` crate) on
//! UDP, each datagram sealed with the swarm's gossip keyring ([`keyring`]), carrying the
//! networkdb-like tables of every network's endpoints ([`table`]) as broadcasts
//! piggybacked on the SWIM messages, with full syncs of the tables over TCP ([`sync`]).
//! Docker runs HashiCorp's memberlist there (libnetwork `networkdb/cluster.go`);
//! swarmgate picks foca (a SWIM core with no I/O of its own: this module gives it the
//! sockets, the timers and the sealing) over the `memberlist` port, whose transport,
//! encryption and push/pull come as one piece this daemon would have to fit around rather
//! than drive.
//!
//! What it gives the node: every other node's endpoints (the [`table::View`]), whether or
//! not the leader is reachable, without those of the nodes gossip says are down —
//! within a few seconds of their going (networkdb's `deleteNodeTableEntries`), back when
//! they are up again. The node programs its remote endpoints, VIP backends and DNS from
//! it ([`program`]).

pub mod keyring;
pub mod program;
pub mod sync;
pub mod table;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use foca::{
    AccumulatingRuntime, BroadcastHandler, Foca, Invalidates, OwnedNotification, PostcardCodec,
    Timer,
};
use rand::seq::IteratorRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch, Notify, Semaphore};

pub use keyring::Keyring;
pub use table::{Own, View};

/// Docker's gossip port.
pub const PORT: u16 = 7946;
/// How often a node announces itself to the nodes it should know and does not.
const ANNOUNCE: Duration = Duration::from_secs(2);
/// The largest datagram read.
const MAX_DATAGRAM: usize = 2048;
/// How often tombstones are reaped (networkdb's `reapPeriod`).
const REAP_PERIOD: Duration = Duration::from_secs(5);
/// Full syncs served at once; an accepted connection waits for its turn (up to
/// [`sync::TIMEOUT`]) once its header has arrived.
const MAX_SYNCS: usize = 4;
/// Connections accepted and not yet served; beyond, new ones are closed at once.
const MAX_PENDING: usize = 64;
/// How long an accepted connection has to send its frame's header.
const HEADER_WAIT: Duration = Duration::from_secs(1);

/// A node as gossip knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Its swarm node ID.
    pub node: String,
    /// Where it gossips.
    pub addr: SocketAddrV4,
    /// Its data-path address (VTEP).
    pub vtep: Ipv4Addr,
    /// Raised at every start (milliseconds since the epoch), so a restarted node is a new
    /// incarnation that wins over its old, possibly declared-down, self.
    pub bump: u64,
    /// The start of its daemon (milliseconds since the epoch): its tables' incarnation,
    /// which, unlike `bump`, a rejoin after a partition does not change.
    pub start: u64,
}

impl foca::Identity for Member {
    type Addr = SocketAddrV4;

    fn renew(&self) -> Option<Self> {
        Some(Member {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// What the node runtime hands the running gossip: the keyring and the nodes to find.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The swarm's keys.
    pub keyring: Keyring,
    /// Every other node's gossip address.
    pub peers: Vec<SocketAddrV4>,
}

/// The running gossip of this node.
pub struct Gossip {
    settings: watch::Sender<Settings>,
    view: watch::Receiver<Arc<View>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gossip {
    /// Joins the gossip as `me`, listening on its address (UDP and TCP), publishing the
    /// entries `own` holds.
    pub async fn start(
        me: Member,
        settings: Settings,
        own: watch::Receiver<Arc<Own>>,
    ) -> std::io::Result<Gossip> {
        let sock = UdpSocket::bind(SocketAddr::V4(me.addr)).await?;
        let listener = TcpListener::bind(SocketAddr::V4(me.addr)).await?;
        let (settings_tx, settings_rx) = watch::channel(settings);
        let (view_tx, view_rx) = watch::channel(Arc::new(View::new()));
        let task = tokio::spawn(run(me, sock, listener, settings_rx, own, view_tx));
        Ok(Gossip {
            settings: settings_tx,
            view: view_rx,
            task,
        })
    }

    /// New keys or peers.
    pub fn update(&self, s: Settings) {
        self.settings.send_if_modified(|cur| {
            let changed = *cur != s;
            *cur = s;
            changed
        });
    }

    /// The other nodes' entries, without those of nodes that are down; wakes on changes.
    pub fn view(&self) -> watch::Receiver<Arc<View>> {
        self.view.clone()
    }
}

impl Drop for Gossip {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Milliseconds on a monotonic clock (the tables' reap times).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A table event as foca disseminates it: a later version of the same entry replaces it
/// in the queue.
struct Tag {
    key: table::Key,
    version: (u64, u64),
}

impl Invalidates for Tag {
    fn invalidates(&self, other: &Self) -> bool {
        self.key == other.key && self.version >= other.version
    }
}

/// A broadcast that is not a table event.
#[derive(Debug)]
struct BadEvent;

impl std::fmt::Display for BadEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a table event that does not decode")
    }
}

impl std::error::Error for BadEvent {}

/// Takes the table events piggybacked on SWIM messages: news is applied and passed on.
struct Events {
    db: Arc<Mutex<table::Db>>,
}

impl BroadcastHandler<Member> for Events {
    type Key = Tag;
    type Error = BadEvent;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&Member>,
    ) -> Result<Option<Tag>, BadEvent> {
        let ev: table::Event = postcard::from_bytes(data).map_err(|_| BadEvent)?;
        let tag = Tag {
            key: ev.key.clone(),
            version: ev.version(),
        };
        // This node's own change, applied when it was published.
        if sender.is_none() {
            return Ok(Some(tag));
        }
        let news = lock(&self.db).apply(&ev, now_ms());
        Ok(news.then_some(tag))
    }
}

fn lock(db: &Mutex<table::Db>) -> std::sync::MutexGuard<'_, table::Db> {
    db.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pushes every entry this node knows to `peer` and applies what it sends back.
async fn pull(
    db: Arc<Mutex<table::Db>>,
    settings: watch::Receiver<Settings>,
    peer: SocketAddrV4,
    wake: Arc<Notify>,
) {
    let keys = settings.borrow().keyring.material();
    let Some(primary) = keys.first().copied() else {
        return;
    };
    let mine = {
        let d = lock(&db);
        sync::State {
            from: d.me().to_owned(),
            events: d.export(now_ms()),
        }
    };
    match sync::exchange(peer, &primary, &keys, &mine).await {
        Ok(theirs) => {
            let mut d = lock(&db);
            let now = now_ms();
            let news = theirs.events.iter().filter(|e| d.apply(e, now)).count();
            tracing::debug!(%peer, news, "gossip: full sync");
            drop(d);
            wake.notify_one();
        }
        Err(e) => tracing::debug!(%peer, "gossip: full sync: {e}"),
    }
}

/// Answers one full sync: applies the peer's state and sends this node's. A connection
/// that sends no header within [`HEADER_WAIT`] is closed before it takes a turn among the
/// [`MAX_SYNCS`] served at once, so idle connections cannot hold the full syncs up.
async fn serve(
    mut conn: tokio::net::TcpStream,
    db: Arc<Mutex<table::Db>>,
    settings: watch::Receiver<Settings>,
    wake: Arc<Notify>,
    syncs: Arc<Semaphore>,
) {
    let keys = settings.borrow().keyring.material();
    let Some(primary) = keys.first().copied() else {
        return;
    };
    let head = match tokio::time::timeout(HEADER_WAIT, sync::read_head(&mut conn)).await {
        Ok(Ok(h)) => h,
        _ => return,
    };
    let Ok(Ok(_turn)) = tokio::time::timeout(sync::TIMEOUT, syncs.acquire_owned()).await else {
        tracing::debug!("gossip: a full sync refused: {MAX_SYNCS} under way");
        return;
    };
    let go = async {
        let theirs = sync::read_rest(&mut conn, head, &keys).await?;
        let reply = {
            let mut d = lock(&db);
            let now = now_ms();
            for e in &theirs.events {
                d.apply(e, now);
            }
            sync::State {
                from: d.me().to_owned(),
                events: d.export(now),
            }
        };
        wake.notify_one();
        let out = sync::frame(&primary, &reply)?;
        tokio::io::AsyncWriteExt::write_all(&mut conn, &out).await
    };
    match tokio::time::timeout(sync::TIMEOUT, go).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("gossip: a full sync refused: {e}"),
        Err(_) => tracing::warn!("gossip: a full sync timed out"),
    }
}

async fn run(
    me: Member,
    sock: UdpSocket,
    listener: TcpListener,
    mut settings: watch::Receiver<Settings>,
    mut own: watch::Receiver<Arc<Own>>,
    view_tx: watch::Sender<Arc<View>>,
) {
    let config = {
        let mut c = foca::Config::new_lan(NonZeroU32::new(16).expect("nonzero"));
        // Probes every second (foca's LAN default), Down after a failed probe and 2 s of
        // suspicion the node did not refute: seconds, not the default's tens, on a LAN of
        // dedicated nodes.
        c.suspect_to_down_after = Duration::from_secs(2);
        c.remove_down_after = Duration::from_secs(60);
        c.max_packet_size = std::num::NonZeroUsize::new(1400).expect("nonzero");
        // Each update and table event rides on 8 messages this node sends (foca's LAN
        // value for 16 nodes is 4): a table event that misses a node waits for the next
        // full sync, so it pays to send it more.
        c.max_transmissions = std::num::NonZeroU8::new(8).expect("nonzero");
        c
    };
    let db = Arc::new(Mutex::new(table::Db::new(&me.node, me.start)));
    let mut foca = Foca::with_custom_broadcast(
        me.clone(),
        config,
        rand::rngs::StdRng::from_os_rng(),
        PostcardCodec,
        Events { db: db.clone() },
    );
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut rt = AccumulatingRuntime::new();
    let (timer_tx, mut timer_rx) = mpsc::unbounded_channel::<Timer<Member>>();
    let mut keys = settings.borrow().keyring.material();
    let mut announce = tokio::time::interval(ANNOUNCE);
    let mut resync = tokio::time::interval(sync::INTERVAL);
    let mut reap = tokio::time::interval(REAP_PERIOD);
    let wake = Arc::new(Notify::new());
    let syncs = Arc::new(Semaphore::new(MAX_SYNCS));
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut refused: u64 = 0;
    let mut shown = u64::MAX;
    // Publishes this node's entries: changes go out as broadcasts, on a gossip round
    // started now rather than at the next period (memberlist's 200 ms).
    let publish = |foca: &mut Foca<Member, PostcardCodec, rand::rngs::StdRng, Events>,
                   rt: &mut AccumulatingRuntime<Member>,
                   own: &Own| {
        let events = lock(&db).publish(own, now_ms());
        let any = !events.is_empty();
        for e in events {
            match postcard::to_allocvec(&e) {
                Ok(b) => {
                    if let Err(err) = foca.add_broadcast(&b) {
                        tracing::warn!(key = %e.key.key, "gossip: an entry not broadcast: {err}");
                    }
                }
                Err(err) => tracing::warn!("gossip: encoding an entry: {err}"),
            }
        }
        if any {
            if let Err(e) = foca.gossip(&mut *rt) {
                tracing::debug!("gossip: {e}");
            }
        }
    };
    publish(&mut foca, &mut rt, &own.borrow_and_update().clone());
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, _)) => match keyring::open(&keys, &buf[..n]) {
                    Some(plain) => {
                        if let Err(e) = foca.handle_data(&plain, &mut rt) {
                            tracing::debug!("gossip: a message refused: {e}");
                        }
                    }
                    None => {
                        // Not sealed with a key of ours: counted, logged now and then.
                        refused += 1;
                        if refused.is_power_of_two() {
                            tracing::warn!(refused, "gossip: datagrams no key of the ring opens");
                        }
                    }
                },
                Err(e) => tracing::debug!("gossip: receive: {e}"),
            },
            Some(t) = timer_rx.recv() => {
                if let Err(e) = foca.handle_timer(t, &mut rt) {
                    tracing::debug!("gossip: timer: {e}");
                }
            }
            r = settings.changed() => {
                if r.is_err() {
                    return;
                }
                keys = settings.borrow().keyring.material();
            }
            r = own.changed() => {
                if r.is_err() {
                    return;
                }
                let o = own.borrow_and_update().clone();
                publish(&mut foca, &mut rt, &o);
            }
            r = listener.accept() => match r {
                Ok((conn, _)) => match pending.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (db, settings, wake, syncs) =
                            (db.clone(), settings.clone(), wake.clone(), syncs.clone());
                        tokio::spawn(async move {
                            serve(conn, db, settings, wake, syncs).await;
                            drop(permit);
                        });
                    }
                    Err(_) => tracing::debug!("gossip: a connection closed: {MAX_PENDING} pending"),
                },
                Err(e) => tracing::debug!("gossip: accept: {e}"),
            },
            _ = resync.tick() => {
                let peer = foca
                    .iter_members()
                    .filter(|m| !m.id().node.is_empty())
                    .map(|m| m.id().addr)
                    .choose(&mut rng);
                if let Some(p) = peer {
                    tokio::spawn(pull(db.clone(), settings.clone(), p, wake.clone()));
                }
            }
            _ = reap.tick() => {
                lock(&db).reap(now_ms());
            }
            _ = wake.notified() => {}
            _ = announce.tick() => {
                // Announce to the nodes it should know but does not (at start, after a
                // partition, when a node joined the swarm).
                let known: BTreeSet<SocketAddrV4> = foca.iter_members().map(|m| m.id().addr).collect();
                let peers = settings.borrow().peers.clone();
                for p in peers.into_iter().filter(|p| *p != me.addr && !known.contains(p)) {
                    let probe = Member { node: String::new(), addr: p, vtep: Ipv4Addr::UNSPECIFIED, bump: 0, start: 0 };
                    if let Err(e) = foca.announce(probe, &mut rt) {
                        tracing::debug!("gossip: announce: {e}");
                    }
                }
            }
        }
        // What foca asked for.
        while let Some((to, data)) = rt.to_send() {
            let Some(primary) = keys.first() else { break };
            if let Some(sealed) = keyring::seal(primary, &data) {
                let _ = sock.send_to(&sealed, SocketAddr::V4(to.addr)).await;
            }
        }
        while let Some((after, timer)) = rt.to_schedule() {
            let tx = timer_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(timer);
            });
        }
        while let Some(n) = rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(m) | OwnedNotification::Rename(_, m) => {
                    if m.node.is_empty() {
                        continue;
                    }
                    tracing::info!(node = %m.node, addr = %m.addr, "gossip: node up");
                    lock(&db).member_up(&m.node, m.start, m.vtep);
                    // What it missed, and what it has (networkdb syncs with a node that
                    // joins).
                    tokio::spawn(pull(db.clone(), settings.clone(), m.addr, wake.clone()));
                }
                OwnedNotification::MemberDown(m) => {
                    // A newer identity of the same node may already be up.
                    let newer = foca
                        .iter_members()
                        .any(|x| x.id().node == m.node && x.id().bump > m.bump);
                    if !newer && !m.node.is_empty() {
                        tracing::warn!(node = %m.node, addr = %m.addr, "gossip: node down");
                        lock(&db).member_down(&m.node, m.start, now_ms());
                    }
                }
                _ => {}
            }
        }
        let (generation, view) = {
            let d = lock(&db);
            let g = d.generation();
            (g, (g != shown).then(|| d.view()))
        };
        if let Some(v) = view {
            shown = generation;
            view_tx.send_if_modified(|cur| {
                let changed = **cur != v;
                if changed {
                    *cur = Arc::new(v);
                }
                changed
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::table::{Table, Value};
    use super::*;

    fn member(i: u8, port: u16) -> Member {
        Member {
            node: format!("n{i}"),
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port + i as u16),
            vtep: Ipv4Addr::new(192, 168, 0, i),
            bump: 1,
            start: 1,
        }
    }

    /// Owner `i`'s row for address 10.0.0.`ip` (behind the owner's own VTEP).
    fn row_of(i: u8, ip: u8, key: &str) -> Own {
        [(
            (Table::OverlayPeer, "net".to_owned(), key.to_owned()),
            Value::Peer {
                ip: Ipv4Addr::new(10, 0, 0, ip),
                mac: [2, 66, 10, 0, 0, ip],
                vtep: Ipv4Addr::new(192, 168, 0, i),
            },
        )]
        .into_iter()
        .collect()
    }

    fn row(i: u8, key: &str) -> Own {
        row_of(i, i, key)
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{what}: not within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Three gossips on loopback: a change reaches the others, a node that starts late
    /// gets what was published before it came (the full sync on join), and a node that
    /// goes away is withdrawn from the others' views.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_share_their_tables_and_withdraw_a_lost_one() {
        let port = 27_900 + (std::process::id() % 500) as u16 * 4;
        let keyring = Keyring::new(1).unwrap();
        let peers: Vec<SocketAddrV4> = (1..=3).map(|i| member(i, port).addr).collect();
        let settings = Settings { keyring, peers };
        let mut owns = Vec::new();
        let mut nodes = Vec::new();
        for i in 1..=2u8 {
            let (tx, rx) = watch::channel(Arc::new(row(i, &format!("t{i}"))));
            nodes.push(
                Gossip::start(member(i, port), settings.clone(), rx)
                    .await
                    .unwrap(),
            );
            owns.push(tx);
        }
        let has = |g: &Gossip, owner: &str| g.view().borrow().keys().any(|k| k.owner == owner);
        until("n1 and n2 see each other's rows", || {
            has(&nodes[0], "n2") && has(&nodes[1], "n1")
        })
        .await;
        // n3 comes later: everything reaches it.
        let (tx, rx) = watch::channel(Arc::new(row(3, "t3")));
        nodes.push(
            Gossip::start(member(3, port), settings.clone(), rx)
                .await
                .unwrap(),
        );
        owns.push(tx);
        until("n3 has n1's and n2's rows", || {
            has(&nodes[2], "n1") && has(&nodes[2], "n2")
        })
        .await;
        until("n1 has n3's row", || has(&nodes[0], "n3")).await;
        // A change and a delete travel.
        owns[0].send_replace(Arc::new(row_of(1, 9, "t9")));
        until("n1's new row on n3, its old one gone", || {
            let v = nodes[2].view();
            let v = v.borrow();
            v.keys().any(|k| k.key == "t9") && !v.keys().any(|k| k.key == "t1")
        })
        .await;
        // n2 goes away: withdrawn from n1 and n3.
        drop(nodes.remove(1));
        until("n2 withdrawn", || {
            !has(&nodes[0], "n2") && !has(&nodes[1], "n2")
        })
        .await;
        assert!(has(&nodes[0], "n3") && has(&nodes[1], "n1"));
    }
}
