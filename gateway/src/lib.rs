//! The DPDK gateway: the data-plane pipeline on real DPDK ports.
//!
//! One poll-mode worker per configured core, pinned; each polls one receive queue of every
//! port (RSS spreads the underlay over the queues where the PMD offers it) and owns one
//! transmit queue of every port, so no queue is shared. Ports:
//!
//! * the **underlay** NIC (on bare metal a vfio-pci NIC; in tests `net_af_packet` on a
//!   veth), owned by DPDK together with this node's underlay address;
//! * the **exception TAP**: the kernel's interface carrying the node's address and MAC.
//!   Everything on the underlay that is not overlay data (Raft on 2377, gossip on 7946,
//!   SSH, ARP replies) goes to the kernel through it, and what the kernel sends out of it
//!   leaves through the underlay — VPP linux-cp's pattern;
//! * per overlay network a **local port** (a TAP, or a veth polled with af_packet; see
//!   [`local_port`]; hot-plugged with `rte_dev_probe`) in the node's bridge for that
//!   network, where local endpoints attach with veths — Docker's per-network `br0`, with its
//!   `vxlan0` replaced by swarmgate.
//!
//! The control side builds immutable [`Tables`] snapshots and publishes them through an
//! `ArcSwap`; workers pick the current one up between bursts. Two sources feed it: the
//! control plane's [`NodeState`] through [`Gateway::apply`] (the daemon: routed networks
//! whose ports and bridges come and go while the workers run), and, for the standalone
//! `swarmgate gateway -c FILE` mode used by the interop tests, static networks and peers
//! from the TOML file.

#![deny(unsafe_code)]

pub mod config;
pub mod epoch_store;
pub mod kernel;
pub mod local_port;
pub mod stats;
pub mod worker;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use swarmgate_aead::IcvLen;
use swarmgate_control::dataplane::{Fatal, Host, NetState, NodeState};
use swarmgate_control::publish::Protocol;
use swarmgate_dataplane::esp::{DatapathKey, EpochSource, SaDatabase, SenderIvs, SEQ_LIMIT};
use swarmgate_dataplane::maglev::{Backend, MaglevCache, VipService};
use swarmgate_dataplane::tables::{NetworkSpec, Router, Tables, Underlay};
use swarmgate_dataplane::wire::{EthernetAddress, IpProtocol, Vni};
use swarmgate_dataplane::Counters;
use swarmgate_ffi::{Eal, Mempool, Port};

use crate::config::Config;
use crate::epoch_store::EpochStore;
use crate::local_port::LocalPort;
use crate::worker::{LoopConfig, WorkerLoop, WorkerQueues};

/// A port and what it is for.
#[derive(Debug, Clone)]
pub struct PortInfo {
    /// DPDK port id.
    pub id: u16,
    /// Its role: "underlay", "exception" or the network name.
    pub role: String,
    /// Kernel interface name, for TAPs.
    pub iface: Option<String>,
    /// The DPDK device's name (`net_af_xdp_sg4097`, `0000:3b:00.0`).
    pub device: String,
}

/// A running gateway. Dropping it stops the workers, then the ports, then DPDK.
pub struct Gateway {
    workers: Vec<JoinHandle<WorkerLoop>>,
    stop: Arc<AtomicBool>,
    loop_cfg: LoopConfig,
    epoch: Instant,
    /// Networks programmed by the control plane, by VNI.
    dynamic: BTreeMap<u32, DynNet>,
    /// What the control plane last asked for.
    state: NodeState,
    ports: Vec<Port>,
    // Declared after `ports` so it is dropped after them: ports hold its mbufs.
    _pool: Mempool,
    _eal: Eal,
    config: Config,
    tables: Arc<ArcSwap<Tables>>,
    counters: Vec<Arc<Counters>>,
    sas: SaDatabase,
    /// The sender-epoch reservation, on nodes with datapath keys.
    epochs: Option<EpochStore>,
    /// The VTEPs the control plane's state has SAs with (see [`Gateway::sync_sas`]).
    sa_peers: std::collections::BTreeSet<Ipv4Addr>,
    epoch_error_logged: Option<Instant>,
    /// Set once a worker is found dead: the gateway cannot go on.
    dead: Option<String>,
    /// Maglev tables by backend list, kept across snapshots.
    maglev: MaglevCache,
    port_info: Vec<PortInfo>,
    network_ports: Vec<u16>,
    /// The configuration's networks' local ports.
    static_locals: Vec<LocalPort>,
    underlay_mac: EthernetAddress,
    exception_port: u16,
    last_resolve: HashMap<Ipv4Addr, Instant>,
}

