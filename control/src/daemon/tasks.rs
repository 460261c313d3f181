//! The node runtime's task side: starting a task (addresses, namespace, veths, DNS),
//! stopping it off the state lock, giving its addresses back, adopting running tasks after a
//! restart, and leaving them running at shutdown (live-restore).

use super::*;

/// What a stopping task still holds, to give back once its stop has finished: its
/// addresses with the identity of their network, and its gateway-bridge address with the
/// swarm's.
#[derive(Debug, Clone, Default)]
pub(super) struct Held {
    /// The task.
    pub(super) id: String,
    swarm: Option<String>,
    addresses: Vec<(String, String, Ipv4Addr)>,
    gw_ip: Option<Ipv4Addr>,
}

impl Daemon {
    /// The allocator: an address for task `id` on each of `nets`, all or none.
    pub(super) fn allocate(&mut self, id: &str, nets: &[String]) -> Result<(), String> {
        let mut addresses: Vec<(String, Ipv4Addr)> = Vec::new();
        let mut fail = None;
        for n in nets {
            match self.cluster.networks.get_mut(n) {
                None => fail = Some(format!("network {n} not found")),
                Some(net) => match net.addressing.allocate() {
                    Ok(ip) => addresses.push((n.clone(), ip)),
                    Err(e) => fail = Some(e.to_string()),
                },
            }
            if fail.is_some() {
                break;
            }
        }
        if let Some(e) = fail {
            for (n, ip) in &addresses {
                if let Some(net) = self.cluster.networks.get_mut(n) {
                    let _ = net.addressing.release(*ip);
                }
            }
            return Err(e);
        }
        if let Some(t) = self.cluster.tasks.get_mut(id) {
            t.addresses = addresses;
        }
        Ok(())
    }

    /// Starts task `id` on this node, attached as `attach` says (its addresses are
    /// already allocated): a gateway-bridge address, its namespace, its command and DNS
    /// server. On failure the gateway-bridge address is given back; the caller gives back
    /// the rest.
    pub(super) fn start_task(&mut self, id: &str, attach: &[NetAttachment]) -> Result<(), String> {
        let Some(gw_ip) = self.local.gw_allocate() else {
            return Err("no address left on the gateway bridge".into());
        };
        let rec = self.cluster.tasks[id].clone();
        let mut attachments = Vec::new();
        let mut routes: Vec<Vec<String>> = Vec::new();
        for (i, net) in attach.iter().enumerate() {
            let ip = &net.ip;
            attachments.push(Attachment {
                bridge: net.bridge(),
                ip: *ip,
                prefix: net.subnet.prefix(),
                mac: swarmgate_dataplane::wire::EthernetAddress::from_ipv4_docker(*ip),
                mtu: net.mtu,
                isolated: true,
            });
            // Traffic from the task's address on an overlay leaves through that overlay's
            // gateway (the data plane): replies to published-port clients keep their path.
            let table = (100 + i).to_string();
            let dev = format!("eth{i}");
            routes.push(
                [
                    "rule",
                    "add",
                    "from",
                    &ip.to_string(),
                    "table",
                    &table,
                    "priority",
                    &table,
                ]
                .map(String::from)
                .to_vec(),
            );
            // A UDP server bound to every address answers from the address the route
            // to the client gives (the gateway bridge's), not the one it was reached at,
            // so the rule by source misses it: its published ports' replies are routed by
            // source port instead (fib rules match `ipproto`/`sport` on locally sent
            // packets, Linux 4.17+), all but those to the task's own overlays (rules
            // below, priority 80). Docker has no such rule: its ingress translates the
            // client's address to one on the ingress network.
            for port in &net.udp_published {
                routes.push(
                    [
                        "rule",
                        "add",
                        "ipproto",
                        "udp",
                        "sport",
                        &port.to_string(),
                        "table",
                        &table,
                        "priority",
                        "90",
                    ]
                    .map(String::from)
                    .to_vec(),
                );
            }
            routes.push(
                [
                    "route",
                    "add",
                    &net.subnet.to_string(),
                    "dev",
                    &dev,
                    "table",
                    &table,
                ]
                .map(String::from)
                .to_vec(),
            );
            routes.push(
                [
                    "route",
                    "add",
                    "default",
                    "via",
                    &net.gateway.to_string(),
                    "dev",
                    &dev,
                    "table",
                    &table,
                ]
                .map(String::from)
                .to_vec(),
            );
        }
        if attach.iter().any(|n| !n.udp_published.is_empty()) {
            // Replies to the task's own overlays (VIP and task clients there) keep the
            // main table's routes, ahead of the published UDP ports' rules.
            for net in attach {
                routes.push(
                    [
                        "rule",
                        "add",
                        "to",
                        &net.subnet.to_string(),
                        "lookup",
                        "main",
                        "priority",
                        "80",
                    ]
                    .map(String::from)
                    .to_vec(),
                );
            }
        }
        let gw_dev = format!("eth{}", attachments.len());
        attachments.push(Attachment {
            bridge: GWBRIDGE.into(),
            ip: gw_ip,
            prefix: GWBRIDGE_PREFIX,
            mac: swarmgate_dataplane::wire::EthernetAddress::from_ipv4_docker(gw_ip),
            mtu: 1500,
            isolated: false,
        });
        routes.push(
            [
                "route",
                "add",
                "default",
                "via",
                &GWBRIDGE_GW.to_string(),
                "dev",
                &gw_dev,
            ]
            .map(String::from)
            .to_vec(),
        );
        let full_name = rec.full_name();
        let mut env = vec![
            ("SWARMGATE_TASK_ID".to_string(), rec.id.clone()),
            ("SWARMGATE_TASK_NAME".to_string(), full_name.clone()),
            ("HOSTNAME".to_string(), full_name.clone()),
        ];
        if let Some(s) = &rec.service {
            env.push(("SWARMGATE_SERVICE_NAME".into(), s.clone()));
            env.push(("SWARMGATE_TASK_SLOT".into(), rec.slot.to_string()));
        }
        let _ = std::fs::create_dir_all(self.cfg.data_root.join("logs"));
        let spec = TaskSpec {
            id: rec.id.clone(),
            command: if rec.service.is_some() || rec.detached {
                rec.command.clone()
            } else {
                Vec::new()
            },
            attachments,
            nameserver: DNS_ADDR,
            host_ns: None,
            log: Some(self.log_path(&rec.id)),
            env,
            workdir: Some(self.cfg.data_root.join("tasks").join(&rec.id)),
            routes,
        };
        let task = match Task::start(spec.clone()) {
            Ok(t) => t,
            Err(e) => {
                self.local.gw_release(gw_ip);
                return Err(e.to_string());
            }
        };
        let ns = task.namespace().to_owned();
        let pid = task
            .pid()
            .and_then(|p| process_start_time(p).map(|(s, _)| (p, s)));
        self.running.insert(rec.id.clone(), task);
        let dns_nets: Vec<String> = attach.iter().map(|a| a.network.clone()).collect();
        self.start_dns(&rec.id, &ns, dns_nets);
        self.local
            .tasks
            .insert(id.to_owned(), LocalTask { spec, pid, gw_ip });
        let t = self.cluster.tasks.get_mut(id).expect("exists");
        t.addresses = attach.iter().map(|a| (a.network.clone(), a.ip)).collect();
        t.status = TStatus::Running;
        t.changed = now();
        Ok(())
    }

