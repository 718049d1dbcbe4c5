//! The daemon (`jobwarden run`): wires the store, the engine, the local runtime, the
//! cleanup workers and the HTTP API together, and shuts them down cleanly.
//!
//! - [`enforcer`] owns the jobs and the deadline scheduler; it is the only writer of job
//!   state and the only sender of signals (an actor fed by a command channel).
//! - [`worker`] drains the durable cleanup queue (workspaces, logs, artifacts).
//! - [`orphans`] finds workspaces and log files whose job the store does not know.
//! - [`api`] serves HTTP and translates requests into enforcer commands or store reads.
//!
//! Graceful shutdown (SIGINT/SIGTERM): stop accepting requests, stop the loops, leave jobs
//! running (they are re-adopted on the next start), close the store.
//!
//! Faults: a store that does not answer makes `/readyz` fail and the enforcer act on nothing
//! it cannot record. A store that answers but cannot *write* (the data directory's file
//! system is full, or a write crossed the process's file-size limit, `RLIMIT_FSIZE`) is
//! diagnosed here, because the database driver only says "disk I/O error" or "database or
//! disk is full": [`Shared::write_fault`] names the problem and the path, and is shown in the
//! log, in `/readyz` and in the API's 503 answers until a write succeeds again. SIGXFSZ, whose
//! default action would kill the daemon in the middle of a write, is caught for that purpose:
//! the write fails with EFBIG instead, the transaction rolls back, and the daemon says why.

pub mod api;
pub mod enforcer;
pub mod orphans;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::engine::Policy;
use crate::hooks::{HookRunner, Hooks};
use crate::metrics::Metrics;
use crate::store::Store;

/// Everything `jobwarden run` needs, after flags, config and defaults were merged.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The validated configuration.
    pub config: Config,
    /// Where workspaces, logs, the SQLite file and file:// artifacts live.
    pub data_dir: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// Store URL.
    pub store_url: String,
    /// Artifacts URL (`file://…` or `s3://…`).
    pub artifacts_url: String,
    /// Record decisions, carry none out.
    pub dry_run: bool,
    /// Bearer token required on non-public routes (set when not listening on loopback).
    pub token: Option<String>,
}

/// State shared by the daemon's tasks.
#[derive(Debug)]
pub struct Shared {
    /// Configuration.
    pub config: Config,
    /// Decision-ready policy.
    pub policy: Policy,
    /// The store.
    pub store: Store,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Hooks, run in the background and audited.
    pub hooks: HookRunner,
    /// Dry-run mode.
    pub dry_run: bool,
    /// Data directory.
    pub data_dir: PathBuf,
    /// False while the store is unreachable.
    pub store_ok: AtomicBool,
    /// Set once the enforcer has loaded the store's jobs and re-adopted their processes;
    /// until then `/readyz` answers 503 and job listings may show pre-restart states.
    pub loaded: AtomicBool,
    /// Bearer token.
    pub token: Option<String>,
    /// Deletion rate limit shared by every destructive cleanup path.
    pub deletions: crate::ratelimit::RateLimiter,
    /// Wakes the cleanup workers when a task was queued.
    pub queue_kick: tokio::sync::Notify,
    /// Object storage for artifacts, partial saves and logs.
    pub artifacts: crate::artifacts::Artifacts,
    /// Why writes under the data directory fail, when known (see [`Shared::write_fault`]).
    pub faults: WriteFaults,
}