/// A network port the control plane asked for.
#[derive(Debug, Clone)]
struct DynNet {
    local: LocalPort,
    port_id: u16,
    bridge: String,
    slot: u16,
}

fn vdev_name(devargs: &str) -> &str {
    devargs.split(',').next().unwrap_or(devargs)
}

/// `devargs` with a queue-count argument for the PMDs that need one, when `queues > 1`.
pub(crate) fn with_queues(devargs: &str, queues: usize) -> String {
    let name = vdev_name(devargs);
    if queues <= 1 || devargs.contains("qpairs=") || devargs.contains("queues=") {
        return devargs.to_owned();
    }
    if name.starts_with("net_af_packet") {
        format!("{devargs},qpairs={queues}")
    } else if name.starts_with("net_tap") {
        format!("{devargs},queues={queues}")
    } else {
        devargs.to_owned()
    }
}

impl Gateway {
    /// Initialises DPDK, creates and starts every port, configures the kernel side, publishes
    /// the first tables and starts the workers.
    pub fn start(config: Config, idle_sleep: Duration) -> anyhow::Result<Gateway> {
        let nq = config.dpdk.cores.len();
        let (addr, prefix) = config.address()?;
        let keys = config.keys()?;

        let mut args: Vec<String> = Vec::new();
        if !config.dpdk.hugepages {
            args.push("--no-huge".into());
            args.push("--iova-mode=va".into());
        }
        args.extend(["-m".into(), config.dpdk.memory_mb.to_string()]);
        args.extend(["--file-prefix".into(), config.dpdk.file_prefix.clone()]);
        args.extend(["--log-level".into(), "lib.eal:warning".into()]);
        // The main lcore is not a worker: workers are registered threads pinned to `cores`.
        args.extend(["-l".into(), config.dpdk.cores[0].to_string()]);
        let underlay_dev = &config.underlay.device;
        let underlay_is_vdev = config.underlay_is_vdev();
        if underlay_is_vdev {
            args.push(format!("--vdev={}", with_queues(underlay_dev, nq)));
            args.push("--no-pci".into());
        } else {
            args.extend(["-a".into(), underlay_dev.clone()]);
        }
        let exc_dev = format!("net_tap_sgexc,iface={}", config.underlay.exception_iface);
        args.push(format!("--vdev={}", with_queues(&exc_dev, nq)));
        args.extend(config.dpdk.extra_args.iter().cloned());

        if vdev_name(underlay_dev).starts_with("net_af_packet") {
            let iface = kernel::devargs_iface(underlay_dev)
                .ok_or_else(|| anyhow::anyhow!("underlay.device {underlay_dev:?} has no iface="))?;
            kernel::isolate_from_kernel(iface)
                .with_context(|| format!("taking {iface} from the kernel"))?;
        }
        let eal = Eal::init(&args).context("DPDK EAL initialisation")?;
        // With only virtual devices, nothing DMAs into the mbufs with physical addresses:
        // pack them, as the af_xdp PMD's UMEM assumes (see `Mempool::packed`).
        let pool = if underlay_is_vdev {
            Mempool::packed(&eal, "sg-mbufs", config.dpdk.mbufs, 256, 2048 + 128)
        } else {
            Mempool::new(&eal, "sg-mbufs", config.dpdk.mbufs, 256, 2048 + 128)
        }
        .context("mbuf pool")?;

        let mut ports = Vec::new();
        let mut port_info = Vec::new();
        let mut open = |name: &str, role: &str, iface: Option<String>| {
            open_port(&eal, &pool, nq, name, role, iface, &mut port_info)
        };

        let underlay_name = if underlay_is_vdev {
            vdev_name(underlay_dev).to_owned()
        } else {
            underlay_dev.clone()
        };
        let mut underlay = open(&underlay_name, "underlay", None)?;
        underlay.start().context("starting the underlay port")?;
        underlay
            .promiscuous()
            .context("promiscuous mode on the underlay")?;
        let underlay_mac = underlay.mac()?;
        let mut exception = open(
            "net_tap_sgexc",
            "exception",
            Some(config.underlay.exception_iface.clone()),
        )?;
        exception.start().context("starting the exception TAP")?;
        kernel::setup_exception(
            &config.underlay.exception_iface,
            underlay_mac,
            addr,
            prefix,
            config.underlay.mtu,
        )
        .context("configuring the exception TAP")?;
        let exception_port = exception.id();
        let underlay_port = underlay.id();
        ports.push(underlay);
        ports.push(exception);

        // One local port per network, hot-plugged while DPDK runs.
        let mut network_ports = Vec::new();
        let mut static_locals = local_port::Unfinished::default();
        for n in &config.networks {
            let local = LocalPort::create(
                &eal,
                config.dpdk.local_ports,
                n.vni,
                nq,
                n.mtu(config.underlay.mtu),
            )
            .with_context(|| format!("the local port of network {}", n.name))?;
            static_locals.0.push(local.clone());
            let mut p = open(&local.name, &n.name, Some(local.bridge_iface.clone()))?;
            p.start()
                .with_context(|| format!("starting the local port of network {}", n.name))?;
            local.attach(&n.bridge, n.mtu(config.underlay.mtu))?;
            network_ports.push(p.id());
            ports.push(p);
        }

        let epochs = if keys.is_empty() {
            None
        } else {
            let path = config.epoch_file();
            Some(
                EpochStore::open(&path)
                    .with_context(|| format!("ESP epoch reservation {}", path.display()))?,
            )
        };
        let mut sas = sa_database(
            &config,
            epochs
                .as_ref()
                .map(|e| e.source().clone())
                .unwrap_or_else(|| Arc::new(EpochSource::empty())),
        );
        for p in &config.peers {
            if let Some(e) = &epochs {
                e.top_up()?;
            }
            sas.set_peer_keys(addr, p.vtep, &keys, p.sender_ivs())
                .with_context(|| format!("building the SAs with {}", p.vtep))?;
        }

        let counters: Vec<Arc<Counters>> = (0..nq).map(|_| Arc::new(Counters::default())).collect();
        let mut gw = Gateway {
            workers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            loop_cfg: LoopConfig {
                idle_polls: if idle_sleep.is_zero() { 0 } else { 64 },
                idle_sleep,
            },
            epoch: Instant::now(),
            dynamic: BTreeMap::new(),
            state: NodeState::default(),
            ports,
            _pool: pool,
            _eal: eal,
            config,
            tables: Arc::new(ArcSwap::from_pointee(Tables::new(Underlay::new(
                underlay_port,
                underlay_mac,
                addr,
            )))),
            counters,
            sas,
            epochs,
            sa_peers: Default::default(),
            epoch_error_logged: None,
            dead: None,
            maglev: MaglevCache::default(),
            port_info,
            network_ports,
            static_locals: std::mem::take(&mut static_locals.0),
            underlay_mac,
            exception_port,
            last_resolve: HashMap::new(),
        };
        gw.publish(HashMap::new())?;

        // Hand every port's queue i to worker i.
        let mut per_port: Vec<Vec<_>> = gw.ports.iter_mut().map(|p| p.queues()).collect();
        let mut loops = Vec::new();
        for i in 0..nq {
            let mut q = WorkerQueues {
                rx: Vec::new(),
                tx: Vec::new(),
            };
            for pq in per_port.iter_mut() {
                let (rx, tx) = pq.remove(0);
                q.rx.push(rx);
                q.tx.push(tx);
            }
            loops.push(WorkerLoop::new(q, gw.counters[i].clone()));
        }
        gw.resume(loops)?;
        Ok(gw)
    }

