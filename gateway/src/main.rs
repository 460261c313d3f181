//! `swarmgate`: one binary for everything. `daemon` runs the control plane with the DPDK
//! gateway; the docker-style verbs (`swarm`, `network`, `service`, `run`, `exec`, ...) talk
//! to it over its Unix socket; `gateway -c FILE` runs the data plane alone from static
//! tables (interop tests with the kernel's VXLAN).

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use swarmgate_gateway::config::Config;
use swarmgate_gateway::Gateway;

#[derive(Parser)]
#[command(
    name = "swarmgate",
    version,
    about = "DPDK-accelerated overlay network gateway"
)]
struct Cli {
    /// The daemon's API socket.
    #[arg(long, short = 'H', global = true, default_value = swarmgate_control::cli::DEFAULT_SOCKET, env = "SWARMGATE_SOCKET")]
    host: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the DPDK gateway from a configuration file until SIGINT/SIGTERM.
    Gateway {
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Write counters as JSON to this file every second (and at exit).
        #[arg(long)]
        stats: Option<PathBuf>,
        /// Sleep this many microseconds when a worker finds nothing to do for a while
        /// (0: pure polling, for dedicated cores).
        #[arg(long, default_value_t = 0)]
        idle_sleep_us: u64,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the daemon: control plane, DPDK gateway and API, until SIGINT/SIGTERM.
    Daemon {
        /// The TOML configuration ([dpdk] and [underlay]; networks come from the API).
        #[arg(long, short)]
        config: PathBuf,
        /// State, task logs and task working directories.
        #[arg(long, default_value = "/var/lib/swarmgate")]
        data_root: PathBuf,
        /// Sleep this many microseconds when a worker finds nothing to do for a while.
        #[arg(long, default_value_t = 50)]
        idle_sleep_us: u64,
        /// Forward names the embedded DNS does not know to this resolver (IP:PORT)
        /// instead of those in /etc/resolv.conf.
        #[arg(long)]
        dns_upstream: Option<std::net::SocketAddr>,
        /// Logging level (`RUST_LOG`, when set, takes precedence and may name modules).
        #[arg(short = 'l', long, default_value = "info",
              value_parser = ["trace", "debug", "info", "warn", "error"])]
        log_level: String,
    },
    #[command(flatten)]
    Client(swarmgate_control::cli::ClientCmd),
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("swarmgate: {e:#}");
        std::process::exit(1);
    }
}

/// Logs to stderr through `tracing`: `RUST_LOG` if set, else `level`. One line per event,
/// with the event's fields (node, service, task, peer, ...).
fn init_logs(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            tracing_subscriber::EnvFilter::try_new(v).context("RUST_LOG")?
        }
        // The DNS server library logs every query at info: never per packet here.
        _ => tracing_subscriber::EnvFilter::try_new(format!(
            "{level},hickory_server=warn,hickory_proto=warn,openraft=error"
        ))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    Ok(())
}

fn write_stats(path: &Option<PathBuf>, gw: &Gateway) -> anyhow::Result<()> {
    if let Some(p) = path {
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&gw.stats())?)?;
        std::fs::rename(&tmp, p)?;
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Client(c) => {
            let code = swarmgate_control::cli::run(c, &cli.host)?;
            std::process::exit(code);
        }
        Cmd::Daemon {
            config,
            data_root,
            idle_sleep_us,
            dns_upstream,
            log_level,
        } => {
            init_logs(&log_level)?;
            let cfg = Config::load(&config)?;
            if !cfg.networks.is_empty() || !cfg.peers.is_empty() {
                anyhow::bail!(
                    "{}: the daemon takes networks from its API; remove [[network]] and [[peer]]",
                    config.display()
                );
            }
            if cfg.dpdk.cores.len() > 1 {
                // Connection tables are per worker, and nothing yet steers a connection's
                // reply to the worker that translated it: several workers would break VIP
                // and published-port connections, silently. Refused until that exists.
                anyhow::bail!(
                    "{}: the daemon runs one data-plane worker (dpdk.cores = [N]) until connections are steered between workers",
                    config.display()
                );
            }
            let gw = Gateway::start(cfg, Duration::from_micros(idle_sleep_us))?;
            swarmgate_control::daemon::run(
                swarmgate_control::daemon::DaemonConfig {
                    socket: cli.host,
                    data_root,
                    dns_upstream,
                },
                Box::new(gw),
            )
        }
        Cmd::CheckConfig { config } => {
            Config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Cmd::Gateway {
            config,
            stats,
            idle_sleep_us,
        } => {
            init_logs("info")?;
            let cfg = Config::load(&config)?;
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())
                    .context("installing signal handlers")?;
            }
            let mut gw = Gateway::start(cfg, Duration::from_micros(idle_sleep_us))?;
            for p in gw.ports() {
                println!(
                    "swarmgate: port {} {}{}",
                    p.id,
                    p.role,
                    p.iface
                        .as_ref()
                        .map(|i| format!(" ({i})"))
                        .unwrap_or_default()
                );
            }
            println!("swarmgate: gateway running");
            let mut last_stats = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                gw.tick()?;
                if last_stats.elapsed() >= Duration::from_secs(1) {
                    write_stats(&stats, &gw)?;
                    last_stats = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            gw.stop();
            write_stats(&stats, &gw)?;
            println!("{}", serde_json::to_string(&gw.stats())?);
            println!("swarmgate: stopped");
            Ok(())
        }
    }
}
