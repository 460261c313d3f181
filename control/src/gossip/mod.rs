//! Gossip on UDP 7946: a SWIM membership of every node of the swarm (the `foca` crate),
//! each datagram sealed with the swarm's gossip keyring ([`keyring`]). Docker runs
//! HashiCorp's memberlist there (libnetwork `networkdb/cluster.go`); swarmgate picks foca
//! (a SWIM core with no I/O of its own: this module gives it the socket, the timers and
//! the sealing) over the `memberlist` port, whose transport, encryption and push/pull come
//! as one piece this daemon would have to fit around rather than drive.
//!
//! What it gives the node today: which other nodes are down, as the nodes themselves see
//! it — within a few seconds, whether or not the leader is reachable. A node's data plane
//! and DNS drop the endpoints behind a node gossip declared down at once (Docker:
//! networkdb's `deleteNodeTableEntries` when memberlist reports a node gone), and take
//! them back when it is up again. The per-network tables of libnetwork's networkdb are not
//! built yet: the endpoints themselves still come from the leader's assignments.

pub mod keyring;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU32;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, Timer};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

pub use keyring::Keyring;

/// Docker's gossip port.
pub const PORT: u16 = 7946;
/// How often a node announces itself to the nodes it should know and does not.
const ANNOUNCE: Duration = Duration::from_secs(2);
/// The largest datagram read.
const MAX_DATAGRAM: usize = 2048;

/// A node as gossip knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Its swarm node ID.
    pub node: String,
    /// Where it gossips.
    pub addr: SocketAddrV4,
    /// Its data-path address (VTEP): what the data plane withdraws when it is down.
    pub vtep: Ipv4Addr,
    /// Raised at every start (milliseconds since the epoch), so a restarted node is a new
    /// incarnation that wins over its old, possibly declared-down, self.
    pub bump: u64,
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
    down: watch::Receiver<BTreeSet<Ipv4Addr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gossip {
    /// Joins the gossip as `me`, listening on its address.
    pub async fn start(me: Member, settings: Settings) -> std::io::Result<Gossip> {
        let sock = UdpSocket::bind(SocketAddr::V4(me.addr)).await?;
        let (settings_tx, settings_rx) = watch::channel(settings);
        let (down_tx, down_rx) = watch::channel(BTreeSet::new());
        let task = tokio::spawn(run(me, sock, settings_rx, down_tx));
        Ok(Gossip {
            settings: settings_tx,
            down: down_rx,
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

    /// The data-path addresses of the nodes gossip declared down; wakes on changes.
    pub fn down(&self) -> watch::Receiver<BTreeSet<Ipv4Addr>> {
        self.down.clone()
    }
}

impl Drop for Gossip {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    me: Member,
    sock: UdpSocket,
    mut settings: watch::Receiver<Settings>,
    down_tx: watch::Sender<BTreeSet<Ipv4Addr>>,
) {
    let config = {
        let mut c = foca::Config::new_lan(NonZeroU32::new(16).expect("nonzero"));
        // Probes every second (foca's LAN default), Down after a failed probe and 2 s of
        // suspicion the node did not refute: seconds, not the default's tens, on a LAN of
        // dedicated nodes.
        c.suspect_to_down_after = Duration::from_secs(2);
        c.remove_down_after = Duration::from_secs(60);
        c.max_packet_size = std::num::NonZeroUsize::new(1400).expect("nonzero");
        c
    };
    let mut foca = Foca::new(
        me.clone(),
        config,
        rand::rngs::StdRng::from_os_rng(),
        PostcardCodec,
    );
    let mut rt = AccumulatingRuntime::new();
    let (timer_tx, mut timer_rx) = mpsc::unbounded_channel::<Timer<Member>>();
    let mut keys = settings.borrow().keyring.material();
    let mut announce = tokio::time::interval(ANNOUNCE);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Nodes gossip declared down, by node ID (a newer incarnation that is up clears it).
    let mut down: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    let mut refused: u64 = 0;
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
            _ = announce.tick() => {
                // Announce to the nodes it should know but does not (at start, after a
                // partition, when a node joined the swarm).
                let known: BTreeSet<SocketAddrV4> = foca.iter_members().map(|m| m.id().addr).collect();
                let peers = settings.borrow().peers.clone();
                for p in peers.into_iter().filter(|p| *p != me.addr && !known.contains(p)) {
                    let probe = Member { node: String::new(), addr: p, vtep: Ipv4Addr::UNSPECIFIED, bump: 0 };
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
        let mut changed = false;
        while let Some(n) = rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(m) => {
                    tracing::info!(node = %m.node, addr = %m.addr, "gossip: node up");
                    changed |= down.remove(&m.node).is_some();
                }
                OwnedNotification::MemberDown(m) => {
                    // A newer incarnation of the same node may already be up.
                    let newer = foca
                        .iter_members()
                        .any(|x| x.id().node == m.node && x.id().bump > m.bump);
                    if !newer && !m.node.is_empty() {
                        tracing::warn!(node = %m.node, addr = %m.addr, "gossip: node down");
                        down.insert(m.node.clone(), m.vtep);
                        changed = true;
                    }
                }
                OwnedNotification::Rename(_, m) => changed |= down.remove(&m.node).is_some(),
                _ => {}
            }
        }
        if changed {
            let _ = down_tx.send(down.values().copied().collect());
        }
    }
}

/// Drops from a node's data-plane state and DNS every endpoint behind a VTEP in `down`
/// (and the VIP backends and names that are those endpoints' addresses).
pub fn withdraw(
    st: &mut crate::dataplane::NodeState,
    dns: &mut crate::cluster::DnsView,
    down: &BTreeSet<Ipv4Addr>,
) {
    if down.is_empty() {
        return;
    }
    let mut gone: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for n in &mut st.networks {
        n.remote.retain(|r| {
            let dead = down.contains(&r.vtep);
            if dead {
                gone.insert(r.host.ip);
            }
            !dead
        });
    }
    for n in &mut st.networks {
        for v in &mut n.vips {
            v.backends.retain(|b| !gone.contains(&b.ip));
        }
    }
    for names in dns.names.values_mut() {
        for addrs in names.values_mut() {
            addrs.retain(|a| !gone.contains(a));
        }
        names.retain(|_, a| !a.is_empty());
    }
}