    /// Starts one pinned, registered worker thread per core over `loops`.
    fn resume(&mut self, loops: Vec<WorkerLoop>) -> anyhow::Result<()> {
        self.stop = Arc::new(AtomicBool::new(false));
        for (i, (core, w)) in self
            .config
            .dpdk
            .cores
            .clone()
            .into_iter()
            .zip(loops)
            .enumerate()
        {
            let (tables, stop, cfg, epoch) = (
                self.tables.clone(),
                self.stop.clone(),
                self.loop_cfg,
                self.epoch,
            );
            let h = std::thread::Builder::new()
                .name(format!("sg-worker-{i}"))
                .spawn(move || {
                    if let Err(e) = swarmgate_ffi::pin_current_thread(core) {
                        tracing::warn!(worker = i, cpu = core, "cannot pin the worker: {e}");
                    }
                    if let Err(e) = swarmgate_ffi::register_thread() {
                        tracing::warn!(worker = i, "registering the worker thread: {e}");
                    }
                    worker::run(w, tables, stop, cfg, epoch)
                })
                .context("spawning a worker")?;
            self.workers.push(h);
        }
        Ok(())
    }

    /// Stops the workers and takes their loops back (queues and flow tables intact). A
    /// worker that panicked has lost its queues: that is a [`Fatal`] error.
    fn pause(&mut self) -> Result<Vec<WorkerLoop>, Fatal> {
        self.stop.store(true, Ordering::SeqCst);
        let n = self.workers.len();
        let loops: Vec<WorkerLoop> = self
            .workers
            .drain(..)
            .filter_map(|h| h.join().ok())
            .collect();
        if loops.len() != n {
            let msg = format!(
                "{} of {n} data-plane workers died; their queues are no longer polled",
                n - loops.len()
            );
            self.dead = Some(msg.clone());
            return Err(Fatal(msg));
        }
        Ok(loops)
    }

