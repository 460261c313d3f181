//! The node's ESP sender-epoch reservation on disk (see `swarmgate_dataplane::esp::epoch`).
//!
//! The file holds one decimal number: a ceiling below which epochs may have been used.
//! Before any epoch is handed out the ceiling is raised on disk (written to a temporary
//! file, synced, renamed over the old one, directory synced) and only then in memory, so a
//! crash at any moment leaves a file at or above every epoch ever used, and the next start
//! begins at or above it: an (epoch, sequence number) pair, hence a GCM nonce, is never
//! used twice under one key by this node, however it was stopped.
//!
//! The first epoch after a start is the larger of the file's ceiling and the wall clock in
//! seconds. The clock covers a lost file as long as the previous run used fewer epochs than
//! seconds have passed since it started (one epoch per SA and per sequence-number
//! generation: few). No random offset is added: it would put used epochs ahead of the
//! clock and undo that. (Docker's own corner case — two node pairs whose FNV SPIs, hence
//! GCM salts under the one cluster-wide key, collide — is not covered by this scheme.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use swarmgate_dataplane::esp::EpochSource;

/// Epochs reserved ahead with each write.
pub const BLOCK: u32 = 4096;
/// The reservation is extended when fewer epochs than this are left.
pub const LOW_WATER: u32 = BLOCK / 2;

/// An [`EpochSource`] backed by a reservation file.
#[derive(Debug)]
pub struct EpochStore {
    path: PathBuf,
    source: Arc<EpochSource>,
}

impl EpochStore {
    /// Opens (or creates) the reservation at `path` and reserves the first block.
    pub fn open(path: &Path) -> anyhow::Result<EpochStore> {
        let stored = match std::fs::read_to_string(path) {
            Ok(s) => s.trim().parse::<u32>().with_context(|| {
                format!(
                    "{}: not an epoch reservation (one decimal number)",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs().min(u32::MAX as u64) as u32)
            .unwrap_or(0);
        let first = stored.max(now);
        let ceiling = first.saturating_add(BLOCK);
        if ceiling == first {
            anyhow::bail!(
                "{}: the ESP sender epochs of this node are used up; rotate the datapath keys and remove the file",
                path.display()
            );
        }
        write_ceiling(path, ceiling)?;
        Ok(EpochStore {
            path: path.to_owned(),
            source: Arc::new(EpochSource::new(first, ceiling)),
        })
    }

    /// The source the SAs take their epochs from.
    pub fn source(&self) -> &Arc<EpochSource> {
        &self.source
    }

    /// Extends the reservation on disk, then in memory, when it is running low. Called
    /// every second and before SAs are created.
    pub fn top_up(&self) -> anyhow::Result<()> {
        if self.source.remaining() >= LOW_WATER {
            return Ok(());
        }
        let ceiling = self.source.peek().saturating_add(BLOCK);
        if ceiling <= self.source.ceiling() {
            return Ok(()); // at the end of the 32-bit space: nothing more to reserve
        }
        write_ceiling(&self.path, ceiling)?;
        self.source.raise_ceiling(ceiling);
        Ok(())
    }
}

/// Durably replaces the file's content with `ceiling`.
fn write_ceiling(path: &Path, ceiling: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // `<name>.tmp` next to it (appended, so that files differing only after a dot, such
    // as `esp-epoch-10.0.0.1` and `-10.0.0.2`, never share a temporary file).
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    writeln!(f, "{ceiling}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sg-epoch-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("esp-epoch")
    }

    #[test]
    fn a_restart_never_reuses_an_epoch() {
        let p = tmp("restart");
        let s1 = EpochStore::open(&p).unwrap();
        // Use far more epochs than one block (a tiny rekey limit), topping up as the
        // gateway's tick does.
        let mut last = 0;
        for _ in 0..3 * BLOCK {
            s1.top_up().unwrap();
            last = s1.source().take().unwrap();
        }
        // Crash: the in-memory source is lost; the file is all that is left.
        drop(s1);
        let s2 = EpochStore::open(&p).unwrap();
        assert!(s2.source().take().unwrap() > last);
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn a_fresh_store_starts_at_the_clock_and_a_garbled_one_is_refused() {
        let p = tmp("fresh");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32;
        let s = EpochStore::open(&p).unwrap();
        let first = s.source().peek();
        assert!(first >= now && first < now + 10, "{first} vs {now}");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap().trim(),
            (first + BLOCK).to_string()
        );
        std::fs::write(&p, "not a number\n").unwrap();
        let e = EpochStore::open(&p).unwrap_err().to_string();
        assert!(e.contains("not an epoch reservation"), "{e}");
        std::fs::write(&p, format!("{}\n", u32::MAX)).unwrap();
        let e = EpochStore::open(&p).unwrap_err().to_string();
        assert!(e.contains("used up"), "{e}");
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}
