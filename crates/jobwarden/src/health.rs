//! Whether the store can be written, and why not: one place both runtimes' loops and the
//! cleanup workers report to, `/readyz` reads, and the log names.
//!
//! A store that does not answer makes `/readyz` fail and nothing is acted on that cannot be
//! recorded. A store that answers but cannot *write* (the data directory's file system is
//! full, or a write crossed the process's file-size limit, `RLIMIT_FSIZE`) is diagnosed here,
//! because the database driver only says "disk I/O error" or "database or disk is full":
//! [`StoreHealth::write_fault`] names the problem and the path, and is shown in the log, in
//! `/readyz` and in the API's 503 answers until a write succeeds again. SIGXFSZ, whose default
//! action would kill the daemon in the middle of a write, is caught for that purpose
//! ([`catch_file_size_signal`]): the write fails with EFBIG instead, the transaction rolls
//! back, and the daemon says why.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The store's health as the last calls saw it.
#[derive(Debug)]
pub struct StoreHealth {
    ok: AtomicBool,
    /// Why writes under the data directory fail, when known.
    pub faults: WriteFaults,
}

impl StoreHealth {
    /// Healthy until a call fails; `faults` diagnoses the failures.
    pub fn new(faults: WriteFaults) -> Self {
        StoreHealth {
            ok: AtomicBool::new(true),
            faults,
        }
    }

    /// Whether the last store call succeeded.
    pub fn is_ok(&self) -> bool {
        self.ok.load(Ordering::SeqCst)
    }

    /// Records whether the store answered (`true` after a successful write, `false` after any
    /// failed store call); logs transitions. A failure is diagnosed: when the data directory
    /// is full or a file hit the size limit, the log line says so, naming the path.
    pub fn set_ok(&self, ok: bool) {
        let was = self.ok.swap(ok, Ordering::SeqCst);
        if ok {
            self.faults.clear();
        } else {
            self.faults.diagnose();
        }
        if was && !ok {
            match self.faults.current() {
                Some(fault) => tracing::error!(
                    "store cannot write: {fault}; not acting on decisions it cannot record"
                ),
                None => {
                    tracing::error!("store unreachable: not acting on decisions it cannot record")
                }
            }
        } else if !was && ok {
            tracing::info!("store reachable again");
        }
    }

    /// Why writes to the store (or the data directory) fail, when jobwarden knows better than
    /// the database driver: e.g. `file size limit exceeded: /var/lib/jobwarden/jobwarden.db-wal
    /// is 2097152 bytes, the limit (RLIMIT_FSIZE) is 2097152 bytes`. Cleared by the next
    /// successful write.
    pub fn write_fault(&self) -> Option<String> {
        self.faults.current()
    }
}

/// Diagnoses failed writes under the data directory: a full file system (`statvfs`) or a file
/// at the process's file-size limit (`RLIMIT_FSIZE`, reported by SIGXFSZ).
#[derive(Debug)]
pub struct WriteFaults {
    /// The data directory.
    data_dir: PathBuf,
    /// The SQLite file, when the store is SQLite (a PostgreSQL store's disk is not ours).
    sqlite_file: Option<PathBuf>,
    /// SIGXFSZ arrived since the last successful write.
    fsize_signalled: AtomicBool,
    /// The current diagnosis.
    current: Mutex<Option<String>>,
}

/// Below this many free bytes the data directory's file system counts as full.
const DISK_FULL_BELOW: u64 = 256 * 1024;