    /// Makes the ports, bridges and tables match what the control plane asks for. Ports
    /// are added and removed with the workers paused for the moment it takes (their
    /// loops, flow tables included, are kept); then a new snapshot is published.
    pub fn apply(&mut self, state: &NodeState) -> anyhow::Result<()> {
        let want: BTreeMap<u32, &NetState> = state.networks.iter().map(|n| (n.vni, n)).collect();
        let remove: Vec<u32> = self
            .dynamic
            .iter()
            .filter(|(vni, d)| want.get(vni).is_none_or(|n| n.bridge != d.bridge))
            .map(|(vni, _)| *vni)
            .collect();
        let add: Vec<&NetState> = want
            .values()
            .filter(|n| !self.dynamic.contains_key(&n.vni) || remove.contains(&n.vni))
            .copied()
            .collect();
        let mut result = Ok(());
        if !remove.is_empty() || !add.is_empty() {
            let mut loops = self.pause()?;
            for vni in remove {
                let d = self.dynamic.remove(&vni).expect("listed");
                for l in loops.iter_mut() {
                    l.remove_port(d.port_id);
                }
                self.ports.retain(|p| p.id() != d.port_id); // drop: stop + close
                self.port_info.retain(|p| p.id != d.port_id);
                d.local.remove(&self._eal);
                let _ = kernel::ip(&["link", "del", &d.bridge]);
            }
            for n in add {
                if let Err(e) = self.add_network_port(n, &mut loops) {
                    result = Err(e);
                    break;
                }
            }
            self.resume(loops)?;
        }
        self.state = state.clone();
        self.state
            .networks
            .retain(|n| self.dynamic.contains_key(&n.vni));
        if let Err(e) = self.sync_sas() {
            result = result.and(Err(e));
        }
        let neighbours = self
            .tables
            .load()
            .neighbours
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        self.publish(neighbours)?;
        result
    }

