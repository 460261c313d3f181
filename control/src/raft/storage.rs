//! The Raft log, the vote and the state machine of a manager, in one redb database
//! (`<data-root>/raft.redb`; openraft's storage-v2 traits `RaftLogStorage` and
//! `RaftStateMachine`). SwarmKit keeps a WAL and snapshots in `<swarm>/raft/`
//! (`manager/state/raft/storage`); the layout here is redb's tables instead:
//!
//! * `log`: index → entry (JSON), appended and truncated by the leader's orders;
//! * `meta`: the vote, the last purged log id;
//! * `machine`: the state machine — the cluster state (JSON), the last applied log id and
//!   the membership — written in the same transaction as each applied batch, so the state
//!   on disk is always the state after some prefix of the log;
//! * `snapshot`: the last snapshot built or installed (its meta and bytes).
//!
//! The state machine is the cluster state the daemon keeps ([`crate::cluster::Cluster`],
//! serialised); a snapshot is that state with its log position.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{command, NodeId, Peer, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const MACHINE: TableDefinition<&str, &[u8]> = TableDefinition::new("machine");

type SErr = StorageError<NodeId>;

/// Runs a blocking redb transaction without stalling the async runtime's worker threads
/// (Raft's heartbeats and the 2377 server run there).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn read_err(e: impl std::fmt::Display) -> SErr {
    StorageIOError::read(&std::io::Error::other(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> SErr {
    StorageIOError::write(&std::io::Error::other(e.to_string())).into()
}

/// Opens (or creates) the database, owner-readable only (it holds the CA's key).
pub fn open(path: &std::path::Path) -> anyhow::Result<Arc<Database>> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let db = Database::create(path).with_context(|| format!("opening {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    let tx = db.begin_write()?;
    tx.open_table(LOG)?;
    tx.open_table(META)?;
    tx.open_table(MACHINE)?;
    tx.commit()?;
    Ok(Arc::new(db))
}

fn get_meta<T: for<'a> Deserialize<'a>>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, SErr> {
    let tx = db.begin_read().map_err(read_err)?;
    let t = tx.open_table(table).map_err(read_err)?;
    match t.get(key).map_err(read_err)? {
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(read_err),
        None => Ok(None),
    }
}

/// The log and the vote.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Over `db` (see [`open`]).
    pub fn new(db: Arc<Database>) -> LogStore {
        LogStore { db }
    }

    /// Whether nothing was ever logged or voted here (a manager that has not been part of
    /// a Raft group yet).
    pub fn is_pristine(&self) -> anyhow::Result<bool> {
        let tx = self.db.begin_read()?;
        let empty_log = tx.open_table(LOG)?.first()?.is_none();
        let no_vote = tx.open_table(META)?.get("vote")?.is_none();
        Ok(empty_log && no_vote)
    }

    fn put_meta<T: Serialize>(&self, key: &str, v: &T) -> Result<(), SErr> {
        let bytes = serde_json::to_vec(v).map_err(write_err)?;
        blocking(|| {
            let tx = self.db.begin_write().map_err(write_err)?;
            tx.open_table(META)
                .map_err(write_err)?
                .insert(key, bytes.as_slice())
                .map_err(write_err)?;
            tx.commit().map_err(write_err)
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        for r in t.range(range).map_err(read_err)? {
            let (_, v) = r.map_err(read_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let purged: Option<LogId<NodeId>> = get_meta(&self.db, META, "purged")?;
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(LOG).map_err(read_err)?;
        let last = match t.last().map_err(read_err)? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(read_err)?;
                Some(e.log_id)
            }
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        self.put_meta("vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        get_meta(&self.db, META, "vote")
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| serde_json::to_vec(&e).map(|b| (e.log_id.index, b)))
            .collect::<Result<_, _>>()
            .map_err(write_err)?;
        // redb commits durably (fsync) before returning.
        let r = blocking(|| -> Result<(), std::io::Error> {
            let tx = self.db.begin_write().map_err(std::io::Error::other)?;
            {
                let mut t = tx.open_table(LOG).map_err(std::io::Error::other)?;
                for (i, b) in &entries {
                    t.insert(*i, b.as_slice()).map_err(std::io::Error::other)?;
                }
            }
            tx.commit().map_err(std::io::Error::other)
        });
        let failed = r.as_ref().err().map(|e| e.to_string());
        callback.log_io_completed(r);
        match failed {
            Some(e) => Err(write_err(e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        blocking(|| {
            let tx = self.db.begin_write().map_err(write_err)?;
            {
                let mut t = tx.open_table(LOG).map_err(write_err)?;
                t.retain(|k, _| k < log_id.index).map_err(write_err)?;
            }
            tx.commit().map_err(write_err)
        })
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.put_meta("purged", &log_id)?;
        blocking(|| {
            let tx = self.db.begin_write().map_err(write_err)?;
            {
                let mut t = tx.open_table(LOG).map_err(write_err)?;
                t.retain(|k, _| k > log_id.index).map_err(write_err)?;
            }
            tx.commit().map_err(write_err)
        })
    }
}

/// What the state machine holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    /// The last log entry applied.
    pub last_applied: Option<LogId<NodeId>>,
    /// The membership as of that entry.
    pub membership: StoredMembership<NodeId, Peer>,
    /// The cluster state ([`crate::cluster::Cluster`] as JSON); `null` before the first
    /// command.
    pub state: Value,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Peer>,
    data: Vec<u8>,
}

/// The state machine, shared with the daemon (which reads the state when it leads) and
/// with the snapshot builder.
#[derive(Clone)]
pub struct Machine {
    db: Arc<Database>,
    inner: Arc<Mutex<Applied>>,
    /// Raised after every applied batch.
    applied: Arc<tokio::sync::watch::Sender<u64>>,
    /// The swarm's `--snapshot-interval`, as the state says (read by the compaction).
    snapshot_interval: Arc<std::sync::atomic::AtomicU64>,
}

impl Machine {
    /// The state machine stored in `db`.
    pub fn load(db: Arc<Database>) -> anyhow::Result<Machine> {
        let a: Applied = get_meta(&db, MACHINE, "applied")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .unwrap_or_default();
        let m = Machine {
            db,
            inner: Arc::new(Mutex::new(a)),
            applied: Arc::new(tokio::sync::watch::channel(0).0),
            snapshot_interval: Default::default(),
        };
        m.note_settings(&m.current().state);
        Ok(m)
    }

    /// Log entries between snapshots, as the replicated state sets it.
    pub fn snapshot_interval(&self) -> u64 {
        match self
            .snapshot_interval
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => super::DEFAULT_SNAPSHOT_INTERVAL,
            n => n,
        }
    }

    fn note_settings(&self, state: &Value) {
        let n = state
            .pointer("/swarm/snapshot_interval")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        self.snapshot_interval
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// A copy of what it holds now.
    pub fn current(&self) -> Applied {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The index of the last entry applied (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// Wakes after every applied batch.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Writes what the state machine holds (`a`, when given) and a snapshot (when given,
    /// and newer than the stored one: a snapshot built concurrently with an install never
    /// replaces a newer one), in one transaction. redb commits durably (fsync): done off
    /// the runtime's worker threads.
    fn save(&self, a: Option<&Applied>, snapshot: Option<&StoredSnapshot>) -> Result<(), SErr> {
        let bytes = a.map(serde_json::to_vec).transpose().map_err(write_err)?;
        let snap = snapshot
            .map(|s| serde_json::to_vec(s).map(|b| (s.meta.last_log_id, b)))
            .transpose()
            .map_err(write_err)?;
        blocking(|| {
            let tx = self.db.begin_write().map_err(write_err)?;
            {
                let mut t = tx.open_table(MACHINE).map_err(write_err)?;
                if let Some(b) = &bytes {
                    t.insert("applied", b.as_slice()).map_err(write_err)?;
                }
                if let Some((last, s)) = &snap {
                    let stored: Option<StoredSnapshot> =
                        match t.get("snapshot").map_err(write_err)? {
                            Some(v) => serde_json::from_slice(v.value()).ok(),
                            None => None,
                        };
                    if stored.is_none_or(|st| st.meta.last_log_id <= *last) {
                        t.insert("snapshot", s.as_slice()).map_err(write_err)?;
                    }
                }
            }
            tx.commit().map_err(write_err)
        })
    }

    fn snapshot_of(a: &Applied) -> Result<StoredSnapshot, SErr> {
        let data = serde_json::to_vec(&a.state).map_err(read_err)?;
        let id = match a.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, data.len()),
            None => format!("0-0-{}", data.len()),
        };
        Ok(StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: a.last_applied,
                last_membership: a.membership.clone(),
                snapshot_id: id,
            },
            data,
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Machine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let a = self.current();
        let s = Self::snapshot_of(&a)?;
        // Only the snapshot: what the state machine holds is `apply`'s to write (a
        // snapshot is built concurrently with it).
        self.save(None, Some(&s))?;
        Ok(Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotBuilder = Machine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Peer>), SErr> {
        let a = self.current();
        Ok((a.last_applied, a.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut a = self.current();
        let mut out = Vec::new();
        for e in entries {
            a.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(cmd) => {
                    // A command the leader built from a state it applied the same way
                    // cannot fail here; if one did, every manager skips it alike.
                    if let Err(why) = command::apply(&mut a.state, &cmd) {
                        tracing::error!(
                            index = e.log_id.index,
                            "raft: a command did not apply: {why}"
                        );
                    }
                }
                EntryPayload::Membership(m) => {
                    a.membership = StoredMembership::new(Some(e.log_id), m);
                }
            }
            out.push(());
        }
        self.save(Some(&a), None)?;
        self.note_settings(&a.state);
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = a;
        self.applied.send_modify(|v| *v += 1);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Peer>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let state: Value = serde_json::from_slice(&data).map_err(read_err)?;
        let a = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state,
        };
        let s = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.save(Some(&a), Some(&s))?;
        self.note_settings(&a.state);
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = a;
        self.applied.send_modify(|v| *v += 1);
        tracing::info!(snapshot = %meta.snapshot_id, "raft: installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let s: Option<StoredSnapshot> = get_meta(&self.db, MACHINE, "snapshot")?;
        Ok(s.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