    pub(super) fn start_dns(&mut self, id: &str, ns: &str, nets: Vec<String>) {
        let _g = self.rt.enter();
        match self.dns.serve(ns, nets) {
            Ok(h) => {
                self.dns_servers.insert(id.to_owned(), h);
            }
            Err(e) => tracing::warn!(endpoint = %id, "DNS server: {e:#}"),
        }
    }

    /// Records `status` for task `id` and stops it: SIGTERM, up to 3 s, SIGKILL, then its
    /// namespace and veths go — all of that on a blocking thread, never under the state
    /// lock. Its addresses stay taken until then (so no new task gets an address its old
    /// namespace still holds) and are given back by [`Daemon::reap_stopped`].
    pub(super) fn stop_task(&mut self, id: &str, status: TStatus) {
        if let Some(t) = self.cluster.tasks.get(id).filter(|t| t.live()) {
            tracing::info!(
                service = t.service.as_deref().unwrap_or(""),
                task = %id,
                status = status.word(),
                "task stopping"
            );
        }
        if let Some(h) = self.dns_servers.remove(id) {
            h.abort();
        }
        let was_live = self.cluster.tasks.get(id).is_some_and(|t| t.live());
        let held = if was_live {
            self.held(id)
        } else {
            Held::default()
        };
        self.local.tasks.remove(id);
        match self.running.remove(id) {
            Some(t) => {
                let h = self.rt.spawn_blocking(move || {
                    t.stop(Duration::from_secs(3));
                });
                self.stopping.push((h, held));
            }
            None => self.release_held(&held),
        }
        if let Some(t) = self.cluster.tasks.get_mut(id) {
            t.desired = Desired::Shutdown;
            if t.live() {
                t.status = status;
                t.changed = now();
            }
        }
    }