    /// The SAs with every node behind a remote endpoint of an encrypted network this node
    /// has, under the state's datapath keys (primary first); none with a node that no
    /// longer is (its ESP is then an unknown SPI, a counted drop). The configuration's
    /// static peers keep theirs. The sender-epoch reservation is opened the first time it
    /// is needed.
    fn sync_sas(&mut self) -> anyhow::Result<()> {
        let keys: Vec<DatapathKey> = self
            .state
            .keys
            .iter()
            .map(|k| DatapathKey {
                key: k.key,
                tag: k.tag,
            })
            .collect();
        let want: std::collections::BTreeSet<Ipv4Addr> = if keys.is_empty() {
            Default::default()
        } else {
            self.state
                .networks
                .iter()
                .filter(|n| n.encrypted)
                .flat_map(|n| n.remote.iter().map(|r| r.vtep))
                .filter(|v| !self.config.peers.iter().any(|p| p.vtep == *v))
                .collect()
        };
        let gone: Vec<Ipv4Addr> = self.sa_peers.difference(&want).copied().collect();
        for g in gone {
            self.sas.remove_peer(g);
            self.sa_peers.remove(&g);
        }
        if want.is_empty() {
            return Ok(());
        }
        if self.epochs.is_none() {
            let path = self.config.epoch_file();
            let store = EpochStore::open(&path)
                .with_context(|| format!("ESP epoch reservation {}", path.display()))?;
            // No SA exists yet: the configuration has no keys, so no static peer has any.
            self.sas = sa_database(&self.config, store.source().clone());
            self.epochs = Some(store);
        }
        if let Some(e) = &self.epochs {
            e.top_up()?;
        }
        let (addr, _) = self.config.address()?;
        for vtep in want {
            // Tracked before the attempt: whatever SAs it leaves are removed later.
            self.sa_peers.insert(vtep);
            self.sas
                .set_peer_keys(addr, vtep, &keys, SenderIvs::Epochs)
                .with_context(|| format!("building the SAs with {vtep}"))?;
        }
        Ok(())
    }

    fn add_network_port(&mut self, n: &NetState, loops: &mut [WorkerLoop]) -> anyhow::Result<()> {
        let nq = self.config.dpdk.cores.len();
        let slot = (self.config.networks.len() as u16..)
            .find(|s| self.dynamic.values().all(|d| d.slot != *s))
            .expect("slots");
        let local = LocalPort::create(&self._eal, self.config.dpdk.local_ports, n.vni, nq, n.mtu)
            .with_context(|| format!("the local port of network {}", n.name))?;
        let mut p = match open_port(
            &self._eal,
            &self._pool,
            nq,
            &local.name,
            &n.name,
            Some(local.bridge_iface.clone()),
            &mut self.port_info,
        ) {
            Ok(p) => p,
            Err(e) => {
                local.remove(&self._eal);
                return Err(e);
            }
        };
        let setup = p
            .start()
            .with_context(|| format!("starting the local port of network {}", n.name))
            .and_then(|_| local.attach(&n.bridge, n.mtu));
        if let Err(e) = setup {
            self.port_info.retain(|i| i.id != p.id());
            drop(p);
            local.remove(&self._eal);
            return Err(e);
        }
        for (l, (rx, tx)) in loops.iter_mut().zip(p.queues()) {
            l.add_queues(rx, tx);
        }
        self.dynamic.insert(
            n.vni,
            DynNet {
                local,
                port_id: p.id(),
                bridge: n.bridge.clone(),
                slot,
            },
        );
        self.ports.push(p);
        Ok(())
    }

