//! The daemon (`jobwarden run`): wires the store, the engine, the local runtime, the
//! cleanup workers and the HTTP API together, and shuts them down cleanly.
//!
//! - [`enforcer`] owns the jobs and the deadline scheduler; it is the only writer of job
//!   state and the only sender of signals (an actor fed by a command channel).
//! - the cleanup workers ([`crate::cleanup`]) drain the durable queue (workspaces, logs,
//!   artifacts).
//! - [`orphans`] finds workspaces and log files whose job the store does not know.
//! - [`api`] serves HTTP and translates requests into enforcer commands or store reads.
//!
//! Graceful shutdown (SIGINT/SIGTERM): stop accepting requests, stop the loops, leave jobs
//! running (they are re-adopted on the next start), close the store.
//!
//! Faults: the store's health, and why it cannot write, is [`crate::health`]'s; the daemon
//! catches SIGXFSZ for it.

pub mod api;
pub mod enforcer;
pub mod orphans;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::{mpsc, watch};

use crate::cleanup;
use crate::config::Config;
use crate::engine::Policy;
use crate::health::{StoreHealth, WriteFaults, catch_file_size_signal};
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
    /// Set once the enforcer has loaded the store's jobs and re-adopted their processes;
    /// until then `/readyz` answers 503 and job listings may show pre-restart states.
    pub loaded: AtomicBool,
    /// Bearer token.
    pub token: Option<String>,
    /// The store's health: whether it answers, and why it cannot write.
    pub health: Arc<StoreHealth>,
    /// The cleanup workers' context (artifacts, the deletion limiter, the queue's kick).
    pub cleanup: Arc<cleanup::Context>,
}

impl Shared {
    /// See [`StoreHealth::set_ok`].
    pub fn set_store_ok(&self, ok: bool) {
        self.health.set_ok(ok);
    }

    /// See [`StoreHealth::write_fault`].
    pub fn write_fault(&self) -> Option<String> {
        self.health.write_fault()
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
    let artifacts =
        crate::artifacts::Artifacts::open(&artifacts_config, crate::artifacts::retry_config())?;
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
    let layout = crate::engine::plan::Layout::new(&opts.data_dir);
    policy.layout = Some(layout.clone());
    let health = Arc::new(StoreHealth::new(faults));
    let hooks = HookRunner::new(
        Hooks::new(opts.config.hooks.clone()),
        store.clone(),
        metrics.clone(),
    );
    let cleanup = Arc::new(cleanup::Context {
        store: store.clone(),
        artifacts,
        deletions: crate::ratelimit::RateLimiter::per_minute(
            opts.config.safety.max_deletions_per_minute,
        ),
        layout,
        metrics: metrics.clone(),
        health: health.clone(),
        kick: tokio::sync::Notify::new(),
        queue: opts.config.queue.clone(),
        artifact_min_age: opts.config.orphans.artifact_min_age.0,
        dry_run: opts.dry_run,
        events: hooks.events().clone(),
    });
    let shared = Arc::new(Shared {
        policy,
        hooks,
        config: opts.config,
        store,
        metrics,
        dry_run: opts.dry_run,
        data_dir: opts.data_dir.clone(),
        loaded: AtomicBool::new(false),
        token: opts.token,
        health,
        cleanup,
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
                        Some(()) => shared.health.faults.file_size_signal(),
                        None => return,
                    },
                }
            }
        }));
    }
    tasks.push(tokio::spawn(enforcer.run(shutdown_rx.clone())));
    tasks.extend(cleanup::spawn(
        &shared.cleanup,
        &std::process::id().to_string(),
        &shutdown_rx,
    ));
    tasks.push(tokio::spawn(crate::reclaimed::refresh_metrics(
        shared.store.clone(),
        shared.metrics.clone(),
        shutdown_rx.clone(),
    )));
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
    let events = shared.hooks.events().clone();
    let server = tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = srv_shutdown.wait_for(|s| *s).await;
                // Open event streams end, or the graceful shutdown would wait for them.
                events.close();
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

/// Resolves once `shutdown` says stop (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
