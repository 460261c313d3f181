//! Task logs: size-bounded files, as Docker's json-file driver keeps them with `max-size`
//! and `max-file`, read without the daemon's state lock.
//!
//! A task writes its stdout and stderr straight into `<id>.log` (opened `O_APPEND`), so a
//! daemon restart never cuts a task off its output (live-restore). The daemon rotates in
//! the manner of logrotate's `copytruncate`: once the file passes [`MAX_SIZE`], older
//! generations shift (`.1` → `.2`, the oldest beyond [`MAX_FILES`] is deleted), the file
//! is copied to `.1` and truncated; the task's next write lands at the new end. Lines
//! written between the copy and the truncation can be lost — the price of never holding
//! the task's output in a pipe the daemon could die with.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Size at which a log is rotated (Docker's `max-size`).
pub const MAX_SIZE: u64 = 10 << 20;
/// Files kept per task, the live one included (Docker's `max-file`).
pub const MAX_FILES: usize = 3;

fn generation(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Rotates `path` if it is larger than `max_size`, keeping `max_files` files in all.
/// Returns whether it rotated.
pub fn rotate(path: &Path, max_size: u64, max_files: usize) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_size {
        return Ok(false);
    }
    let keep = max_files.max(1) - 1;
    if keep == 0 {
        std::fs::File::options()
            .write(true)
            .open(path)?
            .set_len(0)?;
        return Ok(true);
    }
    let _ = std::fs::remove_file(generation(path, keep));
    for n in (1..keep).rev() {
        let from = generation(path, n);
        if from.exists() {
            std::fs::rename(&from, generation(path, n + 1))?;
        }
    }
    std::fs::copy(path, generation(path, 1))?;
    std::fs::File::options()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// Every file of a task's log, oldest first.
pub fn files(path: &Path, max_files: usize) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = (1..max_files.max(1))
        .rev()
        .map(|n| generation(path, n))
        .filter(|p| p.exists())
        .collect();
    if path.exists() {
        v.push(path.to_owned());
    }
    v
}

/// Deletes every file of a task's log.
pub fn remove(path: &Path) {
    for f in files(path, MAX_FILES) {
        let _ = std::fs::remove_file(f);
    }
}

/// Calls `each` with every line of a task's log, oldest first, reading a line at a time
/// (bounded memory whatever the size); stops early when `each` returns false.
pub fn for_each_line(path: &Path, max_files: usize, mut each: impl FnMut(String) -> bool) {
    for f in files(path, max_files) {
        let Ok(file) = std::fs::File::open(&f) else {
            continue;
        };
        for l in BufReader::new(file).lines() {
            let Ok(l) = l else { break };
            if !each(l) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_stay_bounded_and_read_in_order() {
        let dir = std::env::temp_dir().join(format!("sg-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.log");
        // A writer appending as a task does, through its own O_APPEND descriptor.
        let mut w = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        let mut rotations = 0;
        for i in 0..1000 {
            use std::io::Write;
            writeln!(w, "line {i:04} {}", "x".repeat(90)).unwrap();
            if rotate(&p, 10_000, 3).unwrap() {
                rotations += 1;
            }
        }
        assert!(rotations > 5);
        let total: u64 = files(&p, 3)
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert!(total <= 3 * 10_200, "{total}");
        assert!(!generation(&p, 3).exists());
        // Oldest first, the newest line last, nothing out of order.
        let mut lines = Vec::new();
        for_each_line(&p, 3, |l| {
            lines.push(l);
            true
        });
        assert!(lines.last().unwrap().starts_with("line 0999"));
        let nums: Vec<u32> = lines.iter().map(|l| l[5..9].parse().unwrap()).collect();
        assert!(nums.windows(2).all(|w| w[0] < w[1]), "in order");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