    /// Builds and publishes a snapshot from the configuration, the SAs and `neighbours`.
    fn publish(&mut self, neighbours: HashMap<Ipv4Addr, EthernetAddress>) -> anyhow::Result<()> {
        let old = self.tables.load();
        let (addr, _) = self.config.address()?;
        let mut u = Underlay::new(old.underlay.port, self.underlay_mac, addr);
        // The swarm's data-path port once the control plane sets one (`swarm init
        // --data-path-port`), the configuration's until then.
        u.vxlan_port = match self.state.vxlan_port {
            0 => self.config.underlay.vxlan_port,
            p => p,
        };
        u.exception_port = Some(self.exception_port);
        let mut t = Tables::new(u);
        t.generation = old.generation + 1;
        for (ip, mac) in neighbours {
            t.set_neighbour(ip, mac);
        }
        let mut by_name = HashMap::new();
        for (i, n) in self.config.networks.iter().enumerate() {
            let vni = Vni::new(n.vni).expect("checked");
            t.add_network(NetworkSpec {
                vni,
                slot: i as u16,
                local_port: self.network_ports[i],
                mtu: n.mtu(self.config.underlay.mtu),
                encrypted: n.encrypted,
            })?;
            for e in &n.local {
                t.add_local_endpoint(vni, e.mac()?)?;
            }
            by_name.insert(n.name.clone(), vni);
        }
        for p in &self.config.peers {
            for e in &p.endpoints {
                let vni = by_name[e.network.as_deref().expect("checked")];
                t.add_remote_endpoint(vni, e.ip, e.mac()?, p.vtep)?;
            }
        }
        for n in &self.state.networks {
            let Some(d) = self.dynamic.get(&n.vni) else {
                continue;
            };
            let vni = Vni::new(n.vni).context("VNI")?;
            t.add_network(NetworkSpec {
                vni,
                slot: d.slot,
                local_port: d.port_id,
                mtu: n.mtu,
                encrypted: n.encrypted,
            })?;
            let router = Router {
                mac: EthernetAddress::from_ipv4_docker(n.gateway),
                gateway: n.gateway,
            };
            t.set_router(vni, router)?;
            for h in &n.hosts {
                t.add_local_host(vni, h.ip, h.mac)?;
            }
            // Before the VIPs: a backend on another node is reached through its entry.
            for r in &n.remote {
                t.add_remote_endpoint(vni, r.host.ip, r.host.mac, r.vtep)?;
            }
            for v in &n.vips {
                t.add_vip(
                    vni,
                    vip_service(
                        v.ip,
                        v.protocol,
                        v.port,
                        v.target,
                        &v.backends,
                        &mut self.maglev,
                    )?,
                    router.mac,
                )?;
            }
        }
        for p in &self.state.published {
            let vni = Vni::new(p.vni).context("VNI")?;
            if !self.dynamic.contains_key(&p.vni) {
                continue;
            }
            t.add_ingress(
                vni,
                vip_service(
                    addr,
                    p.protocol,
                    p.port,
                    p.target,
                    &p.backends,
                    &mut self.maglev,
                )?,
            )?;
        }
        t.esp = self.sas.tables();
        self.tables.store(Arc::new(t));
        self.maglev.prune();
        Ok(())
    }