impl Shared {
    /// Records whether the store answered (`true` after a successful write, `false` after any
    /// failed store call); logs transitions. A failure is diagnosed: when the data directory
    /// is full or a file hit the size limit, the log line says so, naming the path.
    pub fn set_store_ok(&self, ok: bool) {
        let was = self.store_ok.swap(ok, Ordering::SeqCst);
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

    /// Why writes to the store (or the data directory) fail, when the daemon knows better than
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
fn catch_file_size_signal() -> Option<tokio::signal::unix::Signal> {
    let kind = tokio::signal::unix::SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw());
    match tokio::signal::unix::signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot catch SIGXFSZ ({e}); a file size limit would kill the daemon");
            None
        }
    }
}

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory cannot be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// Path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The store cannot be opened because it cannot write (disk full, file size limit).
    #[error("{source} ({fault})")]
    StoreFault {
        /// The store's error.
        source: crate::store::Error,
        /// The diagnosis naming the problem and the path.
        fault: String,
    },
    /// The artifact store cannot be opened or reached.
    #[error("artifacts: {0}")]
    Artifacts(#[from] crate::artifacts::Error),
    /// The artifact store did not answer in time.
    #[error("artifacts: {0} did not answer within 15s")]
    ArtifactsTimeout(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running daemon: its address and how to stop it.
#[derive(Debug)]
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Send `true` to stop.
    pub shutdown: watch::Sender<bool>,
    /// Resolves when everything has stopped.
    pub done: tokio::task::JoinHandle<()>,
    /// Shared state (for in-process callers such as `demo`).
    pub shared: Arc<Shared>,
}

/// Starts the daemon; returns once it listens.
pub async fn start(opts: DaemonOptions) -> Result<Running, StartError> {
    // First: opening the store writes (migrations, WAL).
    let mut xfsz = catch_file_size_signal();
    let faults = WriteFaults::new(opts.data_dir.clone(), &opts.store_url);
    for dir in [
        opts.data_dir.clone(),
        opts.data_dir.join("workspaces"),
        opts.data_dir.join("logs"),
    ] {
        std::fs::create_dir_all(&dir)
            .map_err(|source| StartError::DataDir { path: dir, source })?;
    }
    let store = match Store::open(&opts.store_url).await {
        Ok(s) => s,
        Err(e) => {
            return Err(match faults.diagnose() {
                Some(fault) => StartError::StoreFault { source: e, fault },
                None => StartError::Store(e),
            });
        }
    };
    let artifacts_config = crate::artifacts::ArtifactsConfig {
        url: Some(opts.artifacts_url.clone()),
        ..opts.config.artifacts.clone()
    };
    let artifacts = crate::artifacts::Artifacts::open(&artifacts_config, artifact_retry())?;
    match tokio::time::timeout(
        std::time::Duration::from_secs(15),
        artifacts.check_reachable(),
    )
    .await
    {
        Ok(r) => r?,
        Err(_) => {
            return Err(StartError::ArtifactsTimeout(
                artifacts.location().to_owned(),
            ));
        }
    }
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: opts.listen,
        source,
    })?;
    let metrics = Arc::new(Metrics::default());
    let mut policy = Policy::from_config(&opts.config);
    policy.layout = Some(crate::engine::plan::Layout::new(&opts.data_dir));
    let shared = Arc::new(Shared {
        policy,
        hooks: HookRunner::new(
            Hooks::new(opts.config.hooks.clone()),
            store.clone(),
            metrics.clone(),
        ),
        deletions: crate::ratelimit::RateLimiter::per_minute(
            opts.config.safety.max_deletions_per_minute,
        ),
        config: opts.config,
        store,
        metrics,
        dry_run: opts.dry_run,
        data_dir: opts.data_dir.clone(),
        store_ok: AtomicBool::new(true),
        loaded: AtomicBool::new(false),
        token: opts.token,
        queue_kick: tokio::sync::Notify::new(),
        artifacts,
        faults,
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (exit_tx, exit_rx) = mpsc::unbounded_channel();
    let runtime = crate::runtime::local::LocalRuntime::new(
        &opts.data_dir,
        exit_tx,
        Some(format!("http://{addr}")),
        Some(opts.artifacts_url.clone()),
    );
    let enforcer = enforcer::Enforcer::new(shared.clone(), runtime.clone(), cmd_rx, exit_rx);
    let mut tasks = Vec::new();
    if let Some(mut sig) = xfsz.take() {
        let shared = shared.clone();
        let mut shutdown = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped(&mut shutdown) => return,
                    got = sig.recv() => match got {
                        Some(()) => shared.faults.file_size_signal(),
                        None => return,
                    },
                }
            }
        }));
    }
    tasks.push(tokio::spawn(enforcer.run(shutdown_rx.clone())));
    tasks.extend(worker::spawn(
        &shared,
        &runtime,
        &std::process::id().to_string(),
        &shutdown_rx,
    ));
    tasks.push(tokio::spawn(orphans::run_periodic(
        shared.clone(),
        runtime.clone(),
        shutdown_rx.clone(),
    )));
    let app = api::router(api::ApiState {
        shared: shared.clone(),
        commands: cmd_tx,
        runtime,
    });
    let mut srv_shutdown = shutdown_rx.clone();
    let server = tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = srv_shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = res {
            tracing::error!("http server: {e}");
        }
    });
    let shared2 = shared.clone();
    let done = tokio::spawn(async move {
        let _ = server.await;
        for t in tasks {
            let _ = t.await;
        }
        shared2.store.close().await;
    });
    tracing::info!(%addr, dry_run = opts.dry_run, "jobwarden listening");
    Ok(Running {
        addr,
        shutdown: shutdown_tx,
        done,
        shared,
    })
}

/// Retries for object-storage calls: a few quick ones; the durable queue retries the rest.
pub fn artifact_retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(20),
        ..object_store::RetryConfig::default()
    }
}

/// Resolves once `shutdown` says stop (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
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