    /// What task `id` holds (see [`Held`]).
    fn held(&self, id: &str) -> Held {
        let Some(t) = self.cluster.tasks.get(id) else {
            return Held::default();
        };
        Held {
            id: id.to_owned(),
            swarm: self.me().map(|m| m.cluster_id.clone()),
            addresses: t
                .addresses
                .iter()
                .filter_map(|(net, ip)| {
                    self.cluster
                        .network_meta
                        .get(net)
                        .map(|m| (net.clone(), m.id.clone(), *ip))
                })
                .collect(),
            gw_ip: self.local.tasks.get(id).map(|l| l.gw_ip),
        }
    }

    /// Gives back what [`Daemon::held`] recorded, where the network (and the swarm) is
    /// still the same one: an address of a network removed and created again meanwhile
    /// may belong to somebody else now.
    fn release_held(&mut self, h: &Held) {
        for (net, id, ip) in &h.addresses {
            if self
                .cluster
                .network_meta
                .get(net)
                .is_some_and(|m| m.id == *id)
            {
                if let Some(n) = self.cluster.networks.get_mut(net) {
                    let _ = n.addressing.release(*ip);
                }
            }
        }
        let same_swarm = self.me().map(|m| &m.cluster_id) == h.swarm.as_ref();
        if let (Some(g), true) = (h.gw_ip, same_swarm) {
            self.local.gw_release(g);
        }
    }

    /// Gives back the addresses of tasks whose stop has finished; true if any did.
    pub(super) fn reap_stopped(&mut self) -> bool {
        let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stopping)
            .into_iter()
            .partition(|(h, _)| h.is_finished());
        self.stopping = pending;
        for (_, held) in &done {
            self.release_held(held);
        }
        if !done.is_empty() {
            self.reports.notify_one(); // a worker reports the stops now finished
        }
        !done.is_empty()
    }

    /// After a restart: adopts every task whose process still runs (and endpoint whose
    /// namespace is still there), restarts their DNS servers; the others are recorded as
    /// failed, cleaned up, and replaced by the reconcile loop.
    pub(super) fn restore(&mut self) -> anyhow::Result<()> {
        if self.me().is_some() {
            Self::ensure_gwbridge()?;
        }
        let live: Vec<TaskRecord> = self
            .cluster
            .tasks
            .values()
            .filter(|t| t.live())
            .cloned()
            .collect();
        let me = self.my_id().map(str::to_owned);
        for t in live {
            let Some(l) = self.local.tasks.get(&t.id).cloned() else {
                continue; // another node's (or a worker's assignment, not started)
            };
            let ns_exists = std::path::Path::new("/run/netns")
                .join(Task::namespace_of(&t.id))
                .exists();
            let alive = match (l.spec.command.is_empty(), l.pid) {
                (true, _) => ns_exists,
                (false, Some((pid, start))) => {
                    ns_exists && matches!(process_start_time(pid), Some((s, true)) if s == start)
                }
                (false, None) => false,
            };
            let task = Task::adopt(l.spec, l.pid);
            if alive {
                self.running.insert(t.id.clone(), task);
                let nets = t.addresses.iter().map(|(n, _)| n.clone()).collect();
                self.start_dns(&t.id, &Task::namespace_of(&t.id), nets);
            } else {
                task.stop(Duration::from_millis(100));
                self.local.tasks.remove(&t.id);
                self.local.gw_release(l.gw_ip);
                // On a manager its addresses are the cluster's to give back; a worker
                // reports the failure and its manager gives them back.
                if me.as_deref() == Some(t.node.as_str()) && self.leads() {
                    self.cluster.release_addresses(&t.id);
                }
                let r = self.cluster.tasks.get_mut(&t.id).expect("exists");
                r.status = TStatus::Failed;
                r.desired = Desired::Shutdown;
                r.error = Some("task ended while the daemon was stopped".into());
                r.changed = now();
            }
        }
        Ok(())
    }

    /// Leaves every task running for the next daemon and saves the state; tasks being
    /// stopped are waited for (3 s at most each, in parallel) and their addresses freed.
    pub(super) fn shutdown(&mut self) {
        for (h, held) in std::mem::take(&mut self.stopping) {
            let _ = self.rt.block_on(h);
            self.release_held(&held);
        }
        for (_, h) in self.dns_servers.drain() {
            h.abort();
        }
        for (id, t) in self.running.drain() {
            let p = t.detach();
            if let Some(l) = self.local.tasks.get_mut(&id) {
                if p.is_some() {
                    l.pid = p;
                }
            }
        }
        if let Err(e) = self.store.save(&self.cluster, &self.local) {
            tracing::error!("saving state at exit: {e:#}");
        }
    }
}