    /// One round of control work: learn underlay neighbours from the kernel, ask it to
    /// resolve missing ones (at most once a second each), republish when they changed.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        if let Some(msg) = &self.dead {
            return Err(Fatal(msg.clone()).into());
        }
        check_workers(&self.workers)?;
        if let Some(e) = &self.epochs {
            // Workers take a fresh epoch whenever an SA's generation is used up. A failed
            // write leaves them the rest of the reservation (then counted drops); retried
            // on the next tick, reported at most every ten seconds.
            if let Err(err) = e.top_up() {
                if self
                    .epoch_error_logged
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                {
                    tracing::error!("extending the ESP epoch reservation: {err:#}");
                    self.epoch_error_logged = Some(Instant::now());
                }
            }
        }
        let iface = self.config.underlay.exception_iface.clone();
        let learnt: HashMap<Ipv4Addr, EthernetAddress> =
            kernel::arp_table(&iface).into_iter().collect();
        let current = self.tables.load();
        if learnt
            != current
                .neighbours
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect::<HashMap<_, _>>()
        {
            self.publish(learnt.clone())?;
        }
        let now = Instant::now();
        // The VTEPs of the configured peers and of the nodes the control plane's remote
        // endpoints are on.
        let vteps: std::collections::BTreeSet<Ipv4Addr> = self
            .config
            .peers
            .iter()
            .map(|p| p.vtep)
            .chain(
                self.state
                    .networks
                    .iter()
                    .flat_map(|n| n.remote.iter().map(|r| r.vtep)),
            )
            .collect();
        self.last_resolve.retain(|v, _| vteps.contains(v));
        for vtep in vteps {
            if !learnt.contains_key(&vtep) {
                let due = self
                    .last_resolve
                    .get(&vtep)
                    .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(1));
                if due {
                    kernel::trigger_resolution(vtep);
                    self.last_resolve.insert(vtep, now);
                }
            }
        }
        Ok(())
    }

    /// Counters and port statistics as JSON.
    pub fn stats(&self) -> serde_json::Value {
        let mut nets: Vec<stats::NetworkSlot> = self
            .config
            .networks
            .iter()
            .enumerate()
            .map(|(i, n)| stats::NetworkSlot {
                name: n.name.clone(),
                vni: n.vni,
                encrypted: n.encrypted,
                slot: i as u16,
            })
            .collect();
        // What the control plane programmed (the daemon's networks).
        for n in &self.state.networks {
            if let Some(d) = self.dynamic.get(&n.vni) {
                nets.push(stats::NetworkSlot {
                    name: n.name.clone(),
                    vni: n.vni,
                    encrypted: n.encrypted,
                    slot: d.slot,
                });
            }
        }
        stats::collect(
            &self.counters,
            &self.ports,
            &self.port_info,
            &nets,
            &self.tables.load(),
        )
    }

    /// `Ok` while every worker runs; the reason otherwise.
    pub fn health(&self) -> Result<(), String> {
        if let Some(msg) = &self.dead {
            return Err(msg.clone());
        }
        check_workers(&self.workers).map_err(|e| e.0)
    }

    /// The ports and their roles.
    pub fn ports(&self) -> &[PortInfo] {
        &self.port_info
    }

    /// Stops the workers and waits for them.
    pub fn stop(&mut self) {
        if let Err(e) = self.pause() {
            tracing::warn!("pausing the workers: {e}");
        }
    }
}

impl swarmgate_control::dataplane::DataPlane for Gateway {
    fn apply(&mut self, state: &NodeState) -> anyhow::Result<()> {
        Gateway::apply(self, state)
    }
    fn tick(&mut self) -> anyhow::Result<()> {
        Gateway::tick(self)
    }
    fn stats(&self) -> serde_json::Value {
        Gateway::stats(self)
    }
    fn health(&self) -> Result<(), String> {
        Gateway::health(self)
    }
    fn address(&self) -> Ipv4Addr {
        self.config
            .address()
            .map(|(a, _)| a)
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }
    fn underlay(&self) -> (Ipv4Addr, u8) {
        self.config.address().unwrap_or((Ipv4Addr::UNSPECIFIED, 32))
    }
}