impl WriteFaults {
    /// Faults of `data_dir` with the store at `store_url`.
    pub fn new(data_dir: PathBuf, store_url: &str) -> Self {
        WriteFaults {
            sqlite_file: sqlite_file(store_url),
            data_dir,
            fsize_signalled: AtomicBool::new(false),
            current: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current diagnosis, if any.
    pub fn current(&self) -> Option<String> {
        self.lock().clone()
    }

    /// A write succeeded: whatever was wrong is over.
    pub fn clear(&self) {
        self.fsize_signalled.store(false, Ordering::SeqCst);
        let mut cur = self.lock();
        if let Some(old) = cur.take() {
            tracing::info!("writes succeed again (was: {old})");
        }
    }

    /// SIGXFSZ arrived: some write crossed the file-size limit.
    pub fn file_size_signal(&self) {
        if !self.fsize_signalled.swap(true, Ordering::SeqCst) {
            let d = self.diagnose();
            tracing::error!(
                "SIGXFSZ: a write under {} exceeded the file size limit (RLIMIT_FSIZE); {}",
                self.data_dir.display(),
                d.unwrap_or_else(|| "the write failed with EFBIG".into())
            );
        }
    }

    /// Looks for a reason writes fail now; records it (or that there is none) and returns it.
    pub fn diagnose(&self) -> Option<String> {
        let found = self.live().or_else(|| {
            self.fsize_signalled.load(Ordering::SeqCst).then(|| {
                format!(
                    "file size limit exceeded: a write under {} crossed the process's file size \
                     limit (RLIMIT_FSIZE, {} bytes); raise the limit (ulimit -f)",
                    self.data_dir.display(),
                    fsize_limit().map_or_else(|| "?".into(), |l| l.to_string())
                )
            })
        });
        // What holds now replaces what held before (space may have been freed meanwhile).
        *self.lock() = found.clone();
        found
    }

    /// What can be checked now: a store file at the size limit, or a full file system under
    /// the SQLite store. None when neither holds (any more).
    pub fn live(&self) -> Option<String> {
        self.file_size_problem()
            .or_else(|| self.disk_full_problem())
    }

    fn file_size_problem(&self) -> Option<String> {
        let limit = fsize_limit()?;
        let mut candidates = Vec::new();
        if let Some(db) = &self.sqlite_file {
            for suffix in ["", "-wal", "-journal", "-shm"] {
                let mut p = db.clone().into_os_string();
                p.push(suffix);
                candidates.push(PathBuf::from(p));
            }
        }
        let at_limit = candidates.into_iter().find_map(|p| {
            let len = std::fs::metadata(&p).ok()?.len();
            // A write that would cross the limit fails; the file stops within a page of it.
            (len.saturating_add(64 * 1024) >= limit).then_some((p, len))
        });
        at_limit.map(|(p, len)| {
            format!(
                "file size limit exceeded: {} is {len} bytes and the process's file size limit \
                 (RLIMIT_FSIZE) is {limit} bytes; raise the limit (ulimit -f)",
                p.display()
            )
        })
    }

    fn disk_full_problem(&self) -> Option<String> {
        // Only the SQLite store lives on our disk; a PostgreSQL outage is not a full disk.
        let dir = self.sqlite_file.as_deref()?.parent()?;
        let st = rustix::fs::statvfs(dir).ok()?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let total = st.f_blocks.saturating_mul(st.f_frsize);
        (free < DISK_FULL_BELOW).then(|| {
            format!(
                "disk full: the file system holding {} has {free} bytes free of {total}; \
                 free space there",
                dir.display()
            )
        })
    }
}

/// The soft `RLIMIT_FSIZE`, if there is one.
fn fsize_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Fsize).current
}

/// The SQLite file of a `sqlite://PATH` store URL (None for `sqlite::memory:` and PostgreSQL).
fn sqlite_file(store_url: &str) -> Option<PathBuf> {
    let rest = store_url.strip_prefix("sqlite://")?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| PathBuf::from(path))
}

/// Catches SIGXFSZ for the daemon's lifetime, so that a write crossing `RLIMIT_FSIZE` fails
/// with EFBIG (and is reported) instead of killing the daemon mid-write. Job processes are
/// unaffected: a caught signal reverts to its default action across `exec`.
pub fn catch_file_size_signal() -> Option<tokio::signal::unix::Signal> {
    let kind = tokio::signal::unix::SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw());
    match tokio::signal::unix::signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot catch SIGXFSZ ({e}); a file size limit would kill the daemon");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlite_file_is_found_in_the_store_url() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/jw/jobwarden.db"),
            Some(PathBuf::from("/var/lib/jw/jobwarden.db"))
        );
        assert_eq!(
            sqlite_file("sqlite://data/jw.db?mode=rwc"),
            Some(PathBuf::from("data/jw.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://:memory:"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }
}
