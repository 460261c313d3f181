//! The docker-style verbs of the `swarmgate` binary: each is one call to the daemon over
//! its Unix socket, printed as docker prints it (tables for `ls`/`ps`, JSON for `inspect`,
//! `--format json` for one JSON object per line). Errors are one line on stderr and exit
//! status 1.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::api::{self, swarmgate_client::SwarmgateClient};

/// The default API socket (like `/var/run/docker.sock`).
pub const DEFAULT_SOCKET: &str = "/run/swarmgate/swarmgate.sock";

/// Client verbs.
#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// Manage the swarm.
    #[command(subcommand)]
    Swarm(SwarmCmd),
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Manage services.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Create a standalone endpoint on attachable networks and run a command in it.
    Run(RunArgs),
    /// Run a command inside an endpoint (container name, task id or task name).
    Exec {
        /// The endpoint.
        name: String,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove standalone endpoints.
    Rm {
        /// Stop a running one first.
        #[arg(short, long)]
        force: bool,
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List standalone endpoints.
    Ps {
        /// `json`: one JSON object per line.
        #[arg(long)]
        format: Option<String>,
    },
    /// Data-plane counters as JSON.
    Stats,
}

/// `swarm` verbs.
#[derive(Debug, Subcommand)]
pub enum SwarmCmd {
    /// Make this node a manager of a new swarm.
    Init {
        /// Address other nodes reach this one at.
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Address for data-path (VXLAN) traffic.
        #[arg(long, alias = "data-path-addr")]
        datapath_addr: Option<String>,
        /// Listen address for the cluster API (TCP 2377, mutual TLS).
        #[arg(long, default_value = "0.0.0.0:2377")]
        listen_addr: String,
        /// Address pools for overlay subnets (repeatable; 10.0.0.0/8 by default).
        #[arg(long = "default-addr-pool")]
        default_addr_pool: Vec<String>,
        /// Subnet size cut from the pools (24 by default, at most 29).
        #[arg(long, default_value_t = 0)]
        default_addr_pool_mask_length: u32,
        /// The VXLAN UDP port for the whole swarm (4789 by default; 1024-49151).
        #[arg(long, default_value_t = 0)]
        data_path_port: u32,
        /// How often nodes send heartbeats (5s by default; 1s to 1h). A node is Down
        /// after three periods without one.
        #[arg(long, value_parser = humantime::parse_duration)]
        dispatcher_heartbeat: Option<std::time::Duration>,
        /// Raft log entries between snapshots (10000 by default).
        #[arg(long, default_value_t = 0)]
        snapshot_interval: u64,
        /// On a manager of a swarm that lost its quorum: start a new Raft group of this
        /// manager alone, from the state it holds.
        #[arg(long)]
        force_new_cluster: bool,
    },
    /// Join a swarm as a node (the token decides the role).
    Join {
        /// The join token (`swarm join-token` on a manager prints it).
        #[arg(long)]
        token: String,
        /// Address other nodes reach this one at.
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Address for data-path (VXLAN) traffic.
        #[arg(long, alias = "data-path-addr")]
        datapath_addr: Option<String>,
        /// Listen address for the cluster API, should this node become a manager.
        #[arg(long, default_value = "0.0.0.0:2377")]
        listen_addr: String,
        /// A manager's address, `HOST[:PORT]` (port 2377 by default).
        remote: String,
    },
    /// Show or rotate the join token for a role.
    JoinToken {
        /// Only print the token.
        #[arg(short, long)]
        quiet: bool,
        /// Replace the token: the old one stops working at once.
        #[arg(long)]
        rotate: bool,
        /// worker or manager.
        role: String,
    },
    /// Change the swarm's settings.
    Update {
        /// Validity of node certificates issued from now on (e.g. 2160h, 90d; at least 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        cert_expiry: Option<std::time::Duration>,
        /// How often nodes send heartbeats (1s to 1h; Down after three periods without).
        #[arg(long, value_parser = humantime::parse_duration)]
        dispatcher_heartbeat: Option<std::time::Duration>,
        /// Raft log entries between snapshots.
        #[arg(long, default_value_t = 0)]
        snapshot_interval: u64,
        /// Add a gossip key now (it becomes the one messages are sealed with 10 s later;
        /// the leader adds one every 12 h anyway).
        #[arg(long)]
        rotate_gossip_key: bool,
        /// How often the leader rotates the datapath keys of encrypted networks (10s to
        /// 1 year; 12h by default).
        #[arg(long, value_parser = humantime::parse_duration)]
        datapath_key_rotation: Option<std::time::Duration>,
        /// Rotate the datapath keys now (the newest key is encrypted with from the
        /// rotation after).
        #[arg(long)]
        rotate_datapath_key: bool,
    },
    /// Leave the swarm (the last manager needs --force; removes everything).
    Leave {
        /// Required on the last manager.
        #[arg(short, long)]
        force: bool,
    },
}

/// `node` verbs.
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes.
    Ls {
        /// `json`: one JSON object per line.
        #[arg(long)]
        format: Option<String>,
        /// Only the nodes that match, `KEY=VALUE`: `role` (manager or worker), `name`
        /// (host name prefix), `id` (ID prefix). As docker: values of one key are
        /// alternatives, different keys all apply.
        #[arg(short, long = "filter")]
        filter: Vec<String>,
    },
    /// Show nodes in detail (JSON).
    Inspect {
        /// IDs, ID prefixes or host names.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node: availability, labels.
    Update {
        /// active, pause (no new tasks) or drain (its service tasks stop; none start).
        #[arg(long)]
        availability: Option<String>,
        /// Add or change a label, KEY=VALUE.
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove a label, KEY.
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        /// ID, ID prefix or host name.
        node: String,
    },
    /// Make nodes managers (they join the Raft group).
    Promote {
        /// IDs, ID prefixes or host names.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers (they leave the Raft group).
    Demote {
        /// IDs, ID prefixes or host names.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the swarm (a node that is not down needs --force).
    Rm {
        /// Remove even a node that is up.
        #[arg(short, long)]
        force: bool,
        /// IDs, ID prefixes or host names.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// `network` verbs.
#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a network.
    Create {
        /// Driver (overlay).
        #[arg(short, long, default_value = "overlay")]
        driver: String,
        /// Standalone endpoints may attach.
        #[arg(long)]
        attachable: bool,
        /// The routing-mesh network.
        #[arg(long)]
        ingress: bool,
        /// Subnet in CIDR form.
        #[arg(long)]
        subnet: Option<String>,
        /// Gateway address.
        #[arg(long)]
        gateway: Option<String>,
        /// Driver options: `encrypted`, `com.docker.network.driver.mtu=N`.
        #[arg(short = 'o', long = "opt")]
        opt: Vec<String>,
        /// Name.
        name: String,
    },
    /// List networks.
    Ls {
        /// `json`: one JSON object per line.
        #[arg(long)]
        format: Option<String>,
    },
    /// Show networks as JSON.
    Inspect {
        /// Names or ids.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks.
    Rm {
        /// Names or ids.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `service create` arguments.
#[derive(Debug, Args)]
pub struct ServiceCreateArgs {
    /// Name.
    #[arg(long)]
    name: String,
    /// Number of tasks.
    #[arg(long)]
    replicas: Option<u32>,
    /// `replicated` or `global`.
    #[arg(long)]
    mode: Option<String>,
    /// Networks to attach.
    #[arg(long = "network")]
    networks: Vec<String>,
    /// Published ports.
    #[arg(short, long)]
    publish: Vec<String>,
    /// `vip` or `dnsrr`.
    #[arg(long)]
    endpoint_mode: Option<String>,
    /// Placement constraints (`node.role==manager`, `node.labels.zone!=east`, ...).
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// At most this many tasks of the service on one node.
    #[arg(long, default_value_t = 0)]
    replicas_max_per_node: u64,
    /// The command each task runs (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

/// `service` verbs.
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a service.
    Create(ServiceCreateArgs),
    /// List services.
    Ls {
        /// `json`: one JSON object per line.
        #[arg(long)]
        format: Option<String>,
    },
    /// List a service's tasks.
    Ps {
        /// `json`: one JSON object per line.
        #[arg(long)]
        format: Option<String>,
        /// Services.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show services as JSON.
    Inspect {
        /// Services.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Set services' replica counts (`SERVICE=REPLICAS ...`).
    Scale {
        /// `SERVICE=REPLICAS` pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Change a service.
    Update {
        /// New replica count.
        #[arg(long)]
        replicas: Option<u32>,
        /// Attach a network.
        #[arg(long)]
        network_add: Vec<String>,
        /// Detach a network.
        #[arg(long)]
        network_rm: Vec<String>,
        /// Publish a port.
        #[arg(long)]
        publish_add: Vec<String>,
        /// Unpublish a port (`PUBLISHED[/PROTOCOL]`).
        #[arg(long)]
        publish_rm: Vec<String>,
        /// Service.
        name: String,
    },
    /// Remove services.
    Rm {
        /// Services.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print the tasks' output.
    Logs {
        /// Service.
        name: String,
    },
}

/// `run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run in the background (the daemon runs the command).
    #[arg(short, long)]
    detach: bool,
    /// Remove the container when its command exits (foreground only).
    #[arg(long, conflicts_with = "detach")]
    rm: bool,
    /// Name.
    #[arg(long)]
    name: String,
    /// Attachable networks.
    #[arg(long = "network", required = true)]
    networks: Vec<String>,
    /// Command (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

/// `node ls --filter` as docker reads it (`role`, `name`, `id`): a predicate over a row,
/// or a one-line error for an unknown key or role.
fn node_filter(filters: &[String]) -> anyhow::Result<impl Fn(&api::Node) -> bool> {
    let mut checks: Vec<(String, String)> = Vec::new();
    for f in filters {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("bad format of filter (expected name=value): {f}"))?;
        match k {
            "role" if v == "manager" || v == "worker" => {}
            "role" => anyhow::bail!("Invalid role '{v}': only manager and worker"),
            "name" | "id" => {}
            _ => anyhow::bail!("Invalid filter '{k}'"),
        }
        checks.push((k.to_owned(), v.to_owned()));
    }
    Ok(move |n: &api::Node| {
        ["role", "name", "id"].iter().all(|key| {
            let mut values = checks.iter().filter(|(k, _)| k == key).peekable();
            values.peek().is_none()
                || values.any(|(_, v)| match *key {
                    "role" => (v == "manager") == !n.manager_status.is_empty(),
                    "name" => n.hostname.starts_with(v.as_str()),
                    _ => n.id.starts_with(v.as_str()),
                })
        })
    })
}

async fn connect(socket: &Path) -> anyhow::Result<SwarmgateClient<Channel>> {
    let path = socket.to_path_buf();
    let ch = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "Cannot connect to the swarmgate daemon at unix://{}. Is the swarmgate daemon running?",
                socket.display()
            )
        })?;
    Ok(SwarmgateClient::new(ch))
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("Error response from daemon: {}", e.message())
}

/// A command as a table shows it (docker's `ps` without `--no-trunc`): one line, runs of
/// whitespace as one space, at most 40 characters (cut with `…`).
fn short_command(c: &str) -> String {
    let one: String = c.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= 40 {
        return one;
    }
    let mut cut: String = one.chars().take(39).collect();
    cut.push('…');
    cut
}

fn table(rows: Vec<Vec<String>>) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut w = vec![0; cols];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<width$}   ", width = w[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

fn json_lines(format: &Option<String>) -> anyhow::Result<bool> {
    match format.as_deref() {
        None | Some("table") => Ok(false),
        Some("json") | Some("{{json .}}") => Ok(true),
        Some(f) => anyhow::bail!("unsupported --format {f:?}: json or table"),
    }
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Runs a client verb; returns the exit status.
pub fn run(cmd: ClientCmd, socket: &Path) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(cmd, socket.to_path_buf()))
}

async fn run_async(cmd: ClientCmd, socket: PathBuf) -> anyhow::Result<i32> {
    // Validation that needs no daemon first: a wrong flag is an error even when it is down.
    if let ClientCmd::Service(ServiceCmd::Create(a)) = &cmd {
        if a.command.is_empty() {
            anyhow::bail!("service create requires a command to run after --");
        }
    }
    let mut c = connect(&socket).await?;
    match cmd {
        ClientCmd::Swarm(SwarmCmd::Init {
            advertise_addr,
            datapath_addr,
            listen_addr,
            default_addr_pool,
            default_addr_pool_mask_length,
            data_path_port,
            dispatcher_heartbeat,
            snapshot_interval,
            force_new_cluster,
        }) => {
            let r = c
                .swarm_init(api::SwarmInitRequest {
                    advertise_addr: advertise_addr.unwrap_or_default(),
                    datapath_addr: datapath_addr.unwrap_or_default(),
                    listen_addr,
                    default_addr_pool,
                    default_addr_pool_mask_length,
                    data_path_port,
                    dispatcher_heartbeat_ms: heartbeat_ms(dispatcher_heartbeat),
                    snapshot_interval,
                    force_new_cluster,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "Swarm initialized: current node ({}) is now a manager.\n",
                r.node_id
            );
            println!("To add a worker to this swarm, run the following command:\n");
            println!(
                "    swarmgate swarm join --token {} {}:2377\n",
                r.worker_token, r.advertise_addr
            );
            println!("To add a manager to this swarm, run the following command:\n");
            println!(
                "    swarmgate swarm join --token {} {}:2377\n",
                r.manager_token, r.advertise_addr
            );
        }
        ClientCmd::Swarm(SwarmCmd::Join {
            token,
            advertise_addr,
            datapath_addr,
            listen_addr,
            remote,
        }) => {
            let r = c
                .swarm_join(api::SwarmJoinRequest {
                    remote_addr: remote,
                    token,
                    advertise_addr: advertise_addr.unwrap_or_default(),
                    datapath_addr: datapath_addr.unwrap_or_default(),
                    listen_addr,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("This node joined a swarm as a {}.", r.role);
        }
        ClientCmd::Swarm(SwarmCmd::JoinToken {
            quiet,
            rotate,
            role,
        }) => {
            let r = c
                .swarm_join_token(api::JoinTokenRequest {
                    role: role.clone(),
                    rotate,
                })
                .await
                .map_err(status)?
                .into_inner();
            if quiet {
                println!("{}", r.token);
            } else {
                if rotate {
                    println!("Successfully rotated {role} join token.\n");
                }
                println!("To add a {role} to this swarm, run the following command:\n");
                println!(
                    "    swarmgate swarm join --token {} {}\n",
                    r.token, r.manager_addr
                );
            }
        }
        ClientCmd::Swarm(SwarmCmd::Leave { force }) => {
            c.swarm_leave(api::SwarmLeaveRequest { force })
                .await
                .map_err(status)?;
            println!("Node left the swarm.");
        }
        ClientCmd::Swarm(SwarmCmd::Update {
            cert_expiry,
            dispatcher_heartbeat,
            snapshot_interval,
            rotate_gossip_key,
            datapath_key_rotation,
            rotate_datapath_key,
        }) => {
            c.swarm_update(api::SwarmUpdateRequest {
                cert_expiry_secs: cert_expiry.map_or(0, |d| d.as_secs().max(1)),
                dispatcher_heartbeat_ms: heartbeat_ms(dispatcher_heartbeat),
                snapshot_interval,
                rotate_gossip_key,
                datapath_key_rotation_secs: datapath_key_rotation.map_or(0, |d| d.as_secs().max(1)),
                rotate_datapath_key,
            })
            .await
            .map_err(status)?;
            println!("Swarm updated.");
        }
        ClientCmd::Node(NodeCmd::Inspect { nodes }) => {
            let r = c
                .node_inspect(api::NamesRequest { names: nodes })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", r.json);
        }
        ClientCmd::Node(NodeCmd::Update {
            availability,
            label_add,
            label_rm,
            node,
        }) => {
            c.node_update(api::NodeUpdateRequest {
                name: node.clone(),
                availability: availability.unwrap_or_default(),
                label_add,
                label_rm,
                role: String::new(),
            })
            .await
            .map_err(status)?;
            println!("{node}");
        }
        ClientCmd::Node(NodeCmd::Promote { nodes }) => {
            for node in nodes {
                c.node_update(api::NodeUpdateRequest {
                    name: node.clone(),
                    role: "manager".into(),
                    ..Default::default()
                })
                .await
                .map_err(status)?;
                println!("Node {node} promoted to a manager in the swarm.");
            }
        }
        ClientCmd::Node(NodeCmd::Demote { nodes }) => {
            for node in nodes {
                c.node_update(api::NodeUpdateRequest {
                    name: node.clone(),
                    role: "worker".into(),
                    ..Default::default()
                })
                .await
                .map_err(status)?;
                println!("Manager {node} demoted in the swarm.");
            }
        }
        ClientCmd::Node(NodeCmd::Rm { force, nodes }) => {
            c.node_remove(api::NodeRemoveRequest {
                names: nodes.clone(),
                force,
            })
            .await
            .map_err(status)?;
            for n in nodes {
                println!("{n}");
            }
        }
        ClientCmd::Node(NodeCmd::Ls { format, filter }) => {
            let keep = node_filter(&filter)?;
            let mut r = c
                .node_list(api::Empty {})
                .await
                .map_err(status)?
                .into_inner();
            r.nodes.retain(|n| keep(n));
            if json_lines(&format)? {
                for n in r.nodes {
                    println!(
                        "{}",
                        serde_json::json!({"ID": n.id, "Hostname": n.hostname, "Status": n.status,
                            "Availability": n.availability, "ManagerStatus": n.manager_status,
                            "EngineVersion": n.engine_version, "Self": n.self_, "Addr": n.addr})
                    );
                }
            } else {
                let mut rows = vec![[
                    "ID",
                    "HOSTNAME",
                    "STATUS",
                    "AVAILABILITY",
                    "MANAGER STATUS",
                    "ENGINE VERSION",
                ]
                .map(String::from)
                .to_vec()];
                for n in r.nodes {
                    rows.push(vec![
                        format!("{}{}", n.id, if n.self_ { " *" } else { "" }),
                        n.hostname,
                        n.status,
                        n.availability,
                        n.manager_status,
                        n.engine_version,
                    ]);
                }
                table(rows);
            }
        }
        ClientCmd::Network(NetworkCmd::Create {
            driver,
            attachable,
            ingress,
            subnet,
            gateway,
            opt,
            name,
        }) => {
            let r = c
                .network_create(api::NetworkCreateRequest {
                    name,
                    driver,
                    attachable,
                    ingress,
                    subnet: subnet.unwrap_or_default(),
                    gateway: gateway.unwrap_or_default(),
                    options: opt,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", r.id);
        }
        ClientCmd::Network(NetworkCmd::Ls { format }) => {
            let r = c
                .network_list(api::Empty {})
                .await
                .map_err(status)?
                .into_inner();
            if json_lines(&format)? {
                for n in r.networks {
                    println!(
                        "{}",
                        serde_json::json!({"ID": short(&n.id), "Name": n.name, "Driver": n.driver,
                            "Scope": n.scope, "Subnet": n.subnet, "VNI": n.vni})
                    );
                }
            } else {
                let mut rows = vec![["NETWORK ID", "NAME", "DRIVER", "SCOPE"]
                    .map(String::from)
                    .to_vec()];
                for n in r.networks {
                    rows.push(vec![short(&n.id), n.name, n.driver, n.scope]);
                }
                table(rows);
            }
        }
        ClientCmd::Network(NetworkCmd::Inspect { names }) => {
            let r = c
                .network_inspect(api::NamesRequest { names })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", r.json);
        }
        ClientCmd::Network(NetworkCmd::Rm { names }) => {
            c.network_remove(api::NamesRequest {
                names: names.clone(),
            })
            .await
            .map_err(status)?;
            for n in names {
                println!("{n}");
            }
        }
        ClientCmd::Service(ServiceCmd::Create(a)) => {
            let r = c
                .service_create(api::ServiceCreateRequest {
                    name: a.name,
                    replicas: a.replicas.unwrap_or(0),
                    replicas_set: a.replicas.is_some(),
                    mode: a.mode.unwrap_or_default(),
                    networks: a.networks,
                    publish: a.publish,
                    endpoint_mode: a.endpoint_mode.unwrap_or_default(),
                    command: a.command,
                    constraints: a.constraints,
                    replicas_max_per_node: a.replicas_max_per_node,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", r.id);
        }
        ClientCmd::Service(ServiceCmd::Ls { format }) => {
            let r = c
                .service_list(api::Empty {})
                .await
                .map_err(status)?
                .into_inner();
            if json_lines(&format)? {
                for s in r.services {
                    println!(
                        "{}",
                        serde_json::json!({"ID": short(&s.id), "Name": s.name, "Mode": s.mode,
                            "Replicas": format!("{}/{}", s.running, s.desired),
                            "Command": s.command, "Ports": s.ports.join(", ")})
                    );
                }
            } else {
                let mut rows = vec![["ID", "NAME", "MODE", "REPLICAS", "COMMAND", "PORTS"]
                    .map(String::from)
                    .to_vec()];
                for s in r.services {
                    rows.push(vec![
                        short(&s.id),
                        s.name,
                        s.mode,
                        format!("{}/{}", s.running, s.desired),
                        short_command(&s.command),
                        s.ports.join(", "),
                    ]);
                }
                table(rows);
            }
        }
        ClientCmd::Service(ServiceCmd::Ps { format, names }) => {
            let r = c
                .service_ps(api::NamesRequest { names })
                .await
                .map_err(status)?
                .into_inner();
            if json_lines(&format)? {
                for t in r.tasks {
                    println!(
                        "{}",
                        serde_json::json!({"ID": t.id, "Name": t.name, "Node": t.node,
                            "DesiredState": t.desired_state, "CurrentState": t.current_state,
                            "Error": t.error, "Addresses": t.addresses})
                    );
                }
            } else {
                let mut rows = vec![[
                    "ID",
                    "NAME",
                    "NODE",
                    "DESIRED STATE",
                    "CURRENT STATE",
                    "ERROR",
                ]
                .map(String::from)
                .to_vec()];
                for t in r.tasks {
                    let name = if t.history {
                        format!(" \\_ {}", t.name)
                    } else {
                        t.name
                    };
                    rows.push(vec![
                        t.id,
                        name,
                        t.node,
                        t.desired_state,
                        t.current_state,
                        t.error,
                    ]);
                }
                table(rows);
            }
        }
        ClientCmd::Service(ServiceCmd::Inspect { names }) => {
            let r = c
                .service_inspect(api::NamesRequest { names })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", r.json);
        }
        ClientCmd::Service(ServiceCmd::Update {
            replicas,
            network_add,
            network_rm,
            publish_add,
            publish_rm,
            name,
        }) => {
            c.service_update(api::ServiceUpdateRequest {
                name: name.clone(),
                replicas: replicas.unwrap_or(0),
                replicas_set: replicas.is_some(),
                network_add,
                network_rm,
                publish_add,
                publish_rm,
            })
            .await
            .map_err(status)?;
            println!("{name}");
        }
        ClientCmd::Service(ServiceCmd::Scale { pairs }) => {
            // All checked before any changes, as docker does.
            let mut todo = Vec::new();
            for p in &pairs {
                let (name, n) = p.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!(
                        "invalid scale specifier '{p}'.\nSee 'swarmgate service scale --help'."
                    )
                })?;
                let n: u32 = n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("invalid replicas value {n}: invalid syntax"))?;
                todo.push((name.to_owned(), n));
            }
            for (name, n) in todo {
                c.service_update(api::ServiceUpdateRequest {
                    name: name.clone(),
                    replicas: n,
                    replicas_set: true,
                    ..Default::default()
                })
                .await
                .map_err(status)?;
                println!("{name} scaled to {n}");
            }
        }
        ClientCmd::Service(ServiceCmd::Rm { names }) => {
            c.service_remove(api::NamesRequest {
                names: names.clone(),
            })
            .await
            .map_err(status)?;
            for n in names {
                println!("{n}");
            }
        }
        ClientCmd::Service(ServiceCmd::Logs { name }) => {
            let mut s = c
                .service_logs(api::NamesRequest { names: vec![name] })
                .await
                .map_err(status)?
                .into_inner();
            while let Some(r) = s.message().await.map_err(status)? {
                for l in r.lines {
                    println!("{l}");
                }
            }
        }
        ClientCmd::Run(a) => {
            let detach = a.detach;
            let name = a.name.clone();
            if a.command.is_empty() {
                anyhow::bail!("run needs a command after --");
            }
            let r = c
                .container_run(api::ContainerRunRequest {
                    name: a.name,
                    networks: a.networks,
                    detach,
                    command: a.command.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if detach {
                println!("{}", r.id);
            } else {
                // Foreground: the command runs here, inside the endpoint, attached to this
                // terminal; its exit is reported to the daemon.
                // An exec that could not start is the command's failure (exit 127, as a
                // shell says), still reported, and still removed with --rm.
                let code = match exec_in(&r.namespace, &a.command).await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("swarmgate: {e}");
                        127
                    }
                };
                c.container_exited(api::ContainerExitedRequest {
                    name: name.clone(),
                    code,
                })
                .await
                .map_err(status)?;
                if a.rm {
                    c.container_remove(api::ContainerRemoveRequest {
                        names: vec![name],
                        force: false,
                    })
                    .await
                    .map_err(status)?;
                }
                return Ok(code);
            }
        }
        ClientCmd::Exec { name, command } => {
            let r = c
                .endpoint_lookup(api::NamesRequest { names: vec![name] })
                .await
                .map_err(status)?
                .into_inner();
            return exec_in(&r.namespace, &command).await;
        }
        ClientCmd::Rm { force, names } => {
            c.container_remove(api::ContainerRemoveRequest {
                names: names.clone(),
                force,
            })
            .await
            .map_err(status)?;
            for n in names {
                println!("{n}");
            }
        }
        ClientCmd::Ps { format } => {
            let r = c
                .container_list(api::Empty {})
                .await
                .map_err(status)?
                .into_inner();
            if json_lines(&format)? {
                for t in r.containers {
                    println!(
                        "{}",
                        serde_json::json!({"ID": t.id, "Names": t.name, "Command": t.command,
                            "Status": t.status, "Networks": t.networks.join(",")})
                    );
                }
            } else {
                let mut rows = vec![["CONTAINER ID", "NAME", "COMMAND", "STATUS", "NETWORKS"]
                    .map(String::from)
                    .to_vec()];
                for t in r.containers {
                    rows.push(vec![
                        t.id,
                        t.name,
                        short_command(&t.command),
                        t.status,
                        t.networks.join(","),
                    ]);
                }
                table(rows);
            }
        }
        ClientCmd::Stats => {
            let r = c.stats(api::Empty {}).await.map_err(status)?.into_inner();
            println!("{}", r.json);
        }
    }
    Ok(0)
}

/// Runs `command` inside namespace `ns` (with the endpoint's resolv.conf), attached to this
/// terminal; returns its exit status.
async fn exec_in(ns: &str, command: &[String]) -> anyhow::Result<i32> {
    let status = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(command)
        .status()
        .await?;
    Ok(status.code().unwrap_or(128 + 9))
}

/// A `--dispatcher-heartbeat` for the API: milliseconds, 0 when not given; a duration
/// that is not 0 never becomes 0 (the daemon refuses what is under a second).
fn heartbeat_ms(d: Option<std::time::Duration>) -> u64 {
    d.map_or(0, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}