/// Fails with [`Fatal`] if a worker thread has ended while it should be running (it can
/// only have panicked: workers return only when told to stop).
fn check_workers<T>(workers: &[JoinHandle<T>]) -> Result<(), Fatal> {
    let dead = workers.iter().filter(|h| h.is_finished()).count();
    if dead > 0 {
        return Err(Fatal(format!(
            "{dead} of {} data-plane workers died; their queues are no longer polled",
            workers.len()
        )));
    }
    Ok(())
}

fn vip_service(
    ip: Ipv4Addr,
    protocol: Protocol,
    port: u16,
    target: u16,
    backends: &[Host],
    cache: &mut MaglevCache,
) -> anyhow::Result<VipService> {
    let proto = match protocol {
        Protocol::Tcp => IpProtocol::TCP,
        Protocol::Udp => IpProtocol::UDP,
    };
    let b = backends
        .iter()
        .map(|h| Backend {
            ip: h.ip,
            mac: h.mac,
        })
        .collect();
    VipService::cached(ip, proto, port, target, b, cache)
        .map_err(|e| anyhow::anyhow!("{ip}:{port}: {e:?}"))
}

/// An SA database with the configuration's ICV length and sequence limit.
fn sa_database(config: &Config, epochs: Arc<EpochSource>) -> SaDatabase {
    let icv = config
        .encryption
        .icv
        .and_then(IcvLen::from_bytes)
        .unwrap_or(IcvLen::Icv8);
    SaDatabase::new(icv, epochs)
        .with_seq_limit(config.encryption.rekey_after_packets.unwrap_or(SEQ_LIMIT))
}

/// Opens, checks and configures port `name` with `nq` queue pairs.
fn open_port(
    eal: &Eal,
    pool: &Mempool,
    nq: usize,
    name: &str,
    role: &str,
    iface: Option<String>,
    port_info: &mut Vec<PortInfo>,
) -> anyhow::Result<Port> {
    let mut p = Port::by_name(eal, name).with_context(|| format!("{role} port {name}"))?;
    if p.id() as usize >= swarmgate_dataplane::counters::MAX_PORTS {
        anyhow::bail!(
            "{role} port {name} has DPDK port id {}, above the {} ports a worker handles",
            p.id(),
            swarmgate_dataplane::counters::MAX_PORTS
        );
    }
    // net_af_xdp fills each socket's fill ring with 2048 mbufs (ETH_AF_XDP_DFLT_NUM_DESCS in
    // `xsk_configure`) and fails with a bare EINVAL when the pool cannot give them.
    let xdp_need = 2048 * nq as u32 + 1024;
    if name.starts_with("net_af_xdp") && pool.available() < xdp_need {
        anyhow::bail!(
            "{role} port {name}: an af_xdp port holds 2048 mbufs per queue and only {} of the \
             pool are free (raise [dpdk] mbufs)",
            pool.available()
        );
    }
    p.configure(nq as u16, 1024, pool)
        .with_context(|| format!("configuring {role} port {name}"))?;
    port_info.push(PortInfo {
        id: p.id(),
        role: role.to_owned(),
        iface,
        device: name.to_owned(),
    });
    Ok(p)
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Bridges stay: endpoints stay attached to them across a daemon restart, and the
        // next start attaches a new local port (Docker's live-restore). The local ports
        // go, as a TAP goes with its process (a veth left by a killed gateway is replaced
        // at the next start).
        self.stop();
        self.ports.clear();
        for l in self
            .static_locals
            .iter()
            .chain(self.dynamic.values().map(|d| &d.local))
        {
            l.remove(&self._eal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_worker_is_fatal() {
        let alive = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(2)));
        let dead = std::thread::spawn(|| panic!("worker bug"));
        while !dead.is_finished() {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(check_workers(std::slice::from_ref(&alive)).is_ok());
        let hs = [alive, dead];
        let e = check_workers(&hs).unwrap_err().to_string();
        assert_eq!(
            e,
            "1 of 2 data-plane workers died; their queues are no longer polled"
        );
    }
}
