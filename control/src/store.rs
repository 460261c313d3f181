//! Persistence: the cluster state and this node's own state in a redb database
//! (`<data-root>/state.redb`).
//!
//! The [`Cluster`] and the [`NodeLocal`] are two JSON values written in one redb write
//! transaction after every change, so a crash leaves either the state before the change
//! or the state after it, never a mixture. A state stored before the two were split (one
//! value with the tasks' runtime inside) is read as both. On a manager the cluster's
//! authoritative copy is Raft's state machine ([`crate::raft::storage`], same
//! serialisation); the one here is the leader's cache of it, or an agent's view of its own
//! tasks.
//!
//! The file is readable by its owner only: the state holds this node's TLS key and, on a
//! manager, the cluster CA's key (SwarmKit keeps the CA key in its Raft store, encrypted
//! with a data key; swarmgate's Raft database and this file rely on owner-only permissions).

use std::path::Path;

use anyhow::Context;
use redb::{Database, TableDefinition};

use crate::cluster::Cluster;
use crate::local::NodeLocal;

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const KEY: &str = "cluster";
const LOCAL: &str = "local";

/// The state database.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let db = Database::create(path).with_context(|| format!("opening {}", path.display()))?;
        // It holds this node's TLS key and, on a manager, the cluster CA's key: owner only.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {}", path.display()))?;
        }
        Ok(Store { db })
    }

    /// The stored cluster and node states, or `None` on first start.
    pub fn load(&self) -> anyhow::Result<Option<(Cluster, NodeLocal)>> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(STATE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(v) = table.get(KEY)? else {
            return Ok(None);
        };
        let value: serde_json::Value =
            serde_json::from_slice(v.value()).context("decoding the stored state")?;
        let mut local: NodeLocal = match table.get(LOCAL)? {
            Some(l) => serde_json::from_slice(l.value()).context("decoding this node's state")?,
            None => NodeLocal::from_legacy(&value),
        };
        if local.swarm.is_none() {
            // Stored before the membership moved out of the cluster state.
            local.swarm = crate::local::legacy_membership(&value);
        }
        let mut c: Cluster = serde_json::from_value(value).context("decoding the stored state")?;
        if local.swarm.as_ref().is_some_and(|m| !m.is_manager()) {
            c.swarm = None; // a worker holds no swarm record
        }
        Ok(Some((c, local)))
    }

    /// Stores `c` and `local`, atomically.
    pub fn save(&self, c: &Cluster, local: &NodeLocal) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(c)?;
        let local = serde_json::to_vec(local)?;
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(STATE)?;
            t.insert(KEY, bytes.as_slice())?;
            t.insert(LOCAL, local.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::CreateNetwork;

    #[test]
    fn state_round_trips_through_the_database() {
        let dir = std::env::temp_dir().join(format!("sg-store-{}", std::process::id()));
        let path = dir.join("state.redb");
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = Store::open(&path).unwrap();
            assert!(s.load().unwrap().is_none());
            let mut c = Cluster::default();
            c.networks
                .create(&CreateNetwork {
                    name: "my-overlay".into(),
                    driver: "overlay".into(),
                    options: vec![("encrypted".into(), None)],
                    ..Default::default()
                })
                .unwrap();
            s.save(&c, &NodeLocal::default()).unwrap();
        }
        let s = Store::open(&path).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "keys inside: owner only");
        }
        let (c, _) = s.load().unwrap().unwrap();
        let n = c.networks.get("my-overlay").unwrap();
        assert!(n.encrypted);
        assert_eq!(n.mtu, 1424);
        assert_eq!(n.vni.get(), 4096);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_state_stored_before_the_split_is_read_as_cluster_and_node() {
        let dir = std::env::temp_dir().join(format!("sg-store-legacy-{}", std::process::id()));
        let path = dir.join("state.redb");
        let _ = std::fs::remove_dir_all(&dir);
        let swarm = |role: &str| {
            serde_json::json!({
                "id": "c1", "node_id": "n1", "advertise_addr": "10.1.1.1",
                "datapath_addr": "10.1.1.1", "worker_token": "", "manager_token": "",
                "created": 1, "role": role, "root_ca_cert": "ROOT", "node_cert": "CERT",
                "node_key": "KEY", "listen_addr": "0.0.0.0:2377",
                "manager_addr": "10.1.1.9:2377", "cert_expiry_secs": 7776000,
                "data_path_port": 4790
            })
        };
        for role in ["worker", "manager"] {
            let s = Store::open(&path).unwrap();
            let legacy = serde_json::json!({
                "swarm": swarm(role), "nodes": [],
                "networks": serde_json::to_value(Cluster::default().networks).unwrap(),
                "network_meta": {}, "services": serde_json::to_value(Cluster::default().services).unwrap(),
                "service_meta": {}, "tasks": {}, "gw_used": [2886860802u32]
            });
            let tx = s.db.begin_write().unwrap();
            {
                let mut t = tx.open_table(STATE).unwrap();
                t.insert(KEY, serde_json::to_vec(&legacy).unwrap().as_slice())
                    .unwrap();
            }
            tx.commit().unwrap();
            let (c, local) = s.load().unwrap().unwrap();
            let m = local.swarm.expect("membership");
            assert_eq!((m.node_id.as_str(), m.cluster_id.as_str()), ("n1", "c1"));
            assert_eq!((m.node_cert.as_str(), m.node_key.as_str()), ("CERT", "KEY"));
            assert_eq!(m.manager_addr.as_deref(), Some("10.1.1.9:2377"));
            assert_eq!(m.data_path_port, 4790);
            assert_eq!(local.gw_used.len(), 1);
            // A worker keeps no swarm record; a manager keeps the swarm's.
            assert_eq!(c.swarm.is_some(), role == "manager", "{role}");
            drop(s);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
