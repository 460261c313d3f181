//! The gateway's TOML configuration: static tables until the control plane (issue #4)
//! programs them. Every field is checked before anything is started; errors name the field.

use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;
use swarmgate_dataplane::esp::{DatapathKey, SenderIvs};
use swarmgate_dataplane::tables::docker_overlay_mtu;
use swarmgate_dataplane::wire::{EthernetAddress, Vni};

/// A configuration error: one clear line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {err}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        err: std::io::Error,
    },
    /// TOML syntax or an unknown/mistyped field.
    #[error("{0}")]
    Parse(String),
    /// A value that parses but is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// DPDK and worker settings.
    #[serde(default)]
    pub dpdk: DpdkConfig,
    /// The underlay NIC and this node's address.
    pub underlay: UnderlayConfig,
    /// Overlay networks on this node.
    #[serde(default, rename = "network")]
    pub networks: Vec<NetworkConfig>,
    /// Other nodes and their endpoints.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerConfig>,
    /// Datapath keys for encrypted networks.
    #[serde(default)]
    pub encryption: EncryptionConfig,
}

/// DPDK and worker settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpdkConfig {
    /// CPUs to run one poll-mode worker each on (pinned).
    #[serde(default = "default_cores")]
    pub cores: Vec<usize>,
    /// Use hugepages (reserved beforehand); otherwise `--no-huge`.
    #[serde(default)]
    pub hugepages: bool,
    /// Memory for DPDK in MiB.
    #[serde(default = "default_memory")]
    pub memory_mb: u32,
    /// `--file-prefix`, needed to run two DPDK processes on one machine.
    #[serde(default = "default_prefix")]
    pub file_prefix: String,
    /// Mbufs in the pool.
    #[serde(default = "default_mbufs")]
    pub mbufs: u32,
    /// Extra EAL arguments, passed as they are.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// The ports towards each network's bridge: `tap` (the default), or a veth pair polled
    /// with `af_xdp` or `af_packet` (see `local_port`).
    #[serde(default)]
    pub local_ports: crate::local_port::LocalPortKind,
}

fn default_cores() -> Vec<usize> {
    vec![0]
}
fn default_memory() -> u32 {
    256
}
fn default_prefix() -> String {
    "swarmgate".into()
}
fn default_mbufs() -> u32 {
    8191
}

impl Default for DpdkConfig {
    fn default() -> Self {
        DpdkConfig {
            cores: default_cores(),
            hugepages: false,
            memory_mb: default_memory(),
            file_prefix: default_prefix(),
            mbufs: default_mbufs(),
            extra_args: Vec::new(),
            local_ports: Default::default(),
        }
    }
}

/// The underlay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnderlayConfig {
    /// DPDK device: a virtual device's devargs (`net_af_packet0,iface=eth1`,
    /// `net_tap0,iface=...`) or a PCI address bound to vfio-pci (`0000:3b:00.0`).
    pub device: String,
    /// This node's underlay address with prefix length, e.g. `192.168.77.2/24`. DPDK owns the
    /// NIC; the kernel gets this address on the exception TAP.
    pub address: String,
    /// UDP port for VXLAN (Docker's `--data-path-port`, 1024–49151; 4789 by default).
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    /// Name of the kernel's exception TAP interface.
    #[serde(default = "default_exception")]
    pub exception_iface: String,
    /// Underlay MTU.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_vxlan_port() -> u16 {
    4789
}
fn default_exception() -> String {
    "sg-exc".into()
}
fn default_mtu() -> u16 {
    1500
}

/// One overlay network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Name.
    pub name: String,
    /// VNI (Docker allocates from 4096).
    pub vni: u32,
    /// `--opt encrypted`.
    #[serde(default)]
    pub encrypted: bool,
    /// The kernel bridge local endpoints attach to (created if missing).
    pub bridge: String,
    /// Overlay MTU; Docker's rule (underlay − 50, − 26 more rounded to 4 when encrypted) by
    /// default.
    pub mtu: Option<u16>,
    /// Endpoints behind this node's bridge.
    #[serde(default)]
    pub local: Vec<EndpointConfig>,
}

/// An endpoint: address and (by default Docker's `02:42` + address) MAC.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Overlay address.
    pub ip: Ipv4Addr,
    /// MAC; `02:42:` + the address bytes when absent.
    pub mac: Option<String>,
    /// Network name (peers' endpoints only).
    pub network: Option<String>,
}

/// Another node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its VTEP (underlay) address.
    pub vtep: Ipv4Addr,
    /// Its endpoints, each naming its network.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// A Docker Engine host (the Linux kernel's ESP) rather than a swarmgate node: its IVs
    /// carry a random salt per SA object, and Docker re-creates its SAs whenever the two
    /// nodes stop and start sharing an encrypted network, so its anti-replay state keeps a
    /// window per SA object (`swarmgate_dataplane::esp::receive`). Off by default.
    #[serde(default)]
    pub docker: bool,
}

impl PeerConfig {
    /// How this peer builds its ESP IVs.
    pub fn sender_ivs(&self) -> SenderIvs {
        if self.docker {
            SenderIvs::KernelSeqiv
        } else {
            SenderIvs::Epochs
        }
    }
}

/// Datapath keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Up to three keys, primary first: `{ key = "<32 hex digits>", tag = N }`.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// ICV length: 8 (Docker's), 12 or 16.
    pub icv: Option<usize>,
    /// Packets an outbound SA sends before it starts a new generation (fresh IV epoch,
    /// sequence numbers from 1); the whole 32-bit sequence space by default. Lower it only
    /// to watch rollover happen (at least 16).
    pub rekey_after_packets: Option<u32>,
    /// The file reserving this node's ESP sender epochs across restarts (see
    /// `swarmgate_dataplane::esp::epoch`); `/var/lib/swarmgate/esp-epoch-<address>` by
    /// default. Keep it on persistent storage.
    pub epoch_file: Option<std::path::PathBuf>,
}

/// One key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// 16 bytes as 32 hex digits.
    pub key: String,
    /// Its tag (Lamport time).
    pub tag: u32,
}

impl EndpointConfig {
    /// The endpoint's MAC.
    pub fn mac(&self) -> Result<EthernetAddress, ConfigError> {
        match &self.mac {
            Some(m) => m
                .parse()
                .map_err(|_| ConfigError::Invalid(format!("endpoint {}: bad MAC {m:?}", self.ip))),
            None => Ok(EthernetAddress::from_ipv4_docker(self.ip)),
        }
    }
}

impl NetworkConfig {
    /// The network's MTU.
    pub fn mtu(&self, underlay_mtu: u16) -> u16 {
        self.mtu
            .unwrap_or_else(|| docker_overlay_mtu(underlay_mtu, self.encrypted))
    }
}

impl Config {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.display().to_string(),
            err,
        })?;
        Config::parse(&text)
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse(e.to_string().trim().to_owned()))?;
        c.check()?;
        Ok(c)
    }

    /// Our address and prefix length.
    pub fn address(&self) -> Result<(Ipv4Addr, u8), ConfigError> {
        let bad = || {
            ConfigError::Invalid(format!(
                "underlay.address {:?} is not ADDRESS/PREFIX",
                self.underlay.address
            ))
        };
        let (a, p) = self.underlay.address.split_once('/').ok_or_else(bad)?;
        let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let p: u8 = p.parse().map_err(|_| bad())?;
        if !(1..=32).contains(&p) {
            return Err(bad());
        }
        Ok((a, p))
    }

    /// Where this node's ESP sender-epoch reservation lives.
    pub fn epoch_file(&self) -> std::path::PathBuf {
        match &self.encryption.epoch_file {
            Some(p) => p.clone(),
            None => {
                let addr = self
                    .address()
                    .map(|(a, _)| a)
                    .unwrap_or(Ipv4Addr::UNSPECIFIED);
                std::path::PathBuf::from(format!("/var/lib/swarmgate/esp-epoch-{addr}"))
            }
        }
    }

    /// The datapath keys, primary first.
    pub fn keys(&self) -> Result<Vec<DatapathKey>, ConfigError> {
        self.encryption
            .keys
            .iter()
            .map(|k| {
                let bytes = parse_hex(&k.key).filter(|b| b.len() == 16).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "encryption key with tag {} is not 32 hex digits",
                        k.tag
                    ))
                })?;
                Ok(DatapathKey {
                    key: bytes.try_into().expect("16 bytes"),
                    tag: k.tag,
                })
            })
            .collect()
    }

    /// True when the underlay is a DPDK virtual device (`net_...`), not a NIC.
    pub fn underlay_is_vdev(&self) -> bool {
        self.underlay.device.starts_with("net_")
    }

    fn check(&self) -> Result<(), ConfigError> {
        let inv = |s: String| Err(ConfigError::Invalid(s));
        self.address()?;
        if self.dpdk.cores.is_empty() {
            return inv("dpdk.cores must name at least one CPU".into());
        }
        if self.dpdk.local_ports == crate::local_port::LocalPortKind::AfXdp
            && !self.underlay_is_vdev()
        {
            // The af_xdp PMD's UMEM needs the packed mbuf pool, which a NIC's DMA cannot
            // use (see `Mempool::packed`).
            return inv(format!(
                "dpdk.local_ports = \"af_xdp\" needs a virtual underlay device (net_...), not {}",
                self.underlay.device
            ));
        }
        if !(1024..=49151).contains(&self.underlay.vxlan_port) {
            return inv(format!(
                "underlay.vxlan_port {} is outside 1024-49151",
                self.underlay.vxlan_port
            ));
        }
        if !(576..=9216).contains(&self.underlay.mtu) {
            return inv(format!(
                "underlay.mtu {} is outside 576-9216",
                self.underlay.mtu
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut vnis = std::collections::HashSet::new();
        for n in &self.networks {
            if Vni::new(n.vni).is_none() || n.vni == 0 {
                return inv(format!(
                    "network {}: VNI {} is outside 1-16777215",
                    n.name, n.vni
                ));
            }
            if !names.insert(n.name.clone()) {
                return inv(format!("network {} is defined twice", n.name));
            }
            if !vnis.insert(n.vni) {
                return inv(format!("network {}: VNI {} is already used", n.name, n.vni));
            }
            if n.bridge.is_empty() || n.bridge.len() > 15 {
                return inv(format!(
                    "network {}: bridge name must be 1-15 characters",
                    n.name
                ));
            }
            let mtu = n.mtu(self.underlay.mtu);
            if !(68..=9000).contains(&mtu) {
                return inv(format!("network {}: MTU {mtu} is outside 68-9000", n.name));
            }
            for e in &n.local {
                e.mac()?;
            }
        }
        for p in &self.peers {
            for e in &p.endpoints {
                e.mac()?;
                match &e.network {
                    Some(name) if names.contains(name) => {}
                    Some(name) => {
                        return inv(format!(
                            "peer {}: endpoint {} names unknown network {name}",
                            p.vtep, e.ip
                        ))
                    }
                    None => {
                        return inv(format!(
                            "peer {}: endpoint {} must name its network",
                            p.vtep, e.ip
                        ))
                    }
                }
            }
        }
        let keys = self.keys()?;
        if keys.len() > 3 {
            return inv("encryption.keys: at most three keys (primary first)".into());
        }
        if self.networks.iter().any(|n| n.encrypted) && keys.is_empty() {
            return inv("an encrypted network needs encryption.keys".into());
        }
        if let Some(n) = self.encryption.rekey_after_packets {
            if n < swarmgate_dataplane::esp::MIN_SEQ_LIMIT {
                return inv(format!(
                    "encryption.rekey_after_packets {n} is below {}",
                    swarmgate_dataplane::esp::MIN_SEQ_LIMIT
                ));
            }
        }
        if let Some(icv) = self.encryption.icv {
            if swarmgate_aead::IcvLen::from_bytes(icv).is_none() {
                return inv(format!("encryption.icv {icv} must be 8, 12 or 16"));
            }
        }
        Ok(())
    }
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[dpdk]
cores = [0]
file_prefix = "sg-test"

[underlay]
device = "net_af_packet0,iface=b0"
address = "192.168.77.2/24"

[[network]]
name = "my-overlay"
vni = 4097
bridge = "br-4097"
local = [{ ip = "10.0.0.2" }]

[[network]]
name = "secure"
vni = 4098
encrypted = true
bridge = "br-4098"

[[peer]]
vtep = "192.168.77.1"
endpoints = [{ network = "my-overlay", ip = "10.0.0.1" }]

[[peer]]
vtep = "192.168.77.3"
docker = true

[encryption]
keys = [{ key = "000102030405060708090a0b0c0d0e0f", tag = 1 }]
"#;

    #[test]
    fn good_file() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.address().unwrap(), (Ipv4Addr::new(192, 168, 77, 2), 24));
        assert_eq!(c.networks[0].mtu(1500), 1450);
        assert_eq!(c.networks[1].mtu(1500), 1424);
        assert_eq!(
            c.networks[0].local[0].mac().unwrap().to_string(),
            "02:42:0a:00:00:02"
        );
        assert_eq!(c.keys().unwrap()[0].tag, 1);
        assert_eq!(c.underlay.vxlan_port, 4789);
        assert_eq!(c.peers[0].sender_ivs(), SenderIvs::Epochs);
        assert_eq!(c.peers[1].sender_ivs(), SenderIvs::KernelSeqiv);
    }

    #[test]
    fn af_xdp_local_ports_need_a_virtual_underlay() {
        let text = GOOD.replacen("cores = [0]", "cores = [0]\nlocal_ports = \"af_xdp\"", 1);
        Config::parse(&text).expect("af_xdp over a virtual underlay");
        let text = text.replacen("net_af_packet0,iface=b0", "0000:3b:00.0", 1);
        let e = Config::parse(&text).unwrap_err().to_string();
        assert!(e.contains("needs a virtual underlay device"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn bad_values_get_one_clear_line() {
        for (from, to, expect) in [
            ("192.168.77.2/24", "192.168.77.2", "not ADDRESS/PREFIX"),
            ("vni = 4097", "vni = 16777216", "outside 1-16777215"),
            ("vni = 4098", "vni = 4097", "already used"),
            (
                "name = \"secure\"",
                "name = \"my-overlay\"",
                "defined twice",
            ),
            (
                "network = \"my-overlay\"",
                "network = \"nope\"",
                "unknown network nope",
            ),
            ("0e0f\"", "0e\"", "not 32 hex digits"),
            ("cores = [0]", "cores = []", "at least one CPU"),
            (
                "tag = 1 }]",
                "tag = 1 }]\nrekey_after_packets = 3",
                "rekey_after_packets 3 is below 16",
            ),
            ("bridge = \"br-4097\"", "bridgee = \"x\"", "unknown field"),
            (
                "ip = \"10.0.0.2\"",
                "ip = \"10.0.0.2\", mac = \"zz\"",
                "bad MAC",
            ),
        ] {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from}");
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expect), "{from} -> {err}");
            assert!(!err.trim().is_empty());
        }
        let no_keys = GOOD.replace(
            "keys = [{ key = \"000102030405060708090a0b0c0d0e0f\", tag = 1 }]",
            "",
        );
        assert!(Config::parse(&no_keys)
            .unwrap_err()
            .to_string()
            .contains("needs encryption.keys"));
    }
}
